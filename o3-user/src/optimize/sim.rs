//! An in-process server simulator whose truth is known: memory decides which configurations
//! load (weights + KV cache × context × slots + compute buffer by batch ≤ capacity), rates
//! follow a simple roofline, requests carry seeded noise, and failures are injected
//! deterministically. It answers the same [`Prober`] questions the live server does, with the
//! simulated time each probe would have taken, so the search and its baselines can be checked
//! against the truth and compared without a GPU.

use serde::{Deserialize, Serialize};

use crate::backend::{OutcomeClass, ProbeConfig};

use super::journal::Raw;
use super::prober::{ProbeOutcome, ProbeRequest, Prober};
use super::stats::Observation;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimModel {
    pub capacity_bytes: u64,
    pub weights_bytes: u64,
    pub kv_bytes_per_token: u64,
    pub compute_base_bytes: u64,
    pub compute_per_batch_bytes: u64,
    pub trained_context: u32,
    pub parameters: u64,
    /// Prefill tokens/s at and above the knee batch; below it ∝ (batch / knee)^0.5.
    pub prefill_tps: f64,
    pub batch_knee: u32,
    /// Decode tokens/s of one stream at an empty context.
    pub decode_tps: f64,
    /// Both rates halve at this context.
    pub ctx_half: u32,
    /// Aggregate decode with n streams = n^efficiency × one stream.
    pub parallel_efficiency: f64,
    pub load_ms: f64,
    pub noise_cv: f64,
    /// Contexts above this (and below the memory limit) fail every `flaky_every`-th request
    /// of a probe (a single-request search probe passes; validation does not).
    pub flaky_above: Option<u32>,
    pub flaky_every: u32,
    /// Each request of a stream beyond this many simultaneous ones times out.
    pub max_streams_in_time: Option<u32>,
    pub seed: u64,
    /// Fill depth and output length the probes use (as in the configuration).
    pub fill: f64,
    pub output_tokens: u32,
}

impl Default for SimModel {
    fn default() -> SimModel {
        // An 8B Q4_K_M model on a 12 GiB device (the Ollama simulator's example).
        SimModel {
            capacity_bytes: 12 << 30,
            weights_bytes: 4_920_000_000,
            kv_bytes_per_token: 131_072,
            compute_base_bytes: 64 << 20,
            compute_per_batch_bytes: 512 << 10,
            trained_context: 131_072,
            parameters: 8_030_261_248,
            prefill_tps: 2400.0,
            batch_knee: 512,
            decode_tps: 62.0,
            ctx_half: 65_536,
            parallel_efficiency: 0.7,
            load_ms: 3000.0,
            noise_cv: 0.02,
            flaky_above: None,
            flaky_every: 3,
            max_streams_in_time: None,
            seed: 1,
            fill: 0.9,
            output_tokens: 64,
        }
    }
}

impl SimModel {
    fn compute_bytes(&self, batch: u32) -> u64 {
        self.compute_base_bytes + self.compute_per_batch_bytes * batch as u64
    }

    /// The truth: the largest context per slot that loads at this batch and slot count.
    pub fn max_context(&self, batch: Option<u32>, slots: u32) -> u32 {
        let fixed = self.weights_bytes + self.compute_bytes(batch.unwrap_or(512));
        if fixed >= self.capacity_bytes {
            return 0;
        }
        let by_memory = (self.capacity_bytes - fixed) / (self.kv_bytes_per_token * slots as u64);
        by_memory.min(self.trained_context as u64) as u32
    }

    /// The largest context that also passes validation (below the flaky zone).
    pub fn max_stable_context(&self, batch: Option<u32>, slots: u32) -> u32 {
        let m = self.max_context(batch, slots);
        self.flaky_above.map_or(m, |f| m.min(f))
    }

    fn fits(&self, c: &ProbeConfig) -> bool {
        c.ctx <= self.max_context(c.batch, c.parallel.unwrap_or(1))
    }

    pub fn prefill_rate(&self, c: &ProbeConfig) -> f64 {
        let b = c.batch.unwrap_or(512) as f64;
        let knee = (b / self.batch_knee as f64).min(1.0).sqrt();
        self.prefill_tps * knee / (1.0 + c.ctx as f64 / self.ctx_half as f64)
    }

    pub fn decode_rate(&self, c: &ProbeConfig) -> f64 {
        self.decode_tps / (1.0 + c.ctx as f64 / self.ctx_half as f64)
    }
}

/// Deterministic generator (splitmix64).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(1e-12);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

fn hash(s: &str) -> u64 {
    // FNV-1a: stable across runs and platforms.
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub struct Sim {
    pub model: SimModel,
    /// Probes answered.
    pub probes: u32,
    /// Simulated wall time of all probes, ms.
    pub wall_ms: f64,
    /// Fields this simulated server cannot set.
    pub fixed: Vec<&'static str>,
}

impl Sim {
    pub fn new(model: SimModel) -> Sim {
        Sim {
            model,
            probes: 0,
            wall_ms: 0.0,
            fixed: Vec::new(),
        }
    }
}

impl Raw for Sim {}

impl Prober for Sim {
    fn probe(&mut self, req: &ProbeRequest) -> Option<ProbeOutcome> {
        let m = &self.model;
        let c = &req.config;
        self.probes += 1;
        let mut rng = Rng(m.seed ^ hash(&req.key()));
        let prompt = ((c.ctx as f64 * m.fill) as u64).saturating_sub(m.output_tokens as u64);
        if !m.fits(c) {
            self.wall_ms += m.load_ms;
            let mut o = ProbeOutcome::failed(
                OutcomeClass::Oom,
                format!(
                    "out of memory: ctx {} × {} slots at batch {:?} needs more than {} bytes",
                    c.ctx,
                    c.parallel.unwrap_or(1),
                    c.batch,
                    m.capacity_bytes
                ),
            );
            o.wall_ms = m.load_ms;
            return Some(o);
        }
        let streams = req.concurrency.max(1);
        let mut out = ProbeOutcome::failed(OutcomeClass::Ok, "");
        out.error = None;
        out.prompt_tokens = Some(prompt);
        out.rss_method = "simulated".into();
        out.gpu_used_peak_bytes = Some(
            m.weights_bytes
                + m.kv_bytes_per_token * c.ctx as u64 * c.parallel.unwrap_or(1) as u64
                + m.compute_bytes(c.batch.unwrap_or(512)),
        );
        let mut wall = m.load_ms;
        let share = (streams as f64).powf(m.parallel_efficiency) / streams as f64;
        'rounds: for _ in 0..req.rounds {
            let mut round_ms: f64 = 0.0;
            for k in 0..streams {
                let np = (1.0 + m.noise_cv * rng.normal()).max(0.1);
                let nd = (1.0 + m.noise_cv * rng.normal()).max(0.1);
                let prefill = m.prefill_rate(c) * np / streams as f64;
                let decode = m.decode_rate(c) * nd * share;
                let ttft = prompt as f64 / prefill * 1000.0;
                let e2e = ttft + m.output_tokens as f64 / decode * 1000.0;
                let flaky = m.flaky_above.is_some_and(|f| c.ctx > f);
                let timed_out = m.max_streams_in_time.is_some_and(|n| k >= n);
                // Stateless, so a replayed journal and a live run agree: request i of a probe
                // fails when (i + 1) is a multiple of `flaky_every`.
                let i = out.observations.len() as u32;
                let fails = flaky && (i + 1) % m.flaky_every.max(1) == 0;
                let ok = !fails && !timed_out;
                round_ms = round_ms.max(e2e);
                if timed_out {
                    out.timeouts += 1;
                }
                out.observations.push(Observation {
                    ok,
                    ttft_ms: ok.then_some(ttft),
                    prefill_tokens_per_s: ok.then_some(prefill),
                    decode_tokens_per_s: ok.then_some(decode),
                });
                if fails {
                    out.outcome = OutcomeClass::HttpError;
                    out.error = Some("simulated intermittent failure".into());
                }
            }
            wall += round_ms;
            out.round_tokens_per_s.push(
                out.observations[out.observations.len() - streams as usize..]
                    .iter()
                    .filter_map(|o| o.decode_tokens_per_s)
                    .sum(),
            );
            if out.outcome != OutcomeClass::Ok {
                break 'rounds;
            }
        }
        if out.outcome == OutcomeClass::Ok && out.timeouts > 0 {
            out.outcome = OutcomeClass::Timeout;
            out.error = Some(format!("{} requests timed out", out.timeouts));
        }
        out.wall_ms = wall;
        self.wall_ms += wall;
        Some(out)
    }

    fn fixed_by_server(&self, _cfg: &ProbeConfig) -> Vec<&'static str> {
        self.fixed.clone()
    }
}
