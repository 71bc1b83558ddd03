//! The search as a run makes it: the prober wrapped, from the inside out, in one retry of a
//! hiccup, the heat guard, the predictor's pruning and the journal (which also hands each
//! finished probe to the results store), and the search's inputs from run.json.

use crate::learn::memory;
use crate::learn::predict::{self, Predictor};
use crate::learn::store::{PredictionRow, Store};
use crate::optimize::heat;
use crate::optimize::journal::{Journal, Journaled, Sink};
use crate::optimize::learned;
use crate::optimize::progress::Events;
use crate::optimize::prune::{self, Chance, Pruned};
use crate::optimize::retry::Retried;
use crate::optimize::search::{self, Inputs, Report, Strategy};
use crate::timing::{Prior, TimeModel};

use super::learning::{trained_predictor, NeverSkip, Predicted};
use super::prober::Any;
use super::runfile::{RunFile, StoreRef};
use super::{Roots, RunError};

/// What the search did, with what its wrappers kept.
pub(super) struct Searched {
    pub report: Report,
    /// Probes run now, and answered from the journal.
    pub ran: u32,
    pub replayed: u32,
    pub skips: Vec<prune::Skip>,
    pub explored: Vec<prune::Explored>,
}

/// Runs the search to its end, or until it is stopped; a journal that cannot be written (or a
/// store that cannot take a probe) is an error once the progress display is cleared.
pub(super) fn search<E: Events>(
    rf: &RunFile,
    store: Option<&Store>,
    prober: &mut Any,
    journal: &mut Journal,
    roots: &Roots,
    strategy: Strategy,
    ev: &mut E,
) -> Result<Searched, RunError> {
    ev.start();
    let inputs = inputs(rf, strategy);
    let trained = trained_predictor(store, rf);
    let predicted = trained.as_ref().map(|p| Predicted {
        predictor: p,
        shape: &rf.shape,
        capacity: rf.capacity_bytes,
    });
    let chance: &dyn Chance = match &predicted {
        Some(p) => p,
        None => &NeverSkip,
    };
    // A temperature or CPU breach is waited out (a stop request ends the wait) and retried
    // once; a second one stops the run, resumably.
    let machine = heat::Machine::new(
        roots.procfs.clone(),
        roots.sysfs.clone(),
        roots.dev.clone(),
        rf.config.safety.thresholds(),
    );
    let sleep = heat::sleep_unless(prober.stop_flag());
    let mut retried = Retried::new(&mut *prober);
    let mut cooled = heat::Cooled::new(&mut retried, machine).with_sleep(sleep);
    let l = &rf.config.learning;
    let mut pruned = Pruned::new(&mut cooled, chance, l.min_p_success, l.exploration_probes);
    let mut jp = Journaled::new(&mut pruned, journal);
    if let (Some(st), Some(r)) = (store, &rf.store) {
        jp.sink = Some(store_sink(st, r, rf));
    }
    let mut report = search::run(&inputs, &mut jp, ev);
    let (ran, replayed, jerr) = (jp.ran, jp.replayed, jp.error.take());
    drop(jp);
    let (skips, explored) = (
        std::mem::take(&mut pruned.skips),
        std::mem::take(&mut pruned.explored),
    );
    drop(pruned);
    let heat_stop = cooled.stopped.take();
    drop(cooled);
    drop(retried);
    ev.finish();
    if let Some(n) = prober.busy_note() {
        report.notes.push(n);
    }
    if let (Some(st), Some(r)) = (store, &rf.store) {
        for k in &skips {
            st.add_skip(r.run_id, &k.config, k.p_success, &k.basis)?;
        }
    }
    if let Some(e) = jerr {
        return Err(e.into());
    }
    if let Some(why) = heat_stop {
        ev.say(&why);
        report.notes.push(why);
    }
    Ok(Searched {
        report,
        ran,
        replayed,
        skips,
        explored,
    })
}

/// The search's inputs: run.json's facts and decisions.
fn inputs(rf: &RunFile, strategy: Strategy) -> Inputs<'_> {
    Inputs {
        config: &rf.config,
        base: rf.target.base.clone(),
        trained_context: rf.shape.trained_context,
        parameters: rf.shape.parameters,
        weights_bytes: rf.shape.weights_bytes,
        start_context: rf.start_context,
        gallop: rf.gallop,
        strategy,
        learned: rf.learned.clone(),
        time_model: seeded_time_model(rf),
        variants: rf.variants.clone(),
    }
}

/// The time model fitted to earlier runs' spans of work (`None`: there are none, the search
/// starts from the model's size).
fn seeded_time_model(rf: &RunFile) -> Option<TimeModel> {
    if rf.time_seed.is_empty() {
        return None;
    }
    let mut m = TimeModel::new(Prior::from_size(
        rf.shape.parameters,
        rf.shape.weights_bytes,
    ));
    m.prior.source = "earlier runs of this model on this machine".into();
    m.observe(&rf.time_seed);
    Some(m)
}

/// Each probe run now, as a record of the results store, with what o3 predicted for it from
/// what was stored before it (its running error: `o3 predict`, the report).
fn store_sink<'a>(st: &'a Store, r: &'a StoreRef, rf: &RunFile) -> Sink<'a> {
    let (shape, cap) = (rf.shape.clone(), rf.capacity_bytes);
    let prompt = rf.config.prompt.clone();
    let place = super::facts::place(&rf.host);
    let mut cached: Option<(usize, Predictor)> = None;
    Box::new(move |req, out, raw| {
        let depth = prompt.depth_tokens(req.config.ctx);
        let rec = learned::record_of(req, out, depth, &r.host_id, &r.model_id, &shape, cap);
        let before = st.records(None, Some(&r.model_id))?;
        if cached.as_ref().is_none_or(|(n, _)| stale(*n, before.len())) {
            let mut time = TimeModel::new(Prior::from_size(shape.parameters, shape.weights_bytes));
            time.observe(&st.timing(&r.host_id, &r.model_id, 64)?);
            let p = Predictor::train(&before, Some(&r.host_id), place).with_time_model(time);
            cached = Some((before.len(), p));
        }
        let Some((_, predictor)) = cached.as_ref() else {
            unreachable!("trained above")
        };
        let predicted = predictor.predict_at(
            &shape,
            &rec.config,
            cap,
            memory::fill_of(&rec),
            predict::depth_of(&rec),
        );
        let raw = raw.map(|v| v.to_string());
        let id = st.add_probe(r.run_id, req.stage.name(), &rec, raw.as_deref())?;
        st.add_prediction(id, &PredictionRow::of(&predicted))?;
        Ok(())
    })
}

/// Whether a predictor trained on `trained` records is to be trained again now that there are
/// `now`: after every new record while there are few, after a tenth more once there are many
/// (training costs a second on a thousand records; a sweep can run a thousand probes).
fn stale(trained: usize, now: usize) -> bool {
    now >= trained + (trained / 10).max(1)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_predictor_is_retrained_after_each_new_record_then_each_tenth_more() {
        use super::stale;
        assert!(!stale(0, 0));
        assert!(stale(0, 1));
        assert!(stale(9, 10));
        assert!(!stale(100, 109));
        assert!(stale(100, 110));
        assert!(!stale(1000, 1099));
    }
}
