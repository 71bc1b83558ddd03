//! The steps before sampling: load the kernel programs, start (or attach to) the target, open
//! the sources it is measured by, and arm the watchdog.

use std::sync::mpsc::Sender;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::spawn::{self, Prepared};
use super::waiter::Msg;
use super::{Mode, Options, RecordError, Target};
use crate::telemetry::ebpf::Loaded;
use crate::telemetry::gpu::source::{GpuInfo, GpuOptions, GpuSource};
use crate::telemetry::procfs::{self, ProcTree, SystemMemory};
use crate::telemetry::watchdog::{Breach, Watchdog};
use crate::telemetry::{monotonic_ns, Method, Source};

/// Says a warning on stderr and keeps it for the summary.
pub(super) fn warn(warnings: &mut Vec<String>, level: &str, w: String) {
    eprintln!("o3: {level}: {w}");
    warnings.push(w);
}

/// The kernel programs, or None (procfs polling), with the time loading and attaching took.
pub(super) fn load_ebpf(
    opts: &Options,
    warnings: &mut Vec<String>,
) -> Result<(Option<Loaded>, u64), RecordError> {
    if opts.mode == Mode::Procfs {
        return Ok((None, 0));
    }
    let load_start = monotonic_ns();
    match Loaded::load_with(&opts.sysfs_root, opts.peak_event_step, opts.rss_program) {
        Ok(l) => {
            let attach_ns = monotonic_ns().saturating_sub(load_start);
            say_how_loaded(opts, &l, warnings);
            Ok((Some(l), attach_ns))
        }
        Err(e) if opts.mode == Mode::Ebpf => Err(RecordError::EbpfRequired(e)),
        Err(e) => {
            let w = format!(
                "eBPF unavailable ({e}); measuring by procfs polling, peaks between samples are missed"
            );
            warn(warnings, "warning", w);
            Ok((None, 0))
        }
    }
}

/// The notes of a successful load: tracefs mounted, the classic RSS program, a bench variant.
fn say_how_loaded(opts: &Options, l: &Loaded, warnings: &mut Vec<String>) {
    if l.report.mounted_tracefs {
        eprintln!(
            "o3: mounted tracefs at {}",
            opts.sysfs_root.join("kernel/tracing").display()
        );
    }
    if let Some(why) = &l.report.rss_fallback {
        let w = format!(
            "RSS follows the classic rss_stat tracepoint, which costs more per page fault: {why}"
        );
        warn(warnings, "note", w);
    }
    if !opts.rss_program.measures() {
        let w = format!(
            "benchmark variant {}: RSS is not measured",
            opts.rss_program.name()
        );
        warn(warnings, "warning", w);
    }
}

/// Why GPU memory peaks are sampled rather than exact, or None when they are exact.
pub(super) fn gpu_mem_note(loaded: Option<&Loaded>) -> Option<String> {
    match loaded.map(|l| &l.gpu_mem) {
        Some(Ok(_)) => None,
        Some(Err(why)) => Some(why.to_string()),
        None => Some("eBPF is not loaded: GPU memory peaks are sampled".to_string()),
    }
}

pub(super) fn method(loaded: Option<&Loaded>) -> Method {
    if loaded.is_some() {
        Method::Ebpf
    } else {
        Method::ProcfsPolling
    }
}

/// Starts the command (tracked from its first instruction) or attaches to the running tree.
/// Returns the start time (CLOCK_MONOTONIC ns) and the root pid.
pub(super) fn start_target(
    opts: &Options,
    prepared: Option<Prepared>,
    loaded: Option<&mut Loaded>,
) -> Result<(u64, u32), RecordError> {
    match (&opts.target, prepared) {
        (Target::Command(_), Some(prepared)) => {
            let held = spawn::fork_held(&prepared)?;
            if let Some(l) = loaded {
                if let Err(e) = l
                    .track(held.pid, true)
                    .and_then(|()| l.start_ticks(opts.interval))
                {
                    held.abandon();
                    return Err(e.into());
                }
            }
            let t0 = monotonic_ns();
            Ok((t0, held.release()?))
        }
        (Target::Pid { pid, .. }, _) => {
            let t0 = monotonic_ns();
            if let Some(l) = loaded {
                attach(opts, *pid, l)?;
            }
            Ok((t0, *pid))
        }
        (Target::Command(_), None) => unreachable!("prepared exactly for commands"),
    }
}

/// Tracks an existing tree from `root` down.
fn attach(opts: &Options, root: u32, l: &mut Loaded) -> Result<(), RecordError> {
    let mut parents = procfs::scan_parents(&opts.procfs_root)
        .map_err(|e| RecordError::Io("scanning procfs".into(), e))?;
    // o3 itself is in the tree of any of its ancestors (`--pid 1`, the shell that started
    // it): it measures, it is not measured. Without its entry, neither it nor anything it
    // started is reached from the root.
    parents.remove(&std::process::id());
    l.attach_existing(&opts.procfs_root, &procfs::descendants(&parents, root))?;
    l.start_ticks(opts.interval)?;
    Ok(())
}

/// The target as the summary's JSON names it, and as the text summary does.
pub(super) fn describe_target(target: &Target, root: u32) -> (serde_json::Value, String) {
    match target {
        Target::Command(cmd) => {
            let argv: Vec<String> = cmd.iter().map(|a| a.to_string_lossy().into()).collect();
            // Shell-quoted, so that it can be pasted back into a shell.
            let what = crate::util::shell::join(&argv);
            (serde_json::json!({ "command": argv, "pid": root }), what)
        }
        Target::Pid { pid, .. } => (serde_json::json!({ "pid": pid }), format!("pid {pid}")),
    }
}

/// The sources the sampler reads, and what they are.
pub(super) struct Sources {
    pub list: Vec<Box<dyn Source>>,
    /// The tree is sampled in the kernel at the interval.
    pub kernel_ticks: bool,
    pub gpu_infos: Vec<GpuInfo>,
}

/// The tree (the kernel's maps, or procfs), system memory and the GPUs.
pub(super) fn open_sources(
    opts: &Options,
    root: u32,
    loaded: Option<&mut Loaded>,
    warnings: &mut Vec<String>,
) -> Result<Sources, RecordError> {
    let gpu_note = gpu_mem_note(loaded.as_deref());
    let mut list: Vec<Box<dyn Source>> = Vec::new();
    let mut kernel_ticks = false;
    match loaded.and_then(|l| l.take_source()) {
        Some(s) => {
            kernel_ticks = s.kernel_ticks();
            list.push(Box::new(s));
        }
        None => list.push(Box::new(ProcTree::new(&opts.procfs_root, root).map_err(
            |e| RecordError::Io(format!("reading {}/{root}", opts.procfs_root.display()), e),
        )?)),
    }
    let system = if opts.safety.is_some() {
        SystemMemory::open(&opts.procfs_root)
    } else {
        SystemMemory::memory_only(&opts.procfs_root)
    };
    match system {
        Ok(m) => list.push(Box::new(m)),
        Err(e) => warnings.push(format!("system memory not measured: {e}")),
    }
    let gpu_infos = open_gpus(opts, root, gpu_note, &mut list, warnings);
    Ok(Sources {
        list,
        kernel_ticks,
        gpu_infos,
    })
}

fn open_gpus(
    opts: &Options,
    root: u32,
    gpu_mem_note: Option<String>,
    list: &mut Vec<Box<dyn Source>>,
    warnings: &mut Vec<String>,
) -> Vec<GpuInfo> {
    let (mut gpu, gpu_warnings) = GpuSource::open(GpuOptions {
        select: opts.gpu,
        sysfs_root: opts.sysfs_root.clone(),
        procfs_root: opts.procfs_root.clone(),
        dev_root: opts.dev_root.clone(),
        sensor_every: opts.interval.max(Duration::from_millis(100)),
        process_every: opts.interval.max(Duration::from_millis(500)),
    });
    for w in gpu_warnings {
        warn(warnings, "warning", w);
    }
    let infos = gpu.infos();
    if let (false, Some(note)) = (gpu.is_empty(), gpu_mem_note) {
        // Said once: the GPU memory peaks below are sampled, not exact.
        warn(warnings, "note", note);
    }
    if !gpu.is_empty() {
        gpu.track(root);
        list.push(Box::new(gpu));
    }
    infos
}

/// The watchdog as one more source: it stops the command o3 started when a limit is crossed
/// and tells the loop.
pub(super) fn watchdog(
    opts: &Options,
    root: u32,
    gpus: &[GpuInfo],
    tx: Sender<Msg>,
) -> Option<Watchdog> {
    let th = opts.safety.as_ref()?;
    let kill_root = matches!(opts.target, Target::Command(_));
    let mut dog = Watchdog::new(
        th.clone(),
        Box::new(move |b: &Breach| {
            // Act from the sampler thread, within the interval that saw the breach. The
            // command o3 started is not reaped yet: o3 reaps it only after this thread has
            // stopped sampling, so the pid is still its.
            if kill_root {
                let _ = kill(Pid::from_raw(root as i32), Signal::SIGTERM);
            }
            let _ = tx.send(Msg::Breach(b.clone()));
        }),
    );
    for g in gpus {
        let crit = |n: &str| g.crit_c.iter().find(|(k, _)| k == n).map(|(_, c)| *c);
        dog.set_gpu_crit(g.index, crit("junction"), crit("mem"));
    }
    Some(dog)
}
