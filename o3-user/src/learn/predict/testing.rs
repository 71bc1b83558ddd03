//! The predictor's tests' synthetic truth, shared with the tests that measure it
//! (`learn::accuracy`).

use crate::backend::{FlashAttn, OutcomeClass, ProbeConfig};
use crate::learn::memory::{self, Law, MemoryFit, Place};
use crate::learn::{ModelShape, Record};

/// The capacity a probe is judged against when its record states none.
pub(crate) const CAP: u64 = 12 << 30;

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

/// A probe of `c` by host `host` on a device of `capacity` bytes (unstated: [`CAP`]): it
/// succeeds iff [`truth_fit`]'s estimate of Llama 3.1 8B fits, with the rates `rates` gives.
pub(crate) fn probe(
    host: &str,
    c: ProbeConfig,
    capacity: Option<u64>,
    rates: fn(&ProbeConfig) -> (f64, f64),
) -> Record {
    let shape = ModelShape::llama31_8b();
    let cap = capacity.unwrap_or(CAP);
    let e = memory::estimate(&shape, &c, Some(cap), &truth_fit());
    let ok = e.total_bytes <= cap;
    let (prefill, decode) = rates(&c);
    Record {
        host_id: host.into(),
        model_id: "llama31-8b".into(),
        config: c,
        concurrency: 1,
        outcome: if ok {
            OutcomeClass::Ok
        } else {
            OutcomeClass::Oom
        },
        success: ok,
        prefill_tokens_per_s: ok.then_some(prefill),
        decode_tokens_per_s: ok.then_some(decode),
        ttft_ms: None,
        rss_peak_bytes: None,
        gpu_used_peak_bytes: ok.then_some(e.total_bytes),
        capacity_bytes: capacity,
        model: shape,
        trusted: true,
        unix_s: 0,
        prompt_tokens: None,
        proven_at_depth: None,
        timing: Vec::new(),
    }
}
