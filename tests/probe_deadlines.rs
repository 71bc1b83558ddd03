//! Request deadlines against the real llama-server (the tiny test model, real inference): a
//! request that keeps making progress lives as long as it needs, however slow; a server that
//! stops mid-prefill is a `timeout` (stalled) within the stall bound, and is cleaned up. The
//! server is slowed or stopped from outside with SIGSTOP/SIGCONT, so the verdicts do not depend
//! on how fast this machine is: the test checks that the slowing really happened.

// A test may unwrap: a panic there is the failure, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The request timeout earlier versions computed, `base + per_1k × ctx / 1000 + per_batch ×
/// batch` within `[min, max]`, with its keys shrunk to `base 1 s, per_1k 0, per_batch 0, min 1 s,
/// max 1 s`: what this test's request must outlive.
fn old_formula_s(ctx: u32, batch: u32) -> f64 {
    let (base, per_1k, per_batch, min, max) = (1.0, 0.0, 0.0, 1.0, 1.0);
    (base + per_1k * f64::from(ctx) / 1000.0 + per_batch * f64::from(batch)).clamp(min, max)
}

/// The llama-server child of process `parent`, once it runs.
fn server_child(parent: u32, bin: &Path) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        let argv0 = String::from_utf8_lossy(args[0]);
        // The server, not the `--help` o3 reads its flags from.
        let serving = args.iter().any(|a| *a == b"--port");
        if ppid == Some(parent) && Path::new(&*argv0) == bin && serving {
            return Some(pid);
        }
    }
    None
}

fn wait_for_server(parent: u32, bin: &Path) -> u32 {
    let t0 = Instant::now();
    loop {
        if let Some(p) = server_child(parent, bin) {
            return p;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no server started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `--port` of the server process.
fn port_of(pid: u32) -> u16 {
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmd
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let i = args.iter().position(|a| a == "--port").expect("--port");
    args[i + 1].parse().unwrap()
}

/// Prompt tokens the busy slot has read of the prompt it is processing (`GET /slots`), if any.
fn slot_progress(port: u16) -> Option<u64> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /slots HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    // The server may keep the connection open: what arrived before the timeout is the answer.
    let _ = s.read_to_string(&mut text);
    let body = text.split_once("\r\n\r\n")?.1;
    let v: Value = serde_json::from_str(body).ok()?;
    // The server may have several slots (its default slot count): the busy one.
    v.as_array()?
        .iter()
        .find(|slot| slot["is_processing"] == true)
        .and_then(|slot| slot["n_prompt_tokens_processed"].as_u64())
}

/// Signals a server process this test's o3 started.
fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// Stops and continues `server` in turns (`stop_ms` stopped, `run_ms` running) until `done`.
fn throttle(
    server: u32,
    stop_ms: u64,
    run_ms: u64,
    done: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !done.load(Ordering::SeqCst) {
            signal(server, nix::sys::signal::Signal::SIGSTOP);
            std::thread::sleep(Duration::from_millis(stop_ms));
            if done.load(Ordering::SeqCst) {
                break;
            }
            signal(server, nix::sys::signal::Signal::SIGCONT);
            std::thread::sleep(Duration::from_millis(run_ms));
        }
    })
}

fn probe_args(bin: &Path, model: &Path, ctx: &str, stall: &str) -> std::process::Command {
    let mut c = o3();
    c.args([
        "probe",
        "--backend",
        "llama-server",
        "--json",
        "--server-bin",
    ])
    .arg(bin)
    .arg("--model")
    .arg(model)
    .args(["--ctx", ctx, "--batch", "32", "--ubatch", "32"])
    .args(["--samples", "1", "--output-tokens", "4", "--fresh-prompts"])
    .args(["--stall", stall])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    c
}

#[test]
fn a_request_that_makes_progress_outlives_the_old_formulas_deadline() {
    let Some((bin, model)) = server() else {
        return;
    };
    let mut child = probe_args(&bin, &model, "4096", "3s").spawn().unwrap();
    let server = wait_for_server(child.id(), &bin);
    let port = port_of(server);
    // Each time the busy slot is seen to have read more of the measured prompt (the warm-up's
    // is about 80 tokens), the server is stopped for 400 ms: the request is slowed by that much
    // per step seen, however fast this machine is, and still reports progress every step, far
    // inside the 3 s stall bound.
    const STOPS: u32 = 8;
    let (mut stops, mut last) = (0u32, 0u64);
    while child.try_wait().unwrap().is_none() {
        if stops < STOPS {
            if let Some(n) = slot_progress(port).filter(|&n| n >= 256 && n > last) {
                last = n;
                signal(server, nix::sys::signal::Signal::SIGSTOP);
                std::thread::sleep(Duration::from_millis(400));
                signal(server, nix::sys::signal::Signal::SIGCONT);
                stops += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        stops, STOPS,
        "the prompt was read before {STOPS} steps of it were seen"
    );
    let r = last_json(&out);
    assert_eq!(r["outcome"], "ok", "{r}");
    let fill = &r["samples"][0];
    assert_eq!(fill["kind"], "fresh");
    assert!(fill["timeout"].is_null(), "{fill}");
    let e2e_s = fill["e2e_ms"].as_f64().unwrap() / 1000.0;
    let old = old_formula_s(4096, 32);
    // Stopped 8 × 400 ms while it ran: it outlived the old deadline at least three times over.
    assert!(e2e_s >= 3.2 && 3.2 > 3.0 * old, "{e2e_s:.1} s vs {old} s");
    assert_eq!(
        fill["prompt_tokens"].as_u64().unwrap() as f64,
        r["prompt_tokens_target"].as_f64().unwrap(),
        "{fill}"
    );
}

#[test]
fn a_server_stopped_mid_prefill_is_a_stall_within_its_bound_and_is_cleaned_up() {
    let Some((bin, model)) = server() else {
        return;
    };
    // Throttled as above so the prefill lasts long enough to be caught in the middle.
    let child = probe_args(&bin, &model, "4096", "2s").spawn().unwrap();
    let server = wait_for_server(child.id(), &bin);
    let port = port_of(server);
    let done = Arc::new(AtomicBool::new(false));
    let slow = throttle(server, 150, 50, done.clone());
    // Mid-prefill: the busy slot has read more than the warm-up's prompt (about 80 tokens) of the
    // measured one (3670).
    let t0 = Instant::now();
    let stopped_at = loop {
        assert!(t0.elapsed() < Duration::from_secs(120), "never mid-prefill");
        if slot_progress(port).is_some_and(|n| (512..3000).contains(&n)) {
            done.store(true, Ordering::SeqCst);
            slow.join().unwrap();
            signal(server, nix::sys::signal::Signal::SIGSTOP);
            break Instant::now();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = child.wait_with_output().unwrap();
    let waited = stopped_at.elapsed().as_secs_f64();
    let r = last_json(&out);
    assert_eq!(r["outcome"], "timeout", "{r}");
    let s = &r["samples"][0];
    assert_eq!(s["timeout"], "stalled", "{s}");
    let error = s["error"].as_str().unwrap();
    assert!(error.starts_with("stalled: no progress for"), "{error}");
    // The stall bound is the 2 s floor, or 3 × the time model's upper estimate of one batch of
    // 32 tokens at this depth when that is longer (the throttled warm-up taught it this server
    // is slow): detected within it, and the stopped server is continued, told to stop and
    // reaped.
    let bound: f64 = error
        .split("(bound ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|t| t.parse().ok())
        .unwrap();
    assert!((2.0..=10.0).contains(&bound), "{error}");
    assert!(
        waited < bound + 6.0,
        "o3 ended {waited:.1} s after the stop"
    );
    assert!(
        !Path::new(&format!("/proc/{server}")).exists(),
        "the stopped server {server} is still there"
    );
}

#[test]
fn samples_after_the_fill_are_served_from_the_prefix_cache() {
    let Some((bin, model)) = server() else {
        return;
    };
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
        .arg(&model)
        .args(["--ctx", "4096", "--batch", "128", "--samples", "4"])
        .args(["--output-tokens", "8"])
        .output()
        .unwrap();
    let r = last_json(&out);
    assert_eq!(r["outcome"], "ok", "{r}");
    assert_eq!(r["prefix_reuse"], true, "{r}");
    let samples = r["samples"].as_array().unwrap();
    assert_eq!(samples[0]["kind"], "fill");
    let target = r["prompt_tokens_target"].as_u64().unwrap();
    for s in &samples[1..] {
        assert_eq!(s["kind"], "cached", "{s}");
        let prompt = s["prompt_tokens"].as_u64().unwrap();
        let cached = s["cached_tokens"].as_u64().unwrap();
        assert!(prompt <= target && prompt + 8 >= target, "{s}");
        assert!(
            cached as f64 >= 0.9 * prompt as f64,
            "cache_n {cached} of {prompt}: {s}"
        );
    }
    // Whole-prompt TTFT and cached TTFT are apart: the fill read its whole prompt, the others
    // only their suffix (the server's counts, not times).
    // (A few tokens of a common start, the BOS and the tag's opening, may come from the slot.)
    assert!(
        samples[0]["cached_tokens"].as_u64().unwrap() <= 16,
        "{}",
        samples[0]
    );
    assert!(samples.iter().all(|s| s["ttft_ms"].as_f64().is_some()));
    // The server's answers became spans for the time model: the load, the prompt read batch
    // by batch (progress events), the decode.
    let kinds: Vec<&str> = r["timing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"load") && kinds.contains(&"decode"));
    assert!(
        kinds.iter().filter(|k| **k == "prefill").count() >= 3,
        "{kinds:?}"
    );
}
