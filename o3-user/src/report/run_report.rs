//! The report on one `o3 optimize` run: what was searched and found, the presets with their
//! artefacts, the statistics per configuration, what learning reused or predicted, and the
//! resources over time. Pure: a `Run` in, a `ReportDoc` out.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::optimize::journal::Entry;
use crate::optimize::prober::Stage;
use crate::optimize::stats::Observation;
use crate::util::order::{median, nearest_rank};
use crate::util::units::{bytes, utc};

use super::doc::ReportDoc;
use super::plot::{self, Chart, Marker, Rule, Series, Style};
use super::read::tree_cpu_percent;
use super::run::Run;

/// Nearest-rank 95th percentile.
fn p95(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(nearest_rank(&v, 95.0))
}

fn f1(v: Option<f64>) -> String {
    v.map_or("–".into(), |x| format!("{x:.1}"))
}

fn f0(v: Option<f64>) -> String {
    v.map_or("–".into(), |x| format!("{x:.0}"))
}

fn opt_bytes(v: Option<u64>) -> String {
    v.map_or("–".into(), bytes)
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "–".into(),
        other => other.to_string(),
    }
}

/// `ctx 4096 · batch 128 · 2 slots` of a serialised `ProbeConfig`.
fn describe(c: &Value) -> String {
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
        if !c[k].is_null() {
            s.push_str(&format!(" · {label} {}", str_of(&c[k])));
        }
    }
    s
}

/// One metric of a probe's successful requests.
fn of(e: &Entry, pick: fn(&Observation) -> Option<f64>) -> Vec<f64> {
    e.outcome
        .observations
        .iter()
        .filter(|o| o.ok)
        .filter_map(pick)
        .collect()
}

fn decode_of(e: &Entry) -> Vec<f64> {
    of(e, |o| o.decode_tokens_per_s)
}

fn prefill_of(e: &Entry) -> Vec<f64> {
    of(e, |o| o.prefill_tokens_per_s)
}

fn ttft_of(e: &Entry) -> Vec<f64> {
    of(e, |o| o.ttft_ms)
}

/// Builds the report.
pub fn build(run: &Run) -> ReportDoc {
    let s = run.summary.as_ref().unwrap_or(&Value::Null);
    let r = &run.run;
    let model = r["target"]["model"].as_str().unwrap_or("?");
    let model_name = model.rsplit('/').next().unwrap_or(model);
    let mut d = ReportDoc {
        title: format!("o3 optimize report: {model_name}"),
        ..ReportDoc::default()
    };
    overview(&mut d, run, s);
    time(&mut d, s);
    presets(&mut d, s);
    context(&mut d, run, s);
    batch(&mut d, run);
    concurrency(&mut d, run);
    resources(&mut d, run, s);
    statistics(&mut d, s);
    learning(&mut d, run, s);
    notes(&mut d, run, s);
    d
}

fn overview(d: &mut ReportDoc, run: &Run, s: &Value) {
    let r = &run.run;
    let t = &r["target"];
    let host = &r["host"];
    let started = r["created_unix_ns"].as_u64().unwrap_or(0) / 1_000_000_000;
    let mut rows = vec![
        vec!["model".into(), str_of(&t["model"])],
        vec!["server".into(), str_of(&t["backend"])],
        vec![
            "host".into(),
            format!(
                "{} ({} cores), {} RAM, kernel {}",
                str_of(&host["cpu_model"]),
                str_of(&host["cpu_cores"]),
                host["ram_bytes"].as_u64().map_or("?".into(), bytes),
                str_of(&host["kernel"])
            ),
        ],
        vec![
            "GPUs".into(),
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
            },
        ],
        vec!["started".into(), format!("{} UTC", utc(started))],
        vec!["o3".into(), str_of(&r["o3_version"])],
        vec!["run directory".into(), run.dir.display().to_string()],
    ];
    if let Some(v) = r["server_version"].as_str() {
        rows.push(vec!["server version".into(), v.to_string()]);
    }
    if !s.is_null() {
        let p = &s["probes"];
        rows.push(vec![
            "probes".into(),
            format!(
                "{} ({} run in this session, {} answered from the journal); context search {} of at most {}",
                str_of(&p["total"]),
                str_of(&p["ran_now"]),
                str_of(&p["from_journal"]),
                str_of(&p["context_search"]),
                str_of(&p["context_search_bound"])
            ),
        ]);
        rows.push(vec![
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
        ]);
        if s["simulated"].as_bool() == Some(true) {
            rows.push(vec![
                "simulated".into(),
                "yes: the probes were answered by a simulator, not a server".into(),
            ]);
        }
    } else {
        rows.push(vec![
            "probes".into(),
            format!("{} in the journal", run.probes.len()),
        ]);
    }
    d.h2("Run");
    d.table(&["", ""], rows);
}

/// The plan against what it cost: the prediction at the start, the time spent, the floor and the
/// run in floor units, the budget and what it cut, the time model.
fn time(d: &mut ReportDoc, s: &Value) {
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

fn presets(d: &mut ReportDoc, s: &Value) {
    let Some(ps) = s["presets"].as_array() else {
        return;
    };
    d.h2("Presets");
    d.para("Chosen among the configurations that passed validation; each row says why.");
    let rows = ps
        .iter()
        .map(|p| {
            vec![
                str_of(&p["name"]),
                if p["config"].is_null() {
                    "none".into()
                } else {
                    describe(&p["config"])
                },
                str_of(&p["concurrency"]),
                f1(p["output_tokens_per_s"].as_f64()),
                f0(p["ttft_p95_ms"].as_f64()),
                p["score"]
                    .as_f64()
                    .map_or("–".into(), |x| format!("{x:.3}")),
                str_of(&p["constraint"]),
                str_of(&p["why"]),
            ]
        })
        .collect();
    d.table(
        &[
            "preset",
            "configuration",
            "streams",
            "decode tok/s",
            "TTFT p95 ms",
            "score",
            "constraint",
            "why",
        ],
        rows,
    );
    for p in ps {
        let a = &p["artefacts"];
        if a.is_null() {
            continue;
        }
        let mut text = String::new();
        if let Some(env) = a["server_env"].as_array().filter(|e| !e.is_empty()) {
            for e in env {
                text.push_str(&format!("{}\n", str_of(e)));
            }
        }
        if let Some(m) = a["modelfile"].as_str() {
            text.push_str(m.trim_end());
            text.push('\n');
        }
        if let Some(c) = a["command_line"].as_str() {
            text.push_str(c);
            text.push('\n');
        }
        if !text.is_empty() {
            d.h3(format!("{}: how to serve it", str_of(&p["name"])));
            d.code(text.trim_end());
        }
    }
}

fn context(d: &mut ReportDoc, run: &Run, s: &Value) {
    let c = &s["context"];
    d.h2("Context search");
    if !c.is_null() {
        d.para(format!(
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
        ));
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
        if !depth.is_empty() {
            d.para(depth.trim().to_string());
        }
    }
    // Single-stream probes outside the batch stage: context is the variable.
    let single: Vec<&Entry> = run
        .probes
        .iter()
        .filter(|e| e.request.concurrency == 1 && e.request.stage != Stage::Batch)
        .filter(|e| e.request.stage != Stage::Concurrency)
        .collect();
    let by_ctx = |f: &dyn Fn(&Entry) -> Vec<f64>| -> BTreeMap<u32, Vec<f64>> {
        let mut m: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
        for e in &single {
            let v = f(e);
            if !v.is_empty() {
                m.entry(e.request.config.ctx).or_default().extend(v);
            }
        }
        m
    };
    let decode = by_ctx(&decode_of);
    let path: Vec<&Entry> = run
        .probes
        .iter()
        .filter(|e| e.request.stage == Stage::Context)
        .collect();

    let mut rates = Chart::new(
        "Decode rate by context, and the search path",
        "context (tokens)",
        "decode tokens/s",
    );
    rates.add(
        Series::new("decode (median)", plot::BLUE, Style::LinePoints).points(
            decode
                .iter()
                .filter_map(|(c, v)| Some((f64::from(*c), median(v.clone())?)))
                .collect(),
        ),
    );
    let mut trail = Series::new("search path (probe order)", plot::GREY, Style::Dashed);
    let mut pts = Vec::new();
    let mut failed = Series::new("failed probe", plot::RED, Style::Points).marker(Marker::Cross);
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
    trail = trail.points(pts);
    failed = failed.points(fails);
    rates.add(trail);
    rates.add(failed);
    if let Some(v) = c["validated"].as_f64() {
        rates.vrules.push(Rule {
            label: format!("validated {v:.0}"),
            at: v,
            color: plot::GREEN,
        });
    }
    d.plot("context-decode", rates);

    let prefill = by_ctx(&prefill_of);
    let mut pf = Chart::new(
        "Prefill rate by context",
        "context (tokens)",
        "prefill tokens/s",
    );
    pf.add(
        Series::new("prefill (median)", plot::ORANGE, Style::LinePoints).points(
            prefill
                .iter()
                .filter_map(|(c, v)| Some((f64::from(*c), median(v.clone())?)))
                .collect(),
        ),
    );
    d.plot("context-prefill", pf);

    let ttft = by_ctx(&ttft_of);
    let mut tt = Chart::new(
        "Time to first token by context",
        "context (tokens)",
        "TTFT (ms)",
    );
    tt.add(
        Series::new("median", plot::BLUE, Style::LinePoints).points(
            ttft.iter()
                .filter_map(|(c, v)| Some((f64::from(*c), median(v.clone())?)))
                .collect(),
        ),
    );
    tt.add(
        Series::new("p95", plot::PURPLE, Style::LinePoints).points(
            ttft.iter()
                .filter_map(|(c, v)| Some((f64::from(*c), p95(v.clone())?)))
                .collect(),
        ),
    );
    d.plot("context-ttft", tt);

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
            path.iter()
                .enumerate()
                .map(|(i, e)| {
                    vec![
                        (i + 1).to_string(),
                        e.request.config.ctx.to_string(),
                        if e.outcome.passed() {
                            "passed".into()
                        } else {
                            format!("failed ({})", e.outcome.outcome.name())
                        },
                        e.outcome
                            .prompt_tokens
                            .map_or("–".into(), |p| p.to_string()),
                        f1(median(decode_of(e))),
                        e.outcome.error.clone().unwrap_or_default(),
                    ]
                })
                .collect(),
        );
    }
}

/// Probes of `stages` grouped by context, in probe order.
fn by_context<'a>(run: &'a Run, stages: &[Stage]) -> BTreeMap<u32, Vec<&'a Entry>> {
    let mut m: BTreeMap<u32, Vec<&Entry>> = BTreeMap::new();
    for e in &run.probes {
        if stages.contains(&e.request.stage) {
            m.entry(e.request.config.ctx).or_default().push(e);
        }
    }
    m
}

fn batch(d: &mut ReportDoc, run: &Run) {
    let groups = by_context(run, &[Stage::Batch]);
    if groups.is_empty() {
        return;
    }
    d.h2("Batch size");
    d.para("Batch ranking at the largest context that loads, with fresh prompts of a moderate depth (batch.rank_tokens, each read whole): the batch doubles until a probe fails (it does not load there), turns unstable or gains under the configured minimum; the winner serves every later stage.");
    let mut ch = Chart::new(
        "Prefill rate by batch size",
        "batch (tokens)",
        "prefill tokens/s",
    );
    ch.x_log2 = true;
    let mut fails = Vec::new();
    let mut rows = Vec::new();
    for (i, (ctx, es)) in groups.iter().enumerate() {
        // The validated configuration at this context is the batch curve's first point.
        let base = run.probes.iter().filter(|e| {
            e.request.stage == Stage::Validate
                && e.request.config.ctx == *ctx
                && e.request.concurrency == 1
                && e.outcome.passed()
        });
        let mut pts = Vec::new();
        for e in base.chain(es.iter().copied()) {
            let Some(b) = e.request.config.batch else {
                continue;
            };
            let x = f64::from(b).log2();
            if e.outcome.passed() {
                if let Some(y) = median(prefill_of(e)) {
                    pts.push((x, y));
                }
            } else {
                fails.push((x, 0.0));
            }
            rows.push(vec![
                ctx.to_string(),
                b.to_string(),
                e.request.stage.name().into(),
                if e.outcome.passed() {
                    "passed".into()
                } else {
                    format!("failed ({})", e.outcome.outcome.name())
                },
                f0(median(prefill_of(e))),
                f1(median(decode_of(e))),
                f0(median(ttft_of(e))),
            ]);
        }
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        pts.dedup_by(|a, b| a.0 == b.0);
        ch.add(
            Series::new(
                format!("ctx {ctx}"),
                plot::PALETTE[i % plot::PALETTE.len()],
                Style::LinePoints,
            )
            .points(pts),
        );
    }
    ch.add(
        Series::new("failed", plot::RED, Style::Points)
            .marker(Marker::Cross)
            .points(fails),
    );
    d.plot("batch", ch);
    d.table(
        &[
            "context",
            "batch",
            "stage",
            "result",
            "prefill tok/s",
            "decode tok/s",
            "TTFT ms",
        ],
        rows,
    );
}

fn concurrency(d: &mut ReportDoc, run: &Run) {
    let groups = by_context(run, &[Stage::Concurrency]);
    if groups.is_empty() {
        return;
    }
    d.h2("Concurrency");
    d.para("Each level restarts the server with that many slots and sends that many streams at once; throughput is the streams' decode rates summed per round.");
    let mut thr = Chart::new(
        "Aggregate decode throughput by streams",
        "simultaneous streams",
        "tokens/s (all streams)",
    );
    let mut lat = Chart::new(
        "TTFT p95 by streams",
        "simultaneous streams",
        "TTFT p95 (ms)",
    );
    let mut fails = Vec::new();
    let mut rows = Vec::new();
    for (i, (ctx, es)) in groups.iter().enumerate() {
        let color = plot::PALETTE[i % plot::PALETTE.len()];
        let (mut t, mut l) = (Vec::new(), Vec::new());
        for e in es {
            let x = f64::from(e.request.concurrency);
            let agg = median(e.outcome.round_tokens_per_s.clone());
            let tp95 = p95(ttft_of(e));
            if e.outcome.passed() {
                if let Some(y) = agg {
                    t.push((x, y));
                }
                if let Some(y) = tp95 {
                    l.push((x, y));
                }
            } else {
                fails.push((x, 0.0));
            }
            rows.push(vec![
                ctx.to_string(),
                e.request.concurrency.to_string(),
                if e.outcome.passed() {
                    "passed".into()
                } else {
                    format!("failed ({})", e.outcome.outcome.name())
                },
                f1(agg),
                f0(tp95),
                e.outcome.timeouts.to_string(),
            ]);
        }
        t.sort_by(|a, b| a.0.total_cmp(&b.0));
        l.sort_by(|a, b| a.0.total_cmp(&b.0));
        thr.add(Series::new(format!("ctx {ctx}"), color, Style::LinePoints).points(t));
        lat.add(Series::new(format!("ctx {ctx}"), color, Style::LinePoints).points(l));
    }
    thr.add(
        Series::new("failed", plot::RED, Style::Points)
            .marker(Marker::Cross)
            .points(fails),
    );
    d.plot("concurrency-throughput", thr);
    d.plot("concurrency-ttft", lat);
    d.table(
        &[
            "context",
            "streams",
            "result",
            "tok/s (all streams)",
            "TTFT p95 ms",
            "timeouts",
        ],
        rows,
    );
}

/// Bytes as the unit that suits the largest value.
fn byte_unit(max: f64) -> (f64, &'static str) {
    if max >= 2.0 * (1u64 << 30) as f64 {
        ((1u64 << 30) as f64, "GiB")
    } else {
        ((1u64 << 20) as f64, "MiB")
    }
}

const MAX_POINTS: usize = 600;

fn resources(d: &mut ReportDoc, run: &Run, s: &Value) {
    let peaks = &s["peaks"];
    if run.traces.is_empty() && peaks.is_null() {
        return;
    }
    d.h2("Resources");
    if !peaks.is_null() {
        d.table(
            &[
                "server RSS peak",
                "measured by",
                "system RAM used peak",
                "GPU memory peak",
            ],
            vec![vec![
                opt_bytes(peaks["rss_peak_bytes"].as_u64()),
                match peaks["rss_method"].as_str() {
                    Some("ebpf") => "eBPF (exact)".into(),
                    Some("procfs_polling") => "procfs polling (sampled)".into(),
                    other => other.unwrap_or("–").to_string(),
                },
                opt_bytes(peaks["mem_used_peak_bytes"].as_u64()),
                opt_bytes(peaks["gpu_used_peak_bytes"].as_u64()),
            ]],
        );
    }
    if run.traces.is_empty() {
        d.para("No per-probe traces in this run directory (a simulated run has none, nor has a run written before o3 kept them), so no timelines.");
        return;
    }
    d.para(format!(
        "Every sample of the server's process tree during the {} probes (traces/), on one time line; gaps are the time between probes. Dashed lines are the safety thresholds of the run's configuration.",
        run.traces.len()
    ));
    let safety = &run.run["config"]["safety"];
    let t0 = run.traces[0].start_unix_ns();
    let at = |tr: &super::run::ProbeTrace, t_ns: u64| {
        (tr.start_unix_ns().saturating_sub(t0) + t_ns) as f64 / 1e9
    };

    // Memory: the server's own tree on its scale, the whole system against the threshold.
    let mut mem_total = None;
    let mut rss_max = 0f64;
    for tr in &run.traces {
        for x in &tr.trace.samples {
            rss_max = rss_max.max(x.rss_peak_bytes.or(x.rss_bytes).unwrap_or(0) as f64);
            mem_total = mem_total.or(x.mem_total_bytes);
        }
    }
    let series_of = |name: &str,
                     color: plot::Rgb,
                     div: f64,
                     f: &dyn Fn(&super::read::SampleRec) -> Option<u64>| {
        let mut s = Series::new(name, color, Style::Line);
        for tr in &run.traces {
            s = s.points(plot::thin(
                &tr.trace
                    .samples
                    .iter()
                    .filter_map(|x| Some((at(tr, x.t_ns), f(x)? as f64 / div)))
                    .collect::<Vec<_>>(),
                MAX_POINTS,
            ));
        }
        s
    };
    let probe_starts = |y: f64| {
        let mut starts = Series::new("probe start (number)", plot::GREY, Style::Points);
        for (i, tr) in run.traces.iter().enumerate() {
            if let Some(first) = tr.trace.samples.first() {
                let x = at(tr, first.t_ns);
                starts = starts.points(vec![(x, y)]);
                starts.labels.push((x, y, format!("{}", i + 1)));
            }
        }
        starts
    };
    // The exact running peak (eBPF) with its instant; else the largest sample.
    let mut best_rss: Option<(f64, u64, bool)> = None;
    let mut best_used: Option<(f64, u64)> = None;
    for tr in &run.traces {
        for x in &tr.trace.samples {
            let cand = match (x.rss_peak_bytes, x.rss_peak_t_ns) {
                (Some(p), Some(t)) => Some((at(tr, t), p, true)),
                _ => x.rss_bytes.map(|p| (at(tr, x.t_ns), p, false)),
            };
            if let Some(c) = cand {
                if best_rss.is_none_or(|(_, b, _)| c.1 > b) {
                    best_rss = Some(c);
                }
            }
            if let Some(u) = x.mem_used_bytes {
                if best_used.is_none_or(|(_, b)| u > b) {
                    best_used = Some((at(tr, x.t_ns), u));
                }
            }
        }
    }
    let (div, unit) = byte_unit(rss_max);
    let mut own = Chart::new(
        "Server memory (RSS of its process tree)",
        "time since the first probe (s)",
        &format!("RSS ({unit})"),
    );
    own.add(series_of("server RSS", plot::BLUE, div, &|x| x.rss_bytes));
    own.add(probe_starts(0.0));
    if let Some((x, b, exact)) = best_rss {
        let y = b as f64 / div;
        let mut pk = Series::new("peak", plot::RED, Style::Points)
            .marker(Marker::Triangle)
            .points(vec![(x, y)]);
        pk.labels.push((
            x,
            y,
            format!(
                " peak {} at {x:.1} s{}",
                bytes(b),
                if exact { " (exact)" } else { " (sampled)" }
            ),
        ));
        own.add(pk);
    }
    d.plot("memory-server", own);

    let ram_limit = match (safety["max_ram_percent"].as_f64(), mem_total) {
        (Some(p), Some(t)) => Some((p, t as f64 * p / 100.0)),
        _ => None,
    };
    let used_max = best_used.map_or(0.0, |(_, b)| b as f64);
    let (div, unit) = byte_unit(used_max.max(ram_limit.map_or(0.0, |(_, l)| l)));
    let mut sys = Chart::new(
        "System RAM in use",
        "time since the first probe (s)",
        &format!("RAM used ({unit})"),
    );
    sys.add(series_of("system RAM used", plot::ORANGE, div, &|x| {
        x.mem_used_bytes
    }));
    sys.add(probe_starts(0.0));
    if let Some((x, b)) = best_used {
        let y = b as f64 / div;
        let mut pk = Series::new("peak", plot::RED, Style::Points)
            .marker(Marker::Triangle)
            .points(vec![(x, y)]);
        pk.labels
            .push((x, y, format!(" peak {} at {x:.1} s", bytes(b))));
        sys.add(pk);
    }
    if let Some((p, l)) = ram_limit {
        sys.hrules.push(Rule {
            label: format!("RAM safety limit {p:.0} % ({})", bytes(l as u64)),
            at: l / div,
            color: plot::RED,
        });
    }
    d.plot("memory-system", sys);

    // CPU, in % of all cores (the unit of the safety threshold).
    let cores = run.run["host"]["cpu_cores"]
        .as_f64()
        .unwrap_or(1.0)
        .max(1.0);
    let mut cpu = Chart::new(
        "CPU over the run",
        "time since the first probe (s)",
        "% of all cores",
    );
    let mut tree = Series::new("server process tree", plot::BLUE, Style::Line);
    let mut system = Series::new("whole system", plot::ORANGE, Style::Line);
    for tr in &run.traces {
        // Rates over ≥ 100 ms: a 10 ms tick holds a scheduler slice or none.
        let mut pts = Vec::new();
        let mut prev: Option<&super::read::SampleRec> = None;
        for x in &tr.trace.samples {
            match prev {
                Some(p) if x.t_ns.saturating_sub(p.t_ns) >= 100_000_000 => {
                    if let Some(c) = tree_cpu_percent(p, x) {
                        pts.push((at(tr, x.t_ns), c / cores));
                    }
                    prev = Some(x);
                }
                None => prev = Some(x),
                _ => {}
            }
        }
        tree = tree.points(pts);
        // The system figure is per tick too: averaged over the same 100 ms windows.
        let mut win: BTreeMap<u64, (f64, f64, u32)> = BTreeMap::new();
        for x in &tr.trace.samples {
            if let Some(c) = x.system_cpu_percent {
                let w = win.entry(x.t_ns / 100_000_000).or_insert((0.0, 0.0, 0));
                *w = (at(tr, x.t_ns), w.1 + c, w.2 + 1);
            }
        }
        system = system.points(
            win.values()
                .map(|(t, sum, n)| (*t, sum / f64::from(*n)))
                .collect(),
        );
    }
    cpu.add(tree);
    cpu.add(system);
    if let Some(p) = safety["max_cpu_percent"].as_f64() {
        cpu.hrules.push(Rule {
            label: format!("CPU safety limit {p:.0} %"),
            at: p,
            color: plot::RED,
        });
    }
    d.plot("cpu", cpu);

    gpu(d, run, safety, &at);
}

fn gpu(d: &mut ReportDoc, run: &Run, safety: &Value, at: &dyn Fn(&super::run::ProbeTrace, u64) -> f64) {
    let mut idx: Vec<u32> = run
        .traces
        .iter()
        .flat_map(|t| t.trace.gpu_indices())
        .collect();
    idx.sort_unstable();
    idx.dedup();
    if idx.is_empty() {
        return;
    }
    let mut max_b = 0f64;
    let mut totals: BTreeMap<u32, f64> = BTreeMap::new();
    for tr in &run.traces {
        for x in &tr.trace.samples {
            for g in &x.gpus {
                max_b = max_b.max(g.num("usable_used_bytes").unwrap_or(0.0));
                if let Some(t) = g.num("usable_total_bytes") {
                    totals.insert(g.index, t);
                }
            }
        }
    }
    let vram_p = safety["max_vram_percent"].as_f64();
    if let Some(p) = vram_p {
        for t in totals.values() {
            max_b = max_b.max(t * p / 100.0);
        }
    }
    let (div, unit) = byte_unit(max_b);
    let mut mem = Chart::new(
        "GPU memory over the run (usable: VRAM, or GTT on an APU)",
        "time since the first probe (s)",
        &format!("GPU memory ({unit})"),
    );
    let mut temp = Chart::new(
        "GPU temperature over the run",
        "time since the first probe (s)",
        "°C",
    );
    for (k, i) in idx.iter().enumerate() {
        let color = plot::PALETTE[k % plot::PALETTE.len()];
        let mut used = Series::new(format!("GPU {i} used"), color, Style::Line);
        let mut hot = Series::new(format!("GPU {i} hottest sensor"), color, Style::Line);
        let mut best: Option<(f64, f64)> = None;
        for tr in &run.traces {
            let mut u = Vec::new();
            let mut h = Vec::new();
            for x in &tr.trace.samples {
                for g in x.gpus.iter().filter(|g| g.index == *i) {
                    let t = at(tr, x.t_ns);
                    if let Some(b) = g.num("usable_used_bytes") {
                        u.push((t, b / div));
                        if best.is_none_or(|(_, v)| b > v) {
                            best = Some((t, b));
                        }
                    }
                    let hottest = ["temp_edge_c", "temp_junction_c", "temp_mem_c"]
                        .iter()
                        .filter_map(|k| g.num(k))
                        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
                    if let Some(c) = hottest {
                        h.push((t, c));
                    }
                }
            }
            used = used.points(plot::thin(&u, MAX_POINTS));
            hot = hot.points(plot::thin(&h, MAX_POINTS));
        }
        mem.add(used);
        temp.add(hot);
        if let Some((x, b)) = best {
            let mut pk = Series::new(format!("GPU {i} peak"), plot::RED, Style::Points)
                .marker(Marker::Triangle)
                .points(vec![(x, b / div)]);
            pk.labels
                .push((x, b / div, format!(" peak {} at {x:.1} s", bytes(b as u64))));
            mem.add(pk);
        }
        if let (Some(p), Some(t)) = (vram_p, totals.get(i)) {
            mem.hrules.push(Rule {
                label: format!(
                    "GPU {i} safety limit {p:.0} % ({})",
                    bytes((t * p / 100.0) as u64)
                ),
                at: t * p / 100.0 / div,
                color: plot::RED,
            });
        }
    }
    if let Some(c) = safety["max_temperature_c"].as_f64() {
        temp.hrules.push(Rule {
            label: format!("temperature limit {c:.0} °C"),
            at: c,
            color: plot::RED,
        });
    }
    d.plot("gpu-memory", mem);
    d.plot("gpu-temperature", temp);
}

fn statistics(d: &mut ReportDoc, s: &Value) {
    let Some(cs) = s["configurations"].as_array().filter(|c| !c.is_empty()) else {
        return;
    };
    d.h2("Statistics per configuration");
    d.para("n requests per configuration. Stable means: at least one success, timeouts within concurrency.max_timeouts (none for one stream), success rate ≥ validation.min_success_rate over the requests that did not time out, and every CV judged ≤ validation.max_cv: TTFT and decode rate for one stream, the aggregate throughput of each round for simultaneous streams. The success column gives successes of the requests judged, timeouts apart, and the Wilson 95 % lower bound of the rate (reported, not deciding; marked \"< min\" where n is too small to show the minimum). Rates are geometric means with 95 % intervals from Student's t on the logarithms (never below 0), after MAD outlier removal; CVs (stddev / mean) carry Vangel's 95 % interval. TTFT of the requests that read their whole prompt (the fill) and of those that reused the filled prefix are apart; prompt tokens say whether the configuration's context was proven filled to depth.");
    let ci = |m: &Value| -> String {
        if m.is_null() {
            return "–".into();
        }
        match (
            m["gmean"].as_f64(),
            m["gmean_ci95_low"].as_f64(),
            m["gmean_ci95_high"].as_f64(),
        ) {
            (Some(g), Some(lo), Some(hi)) => format!("{g:.1} [{lo:.1}, {hi:.1}]"),
            (Some(g), _, _) => format!("{g:.1}"),
            // A summary of an earlier version (arithmetic mean only), or values ≤ 0.
            _ => f1(m["mean"].as_f64()),
        }
    };
    let rows = cs
        .iter()
        .map(|c| {
            let v = &c["validation"];
            let dec = &v["decode_tokens_per_s"];
            let failed_probe = !matches!(c["outcome"].as_str(), Some("ok" | "timeout") | None);
            vec![
                str_of(&c["id"]),
                str_of(&c["stage"]),
                str_of(&c["concurrency"]),
                if c["stable"].as_bool() == Some(true) {
                    "yes".into()
                } else {
                    let mut why: Vec<String> = v["reasons"]
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
                },
                successes_cell(v),
                ci(dec),
                cv_checks_cell(v),
                ci(&v["prefill_tokens_per_s"]),
                format!(
                    "{} / {}",
                    f0(c["ttft_p50_ms"].as_f64()),
                    f0(c["ttft_p95_ms"].as_f64())
                ),
                f0(c["cached_ttft_p50_ms"].as_f64()),
                match (c["depth"]["kind"].as_str(), c["proven_at_depth"].as_bool()) {
                    (Some("filled"), Some(true)) => {
                        format!("{} (proven)", str_of(&c["prompt_tokens"]))
                    }
                    (Some("filled"), _) => {
                        format!("{} (NOT proven at depth)", str_of(&c["prompt_tokens"]))
                    }
                    (Some(k), _) => format!("{} ({k})", str_of(&c["prompt_tokens"])),
                    _ => str_of(&c["prompt_tokens"]),
                },
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
        })
        .collect();
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
        rows,
    );
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

fn learning(d: &mut ReportDoc, run: &Run, s: &Value) {
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

fn notes(d: &mut ReportDoc, run: &Run, s: &Value) {
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

#[cfg(test)]
mod tests {
    //! Runs built in memory, so the truth of every plotted point is known.

    use std::path::Path;

    use serde_json::json;

    use super::*;
    use crate::backend::{OutcomeClass, ProbeConfig};
    use crate::optimize::prober::{ProbeOutcome, ProbeRequest};
    use crate::optimize::stats::Observation;
    use crate::report::run::ProbeTrace;

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
                    trace: crate::report::read_file(&dir.join(format!("{t}.jsonl"))).unwrap(),
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
        // Aggregate = median over rounds of the streams' summed rates: 2 × {60, 64} → 124.
        assert_eq!(points(series(t, "ctx 6144")), vec![(2.0, 124.0)]);
        assert_eq!(points(series(t, "failed")), vec![(4.0, 0.0)]);
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
        let (div, _) = byte_unit(total * 0.85);
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
            md.contains(
                "| max_context | ctx 65536 · batch 512 · 2 slots | 2 | 41.2 | 1830 | 0.500 |"
            ),
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
}
