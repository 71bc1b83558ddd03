//! The search against the in-process simulator, whose truth (the largest context that loads at
//! a batch and slot count, the flaky zone, the batch knee) is computed from its memory model,
//! never from the code under test.

use super::journal::{Journal, Journaled};
use super::prober::{Depth, ProbeOutcome, ProbeRequest, Prober, Stage};
use super::search::{self, Inputs, Report, Silent};
use super::sim::{Sim, SimModel};
use crate::backend::{OutcomeClass, ProbeConfig};
use crate::config::Config;

pub(super) fn inputs<'a>(cfg: &'a Config, m: &SimModel) -> Inputs<'a> {
    Inputs {
        variants: Vec::new(),
        config: cfg,
        base: ProbeConfig::default(),
        trained_context: Some(m.trained_context),
        parameters: Some(m.parameters),
        weights_bytes: Some(m.weights_bytes),
        time_model: None,
        start_context: None,
        gallop: false,
        strategy: search::Strategy::Binary,
        learned: None,
    }
}

pub(super) fn model(capacity_gib: f64) -> SimModel {
    SimModel {
        capacity_bytes: (capacity_gib * (1u64 << 30) as f64) as u64,
        noise_cv: 0.02,
        ..SimModel::default()
    }
}

/// The grid answer the search must return: the largest multiple of the granularity at or
/// below the truth, within the searched range.
pub(super) fn expected(truth: u32, cfg: &Config, trained: u32) -> Option<u32> {
    let g = cfg.search.granularity;
    let top = truth.min(cfg.search.max_context).min(trained);
    let k = top / g;
    (k * g >= cfg.search.min_context.div_ceil(g) * g).then_some(k * g)
}

#[test]
fn context_search_finds_the_true_maximum_to_the_granule_within_the_bound() {
    let mut cases = 0;
    for capacity in [5.5, 6.0, 8.0, 12.0, 16.0, 24.0, 40.0] {
        for g in [256, 1024, 4096] {
            for start in [2048, 16384, 65536, 131072] {
                let mut cfg = Config::default();
                cfg.search.granularity = g;
                cfg.search.initial_context = start.max(cfg.search.min_context);
                cfg.batch.enabled = false;
                cfg.concurrency.enabled = false;
                let m = model(capacity);
                let batch0 = cfg.batch.initial_for(Some(m.parameters));
                let truth = m.max_context(Some(batch0), 1);
                let mut sim = Sim::new(m.clone());
                let r = search::run(&inputs(&cfg, &m), &mut sim, &mut Silent);
                let want = expected(truth, &cfg, m.trained_context);
                assert_eq!(
                    r.context.validated, want,
                    "capacity {capacity} GiB, granularity {g}, start {start}: truth {truth}, probes {:?}",
                    r.context.probes
                );
                assert!(
                    r.context.probes.len() as u32 <= r.context.probe_bound,
                    "{} probes > bound {} (range {}..{} step {g})",
                    r.context.probes.len(),
                    r.context.probe_bound,
                    r.context.low,
                    r.context.high
                );
                // The bound is the ceil(log2(range / granularity)) + 1.
                let range = (r.context.high - r.context.low) / g + 1;
                assert!(r.context.probe_bound <= f64::from(range).log2().ceil() as u32 + 1 + 1);
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 7 * 3 * 4);
}

#[test]
fn nothing_fits_is_said_not_hidden() {
    let cfg = Config::default();
    let m = model(4.0); // the weights alone nearly fill it
    let mut sim = Sim::new(m.clone());
    let r = search::run(&inputs(&cfg, &m), &mut sim, &mut Silent);
    assert_eq!(r.context.validated, None);
    assert!(r.configurations.is_empty());
    assert!(
        r.notes.iter().any(|n| n.contains("no context passed")),
        "{:?}",
        r.notes
    );
}

#[test]
fn intermittent_failures_make_validation_step_down_to_the_stable_context() {
    // The flaky zone is a few granules under the memory limit (60126 at batch 32), where a
    // server that loads can still fail under load.
    for (flaky, g) in [(57_000, 1024), (58_500, 512), (54_000, 2048)] {
        let mut cfg = Config::default();
        cfg.search.granularity = g;
        cfg.batch.enabled = false;
        cfg.concurrency.enabled = false;
        let m = SimModel {
            flaky_above: Some(flaky),
            flaky_every: 3,
            ..model(12.0)
        };
        let batch0 = cfg.batch.initial_for(Some(m.parameters));
        let stable_truth = m.max_stable_context(Some(batch0), 1);
        let mut sim = Sim::new(m.clone());
        let r = search::run(&inputs(&cfg, &m), &mut sim, &mut Silent);
        let passing = r.context.max_passing.expect("something passes");
        let validated = r.context.validated.expect("something validates");
        assert_eq!(validated, stable_truth / g * g, "flaky above {flaky}");
        // Single-sample search probes may pass inside the flaky zone; validation then steps
        // down exactly as far as needed, one granule at a time.
        assert_eq!(r.context.step_downs, (passing - validated) / g);
        let failed: Vec<_> = r
            .configurations
            .iter()
            .filter(|c| c.stage == Stage::Validate && !c.stable)
            .collect();
        assert_eq!(failed.len() as u32, r.context.step_downs);
        assert!(failed.iter().all(|c| c.config.ctx > flaky));
    }
}

/// A zone that fails validation far below the memory limit (19 granules): after three
/// failures in a row a granule apart, the proof's steps down double (2, 4, 8 … granules) and
/// the gap above the first that passes is bisected, so it reaches the stable context in about
/// twice log2 of the distance instead of one validation per granule (each a fill at depth,
/// minutes to an hour on the target machines).
#[test]
fn a_flaky_zone_far_below_the_memory_limit_is_galloped_to_not_stepped_through() {
    let g = 1024;
    let mut cfg = Config::default();
    cfg.search.granularity = g;
    cfg.batch.enabled = false;
    cfg.concurrency.enabled = false;
    let m = SimModel {
        flaky_above: Some(40_000),
        flaky_every: 3,
        ..model(12.0)
    };
    let batch0 = cfg.batch.initial_for(Some(m.parameters));
    let stable_truth = m.max_stable_context(Some(batch0), 1);
    let mut sim = Sim::new(m.clone());
    let r = search::run(&inputs(&cfg, &m), &mut sim, &mut Silent);
    let passing = r.context.max_passing.expect("something passes");
    assert!(
        (passing - stable_truth) / g >= 15,
        "{passing} {stable_truth}"
    );
    assert_eq!(r.context.validated, Some(stable_truth / g * g));
    let proofs = r.context.proofs.len() as u32;
    // Three granule steps, then doubling steps and a bisection of the last one (each at most
    // log2 of the distance), and the pass.
    let rest = (passing - stable_truth) / g;
    let log2 = 32 - rest.leading_zeros();
    assert!(
        proofs <= 3 + 2 * log2 + 1 && proofs < rest,
        "{proofs} validations for {rest} granules: {:?}",
        r.context.proofs
    );
}

#[test]
fn noisy_rates_still_validate() {
    let mut cfg = Config::default();
    cfg.batch.enabled = false;
    cfg.concurrency.enabled = false;
    let m = SimModel {
        noise_cv: 0.05,
        ..model(12.0)
    };
    let mut sim = Sim::new(m.clone());
    let r = search::run(&inputs(&cfg, &m), &mut sim, &mut Silent);
    let batch0 = cfg.batch.initial_for(Some(m.parameters));
    assert_eq!(
        r.context.validated,
        expected(m.max_context(Some(batch0), 1), &cfg, m.trained_context)
    );
}

#[test]
fn batch_ranking_stops_at_the_knee_and_every_context_uses_its_winner() {
    let mut cfg = Config::default();
    cfg.concurrency.enabled = false;
    let m = SimModel {
        batch_knee: 128,
        noise_cv: 0.0,
        ..model(40.0)
    };
    let mut sim = Sim::new(m.clone());
    let r = search::run(&inputs(&cfg, &m), &mut sim, &mut Silent);
    // 8B model: initial batch 32; 64 and 128 gain √2 each, 256 gains nothing. The ranking runs
    // once, at the largest context that loads, with fresh prompts of batch.rank_tokens.
    let ranked: Vec<(u32, Option<u32>, Depth)> = r
        .configurations
        .iter()
        .filter(|c| c.stage == Stage::Batch)
        .map(|c| (c.config.ctx, c.config.batch, c.depth))
        .collect();
    let top = r.context.max_passing.unwrap();
    let fresh = Depth::Fresh {
        tokens: cfg.batch.rank_tokens,
    };
    assert_eq!(
        ranked,
        [32, 64, 128, 256].map(|b| (top, Some(b), fresh)).to_vec()
    );
    assert!(r.notes.iter().any(|n| n
        .starts_with(&format!("batch ranking at ctx {top}: batch 256 gains"))
        && n.ends_with("keeping 128")));
    let proofs: Vec<_> = r
        .configurations
        .iter()
        .filter(|c| c.stage == Stage::Validate)
        .collect();
    assert!(proofs.len() >= 3, "the maximum and the presets' contexts");
    for c in proofs {
        assert_eq!(c.config.batch, Some(128), "{}", c.id);
        assert!(c.proven_at_depth && c.stable, "{}", c.id);
    }
}

#[test]
fn batch_ranking_stops_where_memory_runs_out() {
    let mut cfg = Config::default();
    cfg.concurrency.enabled = false;
    // Compute buffers grow fast with batch: at the largest context that loads, a larger batch
    // no longer fits, so the ranking keeps the initial batch.
    let m = SimModel {
        compute_per_batch_bytes: 16 << 20,
        noise_cv: 0.0,
        ..model(12.0)
    };
    let mut sim = Sim::new(m.clone());
    let r = search::run(&inputs(&cfg, &m), &mut sim, &mut Silent);
    let top = r.context.max_passing.unwrap();
    assert!(
        m.max_context(Some(64), 1) < top,
        "the test needs 64 not to fit at {top}"
    );
    let ranked: Vec<_> = r
        .configurations
        .iter()
        .filter(|c| c.stage == Stage::Batch)
        .collect();
    assert_eq!(ranked.len(), 2);
    assert!(ranked[0].stable && ranked[0].config.batch == Some(32));
    assert!(!ranked[1].stable);
    assert_eq!(ranked[1].outcome, crate::backend::OutcomeClass::Oom);
    assert_eq!(r.context.validated, Some(top));
    assert!(r
        .configurations
        .iter()
        .filter(|c| c.stage == Stage::Validate)
        .all(|c| c.config.batch == Some(32)));
}

#[test]
fn concurrency_stops_at_the_first_level_with_too_many_timeouts() {
    let mut cfg = Config::default();
    cfg.batch.enabled = false;
    cfg.concurrency.max_timeouts = 2;
    let m = SimModel {
        max_streams_in_time: Some(3),
        noise_cv: 0.0,
        ..model(40.0)
    };
    let mut sim = Sim::new(m.clone());
    let r = search::run(&inputs(&cfg, &m), &mut sim, &mut Silent);
    let levels: Vec<(u32, bool)> = r
        .configurations
        .iter()
        .filter(|c| c.config.ctx == 4096 && c.stage == Stage::Concurrency)
        .map(|c| (c.concurrency, c.stable))
        .collect();
    // 2 streams: all in time; 4: one late per round (2 rounds: 2 timeouts, allowed; the
    // success rate is over the 6 that did not time out); 8: 5 late in its one round, more
    // than allowed: the search stops there.
    assert_eq!(levels, vec![(2, true), (4, true), (8, false)]);
    assert!(r.notes.iter().any(|n| n.starts_with(
        "ctx 4096: concurrency stops before 8 streams (5 timeouts, more than the 2 allowed"
    )));
}

#[test]
fn slots_fixed_by_the_server_skip_concurrency_and_say_so() {
    let cfg = Config::default();
    let m = model(12.0);
    let mut sim = Sim::new(m.clone());
    sim.fixed = vec!["parallel", "batch"];
    let r = search::run(&inputs(&cfg, &m), &mut sim, &mut Silent);
    assert!(r
        .configurations
        .iter()
        .all(|c| c.config.parallel.is_none() && c.config.batch.is_none()));
    assert!(r.notes.iter().any(|n| n.contains("slot count is fixed")));
    assert!(r.notes.iter().any(|n| n.contains("batch size is fixed")));
}

/// Stops (as a signal would) after `left` probes.
struct StopAfter {
    sim: Sim,
    left: u32,
}
impl super::journal::Raw for StopAfter {}
impl Prober for StopAfter {
    fn probe(&mut self, req: &ProbeRequest) -> Option<ProbeOutcome> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        self.sim.probe(req)
    }
    fn fixed_by_server(&self, cfg: &ProbeConfig) -> Vec<&'static str> {
        self.sim.fixed_by_server(cfg)
    }
}

fn summary(r: &Report) -> String {
    serde_json::to_string(&(&r.context, &r.configurations, &r.notes)).unwrap()
}

#[test]
fn a_resumed_run_repeats_nothing_and_ends_where_an_uninterrupted_one_does() {
    let cfg = Config::default();
    let m = SimModel {
        flaky_above: Some(57_000),
        ..model(12.0)
    };
    let mut whole = Sim::new(m.clone());
    let full = search::run(&inputs(&cfg, &m), &mut whole, &mut Silent);
    assert!(full.probes > 10);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.jsonl");
    let cut = 7;
    {
        let mut j = Journal::open(&path).unwrap();
        let mut jp = Journaled::new(
            StopAfter {
                sim: Sim::new(m.clone()),
                left: cut,
            },
            &mut j,
        );
        let r = search::run(&inputs(&cfg, &m), &mut jp, &mut Silent);
        assert!(r.interrupted);
        assert_eq!(jp.ran, cut);
    }
    // A kill during a write leaves a torn last line: it is dropped, and that probe runs again.
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"{\"key\":\"torn")
        .unwrap();
    let mut j = Journal::open(&path).unwrap();
    assert_eq!(j.loaded, cut as usize);
    let mut jp = Journaled::new(Sim::new(m.clone()), &mut j);
    let resumed = search::run(&inputs(&cfg, &m), &mut jp, &mut Silent);
    assert!(!resumed.interrupted);
    assert_eq!(jp.replayed, cut);
    assert_eq!(jp.ran, full.probes - cut);
    assert_eq!(jp.inner.probes, full.probes - cut, "no probe ran twice");
    assert_eq!(summary(&resumed), summary(&full));
    let lines = std::fs::read_to_string(&path).unwrap().lines().count();
    assert_eq!(lines as u32, full.probes);
}

#[test]
fn presets_come_only_from_stable_configurations_and_respect_their_constraints() {
    let mut cfg = Config::default();
    cfg.plan.floor_multiple = 0.0;
    let m = SimModel {
        flaky_above: Some(57_000),
        ..model(12.0)
    };
    let mut sim = Sim::new(m.clone());
    let r = search::run(&inputs(&cfg, &m), &mut sim, &mut Silent);
    let p = super::presets::choose(&r.configurations, &cfg.presets);
    assert_eq!(p.len(), 3);
    for preset in &p {
        let id = preset
            .chosen
            .as_ref()
            .expect("every category has a candidate");
        let m = r
            .configurations
            .iter()
            .find(|c| &c.id == id && c.stable)
            .expect("chosen among stable configurations");
        let ctx = m.config.ctx;
        match preset.name {
            "max_context" => assert_eq!(ctx, r.context.validated.unwrap()),
            "balanced" => assert!((8192..=12288).contains(&ctx)),
            "fast_response" => assert!(ctx >= 4096),
            other => panic!("unexpected preset {other}"),
        }
    }
}

fn learned_from(r: &Report, cfg: &Config) -> search::Learned {
    let presets = super::presets::choose(&r.configurations, &cfg.presets)
        .into_iter()
        .filter_map(|p| Some((p.name.to_string(), p.config?, p.concurrency?)))
        .collect();
    search::Learned {
        source: "run 1".into(),
        max_context: r.context.validated.unwrap(),
        presets,
    }
}

#[test]
fn learned_results_are_verified_with_one_probe_each_and_reused() {
    let cfg = Config::default();
    let m = model(12.0);
    let first = search::run(&inputs(&cfg, &m), &mut Sim::new(m.clone()), &mut Silent);
    let learned = learned_from(&first, &cfg);
    let mut inp = inputs(&cfg, &m);
    inp.learned = Some(learned.clone());
    let mut sim = Sim::new(m.clone());
    let second = search::run(&inp, &mut sim, &mut Silent);
    assert_eq!(second.context.validated, first.context.validated);
    assert!(second.context.probes.is_empty(), "no search probe");
    assert!(second.probes <= 1 + learned.presets.len() as u32);
    assert!(second.probes <= 4);
    assert!(!second.reused.is_empty());
    assert!(second
        .configurations
        .iter()
        .all(|c| c.stage == Stage::Verify));
    let p = super::presets::choose(&second.configurations, &cfg.presets);
    assert!(p.iter().all(|p| p.chosen.is_some()), "{p:?}");
}

#[test]
fn a_failed_verification_reopens_the_search_from_the_learned_maximum() {
    let cfg = Config::default();
    let big = model(16.0);
    let first = search::run(&inputs(&cfg, &big), &mut Sim::new(big.clone()), &mut Silent);
    // The machine changed (less memory): the learned maximum no longer loads.
    let small = model(12.0);
    let mut inp = inputs(&cfg, &small);
    inp.learned = Some(learned_from(&first, &cfg));
    let r = search::run(&inp, &mut Sim::new(small.clone()), &mut Silent);
    assert!(r.reused.is_empty());
    assert!(r.notes.iter().any(|n| n.contains("failed verification")));
    let batch0 = cfg.batch.initial_for(Some(small.parameters));
    assert_eq!(
        r.context.validated,
        expected(
            small.max_context(Some(batch0), 1),
            &cfg,
            small.trained_context
        )
    );
    assert_eq!(r.context.start, first.context.validated.unwrap());
}

#[test]
fn a_predicted_start_is_galloped_from_and_finds_the_truth_either_way() {
    let mut cfg = Config::default();
    cfg.batch.enabled = false;
    cfg.concurrency.enabled = false;
    let m = model(12.0);
    let batch0 = cfg.batch.initial_for(Some(m.parameters));
    let want = expected(m.max_context(Some(batch0), 1), &cfg, m.trained_context);
    for (start, most) in [
        (want.unwrap(), 2),        // exact
        (want.unwrap() - 2048, 4), // a little low
        (want.unwrap() + 3072, 5), // a little high
        (2048, 16),                // far off: still right, at a cost
        (131072, 16),
    ] {
        let mut inp = inputs(&cfg, &m);
        inp.start_context = Some(start);
        inp.gallop = true;
        let r = search::run(&inp, &mut Sim::new(m.clone()), &mut Silent);
        assert_eq!(r.context.validated, want, "start {start}");
        assert!(
            r.context.probes.len() <= most,
            "start {start}: {:?}",
            r.context.probes
        );
    }
}

#[test]
fn a_context_that_loads_but_fails_filled_is_bisected_with_filled_probes() {
    let mut cfg = Config::default();
    cfg.batch.enabled = false;
    cfg.concurrency.enabled = false;
    let m = SimModel {
        fill_fails_above: Some(40_000),
        ..model(12.0)
    };
    let batch0 = cfg.batch.initial_for(Some(m.parameters));
    let r = search::run(&inputs(&cfg, &m), &mut Sim::new(m.clone()), &mut Silent);
    let loads = expected(m.max_context(Some(batch0), 1), &cfg, m.trained_context).unwrap();
    assert_eq!(
        r.context.max_passing,
        Some(loads),
        "the search answers what loads"
    );
    assert_eq!(
        r.context.validated,
        Some(m.max_stable_context(Some(batch0), 1) / 1024 * 1024)
    );
    let f = r.context.fails_filled.as_ref().expect("said");
    assert_eq!(f.ctx, loads);
    assert!(r
        .notes
        .iter()
        .any(|n| n.starts_with(&format!("loads at {loads} but fails filled: oom"))));
    // Bisection, not one granule at a time: 19 granules apart in at most ⌈log2(37)⌉ + 1.
    assert!(r.context.proofs.len() <= 7, "{:?}", r.context.proofs);
}

#[test]
fn every_answer_is_proven_filled_to_depth_and_a_cap_says_otherwise() {
    let cfg = Config::default();
    let m = model(24.0);
    let r = search::run(&inputs(&cfg, &m), &mut Sim::new(m.clone()), &mut Silent);
    let vmax = r.context.validated.unwrap();
    let proof = r
        .configurations
        .iter()
        .find(|c| c.stage == Stage::Validate && c.config.ctx == vmax && c.stable)
        .unwrap();
    assert_eq!(
        proof.depth,
        Depth::Filled {
            tokens: cfg.prompt.depth_tokens(vmax)
        }
    );
    assert_eq!(
        proof.prompt_tokens,
        Some(u64::from(cfg.prompt.depth_tokens(vmax)))
    );
    assert!(proof.proven_at_depth);
    assert_eq!(proof.prefix_reuse, Some(true));
    for p in super::presets::choose(&r.configurations, &cfg.presets) {
        let id = p.chosen.expect("a preset");
        let c = r
            .configurations
            .iter()
            .find(|c| c.id == id && c.stable)
            .unwrap();
        assert!(c.proven_at_depth && c.filled(), "{id}");
    }
    // With a cap below the depth, nothing above it is proven, and the measurements say so.
    let mut capped = Config::default();
    capped.prompt.max_prompt_tokens = Some(8192);
    let r = search::run(&inputs(&capped, &m), &mut Sim::new(m.clone()), &mut Silent);
    for c in r.configurations.iter().filter(|c| c.filled()) {
        let deep = capped.prompt.depth_tokens(c.config.ctx) > 8192;
        assert_eq!(c.proven_at_depth, !deep && c.fill_ok, "{}", c.id);
    }
}

#[test]
fn a_model_that_cannot_reuse_its_prefix_is_measured_anyway_and_said() {
    let mut cfg = Config::default();
    cfg.concurrency.enabled = false;
    let m = SimModel {
        prefix_reuse: false,
        ..model(12.0)
    };
    let r = search::run(&inputs(&cfg, &m), &mut Sim::new(m.clone()), &mut Silent);
    assert!(r.context.validated.is_some());
    assert_eq!(r.time_model.prefix_reuse, Some(false));
    assert!(r
        .configurations
        .iter()
        .filter(|c| c.stage == Stage::Validate)
        .all(|c| c.prefix_reuse == Some(false) && c.validation.n == cfg.validation.samples));
}

#[test]
fn the_time_model_learns_the_servers_law_as_the_run_goes() {
    let m = SimModel {
        noise_cv: 0.0,
        ..model(24.0)
    };
    let cfg = Config::default();
    let r = search::run(&inputs(&cfg, &m), &mut Sim::new(m.clone()), &mut Silent);
    let h = r.time_model.prefill_half_depth().expect("depth measured");
    assert!((h / m.prefill_half_depth - 1.0).abs() < 0.01, "{h}");
    assert!((r.time_model.decode_rate_at(0) / m.decode_tps - 1.0).abs() < 0.01);
    assert_eq!(r.time_model.load_median_s, Some(m.load_ms / 1000.0));
    assert!(r.plan.floor_s.is_some() && r.plan.predicted_at_start_s.is_some());
}

#[test]
fn the_budget_cuts_only_optional_work_and_says_what() {
    let m = model(12.0);
    for (budget_s, floor_multiple) in [(None, 0.0), (Some(60.0), 2.0), (None, 1.0), (None, 2.0)] {
        let mut cfg = Config::default();
        cfg.plan.budget_s = budget_s;
        cfg.plan.floor_multiple = floor_multiple;
        cfg.plan.min_budget_s = 0.0;
        let r = search::run(&inputs(&cfg, &m), &mut Sim::new(m.clone()), &mut Silent);
        let what = format!("budget {budget_s:?} × {floor_multiple}");
        // The answer is never cut.
        assert!(r.context.validated.is_some(), "{what}");
        let said = r
            .notes
            .iter()
            .filter(|n| n.starts_with("cut by the"))
            .count();
        assert_eq!(said, r.plan.cut.len(), "{what}");
        if budget_s.is_none() && floor_multiple == 0.0 {
            assert!(r.plan.cut.is_empty(), "{what}: {:?}", r.plan.cut);
            assert_eq!(r.plan.budget_s, None);
        } else {
            assert!(!r.plan.cut.is_empty(), "{what}");
        }
        if budget_s == Some(60.0) {
            // Less than the proof itself: only required work ran.
            assert!(r.configurations.iter().all(
                |c| c.stage == Stage::Validate && c.config.ctx == r.context.validated.unwrap()
            ));
        }
    }
}

/// Crashes (as a server killed by a stray signal would) the `at`-th probe's first attempt.
struct CrashOnce {
    sim: Sim,
    n: u32,
    at: u32,
}
impl super::journal::Raw for CrashOnce {}
impl Prober for CrashOnce {
    fn probe(&mut self, req: &ProbeRequest) -> Option<ProbeOutcome> {
        self.n += 1;
        if self.n == self.at {
            return Some(ProbeOutcome::failed(
                OutcomeClass::Crashed,
                "the stream ended before its final message",
            ));
        }
        self.sim.probe(req)
    }
    fn fixed_by_server(&self, cfg: &ProbeConfig) -> Vec<&'static str> {
        self.sim.fixed_by_server(cfg)
    }
}

#[test]
fn one_transient_crash_anywhere_leaves_the_answer_unchanged() {
    let cfg = Config::default();
    let m = model(12.0);
    let full = search::run(&inputs(&cfg, &m), &mut Sim::new(m.clone()), &mut Silent);
    let answer = |r: &Report| {
        let configs: Vec<_> = r.configurations.iter().map(|c| &c.config).collect();
        serde_json::to_string(&(&r.context, configs)).unwrap()
    };
    for at in 1..=full.probes {
        let mut p = super::retry::Retried::new(CrashOnce {
            sim: Sim::new(m.clone()),
            n: 0,
            at,
        });
        let r = search::run(&inputs(&cfg, &m), &mut p, &mut Silent);
        assert_eq!(p.retries, 1, "crash at probe {at}");
        assert_eq!(
            r.notes
                .iter()
                .filter(|n| n.contains("retried once"))
                .count(),
            1,
            "crash at probe {at}: {:?}",
            r.notes
        );
        assert_eq!(answer(&r), answer(&full), "crash at probe {at}");
        assert_eq!(r.probes, full.probes, "crash at probe {at}");
    }
}
