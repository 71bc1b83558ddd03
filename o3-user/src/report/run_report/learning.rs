//! What learning reused, predicted and skipped, then the run's notes and the problems met
//! reading it.

use serde_json::Value;

use crate::optimize::prober::Stage;

use super::cells::{describe, f0, opt_bytes, str_of};
use super::{ReportDoc, Run};

pub(super) fn learning(d: &mut ReportDoc, run: &Run, s: &Value) {
    let r = &run.run;
    let mut items: Vec<String> = Vec::new();
    if let Some(l) = r["learned"].as_object() {
        items.push(format!(
            "reuse: a learned result ({}) with maximum context {} was verified instead of searched",
            l.get("source").map(str_of).unwrap_or_default(),
            l.get("max_context").map(str_of).unwrap_or_default()
        ));
    }
    for n in r["learning_notes"].as_array().into_iter().flatten() {
        items.push(str_of(n));
    }
    if let Some(c) = r["start_context"].as_u64() {
        items.push(format!(
            "predicted: the first context probe was {c}{}",
            if r["gallop"].as_bool() == Some(true) {
                ", galloping from the trained predictor's answer"
            } else {
                ""
            }
        ));
    }
    for x in s["reused"].as_array().into_iter().flatten() {
        items.push(format!("reused {}", str_of(x)));
    }
    for x in s["learning_notes"].as_array().into_iter().flatten() {
        let t = str_of(x);
        if !items.contains(&t) {
            items.push(t);
        }
    }
    for k in s["skipped"].as_array().into_iter().flatten() {
        items.push(format!(
            "skipped without probing: {} {} (P(success) = {:.3}, {})",
            str_of(&k["stage"]),
            describe(&k["config"]),
            k["p_success"].as_f64().unwrap_or(0.0),
            str_of(&k["basis"])
        ));
    }
    for k in s["explored"].as_array().into_iter().flatten() {
        items.push(format!(
            "measured anyway to keep the predictor honest: {} (P(success) = {:.3}): {}",
            describe(&k["config"]),
            k["p_success"].as_f64().unwrap_or(0.0),
            str_of(&k["outcome"])
        ));
    }
    let verified = run
        .probes
        .iter()
        .filter(|e| e.request.stage == Stage::Verify)
        .count();
    if verified > 0 {
        items.push(format!(
            "{verified} verification probe{} re-measured learned configurations",
            if verified == 1 { "" } else { "s" }
        ));
    }
    if items.is_empty() {
        return;
    }
    d.h2("Learning: reused and predicted");
    d.list(items);
}

/// What o3 predicted for each probe before it ran, beside what the probe measured: the
/// running error in a line, then the probes (summary.json `predictions`).
pub(super) fn predictions(d: &mut ReportDoc, s: &Value) {
    let p = &s["predictions"];
    let Some(line) = p["summary"].as_str() else {
        return;
    };
    d.h2("Predictions against measurements");
    d.para(format!(
        "Before each probe, o3 predicted it from everything stored before it: {line}. Errors \
         are (predicted − measured) ÷ measured; P(success) is scored against what happened."
    ));
    let rows: Vec<Vec<String>> = p["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let pr = &r["predicted"];
            let (peak, measured) = (pr["peak_bytes"].as_u64(), r["measured_peak_bytes"].as_u64());
            let err = match (peak, measured) {
                (Some(p), Some(m)) if m > 0 => {
                    format!("{:+.1} %", (p as f64 - m as f64) / m as f64 * 100.0)
                }
                _ => "–".into(),
            };
            vec![
                str_of(&r["stage"]),
                describe(&r["config"]),
                format!(
                    "{} ({} – {})",
                    opt_bytes(peak),
                    opt_bytes(pr["peak_low_bytes"].as_u64()),
                    opt_bytes(pr["peak_high_bytes"].as_u64())
                ),
                opt_bytes(measured),
                err,
                format!("{:.2}", pr["p_success"].as_f64().unwrap_or(0.0)),
                if r["success"].as_bool() == Some(true) {
                    "ok".into()
                } else {
                    "failed".into()
                },
                // Rates are predicted for one stream.
                match r["concurrency"].as_u64() {
                    Some(n) if n > 1 => format!("– ({n} streams)"),
                    _ => format!(
                        "{} / {}",
                        f0(pr["decode_tokens_per_s"].as_f64()),
                        f0(r["decode_tokens_per_s"].as_f64())
                    ),
                },
            ]
        })
        .collect();
    d.table(
        &[
            "stage",
            "configuration",
            "peak predicted (range)",
            "peak measured",
            "error",
            "P(success)",
            "outcome",
            "decode tok/s predicted / measured",
        ],
        rows,
    );
}

pub(super) fn notes(d: &mut ReportDoc, run: &Run, s: &Value) {
    let mut items: Vec<String> = Vec::new();
    for n in s["notes"].as_array().into_iter().flatten() {
        items.push(str_of(n));
    }
    for n in run.run["config_notices"].as_array().into_iter().flatten() {
        items.push(format!("configuration: {}", str_of(n)));
    }
    if !items.is_empty() {
        d.h2("Notes");
        d.list(items);
    }
    if !run.problems.is_empty() {
        d.h2("Problems reading the run");
        d.list(run.problems.clone());
    }
}
