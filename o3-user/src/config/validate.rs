//! Validation after deserializing: the range of every key (one table, also used for the hints of
//! type errors and checked against the reference in docs/config.md), then the checks that
//! involve two keys. The first problem found is the error.

use serde_yaml::Value;

use super::error::ConfigError;
use super::keys::Layout;
use super::keys::{self, fmt_num, Rule, FIELDS};
use super::locate::Doc;
use super::schema::Config;
use crate::util::percent::{self, ShareError};

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
            Layout::Legacy => keys::legacy_name(key)
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
            _ => check_rule(ctx, key, inner, v).map_err(|e| with_fix(e, rule.allowed())),
        },
        Rule::Int { min, max } => check_int(ctx, key, v, *min, *max, rule),
        Rule::Num { min, above, max } => check_num(ctx, key, v, (*min, *above, *max), rule),
        Rule::Ascending { min, max } => check_ascending(ctx, key, v, *min, *max),
        Rule::Pair { min, max } => check_pair(ctx, key, v, *min, *max),
        Rule::Names(names) => check_names(ctx, key, v, names),
        Rule::Ints { min, max } => check_ints(ctx, key, v, *min, *max),
        Rule::Percent | Rule::Fraction(_) => check_share(ctx, key, v, rule),
        Rule::Time { min, max, unit } => {
            let t = v.as_f64().unwrap_or(f64::NAN);
            if (*min..=*max).contains(&t) {
                Ok(())
            } else {
                Err(out_of_range(ctx, key, unit.show(t), rule))
            }
        }
    }
}

/// A percent or a fraction; a value that fits the other unit says which value was meant.
fn check_share(ctx: &Ctx, key: &str, v: &Value, rule: &Rule) -> Result<(), ConfigError> {
    let f = v.as_f64().unwrap_or(f64::NAN);
    let (checked, unit) = match rule {
        Rule::Fraction(r) => (percent::check_fraction(f, *r), "a fraction"),
        _ => (percent::check_percent(f), "a percent"),
    };
    match checked {
        Ok(_) => Ok(()),
        Err(e @ (ShareError::FractionForPercent(_) | ShareError::PercentForFraction { .. })) => {
            Err(ctx.err(
                key,
                &[],
                format!("{} is not {unit}", value_text(v)),
                format!("give {e}"),
            ))
        }
        Err(_) => Err(out_of_range(ctx, key, value_text(v), rule)),
    }
}

/// The error of an optional key's inner rule, with the fix that names the null too.
fn with_fix(e: ConfigError, fix: String) -> ConfigError {
    match e {
        ConfigError::Key {
            origin,
            line,
            key,
            problem,
            ..
        } => ConfigError::Key {
            origin,
            line,
            key,
            problem,
            fix,
        },
        e => e,
    }
}

fn check_num(
    ctx: &Ctx,
    key: &str,
    v: &Value,
    (min, above, max): (f64, bool, f64),
    rule: &Rule,
) -> Result<(), ConfigError> {
    let f = v.as_f64().unwrap_or(f64::NAN);
    let low_ok = if above { f > min } else { f >= min };
    if low_ok && f <= max {
        Ok(())
    } else {
        Err(out_of_range(ctx, key, value_text(v), rule))
    }
}

/// A non-empty, strictly ascending list, each item in range.
fn check_ascending(ctx: &Ctx, key: &str, v: &Value, min: u64, max: u64) -> Result<(), ConfigError> {
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
        if !(min..=max).contains(&n) {
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

/// A list of names from `names`, each once.
fn check_names(ctx: &Ctx, key: &str, v: &Value, names: &[&str]) -> Result<(), ConfigError> {
    let items = v.as_sequence().map(Vec::as_slice).unwrap_or_default();
    for (i, item) in items.iter().enumerate() {
        let name = item.as_str().unwrap_or_default();
        if !names.contains(&name) {
            return Err(ctx.err(
                key,
                &[],
                format!("{} is not one of them", value_text(item)),
                format!("name each from {}", names.join(", ")),
            ));
        }
        if items[..i].contains(item) {
            return Err(ctx.err(
                key,
                &[],
                format!("{name} is listed twice"),
                "list each once",
            ));
        }
    }
    Ok(())
}

/// A list of whole numbers in range, each once.
fn check_ints(ctx: &Ctx, key: &str, v: &Value, min: u64, max: u64) -> Result<(), ConfigError> {
    let items = v.as_sequence().map(Vec::as_slice).unwrap_or_default();
    for (i, item) in items.iter().enumerate() {
        if !item.as_u64().is_some_and(|n| (min..=max).contains(&n)) {
            return Err(ctx.err(
                key,
                &[],
                format!("{} is out of range", value_text(item)),
                format!("each allowed {min} to {max}"),
            ));
        }
        if items[..i].contains(item) {
            return Err(ctx.err(
                key,
                &[],
                format!("{} is listed twice", value_text(item)),
                "list each once",
            ));
        }
    }
    Ok(())
}

/// `[low, high]`, each in range, low <= high.
fn check_pair(ctx: &Ctx, key: &str, v: &Value, min: u64, max: u64) -> Result<(), ConfigError> {
    let items = v.as_sequence().map(Vec::as_slice).unwrap_or_default();
    for item in items {
        if !item.as_u64().is_some_and(|n| (min..=max).contains(&n)) {
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

/// The first problem of a deserialized configuration, if any.
pub(crate) fn validate(cfg: &Config, ctx: &Ctx) -> Result<(), ConfigError> {
    let value = serde_yaml::to_value(cfg).expect("a configuration serialises");
    for (key, rule) in FIELDS {
        let v = get(&value, key).unwrap_or(&Value::Null);
        check_rule(ctx, key, rule, v)?;
    }
    cross_checks(cfg, ctx)
}

/// The checks that involve two keys, each group a step.
fn cross_checks(c: &Config, ctx: &Ctx) -> Result<(), ConfigError> {
    search_bounds(c, ctx)?;
    batch_bounds(c, ctx)?;
    preset_weights(c, ctx)?;
    preset_targets(c, ctx)?;
    variant_count(c, ctx)
}

/// The lists' combinations fit `variants.max_variants`.
fn variant_count(c: &Config, ctx: &Ctx) -> Result<(), ConfigError> {
    let v = &c.variants;
    let n = v.count();
    if n > v.max_variants as usize {
        return Err(ctx.err(
            "variants.max_variants",
            &[
                "variants.cache_types",
                "variants.flash_attn",
                "variants.ubatch",
                "variants.gpu_layers",
            ],
            format!(
                "the lists make {n} variants ({} cache types × {} flash attention settings × {} ubatches × {} GPU layer counts), more than {}",
                v.cache_types.len().max(1),
                v.flash_attn.len().max(1),
                v.ubatch.len().max(1),
                v.gpu_layers.len().max(1),
                v.max_variants
            ),
            format!(
                "shorten a list or raise {}",
                ctx.name("variants.max_variants")
            ),
        ));
    }
    Ok(())
}

/// min <= initial <= max context.
fn search_bounds(c: &Config, ctx: &Ctx) -> Result<(), ConfigError> {
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
    Ok(())
}

/// No starting batch (nor the ubatch) above the largest batch.
fn batch_bounds(c: &Config, ctx: &Ctx) -> Result<(), ConfigError> {
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
    Ok(())
}

/// Every preset ranks by something.
fn preset_weights(c: &Config, ctx: &Ctx) -> Result<(), ConfigError> {
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
    Ok(())
}

/// Every preset's target context is reachable by the search.
fn preset_targets(c: &Config, ctx: &Ctx) -> Result<(), ConfigError> {
    let (s, p) = (&c.search, &c.presets);
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
