//! Stage 2, batch ranking: the ladder of batches at the maximum, with fresh prompts of a
//! moderate depth, while each gains enough prefill throughput.

use crate::optimize::plan::Priority;
use crate::optimize::prober::{Prober, Stage};

use super::state::Search;
use super::{batch_ladder, Measured, Observer};

/// How much more prefill throughput `m` has than `prev` (0 where either is unknown).
fn gain(m: &Measured, prev: &Measured) -> f64 {
    let rate = |m: &Measured| m.validation.prefill_tokens_per_s.as_ref().map(|d| d.median);
    match (rate(m), rate(prev)) {
        (Some(new), Some(old)) if old > 0.0 => new / old - 1.0,
        _ => 0.0,
    }
}

impl<P: Prober, O: Observer + ?Sized> Search<'_, '_, P, O> {
    /// Stage 2: batch ranking at `ctx` with fresh prompts of a moderate depth: the ladder from the
    /// initial batch, stopping at a failure (a batch that does not load there), a gain under
    /// `batch.min_gain`, or the largest batch. Returns the batch to use.
    pub(super) fn rank_batches(&mut self, ctx: u32) -> Option<Option<u32>> {
        let ladder = self.ranking_ladder();
        // Admitted (or cut) as a whole: half a ranking would rank nothing.
        if ladder.len() < 2 || !self.admit_ranking(ctx, ladder.len()) {
            self.todo.rank = 0;
            return Some(self.batch0);
        }
        let kept = self.climb(ctx, &ladder)?;
        self.todo.rank = 0;
        Some(Some(kept))
    }

    /// The batches to rank (none where ranking is off or the server fixes the batch: said).
    fn ranking_ladder(&mut self) -> Vec<Option<u32>> {
        let c = self.cfg();
        if !c.batch.enabled {
            self.note("batch ranking disabled (batch.enabled: false)".into());
            return Vec::new();
        }
        if self.batch0.is_none() {
            self.note("batch ranking skipped: this server's batch size is fixed".into());
            return Vec::new();
        }
        batch_ladder(self.batch0, c.batch.scale_factor, c.batch.max_batch)
    }

    /// Whether the plan admits a ranking of `rungs` batches at `ctx` (before the context
    /// search's leftovers, which are done).
    fn admit_ranking(&mut self, ctx: u32, rungs: usize) -> bool {
        self.todo.rank = rungs as u32;
        self.todo.rank_ctx = ctx;
        let mut remaining = self.items();
        remaining.retain(|i| i.priority != Priority::Required || !i.what.starts_with("context"));
        if let Some(pos) = remaining.iter().position(|i| i.priority == Priority::Batch) {
            remaining[..=pos].rotate_right(1);
        }
        self.admit(&remaining)
    }

    /// Up the ladder while each batch is stable and gains enough; returns the batch kept.
    fn climb(&mut self, ctx: u32, ladder: &[Option<u32>]) -> Option<u32> {
        let c = self.cfg();
        let depth = self.rank_depth(ctx);
        let mut best: Option<Measured> = None;
        let mut kept = ladder[0].expect("a ladder from a batch");
        for (i, &b) in ladder.iter().enumerate() {
            self.todo.rank = (ladder.len() - i - 1) as u32;
            let m = self.measure(
                Stage::Batch,
                self.at(ctx, b, None),
                depth,
                c.batch.rank_samples.max(1),
                1,
            )?;
            self.configurations.push(m.clone());
            let b = b.expect("a ladder from a batch");
            if !m.stable {
                let why = Self::why_unstable(&m);
                self.note(format!(
                    "batch ranking at ctx {ctx}: batch {b} failed ({why}); keeping {kept}"
                ));
                break;
            }
            let Some(prev) = &best else {
                best = Some(m);
                continue;
            };
            let gain = gain(&m, prev);
            if gain < c.batch.min_gain {
                self.note(format!(
                    "batch ranking at ctx {ctx}: batch {b} gains {:+.1} % prefill throughput over {kept} (below {:.0} %); keeping {kept}",
                    gain * 100.0,
                    c.batch.min_gain * 100.0
                ));
                break;
            }
            best = Some(m);
            kept = b;
            if i + 1 == ladder.len() {
                self.note(format!(
                    "batch ranking at ctx {ctx}: batch stops at {b} (batch.max_batch)"
                ));
            }
        }
        Some(kept)
    }
}
