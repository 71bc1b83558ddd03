//! The variant stage against the simulator, whose truth for each variant (the largest context
//! that loads with its KV cache type, micro-batch and flash attention; its rates) is computed
//! from the simulator's own model, never from the code under test.

use super::search::{self, Report, Silent, VariantIn};
use super::sim::{Sim, SimModel};
use super::tests::{expected, inputs, model};
use crate::backend::{FlashAttn, ProbeConfig};
use crate::config::Config;

/// A configuration comparing the lists given, with batch ranking, concurrency and the budget
/// off (each test is about the variants; the tiny simulated model's loads would take most of a
/// budget of two floors).
fn config(set: impl FnOnce(&mut Config)) -> Config {
    let mut cfg = Config::default();
    cfg.batch.enabled = false;
    cfg.concurrency.enabled = false;
    cfg.plan.floor_multiple = 0.0;
    set(&mut cfg);
    cfg
}

/// The search over the variants the configuration's lists make, on the simulator.
fn run(cfg: &Config, m: &SimModel, pruned: &[usize]) -> Report {
    run_builds(cfg, m, pruned, &[])
}

/// As [`run`], comparing the builds `bins` too.
fn run_builds(cfg: &Config, m: &SimModel, pruned: &[usize], bins: &[String]) -> Report {
    let mut inp = inputs(cfg, m);
    inp.variants = search::expand_variants(&cfg.variants, &ProbeConfig::default(), bins)
        .into_iter()
        .enumerate()
        .map(|(i, base)| VariantIn {
            base,
            predicted: None,
            pruned: pruned
                .contains(&i)
                .then(|| "predicted not to load (test)".into()),
        })
        .collect();
    search::run(&inp, &mut Sim::new(m.clone()), &mut Silent)
}

/// The simulator's truth for a variant at the search's batch: its largest loading context on
/// the grid.
fn truth(cfg: &Config, m: &SimModel, v: &ProbeConfig) -> Option<u32> {
    let batch = cfg.batch.initial_for(Some(m.parameters));
    let at = |ctx| ProbeConfig {
        ctx,
        batch: Some(batch),
        ubatch: v.ubatch.map(|u| u.min(batch)),
        ..v.clone()
    };
    expected(m.max_context_of(&at(0)), cfg, m.trained_context)
}

#[test]
fn a_quantized_kv_cache_is_found_when_it_is_the_only_way_to_a_longer_context() {
    let cfg = config(|c| c.variants.cache_types = vec!["f16".into(), "q8_0".into(), "q4_0".into()]);
    let m = model(12.0);
    let r = run(&cfg, &m, &[]);
    assert_eq!(r.variants.len(), 3);
    for v in &r.variants {
        assert_eq!(v.max_loads, truth(&cfg, &m, &v.config), "{}", v.label);
        assert!(v.prefill_tokens_per_s.is_some() && v.decode_tokens_per_s.is_some());
        // Every variant ranked at the same context and depth.
        assert_eq!(v.rate_ctx, r.variants[0].rate_ctx);
    }
    let longest = r.variants.iter().find(|v| v.roles.contains(&"longest"));
    let longest = longest.expect("a longest variant");
    assert_eq!(longest.config.cache_type_k.as_deref(), Some("q4_0"));
    // Its maximum is the run's, proven at depth within a granule of the truth.
    let want = truth(&cfg, &m, &longest.config);
    assert_eq!(r.context.validated, want);
    assert!(want > truth(&cfg, &m, &r.variants[0].config));
    let proof = r
        .configurations
        .iter()
        .find(|c| c.filled() && c.stable && Some(c.config.ctx) == want)
        .expect("the maximum proven filled");
    assert_eq!(proof.config.cache_type_k.as_deref(), Some("q4_0"));
    assert!(proof.id.ends_with("-kq4_0-faauto-ud"), "{}", proof.id);
    // A fastest variant, where one is named, is faster by more than the minimum gain.
    for f in r.variants.iter().filter(|v| v.roles.contains(&"fastest")) {
        assert!(f.request_s.unwrap() < longest.request_s.unwrap() * (1.0 - cfg.batch.min_gain));
    }
}

#[test]
fn a_smaller_micro_batch_is_found_when_its_compute_buffer_is_what_limits() {
    let cfg = config(|c| {
        c.batch.initial_medium = 2048;
        c.batch.max_batch = 2048;
        c.variants.ubatch = vec![2048, 256];
    });
    // 4096 tokens of context cost 512 MiB; a 2048-token micro-batch's compute buffer 1 GiB.
    let m = model(8.0);
    let r = run(&cfg, &m, &[]);
    let [big, small] = [&r.variants[0], &r.variants[1]];
    assert_eq!(big.max_loads, truth(&cfg, &m, &big.config));
    assert_eq!(small.max_loads, truth(&cfg, &m, &small.config));
    assert!(small.max_loads > big.max_loads);
    assert!(small.roles.contains(&"longest"));
    assert_eq!(r.context.validated, truth(&cfg, &m, &small.config));
    // The larger micro-batch reads prompts faster and is proven at the presets' contexts.
    assert!(big.prefill_tokens_per_s > small.prefill_tokens_per_s);
}

#[test]
fn at_equal_memory_the_faster_setting_is_chosen() {
    // Flash attention off costs no memory here (isolating speed) and reads prompts 27 % faster:
    // ROCm without rocWMMA, where turning it on costs 21 % of pp512.
    let cfg = config(|c| c.variants.flash_attn = vec!["on".into(), "off".into()]);
    let m = SimModel {
        fa_off_bytes_per_ctx_ubatch: 0,
        fa_off_prefill_factor: 1.0 / 0.79,
        fa_off_decode_factor: 1.0,
        ..model(12.0)
    };
    let r = run(&cfg, &m, &[]);
    let [on, off] = [&r.variants[0], &r.variants[1]];
    assert_eq!(on.max_loads, off.max_loads);
    assert!(off.roles.contains(&"longest"), "{:?}", r.variants);
    assert!(!on.roles.contains(&"longest"));
    let proof = r
        .configurations
        .iter()
        .find(|c| c.filled() && Some(c.config.ctx) == r.context.validated)
        .expect("the maximum proven filled");
    assert_eq!(proof.config.flash_attn, Some(FlashAttn::Off));
}

#[test]
fn a_pruned_variant_is_never_probed_and_says_why() {
    let cfg = config(|c| c.variants.cache_types = vec!["f16".into(), "q8_0".into()]);
    let m = model(12.0);
    let r = run(&cfg, &m, &[1]);
    assert_eq!(r.variants[1].max_loads, None);
    assert!(r.variants[1]
        .skipped
        .as_deref()
        .unwrap()
        .contains("predicted not to load"));
    assert!(r
        .configurations
        .iter()
        .all(|c| c.config.cache_type_k.as_deref() != Some("q8_0")));
    assert!(r
        .notes
        .iter()
        .any(|n| n.contains("kv q8_0") && n.contains("not probed")));
    assert_eq!(r.context.validated, truth(&cfg, &m, &r.variants[0].config));
}

#[test]
fn under_a_budget_every_variant_is_measured_or_said_to_be_cut() {
    for capacity in [8.0, 12.0, 24.0] {
        let mut cfg = config(|c| {
            c.variants.cache_types = vec!["f16".into(), "q8_0".into()];
            c.variants.ubatch = vec![512, 128];
            c.batch.initial_medium = 512;
            c.batch.max_batch = 512;
        });
        cfg.plan.floor_multiple = 2.0;
        let m = model(capacity);
        let r = run(&cfg, &m, &[]);
        assert_eq!(r.variants.len(), 4);
        for v in &r.variants {
            let cut = v
                .skipped
                .as_deref()
                .is_some_and(|s| s.starts_with("cut by the budget"));
            assert!(v.max_loads.is_some() != cut, "{capacity} GiB: {v:?}");
            if let Some(max) = v.max_loads {
                assert_eq!(Some(max), truth(&cfg, &m, &v.config), "{}", v.label);
            }
        }
        // The first variant is always measured: the run needs an answer.
        assert!(r.variants[0].max_loads.is_some());
    }
}

#[test]
fn of_two_builds_at_equal_memory_the_faster_is_chosen_and_each_runs_its_own_binary() {
    // ROCm reads prompts faster, Vulkan RADV decodes faster (serving-time.md, section B); at
    // equal memory the one serving a request at the ranking depth sooner wins.
    let bins = [
        "/opt/vulkan/llama-server".to_string(),
        "/opt/rocm/llama-server".to_string(),
    ];
    let m = SimModel {
        builds: vec![
            super::sim::SimBuild {
                bin: bins[0].clone(),
                prefill_factor: 0.7,
                decode_factor: 1.1,
                extra_bytes: 0,
            },
            super::sim::SimBuild {
                bin: bins[1].clone(),
                prefill_factor: 1.0,
                decode_factor: 1.0,
                extra_bytes: 0,
            },
        ],
        ..model(12.0)
    };
    let cfg = config(|_| {});
    let r = run_builds(&cfg, &m, &[], &bins);
    let [vulkan, rocm] = [&r.variants[0], &r.variants[1]];
    assert_eq!(vulkan.max_loads, rocm.max_loads);
    assert!(vulkan.decode_tokens_per_s > rocm.decode_tokens_per_s);
    assert!(rocm.prefill_tokens_per_s > vulkan.prefill_tokens_per_s);
    assert!(rocm.request_s < vulkan.request_s);
    assert!(rocm.roles.contains(&"longest"), "{:?}", r.variants);
    assert_eq!(r.context.validated, truth(&cfg, &m, &rocm.config));
    // Every measurement after the comparison runs the winning build.
    let after = r
        .configurations
        .iter()
        .filter(|c| c.stage != super::prober::Stage::Variant);
    for c in after {
        assert_eq!(
            c.config.server_bin.as_deref(),
            Some(bins[1].as_str()),
            "{}",
            c.id
        );
    }
}

#[test]
fn fewer_gpu_layers_are_the_way_to_serve_a_model_larger_than_the_device() {
    // A dense 70B Q4_K_M (42.5 GB of weights, 80 layers) on a 24 GiB GPU: whole, it does not
    // load; each layer left in system RAM frees device memory for context and slows the rates.
    let cfg = config(|c| c.variants.gpu_layers = vec![999, 44, 40, 32]);
    let m = SimModel {
        weights_bytes: 42_520_000_000,
        kv_bytes_per_token: 327_680,
        parameters: 70_553_706_496,
        block_count: 80,
        ..model(24.0)
    };
    let r = run(&cfg, &m, &[]);
    assert_eq!(r.variants[0].max_loads, None, "{:?}", r.variants[0]);
    for v in &r.variants {
        assert_eq!(v.max_loads, truth(&cfg, &m, &v.config), "{}", v.label);
    }
    let role = |n: i32| {
        let v = r.variants.iter().find(|v| v.config.gpu_layers == Some(n));
        v.unwrap().roles.clone()
    };
    // The fewest layers on the device loads the longest context; the most that load is the
    // fastest, and is proven at the presets' own contexts too.
    assert_eq!(role(32), ["longest"]);
    assert_eq!(role(44), ["fastest"]);
    assert_eq!(r.context.validated, truth(&cfg, &m, &r.variants[3].config));
    assert!(r
        .configurations
        .iter()
        .any(|c| c.filled() && c.stable && c.config.gpu_layers == Some(44)));
}
