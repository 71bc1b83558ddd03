//! The search: context discovery by binary search, statistical validation with step-down,
//! batch adaptation and concurrency levels at the chosen contexts. Pure logic over a
//! [`Prober`]: every decision depends only on probe outcomes, so replaying a journal of
//! outcomes retraces the same path (that is how an interrupted run resumes).

use serde::Serialize;

use crate::backend::{OutcomeClass, ProbeConfig};
use crate::config::Config;

use super::prober::{ProbeOutcome, ProbeRequest, Prober, Stage};
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
    /// Parameter count (initial batch by size class), when known.
    pub parameters: Option<u64>,
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
    /// Every context of the grid at every batch of the ladder, each validated (what a
    /// llama-bench sweep does); no early stop.
    Grid,
}

/// Progress hooks (the CLI draws bars; tests ignore them).
pub trait Observer {
    fn before(&mut self, _req: &ProbeRequest, _done: u32, _estimate: u32) {}
    fn after(&mut self, _req: &ProbeRequest, _out: &ProbeOutcome) {}
    fn note(&mut self, _msg: &str) {}
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
    pub probes: Vec<ContextProbe>,
    /// Largest context whose search probe passed.
    pub max_passing: Option<u32>,
    /// Largest context that also passed statistical validation.
    pub validated: Option<u32>,
    /// Granules stepped down because validation failed.
    pub step_downs: u32,
    /// The iteration limit stopped the search before it converged.
    pub cut_short: bool,
}

/// One statistically validated measurement (validation, batch or concurrency stage).
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    /// `c8192-b64-p2`: context, batch (`d`: server default), slots.
    pub id: String,
    pub stage: Stage,
    pub config: ProbeConfig,
    /// Simultaneous streams.
    pub concurrency: u32,
    pub outcome: OutcomeClass,
    pub error: Option<String>,
    /// Usable for presets: validation stable and no more timeouts than allowed.
    pub stable: bool,
    pub validation: Validation,
    pub timeouts: u32,
    /// Median over rounds of the aggregate decode throughput (all streams summed), tokens/s.
    pub output_tokens_per_s: Option<f64>,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p95_ms: Option<f64>,
    pub prompt_tokens: Option<u64>,
    pub rss_peak_bytes: Option<u64>,
    pub rss_method: String,
    pub mem_used_peak_bytes: Option<u64>,
    pub gpu_used_peak_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub context: ContextSearch,
    /// Every validated measurement, in the order taken.
    pub configurations: Vec<Measured>,
    /// Why stages were skipped or stopped, in order.
    pub notes: Vec<String>,
    /// Probes asked for (including those answered from the journal).
    pub probes: u32,
    /// The run was asked to stop before the search finished.
    pub interrupted: bool,
    /// Learned results verified and reused instead of searched (empty: none reused).
    pub reused: Vec<String>,
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

struct Search<'a, 'b, P: Prober, O: Observer> {
    inp: &'b Inputs<'a>,
    prober: &'b mut P,
    obs: &'b mut O,
    probes: u32,
    estimate: u32,
    notes: Vec<String>,
    configurations: Vec<Measured>,
}

impl<P: Prober, O: Observer> Search<'_, '_, P, O> {
    fn note(&mut self, msg: String) {
        self.obs.note(&msg);
        self.notes.push(msg);
    }

    fn ask(&mut self, req: ProbeRequest) -> Option<ProbeOutcome> {
        self.estimate = self.estimate.max(self.probes + 1);
        self.obs.before(&req, self.probes, self.estimate);
        let out = self.prober.probe(&req)?;
        self.probes += 1;
        self.obs.after(&req, &out);
        Some(out)
    }

    /// A statistically validated measurement; `None` when interrupted.
    fn measure(&mut self, stage: Stage, config: ProbeConfig, concurrency: u32) -> Option<Measured> {
        let c = self.inp.config;
        let samples = c.validation.samples.max(1);
        let rounds = samples.div_ceil(concurrency.max(1)).max(1);
        let req = ProbeRequest {
            stage,
            config: config.clone(),
            rounds,
            concurrency,
        };
        let out = self.ask(req)?;
        let mut validation = stats::validate(
            &out.observations,
            c.validation.min_success_rate,
            c.validation.max_cv,
        );
        if concurrency > 1 {
            // Simultaneous streams start together and overlap only partly, so per-request
            // TTFT and decode rates spread by design; what must be steady is the aggregate
            // throughput of each round, next to the success rate.
            validation.reasons.retain(|r| {
                r.starts_with("success rate")
                    || r.starts_with("all ")
                    || r.starts_with("no requests")
            });
            if let Some(d) = stats::describe(&out.round_tokens_per_s) {
                if d.n >= 2 && d.cv > c.validation.max_cv {
                    validation.reasons.push(format!(
                        "aggregate decode throughput varies too much between rounds: CV {:.3} > {:.3}",
                        d.cv, c.validation.max_cv
                    ));
                }
            }
            validation.stable = validation.reasons.is_empty();
        }
        let allowed = if concurrency > 1 {
            c.concurrency.max_timeouts
        } else {
            0
        };
        // Timeouts among concurrent streams are judged by the allowance; anything else failing
        // (a crash, a breach) makes the configuration unusable.
        let clean = out.passed() || (out.outcome == OutcomeClass::Timeout && concurrency > 1);
        let stable = validation.stable && clean && out.timeouts <= allowed;
        let mut rates = out.round_tokens_per_s.clone();
        rates.sort_by(f64::total_cmp);
        let ttft = validation.ttft_ms.as_ref();
        Some(Measured {
            id: config_id(&config),
            stage,
            config,
            concurrency,
            outcome: out.outcome,
            error: out.error.clone(),
            stable,
            timeouts: out.timeouts,
            output_tokens_per_s: median_sorted(&rates),
            ttft_p50_ms: ttft.map(|d| d.median),
            ttft_p95_ms: ttft.map(|d| d.p95),
            prompt_tokens: out.prompt_tokens,
            rss_peak_bytes: out.rss_peak_bytes,
            rss_method: out.rss_method.clone(),
            mem_used_peak_bytes: out.mem_used_peak_bytes,
            gpu_used_peak_bytes: out.gpu_used_peak_bytes,
            validation,
        })
    }

    fn why_unstable(m: &Measured) -> String {
        if m.outcome != OutcomeClass::Ok && m.outcome != OutcomeClass::Timeout {
            return format!(
                "{:?}: {}",
                m.outcome,
                m.error.as_deref().unwrap_or("no detail")
            )
            .to_lowercase();
        }
        let mut r = m.validation.reasons.clone();
        if m.timeouts > 0 {
            r.push(format!("{} timeouts", m.timeouts));
        }
        r.join("; ")
    }
}

/// The batches batch adaptation may visit: the initial one times the scale factor up to the
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

fn median_sorted(v: &[f64]) -> Option<f64> {
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
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
    let mut report = Report {
        context: ContextSearch {
            low: lo_k * g,
            high: hi_k * g,
            granularity: g,
            start: start_ctx,
            probe_bound: ceil_log2(grid as u64 + 1) + 1,
            probes: Vec::new(),
            max_passing: None,
            validated: None,
            step_downs: 0,
            cut_short: false,
        },
        configurations: Vec::new(),
        notes: Vec::new(),
        probes: 0,
        interrupted: false,
        reused: Vec::new(),
    };
    let mut s = Search {
        inp,
        prober,
        obs,
        probes: 0,
        estimate: report.context.probe_bound + 1,
        notes: Vec::new(),
        configurations: Vec::new(),
    };
    let fixed = s.prober.fixed_by_server(&ProbeConfig {
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
    let ubatch_for = |b: Option<u32>| -> Option<u32> {
        if fixed.contains(&"ubatch") {
            return None;
        }
        c.batch.ubatch.map(|u| b.map_or(u, |b| u.min(b)))
    };
    let at = |ctx: u32, batch: Option<u32>, parallel: Option<u32>| ProbeConfig {
        ctx,
        batch,
        ubatch: ubatch_for(batch),
        parallel,
        ..inp.base.clone()
    };

    if inp.strategy == Strategy::Grid {
        let ladder = batch_ladder(batch0, c.batch.scale_factor, c.batch.max_batch);
        let mut validated = None;
        let interrupted = 'grid: {
            for k in lo_k..=hi_k {
                for &b in &ladder {
                    let Some(m) = s.measure(Stage::Validate, at(k * g, b, None), 1) else {
                        break 'grid true;
                    };
                    if m.stable {
                        validated = Some(k * g);
                    }
                    s.configurations.push(m);
                }
            }
            false
        };
        report.context.validated = validated;
        report.context.max_passing = validated;
        report.interrupted = interrupted;
        report.probes = s.probes;
        report.notes = s.notes;
        report.configurations = s.configurations;
        return report;
    }

    // 0. Learned results: one verification probe each; all stable means no search.
    let mut start_ctx = start_ctx;
    if let (Some(l), Strategy::Binary) = (&inp.learned, inp.strategy) {
        let mut verified = Vec::new();
        let mut failed = None;
        let mut wanted = vec![(
            "max_context".to_string(),
            at(l.max_context, batch0, None),
            1u32,
        )];
        wanted.extend(l.presets.iter().cloned());
        let mut seen = std::collections::HashSet::new();
        for (name, cfg, streams) in wanted {
            if !seen.insert((config_id(&cfg), streams)) {
                continue;
            }
            let Some(m) = s.measure(Stage::Verify, cfg, streams) else {
                report.interrupted = true;
                report.probes = s.probes;
                report.notes = s.notes;
                report.configurations = s.configurations;
                return report;
            };
            if m.stable {
                verified.push(format!("{name} ({}) from {}", m.id, l.source));
            } else if failed.is_none() {
                failed = Some(format!(
                    "{name} ({}) from {} failed verification: {}",
                    m.id,
                    l.source,
                    Search::<P, O>::why_unstable(&m)
                ));
            }
            s.configurations.push(m);
            if failed.is_some() {
                break;
            }
        }
        match failed {
            None => {
                report.context.max_passing = Some(l.max_context);
                report.context.validated = Some(l.max_context);
                s.note(format!(
                    "reused {} learned configurations after one verification probe each: no search needed",
                    verified.len()
                ));
                report.reused = verified;
                report.probes = s.probes;
                report.notes = s.notes;
                report.configurations = s.configurations;
                return report;
            }
            Some(why) => {
                s.note(format!("{why}; searching again from ctx {}", l.max_context));
                start_ctx = l.max_context;
                report.context.start = start_ctx;
            }
        }
    }

    let interrupted = 'search: {
        if grid == 0 {
            s.note(format!(
                "no context to search: the range {}..{} holds no multiple of the granularity {g}{}",
                c.search.min_context,
                ceiling,
                inp.trained_context
                    .map_or(String::new(), |t| format!(" (trained context {t})"))
            ));
            break 'search false;
        }

        // 1. Binary search for the largest passing grid index in [lo_k, hi_k]; `lo` starts one
        // below the range (nothing known to pass), `hi` at its top.
        let mut lo = lo_k as i64 - 1;
        let mut hi = hi_k as i64;
        let start_k =
            ((start_ctx as f64 / g as f64).round() as i64).clamp(lo_k as i64, hi_k as i64);
        let mut iterations = 0;
        let gallop = inp.gallop && inp.start_context.is_some() && inp.strategy == Strategy::Binary;
        let (mut dir, mut stride) = (0i64, 1i64);
        while lo < hi {
            if iterations >= c.search.max_iterations && inp.strategy == Strategy::Binary {
                report.context.cut_short = true;
                s.note(format!(
                    "context search stopped after {iterations} probes (search.max_iterations); the answer lies in {}..{}",
                    (lo + 1).max(lo_k as i64) * g as i64,
                    hi * g as i64
                ));
                break;
            }
            let mid = match inp.strategy {
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
            let req = ProbeRequest {
                stage: Stage::Context,
                config: at(ctx, batch0, None),
                rounds: 1,
                concurrency: 1,
            };
            let Some(out) = s.ask(req) else {
                break 'search true;
            };
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
            if iterations == 1 && gallop {
                dir = if passed { 1 } else { -1 };
            } else if (dir > 0 && !passed) || (dir < 0 && passed) {
                dir = 0;
            }
        }
        if lo < lo_k as i64 {
            let why = report
                .context
                .probes
                .iter()
                .find(|p| !p.passed)
                .map(|p| {
                    format!(
                        " ({} at ctx {}: {})",
                        format!("{:?}", p.outcome).to_lowercase(),
                        p.ctx,
                        p.error.as_deref().unwrap_or("no detail")
                    )
                })
                .unwrap_or_default();
            s.note(format!(
                "no context passed, not even the smallest ({}){why}",
                lo_k * g
            ));
            break 'search false;
        }
        report.context.max_passing = Some(lo as u32 * g);

        // 2. Validate the winner; step down one granule at a time until one is stable.
        let mut k = lo as u32;
        let validated = loop {
            let Some(m) = s.measure(Stage::Validate, at(k * g, batch0, None), 1) else {
                break 'search true;
            };
            let stable = m.stable;
            if !stable {
                let why = Search::<P, O>::why_unstable(&m);
                s.note(format!("ctx {} failed validation: {why}", k * g));
            }
            s.configurations.push(m);
            if stable {
                break Some(k);
            }
            if k == lo_k || report.context.step_downs >= c.search.max_iterations {
                break None;
            }
            k -= 1;
            report.context.step_downs += 1;
        };
        let Some(vk) = validated else {
            s.note("no context passed statistical validation".into());
            break 'search false;
        };
        report.context.validated = Some(vk * g);
        let vmax = vk * g;

        // 3. The contexts the presets need: the validated maximum, the top of the balanced
        // range and the fast-response minimum (those within the validated maximum).
        let mut chosen = vec![vmax];
        let p = &c.presets;
        let [b_lo, b_hi] = p.balanced.target_context_range;
        let bk = (b_hi / g).min(vk);
        if bk * g >= b_lo && bk >= lo_k {
            chosen.push(bk * g);
        } else {
            s.note(format!(
                "balanced: no context in {b_lo}..{b_hi} on the grid within the validated maximum {vmax}"
            ));
        }
        let fk = p.fast_response.target_context_min.div_ceil(g).max(lo_k);
        if fk <= vk {
            chosen.push(fk * g);
        } else {
            s.note(format!(
                "fast_response: its minimum context {} exceeds the validated maximum {vmax}",
                p.fast_response.target_context_min
            ));
        }
        chosen.dedup();
        chosen.sort_unstable_by(|a, b| b.cmp(a));
        chosen.dedup();

        let scale = c.batch.scale_factor;
        let batch_steps = batch0.map_or(0, |b| {
            ((c.batch.max_batch as f64 / b as f64).ln() / scale.ln())
                .ceil()
                .max(0.0) as u32
        });
        let levels = c.concurrency.levels.iter().filter(|&&l| l > 1).count() as u32;
        s.estimate = s.probes + (chosen.len() as u32) * (1 + batch_steps + levels);

        for (i, &ctx) in chosen.iter().enumerate() {
            // The validated maximum is already measured at the initial batch.
            let mut best = if i == 0 {
                s.configurations
                    .last()
                    .cloned()
                    .expect("validated measurement")
            } else {
                let Some(m) = s.measure(Stage::Validate, at(ctx, batch0, None), 1) else {
                    break 'search true;
                };
                let stable = m.stable;
                if !stable {
                    let why = Search::<P, O>::why_unstable(&m);
                    s.note(format!("ctx {ctx} failed validation: {why}"));
                }
                s.configurations.push(m.clone());
                if !stable {
                    continue;
                }
                m
            };

            // 4. Batch adaptation.
            if !c.batch.enabled {
                if i == 0 {
                    s.note("batch adaptation disabled (batch.enabled: false)".into());
                }
            } else if batch0.is_none() {
                if i == 0 {
                    s.note("batch adaptation skipped: this server's batch size is fixed".into());
                }
            } else {
                let mut b = batch0.expect("checked");
                loop {
                    let next = ((b as f64 * scale).round() as u32).min(c.batch.max_batch);
                    if next <= b {
                        s.note(format!("ctx {ctx}: batch stops at {b} (batch.max_batch)"));
                        break;
                    }
                    let Some(m) = s.measure(Stage::Batch, at(ctx, Some(next), None), 1) else {
                        break 'search true;
                    };
                    s.configurations.push(m.clone());
                    if !m.stable {
                        let why = Search::<P, O>::why_unstable(&m);
                        s.note(format!(
                            "ctx {ctx}: batch {next} failed ({why}); keeping {b}"
                        ));
                        break;
                    }
                    let rate =
                        |m: &Measured| m.validation.prefill_tokens_per_s.as_ref().map(|d| d.median);
                    let gain = match (rate(&m), rate(&best)) {
                        (Some(new), Some(old)) if old > 0.0 => new / old - 1.0,
                        _ => 0.0,
                    };
                    if gain < c.batch.min_gain {
                        s.note(format!(
                            "ctx {ctx}: batch {next} gains {:+.1} % prefill throughput over {b} (below {:.0} %); keeping {b}",
                            gain * 100.0,
                            c.batch.min_gain * 100.0
                        ));
                        break;
                    }
                    best = m;
                    b = next;
                }
            }

            // 5. Concurrency levels with that many server slots.
            if !c.concurrency.enabled {
                if i == 0 {
                    s.note("concurrency levels disabled (concurrency.enabled: false)".into());
                }
                continue;
            }
            if fixed.contains(&"parallel") {
                if i == 0 {
                    s.note(
                        "concurrency levels skipped: this server's slot count is fixed (o3 cannot restart it with more slots)"
                            .into(),
                    );
                }
                continue;
            }
            for &level in c.concurrency.levels.iter().filter(|&&l| l > 1) {
                let cfg = ProbeConfig {
                    parallel: Some(level),
                    ..best.config.clone()
                };
                let Some(m) = s.measure(Stage::Concurrency, cfg, level) else {
                    break 'search true;
                };
                let stop = !m.stable;
                if stop {
                    let why = Search::<P, O>::why_unstable(&m);
                    s.note(format!(
                        "ctx {ctx}: concurrency stops before {level} streams ({why})"
                    ));
                }
                s.configurations.push(m);
                if stop {
                    break;
                }
            }
        }
        false
    };
    report.interrupted = interrupted;
    report.probes = s.probes;
    report.notes = s.notes;
    report.configurations = s.configurations;
    report
}
