//! The memory model: what a serving configuration needs, term by term, before it is run.
//!
//! ```text
//! total = weights + KV cache + compute buffer + overhead
//! weights = weights_bytes × offloaded fraction
//! KV      = ctx × slots × kv_bytes_per_token × offloaded fraction
//! compute = base + per_ubatch·ubatch + per_ctx·ctx·slots + per_ctx_ubatch·ctx·slots·ubatch
//!           (+ the attention scores when flash attention is off)
//! ```
//!
//! The KV cache is exact from the model's shape (llama.cpp allocates it whole at load and
//! clears it, so every page is resident from the start). The compute buffer is llama.cpp's
//! scheduler buffer (activations, logits, the attention mask), fitted by least squares to
//! measured peaks ([`fit_compute`]); until three measurements exist it is [`ComputeFit::DEFAULT`],
//! chosen to overestimate. Measured against llama-server on this project's tiny test model: see
//! docs/learning.md.

use serde::Serialize;

use super::{ModelShape, Record};
use crate::backend::ProbeConfig;

const MIB: f64 = (1u64 << 20) as f64;
const GIB: f64 = (1u64 << 30) as f64;

/// Fixed overhead of the server process itself: code, libraries, HTTP server, tokenizer,
/// thread stacks, slot bookkeeping. llama-server (CPU build, x86-64) measured 15 MiB of RSS at
/// idle beyond its weights and KV cache: 11 MiB of binary and libraries, 4 MiB of heap. It is
/// the floor every server pays, so a fit to small CPU-only peaks never needs a negative
/// compute buffer; what a GPU runtime adds (CUDA and ROCm contexts, hundreds of MiB) belongs
/// to the compute fit's base.
pub const OVERHEAD_BYTES: u64 = 16 << 20;

/// The micro-batch assumed when the configuration sets neither `ubatch` nor `batch`
/// (llama.cpp's default `-ub`; Ollama's default `num_batch`).
pub const DEFAULT_UBATCH: u32 = 512;

/// Fewest measurements [`fit_compute`] fits; below this it returns the default.
pub const MIN_FIT_SAMPLES: usize = 3;

/// Pull of the least-squares fit towards [`ComputeFit::DEFAULT`] (ridge penalty relative to
/// each term's data): small enough that a term the measurements determine barely moves,
/// large enough that a term they cannot tell apart (every record at one ubatch) keeps a
/// sensible value instead of an arbitrary one.
const RIDGE: f64 = 1e-6;

/// What a configuration is estimated to need, term by term (bytes).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    pub weights_bytes: u64,
    pub kv_bytes: u64,
    pub compute_bytes: u64,
    pub overhead_bytes: u64,
    pub total_bytes: u64,
    pub capacity_bytes: Option<u64>,
    /// total / capacity
    pub load_ratio: Option<f64>,
    pub fits: Option<bool>,
    /// what each term assumed, human-readable
    pub notes: Vec<String>,
}

/// The compute buffer as a function of the configuration (bytes):
/// `base + per_ubatch·ubatch + per_ctx·ctx·slots + per_ctx_ubatch·ctx·slots·ubatch`.
///
/// The cross term is the attention mask (f16, one row per micro-batch token and one column
/// per KV cell: 2 bytes per ctx·ubatch with flash attention), measured on llama.cpp's CPU
/// backend as exactly that; the other terms hold logits and activations (per micro-batch
/// token), per-token request state in the server (per context token) and runtime buffers
/// (base).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComputeFit {
    pub base_bytes: f64,
    pub per_ubatch_bytes: f64,
    pub per_ctx_bytes: f64,
    pub per_ctx_ubatch_bytes: f64,
    /// Measurements the fit used (0: the default).
    pub samples: usize,
    /// How well the fit reproduces the peaks it was fitted to (`None`: the default).
    pub residual: Option<Residual>,
}

/// The fit's error on its own points: (estimated − measured) ÷ measured of each whole peak.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Residual {
    /// Median of the absolute relative errors.
    pub median_abs: f64,
    /// The relative error largest in size, with its sign (negative: underestimated).
    pub worst: f64,
}

impl Residual {
    /// From each point's (estimated, measured) peak; `None` without points.
    fn of(points: &[(f64, f64)]) -> Option<Residual> {
        let mut errs: Vec<f64> = points
            .iter()
            .filter(|(_, m)| *m > 0.0)
            .map(|(e, m)| (e - m) / m)
            .collect();
        let worst = errs
            .iter()
            .copied()
            .max_by(|a, b| a.abs().total_cmp(&b.abs()))?;
        errs.iter_mut().for_each(|e| *e = e.abs());
        let median_abs = crate::util::order::median(errs)?;
        Some(Residual { median_abs, worst })
    }
}

impl ComputeFit {
    /// Used until [`MIN_FIT_SAMPLES`] measurements exist; meant to overestimate:
    /// - base 256 MiB: a GPU runtime's context and workspaces (CUDA and ROCm hold a few hundred
    ///   MiB per process); on the CPU this is about 1 MiB, so CPU-only estimates are high by
    ///   that much;
    /// - 512 KiB per micro-batch token: the logits of a 128k-token vocabulary in f32 (501 KiB
    ///   per token) dominate; that is 256 MiB at ubatch 512, the size of llama.cpp's compute
    ///   buffer for a Llama-3-class 8B model with flash attention; a 32k-vocabulary model needs
    ///   about a quarter of it, the tiny test model 9 KiB;
    /// - 1 KiB per context token: the server's request state for a prompt filling the context
    ///   (prompt text, token ids, tokenizer and JSON buffers): llama-server grew by 0.3–1.1 KB
    ///   per context token beyond its KV cache and attention mask under o3's probe (2k–32k
    ///   contexts);
    /// - 2 bytes per ctx·ubatch: the f16 attention mask (measured exactly on llama.cpp).
    pub const DEFAULT: ComputeFit = ComputeFit {
        base_bytes: 256.0 * MIB,
        per_ubatch_bytes: 512.0 * 1024.0,
        per_ctx_bytes: 1024.0,
        per_ctx_ubatch_bytes: 2.0,
        samples: 0,
        residual: None,
    };

    /// Compute-buffer bytes at micro-batch `ubatch` and `ctx_total` context tokens over all
    /// slots; never negative.
    pub fn bytes(&self, ubatch: f64, ctx_total: f64) -> f64 {
        let coef = self.coefficients();
        let x = terms(ubatch, ctx_total);
        coef.iter().zip(x).map(|(c, x)| c * x).sum::<f64>().max(0.0)
    }

    fn coefficients(&self) -> [f64; 4] {
        [
            self.base_bytes,
            self.per_ubatch_bytes,
            self.per_ctx_bytes,
            self.per_ctx_ubatch_bytes,
        ]
    }
}

impl Default for ComputeFit {
    fn default() -> ComputeFit {
        ComputeFit::DEFAULT
    }
}

/// The regressors of the compute fit: 1, ubatch, ctx·slots, ctx·slots·ubatch.
fn terms(ubatch: f64, ctx_total: f64) -> [f64; 4] {
    [1.0, ubatch, ctx_total, ctx_total * ubatch]
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
/// f32 (ctx·slots × ubatch × head_count × 4 bytes) plus the mask in f32 instead of f16 (2 more
/// bytes per ctx·ubatch). Measured on llama.cpp's CPU backend within 2 %. Zero with flash
/// attention on or unset (llama.cpp's default `auto` turns it on where the backend has it).
pub fn attention_scores_bytes(shape: &ModelShape, cfg: &ProbeConfig) -> f64 {
    if cfg.flash_attn != Some(crate::backend::FlashAttn::Off) {
        return 0.0;
    }
    let heads = f64::from(shape.head_count.unwrap_or(0));
    let ctx_total = f64::from(cfg.ctx) * f64::from(slots(cfg));
    ctx_total * f64::from(effective_ubatch(cfg)) * (heads * 4.0 + 2.0)
}

/// The parts of an estimate that do not depend on the compute fit: weights, KV, attention
/// scores (flash attention off), with their notes.
struct Fixed {
    weights: f64,
    kv: f64,
    scores: f64,
    notes: Vec<String>,
}

fn fixed_parts(shape: &ModelShape, cfg: &ProbeConfig, fraction: f64) -> Fixed {
    let mut notes = Vec::new();
    let weights = match shape.weights_bytes {
        Some(w) => {
            notes.push(format!(
                "weights: {} of tensor data{}",
                gib(w as f64),
                if fraction < 1.0 {
                    format!(" × {fraction:.3} offloaded")
                } else {
                    String::new()
                }
            ));
            w as f64 * fraction
        }
        None => {
            notes.push("weights: unknown size, counted as 0".into());
            0.0
        }
    };
    let slots = slots(cfg);
    let ctx_total = f64::from(cfg.ctx) * f64::from(slots);
    let known = |t: &Option<String>| t.as_deref().is_none_or(|t| cache_type_bytes(t).is_some());
    let (k, v) = if known(&cfg.cache_type_k) && known(&cfg.cache_type_v) {
        (cfg.cache_type_k.as_deref(), cfg.cache_type_v.as_deref())
    } else {
        notes.push(format!(
            "KV cache: unknown cache type (K {:?}, V {:?}), f16 assumed",
            cfg.cache_type_k, cfg.cache_type_v
        ));
        (None, None)
    };
    let kv = match kv_bytes_per_token(shape, k, v) {
        Some(per_token) => {
            notes.push(format!(
                "KV cache: {} ctx × {slots} slot(s) × {per_token:.0} B/token (K {}, V {}){}",
                cfg.ctx,
                k.unwrap_or("f16"),
                v.unwrap_or("f16"),
                if fraction < 1.0 {
                    format!(" × {fraction:.3} offloaded")
                } else {
                    String::new()
                }
            ));
            ctx_total * per_token * fraction
        }
        None => {
            notes.push(
                "KV cache: unknown (the model's block count or attention heads are unknown), \
                 counted as 0"
                    .into(),
            );
            0.0
        }
    };
    let scores = attention_scores_bytes(shape, cfg);
    if scores > 0.0 {
        notes.push(format!(
            "flash attention off: {} of attention scores (ctx·slots × ubatch × (4·heads + 2) B)",
            gib(scores)
        ));
    }
    Fixed {
        weights,
        kv,
        scores,
        notes,
    }
}

/// Estimates what `cfg` needs for a model of `shape`, against `capacity_bytes` when known.
pub fn estimate(
    shape: &ModelShape,
    cfg: &ProbeConfig,
    capacity_bytes: Option<u64>,
    fit: &ComputeFit,
) -> Estimate {
    let (fraction, offload_note) = offload_fraction(shape, cfg);
    let mut f = fixed_parts(shape, cfg, fraction);
    let ubatch = effective_ubatch(cfg);
    let ctx_total = f64::from(cfg.ctx) * f64::from(slots(cfg));
    let compute = fit.bytes(f64::from(ubatch), ctx_total) + f.scores;
    f.notes.push(format!(
        "compute buffer: {} at ubatch {ubatch}{} ({})",
        gib(compute),
        if cfg.ubatch.is_none() {
            if cfg.batch.is_some() {
                " (= batch)"
            } else {
                " (default)"
            }
        } else {
            ""
        },
        if fit.samples >= MIN_FIT_SAMPLES {
            format!(
                "fitted to {} measured peaks{}",
                fit.samples,
                fit.residual.map_or(String::new(), |r| format!(
                    ", which the whole estimate reproduces within a median {:.1} %, worst {:+.1} %",
                    r.median_abs * 100.0,
                    r.worst * 100.0
                ))
            )
        } else {
            format!("default: fewer than {MIN_FIT_SAMPLES} measured peaks, sized to overestimate")
        }
    ));
    if cfg.flash_attn.is_none() {
        f.notes.push(
            "flash attention unset: assumed on (llama.cpp's default `auto` enables it where the \
             backend supports it)"
                .into(),
        );
    }
    f.notes.push(format!(
        "overhead: {} fixed (the server process)",
        gib(OVERHEAD_BYTES as f64)
    ));
    if let Some(n) = offload_note {
        f.notes.push(n);
    }
    let weights_bytes = f.weights.round() as u64;
    let kv_bytes = f.kv.round() as u64;
    let compute_bytes = compute.round() as u64;
    let total_bytes = weights_bytes
        .saturating_add(kv_bytes)
        .saturating_add(compute_bytes)
        .saturating_add(OVERHEAD_BYTES);
    let capacity = capacity_bytes.filter(|&c| c > 0);
    Estimate {
        weights_bytes,
        kv_bytes,
        compute_bytes,
        overhead_bytes: OVERHEAD_BYTES,
        total_bytes,
        capacity_bytes: capacity,
        load_ratio: capacity.map(|c| total_bytes as f64 / c as f64),
        fits: capacity.map(|c| total_bytes <= c),
        notes: f.notes,
    }
}

/// Which measured peak a record contributes to the fit.
#[derive(Clone, Copy, PartialEq)]
enum Peak {
    Gpu,
    Rss,
}

/// Fits the compute buffer to measured peaks: for each trusted, successful record with a
/// measured peak, `peak − weights − KV − overhead − attention scores` is the compute buffer,
/// regressed on `1, ubatch, ctx·slots, ctx·slots·ubatch` by least squares (with a light pull
/// towards [`ComputeFit::DEFAULT`], so a term the records cannot separate, e.g. every record
/// at one micro-batch, keeps the default's share).
///
/// The peak is `gpu_used_peak_bytes` when any such record has one (then only those records
/// are used), else `rss_peak_bytes` (a machine without a GPU: everything is in RAM, so every
/// layer counts whatever `gpu_layers` says). With fewer than [`MIN_FIT_SAMPLES`] usable records
/// it returns the default (with `samples` saying how many there were).
pub fn fit_compute(records: &[Record]) -> ComputeFit {
    let usable = |r: &&Record| r.trusted && r.success;
    let kind = if records
        .iter()
        .filter(usable)
        .any(|r| r.gpu_used_peak_bytes.is_some())
    {
        Peak::Gpu
    } else {
        Peak::Rss
    };
    let mut rows: Vec<([f64; 4], f64)> = Vec::new();
    // Each row's fixed parts (weights, KV, scores, overhead) and its measured peak.
    let mut totals: Vec<(f64, f64)> = Vec::new();
    for r in records.iter().filter(usable) {
        let peak = match kind {
            Peak::Gpu => r.gpu_used_peak_bytes,
            Peak::Rss => r.rss_peak_bytes,
        };
        let Some(peak) = peak else { continue };
        let fraction = match kind {
            Peak::Gpu => offload_fraction(&r.model, &r.config).0,
            Peak::Rss => 1.0,
        };
        let f = fixed_parts(&r.model, &r.config, fraction);
        let fixed = f.weights + f.kv + f.scores + OVERHEAD_BYTES as f64;
        let compute = peak as f64 - fixed;
        totals.push((fixed, peak as f64));
        let ctx_total = f64::from(r.config.ctx) * f64::from(slots(&r.config));
        rows.push((
            terms(f64::from(effective_ubatch(&r.config)), ctx_total),
            compute,
        ));
    }
    if rows.len() < MIN_FIT_SAMPLES {
        return ComputeFit {
            samples: rows.len(),
            ..ComputeFit::DEFAULT
        };
    }
    let coef = ridge(&rows, &ComputeFit::DEFAULT.coefficients());
    let mut fit = ComputeFit {
        base_bytes: coef[0],
        per_ubatch_bytes: coef[1],
        per_ctx_bytes: coef[2],
        per_ctx_ubatch_bytes: coef[3],
        samples: rows.len(),
        residual: None,
    };
    let points: Vec<(f64, f64)> = rows
        .iter()
        .zip(&totals)
        .map(|((x, _), (fixed, peak))| (fixed + fit.bytes(x[1], x[2]), *peak))
        .collect();
    fit.residual = Residual::of(&points);
    fit
}

/// Least squares of `y` on `x` with a ridge penalty towards `prior`, on columns scaled to unit
/// root-mean-square (so the penalty is relative to each term's data, whatever its units).
fn ridge(rows: &[([f64; 4], f64)], prior: &[f64; 4]) -> [f64; 4] {
    let n = rows.len() as f64;
    let mut scale = [0.0f64; 4];
    for (x, _) in rows {
        for j in 0..4 {
            scale[j] += x[j] * x[j];
        }
    }
    for s in &mut scale {
        *s = (*s / n).sqrt();
        if *s == 0.0 || !s.is_finite() {
            *s = 1.0;
        }
    }
    // Normal equations in scaled coordinates: (ZᵀZ + λn I) θ' = Zᵀy + λn prior'.
    let mut a = [[0.0f64; 5]; 4];
    for (x, y) in rows {
        let z: Vec<f64> = (0..4).map(|j| x[j] / scale[j]).collect();
        for i in 0..4 {
            for j in 0..4 {
                a[i][j] += z[i] * z[j];
            }
            a[i][4] += z[i] * y;
        }
    }
    for i in 0..4 {
        a[i][i] += RIDGE * n;
        a[i][4] += RIDGE * n * prior[i] * scale[i];
    }
    let theta = solve4(a);
    let mut out = [0.0; 4];
    for j in 0..4 {
        out[j] = theta[j] / scale[j];
    }
    out
}

/// Gaussian elimination with partial pivoting on an augmented 4×5 matrix (positive definite
/// here thanks to the ridge term, so a pivot is never zero).
fn solve4(mut a: [[f64; 5]; 4]) -> [f64; 4] {
    for col in 0..4 {
        let pivot = (col..4)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap_or(col);
        a.swap(col, pivot);
        let p = a[col][col];
        if p == 0.0 {
            continue;
        }
        let pivot_row = a[col];
        for row in a.iter_mut().skip(col + 1) {
            let f = row[col] / p;
            for (v, pv) in row.iter_mut().zip(pivot_row).skip(col) {
                *v -= f * pv;
            }
        }
    }
    let mut x = [0.0; 4];
    for i in (0..4).rev() {
        let mut s = a[i][4];
        for (j, xj) in x.iter().enumerate().skip(i + 1) {
            s -= a[i][j] * xj;
        }
        x[i] = if a[i][i] == 0.0 { 0.0 } else { s / a[i][i] };
    }
    x
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
mod tests {
    use super::*;
    use crate::backend::OutcomeClass;

    /// Llama 3.1 8B: 32 blocks, 32 heads, 8 KV heads, head dimension 128.
    fn llama8b() -> ModelShape {
        ModelShape {
            architecture: Some("llama".into()),
            parameters: Some(8_030_261_248),
            weights_bytes: Some(4_920_734_720),
            trained_context: Some(131072),
            block_count: Some(32),
            embedding_length: Some(4096),
            head_count: Some(32),
            head_count_kv: Some(8),
            ..ModelShape::default()
        }
    }

    fn cfg(ctx: u32) -> ProbeConfig {
        ProbeConfig {
            ctx,
            ..ProbeConfig::default()
        }
    }

    #[test]
    fn kv_bytes_per_token_by_cache_type() {
        let s = llama8b();
        // 32 × 8 × (128 + 128) × 2 = 128 KiB per token at f16.
        assert_eq!(kv_bytes_per_token(&s, None, None), Some(131072.0));
        assert_eq!(
            kv_bytes_per_token(&s, Some("f16"), Some("f16")),
            Some(131072.0)
        );
        assert_eq!(
            kv_bytes_per_token(&s, Some("F32"), Some("f32")),
            Some(262144.0)
        );
        assert_eq!(kv_bytes_per_token(&s, Some("bf16"), None), Some(131072.0));
        // q8_0: 34 bytes per 32 elements; q4_0: 18 per 32.
        assert_eq!(
            kv_bytes_per_token(&s, Some("q8_0"), Some("q4_0")),
            Some(32.0 * 8.0 * 128.0 * (34.0 + 18.0) / 32.0)
        );
        assert_eq!(kv_bytes_per_token(&s, Some("q9_0"), None), None);
    }

    #[test]
    fn kv_shape_defaults() {
        // No head_count_kv: every head has its K/V; no key/value length: embedding / heads.
        let mut s = ModelShape {
            block_count: Some(2),
            embedding_length: Some(512),
            head_count: Some(8),
            ..ModelShape::default()
        };
        assert_eq!(
            kv_bytes_per_token(&s, None, None),
            Some(2.0 * 8.0 * 128.0 * 2.0)
        );
        s.head_count_kv = Some(2);
        assert_eq!(
            kv_bytes_per_token(&s, None, None),
            Some(2.0 * 2.0 * 128.0 * 2.0)
        );
        // Explicit key/value lengths win (and may differ).
        s.key_length = Some(192);
        s.value_length = Some(128);
        assert_eq!(
            kv_bytes_per_token(&s, None, None),
            Some(2.0 * 2.0 * (192.0 + 128.0) * 2.0)
        );
        s.block_count = None;
        assert_eq!(kv_bytes_per_token(&s, None, None), None);
        let zero_heads = ModelShape {
            block_count: Some(2),
            embedding_length: Some(512),
            head_count: Some(0),
            ..ModelShape::default()
        };
        assert_eq!(kv_bytes_per_token(&zero_heads, None, None), None);
    }

    #[test]
    fn estimate_terms_add_up() {
        let s = llama8b();
        let c = ProbeConfig {
            ctx: 8192,
            batch: Some(256),
            parallel: Some(2),
            ..cfg(0)
        };
        let fit = ComputeFit::DEFAULT;
        let e = estimate(&s, &c, Some(16 << 30), &fit);
        assert_eq!(e.weights_bytes, 4_920_734_720);
        assert_eq!(e.kv_bytes, 8192 * 2 * 131072);
        let n = 8192.0 * 2.0;
        let compute = 256.0 * MIB + 512.0 * 1024.0 * 256.0 + 1024.0 * n + 2.0 * n * 256.0;
        assert_eq!(e.compute_bytes, compute as u64);
        assert_eq!(e.overhead_bytes, 16 << 20);
        assert_eq!(
            e.total_bytes,
            e.weights_bytes + e.kv_bytes + e.compute_bytes + e.overhead_bytes
        );
        assert_eq!(e.capacity_bytes, Some(16 << 30));
        let ratio = e.total_bytes as f64 / (16u64 << 30) as f64;
        assert_eq!(e.load_ratio, Some(ratio));
        assert_eq!(e.fits, Some(true));
        assert!(
            e.notes.iter().any(|n| n.contains("ubatch 256 (= batch)")),
            "{:?}",
            e.notes
        );
        assert!(
            e.notes.iter().any(|n| n.contains("2 slot(s)")),
            "{:?}",
            e.notes
        );
        // Unknown capacity: no ratio, no verdict.
        let e = estimate(&s, &c, None, &fit);
        assert_eq!((e.load_ratio, e.fits), (None, None));
        // Too small.
        let e = estimate(&s, &c, Some(4 << 30), &fit);
        assert_eq!(e.fits, Some(false));
        assert!(e.load_ratio.unwrap() > 1.0);
    }

    #[test]
    fn ubatch_comes_from_ubatch_then_batch_then_512() {
        assert_eq!(effective_ubatch(&cfg(1)), 512);
        let b = ProbeConfig {
            batch: Some(128),
            ..cfg(1)
        };
        assert_eq!(effective_ubatch(&b), 128);
        let u = ProbeConfig {
            ubatch: Some(64),
            ..b
        };
        assert_eq!(effective_ubatch(&u), 64);
    }

    #[test]
    fn partial_offload_is_proportional() {
        let s = llama8b();
        let all = estimate(&s, &cfg(4096), None, &ComputeFit::DEFAULT);
        for layers in [None, Some(-1), Some(32), Some(99)] {
            let c = ProbeConfig {
                gpu_layers: layers,
                ..cfg(4096)
            };
            assert_eq!(
                estimate(&s, &c, None, &ComputeFit::DEFAULT),
                all,
                "{layers:?}"
            );
        }
        let c = ProbeConfig {
            gpu_layers: Some(8),
            ..cfg(4096)
        };
        let e = estimate(&s, &c, None, &ComputeFit::DEFAULT);
        assert_eq!(e.weights_bytes, (4_920_734_720f64 / 4.0).round() as u64);
        assert_eq!(e.kv_bytes, all.kv_bytes / 4);
        assert_eq!(e.compute_bytes, all.compute_bytes);
        assert!(
            e.notes.iter().any(|n| n.contains("8 of 32 layers")),
            "{:?}",
            e.notes
        );
        let none = ProbeConfig {
            gpu_layers: Some(0),
            ..cfg(4096)
        };
        let e = estimate(&s, &none, None, &ComputeFit::DEFAULT);
        assert_eq!((e.weights_bytes, e.kv_bytes), (0, 0));
    }

    #[test]
    fn flash_attention_off_adds_the_attention_scores() {
        let s = llama8b();
        let on = ProbeConfig {
            flash_attn: Some(crate::backend::FlashAttn::On),
            batch: Some(512),
            ..cfg(16384)
        };
        let off = ProbeConfig {
            flash_attn: Some(crate::backend::FlashAttn::Off),
            ..on.clone()
        };
        let a = estimate(&s, &on, None, &ComputeFit::DEFAULT);
        let b = estimate(&s, &off, None, &ComputeFit::DEFAULT);
        assert_eq!(
            b.compute_bytes - a.compute_bytes,
            16384 * 512 * (32 * 4 + 2)
        );
        assert_eq!(
            estimate(&s, &cfg(16384), None, &ComputeFit::DEFAULT).compute_bytes,
            {
                let unset = ProbeConfig {
                    batch: Some(512),
                    ..cfg(16384)
                };
                estimate(&s, &unset, None, &ComputeFit::DEFAULT).compute_bytes
            }
        );
    }

    #[test]
    fn unknown_shape_and_cache_type_are_noted() {
        let e = estimate(
            &ModelShape::default(),
            &cfg(4096),
            Some(1 << 30),
            &ComputeFit::DEFAULT,
        );
        assert_eq!((e.weights_bytes, e.kv_bytes), (0, 0));
        assert!(e.notes.iter().any(|n| n.starts_with("weights: unknown")));
        assert!(e.notes.iter().any(|n| n.starts_with("KV cache: unknown")));
        let c = ProbeConfig {
            cache_type_k: Some("q9_9".into()),
            ..cfg(4096)
        };
        let e = estimate(&llama8b(), &c, None, &ComputeFit::DEFAULT);
        assert_eq!(e.kv_bytes, 4096 * 131072);
        assert!(
            e.notes.iter().any(|n| n.contains("f16 assumed")),
            "{:?}",
            e.notes
        );
    }

    fn record(shape: &ModelShape, c: ProbeConfig, gpu: Option<u64>, rss: Option<u64>) -> Record {
        Record {
            host_id: "h".into(),
            model_id: "m".into(),
            config: c,
            concurrency: 1,
            outcome: OutcomeClass::Ok,
            success: true,
            prefill_tokens_per_s: None,
            decode_tokens_per_s: None,
            ttft_ms: None,
            rss_peak_bytes: rss,
            gpu_used_peak_bytes: gpu,
            capacity_bytes: Some(24 << 30),
            model: shape.clone(),
            trusted: true,
            unix_s: 0,
            prompt_tokens: None,
            proven_at_depth: None,
            timing: Vec::new(),
        }
    }

    /// Peaks generated from a known compute law are fitted back to it.
    #[test]
    fn fit_recovers_a_known_compute_law() {
        let s = llama8b();
        let truth = ComputeFit {
            base_bytes: 300.0 * MIB,
            per_ubatch_bytes: 300_000.0,
            per_ctx_bytes: 100.0,
            per_ctx_ubatch_bytes: 2.0,
            samples: 0,
            residual: None,
        };
        let mut recs = Vec::new();
        for ctx in [2048, 8192, 32768] {
            for batch in [128, 512, 2048] {
                let c = ProbeConfig {
                    batch: Some(batch),
                    ..cfg(ctx)
                };
                let e = estimate(&s, &c, None, &truth);
                recs.push(record(&s, c, Some(e.total_bytes), Some(1)));
            }
        }
        let fit = fit_compute(&recs);
        assert_eq!(fit.samples, 9);
        for (got, want) in fit.coefficients().iter().zip(truth.coefficients()) {
            assert!((got - want).abs() <= want.abs() * 0.01 + 1.0, "{fit:?}");
        }
        // Estimates with the fit match the peaks within rounding, and the fit says so.
        for r in &recs {
            let e = estimate(&r.model, &r.config, None, &fit);
            let peak = r.gpu_used_peak_bytes.unwrap() as f64;
            assert!(
                (e.total_bytes as f64 - peak).abs() < peak * 1e-4,
                "{e:?} vs {peak}"
            );
        }
        let res = fit.residual.unwrap();
        assert!(res.median_abs < 1e-4 && res.worst.abs() < 1e-4, "{res:?}");
        let e = estimate(&s, &cfg(4096), None, &fit);
        assert!(
            e.notes
                .iter()
                .any(|n| n.contains("fitted to 9 measured peaks, which the whole estimate reproduces within a median 0.0 %")),
            "{:?}",
            e.notes
        );
    }

    #[test]
    fn a_residual_is_the_median_and_the_worst_relative_error() {
        // Estimated 90 of 100 (−10 %), 105 of 100 (+5 %), 101 of 100 (+1 %).
        let r = Residual::of(&[(90.0, 100.0), (105.0, 100.0), (101.0, 100.0)]).unwrap();
        assert!((r.median_abs - 0.05).abs() < 1e-12, "{r:?}");
        assert!((r.worst + 0.10).abs() < 1e-12, "{r:?}");
        let even = Residual::of(&[(98.0, 100.0), (104.0, 100.0)]).unwrap();
        assert!((even.median_abs - 0.03).abs() < 1e-12, "{even:?}");
        assert_eq!(Residual::of(&[]), None);
    }

    #[test]
    fn fit_needs_three_trusted_successful_peaks() {
        let s = llama8b();
        let mut recs: Vec<Record> = (0..2)
            .map(|i| record(&s, cfg(4096 << i), Some(8 << 30), None))
            .collect();
        assert_eq!(
            fit_compute(&recs),
            ComputeFit {
                samples: 2,
                ..ComputeFit::DEFAULT
            }
        );
        // Untrusted, failed or peak-less records do not count.
        let mut bad = record(&s, cfg(1024), Some(8 << 30), None);
        bad.trusted = false;
        recs.push(bad);
        let mut failed = record(&s, cfg(1024), Some(8 << 30), None);
        failed.success = false;
        recs.push(failed);
        recs.push(record(&s, cfg(1024), None, None));
        // GPU peaks exist: the RSS-only row is ignored, the others are not usable.
        assert_eq!(fit_compute(&recs).samples, 2);
        // Without any GPU peak, RSS peaks are used.
        let rss: Vec<Record> = [1024, 2048, 4096]
            .into_iter()
            .map(|ctx| record(&s, cfg(ctx), None, Some(6 << 30)))
            .collect();
        assert_eq!(fit_compute(&rss).samples, 3);
        assert_eq!(fit_compute(&[]), ComputeFit::DEFAULT);
    }

    /// Every record at one micro-batch: the split between base and per-ubatch cannot be
    /// measured, but the fitted law still reproduces the peaks at that micro-batch.
    #[test]
    fn fit_with_one_ubatch_matches_the_data_it_has() {
        let s = llama8b();
        let truth = ComputeFit {
            base_bytes: 10.0 * MIB,
            per_ubatch_bytes: 9000.0,
            per_ctx_bytes: 250.0,
            per_ctx_ubatch_bytes: 2.0,
            samples: 0,
            residual: None,
        };
        let recs: Vec<Record> = [1024, 4096, 16384, 32768]
            .into_iter()
            .map(|ctx| {
                let c = ProbeConfig {
                    batch: Some(512),
                    ..cfg(ctx)
                };
                let e = estimate(&s, &c, None, &truth);
                record(&s, c, None, Some(e.total_bytes))
            })
            .collect();
        let fit = fit_compute(&recs);
        assert_eq!(fit.samples, 4);
        for r in &recs {
            let want = estimate(&s, &r.config, None, &truth).compute_bytes as f64;
            let got = estimate(&s, &r.config, None, &fit).compute_bytes as f64;
            assert!((got - want).abs() < 0.01 * want, "{got} vs {want}: {fit:?}");
        }
        // Nothing negative comes out of a fit with a negative base.
        let neg = ComputeFit {
            base_bytes: -1e9,
            ..ComputeFit::DEFAULT
        };
        assert_eq!(neg.bytes(1.0, 1.0), 0.0);
    }

    #[test]
    fn cache_type_names() {
        for t in CACHE_TYPES.split(", ") {
            assert!(cache_type_bytes(t).is_some(), "{t}");
        }
        assert_eq!(cache_type_bytes("Q8_0"), Some(34.0 / 32.0));
        assert_eq!(cache_type_bytes("q2_k"), None);
    }
}
