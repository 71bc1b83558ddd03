//! Decode and prefill rates: random-forest regressors on ln(rate), from successful, trusted,
//! single-stream records alone, with the prompt's depth a feature beside the configuration's;
//! beyond the deepest prompt measured, the time model's law carries the rate deeper.

use smartcore::ensemble::random_forest_regressor::RandomForestRegressorParameters;

use super::{distinct, matrix, Regressor, Rows, FEATURE_NAMES, MIN_RATE_RECORDS, N_TREES, SEED};
use crate::timing::TimeModel;

/// How far past its deepest span the time model's law is trusted to carry a rate.
pub const MAX_CARRY: u64 = 4;

/// ln(rate) regressors, trained on successful records alone (`None`: too few to learn from).
#[derive(Default)]
pub(super) struct Rates {
    decode: Option<Regressor>,
    prefill: Option<Regressor>,
    /// Distinct successful, trusted, single-stream records with a rate.
    learned_from: usize,
    /// The deepest prompt among them, tokens: a forest cannot see past it.
    deepest: Option<u64>,
}

impl Rates {
    pub(super) fn of(rows: &mut Rows) -> Rates {
        let learned_from = distinct(&rows.decode.0).max(distinct(&rows.prefill.0));
        let deepest = rows
            .decode
            .0
            .iter()
            .chain(&rows.prefill.0)
            .filter_map(|r| r.last().copied())
            .fold(None, |m: Option<f64>, d| Some(m.map_or(d, |m| m.max(d))))
            .map(|d| d as u64);
        Rates {
            decode: regressor(std::mem::take(&mut rows.decode), SEED + 1000),
            prefill: regressor(std::mem::take(&mut rows.prefill), SEED + 2000),
            learned_from,
            deepest,
        }
    }

    /// (prefill, decode) at features `x` and a prompt of `depth` tokens. Past the deepest
    /// prompt measured, the forests' answer there is carried deeper by `time`'s law (prefill:
    /// the mean rate of a prompt read from 0; decode: the rate at that depth).
    pub(super) fn at(
        &self,
        x: &[f64],
        depth: u64,
        time: Option<&TimeModel>,
    ) -> (Option<f64>, Option<f64>) {
        let (within, (fp, fd)) = self.carried(depth, time);
        let x = rate_row(x, within);
        (
            rate(self.prefill.as_ref(), &x).map(|r| r * fp),
            rate(self.decode.as_ref(), &x).map(|r| r * fd),
        )
    }

    /// The depth the forests are asked at, and the factors the time model carries their
    /// answers deeper by (1 within the measured depths, without a time model, or where its
    /// spans reach less than 1/[`MAX_CARRY`] of the depth: a law fitted on short prompts of a
    /// loaded machine is no guide to one eight times longer).
    fn carried(&self, depth: u64, time: Option<&TimeModel>) -> (u64, (f64, f64)) {
        let reaches = |t: &TimeModel| {
            t.deepest_measured()
                .is_some_and(|d| d.saturating_mul(MAX_CARRY) >= depth)
        };
        match (self.deepest, time) {
            (Some(deep), Some(t)) if depth > deep && deep > 0 && reaches(t) => {
                let mean_prefill = |d: u64| d as f64 / t.fill(0, d).expected_s;
                let ratio = |a: f64, b: f64| if b > 0.0 && a.is_finite() { a / b } else { 1.0 };
                (
                    deep,
                    (
                        ratio(mean_prefill(depth), mean_prefill(deep)),
                        ratio(t.decode_rate_at(depth), t.decode_rate_at(deep)),
                    ),
                )
            }
            _ => (depth, (1.0, 1.0)),
        }
    }

    /// What the rates come from, for the reasons.
    pub(super) fn reason(&self, depth: u64, time: Option<&TimeModel>) -> String {
        if self.decode.is_none() && self.prefill.is_none() {
            return format!(
                "rates: {} successful single-stream measurement(s); at least {MIN_RATE_RECORDS} \
                 distinct ones are needed",
                self.learned_from
            );
        }
        let base = format!(
            "rates: random forest on {} successful single-stream measurement(s), at a \
             {depth}-token prompt",
            self.learned_from
        );
        match (self.deepest, self.carried(depth, time)) {
            (Some(deep), (within, (fp, fd))) if within < depth => format!(
                "{base}: past the deepest measured ({deep} tokens), carried by the time model's \
                 law (prefill ×{fp:.2}, decode ×{fd:.2})"
            ),
            (Some(deep), _) if depth > deep => format!(
                "{base}: past the deepest measured ({deep} tokens) the forests answer for it, \
                 an upper bound (no time model whose spans reach a quarter of that depth to \
                 carry them deeper)"
            ),
            _ => base,
        }
    }
}

/// A ln(rate) regressor, where there are at least [`MIN_RATE_RECORDS`] distinct records (not
/// copies) to learn from.
fn regressor((rx, ry): (Vec<Vec<f64>>, Vec<f64>), seed: u64) -> Option<Regressor> {
    if distinct(&rx) < MIN_RATE_RECORDS {
        return None;
    }
    let params = RandomForestRegressorParameters::default()
        .with_n_trees(usize::from(N_TREES))
        .with_m(FEATURE_NAMES.len() + 1)
        .with_seed(seed);
    Regressor::fit(&matrix(&rx)?, &ry, params).ok()
}

/// A rate regressor's row: the configuration's features and the prompt's depth (a rate at 100
/// tokens and at 50,000 are not the same measurement: prefill and decode slow with depth).
pub(super) fn rate_row(x: &[f64], depth: u64) -> Vec<f64> {
    let mut row = x.to_vec();
    row.push(depth as f64);
    row
}

/// A regressor's rate at `x` (it predicts the logarithm).
fn rate(m: Option<&Regressor>, x: &[f64]) -> Option<f64> {
    let v = m?.predict(&matrix(&[x.to_vec()])?).ok()?;
    v.first().map(|l| l.exp()).filter(|r| r.is_finite())
}
