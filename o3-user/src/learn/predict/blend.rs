//! How the forest's vote and the memory model make P(success): a weighted mean whose weights
//! are chosen on the training records themselves, by cross-validation (stacking).
//!
//! The records are split into [`FOLDS`] folds (a record's copies stay together); each fold's
//! records are voted on by [`FOLD_TREES`] trees trained on the other folds, so every record
//! gets a vote from trees that never saw it. The memory model's weight is the one of
//! [`WEIGHTS`] whose blend of those votes with the memory model's P has the smallest Brier
//! score (mean (P − outcome)²; ties go to the larger memory weight, the simpler model). Never
//! below [`MEMORY_MODEL_WEIGHT`]: a configuration the memory model says fits keeps P ≥ 0.1.

use super::{trees, vote_of, Rows, MEMORY_MODEL_WEIGHT, SEED};

/// Folds of the cross-validation.
pub const FOLDS: usize = 4;
/// Trees voting in each fold (a quarter of the forest: the folds together cost one forest).
pub const FOLD_TREES: u16 = 16;
/// The memory model's weights tried, from [`MEMORY_MODEL_WEIGHT`] to 1.
pub const WEIGHTS: [f64; 9] = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

/// The memory model's weight and what chose it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stacking {
    pub memory_weight: f64,
    /// Training rows voted on by trees that never saw them (0: the weight is the default).
    pub scored_rows: usize,
    /// The Brier score of the chosen blend on those rows.
    pub brier: Option<f64>,
}

impl Default for Stacking {
    fn default() -> Stacking {
        Stacking {
            memory_weight: MEMORY_MODEL_WEIGHT,
            scored_rows: 0,
            brier: None,
        }
    }
}

impl Stacking {
    /// The weight cross-validation on `rows` chooses; the default where no fold could be
    /// trained (a fold's training part with one outcome) or no capacity is known.
    pub(super) fn choose(rows: &Rows) -> Stacking {
        let n = rows.x.len();
        let mut oof: Vec<Option<f64>> = vec![None; n];
        for f in 0..FOLDS {
            let (train, test): (Vec<usize>, Vec<usize>) =
                (0..n).partition(|&i| rows.record[i] % FOLDS != f);
            let ty: Vec<u32> = train.iter().map(|&i| rows.y[i]).collect();
            if test.is_empty() || !(ty.contains(&0) && ty.contains(&1)) {
                continue;
            }
            let tx: Vec<Vec<f64>> = train.iter().map(|&i| rows.x[i].clone()).collect();
            let Ok(t) = trees(&tx, &ty, FOLD_TREES, SEED + 5000 + 100 * f as u64) else {
                continue;
            };
            for &i in &test {
                oof[i] = Some(vote_of(&t, &rows.x[i]));
            }
        }
        let scored: Vec<(f64, f64, f64)> = (0..n)
            .filter_map(|i| Some((oof[i]?, rows.p_memory[i]?, f64::from(rows.y[i]))))
            .collect();
        best(&scored).unwrap_or_default()
    }
}

/// The weight of [`WEIGHTS`] with the smallest Brier score over (vote, memory P, outcome)
/// triples, the larger weight on a tie; `None` without triples.
fn best(scored: &[(f64, f64, f64)]) -> Option<Stacking> {
    if scored.is_empty() {
        return None;
    }
    let brier = |w: f64| {
        scored
            .iter()
            .map(|(v, m, y)| (w * m + (1.0 - w) * v - y).powi(2))
            .sum::<f64>()
            / scored.len() as f64
    };
    let mut out: Option<Stacking> = None;
    for w in WEIGHTS.iter().rev() {
        let b = brier(*w);
        if out.is_none_or(|o| b < o.brier.unwrap_or(f64::INFINITY) - 1e-12) {
            out = Some(Stacking {
                memory_weight: *w,
                scored_rows: scored.len(),
                brier: Some(b),
            });
        }
    }
    out
}

/// A prediction's blend: the memory model's P, whether the capacity is known, the weights.
pub(super) struct Blend {
    /// The memory model's P(success).
    pub p_memory: f64,
    pub capacity_known: bool,
    pub stacking: Stacking,
}

impl Blend {
    /// P(success) from a forest vote: the stacking's share of the memory model where the
    /// capacity is known, the vote alone otherwise.
    pub fn of(&self, forest_p: f64) -> f64 {
        if self.capacity_known {
            let w = self.stacking.memory_weight;
            (1.0 - w) * forest_p + w * self.p_memory
        } else {
            forest_p
        }
    }

    pub fn reason(&self, p_success: f64, forest_p: f64) -> String {
        if !self.capacity_known {
            return format!("P(success) {p_success:.3}: forest vote (capacity unknown)");
        }
        let w = self.stacking.memory_weight;
        format!(
            "P(success) {p_success:.3} = {:.1} × forest vote {forest_p:.3} + {w:.1} × memory \
             model {:.3} ({})",
            1.0 - w,
            self.p_memory,
            match (self.stacking.scored_rows, self.stacking.brier) {
                (n, Some(b)) if n > 0 => format!(
                    "weights chosen by {FOLDS}-fold cross-validation on {n} training row(s), \
                     Brier {b:.3}"
                ),
                _ => "default weights: too few records of both outcomes to cross-validate"
                    .to_string(),
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_weight_with_the_smallest_brier_wins_ties_to_the_memory_model() {
        // The memory model is right, the votes wrong: all weight to the memory model.
        let right = [(0.0, 1.0, 1.0), (1.0, 0.0, 0.0)];
        assert_eq!(best(&right).unwrap().memory_weight, 1.0);
        // The votes right, the memory model wrong: the floor.
        let wrong = [(1.0, 0.0, 1.0), (0.0, 1.0, 0.0)];
        let s = best(&wrong).unwrap();
        assert_eq!(s.memory_weight, 0.2);
        assert!((s.brier.unwrap() - 0.04).abs() < 1e-12);
        // Both right: a tie at every weight goes to the memory model.
        assert_eq!(best(&[(1.0, 1.0, 1.0)]).unwrap().memory_weight, 1.0);
        assert_eq!(best(&[]), None);
    }

    #[test]
    fn the_blend_and_its_reason() {
        let b = Blend {
            p_memory: 0.9,
            capacity_known: true,
            stacking: Stacking {
                memory_weight: 0.6,
                scored_rows: 40,
                brier: Some(0.0125),
            },
        };
        assert!((b.of(0.4) - (0.4 * 0.4 + 0.6 * 0.9)).abs() < 1e-12);
        assert_eq!(
            b.reason(0.7, 0.4),
            "P(success) 0.700 = 0.4 × forest vote 0.400 + 0.6 × memory model 0.900 (weights \
             chosen by 4-fold cross-validation on 40 training row(s), Brier 0.013)"
        );
        let unknown = Blend {
            capacity_known: false,
            ..b
        };
        assert_eq!(unknown.of(0.4), 0.4);
        let default = Blend {
            stacking: Stacking::default(),
            ..unknown
        };
        assert!(default
            .reason(0.5, 0.5)
            .contains("forest vote (capacity unknown)"));
    }
}
