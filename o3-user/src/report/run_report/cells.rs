//! Table cells: numbers and values of the run's JSON as the report writes them, `–` for none.

use serde_json::Value;

use crate::optimize::journal::Entry;
use crate::util::units::bytes;

/// One decimal.
pub(super) fn f1(v: Option<f64>) -> String {
    v.map_or("–".into(), |x| format!("{x:.1}"))
}

/// No decimals.
pub(super) fn f0(v: Option<f64>) -> String {
    v.map_or("–".into(), |x| format!("{x:.0}"))
}

pub(super) fn opt_bytes(v: Option<u64>) -> String {
    v.map_or("–".into(), bytes)
}

/// A string as itself (no quotes), null as `–`, anything else as JSON.
pub(super) fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "–".into(),
        other => other.to_string(),
    }
}

/// `ctx 4096 · batch 128 · 2 slots` of a serialised `ProbeConfig`.
pub(super) fn describe(c: &Value) -> String {
    let mut s = format!("ctx {}", str_of(&c["ctx"]));
    for (k, label) in [("batch", "batch"), ("ubatch", "ubatch")] {
        if !c[k].is_null() {
            s.push_str(&format!(" · {label} {}", str_of(&c[k])));
        }
    }
    if let Some(p) = c["parallel"].as_u64() {
        s.push_str(&format!(" · {p} slot{}", if p == 1 { "" } else { "s" }));
    }
    for (k, label) in [
        ("gpu_layers", "gpu layers"),
        ("flash_attn", "flash attn"),
        ("cache_type_k", "K cache"),
        ("cache_type_v", "V cache"),
        ("threads", "threads"),
    ] {
        let v = match &c[k] {
            // Runs of earlier versions wrote flash attention as a bool.
            Value::Bool(on) => if *on { "on" } else { "off" }.to_string(),
            Value::Null => continue,
            v => str_of(v),
        };
        s.push_str(&format!(" · {label} {v}"));
    }
    s
}

/// `passed`, or `failed (oom)`.
/// A probe's result, with the statistics' verdict where it differs: a probe whose requests all
/// succeeded but whose rates varied beyond validation.max_cv is "passed, unstable".
pub(super) fn judged(e: &Entry, stable: Option<bool>) -> String {
    if e.outcome.passed() && stable == Some(false) {
        "passed, unstable (see the statistics)".into()
    } else {
        result(e)
    }
}

pub(super) fn result(e: &Entry) -> String {
    if e.outcome.passed() {
        "passed".into()
    } else {
        format!("failed ({})", e.outcome.outcome.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flash_attention_reads_on_off_whether_written_as_a_word_or_an_old_bool() {
        let new = serde_json::json!({"ctx": 4096, "flash_attn": "on", "threads": null});
        let old = serde_json::json!({"ctx": 4096, "flash_attn": true});
        assert_eq!(describe(&new), "ctx 4096 · flash attn on");
        assert_eq!(describe(&old), "ctx 4096 · flash attn on");
        let off = serde_json::json!({"ctx": 4096, "flash_attn": false});
        assert_eq!(describe(&off), "ctx 4096 · flash attn off");
    }
}
