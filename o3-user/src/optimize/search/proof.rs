//! Stage 3, the proof of the maximum: validation filled to depth at the largest context that
//! loads. A batch that does not load there falls back down the ladder; a context that loads but
//! fails filled is bisected with filled probes; one that fails validation steps down a granule,
//! and after three such failures in a row 2, 4, 8 … granules, bisecting the gap above the first
//! that passes.

use crate::backend::OutcomeClass;
use crate::optimize::prober::Prober;

use super::state::Search;
use super::{batch_ladder, ContextProbe, Measured, Observer, Report};

/// Validations failing in a row (a granule apart) before the proof's steps down double.
const STEPS_BEFORE_GALLOPING: u32 = 3;

/// How a filled validation failed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Failure {
    /// Nothing was measured: the configuration did not load (or the server went away first).
    Load,
    /// The prompt at depth failed (loads but fails filled).
    Fill,
    /// The fill passed; later samples failed or varied too much.
    Unstable,
}

fn failure(m: &Measured) -> Failure {
    if !m.loaded {
        Failure::Load
    } else if !m.fill_ok {
        Failure::Fill
    } else {
        Failure::Unstable
    }
}

/// Where the proof stands, in grid indices.
#[derive(Debug, Clone)]
struct Proof {
    /// The batches to prove with, largest first: the ranking's choice and those below it.
    batches: Vec<Option<u32>>,
    /// The one in use.
    bi: usize,
    /// The largest index known to pass filled; one below the range while none is.
    lo: i64,
    /// The largest not known to fail.
    hi: i64,
    /// The next to validate.
    k: i64,
    /// A fill failed, or a pass followed a gallop down: later failures bisect instead of
    /// stepping down.
    bisect: bool,
    /// Validations failed in a row (unstable, not a failed fill).
    unstable_in_a_row: u32,
    /// Granules the next step down spans: 1, then doubling after [`STEPS_BEFORE_GALLOPING`]
    /// failures in a row.
    stride: i64,
    /// Validations counted against `search.max_iterations`.
    attempts: u32,
}

impl Proof {
    fn new(batches: Vec<Option<u32>>, lo_k: u32, kmax: u32) -> Proof {
        Proof {
            batches,
            bi: 0,
            lo: i64::from(lo_k) - 1,
            hi: i64::from(kmax),
            k: i64::from(kmax),
            bisect: false,
            unstable_in_a_row: 0,
            stride: 1,
            attempts: 0,
        }
    }

    /// The batch in use (`batch0` when the ladder is empty).
    fn batch(&self, batch0: Option<u32>) -> Option<u32> {
        self.batches.get(self.bi).copied().unwrap_or(batch0)
    }

    /// The next batch down the ladder, if there is one.
    fn smaller_batch(&self) -> Option<Option<u32>> {
        self.batches.get(self.bi + 1).copied()
    }

    fn mid(&self) -> i64 {
        (self.lo + self.hi + 1) / 2
    }

    /// `k` passed; whether the proof is done.
    fn passed(&mut self) -> bool {
        self.unstable_in_a_row = 0;
        // Galloped past the boundary: the gap above is bisected.
        self.bisect |= self.stride > 1;
        self.lo = self.k;
        if self.lo >= self.hi {
            return true;
        }
        self.k = self.mid();
        false
    }

    /// `k` failed filled (or did not load at the smallest batch): bisect below it.
    fn failed_filled(&mut self) {
        self.bisect = true;
        self.hi = self.k - 1;
        self.k = self.mid();
    }

    /// `k` failed validation: a granule down; after [`STEPS_BEFORE_GALLOPING`] failures in a
    /// row 2, 4, 8 … granules (a zone that fails validation far below the memory limit would
    /// otherwise cost one filled validation, minutes to an hour at depth, per granule); once a
    /// fill failed or a gallop passed, bisecting.
    fn failed_validation(&mut self) {
        self.unstable_in_a_row += 1;
        self.hi = self.k - 1;
        if self.bisect {
            self.k = self.mid();
            return;
        }
        if self.unstable_in_a_row >= STEPS_BEFORE_GALLOPING {
            self.stride *= 2;
        }
        self.k = (self.hi - (self.stride - 1)).max(self.lo + 1);
    }
}

/// One validation of the proof: where, with which batch, how it failed (`None`: stable).
struct Attempt {
    ctx: u32,
    batch: Option<u32>,
    failure: Option<Failure>,
    why: String,
}

impl<P: Prober, O: Observer + ?Sized> Search<'_, '_, P, O> {
    /// Stage 3: the proof of the maximum, from the largest grid index that loads (`kmax`) with
    /// the ranking's batch (`best`). Returns the validated grid index and its batch.
    pub(super) fn prove_max(
        &mut self,
        report: &mut Report,
        kmax: u32,
        best: Option<u32>,
    ) -> Option<Option<(u32, Option<u32>)>> {
        let mut p = Proof::new(self.proof_batches(best), self.lo_k, kmax);
        let max_iterations = self.cfg().search.max_iterations;
        while p.lo < p.hi {
            if p.attempts >= max_iterations {
                self.note(format!(
                    "the proof of the maximum stopped after {} filled probes (search.max_iterations)",
                    p.attempts
                ));
                break;
            }
            p.attempts += 1;
            let a = self.prove_at(report, &p, kmax)?;
            match a.failure {
                None if p.passed() => break,
                None => {}
                Some(f) => {
                    self.proof_failed(report, &mut p, &a, f);
                    if p.k < i64::from(self.lo_k) {
                        break;
                    }
                }
            }
        }
        if p.lo < i64::from(self.lo_k) {
            self.note("no context passed statistical validation filled to depth".into());
            return Some(None);
        }
        Some(Some((p.lo as u32, p.batch(self.batch0))))
    }

    /// The batches to prove with: the ladder up to `best`, largest first.
    fn proof_batches(&self, best: Option<u32>) -> Vec<Option<u32>> {
        let c = self.cfg();
        let mut batches: Vec<Option<u32>> =
            batch_ladder(self.batch0, c.batch.scale_factor, c.batch.max_batch)
                .into_iter()
                .filter(|b| *b <= best)
                .collect();
        batches.reverse();
        batches
    }

    /// One filled validation at the proof's next context, kept in the report (the floor
    /// measured from the first that passes at the maximum).
    fn prove_at(&mut self, report: &mut Report, p: &Proof, kmax: u32) -> Option<Attempt> {
        let ctx = p.k as u32 * self.g;
        let batch = p.batch(self.batch0);
        self.todo.proof = Some(ctx);
        self.todo.max_ctx = ctx;
        let m = self.validate_filled(ctx, batch)?;
        if p.attempts > 1 || p.bi > 0 {
            self.extra_required_s += m.wall_s;
        }
        self.todo.proof = None;
        report.context.proofs.push(ContextProbe {
            ctx,
            passed: m.stable,
            outcome: m.outcome,
            error: m.error.clone(),
        });
        if m.stable && self.floor_measured.is_none() && m.config.ctx == kmax * self.g {
            self.floor_measured = Some(self.measured_floor(&m));
        }
        let a = Attempt {
            ctx,
            batch,
            failure: (!m.stable).then(|| failure(&m)),
            why: Self::why_unstable(&m),
        };
        self.configurations.push(m);
        Some(a)
    }

    /// What a failed validation changes: a smaller batch where the batch did not load, else
    /// the context steps down (bisecting below a fill that failed).
    fn proof_failed(&mut self, report: &mut Report, p: &mut Proof, a: &Attempt, f: Failure) {
        let (ctx, why) = (a.ctx, &a.why);
        match (f, p.smaller_batch()) {
            (Failure::Load, Some(smaller)) => {
                let show = |b: Option<u32>| b.map_or("default".into(), |b| b.to_string());
                self.note(format!(
                    "ctx {ctx}: batch {} does not load filled ({why}); proving with batch {}",
                    show(a.batch),
                    show(smaller)
                ));
                p.bi += 1;
                p.attempts -= 1;
            }
            (Failure::Fill | Failure::Load, _) => {
                if report.context.fails_filled.is_none() {
                    report.context.fails_filled = Some(ContextProbe {
                        ctx,
                        passed: false,
                        outcome: report
                            .context
                            .proofs
                            .last()
                            .map_or(OutcomeClass::Oom, |p| p.outcome),
                        error: Some(why.clone()),
                    });
                }
                self.note(format!("loads at {ctx} but fails filled: {why}"));
                report.context.step_downs += 1;
                p.failed_filled();
            }
            (Failure::Unstable, _) => {
                self.note(format!("ctx {ctx} failed validation: {why}"));
                report.context.step_downs += 1;
                p.failed_validation();
            }
        }
    }

    /// The floor as the proof measured it: its load, its fill request, one sample's decode.
    fn measured_floor(&self, m: &Measured) -> f64 {
        let load = self.model.load().expected_s;
        let fill = m.ttft_p50_ms.map(|ms| ms / 1000.0);
        let decode = m
            .validation
            .decode_tokens_per_s
            .as_ref()
            .map(|d| f64::from(self.cfg().prompt.output_tokens) / d.median);
        match (fill, decode) {
            (Some(f), Some(d)) => load + f + d,
            _ => m.wall_s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passing_proof_bisects_upward_and_failures_step_down() {
        let mut p = Proof::new(vec![Some(512), Some(256)], 2, 10);
        // Unstable at 10: one granule down.
        p.failed_validation();
        assert_eq!((p.lo, p.hi, p.k), (1, 9, 9));
        // A fill failure at 9: bisect below it from now on.
        p.failed_filled();
        assert_eq!((p.hi, p.k, p.bisect), (8, 5, true));
        assert!(!p.passed());
        assert_eq!((p.lo, p.k), (5, 7));
        p.failed_validation();
        assert_eq!((p.hi, p.k), (6, 6));
        assert!(p.passed());
        assert_eq!(p.lo, 6);
    }

    #[test]
    fn the_batch_falls_back_down_the_ladder() {
        let mut p = Proof::new(vec![Some(512), Some(256)], 1, 4);
        assert_eq!(p.batch(Some(64)), Some(512));
        assert_eq!(p.smaller_batch(), Some(Some(256)));
        p.bi += 1;
        assert_eq!(p.smaller_batch(), None);
        // No ladder: the initial batch.
        assert_eq!(Proof::new(Vec::new(), 1, 4).batch(Some(64)), Some(64));
    }
}
