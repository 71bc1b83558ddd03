//! The context search: its range and result, the rates by context with the path the search
//! took, and each search probe.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::optimize::journal::Entry;
use crate::optimize::prober::Stage;
use crate::report::plot::{self, Chart, Marker, Rule, Series, Style};
use crate::util::order::median;

use super::cells::{f1, result, str_of};
use super::metrics::{decode_of, metric_by_context, p95, per_context, prefill_of, ttft_of};
use super::{ReportDoc, Run};

pub(super) fn context(d: &mut ReportDoc, run: &Run, s: &Value) {
    let c = &s["context"];
    d.h2("Context search");
    if !c.is_null() {
        d.para(search_para(c));
        if let Some(depth) = depth_para(c, s) {
            d.para(depth);
        }
    }
    // Single-stream probes outside the batch stage: context is the variable.
    let single: Vec<&Entry> = run
        .probes
        .iter()
        .filter(|e| e.request.concurrency == 1 && e.request.stage != Stage::Batch)
        .filter(|e| e.request.stage != Stage::Concurrency)
        .collect();
    let path: Vec<&Entry> = run
        .probes
        .iter()
        .filter(|e| e.request.stage == Stage::Context)
        .collect();
    let decode = metric_by_context(&single, decode_of);
    d.plot(
        "context-decode",
        decode_chart(&decode, &path, c["validated"].as_f64()),
    );
    d.plot(
        "context-prefill",
        prefill_chart(&metric_by_context(&single, prefill_of)),
    );
    d.plot(
        "context-ttft",
        ttft_chart(&metric_by_context(&single, ttft_of)),
    );
    if !path.is_empty() {
        d.table(
            &[
                "#",
                "context",
                "result",
                "prompt tokens",
                "decode tok/s",
                "why it failed",
            ],
            path_rows(&path),
        );
    }
}

/// The search's range, start and bound, and what it found.
fn search_para(c: &Value) -> String {
    format!(
        "Range {}–{} tokens in steps of {}, first probe at {}, at most {} search probes. Largest passing context {}; validated {} after {} step-down{}{}.",
        str_of(&c["low"]),
        str_of(&c["high"]),
        str_of(&c["granularity"]),
        str_of(&c["start"]),
        str_of(&c["probe_bound"]),
        str_of(&c["max_passing"]),
        str_of(&c["validated"]),
        str_of(&c["step_downs"]),
        if c["step_downs"].as_u64() == Some(1) { "" } else { "s" },
        if c["cut_short"].as_bool() == Some(true) {
            " (cut short by search.max_iterations)"
        } else {
            ""
        }
    )
}

/// How deep the search probes went: loads only, a context that loads but fails filled, prompts
/// capped below the context. `None` when there is nothing to say.
fn depth_para(c: &Value, s: &Value) -> Option<String> {
    let mut depth = String::new();
    if c["load_only"].as_bool() == Some(true) {
        depth += "Search probes load the configuration and send one short request (the server allocates its KV cache at load); the largest passing context is the largest that loads, and the validated one is proven with prompts filled to depth.";
    }
    if let Some(f) = c["fails_filled"].as_object() {
        depth += &format!(
            " Loads at {} but fails filled: {}.",
            str_of(&f["ctx"]),
            str_of(&f["error"])
        );
    }
    if let Some(cap) = s["max_prompt_tokens"].as_u64() {
        depth += &format!(
            " **Not proven at depth**: prompts were capped at {cap} tokens (prompt.max_prompt_tokens)."
        );
    }
    (!depth.is_empty()).then(|| depth.trim().to_string())
}

/// Decode rate by context, the search path over it in probe order (failed probes at 0, marked),
/// and the validated context.
fn decode_chart(
    decode: &BTreeMap<u32, Vec<f64>>,
    path: &[&Entry],
    validated: Option<f64>,
) -> Chart {
    let mut rates = Chart::new(
        "Decode rate by context, and the search path",
        "context (tokens)",
        "decode tokens/s",
    );
    rates.x_count = true;
    rates.add(
        Series::new("decode (median)", plot::BLUE, Style::LinePoints)
            .points(per_context(decode, median)),
    );
    let (trail, failed) = search_path(path);
    rates.add(trail);
    rates.add(failed);
    if let Some(v) = validated {
        rates.vrules.push(Rule {
            label: format!("validated {v:.0}"),
            at: v,
            color: plot::GREEN,
        });
    }
    rates
}

/// The search probes in order, each numbered at its context and median decode rate (0 where it
/// failed), and the failed ones again as crosses.
fn search_path(path: &[&Entry]) -> (Series, Series) {
    let mut trail = Series::new("search path (probe order)", plot::GREY, Style::Dashed);
    let mut pts = Vec::new();
    let mut fails = Vec::new();
    for (i, e) in path.iter().enumerate() {
        let x = f64::from(e.request.config.ctx);
        let y = if e.outcome.passed() {
            median(decode_of(e)).unwrap_or(0.0)
        } else {
            fails.push((x, 0.0));
            0.0
        };
        pts.push((x, y));
        trail.labels.push((x, y, format!("{}", i + 1)));
    }
    let failed = Series::new("failed probe", plot::RED, Style::Points)
        .marker(Marker::Cross)
        .points(fails);
    (trail.points(pts), failed)
}

fn prefill_chart(prefill: &BTreeMap<u32, Vec<f64>>) -> Chart {
    let mut pf = Chart::new(
        "Prefill rate by context",
        "context (tokens)",
        "prefill tokens/s",
    );
    pf.x_count = true;
    pf.add(
        Series::new("prefill (median)", plot::ORANGE, Style::LinePoints)
            .points(per_context(prefill, median)),
    );
    pf
}

fn ttft_chart(ttft: &BTreeMap<u32, Vec<f64>>) -> Chart {
    let mut tt = Chart::new(
        "Time to first token by context",
        "context (tokens)",
        "TTFT (ms)",
    );
    tt.x_count = true;
    tt.add(Series::new("median", plot::BLUE, Style::LinePoints).points(per_context(ttft, median)));
    tt.add(Series::new("p95", plot::PURPLE, Style::LinePoints).points(per_context(ttft, p95)));
    tt
}

/// One row per search probe: its number, context, result, prompt and decode rate, and error.
fn path_rows(path: &[&Entry]) -> Vec<Vec<String>> {
    path.iter()
        .enumerate()
        .map(|(i, e)| {
            vec![
                (i + 1).to_string(),
                e.request.config.ctx.to_string(),
                result(e),
                e.outcome
                    .prompt_tokens
                    .map_or("–".into(), |p| p.to_string()),
                f1(median(decode_of(e))),
                e.outcome.error.clone().unwrap_or_default(),
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_depth_paragraph_says_only_what_applies() {
        assert_eq!(depth_para(&json!({}), &json!({})), None);
        assert_eq!(
            depth_para(
                &json!({"fails_filled": {"ctx": 8192, "error": "out of memory"}}),
                &json!({"max_prompt_tokens": 4000})
            )
            .as_deref(),
            Some(
                "Loads at 8192 but fails filled: out of memory. **Not proven at depth**: prompts \
                 were capped at 4000 tokens (prompt.max_prompt_tokens)."
            )
        );
    }

    #[test]
    fn one_step_down_is_singular() {
        let p = search_para(&json!({"step_downs": 1, "cut_short": true}));
        assert!(
            p.ends_with("after 1 step-down (cut short by search.max_iterations)."),
            "{p}"
        );
        assert!(search_para(&json!({"step_downs": 0})).ends_with("after 0 step-downs."));
    }
}
