//! Skipping configurations predicted to fail. A [`Pruned`] prober asks a [`Chance`] (the
//! learned predictor, or the memory model alone on a cold start) before each search, batch or
//! concurrency probe; under the threshold it answers `skipped` without running the server,
//! except for a small exploration budget that measures some of them anyway so a wrong
//! prediction is found out. Validation and verification probes are never skipped. Every skip is
//! kept with its probability.

use serde::Serialize;

use crate::backend::{OutcomeClass, ProbeConfig};

use super::journal::Raw;
use super::prober::{ProbeOutcome, ProbeRequest, Prober, Stage};

/// The probability that a configuration works, and on what it is based.
pub trait Chance {
    fn p_success(&self, cfg: &ProbeConfig) -> (f64, String);
}

#[derive(Debug, Clone, Serialize)]
pub struct Skip {
    pub stage: Stage,
    pub config: ProbeConfig,
    pub p_success: f64,
    pub basis: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Explored {
    pub config: ProbeConfig,
    pub p_success: f64,
    /// What the measurement said.
    pub outcome: OutcomeClass,
}

pub struct Pruned<'c, P> {
    pub inner: P,
    chance: &'c dyn Chance,
    min_p: f64,
    explore_left: u32,
    pub skips: Vec<Skip>,
    pub explored: Vec<Explored>,
}

impl<'c, P> Pruned<'c, P> {
    pub fn new(inner: P, chance: &'c dyn Chance, min_p: f64, exploration: u32) -> Self {
        Pruned {
            inner,
            chance,
            min_p,
            explore_left: exploration,
            skips: Vec::new(),
            explored: Vec::new(),
        }
    }
}

impl<P: Raw> Raw for Pruned<'_, P> {
    fn take_raw(&mut self) -> Option<serde_json::Value> {
        self.inner.take_raw()
    }
}

impl<P: Prober> Prober for Pruned<'_, P> {
    fn know(&mut self, model: &crate::timing::TimeModel) {
        self.inner.know(model);
    }

    fn probe(&mut self, req: &ProbeRequest) -> Option<ProbeOutcome> {
        if matches!(req.stage, Stage::Validate | Stage::Verify) {
            return self.inner.probe(req);
        }
        let (p, basis) = self.chance.p_success(&req.config);
        if p >= self.min_p {
            return self.inner.probe(req);
        }
        if self.explore_left > 0 {
            self.explore_left -= 1;
            let out = self.inner.probe(req)?;
            self.explored.push(Explored {
                config: req.config.clone(),
                p_success: p,
                outcome: out.outcome,
            });
            return Some(out);
        }
        self.skips.push(Skip {
            stage: req.stage,
            config: req.config.clone(),
            p_success: p,
            basis: basis.clone(),
        });
        Some(ProbeOutcome::failed(
            OutcomeClass::Skipped,
            format!(
                "predicted probability of success {p:.3} < {} ({basis})",
                self.min_p
            ),
        ))
    }

    fn fixed_by_server(&self, cfg: &ProbeConfig) -> Vec<&'static str> {
        self.inner.fixed_by_server(cfg)
    }
}

/// The first context probe: the largest context of the grid the chance puts above 0.5
/// (`None` when even the smallest is not, or the chance does not know: exactly 0.5).
pub fn start_context(
    chance: &dyn Chance,
    base: &ProbeConfig,
    low: u32,
    high: u32,
    granularity: u32,
) -> Option<u32> {
    let g = granularity.max(1);
    let (mut lo, mut hi) = (low / g, high / g);
    let p = |k: u32| {
        chance
            .p_success(&ProbeConfig {
                ctx: k * g,
                ..base.clone()
            })
            .0
    };
    if lo > hi || p(lo) <= 0.5 {
        return None;
    }
    // P(success) falls with context: bisect for the last grid point at ≥ 0.5.
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if p(mid) > 0.5 {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Some(lo * g)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optimize::search::{self, Inputs, Silent, Strategy};
    use crate::optimize::sim::{Sim, SimModel};

    /// A memory-model chance computed from the simulator's own formula, shifted by `bias`
    /// (a relative error of the estimate).
    struct Truthy {
        m: SimModel,
        bias: f64,
    }
    impl Chance for Truthy {
        fn p_success(&self, cfg: &ProbeConfig) -> (f64, String) {
            let need = self.m.weights_bytes as f64
                + self.m.kv_bytes_per_token as f64
                    * f64::from(cfg.ctx)
                    * f64::from(cfg.parallel.unwrap_or(1))
                + (self.m.compute_base_bytes
                    + self.m.compute_per_batch_bytes * u64::from(cfg.batch.unwrap_or(512)))
                    as f64;
            let ratio = need * (1.0 + self.bias) / self.m.capacity_bytes as f64;
            (1.0 / (1.0 + ((ratio - 1.0) / 0.03).exp()), "test".into())
        }
    }

    fn run(bias: f64, explore: u32) -> (search::Report, Vec<Skip>, u32) {
        // No budget: every stage runs, among them the concurrency levels at the maximum, which
        // the predictor can tell will not load.
        let mut cfg = crate::config::Config::default();
        cfg.plan.floor_multiple = 0.0;
        let m = SimModel {
            capacity_bytes: 12 << 30,
            ..SimModel::default()
        };
        let chance = Truthy { m: m.clone(), bias };
        let mut sim = Sim::new(m.clone());
        let inp = Inputs {
            variants: Vec::new(),
            config: &cfg,
            base: ProbeConfig::default(),
            trained_context: Some(m.trained_context),
            parameters: Some(m.parameters),
            weights_bytes: Some(m.weights_bytes),
            time_model: None,
            start_context: start_context(
                &chance,
                &ProbeConfig {
                    batch: Some(32),
                    ..Default::default()
                },
                2048,
                131072,
                1024,
            ),
            gallop: true,
            strategy: Strategy::Binary,
            learned: None,
        };
        let mut pruned = Pruned::new(&mut sim, &chance, 0.05, explore);
        let r = search::run(&inp, &mut pruned, &mut Silent);
        let skips = pruned.skips.clone();
        (r, skips, sim.probes)
    }

    #[test]
    fn pruning_saves_probes_and_never_skips_the_optimum() {
        let (plain, (), plain_probes) = {
            let mut cfg = crate::config::Config::default();
            cfg.plan.floor_multiple = 0.0;
            let m = SimModel::default();
            let mut sim = Sim::new(m.clone());
            let inp = Inputs {
                variants: Vec::new(),
                config: &cfg,
                base: ProbeConfig::default(),
                trained_context: Some(m.trained_context),
                parameters: Some(m.parameters),
                weights_bytes: Some(m.weights_bytes),
                time_model: None,
                start_context: None,
                gallop: false,
                strategy: Strategy::Binary,
                learned: None,
            };
            let r = search::run(&inp, &mut sim, &mut Silent);
            (r, (), sim.probes)
        };
        for bias in [0.0, 0.01, -0.02] {
            let (r, skips, probes) = run(bias, 0);
            assert_eq!(r.context.validated, plain.context.validated, "bias {bias}");
            assert!(
                probes < plain_probes,
                "bias {bias}: {probes} vs {plain_probes}"
            );
            for s in &skips {
                assert!(s.p_success < 0.05);
            }
        }
    }

    #[test]
    fn exploration_measures_a_would_be_skip() {
        let (_, skips0, _) = run(0.0, 0);
        let (_, skips1, _) = run(0.0, 1);
        assert!(
            !skips0.is_empty(),
            "the scenario has configurations to skip"
        );
        assert_eq!(skips1.len() + 1, skips0.len());
    }
}
