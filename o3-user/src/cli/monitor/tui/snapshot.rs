//! What one frame of `o3 monitor --tui` shows, and the sampling thread that makes one per
//! refresh. The thread owns its sources and sends each snapshot over a channel; the draw loop
//! only receives (and sets the stop flag when it quits).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::telemetry::gpu::source::{GpuInfo, GpuSource};
use crate::telemetry::procfs::SystemMemory;
use crate::telemetry::top::{self, TopProcess};
use crate::telemetry::{monotonic_ns, Sample, Source};

/// Process rows per table at most (a table shows as many as its height holds).
pub const TOP: usize = 40;

/// The process tables are rescanned at most this often (a scan reads every process's stat,
/// statm and fds), whatever the interval.
pub const PROCESS_EVERY: Duration = Duration::from_secs(1);

/// Everything one frame draws.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub host: String,
    pub interval: Duration,
    /// Wall clock of the sample, seconds since the Unix epoch.
    pub unix_s: u64,
    pub sample: Sample,
    pub gpus: Vec<GpuInfo>,
    /// The processes with the most GPU memory (only those with some).
    pub by_gpu: Vec<TopProcess>,
    /// The processes with the most resident memory.
    pub by_rss: Vec<TopProcess>,
}

/// The sources one snapshot is read from.
pub struct Collector {
    pub system: Option<SystemMemory>,
    pub gpu: GpuSource,
    pub procfs: PathBuf,
    pub interval: Duration,
    pub host: String,
    t0_ns: u64,
    /// The last process tables and when they were made.
    procs: Option<(Instant, Vec<TopProcess>, Vec<TopProcess>)>,
}

impl Collector {
    pub fn new(
        system: Option<SystemMemory>,
        gpu: GpuSource,
        procfs: PathBuf,
        interval: Duration,
    ) -> Collector {
        Collector {
            system,
            gpu,
            procfs,
            interval,
            host: crate::util::system::uname().0,
            t0_ns: monotonic_ns(),
            procs: None,
        }
    }

    /// Reads every source once.
    pub fn collect(&mut self) -> Snapshot {
        let now = monotonic_ns();
        let mut sample = Sample {
            t_ns: now.saturating_sub(self.t0_ns),
            ..Sample::default()
        };
        if let Some(s) = self.system.as_mut() {
            s.sample(now, self.t0_ns, &mut sample, &mut Vec::new());
        }
        self.gpu
            .sample(now, self.t0_ns, &mut sample, &mut Vec::new());
        let (by_gpu, by_rss) = self.processes();
        Snapshot {
            host: self.host.clone(),
            interval: self.interval,
            unix_s: crate::util::system::unix_now_ns() / 1_000_000_000,
            sample,
            gpus: self.gpu.infos(),
            by_gpu,
            by_rss,
        }
    }
}

impl Collector {
    /// The process tables, rescanned when the last scan is [`PROCESS_EVERY`] old.
    fn processes(&mut self) -> (Vec<TopProcess>, Vec<TopProcess>) {
        if let Some((at, by_gpu, by_rss)) = &self.procs {
            if at.elapsed() < PROCESS_EVERY {
                return (by_gpu.clone(), by_rss.clone());
            }
        }
        let mut procs = top::scan(&self.procfs, crate::telemetry::page_size() as u64);
        self.gpu.track_only(procs.iter().map(|p| p.pid));
        let gpu = self.gpu.read_processes();
        // Untracked again, so that the source's own sampling does not read them a second time.
        self.gpu.track_only([]);
        top::add_gpu(&mut procs, &gpu);
        let (by_gpu, by_rss) = top::rank(&procs, TOP);
        self.procs = Some((Instant::now(), by_gpu.clone(), by_rss.clone()));
        (by_gpu, by_rss)
    }
}

/// Starts the sampling thread: a snapshot now and every `interval` after, until `stop` is set
/// or the receiver is gone.
pub fn spawn(
    mut c: Collector,
    tx: Sender<Snapshot>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("o3-tui-sampler".into())
        .spawn(move || {
            let step = c.interval;
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if tx.send(c.collect()).is_err() {
                    return;
                }
                next += step;
                // Sleep in short slices so that quitting does not wait for a long interval.
                while !stop.load(Ordering::Relaxed) {
                    let left = next.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    std::thread::sleep(left.min(Duration::from_millis(50)));
                }
            }
        })
}
