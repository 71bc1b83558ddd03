//! `o3 probe --backend llama-server` against llama.cpp's real `llama-server` doing real
//! inference with the project's tiny random-weight llama model. `cargo xtask setup` builds the
//! binary from the llama.cpp vendored in llama-cpp-python's sdist
//! (~/.cache/o3/llama-server/bin/llama-server; `cargo xtask test` passes it as
//! O3_TEST_LLAMA_SERVER) and makes the model. Without them these tests skip with the reason
//! printed, unless O3_REQUIRE_SERVER=1 (CI), where that is a failure.

// A test may unwrap: a panic there is the failure, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Output;

use common::*;
use serde_json::Value;

/// The last stdout line as JSON, with the whole output on failure.
/// `o3 probe --backend llama-server --json` with `model` (None: the test model) and `extra`.
fn probe_with(model: Option<&str>, extra: &[&str]) -> Option<(Value, Output)> {
    let (bin, test_model) = server()?;
    let out = o3()
        .args([
            "probe",
            "--backend",
            "llama-server",
            "--json",
            "--server-bin",
        ])
        .arg(&bin)
        .arg("--model")
        .arg(model.map_or(test_model, PathBuf::from))
        .args(extra)
        .output()
        .unwrap();
    Some((last_json(&out), out))
}

fn probe(extra: &[&str]) -> Option<(Value, Output)> {
    probe_with(None, extra)
}

#[test]
fn probes_at_two_contexts_and_batches_with_the_servers_own_timings() {
    for (ctx, batch) in [("1024", "64"), ("2048", "128")] {
        let Some((r, out)) = probe(&[
            "--ctx",
            ctx,
            "--batch",
            batch,
            "--samples",
            "2",
            "--output-tokens",
            "12",
        ]) else {
            return;
        };
        assert_eq!(out.status.code(), Some(0), "{r}");
        assert_eq!(r["outcome"], "ok", "{r}");
        assert_eq!(r["config"]["ctx"], ctx.parse::<u64>().unwrap());
        assert_eq!(r["config"]["batch"], batch.parse::<u64>().unwrap());
        // llama-server is started with every value explicit: nothing is fixed by the server.
        assert!(r["fixed_by_server"].as_array().unwrap().is_empty(), "{r}");
        let ctx: u64 = ctx.parse().unwrap();
        // 90 % of the context minus the output.
        let target = i(&r["prompt_tokens_target"]) as u64;
        assert_eq!(target, (ctx as f64 * 0.9) as u64 - 12);
        let samples = r["samples"].as_array().unwrap();
        assert_eq!(samples.len(), 2, "{r}");
        for s in samples {
            assert_eq!(s["outcome"], "ok", "{r}");
            // Fitted with llama-server's /tokenize: never over, a few tokens under at most.
            assert_eq!(s["prompt_tokens_source"], "server_tokenizer", "{r}");
            let n = i(&s["prompt_tokens"]) as u64;
            assert!(n <= target && n + 8 >= target, "{n} vs {target}");
            // The rates come from llama-server's `timings`, not from the client's clock.
            assert_eq!(s["rates_source"], "server", "{r}");
            assert!(s["prefill_tokens_per_s"].as_f64().unwrap() > 0.0, "{r}");
            assert!(s["decode_tokens_per_s"].as_f64().unwrap() > 0.0, "{r}");
            assert!(s["ttft_ms"].as_f64().unwrap() > 0.0, "{r}");
            let produced = i(&s["output_tokens"]);
            assert!((1..=12).contains(&produced), "{r}");
        }
        // The server's tree held the model: its peak RSS is real and over the file size.
        assert!(
            i(&r["rss_peak_bytes"]) > 13 << 20,
            "{}",
            r["rss_peak_bytes"]
        );
        assert!(r["server_pid"].as_u64().is_some(), "{r}");
    }
}

#[test]
fn a_ubatch_larger_than_the_batch_is_refused_before_the_server_starts() {
    let Some((r, out)) = probe(&["--ctx", "512", "--batch", "64", "--ubatch", "128"]) else {
        return;
    };
    assert_eq!(out.status.code(), Some(3), "{r}");
    assert_eq!(r["outcome"], "load_failed", "{r}");
    let error = r["error"].as_str().unwrap();
    // llama.cpp would silently clamp ubatch to batch; o3 refuses instead, naming both.
    assert!(error.contains("ubatch 128 > batch 64"), "{r}");
    assert!(r["server_pid"].is_null(), "a server was started: {r}");
    assert!(r["samples"].as_array().unwrap().is_empty(), "{r}");
}

#[test]
fn a_prompt_longer_than_the_context_is_context_exceeded() {
    let Some((r, out)) = probe(&[
        "--ctx",
        "512",
        "--batch",
        "64",
        "--samples",
        "1",
        "--prompt-tokens",
        "900",
    ]) else {
        return;
    };
    assert_eq!(out.status.code(), Some(3), "{r}");
    assert_eq!(r["outcome"], "context_exceeded", "{r}");
    // llama-server's own refusal (HTTP 400), not a guess on the client.
    let error = r["error"].as_str().unwrap();
    assert!(error.contains("exceed_context_size_error"), "{r}");
    assert!(error.contains("context"), "{r}");
    let samples = r["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 1, "{r}");
    assert_eq!(samples[0]["outcome"], "context_exceeded", "{r}");
    // The server stays up: the request was refused, nothing crashed.
    assert!(r["server_exit"].is_null(), "{r}");
}

#[test]
fn a_missing_model_file_is_refused_before_the_server_starts() {
    let Some((bin, _)) = server() else { return };
    let out = o3()
        .args(["probe", "--backend", "llama-server", "--server-bin"])
        .arg(&bin)
        .args(["--model", "/nonexistent/model.gguf", "--ctx", "512"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "o3: model file /nonexistent/model.gguf does not exist: give the path of a GGUF file with --model"
    );
}

#[test]
fn a_chat_stream_beside_a_stream_at_depth_is_reported_apart() {
    let Some((r, out)) = probe(&[
        "--ctx",
        "1024",
        "--batch",
        "64",
        "--parallel",
        "2",
        "--concurrency",
        "2",
        "--chat-streams",
        "1",
        "--samples",
        "2",
        "--output-tokens",
        "8",
    ]) else {
        return;
    };
    assert_eq!(out.status.code(), Some(0), "{r}");
    assert_eq!(r["outcome"], "ok", "{r}");
    let samples = r["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 4, "{r}");
    for s in samples {
        assert_eq!(s["outcome"], "ok", "{r}");
        // Stream 0 stays at depth (a fill, then its prefix reused); stream 1 sends chat turns.
        let (kind, stream) = (s["kind"].as_str().unwrap(), i(&s["stream"]));
        match stream {
            0 => assert!(kind == "fill" || kind == "cached", "{r}"),
            _ => assert_eq!(kind, "chat", "{r}"),
        }
    }
    let chat: Vec<_> = samples.iter().filter(|s| s["kind"] == "chat").collect();
    let target = i(&r["prompt_tokens_target"]);
    for s in &chat {
        // A short turn (64 words), far below the target at depth.
        let n = i(&s["prompt_tokens"]);
        assert!(n > 0 && n < target / 4, "{n} vs {target}: {r}");
    }
    let kinds = r["kinds"].as_array().unwrap();
    assert_eq!(kinds.len(), 2, "{r}");
    for (k, name) in kinds.iter().zip(["chat", "long"]) {
        assert_eq!(k["kind"], name, "{r}");
        assert_eq!(k["streams"], 1, "{r}");
        assert_eq!(k["n"], 2, "{r}");
        assert_eq!(k["ok"], 2, "{r}");
        assert!(k["ttft_p50_ms"].as_f64().unwrap() > 0.0, "{r}");
        assert!(k["ttft_p95_ms"].as_f64().unwrap() > 0.0, "{r}");
        assert!(
            k["decode_tokens_per_s_median"].as_f64().unwrap() > 0.0,
            "{r}"
        );
    }
}

#[test]
fn chat_streams_must_leave_a_stream_at_depth() {
    // Refused before any model or server is looked at.
    let out = o3()
        .args([
            "probe",
            "--backend",
            "llama-server",
            "--model",
            "/nonexistent.gguf",
        ])
        .args(["--ctx", "512", "--concurrency", "2", "--chat-streams", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "--chat-streams 2 leaves no stream at depth among --concurrency 2; give at most 1"
        ),
        "{err}"
    );
}

/// `o3 probe` with lists sweeps every combination, one row per configuration as each finishes
/// (llama-bench's habit): the rows follow the lists' order, each row's configuration is the one
/// its server ran (the JSON results say so), and `--out` gets a trace per configuration.
#[test]
fn a_sweep_prints_one_row_per_configuration_in_each_format() {
    let Some((bin, model)) = server() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sweep = |format: &str, out: Option<&std::path::Path>| {
        let mut c = o3();
        c.args(["probe", "--server-bin"])
            .arg(&bin)
            .arg("--model")
            .arg(&model)
            .args(["--ctx", "512,1024", "--batch", "64,128", "--samples", "1"])
            .args(["--output-tokens", "4", "-o", format]);
        if let Some(p) = out {
            c.arg("--out").arg(p);
        }
        c.output().unwrap()
    };
    let order = [(512, 64), (512, 128), (1024, 64), (1024, 128)];
    let out = sweep("csv", Some(&dir.path().join("sweep.jsonl")));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(
        lines[0].starts_with("ctx,batch,ubatch,parallel,outcome,"),
        "{text}"
    );
    for (line, (ctx, batch)) in lines[1..].iter().zip(order) {
        assert!(line.starts_with(&format!("{ctx},{batch},,1,ok,")), "{line}");
    }
    for (ctx, batch) in order {
        let trace = dir.path().join(format!("sweep-c{ctx}-b{batch}.jsonl"));
        assert!(trace.is_file(), "{}", trace.display());
    }
    let out = sweep("json", None);
    let all: Value = serde_json::from_slice(&out.stdout).unwrap();
    let got: Vec<(i64, i64)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (i(&r["config"]["ctx"]), i(&r["config"]["batch"])))
        .collect();
    assert_eq!(got, order.map(|(c, b)| (c, b)).to_vec());
    let out = sweep("md", None);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 6, "{text}");
    assert!(
        text.lines().nth(1).unwrap().starts_with("| ---: |"),
        "{text}"
    );
}
