//! Heat is not a failed configuration. The watchdog stops a probe on any breach; a memory one
//! (RAM, VRAM, GTT) is the configuration's doing and fails it, but a temperature or
//! sustained-CPU one says how the machine was at that moment. Such a probe is not counted:
//! the run pauses until the sensor that breached is back below its limit less a hysteresis
//! (bounded), runs the probe once more, and if the machine breaches again it stops, recording
//! nothing, so that the run can be resumed once the machine has cooled. The search never sees
//! heat, so it never moves its bracket for it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{OutcomeClass, ProbeConfig};
use crate::telemetry::gpu::source::{GpuOptions, GpuSelect, GpuSource};
use crate::telemetry::procfs::SystemMemory;
use crate::telemetry::watchdog::{self, Stated, Thresholds, CRIT_MARGIN_C};
use crate::telemetry::{monotonic_ns, Sample, Source};
use crate::timing::TimeModel;

use super::journal::Raw;
use super::prober::{ProbeOutcome, ProbeRequest, Prober};

/// A temperature must fall this far below its limit before the probe runs again: a sensor
/// just under the limit crosses it again within seconds of load (GPU temperatures move a few
/// degrees within a request), so stopping at the limit would only buy a second breach.
pub const TEMPERATURE_HYSTERESIS_C: f64 = 5.0;

/// System CPU busy must fall this many points below its limit: the load that pushed it over
/// (another job, a compile) has then really eased, not paused between two bursts.
pub const CPU_HYSTERESIS_PERCENT: f64 = 10.0;

/// The longest cool-down: a machine still hot after this is not cooling by waiting (a
/// blocked fan, a job that keeps running), and the run stops so a person can look.
pub const MAX_COOL_DOWN: Duration = Duration::from_secs(600);

/// Sensors are read this often while cooling down: temperatures fall over tens of seconds,
/// and the CPU share is averaged over this interval.
pub const POLL: Duration = Duration::from_secs(5);

/// A probe stopped by a temperature or sustained-CPU breach.
#[derive(Debug, Clone, PartialEq)]
pub struct Heat {
    /// `temperature_c` or `cpu_percent`.
    pub metric: String,
    pub gpu: Option<u32>,
    pub value: f64,
    pub limit: f64,
}

impl Heat {
    /// The reading the sensor must fall below before the probe runs again.
    pub fn target(&self) -> f64 {
        let hysteresis = if self.metric == "cpu_percent" {
            CPU_HYSTERESIS_PERCENT
        } else {
            TEMPERATURE_HYSTERESIS_C
        };
        self.limit - hysteresis
    }

    /// `GPU 0 temperature_c 86.0 over 85.0`.
    pub fn describe(&self) -> String {
        format!(
            "{}{} {:.1} over {:.1}",
            self.gpu.map(|g| format!("GPU {g} ")).unwrap_or_default(),
            self.metric,
            self.value,
            self.limit
        )
    }

    fn sensor(&self) -> String {
        format!(
            "{}{}",
            self.gpu.map(|g| format!("GPU {g} ")).unwrap_or_default(),
            self.metric
        )
    }
}

/// The machine breach that stopped this probe, or None: the probe failed as `safety_abort`
/// and its error states a temperature or CPU breach ([`watchdog::Stated`]). A memory breach
/// is the configuration's and stays a failure.
pub fn machine_breach(out: &ProbeOutcome) -> Option<Heat> {
    if out.outcome != OutcomeClass::SafetyAbort {
        return None;
    }
    let s = Stated::parse(out.error.as_deref()?)?;
    watchdog::machine_breach(&s.metric).then_some(Heat {
        metric: s.metric,
        gpu: s.gpu,
        value: s.value,
        limit: s.limit,
    })
}

/// The sensors the watchdog reads, read again while cooling down.
pub trait Sensors {
    /// A cool-down begins: a reading from before it (a CPU share over the last interval)
    /// must not count.
    fn start(&mut self) {}

    /// The breached sensor's current reading, in the breach's unit; `None` while it cannot
    /// be told (a CPU share needs two reads).
    fn read(&mut self, heat: &Heat) -> Option<f64>;
}

/// This machine's sensors through the telemetry readers: system CPU from procfs, GPU
/// temperatures through the GPU readers (opened on the first temperature read).
pub struct Machine {
    procfs_root: PathBuf,
    gpu_options: GpuOptions,
    thresholds: Thresholds,
    system: Option<SystemMemory>,
    gpu: Option<GpuSource>,
}

impl Machine {
    pub fn new(
        procfs_root: PathBuf,
        sysfs_root: PathBuf,
        dev_root: PathBuf,
        thresholds: Thresholds,
    ) -> Machine {
        Machine {
            gpu_options: GpuOptions {
                select: GpuSelect::Auto,
                sysfs_root,
                procfs_root: procfs_root.clone(),
                dev_root,
                sensor_every: Duration::ZERO,
                process_every: MAX_COOL_DOWN,
            },
            procfs_root,
            thresholds,
            system: None,
            gpu: None,
        }
    }
}

impl Sensors for Machine {
    fn start(&mut self) {
        self.system = None;
    }

    fn read(&mut self, heat: &Heat) -> Option<f64> {
        let mut s = Sample::default();
        let mut events = Vec::new();
        let now = monotonic_ns();
        match heat.metric.as_str() {
            "cpu_percent" => {
                if self.system.is_none() {
                    self.system = SystemMemory::open(&self.procfs_root).ok();
                }
                self.system.as_mut()?.sample(now, now, &mut s, &mut events);
                s.system_cpu_percent
            }
            "temperature_c" => {
                let gpu = self
                    .gpu
                    .get_or_insert_with(|| GpuSource::open(self.gpu_options.clone()).0);
                gpu.sample(now, now, &mut s, &mut events);
                let g = s.gpus.iter().find(|g| Some(g.index) == heat.gpu)?;
                if g.asleep {
                    // Runtime-suspended: not working, so not heating (and not to be woken).
                    return Some(f64::NEG_INFINITY);
                }
                let info = gpu.infos().into_iter().find(|i| Some(i.index) == heat.gpu);
                let crit = |name: &str| {
                    info.as_ref()?
                        .crit_c
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, c)| c - CRIT_MARGIN_C)
                };
                // The sensor whose limit is the breach's (the text rounds to 0.1 °C).
                [
                    (
                        g.reading.temp_edge_c,
                        Some(self.thresholds.max_temperature_c),
                    ),
                    (g.reading.temp_junction_c, crit("junction")),
                    (g.reading.temp_mem_c, crit("mem")),
                ]
                .into_iter()
                .find(|(_, limit)| limit.is_some_and(|l| (l - heat.limit).abs() < 0.051))
                .and_then(|(t, _)| t)
            }
            _ => None,
        }
    }
}

/// Sleeps `d` in short steps; false as soon as `stop` is set (a signal asked the run to stop).
pub fn sleep_unless(stop: Arc<AtomicBool>) -> impl FnMut(Duration) -> bool {
    move |d| {
        let step = Duration::from_millis(250);
        let mut left = d;
        while !left.is_zero() {
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            let s = left.min(step);
            std::thread::sleep(s);
            left -= s;
        }
        !stop.load(Ordering::SeqCst)
    }
}

enum Cool {
    /// Below the target after this long.
    Done(Duration),
    /// Still hot at the bound, or never readable.
    TooLong,
    /// A stop request during the wait.
    Asked,
}

/// A prober that waits out a machine breach and runs the probe once more; a second machine
/// breach, or a cool-down that does not end within [`MAX_COOL_DOWN`], stops the run (the
/// probe answers `None`, so nothing is recorded) with the reason in `stopped`.
pub struct Cooled<P, S> {
    pub inner: P,
    sensors: S,
    sleep: Box<dyn FnMut(Duration) -> bool>,
    raw: Option<serde_json::Value>,
    /// Probes run again after a cool-down so far.
    pub pauses: u32,
    /// Why the run stopped for heat, if it did.
    pub stopped: Option<String>,
}

impl<P, S: Sensors> Cooled<P, S> {
    /// Waits with `std::thread::sleep`; see [`Cooled::with_sleep`].
    pub fn new(inner: P, sensors: S) -> Self {
        Cooled {
            inner,
            sensors,
            sleep: Box::new(|d| {
                std::thread::sleep(d);
                true
            }),
            raw: None,
            pauses: 0,
            stopped: None,
        }
    }

    /// How to wait: `sleep(d)` waits `d` and says whether to go on ([`sleep_unless`]).
    pub fn with_sleep(mut self, sleep: impl FnMut(Duration) -> bool + 'static) -> Self {
        self.sleep = Box::new(sleep);
        self
    }

    /// Polls the breached sensor until it is below its target, for at most [`MAX_COOL_DOWN`].
    fn cool(&mut self, heat: &Heat) -> Cool {
        self.sensors.start();
        let target = heat.target();
        let mut waited = Duration::ZERO;
        loop {
            if self.sensors.read(heat).is_some_and(|v| v < target) {
                return Cool::Done(waited);
            }
            if waited >= MAX_COOL_DOWN {
                return Cool::TooLong;
            }
            let step = POLL.min(MAX_COOL_DOWN.saturating_sub(waited));
            if !(self.sleep)(step) {
                return Cool::Asked;
            }
            waited += step;
        }
    }
}

impl<P: Raw, S> Raw for Cooled<P, S> {
    fn take_raw(&mut self) -> Option<serde_json::Value> {
        self.raw.take()
    }
}

impl<P: Prober + Raw, S: Sensors> Prober for Cooled<P, S> {
    fn know(&mut self, model: &TimeModel) {
        self.inner.know(model);
    }

    fn probe(&mut self, req: &ProbeRequest) -> Option<ProbeOutcome> {
        let first = self.inner.probe(req)?;
        let first_raw = self.inner.take_raw();
        let Some(heat) = machine_breach(&first) else {
            self.raw = first_raw;
            return Some(first);
        };
        let paused = match self.cool(&heat) {
            Cool::Done(d) => d,
            Cool::TooLong => {
                self.stopped = Some(format!(
                    "stopped for heat: {} stayed at or above {:.1} for {} s after {} (probe: \
                     {}); let the machine cool, then resume",
                    heat.sensor(),
                    heat.target(),
                    MAX_COOL_DOWN.as_secs(),
                    heat.describe(),
                    req.describe()
                ));
                return None;
            }
            Cool::Asked => return None,
        };
        self.pauses += 1;
        // A stop request during the retry records nothing, as for any probe.
        let mut out = self.inner.probe(req)?;
        let mut raw = self.inner.take_raw();
        if let Some(again) = machine_breach(&out) {
            self.stopped = Some(format!(
                "stopped for heat: {} again after a {} s pause to cool down after {} (probe: \
                 {}); let the machine cool, then resume",
                again.describe(),
                paused.as_secs(),
                heat.describe(),
                req.describe()
            ));
            return None;
        }
        out.notes.insert(
            0,
            format!(
                "paused {} s to cool down after {}; retried once",
                paused.as_secs(),
                heat.describe()
            ),
        );
        let entry = serde_json::json!({
            "breach": first.error,
            "paused_s": paused.as_secs_f64(),
            "first_attempt": super::retry::first_attempt(&first, first_raw.as_ref()),
        });
        super::retry::carry_first_attempt(first, &mut out, &mut raw, "cooled_down", entry);
        self.raw = raw;
        Some(out)
    }

    fn fixed_by_server(&self, cfg: &ProbeConfig) -> Vec<&'static str> {
        self.inner.fixed_by_server(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optimize::prober::{Depth, Stage};
    use std::cell::RefCell;
    use std::rc::Rc;

    const HOT: &str = "safety limit: GPU 0 temperature_c 86.0 over 85.0 at 3.000 s";
    const BUSY: &str = "safety limit: cpu_percent 97.0 over 90.0 at 4.000 s";
    const FULL: &str = "safety limit: GPU 0 vram_reserve_bytes 1024 MiB below 4096 MiB at 2.000 s";

    fn out(class: OutcomeClass, error: &str) -> ProbeOutcome {
        let mut o = ProbeOutcome::failed(class, error);
        o.wall_ms = 1000.0;
        o
    }

    fn ok() -> ProbeOutcome {
        let mut o = out(OutcomeClass::Ok, "");
        o.error = None;
        o
    }

    /// Answers from a script, one per probe; counts the probes.
    struct Script(Vec<ProbeOutcome>);
    impl Raw for Script {
        fn take_raw(&mut self) -> Option<serde_json::Value> {
            Some(serde_json::json!({}))
        }
    }
    impl Prober for Script {
        fn probe(&mut self, _: &ProbeRequest) -> Option<ProbeOutcome> {
            (!self.0.is_empty()).then(|| self.0.remove(0))
        }
        fn fixed_by_server(&self, _: &ProbeConfig) -> Vec<&'static str> {
            Vec::new()
        }
    }

    /// A sensor that cools by `rate` per second of waiting, from `from`; records what it was
    /// asked to read.
    #[derive(Clone)]
    struct Fixture {
        state: Rc<RefCell<FixtureState>>,
    }
    struct FixtureState {
        reading: Option<f64>,
        rate: f64,
        reads: Vec<(String, Option<u32>)>,
        waited: Duration,
    }
    impl Fixture {
        fn new(from: Option<f64>, rate: f64) -> Fixture {
            Fixture {
                state: Rc::new(RefCell::new(FixtureState {
                    reading: from,
                    rate,
                    reads: Vec::new(),
                    waited: Duration::ZERO,
                })),
            }
        }
        /// The injected clock: waiting cools the sensor, nothing sleeps.
        fn sleep(&self) -> impl FnMut(Duration) -> bool + 'static {
            let st = self.state.clone();
            move |d| {
                let mut s = st.borrow_mut();
                s.waited += d;
                let rate = s.rate;
                if let Some(r) = s.reading.as_mut() {
                    *r -= rate * d.as_secs_f64();
                }
                true
            }
        }
    }
    impl Sensors for Fixture {
        fn read(&mut self, heat: &Heat) -> Option<f64> {
            let mut s = self.state.borrow_mut();
            s.reads.push((heat.metric.clone(), heat.gpu));
            s.reading
        }
    }

    fn req() -> ProbeRequest {
        ProbeRequest {
            stage: Stage::Context,
            config: ProbeConfig {
                ctx: 4096,
                ..ProbeConfig::default()
            },
            depth: Depth::Load,
            rounds: 1,
            concurrency: 1,
        }
    }

    fn cooled(script: Vec<ProbeOutcome>, sensor: &Fixture) -> Cooled<Script, Fixture> {
        Cooled::new(Script(script), sensor.clone()).with_sleep(sensor.sleep())
    }

    #[test]
    fn only_temperature_and_cpu_breaches_are_the_machines() {
        let heat = machine_breach(&out(OutcomeClass::SafetyAbort, HOT)).unwrap();
        assert_eq!((heat.metric.as_str(), heat.gpu), ("temperature_c", Some(0)));
        assert_eq!(heat.target(), 80.0);
        let cpu = machine_breach(&out(OutcomeClass::SafetyAbort, BUSY)).unwrap();
        assert_eq!((cpu.gpu, cpu.target()), (None, 80.0));
        assert_eq!(machine_breach(&out(OutcomeClass::SafetyAbort, FULL)), None);
        let ram = "safety limit: ram_percent 90.0 over 85.0 at 1.000 s";
        assert_eq!(machine_breach(&out(OutcomeClass::SafetyAbort, ram)), None);
        // The text alone is not enough: the probe must have been stopped by the watchdog.
        assert_eq!(machine_breach(&out(OutcomeClass::Crashed, HOT)), None);
        assert_eq!(machine_breach(&ok()), None);
    }

    #[test]
    fn a_temperature_breach_waits_below_the_limit_less_hysteresis_and_retries_once() {
        // 88 °C cooling 0.2 °C/s: at 80 °C after 40 s, below it at the next poll.
        let sensor = Fixture::new(Some(88.0), 0.2);
        let mut p = cooled(vec![out(OutcomeClass::SafetyAbort, HOT), ok()], &sensor);
        let o = p.probe(&req()).unwrap();
        assert_eq!(o.outcome, OutcomeClass::Ok, "answered as if undisturbed");
        assert_eq!(
            o.notes,
            vec!["paused 45 s to cool down after GPU 0 temperature_c 86.0 over 85.0; retried once"]
        );
        assert_eq!(o.wall_ms, 2000.0);
        let st = sensor.state.borrow();
        assert_eq!(st.waited, Duration::from_secs(45));
        assert_eq!(
            st.reading,
            Some(79.0),
            "read at every poll, stopped below 80"
        );
        assert!(st
            .reads
            .iter()
            .all(|r| r == &("temperature_c".to_string(), Some(0))));
        drop(st);
        assert_eq!((p.pauses, p.stopped.as_deref()), (1, None));
        let raw = p.take_raw().unwrap();
        assert_eq!(raw["cooled_down"]["breach"], HOT);
        assert_eq!(raw["cooled_down"]["paused_s"], 45.0);
        assert_eq!(
            raw["cooled_down"]["first_attempt"]["outcome"],
            "safety_abort"
        );
    }

    #[test]
    fn a_sensor_already_cool_retries_without_a_pause() {
        let sensor = Fixture::new(Some(60.0), 0.0);
        let mut p = cooled(vec![out(OutcomeClass::SafetyAbort, HOT), ok()], &sensor);
        let o = p.probe(&req()).unwrap();
        assert!(o.notes[0].starts_with("paused 0 s"), "{:?}", o.notes);
        assert_eq!(sensor.state.borrow().reads.len(), 1);
    }

    #[test]
    fn a_sustained_cpu_breach_waits_ten_points_below_its_limit() {
        let sensor = Fixture::new(Some(95.0), 1.0);
        let mut p = cooled(vec![out(OutcomeClass::SafetyAbort, BUSY), ok()], &sensor);
        let o = p.probe(&req()).unwrap();
        assert_eq!(o.outcome, OutcomeClass::Ok);
        // Below 80 after more than 15 s of waiting: 20 s (polls of 5 s).
        assert_eq!(
            o.notes[0],
            "paused 20 s to cool down after cpu_percent 97.0 over 90.0; retried once"
        );
        assert!(sensor
            .state
            .borrow()
            .reads
            .iter()
            .all(|r| r == &("cpu_percent".to_string(), None)));
    }

    #[test]
    fn a_second_machine_breach_stops_the_run_with_a_reason() {
        let sensor = Fixture::new(Some(70.0), 0.0);
        let mut p = cooled(
            vec![
                out(OutcomeClass::SafetyAbort, HOT),
                out(OutcomeClass::SafetyAbort, BUSY),
                ok(),
            ],
            &sensor,
        );
        assert_eq!(p.probe(&req()), None, "stop, record nothing");
        let why = p.stopped.clone().unwrap();
        assert!(
            why.starts_with("stopped for heat: cpu_percent 97.0 over 90.0 again after a 0 s pause"),
            "{why}"
        );
        assert!(why.contains("GPU 0 temperature_c 86.0 over 85.0"), "{why}");
        assert!(why.contains("ctx 4096"), "{why}");
        assert_eq!(p.inner.0.len(), 1, "no third attempt");
    }

    #[test]
    fn a_machine_that_does_not_cool_within_the_bound_stops_the_run() {
        let sensor = Fixture::new(Some(90.0), 0.0);
        let mut p = cooled(vec![out(OutcomeClass::SafetyAbort, HOT), ok()], &sensor);
        assert_eq!(p.probe(&req()), None);
        assert_eq!(sensor.state.borrow().waited, MAX_COOL_DOWN);
        let why = p.stopped.clone().unwrap();
        assert!(
            why.starts_with(
                "stopped for heat: GPU 0 temperature_c stayed at or above 80.0 for 600 s"
            ),
            "{why}"
        );
        assert_eq!(p.inner.0.len(), 1, "not retried");
        // A sensor that cannot be read cannot show the machine cooled either.
        let blind = Fixture::new(None, 0.0);
        let mut p = cooled(vec![out(OutcomeClass::SafetyAbort, BUSY), ok()], &blind);
        assert_eq!(p.probe(&req()), None);
        assert!(p.stopped.is_some());
    }

    #[test]
    fn a_stop_request_during_the_cool_down_records_nothing_and_gives_no_reason() {
        let sensor = Fixture::new(Some(90.0), 0.0);
        let mut p = Cooled::new(
            Script(vec![out(OutcomeClass::SafetyAbort, HOT), ok()]),
            sensor.clone(),
        )
        .with_sleep(|_| false);
        assert_eq!(p.probe(&req()), None);
        assert_eq!(p.stopped, None, "an ordinary interruption");
    }

    #[test]
    fn a_memory_breach_fails_the_configuration_without_a_pause() {
        let sensor = Fixture::new(Some(90.0), 0.0);
        let mut p = cooled(vec![out(OutcomeClass::SafetyAbort, FULL), ok()], &sensor);
        let o = p.probe(&req()).unwrap();
        assert_eq!(o.outcome, OutcomeClass::SafetyAbort);
        assert_eq!(o.error.as_deref(), Some(FULL));
        assert!(o.notes.is_empty());
        assert!(
            sensor.state.borrow().reads.is_empty(),
            "no sensor read, no wait"
        );
        assert_eq!((p.pauses, p.inner.0.len()), (0, 1));
    }

    #[test]
    fn the_machines_cpu_share_is_read_through_procfs() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path();
        std::fs::write(
            proc.join("meminfo"),
            "MemTotal: 100 kB\nMemAvailable: 50 kB\n",
        )
        .unwrap();
        let stat = |busy: u64, idle: u64| {
            std::fs::write(
                proc.join("stat"),
                format!("cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 1 0 0 1 0 0 0 0 0 0\n"),
            )
            .unwrap();
        };
        stat(100, 900);
        let mut m = Machine::new(
            proc.to_path_buf(),
            proc.join("sys"),
            proc.join("dev"),
            Thresholds::default(),
        );
        let heat = machine_breach(&out(OutcomeClass::SafetyAbort, BUSY)).unwrap();
        m.start();
        assert_eq!(m.read(&heat), None, "one read is no share");
        stat(190, 910);
        let v = m.read(&heat).unwrap();
        assert!((v - 90.0).abs() < 1e-9, "{v}");
        // A new cool-down starts afresh.
        m.start();
        assert_eq!(m.read(&heat), None);
    }

    /// The simulator, with a machine breach injected once: the first context-search probe
    /// that would pass fails as the watchdog would fail it on a hot afternoon.
    struct HotOnce {
        sim: crate::optimize::sim::Sim,
        hit: Option<ProbeRequest>,
    }
    impl Raw for HotOnce {}
    impl Prober for HotOnce {
        fn probe(&mut self, req: &ProbeRequest) -> Option<ProbeOutcome> {
            let o = self.sim.probe(req)?;
            if self.hit.is_none() && req.stage == Stage::Context && o.passed() {
                self.hit = Some(req.clone());
                return Some(out(OutcomeClass::SafetyAbort, HOT));
            }
            Some(o)
        }
        fn fixed_by_server(&self, cfg: &ProbeConfig) -> Vec<&'static str> {
            self.sim.fixed_by_server(cfg)
        }
    }

    #[test]
    fn heat_never_moves_the_search_bracket() {
        use crate::optimize::search::{self, Inputs, Silent};
        use crate::optimize::sim::{Sim, SimModel};
        let cfg = crate::config::Config::default();
        let m = SimModel {
            capacity_bytes: 12 << 30,
            noise_cv: 0.02,
            ..SimModel::default()
        };
        let inputs = Inputs {
            variants: Vec::new(),
            config: &cfg,
            base: ProbeConfig::default(),
            trained_context: Some(m.trained_context),
            parameters: Some(m.parameters),
            weights_bytes: Some(m.weights_bytes),
            time_model: None,
            start_context: None,
            gallop: false,
            strategy: search::Strategy::Binary,
            learned: None,
        };
        let calm = search::run(&inputs, &mut Sim::new(m.clone()), &mut Silent);
        let hot = || HotOnce {
            sim: Sim::new(m.clone()),
            hit: None,
        };
        // Counted as a failure, the breach shrinks the answer: the case this guards.
        let mut failed = hot();
        let shrunk = search::run(&inputs, &mut failed, &mut Silent);
        assert!(failed.hit.is_some());
        assert!(
            shrunk.context.max_passing < calm.context.max_passing,
            "{:?} vs {:?}",
            shrunk.context.probes,
            calm.context.probes
        );

        let sensor = Fixture::new(Some(88.0), 0.5);
        let mut p = Cooled::new(hot(), sensor.clone()).with_sleep(sensor.sleep());
        let r = search::run(&inputs, &mut p, &mut Silent);
        assert!(p.inner.hit.is_some() && p.stopped.is_none());
        assert_eq!(p.pauses, 1);
        assert!(!r.interrupted);
        let bracket = |r: &search::Report| {
            let c = &r.context;
            let probes: Vec<_> = c.probes.iter().map(|p| (p.ctx, p.passed)).collect();
            (c.low, c.high, probes, c.max_passing, c.validated)
        };
        assert_eq!(bracket(&r), bracket(&calm));
        assert_eq!(r.probes, calm.probes);
        assert!(calm.context.validated.is_some());
    }
}
