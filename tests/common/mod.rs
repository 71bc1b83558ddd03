//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub const PAGE: i64 = 4096;

pub fn o3() -> Command {
    Command::new(env!("CARGO_BIN_EXE_o3"))
}

pub fn workload() -> &'static str {
    env!("CARGO_BIN_EXE_o3-workload")
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// True when eBPF tests can run here. Without root they are skipped with the reason printed,
/// unless O3_REQUIRE_EBPF=1 (CI), where a missing capability is a failure.
pub fn ebpf_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("O3_REQUIRE_EBPF").is_ok_and(|v| v == "1") {
        panic!("{test}: O3_REQUIRE_EBPF=1 but not running as root");
    }
    eprintln!("{test}: skipped: loading eBPF programs needs root");
    false
}

/// The JSON object o3 printed as the last line of its stdout (`--json`).
pub fn last_json(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap_or_else(|e| {
        panic!(
            "no JSON result ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Runs `o3 record <args> --json -- <cmd>` and returns (summary, output).
pub fn record_json(args: &[&str], cmd: &[&str]) -> (Value, Output) {
    let out = o3()
        .arg("record")
        .args(args)
        .arg("--json")
        .arg("--")
        .args(cmd)
        .output()
        .expect("running o3");
    let v = last_json(&out);
    (v, out)
}

pub fn read_report(p: &Path) -> Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).expect("workload report is JSON")
}

pub fn i(v: &Value) -> i64 {
    v.as_i64()
        .unwrap_or_else(|| panic!("expected an integer, got {v}"))
}

/// The summary's entry for `pid`.
pub fn process(summary: &Value, pid: i64) -> &Value {
    summary["processes"]
        .as_array()
        .expect("processes array")
        .iter()
        .find(|p| p["pid"].as_i64() == Some(pid))
        .unwrap_or_else(|| panic!("pid {pid} not in {}", summary["processes"]))
}

pub fn has_process(summary: &Value, pid: i64) -> bool {
    summary["processes"]
        .as_array()
        .is_some_and(|a| a.iter().any(|p| p["pid"].as_i64() == Some(pid)))
}
