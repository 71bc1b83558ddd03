//! Stage 1, the context search: the largest context that loads, by bisection (or a gallop
//! from a trained prediction); the baselines step upward.

use crate::optimize::prober::{ProbeRequest, Prober, Stage};

use super::state::Search;
use super::{ceil_log2, ContextProbe, ContextSearch, Observer, Strategy};

/// Where the context search stands, in grid indices (multiples of the granularity).
#[derive(Debug, Clone)]
struct Bracket {
    /// The largest index known to load; one below the range while none is.
    lo: i64,
    /// The largest index not known to fail.
    hi: i64,
    /// Where the first probe goes.
    start_k: i64,
    /// Probes asked so far.
    iterations: u32,
    strategy: Strategy,
    /// Gallop from `start_k` (a trained prediction) until the answer is bracketed.
    gallop: bool,
    /// The gallop's direction (0: bisecting) and its next stride.
    dir: i64,
    stride: i64,
}

impl Bracket {
    /// The range `lo_k..=hi_k` with nothing known, starting at `start_k` (clamped into it).
    fn new(lo_k: u32, hi_k: u32, start_k: i64, strategy: Strategy, gallop: bool) -> Bracket {
        Bracket {
            lo: i64::from(lo_k) - 1,
            hi: i64::from(hi_k),
            start_k: start_k.clamp(i64::from(lo_k), i64::from(hi_k)),
            iterations: 0,
            strategy,
            gallop,
            dir: 0,
            stride: 1,
        }
    }

    /// Whether the answer is known.
    fn converged(&self) -> bool {
        self.lo >= self.hi
    }

    /// The next index to probe.
    fn next(&mut self) -> i64 {
        let (lo, hi) = (self.lo, self.hi);
        let mid = match self.strategy {
            Strategy::Linear => lo + 1,
            _ if self.iterations == 0 => self.start_k.clamp(lo + 1, hi),
            // From a prediction: gallop away from it (1, 2, 4 … granules past the last
            // result) until the answer is bracketed, then bisect; an accurate prediction ends
            // in two or three probes.
            _ if self.dir != 0 => {
                let m = if self.dir > 0 {
                    lo + self.stride
                } else {
                    hi - (self.stride - 1)
                };
                self.stride *= 2;
                m.clamp(lo + 1, hi)
            }
            _ => (lo + hi + 1) / 2,
        };
        self.iterations += 1;
        mid
    }

    /// What the probe at `mid` showed.
    fn record(&mut self, mid: i64, passed: bool) {
        if passed {
            self.lo = mid;
        } else {
            self.hi = mid - 1;
        }
        if self.iterations == 1 && self.gallop && self.strategy == Strategy::Binary {
            self.dir = if passed { 1 } else { -1 };
        } else if (self.dir > 0 && !passed) || (self.dir < 0 && passed) {
            self.dir = 0;
        }
    }

    /// Probes left at most (for the plan).
    fn probes_left(&self) -> u32 {
        match self.strategy {
            Strategy::Linear => (self.hi - self.lo) as u32,
            _ => ceil_log2((self.hi - self.lo) as u64 + 1).max(1),
        }
    }
}

impl<P: Prober, O: Observer + ?Sized> Search<'_, '_, P, O> {
    /// Stage 1: bisection for the largest grid index that loads. `Some(None)`: nothing loads.
    pub(super) fn find_context(
        &mut self,
        cs: &mut ContextSearch,
        start_ctx: u32,
        gallop: bool,
    ) -> Option<Option<u32>> {
        let (g, lo_k, hi_k) = (self.g, self.lo_k, self.hi_k);
        if hi_k < lo_k {
            self.note_empty_range();
            return Some(None);
        }
        let start_k = (f64::from(start_ctx) / f64::from(g)).round() as i64;
        let mut b = Bracket::new(lo_k, hi_k, start_k, self.inp.strategy, gallop);
        let max_iterations = self.cfg().search.max_iterations;
        while !b.converged() {
            if b.iterations >= max_iterations && b.strategy == Strategy::Binary {
                cs.cut_short = true;
                self.note(format!(
                    "context search stopped after {} probes (search.max_iterations); the answer lies in {}..{}",
                    b.iterations,
                    (b.lo + 1).max(i64::from(lo_k)) * i64::from(g),
                    b.hi * i64::from(g)
                ));
                break;
            }
            let mid = b.next();
            let passed = self.context_probe(cs, &b, mid)?;
            b.record(mid, passed);
        }
        self.todo.search = 0;
        if b.lo < i64::from(lo_k) {
            self.note_nothing_loads(cs);
            return Some(None);
        }
        cs.max_passing = Some(b.lo as u32 * g);
        Some(Some(b.lo as u32))
    }

    /// One search probe at grid index `mid`, kept in the report; whether it passed.
    fn context_probe(&mut self, cs: &mut ContextSearch, b: &Bracket, mid: i64) -> Option<bool> {
        let ctx = mid as u32 * self.g;
        self.todo.search = b.probes_left();
        self.todo.max_ctx = ((b.lo + b.hi + 1) / 2).max(i64::from(self.lo_k)) as u32 * self.g;
        let req = ProbeRequest {
            stage: Stage::Context,
            config: self.at(ctx, self.batch0, None),
            depth: self.search_depth(ctx),
            rounds: 1,
            concurrency: 1,
        };
        let out = self.ask(req)?;
        let passed = out.passed();
        cs.probes.push(ContextProbe {
            ctx,
            passed,
            outcome: out.outcome,
            error: out.error.clone(),
        });
        Some(passed)
    }

    /// The range holds no multiple of the granularity.
    fn note_empty_range(&mut self) {
        let (g, c) = (self.g, self.cfg());
        let ceiling = self.hi_k * g + g - 1;
        self.note(format!(
            "no context to search: the range {}..{} holds no multiple of the granularity {g}{}",
            c.search.min_context,
            ceiling.min(c.search.max_context),
            self.inp
                .trained_context
                .map_or(String::new(), |t| format!(" (trained context {t})"))
        ));
    }

    /// Not even the smallest context loads: why, from the first failure.
    fn note_nothing_loads(&mut self, cs: &ContextSearch) {
        let why = cs
            .probes
            .iter()
            .find(|p| !p.passed)
            .map(|p| {
                format!(
                    " ({} at ctx {}: {})",
                    p.outcome.name(),
                    p.ctx,
                    p.error.as_deref().unwrap_or("no detail")
                )
            })
            .unwrap_or_default();
        self.note(format!(
            "no context passed, not even the smallest ({}){why}",
            self.lo_k * self.g
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Probes until the bracket converges on the largest index ≤ `truth` that loads; returns
    /// the answer and the probes asked.
    fn search(mut b: Bracket, truth: i64) -> (i64, u32) {
        while !b.converged() {
            let mid = b.next();
            b.record(mid, mid <= truth);
        }
        (b.lo, b.iterations)
    }

    #[test]
    fn bisection_finds_every_answer_within_the_bound() {
        let (lo_k, hi_k) = (2u32, 128u32);
        let bound = ceil_log2(u64::from(hi_k - lo_k + 1) + 1) + 1;
        for truth in i64::from(lo_k) - 1..=i64::from(hi_k) {
            for start in [i64::from(lo_k), 16, 64, i64::from(hi_k)] {
                let b = Bracket::new(lo_k, hi_k, start, Strategy::Binary, false);
                let (found, probes) = search(b, truth);
                assert_eq!(found, truth, "truth {truth}, start {start}");
                assert!(
                    probes <= bound,
                    "truth {truth}, start {start}: {probes} > {bound}"
                );
            }
        }
    }

    #[test]
    fn a_gallop_from_an_accurate_prediction_takes_two_or_three_probes() {
        for truth in [10i64, 37, 90] {
            let b = Bracket::new(2, 128, truth, Strategy::Binary, true);
            let (found, probes) = search(b, truth);
            assert_eq!(found, truth);
            assert!(probes <= 3, "truth {truth}: {probes} probes");
            // A prediction far off still finds the answer.
            let b = Bracket::new(2, 128, 120, Strategy::Binary, true);
            assert_eq!(search(b, truth).0, truth);
        }
    }

    #[test]
    fn the_linear_baseline_steps_up_until_the_first_failure() {
        let b = Bracket::new(1, 50, 30, Strategy::Linear, false);
        assert_eq!(search(b, 7), (7, 8));
    }
}
