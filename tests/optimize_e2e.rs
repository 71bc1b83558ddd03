//! `o3 optimize` end to end against llama.cpp's real llama-server doing real inference with the
//! tiny test model (built by `cargo xtask setup`), measured with eBPF when run as root: a short
//! configuration (config/short.yaml) produces validated presets and the artefacts users paste.

// A test may unwrap: a panic there is the failure, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

fn short_config() -> String {
    fixtures()
        .join("../../config/short.yaml")
        .to_string_lossy()
        .into_owned()
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario end to end, each step asserted in order
fn a_short_optimization_produces_presets_and_artefacts() {
    let Some((bin, model)) = server() else {
        return;
    };
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let db = dir.path().join("o3.db");
    let out = o3()
        .args([
            "optimize",
            "--backend",
            "llama-server",
            "--json",
            "--config",
        ])
        .arg(short_config())
        .arg("--server-bin")
        .arg(&bin)
        .arg("--model")
        .arg(&model)
        .arg("--out")
        .arg(&run)
        .arg("--db")
        .arg(&db)
        .output()
        .unwrap();
    let s: Value = last_json(&out);
    assert_eq!(out.status.code(), Some(0), "{s}");
    predictions_match_the_measurements(&db, &s);
    // The tiny model loads at every context of 512..4096 on any machine: the search ends at
    // the top of the range, within its probe bound. Validation confirms it, unless the machine
    // is so busy that the rates vary beyond validation.max_cv (timing, not the model): then it
    // steps down, and the failed proof says so.
    let c = &s["context"];
    assert_eq!(c["max_passing"], 4096, "{c}");
    let v = c["validated"].as_u64().unwrap_or_else(|| panic!("{c}"));
    assert!((512..=4096).contains(&v), "{c}");
    if v < 4096 {
        let proofs = c["proofs"].as_array().unwrap();
        assert!(
            proofs
                .iter()
                .any(|p| p["ctx"] == 4096 && p["passed"] == false),
            "{c}"
        );
    }
    let probes = c["probes"].as_array().unwrap();
    assert!(probes.len() as u64 <= c["probe_bound"].as_u64().unwrap());
    assert!(probes.iter().all(|p| p["passed"] == true));
    // The answer is proven by prompts that really fill the context (90 % minus the output
    // tokens), counted by the server's tokenizer.
    let top = s["configurations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["config"]["ctx"] == v && m["stage"] == "validate")
        .unwrap();
    let pt = top["prompt_tokens"].as_u64().unwrap() as f64;
    let target = (v as f64 * 0.9).floor() - 16.0;
    assert!(
        (pt / target - 1.0).abs() <= 0.01,
        "prompt tokens {pt} vs {target}"
    );
    assert_eq!(top["proven_at_depth"], true, "{top}");
    // Depth is paid once: after the fill, each sample repeats the prefix with a fresh suffix
    // and the server serves at least 90 % of its prompt from the slot's cache (its own
    // `timings.cache_n`).
    assert_eq!(top["prefix_reuse"], true, "{top}");
    let journal = std::fs::read_to_string(run.join("journal.jsonl")).unwrap();
    let proof: Value = journal
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|j| j["request"]["stage"] == "validate" && j["request"]["config"]["ctx"] == v)
        .unwrap();
    let samples = proof["raw"]["samples"].as_array().unwrap();
    assert_eq!(samples[0]["kind"], "fill");
    let cached: Vec<&Value> = samples.iter().filter(|x| x["kind"] == "cached").collect();
    assert!(!cached.is_empty());
    for x in cached {
        let (hit, all) = (
            x["cached_tokens"].as_u64().unwrap() as f64,
            x["prompt_tokens"].as_u64().unwrap() as f64,
        );
        assert!(hit >= 0.9 * all, "cache_n {hit} of {all}: {x}");
        assert_eq!(x["prefix_hit"], true);
    }
    // Presets: each from a stable configuration, meeting its category; a category no stable
    // configuration meets (a busy machine can make a context's rates vary too much) has none,
    // and says so.
    let presets = s["presets"].as_array().unwrap();
    assert_eq!(presets.len(), 3);
    assert!(presets
        .iter()
        .any(|p| p["name"] == "max_context" && p["config"].is_object()));
    for p in presets {
        let Some(ctx) = p["config"]["ctx"].as_u64() else {
            let why = p["why"].as_str().unwrap();
            assert!(why.starts_with("no stable configuration meets"), "{p}");
            continue;
        };
        match p["name"].as_str().unwrap() {
            "max_context" => assert_eq!(ctx, v),
            "balanced" => assert!((1024..=2048).contains(&ctx)),
            "fast_response" => assert!(ctx >= 512),
            n => panic!("unexpected preset {n}"),
        }
        assert!(p["output_tokens_per_s"].as_f64().unwrap() > 0.0);
        assert_eq!(p["proven_at_depth"], true, "{p}");
        let cmd = p["artefacts"]["command_line"].as_str().unwrap();
        // The command pins the slot count (also 1) and gives the server the context of all
        // its slots, each slot its own share; whichever spelling the build uses.
        let words: Vec<&str> = cmd.split_whitespace().collect();
        let value = |names: &[&str]| -> Option<u64> {
            let i = words.iter().position(|w| names.contains(w))?;
            words.get(i + 1)?.parse().ok()
        };
        let slots = p["config"]["parallel"].as_u64().unwrap_or(1);
        assert_eq!(value(&["--parallel", "-np"]), Some(slots), "{cmd}");
        assert_eq!(value(&["--ctx-size", "-c"]), Some(ctx * slots), "{cmd}");
        for pinned in [
            "--no-kv-unified",
            "--cache-ram",
            "--load-mode",
            "--fit",
            "--ubatch-size",
            "--cache-type-k",
            "--cache-type-v",
        ] {
            assert!(words.contains(&pinned), "{pinned} not pinned: {cmd}");
        }
        let sh = run.join(format!("artefacts/{}.sh", p["name"].as_str().unwrap()));
        let script = std::fs::read_to_string(&sh).unwrap();
        assert!(
            script.contains(&cmd.replacen(" --port 8080", " --port \"${PORT:-8080}\"", 1)),
            "{script}"
        );
    }
    reproduce_presets(&run, &s);
    // Peaks of the server tree were measured (exactly, with eBPF, when root).
    let rss = s["peaks"]["rss_peak_bytes"].as_u64().unwrap();
    assert!(rss > 8 << 20, "server RSS peak {rss}");
    if nix::unistd::geteuid().is_root() {
        assert_eq!(s["peaks"]["rss_method"], "ebpf");
    }
    // The run directory holds everything, and the journal one line per probe.
    for f in ["run.json", "journal.jsonl", "summary.json", "presets.yaml"] {
        assert!(run.join(f).exists(), "{f}");
    }
    let lines = std::fs::read_to_string(run.join("journal.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(lines as u64, s["probes"]["total"].as_u64().unwrap());
    let yaml = std::fs::read_to_string(run.join("presets.yaml")).unwrap();
    assert!(yaml.contains("max_context:") && yaml.contains("fast_response:"));
    assert_no_server_left(&bin);
}

/// After one run, the memory model matches what the run measured on the real server: the law
/// fitted to the run's peaks reproduces each within 5 %, fitted without a context it predicts
/// that context's peaks within 10 %, and every cold-start prediction made during the run (no
/// law fitted yet) had the measured peak inside its range. The run stored one prediction per
/// probe, and summary.json sums them up.
fn predictions_match_the_measurements(db: &Path, s: &Value) {
    use o3::learn::memory::{self, Place};
    let p = &s["predictions"];
    assert_eq!(p["predictions"], s["probes"]["ran_now"], "{p}");
    assert!(p["summary"].as_str().unwrap().starts_with("last "), "{p}");
    let store = o3::learn::store::Store::open(db).unwrap();
    let checked = store.checked_predictions(None, None, None, 1000).unwrap();
    assert_eq!(
        checked.len() as u64,
        s["probes"]["ran_now"].as_u64().unwrap()
    );
    // No GPU on this machine kind: peaks are the server's RSS.
    assert!(checked.iter().all(|c| c.predicted.place == Place::Ram));
    let records = store.records(None, None).unwrap();
    let peaks: Vec<_> = records
        .iter()
        .filter(|r| r.success && r.rss_peak_bytes.is_some())
        .collect();
    assert!(peaks.len() >= 5, "{} peaks", peaks.len());
    let fit = memory::fit(&records, Place::Ram);
    assert_eq!(fit.fitted.as_ref().unwrap().samples, peaks.len());
    let err = |r: &o3::learn::Record, fit: &memory::MemoryFit| {
        let e = memory::estimate_at(&r.model, &r.config, None, fit, memory::fill_of(r));
        let m = r.rss_peak_bytes.unwrap() as f64;
        (e.total_bytes as f64 - m) / m
    };
    for r in &peaks {
        let e = err(r, &fit);
        assert!(
            e.abs() <= 0.05,
            "{:?} ({:?} tokens): fitted {e:+.3}",
            r.config,
            r.prompt_tokens
        );
        let others: Vec<_> = records
            .iter()
            .filter(|o| o.config.ctx != r.config.ctx)
            .cloned()
            .collect();
        let held = err(r, &memory::fit(&others, Place::Ram));
        assert!(
            held.abs() <= 0.10,
            "{:?}: context held out {held:+.3}",
            r.config
        );
    }
    let cold: Vec<_> = checked
        .iter()
        .filter(|c| c.predicted.fitted_points == 0)
        .collect();
    assert!(!cold.is_empty(), "the first probes are predicted cold");
    for c in cold {
        let m = c.measured_peak_bytes.unwrap();
        let pr = &c.predicted;
        assert!(
            pr.peak_low_bytes <= m && m <= pr.peak_high_bytes,
            "{:?}: {m} outside {}..{}",
            c.config,
            pr.peak_low_bytes,
            pr.peak_high_bytes
        );
    }
}

/// One HTTP/1.1 exchange on 127.0.0.1:`port` (the tests need no HTTP client beyond this):
/// the status code and the body.
fn http(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(std::time::Duration::from_secs(120)))
        .ok()?;
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut text = String::new();
    c.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// Each preset's start script, run exactly as written (on a free port through `$PORT`), serves
/// one request filled to the preset's depth with the server's peak RSS (the kernel's VmHWM)
/// within 5 % of what the probe measured for that configuration.
fn reproduce_presets(run: &Path, s: &Value) {
    for p in s["presets"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let Some(chosen) = p["chosen"].as_str() else {
            continue;
        };
        let m = s["configurations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == chosen)
            .unwrap_or_else(|| panic!("{chosen} not among the configurations"));
        let measured = m["rss_peak_bytes"].as_f64().unwrap();
        let tokens = m["prompt_tokens"].as_u64().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = std::process::Command::new(run.join(format!("artefacts/{name}.sh")))
            .env("PORT", port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let t0 = std::time::Instant::now();
        while http(port, "GET", "/health", "").map(|r| r.0) != Some(200) {
            assert!(
                t0.elapsed().as_secs() < 120,
                "{name}: the server never became ready"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // Prompts of exactly the measured depth, as token ids: a shared prefix and, as in the
        // probe, a fresh 24-token suffix per request.
        let (_, tok) = http(
            port,
            "POST",
            "/tokenize",
            r#"{"content": "the model reads"}"#,
        )
        .unwrap();
        let ids: Vec<Value> = serde_json::from_str::<Value>(&tok).unwrap()["tokens"]
            .as_array()
            .unwrap()
            .clone();
        // The probe's sequence: a short warm-up, then the filled prompt once per sample (the
        // server reuses its prefix after the first, as in the probe).
        let short = serde_json::json!({"prompt": "the", "n_predict": 4}).to_string();
        assert_eq!(http(port, "POST", "/completion", &short).unwrap().0, 200);
        let samples = m["validation"]["n"].as_u64().unwrap_or(1).max(1);
        for k in 0..samples as usize {
            let mut prompt = vec![ids[0].clone(); tokens as usize - 24];
            prompt.extend((0..24).map(|i| ids[(i + k) % ids.len()].clone()));
            let body = serde_json::json!({"prompt": prompt, "n_predict": 16, "id_slot": 0, "cache_prompt": true})
                .to_string();
            let (status, answer) = http(port, "POST", "/completion", &body).unwrap();
            assert_eq!(status, 200, "{name}: {answer}");
        }
        let hwm = std::fs::read_to_string(format!("/proc/{}/status", server.id()))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap()
            * 1024.0;
        server.kill().unwrap();
        server.wait().unwrap();
        // Within 5 %, or 4 MiB for a process this small (the tiny test model's server is
        // ~40 MiB, most of it the server's own heap and buffers, which vary by a few MiB with
        // the requests' exact sequence; a real model's weights and KV cache dwarf that).
        assert!(
            (hwm - measured).abs() <= (0.05 * measured).max(4.0 * 1048576.0),
            "{name}: the preset's command peaks at {hwm} B, the probe measured {measured} B \
             ({samples} filled requests of {tokens} tokens; {m})"
        );
    }
}

/// No llama-server an o3 started outlives that o3. Each server o3 starts carries
/// `O3_SERVER_OWNER=<pid>:<start time>` of its o3: a server whose owner is gone is left behind.
/// Servers of an o3 still running (another run on this machine) are its own business.
fn assert_no_server_left(bin: &Path) {
    use o3::util::owner;
    let proc = Path::new("/proc");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let argv0 = cmd.split(|&b| b == 0).next().unwrap_or_default();
        if Path::new(std::str::from_utf8(argv0).unwrap_or("")) != bin {
            continue;
        }
        let env = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let Some(mark) = env
            .split(|&b| b == 0)
            .find_map(|kv| kv.strip_prefix(b"O3_SERVER_OWNER="))
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.split_once(':'))
        else {
            continue;
        };
        let pid: u32 = entry.file_name().to_string_lossy().parse().unwrap_or(0);
        if !matches!(owner::stat(proc, pid), Some((st, _)) if st != 'Z' && st != 'X') {
            continue;
        }
        let owner_alive = match (mark.0.parse(), mark.1.parse()) {
            (Ok(p), Ok(start)) => owner::alive(proc, p, start),
            _ => false,
        };
        assert!(
            owner_alive,
            "a server outlived its o3 (pid {}): {}",
            mark.0,
            String::from_utf8_lossy(&cmd)
        );
    }
}

/// One optimization at a time: each checks that no server outlives it.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static M: std::sync::Mutex<()> = std::sync::Mutex::new(());
    M.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn sigint_stops_the_server_writes_a_partial_summary_and_exits_130() {
    let Some((bin, model)) = server() else {
        return;
    };
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut child = o3()
        .args([
            "optimize",
            "--backend",
            "llama-server",
            "--quiet",
            "--config",
        ])
        .arg(short_config())
        .arg("--server-bin")
        .arg(&bin)
        .arg("--model")
        .arg(&model)
        .arg("--out")
        .arg(&run)
        .spawn()
        .unwrap();
    // Wait until two probes are journaled, then interrupt the third mid-probe.
    let journal = run.join("journal.jsonl");
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&journal)
        .map(|t| t.lines().count())
        .unwrap_or(0)
        < 2
    {
        assert!(t0.elapsed().as_secs() < 120, "no progress");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The third probe is under way once its server runs (the second's was stopped before
    // its probe was journaled).
    server_of(child.id(), &bin);
    signal(child.id(), nix::sys::signal::Signal::SIGINT);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let s: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["interrupted"], true);
    assert_no_server_left(&bin);
    // Resuming finishes the run without repeating the journaled probes.
    let before = std::fs::read_to_string(&journal).unwrap().lines().count() as u64;
    let out = o3()
        .args(["optimize", "--json", "--quiet", "--resume"])
        .arg(&run)
        .output()
        .unwrap();
    let s = last_json(&out);
    assert_eq!(out.status.code(), Some(0), "{s}");
    assert_eq!(s["probes"]["from_journal"].as_u64().unwrap(), before);
    assert_eq!(
        s["probes"]["ran_now"].as_u64().unwrap() + before,
        s["probes"]["total"].as_u64().unwrap()
    );
}

/// The pid of the server `bin` that process `parent` started (not a `--help` or `--version`
/// query of the same binary), waiting up to 120 s for one.
fn server_of(parent: u32, bin: &Path) -> u32 {
    let t0 = std::time::Instant::now();
    loop {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
            let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let argv0 = cmd.split(|&b| b == 0).next().unwrap_or_default();
            // A server listens (`--port`); o3 also runs the binary for its `--help` and `--version`.
            let serves = cmd.split(|&b| b == 0).any(|a| a == b"--port");
            if ppid == Some(parent)
                && serves
                && Path::new(std::str::from_utf8(argv0).unwrap_or("")) == bin
            {
                return pid;
            }
        }
        assert!(t0.elapsed().as_secs() < 120, "no server started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Whether `pid` is gone (or a zombie nobody reaped yet: it runs no more) within `limit`.
fn gone_within(pid: u32, limit: std::time::Duration) -> bool {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < limit {
        match o3::util::owner::stat(Path::new("/proc"), pid) {
            None | Some(('Z', _)) => return true,
            Some(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
    false
}

fn optimize_cmd(bin: &Path, model: &Path, run: &Path) -> std::process::Command {
    let mut c = o3();
    c.args([
        "optimize",
        "--backend",
        "llama-server",
        "--quiet",
        "--json",
        "--config",
    ])
    .arg(short_config())
    .arg("--server-bin")
    .arg(bin)
    .arg("--model")
    .arg(model)
    .arg("--out")
    .arg(run);
    c
}

#[test]
fn kill_9_of_o3_leaves_no_server_and_the_resumed_run_leaves_none_either() {
    let Some((bin, model)) = server() else {
        return;
    };
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut child = optimize_cmd(&bin, &model, &run)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Mid-probe: the server of the first probe is up.
    let server = server_of(child.id(), &bin);
    child.kill().unwrap(); // SIGKILL: o3 runs no code of its own after it.
    child.wait().unwrap();
    assert!(
        gone_within(server, std::time::Duration::from_secs(2)),
        "server {server} outlived o3 by more than 2 s"
    );
    // The run's ledger named it; the resumed run finishes and leaves no server behind.
    let ledger = std::fs::read_to_string(run.join("servers")).unwrap_or_else(|e| {
        let files: Vec<_> = std::fs::read_dir(&run)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        panic!("no ledger ({e}); the run directory holds {files:?}")
    });
    assert!(ledger.starts_with(&format!("{server} ")), "{ledger}");
    let out = o3()
        .args(["optimize", "--json", "--quiet", "--resume"])
        .arg(&run)
        .output()
        .unwrap();
    let s = last_json(&out);
    assert_eq!(out.status.code(), Some(0), "{s}");
    assert_no_server_left(&bin);
    assert_eq!(std::fs::read_to_string(run.join("servers")).unwrap(), "");
}

#[test]
fn a_server_killed_once_mid_probe_is_retried_and_the_answer_stands() {
    let Some((bin, model)) = server() else {
        return;
    };
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let child = optimize_cmd(&bin, &model, &run)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the server of the first probe, as a stray `kill -9` would.
    let server = server_of(child.id(), &bin);
    // The server o3 started.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let out = child.wait_with_output().unwrap();
    let s = last_json(&out);
    assert_eq!(out.status.code(), Some(0), "{s}");
    // The killed probe (the first: does ctx 4096 load?) was run again and its answer is the
    // undisturbed one: the tiny model loads at every context up to 4096 on any machine. (The
    // validated context is not compared: on a loaded machine validation may step down for
    // variance, a verdict that depends on timing, disturbed or not.)
    let journal = std::fs::read_to_string(run.join("journal.jsonl")).unwrap();
    let first: Value = serde_json::from_str(journal.lines().next().unwrap()).unwrap();
    assert_eq!(first["request"]["config"]["ctx"], 4096, "{first}");
    assert_eq!(first["outcome"]["outcome"], "ok", "{first}");
    let notes = first["outcome"]["notes"].to_string();
    assert!(notes.contains("retried once"), "{first}");
    assert_eq!(
        first["raw"]["first_attempt"]["outcome"], "crashed",
        "{first}"
    );
    assert_eq!(s["context"]["max_passing"], 4096, "{}", s["context"]);
    assert_no_server_left(&bin);
}

/// The variant stage against the real server: two KV cache types compared on one workload.
const VARIANTS_CONFIG: &str = "\
search:
  initial_context: 8192
  granularity: 1024
  min_context: 1024
  max_context: 8192
batch:
  enabled: false
validation:
  samples: 3
  max_cv: 0.5
concurrency:
  enabled: false
presets:
  balanced:
    target_context_range: [2048, 4096]
  fast_response:
    target_context_min: 1024
prompt:
  output_tokens: 16
timeouts:
  load_s: 2m
safety:
  max_cpu_percent: 100
plan:
  min_budget_s: 10m
variants:
  cache_types: [f16, q8_0]
";

/// `o3 optimize` of the test model with `config` and the builds `bins`, in `dir`: it ends well
/// and compares two variants, each loading every context of the range (the tiny model does)
/// and ranked with real rates. Returns the summary and the run directory.
fn variant_run(
    dir: &Path,
    config: &str,
    bins: &[&Path],
    model: &Path,
) -> (Value, std::path::PathBuf) {
    let cfg = dir.join("variants.yaml");
    std::fs::write(&cfg, config).unwrap();
    let run = dir.join("run");
    let mut cmd = o3();
    cmd.args(["optimize", "--backend", "llama-server", "--quiet", "--json"])
        .arg("--config")
        .arg(&cfg)
        .arg("--model")
        .arg(model)
        .arg("--out")
        .arg(&run)
        .arg("--db")
        .arg(dir.join("o3.db"));
    for b in bins {
        cmd.arg("--server-bin").arg(b);
    }
    let out = cmd.output().unwrap();
    let s: Value = last_json(&out);
    assert_eq!(out.status.code(), Some(0), "{s}");
    let vs = s["variants"].as_array().unwrap_or_else(|| panic!("{s}"));
    assert_eq!(vs.len(), 2, "{s}");
    for v in vs {
        assert_eq!(v["max_loads"], 8192, "{v}");
        assert!(v["decode_tokens_per_s"].as_f64().unwrap() > 0.0, "{v}");
        assert!(v["prefill_tokens_per_s"].as_f64().unwrap() > 0.0, "{v}");
    }
    (s, run)
}

#[test]
fn kv_cache_variants_are_ranked_on_the_real_server_and_a_quantized_cache_holds_less() {
    let Some((bin, model)) = server() else {
        return;
    };
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = variant_run(dir.path(), VARIANTS_CONFIG, &[&bin], &model);
    let vs = s["variants"].as_array().unwrap();
    // Both ranked at the same context and depth; the quantized cache held less at its peak
    // (exact peaks, eBPF): about 7.4 MiB less KV cache at 8192 tokens for this model.
    let ranked: Vec<&Value> = s["configurations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["stage"] == "variant")
        .collect();
    assert_eq!(ranked.len(), 2, "{s}");
    assert_eq!(ranked[0]["config"]["ctx"], ranked[1]["config"]["ctx"]);
    assert_eq!(ranked[0]["depth"], ranked[1]["depth"]);
    let peak = |t: &str| {
        ranked
            .iter()
            .find(|m| m["config"]["cache_type_k"] == t)
            .and_then(|m| m["rss_peak_bytes"].as_u64())
            .unwrap_or_else(|| panic!("no peak for {t}: {s}"))
    };
    assert!(
        peak("f16") >= peak("q8_0") + (3 << 20),
        "f16 {} against q8_0 {}",
        peak("f16"),
        peak("q8_0")
    );
    // One variant is the longest (a tie here: the faster request decides); the maximum is
    // proven with its cache type, and every filled proof uses it.
    let longest: Vec<&Value> = vs
        .iter()
        .filter(|v| {
            v["roles"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == "longest")
        })
        .collect();
    assert_eq!(longest.len(), 1, "{s}");
    let kind = &longest[0]["config"]["cache_type_k"];
    let proofs = s["configurations"].as_array().unwrap().iter();
    for p in proofs
        .filter(|m| m["stage"] == "validate" && m["config"]["ctx"] == s["context"]["validated"])
    {
        assert_eq!(&p["config"]["cache_type_k"], kind, "{p}");
    }
    assert_no_server_left(&bin);
}

/// A second "build": the same server behind a script that logs each start (its arguments),
/// so a test can see which binary every probe launched. Returns the script and its log.
fn logging_build(dir: &Path, bin: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let log = dir.join("launches.log");
    let other = dir.join("llama-server-other");
    std::fs::write(
        &other,
        format!(
            "#!/bin/sh\necho \"$@\" >> '{}'\nexec '{}' \"$@\"\n",
            log.display(),
            bin.display()
        ),
    )
    .unwrap();
    let mut perms = std::fs::metadata(&other).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&other, perms).unwrap();
    (other, log)
}

#[test]
fn two_server_builds_are_compared_and_each_probe_runs_the_build_it_names() {
    let Some((bin, model)) = server() else {
        return;
    };
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (other, log) = logging_build(dir.path(), &bin);
    let text = VARIANTS_CONFIG.replace("variants:\n  cache_types: [f16, q8_0]\n", "");
    let (s, run) = variant_run(dir.path(), &text, &[&bin, &other], &model);
    // Every probe that names the other build launched it (a retry launches again), and no
    // other probe did.
    let other_s = other.to_string_lossy();
    let journal = std::fs::read_to_string(run.join("journal.jsonl")).unwrap();
    let named = journal
        .lines()
        .filter(|l| {
            let j: Value = serde_json::from_str(l).unwrap();
            j["request"]["config"]["server_bin"] == *other_s
        })
        .count();
    let launches = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("--ctx-size") || l.contains("-c "))
        .count();
    assert!(named >= 2, "{named} probes named the other build: {s}");
    assert!(launches >= named, "{launches} launches for {named} probes");
    assert!(
        launches <= named * 2,
        "{launches} launches for {named} probes"
    );
    // The presets serve with the build they were measured on.
    for p in s["presets"].as_array().unwrap() {
        let (Some(c), Some(cmd)) = (
            p["config"].as_object(),
            p["artefacts"]["command_line"].as_str(),
        ) else {
            continue;
        };
        let want = c
            .get("server_bin")
            .and_then(Value::as_str)
            .map_or(bin.to_string_lossy().into_owned(), str::to_string);
        assert!(
            cmd.starts_with(&want) || cmd.contains(&want),
            "{cmd} does not run {want}"
        );
    }
    assert_no_server_left(&bin);
}
