//! What a run will cost, from the time model: each kind of probe's predicted duration, the
//! floor (the least any honest answer costs), the budget, and which optional work fits in it.
//!
//! The floor of a run is one load, one prompt filled to `prompt.fill` of the validated maximum
//! and one sample's decode: proving the answer at depth cannot cost less. The budget is the
//! user's (`--budget`, `plan.budget_s`), or by default `plan.floor_multiple` times the floor
//! (never less than `plan.min_budget_s`), plus any extra proofs the maximum needed.
//! Optional work is admitted by priority while its predicted cost fits what is left; the
//! context search and the proof of the maximum are never cut. Every prediction is re-made
//! from the measured model before each probe, and from time already spent (probe times from
//! the journal, so a resumed run decides the same).

use serde::Serialize;

use crate::timing::{Estimate, TimeModel};
use crate::util::units::span as human;

use super::prober::Depth;
use super::sim::SHORT_TOKENS;

/// One probe's predicted duration, s.
pub fn probe_cost(
    model: &TimeModel,
    depth: Depth,
    rounds: u32,
    streams: u32,
    output_tokens: u32,
) -> Estimate {
    let out = u64::from(output_tokens);
    let k = f64::from(streams.max(1));
    let load = model.load();
    let body = match depth {
        Depth::Load => model.request(0, SHORT_TOKENS, out).times(f64::from(rounds)),
        Depth::Fresh { tokens } => {
            let t = u64::from(tokens);
            model
                .fill(0, t)
                .times(k)
                .plus(model.decode(t, out))
                .times(f64::from(rounds))
        }
        Depth::Filled { tokens } => {
            let t = u64::from(tokens);
            let reuse = model.prefix_reuse != Some(false) && crate::probe::reusable(t);
            let first = model.fill(0, t).times(k).plus(model.decode(t, out));
            let again = if reuse {
                model
                    .fill(t - crate::probe::suffix_tokens(t), t)
                    .times(k)
                    .plus(model.decode(t, out))
            } else {
                first
            };
            first.plus(again.times(f64::from(rounds.saturating_sub(1))))
        }
    };
    load.plus(body)
}

/// The floor of a run whose answer needs a prompt of `tokens`: one load, one fill, one
/// sample's decode, s.
pub fn floor(model: &TimeModel, tokens: u64, output_tokens: u32) -> Estimate {
    model
        .load()
        .plus(model.request(0, tokens, u64::from(output_tokens)))
}

/// Work that may be cut, highest priority first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// The context search and the proof of the maximum: never cut.
    Required,
    /// Comparing the variants the user asked for (`variants.*`): a context search of load
    /// probes and a ranking at a moderate depth each.
    Variant,
    /// Ranking batches: cheap (a moderate depth), and a better batch speeds every fill after
    /// it, the proof included.
    Batch,
    /// Proving a preset's own (smaller) context.
    PresetContext,
    /// A concurrency level below the maximum context.
    Concurrency,
    /// A concurrency level at the maximum context (each stream fills the whole depth).
    ConcurrencyAtMax,
}

/// An item of the remaining plan.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub what: String,
    pub priority: Priority,
    pub cost: Estimate,
}

/// The budget in force, s (`None`: unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Budget {
    /// The user's budget, s.
    pub fixed_s: Option<f64>,
    /// Otherwise this multiple of the floor (0: none) ...
    pub floor_multiple: f64,
    /// ... but never less than this, s: a run whose whole plan is short is not cut.
    pub min_s: f64,
}

impl Budget {
    /// Seconds the whole run may take, given the current floor.
    pub fn total_s(&self, floor_s: f64) -> Option<f64> {
        match self.fixed_s {
            Some(s) => Some(s),
            None if self.floor_multiple > 0.0 => {
                Some((self.floor_multiple * floor_s).max(self.min_s))
            }
            None => None,
        }
    }

    pub fn describe(&self, floor_s: f64) -> String {
        match (self.fixed_s, self.total_s(floor_s)) {
            (Some(s), _) => format!("budget {} (--budget)", human(s)),
            (None, Some(s)) if s > self.floor_multiple * floor_s => format!(
                "budget {} (plan.min_budget_s; {}× the floor of {} is less)",
                human(s),
                self.floor_multiple,
                human(floor_s)
            ),
            (None, Some(s)) => format!(
                "budget {} ({}× the floor of {})",
                human(s),
                self.floor_multiple,
                human(floor_s)
            ),
            (None, None) => "no budget".into(),
        }
    }
}

/// Work of a higher priority than the item being decided is reserved with this margin on its
/// expected cost, so that a prediction that proves optimistic eats into optional work, not into
/// what ranks above it.
pub const RESERVE: f64 = 1.5;

/// The item being decided is admitted only with this margin on its own expected cost.
pub const MARGIN: f64 = 1.1;

/// Optional work that does not fit what is left of the budget.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{what} (predicted {}) does not fit the {} left after higher-priority work", human(*.predicted_s), human(*.left_s))]
pub struct Cut {
    /// The work, in words.
    pub what: String,
    pub predicted_s: f64,
    /// What is left after the work ranked above it, s.
    pub left_s: f64,
}

/// Whether `next` (the first of `remaining`, in execution order) fits: items are admitted by
/// priority (ties in execution order) while their costs fit what is left, the ones ranked above
/// `next` counted with the [`RESERVE`] margin; required items always are. Returns the [`Cut`]
/// where it does not.
pub fn admit(remaining: &[Item], left_s: Option<f64>) -> Result<(), Cut> {
    let Some(next) = remaining.first() else {
        return Ok(());
    };
    if next.priority == Priority::Required {
        return Ok(());
    }
    let Some(left) = left_s else {
        return Ok(());
    };
    let mut used = 0.0;
    for i in by_priority(remaining) {
        let it = &remaining[i];
        let cost = if i == 0 {
            it.cost.expected_s * MARGIN
        } else {
            it.cost.expected_s * RESERVE
        };
        let fits = it.priority == Priority::Required || used + cost <= left;
        if fits {
            used += cost;
        }
        if i == 0 {
            return if fits {
                Ok(())
            } else {
                Err(Cut {
                    what: next.what.clone(),
                    predicted_s: next.cost.expected_s,
                    left_s: (left - used).max(0.0),
                })
            };
        }
    }
    Ok(())
}

/// Indices of `items` by priority, ties in execution order: the order admission goes in.
fn by_priority(items: &[Item]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| (items[i].priority, i));
    order
}

/// Expected time of the work in `items` that admission would let through with `left_s` left
/// (no margins: the ETA's view), s.
pub fn admitted_s(items: &[Item], left_s: Option<f64>) -> f64 {
    let mut used = 0.0;
    for i in by_priority(items) {
        let it = &items[i];
        let fits = it.priority == Priority::Required
            || left_s.is_none_or(|l| used + it.cost.expected_s <= l);
        if fits {
            used += it.cost.expected_s;
        }
    }
    used
}

/// What the run planned, spent and cut (summary.json `plan`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The whole run as predicted before the first probe, s.
    pub predicted_at_start_s: Option<f64>,
    /// Sum of the probes' own times, s (simulated time on the simulator).
    pub spent_s: f64,
    /// The floor: one load, one fill to the validated maximum, one sample's decode; measured
    /// where the proof ran, else predicted.
    pub floor_s: Option<f64>,
    /// The run in floor units.
    pub floor_units: Option<f64>,
    pub budget_s: Option<f64>,
    pub budget: String,
    /// Work the budget cut, each with why.
    pub cut: Vec<String>,
    /// The time model at the end, in words.
    pub time_model: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timing::{Obs, Prior};

    fn model() -> TimeModel {
        let mut m = TimeModel::new(Prior::from_size(Some(8_000_000_000), None));
        for d in [1000u64, 8000, 32000] {
            let df = d as f64;
            m.observe(&[
                Obs::Prefill {
                    from: 0,
                    to: d,
                    s: (df + df * df / 16384.0) / 1000.0,
                    batch: None,
                },
                Obs::Decode {
                    depth: d,
                    tokens: 64,
                    s: 64.0 / 50.0,
                },
                Obs::Load { s: 10.0 },
            ]);
        }
        m
    }

    fn item(what: &str, p: Priority, s: f64) -> Item {
        Item {
            what: what.into(),
            priority: p,
            cost: Estimate {
                expected_s: s,
                upper_s: s,
            },
        }
    }

    #[test]
    fn a_filled_probe_pays_depth_once_unless_the_server_cannot_reuse() {
        let mut m = model();
        let one = probe_cost(&m, Depth::Filled { tokens: 30_000 }, 1, 1, 64);
        let five = probe_cost(&m, Depth::Filled { tokens: 30_000 }, 5, 1, 64);
        let fill = m.fill(0, 30_000).expected_s;
        assert!(
            five.expected_s - one.expected_s < 0.2 * fill,
            "{one:?} {five:?}"
        );
        m.observe_reuse(false);
        let five = probe_cost(&m, Depth::Filled { tokens: 30_000 }, 5, 1, 64);
        assert!(five.expected_s - one.expected_s > 3.9 * fill);
        // Two streams read two prompts.
        let two = probe_cost(&m, Depth::Filled { tokens: 30_000 }, 1, 2, 64);
        assert!(two.expected_s - one.expected_s > 0.99 * fill);
    }

    #[test]
    fn the_floor_is_a_load_a_fill_and_a_decode() {
        let m = model();
        let f = floor(&m, 30_000, 64);
        let want = 10.0 + m.fill(0, 30_000).expected_s + m.decode(30_000, 64).expected_s;
        assert!((f.expected_s - want).abs() < 1e-9);
    }

    #[test]
    fn admission_by_priority_never_cuts_what_is_required() {
        let plan = [
            item("balanced", Priority::PresetContext, 40.0),
            item("proof", Priority::Required, 500.0),
            item("batch ranking", Priority::Batch, 50.0),
            item("2 streams at max", Priority::ConcurrencyAtMax, 900.0),
        ];
        // The work above the balanced proof is reserved with a margin, 1.5 × (500 + 50) = 825,
        // and the proof itself needs 1.1 × 40 = 44.
        let e = admit(&plan, Some(865.0)).unwrap_err();
        assert_eq!((e.what.as_str(), e.predicted_s), ("balanced", 40.0));
        assert!(
            e.to_string()
                .starts_with("balanced (predicted 40 s) does not fit"),
            "{e}"
        );
        assert!(admit(&plan, Some(870.0)).is_ok());
        assert!(admit(&plan, None).is_ok());
        // Required work runs even with nothing left.
        assert!(admit(&plan[1..], Some(0.0)).is_ok());
        assert!(admit(&plan[3..], Some(100.0)).is_err());
    }

    #[test]
    fn budgets() {
        let b = Budget {
            fixed_s: None,
            floor_multiple: 2.0,
            min_s: 600.0,
        };
        assert_eq!(b.total_s(1000.0), Some(2000.0));
        assert!(b.describe(3600.0).contains("2× the floor of 60.0 min"));
        // A short run is not cut.
        assert_eq!(b.total_s(100.0), Some(600.0));
        assert!(b.describe(100.0).contains("plan.min_budget_s"));
        let none = Budget {
            fixed_s: None,
            floor_multiple: 0.0,
            min_s: 600.0,
        };
        assert_eq!(none.total_s(100.0), None);
        let fixed = Budget {
            fixed_s: Some(7200.0),
            floor_multiple: 2.0,
            min_s: 600.0,
        };
        assert_eq!(fixed.total_s(1e9), Some(7200.0));
    }
}
