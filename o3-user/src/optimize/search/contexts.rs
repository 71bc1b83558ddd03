//! Stage 4, the presets' own contexts: the top of the balanced range and the fast-response
//! minimum, each proven filled like the maximum.

use crate::optimize::plan::{Item, Priority};
use crate::optimize::prober::Prober;

use super::state::Search;
use super::Observer;

impl<P: Prober, O: Observer + ?Sized> Search<'_, '_, P, O> {
    /// The contexts the presets need, largest first: the validated maximum, the top of the
    /// balanced range and the fast-response minimum (those within the maximum), and notes for
    /// categories that cannot be served (when `say`).
    pub(super) fn chosen_contexts(&self, vk: u32, say: bool) -> (Vec<u32>, Vec<String>) {
        let g = self.g;
        let vmax = vk * g;
        let p = &self.cfg().presets;
        let mut chosen = vec![vmax];
        let mut notes = Vec::new();
        let [b_lo, b_hi] = p.balanced.target_context_range;
        let bk = (b_hi / g).min(vk);
        if bk * g >= b_lo && bk >= self.lo_k {
            chosen.push(bk * g);
        } else if say {
            notes.push(format!(
                "balanced: no context in {b_lo}..{b_hi} on the grid within the validated maximum {vmax}"
            ));
        }
        let fk = p
            .fast_response
            .target_context_min
            .div_ceil(g)
            .max(self.lo_k);
        if fk <= vk {
            chosen.push(fk * g);
        } else if say {
            notes.push(format!(
                "fast_response: its minimum context {} exceeds the validated maximum {vmax}",
                p.fast_response.target_context_min
            ));
        }
        chosen.sort_unstable_by(|a, b| b.cmp(a));
        chosen.dedup();
        (chosen, notes)
    }

    /// Stage 4: each preset context (below the maximum) proven filled at `batch` while the plan
    /// admits it; returns those that passed with their batch. A context cut or failed gets no
    /// concurrency levels.
    pub(super) fn prove_contexts(
        &mut self,
        contexts: &[u32],
        batch: Option<u32>,
    ) -> Option<Vec<(u32, Option<u32>)>> {
        let mut proven = Vec::new();
        for &ctx in contexts {
            self.todo.contexts.retain(|&x| x != ctx);
            let mut remaining = vec![Item {
                what: format!("proof of ctx {ctx}, filled"),
                priority: Priority::PresetContext,
                cost: self.cost(self.filled(ctx), self.samples(), 1),
            }];
            remaining.extend(self.items());
            if !self.admit(&remaining) {
                self.todo.concurrency.retain(|&(x, _)| x != ctx);
                continue;
            }
            let m = self.validate_filled(ctx, batch)?;
            let stable = m.stable;
            if !stable {
                let why = Self::why_unstable(&m);
                self.note(format!("ctx {ctx} failed validation: {why}"));
                self.todo.concurrency.retain(|&(x, _)| x != ctx);
            }
            self.configurations.push(m);
            if stable {
                proven.push((ctx, batch));
            }
        }
        Some(proven)
    }
}
