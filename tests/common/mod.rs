//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

pub const PAGE: i64 = 4096;

/// The o3 binary, with a data directory of its own (`XDG_DATA_HOME`), so results stores and
/// run directories of one test never meet another's or the user's.
pub fn o3() -> Command {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let data = std::env::temp_dir().join(format!("o3-test-data-{}-{n}", std::process::id()));
    let mut c = Command::new(env!("CARGO_BIN_EXE_o3"));
    c.env("XDG_DATA_HOME", data);
    c
}

pub fn workload() -> &'static str {
    env!("CARGO_BIN_EXE_o3-workload")
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// A copy in `dir` of the GGUF fixture `name` (tests/fixtures/gguf: real llama.cpp header
/// layouts without their tensor data), extended to the data end its header declares as a
/// sparse file (the data reads as zeros), so that the model reader of `o3 predict` and
/// `o3 probe`, which refuses a file too short for its data, reads it.
pub fn complete_gguf(name: &str, dir: &Path) -> PathBuf {
    let src = fixtures().join("gguf").join(name);
    let info = o3::learn::gguf::read_header(&src).unwrap();
    let dst = dir.join(name);
    std::fs::copy(&src, &dst).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&dst)
        .unwrap()
        .set_len(info.data_end)
        .unwrap();
    dst
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

/// The Ollama simulator (tests/sim/ollama_sim.py) on a free port, stopped on drop.
pub struct Sim {
    pub child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the simulator with tests/sim/example.json changed by `edit`.
pub fn sim(edit: impl FnOnce(&mut serde_json::Value)) -> Sim {
    let root = fixtures().join("..");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("sim/example.json")).unwrap())
            .unwrap();
    edit(&mut cfg);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sim.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let mut child = Command::new("python3")
        .arg(root.join("sim/ollama_sim.py"))
        .args(["--port", "0", "--quiet", "--config"])
        .arg(&path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs the simulator");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Sim {
        child,
        url,
        _dir: dir,
    }
}

/// The llama-server binary and test model `cargo xtask setup` builds (env O3_TEST_LLAMA_SERVER,
/// O3_TEST_MODEL override them). Without them: skip with the reason, or fail under
/// O3_REQUIRE_SERVER=1 (CI).
pub fn server() -> Option<(PathBuf, PathBuf)> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let bin = std::env::var_os("O3_TEST_LLAMA_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cache/o3/llama-server/bin/llama-server"));
    let model = std::env::var_os("O3_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cache/o3/models/o3-tiny-llama.gguf"));
    let runs = Command::new(&bin)
        .arg("--help")
        .output()
        .is_ok_and(|o| o.status.success());
    if runs && model.exists() {
        return Some((bin, model));
    }
    let why = if runs {
        format!("the test model {} is missing", model.display())
    } else {
        format!("`{} --help` does not run", bin.display())
    };
    missing(
        &why,
        "`cargo xtask setup` builds llama-server and makes the model",
    )
}

/// A test's real part (server, model, browser, venv) is missing: the test skips with the
/// reason and the fix printed, except under O3_REQUIRE_SERVER=1 (CI), where it fails.
pub fn missing<T>(why: &str, fix: &str) -> Option<T> {
    if std::env::var("O3_REQUIRE_SERVER").is_ok_and(|v| v == "1") {
        panic!("O3_REQUIRE_SERVER=1 but {why}: {fix}");
    }
    eprintln!("skipped: {why} ({fix})");
    None
}
