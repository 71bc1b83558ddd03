//! `o3 optimize` and `o3 probe` check what they were given before anything runs: each problem
//! is one line, a non-zero exit, and nothing stored (no results store, no run directory). A run
//! that measured and found nothing to serve exits 3 and is stored as failed, with why.
//!
//! The Ollama here is the simulator (tests/sim/ollama_sim.py: the Ollama API's `/api/version`
//! and `/api/tags` bodies as Ollama writes them); the llama-server is the real one
//! `cargo xtask setup` builds.

// A test may unwrap: a panic there is the failure, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Output;

use common::*;

/// A port nothing listens on: one the kernel just gave and took back.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The data directory o3 used is empty: no store, no run directory.
fn nothing_stored(data: &Path) {
    let left: Vec<_> = walk(data);
    assert!(left.is_empty(), "stored: {left:?}");
}

fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let Ok(rd) = std::fs::read_dir(p) else {
        return Vec::new();
    };
    rd.flatten()
        .flat_map(|e| {
            let p = e.path();
            if p.is_dir() {
                walk(&p)
            } else {
                vec![p]
            }
        })
        .collect()
}

/// Runs o3 with its own data directory; returns the output and that directory.
fn run(args: &[&str]) -> (Output, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let out = o3()
        .env("XDG_DATA_HOME", data.path())
        .args(args)
        .output()
        .unwrap();
    (out, data)
}

/// The last line of stderr, after asserting the exit code, that stdout is empty and that the
/// problem is said on one line (a notice line may come before it).
fn refused(out: &Output, code: i32) -> String {
    assert_eq!(out.status.code(), Some(code), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("o3: notice:"))
        .collect();
    assert_eq!(lines.len(), 1, "not one line: {err:?}");
    lines[0].to_string()
}

#[test]
fn each_missing_piece_is_one_line_before_anything_is_stored() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let cases: [(&[&str], &str); 4] = [
        (
            &["optimize", "--model", "/nonexistent/m.gguf"],
            "o3: cannot open model file /nonexistent/m.gguf",
        ),
        (
            &["optimize", "--model", "qwen3:8b", "--url", &url],
            "o3: no Ollama answers at http://127.0.0.1:",
        ),
        (
            &[
                "probe", "--model", "qwen3:8b", "--ctx", "4096", "--url", &url,
            ],
            "o3: no Ollama answers at http://127.0.0.1:",
        ),
        (
            &[
                "optimize",
                "--model",
                "m",
                "--backend",
                "ollama",
                "--ollama-serve",
                "no-such-ollama serve",
            ],
            "o3: --ollama-serve's program `no-such-ollama` is not found",
        ),
    ];
    for (args, want) in cases {
        let (out, data) = run(args);
        let line = refused(&out, 2);
        assert!(line.starts_with(want), "{args:?}: {line}");
        nothing_stored(data.path());
    }
}

#[test]
fn a_gguf_model_chooses_llama_server_and_its_binary_is_checked() {
    let d = tempfile::tempdir().unwrap();
    let model = complete_gguf("llama31-8b-q4km.gguf", d.path());
    let m = model.to_str().unwrap();
    for sub in ["optimize", "probe"] {
        let mut args = vec![
            sub,
            "--model",
            m,
            "--server-bin",
            "/nonexistent/llama-server",
        ];
        if sub == "probe" {
            args.extend(["--ctx", "4096"]);
        }
        let (out, data) = run(&args);
        let line = refused(&out, 2);
        assert_eq!(
            line,
            "o3: the server binary `/nonexistent/llama-server` is not found (check the path, or PATH): give llama-server's path with --server-bin"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("o3: notice: --backend llama-server (the model is a GGUF file; give --backend to choose another)\n"),
            "{err}"
        );
        nothing_stored(data.path());
    }
    // A binary that is not llama-server is told apart.
    let (out, _data) = run(&["optimize", "--model", m, "--server-bin", "/bin/true"]);
    assert!(
        refused(&out, 2).contains("prints no `version:` line on --version"),
        "{out:?}"
    );
}

#[test]
fn ollama_is_asked_for_the_model_before_anything_runs() {
    let s = sim(|_| {});
    let (out, data) = run(&["optimize", "--model", "no-such:7b", "--url", &s.url]);
    let line = refused(&out, 2);
    assert!(
        line.starts_with(&format!(
            "o3: the Ollama at {} has no model `no-such:7b` (it has: sim-llama:8b",
            s.url
        )),
        "{line}"
    );
    assert!(
        line.ends_with("pull it with `ollama pull no-such:7b` or name one of those with --model"),
        "{line}"
    );
    nothing_stored(data.path());
    // A GGUF file given to Ollama is named for what it is.
    let d = tempfile::tempdir().unwrap();
    let model = complete_gguf("llama31-8b-q4km.gguf", d.path());
    let (out, data) = run(&[
        "optimize",
        "--backend",
        "ollama",
        "--url",
        &s.url,
        "--model",
        model.to_str().unwrap(),
    ]);
    assert!(
        refused(&out, 2).contains(
            "is a GGUF file, not an Ollama model name: measure it with --backend llama-server"
        ),
        "{out:?}"
    );
    nothing_stored(data.path());
}

#[test]
fn the_real_llama_server_passes_and_says_its_version() {
    let Some((bin, model)) = server() else { return };
    let (out, _data) = run(&[
        "probe",
        "--model",
        model.to_str().unwrap(),
        "--server-bin",
        bin.to_str().unwrap(),
        "--ctx",
        "256",
        "--samples",
        "1",
        "--output-tokens",
        "2",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("o3: notice: server: llama-server "), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}

#[test]
fn a_run_where_nothing_passed_exits_3_and_is_stored_as_failed() {
    let dir = tempfile::tempdir().unwrap();
    // The simulated device holds less than the model's weights: nothing can load.
    let sim = dir.path().join("sim.json");
    std::fs::write(&sim, r#"{"capacity_bytes": 1000000000}"#).unwrap();
    let db = dir.path().join("o3.db");
    let out = o3()
        .args(["optimize", "--quiet", "--json", "--simulate"])
        .arg(&sim)
        .arg("--out")
        .arg(dir.path().join("run"))
        .arg("--db")
        .arg(&db)
        .output()
        .unwrap();
    let s = last_json(&out);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let why = s["failure"].as_str().unwrap();
    assert!(why.starts_with("no configuration passed: "), "{why}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("o3: {why}; the run is stored as failed")),
        "{err}"
    );
    let h = o3()
        .arg("history")
        .arg("--db")
        .arg(&db)
        .arg("--json")
        .output()
        .unwrap();
    let h: serde_json::Value = serde_json::from_slice(&h.stdout).unwrap();
    let run = &h["runs"][0];
    assert_eq!(run["status"], "failed", "{h}");
    assert_eq!(run["failure"], why, "{h}");
    // The report is written all the same: what was tried is worth reading.
    assert!(dir.path().join("run/report/report.md").is_file());
}
