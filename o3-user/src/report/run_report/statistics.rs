//! Statistics per configuration: the numbers the stability verdict used, with their intervals.

use serde_json::Value;

use super::cells::{f0, f1, opt_bytes, str_of};
use super::ReportDoc;

const HOW_TO_READ: &str = "n requests per configuration. Stable means: at least one success, timeouts within concurrency.max_timeouts (none for one stream), success rate ≥ validation.min_success_rate over the requests that did not time out, and every CV judged ≤ validation.max_cv: TTFT and decode rate for one stream, the aggregate throughput of each round for simultaneous streams. The success column gives successes of the requests judged, timeouts apart, and the Wilson 95 % lower bound of the rate (reported, not deciding; marked \"< min\" where n is too small to show the minimum). Rates are geometric means with 95 % intervals from Student's t on the logarithms (never below 0), after MAD outlier removal; CVs (stddev / mean) carry Vangel's 95 % interval. TTFT of the requests that read their whole prompt (the fill) and of those that reused the filled prefix are apart; prompt tokens say whether the configuration's context was proven filled to depth.";

pub(super) fn statistics(d: &mut ReportDoc, s: &Value) {
    let Some(cs) = s["configurations"].as_array().filter(|c| !c.is_empty()) else {
        return;
    };
    d.h2("Statistics per configuration");
    d.para(HOW_TO_READ);
    d.table(
        &[
            "configuration",
            "stage",
            "streams",
            "stable",
            "successes (Wilson 95 % low)",
            "decode tok/s geo. mean [95 % CI]",
            "CV judged [95 % CI] vs max",
            "prefill tok/s geo. mean [95 % CI]",
            "TTFT p50 / p95 ms (whole prompt)",
            "TTFT p50 ms (cached prefix)",
            "prompt tokens",
            "tok/s all streams",
            "server RSS peak",
        ],
        cs.iter().map(configuration_row).collect(),
    );
}

/// One configuration of the summary as a row under [`statistics`]' header.
fn configuration_row(c: &Value) -> Vec<String> {
    let v = &c["validation"];
    vec![
        str_of(&c["id"]),
        str_of(&c["stage"]),
        str_of(&c["concurrency"]),
        stable_cell(c),
        successes_cell(v),
        rate_cell(&v["decode_tokens_per_s"]),
        cv_checks_cell(v),
        rate_cell(&v["prefill_tokens_per_s"]),
        format!(
            "{} / {}",
            f0(c["ttft_p50_ms"].as_f64()),
            f0(c["ttft_p95_ms"].as_f64())
        ),
        f0(c["cached_ttft_p50_ms"].as_f64()),
        prompt_tokens_cell(c),
        f1(c["output_tokens_per_s"].as_f64()),
        format!(
            "{}{}",
            opt_bytes(c["rss_peak_bytes"].as_u64()),
            if c["rss_method"].as_str() == Some("ebpf") {
                " (exact)"
            } else {
                ""
            }
        ),
    ]
}

/// `yes`, or `no (why)`: how the probe failed (a probe that failed, or one without reasons),
/// then the statistics' reasons.
fn stable_cell(c: &Value) -> String {
    if c["stable"].as_bool() == Some(true) {
        return "yes".into();
    }
    let failed_probe = !matches!(c["outcome"].as_str(), Some("ok" | "timeout") | None);
    let mut why: Vec<String> = c["validation"]["reasons"]
        .as_array()
        .map(|r| r.iter().map(str_of).collect())
        .unwrap_or_default();
    if failed_probe || why.is_empty() {
        let mut o = str_of(&c["outcome"]);
        if let Some(e) = c["error"].as_str() {
            o = format!("{o}: {e}");
        }
        why.insert(0, o);
    }
    format!("no ({})", why.join("; "))
}

/// An interval's end: to one decimal, or in powers of ten from a million on (two samples far
/// apart give an interval of 14 digits, which says no more than 2.1e13).
fn bound(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{v:.1e}")
    } else {
        format!("{v:.1}")
    }
}

/// A rate's geometric mean with its 95 % interval: `41.2 [39.8, 42.7]`.
fn rate_cell(m: &Value) -> String {
    if m.is_null() {
        return "–".into();
    }
    match (
        m["gmean"].as_f64(),
        m["gmean_ci95_low"].as_f64(),
        m["gmean_ci95_high"].as_f64(),
    ) {
        (Some(g), Some(lo), Some(hi)) => format!("{g:.1} [{}, {}]", bound(lo), bound(hi)),
        (Some(g), _, _) => format!("{g:.1}"),
        // A summary of an earlier version (arithmetic mean only), or values ≤ 0.
        _ => f1(m["mean"].as_f64()),
    }
}

/// The prompt's tokens and whether the context was proven filled to depth.
fn prompt_tokens_cell(c: &Value) -> String {
    let tokens = str_of(&c["prompt_tokens"]);
    match (c["depth"]["kind"].as_str(), c["proven_at_depth"].as_bool()) {
        (Some("filled"), Some(true)) => format!("{tokens} (proven)"),
        (Some("filled"), _) => format!("{tokens} (NOT proven at depth)"),
        (Some(k), _) => format!("{tokens} ({k})"),
        _ => tokens,
    }
}

/// `5/6 + 2 timeouts (≥ 0.57 < min)`: successes of the requests judged by the success rate,
/// timeouts apart, and the Wilson 95 % lower bound, marked where it is under the minimum.
fn successes_cell(v: &Value) -> String {
    let n = v["n"].as_u64().unwrap_or(0);
    let t = v["timeouts"].as_u64().unwrap_or(0);
    let low = v["success_rate_wilson_low"].as_f64().unwrap_or(0.0);
    let timeouts = match t {
        0 => String::new(),
        t => format!(" + {t} timeout{}", if t == 1 { "" } else { "s" }),
    };
    let under = match v["min_success_rate"].as_f64() {
        Some(m) if low < m => " < min",
        _ => "",
    };
    format!(
        "{}/{}{timeouts} (≥ {low:.2}{under})",
        str_of(&v["successes"]),
        n.saturating_sub(t)
    )
}

/// The CVs the verdict judged, each with its interval and the maximum: `decode 0.041 [0.025,
/// 0.118] ≤ 0.15`; the same numbers as the verdict, from `validation.cv_checks`.
fn cv_checks_cell(v: &Value) -> String {
    let Some(checks) = v["cv_checks"].as_array() else {
        // A summary of an earlier version: the per-request decode CV, not necessarily judged.
        return v["decode_tokens_per_s"]["cv"]
            .as_f64()
            .map_or("–".into(), |x| format!("decode {x:.3}"));
    };
    if checks.is_empty() {
        return if v["successes"].as_u64().unwrap_or(0) > 0 {
            "– (fewer than 2 values)".into()
        } else {
            "–".into()
        };
    }
    checks
        .iter()
        .map(|c| {
            let name = match c["metric"].as_str() {
                Some("ttft_ms") => "TTFT",
                Some("cached_ttft_ms") => "cached TTFT",
                Some("decode_tokens_per_s") => "decode",
                Some("round_tokens_per_s") => "round tok/s",
                _ => "?",
            };
            let cv = c["cv"].as_f64().unwrap_or(f64::NAN);
            let max = c["max_cv"].as_f64().unwrap_or(f64::NAN);
            let interval = match (c["cv_ci95_low"].as_f64(), c["cv_ci95_high"].as_f64()) {
                (Some(lo), Some(hi)) => format!(" [{lo:.3}, {hi:.3}]"),
                (Some(lo), None) => format!(" [{lo:.3}, ∞)"),
                _ => String::new(),
            };
            let op = if c["passed"].as_bool() == Some(true) {
                "≤"
            } else {
                ">"
            };
            format!("{name} {cv:.3}{interval} {op} {max:.2}")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn unstable_says_how_the_probe_failed_before_the_reasons() {
        assert_eq!(stable_cell(&json!({"stable": true})), "yes");
        let timeout = json!({"stable": false, "outcome": "timeout",
                             "validation": {"reasons": ["CV too high"]}});
        assert_eq!(stable_cell(&timeout), "no (CV too high)");
        let oom = json!({"stable": false, "outcome": "oom", "error": "out of memory",
                         "validation": {"reasons": ["no successes"]}});
        assert_eq!(stable_cell(&oom), "no (oom: out of memory; no successes)");
    }

    #[test]
    fn a_wide_interval_is_written_in_powers_of_ten() {
        let m = serde_json::json!({"gmean": 26.5, "gmean_ci95_low": 0.0, "gmean_ci95_high": 21315743839858.7});
        assert_eq!(rate_cell(&m), "26.5 [0.0, 2.1e13]");
        let m =
            serde_json::json!({"gmean": 41.2, "gmean_ci95_low": 39.8, "gmean_ci95_high": 999999.0});
        assert_eq!(rate_cell(&m), "41.2 [39.8, 999999.0]");
    }

    #[test]
    fn prompt_tokens_say_whether_the_context_was_proven() {
        let cell = |kind: &str, proven: bool| {
            prompt_tokens_cell(&json!({"prompt_tokens": 7000, "depth": {"kind": kind},
                                      "proven_at_depth": proven}))
        };
        assert_eq!(cell("filled", true), "7000 (proven)");
        assert_eq!(cell("filled", false), "7000 (NOT proven at depth)");
        assert_eq!(cell("short", false), "7000 (short)");
        assert_eq!(prompt_tokens_cell(&json!({})), "–");
        assert_eq!(rate_cell(&json!({"gmean": 41.25})), "41.2");
        assert_eq!(rate_cell(&json!({"mean": 3.0})), "3.0");
    }
}
