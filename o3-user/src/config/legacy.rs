//! The legacy layout (`o3_ai_config.yaml` of the Python tool), accepted as is. Every key with a
//! meaning now is copied to its current name through [`LEGACY_MAP`]; the structs below check
//! the types of those keys only. Every other key is accepted and named in exactly one notice:
//! those of [`IGNORED`] with the reason given there (a section's notice covers everything under
//! it), any other with the keys o3 maps beside it.

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

// The structs below check the types of the mapped keys only (serde reads them; the mapping
// walks the document through LEGACY_MAP), so their fields are never read. Any other key is
// skipped here and named in a notice by `ignored`.
#[allow(dead_code)]
mod schema {
    use serde::Deserialize;

    #[derive(Deserialize, Default)]
    #[serde(default)]
    pub struct File {
        search_strategy: Option<Search>,
        preset_categories: Option<Presets>,
        testing: Option<Testing>,
        hardware_monitoring: Option<Hardware>,
        learning_system: Option<Learning>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Search {
        initial_context_probe: Option<u32>,
        max_binary_iterations: Option<u32>,
        batch_adaptation: Option<Batch>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Batch {
        enabled: Option<bool>,
        initial_batch_large: Option<u32>,
        initial_batch_medium: Option<u32>,
        initial_batch_small: Option<u32>,
        scale_up_factor: Option<f64>,
        max_batch: Option<u32>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Presets {
        max_context: Option<MaxContext>,
        balanced: Option<Balanced>,
        fast_response: Option<FastResponse>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct MaxContext {
        target_context_percentile: Option<f64>,
        throughput_weight: Option<f64>,
        ttft_weight: Option<f64>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Balanced {
        target_context_range: Option<[u32; 2]>,
        throughput_weight: Option<f64>,
        ttft_weight: Option<f64>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct FastResponse {
        target_context_min: Option<u32>,
        throughput_weight: Option<f64>,
        ttft_weight: Option<f64>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Testing {
        statistical_validation: Option<Statistics>,
        concurrency_progression: Option<Concurrency>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Statistics {
        min_samples_per_config: Option<u32>,
        confidence_threshold: Option<f64>,
        variance_tolerance: Option<f64>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Concurrency {
        levels: Option<Vec<u32>>,
        stabilization_delay: Option<f64>,
        max_concurrent_timeouts: Option<u32>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Hardware {
        peak_detection: Option<Peaks>,
        safety_thresholds: Option<Safety>,
        resource_headroom: Option<Headroom>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Peaks {
        sampling_interval_ms: Option<u32>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Safety {
        max_vram_percent: Option<f64>,
        max_ram_percent: Option<f64>,
        max_temperature_c: Option<f64>,
        max_cpu_percent: Option<f64>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Headroom {
        vram_reserve_mb: Option<u64>,
        ram_reserve_mb: Option<u64>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Learning {
        configuration_learning: Option<ConfigurationLearning>,
        prediction_model: Option<Prediction>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct ConfigurationLearning {
        enabled: Option<bool>,
        hardware_profiles: Option<Profiles>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Profiles {
        store_results: Option<bool>,
        reuse_learned_configs: Option<bool>,
        update_frequency_days: Option<f64>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Prediction {
        enabled: Option<bool>,
        pre_test_prediction: Option<bool>,
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

/// A mapping key as a name: a string as is, any other scalar as YAML writes it.
fn key_name(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// Whether the layout has keys under `path` (mapped or listed in [`IGNORED`]).
fn is_section(path: &str) -> bool {
    LEGACY_MAP
        .iter()
        .map(|(l, _)| *l)
        .chain(IGNORED.iter().map(|(k, _)| *k))
        .any(|k| {
            k.strip_prefix(path)
                .is_some_and(|rest| rest.starts_with('.'))
        })
}

/// Why a key that is neither mapped nor listed in [`IGNORED`] is ignored.
fn unknown_reason(parent: &str) -> String {
    if parent.is_empty() {
        return "not a section of the legacy layout; o3 has no setting for it".into();
    }
    let prefix = format!("{parent}.");
    let mut mapped: Vec<&str> = Vec::new();
    for (l, _) in LEGACY_MAP {
        if let Some(name) = l.strip_prefix(&prefix).filter(|n| !n.contains('.')) {
            if !mapped.contains(&name) {
                mapped.push(name);
            }
        }
    }
    if mapped.is_empty() {
        "not a key of the legacy layout; o3 has no setting for it".into()
    } else {
        format!(
            "not a key of the legacy layout; o3 has no setting for it (the keys it maps here: {})",
            mapped.join(", ")
        )
    }
}

/// Every key of the document o3 does not use, once, with why: (dotted key, text after the
/// key). A mapped key is not listed; a key listed covers everything under it.
pub(crate) fn ignored(v: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    walk(v, "", &mut out);
    out
}

fn walk(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
    let Some(m) = v.as_mapping() else { return };
    for (k, child) in m {
        let name = key_name(k);
        let path = if at.is_empty() {
            name
        } else {
            format!("{at}.{name}")
        };
        if current_name(&path).is_some() {
            continue;
        }
        let why = match IGNORED.iter().find(|(k, _)| *k == path) {
            Some((_, why)) => why.to_string(),
            None if is_section(&path) && (child.is_mapping() || child.is_null()) => {
                walk(child, &path, out);
                continue;
            }
            None => unknown_reason(at),
        };
        let held: Vec<String> = child
            .as_mapping()
            .map(|m| m.keys().map(key_name).collect())
            .unwrap_or_default();
        let text = if held.is_empty() {
            format!("ignored; {why}")
        } else {
            format!("ignored ({}); {why}", held.join(", "))
        };
        out.push((path, text));
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

    for (path, text) in ignored(&doc.value) {
        notice(&path, text);
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
