//! Loading o3's kernel programs, attaching them to tracepoints, and reading their maps.
//!
//! The object is built from `o3-ebpf` by the build script and embedded in the binary.

pub mod btf;
pub mod gpu_mem;
pub mod tracefs;

use std::ffi::c_void;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::ptr::NonNull;

use aya::maps::{Array, HashMap, IterableMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::programs::perf_event::{PerfEventScope, PerfTypeId, SamplePolicy};
use aya::programs::{PerfEvent, RawTracePoint, TracePoint};
use aya::{Ebpf, EbpfLoader};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use o3_common::{
    Event, KTick, MmState, Offsets, Pending, ProcPeak, RunState, Tracked, Tree, EVENT_EXEC,
    EVENT_EXIT, EVENT_FORK, EVENT_PEAK, NO_FIELD, NR_RSS, RSS_ANON, RSS_FILE, RSS_SHMEM, RSS_SWAP,
    TRACK_ROOT, TRACK_WAIT_EXEC,
};
use thiserror::Error;

use super::{Sample, Source, TreeEvent};
use tracefs::{Format, TracefsError};

/// The kernel programs, built for bpfel-unknown-none by build.rs.
static EBPF_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/o3-ebpf"));

/// (program, category, tracepoint) for every program o3 attaches, as classic tracepoint
/// programs; [`raw_program`] names their raw tracepoint twins.
pub const PROGRAMS: [(&str, &str, &str); 5] = [
    ("o3_newtask", "task", "task_newtask"),
    ("o3_exec", "sched", "sched_process_exec"),
    ("o3_exit", "sched", "sched_process_exit"),
    ("o3_switch", "sched", "sched_switch"),
    ("o3_rss", "kmem", "rss_stat"),
];

/// Program `prog` of the object as a `T`, loaded into the kernel (verified).
fn loaded_program<'a, T>(ebpf: &'a mut Ebpf, prog: &'static str) -> Result<&'a mut T, EbpfError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    T: LoadProgram,
{
    let p: &mut T = ebpf
        .program_mut(prog)
        .ok_or(EbpfError::MissingProgram(prog))?
        .try_into()
        .map_err(|source| EbpfError::Program { prog, source })?;
    p.load_program()
        .map_err(|source| EbpfError::Program { prog, source })?;
    Ok(p)
}

/// aya's program kinds each have their own `load()`.
trait LoadProgram {
    fn load_program(&mut self) -> Result<(), aya::programs::ProgramError>;
}

macro_rules! load_program {
    ($($t:ty),*) => {$(
        impl LoadProgram for $t {
            fn load_program(&mut self) -> Result<(), aya::programs::ProgramError> {
                self.load()
            }
        }
    )*};
}
load_program!(TracePoint, RawTracePoint, PerfEvent);

/// The raw tracepoint twin of a classic program.
fn raw_program(classic: &'static str) -> &'static str {
    match classic {
        "o3_newtask" => "o3_newtask_raw",
        "o3_exec" => "o3_exec_raw",
        "o3_exit" => "o3_exit_raw",
        "o3_switch" => "o3_switch_raw",
        other => other,
    }
}

pub mod cost;
pub mod rss;
pub use rss::RssProgram;

#[derive(Debug, Error)]
pub enum EbpfError {
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error("loading the kernel programs failed: {0} (o3 needs root or CAP_BPF + CAP_PERFMON; `o3 doctor` checks what is missing)")]
    Load(#[source] aya::EbpfError),
    #[error("program {0} is missing from the embedded object")]
    MissingProgram(&'static str),
    #[error("loading program {prog} failed: {}", one_line(&source.to_string()))]
    Program {
        prog: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {0}: {1}")]
    Map(&'static str, String),
    #[error("counting the possible CPUs: {0}")]
    Cpus(#[from] rss::CpuCountError),
    #[error("bpf() syscall {what} failed: {source}")]
    Syscall {
        what: &'static str,
        source: std::io::Error,
    },
}

/// Reads the tracepoint formats and returns the offsets the programs need.
/// Whether eBPF is required here (`O3_REQUIRE_EBPF=1`, as CI sets it): where the kernel
/// programs cannot load, the command fails instead of falling back to procfs polling.
pub fn required() -> bool {
    std::env::var("O3_REQUIRE_EBPF").is_ok_and(|v| v == "1")
}

pub fn read_offsets(tracefs_dir: &Path, peak_event_step: u64) -> Result<Offsets, TracefsError> {
    let fmt = |cat: &str, name: &str| tracefs::read_format(tracefs_dir, cat, name);
    offsets_from_formats(
        &fmt("task", "task_newtask")?,
        &fmt("sched", "sched_process_exec")?,
        &fmt("sched", "sched_process_exit")?,
        &fmt("sched", "sched_switch")?,
        &fmt("kmem", "rss_stat")?,
        peak_event_step,
    )
}

/// Pure part of [`read_offsets`]: required fields must exist; `group_dead` is optional (added to
/// sched_process_exit in Linux 6.16).
pub fn offsets_from_formats(
    newtask: &Format,
    exec: &Format,
    exit: &Format,
    switch: &Format,
    rss: &Format,
    peak_event_step: u64,
) -> Result<Offsets, TracefsError> {
    use tracefs::offset;
    Ok(Offsets {
        newtask_pid: offset(newtask, "task:task_newtask", "pid")?,
        newtask_clone_flags: offset(newtask, "task:task_newtask", "clone_flags")?,
        exec_filename: offset(exec, "sched:sched_process_exec", "filename")?,
        exec_old_pid: offset(exec, "sched:sched_process_exec", "old_pid")?,
        exit_group_dead: exit.field("group_dead").map_or(NO_FIELD, |f| f.offset),
        switch_prev_state: offset(switch, "sched:sched_switch", "prev_state")?,
        switch_next_pid: offset(switch, "sched:sched_switch", "next_pid")?,
        rss_mm_id: offset(rss, "kmem:rss_stat", "mm_id")?,
        rss_curr: offset(rss, "kmem:rss_stat", "curr")?,
        rss_member: offset(rss, "kmem:rss_stat", "member")?,
        rss_size: offset(rss, "kmem:rss_stat", "size")?,
        rss_len: rss_record_len(rss)?,
        peak_event_step_bytes: peak_event_step,
    })
}

/// Length of the rss_stat record prefix holding the four fields the program reads.
fn rss_record_len(rss: &Format) -> Result<u32, TracefsError> {
    let mut len = 0;
    for name in ["mm_id", "curr", "member", "size"] {
        let f = rss.field(name).ok_or_else(|| TracefsError::MissingField {
            tracepoint: "kmem:rss_stat".into(),
            field: name.into(),
        })?;
        len = len.max(f.offset + f.size);
    }
    if len > o3_common::RSS_RECORD_MAX {
        return Err(TracefsError::MissingField {
            tracepoint: "kmem:rss_stat".into(),
            field: format!(
                "fields within the first {} bytes",
                o3_common::RSS_RECORD_MAX
            ),
        });
    }
    Ok(len)
}

/// Enables BPF run-time statistics (program run time and count) for as long as it lives; the
/// kernel turns them off again when the last such handle is closed.
pub struct RuntimeStats {
    _fd: OwnedFd,
}

impl RuntimeStats {
    pub fn enable() -> Result<RuntimeStats, EbpfError> {
        let fd =
            aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| EbpfError::Syscall {
                what: "BPF_ENABLE_STATS",
                source: e.io_error,
            })?;
        Ok(RuntimeStats { _fd: fd })
    }
}

/// What the loader did, for the user and the trace header.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub mounted_tracefs: bool,
    pub has_group_dead: bool,
    /// The rss_stat program attached (`raw` or `classic`, or a bench variant).
    pub rss_program: &'static str,
    /// Why the raw rss_stat program is not used, where it is not.
    pub rss_fallback: Option<String>,
}

/// Loaded and attached programs plus the maps the main thread uses.
pub struct Loaded {
    ebpf: Ebpf,
    tracked: HashMap<MapData, u32, Tracked>,
    seeds: HashMap<MapData, u32, Pending>,
    proc_peak: HashMap<MapData, u32, ProcPeak>,
    proc_cpu: PerCpuHashMap<MapData, u32, u64>,
    mms: HashMap<MapData, u64, MmState>,
    floor_tgid: Array<MapData, u32>,
    calls: PerCpuArray<MapData, u64>,
    /// Run-time statistics while a sampling window is open, with each program's counts at
    /// its opening.
    stats_window: Option<(RuntimeStats, Vec<(u64, u64)>)>,
    sampled: Vec<cost::Sampled>,
    windows: Option<cost::Windows>,
    live: Option<EbpfSource>,
    /// The GPU-memory kprobes, or why they are not attached.
    pub gpu_mem: Result<gpu_mem::GpuMemProbes, gpu_mem::GpuMemError>,
    pub report: LoadReport,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, EbpfError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| EbpfError::Map(name, "missing from the object".into()))?;
    T::try_from(map).map_err(|e| EbpfError::Map(name, e.to_string()))
}

/// What the programs are loaded with: the tracepoint offsets, the GPU-memory offsets and the
/// rss_stat program with its globals.
struct LoadPlan {
    mounted_tracefs: bool,
    offsets: Offsets,
    gpu_offsets: o3_common::GpuMemOffsets,
    rss: RssProgram,
    raw: o3_common::RawTp,
    rss_fallback: Option<String>,
}

impl LoadPlan {
    /// Mounts tracefs if needed (root only) and reads the tracepoint formats, the kernel's BTF
    /// and the CPU count.
    fn new(sysfs_root: &Path, peak_event_step: u64, want: RssProgram) -> Result<Self, EbpfError> {
        let dir = tracefs::tracefs_dir(sysfs_root);
        let mounted_tracefs = tracefs::ensure_mounted(&dir)?;
        let offsets = read_offsets(&dir, peak_event_step)?;
        let gpu_offsets = gpu_mem::loader_offsets(sysfs_root);
        let ncpus = rss::cpu_count(sysfs_root)?;
        let (rss, raw, rss_fallback) = rss::choose(want, sysfs_root, ncpus);
        Ok(LoadPlan {
            mounted_tracefs,
            offsets,
            gpu_offsets,
            rss,
            raw,
            rss_fallback,
        })
    }

    /// The embedded object with the plan's globals, loaded into the kernel (maps created).
    fn load_object(&self) -> Result<Ebpf, EbpfError> {
        EbpfLoader::new()
            .set_global("OFFSETS", &self.offsets, true)
            .set_global("GPU_OFFSETS", &self.gpu_offsets, true)
            .set_global("RAW", &self.raw, true)
            .load(EBPF_OBJ)
            .map_err(EbpfError::Load)
    }

    fn report(&self) -> LoadReport {
        LoadReport {
            mounted_tracefs: self.mounted_tracefs,
            has_group_dead: self.offsets.exit_group_dead != NO_FIELD,
            rss_program: self.rss.name(),
            rss_fallback: self.rss_fallback.clone(),
        }
    }
}

/// Loads and attaches every program of [`PROGRAMS`]: raw tracepoint twins with a raw `rss`
/// program, classic ones otherwise.
fn attach_tracepoints(ebpf: &mut Ebpf, rss: RssProgram) -> Result<(), EbpfError> {
    for (prog, cat, name) in PROGRAMS {
        let (prog, raw_tp) = if name == "rss_stat" {
            (rss.program(), rss.is_raw())
        } else if rss.is_raw() {
            (raw_program(prog), true)
        } else {
            (prog, false)
        };
        let attached = if raw_tp {
            loaded_program::<RawTracePoint>(ebpf, prog)?
                .attach(name)
                .map(drop)
        } else {
            loaded_program::<TracePoint>(ebpf, prog)?
                .attach(cat, name)
                .map(drop)
        };
        attached.map_err(|source| EbpfError::Program { prog, source })?;
    }
    Ok(())
}

impl Loaded {
    /// Mounts tracefs if needed (root only), reads the tracepoint formats, loads the programs
    /// with those offsets and attaches them.
    pub fn load(sysfs_root: &Path, peak_event_step: u64) -> Result<Loaded, EbpfError> {
        Self::load_with(sysfs_root, peak_event_step, RssProgram::Raw)
    }

    /// [`Loaded::load`] with a chosen rss_stat program. `Raw` falls back to `Classic` where
    /// the kernel lacks what it needs (said in [`LoadReport::rss_fallback`]).
    pub fn load_with(
        sysfs_root: &Path,
        peak_event_step: u64,
        want: RssProgram,
    ) -> Result<Loaded, EbpfError> {
        match Self::load_once(sysfs_root, peak_event_step, want) {
            Err(EbpfError::Program { prog, source }) if want == RssProgram::Raw => {
                // The kernel refused the raw program (e.g. no bpf_map_lookup_percpu_elem
                // before Linux 5.19): the classic one measures the same, at a higher cost.
                let mut l = Self::load_once(sysfs_root, peak_event_step, RssProgram::Classic)?;
                l.report.rss_fallback = Some(format!(
                    "loading {prog} failed: {}",
                    one_line(&source.to_string())
                ));
                Ok(l)
            }
            other => other,
        }
    }

    fn load_once(
        sysfs_root: &Path,
        peak_event_step: u64,
        want: RssProgram,
    ) -> Result<Loaded, EbpfError> {
        let plan = LoadPlan::new(sysfs_root, peak_event_step, want)?;
        let mut ebpf = plan.load_object()?;
        attach_tracepoints(&mut ebpf, plan.rss)?;
        // Exact GPU-memory peaks where the kernel has kprobes and amdgpu is loaded.
        let gpu_mem = gpu_mem::attach(&mut ebpf, sysfs_root);
        let live = EbpfSource::from_maps(&mut ebpf, plan.raw.ncpus as usize)?;
        let floor_tgid = take(&mut ebpf, "FLOOR_TGID")?;
        let calls = take(&mut ebpf, "CALLS")?;
        Ok(Loaded {
            tracked: take(&mut ebpf, "TRACKED")?,
            seeds: take(&mut ebpf, "SEEDS")?,
            proc_peak: take(&mut ebpf, "PROC_PEAK")?,
            proc_cpu: take(&mut ebpf, "PROC_CPU")?,
            mms: take(&mut ebpf, "MMS")?,
            live: Some(live),
            gpu_mem,
            ebpf,
            floor_tgid,
            calls,
            stats_window: None,
            sampled: vec![cost::Sampled::default(); o3_common::NR_CALLS as usize],
            windows: None,
            report: plan.report(),
        })
    }

    /// Tracks `pid` and, from then on, every process it creates. With `wait_exec`, its memory
    /// counts only from its next exec (the child o3 forks, whose address space is a copy of
    /// o3's until it execs).
    pub fn track(&mut self, pid: u32, wait_exec: bool) -> Result<(), EbpfError> {
        let flags = TRACK_ROOT | if wait_exec { TRACK_WAIT_EXEC } else { 0 };
        let v = Tracked {
            parent: 0,
            flags,
            dead_tid: 0,
            _pad: 0,
        };
        self.tracked
            .insert(pid, v, 0)
            .map_err(|e| EbpfError::Map("TRACKED", e.to_string()))?;
        if self.report.rss_program.starts_with("floor") {
            self.floor_tgid
                .set(0, pid, 0)
                .map_err(|e| EbpfError::Map("FLOOR_TGID", e.to_string()))?;
        }
        if let Some(live) = self.live.as_mut() {
            live.processes += 1;
        }
        Ok(())
    }

    /// Attaches to processes that already run: seeds their current RSS (from procfs) so the
    /// tree total is right before their next memory change, then tracks them.
    pub fn attach_existing(&mut self, procfs: &Path, pids: &[u32]) -> Result<(), EbpfError> {
        let now = super::monotonic_ns();
        let mut total = [0i64; NR_RSS];
        let mut seeds = Vec::new();
        for &pid in pids {
            let Ok(kinds) = super::procfs::rss_by_kind(procfs, pid) else {
                continue; // gone meanwhile
            };
            let cur = kinds.map(|v| v as i64);
            for k in 0..NR_RSS {
                total[k] += cur[k];
            }
            seeds.push((pid, cur, cur[RSS_FILE] + cur[RSS_ANON] + cur[RSS_SHMEM]));
        }
        // Totals first, while no tracked process can change them, then seeds and tracking.
        let live = self
            .live
            .as_mut()
            .expect("attach before the sampler starts");
        let rss = total[RSS_FILE] + total[RSS_ANON] + total[RSS_SHMEM];
        let tree = Tree {
            cur: total,
            rss,
            rss_peak: rss,
            rss_peak_ns: now,
            last_event_peak: rss,
            ..Tree::default()
        };
        live.tree
            .set(0, tree, 0)
            .map_err(|e| EbpfError::Map("TREE", e.to_string()))?;
        for (pid, cur, rss) in seeds {
            let seed = Pending {
                mask: (1 << NR_RSS) - 1,
                add_to_tree: 0,
                t_ns: now,
                cur,
            };
            self.seeds
                .insert(pid, seed, 0)
                .map_err(|e| EbpfError::Map("SEEDS", e.to_string()))?;
            let peak = ProcPeak {
                rss_peak: rss,
                rss_peak_ns: now,
            };
            self.proc_peak
                .insert(pid, peak, 0)
                .map_err(|e| EbpfError::Map("PROC_PEAK", e.to_string()))?;
            self.track(pid, false)?;
        }
        Ok(())
    }

    /// Starts kernel samples of the tree every `interval` (a cpu-clock perf event on CPU 0
    /// runs `o3_tick`), so no user-space thread has to wake at that rate. Call before
    /// [`Loaded::take_source`].
    pub fn start_ticks(&mut self, interval: std::time::Duration) -> Result<(), EbpfError> {
        let prog = "o3_tick";
        loaded_program::<PerfEvent>(&mut self.ebpf, prog)?
            .attach(
                PerfTypeId::Software,
                0, // PERF_COUNT_SW_CPU_CLOCK
                PerfEventScope::AllProcessesOneCpu { cpu: 0 },
                SamplePolicy::Period(interval.as_nanos().max(1) as u64),
                false,
            )
            .map_err(|source| EbpfError::Program { prog, source })?;
        if let Some(live) = self.live.as_mut() {
            live.kernel_ticks = true;
        }
        Ok(())
    }

    /// The per-tick source; taken once by the sampler.
    pub fn take_source(&mut self) -> Option<EbpfSource> {
        self.live.take()
    }

    /// Per-process peak RSS (bytes, CLOCK_MONOTONIC ns) and CPU time (ns), by tgid.
    pub fn per_process(&self) -> Vec<(u32, ProcPeak, u64)> {
        let mut out: Vec<(u32, ProcPeak, u64)> = self
            .proc_peak
            .iter()
            .filter_map(Result::ok)
            .map(|(pid, peak)| {
                let cpu = self
                    .proc_cpu
                    .get(&pid, 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                (pid, peak, cpu)
            })
            .collect();
        // Peaks of mms still alive have not been folded into PROC_PEAK yet.
        for (_, mm) in self.mms.iter().filter_map(Result::ok) {
            match out.iter_mut().find(|(p, _, _)| *p == mm.owner) {
                Some((_, peak, _)) if mm.peak > peak.rss_peak => {
                    peak.rss_peak = mm.peak;
                    peak.rss_peak_ns = mm.peak_ns;
                }
                Some(_) => {}
                None => out.push((
                    mm.owner,
                    ProcPeak {
                        rss_peak: mm.peak,
                        rss_peak_ns: mm.peak_ns,
                    },
                    self.proc_cpu
                        .get(&mm.owner, 0)
                        .map(|v| v.iter().sum())
                        .unwrap_or(0),
                )),
            }
        }
        for (pid, cpu) in self.proc_cpu.iter().filter_map(Result::ok) {
            if !out.iter().any(|(p, _, _)| *p == pid) {
                out.push((pid, ProcPeak::default(), cpu.iter().sum()));
            }
        }
        out.sort_by_key(|(pid, _, _)| *pid);
        out
    }

    /// (run time, runs) of each attached program by `CALL_*` slot, as the kernel's run-time
    /// statistics count them (only while statistics are on).
    fn program_counts(&self) -> Vec<(u64, u64)> {
        let mut out = vec![(0, 0); o3_common::NR_CALLS as usize];
        for (name, prog) in self.ebpf.programs() {
            let Some(slot) = call_slot(name) else {
                continue;
            };
            if let Ok(info) = prog.info() {
                let e = &mut out[slot as usize];
                e.0 += info.run_time().as_nanos() as u64;
                e.1 += info.run_count();
            }
        }
        out
    }

    /// Opens or closes the run-time statistics window due at `now_ns` (CLOCK_MONOTONIC); call
    /// it every ~100 ms. The first call starts the schedule.
    pub fn sample_cost(&mut self, now_ns: u64) -> Result<(), EbpfError> {
        let w = *self
            .windows
            .get_or_insert_with(|| cost::Windows::new(now_ns));
        match (w.open_at(now_ns), self.stats_window.is_some()) {
            (true, false) => {
                let stats = RuntimeStats::enable()?;
                self.stats_window = Some((stats, self.program_counts()));
            }
            (false, true) => self.close_window(),
            _ => {}
        }
        Ok(())
    }

    fn close_window(&mut self) {
        let Some((stats, base)) = self.stats_window.take() else {
            return;
        };
        let now = self.program_counts();
        drop(stats);
        for (i, ((ns0, n0), (ns1, n1))) in base.iter().zip(&now).enumerate() {
            self.sampled[i].ns += ns1.saturating_sub(*ns0);
            self.sampled[i].runs += n1.saturating_sub(*n0);
        }
    }

    /// The programs' estimated run time (ns) and their exact number of runs: the time per
    /// run measured in the statistics windows, times every run counted.
    pub fn program_stats(&mut self) -> (u64, u64) {
        self.close_window();
        let calls: Vec<u64> = (0..o3_common::NR_CALLS)
            .map(|slot| {
                self.calls
                    .get(&slot, 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0)
            })
            .collect();
        let per: Vec<(cost::Sampled, u64)> = self
            .sampled
            .iter()
            .copied()
            .zip(calls.iter().copied())
            .collect();
        (cost::estimate(&per), calls.iter().sum())
    }
}

/// A load error in one line: a verifier log is cut to its verdict (its last line before the
/// statistics).
fn one_line(err: &str) -> String {
    let Some((head, log)) = err.split_once("Verifier output:") else {
        return err.lines().next().unwrap_or("").to_string();
    };
    let verdict = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take_while(|l| !l.starts_with("verification time"))
        .last()
        .unwrap_or("");
    format!("{} the verifier said: {verdict}", head.trim_end())
}

/// The `CALL_*` slot a program counts its calls in.
fn call_slot(program: &str) -> Option<u32> {
    use o3_common::{CALL_EXEC, CALL_EXIT, CALL_NEWTASK, CALL_RSS, CALL_SWITCH, CALL_TICK};
    Some(match program {
        "o3_newtask" | "o3_newtask_raw" => CALL_NEWTASK,
        "o3_exec" | "o3_exec_raw" => CALL_EXEC,
        "o3_exit" | "o3_exit_raw" => CALL_EXIT,
        "o3_switch" | "o3_switch_raw" => CALL_SWITCH,
        "o3_rss" | "o3_rss_raw" | "o3_floor_tp" | "o3_floor_raw" => CALL_RSS,
        "o3_tick" => CALL_TICK,
        _ => return None,
    })
}

/// A read-only shared mapping of a BPF_F_MMAPABLE array map: its values, read with plain
/// loads.
struct Mapped {
    ptr: NonNull<c_void>,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value; reading it from another thread is
// reading kernel-written memory, which the readers do with volatile loads.
unsafe impl Send for Mapped {}

impl Mapped {
    fn new(map: &MapData, bytes: usize) -> std::io::Result<Mapped> {
        let len = bytes.next_multiple_of(super::page_size());
        let nonzero = NonZeroUsize::new(len).ok_or(std::io::ErrorKind::InvalidInput)?;
        // SAFETY: a new read-only shared mapping placed by the kernel (no address given, so
        // nothing existing is replaced) of `len` bytes of the map's values; the kernel checks
        // that the map is mmapable and at least that large.
        let ptr = unsafe {
            mmap(
                None,
                nonzero,
                ProtFlags::PROT_READ,
                MapFlags::MAP_SHARED,
                map.fd().as_fd(),
                0,
            )
        }?;
        Ok(Mapped { ptr, len })
    }

    /// The u64 at byte offset `off`, loaded once.
    fn u64_at(&self, off: usize) -> u64 {
        assert!(
            off % 8 == 0 && off + 8 <= self.len,
            "read inside the mapping"
        );
        let at = self
            .ptr
            .as_ptr()
            .cast::<u8>()
            .wrapping_add(off)
            .cast::<u64>();
        // SAFETY: aligned (the mapping is page-aligned and `off` a multiple of 8), inside the
        // live mapping (checked above) and readable (PROT_READ).
        unsafe { std::ptr::read_volatile(at) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region this value mapped; nothing borrows into it (reads
        // copy the values out).
        let _ = unsafe { munmap(self.ptr, self.len) };
    }
}

fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Converts a ring-buffer event; `t0_ns` is the recording's start (CLOCK_MONOTONIC).
pub fn convert_event(ev: &Event, t0_ns: u64) -> Option<TreeEvent> {
    let t_ns = ev.t_ns.saturating_sub(t0_ns);
    let comm = cstr(&ev.comm);
    Some(match ev.kind {
        EVENT_FORK => TreeEvent::Fork {
            t_ns,
            pid: ev.pid,
            parent: ev.aux,
            comm,
        },
        EVENT_EXEC => TreeEvent::Exec {
            t_ns,
            pid: ev.pid,
            comm,
            filename: cstr(&ev.filename),
        },
        EVENT_EXIT => TreeEvent::Exit {
            t_ns,
            pid: ev.pid,
            comm,
        },
        EVENT_PEAK => TreeEvent::Peak {
            t_ns,
            pid: ev.pid,
            rss_bytes: ev.value.max(0) as u64,
        },
        _ => return None,
    })
}

/// Reads the tree totals, CPU time (committed plus in flight on each CPU) and the event ring
/// buffer each tick: three map lookups and no allocation.
pub struct EbpfSource {
    tree_map: Mapped,
    run_map: Mapped,
    /// The maps behind the mappings (TREE is also written through it at attach).
    tree: Array<MapData, Tree>,
    _run: Array<MapData, RunState>,
    events: RingBuf<MapData>,
    /// Kernel samples, once [`Loaded::start_ticks`] started them.
    ticks: RingBuf<MapData>,
    kernel_ticks: bool,
    /// A kernel sample taken after the last drain's limit, for the next drain.
    pending: Option<KTick>,
    ncpus: usize,
    /// Reused for each read of RUN (no allocation per tick).
    states: Vec<RunState>,
    last_cpu: u64,
    last_cpu_at: u64,
    processes: u32,
}

/// A CPU-time read whose clock reads are further apart than this is retried (at 2 CPUs and a
/// 100 ms rate window, 200 µs bound the error to 0.4 %).
const MAX_READ_GAP_NS: u64 = 200_000;

/// The latest tree totals, for the summary.
#[derive(Debug, Clone, Copy, Default)]
pub struct TreeTotals {
    pub tree: Tree,
    pub cpu_ns: u64,
    /// CLOCK_MONOTONIC ns at which `cpu_ns` holds.
    pub cpu_at_ns: u64,
}

impl EbpfSource {
    /// The per-tick source over the object's TREE, RUN, EVENTS and TICKS maps; TREE and RUN
    /// are read through read-only mappings. RUN holds a slot for each of `ncpus` CPUs.
    fn from_maps(ebpf: &mut Ebpf, ncpus: usize) -> Result<EbpfSource, EbpfError> {
        let tree: Array<MapData, Tree> = take(ebpf, "TREE")?;
        let run: Array<MapData, RunState> = take(ebpf, "RUN")?;
        let run_bytes = std::mem::size_of::<RunState>() * o3_common::MAX_CPUS as usize;
        Ok(EbpfSource {
            tree_map: Mapped::new(tree.map(), std::mem::size_of::<Tree>())
                .map_err(|e| EbpfError::Map("TREE", format!("mmap: {e}")))?,
            run_map: Mapped::new(run.map(), run_bytes)
                .map_err(|e| EbpfError::Map("RUN", format!("mmap: {e}")))?,
            tree,
            _run: run,
            events: take(ebpf, "EVENTS")?,
            ticks: take(ebpf, "TICKS")?,
            kernel_ticks: false,
            pending: None,
            ncpus,
            states: Vec::new(),
            last_cpu: 0,
            last_cpu_at: 0,
            processes: 0,
        })
    }

    /// CPU `cpu`'s slot of RUN, each field loaded once, in the order of the sequence lock.
    fn run_state(&self, cpu: usize) -> RunState {
        let base = cpu * std::mem::size_of::<RunState>();
        let seq_end = self.run_map.u64_at(base);
        let total_ns = self.run_map.u64_at(base + 8);
        let since_ns = self.run_map.u64_at(base + 16);
        let tgid = self.run_map.u64_at(base + 24) as u32;
        let seq_begin = self.run_map.u64_at(base + 32);
        RunState {
            seq_end,
            total_ns,
            since_ns,
            tgid,
            _pad: 0,
            seq_begin,
            _line: [0; 3],
        }
    }

    /// The tree totals, loaded from the mapping (a copy the kernel may be updating: each field
    /// is whole, fields may be one update apart, as with a map lookup).
    fn tree(&self) -> Tree {
        let w = |i: usize| self.tree_map.u64_at(8 * i);
        Tree {
            cur: [w(0) as i64, w(1) as i64, w(2) as i64, w(3) as i64],
            rss: w(4) as i64,
            rss_peak: w(5) as i64,
            rss_peak_ns: w(6),
            last_event_peak: w(7) as i64,
            events_lost: w(8),
            ticks_lost: w(9),
        }
    }

    /// Current totals (also used for the final summary). `cpu_at_ns` is the CLOCK_MONOTONIC
    /// instant the CPU figure is exact for: the clock is read after the per-CPU copy, so slices
    /// in flight are counted up to then and no finished slice is missed.
    pub fn totals(&mut self) -> Result<TreeTotals, EbpfError> {
        let tree = self.tree();
        // A copy torn by a context switch on some CPU is retried; the switch is a few
        // instructions long, so one retry nearly always suffices.
        // The copy happens somewhere between two clock reads `a` and `b`; the slices in flight
        // are counted up to `b`, so a slice that ended inside the gap is over-counted by at
        // most the gap, per CPU. A sampler preempted inside it (a loaded machine) would inflate
        // the rate: such reads are retried, and the tightest one is kept.
        let mut best: Option<(u64, u64, u64)> = None; // (gap, cpu, at)
        for _ in 0..16 {
            let a = super::monotonic_ns();
            let mut states = std::mem::take(&mut self.states);
            states.clear();
            states.extend((0..self.ncpus).map(|c| self.run_state(c)));
            let b = super::monotonic_ns();
            let cpu: Option<u64> = states.iter().map(|r| r.cpu_at(b)).sum();
            self.states = states;
            let Some(cpu) = cpu else {
                continue; // torn by a context switch
            };
            let gap = b - a;
            if best.is_none_or(|(g, _, _)| gap < g) {
                best = Some((gap, cpu, b));
            }
            if gap <= MAX_READ_GAP_NS {
                break;
            }
        }
        if let Some((_, cpu, at)) = best {
            // Never report CPU going back.
            self.last_cpu = self.last_cpu.max(cpu);
            self.last_cpu_at = at;
        }
        Ok(TreeTotals {
            tree,
            cpu_ns: self.last_cpu,
            cpu_at_ns: self.last_cpu_at,
        })
    }

    fn drain(&mut self, t0_ns: u64, events: &mut Vec<TreeEvent>) {
        while let Some(item) = self.events.next() {
            if item.len() < std::mem::size_of::<Event>() {
                continue;
            }
            // SAFETY: the kernel wrote a full `Event` (#[repr(C)], plain integers) here; the
            // read is unaligned-safe.
            let ev: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) };
            match ev.kind {
                EVENT_FORK => self.processes += 1,
                EVENT_EXIT => self.processes = self.processes.saturating_sub(1),
                _ => {}
            }
            if let Some(e) = convert_event(&ev, t0_ns) {
                events.push(e);
            }
        }
    }
}

fn pos(v: i64) -> u64 {
    v.max(0) as u64
}

impl EbpfSource {
    /// Whether the kernel samples the tree at the interval (see [`Loaded::start_ticks`]).
    pub fn kernel_ticks(&self) -> bool {
        self.kernel_ticks
    }
}

/// A kernel sample as a [`Sample`] (the tree's figures only).
pub fn tick_sample(k: &KTick, t0_ns: u64) -> Sample {
    Sample {
        t_ns: k.t_ns.saturating_sub(t0_ns),
        rss_bytes: Some(pos(k.rss)),
        rss_file_bytes: Some(pos(k.cur[RSS_FILE])),
        rss_anon_bytes: Some(pos(k.cur[RSS_ANON])),
        rss_shmem_bytes: Some(pos(k.cur[RSS_SHMEM])),
        swap_bytes: Some(pos(k.cur[RSS_SWAP])),
        rss_peak_bytes: Some(pos(k.rss_peak)),
        rss_peak_t_ns: Some(k.rss_peak_ns.saturating_sub(t0_ns)),
        cpu_ns: (k.cpu_ns != u64::MAX).then_some(k.cpu_ns),
        ..Sample::default()
    }
}

impl Source for EbpfSource {
    fn name(&self) -> &'static str {
        "ebpf"
    }

    fn drain_samples(&mut self, up_to_ns: u64, t0_ns: u64, out: &mut Vec<Sample>) {
        if !self.kernel_ticks {
            return;
        }
        loop {
            let k = match self.pending.take() {
                Some(k) => k,
                None => {
                    let Some(item) = self.ticks.next() else {
                        return;
                    };
                    if item.len() < std::mem::size_of::<KTick>() {
                        continue;
                    }
                    // SAFETY: the kernel wrote a full `KTick` (#[repr(C)], plain integers);
                    // the read is unaligned-safe.
                    unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<KTick>()) }
                }
            };
            if k.t_ns > up_to_ns {
                self.pending = Some(k);
                return;
            }
            let mut s = tick_sample(&k, t0_ns);
            // CPU time never goes back, across kernel and user-space reads.
            if let Some(c) = s.cpu_ns {
                if c >= self.last_cpu {
                    self.last_cpu = c;
                    self.last_cpu_at = k.t_ns;
                }
                s.cpu_ns = Some(self.last_cpu);
            }
            out.push(s);
        }
    }

    fn sample(&mut self, _now_ns: u64, t0_ns: u64, out: &mut Sample, events: &mut Vec<TreeEvent>) {
        self.drain(t0_ns, events);
        if let Ok(t) = self.totals() {
            out.rss_bytes = Some(pos(t.tree.rss));
            out.rss_file_bytes = Some(pos(t.tree.cur[RSS_FILE]));
            out.rss_anon_bytes = Some(pos(t.tree.cur[RSS_ANON]));
            out.rss_shmem_bytes = Some(pos(t.tree.cur[RSS_SHMEM]));
            out.swap_bytes = Some(pos(t.tree.cur[RSS_SWAP]));
            out.rss_peak_bytes = Some(pos(t.tree.rss_peak));
            out.rss_peak_t_ns = Some(t.tree.rss_peak_ns.saturating_sub(t0_ns));
            out.cpu_ns = Some(t.cpu_ns);
            out.cpu_t_ns = Some(t.cpu_at_ns.saturating_sub(t0_ns));
            out.processes = Some(self.processes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(name: &str, fields: &[(&str, u32)]) -> Format {
        Format {
            name: name.into(),
            fields: fields
                .iter()
                .map(|(n, o)| tracefs::Field {
                    name: n.to_string(),
                    offset: *o,
                    size: 4,
                })
                .collect(),
        }
    }

    #[test]
    fn offsets_come_from_the_formats() {
        let newtask = fmt("task_newtask", &[("pid", 8), ("clone_flags", 32)]);
        let exec = fmt("x", &[("filename", 8), ("pid", 12), ("old_pid", 16)]);
        let exit_new = fmt("x", &[("pid", 24), ("group_dead", 32)]);
        let exit_old = fmt("x", &[("pid", 24)]);
        let switch = fmt("x", &[("prev_state", 32), ("next_pid", 56)]);
        let rss = fmt(
            "x",
            &[("mm_id", 8), ("curr", 12), ("member", 16), ("size", 24)],
        );
        let o = offsets_from_formats(&newtask, &exec, &exit_new, &switch, &rss, 4096).unwrap();
        assert_eq!(o.newtask_clone_flags, 32);
        assert_eq!(o.exit_group_dead, 32);
        assert_eq!(o.switch_next_pid, 56);
        assert_eq!(o.rss_size, 24);
        assert_eq!(o.peak_event_step_bytes, 4096);
        let o = offsets_from_formats(&newtask, &exec, &exit_old, &switch, &rss, 1).unwrap();
        assert_eq!(o.exit_group_dead, NO_FIELD);
        let bad_rss = fmt("x", &[("mm_id", 8)]);
        let err = offsets_from_formats(&newtask, &exec, &exit_new, &switch, &bad_rss, 1)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("kmem:rss_stat") && err.contains("curr"),
            "{err}"
        );
    }

    #[test]
    fn a_verifier_log_is_cut_to_its_verdict() {
        let err = "the BPF_PROG_LOAD syscall failed. Verifier output: 0: R1=ctx() R10=fp0\n\
                   57: (bf) r7 = r5\nR5 !read_ok\nverification time 43120 usec\nstack depth 24\n";
        assert_eq!(
            one_line(err),
            "the BPF_PROG_LOAD syscall failed. the verifier said: R5 !read_ok"
        );
        assert_eq!(one_line("no such file\nmore"), "no such file");
    }

    #[test]
    fn events_convert_with_relative_time() {
        let mut ev = Event {
            t_ns: 1_500,
            value: 0,
            kind: EVENT_EXEC,
            pid: 42,
            aux: 42,
            _pad: 0,
            comm: [0; 16],
            filename: [0; 64],
        };
        ev.comm[..4].copy_from_slice(b"true");
        ev.filename[..9].copy_from_slice(b"/bin/true");
        assert_eq!(
            convert_event(&ev, 1_000),
            Some(TreeEvent::Exec {
                t_ns: 500,
                pid: 42,
                comm: "true".into(),
                filename: "/bin/true".into()
            })
        );
        ev.kind = 99;
        assert_eq!(convert_event(&ev, 0), None);
    }
}
