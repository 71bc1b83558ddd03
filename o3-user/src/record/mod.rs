//! `o3 record`: run a command (or attach to a process tree), sample it, write a trace, and
//! summarise exact peaks.

pub mod signals;
pub use crate::util::spawn;
pub mod summary;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Sender};
use std::time::Duration;

use thiserror::Error;

use crate::telemetry::ebpf::{EbpfError, Loaded, RssProgram};
use crate::telemetry::gpu::source::{GpuOptions, GpuSelect, GpuSource};
use crate::telemetry::procfs::{self, ProcTree, SystemMemory};
use crate::telemetry::watchdog::{Breach, Thresholds, Watchdog};
use crate::telemetry::{monotonic_ns, sampler, Method, ProcessPeak, Source, TreeEvent};
use crate::trace::{Header, Methods, TraceError, TraceWriter, SCHEMA_VERSION};
use crate::util::system::{uname, unix_now_ns};
use spawn::{Prepared, SpawnError};
use summary::{
    Aggregate, CpuSummary, ExitInfo, Overhead, RssSummary, Rusage, Safety, Sampling, Summary,
};

/// What to record.
#[derive(Debug, Clone)]
pub enum Target {
    Command(Vec<OsString>),
    Pid {
        pid: u32,
        duration: Option<Duration>,
    },
}

/// How to measure the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// eBPF when it loads, else procfs polling with a warning.
    Auto,
    /// eBPF or an error (CI sets O3_REQUIRE_EBPF=1 to get this).
    Ebpf,
    /// procfs polling only.
    Procfs,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub target: Target,
    pub interval: Duration,
    pub out: Option<PathBuf>,
    pub procfs_root: PathBuf,
    pub sysfs_root: PathBuf,
    pub mode: Mode,
    /// Bytes the tree peak must grow by before another peak event is emitted.
    pub peak_event_step: u64,
    pub dev_root: PathBuf,
    pub gpu: GpuSelect,
    /// Watchdog limits; `None` records without a watchdog.
    pub safety: Option<Thresholds>,
    /// The rss_stat kernel program (raw unless a benchmark asks otherwise).
    pub rss_program: RssProgram,
}

#[derive(Debug, Error)]
pub enum RecordError {
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error("eBPF is required but unavailable: {0}")]
    EbpfRequired(EbpfError),
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    #[error("no process with pid {0} (check the pid with `ps -p {0}`)")]
    NoSuchPid(u32),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

impl RecordError {
    pub fn exit_code(&self) -> i32 {
        match self {
            RecordError::Spawn(e) => e.exit_code(),
            _ => 1,
        }
    }
}

pub struct Outcome {
    pub summary: Summary,
    /// o3's exit status: the command's own for `record -- CMD`.
    pub exit_code: i32,
    /// How the target is named in the text summary.
    pub what: String,
}

fn getrusage(who: libc::c_int) -> libc::rusage {
    // SAFETY: zeroed rusage is a valid out-value; getrusage only writes it.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::getrusage(who, &mut r) };
    r
}

fn tv_ns(tv: libc::timeval) -> u64 {
    tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1_000
}

fn self_cpu_ns() -> u64 {
    let r = getrusage(libc::RUSAGE_SELF);
    tv_ns(r.ru_utime) + tv_ns(r.ru_stime)
}

fn pidfd_open(pid: u32) -> std::io::Result<libc::c_int> {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd as libc::c_int)
}

/// How o3 notices that the root process has exited.
enum Liveness {
    /// A pidfd (our own pid namespace): readable once the process exits.
    Pidfd(libc::c_int),
    /// Under another procfs root (a host's /proc mounted in a container, a fixture tree), pids
    /// may belong to another namespace: the process is gone when its directory is, or it is a
    /// zombie. Checked every 50 ms.
    Procfs(PathBuf),
}

impl Liveness {
    fn new(opts: &Options, root: u32) -> Result<Liveness, RecordError> {
        let default_root = opts.procfs_root == std::path::Path::new("/proc");
        if matches!(opts.target, Target::Command(_)) || default_root {
            let fd =
                pidfd_open(root).map_err(|e| RecordError::Io(format!("pidfd_open({root})"), e))?;
            return Ok(Liveness::Pidfd(fd));
        }
        Ok(Liveness::Procfs(opts.procfs_root.join(root.to_string())))
    }

    fn procfs_gone(dir: &std::path::Path) -> bool {
        match std::fs::read_to_string(dir.join("stat")) {
            Ok(text) => procfs::parse_stat(&text).is_ok_and(|s| s.state == 'Z'),
            Err(_) => true,
        }
    }
}

impl Drop for Liveness {
    fn drop(&mut self) {
        if let Liveness::Pidfd(fd) = self {
            // SAFETY: closing the pidfd we opened.
            unsafe { libc::close(*fd) };
        }
    }
}

/// What the recording loop receives.
enum Msg {
    Ticks(Vec<sampler::Tick>),
    /// The root process exited (CLOCK_MONOTONIC ns when noticed).
    Exited(u64),
    /// --duration elapsed.
    Deadline(u64),
    Signal(i32),
    /// The watchdog saw a limit crossed.
    Breach(Breach),
}

/// Blocks in poll(2) on the process and the signal pipe, so the recording loop wakes only for
/// batches of ticks and for these events, and the end is noticed at once.
fn spawn_waiter(
    liveness: Liveness,
    deadline_ns: Option<u64>,
    sig_fd: libc::c_int,
    tx: Sender<Msg>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || loop {
        let now = monotonic_ns();
        if let Some(d) = deadline_ns {
            if now >= d {
                let _ = tx.send(Msg::Deadline(now));
                return;
            }
        }
        let mut fds = [
            libc::pollfd {
                fd: sig_fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: match &liveness {
                    Liveness::Pidfd(fd) => *fd,
                    Liveness::Procfs(_) => -1,
                },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let mut timeout_ms: i64 = match &liveness {
            Liveness::Pidfd(_) => -1,
            Liveness::Procfs(_) => 50,
        };
        if let Some(d) = deadline_ns {
            let left = (d.saturating_sub(now)).div_ceil(1_000_000) as i64;
            timeout_ms = if timeout_ms < 0 {
                left
            } else {
                timeout_ms.min(left)
            };
        }
        // SAFETY: two valid pollfds (a negative fd is ignored by poll).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms.min(i32::MAX as i64) as i32) };
        let now = monotonic_ns();
        if n < 0 {
            continue; // EINTR
        }
        if fds[0].revents & libc::POLLIN != 0 {
            let mut b = 0u8;
            // SAFETY: reading one byte from our non-blocking pipe.
            while unsafe { libc::read(sig_fd, &mut b as *mut u8 as *mut libc::c_void, 1) } == 1 {
                if tx.send(Msg::Signal(b as i32)).is_err() {
                    return;
                }
            }
        }
        let exited = match &liveness {
            Liveness::Pidfd(_) => fds[1].revents != 0,
            Liveness::Procfs(dir) => Liveness::procfs_gone(dir),
        };
        if exited {
            let _ = tx.send(Msg::Exited(now));
            return;
        }
    })
}

fn basename(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

/// Runs a recording to its end and returns the summary.
pub fn run(opts: &Options) -> Result<Outcome, RecordError> {
    let mut warnings = Vec::new();
    // Output first: a bad --out fails before anything starts.
    let mut trace = match &opts.out {
        Some(p) => Some(TraceWriter::create(p)?),
        None => None,
    };
    let prepared = match &opts.target {
        Target::Command(cmd) => Some(Prepared::new(cmd)?),
        Target::Pid { pid, .. } => {
            if !opts.procfs_root.join(pid.to_string()).is_dir() {
                return Err(RecordError::NoSuchPid(*pid));
            }
            None
        }
    };

    let load_start = monotonic_ns();
    let mut attach_ns = 0;
    let mut loaded = match opts.mode {
        Mode::Procfs => None,
        mode => match Loaded::load_with(&opts.sysfs_root, opts.peak_event_step, opts.rss_program)
            .inspect(|_| attach_ns = monotonic_ns().saturating_sub(load_start))
        {
            Ok(l) => {
                if l.report.mounted_tracefs {
                    eprintln!(
                        "o3: mounted tracefs at {}",
                        opts.sysfs_root.join("kernel/tracing").display()
                    );
                }
                if let Some(why) = &l.report.rss_fallback {
                    let w = format!("RSS follows the classic rss_stat tracepoint, which costs more per page fault: {why}");
                    eprintln!("o3: note: {w}");
                    warnings.push(w);
                }
                if !opts.rss_program.measures() {
                    let w = format!(
                        "benchmark variant {}: RSS is not measured",
                        opts.rss_program.name()
                    );
                    eprintln!("o3: warning: {w}");
                    warnings.push(w);
                }
                Some(l)
            }
            Err(e) if mode == Mode::Ebpf => return Err(RecordError::EbpfRequired(e)),
            Err(e) => {
                let w = format!(
                    "eBPF unavailable ({e}); measuring by procfs polling, peaks between samples are missed"
                );
                eprintln!("o3: warning: {w}");
                warnings.push(w);
                None
            }
        },
    };
    let gpu_mem_exact = matches!(loaded.as_ref().map(|l| &l.gpu_mem), Some(Ok(_)));
    let gpu_mem_note = match loaded.as_ref().map(|l| &l.gpu_mem) {
        Some(Ok(_)) => None,
        Some(Err(why)) => Some(why.to_string()),
        None => Some("eBPF is not loaded: GPU memory peaks are sampled".to_string()),
    };
    let method = if loaded.is_some() {
        Method::Ebpf
    } else {
        Method::ProcfsPolling
    };

    // Start the target.
    let t0;
    let root;
    match (&opts.target, prepared) {
        (Target::Command(_), Some(prepared)) => {
            let held = spawn::fork_held(&prepared)?;
            if let Some(l) = loaded.as_mut() {
                if let Err(e) = l
                    .track(held.pid, true)
                    .and_then(|_| l.start_ticks(opts.interval))
                {
                    held.abandon();
                    return Err(e.into());
                }
            }
            t0 = monotonic_ns();
            root = held.release()?;
        }
        (Target::Pid { pid, .. }, _) => {
            root = *pid;
            t0 = monotonic_ns();
            if let Some(l) = loaded.as_mut() {
                let mut parents = procfs::scan_parents(&opts.procfs_root)
                    .map_err(|e| RecordError::Io("scanning procfs".into(), e))?;
                // o3 itself is in the tree of any of its ancestors (`--pid 1`, the shell that
                // started it): it measures, it is not measured. Without its entry, neither it
                // nor anything it started is reached from the root.
                parents.remove(&std::process::id());
                l.attach_existing(&opts.procfs_root, &procfs::descendants(&parents, root))?;
                l.start_ticks(opts.interval)?;
            }
        }
        _ => unreachable!("prepared exactly for commands"),
    }
    let start_unix_ns = unix_now_ns();
    let sig_fd = signals::install().map_err(|e| RecordError::Io("signal pipe".into(), e))?;

    let (target_json, what) = match &opts.target {
        Target::Command(cmd) => {
            let argv: Vec<String> = cmd.iter().map(|a| a.to_string_lossy().into()).collect();
            let what = format!("`{}`", argv.join(" "));
            (serde_json::json!({ "command": argv, "pid": root }), what)
        }
        Target::Pid { pid, .. } => (serde_json::json!({ "pid": pid }), format!("pid {pid}")),
    };
    let mut sources: Vec<Box<dyn Source>> = Vec::new();
    let mut kernel_ticks = false;
    match loaded.as_mut().and_then(|l| l.take_source()) {
        Some(s) => {
            kernel_ticks = s.kernel_ticks();
            sources.push(Box::new(s))
        }
        None => sources.push(Box::new(ProcTree::new(&opts.procfs_root, root).map_err(
            |e| RecordError::Io(format!("reading {}/{root}", opts.procfs_root.display()), e),
        )?)),
    }
    let system = if opts.safety.is_some() {
        SystemMemory::open(&opts.procfs_root)
    } else {
        SystemMemory::memory_only(&opts.procfs_root)
    };
    match system {
        Ok(m) => sources.push(Box::new(m)),
        Err(e) => warnings.push(format!("system memory not measured: {e}")),
    }
    let (mut gpu, gpu_warnings) = GpuSource::open(GpuOptions {
        select: opts.gpu,
        sysfs_root: opts.sysfs_root.clone(),
        procfs_root: opts.procfs_root.clone(),
        dev_root: opts.dev_root.clone(),
        sensor_every: opts.interval.max(Duration::from_millis(100)),
        process_every: opts.interval.max(Duration::from_millis(500)),
    });
    for w in gpu_warnings {
        eprintln!("o3: warning: {w}");
        warnings.push(w);
    }
    let gpu_infos = gpu.infos();
    if let (false, Some(note)) = (gpu.is_empty(), gpu_mem_note) {
        // Said once: the GPU memory peaks below are sampled, not exact.
        eprintln!("o3: note: {note}");
        warnings.push(note);
    }
    if !gpu.is_empty() {
        gpu.track(root);
        sources.push(Box::new(gpu));
    }

    let liveness = Liveness::new(opts, root)?;
    if let Some(l) = loaded.as_mut() {
        l.sample_cost(monotonic_ns())?;
    }
    let cpu_self0 = self_cpu_ns();
    let interval_ns = opts.interval.as_nanos() as u64;
    let (tx, rx) = channel();
    let flush = opts.interval.max(sampler::FLUSH);
    if let Some(t) = trace.as_mut() {
        let (host, kernel) = uname();
        t.header(&Header {
            schema_version: SCHEMA_VERSION,
            o3_version: env!("CARGO_PKG_VERSION"),
            host,
            kernel,
            interval_ns: opts.interval.as_nanos() as u64,
            start_unix_ns,
            target: target_json.clone(),
            methods: Methods {
                rss: method,
                cpu: method,
                mem_used: Method::ProcfsPolling,
                gpu_mem: if gpu_mem_exact { "ebpf" } else { "sampled" },
            },
            gpus: gpu_infos.clone(),
        })?;
    }

    if let Some(th) = &opts.safety {
        let breach_tx = tx.clone();
        let kill_root = matches!(opts.target, Target::Command(_));
        let mut dog = Watchdog::new(
            th.clone(),
            Box::new(move |b: &Breach| {
                // Act from the sampler thread, within the interval that saw the breach.
                if kill_root {
                    // SAFETY: signalling the command o3 started (not yet reaped: o3 reaps it
                    // only after this thread has stopped sampling).
                    unsafe { libc::kill(root as i32, libc::SIGTERM) };
                }
                let _ = breach_tx.send(Msg::Breach(b.clone()));
            }),
        );
        for g in &gpu_infos {
            let crit = |n: &str| g.crit_c.iter().find(|(k, _)| k == n).map(|(_, c)| *c);
            dog.set_gpu_crit(g.index, crit("junction"), crit("mem"));
        }
        sources.push(Box::new(dog));
    }
    let ticks_tx = tx.clone();
    let user_every = sampler::user_cadence(
        opts.interval,
        kernel_ticks,
        !gpu_infos.is_empty() || opts.safety.is_some(),
    );
    let flush = flush.max(user_every);
    let sampler = sampler::spawn(sources, user_every, flush, t0, move |b| {
        ticks_tx.send(Msg::Ticks(b)).is_ok()
    });
    let stop = sampler.stop_flag();
    let deadline = match opts.target {
        Target::Pid {
            duration: Some(d), ..
        } => Some(t0 + d.as_nanos() as u64),
        _ => None,
    };
    spawn_waiter(liveness, deadline, sig_fd, tx);

    let mut agg = Aggregate::new(interval_ns);
    let mut comms = std::collections::BTreeMap::new();
    let mut exit = None;
    let mut child_rusage = None;
    let mut end_ns = None;
    let mut forwarded = false;
    let mut write_error = None;
    let mut breaches = Vec::new();
    let mut handle = |batch: Vec<sampler::Tick>,
                      trace: &mut Option<TraceWriter>,
                      write_error: &mut Option<TraceError>| {
        for tick in batch {
            for e in &tick.events {
                match e {
                    TreeEvent::Fork { pid, comm, .. } => {
                        comms.entry(*pid).or_insert_with(|| comm.clone());
                    }
                    TreeEvent::Exec { pid, filename, .. } => {
                        comms.insert(*pid, basename(filename));
                    }
                    _ => {}
                }
                if let Some(t) = trace.as_mut() {
                    if let Err(err) = t.event(e) {
                        write_error.get_or_insert(err);
                    }
                }
            }
            if let Some(t) = trace.as_mut() {
                if let Err(err) = t.sample(&tick.sample) {
                    write_error.get_or_insert(err);
                }
            }
            agg.add(tick.sample);
        }
    };
    while end_ns.is_none() {
        let Ok(msg) = rx.recv() else { break };
        match msg {
            Msg::Ticks(batch) => {
                handle(batch, &mut trace, &mut write_error);
                if let Some(l) = loaded.as_mut() {
                    // It worked at the start; a later failure only shortens the sampling.
                    let _ = l.sample_cost(monotonic_ns());
                }
            }
            Msg::Exited(now) => {
                if matches!(opts.target, Target::Command(_)) {
                    let mut status = 0;
                    // SAFETY: zeroed rusage is a valid out-value.
                    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
                    // SAFETY: reaping our own child, which has exited; valid out-pointers.
                    let r = unsafe { libc::wait4(root as i32, &mut status, 0, &mut ru) };
                    if r == root as i32 {
                        exit = Some(ExitInfo::from_status(status));
                        let (user, sys) = (tv_ns(ru.ru_utime), tv_ns(ru.ru_stime));
                        child_rusage = Some(Rusage {
                            user_ns: user,
                            sys_ns: sys,
                            cpu_ns: user + sys,
                            maxrss_bytes: ru.ru_maxrss as u64 * 1024,
                        });
                    }
                }
                end_ns = Some(now);
            }
            Msg::Deadline(now) => end_ns = Some(now),
            Msg::Breach(b) => {
                eprintln!("o3: {b}");
                if matches!(opts.target, Target::Pid { .. }) {
                    // Not o3's process to stop: the recording ends and says why.
                    end_ns = Some(monotonic_ns());
                }
                breaches.push(b);
            }
            // An attached recording ends on Ctrl-C or SIGTERM.
            Msg::Signal(_) if matches!(opts.target, Target::Pid { .. }) => {
                end_ns = Some(monotonic_ns())
            }
            // With a command, o3 waits for it like `time` does: Ctrl-C reaches the command
            // through the terminal; a SIGTERM/SIGHUP sent to o3 alone is passed on to it.
            Msg::Signal(sig) => {
                if sig != libc::SIGINT && !forwarded {
                    forwarded = true;
                    // SAFETY: signalling our own child.
                    unsafe { libc::kill(root as i32, sig) };
                }
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    let (sources, sstats) = sampler.finish();
    let cpu_self = self_cpu_ns().saturating_sub(cpu_self0);
    // The sampler's last batch (taken when it stopped) is in the channel now.
    while let Ok(msg) = rx.try_recv() {
        if let Msg::Ticks(batch) = msg {
            handle(batch, &mut trace, &mut write_error);
        }
    }
    let (bpf_ns, bpf_cnt) = loaded.as_mut().map_or((0, 0), |l| l.program_stats());
    let wall_ns = end_ns.unwrap_or_else(monotonic_ns).saturating_sub(t0);

    let mut processes: Vec<ProcessPeak> = match loaded.as_ref() {
        Some(l) => l
            .per_process()
            .into_iter()
            .map(|(pid, peak, cpu)| ProcessPeak {
                pid,
                comm: comms.get(&pid).cloned().unwrap_or_else(|| {
                    std::fs::read_to_string(opts.procfs_root.join(format!("{pid}/comm")))
                        .map(|s| s.trim().to_string())
                        .unwrap_or_else(|_| "?".into())
                }),
                peak_rss_bytes: peak.rss_peak.max(0) as u64,
                peak_t_ns: peak.rss_peak_ns.saturating_sub(t0),
                cpu_ns: Some(cpu),
            })
            .collect(),
        None => sources.iter().flat_map(|s| s.processes()).collect(),
    };
    processes.sort_by_key(|p| std::cmp::Reverse(p.peak_rss_bytes));

    let last = &agg.last;
    let cpu_total = last.cpu_ns.unwrap_or(0);
    let summary = Summary {
        schema_version: SCHEMA_VERSION,
        o3_version: env!("CARGO_PKG_VERSION"),
        target: target_json,
        wall_ns,
        exit: exit.clone(),
        rss: RssSummary {
            peak_bytes: last.rss_peak_bytes.unwrap_or(0),
            peak_t_ns: last.rss_peak_t_ns.unwrap_or(0),
            final_bytes: last.rss_bytes.unwrap_or(0),
            method,
            program: loaded.as_ref().map(|l| l.report.rss_program),
        },
        processes,
        cpu: CpuSummary {
            total_ns: cpu_total,
            avg_percent: if wall_ns > 0 {
                cpu_total as f64 / wall_ns as f64 * 100.0
            } else {
                0.0
            },
            peak_percent: agg.cpu_peak_percent(),
            peak_window_ns: agg.window_ns(),
            method,
        },
        system_memory: agg.system_memory(),
        rusage: child_rusage,
        sampling: Sampling {
            interval_ns,
            kernel: kernel_ticks,
            sources_every_ns: user_every.as_nanos() as u64,
            samples: agg.samples,
            late_ticks: sstats.late_ticks,
            max_tick_ns: sstats.max_tick_ns,
        },
        overhead: Overhead {
            attach_ns,
            o3_cpu_ns: cpu_self,
            sampler_cpu_ns: sstats.cpu_ns,
            bpf_run_ns: bpf_ns,
            bpf_run_count: bpf_cnt,
            percent_of_one_core: if wall_ns > 0 {
                (cpu_self + bpf_ns) as f64 / wall_ns as f64 * 100.0
            } else {
                0.0
            },
        },
        gpus: agg.gpus(&gpu_infos),
        gpu_mem_exact: match loaded.as_ref().map(|l| &l.gpu_mem) {
            Some(Ok(p)) => p
                .managers()
                .into_iter()
                .map(|(_, m)| summary::ExactGpuMem {
                    kind: if m.kind == o3_common::GPU_MEM_KIND_GTT {
                        "gtt"
                    } else {
                        "vram"
                    },
                    allocated_peak_bytes: m.peak.max(0) as u64,
                    allocated_peak_t_ns: m.peak_ns.saturating_sub(t0),
                    allocations: m.allocs,
                    frees: m.frees,
                })
                .collect(),
            _ => Vec::new(),
        },
        gpu_processes: agg.gpu_processes(),
        safety: opts.safety.clone().map(|thresholds| Safety {
            thresholds,
            breaches,
        }),
        warnings,
    };
    if let Some(t) = trace.as_mut() {
        let v = serde_json::to_value(&summary).expect("summary serialises");
        t.summary(&v)?;
    }
    if let Some(e) = write_error {
        return Err(e.into());
    }
    let exit_code = exit.as_ref().map_or(0, ExitInfo::shell_code);
    Ok(Outcome {
        summary,
        exit_code,
        what,
    })
}
