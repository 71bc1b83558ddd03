//! Validation after deserializing: the range of every key (one table, also used for the hints of
//! type errors and checked against the reference in docs/config.md), then the checks that
//! involve two keys. The first problem found is the error.

use serde_yaml::Value;

use super::error::ConfigError;
use super::locate::Doc;
use super::{legacy, Config, Layout};

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
const CTX: Rule = int(CONTEXT_MIN, CONTEXT_MAX);
const BATCH: Rule = int(1, 65_536);
const WEIGHT: Rule = num(0.0, 1.0);
const PERCENT: Rule = above(0.0, 100.0);

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
    ("batch.min_gain", num(0.0, 1.0)),
    ("batch.rank_tokens", int(16, CONTEXT_MAX)),
    ("batch.rank_samples", int(1, 100)),
    (
        "presets.max_context.target_context_percentile",
        num(1.0, 100.0),
    ),
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
    ("presets.slo.ttft_p95_ms", Rule::Opt(&above(0.0, 600_000.0))),
    (
        "presets.slo.min_decode_tokens_per_s",
        Rule::Opt(&above(0.0, 100_000.0)),
    ),
    ("validation.samples", int(1, 100)),
    ("validation.min_success_rate", num(0.0, 1.0)),
    ("validation.max_cv", above(0.0, 1.0)),
    ("concurrency.enabled", Rule::Bool),
    ("concurrency.levels", Rule::Ascending { min: 1, max: 256 }),
    ("concurrency.stabilization_delay_s", num(0.0, 600.0)),
    ("concurrency.max_timeouts", int(0, 100)),
    ("concurrency.mixed_short_streams", int(0, 255)),
    ("timeouts.stall_s", num(1.0, 86_400.0)),
    ("timeouts.margin", num(1.5, 100.0)),
    ("timeouts.load_s", num(1.0, 86_400.0)),
    ("plan.budget_s", Rule::Opt(&num(60.0, 31_536_000.0))),
    ("plan.floor_multiple", num(0.0, 1000.0)),
    ("plan.min_budget_s", num(0.0, 31_536_000.0)),
    ("plan.concurrency_at_max_context", Rule::Bool),
    ("safety.max_vram_percent", PERCENT),
    ("safety.max_ram_percent", PERCENT),
    ("safety.max_temperature_c", num(30.0, 120.0)),
    ("safety.max_cpu_percent", PERCENT),
    ("safety.vram_reserve_mb", int(0, 1_048_576)),
    ("safety.ram_reserve_mb", int(0, 1_048_576)),
    ("prompt.fill", num(0.05, 1.0)),
    ("prompt.max_prompt_tokens", Rule::Opt(&int(16, CONTEXT_MAX))),
    ("prompt.output_tokens", int(1, 4096)),
    ("prompt.reuse_prefix", Rule::Bool),
    ("learning.store_results", Rule::Bool),
    ("learning.reuse_learned_configs", Rule::Bool),
    ("learning.predict", Rule::Bool),
    ("learning.max_age_days", num(0.0, 3650.0)),
    ("learning.min_p_success", num(0.0, 0.5)),
    ("learning.exploration_probes", int(0, 100)),
    ("learning.db", Rule::Opt(&Rule::Path)),
    ("monitoring.interval_ms", int(1, 10_000)),
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
        }
    }
}

/// Names keys and builds errors in the layout the user wrote.
pub(crate) struct Ctx<'d, 'a> {
    pub doc: &'d Doc<'a>,
    pub layout: Layout,
}

impl Ctx<'_, '_> {
    /// The name the user wrote for a current-layout key (its legacy name in a legacy file).
    pub fn name(&self, key: &str) -> String {
        match self.layout {
            Layout::Current => key.to_string(),
            Layout::Legacy => legacy::legacy_name(key)
                .map(str::to_string)
                .unwrap_or_else(|| key.to_string()),
        }
    }

    /// An error about `key`, at the line of the first of `key`, `others` the document has.
    pub fn err(
        &self,
        key: &str,
        others: &[&str],
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        let line = std::iter::once(key)
            .chain(others.iter().copied())
            .find_map(|k| self.doc.line_of(&self.name(k)));
        ConfigError::Key {
            origin: self.doc.origin.to_string(),
            line,
            key: self.name(key),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    /// `name (value)` of another key, for messages about two keys.
    fn other(&self, key: &str, value: impl std::fmt::Display) -> String {
        format!("{} ({value})", self.name(key))
    }
}

fn get<'v>(v: &'v Value, key: &str) -> Option<&'v Value> {
    let mut v = v;
    for seg in key.split('.') {
        v = v.as_mapping()?.get(seg)?;
    }
    Some(v)
}

fn out_of_range(ctx: &Ctx, key: &str, shown: String, rule: &Rule) -> ConfigError {
    ctx.err(key, &[], format!("{shown} is out of range"), rule.allowed())
}

fn check_int(
    ctx: &Ctx,
    key: &str,
    v: &Value,
    min: u64,
    max: u64,
    rule: &Rule,
) -> Result<(), ConfigError> {
    match v.as_u64() {
        Some(n) if (min..=max).contains(&n) => Ok(()),
        _ => Err(out_of_range(ctx, key, value_text(v), rule)),
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => fmt_num(f),
            _ => n.to_string(),
        },
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

fn check_rule(ctx: &Ctx, key: &str, rule: &Rule, v: &Value) -> Result<(), ConfigError> {
    match rule {
        Rule::Bool => Ok(()),
        Rule::Path => match v.as_str() {
            Some(p) if !p.trim().is_empty() => Ok(()),
            _ => Err(ctx.err(
                key,
                &[],
                "the path is empty",
                "give a file path, or null for the default",
            )),
        },
        Rule::Opt(inner) => match v {
            Value::Null => Ok(()),
            _ => check_rule(ctx, key, inner, v).map_err(|e| match (e, rule) {
                (
                    ConfigError::Key {
                        origin,
                        line,
                        key,
                        problem,
                        ..
                    },
                    r,
                ) => ConfigError::Key {
                    origin,
                    line,
                    key,
                    problem,
                    fix: r.allowed(),
                },
                (e, _) => e,
            }),
        },
        Rule::Int { min, max } => check_int(ctx, key, v, *min, *max, rule),
        Rule::Num { min, above, max } => {
            let f = v.as_f64().unwrap_or(f64::NAN);
            let low_ok = if *above { f > *min } else { f >= *min };
            if low_ok && f <= *max {
                Ok(())
            } else {
                Err(out_of_range(ctx, key, value_text(v), rule))
            }
        }
        Rule::Ascending { min, max } => {
            let items = v.as_sequence().map(Vec::as_slice).unwrap_or_default();
            if items.is_empty() {
                return Err(ctx.err(
                    key,
                    &[],
                    "the list is empty",
                    "give at least one level, e.g. [1, 2, 4, 8]",
                ));
            }
            let mut prev: Option<u64> = None;
            for item in items {
                let n = item.as_u64().unwrap_or(0);
                if !(*min..=*max).contains(&n) {
                    return Err(ctx.err(
                        key,
                        &[],
                        format!("{} is out of range", value_text(item)),
                        format!("each level allowed {min} to {max}"),
                    ));
                }
                if let Some(p) = prev.filter(|p| n <= *p) {
                    return Err(ctx.err(
                        key,
                        &[],
                        format!("{n} follows {p}, the list is not strictly ascending"),
                        "list each level once, smallest first, e.g. [1, 2, 4, 8]",
                    ));
                }
                prev = Some(n);
            }
            Ok(())
        }
        Rule::Pair { min, max } => {
            let items = v.as_sequence().map(Vec::as_slice).unwrap_or_default();
            for item in items {
                if !item.as_u64().is_some_and(|n| (*min..=*max).contains(&n)) {
                    return Err(ctx.err(
                        key,
                        &[],
                        format!("{} is out of range", value_text(item)),
                        format!("each bound allowed {min} to {max}"),
                    ));
                }
            }
            match (
                items.first().and_then(Value::as_u64),
                items.get(1).and_then(Value::as_u64),
            ) {
                (Some(lo), Some(hi)) if lo > hi => Err(ctx.err(
                    key,
                    &[],
                    format!("low {lo} is above high {hi}"),
                    "write [low, high] with low <= high",
                )),
                _ => Ok(()),
            }
        }
    }
}

/// The first problem of a deserialized configuration, if any.
pub(crate) fn validate(cfg: &Config, ctx: &Ctx) -> Result<(), ConfigError> {
    let value = serde_yaml::to_value(cfg).expect("a configuration serialises");
    for (key, rule) in FIELDS {
        let v = get(&value, key).unwrap_or(&Value::Null);
        check_rule(ctx, key, rule, v)?;
    }
    cross_checks(cfg, ctx)
}

fn cross_checks(c: &Config, ctx: &Ctx) -> Result<(), ConfigError> {
    let s = &c.search;
    if s.min_context > s.max_context {
        return Err(ctx.err(
            "search.min_context",
            &["search.max_context"],
            format!(
                "{} is above {}",
                s.min_context,
                ctx.other("search.max_context", s.max_context)
            ),
            format!(
                "make {} at most {}",
                ctx.name("search.min_context"),
                ctx.name("search.max_context")
            ),
        ));
    }
    if !(s.min_context..=s.max_context).contains(&s.initial_context) {
        let (side, other, value) = if s.initial_context < s.min_context {
            ("below", "search.min_context", s.min_context)
        } else {
            ("above", "search.max_context", s.max_context)
        };
        return Err(ctx.err(
            "search.initial_context",
            &[other],
            format!(
                "{} is {side} {}",
                s.initial_context,
                ctx.other(other, value)
            ),
            format!(
                "set it between {} and {}",
                ctx.other("search.min_context", s.min_context),
                ctx.other("search.max_context", s.max_context)
            ),
        ));
    }
    let b = &c.batch;
    for (key, v) in [
        ("batch.initial_large", b.initial_large),
        ("batch.initial_medium", b.initial_medium),
        ("batch.initial_small", b.initial_small),
    ]
    .into_iter()
    .chain(b.ubatch.map(|u| ("batch.ubatch", u)))
    {
        if v > b.max_batch {
            return Err(ctx.err(
                key,
                &["batch.max_batch"],
                format!("{v} is above {}", ctx.other("batch.max_batch", b.max_batch)),
                format!("lower it or raise {}", ctx.name("batch.max_batch")),
            ));
        }
    }
    let p = &c.presets;
    for (name, tw, fw) in [
        (
            "max_context",
            p.max_context.throughput_weight,
            p.max_context.ttft_weight,
        ),
        (
            "balanced",
            p.balanced.throughput_weight,
            p.balanced.ttft_weight,
        ),
        (
            "fast_response",
            p.fast_response.throughput_weight,
            p.fast_response.ttft_weight,
        ),
    ] {
        if tw + fw <= 0.0 {
            let tkey = format!("presets.{name}.throughput_weight");
            let fkey = format!("presets.{name}.ttft_weight");
            return Err(ctx.err(
                &tkey,
                &[&fkey],
                format!(
                    "both weights are 0 (with {}), nothing to rank by",
                    ctx.name(&fkey)
                ),
                "give at least one of them a weight above 0",
            ));
        }
    }
    let [lo, _] = p.balanced.target_context_range;
    if lo > s.max_context {
        return Err(ctx.err(
            "presets.balanced.target_context_range",
            &[],
            format!(
                "low {lo} is above {}, no searched context can reach it",
                ctx.other("search.max_context", s.max_context)
            ),
            format!(
                "lower the range or raise {}",
                ctx.name("search.max_context")
            ),
        ));
    }
    let min = p.fast_response.target_context_min;
    if min > s.max_context {
        return Err(ctx.err(
            "presets.fast_response.target_context_min",
            &[],
            format!(
                "{min} is above {}, no searched context can reach it",
                ctx.other("search.max_context", s.max_context)
            ),
            format!("lower it or raise {}", ctx.name("search.max_context")),
        ));
    }
    Ok(())
}
