//! `o3 accuracy` against stores built in a temporary folder: one block per model, the place
//! taken from the records (GPU peaks: GPU memory; RSS alone: RAM), the counts of what was held
//! out; a missing store, a model without records and a filter matching nothing are one line.

// A test may unwrap: a panic there is the failure, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Output;

use o3::backend::{OutcomeClass, ProbeConfig};
use o3::learn::fingerprint::Host;
use o3::learn::store::Store;
use o3::learn::{ModelShape, Record};
use serde_json::Value;

const GIB: u64 = 1 << 30;
const CAP: u64 = 12 * GIB;

/// Llama 3.1 8B Q4_K_M.
fn shape() -> ModelShape {
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

/// A probe at `ctx` and `batch`: the peak is the weights, the f16 KV cache (128 KiB a token),
/// 300 MiB and 0.5 MiB per batch token; it fails above the capacity.
fn probe(ctx: u32, batch: u32, gpu: bool) -> Record {
    let peak =
        4_920_734_720 + 131_072 * u64::from(ctx) + (300 << 20) + (512 << 10) * u64::from(batch);
    let ok = peak <= CAP;
    Record {
        host_id: String::new(),
        model_id: String::new(),
        config: ProbeConfig {
            ctx,
            batch: Some(batch),
            ..ProbeConfig::default()
        },
        concurrency: 1,
        outcome: if ok {
            OutcomeClass::Ok
        } else {
            OutcomeClass::Oom
        },
        success: ok,
        prefill_tokens_per_s: ok.then_some(300.0 * f64::from(batch).sqrt()),
        decode_tokens_per_s: ok.then_some(60.0 / (1.0 + f64::from(ctx) / 65536.0)),
        ttft_ms: None,
        rss_peak_bytes: (ok && !gpu).then_some(peak),
        gpu_used_peak_bytes: (ok && gpu).then_some(peak),
        capacity_bytes: Some(CAP),
        model: shape(),
        trusted: true,
        unix_s: 1_760_000_000,
        prompt_tokens: None,
        proven_at_depth: None,
        timing: Vec::new(),
    }
}

/// The probes of one run: contexts doubling from 4k to 128k at batches 256 and 1024.
fn probes(gpu: bool) -> Vec<Record> {
    let mut out = Vec::new();
    for batch in [256, 1024] {
        for k in 2..=7 {
            out.push(probe(1024 << k, batch, gpu));
        }
    }
    out
}

/// A store with model "llama3.1:8b" measured on a GPU, "qwen2.5:7b" in RAM and "mistral:7b"
/// never measured.
fn store(db: &Path) {
    let s = Store::open(db).unwrap();
    let h = s
        .upsert_host(&Host {
            cpu_model: "AMD Ryzen 9 7950X".into(),
            cpu_cores: 16,
            ram_bytes: 64 << 30,
            gpus: Vec::new(),
            kernel: "6.18.1".into(),
            rocm_version: None,
            vulkan_driver: None,
            cuda_driver: None,
        })
        .unwrap();
    for (name, gpu) in [("llama3.1:8b", true), ("qwen2.5:7b", false)] {
        let m = s.upsert_model(name, "", &shape()).unwrap();
        let run = s.begin_run(&h, &m, "llama-server", "/tmp/r", "{}").unwrap();
        for mut r in probes(gpu) {
            (r.host_id, r.model_id) = (h.clone(), m.clone());
            s.add_probe(run, "context", &r, None).unwrap();
        }
    }
    s.upsert_model("mistral:7b", "", &ModelShape::default())
        .unwrap();
}

fn accuracy(db: &Path, args: &[&str]) -> Output {
    common::o3()
        .arg("accuracy")
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn one_block_per_model_with_what_was_held_out() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("o3.db");
    store(&db);
    let all = probes(true);
    let ok = all.iter().filter(|r| r.success).count();
    assert!(ok >= 4 && ok < all.len(), "both outcomes: {ok}");
    let mut contexts: Vec<u32> = all
        .iter()
        .filter(|r| r.success)
        .map(|r| r.config.ctx)
        .collect();
    contexts.sort_unstable();
    contexts.dedup();

    let out = accuracy(&db, &[]);
    assert!(out.status.success(), "{out:?}");
    let t = text(&out.stdout);
    assert!(
        t.contains(&format!(
            "model llama3.1:8b (GPU memory; {} records)\n  memory: {ok} measured peak(s); fitted: median ",
            all.len()
        )),
        "{t}"
    );
    assert!(
        t.contains(&format!(
            "a context held out ({} contexts): median ",
            contexts.len()
        )),
        "{t}"
    );
    assert!(
        t.contains(&format!(
            "  rates (leave one out, {ok} measurements): prefill median "
        )),
        "{t}"
    );
    assert!(
        t.contains(&format!(
            "  P(success) (leave one out, {} records; {ok} succeeded): Brier ",
            all.len()
        )),
        "{t}"
    );
    assert!(t.contains("model qwen2.5:7b (RAM; "), "{t}");
    assert!(
        t.contains("model mistral:7b: no records yet (o3 optimize stores its probes)\n"),
        "{t}"
    );
    // By name.
    let at = |m: &str| t.find(&format!("model {m}")).unwrap();
    assert!(at("llama3.1:8b") < at("mistral:7b") && at("mistral:7b") < at("qwen2.5:7b"));

    let out = accuracy(&db, &["--json", "--model", "llama"]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["max_held_out_records"], 60);
    let models = v["models"].as_array().unwrap();
    assert_eq!(models.len(), 1, "{v}");
    let m = &models[0];
    assert_eq!(
        (m["model"].as_str(), m["place"].as_str()),
        (Some("llama3.1:8b"), Some("gpu"))
    );
    assert_eq!(m["memory"]["points"], ok);
    assert_eq!(m["memory"]["held_out_points"], ok);
    assert_eq!(m["memory"]["held_out_contexts"], contexts.len());
    assert!(m["memory"]["held_out_worst_error_pct"].is_f64(), "{m}");
    assert!(m["memory"]["held_out_in_range"].as_u64().unwrap() <= ok as u64);
    assert_eq!(m["rates"]["measurements"], ok);
    assert_eq!(m["rates"]["decode_points"], ok);
    assert_eq!(m["success"]["records"], all.len());
    assert_eq!(m["success"]["evaluated"], all.len());
    for k in ["brier_predictor", "brier_memory_model"] {
        let b = m["success"][k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&b), "{k} {b}");
    }
}

#[test]
fn nothing_to_measure_is_one_line() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("o3.db");
    let out = accuracy(&db, &[]);
    assert!(out.status.success(), "{out:?}");
    let t = text(&out.stdout);
    assert_eq!(t.lines().count(), 1, "{t}");
    assert!(t.starts_with("no history yet: "), "{t}");

    store(&db);
    let out = accuracy(&db, &["--model", "gemma"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("has a name containing \"gemma\": o3 history lists the models measured"),
        "{err}"
    );
    let out = accuracy(&db, &["--model", "mistral"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        "model mistral:7b: no records yet (o3 optimize stores its probes)\n"
    );
}
