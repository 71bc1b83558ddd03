//! `o3 record`: run a command (or attach to a process tree), sample it, write a trace, and
//! summarise exact peaks.

mod collect;
mod finish;
mod start;
pub use crate::util::spawn;
pub mod summary;
mod table;
mod waiter;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::channel;
use std::time::Duration;

use nix::sys::resource::{getrusage, UsageWho};
use thiserror::Error;

use crate::telemetry::counters::SampledTree;
use crate::telemetry::ebpf::{EbpfError, RssProgram};
use crate::telemetry::gpu::source::{GpuInfo, GpuSelect};
use crate::telemetry::watchdog::Thresholds;
use crate::telemetry::{monotonic_ns, sampler, Method};
use crate::trace::{Header, Methods, TraceError, TraceWriter, SCHEMA_VERSION};
use crate::util::signals;
use crate::util::system::{uname, unix_now_ns};
use collect::Collected;
use spawn::{Prepared, SpawnError};
use summary::{ExitInfo, Summary};
use waiter::{spawn_waiter, Liveness, Msg};

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

/// CPU time o3 itself has used (all its threads).
fn self_cpu_ns() -> u64 {
    let ns = |tv: nix::sys::time::TimeVal| {
        tv.tv_sec() as u64 * 1_000_000_000 + tv.tv_usec() as u64 * 1_000
    };
    getrusage(UsageWho::RUSAGE_SELF).map_or(0, |r| ns(r.user_time()) + ns(r.system_time()))
}

/// The output first, so that a bad --out fails before anything starts; then the command is
/// checked, or the pid.
fn prepare(opts: &Options) -> Result<(Option<TraceWriter>, Option<Prepared>), RecordError> {
    let trace = match &opts.out {
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
    Ok((trace, prepared))
}

/// The trace's header: the host, the target, how each figure is measured, the GPUs.
fn header(
    opts: &Options,
    target: &serde_json::Value,
    method: Method,
    gpu_mem_exact: bool,
    gpus: &[GpuInfo],
    start_unix_ns: u64,
) -> Header {
    let (host, kernel) = uname();
    Header {
        schema_version: SCHEMA_VERSION,
        o3_version: Some(env!("CARGO_PKG_VERSION").into()),
        host: Some(host),
        kernel: Some(kernel),
        interval_ns: Some(opts.interval.as_nanos() as u64),
        start_unix_ns: Some(start_unix_ns),
        target: target.clone(),
        methods: Methods {
            rss: method,
            cpu: method,
            mem_used: Method::ProcfsPolling,
            gpu_mem: if gpu_mem_exact { "ebpf" } else { "sampled" },
        },
        gpus: gpus.to_vec(),
    }
}

/// Starts the sampler thread, which sends its batches to the loop. Returns it with the
/// cadence of the user-space sources. `watched`: GPUs are read or the watchdog is on, which
/// need every interval.
fn start_sampler(
    opts: &Options,
    sources: Vec<Box<dyn crate::telemetry::Source>>,
    kernel_ticks: bool,
    watched: bool,
    t0: u64,
    tx: std::sync::mpsc::Sender<Msg>,
) -> (sampler::SamplerHandle, Duration) {
    let user_every = sampler::user_cadence(opts.interval, kernel_ticks, watched);
    let flush = opts.interval.max(sampler::FLUSH).max(user_every);
    let handle = sampler::spawn(sources, user_every, flush, t0, move |b| {
        tx.send(Msg::Ticks(b)).is_ok()
    });
    (handle, user_every)
}

/// Runs a recording to its end and returns the summary.
pub fn run(opts: &Options) -> Result<Outcome, RecordError> {
    let mut warnings = Vec::new();
    let (mut trace, prepared) = prepare(opts)?;
    let (mut loaded, attach_ns) = start::load_ebpf(opts, &mut warnings)?;
    let method = start::method(loaded.as_ref());
    let gpu_mem_exact = start::gpu_mem_note(loaded.as_ref()).is_none();
    let (t0, root) = start::start_target(opts, prepared, loaded.as_mut())?;
    let start_unix_ns = unix_now_ns();
    let sig_fd = signals::install().map_err(|e| RecordError::Io("signal pipe".into(), e))?;
    let (target_json, what) = start::describe_target(&opts.target, root);
    let mut sources = start::open_sources(opts, root, loaded.as_mut(), &mut warnings)?;

    let liveness = Liveness::new(opts, root)?;
    // A tree o3 did not start has no rusage to wait for: its counters come from procfs,
    // counted from now.
    let sampled = matches!(opts.target, Target::Pid { .. })
        .then(|| SampledTree::start(&opts.procfs_root, root));
    if let Some(l) = loaded.as_mut() {
        l.sample_cost(monotonic_ns())?;
    }
    let cpu_self0 = self_cpu_ns();
    let (tx, rx) = channel();
    if let Some(t) = trace.as_mut() {
        let gpus = &sources.gpu_infos;
        t.header(&header(
            opts,
            &target_json,
            method,
            gpu_mem_exact,
            gpus,
            start_unix_ns,
        ))?;
    }
    if let Some(dog) = start::watchdog(opts, root, &sources.gpu_infos, tx.clone()) {
        sources.list.push(Box::new(dog));
    }
    let watched = !sources.gpu_infos.is_empty() || opts.safety.is_some();
    let (sampler, user_every) = start_sampler(
        opts,
        sources.list,
        sources.kernel_ticks,
        watched,
        t0,
        tx.clone(),
    );
    let stop = sampler.stop_flag();
    let deadline = match opts.target {
        Target::Pid { duration, .. } => duration.map(|d| t0 + d.as_nanos() as u64),
        Target::Command(_) => None,
    };
    spawn_waiter(liveness, deadline, sig_fd, tx);

    let mut c = Collected::new(opts.interval.as_nanos() as u64, sampled);
    c.run(&rx, &opts.target, root, loaded.as_mut(), &mut trace);
    c.read_counters(true);
    stop.store(true, Ordering::SeqCst);
    let (sources_back, sstats) = sampler.finish();
    let cpu_self_ns = self_cpu_ns().saturating_sub(cpu_self0);
    c.drain(&rx, &mut trace);
    let bpf = loaded.as_mut().map_or((0, 0), |l| l.program_stats());
    let wall_ns = c.end_ns.unwrap_or_else(monotonic_ns).saturating_sub(t0);
    let write_error = c.write_error.take();

    let m = finish::Measured {
        opts,
        loaded: loaded.as_ref(),
        method,
        target_json,
        t0,
        wall_ns,
        attach_ns,
        cpu_self_ns,
        bpf,
        sampler: sstats,
        user_every_ns: user_every.as_nanos() as u64,
        kernel_ticks: sources.kernel_ticks,
        gpu_infos: &sources.gpu_infos,
        warnings,
    };
    let processes = finish::processes(&m, &c, &sources_back);
    let summary = finish::summary(m, c, processes);
    conclude(summary, trace, write_error, what)
}

/// Writes the summary into the trace; a trace write that failed on the way fails the run now.
fn conclude(
    summary: Summary,
    mut trace: Option<TraceWriter>,
    write_error: Option<TraceError>,
    what: String,
) -> Result<Outcome, RecordError> {
    if let Some(t) = trace.as_mut() {
        let v = serde_json::to_value(&summary).expect("summary serialises");
        t.summary(&v)?;
    }
    if let Some(e) = write_error {
        return Err(e.into());
    }
    let exit_code = summary.exit.as_ref().map_or(0, ExitInfo::shell_code);
    Ok(Outcome {
        summary,
        exit_code,
        what,
    })
}
