//! The predictor's tests' synthetic truth, shared with the tests that measure it
//! (`learn::accuracy`).

use crate::backend::{FlashAttn, ProbeConfig};
use crate::learn::memory::{Law, MemoryFit, Place};

/// The synthetic truth: the memory model with this law is exact on the GPU.
pub(crate) fn truth_fit() -> MemoryFit {
    MemoryFit::known(
        Place::Gpu,
        Law {
            overhead_bytes: 300.0 * f64::from(1 << 20),
            kv_scale: 1.0,
            per_ubatch_bytes: 520_000.0,
            per_token_bytes: 0.0,
            per_token_ubatch_bytes: 2.0,
        },
    )
}

/// A configuration at `ctx` and `batch` with KV cache type `kv`, flash attention on.
pub(crate) fn cfg(ctx: u32, batch: u32, kv: &str) -> ProbeConfig {
    ProbeConfig {
        ctx,
        batch: Some(batch),
        flash_attn: Some(FlashAttn::On),
        cache_type_k: Some(kv.into()),
        cache_type_v: Some(kv.into()),
        ..ProbeConfig::default()
    }
}
