//! The memory model: what a serving configuration needs, term by term, before it is run.
//!
//! ```text
//! total   = weights + overhead + KV cache + compute buffer
//! weights = weights_bytes × offloaded fraction
//! KV      = kv_scale × ctx × slots × kv_bytes_per_token × offloaded fraction
//! compute = per_ubatch·u + per_token·n + per_token_ubatch·n·u  (+ attention scores, FA off)
//! ```
//!
//! The weights and the KV cache's bytes per token are exact from the model's shape; the other
//! terms form a [`Law`] fitted to every measured peak of the same model (and host, where it
//! has enough) by [`fit`], with the [`Prior`] of where the peak is measured (RAM or GPU
//! memory) as its prior. An estimate is a point and a range: the prior's bounds before any
//! measurement, the fit's leave-one-out errors after. Measured against llama-server on this
//! project's test model: see docs/learning.md.

mod fit;
mod law;

use serde::Serialize;

pub use fit::{fill_of, fit, peak_of, Fitted, MemoryFit, Residual, MIN_FIT_SAMPLES};
pub use law::{Law, Place, Prior};

use super::ModelShape;
use crate::backend::ProbeConfig;

const MIB: f64 = (1u64 << 20) as f64;
const GIB: f64 = (1u64 << 30) as f64;

/// The micro-batch assumed when the configuration sets neither `ubatch` nor `batch`
/// (llama.cpp's default `-ub`; Ollama's default `num_batch`).
pub const DEFAULT_UBATCH: u32 = 512;

/// The narrowest a fitted range is on either side of its estimate, relative: what a law
/// reproducing its points exactly still cannot promise (allocator rounding, driver state).
const MIN_BAND: f64 = 0.002;
/// ... and in bytes: twice the run-to-run noise of a peak (±0.3 MB measured on llama-server),
/// which dominates for a small model.
const MIN_BAND_BYTES: f64 = 1024.0 * 1024.0;
/// The narrowest range of a fit too small to hold a point out (relative, either side).
const SMALL_FIT_BAND: f64 = 0.05;

/// How much of the context an estimate assumes in use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fill {
    /// Every slot's context filled: what a configuration needs at its limit.
    Full,
    /// This many context tokens held over all slots (a measured probe's prompts).
    Tokens(f64),
}

/// What a configuration is estimated to need, term by term (bytes).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    pub weights_bytes: u64,
    pub kv_bytes: u64,
    pub compute_bytes: u64,
    pub overhead_bytes: u64,
    pub total_bytes: u64,
    /// Where the peak is expected: the prior's bounds before any measurement, the range of the
    /// fit's leave-one-out errors after.
    pub low_bytes: u64,
    pub high_bytes: u64,
    /// The memory the estimate is for.
    pub place: Place,
    /// Measured peaks the law was fitted to (0: the prior alone).
    pub fitted_points: usize,
    /// The fit on its own points, and each point predicted by the fit to the others.
    pub residual: Option<Residual>,
    pub held_out: Option<Residual>,
    pub capacity_bytes: Option<u64>,
    /// total / capacity
    pub load_ratio: Option<f64>,
    pub fits: Option<bool>,
    /// what each term assumed, human-readable
    pub notes: Vec<String>,
}

/// Bytes per element of a KV cache type (llama.cpp's `-ctk`/`-ctv` names, any case): f32 4,
/// f16 and bf16 2, q8_0 34/32, q4_0 18/32, q4_1 20/32, q5_0 22/32, q5_1 24/32, iq4_nl 18/32.
pub fn cache_type_bytes(name: &str) -> Option<f64> {
    Some(match name.to_ascii_lowercase().as_str() {
        "f32" => 4.0,
        "f16" | "bf16" => 2.0,
        "q8_0" => 34.0 / 32.0,
        "q4_0" | "iq4_nl" => 18.0 / 32.0,
        "q4_1" => 20.0 / 32.0,
        "q5_0" => 22.0 / 32.0,
        "q5_1" => 24.0 / 32.0,
        _ => return None,
    })
}

/// The KV cache types [`cache_type_bytes`] knows, for messages.
pub const CACHE_TYPES: &str = "f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl";

/// KV cache bytes per token of context (one slot):
/// `block_count × head_count_kv × (key_length × bytes(K type) + value_length × bytes(V type))`.
///
/// Key and value lengths default to `embedding_length / head_count`, `head_count_kv` to
/// `head_count` (no grouped-query attention), the types to f16. `None` when the shape lacks
/// what this needs or a type is unknown (see [`cache_type_bytes`]).
pub fn kv_bytes_per_token(
    shape: &ModelShape,
    cache_type_k: Option<&str>,
    cache_type_v: Option<&str>,
) -> Option<f64> {
    let k_bytes = cache_type_bytes(cache_type_k.unwrap_or("f16"))?;
    let v_bytes = cache_type_bytes(cache_type_v.unwrap_or("f16"))?;
    let blocks = f64::from(shape.block_count?);
    let heads = shape.head_count.filter(|&h| h > 0);
    let kv_heads = f64::from(shape.head_count_kv.or(heads)?);
    let per_head = || Some(shape.embedding_length? / heads?);
    let k = f64::from(shape.key_length.or_else(per_head)?);
    let v = f64::from(shape.value_length.or_else(per_head)?);
    Some(blocks * kv_heads * (k * k_bytes + v * v_bytes))
}

/// The micro-batch the memory model assumes: `ubatch`, else `batch`, else 512.
pub fn effective_ubatch(cfg: &ProbeConfig) -> u32 {
    cfg.ubatch.or(cfg.batch).unwrap_or(DEFAULT_UBATCH).max(1)
}

/// Slots the context is allocated for (`parallel`, else 1).
pub fn slots(cfg: &ProbeConfig) -> u32 {
    cfg.parallel.unwrap_or(1).max(1)
}

/// The fraction of the layers (and so of the weights and the KV cache) in the memory being
/// estimated: all with `gpu_layers` unset, -1 or at least `block_count`; `n / block_count`
/// below that.
fn offload_fraction(shape: &ModelShape, cfg: &ProbeConfig) -> (f64, Option<String>) {
    match (cfg.gpu_layers, shape.block_count) {
        (None, _) => (1.0, None),
        (Some(n), _) if n < 0 => (1.0, None),
        (Some(n), Some(blocks)) if blocks > 0 && (n as u32) < blocks => (
            f64::from(n as u32) / f64::from(blocks),
            Some(format!(
                "{n} of {blocks} layers offloaded: weights and KV cache counted for those \
                 (the rest is in system RAM)"
            )),
        ),
        (Some(_), Some(_)) => (1.0, None),
        (Some(0), None) => (
            0.0,
            Some("no layers offloaded: weights and KV cache are in system RAM".into()),
        ),
        (Some(n), None) => (
            1.0,
            Some(format!(
                "{n} layers offloaded but the layer count is unknown: all weights counted"
            )),
        ),
    }
}

/// Attention scores llama.cpp materializes without flash attention: one layer's KQ matrix in
/// f32 (`tokens` × ubatch × head_count × 4 bytes) plus the mask in f32 instead of f16 (2 more
/// bytes per token·ubatch): the compute buffer's growth, within 2 % of llama.cpp's log. In
/// RAM the CPU backend also converts the f32 scores to f16 for the product with V, in a work
/// buffer beside the compute buffer (2 bytes per score): 50 bytes per token·ubatch for 8
/// heads, where the test model's RSS grew by 96 MB at 3678 tokens × ubatch 512 (94 MB
/// predicted; the compute buffer alone, 64 MB). Zero with flash attention on or unset
/// (llama.cpp's default `auto` turns it on where the backend has it).
fn attention_scores_bytes(shape: &ModelShape, cfg: &ProbeConfig, place: Place, tokens: f64) -> f64 {
    if cfg.flash_attn != Some(crate::backend::FlashAttn::Off) {
        return 0.0;
    }
    let heads = f64::from(shape.head_count.unwrap_or(0));
    let per_score = match place {
        Place::Ram => 6.0,
        Place::Gpu => 4.0,
    };
    tokens * f64::from(effective_ubatch(cfg)) * (heads * per_score + 2.0)
}

/// What a configuration's terms are computed from.
pub(crate) struct Parts {
    /// Weights in the place (bytes).
    weights: f64,
    /// The GGUF-exact KV cache in the place (bytes; f16 where a type is unknown).
    kv_exact: f64,
    /// Attention scores (flash attention off; bytes).
    scores: f64,
    ubatch: f64,
    /// Context tokens in use, over all slots: the whole context on a GPU (allocated at load),
    /// those held in RAM.
    tokens: f64,
    fraction: f64,
    /// The KV cache's bytes per token (one slot) and the types it assumed.
    kv_per_token: Option<f64>,
    kv_types: (Option<String>, Option<String>, bool),
}

pub(crate) fn parts(shape: &ModelShape, cfg: &ProbeConfig, place: Place, fill: Fill) -> Parts {
    let fraction = match place {
        Place::Gpu => offload_fraction(shape, cfg).0,
        Place::Ram => 1.0,
    };
    let ctx_total = f64::from(cfg.ctx) * f64::from(slots(cfg));
    let tokens = match (place, fill) {
        (Place::Ram, Fill::Tokens(t)) => t.clamp(0.0, ctx_total),
        _ => ctx_total,
    };
    let known = |t: &Option<String>| t.as_deref().is_none_or(|t| cache_type_bytes(t).is_some());
    let types_known = known(&cfg.cache_type_k) && known(&cfg.cache_type_v);
    let (k, v) = if types_known {
        (cfg.cache_type_k.clone(), cfg.cache_type_v.clone())
    } else {
        (None, None)
    };
    let kv_per_token = kv_bytes_per_token(shape, k.as_deref(), v.as_deref());
    Parts {
        weights: shape.weights_bytes.map_or(0.0, |w| w as f64) * fraction,
        kv_exact: kv_per_token.map_or(0.0, |p| p * ctx_total * fraction),
        scores: attention_scores_bytes(shape, cfg, place, tokens),
        ubatch: f64::from(effective_ubatch(cfg)),
        tokens,
        fraction,
        kv_per_token,
        kv_types: (k, v, types_known),
    }
}

/// Estimates what `cfg` needs for a model of `shape` with its context full, against
/// `capacity_bytes` when known.
pub fn estimate(
    shape: &ModelShape,
    cfg: &ProbeConfig,
    capacity_bytes: Option<u64>,
    fit: &MemoryFit,
) -> Estimate {
    estimate_at(shape, cfg, capacity_bytes, fit, Fill::Full)
}

/// Estimates `cfg` holding `fill` context tokens (a measured probe's, to compare with its peak).
pub fn estimate_at(
    shape: &ModelShape,
    cfg: &ProbeConfig,
    capacity_bytes: Option<u64>,
    fit: &MemoryFit,
    fill: Fill,
) -> Estimate {
    let prior = Prior::of(fit.place, shape);
    let law = fit.law(&prior);
    let p = parts(shape, cfg, fit.place, fill);
    let total_of = |l: &Law| p.weights + p.scores + l.bytes(p.kv_exact, p.ubatch, p.tokens);
    let total = total_of(&law).max(p.weights);
    let (low, high) = match &fit.fitted {
        Some(f) => band(total, f.held_out.as_ref(), &f.residual),
        None => (total_of(&prior.low), total_of(&prior.high)),
    };
    // The terms add up to the total: a fit whose overhead came out negative (the data could
    // not tell it from the per-micro-batch term) shows it inside the compute buffer.
    let kv = (law.kv_scale * p.kv_exact).max(0.0);
    let compute = (total - p.weights - kv - law.overhead_bytes.max(0.0)).max(0.0);
    let overhead = (total - p.weights - kv - compute).max(0.0);
    let notes = notes(shape, cfg, fit, &prior, &law, &p, compute);
    let round = |v: f64| v.max(0.0).round() as u64;
    let (weights_bytes, kv_bytes, compute_bytes, overhead_bytes) =
        (round(p.weights), round(kv), round(compute), round(overhead));
    let total_bytes = weights_bytes + kv_bytes + compute_bytes + overhead_bytes;
    let capacity = capacity_bytes.filter(|&c| c > 0);
    Estimate {
        weights_bytes,
        kv_bytes,
        compute_bytes,
        overhead_bytes,
        total_bytes,
        low_bytes: round(low.min(total)),
        high_bytes: round(high.max(total)),
        place: fit.place,
        fitted_points: fit.fitted.as_ref().map_or(0, |f| f.samples),
        residual: fit.fitted.as_ref().map(|f| f.residual),
        held_out: fit.fitted.as_ref().and_then(|f| f.held_out),
        capacity_bytes: capacity,
        load_ratio: capacity.map(|c| total_bytes as f64 / c as f64),
        fits: capacity.map(|c| total_bytes <= c),
        notes,
    }
}

/// The range a fitted estimate's peak is expected in: measured = estimate ÷ (1 + error), for
/// the errors the fit made on points it did not see (its own points' when too few to hold one
/// out, with a wider floor), at least [`MIN_BAND`] or [`MIN_BAND_BYTES`] either side.
fn band(total: f64, held_out: Option<&Residual>, own: &Residual) -> (f64, f64) {
    let (r, floor) = match held_out {
        Some(h) => (h, MIN_BAND.max(MIN_BAND_BYTES / total.max(1.0))),
        None => (own, SMALL_FIT_BAND),
    };
    let over = r.highest.max(floor);
    let under = r.lowest.min(-floor).max(-0.5);
    (total / (1.0 + over), total / (1.0 + under))
}

/// What each term assumed, for people.
fn notes(
    shape: &ModelShape,
    cfg: &ProbeConfig,
    fit: &MemoryFit,
    prior: &Prior,
    law: &Law,
    p: &Parts,
    compute: f64,
) -> Vec<String> {
    let mut notes = Vec::new();
    notes.push(match shape.weights_bytes {
        Some(w) => format!(
            "weights: {} of tensor data{}",
            gib(w as f64),
            offloaded(p.fraction)
        ),
        None => "weights: unknown size, counted as 0".into(),
    });
    notes.extend(kv_notes(cfg, law, p, fit.fitted.is_some()));
    let ubatch = effective_ubatch(cfg);
    notes.push(format!(
        "compute buffer: {} at ubatch {ubatch}{}, {:.0} context token(s) in use",
        gib(compute),
        match (cfg.ubatch, cfg.batch) {
            (Some(_), _) => "",
            (None, Some(_)) => " (= batch)",
            (None, None) => " (default)",
        },
        p.tokens
    ));
    if p.scores > 0.0 {
        notes.push(format!(
            "flash attention off: {} of attention scores (tokens × ubatch × ({}·heads + 2) B)",
            gib(p.scores),
            if fit.place == Place::Ram { 6 } else { 4 }
        ));
    }
    if cfg.flash_attn.is_none() {
        notes.push(
            "flash attention unset: assumed on (llama.cpp's default `auto` enables it where the \
             backend supports it)"
                .into(),
        );
    }
    notes.push(format!(
        "overhead: {} (the server process{})",
        gib(law.overhead_bytes),
        if fit.place == Place::Gpu {
            " and the GPU runtime"
        } else {
            ""
        }
    ));
    notes.push(fit_note(fit, prior));
    if let Some(n) = offload_fraction(shape, cfg)
        .1
        .filter(|_| fit.place == Place::Gpu)
    {
        notes.push(n);
    }
    notes
}

/// How the law was found: fitted, with how well, or the prior alone.
fn fit_note(fit: &MemoryFit, prior: &Prior) -> String {
    match fit.fitted.as_ref() {
        Some(f) => format!(
            "{}: law fitted to {} measured peak(s), which it reproduces within a median {:.1} %, \
             worst {:+.1} %{}",
            fit.place.name(),
            f.samples,
            f.residual.median_abs * 100.0,
            f.residual.worst * 100.0,
            f.held_out.map_or(String::new(), |h| format!(
                "; each left out is predicted within a median {:.1} %, worst {:+.1} %",
                h.median_abs * 100.0,
                h.worst * 100.0
            ))
        ),
        None => format!(
            "{}: no law fitted ({} measured peak(s); {MIN_FIT_SAMPLES} are needed): the prior, \
             {}; the range is its bounds",
            fit.place.name(),
            fit.usable,
            prior.source
        ),
    }
}

/// ` × 0.250 offloaded` for a fraction of the layers, nothing for all of them.
fn offloaded(f: f64) -> String {
    if f < 1.0 {
        format!(" × {f:.3} offloaded")
    } else {
        String::new()
    }
}

/// The KV cache's notes: an unknown cache type, then the term.
fn kv_notes(cfg: &ProbeConfig, law: &Law, p: &Parts, fitted: bool) -> Vec<String> {
    let mut notes = Vec::new();
    let (k, v, types_known) = &p.kv_types;
    if !types_known {
        notes.push(format!(
            "KV cache: unknown cache type (K {:?}, V {:?}), f16 assumed",
            cfg.cache_type_k, cfg.cache_type_v
        ));
    }
    notes.push(match p.kv_per_token {
        Some(per_token) => format!(
            "KV cache: {} ctx × {} slot(s) × {per_token:.0} B/token (K {}, V {}){} × {:.3} ({})",
            cfg.ctx,
            slots(cfg),
            k.as_deref().unwrap_or("f16"),
            v.as_deref().unwrap_or("f16"),
            offloaded(p.fraction),
            law.kv_scale,
            if fitted {
                "fitted"
            } else if law.kv_scale == 1.0 {
                "the prior: exact"
            } else {
                "the prior: per-cell bookkeeping, measured"
            }
        ),
        None => "KV cache: unknown (the model's block count or attention heads are unknown), \
                 counted as 0"
            .into(),
    });
    notes
}

/// Bytes as GiB with two decimals (MiB below 1 GiB), for notes.
pub fn gib(bytes: f64) -> String {
    if bytes.abs() < GIB {
        format!("{:.1} MiB", bytes / MIB)
    } else {
        format!("{:.2} GiB", bytes / GIB)
    }
}

#[cfg(test)]
mod tests;
