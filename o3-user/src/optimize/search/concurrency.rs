//! Stage 5, concurrency levels: as many server slots as streams, every stream filled to depth,
//! at each proven context.

use crate::backend::ProbeConfig;
use crate::optimize::prober::{Prober, Stage};

use super::state::Search;
use super::Observer;

impl<P: Prober, O: Observer + ?Sized> Search<'_, '_, P, O> {
    /// Concurrency levels to try, smallest contexts first, the maximum last.
    pub(super) fn concurrency_plan(&self, contexts: &[u32]) -> Vec<(u32, u32)> {
        let c = self.cfg();
        if !c.concurrency.enabled || self.fixed.contains(&"parallel") {
            return Vec::new();
        }
        let mut v = Vec::new();
        for &ctx in contexts.iter().rev() {
            if ctx >= self.todo.max_ctx && !c.plan.concurrency_at_max_context {
                continue;
            }
            for &level in c.concurrency.levels.iter().filter(|&&l| l > 1) {
                v.push((ctx, level));
            }
        }
        v
    }

    /// Stage 5: concurrency levels with that many server slots, at each proven context.
    pub(super) fn concurrency(&mut self, proven: &mut [(u32, Option<u32>)]) -> Option<()> {
        let c = self.cfg();
        if !c.concurrency.enabled {
            self.note("concurrency levels disabled (concurrency.enabled: false)".into());
            return Some(());
        }
        if self.fixed.contains(&"parallel") {
            self.note(
                "concurrency levels skipped: this server's slot count is fixed (o3 cannot restart it with more slots)"
                    .into(),
            );
            return Some(());
        }
        let vmax = self.todo.max_ctx;
        if !c.plan.concurrency_at_max_context {
            self.note(format!(
                "concurrency levels at the maximum ctx {vmax} skipped (plan.concurrency_at_max_context: false)"
            ));
        }
        proven.sort_by_key(|p| p.0);
        for &(ctx, batch) in proven.iter() {
            let mut stopped = false;
            for &level in c.concurrency.levels.iter().filter(|&&l| l > 1) {
                if !self.todo.concurrency.contains(&(ctx, level)) {
                    continue;
                }
                if stopped || !self.admit(&self.items()) {
                    self.todo.concurrency.retain(|&(x, _)| x != ctx);
                    break;
                }
                self.todo.concurrency.retain(|&p| p != (ctx, level));
                let cfg = ProbeConfig {
                    parallel: Some(level),
                    ..self.at(ctx, batch, None)
                };
                let m = self.measure(
                    Stage::Concurrency,
                    cfg,
                    self.filled(ctx),
                    self.samples().div_ceil(level),
                    level,
                )?;
                if let Some(chat) = &m.chat {
                    let long = level.saturating_sub(chat.streams);
                    self.note(format!(
                        "ctx {ctx}, {level} streams ({long} at depth): {}",
                        chat.line()
                    ));
                }
                if !m.stable {
                    let why = Self::why_unstable(&m);
                    self.note(format!(
                        "ctx {ctx}: concurrency stops before {level} streams ({why})"
                    ));
                    stopped = true;
                }
                self.configurations.push(m);
            }
            self.todo.concurrency.retain(|&(x, _)| x != ctx);
        }
        Some(())
    }
}
