//! Learning at a run's start, decided once and kept in run.json: the time model's seed, an
//! earlier run to verify instead of searching, the context the search starts at, and this
//! run's entry in the results store. And the predictor the search prunes with.

use std::path::{Path, PathBuf};

use crate::backend::ProbeConfig;
use crate::config::Config;
use crate::learn::predict::Predictor;
use crate::learn::store::Store;
use crate::learn::ModelShape;
use crate::optimize::learned;
use crate::optimize::prune::{self, Chance};
use crate::optimize::search::Strategy;

use super::runfile::{RunFile, StoreRef};
use super::{Request, RunError};

/// Spans of earlier work the time model starts from, at most (the newest).
const TIME_SEED_SPANS: usize = 4000;

/// The results store, opened and with its ids of this host and model.
pub(super) struct Opened {
    db: PathBuf,
    store: Store,
}

/// The store learning uses, opened and checked before anything is written anywhere (a damaged
/// store is refused before o3 writes to it or creates the run directory); `None` when learning
/// is off.
pub(super) fn open_store(db: Option<&Path>, c: &Config) -> Result<Option<Opened>, RunError> {
    let l = &c.learning;
    if !(l.store_results || l.reuse_learned_configs || l.predict) {
        return Ok(None);
    }
    let db = db
        .map(Path::to_path_buf)
        .or_else(|| l.db.as_ref().map(PathBuf::from))
        .unwrap_or_else(crate::learn::store::default_path);
    let store = Store::open(&db)?;
    Ok(Some(Opened { db, store }))
}

/// Learning decided once, at a run's start: the store entries, what an earlier run lets this
/// one verify instead of search, where the search starts.
pub(super) fn at_start(
    rf: &mut RunFile,
    dir: &Path,
    opened: Option<Opened>,
    req: &Request,
) -> Result<(), RunError> {
    let Some(Opened { db, store }) = opened else {
        return Ok(());
    };
    let host_id = store.upsert_host(&rf.host)?;
    let model_id = store.upsert_model(&rf.target.model, &rf.model_digest, &rf.shape)?;
    let ids = Ids {
        store: &store,
        host: &host_id,
        model: &model_id,
    };
    let l = rf.config.learning.clone();
    let binary = req.strategy == Strategy::Binary;
    if l.reuse_learned_configs || l.predict {
        seed_time_model(rf, &ids);
    }
    if l.reuse_learned_configs && !req.no_reuse && binary {
        if rf.variants.is_empty() {
            reuse_learned(rf, &ids);
        } else {
            rf.learning_notes.push(
                "nothing reused: variants are compared (variants.*), so every one is measured"
                    .into(),
            );
        }
    }
    if l.predict && rf.learned.is_none() && binary {
        predict_start(rf, &ids);
    }
    if l.store_results {
        let run_id = begin_run(rf, &ids, dir)?;
        rf.store = Some(StoreRef {
            db,
            run_id,
            host_id,
            model_id,
        });
    }
    Ok(())
}

/// The store and this host's and model's ids in it.
struct Ids<'a> {
    store: &'a Store,
    host: &'a str,
    model: &'a str,
}

/// The time model starts from this model's last probes on this host.
fn seed_time_model(rf: &mut RunFile, ids: &Ids) {
    let mut seed = ids
        .store
        .timing(ids.host, ids.model, 64)
        .unwrap_or_default();
    seed.truncate(TIME_SEED_SPANS);
    if !seed.is_empty() {
        rf.learning_notes.push(format!(
            "the time model starts from {} spans of work measured by earlier runs",
            seed.len()
        ));
    }
    rf.time_seed = seed;
}

/// An earlier run of this model on this machine, to verify instead of searching.
fn reuse_learned(rf: &mut RunFile, ids: &Ids) {
    let now = crate::util::system::unix_now_ns() / 1_000_000_000;
    let max_age = rf.config.learning.max_age_days;
    match learned::to_verify(ids.store, &rf.host, ids.host, ids.model, max_age, now) {
        Ok(v) => rf.learned = Some(v),
        Err(why) => rf.learning_notes.push(format!("nothing reused: {why}")),
    }
}

/// The context the search starts at: the largest predicted to work; a predictor trained on
/// earlier runs is trusted to gallop from it.
fn predict_start(rf: &mut RunFile, ids: &Ids) {
    let records = ids.store.records(None, Some(ids.model)).unwrap_or_default();
    let p = Predictor::train(&records, Some(ids.host), super::facts::place(&rf.host));
    predict_variants(rf, &p);
    rf.start_context = start_context(rf, &p);
    rf.gallop = rf.start_context.is_some() && !p.is_cold();
    if let Some(s) = rf.start_context {
        rf.learning_notes.push(format!(
            "the search starts at ctx {s}, the largest context predicted to work ({})",
            if p.is_cold() {
                "memory model only"
            } else {
                "trained on earlier runs"
            }
        ));
    }
}

/// Below this chance of loading even the smallest context, a variant is not probed.
const PRUNE_BELOW: f64 = 0.02;

/// Each variant's largest context predicted to load; a variant predicted not to load even the
/// smallest context is pruned (with the prediction's words).
fn predict_variants(rf: &mut RunFile, p: &Predictor) {
    let c = &rf.config;
    let chance = chance(rf, p);
    let batch = Some(c.batch.initial_for(rf.shape.parameters));
    let verdicts: Vec<(Option<u32>, Option<String>)> = rf
        .variants
        .iter()
        .map(|v| {
            let base = ProbeConfig {
                batch,
                ubatch: c.batch.ubatch_at(v.base.ubatch, batch),
                ..v.base.clone()
            };
            let smallest = ProbeConfig {
                ctx: c.search.min_context,
                ..base.clone()
            };
            let (p_min, why) = chance.p_success(&smallest);
            // With the layer count unknown the memory model counts every layer: no verdict
            // on a variant that offloads only some.
            let layers_unknown = base.gpu_layers.is_some() && rf.shape.block_count.is_none();
            if p_min < PRUNE_BELOW && !layers_unknown {
                let why = format!(
                    "predicted not to load ctx {} (P = {p_min:.3}: {why})",
                    c.search.min_context
                );
                return (None, Some(why));
            }
            (predicted_start(rf, &chance, &base), None)
        })
        .collect();
    for (v, (predicted, pruned)) in rf.variants.iter_mut().zip(verdicts) {
        v.predicted = predicted;
        v.pruned = pruned;
    }
}

/// The predictor as the search's chance of success on this run's model and machine.
fn chance<'a>(rf: &'a RunFile, p: &'a Predictor) -> Predicted<'a> {
    Predicted {
        predictor: p,
        shape: &rf.shape,
        capacity: rf.capacity_bytes,
    }
}

/// The largest context of the search's range that `p` predicts to work at the initial batch.
fn start_context(rf: &RunFile, p: &Predictor) -> Option<u32> {
    let base = ProbeConfig {
        batch: Some(rf.config.batch.initial_for(rf.shape.parameters)),
        ..rf.target.base.clone()
    };
    predicted_start(rf, &chance(rf, p), &base)
}

/// The largest context of the search's range that `chance` predicts to work with `base`.
fn predicted_start(rf: &RunFile, chance: &Predicted, base: &ProbeConfig) -> Option<u32> {
    let c = &rf.config;
    let top = rf
        .shape
        .trained_context
        .map_or(c.search.max_context, |t| t.min(c.search.max_context));
    prune::start_context(
        chance,
        base,
        c.search.min_context,
        top,
        c.search.granularity,
    )
}

/// This run's entry in the store.
fn begin_run(rf: &RunFile, ids: &Ids, dir: &Path) -> Result<i64, RunError> {
    let config_json = serde_json::to_string(&rf.config).unwrap_or_default();
    Ok(ids.store.begin_run(
        ids.host,
        ids.model,
        rf.target.backend.store_name(),
        &dir.display().to_string(),
        &config_json,
    )?)
}

/// No predictor: nothing is skipped.
pub(super) struct NeverSkip;

impl Chance for NeverSkip {
    fn p_success(&self, _: &ProbeConfig) -> (f64, String) {
        (1.0, "no prediction".into())
    }
}

/// The predictor as the search's [`Chance`].
pub(super) struct Predicted<'a> {
    pub predictor: &'a Predictor,
    pub shape: &'a ModelShape,
    pub capacity: Option<u64>,
}

impl Chance for Predicted<'_> {
    fn p_success(&self, cfg: &ProbeConfig) -> (f64, String) {
        let p = self.predictor.predict(self.shape, cfg, self.capacity);
        (p.p_success, p.basis)
    }
}

/// The predictor that may skip probes: trained from the store's records of this model (all
/// hosts, this one weighted higher); `None` when prediction is off or nothing was learned yet
/// (the memory model alone is only trusted to pick the first probe: an estimate 10 % high
/// would otherwise skip the optimum).
pub(super) fn trained_predictor(store: Option<&Store>, rf: &RunFile) -> Option<Predictor> {
    let (st, r) = (store?, rf.store.as_ref()?);
    if !rf.config.learning.predict {
        return None;
    }
    let records = st.records(None, Some(&r.model_id)).unwrap_or_default();
    Some(Predictor::train(
        &records,
        Some(&r.host_id),
        super::facts::place(&rf.host),
    ))
    .filter(|p| !p.is_cold())
}
