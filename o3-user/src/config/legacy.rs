//! The legacy layout (`o3_ai_config.yaml` of the Python tool), accepted as is. Every key with a
//! meaning now is copied to its current name through [`LEGACY_MAP`]; the structs below check
//! the types of those keys only. Every other key is accepted and named in exactly one notice:
//! those of [`IGNORED`] with the reason given there (a section's notice covers everything under
//! it), any other with the keys o3 maps beside it.

use serde_yaml::{Mapping, Value};

use super::error::{from_serde, ConfigError};
use super::keys::Layout;
use super::keys::{current_name, CONTEXT_MAX, CONTEXT_MIN, IGNORED, LEGACY_MAP};
use super::locate::Doc;
use super::schema::Config;

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
