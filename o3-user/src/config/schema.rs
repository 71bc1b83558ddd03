//! The schema of `o3 optimize`'s configuration and its defaults (documented in `config/o3.yaml`
//! and docs/config.md).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units;

/// Everything `o3 optimize` can be told, by section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub search: Search,
    pub batch: Batch,
    pub presets: Presets,
    pub validation: Validation,
    pub concurrency: Concurrency,
    pub timeouts: Timeouts,
    pub plan: Plan,
    pub safety: Safety,
    pub prompt: Prompt,
    pub learning: Learning,
    pub monitoring: Monitoring,
    pub variants: Variants,
}

/// The context search (bisection on measured results), in tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Search {
    /// First context tried.
    pub initial_context: u32,
    /// The search stops when the bracket between the largest context that worked and the
    /// smallest that failed is this narrow; contexts tried are multiples of it.
    pub granularity: u32,
    pub min_context: u32,
    pub max_context: u32,
    /// Most contexts tried in one search.
    pub max_iterations: u32,
    /// Search probes load the configuration and send one short request (llama.cpp and Ollama
    /// allocate the KV cache and compute buffers at load); false fills each one to depth.
    pub load_only: bool,
}

impl Default for Search {
    fn default() -> Search {
        Search {
            initial_context: 16_384,
            granularity: 1024,
            min_context: 2048,
            max_context: 131_072,
            max_iterations: 16,
            load_only: true,
        }
    }
}

/// The batch sweep at a fixed context: start by model size, multiply until throughput stops
/// improving or a limit is hit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Batch {
    pub enabled: bool,
    /// First batch for models of 27B parameters or more.
    pub initial_large: u32,
    /// First batch for models from 3B to under 27B parameters, and of unknown size.
    pub initial_medium: u32,
    /// First batch for models under 3B parameters.
    pub initial_small: u32,
    /// Each step multiplies the batch by this.
    pub scale_factor: f64,
    pub max_batch: u32,
    /// Physical batch (llama.cpp `--ubatch-size`); None leaves the server's default.
    pub ubatch: Option<u32>,
    /// The sweep stops when throughput improves by less than this fraction (0.05 = 5 %).
    #[serde(deserialize_with = "units::fraction")]
    pub min_gain: f64,
    /// Prompt tokens of the ranking requests (a moderate depth, every one read whole).
    pub rank_tokens: u32,
    /// Ranking requests per batch.
    pub rank_samples: u32,
}

impl Default for Batch {
    fn default() -> Batch {
        Batch {
            enabled: true,
            initial_large: 16,
            initial_medium: 32,
            initial_small: 64,
            scale_factor: 2.0,
            max_batch: 256,
            ubatch: None,
            min_gain: 0.05,
            rank_tokens: 2048,
            rank_samples: 2,
        }
    }
}

impl Batch {
    /// Models of at least this many parameters start with `initial_large`.
    pub const LARGE_PARAMETERS: u64 = 27_000_000_000;
    /// Models under this many parameters start with `initial_small`.
    pub const SMALL_PARAMETERS: u64 = 3_000_000_000;

    /// The micro-batch at `batch`: `set` (a variant's), else `ubatch`, capped at the batch as
    /// llama.cpp caps `-ub` at `-b`; `None` leaves the server's default.
    pub fn ubatch_at(&self, set: Option<u32>, batch: Option<u32>) -> Option<u32> {
        set.or(self.ubatch).map(|u| batch.map_or(u, |b| u.min(b)))
    }

    /// The first batch for a model of `parameters` parameters (unknown size: medium).
    pub fn initial_for(&self, parameters: Option<u64>) -> u32 {
        match parameters {
            Some(p) if p >= Self::LARGE_PARAMETERS => self.initial_large,
            Some(p) if p < Self::SMALL_PARAMETERS => self.initial_small,
            _ => self.initial_medium,
        }
    }
}

/// Optional search stages over what users tune beside context and batch: each list names the
/// settings to compare (empty: the one the user fixed, or the server's). Every combination is a
/// variant; each gets its own largest loading context and its rates at a moderate depth, and
/// only the winners are proven at depth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Variants {
    /// KV cache types, K and V alike (`f16`, `q8_0`, `q4_0`, …).
    pub cache_types: Vec<String>,
    /// Flash attention: `on`, `off`, `auto` (the server decides).
    pub flash_attn: Vec<String>,
    /// Physical batches (llama.cpp `--ubatch-size`), tokens.
    pub ubatch: Vec<u32>,
    /// Layers offloaded to the GPU (`-ngl`; 999: all), for a model that does not fit whole.
    pub gpu_layers: Vec<u32>,
    /// Most variants one run compares (the product of the lists).
    pub max_variants: u32,
    /// Floors added to a budget set in floors (`plan.floor_multiple`) when variants are
    /// compared: each costs its own context search and a ranking.
    pub extra_floors: f64,
}

impl Default for Variants {
    fn default() -> Variants {
        Variants {
            cache_types: Vec::new(),
            flash_attn: Vec::new(),
            ubatch: Vec::new(),
            gpu_layers: Vec::new(),
            max_variants: 12,
            extra_floors: 1.0,
        }
    }
}

impl Variants {
    /// How many variants the lists make (1: none compared).
    pub fn count(&self) -> usize {
        self.cache_types.len().max(1)
            * self.flash_attn.len().max(1)
            * self.ubatch.len().max(1)
            * self.gpu_layers.len().max(1)
    }

    /// Whether any setting is compared.
    pub fn any(&self) -> bool {
        !(self.cache_types.is_empty()
            && self.flash_attn.is_empty()
            && self.ubatch.is_empty()
            && self.gpu_layers.is_empty())
    }
}

/// The three presets o3 recommends, and optional service-level objectives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Presets {
    pub max_context: MaxContextPreset,
    pub balanced: BalancedPreset,
    pub fast_response: FastResponsePreset,
    pub slo: Slo,
}

/// The largest stable context, ranked secondarily by throughput and TTFT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaxContextPreset {
    /// Percentile (of the largest stable context) a candidate must reach, %.
    #[serde(deserialize_with = "units::percent")]
    pub target_context_percentile: f64,
    /// Weight of decode throughput in the ranking, 0 to 1.
    pub throughput_weight: f64,
    /// Weight of (low) time to first token in the ranking, 0 to 1.
    pub ttft_weight: f64,
}

impl Default for MaxContextPreset {
    fn default() -> MaxContextPreset {
        MaxContextPreset {
            target_context_percentile: 95.0,
            throughput_weight: 0.3,
            ttft_weight: 0.2,
        }
    }
}

/// A mid-size context with throughput and TTFT balanced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalancedPreset {
    /// `[low, high]` contexts, tokens.
    pub target_context_range: [u32; 2],
    pub throughput_weight: f64,
    pub ttft_weight: f64,
}

impl Default for BalancedPreset {
    fn default() -> BalancedPreset {
        BalancedPreset {
            target_context_range: [8192, 12_288],
            throughput_weight: 0.6,
            ttft_weight: 0.4,
        }
    }
}

/// The fastest responses at a context of at least `target_context_min`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FastResponsePreset {
    /// Smallest context, tokens.
    pub target_context_min: u32,
    pub throughput_weight: f64,
    pub ttft_weight: f64,
}

impl Default for FastResponsePreset {
    fn default() -> FastResponsePreset {
        FastResponsePreset {
            target_context_min: 4096,
            throughput_weight: 0.8,
            ttft_weight: 0.7,
        }
    }
}

/// Service-level objectives every preset must meet; None: no objective.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Slo {
    /// Largest acceptable 95th-percentile time to first token, ms.
    #[serde(deserialize_with = "units::opt_ms")]
    pub ttft_p95_ms: Option<f64>,
    /// Smallest acceptable decode rate, tokens/s.
    pub min_decode_tokens_per_s: Option<f64>,
}

/// When a configuration counts as stable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Validation {
    /// Requests per configuration.
    pub samples: u32,
    /// Fraction of requests that must succeed, 0 to 1.
    #[serde(deserialize_with = "units::fraction")]
    pub min_success_rate: f64,
    /// Largest coefficient of variation (stddev / mean) of decode throughput.
    #[serde(deserialize_with = "units::fraction")]
    pub max_cv: f64,
}

impl Default for Validation {
    fn default() -> Validation {
        Validation {
            samples: 5,
            min_success_rate: 0.85,
            max_cv: 0.15,
        }
    }
}

/// Concurrent requests tried on the chosen configurations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Concurrency {
    pub enabled: bool,
    /// Parallel requests (and server slots), strictly ascending.
    pub levels: Vec<u32>,
    /// Pause between levels, s.
    #[serde(deserialize_with = "units::secs")]
    pub stabilization_delay_s: f64,
    /// Timeouts tolerated at one level before the progression stops.
    pub max_timeouts: u32,
    /// Mixed workloads: at each level of n ≥ 2 streams, this many of them (at most n − 1)
    /// send short chat turns beside the streams at depth, reported apart; 0: none.
    pub mixed_short_streams: u32,
}

impl Default for Concurrency {
    fn default() -> Concurrency {
        Concurrency {
            enabled: true,
            levels: vec![1, 2, 4, 8],
            stabilization_delay_s: 2.0,
            max_timeouts: 2,
            mixed_short_streams: 0,
        }
    }
}

/// How long a request may take. A request that makes progress is never cut for being slow:
/// only silence (`stall_s`) and, for a server that shows no progress while it reads a prompt,
/// `margin` times the time model's upper estimate end it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Longest silence once a request shows progress, s (deeper batches get more).
    #[serde(deserialize_with = "units::secs")]
    pub stall_s: f64,
    /// Multiple of the time model's upper estimate before a silent request is abandoned.
    pub margin: f64,
    /// Longest wait for a server to load a model, s.
    #[serde(deserialize_with = "units::secs")]
    pub load_s: f64,
    /// Keys of the fixed-formula timeouts of earlier versions: accepted, ignored, each with a
    /// notice.
    #[serde(default, skip_serializing, deserialize_with = "units::opt_secs")]
    pub base_s: Option<f64>,
    #[serde(default, skip_serializing, deserialize_with = "units::opt_secs")]
    pub per_1k_context_s: Option<f64>,
    #[serde(default, skip_serializing, deserialize_with = "units::opt_secs")]
    pub per_batch_unit_s: Option<f64>,
    #[serde(default, skip_serializing, deserialize_with = "units::opt_secs")]
    pub min_s: Option<f64>,
    #[serde(default, skip_serializing, deserialize_with = "units::opt_secs")]
    pub max_s: Option<f64>,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            stall_s: 60.0,
            margin: 3.0,
            load_s: 600.0,
            base_s: None,
            per_1k_context_s: None,
            per_batch_unit_s: None,
            min_s: None,
            max_s: None,
        }
    }
}

impl Timeouts {
    /// `load_s` as a duration.
    pub fn load_timeout(&self) -> Duration {
        Duration::try_from_secs_f64(self.load_s).unwrap_or(Duration::from_secs(600))
    }

    /// The stall bound and margin the probe applies.
    pub fn limits(&self) -> crate::timing::Limits {
        crate::timing::Limits {
            stall_s: self.stall_s,
            margin: self.margin,
        }
    }

    /// The keys of earlier versions present in the file.
    pub fn retired_keys(&self) -> Vec<&'static str> {
        [
            ("timeouts.base_s", self.base_s),
            ("timeouts.per_1k_context_s", self.per_1k_context_s),
            ("timeouts.per_batch_unit_s", self.per_batch_unit_s),
            ("timeouts.min_s", self.min_s),
            ("timeouts.max_s", self.max_s),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|_| k))
        .collect()
    }
}

/// The time the whole run may take.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Plan {
    /// Seconds the whole run may take; None: `floor_multiple` times the floor.
    #[serde(deserialize_with = "units::opt_secs")]
    pub budget_s: Option<f64>,
    /// Without `budget_s`, the budget is this multiple of the floor (one load, one prompt
    /// filled to the validated maximum, one sample's decode); 0: no budget.
    pub floor_multiple: f64,
    /// The budget from `floor_multiple` is never less than this, s.
    #[serde(deserialize_with = "units::secs")]
    pub min_budget_s: f64,
    /// Concurrency levels at the validated maximum too (each stream fills the whole depth).
    pub concurrency_at_max_context: bool,
}

impl Default for Plan {
    fn default() -> Plan {
        Plan {
            budget_s: None,
            floor_multiple: 2.0,
            min_budget_s: 0.0,
            concurrency_at_max_context: true,
        }
    }
}

/// Limits that stop a measurement (the watchdog of `o3 record --safety`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Safety {
    /// Of the GPU-usable memory (GTT on an APU, VRAM on a discrete card), %.
    #[serde(deserialize_with = "units::percent")]
    pub max_vram_percent: f64,
    /// Of system RAM, %.
    #[serde(deserialize_with = "units::percent")]
    pub max_ram_percent: f64,
    /// GPU edge temperature, °C.
    pub max_temperature_c: f64,
    /// System CPU busy, % of all cores, sustained for 2 s.
    #[serde(deserialize_with = "units::percent")]
    pub max_cpu_percent: f64,
    /// GPU-usable memory that must stay free, MiB.
    pub vram_reserve_mb: u64,
    /// RAM that must stay free, MiB.
    pub ram_reserve_mb: u64,
}

impl Default for Safety {
    fn default() -> Safety {
        Safety {
            max_vram_percent: 90.0,
            max_ram_percent: 85.0,
            max_temperature_c: 85.0,
            max_cpu_percent: 90.0,
            vram_reserve_mb: 4096,
            ram_reserve_mb: 4096,
        }
    }
}

impl Safety {
    /// The watchdog's thresholds (CPU sustain time stays the watchdog's default).
    pub fn thresholds(&self) -> crate::telemetry::watchdog::Thresholds {
        crate::telemetry::watchdog::Thresholds {
            max_vram_percent: self.max_vram_percent,
            max_ram_percent: self.max_ram_percent,
            max_temperature_c: self.max_temperature_c,
            max_cpu_percent: self.max_cpu_percent,
            vram_reserve_bytes: self.vram_reserve_mb.saturating_mul(1 << 20),
            ram_reserve_bytes: self.ram_reserve_mb.saturating_mul(1 << 20),
            ..Default::default()
        }
    }
}

/// The prompts sent to measure a configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Prompt {
    /// Fraction of the context the prompt fills.
    #[serde(deserialize_with = "units::fraction")]
    pub fill: f64,
    /// Cap on prompt tokens; None: no cap. A capped result is not proven at depth.
    pub max_prompt_tokens: Option<u32>,
    /// Tokens generated per request.
    pub output_tokens: u32,
    /// Samples after the first of a filled configuration repeat its prompt's prefix with a
    /// fresh suffix (depth paid once per loaded configuration); false reads every prompt whole.
    pub reuse_prefix: bool,
}

impl Default for Prompt {
    fn default() -> Prompt {
        Prompt {
            fill: 0.9,
            max_prompt_tokens: None,
            output_tokens: 64,
            reuse_prefix: true,
        }
    }
}

impl Prompt {
    /// Prompt tokens that prove a context at depth: `fill` of it less the output.
    pub fn depth_tokens(&self, ctx: u32) -> u32 {
        ((f64::from(ctx) * self.fill) as u32)
            .saturating_sub(self.output_tokens)
            .max(1)
    }

    /// The prompt tokens a filled probe of `ctx` sends: the depth, capped.
    pub fn filled_tokens(&self, ctx: u32) -> u32 {
        let d = self.depth_tokens(ctx);
        self.max_prompt_tokens.map_or(d, |cap| d.min(cap))
    }
}

/// What o3 keeps between runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Learning {
    /// Store each run's results for this machine and model.
    pub store_results: bool,
    /// Start from configurations learned on this machine.
    pub reuse_learned_configs: bool,
    /// Skip configurations predicted to fail (memory model and earlier runs).
    pub predict: bool,
    /// Learned results older than this many days are searched again, not reused.
    #[serde(deserialize_with = "units::days")]
    pub max_age_days: f64,
    /// Configurations whose predicted probability of success is below this are skipped.
    #[serde(deserialize_with = "units::fraction")]
    pub min_p_success: f64,
    /// Of the configurations the predictor would skip, this many per run are measured anyway,
    /// so a wrong prediction can be found out.
    pub exploration_probes: u32,
    /// The results database; `None`: `$XDG_DATA_HOME/o3/o3.db`.
    pub db: Option<String>,
}

impl Default for Learning {
    fn default() -> Learning {
        Learning {
            store_results: true,
            reuse_learned_configs: true,
            predict: true,
            max_age_days: 7.0,
            min_p_success: 0.05,
            exploration_probes: 1,
            db: None,
        }
    }
}

/// Sampling while measuring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Monitoring {
    /// Sampling interval, ms.
    #[serde(deserialize_with = "units::whole_ms")]
    pub interval_ms: u32,
}

impl Default for Monitoring {
    fn default() -> Monitoring {
        Monitoring { interval_ms: 10 }
    }
}

impl Monitoring {
    pub fn interval(&self) -> Duration {
        Duration::from_millis(u64::from(self.interval_ms))
    }
}
