//! Learned results verified instead of searched: one filled probe each.

use crate::optimize::prober::{Prober, Stage};

use super::state::{Search, Todo};
use super::{config_id, Learned, Observer, Report};

impl<P: Prober, O: Observer + ?Sized> Search<'_, '_, P, O> {
    /// Learned results: one filled verification each; all stable means no search. `true`:
    /// reused.
    pub(super) fn verify_learned(&mut self, report: &mut Report, l: &Learned) -> Option<bool> {
        let mut verified = Vec::new();
        let mut failed = None;
        let mut wanted = vec![(
            "max_context".to_string(),
            self.at(l.max_context, self.batch0, None),
            1u32,
        )];
        wanted.extend(l.presets.iter().cloned());
        let mut seen = std::collections::HashSet::new();
        for (name, cfg, streams) in wanted {
            if !seen.insert((config_id(&cfg), streams)) {
                continue;
            }
            let depth = self.filled(cfg.ctx);
            let rounds = self.samples().div_ceil(streams.max(1));
            if let Some(i) = self
                .todo
                .verify
                .iter()
                .position(|&v| v == (cfg.ctx, streams))
            {
                self.todo.verify.remove(i);
            }
            let m = self.measure(Stage::Verify, cfg, depth, rounds, streams)?;
            if m.stable {
                verified.push(format!("{name} ({}) from {}", m.id, l.source));
            } else if failed.is_none() {
                failed = Some(format!(
                    "{name} ({}) from {} failed verification: {}",
                    m.id,
                    l.source,
                    Self::why_unstable(&m)
                ));
            }
            self.configurations.push(m);
            if failed.is_some() {
                break;
            }
        }
        match failed {
            None => {
                report.context.max_passing = Some(l.max_context);
                report.context.validated = Some(l.max_context);
                self.todo = Todo {
                    max_ctx: l.max_context,
                    ..Todo::default()
                };
                self.note(format!(
                    "reused {} learned configurations after one filled verification probe each: no search needed",
                    verified.len()
                ));
                report.reused = verified;
                Some(true)
            }
            Some(why) => {
                self.note(format!("{why}; searching again from ctx {}", l.max_context));
                Some(false)
            }
        }
    }
}
