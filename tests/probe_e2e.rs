//! `o3 probe` against a real LLM server doing real inference: llama-cpp-python's
//! OpenAI-compatible server with the project's tiny random-weight llama model (both installed
//! by `cargo xtask setup`; tests/server/README.md). Without them these tests skip with the
//! reason printed, unless O3_REQUIRE_SERVER=1 (CI), where that is a failure.

// A test may unwrap: a panic there is the failure, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

fn server() -> Option<(PathBuf, PathBuf)> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let python = std::env::var_os("O3_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cache/o3/venv/bin/python"));
    let model = std::env::var_os("O3_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cache/o3/models/o3-tiny-llama.gguf"));
    let ok = python.exists()
        && model.exists()
        && Command::new(&python)
            .args(["-c", "import llama_cpp.server"])
            .output()
            .is_ok_and(|o| o.status.success());
    if ok {
        return Some((python, model));
    }
    missing(
        "the test server is not installed",
        "`cargo xtask setup` installs it",
    )
}

fn launch(python: &std::path::Path) -> String {
    format!(
        "{} -m llama_cpp.server --model {{model}} --n_ctx {{ctx}} --n_batch {{batch}} --n_threads 2 --host {{host}} --port {{port}}",
        python.display()
    )
}

fn probe(extra: &[&str]) -> Option<(serde_json::Value, std::process::Output)> {
    let (python, model) = server()?;
    let out = o3()
        .args(["probe", "--backend", "openai", "--json", "--model"])
        .arg(&model)
        .arg("--launch")
        .arg(launch(&python))
        .args(extra)
        .output()
        .unwrap();
    let v = last_json(&out);
    Some((v, out))
}

#[test]
fn probes_at_several_contexts_and_batches_with_real_inference() {
    for (ctx, batch) in [("1024", "64"), ("4096", "256")] {
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
        assert_eq!(r["outcome"], "ok");
        let ctx: u64 = ctx.parse().unwrap();
        // 90 % of the context minus the output, really filled (counted by the server).
        let target = i(&r["prompt_tokens_target"]) as u64;
        assert_eq!(target, (ctx as f64 * 0.9) as u64 - 12);
        let samples = r["samples"].as_array().unwrap();
        assert_eq!(samples.len(), 2);
        let prompts: Vec<i64> = samples.iter().map(|s| i(&s["prompt_tokens"])).collect();
        for (s, n) in samples.iter().zip(&prompts) {
            assert_eq!(s["outcome"], "ok");
            assert_eq!(s["prompt_tokens_source"], "server_tokenizer");
            // Fitted word by word with the server's tokenizer: never over, a few tokens under
            // at most (a word can be several tokens).
            assert!(
                *n as u64 <= target && *n as u64 + 8 >= target,
                "{n} vs {target}"
            );
            assert!(s["ttft_ms"].as_f64().unwrap() > 0.0);
            assert!(s["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
            assert!(s["prefill_tokens_per_s"].as_f64().unwrap() > 0.0);
            assert!(i(&s["output_tokens"]) >= 1);
        }
        // Measured by the kernel programs where they load (root; required in CI).
        let want = if nix::unistd::geteuid().is_root() {
            "ebpf"
        } else {
            "procfs_polling"
        };
        assert_eq!(r["rss_method"], want, "{r}");
        // The server's tree held the model: its peak RSS is real and over the file size.
        assert!(
            i(&r["rss_peak_bytes"]) > 13 << 20,
            "{}",
            r["rss_peak_bytes"]
        );
        assert!(r["fixed_by_server"].as_array().unwrap().is_empty());
    }
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
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(r["outcome"], "context_exceeded", "{r}");
    assert!(r["error"].as_str().unwrap().contains("context"), "{r}");
}

#[test]
fn a_bad_model_path_is_refused_before_the_server_starts() {
    let Some((python, _)) = server() else { return };
    let out = o3()
        .args([
            "probe",
            "--backend",
            "openai",
            "--json",
            "--model",
            "/nonexistent/model.gguf",
        ])
        .args(["--ctx", "512", "--batch", "64", "--launch"])
        .arg(launch(&python))
        .output()
        .unwrap();
    // Refused by the pre-flight check before a server starts: one line, exit 2.
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "o3: model file /nonexistent/model.gguf does not exist: give the path of a GGUF file with --model"
    );
}

#[test]
fn a_bad_server_path_is_refused_before_anything_starts() {
    let Some((_, model)) = server() else { return };
    let out = o3()
        .args(["probe", "--backend", "openai", "--json", "--model"])
        .arg(&model)
        .args([
            "--ctx",
            "512",
            "--launch",
            "/nonexistent/server --c {ctx} --p {port}",
        ])
        .output()
        .unwrap();
    // Refused by the pre-flight check before anything starts: one line, exit 2.
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "o3: --launch's program `/nonexistent/server` is not found (check the name and PATH)"
    );
}

#[test]
fn killing_the_server_mid_stream_is_crashed() {
    let Some((python, model)) = server() else {
        return;
    };
    // The server's output goes into a FIFO the test reads (a shell opens it, then becomes the
    // server): its access log says when a completion starts streaming.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    nix::unistd::mkfifo(&log, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let mut lines = Lines::open(log.clone());
    let launch = format!(
        "sh -c 'exec \"$0\" -m llama_cpp.server --model \"$1\" --n_ctx \"$2\" --n_batch \"$3\" \
         --n_threads 2 --host \"$4\" --port \"$5\" >{} 2>&1' {} {{model}} {{ctx}} {{batch}} {{host}} {{port}}",
        log.display(),
        python.display()
    );
    let child = o3()
        .args(["probe", "--backend", "openai", "--json", "--model"])
        .arg(&model)
        .args(["--ctx", "8192", "--batch", "256", "--samples", "5"])
        .args(["--output-tokens", "4000", "--launch"])
        .arg(launch)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The first completion is the warm-up; the second is the first measured request.
    let started = "\"POST /v1/completions HTTP/1.1\" 200";
    lines.wait_for(started, Duration::from_secs(120));
    lines.wait_for(started, Duration::from_secs(120));
    // The server is o3's only child (the shell became it).
    let o3_pid = child.id();
    let children = std::fs::read_to_string(format!("/proc/{o3_pid}/task/{o3_pid}/children"))
        .unwrap_or_default();
    let servers: Vec<u32> = children
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(servers.len(), 1, "o3's children: {children:?}");
    signal(servers[0], nix::sys::signal::Signal::SIGKILL);
    let out = child.wait_with_output().unwrap();
    let r: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(r["outcome"], "crashed", "{r}");
    assert!(
        r["server_exit"]
            .as_str()
            .unwrap()
            .contains("signal: Some(9)"),
        "{r}"
    );
}

#[test]
fn a_template_without_port_is_a_config_error_before_anything_starts() {
    let out = o3()
        .args([
            "probe",
            "--backend",
            "openai",
            "--model",
            "m",
            "--ctx",
            "512",
        ])
        .args(["--launch", "server --ctx {ctx}"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no {port}"), "{err}");
    assert_eq!(err.trim().lines().count(), 1);
}

#[test]
fn a_safety_breach_stops_the_server_and_is_safety_abort() {
    // A RAM limit of 1 % is crossed on the first sample: the watchdog stops the server.
    let Some((r, out)) = probe(&[
        "--ctx",
        "1024",
        "--batch",
        "64",
        "--samples",
        "3",
        "--safety",
        "--max-ram-percent",
        "1",
    ]) else {
        return;
    };
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(r["outcome"], "safety_abort", "{r}");
    assert!(r["error"].as_str().unwrap().contains("ram_percent"), "{r}");
}
