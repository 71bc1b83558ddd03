//! The safety watchdog: checks every sample against thresholds and reports the first breach of
//! each metric (metric, value, limit, time). Memory and temperature breach on one sample; CPU
//! must stay over its limit for `cpu_sustain`, so one noisy sample does not abort a run.
//!
//! It runs as the last [`Source`] on the sampler thread, so a breach is acted on within the
//! interval that saw it: the `on_breach` callback (the recorder stops the workload) and a
//! `safety_breach` event in the trace.
//!
//! Two kinds of breach: a memory one (RAM, VRAM or GTT percentages and reserves) is about the
//! configuration, which asked for too much; a temperature or sustained-CPU one is about the
//! machine at that moment (a hot afternoon, another job), which `crate::optimize::heat`
//! waits out instead of failing the configuration ([`machine_breach`]).

use std::time::Duration;

use serde::Serialize;

use super::{Sample, Source, TreeEvent};

/// Limits; defaults from the plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Thresholds {
    /// Of the GPU-usable capacity (GTT on an APU, VRAM on a discrete card).
    pub max_vram_percent: f64,
    pub max_ram_percent: f64,
    /// Applies to edge temperatures (an APU's only one). Junction and memory temperatures,
    /// which run hotter by design, are checked against their device's own critical limit.
    pub max_temperature_c: f64,
    /// System CPU busy, % of all cores.
    pub max_cpu_percent: f64,
    pub vram_reserve_bytes: u64,
    pub ram_reserve_bytes: u64,
    /// How long CPU must stay over its limit before it counts.
    pub cpu_sustain: Duration,
}

impl Default for Thresholds {
    fn default() -> Thresholds {
        Thresholds {
            max_vram_percent: 90.0,
            max_ram_percent: 85.0,
            max_temperature_c: 85.0,
            max_cpu_percent: 90.0,
            vram_reserve_bytes: 4096 << 20,
            ram_reserve_bytes: 4096 << 20,
            cpu_sustain: Duration::from_secs(2),
        }
    }
}

/// Junction and memory temperatures breach this far below their device's critical limit.
pub const CRIT_MARGIN_C: f64 = 5.0;

/// How a breach's text begins ([`Breach`]'s `Display`, the probe's `error`).
pub const BREACH_PREFIX: &str = "safety limit: ";

/// Whether a breach of `metric` is about the machine (temperature, sustained CPU) rather than
/// the configuration (memory): the first is waited out, the second fails the configuration.
pub fn machine_breach(metric: &str) -> bool {
    matches!(metric, "temperature_c" | "cpu_percent")
}

/// What a breach's text states, read back (a probe result keeps the breach only as its
/// `error` text). Byte metrics come back in MiB, as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Stated {
    pub metric: String,
    pub gpu: Option<u32>,
    pub value: f64,
    pub limit: f64,
}

impl Stated {
    /// Reads `safety limit: [GPU <n> ]<metric> <value>[ MiB] over|below <limit>[ MiB] at ..`
    /// anywhere in `text`; `None` for any other text.
    pub fn parse(text: &str) -> Option<Stated> {
        let rest = &text[text.find(BREACH_PREFIX)? + BREACH_PREFIX.len()..];
        let mut w = rest.split_whitespace().peekable();
        let mut gpu = None;
        if w.peek() == Some(&"GPU") {
            w.next();
            gpu = Some(w.next()?.parse().ok()?);
        }
        let metric = w.next()?.to_string();
        let value = w.next()?.parse().ok()?;
        w.next_if_eq(&"MiB");
        if !matches!(w.next()?, "over" | "below") {
            return None;
        }
        let limit = w.next()?.parse().ok()?;
        Some(Stated {
            metric,
            gpu,
            value,
            limit,
        })
    }
}

/// A threshold crossed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Breach {
    /// `ram_percent`, `ram_reserve_bytes`, `vram_percent`, `vram_reserve_bytes`,
    /// `temperature_c`, `cpu_percent`.
    pub metric: &'static str,
    pub value: f64,
    pub limit: f64,
    pub t_ns: u64,
    pub gpu: Option<u32>,
}

impl std::fmt::Display for Breach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.gpu {
            Some(g) => format!("GPU {g} {}", self.metric),
            None => self.metric.to_string(),
        };
        let (v, l) = if self.metric.ends_with("_bytes") {
            (
                format!("{} MiB", (self.value / 1048576.0).round()),
                format!("{} MiB", (self.limit / 1048576.0).round()),
            )
        } else {
            (format!("{:.1}", self.value), format!("{:.1}", self.limit))
        };
        let cmp = if self.metric.contains("reserve") {
            "below"
        } else {
            "over"
        };
        write!(
            f,
            "{BREACH_PREFIX}{what} {v} {cmp} {l} at {:.3} s",
            self.t_ns as f64 / 1e9
        )
    }
}

pub struct Watchdog {
    th: Thresholds,
    /// Critical limits per GPU index: (junction, mem) in °C.
    gpu_crit: Vec<(u32, Option<f64>, Option<f64>)>,
    cpu_over_since: Option<u64>,
    fired: Vec<(&'static str, Option<u32>)>,
    on_breach: Box<dyn FnMut(&Breach) + Send>,
}

impl Watchdog {
    pub fn new(th: Thresholds, on_breach: Box<dyn FnMut(&Breach) + Send>) -> Watchdog {
        Watchdog {
            th,
            gpu_crit: Vec::new(),
            cpu_over_since: None,
            fired: Vec::new(),
            on_breach,
        }
    }

    /// Critical junction/memory temperatures a GPU reports.
    pub fn set_gpu_crit(&mut self, gpu: u32, junction: Option<f64>, mem: Option<f64>) {
        self.gpu_crit.push((gpu, junction, mem));
    }

    /// All thresholds crossed in this sample (each metric reported once).
    pub fn check(&mut self, s: &Sample) -> Vec<Breach> {
        let mut out = Breaches {
            t_ns: s.t_ns,
            found: Vec::new(),
        };
        self.check_memory(s, &mut out);
        self.check_temperatures(s, &mut out);
        self.check_cpu(s, &mut out);
        let mut found = out.found;
        found.retain(|b| self.first_of_its_kind(b));
        found
    }

    /// System RAM, and each GPU's usable memory: percentage and reserve.
    fn check_memory(&self, s: &Sample, out: &mut Breaches) {
        let th = &self.th;
        out.capacity(
            s.mem_used_bytes,
            s.mem_total_bytes,
            ("ram_percent", th.max_ram_percent),
            ("ram_reserve_bytes", th.ram_reserve_bytes),
            None,
        );
        for g in &s.gpus {
            out.capacity(
                g.usable_used_bytes,
                g.usable_total_bytes,
                ("vram_percent", th.max_vram_percent),
                ("vram_reserve_bytes", th.vram_reserve_bytes),
                Some(g.index),
            );
        }
    }

    /// Edge temperatures against the limit; junction and memory ones against their device's
    /// critical limit less [`CRIT_MARGIN_C`].
    fn check_temperatures(&self, s: &Sample, out: &mut Breaches) {
        let max = self.th.max_temperature_c;
        for g in &s.gpus {
            if let Some(t) = g.reading.temp_edge_c.filter(|t| *t > max) {
                out.hit("temperature_c", t, max, Some(g.index));
            }
            let crit = self.gpu_crit.iter().find(|(i, _, _)| *i == g.index);
            for (t, crit) in [
                (g.reading.temp_junction_c, crit.and_then(|c| c.1)),
                (g.reading.temp_mem_c, crit.and_then(|c| c.2)),
            ] {
                if let (Some(t), Some(crit)) = (t, crit) {
                    let limit = crit - CRIT_MARGIN_C;
                    if t > limit {
                        out.hit("temperature_c", t, limit, Some(g.index));
                    }
                }
            }
        }
    }

    /// System CPU over its limit for `cpu_sustain` in a row.
    fn check_cpu(&mut self, s: &Sample, out: &mut Breaches) {
        let max = self.th.max_cpu_percent;
        match s.system_cpu_percent {
            Some(c) if c > max => {
                let since = *self.cpu_over_since.get_or_insert(s.t_ns);
                if s.t_ns - since >= self.th.cpu_sustain.as_nanos() as u64 {
                    out.hit("cpu_percent", c, max, None);
                }
            }
            _ => self.cpu_over_since = None,
        }
    }

    /// True the first time `b`'s metric breaches on its device; remembers it.
    fn first_of_its_kind(&mut self, b: &Breach) -> bool {
        let key = (b.metric, b.gpu);
        if self.fired.contains(&key) {
            return false;
        }
        self.fired.push(key);
        true
    }
}

/// The breaches found in one sample, in the order they were checked.
struct Breaches {
    t_ns: u64,
    found: Vec<Breach>,
}

impl Breaches {
    fn hit(&mut self, metric: &'static str, value: f64, limit: f64, gpu: Option<u32>) {
        self.found.push(Breach {
            metric,
            value,
            limit,
            t_ns: self.t_ns,
            gpu,
        });
    }

    /// Percentage of a capacity in use over `max_pct`, and free bytes under `reserve`.
    fn capacity(
        &mut self,
        used: Option<u64>,
        total: Option<u64>,
        (pct_metric, max_pct): (&'static str, f64),
        (reserve_metric, reserve): (&'static str, u64),
        gpu: Option<u32>,
    ) {
        let (Some(used), Some(total)) = (used, total) else {
            return;
        };
        if total == 0 {
            return;
        }
        let pct = used as f64 / total as f64 * 100.0;
        if pct > max_pct {
            self.hit(pct_metric, pct, max_pct, gpu);
        }
        let free = total.saturating_sub(used);
        if free < reserve {
            self.hit(reserve_metric, free as f64, reserve as f64, gpu);
        }
    }
}

impl Source for Watchdog {
    fn name(&self) -> &'static str {
        "watchdog"
    }

    fn sample(&mut self, _now: u64, _t0: u64, out: &mut Sample, events: &mut Vec<TreeEvent>) {
        for b in self.check(out) {
            (self.on_breach)(&b);
            events.push(TreeEvent::SafetyBreach {
                t_ns: b.t_ns,
                metric: b.metric.to_string(),
                value: b.value,
                limit: b.limit,
                gpu: b.gpu,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::gpu::source::GpuSample;
    use crate::telemetry::gpu::GpuReading;
    use std::sync::{Arc, Mutex};

    /// A scripted run: `f(i)` gives the i-th sample at 10 ms intervals.
    fn run(th: Thresholds, n: usize, f: impl Fn(usize) -> Sample) -> Vec<(usize, Breach)> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let mut w = Watchdog::new(th, Box::new(move |b| log.lock().unwrap().push(b.clone())));
        w.set_gpu_crit(0, Some(110.0), Some(100.0));
        let mut out = Vec::new();
        for i in 0..n {
            let mut s = f(i);
            s.t_ns = i as u64 * 10_000_000;
            let mut ev = Vec::new();
            w.sample(s.t_ns, 0, &mut s, &mut ev);
            let reported = seen.lock().unwrap().split_off(0);
            assert_eq!(ev.len(), reported.len(), "one event per callback");
            for (e, b) in ev.into_iter().zip(reported) {
                let TreeEvent::SafetyBreach { metric, .. } = e else {
                    panic!("unexpected event {e:?}");
                };
                assert_eq!(metric, b.metric);
                out.push((i, b));
            }
        }
        out
    }

    fn gpu(used: u64, total: u64, edge: f64) -> GpuSample {
        GpuSample {
            index: 0,
            reading: GpuReading {
                temp_edge_c: Some(edge),
                ..GpuReading::default()
            },
            usable_used_bytes: Some(used),
            usable_total_bytes: Some(total),
            asleep: false,
        }
    }

    #[test]
    fn ram_breach_aborts_on_the_sample_that_crosses() {
        let b = run(Thresholds::default(), 10, |i| Sample {
            mem_used_bytes: Some(if i < 6 { 50 } else { 90 } << 30),
            mem_total_bytes: Some(100 << 30),
            ..Sample::default()
        });
        assert_eq!(b.len(), 1, "reported once");
        assert_eq!(b[0].0, 6);
        assert_eq!(b[0].1.metric, "ram_percent");
        assert!((b[0].1.value - 90.0).abs() < 1e-9 && b[0].1.limit == 85.0);
        assert_eq!(b[0].1.t_ns, 60_000_000);
    }

    #[test]
    fn vram_percent_and_reserve_on_a_gtt_capacity() {
        let total = 120u64 << 30;
        let b = run(Thresholds::default(), 5, |i| Sample {
            gpus: vec![gpu(if i < 3 { 40 << 30 } else { 117 << 30 }, total, 50.0)],
            ..Sample::default()
        });
        let metrics: Vec<_> = b.iter().map(|(i, b)| (*i, b.metric, b.gpu)).collect();
        assert_eq!(
            metrics,
            vec![
                (3, "vram_percent", Some(0)),
                (3, "vram_reserve_bytes", Some(0))
            ]
        );
        assert!(b[1].1.to_string().contains("below 4096 MiB"), "{}", b[1].1);
    }

    #[test]
    fn temperature_edge_limit_and_junction_crit() {
        let b = run(Thresholds::default(), 4, |i| {
            let mut g = gpu(1, 100 << 30, if i == 1 { 86.0 } else { 60.0 });
            g.reading.temp_junction_c = Some(if i == 3 { 106.0 } else { 90.0 });
            Sample {
                gpus: vec![g],
                ..Sample::default()
            }
        });
        assert_eq!(
            b.len(),
            1,
            "junction 90 °C is normal; 106 reported under the same metric once"
        );
        assert_eq!((b[0].0, b[0].1.metric), (1, "temperature_c"));
        assert_eq!(b[0].1.value, 86.0);
    }

    #[test]
    fn one_noisy_cpu_sample_does_not_abort_a_sustained_one_does() {
        let th = Thresholds {
            cpu_sustain: Duration::from_millis(50),
            ..Thresholds::default()
        };
        // A single spike at sample 2, then sustained from sample 10.
        let b = run(th, 20, |i| Sample {
            system_cpu_percent: Some(if i == 2 || i >= 10 { 99.0 } else { 20.0 }),
            ..Sample::default()
        });
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].0, 15, "over the limit for 50 ms: samples 10..=15");
        assert_eq!(b[0].1.metric, "cpu_percent");
    }

    #[test]
    fn a_breach_text_reads_back_and_says_its_class() {
        let heat = Breach {
            metric: "temperature_c",
            value: 86.04,
            limit: 85.0,
            t_ns: 3_000_000_000,
            gpu: Some(1),
        };
        let s = Stated::parse(&format!("probe failed: {heat}")).unwrap();
        assert_eq!(
            s,
            Stated {
                metric: "temperature_c".into(),
                gpu: Some(1),
                value: 86.0,
                limit: 85.0
            }
        );
        assert!(machine_breach(&s.metric));
        let reserve = Breach {
            metric: "vram_reserve_bytes",
            value: (1u64 << 30) as f64,
            limit: (4096u64 << 20) as f64,
            t_ns: 0,
            gpu: Some(0),
        };
        let s = Stated::parse(&reserve.to_string()).unwrap();
        assert_eq!((s.value, s.limit), (1024.0, 4096.0));
        assert!(!machine_breach(&s.metric));
        let cpu = Breach {
            metric: "cpu_percent",
            value: 97.5,
            limit: 90.0,
            t_ns: 0,
            gpu: None,
        };
        let s = Stated::parse(&cpu.to_string()).unwrap();
        assert_eq!((s.gpu, s.value), (None, 97.5));
        assert!(machine_breach(&s.metric));
        for m in ["ram_percent", "ram_reserve_bytes", "vram_percent"] {
            assert!(!machine_breach(m), "{m}");
        }
        assert_eq!(Stated::parse("the server exited while loading"), None);
        assert_eq!(Stated::parse("safety limit: GPU x temperature_c"), None);
    }

    #[test]
    fn missing_values_never_breach() {
        let b = run(Thresholds::default(), 3, |_| Sample {
            gpus: vec![GpuSample::default()],
            ..Sample::default()
        });
        assert!(b.is_empty());
    }
}
