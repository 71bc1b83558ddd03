//! `o3 monitor`: live system and GPU view, one compact line (or JSON object) per refresh, and
//! optionally a Prometheus endpoint; or a full-screen view (`--tui`).

mod line;
mod tui;

use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::telemetry::gpu::source::{GpuInfo, GpuOptions, GpuSource};
use crate::telemetry::procfs::SystemMemory;
use crate::telemetry::sampler::{self, MAX_INTERVAL, MIN_INTERVAL};
use crate::telemetry::{monotonic_ns, Sample, Source};
use crate::trace::export::prometheus::{self, Peaks};
use crate::util::duration;

use super::{CliResult, GpuArg, Roots};

fn parse_interval(s: &str) -> Result<Duration, duration::DurationError> {
    duration::parse_in_range(s, MIN_INTERVAL, MAX_INTERVAL)
}

#[derive(Debug, clap::Args)]
pub struct MonitorArgs {
    /// Refresh interval (1ms to 10s).
    #[arg(long, value_name = "D", default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Print one sample and exit.
    #[arg(long)]
    pub once: bool,
    /// One JSON object per refresh instead of a text line.
    #[arg(long)]
    pub json: bool,
    /// Serve Prometheus metrics on ADDR (e.g. 127.0.0.1:9464) at /metrics (not with --once:
    /// the endpoint lives as long as the monitor).
    #[arg(long, value_name = "ADDR", conflicts_with = "once")]
    pub prometheus: Option<String>,
    /// Full-screen live view: GPU memory bars with what bounds them, sensors, system RAM, and
    /// the top processes by GPU memory and by RSS. q, Esc or Ctrl-C quits. Needs a terminal.
    #[arg(long, conflicts_with_all = ["once", "json", "prometheus"])]
    pub tui: bool,
    #[command(flatten)]
    pub gpu: GpuArg,
}

pub fn run(roots: &Roots, a: MonitorArgs) -> CliResult {
    let fail = |e: String| (anyhow::anyhow!(e), 1);
    if a.tui {
        tui::check_terminal().map_err(|e| (e.into(), 2))?;
    }
    let (gpu, warnings) = GpuSource::open(GpuOptions {
        select: a.gpu.gpu,
        sysfs_root: roots.sysfs_root.clone(),
        procfs_root: roots.procfs_root.clone(),
        dev_root: roots.dev_root.clone(),
        sensor_every: a.interval.min(Duration::from_millis(100)),
        process_every: Duration::from_secs(1),
    });
    for w in &warnings {
        eprintln!("o3: warning: {w}");
    }
    let infos = gpu.infos();
    let system = SystemMemory::open(&roots.procfs_root).map_err(|e| {
        fail(format!(
            "reading {}/meminfo: {e} (check --procfs-root)",
            roots.procfs_root.display()
        ))
    })?;
    if a.tui {
        let sig = crate::util::signals::install().map_err(|e| fail(e.to_string()))?;
        let c =
            tui::snapshot::Collector::new(Some(system), gpu, roots.procfs_root.clone(), a.interval);
        tui::run(c, sig).map_err(|e| fail(e.to_string()))?;
        return Ok(0);
    }
    let mut sources: Vec<Box<dyn Source>> = vec![Box::new(system), Box::new(gpu)];
    if a.once {
        let s = once(&mut sources);
        if a.json {
            print_json(&s);
        } else {
            println!("{}", line::Paged::default().next(&s, &infos));
        }
        return Ok(0);
    }
    live(sources, &infos, &a)
}

/// One sample from two readings 100 ms apart, so CPU % (a difference) is defined.
fn once(sources: &mut [Box<dyn Source>]) -> Sample {
    let mut s = Sample::default();
    let t0 = monotonic_ns();
    for src in sources.iter_mut() {
        src.sample(t0, t0, &mut s, &mut Vec::new());
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut s = Sample {
        t_ns: monotonic_ns() - t0,
        ..Sample::default()
    };
    let now = monotonic_ns();
    for src in sources.iter_mut() {
        src.sample(now, t0, &mut s, &mut Vec::new());
    }
    s
}

/// A line or JSON object per refresh, and the Prometheus endpoint, until a signal.
fn live(sources: Vec<Box<dyn Source>>, infos: &[GpuInfo], a: &MonitorArgs) -> CliResult {
    let fail = |e: String| (anyhow::anyhow!(e), 1);
    let text = Arc::new(Mutex::new(String::new()));
    if let Some(addr) = &a.prometheus {
        let bound = prometheus::serve(addr, text.clone()).map_err(|e| {
            fail(format!(
                "cannot listen on {addr}: {e} (choose another address with --prometheus)"
            ))
        })?;
        eprintln!("o3: serving Prometheus metrics at http://{bound}/metrics");
    }
    let sig = crate::util::signals::install().map_err(|e| fail(e.to_string()))?;
    let (tx, rx) = channel();
    let t0 = monotonic_ns();
    let h = sampler::spawn(sources, a.interval, Duration::ZERO, t0, move |b| {
        tx.send(b).is_ok()
    });
    let mut peaks = Peaks::default();
    let mut lines = line::Paged::default();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(batch) => {
                for tick in batch {
                    peaks.add(&tick.sample);
                    if a.prometheus.is_some() {
                        *text.lock().expect("not poisoned") =
                            prometheus::render(&tick.sample, &peaks, infos);
                    }
                    if a.json {
                        print_json(&tick.sample);
                    } else {
                        println!("{}", lines.next(&tick.sample, infos));
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        // A signal number waiting in the non-blocking signal pipe ends the monitor.
        if nix::unistd::read(sig, &mut [0u8; 1]) == Ok(1) {
            break;
        }
    }
    h.finish();
    Ok(0)
}

fn print_json(s: &Sample) {
    println!("{}", serde_json::to_string(s).expect("sample serialises"));
}
