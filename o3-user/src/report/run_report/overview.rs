//! The run (what was optimized where, and how far it got) and its time plan.

use serde_json::Value;

use crate::util::units::{bytes, utc};

use super::cells::str_of;
use super::{ReportDoc, Run};

pub(super) fn overview(d: &mut ReportDoc, run: &Run, s: &Value) {
    let r = &run.run;
    let t = &r["target"];
    let started = r["created_unix_ns"].as_u64().unwrap_or(0) / 1_000_000_000;
    let mut rows = vec![
        vec!["model".into(), str_of(&t["model"])],
        vec!["server".into(), str_of(&t["backend"])],
        vec!["host".into(), host_cell(&r["host"])],
        vec!["GPUs".into(), gpus_cell(&r["host"])],
        vec!["started".into(), format!("{} UTC", utc(started))],
        vec!["o3".into(), str_of(&r["o3_version"])],
        vec!["run directory".into(), run.dir.display().to_string()],
    ];
    if let Some(v) = r["server_version"].as_str() {
        rows.push(vec!["server version".into(), v.to_string()]);
    }
    if s.is_null() {
        rows.push(vec![
            "probes".into(),
            format!("{} in the journal", run.probes.len()),
        ]);
    } else {
        rows.extend(summary_rows(s));
    }
    d.h2("Run");
    d.table(&["", ""], rows);
}

/// `AMD RYZEN AI MAX+ 395 (16 cores), 128.0 GiB RAM, kernel 6.18`.
fn host_cell(host: &Value) -> String {
    format!(
        "{} ({} cores), {} RAM, kernel {}",
        str_of(&host["cpu_model"]),
        str_of(&host["cpu_cores"]),
        host["ram_bytes"].as_u64().map_or("?".into(), bytes),
        str_of(&host["kernel"])
    )
}

/// The GPUs by name, APUs marked; `none` without one.
fn gpus_cell(host: &Value) -> String {
    match host["gpus"].as_array() {
        Some(g) if !g.is_empty() => g
            .iter()
            .map(|g| {
                format!(
                    "{}{}",
                    str_of(&g["name"]),
                    if g["apu"].as_bool() == Some(true) {
                        " (APU, unified memory)"
                    } else {
                        ""
                    }
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => "none".into(),
    }
}

/// What the summary says of the run as a whole: its probes, its wall time, whether it was
/// simulated.
fn summary_rows(s: &Value) -> Vec<Vec<String>> {
    let p = &s["probes"];
    let mut rows = vec![
        vec![
            "probes".into(),
            format!(
                "{} ({} run in this session, {} answered from the journal); context search {} of at most {}",
                str_of(&p["total"]),
                str_of(&p["ran_now"]),
                str_of(&p["from_journal"]),
                str_of(&p["context_search"]),
                str_of(&p["context_search_bound"])
            ),
        ],
        vec![
            "wall time".into(),
            format!(
                "{:.1} s{}",
                s["wall_s"].as_f64().unwrap_or(0.0),
                if s["interrupted"].as_bool() == Some(true) {
                    " (interrupted: resume with `o3 optimize --resume`)"
                } else {
                    ""
                }
            ),
        ],
    ];
    if s["simulated"].as_bool() == Some(true) {
        rows.push(vec![
            "simulated".into(),
            "yes: the probes were answered by a simulator, not a server".into(),
        ]);
    }
    rows
}

/// The plan against what it cost: the prediction at the start, the time spent, the floor and the
/// run in floor units, the budget and what it cut, the time model.
pub(super) fn time(d: &mut ReportDoc, s: &Value) {
    let p = &s["plan"];
    if p.is_null() {
        return;
    }
    let human = |x: Option<f64>| x.map_or("–".into(), crate::util::units::span);
    let mut rows = vec![
        vec![
            "predicted at the start".into(),
            human(p["predicted_at_start_s"].as_f64()),
        ],
        vec![
            "probe time spent".into(),
            format!(
                "{}{}",
                human(p["spent_s"].as_f64()),
                if s["simulated"].as_bool() == Some(true) {
                    " (simulated)"
                } else {
                    ""
                }
            ),
        ],
        vec![
            "floor".into(),
            format!(
                "{} (one load, one prompt filled to the validated maximum, one sample's decode); this run: {}",
                human(p["floor_s"].as_f64()),
                p["floor_units"]
                    .as_f64()
                    .map_or("–".into(), |u| format!("{u:.2}× the floor"))
            ),
        ],
        vec![
            "budget".into(),
            str_of(&p["budget"]).trim_start_matches("budget ").to_string(),
        ],
        vec!["time model".into(), str_of(&p["time_model"])],
    ];
    for c in p["cut"].as_array().into_iter().flatten() {
        rows.push(vec!["cut by the budget".into(), str_of(c)]);
    }
    d.h2("Time");
    d.table(&["", ""], rows);
}
