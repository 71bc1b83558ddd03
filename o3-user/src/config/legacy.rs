//! The legacy layout (`o3_ai_config.yaml` of the Python tool), accepted as is: its names and
//! types are checked by the structs below (unknown keys are errors, as in the current layout),
//! then every meaningful key is copied to its current name through [`LEGACY_MAP`], and every
//! key with no meaning now is listed in a notice ([`IGNORED`]).

use serde_yaml::{Mapping, Value};

use super::error::{from_serde, ConfigError};
use super::locate::Doc;
use super::validate::{CONTEXT_MAX, CONTEXT_MIN};
use super::{Config, Layout};

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

/// Legacy key → current key. Two legacy booleans mapped to one key must both be true.
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
];

const NEVER_USED: &str = "the legacy tool never used this section";

/// Legacy keys with no meaning now, and why; each present one gives one notice.
pub(crate) const IGNORED: &[(&str, &str)] = &[
    ("objectives", "the legacy tool never used this section; what each preset favours is set by its weights (presets.*)"),
    ("ai_guidance", NEVER_USED),
    ("search_strategy.context_discovery", "o3 always bisects on measured results"),
    ("testing.adaptive_timeouts", "a request is no longer cut by a fixed formula: only a stall (timeouts.stall_s) or, for a server that shows no progress, timeouts.margin times the time model's estimate ends it"),
    ("search_strategy.binary_search_factor", "no meaning now: o3 bisects between the largest context that worked and the smallest that failed, down to search.granularity"),
    ("preset_categories.max_context.description", "a description is not a setting"),
    ("preset_categories.balanced.description", "a description is not a setting"),
    ("preset_categories.fast_response.description", "a description is not a setting"),
    ("hardware_monitoring.peak_detection.enabled", "o3 always records peaks while it measures"),
    ("hardware_monitoring.peak_detection.track_vram_peak", "o3 always tracks GPU memory peaks"),
    ("hardware_monitoring.peak_detection.track_ram_peak", "o3 always tracks RAM peaks"),
    ("hardware_monitoring.peak_detection.track_temperature", "o3 always tracks temperatures (limit: safety.max_temperature_c)"),
    ("hardware_monitoring.resource_headroom.context_scaling_factor", "no meaning now: contexts come from measurements"),
    ("learning_system.prediction_model.failure_pattern_learning", "no separate setting: failures are part of the stored results (learning.store_results)"),
    ("model_intelligence", NEVER_USED),
    ("fine_tuning", NEVER_USED),
    ("quality_assurance", NEVER_USED),
    ("deployment", NEVER_USED),
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

// The structs below only check names and types (serde reads them; the mapping walks the
// document through LEGACY_MAP), so their fields are never read.
#[allow(dead_code)]
mod schema {
    use serde::Deserialize;
    use serde_yaml::Value;

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    pub struct File {
        objectives: Option<Value>,
        ai_guidance: Option<Value>,
        search_strategy: Option<Search>,
        preset_categories: Option<Presets>,
        testing: Option<Testing>,
        hardware_monitoring: Option<Hardware>,
        learning_system: Option<Learning>,
        model_intelligence: Option<Value>,
        fine_tuning: Option<Value>,
        quality_assurance: Option<Value>,
        deployment: Option<Value>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Search {
        context_discovery: Option<Value>,
        initial_context_probe: Option<u32>,
        binary_search_factor: Option<Value>,
        max_binary_iterations: Option<u32>,
        batch_adaptation: Option<Batch>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Batch {
        enabled: Option<bool>,
        initial_batch_large: Option<u32>,
        initial_batch_medium: Option<u32>,
        initial_batch_small: Option<u32>,
        scale_up_factor: Option<f64>,
        max_batch: Option<u32>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Presets {
        max_context: Option<MaxContext>,
        balanced: Option<Balanced>,
        fast_response: Option<FastResponse>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct MaxContext {
        target_context_percentile: Option<f64>,
        throughput_weight: Option<f64>,
        ttft_weight: Option<f64>,
        description: Option<Value>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Balanced {
        target_context_range: Option<[u32; 2]>,
        throughput_weight: Option<f64>,
        ttft_weight: Option<f64>,
        description: Option<Value>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct FastResponse {
        target_context_min: Option<u32>,
        throughput_weight: Option<f64>,
        ttft_weight: Option<f64>,
        description: Option<Value>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Testing {
        statistical_validation: Option<Statistics>,
        concurrency_progression: Option<Concurrency>,
        adaptive_timeouts: Option<Timeouts>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Statistics {
        min_samples_per_config: Option<u32>,
        confidence_threshold: Option<f64>,
        variance_tolerance: Option<f64>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Concurrency {
        levels: Option<Vec<u32>>,
        stabilization_delay: Option<f64>,
        max_concurrent_timeouts: Option<u32>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Timeouts {
        base_timeout: Option<f64>,
        context_multiplier: Option<f64>,
        batch_multiplier: Option<f64>,
        min_timeout: Option<f64>,
        max_timeout: Option<f64>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Hardware {
        peak_detection: Option<Peaks>,
        /// nvidia-smi / rocm-smi command strings and `memory_field_index`: any content.
        gpu_handling: Option<Value>,
        safety_thresholds: Option<Safety>,
        resource_headroom: Option<Headroom>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Peaks {
        enabled: Option<Value>,
        sampling_interval_ms: Option<u32>,
        track_vram_peak: Option<Value>,
        track_ram_peak: Option<Value>,
        track_temperature: Option<Value>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Safety {
        max_vram_percent: Option<f64>,
        max_ram_percent: Option<f64>,
        max_temperature_c: Option<f64>,
        max_cpu_percent: Option<f64>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Headroom {
        vram_reserve_mb: Option<u64>,
        ram_reserve_mb: Option<u64>,
        context_scaling_factor: Option<Value>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Learning {
        configuration_learning: Option<ConfigurationLearning>,
        prediction_model: Option<Prediction>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct ConfigurationLearning {
        hardware_profiles: Option<Profiles>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Profiles {
        store_results: Option<bool>,
        reuse_learned_configs: Option<bool>,
        update_frequency_days: Option<Value>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Prediction {
        enabled: Option<bool>,
        pre_test_prediction: Option<bool>,
        failure_pattern_learning: Option<Value>,
    }
}

/// Puts `v` at a dotted path; a boolean already there is combined with AND.
fn set(root: &mut Mapping, path: &str, v: Value) {
    let mut m = root;
    let mut segs = path.split('.').peekable();
    while let Some(seg) = segs.next() {
        let key = Value::String(seg.to_string());
        if segs.peek().is_none() {
            let v = match (m.get(&key), &v) {
                (Some(Value::Bool(a)), Value::Bool(b)) => Value::Bool(*a && *b),
                _ => v,
            };
            m.insert(key, v);
            return;
        }
        let next = m
            .entry(key)
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        if !next.is_mapping() {
            *next = Value::Mapping(Mapping::new());
        }
        m = next.as_mapping_mut().expect("just made a mapping");
    }
}

/// Every path under `v` (prefixed with `at`) whose last key is `name`.
fn find_key(v: &Value, at: &str, name: &str, out: &mut Vec<String>) {
    if let Some(m) = v.as_mapping() {
        for (k, child) in m {
            let Some(k) = k.as_str() else { continue };
            let p = format!("{at}.{k}");
            if k == name {
                out.push(p.clone());
            }
            find_key(child, &p, name, out);
        }
    }
}

/// The configuration a legacy document stands for, with its notices (in line order).
pub(crate) fn map(doc: &Doc) -> Result<(Config, Vec<String>), ConfigError> {
    serde_yaml::from_str::<schema::File>(doc.text)
        .map_err(|e| from_serde(&e, doc, Layout::Legacy))?;
    let mut notices: Vec<(Option<usize>, String)> = Vec::new();
    let mut notice = |path: &str, text: String| {
        let line = doc.line_of(path);
        let at = match line {
            Some(l) => format!("{}:{l}", doc.origin),
            None => doc.origin.to_string(),
        };
        notices.push((line, format!("{at}: {path}: {text}")));
    };

    let mut current = Mapping::new();
    for (old, new) in LEGACY_MAP {
        if let Some(v) = doc.get(old).filter(|v| !v.is_null()) {
            set(&mut current, new, v.clone());
        }
    }
    let mut config: Config =
        serde_yaml::from_value(Value::Mapping(current)).map_err(|e| ConfigError::Syntax {
            origin: doc.origin.to_string(),
            line: None,
            problem: format!("the legacy layout could not be mapped: {e}"),
            fix: "convert it by hand (docs/config.md maps each legacy key)".into(),
        })?;

    for (path, why) in IGNORED {
        if doc.get(path).is_some() {
            notice(path, format!("ignored; {why}"));
        }
    }
    const GPU: &str = "hardware_monitoring.gpu_handling";
    if let Some(g) = doc.get(GPU).filter(|v| !v.is_null()) {
        notice(
            GPU,
            "ignored with its SMI command strings; o3 reads GPUs directly (amdgpu sysfs and ioctls, NVML), SMI tools only as a fallback".into(),
        );
        let mut found = Vec::new();
        find_key(g, GPU, "memory_field_index", &mut found);
        if let Some(p) = found.first() {
            notice(
                p,
                "ignored; o3 reads GPU memory directly instead of taking a column of rocm-smi's CSV (on an APU that column is not the GTT where the model lives)".into(),
            );
        }
    }

    // A probe outside the default bounds moves the bound rather than failing.
    const PROBE: &str = "search_strategy.initial_context_probe";
    let s = &mut config.search;
    let probe = u64::from(s.initial_context);
    if (CONTEXT_MIN..=CONTEXT_MAX).contains(&probe) {
        if s.initial_context > s.max_context {
            notice(
                PROBE,
                format!(
                    "{} is above the default search.max_context {}; search.max_context raised to {}",
                    s.initial_context, s.max_context, s.initial_context
                ),
            );
            s.max_context = s.initial_context;
        } else if s.initial_context < s.min_context {
            notice(
                PROBE,
                format!(
                    "{} is below the default search.min_context {}; search.min_context lowered to {}",
                    s.initial_context, s.min_context, s.initial_context
                ),
            );
            s.min_context = s.initial_context;
        }
    }

    notices.sort_by_key(|(line, _)| line.unwrap_or(usize::MAX));
    Ok((config, notices.into_iter().map(|(_, n)| n).collect()))
}
