//! The seam between the search and a server: a probe request (one configuration, how deep its
//! prompts go, how many rounds, how many simultaneous streams) and what came back, reduced to
//! what the search needs. The live implementation drives `crate::probe`; tests use simulators
//! whose truth is known.

use serde::{Deserialize, Serialize};

use crate::backend::{OutcomeClass, ProbeConfig};
use crate::probe::KindSummary;
use crate::timing::{Obs, TimeModel};

use super::stats::Observation;

/// Which step of the search asked for a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Binary search for the largest context that loads (one short request per probe).
    Context,
    /// Statistical validation of a configuration, filled to depth (its proof).
    Validate,
    /// Batch ranking at a moderate depth, at the largest context that loads.
    Batch,
    /// A concurrency level: that many server slots and simultaneous streams.
    Concurrency,
    /// Re-measuring a configuration an earlier run found (reuse of learned results).
    Verify,
    /// Ranking a variant (KV cache type, flash attention, micro-batch) at a moderate depth.
    Variant,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Context => "context",
            Stage::Validate => "validate",
            Stage::Batch => "batch",
            Stage::Concurrency => "concurrency",
            Stage::Verify => "verify",
            Stage::Variant => "variant",
        }
    }
}

/// How deep a probe's prompts go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Depth {
    /// Load and one short request: whether the configuration fits (llama.cpp and Ollama
    /// allocate the KV cache and compute buffers at load).
    Load,
    /// Every request a fresh prompt of `tokens`, read whole: prefill ranked at a moderate
    /// depth.
    Fresh { tokens: u32 },
    /// Prompts of `tokens` (`prompt.fill` of the context less the output, unless capped): the
    /// first request of each stream reads it whole, the rest reuse that prefix with a fresh
    /// suffix (where the model allows).
    Filled { tokens: u32 },
}

impl Depth {
    pub fn tokens(self) -> Option<u32> {
        match self {
            Depth::Load => None,
            Depth::Fresh { tokens } | Depth::Filled { tokens } => Some(tokens),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeRequest {
    pub stage: Stage,
    pub config: ProbeConfig,
    pub depth: Depth,
    /// Rounds of `concurrency` simultaneous requests.
    pub rounds: u32,
    pub concurrency: u32,
}

impl ProbeRequest {
    /// The journal key: identical requests are answered from the journal on resume.
    pub fn key(&self) -> String {
        serde_json::to_string(self).expect("a probe request serialises")
    }

    /// A short human description: `ctx 8192 · batch 64 · 2 slots · filled to 7309`.
    pub fn describe(&self) -> String {
        let d = match self.depth {
            Depth::Load => " · load + short request".to_string(),
            Depth::Fresh { tokens } => format!(" · fresh {tokens}-token prompts"),
            Depth::Filled { tokens } => format!(" · filled to {tokens}"),
        };
        describe_config(&self.config) + &d
    }
}

/// The KV cache types set, in words: `q8_0` for both alike, `q8_0/default` where they differ;
/// `None` where neither is set.
pub fn kv_types(c: &ProbeConfig) -> Option<String> {
    match (&c.cache_type_k, &c.cache_type_v) {
        (None, None) => None,
        (Some(k), Some(v)) if k == v => Some(k.clone()),
        (k, v) => Some(format!(
            "{}/{}",
            k.as_deref().unwrap_or("default"),
            v.as_deref().unwrap_or("default")
        )),
    }
}

pub fn describe_config(c: &ProbeConfig) -> String {
    let mut s = format!("ctx {}", c.ctx);
    if let Some(b) = c.batch {
        s.push_str(&format!(" · batch {b}"));
    }
    if let Some(u) = c.ubatch {
        s.push_str(&format!(" · ubatch {u}"));
    }
    if let Some(p) = c.parallel {
        s.push_str(&format!(" · {p} slot{}", if p == 1 { "" } else { "s" }));
    }
    if let Some(kv) = kv_types(c) {
        s.push_str(&format!(" · kv {kv}"));
    }
    if let Some(f) = c.flash_attn {
        s.push_str(&format!(" · fa {}", f.name()));
    }
    s
}

/// What one probe measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeOutcome {
    /// `ok` only when every request succeeded (timeouts among concurrent streams are counted
    /// in `timeouts` and make the outcome `timeout`).
    pub outcome: OutcomeClass,
    pub error: Option<String>,
    /// One per request sent.
    pub observations: Vec<Observation>,
    /// Aggregate decode throughput per round: the decode rates of the round's successful
    /// streams summed (they decode at the same time), tokens/s.
    pub round_tokens_per_s: Vec<f64>,
    pub timeouts: u32,
    /// Prompt tokens each request carried (the fill depth actually used).
    pub prompt_tokens: Option<u64>,
    pub rss_peak_bytes: Option<u64>,
    /// `ebpf` (exact) or `procfs_polling` (sampled).
    pub rss_method: String,
    pub mem_used_peak_bytes: Option<u64>,
    pub gpu_used_peak_bytes: Option<u64>,
    pub load_ms: Option<f64>,
    pub wall_ms: f64,
    /// The server's answers as spans of work, for the time model.
    #[serde(default)]
    pub timing: Vec<Obs>,
    /// Whether requests meant to reuse a filled prefix did (`None`: none measured).
    #[serde(default)]
    pub prefix_reuse: Option<bool>,
    /// What the reader must know about this probe.
    #[serde(default)]
    pub notes: Vec<String>,
    /// The chat turns sent beside the streams at depth (`concurrency.mixed_short_streams`),
    /// measured apart; `None` without them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<KindSummary>,
}

impl ProbeOutcome {
    pub fn passed(&self) -> bool {
        self.outcome == OutcomeClass::Ok
    }

    /// A failure with nothing measured (for simulators and early errors).
    pub fn failed(outcome: OutcomeClass, error: impl Into<String>) -> ProbeOutcome {
        ProbeOutcome {
            outcome,
            error: Some(error.into()),
            observations: Vec::new(),
            round_tokens_per_s: Vec::new(),
            timeouts: 0,
            prompt_tokens: None,
            rss_peak_bytes: None,
            rss_method: "not_measured".into(),
            mem_used_peak_bytes: None,
            gpu_used_peak_bytes: None,
            load_ms: None,
            wall_ms: 0.0,
            timing: Vec::new(),
            prefix_reuse: None,
            notes: Vec::new(),
            chat: None,
        }
    }
}

/// Runs probes. `None` means the run was asked to stop while probing: nothing was measured and
/// nothing is recorded.
pub trait Prober {
    fn probe(&mut self, req: &ProbeRequest) -> Option<ProbeOutcome>;

    /// What the search knows of the server's speed before the next probe (a live server
    /// derives request deadlines from it).
    fn know(&mut self, _model: &TimeModel) {}

    /// Configuration fields this server cannot set (e.g. `batch` for a template without
    /// `{batch}`, `parallel` for an Ollama server o3 did not start).
    fn fixed_by_server(&self, cfg: &ProbeConfig) -> Vec<&'static str>;
}

impl<P: Prober + ?Sized> Prober for &mut P {
    fn probe(&mut self, req: &ProbeRequest) -> Option<ProbeOutcome> {
        (**self).probe(req)
    }
    fn know(&mut self, model: &TimeModel) {
        (**self).know(model);
    }
    fn fixed_by_server(&self, cfg: &ProbeConfig) -> Vec<&'static str> {
        (**self).fixed_by_server(cfg)
    }
}
