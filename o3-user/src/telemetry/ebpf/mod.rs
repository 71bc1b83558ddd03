//! Loading o3's kernel programs, attaching them to tracepoints, and reading their maps.
//!
//! The object is built from `o3-ebpf` by the build script and embedded in the binary.

pub mod btf;
pub mod gpu_mem;
pub mod tracefs;

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::programs::TracePoint;
use aya::{Ebpf, EbpfLoader};
use o3_common::{
    Event, MmState, Offsets, Pending, ProcPeak, RunState, Tracked, Tree, EVENT_EXEC, EVENT_EXIT,
    EVENT_FORK, EVENT_PEAK, NO_FIELD, NR_RSS, RSS_ANON, RSS_FILE, RSS_SHMEM, RSS_SWAP, TRACK_ROOT,
    TRACK_WAIT_EXEC,
};
use thiserror::Error;

use super::{Sample, Source, TreeEvent};
use tracefs::{Format, TracefsError};

/// The kernel programs, built for bpfel-unknown-none by build.rs.
static EBPF_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/o3-ebpf"));

/// (program, category, tracepoint) for every program o3 attaches.
pub const PROGRAMS: [(&str, &str, &str); 5] = [
    ("o3_newtask", "task", "task_newtask"),
    ("o3_exec", "sched", "sched_process_exec"),
    ("o3_exit", "sched", "sched_process_exit"),
    ("o3_switch", "sched", "sched_switch"),
    ("o3_rss", "kmem", "rss_stat"),
];

#[derive(Debug, Error)]
pub enum EbpfError {
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error("loading the kernel programs failed: {0} (o3 needs root or CAP_BPF + CAP_PERFMON; `o3 doctor` checks what is missing)")]
    Load(#[source] aya::EbpfError),
    #[error("program {0} is missing from the embedded object")]
    MissingProgram(&'static str),
    #[error("loading program {prog} failed: {source}")]
    Program {
        prog: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {0}: {1}")]
    Map(&'static str, String),
    #[error("bpf() syscall {what} failed: {source}")]
    Syscall {
        what: &'static str,
        source: std::io::Error,
    },
}

/// Reads the tracepoint formats and returns the offsets the programs need.
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
}

/// Loaded and attached programs plus the maps the main thread uses.
pub struct Loaded {
    ebpf: Ebpf,
    tracked: HashMap<MapData, u32, Tracked>,
    seeds: HashMap<MapData, u32, Pending>,
    proc_peak: HashMap<MapData, u32, ProcPeak>,
    proc_cpu: PerCpuHashMap<MapData, u32, u64>,
    mms: HashMap<MapData, u32, MmState>,
    live: Option<EbpfSource>,
    /// The GPU-memory kprobes, or why they are not attached.
    pub gpu_mem: Result<gpu_mem::GpuMemProbes, String>,
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

impl Loaded {
    /// Mounts tracefs if needed (root only), reads the tracepoint formats, loads the programs
    /// with those offsets and attaches them.
    pub fn load(sysfs_root: &Path, peak_event_step: u64) -> Result<Loaded, EbpfError> {
        let dir = tracefs::tracefs_dir(sysfs_root);
        let mounted_tracefs = tracefs::ensure_mounted(&dir)?;
        let offsets = read_offsets(&dir, peak_event_step)?;
        let gpu_offsets = gpu_mem::loader_offsets(sysfs_root);
        let mut ebpf = EbpfLoader::new()
            .set_global("OFFSETS", &offsets, true)
            .set_global("GPU_OFFSETS", &gpu_offsets, true)
            .load(EBPF_OBJ)
            .map_err(EbpfError::Load)?;
        for (prog, cat, name) in PROGRAMS {
            let p: &mut TracePoint = ebpf
                .program_mut(prog)
                .ok_or(EbpfError::MissingProgram(prog))?
                .try_into()
                .map_err(|source| EbpfError::Program { prog, source })?;
            p.load()
                .map_err(|source| EbpfError::Program { prog, source })?;
            p.attach(cat, name)
                .map_err(|source| EbpfError::Program { prog, source })?;
        }
        // Exact GPU-memory peaks where the kernel has kprobes and amdgpu is loaded.
        let gpu_mem = gpu_mem::attach(&mut ebpf, sysfs_root);
        let live = EbpfSource {
            tree: take(&mut ebpf, "TREE")?,
            run: take(&mut ebpf, "RUN")?,
            events: take(&mut ebpf, "EVENTS")?,
            ncpus: aya::util::nr_cpus()
                .map_err(|(p, e)| EbpfError::Map("RUN", format!("{p}: {e}")))?,
            run_buf: Vec::new(),
            last_cpu: 0,
            last_cpu_at: 0,
            processes: 0,
        };
        Ok(Loaded {
            tracked: take(&mut ebpf, "TRACKED")?,
            seeds: take(&mut ebpf, "SEEDS")?,
            proc_peak: take(&mut ebpf, "PROC_PEAK")?,
            proc_cpu: take(&mut ebpf, "PROC_CPU")?,
            mms: take(&mut ebpf, "MMS")?,
            live: Some(live),
            gpu_mem,
            ebpf,
            report: LoadReport {
                mounted_tracefs,
                has_group_dead: offsets.exit_group_dead != NO_FIELD,
            },
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

    /// Total run time (ns) and run count of all programs while run-time stats were enabled.
    pub fn program_stats(&self) -> (u64, u64) {
        let mut ns = 0;
        let mut cnt = 0;
        for (_, prog) in self.ebpf.programs() {
            if let Ok(info) = prog.info() {
                ns += info.run_time().as_nanos() as u64;
                cnt += info.run_count();
            }
        }
        (ns, cnt)
    }
}

/// Minimal BPF_MAP_LOOKUP_ELEM into a caller-owned buffer, so the sampler's hot path does
/// not allocate (aya's per-CPU getters return a fresh Vec each call).
fn lookup_raw(fd: RawFd, key: u32, out: &mut [u8]) -> std::io::Result<()> {
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let attr = Attr {
        map_fd: fd as u32,
        _pad: 0,
        key: &key as *const u32 as u64,
        value: out.as_mut_ptr() as u64,
        flags: 0,
    };
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    // SAFETY: `attr` is a valid bpf_attr prefix for MAP_LOOKUP_ELEM; `key` and `out` outlive
    // the call and `out` is as large as the map's value (checked by the callers' sizing).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_ELEM,
            &attr as *const Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
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
    tree: Array<MapData, Tree>,
    run: PerCpuArray<MapData, RunState>,
    events: RingBuf<MapData>,
    ncpus: usize,
    run_buf: Vec<u8>,
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

/// Decodes one CPU's `RunState` from a per-CPU lookup buffer.
fn run_state(c: &[u8]) -> RunState {
    let u64_at = |o: usize| u64::from_ne_bytes(c[o..o + 8].try_into().expect("8 bytes"));
    RunState {
        seq_end: u64_at(0),
        total_ns: u64_at(8),
        since_ns: u64_at(16),
        tgid: u32::from_ne_bytes(c[24..28].try_into().expect("4 bytes")),
        _pad: 0,
        seq_begin: u64_at(32),
    }
}

impl EbpfSource {
    fn fd<M: aya::maps::IterableMap<u32, V>, V>(m: &M) -> RawFd {
        m.map().fd().as_fd().as_raw_fd()
    }

    /// Current totals (also used for the final summary). `cpu_at_ns` is the CLOCK_MONOTONIC
    /// instant the CPU figure is exact for: the clock is read after the per-CPU copy, so slices
    /// in flight are counted up to then and no finished slice is missed.
    pub fn totals(&mut self) -> Result<TreeTotals, EbpfError> {
        let tree = self
            .tree
            .get(&0, 0)
            .map_err(|e| EbpfError::Map("TREE", e.to_string()))?;
        let run_slot = std::mem::size_of::<RunState>().next_multiple_of(8);
        self.run_buf.resize(self.ncpus * run_slot, 0);
        // A copy torn by a context switch on some CPU is retried; the switch is a few
        // instructions long, so one retry nearly always suffices.
        // The copy happens somewhere between two clock reads `a` and `b`; the slices in flight
        // are counted up to `b`, so a slice that ended inside the gap is over-counted by at
        // most the gap, per CPU. A sampler preempted inside it (a loaded machine) would inflate
        // the rate: such reads are retried, and the tightest one is kept.
        let mut best: Option<(u64, u64, u64)> = None; // (gap, cpu, at)
        for _ in 0..16 {
            let a = super::monotonic_ns();
            lookup_raw(Self::fd(&self.run), 0, &mut self.run_buf).map_err(|source| {
                EbpfError::Syscall {
                    what: "lookup RUN",
                    source,
                }
            })?;
            let b = super::monotonic_ns();
            let cpu: Option<u64> = self
                .run_buf
                .chunks_exact(run_slot)
                .map(|c| run_state(c).cpu_at(b))
                .sum();
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
            let ev: Event = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Event) };
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

impl Source for EbpfSource {
    fn name(&self) -> &'static str {
        "ebpf"
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
