//! The search, ordered around loads and fills so that depth is paid for once per answer:
//!
//! 1. **Context search**: bisection for the largest context that *loads* (one short request
//!    per probe; llama.cpp and Ollama allocate the KV cache and compute buffers at load).
//! 2. **Batch ranking** at that context, with fresh prompts of a moderate depth.
//! 3. **Proof of the maximum**: validation with prompts filled to `prompt.fill` of it (the
//!    first request reads the whole prompt, the others reuse that prefix). A context that loads
//!    but fails filled is searched again with filled probes (bisection); one that fails
//!    validation steps down a granule (after three such failures in a row 2, 4, 8 …, then
//!    bisecting).
//! 4. **The presets' own contexts**, proven the same way.
//! 5. **Concurrency levels** with as many server slots, every stream filled to depth.
//!
//! Optional work (2, 4, 5) is admitted by the plan (`plan.rs`) while its predicted cost fits
//! the budget; what is cut is said. Pure logic over a [`Prober`]: every decision depends only
//! on probe outcomes (times included), so replaying a journal retraces the same path (that is
//! how an interrupted run resumes).
//!
//! One submodule a stage (`context`, `batch`, `proof`, `contexts`, `concurrency`; `verify` for
//! learned results), over the state and steps they share (`state`).

mod batch;
mod concurrency;
mod context;
mod contexts;
mod proof;
mod state;
mod variants;
mod verify;

use serde::Serialize;

use crate::backend::{OutcomeClass, ProbeConfig};
use crate::config::Config;
use crate::timing::{Estimate, Prior, TimeModel};

use super::plan::{self, Budget, Item};
use super::prober::{Depth, ProbeOutcome, ProbeRequest, Prober, Stage};
use super::stats::Validation;

use state::{Search, Todo};

pub use variants::{expand as expand_variants, label as variant_label, VariantIn, VariantOut};

/// What the search starts from.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub config: &'a Config,
    /// Fields the user fixed (GPU layers, flash attention, KV cache types, threads); `ctx`,
    /// `batch`, `ubatch` and `parallel` are set by the search.
    pub base: ProbeConfig,
    /// The model's trained context (upper bound of the search), when known.
    pub trained_context: Option<u32>,
    /// Parameter count (initial batch by size class; the time model's prior), when known.
    pub parameters: Option<u64>,
    /// Weight bytes (the time model's prior), when known.
    pub weights_bytes: Option<u64>,
    /// Where the binary search starts (a prediction); the configuration's initial probe when
    /// `None`.
    pub start_context: Option<u32>,
    /// Gallop from `start_context` instead of bisecting from it: for a prediction trained on
    /// this model's own measurements (cheap when right, up to about twice the bisection bound
    /// when wrong). A memory-model guess only sets the first probe, keeping the bound.
    pub gallop: bool,
    pub strategy: Strategy,
    /// What an earlier run on this host with this model found: verified with one probe each
    /// instead of searched; a failed verification reopens the search.
    pub learned: Option<Learned>,
    /// What is known of the server's speed before the first probe (`None`: a prior from the
    /// model's size).
    pub time_model: Option<TimeModel>,
    /// Variants to compare (`variants.*`; empty: only `base`).
    pub variants: Vec<VariantIn>,
}

/// Results of an earlier run to verify.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Learned {
    /// Where they come from (`run 12, 2 days old`).
    pub source: String,
    pub max_context: u32,
    /// Preset configurations with their stream counts.
    pub presets: Vec<(String, ProbeConfig, u32)>,
}

/// How the largest context is found. Only `Binary` is o3's search; the others are the
/// baselines the benchmark compares it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    #[default]
    Binary,
    /// Upward in steps of the granularity until the first failure.
    Linear,
    /// Every context of the grid at every batch of the ladder, each validated filled (what a
    /// llama-bench sweep does); no early stop.
    Grid,
}

/// Where the run stands, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Eta {
    /// This probe, predicted.
    pub probe: Estimate,
    /// The planned work after it, predicted (expected), s.
    pub after_s: f64,
    /// Probe time spent so far, s.
    pub spent_s: f64,
    pub probes_done: u32,
}

/// Progress hooks (the CLI draws bars; tests ignore them).
pub trait Observer {
    fn before(&mut self, _req: &ProbeRequest, _eta: &Eta) {}
    fn after(&mut self, _req: &ProbeRequest, _out: &ProbeOutcome, _eta: &Eta) {}
    fn note(&mut self, _msg: &str) {}
    /// The plan, before the first probe: the work in order with its predicted time, and the
    /// budget in words.
    fn plan(&mut self, _items: &[Item], _budget: &str) {}
}

/// An observer that does nothing.
pub struct Silent;
impl Observer for Silent {}

#[derive(Debug, Clone, Serialize)]
pub struct ContextProbe {
    pub ctx: u32,
    pub passed: bool,
    pub outcome: OutcomeClass,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ContextSearch {
    /// The searched grid: multiples of the granularity in [low, high].
    pub low: u32,
    pub high: u32,
    pub granularity: u32,
    pub start: u32,
    /// ceil(log2(grid points + 1)) + 1: the most search probes this range can take.
    pub probe_bound: u32,
    /// Search probes only load and send a short request (`search.load_only`).
    pub load_only: bool,
    pub probes: Vec<ContextProbe>,
    /// Largest context whose search probe passed (the largest that loads).
    pub max_passing: Option<u32>,
    /// Filled validations of the maximum, in order (the proof, its step-downs).
    pub proofs: Vec<ContextProbe>,
    /// Largest context that also passed statistical validation filled to depth.
    pub validated: Option<u32>,
    /// Granules stepped down because validation failed or a fill failed.
    pub step_downs: u32,
    /// The iteration limit stopped the search before it converged.
    pub cut_short: bool,
    /// The largest context that loaded but failed when filled, and why.
    pub fails_filled: Option<ContextProbe>,
}

/// One statistically validated measurement (validation, batch or concurrency stage).
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    /// `c8192-b64-p2`: context, batch (`d`: server default), slots.
    pub id: String,
    pub stage: Stage,
    pub config: ProbeConfig,
    pub depth: Depth,
    /// Simultaneous streams.
    pub concurrency: u32,
    pub outcome: OutcomeClass,
    pub error: Option<String>,
    /// Usable for presets: validation stable and no more timeouts than allowed.
    pub stable: bool,
    /// A request filled to `prompt.fill` of the context succeeded (false with a prompt cap
    /// below it: "not proven at depth").
    pub proven_at_depth: bool,
    /// Something was measured (the configuration loaded and answered).
    pub loaded: bool,
    /// A request that read its whole prompt succeeded.
    pub fill_ok: bool,
    pub validation: Validation,
    pub timeouts: u32,
    /// Median over rounds of the aggregate decode throughput (all streams summed), tokens/s.
    pub output_tokens_per_s: Option<f64>,
    /// TTFT of requests that read their whole prompt (the fill at depth).
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p95_ms: Option<f64>,
    /// TTFT of requests that reused the filled prefix.
    pub cached_ttft_p50_ms: Option<f64>,
    pub prompt_tokens: Option<u64>,
    /// Whether the samples meant to reuse the filled prefix did.
    pub prefix_reuse: Option<bool>,
    pub rss_peak_bytes: Option<u64>,
    pub rss_method: String,
    pub mem_used_peak_bytes: Option<u64>,
    pub gpu_used_peak_bytes: Option<u64>,
    /// The probe's own time, s.
    pub wall_s: f64,
    /// Chat turns sent beside the streams at depth (`concurrency.mixed_short_streams`),
    /// measured apart; they decide nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat: Option<crate::probe::KindSummary>,
}

impl Measured {
    /// Filled to the configuration's depth (a preset candidate), as opposed to a ranking.
    pub fn filled(&self) -> bool {
        matches!(self.depth, Depth::Filled { .. })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub context: ContextSearch,
    /// Every validated measurement, in the order taken.
    pub configurations: Vec<Measured>,
    /// Why stages were skipped, stopped or cut, in order.
    pub notes: Vec<String>,
    /// Probes asked for (including those answered from the journal).
    pub probes: u32,
    /// The run was asked to stop before the search finished.
    pub interrupted: bool,
    /// Learned results verified and reused instead of searched (empty: none reused).
    pub reused: Vec<String>,
    /// Predicted, spent, floor, budget and what it cut.
    pub plan: plan::Report,
    /// The time model at the end.
    pub time_model: TimeModel,
    /// Each variant's largest loading context and rates at a moderate depth (empty: no
    /// variants compared).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<VariantOut>,
}

pub fn config_id(c: &ProbeConfig) -> String {
    let b = c.batch.map_or("d".to_string(), |b| b.to_string());
    format!("c{}-b{}-p{}", c.ctx, b, c.parallel.unwrap_or(1))
}

fn ceil_log2(n: u64) -> u32 {
    if n <= 1 {
        0
    } else {
        64 - (n - 1).leading_zeros()
    }
}

/// The batches batch ranking may visit: the initial one times the scale factor up to the
/// maximum (one `None` when the server's batch is fixed).
fn batch_ladder(batch0: Option<u32>, scale: f64, max: u32) -> Vec<Option<u32>> {
    let Some(mut b) = batch0 else {
        return vec![None];
    };
    let mut out = vec![Some(b)];
    loop {
        let next = ((f64::from(b) * scale).round() as u32).min(max);
        if next <= b {
            return out;
        }
        out.push(Some(next));
        b = next;
    }
}

/// Runs the whole search.
pub fn run<P: Prober, O: Observer + ?Sized>(inp: &Inputs, prober: &mut P, obs: &mut O) -> Report {
    let mut report = Report {
        context: ContextSearch::of(inp),
        configurations: Vec::new(),
        notes: Vec::new(),
        probes: 0,
        interrupted: false,
        reused: Vec::new(),
        plan: plan::Report::default(),
        time_model: TimeModel::new(Prior::from_size(None, None)),
        variants: Vec::new(),
    };
    let mut s = Search::new(inp, &report.context, prober, obs);
    let start_ctx = report.context.start;
    report.interrupted = if inp.strategy == Strategy::Grid {
        s.grid(&mut report).is_none()
    } else {
        s.all(&mut report, start_ctx).is_none()
    };
    s.finish(&mut report);
    report
}

impl ContextSearch {
    /// The grid a search covers (multiples of the granularity from the smallest context to
    /// the largest, the trained context included), where it starts and its probe bound; no
    /// probe yet.
    fn of(inp: &Inputs) -> ContextSearch {
        let c = inp.config;
        let g = c.search.granularity.max(1);
        let ceiling = inp
            .trained_context
            .map_or(c.search.max_context, |t| t.min(c.search.max_context));
        let (lo_k, hi_k) = (c.search.min_context.div_ceil(g), ceiling / g);
        let grid = (hi_k + 1).saturating_sub(lo_k);
        ContextSearch {
            low: lo_k * g,
            high: hi_k * g,
            granularity: g,
            start: inp.start_context.unwrap_or(c.search.initial_context),
            probe_bound: ceil_log2(u64::from(grid) + 1) + 1,
            load_only: c.search.load_only,
            probes: Vec::new(),
            max_passing: None,
            proofs: Vec::new(),
            validated: None,
            step_downs: 0,
            cut_short: false,
            fails_filled: None,
        }
    }
}

impl<'a, 'b, P: Prober, O: Observer + ?Sized> Search<'a, 'b, P, O> {
    /// A search of `inp` over the grid of `range` with nothing measured yet: the fields the
    /// server fixes asked once, the initial batch (none where the server fixes it), the time
    /// model to start from.
    fn new(inp: &'b Inputs<'a>, range: &ContextSearch, prober: &'b mut P, obs: &'b mut O) -> Self {
        let c = inp.config;
        let g = range.granularity;
        let fixed = prober.fixed_by_server(&ProbeConfig {
            ctx: c.search.min_context,
            batch: Some(1),
            ubatch: Some(1),
            parallel: Some(2),
            ..inp.base.clone()
        });
        let batch0 = if fixed.contains(&"batch") {
            None
        } else {
            Some(c.batch.initial_for(inp.parameters))
        };
        let model = inp
            .time_model
            .clone()
            .unwrap_or_else(|| TimeModel::new(Prior::from_size(inp.parameters, inp.weights_bytes)));
        Search {
            inp,
            prober,
            obs,
            probes: 0,
            notes: Vec::new(),
            configurations: Vec::new(),
            model,
            spent_s: 0.0,
            todo: Todo::default(),
            budget: Budget {
                fixed_s: c.plan.budget_s,
                // Variants are work the user asked for on top of the answer: a budget in floors
                // grows by `variants.extra_floors` (a run with no budget stays without one).
                floor_multiple: if c.plan.floor_multiple > 0.0 && !inp.variants.is_empty() {
                    c.plan.floor_multiple + c.variants.extra_floors
                } else {
                    c.plan.floor_multiple
                },
                min_s: c.plan.min_budget_s,
            },
            floor_measured: None,
            extra_required_s: 0.0,
            plan: plan::Report::default(),
            fixed,
            batch0,
            base: inp.base.clone(),
            fast_variant: None,
            lo_k: range.low / g,
            hi_k: range.high / g,
            g,
        }
    }

    /// The report's totals: probes, time spent against the floor and the budget, the time
    /// model, the notes and every measurement.
    fn finish(self, report: &mut Report) {
        let mut s = self;
        report.probes = s.probes;
        s.plan.spent_s = s.spent_s;
        if report.context.validated.is_some() || s.floor_measured.is_some() {
            if let Some(v) = report.context.validated {
                s.todo.max_ctx = v;
            }
            let f = s.floor_s();
            s.plan.floor_s = Some(f);
            s.plan.floor_units = (f > 0.0).then(|| s.spent_s / f);
        }
        s.plan.budget_s = s.budget.total_s(s.floor_s());
        s.plan.budget = s.budget.describe(s.floor_s());
        s.plan.time_model = s.model.describe();
        report.plan = s.plan;
        report.notes = s.notes;
        report.configurations = s.configurations;
        report.time_model = s.model;
    }

    /// The baseline: every grid context at every batch, validated filled.
    fn grid(&mut self, report: &mut Report) -> Option<()> {
        let c = self.cfg();
        let ladder = batch_ladder(self.batch0, c.batch.scale_factor, c.batch.max_batch);
        for k in self.lo_k..=self.hi_k {
            for &b in &ladder {
                let ctx = k * self.g;
                let m = self.validate_filled(ctx, b)?;
                if m.stable {
                    report.context.validated = Some(ctx);
                    report.context.max_passing = Some(ctx);
                }
                self.configurations.push(m);
            }
        }
        Some(())
    }

    /// o3's search: learned results verified, else the context found, batches ranked, the
    /// maximum proven, the presets' contexts proven, concurrency levels measured. `None`:
    /// interrupted.
    fn all(&mut self, report: &mut Report, start_ctx: u32) -> Option<()> {
        self.plan_start(report);
        let start_ctx = match self.learned() {
            Some(l) => {
                if self.verify_learned(report, &l)? {
                    return Some(());
                } else {
                    self.search_again(report, &l)
                }
            }
            None => start_ctx,
        };
        let found = if self.inp.variants.is_empty() {
            let gallop = self.inp.gallop && self.inp.start_context.is_some();
            let mut cs = report.context.clone();
            let k = self.find_context(&mut cs, start_ctx, gallop)?;
            report.context = cs;
            k
        } else {
            self.compare_variants(report, start_ctx)?
        };
        let Some(kmax) = found else {
            self.todo = Todo::default();
            return Some(());
        };
        self.plan_maximum(kmax * self.g);
        let best = self.rank_batches(kmax * self.g)?;
        let Some((vk, proof_batch)) = self.prove_max(report, kmax, best)? else {
            self.todo = Todo::default();
            return Some(());
        };
        let contexts = self.plan_validated(report, vk);
        // The presets' own contexts, then concurrency levels (smaller contexts first, the
        // maximum last: each stream there fills the whole depth).
        let mut proven = vec![(vk * self.g, proof_batch)];
        proven.extend(self.prove_contexts(&contexts[1..], best)?);
        self.prove_fastest(&contexts[1..], best)?;
        self.concurrency(&mut proven)
    }

    /// Learned results to verify (o3's own search only).
    fn learned(&self) -> Option<Learned> {
        match (&self.inp.learned, self.inp.strategy) {
            (Some(l), Strategy::Binary) if self.inp.variants.is_empty() => Some(l.clone()),
            _ => None,
        }
    }

    /// The plan before the first probe: the maximum as predicted (or the top of the range);
    /// only the verification where there are learned results.
    fn plan_start(&mut self, report: &Report) {
        let c = self.cfg();
        self.todo = Todo {
            search: report.context.probe_bound,
            rank: if c.batch.enabled && self.batch0.is_some() {
                batch_ladder(self.batch0, c.batch.scale_factor, c.batch.max_batch).len() as u32
            } else {
                0
            },
            max_ctx: self
                .inp
                .start_context
                .unwrap_or(self.hi_k * self.g)
                .max(self.lo_k * self.g),
            variants: (1..self.inp.variants.len())
                .filter(|&i| self.inp.variants[i].pruned.is_none())
                .collect(),
            ..Todo::default()
        };
        self.plan_maximum(self.todo.max_ctx);
        if let Some(l) = self.learned() {
            // Verification first; the search only if one fails.
            let mut verify = vec![(l.max_context, 1)];
            verify.extend(l.presets.iter().map(|(_, cfg, n)| (cfg.ctx, *n)));
            verify.dedup();
            self.todo = Todo {
                verify,
                max_ctx: l.max_context,
                ..Todo::default()
            };
        }
        let items = self.items();
        self.plan.predicted_at_start_s = Some(self.admitted_s(&items));
        let budget = self.budget.describe(self.floor_s());
        self.obs.plan(&items, &budget);
    }

    /// A learned result failed verification: the search starts at its maximum.
    fn search_again(&mut self, report: &mut Report, l: &Learned) -> u32 {
        report.context.start = l.max_context;
        self.todo = Todo {
            search: report.context.probe_bound,
            max_ctx: l.max_context,
            ..Todo::default()
        };
        l.max_context
    }

    /// The work planned at the maximum `max_ctx` (found or predicted): the ranking and the
    /// proof there, the presets' contexts below it and their concurrency levels.
    fn plan_maximum(&mut self, max_ctx: u32) {
        self.todo.max_ctx = max_ctx;
        self.todo.rank_ctx = max_ctx;
        self.todo.proof = Some(max_ctx);
        let (contexts, _) = self.chosen_contexts(max_ctx / self.g, false);
        self.todo.contexts = contexts[1..].to_vec();
        self.todo.concurrency = self.concurrency_plan(&contexts);
    }

    /// The maximum is validated at `vk`: the presets' contexts (largest first, the maximum
    /// among them), with notes for categories that cannot be served, and the work planned on
    /// them.
    fn plan_validated(&mut self, report: &mut Report, vk: u32) -> Vec<u32> {
        report.context.validated = Some(vk * self.g);
        self.todo.max_ctx = vk * self.g;
        let (contexts, notes) = self.chosen_contexts(vk, true);
        for n in notes {
            self.note(n);
        }
        self.todo.contexts = contexts[1..].to_vec();
        self.todo.fast_contexts = self.fast_contexts(&contexts[1..]);
        self.todo.concurrency = self.concurrency_plan(&contexts);
        contexts
    }

    /// The presets' contexts the fastest variant loads (none without one).
    fn fast_contexts(&self, contexts: &[u32]) -> Vec<u32> {
        self.fast_variant.as_ref().map_or(Vec::new(), |(_, max)| {
            contexts.iter().copied().filter(|c| c <= max).collect()
        })
    }
}
