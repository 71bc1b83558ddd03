//! `o3 monitor`: live system and GPU view, one compact line (or JSON object) per refresh, and
//! optionally a Prometheus endpoint.

use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::telemetry::gpu::source::{GpuInfo, GpuOptions, GpuSource};
use crate::telemetry::procfs::SystemMemory;
use crate::telemetry::sampler::{self, MAX_INTERVAL, MIN_INTERVAL};
use crate::telemetry::{monotonic_ns, Sample, Source};
use crate::trace::export::prometheus::{self, Peaks};
use crate::util::duration;
use crate::util::units::bytes;

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
    /// Serve Prometheus metrics on ADDR (e.g. 127.0.0.1:9464) at /metrics.
    #[arg(long, value_name = "ADDR")]
    pub prometheus: Option<String>,
    #[command(flatten)]
    pub gpu: GpuArg,
}

/// One compact line: RAM, CPU, then each GPU's memory (GTT and carve-out apart on an APU).
pub fn line(s: &Sample, infos: &[GpuInfo]) -> String {
    let mut out = String::new();
    if let (Some(u), Some(t)) = (s.mem_used_bytes, s.mem_total_bytes) {
        out += &format!("RAM {} / {}", bytes(u), bytes(t));
    }
    if let Some(c) = s.system_cpu_percent {
        out += &format!("  CPU {c:.0} %");
    }
    for g in &s.gpus {
        let info = infos.iter().find(|i| i.index == g.index);
        let apu = info.is_some_and(|i| i.apu);
        out += &format!("  | GPU{}", g.index);
        if g.asleep {
            out += " asleep";
        }
        let r = &g.reading;
        if let (Some(u), Some(t)) = (g.usable_used_bytes, g.usable_total_bytes) {
            out += &format!(
                " {} {} / {}",
                if apu { "GTT" } else { "VRAM" },
                bytes(u),
                bytes(t)
            );
        }
        if apu {
            if let (Some(u), Some(t)) = (r.vram_used_bytes, r.vram_total_bytes) {
                out += &format!(" (carve-out {} / {})", bytes(u), bytes(t));
            }
        }
        if let Some(b) = r.gpu_busy_percent {
            out += &format!(" busy {b:.0} %");
        }
        if let Some(t) = r.temp_edge_c {
            out += &format!(" {t:.0} °C");
        }
        if let Some(t) = r.temp_junction_c {
            out += &format!(" (junction {t:.0} °C)");
        }
        if let Some(p) = r.power_w {
            out += &format!(" {p:.0} W");
        }
    }
    out
}

pub fn run(roots: &Roots, a: MonitorArgs) -> CliResult {
    let fail = |e: String| (anyhow::anyhow!(e), 1);
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
    let mut sources: Vec<Box<dyn Source>> = vec![Box::new(system), Box::new(gpu)];
    if a.once {
        // Two readings 100 ms apart, so CPU % (a difference) is defined.
        let mut s = Sample::default();
        let t0 = monotonic_ns();
        for src in &mut sources {
            src.sample(t0, t0, &mut s, &mut Vec::new());
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut s = Sample {
            t_ns: monotonic_ns() - t0,
            ..Sample::default()
        };
        let now = monotonic_ns();
        for src in &mut sources {
            src.sample(now, t0, &mut s, &mut Vec::new());
        }
        print(&s, &infos, a.json);
        return Ok(0);
    }
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
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(batch) => {
                for tick in batch {
                    peaks.add(&tick.sample);
                    if a.prometheus.is_some() {
                        *text.lock().expect("not poisoned") =
                            prometheus::render(&tick.sample, &peaks, &infos);
                    }
                    print(&tick.sample, &infos, a.json);
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

fn print(s: &Sample, infos: &[GpuInfo], json: bool) {
    if json {
        println!("{}", serde_json::to_string(s).expect("sample serialises"));
    } else {
        println!("{:>9.3} s  {}", s.t_ns as f64 / 1e9, line(s, infos));
    }
}
