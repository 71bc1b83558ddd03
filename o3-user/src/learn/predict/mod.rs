//! The predictor: P(success) and expected rates of a configuration before it is run, from the
//! memory model alone (cold start) or from random forests trained on stored records.
//!
//! - **Cold start** (fewer than [`MIN_RECORDS`] records, or only successes or only failures):
//!   P(success) is the memory model's: the chance that the peak, somewhere in the estimate's
//!   range, is under the capacity ([`memory_model_p`]); 0.5 when the capacity is unknown.
//!   Rates need only successes: they are predicted in cold start too wherever there are
//!   [`MIN_RATE_RECORDS`] successful records to learn them from.
//! - **Trained**: P(success) = (1 − w) × the vote share of a random forest of [`N_TREES`] trees
//!   on [`FEATURE_NAMES`] + w × the memory model's P (capacity known; the forest alone
//!   otherwise), w chosen by cross-validation on the training records (`blend`): 1 where the
//!   memory model explains every outcome, down to [`MEMORY_MODEL_WEIGHT`] where the trees see
//!   what it cannot. That floor keeps a configuration the memory model says fits (ratio ≤ 1)
//!   at P ≥ 0.1 whatever the forest says, so the optimizer, which skips P < 0.05, never skips
//!   it on the forest's word alone (a forest splits halfway between the largest success and
//!   the smallest failure it saw, which can fall below the true limit).
//! - **Rates**: random-forest regressors on the logarithm of the rate, from successful,
//!   trusted, single-stream records (imported legacy rates are not measurements), with the
//!   prompt's depth as a feature beside the configuration's: a rate is predicted for a depth
//!   (prefill and decode slow as the context fills; [`DEFAULT_DEPTH_FILL`] of the context
//!   when none is given).
//!
//! smartcore has no sample weights, so the records of this host are duplicated
//! ([`THIS_HOST_WEIGHT`] copies); and its classifier exposes only the majority vote, so the
//! forest is [`N_TREES`] single-tree `RandomForestClassifier`s (each a bootstrap sample and
//! random feature subsets, as in one forest) whose votes are counted. Every seed is fixed:
//! training is deterministic.

mod blend;
mod rates;
#[cfg(test)]
pub(crate) mod testing;

use serde::Serialize;
use smartcore::ensemble::random_forest_classifier::{
    RandomForestClassifier, RandomForestClassifierParameters,
};
use smartcore::ensemble::random_forest_regressor::RandomForestRegressor;
use smartcore::linalg::basic::matrix::DenseMatrix;

use super::memory::{self, Estimate, Fill, MemoryFit, Place};
use super::{ModelShape, Record};
use crate::backend::ProbeConfig;
use blend::{Blend, Stacking};
use rates::{rate_row, Rates};

/// Fewest records a trained prediction needs; below this the memory model decides alone.
pub const MIN_RECORDS: usize = 8;
/// Copies of each record of this host in the training set (smartcore has no sample weights).
pub const THIS_HOST_WEIGHT: usize = 3;
/// Trees of the success forest and of each rate forest.
pub const N_TREES: u16 = 64;
/// The least share of the memory model in a trained P(success) (capacity known); the share
/// itself is chosen by cross-validation (`blend`).
pub const MEMORY_MODEL_WEIGHT: f64 = 0.2;
/// The smallest standard deviation the memory model's P(success) assumes for a peak, as a
/// share of the capacity (the fitted range's floor, [`memory`]'s `MIN_BAND`, is ±0.2 %).
pub const MIN_WIDTH: f64 = 0.001;
/// Fewest successful single-stream records a rate regressor needs.
pub const MIN_RATE_RECORDS: usize = 3;
/// Base seed of every forest.
const SEED: u64 = 0x03_5EED;
/// The share of the context a prompt fills when a depth is not given (o3's `prompt.fill`
/// default): the depth [`Predictor::predict`]'s rates are for.
pub const DEFAULT_DEPTH_FILL: f64 = 0.9;

/// The depth of a record's rates: its requests' prompt tokens, else the default fill of its
/// context.
pub fn depth_of(r: &Record) -> u64 {
    r.prompt_tokens
        .unwrap_or_else(|| default_depth(r.config.ctx))
}

/// [`DEFAULT_DEPTH_FILL`] of a context, tokens.
pub fn default_depth(ctx: u32) -> u64 {
    (f64::from(ctx) * DEFAULT_DEPTH_FILL) as u64
}

/// The features, in [`features`] order.
pub const FEATURE_NAMES: &[&str] = &[
    "load_ratio",
    "ctx",
    "batch",
    "ubatch",
    "slots",
    "kv_type_bytes",
    "flash_attn",
    "gpu_layers_fraction",
    "parameters_billions",
    "kv_bytes_per_token",
    "host_memory_class",
];

/// What the predictor sees of a configuration on a host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Features {
    /// The memory model's estimate ÷ capacity (its cold-start signal); -1 when the capacity
    /// is unknown.
    pub load_ratio: f64,
    /// Context per slot.
    pub ctx: f64,
    /// 0: the server's default.
    pub batch: f64,
    /// The micro-batch the memory model assumes (ubatch, else batch, else 512).
    pub ubatch: f64,
    pub slots: f64,
    /// Mean bytes per element of the K and V cache types (f16: 2).
    pub kv_type_bytes: f64,
    /// 1 on, 0 off, 0.5 unset (the server decides).
    pub flash_attn: f64,
    /// Offloaded layers ÷ block count (1: all or unset).
    pub gpu_layers_fraction: f64,
    /// 0 when unknown.
    pub parameters_billions: f64,
    /// At the configuration's cache types; 0 when unknown.
    pub kv_bytes_per_token: f64,
    /// floor(log2(capacity in GiB)): 4 for 16–31 GiB; -1 when unknown.
    pub host_memory_class: f64,
}

impl Features {
    /// The features of `cfg` for a model of `shape` on a host with `capacity` bytes, with the
    /// memory model's estimate they were computed from.
    pub fn of(
        shape: &ModelShape,
        cfg: &ProbeConfig,
        capacity: Option<u64>,
        fit: &MemoryFit,
    ) -> (Features, Estimate) {
        let e = memory::estimate(shape, cfg, capacity, fit);
        let type_bytes = |t: &Option<String>| {
            memory::cache_type_bytes(t.as_deref().unwrap_or("f16")).unwrap_or(2.0)
        };
        let fraction = match (cfg.gpu_layers, shape.block_count) {
            (Some(n), Some(b)) if n >= 0 && b > 0 => (f64::from(n as u32) / f64::from(b)).min(1.0),
            (Some(0), None) => 0.0,
            _ => 1.0,
        };
        let f = Features {
            load_ratio: e.load_ratio.unwrap_or(-1.0),
            ctx: f64::from(cfg.ctx),
            batch: cfg.batch.map_or(0.0, f64::from),
            ubatch: f64::from(memory::effective_ubatch(cfg)),
            slots: f64::from(memory::slots(cfg)),
            kv_type_bytes: (type_bytes(&cfg.cache_type_k) + type_bytes(&cfg.cache_type_v)) / 2.0,
            flash_attn: match cfg.flash_attn {
                Some(crate::backend::FlashAttn::On) => 1.0,
                Some(crate::backend::FlashAttn::Off) => 0.0,
                None => 0.5,
            },
            gpu_layers_fraction: fraction,
            parameters_billions: shape.parameters.map_or(0.0, |p| p as f64 / 1e9),
            kv_bytes_per_token: memory::kv_bytes_per_token(
                shape,
                cfg.cache_type_k.as_deref(),
                cfg.cache_type_v.as_deref(),
            )
            .unwrap_or(0.0),
            host_memory_class: capacity.filter(|&c| c > 0).map_or(-1.0, |c| {
                (c as f64 / (1u64 << 30) as f64).log2().floor().max(0.0)
            }),
        };
        (f, e)
    }

    /// The values in [`FEATURE_NAMES`] order.
    pub fn to_vec(&self) -> Vec<f64> {
        vec![
            self.load_ratio,
            self.ctx,
            self.batch,
            self.ubatch,
            self.slots,
            self.kv_type_bytes,
            self.flash_attn,
            self.gpu_layers_fraction,
            self.parameters_billions,
            self.kv_bytes_per_token,
            self.host_memory_class,
        ]
    }
}

/// The feature vector of `cfg` (see [`FEATURE_NAMES`]).
pub fn features(
    shape: &ModelShape,
    cfg: &ProbeConfig,
    capacity: Option<u64>,
    fit: &MemoryFit,
) -> Vec<f64> {
    Features::of(shape, cfg, capacity, fit).0.to_vec()
}

/// The memory model's P(success): the chance that the peak is under the capacity, the peak
/// taken as normal around the estimate with a standard deviation of half the distance to the
/// range's bound on that side (the range as ±2 sd; at least [`MIN_WIDTH`] of the capacity);
/// Φ by its logistic approximation, 1 / (1 + exp(−1.702 z)). 0.5 when the capacity is unknown.
pub fn memory_model_p(e: &Estimate) -> f64 {
    let Some(cap) = e.capacity_bytes.filter(|&c| c > 0) else {
        return 0.5;
    };
    let (cap, total) = (cap as f64, e.total_bytes as f64);
    let bound = if total <= cap {
        e.high_bytes as f64
    } else {
        e.low_bytes as f64
    };
    let sd = ((bound - total).abs() / 2.0).max(MIN_WIDTH * cap);
    1.0 / (1.0 + (-1.702 * (cap - total) / sd).exp())
}

/// A prediction for one configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub p_success: f64,
    pub prefill_tokens_per_s: Option<f64>,
    pub decode_tokens_per_s: Option<f64>,
    /// The prompt depth the rates are for, tokens (a single stream).
    pub rates_depth_tokens: u64,
    pub estimate: Estimate,
    /// "cold start: memory model only" or "random forest on N records (M from this host)"
    pub basis: String,
    /// the features that drove it, most important first, with values (changing each to its
    /// training mean and measuring the change in P(success))
    pub reasons: Vec<String>,
}

type Matrix = DenseMatrix<f64>;
type Classifier = RandomForestClassifier<f64, u32, Matrix, Vec<u32>>;
type Regressor = RandomForestRegressor<f64, f64, Matrix, Vec<f64>>;

/// The trained part of a predictor: the success classifier (both outcomes needed).
struct Forests {
    /// Single-tree forests; P(success) is the share voting 1.
    trees: Vec<Classifier>,
    /// Mean of each feature over the training rows (for the reasons).
    means: Vec<f64>,
    /// How much the memory model weighs against the vote.
    stacking: Stacking,
}

/// Predicts configurations of one model from past records (see the module docs).
pub struct Predictor {
    fit: MemoryFit,
    records: usize,
    this_host: usize,
    /// Why the predictor is in cold start; `None` when trained.
    cold: Option<String>,
    forests: Option<Forests>,
    rates: Rates,
    /// The server's time model for this model and host: carries rates past the deepest prompt
    /// measured.
    time: Option<crate::timing::TimeModel>,
}

fn matrix(rows: &[Vec<f64>]) -> Option<Matrix> {
    DenseMatrix::from_2d_vec(&rows.to_vec()).ok()
}

/// Why the forests could not be trained (the predictor stays in cold start).
#[derive(Debug, thiserror::Error)]
enum TrainError {
    #[error("the training rows could not be assembled")]
    Rows,
    #[error("the success forest failed to train ({0})")]
    Trees(smartcore::error::Failed),
}

/// Why `records` are too few or too uniform for a trained prediction, if they are.
fn cold_reason(records: &[Record]) -> Option<String> {
    if records.len() < MIN_RECORDS {
        return Some(format!(
            "{} record(s): a trained prediction needs at least {MIN_RECORDS}",
            records.len()
        ));
    }
    let successes = records.iter().filter(|r| r.success).count();
    if successes == 0 || successes == records.len() {
        return Some(format!(
            "all {} records {}: the classifier needs both outcomes",
            records.len(),
            if successes == 0 {
                "failed"
            } else {
                "succeeded"
            }
        ));
    }
    None
}

/// Training rows (features, targets), this host's records repeated [`THIS_HOST_WEIGHT`] times.
#[derive(Debug, Default)]
struct Rows {
    /// Every record's features and success.
    x: Vec<Vec<f64>>,
    y: Vec<u32>,
    /// Each row's record (a record's copies share it) and the memory model's P(success) for
    /// it (`None`: capacity unknown).
    record: Vec<usize>,
    p_memory: Vec<Option<f64>>,
    /// ln(rate) of successful, trusted, single-stream records.
    decode: (Vec<Vec<f64>>, Vec<f64>),
    prefill: (Vec<Vec<f64>>, Vec<f64>),
}

impl Rows {
    fn of(records: &[Record], this_host: Option<&str>, fit: &MemoryFit) -> Rows {
        let mut rows = Rows::default();
        for (i, r) in records.iter().enumerate() {
            let copies = if this_host.is_some_and(|h| r.host_id == h) {
                THIS_HOST_WEIGHT
            } else {
                1
            };
            let (f, e) = Features::of(&r.model, &r.config, r.capacity_bytes, fit);
            let (row, p) = (f.to_vec(), e.load_ratio.map(|_| memory_model_p(&e)));
            for _ in 0..copies {
                rows.record.push(i);
                rows.p_memory.push(p);
                rows.add(r, &row);
            }
        }
        rows
    }

    fn add(&mut self, r: &Record, row: &[f64]) {
        self.x.push(row.to_vec());
        self.y.push(u32::from(r.success));
        if !(r.success && r.trusted && r.concurrency <= 1) {
            return;
        }
        let usable = |v: Option<f64>| v.filter(|v| *v > 0.0 && v.is_finite());
        let row = rate_row(row, depth_of(r));
        if let Some(v) = usable(r.decode_tokens_per_s) {
            self.decode.0.push(row.clone());
            self.decode.1.push(v.ln());
        }
        if let Some(v) = usable(r.prefill_tokens_per_s) {
            self.prefill.0.push(row);
            self.prefill.1.push(v.ln());
        }
    }

    /// Mean of each feature.
    fn means(&self) -> Vec<f64> {
        let n = self.x.len() as f64;
        (0..FEATURE_NAMES.len())
            .map(|j| self.x.iter().map(|r| r[j]).sum::<f64>() / n)
            .collect()
    }
}

/// Distinct rows (this host's copies counted once).
fn distinct(rows: &[Vec<f64>]) -> usize {
    let mut d = rows.to_vec();
    d.sort_by(|a, b| {
        a.iter()
            .zip(b)
            .map(|(p, q)| p.total_cmp(q))
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    d.dedup();
    d.len()
}

/// The memory law of `place` from this host's peaks where it has enough, else every host's.
fn memory_fit(records: &[Record], this_host: Option<&str>, place: Place) -> MemoryFit {
    if let Some(h) = this_host {
        let own: Vec<Record> = records.iter().filter(|r| r.host_id == h).cloned().collect();
        let fit = memory::fit(&own, place);
        if fit.fitted.is_some() {
            return fit;
        }
    }
    memory::fit(records, place)
}

impl Predictor {
    /// Trains on `records` (any hosts; those of `this_host` count [`THIS_HOST_WEIGHT`] times)
    /// for estimates of memory at `place`. The memory law is fitted to this host's peaks where
    /// it has enough ([`memory::MIN_FIT_SAMPLES`]), else to every host's ([`memory::fit`]).
    pub fn train(records: &[Record], this_host: Option<&str>, place: Place) -> Predictor {
        let fit = memory_fit(records, this_host, place);
        let mut rows = Rows::of(records, this_host, &fit);
        let mut p = Predictor {
            records: records.len(),
            this_host: this_host.map_or(0, |h| records.iter().filter(|r| r.host_id == h).count()),
            cold: cold_reason(records),
            forests: None,
            rates: Rates::of(&mut rows),
            time: None,
            fit,
        };
        if p.cold.is_some() {
            return p;
        }
        match Forests::fit(rows) {
            Ok(f) => p.forests = Some(f),
            Err(e) => p.cold = Some(e.to_string()),
        }
        p
    }

    /// With the server's time model for this model and host (fitted to its spans of work),
    /// which carries rates past the deepest prompt the records measured.
    pub fn with_time_model(mut self, m: crate::timing::TimeModel) -> Predictor {
        self.time = Some(m);
        self
    }

    /// Records trained on (distinct records, before this host's duplication).
    pub fn records(&self) -> usize {
        self.records
    }

    /// The memory law the estimates use.
    pub fn memory_fit(&self) -> &MemoryFit {
        &self.fit
    }

    /// Whether predictions come from the memory model alone.
    pub fn is_cold(&self) -> bool {
        self.forests.is_none()
    }

    /// Predicts `cfg` for a model of `shape` on a host with `capacity` bytes.
    pub fn predict(
        &self,
        shape: &ModelShape,
        cfg: &ProbeConfig,
        capacity: Option<u64>,
    ) -> Prediction {
        self.predict_at(shape, cfg, capacity, Fill::Full, default_depth(cfg.ctx))
    }

    /// As [`Predictor::predict`], with the memory estimated for `fill` context tokens in use
    /// and the rates for a prompt of `depth` tokens (a probe's, to set beside what it
    /// measured); P(success) is the configuration's, as ever.
    pub fn predict_at(
        &self,
        shape: &ModelShape,
        cfg: &ProbeConfig,
        capacity: Option<u64>,
        fill: Fill,
        depth: u64,
    ) -> Prediction {
        let (feat, full) = Features::of(shape, cfg, capacity, &self.fit);
        let blend = Blend {
            p_memory: memory_model_p(&full),
            capacity_known: full.load_ratio.is_some(),
            stacking: self
                .forests
                .as_ref()
                .map_or_else(Stacking::default, |f| f.stacking),
        };
        let estimate = match fill {
            Fill::Full => full,
            Fill::Tokens(_) => memory::estimate_at(shape, cfg, capacity, &self.fit, fill),
        };
        let x = feat.to_vec();
        let mut p = match &self.forests {
            None => self.cold_prediction(estimate, &blend),
            Some(f) => self.trained_prediction(f, &x, estimate, &blend),
        };
        let time = self.time.as_ref();
        (p.prefill_tokens_per_s, p.decode_tokens_per_s) = self.rates.at(&x, depth, time);
        p.rates_depth_tokens = depth;
        p.reasons.push(self.rates.reason(depth, time));
        p
    }

    /// The memory model's logistic alone.
    fn cold_prediction(&self, estimate: Estimate, blend: &Blend) -> Prediction {
        let p_memory = blend.p_memory;
        let mut reasons = vec![memory_reason(&estimate)];
        reasons.push(format!(
            "P(success) {p_memory:.3} from the memory model (the chance that the peak, within \
             its range, is under the capacity){}",
            if blend.capacity_known {
                ""
            } else {
                ": capacity unknown"
            }
        ));
        reasons.extend(self.cold.clone());
        Prediction {
            p_success: p_memory,
            prefill_tokens_per_s: None,
            decode_tokens_per_s: None,
            rates_depth_tokens: 0,
            estimate,
            basis: "cold start: memory model only".into(),
            reasons,
        }
    }

    /// The forests' vote blended with the memory model, the features that moved it, and the
    /// rates.
    fn trained_prediction(
        &self,
        forests: &Forests,
        x: &[f64],
        estimate: Estimate,
        blend: &Blend,
    ) -> Prediction {
        let forest_p = forests.vote(x);
        let p_success = blend.of(forest_p);
        let mut reasons = vec![memory_reason(&estimate), blend.reason(p_success, forest_p)];
        reasons.extend(forests.sensitivity(x, p_success, blend));
        Prediction {
            p_success,
            prefill_tokens_per_s: None,
            decode_tokens_per_s: None,
            rates_depth_tokens: 0,
            estimate,
            basis: format!(
                "random forest on {} records ({} from this host)",
                self.records, self.this_host
            ),
            reasons,
        }
    }
}

/// `n` single-tree forests on rows `x` with outcomes `y`, seeds from `seed`.
fn trees(x: &[Vec<f64>], y: &[u32], n: u16, seed: u64) -> Result<Vec<Classifier>, TrainError> {
    let xm = matrix(x).ok_or(TrainError::Rows)?;
    let y = y.to_vec();
    (0..u64::from(n))
        .map(|i| {
            let params = RandomForestClassifierParameters::default()
                .with_n_trees(1)
                .with_m(FEATURE_NAMES.len())
                .with_seed(seed + i);
            Classifier::fit(&xm, &y, params).map_err(TrainError::Trees)
        })
        .collect()
}

/// Share of `trees` voting success at `x`.
fn vote_of(trees: &[Classifier], x: &[f64]) -> f64 {
    let Some(m) = matrix(&[x.to_vec()]) else {
        return 0.5;
    };
    let yes = trees
        .iter()
        .filter(|t| t.predict(&m).is_ok_and(|v| v.first() == Some(&1)))
        .count();
    yes as f64 / trees.len().max(1) as f64
}

impl Forests {
    /// The success trees, the rate regressors and the feature means from `rows`.
    fn fit(rows: Rows) -> Result<Forests, TrainError> {
        let trees = trees(&rows.x, &rows.y, N_TREES, SEED)?;
        Ok(Forests {
            trees,
            means: rows.means(),
            stacking: Stacking::choose(&rows),
        })
    }

    /// Sensitivity: each feature at its training mean, the rest as they are; the (at most
    /// four) that move P(success) by 0.005 or more, most first.
    fn sensitivity(&self, x: &[f64], p_success: f64, blend: &Blend) -> Vec<String> {
        let mut moves: Vec<(usize, f64, f64)> = (0..x.len())
            .map(|j| {
                let mut xj = x.to_vec();
                xj[j] = self.means[j];
                let pj = blend.of(self.vote(&xj));
                (j, p_success - pj, pj)
            })
            .collect();
        moves.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()).then(a.0.cmp(&b.0)));
        let strong: Vec<_> = moves
            .iter()
            .filter(|m| m.1.abs() >= 0.005)
            .take(4)
            .collect();
        if strong.is_empty() {
            return vec![
                "no single feature moves P(success) by 0.005 or more when set to its training \
                 mean"
                    .into(),
            ];
        }
        strong
            .iter()
            .map(|&&(j, delta, pj)| {
                format!(
                    "{} = {} (training mean {}): P(success) {p_success:.3} vs {pj:.3} at the mean \
                     ({delta:+.3})",
                    FEATURE_NAMES[j],
                    number(x[j]),
                    number(self.means[j])
                )
            })
            .collect()
    }

    /// Share of the trees voting success.
    fn vote(&self, x: &[f64]) -> f64 {
        vote_of(&self.trees, x)
    }
}

/// The memory model's verdict in one line.
fn memory_reason(e: &Estimate) -> String {
    let parts = format!(
        "weights {}, KV {}, compute {}, overhead {}",
        memory::gib(e.weights_bytes as f64),
        memory::gib(e.kv_bytes as f64),
        memory::gib(e.compute_bytes as f64),
        memory::gib(e.overhead_bytes as f64)
    );
    match (e.capacity_bytes, e.load_ratio) {
        (Some(c), Some(r)) => format!(
            "memory model: {} of {} (load_ratio {r:.3}; {parts})",
            memory::gib(e.total_bytes as f64),
            memory::gib(c as f64)
        ),
        _ => format!(
            "memory model: {} ({parts}); capacity unknown",
            memory::gib(e.total_bytes as f64)
        ),
    }
}

/// A feature value for reasons: integers without decimals, ratios with three.
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::OutcomeClass;

    const GIB: u64 = 1 << 30;

    /// Llama 3.1 8B Q4_K_M.
    fn shape() -> ModelShape {
        ModelShape::llama31_8b()
    }

    use super::testing::cfg;

    /// Decode slows with context and KV precision, prefill grows with the batch.
    fn truth_rates(c: &ProbeConfig) -> (f64, f64) {
        let kv = memory::cache_type_bytes(c.cache_type_k.as_deref().unwrap_or("f16")).unwrap();
        let decode = 60.0 / (1.0 + f64::from(c.ctx) / 65536.0) * (1.0 - 0.05 * (2.0 - kv));
        let prefill = 300.0 * f64::from(c.batch.unwrap_or(512)).powf(0.35);
        (prefill, decode)
    }

    /// A probe of `c` on a host with `capacity`: succeeds iff the true estimate fits.
    fn probe(host: &str, c: ProbeConfig, capacity: u64) -> Record {
        super::testing::probe(host, c, Some(capacity), truth_rates)
    }

    const CAP: u64 = 12 * GIB;
    const BATCHES: [u32; 6] = [64, 128, 256, 512, 1024, 2048];
    const KV: [&str; 2] = ["f16", "q8_0"];

    /// The probes an optimizer would have made: contexts doubling from 2k to 64k at each
    /// batch and KV type (72 configurations).
    fn grid() -> Vec<ProbeConfig> {
        let mut out = Vec::new();
        for b in BATCHES {
            for kv in KV {
                for k in 1..=6 {
                    out.push(cfg(1024 << k, b, kv));
                }
            }
        }
        out
    }

    fn training() -> Vec<Record> {
        grid().into_iter().map(|c| probe("a", c, CAP)).collect()
    }

    #[test]
    fn cold_start_is_the_memory_model() {
        let recs: Vec<Record> = training().into_iter().take(MIN_RECORDS - 1).collect();
        let p = Predictor::train(&recs, Some("a"), Place::Gpu);
        assert!(p.is_cold());
        assert_eq!(p.records(), MIN_RECORDS - 1);
        for ctx in [4096, 32768, 65536, 131072] {
            let c = cfg(ctx, 512, "f16");
            let pr = p.predict(&shape(), &c, Some(CAP));
            let e = memory::estimate(&shape(), &c, Some(CAP), p.memory_fit());
            assert_eq!(pr.estimate, e);
            assert_eq!(pr.p_success, memory_model_p(&e));
            assert_eq!(pr.basis, "cold start: memory model only");
            // Rates need only successes: learned here wherever three distinct ones exist.
            let learned = pr
                .reasons
                .iter()
                .any(|r| r.starts_with("rates: random forest"));
            assert_eq!(
                pr.decode_tokens_per_s.is_some(),
                learned,
                "{:?}",
                pr.reasons
            );
            assert!(
                pr.reasons[0].starts_with("memory model: "),
                "{:?}",
                pr.reasons
            );
        }
        // Unknown capacity: a coin toss.
        let pr = p.predict(&shape(), &cfg(4096, 512, "f16"), None);
        assert_eq!(pr.p_success, 0.5);
        // Two records are too few for rates, and the reason says so.
        let two = Predictor::train(&recs[..2], Some("a"), Place::Gpu);
        let pr = two.predict(&shape(), &cfg(4096, 512, "f16"), Some(CAP));
        assert_eq!(
            (pr.decode_tokens_per_s, pr.prefill_tokens_per_s),
            (None, None)
        );
        assert!(
            pr.reasons
                .iter()
                .any(|r| r.ends_with("at least 3 distinct ones are needed")),
            "{:?}",
            pr.reasons
        );
        // Only one outcome: cold start too, whatever the count.
        let all_ok: Vec<Record> = training().into_iter().filter(|r| r.success).collect();
        assert!(all_ok.len() >= MIN_RECORDS);
        let p = Predictor::train(&all_ok, None, Place::Gpu);
        assert!(p.is_cold());
        let pr = p.predict(&shape(), &cfg(4096, 512, "f16"), Some(CAP));
        assert!(
            pr.reasons.iter().any(|r| r.contains("needs both outcomes")),
            "{:?}",
            pr.reasons
        );
    }

    /// The largest context (multiple of 256) that truly fits.
    fn optimum(batch: u32, kv: &str) -> u32 {
        let mut ctx = 256;
        while probe("a", cfg(ctx + 256, batch, kv), CAP).success {
            ctx += 256;
        }
        ctx
    }

    /// The memory model's P(success) is the chance the peak, within the estimate's range, is
    /// under the capacity: 0.5 at the estimate, about 0.98 at the range's upper bound, 0.02
    /// at its lower one, and steep where the range is narrow.
    #[test]
    fn memory_p_follows_the_range() {
        let e = |total: u64, low: u64, high: u64, cap: Option<u64>| Estimate {
            weights_bytes: 0,
            kv_bytes: 0,
            compute_bytes: 0,
            overhead_bytes: total,
            total_bytes: total,
            low_bytes: low,
            high_bytes: high,
            place: Place::Gpu,
            fitted_points: 0,
            residual: None,
            held_out: None,
            capacity_bytes: cap,
            load_ratio: None,
            fits: None,
            notes: Vec::new(),
        };
        let at = |cap| memory_model_p(&e(1000, 900, 1200, Some(cap)));
        assert!((at(1000) - 0.5).abs() < 1e-12);
        assert!((at(1200) - 0.968).abs() < 0.001, "{}", at(1200));
        assert!((at(900) - 0.032).abs() < 0.001, "{}", at(900));
        assert!(at(1100) > 0.8 && at(950) < 0.2);
        // Narrow (±0.5 %): 2 % over the estimate is nearly sure.
        assert!(memory_model_p(&e(1000, 995, 1005, Some(1020))) > 0.99);
        // Never steeper than MIN_WIDTH of the capacity: an sd of 100 bytes of 100,050.
        let exact = memory_model_p(&e(100_000, 100_000, 100_000, Some(100_050)));
        assert!(exact > 0.6 && exact < 0.8, "{exact}");
        assert_eq!(memory_model_p(&e(1000, 900, 1200, None)), 0.5);
    }

    #[test]
    fn trained_on_a_sharp_boundary() {
        let recs = training();
        assert!(recs.iter().any(|r| r.success) && recs.iter().any(|r| !r.success));
        let p = Predictor::train(&recs, Some("a"), Place::Gpu);
        assert!(!p.is_cold());
        assert_eq!(
            p.memory_fit().usable,
            recs.iter().filter(|r| r.success).count()
        );
        for b in BATCHES {
            for kv in KV {
                let best = optimum(b, kv);
                let at = |ctx: u32| p.predict(&shape(), &cfg(ctx, b, kv), Some(CAP));
                let opt = at(best);
                assert!(opt.estimate.fits == Some(true), "{:?}", opt.estimate);
                assert!(
                    opt.p_success >= 0.05,
                    "batch {b} {kv}: P {} at the optimum ctx {best}: {:?}",
                    opt.p_success,
                    opt.reasons
                );
                // Well below and well above the boundary, on and off the training grid.
                for ctx in (1..=best).step_by(1536).map(|c| c.min(best)) {
                    let pr = at(ctx);
                    if pr.estimate.load_ratio.unwrap() <= 0.8 {
                        assert!(pr.p_success > 0.9, "ctx {ctx} batch {b} {kv}: {pr:?}");
                    }
                }
                for ctx in (best + 256..=262144).step_by(2560) {
                    let pr = at(ctx);
                    if pr.estimate.load_ratio.unwrap() >= 1.2 {
                        assert!(pr.p_success < 0.1, "ctx {ctx} batch {b} {kv}: {pr:?}");
                    }
                }
            }
        }
        let pr = p.predict(&shape(), &cfg(4096, 512, "f16"), Some(CAP));
        assert_eq!(
            pr.basis,
            format!(
                "random forest on {} records ({} from this host)",
                recs.len(),
                recs.len()
            )
        );
    }

    #[test]
    fn rates_within_20_percent_on_held_out_configs() {
        // Every fifth configuration is held out of training and predicted.
        let (held, train): (Vec<_>, Vec<_>) = grid()
            .into_iter()
            .enumerate()
            .partition(|(i, _)| i % 5 == 2);
        let recs: Vec<Record> = train.into_iter().map(|(_, c)| probe("a", c, CAP)).collect();
        let p = Predictor::train(&recs, None, Place::Gpu);
        let mut checked = 0;
        let mut worst: f64 = 0.0;
        for (_, c) in held {
            if !probe("a", c.clone(), CAP).success {
                continue;
            }
            let (prefill, decode) = truth_rates(&c);
            let pr = p.predict(&shape(), &c, Some(CAP));
            let got_d = pr.decode_tokens_per_s.unwrap();
            let got_p = pr.prefill_tokens_per_s.unwrap();
            let err = ((got_d - decode).abs() / decode).max((got_p - prefill).abs() / prefill);
            assert!(
                err <= 0.2,
                "{c:?}: decode {got_d} vs {decode}, prefill {got_p} vs {prefill}"
            );
            worst = worst.max(err);
            checked += 1;
        }
        assert!(checked >= 8, "{checked} held-out successes");
        eprintln!("worst relative rate error on {checked} held-out configurations: {worst:.3}");
    }

    /// Rates need only successes: a store of successful probes alone (the classifier, which
    /// needs both outcomes, stays cold) predicts the simulated truth's rates of held-out
    /// configurations.
    #[test]
    fn rates_are_learned_from_successes_alone() {
        let ok: Vec<(usize, ProbeConfig)> = grid()
            .into_iter()
            .filter(|c| probe("a", c.clone(), CAP).success)
            .enumerate()
            .collect();
        let (held, train): (Vec<_>, Vec<_>) = ok.into_iter().partition(|(i, _)| i % 4 == 1);
        let recs: Vec<Record> = train.into_iter().map(|(_, c)| probe("a", c, CAP)).collect();
        let p = Predictor::train(&recs, None, Place::Gpu);
        assert!(p.is_cold(), "all succeeded: the classifier cannot train");
        assert!(!held.is_empty());
        for (_, c) in held {
            let (prefill, decode) = truth_rates(&c);
            let pr = p.predict(&shape(), &c, Some(CAP));
            let (got_p, got_d) = (
                pr.prefill_tokens_per_s.unwrap(),
                pr.decode_tokens_per_s.unwrap(),
            );
            let err = ((got_d - decode).abs() / decode).max((got_p - prefill).abs() / prefill);
            assert!(
                err <= 0.2,
                "{c:?}: decode {got_d} vs {decode}, prefill {got_p} vs {prefill}"
            );
            assert!(
                pr.reasons
                    .iter()
                    .any(|r| r.starts_with("rates: random forest on ")),
                "{:?}",
                pr.reasons
            );
        }
    }

    /// Past the deepest prompt measured a forest answers the deepest rate it saw; the time
    /// model's law (fitted to spans that follow the truth's) carries it to the depth asked.
    #[test]
    fn rates_past_the_deepest_measured_prompt_follow_the_time_model() {
        use crate::timing::{Obs, Prior, TimeModel};
        let recs: Vec<Record> = grid()
            .into_iter()
            .filter(|c| c.ctx <= 16384)
            .map(|c| probe("a", c, CAP))
            .collect();
        let p = Predictor::train(&recs, Some("a"), Place::Gpu);
        let c = cfg(65536, 512, "f16");
        let (_, want) = truth_rates(&c);
        let flat = p.predict(&shape(), &c, Some(CAP));
        let err = |got: f64| (got - want).abs() / want;
        assert!(err(flat.decode_tokens_per_s.unwrap()) > 0.3, "{flat:?}");
        assert!(
            flat.reasons
                .last()
                .unwrap()
                .contains("an upper bound (no time model"),
            "{:?}",
            flat.reasons
        );
        // Decode spans at the measured depths, from the truth's law (depth = 0.9 × ctx).
        let spans: Vec<Obs> = [1843u64, 3686, 7373, 14745]
            .iter()
            .map(|&d| Obs::Decode {
                depth: d,
                tokens: 1,
                s: (1.0 + d as f64 / 0.9 / 65536.0) / 60.0,
            })
            .collect();
        let mut time = TimeModel::new(Prior::from_size(None, None));
        time.observe(&spans);
        let p = p.with_time_model(time);
        // More than 4 times past the deepest span the law is not trusted: the forests' answer.
        let far = p.predict(&shape(), &cfg(131072, 512, "f16"), Some(CAP));
        assert!(
            far.reasons.last().unwrap().contains("an upper bound"),
            "{:?}",
            far.reasons
        );
        let carried = p.predict(&shape(), &c, Some(CAP));
        let got = carried.decode_tokens_per_s.unwrap();
        assert!(
            err(got) < 0.1,
            "decode {got} vs {want}: {:?}",
            carried.reasons
        );
        assert!(
            carried
                .reasons
                .last()
                .unwrap()
                .contains("carried by the time model's law"),
            "{:?}",
            carried.reasons
        );
    }

    #[test]
    fn untrusted_records_do_not_train_the_rates() {
        let mut recs = training();
        for r in &mut recs {
            r.trusted = false;
        }
        let p = Predictor::train(&recs, None, Place::Gpu);
        assert!(!p.is_cold());
        let pr = p.predict(&shape(), &cfg(4096, 512, "f16"), Some(CAP));
        assert_eq!(
            (pr.decode_tokens_per_s, pr.prefill_tokens_per_s),
            (None, None)
        );
        // Nor the memory law.
        assert_eq!(p.memory_fit().usable, 0);
    }

    /// Two hosts with the same memory disagree about the same configurations: the one
    /// predicting for itself follows its own records.
    #[test]
    fn this_host_weighs_more_when_hosts_disagree() {
        let mut recs = Vec::new();
        for b in BATCHES {
            for k in 1..=5 {
                let c = cfg(1024 << k, b, "f16");
                let mut a = probe("a", c.clone(), CAP);
                let mut bb = probe("b", c, CAP);
                // Host b fails from 16k on (another process holds memory there).
                if k >= 4 {
                    bb.success = false;
                    bb.outcome = OutcomeClass::Oom;
                }
                a.gpu_used_peak_bytes = None;
                bb.gpu_used_peak_bytes = None;
                recs.push(a);
                recs.push(bb);
            }
        }
        let c = cfg(32768, 512, "f16");
        let for_a = Predictor::train(&recs, Some("a"), Place::Gpu).predict(&shape(), &c, Some(CAP));
        let for_b = Predictor::train(&recs, Some("b"), Place::Gpu).predict(&shape(), &c, Some(CAP));
        assert!(
            for_a.p_success > for_b.p_success + 0.3,
            "a {} b {}",
            for_a.p_success,
            for_b.p_success
        );
        assert!(for_a
            .basis
            .ends_with(&format!("({} from this host)", recs.len() / 2)));
    }

    #[test]
    fn training_is_deterministic() {
        let recs = training();
        let c = cfg(40000, 512, "q8_0");
        let a = Predictor::train(&recs, Some("a"), Place::Gpu).predict(&shape(), &c, Some(CAP));
        let b = Predictor::train(&recs, Some("a"), Place::Gpu).predict(&shape(), &c, Some(CAP));
        assert_eq!(a.p_success, b.p_success);
        assert_eq!(a.decode_tokens_per_s, b.decode_tokens_per_s);
        assert_eq!(a.reasons, b.reasons);
    }

    /// The training grid where every context from 16k fails for a reason the memory model
    /// does not see (the server times out there), though most of it fits.
    fn timeouts_from_16k() -> Vec<Record> {
        training()
            .into_iter()
            .map(|mut r| {
                if r.config.ctx >= 16384 {
                    r.success = false;
                    r.outcome = OutcomeClass::Timeout;
                    r.gpu_used_peak_bytes = None;
                }
                r
            })
            .collect()
    }

    /// Cross-validation weighs the memory model by how well it explains the outcomes: wholly
    /// where it explains every one, at the floor where the trees see what it cannot.
    #[test]
    fn the_memory_model_weighs_what_it_explains() {
        let exact = Predictor::train(&training(), Some("a"), Place::Gpu);
        let s = exact.forests.as_ref().unwrap().stacking;
        assert_eq!(s.memory_weight, 1.0, "{s:?}");
        assert!(s.scored_rows > 0 && s.brier.unwrap() < 0.01, "{s:?}");
        let blind = Predictor::train(&timeouts_from_16k(), Some("a"), Place::Gpu);
        let s = blind.forests.as_ref().unwrap().stacking;
        assert!(s.memory_weight <= 0.5, "{s:?}");
        // It fits, and the trees say it times out: P follows the trees, above the floor.
        let pr = blind.predict(&shape(), &cfg(32768, 64, "q8_0"), Some(CAP));
        assert!(pr.estimate.fits == Some(true), "{:?}", pr.estimate);
        assert!(pr.p_success < 0.5 && pr.p_success >= 0.1, "{pr:?}");
        assert!(
            pr.reasons[1].contains("cross-validation"),
            "{:?}",
            pr.reasons
        );
    }

    #[test]
    fn reasons_name_the_driving_features() {
        // Below the timeouts: at the training mean context (above 16k) the trees say fail.
        let p = Predictor::train(&timeouts_from_16k(), Some("a"), Place::Gpu);
        let pr = p.predict(&shape(), &cfg(12288, 64, "q8_0"), Some(CAP));
        let named: Vec<&String> = pr
            .reasons
            .iter()
            .filter(|r| {
                FEATURE_NAMES
                    .iter()
                    .any(|f| r.starts_with(&format!("{f} = ")))
            })
            .collect();
        assert!(!named.is_empty(), "{:?}", pr.reasons);
        // Sorted by the size of the change.
        let deltas: Vec<f64> = named
            .iter()
            .map(|r| {
                r.rsplit('(')
                    .next()
                    .unwrap()
                    .trim_end_matches(')')
                    .parse()
                    .unwrap()
            })
            .collect();
        assert!(
            deltas.windows(2).all(|w| w[0].abs() >= w[1].abs()),
            "{deltas:?}"
        );
    }

    #[test]
    fn features_of_a_configuration() {
        let c = ProbeConfig {
            ctx: 8192,
            batch: Some(1024),
            ubatch: Some(256),
            parallel: Some(2),
            gpu_layers: Some(16),
            flash_attn: None,
            cache_type_k: Some("q8_0".into()),
            cache_type_v: Some("f16".into()),
            threads: None,
            server_bin: None,
        };
        let (f, e) = Features::of(&shape(), &c, Some(24 * GIB), &MemoryFit::prior(Place::Gpu));
        assert_eq!(f.load_ratio, e.load_ratio.unwrap());
        assert_eq!(
            (f.ctx, f.batch, f.ubatch, f.slots),
            (8192.0, 1024.0, 256.0, 2.0)
        );
        assert_eq!(f.kv_type_bytes, (34.0 / 32.0 + 2.0) / 2.0);
        assert_eq!((f.flash_attn, f.gpu_layers_fraction), (0.5, 0.5));
        assert!((f.parameters_billions - 8.03).abs() < 0.01);
        assert_eq!(
            f.kv_bytes_per_token,
            32.0 * 8.0 * 128.0 * (34.0 / 32.0 + 2.0)
        );
        assert_eq!(f.host_memory_class, 4.0);
        assert_eq!(f.to_vec().len(), FEATURE_NAMES.len());
        let unknown = features(
            &ModelShape::default(),
            &ProbeConfig::default(),
            None,
            &MemoryFit::prior(Place::Gpu),
        );
        assert_eq!(unknown[0], -1.0);
        assert_eq!(unknown[10], -1.0);
    }
}
