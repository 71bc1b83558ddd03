//! The sweeps after the context search: batch size at each context, then simultaneous streams.
//! Each draws one curve per context with the failed probes marked, and lists every probe.

use crate::optimize::journal::Entry;
use crate::optimize::prober::Stage;
use crate::report::plot::{self, Chart, Marker, Series, Style};
use crate::util::order::median;

use super::cells::{f0, f1, judged};
use super::metrics::{by_context, decode_of, p95, prefill_of, stable, ttft_of};
use super::{ReportDoc, Run};

/// What one context's probes of a sweep add: its curves' points, its failed probes (at 0) and
/// its table rows.
#[derive(Default)]
struct Sweep {
    /// One list of points per curve.
    curves: [Vec<(f64, f64)>; 2],
    fails: Vec<(f64, f64)>,
    rows: Vec<Vec<String>>,
}

/// A red cross at 0 for each failed probe.
fn failed_series(fails: Vec<(f64, f64)>) -> Series {
    Series::new("failed", plot::RED, Style::Points)
        .marker(Marker::Cross)
        .points(fails)
}

pub(super) fn batch(d: &mut ReportDoc, run: &Run) {
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
        let sw = batch_sweep(run, *ctx, base.chain(es.iter().copied()));
        fails.extend(sw.fails);
        rows.extend(sw.rows);
        let [mut pts, _] = sw.curves;
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
    ch.add(failed_series(fails));
    d.plot_listed("batch", ch);
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

/// The probes of one context by batch size (log2 on the curve): prefill median where passed.
fn batch_sweep<'a>(run: &Run, ctx: u32, probes: impl Iterator<Item = &'a Entry>) -> Sweep {
    let mut sw = Sweep::default();
    for e in probes {
        let Some(b) = e.request.config.batch else {
            continue;
        };
        let x = f64::from(b).log2();
        if e.outcome.passed() {
            if let Some(y) = median(prefill_of(e)) {
                sw.curves[0].push((x, y));
            }
        } else {
            sw.fails.push((x, 0.0));
        }
        sw.rows.push(vec![
            ctx.to_string(),
            b.to_string(),
            e.request.stage.name().into(),
            judged(e, stable(run, e)),
            f0(median(prefill_of(e))),
            f1(median(decode_of(e))),
            f0(median(ttft_of(e))),
        ]);
    }
    sw
}

pub(super) fn concurrency(d: &mut ReportDoc, run: &Run) {
    let groups = by_context(run, &[Stage::Concurrency]);
    if groups.is_empty() {
        return;
    }
    d.h2("Concurrency");
    d.para("Each level restarts the server with that many slots and sends that many streams at once; throughput is the streams' decode rates summed per round. One stream is the context's validation (its proof, filled to the same depth), each curve's first point.");
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
    thr.x_count = true;
    lat.x_count = true;
    let mut fails = Vec::new();
    let mut rows = Vec::new();
    for (i, (ctx, es)) in groups.iter().enumerate() {
        let color = plot::PALETTE[i % plot::PALETTE.len()];
        let single = single_stream(run, *ctx, es);
        let sw = concurrency_sweep(run, *ctx, single.iter().chain(es.iter()).copied());
        fails.extend(sw.fails);
        rows.extend(sw.rows);
        let [mut t, mut l] = sw.curves;
        t.sort_by(|a, b| a.0.total_cmp(&b.0));
        l.sort_by(|a, b| a.0.total_cmp(&b.0));
        thr.add(Series::new(format!("ctx {ctx}"), color, Style::LinePoints).points(t));
        lat.add(Series::new(format!("ctx {ctx}"), color, Style::LinePoints).points(l));
    }
    thr.add(failed_series(fails));
    d.plot_listed("concurrency-throughput", thr);
    d.plot_listed("concurrency-ttft", lat);
    d.table(
        &[
            "context",
            "streams",
            "stage",
            "result",
            "tok/s (all streams)",
            "TTFT p95 ms",
            "timeouts",
        ],
        rows,
    );
}

/// The single-stream measurement at `ctx` that starts the streams' curve, unless the sweep
/// measured one stream itself: the last passed validation (or verification) of one stream
/// there, at the sweep's batch where there is one.
fn single_stream<'a>(run: &'a Run, ctx: u32, sweep: &[&Entry]) -> Option<&'a Entry> {
    if sweep.iter().any(|e| e.request.concurrency == 1) {
        return None;
    }
    let batch = sweep.first().and_then(|e| e.request.config.batch);
    let ones: Vec<&Entry> = run
        .probes
        .iter()
        .filter(|e| {
            matches!(e.request.stage, Stage::Validate | Stage::Verify)
                && e.request.config.ctx == ctx
                && e.request.concurrency == 1
                && e.outcome.passed()
        })
        .collect();
    let same_batch = ones.iter().rev().find(|e| e.request.config.batch == batch);
    same_batch.or(ones.last()).copied()
}

/// The probes of one context by streams: aggregate throughput (median over rounds) and TTFT
/// p95 where passed.
fn concurrency_sweep<'a>(run: &Run, ctx: u32, probes: impl Iterator<Item = &'a Entry>) -> Sweep {
    let mut sw = Sweep::default();
    for e in probes {
        let x = f64::from(e.request.concurrency);
        // One stream's aggregate is its own decode rate.
        let agg = median(e.outcome.round_tokens_per_s.clone())
            .or_else(|| median(decode_of(e)).filter(|_| e.request.concurrency == 1));
        let tp95 = p95(ttft_of(e));
        if e.outcome.passed() {
            if let Some(y) = agg {
                sw.curves[0].push((x, y));
            }
            if let Some(y) = tp95 {
                sw.curves[1].push((x, y));
            }
        } else {
            sw.fails.push((x, 0.0));
        }
        sw.rows.push(vec![
            ctx.to_string(),
            e.request.concurrency.to_string(),
            e.request.stage.name().into(),
            judged(e, stable(run, e)),
            f1(agg),
            f0(tp95),
            e.outcome.timeouts.to_string(),
        ]);
    }
    sw
}
