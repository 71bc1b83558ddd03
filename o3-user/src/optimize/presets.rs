//! Presets: max_context, balanced and fast_response, each chosen only among statistically
//! stable configurations filled to their depth, by the category's context constraint, the optional SLOs and a
//! weighted score of throughput and TTFT normalised over the configurations actually measured.

use serde::Serialize;

use crate::backend::ProbeConfig;
use crate::config::Presets as PresetConfig;

use super::prober::Stage;
use super::search::Measured;

#[derive(Debug, Clone, Serialize)]
pub struct Preset {
    pub name: &'static str,
    /// What the category asks for, in words (`context ≥ 7782 (95th percentile of …)`).
    pub constraint: String,
    /// The chosen configuration's id; `None` when no configuration qualifies.
    pub chosen: Option<String>,
    pub config: Option<ProbeConfig>,
    pub concurrency: Option<u32>,
    /// Weighted score in [0, 1].
    pub score: Option<f64>,
    pub throughput_weight: f64,
    pub ttft_weight: f64,
    pub output_tokens_per_s: Option<f64>,
    pub ttft_p95_ms: Option<f64>,
    /// Stable configurations that met the constraint and the SLOs.
    pub candidates: usize,
    /// Why this one (or why none); ties and their tie-break are stated here.
    pub why: String,
}

/// Min–max normalisation over the measured pool; a pool where every value is equal gives 1.
fn norm(x: f64, lo: f64, hi: f64, higher_is_better: bool) -> f64 {
    if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
        return 1.0;
    }
    if higher_is_better {
        (x - lo) / (hi - lo)
    } else {
        (hi - x) / (hi - lo)
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u32], p: f64) -> u32 {
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil().max(1.0) as usize;
    sorted[rank.min(n) - 1]
}

/// A preset category: its name, weights, and context constraint (with the constraint in words).
struct Category {
    name: &'static str,
    throughput_weight: f64,
    ttft_weight: f64,
    fits: Box<dyn Fn(u32) -> bool>,
    constraint: String,
}

/// The configurations presets are chosen among: stable, filled to their depth, with a decode
/// rate and a TTFT; and the ranges scores are normalised over.
struct Pool<'a> {
    members: Vec<&'a Measured>,
    /// Their contexts, ascending.
    contexts: Vec<u32>,
    /// Lowest and highest decode rate and TTFT p95 of the members.
    throughput: (f64, f64),
    ttft: (f64, f64),
    slo: &'a crate::config::Slo,
}

fn thr(m: &Measured) -> f64 {
    m.output_tokens_per_s.unwrap_or(0.0)
}

fn ttft(m: &Measured) -> f64 {
    m.ttft_p95_ms.unwrap_or(f64::INFINITY)
}

/// Lowest and highest of `f` over `pool`.
fn range(pool: &[&Measured], f: fn(&Measured) -> f64) -> (f64, f64) {
    pool.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), m| {
            (a.min(f(m)), b.max(f(m)))
        })
}

impl<'a> Pool<'a> {
    fn of(measured: &'a [Measured], slo: &'a crate::config::Slo) -> Pool<'a> {
        let members: Vec<&Measured> = measured
            .iter()
            // Only configurations proven filled to their depth: a batch ranking at a moderate
            // depth says nothing of its context.
            .filter(|m| {
                m.stable && m.filled() && m.output_tokens_per_s.is_some() && m.ttft_p95_ms.is_some()
            })
            .collect();
        let mut contexts: Vec<u32> = members.iter().map(|m| m.config.ctx).collect();
        contexts.sort_unstable();
        Pool {
            throughput: range(&members, thr),
            ttft: range(&members, ttft),
            members,
            contexts,
            slo,
        }
    }

    /// The weighted score in [0, 1] of throughput and TTFT, each normalised over the pool.
    fn score(&self, m: &Measured, tw: f64, lw: f64) -> f64 {
        if tw + lw <= 0.0 {
            return 0.0;
        }
        let (tlo, thi) = self.throughput;
        let (llo, lhi) = self.ttft;
        (tw * norm(thr(m), tlo, thi, true) + lw * norm(ttft(m), llo, lhi, false)) / (tw + lw)
    }

    /// Which SLO `m` misses, in words.
    fn slo_miss(&self, m: &Measured) -> Option<String> {
        if let Some(limit) = self.slo.ttft_p95_ms {
            if ttft(m) > limit {
                return Some(format!("TTFT p95 {:.0} ms > {limit:.0} ms", ttft(m)));
            }
        }
        if let Some(min) = self.slo.min_decode_tokens_per_s {
            if thr(m) < min {
                return Some(format!("{:.1} tok/s < {min:.1} tok/s", thr(m)));
            }
        }
        None
    }

    /// The batch the largest context was proven with: the one the batch stage kept (or the
    /// largest that loads there); a preset at another batch says why.
    fn proven_batch(&self) -> Option<(u32, Option<u32>)> {
        self.members
            .iter()
            .filter(|m| m.stage == Stage::Validate)
            .max_by_key(|m| m.config.ctx)
            .map(|m| (m.config.ctx, m.config.batch))
    }
}

/// The three categories, max_context's constraint from the pool's contexts.
fn categories(cfg: &PresetConfig, contexts: &[u32]) -> [Category; 3] {
    let mc = &cfg.max_context;
    let (min_ctx, mc_text) = if contexts.is_empty() {
        (u32::MAX, "no stable configuration".to_string())
    } else {
        let p = percentile(contexts, mc.target_context_percentile);
        (
            p,
            format!(
                "context ≥ {p} (the {}th percentile of the stable configurations' contexts)",
                mc.target_context_percentile
            ),
        )
    };
    let [blo, bhi] = cfg.balanced.target_context_range;
    let fmin = cfg.fast_response.target_context_min;
    [
        Category {
            name: "max_context",
            throughput_weight: mc.throughput_weight,
            ttft_weight: mc.ttft_weight,
            fits: Box::new(move |c| c >= min_ctx),
            constraint: mc_text,
        },
        Category {
            name: "balanced",
            throughput_weight: cfg.balanced.throughput_weight,
            ttft_weight: cfg.balanced.ttft_weight,
            fits: Box::new(move |c| (blo..=bhi).contains(&c)),
            constraint: format!("context in {blo}..{bhi}"),
        },
        Category {
            name: "fast_response",
            throughput_weight: cfg.fast_response.throughput_weight,
            ttft_weight: cfg.fast_response.ttft_weight,
            fits: Box::new(move |c| c >= fmin),
            constraint: format!("context ≥ {fmin}"),
        },
    ]
}

/// Chooses one configuration per category (see the module docs).
pub fn choose(measured: &[Measured], cfg: &PresetConfig) -> Vec<Preset> {
    let pool = Pool::of(measured, &cfg.slo);
    let proven_batch = pool.proven_batch();
    categories(cfg, &pool.contexts)
        .iter()
        .map(|cat| pick(&pool, cat, proven_batch))
        .collect()
}

/// The category's preset: the best candidate, or why there is none.
fn pick(pool: &Pool, cat: &Category, proven_batch: Option<(u32, Option<u32>)>) -> Preset {
    let in_range: Vec<&Measured> = pool
        .members
        .iter()
        .copied()
        .filter(|m| (cat.fits)(m.config.ctx))
        .collect();
    let mut rejected = Vec::new();
    let mut cands: Vec<(&Measured, f64)> = Vec::new();
    for m in &in_range {
        match pool.slo_miss(m) {
            Some(why) => rejected.push(format!("{} ({why})", m.id)),
            None => cands.push((m, pool.score(m, cat.throughput_weight, cat.ttft_weight))),
        }
    }
    let mut p = Preset {
        name: cat.name,
        constraint: cat.constraint.clone(),
        chosen: None,
        config: None,
        concurrency: None,
        score: None,
        throughput_weight: cat.throughput_weight,
        ttft_weight: cat.ttft_weight,
        output_tokens_per_s: None,
        ttft_p95_ms: None,
        candidates: cands.len(),
        why: String::new(),
    };
    if cands.is_empty() {
        p.why = why_none(pool, cat, in_range.is_empty(), &rejected);
        return p;
    }
    rank(&mut cands);
    let (best, s) = cands[0];
    p.chosen = Some(best.id.clone());
    p.config = Some(best.config.clone());
    p.concurrency = Some(best.concurrency);
    p.score = Some(s);
    p.output_tokens_per_s = best.output_tokens_per_s;
    p.ttft_p95_ms = best.ttft_p95_ms;
    p.why = why_chosen(cat, &cands, &rejected, proven_batch);
    p
}

/// Why a category has no preset.
fn why_none(pool: &Pool, cat: &Category, none_in_range: bool, rejected: &[String]) -> String {
    if pool.members.is_empty() {
        "no configuration passed statistical validation".to_string()
    } else if none_in_range {
        format!(
            "no stable configuration meets {} (stable contexts: {})",
            cat.constraint,
            context_list(&pool.contexts)
        )
    } else {
        format!("every candidate misses the SLOs: {}", rejected.join(", "))
    }
}

/// Contexts as the reader wants them: ascending, each once (a context measured at one stream
/// and at several is one context).
fn context_list(contexts: &[u32]) -> String {
    let mut v = contexts.to_vec();
    v.sort_unstable();
    v.dedup();
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

/// Highest score first; ties broken by larger context, then higher throughput, then id.
fn rank(cands: &mut [(&Measured, f64)]) {
    cands.sort_by(|(a, sa), (b, sb)| {
        sb.total_cmp(sa)
            .then(b.config.ctx.cmp(&a.config.ctx))
            .then(thr(b).total_cmp(&thr(a)))
            .then(a.id.cmp(&b.id))
    });
}

/// Why the first of the ranked candidates: its score, the ties and their tie-break, what the
/// SLOs excluded, and a batch other than the proof's.
fn why_chosen(
    cat: &Category,
    cands: &[(&Measured, f64)],
    rejected: &[String],
    proven_batch: Option<(u32, Option<u32>)>,
) -> String {
    let (best, s) = cands[0];
    let (tw, lw) = (cat.throughput_weight, cat.ttft_weight);
    let mut why = format!(
        "highest score {s:.3} of {} candidate{} ({:.1} tok/s, TTFT p95 {:.0} ms; weights throughput {tw}, TTFT {lw})",
        cands.len(),
        if cands.len() == 1 { "" } else { "s" },
        thr(best),
        ttft(best)
    );
    let tied: Vec<&str> = cands[1..]
        .iter()
        .filter(|(_, x)| (x - s).abs() < 1e-9)
        .map(|(m, _)| m.id.as_str())
        .collect();
    if !tied.is_empty() {
        why.push_str(&format!(
            "; tied with {}: the larger context, then the higher throughput wins",
            tied.join(", ")
        ));
    }
    if !rejected.is_empty() {
        why.push_str(&format!("; excluded by the SLOs: {}", rejected.join(", ")));
    }
    if let Some((ctx, b)) = proven_batch.filter(|(_, b)| *b != best.config.batch) {
        let show = |b: Option<u32>| b.map_or("the server's default".into(), |b| b.to_string());
        why.push_str(&format!(
            "; batch {} as measured by the {} stage, not the batch {} the maximum (ctx {ctx}) \
             was proven with",
            show(best.config.batch),
            best.stage.name(),
            show(b)
        ));
    }
    why
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::OutcomeClass;
    use crate::optimize::prober::Depth;
    use crate::optimize::stats::{self, Criteria, Observation};

    /// A stable configuration filled to its depth, with its decode rate and TTFT p95.
    fn m(stage: Stage, ctx: u32, batch: u32, tok_s: f64, ttft_ms: f64) -> Measured {
        let obs: Vec<Observation> = (0..3)
            .map(|_| Observation {
                ok: true,
                ttft_ms: Some(ttft_ms),
                prefill_tokens_per_s: Some(1000.0),
                decode_tokens_per_s: Some(tok_s),
                cached: false,
            })
            .collect();
        let k = Criteria {
            min_success_rate: 0.85,
            max_cv: 0.5,
            max_timeouts: 0,
        };
        Measured {
            id: format!("c{ctx}-b{batch}-p1"),
            stage,
            config: ProbeConfig {
                ctx,
                batch: Some(batch),
                ..ProbeConfig::default()
            },
            depth: Depth::Filled {
                tokens: ctx * 9 / 10,
            },
            concurrency: 1,
            outcome: OutcomeClass::Ok,
            error: None,
            stable: true,
            proven_at_depth: true,
            loaded: true,
            fill_ok: true,
            validation: stats::validate(&obs, 0, None, &k),
            timeouts: 0,
            output_tokens_per_s: Some(tok_s),
            ttft_p50_ms: Some(ttft_ms),
            ttft_p95_ms: Some(ttft_ms),
            cached_ttft_p50_ms: None,
            prompt_tokens: Some(u64::from(ctx) * 9 / 10),
            prefix_reuse: Some(true),
            rss_peak_bytes: None,
            rss_method: "ebpf".into(),
            mem_used_peak_bytes: None,
            gpu_used_peak_bytes: None,
            wall_s: 1.0,
            chat: None,
        }
    }

    fn cfg() -> PresetConfig {
        PresetConfig::default()
    }

    fn by_name<'a>(p: &'a [Preset], name: &str) -> &'a Preset {
        p.iter().find(|x| x.name == name).unwrap()
    }

    #[test]
    fn weights_decide_between_throughput_and_ttft() {
        // Same context range: one faster at decoding, one quicker to answer.
        let pool = [
            m(Stage::Validate, 32768, 512, 40.0, 9000.0),
            m(Stage::Validate, 8192, 512, 50.0, 2000.0),
            m(Stage::Validate, 4096, 512, 30.0, 500.0),
        ];
        let mut c = cfg();
        c.fast_response.target_context_min = 4096;
        c.fast_response.throughput_weight = 0.0;
        c.fast_response.ttft_weight = 1.0;
        let p = choose(&pool, &c);
        assert_eq!(
            by_name(&p, "fast_response").chosen.as_deref(),
            Some("c4096-b512-p1")
        );
        c.fast_response.throughput_weight = 1.0;
        c.fast_response.ttft_weight = 0.0;
        let p = choose(&pool, &c);
        assert_eq!(
            by_name(&p, "fast_response").chosen.as_deref(),
            Some("c8192-b512-p1")
        );
        // max_context only among the largest contexts (the default percentile).
        assert_eq!(
            by_name(&p, "max_context").chosen.as_deref(),
            Some("c32768-b512-p1")
        );
    }

    #[test]
    fn slos_exclude_and_say_which() {
        let pool = [
            m(Stage::Validate, 8192, 512, 50.0, 2000.0),
            m(Stage::Validate, 4096, 512, 30.0, 500.0),
        ];
        let mut c = cfg();
        c.fast_response.target_context_min = 4096;
        c.slo.ttft_p95_ms = Some(1000.0);
        let p = choose(&pool, &c);
        let f = by_name(&p, "fast_response");
        assert_eq!(f.chosen.as_deref(), Some("c4096-b512-p1"));
        assert!(
            f.why
                .contains("excluded by the SLOs: c8192-b512-p1 (TTFT p95 2000 ms > 1000 ms)"),
            "{}",
            f.why
        );
        c.slo.min_decode_tokens_per_s = Some(100.0);
        let p = choose(&pool, &c);
        let f = by_name(&p, "fast_response");
        assert!(f.chosen.is_none());
        assert!(
            f.why.starts_with("every candidate misses the SLOs"),
            "{}",
            f.why
        );
    }

    #[test]
    fn ties_go_to_the_larger_context_and_say_so() {
        let pool = [
            m(Stage::Validate, 4096, 512, 30.0, 500.0),
            m(Stage::Validate, 8192, 512, 30.0, 500.0),
        ];
        let mut c = cfg();
        c.fast_response.target_context_min = 4096;
        let p = choose(&pool, &c);
        let f = by_name(&p, "fast_response");
        assert_eq!(f.chosen.as_deref(), Some("c8192-b512-p1"));
        assert!(f.why.contains("tied with c4096-b512-p1"), "{}", f.why);
    }

    #[test]
    fn empty_categories_say_why() {
        let p = choose(&[], &cfg());
        assert!(p.iter().all(|x| x.chosen.is_none()));
        assert!(p
            .iter()
            .all(|x| x.why == "no configuration passed statistical validation"));
        let pool = [m(Stage::Validate, 65536, 512, 30.0, 500.0)];
        let mut c = cfg();
        c.balanced.target_context_range = [4096, 16384];
        let b = choose(&pool, &c);
        let b = by_name(&b, "balanced");
        assert!(b.chosen.is_none());
        assert_eq!(
            b.why,
            "no stable configuration meets context in 4096..16384 (stable contexts: 65536)"
        );
        // Unstable or unfilled measurements are never candidates.
        let mut shaky = m(Stage::Validate, 8192, 512, 90.0, 100.0);
        shaky.stable = false;
        let mut ranking = m(Stage::Batch, 8192, 1024, 99.0, 50.0);
        ranking.depth = Depth::Fresh { tokens: 2048 };
        let p = choose(&[shaky, ranking], &cfg());
        assert!(p.iter().all(|x| x.chosen.is_none()));
    }

    #[test]
    fn stable_contexts_are_listed_once_each_in_order() {
        // 2560 proven at one stream and measured again at two: one context, said once.
        let mut two = m(Stage::Concurrency, 2560, 64, 60.0, 900.0);
        two.concurrency = 2;
        two.id = "c2560-b64-p2".into();
        let pool = [
            m(Stage::Validate, 2560, 64, 40.0, 800.0),
            two,
            m(Stage::Validate, 1024, 64, 50.0, 300.0),
        ];
        let mut c = cfg();
        c.balanced.target_context_range = [4096, 8192];
        let p = choose(&pool, &c);
        assert_eq!(
            by_name(&p, "balanced").why,
            "no stable configuration meets context in 4096..8192 (stable contexts: 1024, 2560)"
        );
        assert_eq!(context_list(&[4096, 512, 4096, 512]), "512, 4096");
        assert_eq!(context_list(&[]), "");
    }

    #[test]
    fn a_preset_at_another_batch_than_the_proof_says_so() {
        let pool = [
            m(Stage::Validate, 32768, 512, 40.0, 9000.0),
            m(Stage::Verify, 8192, 1024, 60.0, 800.0),
        ];
        let mut c = cfg();
        c.fast_response.target_context_min = 4096;
        let p = choose(&pool, &c);
        let f = by_name(&p, "fast_response");
        assert_eq!(f.chosen.as_deref(), Some("c8192-b1024-p1"));
        assert!(
            f.why.contains("batch 1024 as measured by the verify stage, not the batch 512 the maximum (ctx 32768) was proven with"),
            "{}",
            f.why
        );
        assert!(!by_name(&p, "max_context").why.contains("not the batch"));
    }
}
