//! How good the predictions of one model are, measured on its stored records: each figure is
//! a prediction of a record made without it (or, for the memory law, without every record of
//! its context), set beside what the record measured.
//!
//! - **Memory**: the law fitted to every trusted successful peak ([`memory::fit`]), each
//!   point estimated at its fill ([`memory::fill_of`]); then each context value held out (the
//!   law fitted without every record of that context, those records predicted), with the
//!   share of peaks inside the estimate's range.
//! - **Rates**: the predictor trained without one successful, trusted, single-stream record
//!   predicts its prefill and decode rates (relative errors).
//! - **P(success)**: the predictor trained without one record predicts its success; the
//!   Brier score (mean of (p − outcome)², 0 perfect, 0.25 a coin) of the predictor and of the
//!   memory model's logistic alone ([`predict::memory_model_p`] of the estimate from the same
//!   training's memory fit).
//!
//! Training the predictor costs [`predict::N_TREES`] trees per forest, so at most
//! [`MAX_HELD_OUT`] records are held out for each of rates and P(success), spread evenly over
//! the records.

use serde::Serialize;

use super::memory::{self, Place, Residual};
use super::predict::{self, Predictor};
use super::Record;

/// Most records held out one at a time for the rates and for P(success) (each one predictor
/// trained).
pub const MAX_HELD_OUT: usize = 60;

/// The memory law on measured points.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryAccuracy {
    /// Trusted successful peaks at the place.
    pub points: usize,
    /// The law fitted to every point, each point estimated at its fill; `None` below
    /// [`memory::MIN_FIT_SAMPLES`] points (no law fitted).
    pub fitted: Option<Residual>,
    /// Each context value held out: its points predicted by the law fitted to the others.
    pub held_out: Option<Residual>,
    /// Distinct context values held out.
    pub contexts: usize,
    /// Held-out points whose peak is within the estimate's [low, high] range.
    pub in_range: usize,
}

/// Relative errors of the rates, each record predicted by a predictor trained without it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RateAccuracy {
    /// Successful, trusted, single-stream records with a rate.
    pub measurements: usize,
    /// Of them held out (at most [`MAX_HELD_OUT`]).
    pub evaluated: usize,
    /// `None` where no held-out record had that rate predicted.
    pub prefill: Option<Residual>,
    pub decode: Option<Residual>,
}

/// Brier scores of P(success), each record predicted by a predictor trained without it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SuccessAccuracy {
    pub records: usize,
    /// Of them held out (at most [`MAX_HELD_OUT`]).
    pub evaluated: usize,
    /// Successes among those held out.
    pub successes: usize,
    pub brier_predictor: f64,
    pub brier_memory_model: f64,
}

/// Every figure for one model's records at one place.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Accuracy {
    pub place: Place,
    pub records: usize,
    pub memory: MemoryAccuracy,
    /// `None` without a rate measurement.
    pub rates: Option<RateAccuracy>,
    /// `None` without records.
    pub success: Option<SuccessAccuracy>,
}

/// Where the records' peaks were measured: the GPU when any has a GPU peak, else RAM.
pub fn place_of(records: &[Record]) -> Place {
    if records.iter().any(|r| r.gpu_used_peak_bytes.is_some()) {
        Place::Gpu
    } else {
        Place::Ram
    }
}

/// Brier score of (P(success), outcome) pairs: mean of (p − outcome)²; `None` without pairs.
pub fn brier(pairs: &[(f64, bool)]) -> Option<f64> {
    if pairs.is_empty() {
        return None;
    }
    let sum: f64 = pairs
        .iter()
        .map(|&(p, ok)| (p - f64::from(u8::from(ok))).powi(2))
        .sum();
    Some(sum / pairs.len() as f64)
}

/// At most `cap` of the indices `0..n`, evenly spread (all of them when `n ≤ cap`).
pub fn spread(n: usize, cap: usize) -> Vec<usize> {
    if n <= cap {
        return (0..n).collect();
    }
    (0..cap).map(|i| i * n / cap).collect()
}

/// Measures the predictions of one model's `records` (any hosts) at `place`.
pub fn measure(records: &[Record], place: Place) -> Accuracy {
    let (rates, success) = held_out_predictions(records, place);
    Accuracy {
        place,
        records: records.len(),
        memory: memory_accuracy(records, place),
        rates,
        success,
    }
}

/// A record whose peak at `place` the memory law is fitted to.
fn usable(r: &Record, place: Place) -> bool {
    r.trusted && r.success && memory::peak_of(r, place).is_some()
}

/// The memory law on its own points, and on each context held out.
fn memory_accuracy(records: &[Record], place: Place) -> MemoryAccuracy {
    let points: Vec<&Record> = records.iter().filter(|r| usable(r, place)).collect();
    let fit = memory::fit(records, place);
    let at = |r: &Record, fit: &memory::MemoryFit| {
        memory::estimate_at(
            &r.model,
            &r.config,
            r.capacity_bytes,
            fit,
            memory::fill_of(r),
        )
    };
    let peak = |r: &Record| memory::peak_of(r, place).map_or(0.0, |p| p as f64);
    let fitted = fit.fitted.as_ref().and_then(|_| {
        let pairs: Vec<(f64, f64)> = points
            .iter()
            .map(|r| (at(r, &fit).total_bytes as f64, peak(r)))
            .collect();
        Residual::of(&pairs)
    });
    let mut contexts: Vec<u32> = points.iter().map(|r| r.config.ctx).collect();
    contexts.sort_unstable();
    contexts.dedup();
    let mut held = Vec::new();
    let mut in_range = 0;
    for &ctx in &contexts {
        let rest: Vec<Record> = records
            .iter()
            .filter(|r| r.config.ctx != ctx)
            .cloned()
            .collect();
        let without = memory::fit(&rest, place);
        for r in points.iter().filter(|r| r.config.ctx == ctx) {
            let e = at(r, &without);
            let p = peak(r);
            if e.low_bytes as f64 <= p && p <= e.high_bytes as f64 {
                in_range += 1;
            }
            held.push((e.total_bytes as f64, p));
        }
    }
    MemoryAccuracy {
        points: points.len(),
        fitted,
        held_out: Residual::of(&held),
        contexts: contexts.len(),
        in_range,
    }
}

/// A record whose rates the predictor learns from.
fn rate_record(r: &Record) -> bool {
    let positive = |v: Option<f64>| v.is_some_and(|v| v > 0.0 && v.is_finite());
    r.success
        && r.trusted
        && r.concurrency <= 1
        && (positive(r.prefill_tokens_per_s) || positive(r.decode_tokens_per_s))
}

/// What the held-out predictions collect.
#[derive(Default)]
struct HeldOut {
    prefill: Vec<(f64, f64)>,
    decode: Vec<(f64, f64)>,
    predictor: Vec<(f64, bool)>,
    memory_model: Vec<(f64, bool)>,
}

/// Rates and P(success) of records held out one at a time (one predictor trained per record,
/// shared where a record is held out for both).
fn held_out_predictions(
    records: &[Record],
    place: Place,
) -> (Option<RateAccuracy>, Option<SuccessAccuracy>) {
    let rate_idx: Vec<usize> = (0..records.len())
        .filter(|&i| rate_record(&records[i]))
        .collect();
    let for_rates: Vec<usize> = spread(rate_idx.len(), MAX_HELD_OUT)
        .into_iter()
        .map(|k| rate_idx[k])
        .collect();
    let for_success = spread(records.len(), MAX_HELD_OUT);
    let mut all: Vec<usize> = for_rates.iter().chain(&for_success).copied().collect();
    all.sort_unstable();
    all.dedup();
    let mut h = HeldOut::default();
    for i in all {
        let r = &records[i];
        let rest: Vec<Record> = records
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(_, r)| r.clone())
            .collect();
        let predictor = Predictor::train(&rest, Some(&r.host_id), place);
        let p = predictor.predict_at(
            &r.model,
            &r.config,
            r.capacity_bytes,
            crate::learn::memory::fill_of(r),
            crate::learn::predict::depth_of(r),
        );
        if for_rates.contains(&i) {
            let measured = |v: Option<f64>| v.filter(|v| *v > 0.0 && v.is_finite());
            if let (Some(got), Some(want)) =
                (p.prefill_tokens_per_s, measured(r.prefill_tokens_per_s))
            {
                h.prefill.push((got, want));
            }
            if let (Some(got), Some(want)) =
                (p.decode_tokens_per_s, measured(r.decode_tokens_per_s))
            {
                h.decode.push((got, want));
            }
        }
        if for_success.contains(&i) {
            h.predictor.push((p.p_success, r.success));
            h.memory_model.push((
                // As the predictor weighs it: the configuration's whole context.
                predict::memory_model_p(&memory::estimate(
                    &r.model,
                    &r.config,
                    r.capacity_bytes,
                    predictor.memory_fit(),
                )),
                r.success,
            ));
        }
    }
    let rates = (!rate_idx.is_empty()).then(|| RateAccuracy {
        measurements: rate_idx.len(),
        evaluated: for_rates.len(),
        prefill: Residual::of(&h.prefill),
        decode: Residual::of(&h.decode),
    });
    let success = brier(&h.predictor)
        .zip(brier(&h.memory_model))
        .map(|(bp, bm)| SuccessAccuracy {
            records: records.len(),
            evaluated: h.predictor.len(),
            successes: h.predictor.iter().filter(|(_, ok)| *ok).count(),
            brier_predictor: bp,
            brier_memory_model: bm,
        });
    (rates, success)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ProbeConfig;

    use crate::learn::predict::testing::{cfg, CAP};

    const GIB: u64 = 1 << 30;

    /// A probe of `c` on a host with `capacity`: succeeds iff the true estimate fits, at the
    /// rates `rates` gives.
    fn probe(
        c: ProbeConfig,
        capacity: Option<u64>,
        rates: fn(&ProbeConfig) -> (f64, f64),
    ) -> Record {
        crate::learn::predict::testing::probe("a", c, capacity, rates)
    }

    fn constant(_: &ProbeConfig) -> (f64, f64) {
        (500.0, 50.0)
    }

    /// Contexts doubling from 2k to 64k at each batch and KV type: `batches.len()` × 12.
    fn grid(batches: &[u32], capacity: Option<u64>) -> Vec<Record> {
        let mut out = Vec::new();
        for &b in batches {
            for kv in ["f16", "q8_0"] {
                for k in 1..=6 {
                    out.push(probe(cfg(1024 << k, b, kv), capacity, constant));
                }
            }
        }
        out
    }

    #[test]
    fn brier_of_a_perfect_predictor_a_coin_and_a_wrong_one() {
        assert_eq!(brier(&[]), None);
        assert_eq!(brier(&[(1.0, true), (0.0, false)]), Some(0.0));
        assert_eq!(brier(&[(0.5, true), (0.5, false), (0.5, true)]), Some(0.25));
        assert_eq!(brier(&[(0.0, true), (1.0, false)]), Some(1.0));
    }

    #[test]
    fn spread_keeps_everything_up_to_the_cap_then_spreads_evenly() {
        assert_eq!(spread(5, 60), vec![0, 1, 2, 3, 4]);
        let s = spread(150, 60);
        assert_eq!(s.len(), 60);
        assert_eq!(s[0], 0);
        assert!(
            s.windows(2).all(|w| w[1] > w[0] && w[1] - w[0] <= 3),
            "{s:?}"
        );
        assert!(*s.last().unwrap() < 150);
    }

    #[test]
    fn the_place_is_the_gpu_where_a_record_has_a_gpu_peak() {
        let mut recs = grid(&[512], Some(CAP));
        assert_eq!(place_of(&recs), Place::Gpu);
        for r in &mut recs {
            r.gpu_used_peak_bytes = None;
            r.rss_peak_bytes = Some(GIB);
        }
        assert_eq!(place_of(&recs), Place::Ram);
        assert_eq!(place_of(&[]), Place::Ram);
    }

    #[test]
    fn no_records_no_figures() {
        let a = measure(&[], Place::Ram);
        assert_eq!(a.records, 0);
        assert_eq!(a.memory.points, 0);
        assert_eq!((a.memory.fitted, a.memory.held_out), (None, None));
        assert_eq!((a.rates, a.success), (None, None));
    }

    /// Peaks from a known law are measured as reproduced and predicted (each context held
    /// out), every held-out peak inside its range; constant rates are predicted exactly; both
    /// predictors of success beat a coin on a sharp boundary; more records than the cap hold
    /// out the cap.
    #[test]
    fn an_exact_truth_is_measured_as_exact() {
        let recs = grid(&[64, 256, 1024, 2048], Some(8 * GIB));
        let ok = recs.iter().filter(|r| r.success).count();
        assert!(
            ok > 8 && ok < recs.len(),
            "both outcomes: {ok} of {}",
            recs.len()
        );
        let a = measure(&recs, Place::Gpu);
        assert_eq!((a.records, a.memory.points), (recs.len(), ok));
        let fitted = a.memory.fitted.unwrap();
        assert!(fitted.worst.abs() < 0.001, "{fitted:?}");
        let held = a.memory.held_out.unwrap();
        assert_eq!(held.points, ok);
        assert!(held.worst.abs() < 0.001, "{held:?}");
        // A range is at least ±1 % wide: an exact estimate is inside it.
        assert_eq!(a.memory.in_range, ok, "{:?}", a.memory);
        let mut contexts: Vec<u32> = recs
            .iter()
            .filter(|r| r.success)
            .map(|r| r.config.ctx)
            .collect();
        contexts.sort_unstable();
        contexts.dedup();
        assert_eq!(a.memory.contexts, contexts.len(), "{:?}", a.memory);
        let rates = a.rates.unwrap();
        assert_eq!(rates.measurements, ok);
        assert_eq!(rates.evaluated, ok.min(MAX_HELD_OUT));
        for r in [rates.prefill.unwrap(), rates.decode.unwrap()] {
            assert!(r.worst.abs() < 1e-9, "{r:?}");
        }
        let s = a.success.unwrap();
        assert_eq!(
            (s.records, s.evaluated),
            (recs.len(), recs.len().min(MAX_HELD_OUT))
        );
        assert!(s.successes > 0 && s.successes < s.evaluated, "{s:?}");
        assert!(s.brier_predictor < 0.25, "{s:?}");
        assert!(s.brier_memory_model < 0.25, "{s:?}");
    }

    /// Below the predictor's minimum of records it is the memory model; without a capacity
    /// that is a coin.
    #[test]
    fn a_cold_predictor_scores_as_the_memory_model() {
        let recs: Vec<Record> = grid(&[512], None)
            .into_iter()
            .step_by(2)
            .take(predict::MIN_RECORDS)
            .collect();
        let s = measure(&recs, Place::Gpu).success.unwrap();
        assert_eq!(s.evaluated, recs.len());
        assert_eq!(s.brier_predictor, s.brier_memory_model);
        assert_eq!(s.brier_memory_model, 0.25);
    }

    /// More records than [`MAX_HELD_OUT`]: that many are held out (successes alone and
    /// untrusted: the predictor stays cold and learns no rates, so this is quick).
    #[test]
    fn more_records_than_the_cap_hold_out_the_cap() {
        let mut recs = grid(&[64, 128, 256, 512, 1024, 2048], None);
        for r in &mut recs {
            (r.trusted, r.success) = (false, true);
        }
        assert!(recs.len() > MAX_HELD_OUT);
        let s = measure(&recs, Place::Gpu).success.unwrap();
        assert_eq!((s.records, s.evaluated), (recs.len(), MAX_HELD_OUT));
        assert_eq!(s.successes, MAX_HELD_OUT);
    }

    /// Untrusted (imported) peaks are not memory points, nor their rates measurements.
    #[test]
    fn untrusted_records_are_not_measured_points() {
        let mut recs = grid(&[512], Some(CAP));
        for r in &mut recs {
            r.trusted = false;
        }
        let a = measure(&recs, Place::Gpu);
        assert_eq!((a.memory.points, a.memory.held_out), (0, None));
        assert_eq!(a.rates, None);
        assert_eq!(a.success.unwrap().evaluated, recs.len());
    }
}
