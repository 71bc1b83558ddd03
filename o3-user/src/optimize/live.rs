//! The live prober: each probe is one `crate::probe::run` against the real server (launched by
//! o3 with that configuration, or reached where it runs), measured with a fresh eBPF session
//! when the kernel allows it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::{OutcomeClass, ProbeConfig};
use crate::config::Config;
use crate::probe::{self, BackendSpec, ProbeResult, ProbeSpec, Prompts, SampleKind};
use crate::telemetry::ebpf::Loaded;
use crate::timing::TimeModel;

use super::journal::Raw;
use super::prober::{Depth, ProbeOutcome, ProbeRequest, Prober, Stage};
use super::stats::Observation;

/// How long the machine's load from outside is measured before each probe: short beside a
/// probe of the target machine (minutes), long enough to see a busy core.
const BUSY_WINDOW: Duration = Duration::from_millis(250);

pub struct Live {
    pub backend: BackendSpec,
    pub config: Config,
    pub sysfs_root: PathBuf,
    /// Where procfs is mounted (`--procfs-root`; `/proc` unless [`Live::with_procfs_root`]).
    pub procfs_root: PathBuf,
    /// Measure with eBPF (a fresh session per probe, since a session follows one server).
    pub ebpf: bool,
    pub stop: Arc<AtomicBool>,
    /// Where the probe in flight stands, for the progress display.
    pub phase: Arc<crate::probe::phase::Phase>,
    raw: Option<serde_json::Value>,
    /// Set when a probe's eBPF session could not load (the probe fell back to procfs).
    pub ebpf_error: Option<String>,
    /// Where each probe's trace file goes (`NNN-stage-config.jsonl`), if anywhere.
    traces: Option<PathBuf>,
    /// The next trace file's number.
    next_trace: usize,
    /// Set when a trace file could not be written (the probe's result is kept regardless).
    pub trace_error: Option<String>,
    /// What the search knows of the server's speed: request deadlines come from it.
    model: Option<TimeModel>,
    /// Other processes' share of the CPUs just before each probe (see `noise`).
    pub busy: Vec<f64>,
    /// The backend of each build compared (`--server-bin` given more than once), by path.
    builds: Vec<(String, BackendSpec)>,
}

impl Live {
    pub fn new(backend: BackendSpec, config: Config, sysfs_root: PathBuf, ebpf: bool) -> Live {
        Live {
            backend,
            config,
            sysfs_root,
            procfs_root: PathBuf::from("/proc"),
            ebpf,
            stop: Arc::new(AtomicBool::new(false)),
            phase: Arc::default(),
            raw: None,
            ebpf_error: None,
            traces: None,
            next_trace: 0,
            trace_error: None,
            model: None,
            busy: Vec::new(),
            builds: Vec::new(),
        }
    }

    /// The backends of the builds compared, by path: a probe whose configuration names a
    /// build runs that build's binary (with the flags its own `--help` lists).
    pub fn with_builds(mut self, builds: Vec<(String, BackendSpec)>) -> Live {
        self.builds = builds;
        self
    }

    /// The backend a configuration runs on: its build's, else the run's.
    fn backend_for(&self, c: &crate::backend::ProbeConfig) -> BackendSpec {
        c.server_bin
            .as_ref()
            .and_then(|b| self.builds.iter().find(|(p, _)| p == b))
            .map_or_else(|| self.backend.clone(), |(_, s)| s.clone())
    }

    /// Reads the machine's procfs under `root` (`--procfs-root`).
    pub fn with_procfs_root(mut self, root: PathBuf) -> Live {
        self.procfs_root = root;
        self
    }

    /// Writes each probe's samples as a trace file into `dir` (created), numbered after the
    /// files already there, so a resumed run continues the sequence.
    pub fn with_traces(mut self, dir: PathBuf) -> std::io::Result<Live> {
        std::fs::create_dir_all(&dir)?;
        self.next_trace = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".jsonl"))
            .count();
        self.traces = Some(dir);
        Ok(self)
    }

    fn write_trace(&mut self, req: &ProbeRequest, r: &ProbeResult) {
        let Some(dir) = &self.traces else { return };
        let c = &req.config;
        let name = format!(
            "{:03}-{}-c{}-b{}-p{}-n{}.jsonl",
            self.next_trace,
            req.stage.name(),
            c.ctx,
            c.batch.map_or("x".to_string(), |b| b.to_string()),
            c.parallel.unwrap_or(1),
            req.concurrency
        );
        self.next_trace += 1;
        let target =
            serde_json::json!({ "optimize": { "stage": req.stage.name(), "key": req.key() } });
        let interval = Duration::from_millis(u64::from(self.config.monitoring.interval_ms));
        if let Err(e) = probe::trace::write(&dir.join(name), r, target, interval) {
            self.trace_error.get_or_insert(e.to_string());
        }
    }

    fn spec(&self, req: &ProbeRequest) -> ProbeSpec {
        let c = &self.config;
        let (prompts, prompt_tokens) = match req.depth {
            Depth::Load => (Prompts::Short, None),
            Depth::Fresh { tokens } => (Prompts::Fresh, Some(tokens)),
            Depth::Filled { tokens } => (
                if c.prompt.reuse_prefix {
                    Prompts::ReusePrefix
                } else {
                    Prompts::Fresh
                },
                Some(tokens),
            ),
        };
        ProbeSpec {
            backend: self.backend_for(&req.config),
            config: req.config.clone(),
            samples: req.rounds,
            concurrency: req.concurrency,
            output_tokens: c.prompt.output_tokens,
            fill: c.prompt.fill,
            prompt_tokens,
            max_prompt_tokens: None,
            prompts,
            // Mixed workloads: chat turns beside the streams at depth, in the concurrency
            // stage only (the probe keeps at least one stream at depth).
            chat_streams: if req.stage == Stage::Concurrency {
                c.concurrency.mixed_short_streams
            } else {
                0
            },
            limits: c.timeouts.limits(),
            time_model: self.model.clone(),
            load_timeout: Duration::from_secs_f64(c.timeouts.load_s),
            interval: Duration::from_millis(u64::from(c.monitoring.interval_ms)),
            // The same request always sends the same prompts.
            seed: fnv(&req.key()),
            safety: Some(c.safety.thresholds()),
            stabilize: if req.stage == Stage::Concurrency {
                Duration::from_secs_f64(c.concurrency.stabilization_delay_s)
            } else {
                Duration::ZERO
            },
            cancel: Some(self.stop.clone()),
            phase: Some(self.phase.clone()),
            procfs_root: self.procfs_root.clone(),
        }
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Reduces a probe result to what the search needs. Chat turns sent beside the streams at
/// depth (mixed workloads) are carried as their summary only: stability, timeouts and the
/// metrics come from the streams at depth, as without them.
pub fn outcome_of(r: &ProbeResult, wall_ms: f64) -> ProbeOutcome {
    let long: Vec<&probe::SampleResult> = r
        .samples
        .iter()
        .filter(|s| s.kind != SampleKind::Chat)
        .collect();
    let observations = long
        .iter()
        .map(|s| {
            let ok = s.outcome == OutcomeClass::Ok;
            Observation {
                ok,
                ttft_ms: s.ttft_ms.filter(|_| ok),
                prefill_tokens_per_s: s.prefill_tokens_per_s.filter(|_| ok),
                decode_tokens_per_s: s.decode_tokens_per_s.filter(|_| ok),
                // A sample meant to reuse the prefix that did not is a whole-prompt read.
                cached: s.kind == SampleKind::Cached && s.prefix_hit != Some(false),
            }
        })
        .collect();
    let timeouts = long
        .iter()
        .filter(|s| s.outcome == OutcomeClass::Timeout)
        .count() as u32;
    let (outcome, error) = if r.outcome == OutcomeClass::Ok && timeouts > 0 {
        (
            OutcomeClass::Timeout,
            Some(format!("{timeouts} of {} requests timed out", long.len())),
        )
    } else {
        (r.outcome, r.error.clone())
    };
    let max =
        |f: &dyn Fn(&probe::SampleResult) -> Option<u64>| r.samples.iter().filter_map(f).max();
    ProbeOutcome {
        outcome,
        error,
        observations,
        // Aggregate decode throughput of a round: the decode rates of its successful streams,
        // which decode at the same time, summed.
        round_tokens_per_s: (0..r.rounds.len() as u32)
            .map(|k| {
                long.iter()
                    .filter(|s| s.round == k && s.outcome == OutcomeClass::Ok)
                    .filter_map(|s| s.decode_tokens_per_s)
                    .sum()
            })
            .collect(),
        timeouts,
        prompt_tokens: long.iter().find_map(|s| s.prompt_tokens),
        rss_peak_bytes: r.rss_peak_bytes,
        rss_method: r.rss_method.to_string(),
        mem_used_peak_bytes: max(&|s| s.peaks.mem_used_peak_bytes),
        gpu_used_peak_bytes: max(&|s| s.peaks.gpu_usable_used_peak_bytes),
        load_ms: r.load_ms,
        wall_ms,
        timing: r.timing.clone(),
        prefix_reuse: r.prefix_reuse,
        notes: r.notes.clone(),
        chat: r.kinds.iter().find(|k| k.kind == "chat").cloned(),
    }
}

impl Raw for Live {
    fn take_raw(&mut self) -> Option<serde_json::Value> {
        self.raw.take()
    }
}

impl Prober for Live {
    fn know(&mut self, model: &TimeModel) {
        self.model = Some(model.clone());
    }

    fn probe(&mut self, req: &ProbeRequest) -> Option<ProbeOutcome> {
        if self.stop.load(Ordering::SeqCst) {
            return None;
        }
        let spec = self.spec(req);
        // No server of o3's runs now: what keeps the CPUs busy is someone else.
        if let Some(share) = super::noise::measure(Path::new("/proc"), BUSY_WINDOW) {
            self.busy.push(share);
        }
        let mut loaded = if self.ebpf {
            match Loaded::load(&self.sysfs_root, 1 << 20) {
                Ok(l) => Some(l),
                Err(e) => {
                    self.ebpf_error = Some(e.to_string());
                    None
                }
            }
        } else {
            None
        };
        let started = Instant::now();
        let r = probe::run(&spec, loaded.as_mut());
        let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
        drop(loaded);
        // A probe cut by a stop request measured nothing trustworthy: not recorded.
        if self.stop.load(Ordering::SeqCst) {
            return None;
        }
        self.raw = serde_json::to_value(&r).ok();
        self.write_trace(req, &r);
        Some(outcome_of(&r, wall_ms))
    }

    fn fixed_by_server(&self, cfg: &ProbeConfig) -> Vec<&'static str> {
        self.backend.fixed_by_server(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{kind_summaries, sample};

    fn result(samples: Vec<probe::SampleResult>) -> ProbeResult {
        ProbeResult {
            outcome: OutcomeClass::Ok,
            config: ProbeConfig::default(),
            fixed_by_server: Vec::new(),
            prompts: Prompts::ReusePrefix,
            prompt_tokens_target: 100,
            load_ms: None,
            kinds: kind_summaries(&samples),
            samples,
            // Two rounds of three streams.
            rounds: (0..2)
                .map(|_| probe::Round {
                    streams: 3,
                    wall_ms: 1000.0,
                    output_tokens: 24,
                    output_tokens_per_s: 24.0,
                })
                .collect(),
            rss_peak_bytes: None,
            rss_method: "not_measured",
            server_pid: None,
            server_exit: None,
            error: None,
            log_tail: None,
            prefix_reuse: None,
            timing: Vec::new(),
            notes: Vec::new(),
            timeline: None,
        }
    }

    #[test]
    fn chat_turns_decide_nothing_and_are_carried_apart() {
        // Two streams at depth and one chat stream whose second turn timed out.
        let mut chat_late = sample(2, SampleKind::Chat, false, 0.0, 0.0);
        chat_late.round = 1;
        let r = result(vec![
            sample(0, SampleKind::Fill, true, 900.0, 40.0),
            sample(1, SampleKind::Fill, true, 950.0, 38.0),
            sample(2, SampleKind::Chat, true, 30.0, 90.0),
            chat_late,
        ]);
        let o = outcome_of(&r, 1.0);
        assert_eq!(
            o.outcome,
            OutcomeClass::Ok,
            "the chat timeout decides nothing"
        );
        assert_eq!(o.timeouts, 0);
        assert_eq!(o.observations.len(), 2);
        assert_eq!(
            o.round_tokens_per_s,
            [78.0, 0.0],
            "the streams at depth only"
        );
        let chat = o.chat.expect("carried");
        assert_eq!((chat.streams, chat.n, chat.ok), (1, 2, 1));
        assert_eq!(chat.ttft_p95_ms, Some(30.0));
        // Without chat turns the outcome is as before: no summary.
        let plain = result(vec![sample(0, SampleKind::Fill, true, 900.0, 40.0)]);
        assert!(outcome_of(&plain, 1.0).chat.is_none());
    }
}
