//! The search's state and the steps every stage takes: the configuration at a context, how
//! deep a probe goes and what it costs, the plan of the work left and the budget's verdict on
//! it, one probe asked and one measurement judged.

use crate::backend::{OutcomeClass, ProbeConfig};
use crate::config::Config;
use crate::optimize::plan::{self, Budget, Item, Priority};
use crate::optimize::prober::{Depth, ProbeOutcome, ProbeRequest, Prober, Stage};
use crate::optimize::stats;
use crate::timing::{Estimate, TimeModel};

use super::{config_id, Eta, Inputs, Measured, Observer};

/// Work still to do, for the plan, the budget and the ETA.
#[derive(Debug, Clone, Default)]
pub(super) struct Todo {
    /// Search probes left (at most).
    pub search: u32,
    /// Batch ranking probes left, at this context.
    pub rank: u32,
    pub rank_ctx: u32,
    /// The proof of the maximum, at this context, if not yet done.
    pub proof: Option<u32>,
    /// Preset contexts to prove.
    pub contexts: Vec<u32>,
    /// Concurrency levels: (context, streams).
    pub concurrency: Vec<(u32, u32)>,
    /// Learned configurations to verify: (context, streams).
    pub verify: Vec<(u32, u32)>,
    /// Variants (indices into `Inputs::variants`) whose search and ranking are left.
    pub variants: Vec<usize>,
    /// Preset contexts to prove with the fastest variant.
    pub fast_contexts: Vec<u32>,
    /// The maximum (known or predicted), for the floor and what counts as "at max".
    pub max_ctx: u32,
}

/// A search in progress.
pub(super) struct Search<'a, 'b, P: Prober, O: Observer + ?Sized> {
    pub inp: &'b Inputs<'a>,
    pub prober: &'b mut P,
    pub obs: &'b mut O,
    pub probes: u32,
    pub notes: Vec<String>,
    pub configurations: Vec<Measured>,
    pub model: TimeModel,
    pub spent_s: f64,
    pub todo: Todo,
    pub budget: Budget,
    /// The floor as measured by the proof (load + fill + one decode), s.
    pub floor_measured: Option<f64>,
    /// Required work beyond the first proof of the maximum (step-downs, filled re-searches),
    /// s: a budget in floor units comes on top of it (the answer needed it).
    pub extra_required_s: f64,
    pub plan: plan::Report,
    /// Fields the server cannot set.
    pub fixed: Vec<&'static str>,
    pub batch0: Option<u32>,
    pub lo_k: u32,
    pub hi_k: u32,
    pub g: u32,
    /// The settings probes use beside context, batch and slots: `Inputs::base`, or the variant
    /// being measured.
    pub base: ProbeConfig,
    /// The fastest variant, where it is not the longest, and its largest loading context.
    pub fast_variant: Option<(ProbeConfig, u32)>,
}

impl<'a, P: Prober, O: Observer + ?Sized> Search<'a, '_, P, O> {
    pub(super) fn note(&mut self, msg: String) {
        self.obs.note(&msg);
        self.notes.push(msg);
    }

    pub(super) fn cfg(&self) -> &'a Config {
        self.inp.config
    }

    /// The configuration at `ctx` with `batch` and `parallel` slots.
    pub(super) fn at(&self, ctx: u32, batch: Option<u32>, parallel: Option<u32>) -> ProbeConfig {
        let c = self.cfg();
        let ubatch = if self.fixed.contains(&"ubatch") {
            None
        } else {
            c.batch.ubatch_at(self.base.ubatch, batch)
        };
        ProbeConfig {
            ctx,
            batch,
            ubatch,
            parallel,
            ..self.base.clone()
        }
    }

    /// How deep a filled probe of `ctx` goes.
    pub(super) fn filled(&self, ctx: u32) -> Depth {
        Depth::Filled {
            tokens: self.cfg().prompt.filled_tokens(ctx),
        }
    }

    pub(super) fn search_depth(&self, ctx: u32) -> Depth {
        if self.cfg().search.load_only {
            Depth::Load
        } else {
            self.filled(ctx)
        }
    }

    pub(super) fn rank_depth(&self, ctx: u32) -> Depth {
        let c = self.cfg();
        Depth::Fresh {
            tokens: c.batch.rank_tokens.min(c.prompt.filled_tokens(ctx)).max(1),
        }
    }

    pub(super) fn samples(&self) -> u32 {
        self.cfg().validation.samples.max(1)
    }

    pub(super) fn cost(&self, depth: Depth, rounds: u32, streams: u32) -> Estimate {
        plan::probe_cost(
            &self.model,
            depth,
            rounds,
            streams,
            self.cfg().prompt.output_tokens,
        )
    }

    /// The remaining work in execution order, with predicted costs.
    pub(super) fn items(&self) -> Vec<Item> {
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
        for &i in &t.variants {
            v.push(self.variant_item(i));
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
        for &ctx in &t.fast_contexts {
            v.push(self.fast_item(ctx));
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
    pub(super) fn floor_s(&self) -> f64 {
        let tokens = u64::from(self.cfg().prompt.filled_tokens(self.todo.max_ctx));
        let model = plan::floor(&self.model, tokens, self.cfg().prompt.output_tokens).expected_s;
        self.floor_measured.map_or(model, |m| m.min(model))
    }

    pub(super) fn left_s(&self) -> Option<f64> {
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
    pub(super) fn admit(&mut self, remaining: &[Item]) -> bool {
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
    pub(super) fn admitted_s(&self, items: &[Item]) -> f64 {
        plan::admitted_s(items, self.left_s())
    }

    pub(super) fn ask(&mut self, req: ProbeRequest) -> Option<ProbeOutcome> {
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
    pub(super) fn measure(
        &mut self,
        stage: Stage,
        config: ProbeConfig,
        depth: Depth,
        rounds: u32,
        concurrency: u32,
    ) -> Option<Measured> {
        let req = ProbeRequest {
            stage,
            config,
            depth,
            rounds,
            concurrency,
        };
        let out = self.ask(req.clone())?;
        Some(self.judge(req, &out))
    }

    /// One filled validation of `ctx` at `batch` (one slot), as every proof takes it.
    pub(super) fn validate_filled(&mut self, ctx: u32, batch: Option<u32>) -> Option<Measured> {
        self.measure(
            Stage::Validate,
            self.at(ctx, batch, None),
            self.filled(ctx),
            self.samples(),
            1,
        )
    }

    /// What a validation must show: timeouts among simultaneous streams are judged by their
    /// allowance (a single stream has none).
    fn criteria(&self, concurrency: u32) -> stats::Criteria {
        let c = self.cfg();
        stats::Criteria {
            min_success_rate: c.validation.min_success_rate,
            max_cv: c.validation.max_cv,
            max_timeouts: if concurrency > 1 {
                c.concurrency.max_timeouts
            } else {
                0
            },
        }
    }

    /// The probe's outcome as a measurement: its statistics and verdict.
    fn judge(&self, req: ProbeRequest, out: &ProbeOutcome) -> Measured {
        let ProbeRequest {
            stage,
            config,
            depth,
            concurrency,
            ..
        } = req;
        // The steadiness of simultaneous streams is that of each round's aggregate
        // throughput (see `stats::validate`).
        let validation = stats::validate(
            &out.observations,
            out.timeouts,
            (concurrency > 1).then_some(out.round_tokens_per_s.as_slice()),
            &self.criteria(concurrency),
        );
        // Anything but timeouts among concurrent streams ending the probe (a crash, a breach,
        // an error) makes the configuration unusable.
        let clean = out.passed() || (out.outcome == OutcomeClass::Timeout && concurrency > 1);
        let fill_ok = out.observations.iter().any(|o| o.ok && !o.cached);
        let proven_at_depth = match depth {
            Depth::Filled { tokens } => {
                fill_ok && tokens >= self.cfg().prompt.depth_tokens(config.ctx)
            }
            _ => false,
        };
        let ttft = validation.ttft_ms.as_ref();
        let tag = if self.inp.variants.is_empty() {
            String::new()
        } else {
            super::variants::id_tag(&config)
        };
        Measured {
            id: measured_id(&config, depth) + &tag,
            stage,
            config,
            depth,
            concurrency,
            outcome: out.outcome,
            error: out.error.clone(),
            stable: validation.stable && clean,
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
        }
    }

    pub(super) fn why_unstable(m: &Measured) -> String {
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

/// A measurement's id: the configuration's, a ranking's with its depth (it says nothing of its
/// context), a load's marked so.
fn measured_id(config: &ProbeConfig, depth: Depth) -> String {
    match depth {
        Depth::Fresh { tokens } => format!("{}-r{tokens}", config_id(config)),
        Depth::Load => format!("{}-load", config_id(config)),
        Depth::Filled { .. } => config_id(config),
    }
}
