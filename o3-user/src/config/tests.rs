//! Unit tests of the configuration module: defaults, every range, line numbers, the legacy
//! mapping, mixed layouts and notices.

use std::path::PathBuf;
use std::time::Duration;

use super::keys::{Rule, FIELDS};
use super::keys::{IGNORED, LEGACY_MAP};
use super::locate::key_lines;
use super::*;

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

fn ok(text: &str) -> Loaded {
    parse(text, "t.yaml").unwrap_or_else(|e| panic!("{e}\n--- text:\n{text}"))
}

fn err(text: &str) -> ConfigError {
    match parse(text, "t.yaml") {
        Ok(l) => panic!("accepted: {l:?}\n--- text:\n{text}"),
        Err(e) => {
            let s = e.to_string();
            assert!(!s.contains('\n'), "not one line: {s:?}");
            e
        }
    }
}

/// `a.b.c: v` as block YAML.
fn yaml_at(path: &str, value: &str) -> String {
    let mut out = String::new();
    let segs: Vec<_> = path.split('.').collect();
    for (i, s) in segs.iter().enumerate() {
        out += &"  ".repeat(i);
        out += s;
        out += ":";
        if i + 1 == segs.len() {
            out += " ";
            out += value;
        }
        out += "\n";
    }
    out
}

// ---- defaults ----

#[test]
fn default_yaml_is_the_default_config() {
    let l = parse(default_yaml(), "o3.yaml").unwrap();
    assert_eq!(l.config, Config::default());
    assert_eq!(l.layout, Layout::Current);
    assert!(l.notices.is_empty(), "{:?}", l.notices);
}

#[test]
fn defaults_are_the_documented_values() {
    let c = Config::default();
    assert_eq!(c.search.initial_context, 16384);
    assert_eq!(c.search.granularity, 1024);
    assert_eq!((c.search.min_context, c.search.max_context), (2048, 131072));
    assert_eq!(c.search.max_iterations, 16);
    assert!(c.batch.enabled);
    assert_eq!(
        (
            c.batch.initial_large,
            c.batch.initial_medium,
            c.batch.initial_small
        ),
        (16, 32, 64)
    );
    assert_eq!(c.batch.scale_factor, 2.0);
    assert_eq!(c.batch.max_batch, 256);
    assert_eq!(c.batch.ubatch, None);
    assert_eq!(c.batch.min_gain, 0.05);
    assert_eq!(c.presets.max_context.target_context_percentile, 95.0);
    assert_eq!(c.presets.balanced.target_context_range, [8192, 12288]);
    assert_eq!(c.presets.fast_response.target_context_min, 4096);
    assert_eq!(c.presets.fast_response.ttft_weight, 0.7);
    assert_eq!(c.presets.slo, Slo::default());
    assert_eq!(c.presets.slo.ttft_p95_ms, None);
    assert_eq!(c.validation.samples, 5);
    assert_eq!(c.validation.min_success_rate, 0.85);
    assert_eq!(c.validation.max_cv, 0.15);
    assert_eq!(c.concurrency.levels, vec![1, 2, 4, 8]);
    assert_eq!(c.concurrency.stabilization_delay_s, 2.0);
    assert_eq!(c.concurrency.max_timeouts, 2);
    assert_eq!(
        c.concurrency.mixed_short_streams, 0,
        "mixed workloads are opt-in"
    );
    assert_eq!(c.timeouts.load_s, 600.0);
    assert_eq!(c.safety.vram_reserve_mb, 4096);
    assert_eq!(c.prompt.max_prompt_tokens, None);
    assert!(c.prompt.reuse_prefix && c.search.load_only);
    assert_eq!((c.timeouts.stall_s, c.timeouts.margin), (60.0, 3.0));
    assert_eq!((c.plan.budget_s, c.plan.floor_multiple), (None, 2.0));
    assert_eq!((c.batch.rank_tokens, c.batch.rank_samples), (2048, 2));
    assert_eq!(c.prompt.output_tokens, 64);
    assert_eq!(c.monitoring.interval_ms, 10);
    assert!(c.learning.store_results && c.learning.reuse_learned_configs && c.learning.predict);
}

/// Every leaf key of the serialized configuration (dotted).
fn leaf_keys(v: &serde_yaml::Value, at: &str, out: &mut Vec<String>) {
    match v.as_mapping() {
        Some(m) => {
            for (k, child) in m {
                let k = k.as_str().unwrap();
                let p = if at.is_empty() {
                    k.to_string()
                } else {
                    format!("{at}.{k}")
                };
                leaf_keys(child, &p, out);
            }
        }
        None => out.push(at.to_string()),
    }
}

#[test]
fn rule_table_covers_every_key_in_order() {
    let mut keys = Vec::new();
    leaf_keys(
        &serde_yaml::to_value(Config::default()).unwrap(),
        "",
        &mut keys,
    );
    let table: Vec<_> = FIELDS.iter().map(|(k, _)| k.to_string()).collect();
    assert_eq!(keys, table);
}

#[test]
fn default_yaml_documents_every_key_with_a_comment() {
    let text = default_yaml();
    let lines: Vec<&str> = text.lines().collect();
    let found = key_lines(text);
    for (key, _) in FIELDS {
        let k = found
            .iter()
            .find(|k| k.path == *key)
            .unwrap_or_else(|| panic!("{key} not in config/o3.yaml"));
        // The line above is a comment.
        assert!(
            lines[k.line - 2].trim_start().starts_with('#'),
            "{key} has no comment above it"
        );
    }
}

#[test]
fn reference_documents_every_key() {
    let path = repo("docs/config.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    for (key, _) in FIELDS {
        assert!(
            doc.contains(&format!("`{key}`")),
            "{key} not in docs/config.md"
        );
    }
    for (old, _) in LEGACY_MAP {
        assert!(
            doc.contains(&format!("`{old}`")),
            "{old} not in docs/config.md"
        );
    }
    for (old, _) in IGNORED {
        assert!(
            doc.contains(&format!("`{old}`")),
            "{old} not in docs/config.md"
        );
    }
}

// ---- helpers of the typed configuration ----

#[test]
fn initial_batch_by_model_size() {
    let b = Batch::default();
    assert_eq!(b.initial_for(Some(70_000_000_000)), 16);
    assert_eq!(b.initial_for(Some(27_000_000_000)), 16);
    assert_eq!(b.initial_for(Some(26_999_999_999)), 32);
    assert_eq!(b.initial_for(Some(7_000_000_000)), 32);
    assert_eq!(b.initial_for(Some(3_000_000_000)), 32);
    assert_eq!(b.initial_for(Some(2_999_999_999)), 64);
    assert_eq!(b.initial_for(Some(500_000_000)), 64);
    assert_eq!(b.initial_for(None), 32);
}

#[test]
fn timeouts_give_the_probe_its_limits() {
    let t = Timeouts::default();
    let l = t.limits();
    assert_eq!((l.stall_s, l.margin), (60.0, 3.0));
    assert_eq!(t.load_timeout(), Duration::from_secs(600));
    assert!(t.retired_keys().is_empty());
}

#[test]
fn filled_prompts_go_to_depth_unless_capped() {
    let mut p = crate::config::Prompt::default();
    // 90 % of 32768 less 64 output tokens.
    assert_eq!(p.depth_tokens(32_768), 29_427);
    assert_eq!(p.filled_tokens(262_144), 235_865);
    p.max_prompt_tokens = Some(32_768);
    assert_eq!(p.filled_tokens(262_144), 32_768);
    assert_eq!(p.filled_tokens(8192), p.depth_tokens(8192));
}

#[test]
fn safety_thresholds_convert_mib_and_keep_cpu_sustain() {
    let s = Safety {
        max_ram_percent: 70.0,
        vram_reserve_mb: 2048,
        ram_reserve_mb: 1,
        ..Safety::default()
    };
    let th = s.thresholds();
    let d = crate::telemetry::watchdog::Thresholds::default();
    assert_eq!(th.max_ram_percent, 70.0);
    assert_eq!(th.vram_reserve_bytes, 2048 << 20);
    assert_eq!(th.ram_reserve_bytes, 1 << 20);
    assert_eq!(th.cpu_sustain, d.cpu_sustain);
    assert_eq!(Safety::default().thresholds(), d);
}

// ---- ranges: every rule, both ends ----

fn fmt(v: f64) -> String {
    format!("{v}")
}

/// Out-of-range values of a rule, as YAML.
fn bad_values(rule: &Rule) -> Vec<String> {
    match rule {
        Rule::Bool => vec![],
        Rule::Path => vec!["\"\"".into()],
        Rule::Int { min, max } => {
            let mut v = vec![(max + 1).to_string()];
            if *min > 0 {
                v.push((min - 1).to_string());
            }
            v
        }
        Rule::Num { min, above, max } => {
            let low = if *above { *min } else { min - 0.01 };
            vec![fmt(low), fmt(max + 0.5), ".nan".into()]
        }
        Rule::Opt(inner) => bad_values(inner),
        Rule::Ascending { min, max } => vec![
            "[]".into(),
            format!("[{}]", max + 1),
            format!("[{min}, {}]", max + 1),
            "[2, 1]".into(),
            "[1, 1]".into(),
        ],
        Rule::Pair { min, max } => vec![
            format!("[{}, {max}]", min - 1),
            format!("[{min}, {}]", max + 1),
            format!("[{}, {}]", min + 1, min),
        ],
        Rule::Percent => vec!["0.5".into(), "0".into(), "150".into(), "\"150%\"".into()],
        Rule::Names(names) => vec!["[nonsense]".into(), format!("[{}, {}]", names[0], names[0])],
        Rule::Ints { min, max } => vec![format!("[{}]", max + 1), format!("[{min}, {min}]")],
        Rule::Fraction(r) => {
            let low = if r.above { r.lo } else { r.lo - 0.01 };
            vec![
                fmt(low),
                fmt(r.hi + 0.5),
                "90".into(),
                "\"150%\"".into(),
                ".nan".into(),
            ]
        }
        Rule::Time { min, max, .. } => {
            let low = if *min >= 1.0 { min - 1.0 } else { min - 0.01 };
            vec![
                fmt(low),
                fmt(max + 1.0),
                "\"2x\"".into(),
                "\"10 parsecs\"".into(),
            ]
        }
    }
}

#[test]
fn every_range_is_checked_with_key_line_and_allowed_values() {
    let mut n = 0;
    for (key, rule) in FIELDS {
        let depth = key.split('.').count();
        for bad in bad_values(rule) {
            let text = yaml_at(key, &bad);
            let e = err(&text);
            let s = e.to_string();
            assert_eq!(e.key(), Some(*key), "{s}");
            assert_eq!(e.line(), Some(depth), "{s}");
            assert!(s.starts_with(&format!("t.yaml:{depth}: {key}: ")), "{s}");
            n += 1;
        }
    }
    assert!(n > 100, "{n}");
}

#[test]
fn range_messages() {
    assert_eq!(
        err("search:\n  granularity: 0\n").to_string(),
        "t.yaml:2: search.granularity: 0 is out of range; allowed 64 to 65536"
    );
    assert_eq!(
        err("batch:\n  scale_factor: 1\n").to_string(),
        "t.yaml:2: batch.scale_factor: 1 is out of range; allowed more than 1 up to 16"
    );
    assert_eq!(
        err("prompt:\n  fill: 0.01\n").to_string(),
        "t.yaml:2: prompt.fill: 0.01 is out of range; allowed a fraction from 0.05 to 1 (or a percent such as 90%)"
    );
    assert_eq!(
        err("batch:\n  ubatch: 0\n").to_string(),
        "t.yaml:2: batch.ubatch: 0 is out of range; allowed 1 to 65536, or null for none"
    );
    assert_eq!(
        err("concurrency:\n  levels: []\n").to_string(),
        "t.yaml:2: concurrency.levels: the list is empty; give at least one level, e.g. [1, 2, 4, 8]"
    );
    assert_eq!(
        err("concurrency:\n  levels: [1, 4, 2]\n").to_string(),
        "t.yaml:2: concurrency.levels: 2 follows 4, the list is not strictly ascending; list each level once, smallest first, e.g. [1, 2, 4, 8]"
    );
    assert_eq!(
        err("concurrency:\n  levels:\n    - 1\n    - 300\n").to_string(),
        "t.yaml:2: concurrency.levels: 300 is out of range; each level allowed 1 to 256"
    );
    assert_eq!(
        err("concurrency:\n  mixed_short_streams: 256\n").to_string(),
        "t.yaml:2: concurrency.mixed_short_streams: 256 is out of range; allowed 0 to 255"
    );
    assert_eq!(
        err("validation:\n  max_cv: 0\n").to_string(),
        "t.yaml:2: validation.max_cv: 0 is out of range; allowed a fraction above 0 up to 1 (or a percent such as 90%)"
    );
}

#[test]
fn percents_and_fractions_say_their_unit_and_the_value_meant() {
    assert_eq!(
        err("safety:\n  max_ram_percent: 0.5\n").to_string(),
        "t.yaml:2: safety.max_ram_percent: 0.5 is not a percent; give a percent from 1 to 100 (did you mean 50?)"
    );
    assert_eq!(
        err("presets:\n  max_context:\n    target_context_percentile: 0.95\n").to_string(),
        "t.yaml:3: presets.max_context.target_context_percentile: 0.95 is not a percent; give a percent from 1 to 100 (did you mean 95?)"
    );
    assert_eq!(
        err("safety:\n  max_vram_percent: 150\n").to_string(),
        "t.yaml:2: safety.max_vram_percent: 150 is out of range; allowed a percent from 1 to 100 (85 or 85%)"
    );
    assert_eq!(
        err("prompt:\n  fill: 90\n").to_string(),
        "t.yaml:2: prompt.fill: 90 is not a fraction; give a fraction from 0.05 to 1 (or a percent such as 90%) (did you mean 90%?)"
    );
    assert_eq!(
        err("prompt:\n  fill: ninety\n").to_string(),
        "t.yaml:2: prompt.fill: `ninety` is not a number; give a fraction, e.g. 0.9 or 90%"
    );
    let l = ok("prompt:\n  fill: 90%\nsafety:\n  max_ram_percent: 85%\n  max_cpu_percent: 100\nvalidation:\n  min_success_rate: \"85%\"\n");
    assert_eq!(l.config.prompt.fill, 0.9);
    assert_eq!(l.config.safety.max_ram_percent, 85.0);
    assert_eq!(l.config.safety.max_cpu_percent, 100.0);
    assert_eq!(l.config.validation.min_success_rate, 0.85);
}

#[test]
fn durations_take_a_unit_or_a_bare_number_of_the_keys_unit() {
    let l = ok("timeouts:\n  load_s: 2m\n  stall_s: \"90s\"\nconcurrency:\n  stabilization_delay_s: 500ms\nplan:\n  budget_s: 1.5h\n  min_budget_s: 600\nlearning:\n  max_age_days: 12h\nmonitoring:\n  interval_ms: 1s\npresets:\n  slo:\n    ttft_p95_ms: 2.5s\n");
    let c = &l.config;
    assert_eq!((c.timeouts.load_s, c.timeouts.stall_s), (120.0, 90.0));
    assert_eq!(c.concurrency.stabilization_delay_s, 0.5);
    assert_eq!(
        (c.plan.budget_s, c.plan.min_budget_s),
        (Some(5400.0), 600.0)
    );
    assert_eq!(c.learning.max_age_days, 0.5);
    assert_eq!(c.monitoring.interval_ms, 1000);
    assert_eq!(c.presets.slo.ttft_p95_ms, Some(2500.0));
    // Bare numbers are the key's unit, as before.
    assert_eq!(
        ok("timeouts:\n  load_s: 120\n").config.timeouts.load_s,
        120.0
    );
    assert_eq!(
        err("timeouts:\n  load_s: 2x\n").to_string(),
        "t.yaml:2: timeouts.load_s: `2x`: unknown unit `x` (use ns, us, ms, s, m, h or d); give a number of seconds, or a number with a unit, e.g. 90s, 2m or 1h"
    );
    assert_eq!(
        err("timeouts:\n  load_s: 48h\n").to_string(),
        "t.yaml:2: timeouts.load_s: 48h is out of range; allowed a duration from 1s to 24h (a number of seconds, or a number with a unit, e.g. 90s, 2m or 1h)"
    );
    assert_eq!(
        err("monitoring:\n  interval_ms: 1.5ms\n").to_string(),
        "t.yaml:2: monitoring.interval_ms: 1.5 is not a whole number of milliseconds; give e.g. 10 or 10ms"
    );
}

#[test]
fn boundaries_are_accepted() {
    ok("search:\n  granularity: 64\n");
    ok("search:\n  granularity: 65536\n");
    ok("batch:\n  scale_factor: 16\n  min_gain: 0\n");
    ok("validation:\n  samples: 1\n  min_success_rate: 1\n  max_cv: 1\n");
    ok("concurrency:\n  levels: [256]\n  max_timeouts: 0\n");
    ok("concurrency:\n  mixed_short_streams: 255\n");
    ok("prompt:\n  fill: 0.05\n  output_tokens: 4096\n");
    ok("prompt:\n  fill: 1\n  max_prompt_tokens: null\n  output_tokens: 1\n");
    ok("monitoring:\n  interval_ms: 10000\n");
    ok("safety:\n  vram_reserve_mb: 0\n  max_vram_percent: 100\n");
    ok("search:\n  initial_context: 1048576\n  max_context: 1048576\n");
    ok("search:\n  initial_context: 256\n  min_context: 256\n");
    ok("presets:\n  balanced:\n    target_context_range: [4096, 4096]\n");
    ok("presets:\n  max_context:\n    throughput_weight: 0\n");
}

#[test]
fn options_take_null_and_values() {
    let l = ok("batch:\n  ubatch: 128\nprompt:\n  max_prompt_tokens: ~\npresets:\n  slo:\n    ttft_p95_ms: 2500\n");
    assert_eq!(l.config.batch.ubatch, Some(128));
    assert_eq!(l.config.prompt.max_prompt_tokens, None);
    assert_eq!(l.config.presets.slo.ttft_p95_ms, Some(2500.0));
    assert_eq!(l.config.presets.slo.min_decode_tokens_per_s, None);
}

// ---- cross-field checks ----

#[test]
fn min_above_max_names_both() {
    assert_eq!(
        err("search:\n  min_context: 8192\n  max_context: 4096\n  initial_context: 4096\n").to_string(),
        "t.yaml:2: search.min_context: 8192 is above search.max_context (4096); make search.min_context at most search.max_context"
    );
    // min_context absent from the file: the line is max_context's.
    assert_eq!(err("search:\n  max_context: 1024\n").line(), Some(2));
}

#[test]
fn initial_outside_the_range_names_both() {
    assert_eq!(
        err("search:\n  initial_context: 1024\n").to_string(),
        "t.yaml:2: search.initial_context: 1024 is below search.min_context (2048); set it between search.min_context (2048) and search.max_context (131072)"
    );
    assert_eq!(
        err("# c\nsearch:\n  max_context: 8192\n").to_string(),
        "t.yaml:3: search.initial_context: 16384 is above search.max_context (8192); set it between search.min_context (2048) and search.max_context (8192)"
    );
}

#[test]
fn batch_starts_and_ubatch_stay_within_max_batch() {
    assert_eq!(
        err("batch:\n  max_batch: 32\n").to_string(),
        "t.yaml:2: batch.initial_small: 64 is above batch.max_batch (32); lower it or raise batch.max_batch"
    );
    assert_eq!(
        err("batch:\n  ubatch: 512\n").to_string(),
        "t.yaml:2: batch.ubatch: 512 is above batch.max_batch (256); lower it or raise batch.max_batch"
    );
}

#[test]
fn weights_cannot_both_be_zero() {
    let e = err("presets:\n  balanced:\n    throughput_weight: 0\n    ttft_weight: 0\n");
    assert_eq!(
        e.to_string(),
        "t.yaml:3: presets.balanced.throughput_weight: both weights are 0 (with presets.balanced.ttft_weight), nothing to rank by; give at least one of them a weight above 0"
    );
}

#[test]
fn target_range_order_and_reach() {
    assert_eq!(
        err("presets:\n  balanced:\n    target_context_range: [12288, 8192]\n").to_string(),
        "t.yaml:3: presets.balanced.target_context_range: low 12288 is above high 8192; write [low, high] with low <= high"
    );
    assert_eq!(
        err("presets:\n  fast_response:\n    target_context_min: 262144\n").to_string(),
        "t.yaml:3: presets.fast_response.target_context_min: 262144 is above search.max_context (131072), no searched context can reach it; lower it or raise search.max_context"
    );
    assert!(
        err("presets:\n  balanced:\n    target_context_range: [200000, 300000]\n")
            .to_string()
            .contains("no searched context can reach it")
    );
}

#[test]
fn retired_timeout_keys_are_accepted_with_a_notice() {
    let l = ok("timeouts:\n  base_s: 60\n  max_s: 300\n  stall_s: 30\n");
    assert_eq!(l.config.timeouts.stall_s, 30.0);
    assert_eq!(l.notices.len(), 2);
    assert!(
        l.notices[0].starts_with(
            "t.yaml:2: timeouts.base_s: ignored; a request is no longer cut by a fixed formula"
        ),
        "{:?}",
        l.notices
    );
    assert!(l.notices[1].starts_with("t.yaml:3: timeouts.max_s: ignored;"));
    // Not written back: run.json and `o3 config` show the keys in force only.
    let y = serde_yaml::to_string(&l.config).unwrap();
    assert!(!y.contains("base_s") && y.contains("stall_s"));
}

#[test]
fn unknown_keys_list_the_known_ones() {
    assert_eq!(
        err("search:\n  initial_context: 16384\n  granularty: 512\n").to_string(),
        "t.yaml:3: search.granularty: unknown key; known keys here: initial_context, granularity, min_context, max_context, max_iterations, load_only"
    );
    assert_eq!(
        err("# top\nsearh:\n  granularity: 512\n").to_string(),
        "t.yaml:2: searh: unknown key; known top-level keys: search, batch, presets, validation, concurrency, timeouts, plan, safety, prompt, learning, monitoring, variants"
    );
    assert_eq!(
        err("presets:\n  slo:\n    ttft_ms: 3\n").to_string(),
        "t.yaml:3: presets.slo.ttft_ms: unknown key; known keys here: ttft_p95_ms, min_decode_tokens_per_s"
    );
}

#[test]
fn wrong_types_say_what_is_expected() {
    assert_eq!(
        err("search:\n  granularity: fine\n").to_string(),
        "t.yaml:2: search.granularity: wrong type (string \"fine\"); expected a whole number 64 to 65536"
    );
    assert_eq!(
        err("search:\n  granularity: 1.5\n").to_string(),
        "t.yaml:2: search.granularity: wrong type (floating point 1.5); expected a whole number 64 to 65536"
    );
    assert_eq!(
        err("search:\n  granularity: -1\n").to_string(),
        "t.yaml:2: search.granularity: -1 is out of range; allowed 64 to 65536"
    );
    assert_eq!(
        err("search:\n  max_context: 5000000000\n").to_string(),
        "t.yaml:2: search.max_context: 5000000000 is out of range; allowed 256 to 1048576"
    );
    assert_eq!(
        err("batch:\n  enabled: yes\n").to_string(),
        "t.yaml:2: batch.enabled: wrong type (string \"yes\"); expected true or false"
    );
    assert_eq!(
        err("concurrency:\n  levels: [1, two]\n").to_string(),
        "t.yaml:2: concurrency.levels[1]: wrong type (string \"two\"); expected a list of whole numbers 1 to 256, strictly ascending, e.g. [1, 2, 4, 8]"
    );
    assert_eq!(
        err("presets:\n  balanced:\n    target_context_range: [8192]\n").to_string(),
        "t.yaml:3: presets.balanced.target_context_range: wrong length (1 items); expected a list of two whole numbers [low, high], each 256 to 1048576"
    );
    assert_eq!(
        err("search: 3\n").to_string(),
        "t.yaml:1: search: wrong type (integer 3); expected a mapping of `key: value` lines indented under it"
    );
    assert_eq!(
        err("monitoring:\n  interval_ms: ~\n").to_string(),
        "t.yaml:2: monitoring.interval_ms: wrong type (null); expected a duration from 1ms to 10s (a number of milliseconds, or a number with a unit, e.g. 250ms or 2s)"
    );
}

#[test]
fn syntax_errors_name_the_line() {
    let e = err("search:\n  granularity: [1, 2\nbatch:\n  enabled: true\n");
    assert!(matches!(e, ConfigError::Syntax { .. }), "{e}");
    let s = e.to_string();
    assert!(s.starts_with("t.yaml:3: invalid YAML: "), "{s}");
    assert!(
        s.contains("check indentation (spaces, not tabs), quotes and brackets"),
        "{s}"
    );
    let e = err("search:\n\tgranularity: 1024\n");
    assert!(e.to_string().starts_with("t.yaml:2: invalid YAML: "), "{e}");
}

#[test]
fn top_level_must_be_a_mapping() {
    assert_eq!(
        err("- search\n- batch\n").to_string(),
        "t.yaml:1: the file holds a list, not a mapping of sections; write sections such as `search:` at the top level (`o3 config default` prints them all)"
    );
    assert!(err("just text\n")
        .to_string()
        .contains("not a mapping of sections"));
}

#[test]
fn duplicate_keys_name_both_lines() {
    assert_eq!(
        err("search:\n  granularity: 512\n  max_context: 65536\n  granularity: 256\n").to_string(),
        "t.yaml:4: search.granularity: written twice (first at line 2); keep one of them"
    );
    assert_eq!(
        err("search:\n  granularity: 512\nsearch:\n  granularity: 256\n").to_string(),
        "t.yaml:3: search: written twice (first at line 1); keep one of them"
    );
}

#[test]
fn several_documents_are_an_error() {
    let s = err("search:\n  granularity: 512\n---\nbatch:\n  enabled: true\n").to_string();
    assert!(s.contains("more than one YAML document"), "{s}");
}

#[test]
fn empty_file_is_all_defaults_with_a_notice() {
    for text in ["", "# nothing\n", "---\n"] {
        let l = ok(text);
        assert_eq!(l.config, Config::default());
        assert_eq!(
            l.notices,
            vec!["t.yaml: no settings in the file; every default applies"]
        );
    }
    // An empty section keeps its defaults.
    assert_eq!(ok("search:\nbatch: {}\n").config, Config::default());
}

// ---- locating keys ----

#[test]
fn key_lines_follow_indentation() {
    let text = "# c\nsearch:\n  # inner\n  granularity: 512 # trailing\n\nbatch:\n    enabled: true\n    \"max_batch\": 64\npresets:\n  balanced:\n    target_context_range:\n      - 1\n      - 2\n    ttft_weight: 0.1\n  note: |\n    a: not a key\n    b: neither\n  fast_response:\n    ttft_weight: 0.2\n";
    let got: Vec<(String, usize)> = key_lines(text)
        .into_iter()
        .map(|k| (k.path, k.line))
        .collect();
    let want = [
        ("search", 2),
        ("search.granularity", 4),
        ("batch", 6),
        ("batch.enabled", 7),
        ("batch.max_batch", 8),
        ("presets", 9),
        ("presets.balanced", 10),
        ("presets.balanced.target_context_range", 11),
        ("presets.balanced.ttft_weight", 14),
        ("presets.note", 15),
        ("presets.fast_response", 18),
        ("presets.fast_response.ttft_weight", 19),
    ];
    let want: Vec<(String, usize)> = want.iter().map(|(p, l)| (p.to_string(), *l)).collect();
    assert_eq!(got, want);
}

#[test]
fn a_byte_order_mark_does_not_hide_the_first_key() {
    assert_eq!(
        err("\u{feff}search:\n  granularity: 0\n").to_string(),
        "t.yaml:2: search.granularity: 0 is out of range; allowed 64 to 65536"
    );
}

#[test]
fn flow_style_keys_get_the_section_line_and_absent_keys_none() {
    assert_eq!(
        err("# c\nsearch: {granularity: 32}\n").to_string(),
        "t.yaml:2: search.granularity: 32 is out of range; allowed 64 to 65536"
    );
    // Defaults in conflict with a key the file sets: the set key's line.
    let e = err("search:\n  min_context: 200000\n  initial_context: 200000\n");
    assert_eq!(e.key(), Some("search.min_context"));
    assert_eq!(e.line(), Some(2));
}

#[test]
fn absent_key_has_no_line() {
    // Neither key is in the file: a check about keys the file does not have names no line.
    let e = validate::validate(
        &Config {
            search: crate::config::Search {
                max_context: 8192,
                ..Default::default()
            },
            ..Config::default()
        },
        &validate::Ctx {
            doc: &Doc::new(
                "batch: {}\n",
                "t.yaml",
                serde_yaml::from_str("batch: {}").unwrap(),
            ),
            layout: Layout::Current,
        },
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("t.yaml: "), "{e}");
    assert_eq!(e.line(), None);
}

// ---- load ----

#[test]
fn unreadable_file_names_the_path_and_what_to_do() {
    let e = load(std::path::Path::new("/nonexistent/o3.yaml")).unwrap_err();
    let s = e.to_string();
    assert!(
        s.starts_with("/nonexistent/o3.yaml: cannot read the configuration ("),
        "{s}"
    );
    assert!(s.ends_with("check the path, or write the default one with `o3 config default > /nonexistent/o3.yaml`"), "{s}");
    assert!(!s.contains('\n'));
}

#[test]
fn load_reads_a_file_and_names_it() {
    let dir = std::env::temp_dir().join(format!("o3-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("bad.yaml");
    std::fs::write(&p, "search:\n  granularity: 0\n").unwrap();
    let e = load(&p).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        e,
        format!(
            "{}:2: search.granularity: 0 is out of range; allowed 64 to 65536",
            p.display()
        )
    );
}

// ---- layouts ----

#[test]
fn mixed_layout_names_one_key_of_each() {
    assert_eq!(
        err("search:\n  granularity: 512\nsearch_strategy:\n  initial_context_probe: 8192\n").to_string(),
        "t.yaml:3: search_strategy: legacy key in a file that also has the current key `search` (line 1); use one layout: move the legacy keys to their current names (docs/config.md maps each one) or drop them"
    );
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(repo(&format!("tests/fixtures/config/valid/{name}"))).unwrap()
}

#[test]
fn legacy_file_maps_onto_the_current_layout() {
    let l = parse(&fixture("legacy_o3_ai_config.yaml"), "o3_ai_config.yaml").unwrap();
    assert_eq!(l.layout, Layout::Legacy);
    let c = &l.config;
    let d = Config::default();
    // Mapped values (those equal to the defaults are the plan's values).
    assert_eq!(c.search.initial_context, 16384);
    assert_eq!(c.search.max_iterations, 5);
    assert_eq!(c.search.max_context, d.search.max_context);
    assert_eq!(c.batch, d.batch);
    assert_eq!(c.presets, d.presets);
    assert_eq!(c.validation, d.validation);
    assert_eq!(c.concurrency, d.concurrency);
    assert_eq!(
        c.timeouts,
        Timeouts {
            load_s: d.timeouts.load_s,
            ..d.timeouts.clone()
        }
    );
    assert_eq!(c.safety, d.safety);
    assert_eq!(c.learning, d.learning);
    assert_eq!(c.monitoring.interval_ms, 100);
    let expected = [
        "o3_ai_config.yaml:5: objectives: ignored (max_context_priority, throughput_priority, ttft_priority, stability_margin); o3's presets take their weights from presets.* (preset_categories.* in this layout) and its resource limits from safety.* (hardware_monitoring.safety_thresholds.*)",
        "o3_ai_config.yaml:11: ai_guidance: ignored (autonomous_tuning, predictive_optimization, adaptive_search); o3 has no such switches: it always searches on measured results, and predicts from earlier runs as learning.predict says (learning_system.prediction_model.*)",
        "o3_ai_config.yaml:17: search_strategy.context_discovery: ignored; o3 always bisects on measured results",
        "o3_ai_config.yaml:19: search_strategy.binary_search_factor: ignored; no meaning now: the legacy tool widened a fixed list of contexts by it; o3 bisects between the largest context that worked and the smallest that failed, down to search.granularity",
        "o3_ai_config.yaml:31: preset_categories.max_context.description: ignored; a description is not a setting",
        "o3_ai_config.yaml:36: preset_categories.balanced.description: ignored; a description is not a setting",
        "o3_ai_config.yaml:41: preset_categories.fast_response.description: ignored; a description is not a setting",
        "o3_ai_config.yaml:55: testing.adaptive_timeouts: ignored (base_timeout, context_multiplier, batch_multiplier, min_timeout, max_timeout); a request is no longer cut by a fixed formula: only a stall (timeouts.stall_s) or, for a server that shows no progress, timeouts.margin times the time model's estimate ends it",
        "o3_ai_config.yaml:64: hardware_monitoring.peak_detection.enabled: ignored; o3 always records peaks while it measures",
        "o3_ai_config.yaml:66: hardware_monitoring.peak_detection.track_vram_peak: ignored; o3 always tracks GPU memory peaks",
        "o3_ai_config.yaml:67: hardware_monitoring.peak_detection.track_ram_peak: ignored; o3 always tracks RAM peaks",
        "o3_ai_config.yaml:68: hardware_monitoring.peak_detection.track_temperature: ignored; o3 always tracks temperatures (limit: safety.max_temperature_c)",
        "o3_ai_config.yaml:69: hardware_monitoring.gpu_handling: ignored (nvidia, amd); o3 reads GPUs directly (amdgpu sysfs and ioctls, NVML) and runs SMI tools only as a fallback, with its own commands; memory_field_index took a column of rocm-smi's CSV, which on an APU is not the GTT where the model lives",
        "o3_ai_config.yaml:87: hardware_monitoring.resource_headroom.context_scaling_factor: ignored; no meaning now: contexts come from measurements",
        "o3_ai_config.yaml:98: learning_system.prediction_model.failure_pattern_learning: ignored; no separate setting: failures are part of the stored results (learning.store_results)",
        "o3_ai_config.yaml:100: model_intelligence: ignored (architecture_detection, parameter_estimation, quantization_awareness); o3 reads a model's size from its metadata and starts the batch by it (batch.initial_*); what a use favours is a preset's weights (presets.*)",
        "o3_ai_config.yaml:105: fine_tuning: ignored (enabled, learning_rate); o3 does not train models, and ranks by measurements, not per-size targets; objectives every preset must meet are presets.slo.*",
        "o3_ai_config.yaml:109: quality_assurance: ignored (regression_detection, benchmark_suite); o3's checks are not optional: outliers are dropped by their median absolute deviation, and stability is judged by validation.*",
        "o3_ai_config.yaml:113: deployment: ignored (auto_apply_presets, export_formats); o3 applies no configuration by itself: it writes each preset's server settings (artefacts/ of the run) for you to apply",
    ];
    assert_eq!(l.notices, expected);
    // One notice for the SMI command strings and memory_field_index together.
    assert_eq!(l.notices.iter().filter(|n| n.contains("SMI")).count(), 1);
    assert_eq!(
        l.notices
            .iter()
            .filter(|n| n.contains("memory_field_index"))
            .count(),
        1
    );
}

#[test]
fn legacy_probe_above_the_default_max_raises_it() {
    let l = parse(&fixture("legacy_high_context.yaml"), "old.yaml").unwrap();
    assert_eq!(l.layout, Layout::Legacy);
    assert_eq!(l.config.search.initial_context, 262144);
    assert_eq!(l.config.search.max_context, 262144);
    assert_eq!(l.config.search.max_iterations, 8);
    assert_eq!(l.config.batch.max_batch, 512);
    assert_eq!(l.config.monitoring.interval_ms, 50);
    assert_eq!(l.config.safety.max_vram_percent, 95.0);
    // pre_test_prediction: false turns prediction off even with the model enabled.
    assert!(!l.config.learning.predict);
    assert_eq!(
        l.notices,
        [
            "old.yaml:4: search_strategy.context_discovery: ignored; o3 always bisects on measured results",
            "old.yaml:5: search_strategy.initial_context_probe: 262144 is above the default search.max_context 131072; search.max_context raised to 262144",
        ]
    );
}

#[test]
fn legacy_probe_below_the_default_min_lowers_it() {
    let l = ok("search_strategy:\n  initial_context_probe: 1024\n");
    assert_eq!(l.config.search.min_context, 1024);
    assert_eq!(
        l.notices,
        ["t.yaml:2: search_strategy.initial_context_probe: 1024 is below the default search.min_context 2048; search.min_context lowered to 1024"]
    );
    // Beyond what o3 searches at all: an error on the legacy key.
    assert_eq!(
        err("search_strategy:\n  initial_context_probe: 2097152\n").to_string(),
        "t.yaml:2: search_strategy.initial_context_probe: 2097152 is out of range; allowed 256 to 1048576"
    );
}

#[test]
fn every_legacy_key_reaches_its_current_key() {
    let defaults = serde_yaml::to_value(Config::default()).unwrap();
    let get = |v: &serde_yaml::Value, path: &str| -> serde_yaml::Value {
        let mut v = v.clone();
        for s in path.split('.') {
            v = v.get(s).unwrap_or_else(|| panic!("{path}")).clone();
        }
        v
    };
    for (old, new) in LEGACY_MAP {
        // A value different from the default, within range.
        let d = get(&defaults, new);
        let (yaml, want) = match &d {
            serde_yaml::Value::Bool(b) => (format!("{}", !b), serde_yaml::Value::Bool(!b)),
            serde_yaml::Value::Number(n) if n.is_u64() => {
                let v = n.as_u64().unwrap() - 1;
                (v.to_string(), serde_yaml::Value::from(v))
            }
            serde_yaml::Value::Number(n) => {
                let v = n.as_f64().unwrap() * 0.9;
                (format!("{v}"), serde_yaml::Value::from(v))
            }
            serde_yaml::Value::Sequence(s) => {
                let v: Vec<u64> = s.iter().map(|x| x.as_u64().unwrap() - 1).collect();
                let v = if v[0] == 0 { vec![1, 2, 4] } else { v };
                (format!("{v:?}"), serde_yaml::to_value(&v).unwrap())
            }
            other => panic!("{new}: {other:?}"),
        };
        let text = yaml_at(old, &yaml);
        let l = parse(&text, "t.yaml").unwrap_or_else(|e| panic!("{old}: {e}"));
        assert_eq!(l.layout, Layout::Legacy);
        let got = get(&serde_yaml::to_value(&l.config).unwrap(), new);
        assert_eq!(got, want, "{old} → {new}");
    }
}

#[test]
fn legacy_errors_name_the_legacy_keys() {
    assert_eq!(
        err("testing:\n  statistical_validation:\n    confidence_threshold: 85\n").to_string(),
        "t.yaml:3: testing.statistical_validation.confidence_threshold: 85 is not a fraction; give a fraction from 0 to 1 (or a percent such as 90%) (did you mean 85%?)"
    );
    assert_eq!(
        err("search_strategy:\n  batch_adaptation:\n    max_batch: big\n").to_string(),
        "t.yaml:3: search_strategy.batch_adaptation.max_batch: wrong type (string \"big\"); expected a whole number 1 to 65536"
    );
    assert_eq!(
        err("learning_system:\n  configuration_learning:\n    enabled: yes\n").to_string(),
        "t.yaml:3: learning_system.configuration_learning.enabled: wrong type (string \"yes\"); expected true or false"
    );
    assert_eq!(
        err("learning_system:\n  configuration_learning:\n    hardware_profiles:\n      update_frequency_days: weekly\n").to_string(),
        "t.yaml:4: learning_system.configuration_learning.hardware_profiles.update_frequency_days: wrong type (string \"weekly\"); expected a duration from 0 to 3650d (a number of days, or a number with a unit, e.g. 12h or 7d)"
    );
    // A section that holds mapped keys must be a mapping.
    assert_eq!(
        err("hardware_monitoring:\n  peak_detection: true\n").to_string(),
        "t.yaml:2: hardware_monitoring.peak_detection: wrong type (boolean true); expected a mapping of `key: value` lines indented under it"
    );
}

#[test]
fn every_mapped_legacy_key_refuses_a_wrong_type() {
    for (old, _) in LEGACY_MAP {
        let depth = old.split('.').count();
        let e = err(&yaml_at(old, "\"x\""));
        let s = e.to_string();
        assert_eq!(e.key(), Some(*old), "{s}");
        assert_eq!(e.line(), Some(depth), "{s}");
        assert!(s.contains(": wrong type (string \"x\"); expected "), "{s}");
    }
}

#[test]
fn legacy_keys_without_a_use_are_accepted_with_a_notice() {
    // Keys of an ignored section are not checked: any value is accepted.
    let l = ok("testing:\n  adaptive_timeouts:\n    min_timeout: soon\n");
    assert_eq!(
        l.notices,
        ["t.yaml:2: testing.adaptive_timeouts: ignored (min_timeout); a request is no longer cut by a fixed formula: only a stall (timeouts.stall_s) or, for a server that shows no progress, timeouts.margin times the time model's estimate ends it"]
    );
    assert_eq!(l.config, Config::default());
    // A key the legacy layout never had: named with the keys o3 maps beside it.
    let l = ok("testing:\n  concurrency_progression:\n    levels: [1, 2, 4]\n    ramp: 3\n");
    assert_eq!(l.config.concurrency.levels, [1, 2, 4]);
    assert_eq!(
        l.notices,
        ["t.yaml:4: testing.concurrency_progression.ramp: ignored; not a key of the legacy layout; o3 has no setting for it (the keys it maps here: levels, stabilization_delay, max_concurrent_timeouts)"]
    );
    // A section the legacy layout never had, and one with no mapped key beside it.
    let l = ok("objectives: {}\nreporting:\n  html: true\nfine_tuning:\n  lora:\n    rank: 8\n");
    assert_eq!(
        l.notices,
        [
            "t.yaml:1: objectives: ignored; o3's presets take their weights from presets.* (preset_categories.* in this layout) and its resource limits from safety.* (hardware_monitoring.safety_thresholds.*)",
            "t.yaml:2: reporting: ignored (html); not a section of the legacy layout; o3 has no setting for it",
            "t.yaml:4: fine_tuning: ignored (lora); o3 does not train models, and ranks by measurements, not per-size targets; objectives every preset must meet are presets.slo.*",
        ]
    );
    let l = ok("learning_system:\n  configuration_learning:\n    enabled: true\n    history: 3\n");
    assert_eq!(
        l.notices,
        ["t.yaml:4: learning_system.configuration_learning.history: ignored; not a key of the legacy layout; o3 has no setting for it (the keys it maps here: enabled)"]
    );
}

#[test]
fn every_ignored_legacy_key_takes_any_value() {
    for (key, why) in IGNORED {
        for value in ["true", "\"text\"", "[1, 2]", "{a: 1}", "~"] {
            let l = parse(&yaml_at(key, value), "t.yaml")
                .unwrap_or_else(|e| panic!("{key}: {value}: {e}"));
            assert_eq!(l.layout, Layout::Legacy);
            assert_eq!(l.config, Config::default(), "{key}: {value}");
            assert_eq!(l.notices.len(), 1, "{key}: {value}: {:?}", l.notices);
            let depth = key.split('.').count();
            assert!(
                l.notices[0].starts_with(&format!("t.yaml:{depth}: {key}: ignored"))
                    && l.notices[0].ends_with(why),
                "{:?}",
                l.notices
            );
        }
    }
}

#[test]
fn configuration_learning_off_stores_and_reuses_nothing() {
    let l = ok("learning_system:\n  configuration_learning:\n    enabled: false\n    hardware_profiles:\n      store_results: true\n      reuse_learned_configs: true\n");
    assert!(!l.config.learning.store_results);
    assert!(!l.config.learning.reuse_learned_configs);
    assert!(l.config.learning.predict);
    assert!(l.notices.is_empty(), "{:?}", l.notices);
    let l = ok("learning_system:\n  configuration_learning:\n    enabled: true\n    hardware_profiles:\n      store_results: false\n");
    assert!(!l.config.learning.store_results);
    assert!(l.config.learning.reuse_learned_configs);
}

/// Every leaf of a document (a scalar, a list or an empty mapping), dotted.
fn doc_leaves(v: &serde_yaml::Value, at: &str, out: &mut Vec<String>) {
    match v.as_mapping().filter(|m| !m.is_empty()) {
        Some(m) => {
            for (k, child) in m {
                let k = k.as_str().unwrap();
                let p = if at.is_empty() {
                    k.to_string()
                } else {
                    format!("{at}.{k}")
                };
                doc_leaves(child, &p, out);
            }
        }
        None => out.push(at.to_string()),
    }
}

fn under(leaf: &str, key: &str) -> bool {
    leaf == key
        || leaf
            .strip_prefix(key)
            .is_some_and(|rest| rest.starts_with('.'))
}

#[test]
fn the_real_legacy_file_maps_its_meaningful_keys() {
    let l = parse(&fixture("legacy-full.yaml"), "o3_ai_config.yaml").unwrap();
    assert_eq!(l.layout, Layout::Legacy);
    let c = &l.config;
    let d = Config::default();
    assert_eq!(c.search.initial_context, 262_144);
    assert_eq!(c.search.max_context, 262_144);
    assert_eq!(c.search.max_iterations, 7);
    assert_eq!(c.search.granularity, d.search.granularity);
    assert_eq!(c.batch, d.batch);
    assert_eq!(c.presets, d.presets);
    assert_eq!(c.validation, d.validation);
    assert_eq!(c.concurrency, d.concurrency);
    assert_eq!(c.timeouts, d.timeouts);
    assert_eq!(c.safety, d.safety);
    assert_eq!(c.learning, d.learning);
    assert_eq!(c.monitoring.interval_ms, 100);
    let keys: Vec<&str> = l
        .notices
        .iter()
        .map(|n| n.split(": ").nth(1).unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "objectives",
            "ai_guidance",
            "search_strategy.context_discovery",
            "search_strategy.initial_context_probe",
            "search_strategy.binary_search_factor",
            "preset_categories.max_context.description",
            "preset_categories.balanced.description",
            "preset_categories.fast_response.description",
            "testing.adaptive_timeouts",
            "hardware_monitoring.peak_detection.enabled",
            "hardware_monitoring.peak_detection.track_vram_peak",
            "hardware_monitoring.peak_detection.track_ram_peak",
            "hardware_monitoring.peak_detection.track_temperature",
            "hardware_monitoring.gpu_handling",
            "hardware_monitoring.resource_headroom.context_scaling_factor",
            "learning_system.prediction_model.failure_pattern_learning",
            "learning_system.auto_improvement",
            "model_intelligence",
            "fine_tuning",
            "quality_assurance",
            "deployment",
        ]
    );
    assert!(l.notices[3].ends_with("search.max_context raised to 262144"));
    assert!(l.notices[0].starts_with("o3_ai_config.yaml:6: objectives: ignored (max_context_priority, throughput_priority, ttft_priority, stability_margin); o3's presets take their weights from presets.*"));
    assert_eq!(
        l.notices[16],
        "o3_ai_config.yaml:112: learning_system.auto_improvement: ignored (adaptive_search_params, range_expansion, test_prioritization); o3's search always adapts to measured results and earlier runs (learning.*); there is nothing to switch on"
    );
}

#[test]
fn every_legacy_key_is_mapped_or_named_once() {
    for name in [
        "legacy-full.yaml",
        "legacy_o3_ai_config.yaml",
        "legacy_high_context.yaml",
        "legacy_unknown_key.yaml",
    ] {
        let text = fixture(name);
        let value: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let named = legacy::ignored(&value);
        let mut leaves = Vec::new();
        doc_leaves(&value, "", &mut leaves);
        for leaf in &leaves {
            let covering: Vec<_> = named.iter().filter(|(k, _)| under(leaf, k)).collect();
            let mapped = keys::current_name(leaf).is_some();
            let want = usize::from(!mapped);
            assert_eq!(covering.len(), want, "{name}: {leaf}: {covering:?}");
        }
        // Every notice names keys of the file, and the notices are the ignored keys plus the
        // probe's.
        for (k, _) in &named {
            assert!(leaves.iter().any(|l| under(l, k)), "{name}: {k}");
        }
        let l = parse(&text, name).unwrap();
        let probe = l
            .notices
            .iter()
            .filter(|n| n.contains("initial_context_probe"))
            .count();
        assert_eq!(l.notices.len(), named.len() + probe, "{name}");
    }
}

#[test]
fn the_current_layout_still_refuses_unknown_keys() {
    // The legacy tool's names are unknown keys in the current layout.
    assert_eq!(
        err("search:\n  initial_context: 16384\n  binary_search_factor: 1.3\n").to_string(),
        "t.yaml:3: search.binary_search_factor: unknown key; known keys here: initial_context, granularity, min_context, max_context, max_iterations, load_only"
    );
    assert_eq!(
        err("learning:\n  enabled: true\n").to_string(),
        "t.yaml:2: learning.enabled: unknown key; known keys here: store_results, reuse_learned_configs, predict, max_age_days, min_p_success, exploration_probes, db"
    );
}

#[test]
fn variant_lists_that_make_too_many_variants_are_refused_with_the_product() {
    let text = "variants:\n  cache_types: [f16, q8_0, q4_0]\n  flash_attn: [on, off]\n  ubatch: [512, 256]\n  max_variants: 8\n";
    let s = err(text).to_string();
    assert_eq!(
        s,
        "t.yaml:5: variants.max_variants: the lists make 12 variants (3 cache types × 2 flash attention settings × 2 ubatches × 1 GPU layer counts), more than 8; shorten a list or raise variants.max_variants"
    );
}
