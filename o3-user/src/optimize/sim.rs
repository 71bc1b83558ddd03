//! An in-process server simulator whose truth is known. Memory decides which configurations
//! load (weights + KV cache × context × slots + compute buffer by batch ≤ capacity, all
//! allocated at load as llama.cpp and Ollama do); time behaves like the real servers at depth:
//!
//! - a load costs `load_ms`;
//! - the marginal prefill rate falls with depth, r(d) = r0 / (1 + d/h), r0 reduced below the
//!   batch knee as (batch / knee)^0.5: filling from C to D takes
//!   ((D − C) + (D² − C²)/(2h)) / r0;
//! - decode at depth d runs at g0 / (1 + d/k); n simultaneous streams each get
//!   n^efficiency / n of it, and their prompts share the prefill;
//! - within one loaded configuration (one probe) a stream's filled prefix is reused by its
//!   later requests (prefix + fresh suffix), unless the model cannot (`prefix_reuse: false`,
//!   sliding-window or recurrent attention); a new probe is a new load with an empty cache.
//!
//! Failures are injected deterministically: a flaky zone (intermittent request failures), a
//! zone that loads but fails when filled (`fill_fails_above`), streams beyond a count that time
//! out. It answers the same [`Prober`] questions the live server does, with the simulated time
//! each probe would have taken, and the spans the time model fits, so the search, its plan and
//! its baselines can be checked against the truth without a GPU. Profiles calibrated to
//! published figures are in bench/optimize/ (docs/optimizer.md cites them).

use serde::{Deserialize, Serialize};

use crate::backend::{OutcomeClass, ProbeConfig};
use crate::probe::{reusable, suffix_tokens};
use crate::timing::Obs;

use super::journal::Raw;
use super::prober::{Depth, ProbeOutcome, ProbeRequest, Prober};
use super::stats::Observation;

/// Tokens of the short request of a load-only probe.
pub const SHORT_TOKENS: u64 = 96;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimModel {
    /// Where the figures come from (free text, for reports).
    pub source: String,
    pub capacity_bytes: u64,
    pub weights_bytes: u64,
    pub kv_bytes_per_token: u64,
    pub compute_base_bytes: u64,
    pub compute_per_batch_bytes: u64,
    pub trained_context: u32,
    pub parameters: u64,
    /// Prefill tokens/s at depth 0, at and above the knee batch; below it ∝ (batch / knee)^0.5.
    pub prefill_tps: f64,
    pub batch_knee: u32,
    /// Depth at which the marginal prefill rate halves, tokens.
    pub prefill_half_depth: f64,
    /// Decode tokens/s of one stream at depth 0.
    pub decode_tps: f64,
    /// Depth at which the decode rate halves, tokens.
    pub decode_half_depth: f64,
    /// Aggregate decode with n streams = n^efficiency × one stream.
    pub parallel_efficiency: f64,
    pub load_ms: f64,
    pub noise_cv: f64,
    /// Contexts above this (and below the memory limit) fail every `flaky_every`-th request
    /// of a probe (a single short request passes; validation does not).
    pub flaky_above: Option<u32>,
    pub flaky_every: u32,
    /// Contexts above this load but fail (out of memory) when a prompt fills them.
    pub fill_fails_above: Option<u32>,
    /// Each request of a stream beyond this many simultaneous ones times out.
    pub max_streams_in_time: Option<u32>,
    /// A filled prefix is reused by the next request of the same stream.
    pub prefix_reuse: bool,
    pub seed: u64,
    /// Output tokens per request (as in the configuration).
    pub output_tokens: u32,
    /// What a quantized KV cache (q8_0 and smaller) does to the prefill and decode rates
    /// against f16. Default: Strix Halo, Vulkan RADV, Qwen3.6-35B-A3B at 32K (q8_0: prefill
    /// 1023 against 1217 tok/s, decode 54.6 against 51.0; hogeheer499 strix-halo-guide,
    /// `data/filled_kv_decode.csv`).
    pub kv_quant_prefill_factor: f64,
    pub kv_quant_decode_factor: f64,
    /// What flash attention off does to prefill and decode against on. Default: RADV, where
    /// turning it on gains 3.7 % of pp512 and costs about 1 % of tg (kyuz0's Strix Halo
    /// benchmarks, "Impact of Flash Attention"); ROCm without rocWMMA is the other way round
    /// (on: −21 %).
    pub fa_off_prefill_factor: f64,
    pub fa_off_decode_factor: f64,
    /// Bytes per context token per micro-batch token that flash attention off adds: one
    /// layer's f32 attention scores and an f32 mask, `4 × heads + 2` (llama.cpp; 130 for 32
    /// heads).
    pub fa_off_bytes_per_ctx_ubatch: u64,
    /// Server builds (`--server-bin` paths) and what each does to the rates and memory; a
    /// build not listed runs as the model says.
    pub builds: Vec<SimBuild>,
    /// Layers of the model (0: offloading not modelled, `gpu_layers` ignored). With
    /// `gpu_layers` n below it, the device holds n / block_count of the weights and of the KV
    /// cache (llama.cpp keeps the rest's in system RAM).
    pub block_count: u32,
    /// How much slower a layer runs in system RAM than on the device (time per token): the
    /// ratio of memory bandwidths, decode being bandwidth-bound (dual-channel DDR5 about 90
    /// GB/s against about 1 TB/s of GDDR6X: 10); prefill is slowed alike (a simplification:
    /// llama.cpp moves large batches' CPU-layer work to the GPU, so prefill loses less).
    pub cpu_layer_slowdown: f64,
}

/// One server build of a simulated server: its rates against the model's, and the memory it
/// holds beyond it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimBuild {
    /// The path given to `--server-bin`.
    pub bin: String,
    pub prefill_factor: f64,
    pub decode_factor: f64,
    #[serde(default)]
    pub extra_bytes: u64,
}

impl Default for SimModel {
    fn default() -> SimModel {
        // An 8B Q4_K_M model on a 12 GiB device (the Ollama simulator's example).
        SimModel {
            source: String::new(),
            capacity_bytes: 12 << 30,
            weights_bytes: 4_920_000_000,
            kv_bytes_per_token: 131_072,
            compute_base_bytes: 64 << 20,
            compute_per_batch_bytes: 512 << 10,
            trained_context: 131_072,
            parameters: 8_030_261_248,
            prefill_tps: 2400.0,
            batch_knee: 512,
            prefill_half_depth: 24_576.0,
            decode_tps: 62.0,
            decode_half_depth: 65_536.0,
            parallel_efficiency: 0.7,
            load_ms: 3000.0,
            noise_cv: 0.02,
            flaky_above: None,
            flaky_every: 3,
            fill_fails_above: None,
            max_streams_in_time: None,
            prefix_reuse: true,
            seed: 1,
            output_tokens: 64,
            kv_quant_prefill_factor: 1023.0 / 1217.0,
            kv_quant_decode_factor: 54.6 / 51.0,
            fa_off_prefill_factor: 1.0 / 1.037,
            fa_off_decode_factor: 1.01,
            fa_off_bytes_per_ctx_ubatch: 4 * 32 + 2,
            builds: Vec::new(),
            block_count: 0,
            cpu_layer_slowdown: 10.0,
        }
    }
}

impl SimModel {
    fn compute_bytes(&self, batch: u32) -> u64 {
        self.compute_base_bytes + self.compute_per_batch_bytes * u64::from(batch)
    }

    /// The truth: the largest context per slot that loads at this batch and slot count (the
    /// server's other settings at their defaults).
    pub fn max_context(&self, batch: Option<u32>, slots: u32) -> u32 {
        self.max_context_of(&ProbeConfig {
            batch,
            parallel: Some(slots),
            ..ProbeConfig::default()
        })
    }

    /// The largest context that also passes validation filled (below the flaky zone and the
    /// zone that fails filled).
    pub fn max_stable_context(&self, batch: Option<u32>, slots: u32) -> u32 {
        let m = self.max_context(batch, slots);
        let m = self.flaky_above.map_or(m, |f| m.min(f));
        self.fill_fails_above.map_or(m, |f| m.min(f))
    }

    fn fits(&self, c: &ProbeConfig) -> bool {
        c.ctx <= self.max_context_of(c)
    }

    /// What a configuration holds at load: weights, its KV cache (by its cache types), the
    /// compute buffer by its micro-batch, and with flash attention off the attention scores.
    pub fn bytes_of(&self, c: &ProbeConfig) -> u64 {
        let ctx_total = u64::from(c.ctx) * u64::from(c.parallel.unwrap_or(1));
        self.fixed_bytes(c) + self.bytes_per_token(c) * ctx_total
    }

    /// What a configuration holds whatever its context: the weights on the device, the
    /// compute buffer by its micro-batch, and its build's own bytes.
    fn fixed_bytes(&self, c: &ProbeConfig) -> u64 {
        self.weights_on_device(c)
            + self.compute_bytes(ubatch_of(c))
            + self.build_of(c).map_or(0, |b| b.extra_bytes)
    }

    /// What each token of context (one slot) adds: its KV cache and, with flash attention
    /// off, its attention scores.
    fn bytes_per_token(&self, c: &ProbeConfig) -> u64 {
        self.kv_bytes_of(c) + self.extra_bytes_per_token(c)
    }

    /// The share of the layers on the device: all, or `gpu_layers / block_count` below it.
    fn offloaded(&self, c: &ProbeConfig) -> f64 {
        match c.gpu_layers {
            Some(n) if self.block_count > 0 && n >= 0 && (n as u32) < self.block_count => {
                f64::from(n as u32) / f64::from(self.block_count)
            }
            _ => 1.0,
        }
    }

    /// The weights' bytes on the device.
    fn weights_on_device(&self, c: &ProbeConfig) -> u64 {
        (self.weights_bytes as f64 * self.offloaded(c)).round() as u64
    }

    /// KV bytes per token on the device at the configuration's cache types (the model's
    /// figure is f16, for every layer).
    fn kv_bytes_of(&self, c: &ProbeConfig) -> u64 {
        let bytes = |t: &Option<String>| {
            crate::learn::memory::cache_type_bytes(t.as_deref().unwrap_or("f16")).unwrap_or(2.0)
        };
        let factor = (bytes(&c.cache_type_k) + bytes(&c.cache_type_v)) / 4.0;
        (self.kv_bytes_per_token as f64 * factor * self.offloaded(c)).round() as u64
    }

    /// Bytes per context token beyond the KV cache: the attention scores with flash attention
    /// off (per micro-batch token), nothing with it on or unset.
    fn extra_bytes_per_token(&self, c: &ProbeConfig) -> u64 {
        if c.flash_attn == Some(crate::backend::FlashAttn::Off) {
            self.fa_off_bytes_per_ctx_ubatch * u64::from(ubatch_of(c))
        } else {
            0
        }
    }

    /// The truth for a whole configuration: the largest context per slot that loads with its
    /// cache types, micro-batch and flash-attention setting.
    pub fn max_context_of(&self, c: &ProbeConfig) -> u32 {
        let fixed = self.fixed_bytes(c);
        if fixed >= self.capacity_bytes {
            return 0;
        }
        let per_token = self.bytes_per_token(c) * u64::from(c.parallel.unwrap_or(1));
        ((self.capacity_bytes - fixed) / per_token.max(1)).min(u64::from(self.trained_context))
            as u32
    }

    /// The build a configuration runs, where the model lists it.
    fn build_of(&self, c: &ProbeConfig) -> Option<&SimBuild> {
        let bin = c.server_bin.as_ref()?;
        self.builds.iter().find(|b| &b.bin == bin)
    }

    /// (prefill, decode) rate factors of a configuration's build, cache types and flash
    /// attention.
    pub fn rate_factors(&self, c: &ProbeConfig) -> (f64, f64) {
        let quantized = |t: &Option<String>| {
            crate::learn::memory::cache_type_bytes(t.as_deref().unwrap_or("f16"))
                .is_some_and(|b| b < 2.0)
        };
        let (mut p, mut d) = self
            .build_of(c)
            .map_or((1.0, 1.0), |b| (b.prefill_factor, b.decode_factor));
        if quantized(&c.cache_type_k) || quantized(&c.cache_type_v) {
            p *= self.kv_quant_prefill_factor;
            d *= self.kv_quant_decode_factor;
        }
        if c.flash_attn == Some(crate::backend::FlashAttn::Off) {
            p *= self.fa_off_prefill_factor;
            d *= self.fa_off_decode_factor;
        }
        // Layers left in system RAM run `cpu_layer_slowdown` times slower per token.
        let f = self.offloaded(c);
        let offload = 1.0 / (f + (1.0 - f) * self.cpu_layer_slowdown);
        p *= offload;
        d *= offload;
        // A micro-batch below the batch computes in smaller steps: below the knee, prefill
        // follows the micro-batch as it follows the batch.
        if c.ubatch.is_some() {
            let knee = f64::from(self.batch_knee.max(1));
            let share = |n: u32| (f64::from(n) / knee).min(1.0).sqrt();
            p *= share(ubatch_of(c)) / share(c.batch.unwrap_or(512));
        }
        (p, d)
    }

    /// Prefill rate at depth 0 at this batch, tokens/s.
    fn r0(&self, batch: Option<u32>) -> f64 {
        let b = f64::from(batch.unwrap_or(512));
        self.prefill_tps * (b / f64::from(self.batch_knee.max(1))).min(1.0).sqrt()
    }

    /// Seconds to read prompt tokens `from..to` alone.
    pub fn fill_s(&self, batch: Option<u32>, from: u64, to: u64) -> f64 {
        if to <= from {
            return 0.0;
        }
        let (c, d) = (from as f64, to as f64);
        ((d - c) + (d * d - c * c) / (2.0 * self.prefill_half_depth)) / self.r0(batch)
    }

    /// Seconds for one stream to generate `n` tokens after a prompt of `depth` tokens.
    pub fn decode_s(&self, depth: u64, n: u64) -> f64 {
        let (d, n) = (depth as f64, n as f64);
        (n + (n * d + n * n / 2.0) / self.decode_half_depth) / self.decode_tps
    }

    /// The floor of a run whose answer is `ctx`: one load, one fill to `tokens`, one sample's
    /// decode, s.
    pub fn floor_s(&self, batch: Option<u32>, tokens: u64) -> f64 {
        self.load_ms / 1000.0
            + self.fill_s(batch, 0, tokens)
            + self.decode_s(tokens, u64::from(self.output_tokens))
    }

    /// Prefill rate at depth `d` (for tests and reports).
    pub fn prefill_rate(&self, c: &ProbeConfig, d: u64) -> f64 {
        self.r0(c.batch) / (1.0 + d as f64 / self.prefill_half_depth)
    }
}

/// The micro-batch a configuration computes with: `ubatch`, else `batch`, else 512 (as
/// llama.cpp caps `-ub` at `-b`).
fn ubatch_of(c: &ProbeConfig) -> u32 {
    match (c.ubatch, c.batch) {
        (Some(u), Some(b)) => u.min(b),
        (Some(u), None) => u,
        (None, b) => b.unwrap_or(512),
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
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
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
        self.probes += 1;
        let out = if self.model.fits(&req.config) {
            Probe::new(&self.model, req).run()
        } else {
            oom_at_load(&self.model, &req.config)
        };
        self.wall_ms += out.wall_ms;
        Some(out)
    }

    fn fixed_by_server(&self, _cfg: &ProbeConfig) -> Vec<&'static str> {
        self.fixed.clone()
    }
}

/// A configuration that does not fit: out of memory at load, after the load's time.
fn oom_at_load(m: &SimModel, c: &ProbeConfig) -> ProbeOutcome {
    let mut o = ProbeOutcome::failed(
        OutcomeClass::Oom,
        format!(
            "out of memory at load: ctx {} × {} slots at batch {} needs more than {} bytes",
            c.ctx,
            c.parallel.unwrap_or(1),
            c.batch
                .map_or_else(|| "(the default)".to_string(), |b| b.to_string()),
            m.capacity_bytes
        ),
    );
    o.wall_ms = m.load_ms;
    o.load_ms = Some(m.load_ms);
    o.timing.push(Obs::Load {
        s: m.load_ms / 1000.0,
    });
    o
}

/// One probe of a configuration that loads, in progress: rounds of simultaneous requests.
struct Probe<'a> {
    m: &'a SimModel,
    req: &'a ProbeRequest,
    rng: Rng,
    streams: u32,
    /// Tokens of each request's prompt.
    prompt: u64,
    /// Later rounds reuse the filled prefix.
    reuse: bool,
    /// The filled prompt fails (the zone that loads but fails filled).
    fails_filled: bool,
    /// Each stream's share of one stream's decode rate.
    share: f64,
    /// Simulated time so far, s.
    wall_s: f64,
    out: ProbeOutcome,
}

impl<'a> Probe<'a> {
    fn new(m: &'a SimModel, req: &'a ProbeRequest) -> Probe<'a> {
        let c = &req.config;
        let prompt = match req.depth {
            Depth::Load => SHORT_TOKENS,
            Depth::Fresh { tokens } | Depth::Filled { tokens } => u64::from(tokens),
        };
        let filled = matches!(req.depth, Depth::Filled { .. });
        let reuse = filled && reusable(prompt) && m.prefix_reuse;
        let streams = req.concurrency.max(1);
        let mut out = ProbeOutcome::failed(OutcomeClass::Ok, "");
        out.error = None;
        out.prompt_tokens = Some(prompt);
        out.rss_method = "simulated".into();
        out.load_ms = Some(m.load_ms);
        out.timing.push(Obs::Load {
            s: m.load_ms / 1000.0,
        });
        out.gpu_used_peak_bytes = Some(m.bytes_of(c));
        if filled && m.prefix_reuse && !reuse {
            out.notes.push("prompt too short to reuse a prefix".into());
        }
        Probe {
            m,
            req,
            rng: Rng(m.seed ^ hash(&req.key())),
            streams,
            prompt,
            reuse,
            fails_filled: m
                .fill_fails_above
                .is_some_and(|f| c.ctx > f && prompt > SHORT_TOKENS),
            share: f64::from(streams).powf(m.parallel_efficiency) / f64::from(streams),
            wall_s: m.load_ms / 1000.0,
            out,
        }
    }

    /// Every round, until one fails; then what the probe showed of prefix reuse and timeouts.
    fn run(mut self) -> ProbeOutcome {
        for round in 0..self.req.rounds {
            self.round(round);
            if self.out.outcome != OutcomeClass::Ok {
                break;
            }
        }
        self.finish()
    }

    /// One round: the streams' prompts read first (they share the prefill), then decoded
    /// together.
    fn round(&mut self, round: u32) {
        let reads: Vec<(u64, f64)> = (0..self.streams).map(|_| self.read(round)).collect();
        let read_all: f64 = reads.iter().map(|r| r.1).sum();
        let mut round_s: f64 = 0.0;
        for (k, (cached, read_s)) in reads.into_iter().enumerate() {
            round_s = round_s.max(self.request(k as u32, cached, read_s, read_all));
        }
        self.wall_s += round_s;
        let streams = self.streams as usize;
        let this_round = &self.out.observations[self.out.observations.len() - streams..];
        let tokens_per_s = this_round
            .iter()
            .filter_map(|o| o.decode_tokens_per_s)
            .sum();
        self.out.round_tokens_per_s.push(tokens_per_s);
    }

    /// One stream's prompt read: the tokens it found cached and its time, s.
    fn read(&mut self, round: u32) -> (u64, f64) {
        let np = (1.0 + self.m.noise_cv * self.rng.normal()).max(0.1);
        let cached = if self.reuse && round > 0 {
            self.prompt - suffix_tokens(self.prompt)
        } else {
            0
        };
        let c = &self.req.config;
        let factor = self.m.rate_factors(c).0;
        (
            cached,
            self.m.fill_s(c.batch, cached, self.prompt) / np / factor,
        )
    }

    /// Stream `k`'s request after its read: its observation; returns its end-to-end time, s.
    fn request(&mut self, k: u32, cached: u64, read_s: f64, read_all: f64) -> f64 {
        let (m, c) = (self.m, &self.req.config);
        let out_tokens = u64::from(m.output_tokens);
        let nd = (1.0 + m.noise_cv * self.rng.normal()).max(0.1);
        let decode_s = m.decode_s(self.prompt, out_tokens) / nd / self.share / m.rate_factors(c).1;
        // Streams sharing the server wait for every prompt of the round.
        let ttft = read_all.max(read_s) + decode_s / out_tokens.max(1) as f64;
        let e2e = read_all.max(read_s) + decode_s;
        let flaky = m.flaky_above.is_some_and(|f| c.ctx > f);
        let timed_out = m.max_streams_in_time.is_some_and(|n| k >= n);
        // Stateless, so a replayed journal and a live run agree: request i of a probe fails
        // when (i + 1) is a multiple of `flaky_every`.
        let i = self.out.observations.len() as u32;
        let oom_filled = self.fails_filled && cached == 0;
        let fails = oom_filled || (flaky && (i + 1) % m.flaky_every.max(1) == 0);
        let ok = !fails && !timed_out;
        let out = &mut self.out;
        if timed_out {
            out.timeouts += 1;
        }
        out.observations.push(Observation {
            ok,
            ttft_ms: ok.then_some(ttft * 1000.0),
            prefill_tokens_per_s: ok.then_some((self.prompt - cached) as f64 / read_s),
            decode_tokens_per_s: ok.then_some(out_tokens as f64 / decode_s),
            cached: cached > 0,
        });
        if ok && self.streams == 1 {
            out.timing.push(Obs::Prefill {
                from: cached,
                to: self.prompt,
                s: read_s,
                batch: c.batch,
            });
            out.timing.push(Obs::Decode {
                depth: self.prompt,
                tokens: out_tokens,
                s: decode_s,
            });
        }
        if oom_filled {
            out.outcome = OutcomeClass::Oom;
            out.error = Some(format!(
                "out of memory at depth: a {}-token prompt at ctx {} (loads, fails filled)",
                self.prompt, c.ctx
            ));
        } else if fails {
            out.outcome = OutcomeClass::HttpError;
            out.error = Some("simulated intermittent failure".into());
        }
        e2e
    }

    /// Whether the prefix was reused, timeouts as the outcome, and the probe's time.
    fn finish(mut self) -> ProbeOutcome {
        let (req, out) = (self.req, &mut self.out);
        if self.reuse && req.rounds > 1 {
            out.prefix_reuse = Some(true);
        } else if matches!(req.depth, Depth::Filled { .. })
            && !self.m.prefix_reuse
            && req.rounds > 1
        {
            out.prefix_reuse = Some(false);
            out.notes
                .push("the model cannot reuse a filled prefix: every sample re-read it".into());
        }
        if out.outcome == OutcomeClass::Ok && out.timeouts > 0 {
            out.outcome = OutcomeClass::Timeout;
            out.error = Some(format!("{} requests timed out", out.timeouts));
        }
        out.wall_ms = self.wall_s * 1000.0;
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optimize::prober::Stage;

    fn req(depth: Depth, rounds: u32, streams: u32, ctx: u32) -> ProbeRequest {
        ProbeRequest {
            stage: Stage::Validate,
            config: ProbeConfig {
                ctx,
                batch: Some(512),
                parallel: Some(streams),
                ..ProbeConfig::default()
            },
            depth,
            rounds,
            concurrency: streams,
        }
    }

    #[test]
    fn depth_is_paid_once_when_the_prefix_is_reused() {
        let m = SimModel {
            noise_cv: 0.0,
            ..SimModel::default()
        };
        let mut sim = Sim::new(m.clone());
        let filled = sim
            .probe(&req(Depth::Filled { tokens: 40_000 }, 5, 1, 45_056))
            .unwrap();
        let once = m.load_ms / 1000.0
            + m.fill_s(Some(512), 0, 40_000)
            + 4.0 * m.fill_s(Some(512), 40_000 - suffix_tokens(40_000), 40_000)
            + 5.0 * m.decode_s(40_000, 64);
        assert!(
            (filled.wall_ms / 1000.0 - once).abs() < 1e-6,
            "{}",
            filled.wall_ms
        );
        assert_eq!(filled.prefix_reuse, Some(true));
        assert!(filled.observations[1].cached && !filled.observations[0].cached);
        // A model that cannot reuse pays every fill.
        let mut sim = Sim::new(SimModel {
            prefix_reuse: false,
            ..m.clone()
        });
        let every = sim
            .probe(&req(Depth::Filled { tokens: 40_000 }, 5, 1, 45_056))
            .unwrap();
        assert!(every.wall_ms > 4.0 * filled.wall_ms / 1.5);
        assert_eq!(every.prefix_reuse, Some(false));
    }

    #[test]
    fn marginal_prefill_falls_with_depth_as_calibrated() {
        // 30B-A3B on Vulkan: ~1065 tok/s at depth 0, ~152 at 32K: half-rate depth ~5455.
        let m = SimModel {
            prefill_tps: 1065.0,
            prefill_half_depth: 5455.0,
            ..SimModel::default()
        };
        let c = ProbeConfig {
            batch: Some(512),
            ..ProbeConfig::default()
        };
        assert!((m.prefill_rate(&c, 32_768) - 152.0).abs() < 1.0);
        // Filling 32K takes about 2 minutes (docs: serving-time A5).
        let t = m.fill_s(Some(512), 0, 32_768);
        assert!((110.0..135.0).contains(&t), "{t}");
    }

    #[test]
    fn loads_but_fails_filled() {
        let m = SimModel {
            fill_fails_above: Some(30_000),
            ..SimModel::default()
        };
        let mut sim = Sim::new(m);
        let short = sim.probe(&req(Depth::Load, 1, 1, 40_960)).unwrap();
        assert!(short.passed());
        let filled = sim
            .probe(&req(Depth::Filled { tokens: 36_000 }, 3, 1, 40_960))
            .unwrap();
        assert_eq!(filled.outcome, OutcomeClass::Oom);
        assert!(!filled.observations[0].ok);
    }

    fn with(ctx: u32, f: impl FnOnce(&mut ProbeConfig)) -> ProbeConfig {
        let mut c = ProbeConfig {
            ctx,
            batch: Some(512),
            ..ProbeConfig::default()
        };
        f(&mut c);
        c
    }

    /// What users tune changes the memory truth as llama.cpp allocates it: a q8_0 KV cache
    /// holds 34/64 of f16's, q4_0 18/64 (longer contexts fit), a smaller micro-batch a smaller
    /// compute buffer, and flash attention off adds the attention scores per context token.
    #[test]
    fn kv_type_ubatch_and_flash_attention_move_the_memory_limit() {
        let m = SimModel::default();
        let f16 = m.max_context_of(&with(0, |_| {}));
        assert_eq!(f16, m.max_context(Some(512), 1), "unset is f16, FA on");
        let q8 = m.max_context_of(&with(0, |c| {
            c.cache_type_k = Some("q8_0".into());
            c.cache_type_v = Some("q8_0".into());
        }));
        let q4 = m.max_context_of(&with(0, |c| {
            c.cache_type_k = Some("q4_0".into());
            c.cache_type_v = Some("q4_0".into());
        }));
        let ratio = |a: u32, b: u32| f64::from(a) / f64::from(b);
        assert!((ratio(q8, f16) - 64.0 / 34.0).abs() < 0.01, "{q8} {f16}");
        // The trained context caps q4_0 here: 131072.
        assert!(q4 > q8 && q4 <= m.trained_context, "{q4} {q8}");
        let small_ub = m.max_context_of(&with(0, |c| c.ubatch = Some(64)));
        let freed = m.compute_per_batch_bytes * (512 - 64);
        assert_eq!(
            u64::from(small_ub - f16),
            freed / m.kv_bytes_per_token,
            "{small_ub} {f16}"
        );
        let fa_off = m.max_context_of(&with(0, |c| {
            c.flash_attn = Some(crate::backend::FlashAttn::Off);
        }));
        assert!(fa_off < f16, "{fa_off} {f16}");
        // A probe loads at the limit and holds what bytes_of says; one granule above is oom.
        let c = with(q8, |c| {
            c.cache_type_k = Some("q8_0".into());
            c.cache_type_v = Some("q8_0".into());
        });
        let mut sim = Sim::new(m.clone());
        let load = |sim: &mut Sim, c: &ProbeConfig| {
            sim.probe(&ProbeRequest {
                stage: Stage::Context,
                config: c.clone(),
                depth: Depth::Load,
                rounds: 1,
                concurrency: 1,
            })
            .unwrap()
        };
        let ok = load(&mut sim, &c);
        assert!(ok.passed());
        assert_eq!(ok.gpu_used_peak_bytes, Some(m.bytes_of(&c)));
        assert!(m.bytes_of(&c) <= m.capacity_bytes);
        let over = load(
            &mut sim,
            &ProbeConfig {
                ctx: q8 + 1024,
                ..c.clone()
            },
        );
        assert_eq!(over.outcome, OutcomeClass::Oom);
    }

    /// Quantized KV caches read prompts slower and decode faster (Strix Halo RADV), flash
    /// attention off reads slower: the simulated rates move by the model's factors.
    #[test]
    fn kv_type_and_flash_attention_move_the_rates() {
        let m = SimModel {
            noise_cv: 0.0,
            ..SimModel::default()
        };
        assert_eq!(m.rate_factors(&with(8192, |_| {})), (1.0, 1.0));
        let q8 = with(8192, |c| {
            c.cache_type_k = Some("q8_0".into());
            c.cache_type_v = Some("q8_0".into());
        });
        let (p, d) = m.rate_factors(&q8);
        assert!(p < 1.0 && d > 1.0, "{p} {d}");
        let off = with(8192, |c| {
            c.flash_attn = Some(crate::backend::FlashAttn::Off);
        });
        assert!(m.rate_factors(&off).0 < 1.0);
        // A micro-batch under the knee slows prefill as a batch that small would; one at or
        // above it changes nothing.
        let small = with(8192, |c| {
            c.batch = Some(512);
            c.ubatch = Some(128);
        });
        assert!((m.rate_factors(&small).0 - 0.5).abs() < 1e-12);
        let large = with(8192, |c| {
            c.batch = Some(1024);
            c.ubatch = Some(512);
        });
        assert_eq!(m.rate_factors(&large), (1.0, 1.0));
        // Half the layers in system RAM, 10× slower there: 1 / (0.5 + 5) of the rates; the
        // device holds half the weights and half the KV cache.
        let layered = SimModel {
            block_count: 32,
            ..m.clone()
        };
        let half = with(8192, |c| c.gpu_layers = Some(16));
        let (hp, hd) = layered.rate_factors(&half);
        assert!((hp - 1.0 / 5.5).abs() < 1e-12 && (hd - 1.0 / 5.5).abs() < 1e-12);
        let all = with(8192, |c| c.gpu_layers = Some(999));
        assert_eq!(
            layered.bytes_of(&all) - layered.bytes_of(&half),
            m.weights_bytes / 2 + m.kv_bytes_per_token * 8192 / 2
        );
        let rates = |c: &ProbeConfig| {
            let out = Sim::new(m.clone())
                .probe(&ProbeRequest {
                    stage: Stage::Validate,
                    config: c.clone(),
                    depth: Depth::Fresh { tokens: 4096 },
                    rounds: 1,
                    concurrency: 1,
                })
                .unwrap();
            let o = &out.observations[0];
            (
                o.prefill_tokens_per_s.unwrap(),
                o.decode_tokens_per_s.unwrap(),
            )
        };
        let (p16, d16) = rates(&with(8192, |_| {}));
        let (p8, d8) = rates(&q8);
        assert!((p8 / p16 - p).abs() < 0.01, "{p8} {p16}");
        assert!((d8 / d16 - d).abs() < 0.01, "{d8} {d16}");
    }
}
