//! Presets: max_context, balanced and fast_response, each chosen only among statistically
//! stable configurations filled to their depth, by the category's context constraint, the optional SLOs and a
//! weighted score of throughput and TTFT normalised over the configurations actually measured.

use serde::Serialize;

use crate::backend::ProbeConfig;
use crate::config::Presets as PresetConfig;

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

/// Name, throughput weight, TTFT weight, context constraint, the constraint in words.
type Category = (&'static str, f64, f64, Box<dyn Fn(u32) -> bool>, String);

pub fn choose(measured: &[Measured], cfg: &PresetConfig) -> Vec<Preset> {
    let pool: Vec<&Measured> = measured
        .iter()
        // Only configurations proven filled to their depth: a batch ranking at a moderate
        // depth says nothing of its context.
        .filter(|m| {
            m.stable && m.filled() && m.output_tokens_per_s.is_some() && m.ttft_p95_ms.is_some()
        })
        .collect();
    let thr = |m: &Measured| m.output_tokens_per_s.unwrap_or(0.0);
    let ttft = |m: &Measured| m.ttft_p95_ms.unwrap_or(f64::INFINITY);
    let (tlo, thi) = pool
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), m| {
            (a.min(thr(m)), b.max(thr(m)))
        });
    let (llo, lhi) = pool
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), m| {
            (a.min(ttft(m)), b.max(ttft(m)))
        });
    let score = |m: &Measured, tw: f64, lw: f64| -> f64 {
        if tw + lw <= 0.0 {
            return 0.0;
        }
        (tw * norm(thr(m), tlo, thi, true) + lw * norm(ttft(m), llo, lhi, false)) / (tw + lw)
    };
    let slo_ok = |m: &Measured| -> Option<String> {
        if let Some(limit) = cfg.slo.ttft_p95_ms {
            if ttft(m) > limit {
                return Some(format!("TTFT p95 {:.0} ms > {limit:.0} ms", ttft(m)));
            }
        }
        if let Some(min) = cfg.slo.min_decode_tokens_per_s {
            if thr(m) < min {
                return Some(format!("{:.1} tok/s < {min:.1} tok/s", thr(m)));
            }
        }
        None
    };

    let mut contexts: Vec<u32> = pool.iter().map(|m| m.config.ctx).collect();
    contexts.sort_unstable();
    let mut out = Vec::new();
    let categories: [Category; 3] = {
        let mc = &cfg.max_context;
        let (min_ctx, mc_text) = if contexts.is_empty() {
            (u32::MAX, "no stable configuration".to_string())
        } else {
            let p = percentile(&contexts, mc.target_context_percentile);
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
            (
                "max_context",
                mc.throughput_weight,
                mc.ttft_weight,
                Box::new(move |c| c >= min_ctx),
                mc_text,
            ),
            (
                "balanced",
                cfg.balanced.throughput_weight,
                cfg.balanced.ttft_weight,
                Box::new(move |c| (blo..=bhi).contains(&c)),
                format!("context in {blo}..{bhi}"),
            ),
            (
                "fast_response",
                cfg.fast_response.throughput_weight,
                cfg.fast_response.ttft_weight,
                Box::new(move |c| c >= fmin),
                format!("context ≥ {fmin}"),
            ),
        ]
    };
    for (name, tw, lw, fits, constraint) in categories.iter() {
        let in_range: Vec<&Measured> = pool
            .iter()
            .copied()
            .filter(|m| fits(m.config.ctx))
            .collect();
        let mut rejected = Vec::new();
        let mut cands: Vec<(&Measured, f64)> = Vec::new();
        for m in &in_range {
            match slo_ok(m) {
                Some(why) => rejected.push(format!("{} ({why})", m.id)),
                None => cands.push((m, score(m, *tw, *lw))),
            }
        }
        let mut p = Preset {
            name,
            constraint: constraint.clone(),
            chosen: None,
            config: None,
            concurrency: None,
            score: None,
            throughput_weight: *tw,
            ttft_weight: *lw,
            output_tokens_per_s: None,
            ttft_p95_ms: None,
            candidates: cands.len(),
            why: String::new(),
        };
        if cands.is_empty() {
            p.why = if pool.is_empty() {
                "no configuration passed statistical validation".to_string()
            } else if in_range.is_empty() {
                format!(
                    "no stable configuration meets {constraint} (stable contexts: {})",
                    contexts
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                format!("every candidate misses the SLOs: {}", rejected.join(", "))
            };
            out.push(p);
            continue;
        }
        // Highest score; ties broken by larger context, then higher throughput, then id.
        cands.sort_by(|(a, sa), (b, sb)| {
            sb.total_cmp(sa)
                .then(b.config.ctx.cmp(&a.config.ctx))
                .then(thr(b).total_cmp(&thr(a)))
                .then(a.id.cmp(&b.id))
        });
        let (best, s) = cands[0];
        let tied: Vec<&str> = cands[1..]
            .iter()
            .filter(|(_, x)| (x - s).abs() < 1e-9)
            .map(|(m, _)| m.id.as_str())
            .collect();
        p.chosen = Some(best.id.clone());
        p.config = Some(best.config.clone());
        p.concurrency = Some(best.concurrency);
        p.score = Some(s);
        p.output_tokens_per_s = best.output_tokens_per_s;
        p.ttft_p95_ms = best.ttft_p95_ms;
        p.why = format!(
            "highest score {s:.3} of {} candidate{} ({:.1} tok/s, TTFT p95 {:.0} ms; weights throughput {tw}, TTFT {lw})",
            cands.len(),
            if cands.len() == 1 { "" } else { "s" },
            thr(best),
            ttft(best)
        );
        if !tied.is_empty() {
            p.why.push_str(&format!(
                "; tied with {}: the larger context, then the higher throughput wins",
                tied.join(", ")
            ));
        }
        if !rejected.is_empty() {
            p.why
                .push_str(&format!("; excluded by the SLOs: {}", rejected.join(", ")));
        }
        out.push(p);
    }
    out
}
