//! What the report reads of the probes in the journal: one metric of a probe's successful
//! requests, probes grouped by context, and the median or 95th percentile per context.

use std::collections::BTreeMap;

use crate::optimize::journal::Entry;
use crate::optimize::prober::Stage;
use crate::optimize::stats::Observation;
use crate::util::order::nearest_rank;

use super::Run;

/// Nearest-rank 95th percentile.
pub(super) fn p95(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(nearest_rank(&v, 95.0))
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

pub(super) fn decode_of(e: &Entry) -> Vec<f64> {
    of(e, |o| o.decode_tokens_per_s)
}

pub(super) fn prefill_of(e: &Entry) -> Vec<f64> {
    of(e, |o| o.prefill_tokens_per_s)
}

pub(super) fn ttft_of(e: &Entry) -> Vec<f64> {
    of(e, |o| o.ttft_ms)
}

/// Whether the summary's statistics found the probe's configuration stable (`None` without a
/// summary, or for a probe it does not hold): the configuration of the same stage, settings,
/// depth and streams.
pub(super) fn stable(run: &Run, e: &Entry) -> Option<bool> {
    let r = &e.request;
    let (config, depth) = (
        serde_json::to_value(&r.config).ok()?,
        serde_json::to_value(r.depth).ok()?,
    );
    run.summary.as_ref()?["configurations"]
        .as_array()?
        .iter()
        .find(|c| {
            c["stage"] == r.stage.name()
                && c["concurrency"] == r.concurrency
                && c["config"] == config
                && c["depth"] == depth
        })?["stable"]
        .as_bool()
}

/// Probes of `stages` grouped by context, in probe order.
pub(super) fn by_context<'a>(run: &'a Run, stages: &[Stage]) -> BTreeMap<u32, Vec<&'a Entry>> {
    let mut m: BTreeMap<u32, Vec<&Entry>> = BTreeMap::new();
    for e in &run.probes {
        if stages.contains(&e.request.stage) {
            m.entry(e.request.config.ctx).or_default().push(e);
        }
    }
    m
}

/// One metric of `probes`, pooled per context (contexts without a value are left out).
pub(super) fn metric_by_context(
    probes: &[&Entry],
    metric: fn(&Entry) -> Vec<f64>,
) -> BTreeMap<u32, Vec<f64>> {
    let mut m: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    for e in probes {
        let v = metric(e);
        if !v.is_empty() {
            m.entry(e.request.config.ctx).or_default().extend(v);
        }
    }
    m
}

/// (context, `stat` of its values) for each context where `stat` has an answer.
pub(super) fn per_context(
    m: &BTreeMap<u32, Vec<f64>>,
    stat: fn(Vec<f64>) -> Option<f64>,
) -> Vec<(f64, f64)> {
    m.iter()
        .filter_map(|(c, v)| Some((f64::from(*c), stat(v.clone())?)))
        .collect()
}
