//! The variants compared (`variants.*`): each one's largest loading context against its decode
//! rate at one moderate depth (the trade-off presets choose along), and what became of each.

use serde_json::Value;

use crate::report::plot::{self, Chart, Series, Style};

use super::cells::{f1, str_of};
use super::ReportDoc;

pub(super) fn variants(d: &mut ReportDoc, s: &Value) {
    let Some(vs) = s["variants"].as_array().filter(|v| !v.is_empty()) else {
        return;
    };
    d.h2("Variants");
    d.para(intro(vs));
    d.plot_listed("variants", chart(vs));
    d.table(
        &[
            "variant",
            "predicted max",
            "largest that loads",
            "search probes",
            "prefill tok/s",
            "decode tok/s",
            "one request s",
            "role",
        ],
        vs.iter().map(row).collect(),
    );
}

/// What was compared and how.
fn intro(vs: &[Value]) -> String {
    let ranked = vs.iter().find(|v| !v["rate_ctx"].is_null());
    let how = ranked.map_or(
        "No two variants loaded, so none was ranked.".to_string(),
        |v| {
            format!(
                "Each variant that loads was ranked at ctx {} with fresh {}-token prompts (the same for all); \"one request\" is that prompt read and the configured output decoded at the measured rates.",
                str_of(&v["rate_ctx"]),
                str_of(&v["rate_tokens"])
            )
        },
    );
    format!(
        "{} variants: each had its own context search (load probes; the largest context that loads is a measured peak, not a prediction). {how} The longest is proven at depth and goes on through the rest of the search; the fastest, where it is faster by more than batch.min_gain, is proven at the presets' own contexts so the presets can trade context for speed.",
        vs.len()
    )
}

/// Largest loading context against decode rate, one point per ranked variant, by role.
fn chart(vs: &[Value]) -> Chart {
    let mut ch = Chart::new(
        "Largest context that loads against decode rate, per variant",
        "largest context that loads (tokens)",
        "decode tokens/s at the ranking depth",
    );
    for (role, name, color) in [
        (Some("longest"), "longest (proven at depth)", plot::GREEN),
        (
            Some("fastest"),
            "fastest (proven at the presets' contexts)",
            plot::ORANGE,
        ),
        (None, "ranked", plot::BLUE),
    ] {
        let mut s = Series::new(name, color, Style::Points);
        let mut pts = Vec::new();
        for v in vs.iter().filter(|v| first_role(v) == role) {
            if let (Some(x), Some(y)) = (v["max_loads"].as_f64(), v["decode_tokens_per_s"].as_f64())
            {
                pts.push((x, y));
                s.labels.push((x, y, str_of(&v["label"])));
            }
        }
        ch.add(s.points(pts));
    }
    ch
}

fn first_role(v: &Value) -> Option<&str> {
    v["roles"]
        .as_array()
        .and_then(|r| r.first())
        .and_then(Value::as_str)
}

fn row(v: &Value) -> Vec<String> {
    let roles: Vec<String> = v["roles"]
        .as_array()
        .map(|r| r.iter().map(str_of).collect())
        .unwrap_or_default();
    let role = match (roles.is_empty(), v["skipped"].as_str()) {
        (false, _) => roles.join(", "),
        (true, Some(why)) => why.to_string(),
        (true, None) => "ranked".into(),
    };
    vec![
        str_of(&v["label"]),
        str_of(&v["predicted_max"]),
        str_of(&v["max_loads"]),
        str_of(&v["search_probes"]),
        f1(v["prefill_tokens_per_s"].as_f64()),
        f1(v["decode_tokens_per_s"].as_f64()),
        f1(v["request_s"].as_f64()),
        role,
    ]
}
