//! `o3 probe --backend ollama` against the deterministic Ollama simulator
//! (tests/sim/ollama_sim.py, which speaks the Ollama API subset o3 uses; its memory model and
//! speeds are known, so the outcomes and rates asserted here are the simulator's truth).

// A test may unwrap: a panic there is the failure, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

fn probe(s: &Sim, model: &str, args: &[&str]) -> serde_json::Value {
    let out = o3()
        .args([
            "probe",
            "--backend",
            "ollama",
            "--json",
            "--url",
            &s.url,
            "--model",
            model,
        ])
        .args(args)
        .output()
        .unwrap();
    last_json(&out)
}

#[test]
fn a_configuration_that_fits_is_measured_with_the_servers_timings() {
    let s = sim(|_| {});
    let r = probe(
        &s,
        "sim-llama:8b",
        &["--ctx", "8192", "--batch", "512", "--samples", "2"],
    );
    assert_eq!(r["outcome"], "ok", "{r}");
    let target = i(&r["prompt_tokens_target"]);
    assert_eq!(target, (8192.0 * 0.9) as i64 - 32);
    for smp in r["samples"].as_array().unwrap() {
        assert_eq!(smp["rates_source"], "server");
        assert_eq!(smp["prompt_tokens_source"], "server_reported");
        // Calibrated against the server's own count: within 3 % of the target.
        let n = i(&smp["prompt_tokens"]);
        assert!((n - target).abs() * 100 <= target * 3, "{n} vs {target}");
        // Truth: decode = 62 / (1 + 8192/32768) = 49.6 tok/s, noise CV 3 %.
        let d = smp["decode_tokens_per_s"].as_f64().unwrap();
        assert!((d / 49.6 - 1.0).abs() < 0.15, "decode {d}");
    }
    // Batch is a real per-request option; ubatch is not. The result also goes to a trace.
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("probe.jsonl");
    let r = probe(
        &s,
        "sim-llama:8b",
        &[
            "--ctx",
            "4096",
            "--ubatch",
            "128",
            "--samples",
            "1",
            "--out",
            trace.to_str().unwrap(),
        ],
    );
    assert_eq!(r["fixed_by_server"], serde_json::json!(["ubatch"]));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // A header, the samples of the server's tree taken during the probe, then the result.
    assert_eq!(lines[0]["type"], "header");
    let last = lines.last().unwrap();
    assert_eq!(last["type"], "probe");
    assert_eq!(last["outcome"], r["outcome"]);
    assert!(lines[1..lines.len() - 1]
        .iter()
        .all(|l| l["type"] == "sample"));
}

#[test]
fn too_large_a_context_is_oom() {
    // Truth: at batch 512 the model fits up to num_ctx 58207.
    let s = sim(|_| {});
    let r = probe(
        &s,
        "sim-llama:8b",
        &["--ctx", "65536", "--batch", "512", "--samples", "1"],
    );
    assert_eq!(r["outcome"], "oom", "{r}");
}

#[test]
fn spill_and_clamping_are_not_successes() {
    let s = sim(|c| c["spill"] = true.into());
    let r = probe(
        &s,
        "sim-llama:8b",
        &["--ctx", "65536", "--batch", "512", "--samples", "1"],
    );
    assert_eq!(r["outcome"], "cpu_spill", "{r}");
    let s = sim(|c| c["capacity_bytes"] = (1u64 << 50).into());
    let r = probe(
        &s,
        "sim-llama:8b",
        &[
            "--ctx",
            "200000",
            "--batch",
            "512",
            "--samples",
            "1",
            "--max-prompt-tokens",
            "1000",
        ],
    );
    assert_eq!(r["outcome"], "clamped", "{r}");
    assert!(r["error"].as_str().unwrap().contains("131072"), "{r}");
}

#[test]
fn unknown_model_lists_what_the_server_has() {
    let s = sim(|_| {});
    let out = o3()
        .args(["probe", "--backend", "ollama", "--json", "--url", &s.url])
        .args(["--model", "nope:1b", "--ctx", "4096", "--samples", "1"])
        .output()
        .unwrap();
    // The pre-flight check asks /api/tags before any request: one line, exit 2.
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "o3: the Ollama at {} has no model `nope:1b` (it has: sim-llama:8b",
            s.url
        )),
        "{err}"
    );
}

#[test]
fn unreachable_server_is_named() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let out = o3()
        .args(["probe", "--backend", "ollama", "--json", "--url", &url])
        .args(["--model", "m", "--ctx", "4096"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!("o3: no Ollama answers at {url} (")),
        "{err}"
    );
}
