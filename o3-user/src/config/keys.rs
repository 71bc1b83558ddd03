//! The names of the configuration's keys and what each takes: the rule table of the current
//! layout, the legacy layout's names mapped onto the current ones, and the keys it ignores. A
//! leaf: parsing, validation and error messages all read these tables; nothing here reads them.

use serde::Serialize;

use super::units::TimeUnit;
use crate::util::percent::FractionRange;

/// Which layout a file was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// This version's (`config/o3.yaml`).
    Current,
    /// The Python tool's `o3_ai_config.yaml`, mapped onto the current one.
    Legacy,
}

impl Layout {
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Current => "current",
            Layout::Legacy => "legacy",
        }
    }
}

/// What values a key takes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Rule {
    /// A whole number in `min..=max`.
    Int {
        min: u64,
        max: u64,
    },
    /// A number in `min..=max`; with `above`, `min` itself is excluded.
    Num {
        min: f64,
        above: bool,
        max: f64,
    },
    Bool,
    /// A file path (any non-empty string).
    Path,
    /// `null` (none) or a value of the inner rule.
    Opt(&'static Rule),
    /// A non-empty, strictly ascending list of whole numbers, each in `min..=max`.
    Ascending {
        min: u64,
        max: u64,
    },
    /// `[low, high]`, each in `min..=max`, low <= high.
    Pair {
        min: u64,
        max: u64,
    },
    /// A percent, 1 to 100 (`85` or `85%`).
    Percent,
    /// A share of one (`0.9` or `90%`).
    Fraction(FractionRange),
    /// A list of names from `allowed`, each once (empty: none).
    Names(&'static [&'static str]),
    /// A list of whole numbers in `min..=max`, each once (empty: none).
    Ints {
        min: u64,
        max: u64,
    },
    /// A duration in `min..=max` of `unit`: a bare number of the unit, or a duration with a
    /// unit (`2m`).
    Time {
        min: f64,
        max: f64,
        unit: TimeUnit,
    },
}

/// Smallest and largest context o3 searches (tokens).
pub(crate) const CONTEXT_MIN: u64 = 256;
pub(crate) const CONTEXT_MAX: u64 = 1_048_576;

const fn int(min: u64, max: u64) -> Rule {
    Rule::Int { min, max }
}
const fn num(min: f64, max: f64) -> Rule {
    Rule::Num {
        min,
        above: false,
        max,
    }
}
const fn above(min: f64, max: f64) -> Rule {
    Rule::Num {
        min,
        above: true,
        max,
    }
}
const fn fraction(lo: f64, above: bool, hi: f64) -> Rule {
    Rule::Fraction(FractionRange::new(lo, above, hi))
}
const fn secs(min: f64, max: f64) -> Rule {
    Rule::Time {
        min,
        max,
        unit: TimeUnit::S,
    }
}
const CTX: Rule = int(CONTEXT_MIN, CONTEXT_MAX);
const BATCH: Rule = int(1, 65_536);
const WEIGHT: Rule = num(0.0, 1.0);
const PERCENT: Rule = Rule::Percent;

/// The KV cache types a variant may name (llama.cpp's `--cache-type-k/v`).
pub(crate) const KV_CACHE_TYPES: &[&str] = &[
    "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl",
];

/// Every key of the current layout with its rule, in the order of config/o3.yaml.
pub(crate) const FIELDS: &[(&str, Rule)] = &[
    ("search.initial_context", CTX),
    ("search.granularity", int(64, 65_536)),
    ("search.min_context", CTX),
    ("search.max_context", CTX),
    ("search.max_iterations", int(1, 64)),
    ("search.load_only", Rule::Bool),
    ("batch.enabled", Rule::Bool),
    ("batch.initial_large", BATCH),
    ("batch.initial_medium", BATCH),
    ("batch.initial_small", BATCH),
    ("batch.scale_factor", above(1.0, 16.0)),
    ("batch.max_batch", BATCH),
    ("batch.ubatch", Rule::Opt(&BATCH)),
    ("batch.min_gain", fraction(0.0, false, 1.0)),
    ("batch.rank_tokens", int(16, CONTEXT_MAX)),
    ("batch.rank_samples", int(1, 100)),
    ("presets.max_context.target_context_percentile", PERCENT),
    ("presets.max_context.throughput_weight", WEIGHT),
    ("presets.max_context.ttft_weight", WEIGHT),
    (
        "presets.balanced.target_context_range",
        Rule::Pair {
            min: CONTEXT_MIN,
            max: CONTEXT_MAX,
        },
    ),
    ("presets.balanced.throughput_weight", WEIGHT),
    ("presets.balanced.ttft_weight", WEIGHT),
    ("presets.fast_response.target_context_min", CTX),
    ("presets.fast_response.throughput_weight", WEIGHT),
    ("presets.fast_response.ttft_weight", WEIGHT),
    (
        "presets.slo.ttft_p95_ms",
        Rule::Opt(&Rule::Time {
            min: 1.0,
            max: 600_000.0,
            unit: TimeUnit::Ms,
        }),
    ),
    (
        "presets.slo.min_decode_tokens_per_s",
        Rule::Opt(&above(0.0, 100_000.0)),
    ),
    ("validation.samples", int(1, 100)),
    ("validation.min_success_rate", fraction(0.0, false, 1.0)),
    ("validation.max_cv", fraction(0.0, true, 1.0)),
    ("concurrency.enabled", Rule::Bool),
    ("concurrency.levels", Rule::Ascending { min: 1, max: 256 }),
    ("concurrency.stabilization_delay_s", secs(0.0, 600.0)),
    ("concurrency.max_timeouts", int(0, 100)),
    ("concurrency.mixed_short_streams", int(0, 255)),
    ("timeouts.stall_s", secs(1.0, 86_400.0)),
    ("timeouts.margin", num(1.5, 100.0)),
    ("timeouts.load_s", secs(1.0, 86_400.0)),
    ("plan.budget_s", Rule::Opt(&secs(60.0, 31_536_000.0))),
    ("plan.floor_multiple", num(0.0, 1000.0)),
    ("plan.min_budget_s", secs(0.0, 31_536_000.0)),
    ("plan.concurrency_at_max_context", Rule::Bool),
    ("safety.max_vram_percent", PERCENT),
    ("safety.max_ram_percent", PERCENT),
    ("safety.max_temperature_c", num(30.0, 120.0)),
    ("safety.max_cpu_percent", PERCENT),
    ("safety.vram_reserve_mb", int(0, 1_048_576)),
    ("safety.ram_reserve_mb", int(0, 1_048_576)),
    ("prompt.fill", fraction(0.05, false, 1.0)),
    ("prompt.max_prompt_tokens", Rule::Opt(&int(16, CONTEXT_MAX))),
    ("prompt.output_tokens", int(1, 4096)),
    ("prompt.reuse_prefix", Rule::Bool),
    ("learning.store_results", Rule::Bool),
    ("learning.reuse_learned_configs", Rule::Bool),
    ("learning.predict", Rule::Bool),
    (
        "learning.max_age_days",
        Rule::Time {
            min: 0.0,
            max: 3650.0,
            unit: TimeUnit::Days,
        },
    ),
    ("learning.min_p_success", fraction(0.0, false, 0.5)),
    ("learning.exploration_probes", int(0, 100)),
    ("learning.db", Rule::Opt(&Rule::Path)),
    (
        "monitoring.interval_ms",
        Rule::Time {
            min: 1.0,
            max: 10_000.0,
            unit: TimeUnit::Ms,
        },
    ),
    ("variants.cache_types", Rule::Names(KV_CACHE_TYPES)),
    ("variants.flash_attn", Rule::Names(&["on", "off", "auto"])),
    (
        "variants.ubatch",
        Rule::Ints {
            min: 1,
            max: 65_536,
        },
    ),
    ("variants.gpu_layers", Rule::Ints { min: 0, max: 999 }),
    ("variants.max_variants", int(1, 64)),
    ("variants.extra_floors", num(0.0, 100.0)),
];

/// The rule of a current-layout key.
pub(crate) fn rule_for(key: &str) -> Option<Rule> {
    FIELDS.iter().find(|(k, _)| *k == key).map(|(_, r)| *r)
}

/// A number as people write it: `2`, `0.05`.
pub(crate) fn fmt_num(v: f64) -> String {
    format!("{v}")
}

impl Rule {
    /// What is allowed, after "allowed " (ranges) or as a phrase.
    pub(crate) fn allowed(&self) -> String {
        match self {
            Rule::Int { min, max } => format!("allowed {min} to {max}"),
            Rule::Num {
                min,
                above: false,
                max,
            } => format!("allowed {} to {}", fmt_num(*min), fmt_num(*max)),
            Rule::Num {
                min,
                above: true,
                max,
            } => format!(
                "allowed more than {} up to {}",
                fmt_num(*min),
                fmt_num(*max)
            ),
            Rule::Bool => "allowed true or false".into(),
            Rule::Path => "allowed a file path".into(),
            Rule::Opt(inner) => format!("{}, or null for none", inner.allowed()),
            Rule::Ascending { min, max } => {
                format!("allowed a non-empty, strictly ascending list, each {min} to {max}")
            }
            Rule::Pair { min, max } => {
                format!("allowed [low, high] with low <= high, each {min} to {max}")
            }
            Rule::Percent | Rule::Fraction(_) | Rule::Time { .. } => {
                format!("allowed {}", self.expected())
            }
            Rule::Names(names) => format!("allowed a list of {}, each once", names.join(", ")),
            Rule::Ints { min, max } => format!("allowed a list, each {min} to {max} and once"),
        }
    }

    /// The kind of value, for type errors: "a whole number 64 to 65536".
    pub(crate) fn expected(&self) -> String {
        match self {
            Rule::Int { min, max } => format!("a whole number {min} to {max}"),
            Rule::Num { .. } => format!("a number, {}", self.allowed()),
            Rule::Bool => "true or false".into(),
            Rule::Path => "a file path".into(),
            Rule::Opt(inner) => format!("{}, or null for none", inner.expected()),
            Rule::Ascending { min, max } => {
                format!(
                    "a list of whole numbers {min} to {max}, strictly ascending, e.g. [1, 2, 4, 8]"
                )
            }
            Rule::Pair { min, max } => {
                format!("a list of two whole numbers [low, high], each {min} to {max}")
            }
            Rule::Percent => "a percent from 1 to 100 (85 or 85%)".into(),
            Rule::Names(names) => format!(
                "a list of names from {}, e.g. [{}]",
                names.join(", "),
                names[..2].join(", ")
            ),
            Rule::Ints { min, max } => {
                format!("a list of whole numbers {min} to {max}, e.g. [512, 256]")
            }
            Rule::Fraction(r) => r.words(),
            Rule::Time { min, max, unit } => format!(
                "a duration from {} to {} (a number of {}, or a number with a unit, e.g. {})",
                unit.show(*min),
                unit.show(*max),
                unit.word(),
                unit.examples()
            ),
        }
    }
}

/// Top-level keys of the legacy layout.
pub(crate) const TOP_KEYS: &[&str] = &[
    "objectives",
    "ai_guidance",
    "search_strategy",
    "preset_categories",
    "testing",
    "hardware_monitoring",
    "learning_system",
    "model_intelligence",
    "fine_tuning",
    "quality_assurance",
    "deployment",
];

/// Legacy key → current key. Legacy booleans mapped to one key must all be true; a legacy key
/// listed twice sets both current keys (the first is the one its errors are checked against).
pub(crate) const LEGACY_MAP: &[(&str, &str)] = &[
    (
        "search_strategy.initial_context_probe",
        "search.initial_context",
    ),
    (
        "search_strategy.max_binary_iterations",
        "search.max_iterations",
    ),
    ("search_strategy.batch_adaptation.enabled", "batch.enabled"),
    (
        "search_strategy.batch_adaptation.initial_batch_large",
        "batch.initial_large",
    ),
    (
        "search_strategy.batch_adaptation.initial_batch_medium",
        "batch.initial_medium",
    ),
    (
        "search_strategy.batch_adaptation.initial_batch_small",
        "batch.initial_small",
    ),
    (
        "search_strategy.batch_adaptation.scale_up_factor",
        "batch.scale_factor",
    ),
    (
        "search_strategy.batch_adaptation.max_batch",
        "batch.max_batch",
    ),
    (
        "preset_categories.max_context.target_context_percentile",
        "presets.max_context.target_context_percentile",
    ),
    (
        "preset_categories.max_context.throughput_weight",
        "presets.max_context.throughput_weight",
    ),
    (
        "preset_categories.max_context.ttft_weight",
        "presets.max_context.ttft_weight",
    ),
    (
        "preset_categories.balanced.target_context_range",
        "presets.balanced.target_context_range",
    ),
    (
        "preset_categories.balanced.throughput_weight",
        "presets.balanced.throughput_weight",
    ),
    (
        "preset_categories.balanced.ttft_weight",
        "presets.balanced.ttft_weight",
    ),
    (
        "preset_categories.fast_response.target_context_min",
        "presets.fast_response.target_context_min",
    ),
    (
        "preset_categories.fast_response.throughput_weight",
        "presets.fast_response.throughput_weight",
    ),
    (
        "preset_categories.fast_response.ttft_weight",
        "presets.fast_response.ttft_weight",
    ),
    (
        "testing.statistical_validation.min_samples_per_config",
        "validation.samples",
    ),
    (
        "testing.statistical_validation.confidence_threshold",
        "validation.min_success_rate",
    ),
    (
        "testing.statistical_validation.variance_tolerance",
        "validation.max_cv",
    ),
    (
        "testing.concurrency_progression.levels",
        "concurrency.levels",
    ),
    (
        "testing.concurrency_progression.stabilization_delay",
        "concurrency.stabilization_delay_s",
    ),
    (
        "testing.concurrency_progression.max_concurrent_timeouts",
        "concurrency.max_timeouts",
    ),
    (
        "hardware_monitoring.peak_detection.sampling_interval_ms",
        "monitoring.interval_ms",
    ),
    (
        "hardware_monitoring.safety_thresholds.max_vram_percent",
        "safety.max_vram_percent",
    ),
    (
        "hardware_monitoring.safety_thresholds.max_ram_percent",
        "safety.max_ram_percent",
    ),
    (
        "hardware_monitoring.safety_thresholds.max_temperature_c",
        "safety.max_temperature_c",
    ),
    (
        "hardware_monitoring.safety_thresholds.max_cpu_percent",
        "safety.max_cpu_percent",
    ),
    (
        "hardware_monitoring.resource_headroom.vram_reserve_mb",
        "safety.vram_reserve_mb",
    ),
    (
        "hardware_monitoring.resource_headroom.ram_reserve_mb",
        "safety.ram_reserve_mb",
    ),
    (
        "learning_system.configuration_learning.hardware_profiles.store_results",
        "learning.store_results",
    ),
    (
        "learning_system.configuration_learning.hardware_profiles.reuse_learned_configs",
        "learning.reuse_learned_configs",
    ),
    (
        "learning_system.prediction_model.enabled",
        "learning.predict",
    ),
    (
        "learning_system.configuration_learning.hardware_profiles.update_frequency_days",
        "learning.max_age_days",
    ),
    (
        "learning_system.prediction_model.pre_test_prediction",
        "learning.predict",
    ),
    (
        "learning_system.configuration_learning.enabled",
        "learning.store_results",
    ),
    (
        "learning_system.configuration_learning.enabled",
        "learning.reuse_learned_configs",
    ),
];

/// Legacy keys o3 cannot use, and why. Each present one gives one notice; the notice of a
/// section covers everything under it and names the keys it holds.
pub(crate) const IGNORED: &[(&str, &str)] = &[
    (
        "objectives",
        "o3's presets take their weights from presets.* (preset_categories.* in this layout) and its resource limits from safety.* (hardware_monitoring.safety_thresholds.*)",
    ),
    (
        "ai_guidance",
        "o3 has no such switches: it always searches on measured results, and predicts from earlier runs as learning.predict says (learning_system.prediction_model.*)",
    ),
    (
        "search_strategy.context_discovery",
        "o3 always bisects on measured results",
    ),
    (
        "search_strategy.binary_search_factor",
        "no meaning now: the legacy tool widened a fixed list of contexts by it; o3 bisects between the largest context that worked and the smallest that failed, down to search.granularity",
    ),
    (
        "preset_categories.max_context.description",
        "a description is not a setting",
    ),
    (
        "preset_categories.balanced.description",
        "a description is not a setting",
    ),
    (
        "preset_categories.fast_response.description",
        "a description is not a setting",
    ),
    (
        "testing.adaptive_timeouts",
        "a request is no longer cut by a fixed formula: only a stall (timeouts.stall_s) or, for a server that shows no progress, timeouts.margin times the time model's estimate ends it",
    ),
    (
        "hardware_monitoring.peak_detection.enabled",
        "o3 always records peaks while it measures",
    ),
    (
        "hardware_monitoring.peak_detection.track_vram_peak",
        "o3 always tracks GPU memory peaks",
    ),
    (
        "hardware_monitoring.peak_detection.track_ram_peak",
        "o3 always tracks RAM peaks",
    ),
    (
        "hardware_monitoring.peak_detection.track_temperature",
        "o3 always tracks temperatures (limit: safety.max_temperature_c)",
    ),
    (
        "hardware_monitoring.gpu_handling",
        "o3 reads GPUs directly (amdgpu sysfs and ioctls, NVML) and runs SMI tools only as a fallback, with its own commands; memory_field_index took a column of rocm-smi's CSV, which on an APU is not the GTT where the model lives",
    ),
    (
        "hardware_monitoring.resource_headroom.context_scaling_factor",
        "no meaning now: contexts come from measurements",
    ),
    (
        "learning_system.prediction_model.failure_pattern_learning",
        "no separate setting: failures are part of the stored results (learning.store_results)",
    ),
    (
        "learning_system.auto_improvement",
        "o3's search always adapts to measured results and earlier runs (learning.*); there is nothing to switch on",
    ),
    (
        "model_intelligence",
        "o3 reads a model's size from its metadata and starts the batch by it (batch.initial_*); what a use favours is a preset's weights (presets.*)",
    ),
    (
        "fine_tuning",
        "o3 does not train models, and ranks by measurements, not per-size targets; objectives every preset must meet are presets.slo.*",
    ),
    (
        "quality_assurance",
        "o3's checks are not optional: outliers are dropped by their median absolute deviation, and stability is judged by validation.*",
    ),
    (
        "deployment",
        "o3 applies no configuration by itself: it writes each preset's server settings (artefacts/ of the run) for you to apply",
    ),
];

/// The legacy name of a current key, if the legacy layout had one.
pub(crate) fn legacy_name(current: &str) -> Option<&'static str> {
    LEGACY_MAP
        .iter()
        .find(|(_, c)| *c == current)
        .map(|(l, _)| *l)
}

/// The current name of a legacy key, if it has one.
pub(crate) fn current_name(legacy: &str) -> Option<&'static str> {
    LEGACY_MAP
        .iter()
        .find(|(l, _)| *l == legacy)
        .map(|(_, c)| *c)
}
