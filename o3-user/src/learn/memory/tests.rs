//! The memory model against known truths: laws within the prior's bounds, laws fitted back
//! from peaks they generated, and the arithmetic of residuals and ranges.

use super::*;
use crate::backend::{FlashAttn, OutcomeClass};
use crate::learn::Record;

/// Llama 3.1 8B: 32 blocks, 32 heads, 8 KV heads, head dimension 128.
fn llama8b() -> ModelShape {
    ModelShape::llama31_8b()
}

/// The test model (o3-tiny-llama.gguf): 4 blocks, 8 heads, 4 KV heads of 32, 10.2 MiB of f32.
fn tiny() -> ModelShape {
    ModelShape {
        architecture: Some("llama".into()),
        parameters: Some(2_674_432),
        weights_bytes: Some(10_697_728),
        trained_context: Some(131072),
        block_count: Some(4),
        embedding_length: Some(256),
        head_count: Some(8),
        head_count_kv: Some(4),
        ..ModelShape::default()
    }
}

fn cfg(ctx: u32) -> ProbeConfig {
    ProbeConfig {
        ctx,
        ..ProbeConfig::default()
    }
}

fn gpu() -> MemoryFit {
    MemoryFit::prior(Place::Gpu)
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
    let e = estimate(&s, &c, Some(16 << 30), &gpu());
    let law = Prior::of(Place::Gpu, &s).central;
    assert_eq!(e.weights_bytes, 4_920_734_720);
    let n = 8192.0 * 2.0;
    assert_eq!(e.kv_bytes, (n * 131072.0 * law.kv_scale).round() as u64);
    let compute = law.per_ubatch_bytes * 256.0 + 2.0 * n * 256.0;
    assert_eq!(e.compute_bytes, compute as u64);
    assert_eq!(e.overhead_bytes, 272 << 20);
    assert_eq!(
        e.total_bytes,
        e.weights_bytes + e.kv_bytes + e.compute_bytes + e.overhead_bytes
    );
    assert_eq!((e.place, e.fitted_points), (Place::Gpu, 0));
    assert!(
        e.low_bytes < e.total_bytes && e.total_bytes < e.high_bytes,
        "{e:?}"
    );
    assert_eq!(e.capacity_bytes, Some(16 << 30));
    let ratio = e.total_bytes as f64 / (16u64 << 30) as f64;
    assert_eq!(e.load_ratio, Some(ratio));
    assert_eq!(e.fits, Some(true));
    for want in [
        "ubatch 256 (= batch)",
        "2 slot(s)",
        "no law fitted (0 measured peak(s)",
    ] {
        assert!(
            e.notes.iter().any(|n| n.contains(want)),
            "{want}: {:?}",
            e.notes
        );
    }
    // Unknown capacity: no ratio, no verdict.
    let e = estimate(&s, &c, None, &gpu());
    assert_eq!((e.load_ratio, e.fits), (None, None));
    // Too small.
    let e = estimate(&s, &c, Some(4 << 30), &gpu());
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
fn partial_offload_is_proportional_on_the_gpu_and_whole_in_ram() {
    let s = llama8b();
    let all = estimate(&s, &cfg(4096), None, &gpu());
    for layers in [None, Some(-1), Some(32), Some(99)] {
        let c = ProbeConfig {
            gpu_layers: layers,
            ..cfg(4096)
        };
        assert_eq!(estimate(&s, &c, None, &gpu()), all, "{layers:?}");
    }
    let c = ProbeConfig {
        gpu_layers: Some(8),
        ..cfg(4096)
    };
    let e = estimate(&s, &c, None, &gpu());
    assert_eq!(e.weights_bytes, (4_920_734_720f64 / 4.0).round() as u64);
    assert!(e.kv_bytes.abs_diff(all.kv_bytes / 4) <= 1);
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
    let e = estimate(&s, &none, None, &gpu());
    assert_eq!((e.weights_bytes, e.kv_bytes), (0, 0));
    // In RAM every layer is counted, wherever it runs.
    let ram = estimate(&s, &c, None, &MemoryFit::prior(Place::Ram));
    assert_eq!(ram.weights_bytes, 4_920_734_720);
}

#[test]
fn flash_attention_off_adds_the_attention_scores() {
    let s = llama8b();
    let on = ProbeConfig {
        flash_attn: Some(FlashAttn::On),
        batch: Some(512),
        ..cfg(16384)
    };
    let off = ProbeConfig {
        flash_attn: Some(FlashAttn::Off),
        ..on.clone()
    };
    let a = estimate(&s, &on, None, &gpu());
    let b = estimate(&s, &off, None, &gpu());
    assert_eq!(
        b.compute_bytes - a.compute_bytes,
        16384 * 512 * (32 * 4 + 2)
    );
    let unset = ProbeConfig {
        batch: Some(512),
        ..cfg(16384)
    };
    assert_eq!(
        estimate(&s, &unset, None, &gpu()).compute_bytes,
        a.compute_bytes
    );
    let ram = MemoryFit::prior(Place::Ram);
    let half = |c: &ProbeConfig| estimate_at(&s, c, None, &ram, Fill::Tokens(8192.0)).compute_bytes;
    // In RAM the scores span the tokens held, with the CPU's f16 copy of them (2 B each).
    assert_eq!(half(&off) - half(&on), 8192 * 512 * (32 * 6 + 2));
}

#[test]
fn unknown_shape_and_cache_type_are_noted() {
    let e = estimate(&ModelShape::default(), &cfg(4096), Some(1 << 30), &gpu());
    assert_eq!((e.weights_bytes, e.kv_bytes), (0, 0));
    assert!(e.notes.iter().any(|n| n.starts_with("weights: unknown")));
    assert!(e.notes.iter().any(|n| n.starts_with("KV cache: unknown")));
    let c = ProbeConfig {
        cache_type_k: Some("q9_9".into()),
        ..cfg(4096)
    };
    let e = estimate(&llama8b(), &c, None, &gpu());
    let f16 = estimate(&llama8b(), &cfg(4096), None, &gpu());
    assert_eq!(e.kv_bytes, f16.kv_bytes);
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

fn known(place: Place, law: Law) -> MemoryFit {
    MemoryFit::known(place, law)
}

/// RAM peaks of llama-server as a law unlike the prior's central one (every term off by a
/// factor), at several contexts, micro-batches, slot counts and fills.
fn ram_truth() -> Law {
    Law {
        overhead_bytes: 21.0 * MIB,
        kv_scale: 1.03,
        per_ubatch_bytes: 12_000.0,
        per_token_bytes: 1100.0,
        per_token_ubatch_bytes: 2.0,
    }
}

fn ram_records(truth: &Law) -> Vec<Record> {
    let s = tiny();
    let mut out = Vec::new();
    for (ctx, batch, slots, prompt) in [
        (1024, 64, 1, 900),
        (4096, 64, 1, 200),
        (4096, 64, 1, 3600),
        (16384, 64, 1, 14700),
        (4096, 512, 1, 3600),
        (16384, 512, 1, 14700),
        (32768, 512, 1, 29400),
        (4096, 128, 2, 3600),
        (2048, 128, 2, 1800),
    ] {
        let c = ProbeConfig {
            batch: Some(batch),
            parallel: Some(slots),
            ..cfg(ctx)
        };
        let mut r = record(&s, c, None, None);
        r.prompt_tokens = Some(prompt);
        r.concurrency = slots;
        let e = estimate_at(&s, &r.config, None, &known(Place::Ram, *truth), fill_of(&r));
        r.rss_peak_bytes = Some(e.total_bytes);
        out.push(r);
    }
    out
}

/// Peaks generated from a known law are fitted back to it, in RAM (fills vary) and on a GPU.
#[test]
fn fit_recovers_a_known_law() {
    let truth = ram_truth();
    let recs = ram_records(&truth);
    let fit = fit(&recs, Place::Ram);
    let f = fit.fitted.as_ref().expect("fitted");
    assert_eq!((f.samples, fit.usable), (9, 9));
    for r in &recs {
        let e = estimate_at(&r.model, &r.config, None, &fit, fill_of(r));
        let peak = r.rss_peak_bytes.unwrap() as f64;
        assert!(
            (e.total_bytes as f64 - peak).abs() < peak * 0.002,
            "{:?}: {} vs {peak}",
            r.config,
            e.total_bytes
        );
    }
    let held = f.held_out.expect("held out");
    assert!(f.residual.median_abs < 0.002, "{:?}", f.residual);
    assert!(held.worst.abs() < 0.01, "{held:?}");
    // Unmeasured configurations too: a larger context, another micro-batch, four slots.
    for c in [
        ProbeConfig {
            batch: Some(256),
            ..cfg(65536)
        },
        ProbeConfig {
            batch: Some(64),
            parallel: Some(4),
            ..cfg(8192)
        },
    ] {
        let want = estimate(&tiny(), &c, None, &known(Place::Ram, truth)).total_bytes as f64;
        let got = estimate(&tiny(), &c, None, &fit).total_bytes as f64;
        assert!((got - want).abs() < want * 0.01, "{c:?}: {got} vs {want}");
    }
    let e = estimate(&tiny(), &cfg(4096), None, &fit);
    assert!(
        e.notes
            .iter()
            .any(|n| n.starts_with("RAM: law fitted to 9 measured peak(s)")),
        "{:?}",
        e.notes
    );
    assert_eq!(e.fitted_points, 9);
    assert!(e.low_bytes <= e.total_bytes && e.total_bytes <= e.high_bytes);
    // The range is at least 1 MiB either side (run-to-run noise), however exact the fit.
    assert!(e.high_bytes >= e.total_bytes + (1 << 20), "{e:?}");

    // A GPU: everything allocated at load, so the fill does not matter.
    let s = llama8b();
    let law = Law {
        overhead_bytes: 400.0 * MIB,
        kv_scale: 1.0,
        per_ubatch_bytes: 300_000.0,
        per_token_bytes: 0.0,
        per_token_ubatch_bytes: 2.0,
    };
    let mut recs = Vec::new();
    for ctx in [2048, 8192, 32768] {
        for batch in [128, 512, 2048] {
            let c = ProbeConfig {
                batch: Some(batch),
                ..cfg(ctx)
            };
            let e = estimate(&s, &c, None, &known(Place::Gpu, law));
            recs.push(record(&s, c, Some(e.total_bytes), Some(1)));
        }
    }
    let fit = super::fit(&recs, Place::Gpu);
    let f = fit.fitted.unwrap();
    assert_eq!(f.samples, 9);
    assert!(
        (f.law.overhead_bytes - law.overhead_bytes).abs() < 2.0 * MIB,
        "{f:?}"
    );
    assert!(
        (f.law.per_ubatch_bytes - law.per_ubatch_bytes).abs() < 3000.0,
        "{f:?}"
    );
    assert!(f.held_out.unwrap().worst.abs() < 0.005, "{f:?}");
}

/// The law is found from the measured contexts alone: leaving out every probe of one context
/// and predicting it from the others stays within 2 % on the truth above.
#[test]
fn held_out_contexts_are_predicted() {
    let truth = ram_truth();
    let recs = ram_records(&truth);
    for ctx in [4096, 16384, 32768] {
        let (held, rest): (Vec<_>, Vec<_>) =
            recs.iter().cloned().partition(|r| r.config.ctx == ctx);
        let fit = fit(&rest, Place::Ram);
        for r in held {
            let e = estimate_at(&r.model, &r.config, None, &fit, fill_of(&r)).total_bytes as f64;
            let peak = r.rss_peak_bytes.unwrap() as f64;
            assert!((e - peak).abs() < peak * 0.02, "ctx {ctx}: {e} vs {peak}");
        }
    }
}

#[test]
fn a_residual_is_the_median_and_the_worst_relative_error() {
    // Estimated 90 of 100 (−10 %), 105 of 100 (+5 %), 101 of 100 (+1 %).
    let r = Residual::of(&[(90.0, 100.0), (105.0, 100.0), (101.0, 100.0)]).unwrap();
    assert!((r.median_abs - 0.05).abs() < 1e-12, "{r:?}");
    assert!((r.worst + 0.10).abs() < 1e-12, "{r:?}");
    assert!((r.lowest + 0.10).abs() < 1e-12 && (r.highest - 0.05).abs() < 1e-12);
    assert_eq!(r.points, 3);
    let even = Residual::of(&[(98.0, 100.0), (104.0, 100.0)]).unwrap();
    assert!((even.median_abs - 0.03).abs() < 1e-12, "{even:?}");
    // One side only: the other bound is 0.
    let over = Residual::of(&[(102.0, 100.0)]).unwrap();
    assert_eq!(over.lowest, 0.0);
    assert_eq!(Residual::of(&[]), None);
}

/// A fitted range spans the errors the fit made on points it did not see: measured =
/// estimate ÷ (1 + error).
#[test]
fn a_fitted_range_comes_from_the_held_out_errors() {
    let held = Residual::of(&[(95.0, 100.0), (104.0, 100.0)]).unwrap();
    let own = Residual::of(&[(100.0, 100.0)]).unwrap();
    let t = 1e10; // a 10 GB peak
    let close = |a: f64, b: f64| (a - b).abs() < 1e-3;
    let (lo, hi) = band(t, Some(&held), &own);
    assert!(close(lo, t / 1.04) && close(hi, t / 0.95), "{lo} {hi}");
    // At least ±0.2 % however exact the fit, and ±5 % with no point held out.
    let (lo, hi) = band(t, Some(&own), &own);
    assert!(close(lo, t / 1.002) && close(hi, t / 0.998), "{lo} {hi}");
    let (lo, hi) = band(t, None, &own);
    assert!(close(lo, t / 1.05) && close(hi, t / 0.95), "{lo} {hi}");
    // At least 1 MiB either side: a 40 MB peak's run-to-run noise.
    let (lo, hi) = band(4e7, Some(&own), &own);
    let f = 1048576.0 / 4e7;
    assert!(
        close(lo, 4e7 / (1.0 + f)) && close(hi, 4e7 / (1.0 - f)),
        "{lo} {hi}"
    );
}

/// Every law within the prior's bounds gives a peak within the cold-start range (the terms
/// grow with their coefficients), at any configuration.
#[test]
fn the_cold_range_holds_every_law_within_the_bounds() {
    for (place, s) in [
        (Place::Ram, tiny()),
        (Place::Gpu, llama8b()),
        (Place::Ram, llama8b()),
    ] {
        let p = Prior::of(place, &s);
        let (lo, hi) = (p.low.coefficients(), p.high.coefficients());
        for t in [0.0, 0.3, 1.0] {
            let mut c = [0.0; 5];
            for j in 0..5 {
                c[j] = lo[j] + (hi[j] - lo[j]) * if j % 2 == 0 { t } else { 1.0 - t };
            }
            let truth = known(place, Law::from_coefficients(c));
            for cf in [
                cfg(1024),
                ProbeConfig {
                    batch: Some(2048),
                    parallel: Some(3),
                    ..cfg(32768)
                },
            ] {
                let peak = estimate(&s, &cf, None, &truth).total_bytes;
                let cold = estimate(&s, &cf, None, &MemoryFit::prior(place));
                assert!(
                    cold.low_bytes <= peak + 1 && peak <= cold.high_bytes + 1,
                    "{place:?} {cf:?}: {peak} outside {}..{}",
                    cold.low_bytes,
                    cold.high_bytes
                );
            }
        }
    }
}

#[test]
fn fit_needs_three_trusted_successful_peaks_of_its_place() {
    let s = llama8b();
    let mut recs: Vec<Record> = (0..2)
        .map(|i| record(&s, cfg(4096 << i), Some(8 << 30), None))
        .collect();
    let f = fit(&recs, Place::Gpu);
    assert_eq!((f.fitted.is_none(), f.usable), (true, 2));
    // Untrusted, failed or peak-less records do not count.
    let mut bad = record(&s, cfg(1024), Some(8 << 30), None);
    bad.trusted = false;
    recs.push(bad);
    let mut failed = record(&s, cfg(1024), Some(8 << 30), None);
    failed.success = false;
    recs.push(failed);
    recs.push(record(&s, cfg(1024), None, Some(6 << 30)));
    assert_eq!(fit(&recs, Place::Gpu).usable, 2);
    // In RAM, only the RSS peaks count.
    let rss: Vec<Record> = [1024, 2048, 4096]
        .into_iter()
        .map(|ctx| {
            record(
                &s,
                cfg(ctx),
                None,
                Some((6 << 30) + u64::from(ctx) * 140_000),
            )
        })
        .collect();
    let f = fit(&rss, Place::Ram);
    assert_eq!(f.fitted.map(|f| f.samples), Some(3));
    assert_eq!(fit(&rss, Place::Gpu).usable, 0);
    assert_eq!(fit(&[], Place::Ram), MemoryFit::prior(Place::Ram));
}

/// Every record at one micro-batch: the split between the overhead and the per-micro-batch
/// term cannot be measured, but the fitted law still reproduces the peaks at that micro-batch.
#[test]
fn fit_with_one_ubatch_matches_the_data_it_has() {
    let s = llama8b();
    let law = Law {
        overhead_bytes: 100.0 * MIB,
        kv_scale: 1.0,
        per_ubatch_bytes: 9000.0,
        per_token_bytes: 0.0,
        per_token_ubatch_bytes: 2.0,
    };
    let recs: Vec<Record> = [1024, 4096, 16384, 32768]
        .into_iter()
        .map(|ctx| {
            let c = ProbeConfig {
                batch: Some(512),
                ..cfg(ctx)
            };
            let e = estimate(&s, &c, None, &known(Place::Gpu, law));
            record(&s, c, Some(e.total_bytes), None)
        })
        .collect();
    let fit = fit(&recs, Place::Gpu);
    assert_eq!(fit.fitted.as_ref().unwrap().samples, 4);
    for r in &recs {
        let want = r.gpu_used_peak_bytes.unwrap() as f64;
        let got = estimate(&s, &r.config, None, &fit).total_bytes as f64;
        assert!(
            (got - want).abs() < 0.005 * want,
            "{got} vs {want}: {fit:?}"
        );
    }
}

#[test]
fn cache_type_names() {
    for t in CACHE_TYPES.split(", ") {
        assert!(cache_type_bytes(t).is_some(), "{t}");
    }
    assert_eq!(cache_type_bytes("Q8_0"), Some(34.0 / 32.0));
    assert_eq!(cache_type_bytes("q2_k"), None);
}
