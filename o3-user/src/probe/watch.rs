//! Telemetry of the server's process tree for the duration of a probe: exact RSS (eBPF) or
//! procfs polling, system memory, GPUs through the sampler, and the safety watchdog, which
//! stops a server o3 launched on a breach.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::telemetry::ebpf::Loaded;
use crate::telemetry::procfs::{self, ProcTree, SystemMemory};
use crate::telemetry::sampler::{self, SamplerHandle, Tick};
use crate::telemetry::watchdog::{Breach, Thresholds, Watchdog};
use crate::telemetry::{monotonic_ns, Sample, Source};

use super::{Peaks, ProbeSpec, Timeline};

/// The watchdog of a probe: it keeps the first breach and, with `stop_group`, stops the
/// server's process group (only for servers o3 launched).
fn watchdog(
    th: &Thresholds,
    pid: u32,
    stop_group: bool,
    seen: Arc<Mutex<Option<Breach>>>,
) -> Watchdog {
    Watchdog::new(
        th.clone(),
        Box::new(move |b: &Breach| {
            if stop_group {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
            if let Ok(mut s) = seen.lock() {
                s.get_or_insert_with(|| b.clone());
            }
        }),
    )
}

/// Telemetry of the server tree for the duration of a probe.
pub(super) struct Watch {
    /// How the server tree's RSS is measured: `ebpf` or `procfs_polling`.
    pub method: &'static str,
    /// The first safety breach, if the watchdog saw one.
    breach: Arc<Mutex<Option<Breach>>>,
    sampler: Option<SamplerHandle>,
    rx: std::sync::mpsc::Receiver<Vec<Tick>>,
    ticks: Vec<Tick>,
    t0: u64,
    t0_unix_ns: u64,
}

impl Watch {
    /// Starts the telemetry of the server tree whose root is `pid`. A server o3 `launched` is
    /// its own child: its tree is read under the real /proc (o3's pid namespace), and the
    /// watchdog stops its process group on a breach. One o3 did not start is read under the
    /// configured procfs root, and the kernel programs track its running tree from now on.
    /// System memory is the machine's, under the procfs root either way.
    pub fn start(
        spec: &ProbeSpec,
        pid: u32,
        launched: bool,
        mut ebpf: Option<&mut Loaded>,
    ) -> Watch {
        let procfs = if launched {
            Path::new("/proc")
        } else {
            spec.procfs_root.as_path()
        };
        if !launched {
            if let Some(l) = ebpf.as_deref_mut() {
                let parents = procfs::scan_parents(procfs).unwrap_or_default();
                let _ = l.attach_existing(procfs, &procfs::descendants(&parents, pid));
            }
        }
        let mut sources: Vec<Box<dyn Source>> = Vec::new();
        // The method is the source actually used, not whether eBPF was loaded: a session whose
        // source was already taken falls back to procfs and must say so.
        let method = match ebpf.and_then(|l| l.take_source()) {
            Some(s) => {
                sources.push(Box::new(s));
                "ebpf"
            }
            None => {
                if let Ok(t) = ProcTree::new(procfs, pid) {
                    sources.push(Box::new(t));
                }
                "procfs_polling"
            }
        };
        if let Ok(m) = SystemMemory::open(&spec.procfs_root) {
            sources.push(Box::new(m));
        }
        let breach = Arc::new(Mutex::new(None));
        if let Some(th) = &spec.safety {
            sources.push(Box::new(watchdog(th, pid, launched, breach.clone())));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let t0 = monotonic_ns();
        let t0_unix_ns = crate::util::system::unix_now_ns();
        let sampler = sampler::spawn(sources, spec.interval, Duration::ZERO, t0, move |b| {
            tx.send(b).is_ok()
        });
        Watch {
            method,
            breach,
            sampler: Some(sampler),
            rx,
            ticks: Vec::new(),
            t0,
            t0_unix_ns,
        }
    }

    pub fn breach(&self) -> Option<Breach> {
        self.breach.lock().ok()?.clone()
    }

    pub fn now(&self) -> u64 {
        monotonic_ns() - self.t0
    }

    fn drain(&mut self) {
        while let Ok(b) = self.rx.try_recv() {
            self.ticks.extend(b);
        }
    }

    /// Peaks over the ticks within [from, to] (ns since start).
    pub fn peaks(&mut self, from: u64, to: u64) -> Peaks {
        self.drain();
        let in_window: Vec<&Tick> = self
            .ticks
            .iter()
            .filter(|t| t.sample.t_ns >= from && t.sample.t_ns <= to)
            .collect();
        let mut p = Peaks::default();
        for t in &in_window {
            let s = &t.sample;
            p.rss_peak_bytes = p.rss_peak_bytes.max(s.rss_bytes);
            p.mem_used_peak_bytes = p.mem_used_peak_bytes.max(s.mem_used_bytes);
            for g in &s.gpus {
                p.gpu_usable_used_peak_bytes =
                    p.gpu_usable_used_peak_bytes.max(g.usable_used_bytes);
                if let Some(t) = g.reading.temp_edge_c {
                    p.gpu_temp_peak_c = Some(p.gpu_temp_peak_c.map_or(t, |x: f64| x.max(t)));
                }
            }
        }
        if let (Some(a), Some(b)) = (in_window.first(), in_window.last()) {
            if let (Some(c0), Some(c1)) = (a.sample.cpu_ns, b.sample.cpu_ns) {
                let at = |s: &Sample| s.cpu_t_ns.unwrap_or(s.t_ns);
                let dt = at(&b.sample).saturating_sub(at(&a.sample));
                if dt > 0 {
                    p.cpu_percent_avg = Some(c1.saturating_sub(c0) as f64 / dt as f64 * 100.0);
                }
            }
        }
        p
    }

    /// Stops sampling; returns the last sample's exact running RSS peak if eBPF measured it,
    /// and every sample.
    pub fn finish(mut self) -> (Option<u64>, Timeline) {
        if let Some(s) = self.sampler.take() {
            s.finish();
        }
        self.drain();
        let peak = self.ticks.last().and_then(|t| t.sample.rss_peak_bytes);
        let samples = std::mem::take(&mut self.ticks)
            .into_iter()
            .map(|t| t.sample)
            .collect();
        (
            peak,
            Timeline {
                start_unix_ns: self.t0_unix_ns,
                samples,
            },
        )
    }
}
