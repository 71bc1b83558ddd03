//! One unit, one spelling, one stream: each value on the command line in its own unit (a
//! `--*-percent` flag takes 1 to 100, a fraction a share of one or a percent with its sign; a
//! value that fits the other unit is refused, exit status 2, with the value meant); names as
//! `--backend` spells them; results on stdout and diagnostics on stderr for every subcommand
//! that prints a result (optimize, probe, record, monitor and doctor have tests of their own).

// A test may unwrap: a panic there is the failure, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::o3;
use serde_json::Value;

/// `o3 probe ARGS` that clap refuses: (exit status, stderr).
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let out = o3()
        .args(["probe", "--model", "m.gguf", "--ctx", "512"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.stdout.is_empty());
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_percent_flag_refuses_a_fraction_and_names_the_percent_meant() {
    let (code, err) = refused(&["--safety", "--max-ram-percent", "0.5"]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(
        err.trim_end(),
        "o3: invalid value '0.5' for '--max-ram-percent <PERCENT>': a percent from 1 to 100 \
         (did you mean 50?) (see `o3 probe --help`)"
    );
    let (code, err) = refused(&["--safety", "--max-ram-percent", "250"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("': a percent from 1 to 100 (see"), "{err}");
}

#[test]
fn a_fraction_flag_refuses_a_bare_percent_and_takes_one_with_its_sign() {
    let (code, err) = refused(&["--fill", "90"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(
            "'--fill <FRACTION>': a fraction from 0.05 to 1 (or a percent such as 90%) \
             (did you mean 90%?)"
        ),
        "{err}"
    );
    // `90%` is read: the run goes past the flags (and stops at the model file, which is
    // missing), so the error is no longer about --fill.
    let (_, err) = refused(&["--fill", "90%", "--backend", "llama-server"]);
    assert!(!err.contains("--fill"), "{err}");
}

/// `o3 ARGS`: (exit status, stdout, stderr).
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = o3().args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A finished run of the simulator (`o3 optimize --simulate`, its default device) of a
/// llama-server model, in `dir`: (run directory, results store).
fn simulated_run(dir: &Path) -> (PathBuf, PathBuf) {
    let sim = dir.join("sim.json");
    std::fs::write(&sim, "{}").unwrap();
    let (run_dir, db) = (dir.join("run"), dir.join("o3.db"));
    let out = o3()
        .args(["optimize", "--quiet", "--json", "--backend", "llama-server"])
        .args(["--model", "/models/m.gguf", "--simulate"])
        .arg(&sim)
        .arg("--out")
        .arg(&run_dir)
        .arg("--db")
        .arg(&db)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (run_dir, db)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A result on stdout, nothing on stderr, exit status 0.
fn result_on_stdout(args: &[&str]) -> String {
    let (code, out, err) = run(args);
    assert_eq!(code, Some(0), "{args:?}: {err}");
    assert!(err.is_empty(), "{args:?} wrote to stderr: {err}");
    assert!(!out.trim().is_empty(), "{args:?} printed no result");
    out
}

/// An error: one line on stderr, nothing on stdout.
fn error_on_stderr(args: &[&str], code: i32) -> String {
    let (got, out, err) = run(args);
    assert_eq!(got, Some(code), "{args:?}: {err}");
    assert!(out.is_empty(), "{args:?} wrote to stdout: {out}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    err
}

#[test]
fn a_llama_server_run_is_llama_server_in_its_summary_the_store_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let (run_dir, db) = simulated_run(dir.path());
    for file in ["summary.json", "run.json"] {
        let text = std::fs::read_to_string(run_dir.join(file)).unwrap();
        assert!(!text.contains("llamaserver"), "{file}: {text}");
    }
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["backend"], "llama-server");
    let h = result_on_stdout(&["history", "--db", s(&db)]);
    assert!(
        h.contains("llama-server") && !h.contains("llamaserver"),
        "{h}"
    );
    let j: Value =
        serde_json::from_str(&result_on_stdout(&["history", "--db", s(&db), "--json"])).unwrap();
    assert_eq!(j["runs"][0]["backend"], "llama-server", "{j}");
}

#[test]
fn history_and_profiles_print_results_on_stdout_and_errors_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let (_, db) = simulated_run(dir.path());
    let h = result_on_stdout(&["history", "--db", s(&db)]);
    assert!(h.contains("MAX CONTEXT"), "{h}");
    let p = result_on_stdout(&["profiles", "--db", s(&db)]);
    assert!(p.contains("max_context"), "{p}");
    // No store yet: that is the answer, on stdout.
    let none = dir.path().join("none.db");
    assert!(result_on_stdout(&["history", "--db", s(&none)]).starts_with("no history yet"));
    assert!(result_on_stdout(&["profiles", "--db", s(&none)]).starts_with("no history yet"));
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, "not a database").unwrap();
    error_on_stderr(&["history", "--db", s(&junk)], 1);
    error_on_stderr(&["profiles", "--db", s(&junk)], 1);
}

#[test]
fn predict_prints_its_prediction_on_stdout_and_errors_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::complete_gguf("llama31-8b-q4km.gguf", dir.path());
    let none = dir.path().join("none.db");
    let base = [
        "predict",
        "--model",
        s(&model),
        "--ctx",
        "8192",
        "--db",
        s(&none),
    ];
    let text = result_on_stdout(&[&base[..], &["--capacity-gib", "8"]].concat());
    assert!(text.contains("P(success)"), "{text}");
    let json = result_on_stdout(&[&base[..], &["--capacity-gib", "8", "--json"]].concat());
    assert!(json.starts_with('{'), "{json}");
    error_on_stderr(&[&base[..], &["--capacity-gib", "-1"]].concat(), 2);
}

#[test]
fn analyze_and_export_print_results_on_stdout_and_skipped_lines_on_stderr() {
    let traces = common::fixtures().join("traces");
    let record = traces.join("record.jsonl");
    let a = result_on_stdout(&["analyze", s(&record)]);
    assert!(a.starts_with("trace "), "{a}");
    result_on_stdout(&["analyze", s(&record), "--json"]);
    let csv = result_on_stdout(&["export", s(&record), "--format", "csv"]);
    let expected = std::fs::read_to_string(traces.join("record.expected.csv")).unwrap();
    assert_eq!(csv, expected);
    // garbage.jsonl: record.jsonl with two damaged lines; the result still on stdout.
    let garbage = traces.join("garbage.jsonl");
    for cmd in [vec!["analyze"], vec!["export", "--format", "csv"]] {
        let args = [&cmd[..], &[s(&garbage)]].concat();
        let (code, out, err) = run(&args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(!out.is_empty(), "{args:?}");
        assert_eq!(err.matches("(skipped)").count(), 2, "{args:?}: {err}");
        assert!(!out.contains("(skipped)"), "{args:?}: {out}");
    }
    // A trace cut before its summary: the warning once, on stderr only.
    let (code, out, err) = run(&["analyze", s(&traces.join("truncated.jsonl"))]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        err.matches("warning: no summary record").count(),
        1,
        "{err}"
    );
    assert!(
        !out.contains("warning") && !out.contains("skipped"),
        "{out}"
    );
    error_on_stderr(&["analyze", "/nonexistent/trace.jsonl"], 1);
}

#[test]
fn report_prints_the_files_it_wrote_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let (run_dir, _) = simulated_run(dir.path());
    let out_dir = dir.path().join("r");
    let written = result_on_stdout(&["report", s(&run_dir), "--out", s(&out_dir)]);
    assert_eq!(written.trim(), s(&out_dir.join("report.md")));
    error_on_stderr(&["report", s(&dir.path().join("no-run"))], 1);
}

#[test]
fn config_prints_the_default_and_the_check_on_stdout_and_errors_on_stderr() {
    let yaml = result_on_stdout(&["config", "default"]);
    assert!(yaml.contains("load_s: 10m"), "{yaml}");
    let cfg = common::fixtures().join("config");
    let ok = result_on_stdout(&["config", "check", s(&cfg.join("valid/units.yaml"))]);
    assert!(ok.ends_with("units.yaml: ok (current layout)\n"), "{ok}");
    let e = error_on_stderr(
        &[
            "config",
            "check",
            s(&cfg.join("invalid/percent_given_as_fraction.yaml")),
        ],
        2,
    );
    assert!(e.contains("(did you mean 50?)"), "{e}");
}

#[test]
fn import_legacy_prints_its_summary_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("o3.db");
    let legacy = common::fixtures().join("legacy");
    let summary = result_on_stdout(&["import-legacy", s(&legacy), "--db", s(&db)]);
    assert!(summary.contains("imported: 3 runs"), "{summary}");
    error_on_stderr(&["import-legacy", s(dir.path()), "--db", s(&db)], 1);
}

/// llama.cpp's real llama-server (`cargo xtask setup` builds it; skipped without it unless
/// O3_REQUIRE_SERVER=1) takes `--flash-attn on|off|auto` as o3 passes it: each probe loads and
/// answers; the result says "on"/"off" (null: the server decided), and the trace header names
/// the backend as `--backend` does.
#[test]
fn flash_attn_on_off_auto_reach_the_real_llama_server() {
    let Some((bin, model)) = common::server() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for (given, written) in [("on", "\"on\""), ("off", "\"off\""), ("auto", "null")] {
        let trace = dir.path().join(format!("{given}.jsonl"));
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
            .args(["--ctx", "512", "--samples", "1", "--output-tokens", "4"])
            .args(["--flash-attn", given, "--out", s(&trace)])
            .output()
            .unwrap();
        let r = common::last_json(&out);
        assert_eq!(out.status.code(), Some(0), "{given}: {r}");
        assert_eq!(r["outcome"], "ok", "{given}: {r}");
        assert_eq!(r["config"]["flash_attn"].to_string(), written, "{given}");
        let header: Value = serde_json::from_str(
            std::fs::read_to_string(&trace)
                .unwrap()
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            header["target"]["probe"]["backend"], "llama-server",
            "{header}"
        );
    }
}

/// `o3 ARGS` with stdout a pipe whose reader has gone before o3 starts (as `o3 history |
/// head -1` once head has its line): every write fails with EPIPE, deterministically.
fn with_closed_stdout(args: &[&str]) -> std::process::Output {
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("a pipe for stdout");
    drop(read);
    o3().args(args)
        .stdout(std::process::Stdio::from(write))
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn a_reader_that_stops_early_ends_the_output_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let (run_dir, db) = simulated_run(dir.path());
    let record = common::fixtures().join("traces/record.jsonl");
    let out_dir = dir.path().join("r");
    for args in [
        vec!["config", "default"],
        vec!["history", "--db", s(&db)],
        vec!["profiles", "--db", s(&db), "--json"],
        vec!["analyze", s(&record)],
        vec!["export", s(&record), "--format", "csv"],
        vec!["report", s(&run_dir), "--out", s(&out_dir)],
    ] {
        let out = with_closed_stdout(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
}
