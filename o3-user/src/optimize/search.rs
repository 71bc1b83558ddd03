//! The search, ordered around loads and fills so that depth is paid for once per answer:
//!
//! 1. **Context search**: bisection for the largest context that *loads* (one short request
//!    per probe; llama.cpp and Ollama allocate the KV cache and compute buffers at load).
//! 2. **Batch ranking** at that context, with fresh prompts of a moderate depth.
//! 3. **Proof of the maximum**: validation with prompts filled to `prompt.fill` of it (the
//!    first request reads the whole prompt, the others reuse that prefix). A context that loads
//!    but fails filled is searched again with filled probes (bisection); one that fails
//!    validation steps down a granule.
//! 4. **The presets' own contexts**, proven the same way.
//! 5. **Concurrency levels** with as many server slots, every stream filled to depth.
//!
//! Optional work (2, 4, 5) is admitted by the plan (`plan.rs`) while its predicted cost fits
//! the budget; what is cut is said. Pure logic over a [`Prober`]: every decision depends only
//! on probe outcomes (times included), so replaying a journal retraces the same path (that is
//! how an interrupted run resumes).

use serde::Serialize;

use crate::backend::{OutcomeClass, ProbeConfig};
use crate::config::Config;
use crate::timing::{Estimate, Prior, TimeModel};

use super::plan::{self, Budget, Item, Priority};
use super::prober::{Depth, ProbeOutcome, ProbeRequest, Prober, Stage};
use super::stats::{self, Validation};

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
        let next = ((b as f64 * scale).round() as u32).min(max);
        if next <= b {
            return out;
        }
        out.push(Some(next));
        b = next;
    }
}

/// Work still to do, for the plan, the budget and the ETA.
#[derive(Debug, Clone, Default)]
struct Todo {
    /// Search probes left (at most).
    search: u32,
    /// Batch ranking probes left, at this context.
    rank: u32,
    rank_ctx: u32,
    /// The proof of the maximum, at this context, if not yet done.
    proof: Option<u32>,
    /// Preset contexts to prove.
    contexts: Vec<u32>,
    /// Concurrency levels: (context, streams).
    concurrency: Vec<(u32, u32)>,
    /// Learned configurations to verify: (context, streams).
    verify: Vec<(u32, u32)>,
    /// The maximum (known or predicted), for the floor and what counts as "at max".
    max_ctx: u32,
}

struct Search<'a, 'b, P: Prober, O: Observer> {
    inp: &'b Inputs<'a>,
    prober: &'b mut P,
    obs: &'b mut O,
    probes: u32,
    notes: Vec<String>,
    configurations: Vec<Measured>,
    model: TimeModel,
    spent_s: f64,
    todo: Todo,
    budget: Budget,
    /// The floor as measured by the proof (load + fill + one decode), s.
    floor_measured: Option<f64>,
    /// Required work beyond the first proof of the maximum (step-downs, filled re-searches),
    /// s: a budget in floor units comes on top of it (the answer needed it).
    extra_required_s: f64,
    plan: plan::Report,
    /// Fields the server cannot set.
    fixed: Vec<&'static str>,
    batch0: Option<u32>,
    lo_k: u32,
    hi_k: u32,
    g: u32,
}

impl<'a, P: Prober, O: Observer> Search<'a, '_, P, O> {
    fn note(&mut self, msg: String) {
        self.obs.note(&msg);
        self.notes.push(msg);
    }

    fn cfg(&self) -> &'a Config {
        self.inp.config
    }

    /// The configuration at `ctx` with `batch` and `parallel` slots.
    fn at(&self, ctx: u32, batch: Option<u32>, parallel: Option<u32>) -> ProbeConfig {
        let c = self.cfg();
        let ubatch = if self.fixed.contains(&"ubatch") {
            None
        } else {
            c.batch.ubatch.map(|u| batch.map_or(u, |b| u.min(b)))
        };
        ProbeConfig {
            ctx,
            batch,
            ubatch,
            parallel,
            ..self.inp.base.clone()
        }
    }

    /// How deep a filled probe of `ctx` goes.
    fn filled(&self, ctx: u32) -> Depth {
        Depth::Filled {
            tokens: self.cfg().prompt.filled_tokens(ctx),
        }
    }

    fn search_depth(&self, ctx: u32) -> Depth {
        if self.cfg().search.load_only {
            Depth::Load
        } else {
            self.filled(ctx)
        }
    }

    fn rank_depth(&self, ctx: u32) -> Depth {
        let c = self.cfg();
        Depth::Fresh {
            tokens: c.batch.rank_tokens.min(c.prompt.filled_tokens(ctx)).max(1),
        }
    }

    fn samples(&self) -> u32 {
        self.cfg().validation.samples.max(1)
    }

    fn cost(&self, depth: Depth, rounds: u32, streams: u32) -> Estimate {
        plan::probe_cost(
            &self.model,
            depth,
            rounds,
            streams,
            self.cfg().prompt.output_tokens,
        )
    }

    /// The remaining work in execution order, with predicted costs.
    fn items(&self) -> Vec<Item> {
        let t = &self.todo;
        let c = self.cfg();
        let mut v = Vec::new();
        for &(ctx, streams) in &t.verify {
            v.push(Item {
                what: format!(
                    "verification of a learned configuration: ctx {ctx}{}, filled",
                    if streams > 1 {
                        format!(", {streams} streams")
                    } else {
                        String::new()
                    }
                ),
                priority: Priority::Required,
                cost: self.cost(
                    self.filled(ctx),
                    self.samples().div_ceil(streams.max(1)),
                    streams,
                ),
            });
        }
        if t.search > 0 {
            let one = self.cost(self.search_depth(t.max_ctx), 1, 1);
            v.push(Item {
                what: format!("context search: up to {} probes", t.search),
                priority: Priority::Required,
                cost: one.times(f64::from(t.search)),
            });
        }
        if t.rank > 0 {
            let one = self.cost(self.rank_depth(t.rank_ctx), c.batch.rank_samples.max(1), 1);
            v.push(Item {
                what: format!(
                    "batch ranking: up to {} probes at ctx {}",
                    t.rank, t.rank_ctx
                ),
                priority: Priority::Batch,
                cost: one.times(f64::from(t.rank)),
            });
        }
        if let Some(ctx) = t.proof {
            v.push(Item {
                what: format!("proof of the maximum ctx {ctx}, filled"),
                priority: Priority::Required,
                cost: self.cost(self.filled(ctx), self.samples(), 1),
            });
        }
        for &ctx in &t.contexts {
            v.push(Item {
                what: format!("proof of ctx {ctx}, filled"),
                priority: Priority::PresetContext,
                cost: self.cost(self.filled(ctx), self.samples(), 1),
            });
        }
        for &(ctx, level) in &t.concurrency {
            v.push(Item {
                what: format!("{level} streams at ctx {ctx}, each filled"),
                priority: if ctx >= t.max_ctx {
                    Priority::ConcurrencyAtMax
                } else {
                    Priority::Concurrency
                },
                cost: self.cost(self.filled(ctx), self.samples().div_ceil(level), level),
            });
        }
        v
    }

    /// The floor: the time model's (fitted on every measurement so far), or the proof's own
    /// load, fill and decode where that is less: one slow request must not raise a budget set
    /// in floors.
    fn floor_s(&self) -> f64 {
        let tokens = self.cfg().prompt.filled_tokens(self.todo.max_ctx) as u64;
        let model = plan::floor(&self.model, tokens, self.cfg().prompt.output_tokens).expected_s;
        self.floor_measured.map_or(model, |m| m.min(model))
    }

    fn left_s(&self) -> Option<f64> {
        let extra = if self.budget.fixed_s.is_none() {
            self.extra_required_s
        } else {
            0.0
        };
        self.budget
            .total_s(self.floor_s())
            .map(|t| (t + extra - self.spent_s).max(0.0))
    }

    /// Whether the first item of `remaining` fits the budget; a cut is noted.
    fn admit(&mut self, remaining: &[Item]) -> bool {
        match plan::admit(remaining, self.left_s()) {
            Ok(()) => true,
            Err(cut) => {
                let why = cut.to_string();
                let budget = self.budget.describe(self.floor_s());
                self.plan.cut.push(why.clone());
                self.note(format!(
                    "cut by the {budget}: {why} (`--budget none` or a longer `--budget` runs it)"
                ));
                false
            }
        }
    }

    /// Predicted time of the admitted work in `items`, s.
    fn admitted_s(&self, items: &[Item]) -> f64 {
        plan::admitted_s(items, self.left_s())
    }

    fn ask(&mut self, req: ProbeRequest) -> Option<ProbeOutcome> {
        self.model.use_batch(req.config.batch);
        let eta = Eta {
            probe: self.cost(req.depth, req.rounds, req.concurrency),
            after_s: self.admitted_s(&self.items()),
            spent_s: self.spent_s,
            probes_done: self.probes,
        };
        self.prober.know(&self.model);
        self.obs.before(&req, &eta);
        let out = self.prober.probe(&req)?;
        // A retried hiccup is part of the run's story: the report's notes say where.
        for n in out.notes.iter().filter(|n| n.starts_with("retried once")) {
            self.note(format!("{}: {n}", req.describe()));
        }
        self.probes += 1;
        self.spent_s += out.wall_ms / 1000.0;
        self.model.observe(&out.timing);
        if let Some(r) = out.prefix_reuse {
            self.model.observe_reuse(r);
        }
        let eta = Eta {
            spent_s: self.spent_s,
            probes_done: self.probes,
            after_s: self.admitted_s(&self.items()),
            ..eta
        };
        self.obs.after(&req, &out, &eta);
        Some(out)
    }

    /// A statistically validated measurement; `None` when interrupted.
    fn measure(
        &mut self,
        stage: Stage,
        config: ProbeConfig,
        depth: Depth,
        rounds: u32,
        concurrency: u32,
    ) -> Option<Measured> {
        let req = ProbeRequest {
            stage,
            config: config.clone(),
            depth,
            rounds,
            concurrency,
        };
        let out = self.ask(req)?;
        let c = self.cfg();
        // Timeouts among simultaneous streams are judged by their allowance (a single stream
        // has none); the steadiness of simultaneous streams is that of each round's aggregate
        // throughput (see `stats::validate`).
        let validation = stats::validate(
            &out.observations,
            out.timeouts,
            (concurrency > 1).then_some(out.round_tokens_per_s.as_slice()),
            &stats::Criteria {
                min_success_rate: c.validation.min_success_rate,
                max_cv: c.validation.max_cv,
                max_timeouts: if concurrency > 1 {
                    c.concurrency.max_timeouts
                } else {
                    0
                },
            },
        );
        // Anything but timeouts among concurrent streams ending the probe (a crash, a breach,
        // an error) makes the configuration unusable.
        let clean = out.passed() || (out.outcome == OutcomeClass::Timeout && concurrency > 1);
        let stable = validation.stable && clean;
        let fill_ok = out.observations.iter().any(|o| o.ok && !o.cached);
        let proven_at_depth = match depth {
            Depth::Filled { tokens } => fill_ok && tokens >= c.prompt.depth_tokens(config.ctx),
            _ => false,
        };
        let ttft = validation.ttft_ms.as_ref();
        Some(Measured {
            id: match depth {
                // A ranking says nothing of its context: an id of its own.
                Depth::Fresh { tokens } => format!("{}-r{tokens}", config_id(&config)),
                Depth::Load => format!("{}-load", config_id(&config)),
                Depth::Filled { .. } => config_id(&config),
            },
            stage,
            config,
            depth,
            concurrency,
            outcome: out.outcome,
            error: out.error.clone(),
            stable,
            proven_at_depth,
            loaded: !out.observations.is_empty(),
            fill_ok,
            timeouts: out.timeouts,
            output_tokens_per_s: crate::util::order::median(out.round_tokens_per_s.clone()),
            ttft_p50_ms: ttft.map(|d| d.median),
            ttft_p95_ms: ttft.map(|d| d.p95),
            cached_ttft_p50_ms: validation.cached_ttft_ms.as_ref().map(|d| d.median),
            prompt_tokens: out.prompt_tokens,
            prefix_reuse: out.prefix_reuse,
            rss_peak_bytes: out.rss_peak_bytes,
            rss_method: out.rss_method.clone(),
            mem_used_peak_bytes: out.mem_used_peak_bytes,
            gpu_used_peak_bytes: out.gpu_used_peak_bytes,
            wall_s: out.wall_ms / 1000.0,
            chat: out.chat.clone(),
            validation,
        })
    }

    fn why_unstable(m: &Measured) -> String {
        if m.outcome != OutcomeClass::Ok && m.outcome != OutcomeClass::Timeout {
            return format!(
                "{}: {}",
                m.outcome.name(),
                m.error.as_deref().unwrap_or("no detail")
            );
        }
        let mut r = m.validation.reasons.clone();
        // The verdict's reasons count timeouts themselves where they decided it.
        if m.timeouts > 0 && !r.iter().any(|x| x.contains("timeout")) {
            r.push(format!("{} timeouts", m.timeouts));
        }
        r.join("; ")
    }
}

/// How a filled validation failed.
#[derive(PartialEq)]
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

/// Runs the whole search.
pub fn run<P: Prober, O: Observer>(inp: &Inputs, prober: &mut P, obs: &mut O) -> Report {
    let c = inp.config;
    let g = c.search.granularity.max(1);
    let ceiling = inp
        .trained_context
        .map_or(c.search.max_context, |t| t.min(c.search.max_context));
    let lo_k = c.search.min_context.div_ceil(g);
    let hi_k = ceiling / g;
    let start_ctx = inp.start_context.unwrap_or(c.search.initial_context);
    let grid = (hi_k + 1).saturating_sub(lo_k);
    let probe_bound = ceil_log2(grid as u64 + 1) + 1;
    let mut report = Report {
        context: ContextSearch {
            low: lo_k * g,
            high: hi_k * g,
            granularity: g,
            start: start_ctx,
            probe_bound,
            load_only: c.search.load_only,
            probes: Vec::new(),
            max_passing: None,
            proofs: Vec::new(),
            validated: None,
            step_downs: 0,
            cut_short: false,
            fails_filled: None,
        },
        configurations: Vec::new(),
        notes: Vec::new(),
        probes: 0,
        interrupted: false,
        reused: Vec::new(),
        plan: plan::Report::default(),
        time_model: TimeModel::new(Prior::from_size(None, None)),
    };
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
    let mut s = Search {
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
            floor_multiple: c.plan.floor_multiple,
            min_s: c.plan.min_budget_s,
        },
        floor_measured: None,
        extra_required_s: 0.0,
        plan: plan::Report::default(),
        fixed,
        batch0,
        lo_k,
        hi_k,
        g,
    };
    let interrupted = if inp.strategy == Strategy::Grid {
        s.grid(&mut report).is_none()
    } else {
        s.all(&mut report, start_ctx).is_none()
    };
    report.interrupted = interrupted;
    report.probes = s.probes;
    s.plan.spent_s = s.spent_s;
    if report.context.validated.is_some() || s.floor_measured.is_some() {
        if report.context.validated.is_some() {
            s.todo.max_ctx = report.context.validated.unwrap_or(s.todo.max_ctx);
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
    report
}

impl<'a, P: Prober, O: Observer> Search<'a, '_, P, O> {
    /// The baseline: every grid context at every batch, validated filled.
    fn grid(&mut self, report: &mut Report) -> Option<()> {
        let c = self.cfg();
        let ladder = batch_ladder(self.batch0, c.batch.scale_factor, c.batch.max_batch);
        for k in self.lo_k..=self.hi_k {
            for &b in &ladder {
                let ctx = k * self.g;
                let m = self.measure(
                    Stage::Validate,
                    self.at(ctx, b, None),
                    self.filled(ctx),
                    self.samples(),
                    1,
                )?;
                if m.stable {
                    report.context.validated = Some(ctx);
                    report.context.max_passing = Some(ctx);
                }
                self.configurations.push(m);
            }
        }
        Some(())
    }

    fn all(&mut self, report: &mut Report, start_ctx: u32) -> Option<()> {
        let c = self.cfg();
        // The plan before the first probe: the maximum as predicted (or the top of the range).
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
            ..Todo::default()
        };
        self.todo.rank_ctx = self.todo.max_ctx;
        self.todo.proof = Some(self.todo.max_ctx);
        let (contexts, _) = self.chosen_contexts(self.todo.max_ctx / self.g, false);
        self.todo.contexts = contexts[1..].to_vec();
        self.todo.concurrency = self.concurrency_plan(&contexts);
        if let (Some(l), Strategy::Binary) = (&self.inp.learned, self.inp.strategy) {
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

        let mut start_ctx = start_ctx;
        if let (Some(l), Strategy::Binary) = (&self.inp.learned, self.inp.strategy) {
            let l = l.clone();
            match self.verify_learned(report, &l)? {
                true => return Some(()),
                false => {
                    start_ctx = l.max_context;
                    report.context.start = start_ctx;
                    self.todo = Todo {
                        search: report.context.probe_bound,
                        max_ctx: l.max_context,
                        ..Todo::default()
                    };
                }
            }
        }
        let Some(kmax) = self.find_context(report, start_ctx)? else {
            self.todo = Todo::default();
            return Some(());
        };
        let max_ctx = kmax * self.g;
        self.todo.max_ctx = max_ctx;
        self.todo.rank_ctx = max_ctx;
        self.todo.proof = Some(max_ctx);
        let (contexts, _) = self.chosen_contexts(kmax, false);
        self.todo.contexts = contexts[1..].to_vec();
        self.todo.concurrency = self.concurrency_plan(&contexts);

        let best = self.rank_batches(max_ctx)?;
        let Some((vk, proof_batch)) = self.prove_max(report, kmax, best)? else {
            self.todo = Todo::default();
            return Some(());
        };
        let vmax = vk * self.g;
        report.context.validated = Some(vmax);
        self.todo.max_ctx = vmax;
        let (contexts, notes) = self.chosen_contexts(vk, true);
        for n in notes {
            self.note(n);
        }
        self.todo.contexts = contexts[1..].to_vec();
        self.todo.concurrency = self.concurrency_plan(&contexts);

        // The presets' own contexts, then concurrency levels (smaller contexts first, the
        // maximum last: each stream there fills the whole depth).
        let mut proven = vec![(vmax, proof_batch)];
        for &ctx in &contexts[1..] {
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
            let m = self.measure(
                Stage::Validate,
                self.at(ctx, best, None),
                self.filled(ctx),
                self.samples(),
                1,
            )?;
            let stable = m.stable;
            if !stable {
                let why = Self::why_unstable(&m);
                self.note(format!("ctx {ctx} failed validation: {why}"));
                self.todo.concurrency.retain(|&(x, _)| x != ctx);
            }
            self.configurations.push(m);
            if stable {
                proven.push((ctx, best));
            }
        }
        self.concurrency(&mut proven)
    }

    /// Learned results: one filled verification each; all stable means no search. `true`:
    /// reused.
    fn verify_learned(&mut self, report: &mut Report, l: &Learned) -> Option<bool> {
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

    /// Stage 1: bisection for the largest grid index that loads. `Some(None)`: nothing loads.
    fn find_context(&mut self, report: &mut Report, start_ctx: u32) -> Option<Option<u32>> {
        let (g, lo_k, hi_k) = (self.g, self.lo_k, self.hi_k);
        let c = self.cfg();
        if hi_k < lo_k {
            let ceiling = hi_k * g + g - 1;
            self.note(format!(
                "no context to search: the range {}..{} holds no multiple of the granularity {g}{}",
                c.search.min_context,
                ceiling.min(c.search.max_context),
                self.inp
                    .trained_context
                    .map_or(String::new(), |t| format!(" (trained context {t})"))
            ));
            return Some(None);
        }
        // `lo` starts one below the range (nothing known to pass), `hi` at its top.
        let mut lo = lo_k as i64 - 1;
        let mut hi = hi_k as i64;
        let start_k =
            ((start_ctx as f64 / g as f64).round() as i64).clamp(lo_k as i64, hi_k as i64);
        let mut iterations = 0;
        let strategy = self.inp.strategy;
        let gallop = self.inp.gallop && self.inp.start_context.is_some();
        let (mut dir, mut stride) = (0i64, 1i64);
        while lo < hi {
            if iterations >= c.search.max_iterations && strategy == Strategy::Binary {
                report.context.cut_short = true;
                self.note(format!(
                    "context search stopped after {iterations} probes (search.max_iterations); the answer lies in {}..{}",
                    (lo + 1).max(lo_k as i64) * g as i64,
                    hi * g as i64
                ));
                break;
            }
            let mid = match strategy {
                Strategy::Linear => lo + 1,
                _ if iterations == 0 => start_k.clamp(lo + 1, hi),
                // From a prediction: gallop away from it (1, 2, 4 … granules past the last
                // result) until the answer is bracketed, then bisect; an accurate prediction
                // ends in two or three probes.
                _ if dir != 0 => {
                    let m = if dir > 0 {
                        lo + stride
                    } else {
                        hi - (stride - 1)
                    };
                    stride *= 2;
                    m.clamp(lo + 1, hi)
                }
                _ => (lo + hi + 1) / 2,
            };
            iterations += 1;
            let ctx = mid as u32 * g;
            self.todo.search = match strategy {
                Strategy::Linear => (hi - lo) as u32,
                _ => ceil_log2((hi - lo) as u64 + 1).max(1),
            };
            self.todo.max_ctx = ((lo + hi + 1) / 2).max(lo_k as i64) as u32 * g;
            let req = ProbeRequest {
                stage: Stage::Context,
                config: self.at(ctx, self.batch0, None),
                depth: self.search_depth(ctx),
                rounds: 1,
                concurrency: 1,
            };
            let out = self.ask(req)?;
            let passed = out.passed();
            report.context.probes.push(ContextProbe {
                ctx,
                passed,
                outcome: out.outcome,
                error: out.error.clone(),
            });
            if passed {
                lo = mid;
            } else {
                hi = mid - 1;
            }
            if iterations == 1 && gallop && strategy == Strategy::Binary {
                dir = if passed { 1 } else { -1 };
            } else if (dir > 0 && !passed) || (dir < 0 && passed) {
                dir = 0;
            }
        }
        self.todo.search = 0;
        if lo < lo_k as i64 {
            let why = report
                .context
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
                lo_k * g
            ));
            return Some(None);
        }
        report.context.max_passing = Some(lo as u32 * g);
        Some(Some(lo as u32))
    }

    /// Stage 2: batch ranking at `ctx` with fresh prompts of a moderate depth: the ladder from the
    /// initial batch, stopping at a failure (a batch that does not load there), a gain under
    /// `batch.min_gain`, or the largest batch. Returns the batch to use.
    fn rank_batches(&mut self, ctx: u32) -> Option<Option<u32>> {
        let c = self.cfg();
        let b0 = self.batch0;
        if !c.batch.enabled {
            self.note("batch ranking disabled (batch.enabled: false)".into());
            self.todo.rank = 0;
            return Some(b0);
        }
        let Some(b0v) = b0 else {
            self.note("batch ranking skipped: this server's batch size is fixed".into());
            self.todo.rank = 0;
            return Some(None);
        };
        let ladder = batch_ladder(b0, c.batch.scale_factor, c.batch.max_batch);
        if ladder.len() < 2 {
            self.todo.rank = 0;
            return Some(b0);
        }
        let depth = self.rank_depth(ctx);
        let rate = |m: &Measured| m.validation.prefill_tokens_per_s.as_ref().map(|d| d.median);
        let mut best: Option<Measured> = None;
        let mut kept = b0v;
        // Admitted (or cut) as a whole: half a ranking would rank nothing.
        self.todo.rank = ladder.len() as u32;
        self.todo.rank_ctx = ctx;
        let mut remaining = self.items();
        remaining.retain(|i| i.priority != Priority::Required || !i.what.starts_with("context"));
        if let Some(pos) = remaining.iter().position(|i| i.priority == Priority::Batch) {
            remaining[..=pos].rotate_right(1);
        }
        if !self.admit(&remaining) {
            self.todo.rank = 0;
            return Some(b0);
        }
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
            let gain = match (rate(&m), rate(prev)) {
                (Some(new), Some(old)) if old > 0.0 => new / old - 1.0,
                _ => 0.0,
            };
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
        self.todo.rank = 0;
        Some(Some(kept))
    }

    /// Stage 3: the proof of the maximum: validation filled to depth at the largest context that
    /// loads. A batch that does not load there falls back down the ladder; a context that
    /// loads but fails filled is bisected with filled probes; one that fails validation steps
    /// down a granule. Returns the validated grid index and its batch.
    fn prove_max(
        &mut self,
        report: &mut Report,
        kmax: u32,
        best: Option<u32>,
    ) -> Option<Option<(u32, Option<u32>)>> {
        let c = self.cfg();
        let g = self.g;
        let mut batches: Vec<Option<u32>> =
            batch_ladder(self.batch0, c.batch.scale_factor, c.batch.max_batch)
                .into_iter()
                .filter(|b| *b <= best)
                .collect();
        batches.reverse();
        let mut bi = 0;
        // `lo`: largest index known to pass filled (none: one below the range); `hi`: largest
        // not known to fail.
        let mut lo = self.lo_k as i64 - 1;
        let mut hi = kmax as i64;
        let mut k = hi;
        let mut bisect = false;
        let mut attempts = 0;
        while lo < hi {
            if attempts >= c.search.max_iterations {
                self.note(format!(
                    "the proof of the maximum stopped after {attempts} filled probes (search.max_iterations)"
                ));
                break;
            }
            attempts += 1;
            let ctx = k as u32 * g;
            let batch = batches.get(bi).copied().unwrap_or(self.batch0);
            self.todo.proof = Some(ctx);
            self.todo.max_ctx = ctx;
            let m = self.measure(
                Stage::Validate,
                self.at(ctx, batch, None),
                self.filled(ctx),
                self.samples(),
                1,
            )?;
            if attempts > 1 || bi > 0 {
                self.extra_required_s += m.wall_s;
            }
            self.todo.proof = None;
            report.context.proofs.push(ContextProbe {
                ctx,
                passed: m.stable,
                outcome: m.outcome,
                error: m.error.clone(),
            });
            let kind = failure(&m);
            let stable = m.stable;
            if stable && self.floor_measured.is_none() && m.config.ctx == kmax * g {
                self.floor_measured = Some(self.measured_floor(&m));
            }
            let why = Self::why_unstable(&m);
            self.configurations.push(m);
            if stable {
                lo = k;
                if lo >= hi {
                    break;
                }
                k = (lo + hi + 1) / 2;
                continue;
            }
            match kind {
                Failure::Load if bi + 1 < batches.len() => {
                    let smaller = batches[bi + 1];
                    self.note(format!(
                        "ctx {ctx}: batch {} does not load filled ({why}); proving with batch {}",
                        batch.map_or("default".into(), |b| b.to_string()),
                        smaller.map_or("default".into(), |b| b.to_string())
                    ));
                    bi += 1;
                    attempts -= 1;
                    continue;
                }
                Failure::Fill | Failure::Load => {
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
                    bisect = true;
                    hi = k - 1;
                    report.context.step_downs += 1;
                    k = (lo + hi + 1) / 2;
                }
                Failure::Unstable => {
                    self.note(format!("ctx {ctx} failed validation: {why}"));
                    hi = k - 1;
                    report.context.step_downs += 1;
                    k = if bisect { (lo + hi + 1) / 2 } else { hi };
                }
            }
            if k < self.lo_k as i64 {
                break;
            }
        }
        if lo < self.lo_k as i64 {
            self.note("no context passed statistical validation filled to depth".into());
            return Some(None);
        }
        let batch = batches.get(bi).copied().unwrap_or(self.batch0);
        Some(Some((lo as u32, batch)))
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

    /// The contexts the presets need, largest first: the validated maximum, the top of the
    /// balanced range and the fast-response minimum (those within the maximum), and notes for
    /// categories that cannot be served (when `say`).
    fn chosen_contexts(&self, vk: u32, say: bool) -> (Vec<u32>, Vec<String>) {
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

    /// Concurrency levels to try, smallest contexts first, the maximum last.
    fn concurrency_plan(&self, contexts: &[u32]) -> Vec<(u32, u32)> {
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
    fn concurrency(&mut self, proven: &mut [(u32, Option<u32>)]) -> Option<()> {
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
