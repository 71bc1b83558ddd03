//! Runs built in memory, so the truth of every plotted point is known.

use std::path::Path;

use serde_json::json;

use super::resources::byte_unit;
use super::statistics::statistics;
use super::*;
use crate::backend::{OutcomeClass, ProbeConfig};
use crate::optimize::journal::Entry;
use crate::optimize::prober::Stage;
use crate::optimize::prober::{ProbeOutcome, ProbeRequest};
use crate::optimize::stats::Observation;
use crate::report::plot::{Chart, Series};
use crate::report::run::ProbeTrace;
use crate::util::units::bytes;

fn entry(stage: Stage, ctx: u32, batch: u32, streams: u32, decode: &[f64]) -> Entry {
    let ok = !decode.is_empty();
    Entry {
        request: ProbeRequest {
            stage,
            config: ProbeConfig {
                ctx,
                batch: Some(batch),
                parallel: (streams > 1).then_some(streams),
                ..ProbeConfig::default()
            },
            depth: crate::optimize::prober::Depth::Filled {
                tokens: ctx * 9 / 10,
            },
            rounds: decode.len().max(1) as u32,
            concurrency: streams,
        },
        outcome: ProbeOutcome {
            outcome: if ok {
                OutcomeClass::Ok
            } else {
                OutcomeClass::Oom
            },
            error: (!ok).then(|| "out of memory".to_string()),
            observations: decode
                .iter()
                .map(|d| Observation {
                    ok: true,
                    ttft_ms: Some(1e5 / d),
                    prefill_tokens_per_s: Some(d * 10.0),
                    decode_tokens_per_s: Some(*d),
                    cached: false,
                })
                .collect(),
            round_tokens_per_s: decode.iter().map(|d| d * f64::from(streams)).collect(),
            timeouts: 0,
            prompt_tokens: Some(u64::from(ctx) * 9 / 10),
            rss_peak_bytes: None,
            rss_method: "ebpf".into(),
            mem_used_peak_bytes: None,
            gpu_used_peak_bytes: None,
            load_ms: None,
            wall_ms: 1.0,
            timing: Vec::new(),
            prefix_reuse: None,
            notes: Vec::new(),
            chat: None,
        },
        finished_unix_ns: 0,
    }
}

fn run(probes: Vec<Entry>, traces: &[&str]) -> Run {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/traces");
    Run {
        dir: "/runs/r".into(),
        run: json!({
            "created_unix_ns": 1_700_000_000_000_000_000u64,
            "target": {"model": "/m/qwen3-30b-a3b-q4_k_m.gguf", "backend": "llama-server"},
            "host": {"cpu_model": "AMD RYZEN AI MAX+ 395", "cpu_cores": 16, "ram_bytes": 137438953472u64,
                     "kernel": "6.18", "gpus": [{"name": "Radeon 8060S", "apu": true}]},
            "config": {"safety": {"max_vram_percent": 90.0, "max_ram_percent": 85.0,
                                  "max_temperature_c": 85.0, "max_cpu_percent": 90.0}},
            "start_context": 6144, "gallop": true, "learning_notes": ["nothing reused"]
        }),
        summary: Some(json!({
            "context": {"low": 2048, "high": 8192, "granularity": 1024, "start": 8192,
                        "probe_bound": 4, "validated": 6144, "max_passing": 6144, "step_downs": 0},
            "skipped": [{"stage": "batch", "config": {"ctx": 6144, "batch": 512}, "p_success": 0.01, "basis": "trained predictor"}],
            "probes": {"total": 7, "ran_now": 7, "from_journal": 0, "context_search": 4, "context_search_bound": 4},
            "wall_s": 12.5
        })),
        probes,
        traces: traces
            .iter()
            .map(|t| ProbeTrace {
                file: format!("{t}.jsonl"),
                stage: "context".into(),
                trace: crate::trace::read_file(&dir.join(format!("{t}.jsonl"))).unwrap(),
            })
            .collect(),
        problems: vec![],
    }
}

fn chart<'a>(d: &'a ReportDoc, name: &str) -> &'a Chart {
    d.plots()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no {name} plot"))
        .1
}

fn series<'a>(c: &'a Chart, name: &str) -> &'a Series {
    c.series
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no series {name} in {}", c.title))
}

fn points(s: &Series) -> Vec<(f64, f64)> {
    s.segments.iter().flatten().copied().collect()
}

fn search_run() -> Run {
    run(
        vec![
            entry(Stage::Context, 8192, 64, 1, &[]),
            entry(Stage::Context, 4096, 64, 1, &[100.0]),
            entry(Stage::Context, 6144, 64, 1, &[80.0]),
            entry(Stage::Context, 7168, 64, 1, &[]),
            entry(Stage::Validate, 6144, 64, 1, &[70.0, 90.0, 80.0]),
            entry(Stage::Batch, 6144, 128, 1, &[85.0]),
            entry(Stage::Batch, 6144, 256, 1, &[]),
            entry(Stage::Concurrency, 6144, 64, 2, &[60.0, 64.0]),
            entry(Stage::Concurrency, 6144, 64, 4, &[]),
        ],
        &[],
    )
}

#[test]
fn the_search_path_is_drawn_in_probe_order_with_failures_marked() {
    let d = build(&search_run());
    let c = chart(&d, "context-decode");
    // Medians per context over the single-stream probes (search and validation).
    assert_eq!(
        points(series(c, "decode (median)")),
        vec![(4096.0, 100.0), (6144.0, 80.0)]
    );
    let path = series(c, "search path (probe order)");
    assert_eq!(
        points(path),
        vec![
            (8192.0, 0.0),
            (4096.0, 100.0),
            (6144.0, 80.0),
            (7168.0, 0.0)
        ]
    );
    let labels: Vec<&str> = path.labels.iter().map(|l| l.2.as_str()).collect();
    assert_eq!(labels, ["1", "2", "3", "4"]);
    assert_eq!(
        points(series(c, "failed probe")),
        vec![(8192.0, 0.0), (7168.0, 0.0)]
    );
    assert_eq!(c.vrules[0].at, 6144.0);
    let ttft = chart(&d, "context-ttft");
    // TTFT is 1e5 / decode in this run: median at 6144 of {1250, 1428.6, 1111.1, 1250}.
    assert_eq!(points(series(ttft, "median"))[1], (6144.0, 1250.0));
    let md = super::super::doc::markdown(&d, "plots");
    assert!(
        md.contains("| 1 | 8192 | failed (oom) | 7372 | – | out of memory |"),
        "{md}"
    );
}

#[test]
fn batch_and_concurrency_curves_start_from_the_validated_point() {
    let d = build(&search_run());
    let b = chart(&d, "batch");
    assert!(b.x_log2);
    // The validated probe at batch 64 (prefill = 10 × decode: median 800), then 128.
    assert_eq!(
        points(series(b, "ctx 6144")),
        vec![(6.0, 800.0), (7.0, 850.0)]
    );
    assert_eq!(points(series(b, "failed")), vec![(8.0, 0.0)]);
    let t = chart(&d, "concurrency-throughput");
    // One stream is the validation at 6144 (median of its rounds {70, 90, 80}), then the
    // aggregate = median over rounds of the streams' summed rates: 2 × {60, 64} → 124.
    assert_eq!(
        points(series(t, "ctx 6144")),
        vec![(1.0, 80.0), (2.0, 124.0)]
    );
    assert!(t.x_count, "streams are counted: whole-number ticks");
    assert_eq!(points(series(t, "failed")), vec![(4.0, 0.0)]);
    let md = super::super::doc::markdown(&d, "plots");
    assert!(
        md.contains("| 6144 | 1 | validate | passed | 80.0 |"),
        "{md}"
    );
    assert!(
        md.contains("| 6144 | 2 | concurrency | passed | 124.0 |"),
        "{md}"
    );
}

#[test]
fn a_level_that_passed_but_varied_too_much_says_so() {
    let mut r = search_run();
    // As summary.json's `configurations` holds it (o3 optimize's summary): the 2-stream level
    // at 6144 had every request succeed, and its rates varied beyond validation.max_cv.
    r.summary.as_mut().unwrap()["configurations"] = json!([{
        "id": "c6144-b64-p2", "stage": "concurrency", "concurrency": 2, "stable": false,
        "config": {"ctx": 6144, "batch": 64, "ubatch": null, "parallel": 2, "gpu_layers": null,
                   "flash_attn": null, "cache_type_k": null, "cache_type_v": null, "threads": null},
        "depth": {"kind": "filled", "tokens": 5529}
    }]);
    let md = super::super::doc::markdown(&build(&r), "plots");
    assert!(
        md.contains("| 6144 | 2 | concurrency | passed, unstable (see the statistics) | 124.0 |"),
        "{md}"
    );
    // The validation it does not name keeps its plain result.
    assert!(
        md.contains("| 6144 | 1 | validate | passed | 80.0 |"),
        "{md}"
    );
}

#[test]
fn a_sweep_with_one_level_is_a_short_table_not_a_chart() {
    // No validation at 6144 and one level measured: nothing to draw a curve through.
    let d = build(&run(
        vec![
            entry(Stage::Context, 6144, 64, 1, &[80.0]),
            entry(Stage::Concurrency, 6144, 64, 2, &[60.0, 64.0]),
        ],
        &[],
    ));
    assert!(d.plots().all(|(n, _)| !n.starts_with("concurrency")));
    let md = super::super::doc::markdown(&d, "plots");
    assert!(md.contains("| 6144 | 2 | concurrency | passed | 124.0 | 1667 | 0 |"));
    assert!(
        md.contains(
            "Aggregate decode throughput by streams: too few points for a chart (one simultaneous streams value only); the table below lists the values.\n"
        ),
        "{md}"
    );
}

#[test]
fn learning_lists_the_prediction_and_each_skip() {
    let md = super::super::doc::markdown(&build(&search_run()), "plots");
    assert!(
        md.contains("- predicted: the first context probe was 6144, galloping"),
        "{md}"
    );
    assert!(md.contains("- skipped without probing: batch ctx 6144 · batch 512 (P(success) = 0.010, trained predictor)"), "{md}");
    assert!(md.contains("Radeon 8060S (APU, unified memory)"));
}

/// Every sample of a fixture trace as raw JSON, read without the report's reader.
fn raw_samples(name: &str) -> Vec<Value> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../tests/fixtures/traces/{name}.jsonl"));
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "sample")
        .collect()
}

#[test]
fn timelines_mark_the_exact_peak_and_the_thresholds() {
    let d = build(&run(vec![], &["record"]));
    let raw = raw_samples("record");
    let peak = raw
        .iter()
        .filter_map(|s| Some((s["rss_peak_bytes"].as_u64()?, s["rss_peak_t_ns"].as_u64()?)))
        .max()
        .unwrap();
    let own = chart(&d, "memory-server");
    let pk = series(own, "peak");
    // Time is counted from the (first) trace's start, t_ns = 0: the peak sits at its t_ns.
    let (div, _) = byte_unit(peak.0 as f64);
    assert_eq!(points(pk), vec![(peak.1 as f64 / 1e9, peak.0 as f64 / div)]);
    assert!(pk.labels[0].2.contains(&bytes(peak.0)) && pk.labels[0].2.contains("exact"));
    let sys = chart(&d, "memory-system");
    let total = raw[0]["mem_total_bytes"].as_u64().unwrap() as f64;
    let used = raw
        .iter()
        .filter_map(|s| s["mem_used_bytes"].as_u64())
        .max()
        .unwrap() as f64;
    // The unit suits the data, and the limit too where it is drawn on the scale.
    let on_scale = crate::report::plot::rule_on_scale(used, total * 0.85);
    let (div, _) = byte_unit(if on_scale { total * 0.85 } else { used });
    assert!((sys.hrules[0].at - total * 0.85 / div).abs() < 1e-9);
    assert!(sys.hrules[0].label.starts_with("RAM safety limit 85 %"));
    let cpu = chart(&d, "cpu");
    assert_eq!(cpu.hrules[0].at, 90.0);
    assert!(
        d.plots().all(|(n, _)| !n.starts_with("gpu")),
        "no GPU in this trace"
    );
}

#[test]
fn gpu_timelines_come_with_their_limits() {
    let d = build(&run(vec![], &["handmade-gpu"]));
    let raw = raw_samples("handmade-gpu");
    let gpu = |s: &Value, k: &str| s["gpus"][0][k].as_f64();
    let used_max = raw
        .iter()
        .filter_map(|s| gpu(s, "usable_used_bytes"))
        .fold(0.0, f64::max);
    let total = raw
        .iter()
        .find_map(|s| gpu(s, "usable_total_bytes"))
        .unwrap();
    let m = chart(&d, "gpu-memory");
    let (div, unit) = byte_unit(used_max.max(total * 0.9));
    assert_eq!(unit, "GiB");
    assert_eq!(points(series(m, "GPU 0 peak"))[0].1, used_max / div);
    assert!((m.hrules[0].at - total * 0.9 / div).abs() < 1e-9);
    let n_used = raw
        .iter()
        .filter(|s| gpu(s, "usable_used_bytes").is_some())
        .count();
    assert_eq!(points(series(m, "GPU 0 used")).len(), n_used);
    let t = chart(&d, "gpu-temperature");
    assert_eq!(t.hrules[0].at, 85.0);
}

#[test]
fn each_preset_says_how_to_serve_it() {
    let mut r = run(vec![], &[]);
    r.summary = Some(json!({"presets": [
        {"name": "max_context", "config": {"ctx": 65536, "batch": 512, "parallel": 2},
         "concurrency": 2, "output_tokens_per_s": 41.25, "ttft_p95_ms": 1830.0, "score": 0.5,
         "constraint": "context ≥ 65536", "why": "highest score",
         "artefacts": {"modelfile": "FROM qwen3:30b-a3b\nPARAMETER num_ctx 65536\n",
                       "server_env": ["OLLAMA_NUM_PARALLEL=2"], "command_line": null}},
        {"name": "balanced", "config": null, "concurrency": null, "constraint": "context in 8192..32768",
         "why": "no stable configuration meets it", "artefacts": null}
    ]}));
    let md = super::super::doc::markdown(&build(&r), "plots");
    assert!(
        md.contains("| max_context | ctx 65536 · batch 512 · 2 slots | 2 | 41.2 | 1830 | 0.500 |"),
        "{md}"
    );
    assert!(md.contains("| balanced | none | – | – | – | – |"), "{md}");
    assert!(md.contains("### max_context: how to serve it\n\n```\nOLLAMA_NUM_PARALLEL=2\nFROM qwen3:30b-a3b\nPARAMETER num_ctx 65536\n```"), "{md}");
    assert!(!md.contains("balanced: how to serve it"));
}

#[test]
fn a_run_without_summary_or_probes_still_renders() {
    let mut r = run(vec![], &[]);
    r.summary = None;
    r.problems.push("no summary.json: cut".into());
    let d = build(&r);
    let md = super::super::doc::markdown(&d, "plots");
    assert!(md.contains("| probes | 0 in the journal |"), "{md}");
    assert!(md.contains("## Problems reading the run\n\n- no summary.json: cut"));
    assert_eq!(d.plots().count(), 0);
    super::super::doc::html(&d);
}

#[test]
fn statistics_show_the_numbers_the_verdict_used() {
    use crate::optimize::stats::{validate, Criteria};
    let ok = |decode: f64| Observation {
        ok: true,
        ttft_ms: Some(1000.0),
        prefill_tokens_per_s: Some(500.0),
        decode_tokens_per_s: Some(decode),
        cached: false,
    };
    // 4 simultaneous streams: per-request decode CV 0.77, steady rounds, 2 timeouts of 8.
    let mut obs: Vec<Observation> = [4.0, 30.0, 5.0, 1.0, 29.0, 6.0, 30.0, 1.0]
        .into_iter()
        .map(ok)
        .collect();
    obs[3] = Observation::default();
    obs[7] = Observation::default();
    let k = Criteria {
        min_success_rate: 0.85,
        max_cv: 0.5,
        max_timeouts: 2,
    };
    let v = validate(&obs, 2, Some(&[39.0, 40.0]), &k);
    assert!(v.stable && v.decode_tokens_per_s.as_ref().unwrap().cv > 0.7);
    let noisy = validate(&obs, 2, Some(&[10.0, 40.0]), &k);
    let s = json!({"configurations": [
        {"id": "c4096-b64-p4", "stage": "concurrency", "concurrency": 4, "stable": true,
         "outcome": "timeout", "validation": v},
        {"id": "c8192-b64-p4", "stage": "concurrency", "concurrency": 4, "stable": false,
         "outcome": "timeout", "validation": noisy},
        {"id": "c16384-b64-p1", "stage": "validate", "concurrency": 1, "stable": false,
         "outcome": "oom", "error": "out of memory at depth",
         "validation": validate(&obs[3..4], 0, None, &k)},
    ]});
    let mut d = ReportDoc::default();
    statistics(&mut d, &s);
    let Some(super::super::doc::Block::Table(head, rows)) = d.blocks.last() else {
        panic!("no table");
    };
    let col = |name: &str| head.iter().position(|h| h.starts_with(name)).unwrap();
    let (st, su, cv, dec) = (
        col("stable"),
        col("successes"),
        col("CV judged"),
        col("decode tok/s"),
    );
    assert_eq!(rows[0][st], "yes");
    // Successes of the 6 judged, timeouts apart; 6/6 has a Wilson bound of 0.61 < 0.85.
    assert_eq!(rows[0][su], "6/6 + 2 timeouts (≥ 0.61 < min)");
    // The CV shown is the one judged (the rounds'), not the per-request decode CV.
    assert!(
        rows[0][cv] == "round tok/s 0.018 [0.008, 0.571] ≤ 0.50",
        "{}",
        rows[0][cv]
    );
    assert!(rows[1][cv].starts_with("round tok/s 0.849 [") && rows[1][cv].ends_with("> 0.50"));
    assert!(rows[1][st].starts_with("no (aggregate decode throughput per round varies"));
    // A probe that failed says how, before the statistics' reasons.
    assert_eq!(
        rows[2][st],
        "no (oom: out of memory at depth; all 1 requests failed)"
    );
    assert_eq!(
        (rows[2][su].as_str(), rows[2][cv].as_str()),
        ("0/1 (≥ 0.00 < min)", "–")
    );
    // A geometric mean with a positive interval, though the spread is wide.
    let low: f64 = rows[0][dec]
        .split(['[', ','])
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(low > 0.0, "{}", rows[0][dec]);
}

/// summary.json's `predictions` (what o3 predicted for each probe, beside what it measured)
/// becomes a section: the running error in words, then one row per probe.
#[test]
fn predictions_are_set_beside_their_measurements() {
    let mut r = search_run();
    r.summary.as_mut().unwrap()["predictions"] = json!({
        "predictions": 2,
        "summary": "last 2 predictions: memory median error +1.0 %, worst −3.0 % (2 of 2 peaks in the predicted range); P(success) Brier score 0.010",
        "rows": [
            {"predicted": {"place": "ram", "peak_bytes": 103_000_000u64, "peak_low_bytes": 98_000_000u64,
                           "peak_high_bytes": 110_000_000u64, "fitted_points": 5, "p_success": 0.93,
                           "prefill_tokens_per_s": 800.0, "decode_tokens_per_s": 80.0, "basis": "cold start: memory model only"},
             "stage": "context", "config": {"ctx": 4096, "batch": 64}, "concurrency": 1, "success": true,
             "measured_peak_bytes": 100_000_000u64, "prefill_tokens_per_s": 850.0, "decode_tokens_per_s": 84.0, "unix_s": 1}
        ]
    });
    let md = super::super::doc::markdown(&build(&r), "plots");
    assert!(md.contains("## Predictions against measurements"), "{md}");
    assert!(
        md.contains(
            "from everything stored before it: last 2 predictions: memory median error +1.0 %"
        ),
        "{md}"
    );
    assert!(
        md.contains("| context | ctx 4096 · batch 64 | 98.2 MiB (93.5 MiB – 104.9 MiB) | 95.4 MiB | +3.0 % | 0.93 | ok | 80 / 84 |"),
        "{md}"
    );
    // No predictions, no section.
    let md = super::super::doc::markdown(&build(&search_run()), "plots");
    assert!(!md.contains("Predictions against measurements"), "{md}");
}

#[test]
fn variants_are_drawn_by_their_largest_context_against_their_decode_rate() {
    let mut r = search_run();
    let v = |label: &str,
             max: Option<u32>,
             decode: Option<f64>,
             roles: &[&str],
             skipped: Option<&str>| {
        json!({"label": label, "config": {"ctx": 0}, "predicted_max": max, "max_loads": max,
               "search_probes": 2, "rate_ctx": 51200, "rate_tokens": 2048,
               "prefill_tokens_per_s": decode.map(|d| d * 3.0), "decode_tokens_per_s": decode,
               "request_s": decode.map(|d| 2048.0 / (d * 3.0) + 64.0 / d),
               "roles": roles, "skipped": skipped})
    };
    r.summary.as_mut().unwrap()["variants"] = json!([
        v(
            "kv f16 · fa on · ub default",
            Some(51200),
            Some(4.8),
            &["fastest"],
            None
        ),
        v(
            "kv q8_0 · fa on · ub default",
            Some(97280),
            Some(5.3),
            &[],
            None
        ),
        v(
            "kv q4_0 · fa on · ub default",
            Some(131072),
            Some(5.3),
            &["longest"],
            None
        ),
        v(
            "kv q4_0 · fa off · ub default",
            None,
            None,
            &[],
            Some("cut by the budget: …")
        ),
    ]);
    let d = build(&r);
    let ch = chart(&d, "variants");
    assert_eq!(
        points(series(ch, "longest (proven at depth)")),
        [(131072.0, 5.3)]
    );
    assert_eq!(
        points(series(ch, "fastest (proven at the presets' contexts)")),
        [(51200.0, 4.8)]
    );
    assert_eq!(points(series(ch, "ranked")), [(97280.0, 5.3)]);
    assert_eq!(
        series(ch, "ranked").labels[0].2,
        "kv q8_0 · fa on · ub default"
    );
    let md = super::super::doc::markdown(&d, "plots");
    assert!(md.contains("## Variants"), "{md}");
    assert!(
        md.contains("ranked at ctx 51200 with fresh 2048-token prompts"),
        "{md}"
    );
    assert!(
        md.contains(
            "| kv q4_0 · fa off · ub default | – | – | 2 | – | – | – | cut by the budget: … |"
        ),
        "{md}"
    );
    // No variants, no section.
    let md = super::super::doc::markdown(&build(&search_run()), "plots");
    assert!(!md.contains("## Variants"), "{md}");
}
