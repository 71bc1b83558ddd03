//! The memory law beyond the weights, where the peak is measured, and what is known of the law
//! before any measurement (the prior, with bounds: a cold-start estimate is a range).
//!
//! ```text
//! peak = weights + overhead + kv_scale·KV + per_ubatch·u + per_token·n + per_token_ubatch·n·u
//!        (+ attention scores, flash attention off)
//! ```
//!
//! `KV` is the GGUF-exact KV cache (context × slots × bytes per token at the cache types), `u`
//! the micro-batch, `n` the context tokens in use over all slots: on the GPU the whole
//! context (the compute buffer is allocated for it at load), in RAM the tokens actually held
//! (a CPU build touches compute-buffer pages and holds request state only as a prompt fills
//! the context; its KV cache is cleared at load, so all of it is resident from the start).

use serde::{Deserialize, Serialize};

use crate::learn::ModelShape;

const KIB: f64 = 1024.0;
const MIB: f64 = KIB * KIB;

/// Which memory a peak is measured in and a capacity bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Place {
    /// The server's resident memory (RSS of its process tree), on a machine without a GPU:
    /// everything is in RAM.
    Ram,
    /// The GPU memory in use (VRAM, or GTT on an APU).
    Gpu,
}

impl Place {
    pub fn name(self) -> &'static str {
        match self {
            Place::Ram => "RAM",
            Place::Gpu => "GPU memory",
        }
    }
}

/// The law's coefficients (bytes, except `kv_scale`, a factor on the GGUF-exact KV cache).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Law {
    /// What the server holds whatever the configuration: its binary, libraries and heap, and
    /// on a GPU the runtime's context and workspaces.
    pub overhead_bytes: f64,
    /// Measured KV cache ÷ the GGUF-exact one (llama.cpp's per-cell bookkeeping adds 2–3 %).
    pub kv_scale: f64,
    /// Activations (and, allocated on a GPU, logits) per micro-batch token.
    pub per_ubatch_bytes: f64,
    /// Request state per context token in use (prompt text, token ids, tokenizer and JSON
    /// buffers): host memory, so 0 on a GPU.
    pub per_token_bytes: f64,
    /// Per context token per micro-batch token: the f16 attention mask, 2 bytes.
    pub per_token_ubatch_bytes: f64,
}

/// Number of coefficients of a [`Law`].
pub const TERMS: usize = 5;

impl Law {
    pub fn coefficients(&self) -> [f64; TERMS] {
        [
            self.overhead_bytes,
            self.kv_scale,
            self.per_ubatch_bytes,
            self.per_token_bytes,
            self.per_token_ubatch_bytes,
        ]
    }

    pub fn from_coefficients(c: [f64; TERMS]) -> Law {
        Law {
            overhead_bytes: c[0],
            kv_scale: c[1],
            per_ubatch_bytes: c[2],
            per_token_bytes: c[3],
            per_token_ubatch_bytes: c[4],
        }
    }

    /// The regressors the coefficients multiply: 1, KV bytes, u, n, n·u.
    pub fn columns(kv_bytes: f64, ubatch: f64, tokens: f64) -> [f64; TERMS] {
        [1.0, kv_bytes, ubatch, tokens, tokens * ubatch]
    }

    /// The bytes beyond the weights and the attention scores.
    pub fn bytes(&self, kv_bytes: f64, ubatch: f64, tokens: f64) -> f64 {
        self.coefficients()
            .iter()
            .zip(Law::columns(kv_bytes, ubatch, tokens))
            .map(|(c, x)| c * x)
            .sum()
    }

    /// The compute part: everything but the overhead and the KV cache (never negative).
    pub fn compute_bytes(&self, ubatch: f64, tokens: f64) -> f64 {
        (self.per_ubatch_bytes * ubatch
            + self.per_token_bytes * tokens
            + self.per_token_ubatch_bytes * tokens * ubatch)
            .max(0.0)
    }
}

/// What is known of the law before any measurement: a central value and bounds per term.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prior {
    pub place: Place,
    pub central: Law,
    pub low: Law,
    pub high: Law,
    /// Where the figures come from, for the estimate's notes.
    #[serde(skip)]
    pub source: &'static str,
}

impl Prior {
    /// The prior of `place` for a model of `shape`.
    ///
    /// RAM (llama-server, CPU build): calibrated on the test model (o3-tiny-llama, 256-wide,
    /// 4 blocks) with eBPF-exact peaks at contexts 1k–32k, micro-batches 64 and 512, one and
    /// two slots (docs/learning.md): overhead 17 MiB (15 MiB idle beyond weights and KV, 1 MiB
    /// of compute base); KV ×1.025 (per-cell bookkeeping +2–3 %); 34 bytes per embedding
    /// dimension per micro-batch token (8.6 KB at width 256: activations; a CPU build touches
    /// no logits row it does not output); 800 B per context token in use (0.3–1.2 KB
    /// measured); the mask's 2 B per context × micro-batch token, exact. The bounds are wide
    /// where this one model cannot speak for others: the overhead up to 96 MiB (other builds,
    /// other servers' own processes), activations ½–3× per width.
    ///
    /// GPU (CUDA, ROCm, Vulkan builds of llama.cpp): from llama.cpp's published load logs, not
    /// measured here: a runtime context and workspaces of a few hundred MiB (64 MiB–1 GiB),
    /// logits of a 16k–256k vocabulary in f32 allocated for every micro-batch token (64 KiB–1
    /// MiB per token; 512 KiB for Llama 3's 128k: 256 MiB at ubatch 512, its compute buffer
    /// size class), no request state on the device.
    pub fn of(place: Place, shape: &ModelShape) -> Prior {
        match place {
            Place::Ram => {
                let kv = (1.025, 1.0, 1.06);
                let width = shape.embedding_length.map_or(4096.0, f64::from);
                let act = 34.0 * width;
                let law = |overhead, kv_scale, u, t| Law {
                    overhead_bytes: overhead,
                    kv_scale,
                    per_ubatch_bytes: u,
                    per_token_bytes: t,
                    per_token_ubatch_bytes: 2.0,
                };
                Prior {
                    place,
                    central: law(17.0 * MIB, kv.0, act, 800.0),
                    low: law(12.0 * MIB, kv.1, act * 0.5, 250.0),
                    high: law(96.0 * MIB, kv.2, act * 3.0, 1536.0),
                    source: "calibrated on llama-server (CPU build) with the test model",
                }
            }
            Place::Gpu => {
                // The cells' bookkeeping is host memory: the device holds the cache exactly.
                let kv = (1.0, 1.0, 1.03);
                let law = |overhead, kv_scale, u| Law {
                    overhead_bytes: overhead,
                    kv_scale,
                    per_ubatch_bytes: u,
                    per_token_bytes: 0.0,
                    per_token_ubatch_bytes: 2.0,
                };
                Prior {
                    place,
                    central: law(272.0 * MIB, kv.0, 512.0 * KIB),
                    low: law(64.0 * MIB, kv.1, 64.0 * KIB),
                    high: law(1024.0 * MIB, kv.2, 1024.0 * KIB),
                    source: "llama.cpp's published GPU compute buffers and runtime contexts",
                }
            }
        }
    }

    /// Each term's prior standard deviation: a quarter of its bounds' span (the bounds as ±2
    /// sd), at least 1 % of the central value (a term known exactly still has rounding).
    pub fn sd(&self) -> [f64; TERMS] {
        let (c, lo, hi) = (
            self.central.coefficients(),
            self.low.coefficients(),
            self.high.coefficients(),
        );
        let mut out = [0.0; TERMS];
        for j in 0..TERMS {
            out[j] = ((hi[j] - lo[j]) / 4.0).max(c[j].abs() * 0.01).max(1e-9);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bounds_enclose_the_central_law() {
        let shape = ModelShape {
            embedding_length: Some(256),
            ..ModelShape::default()
        };
        for place in [Place::Ram, Place::Gpu] {
            let p = Prior::of(place, &shape);
            for ((lo, c), hi) in p
                .low
                .coefficients()
                .iter()
                .zip(p.central.coefficients())
                .zip(p.high.coefficients())
            {
                assert!(*lo <= c && c <= hi, "{place:?}: {lo} {c} {hi}");
            }
            assert!(p.sd().iter().all(|s| *s > 0.0));
        }
        // Activations scale with the model's width in RAM.
        let ram = Prior::of(Place::Ram, &shape).central;
        assert_eq!(ram.per_ubatch_bytes, 34.0 * 256.0);
        let law = ram;
        assert_eq!(
            law.bytes(1000.0, 64.0, 100.0),
            17.0 * MIB + 1025.0 + 64.0 * 34.0 * 256.0 + 80_000.0 + 12_800.0
        );
        assert_eq!(
            law.compute_bytes(64.0, 100.0),
            64.0 * 8704.0 + 80_000.0 + 12_800.0
        );
    }
}
