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
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        !std::env::var("O3_REQUIRE_EBPF").is_ok_and(|v| v == "1"),
        "{test}: O3_REQUIRE_EBPF=1 but not running as root"
    );
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
    assert!(
        !std::env::var("O3_REQUIRE_SERVER").is_ok_and(|v| v == "1"),
        "O3_REQUIRE_SERVER=1 but {why}: {fix}"
    );
    eprintln!("skipped: {why} ({fix})");
    None
}

/// Sends `sig` to process `pid` (a child the test started, or one of its own children).
pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)
        .unwrap_or_else(|e| panic!("signalling {pid} with {sig}: {e}"));
}

/// The lines a child writes to one of its pipes (or into a FIFO), read on a thread of their
/// own so the child never blocks on a full pipe: a test waits for the line that says the child
/// is ready instead of sleeping for a guess.
pub struct Lines {
    rx: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    pub fn of(r: impl std::io::Read + Send + 'static) -> Lines {
        Lines::from(move || Ok(r))
    }

    /// The lines written into `path`, opened on the reading thread: the opening of a FIFO
    /// waits for its writer.
    pub fn open(path: PathBuf) -> Lines {
        Lines::from(move || std::fs::File::open(path))
    }

    fn from<R: std::io::Read>(open: impl FnOnce() -> std::io::Result<R> + Send + 'static) -> Lines {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let Ok(r) = open() else { return };
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits at most `limit` for the next line that contains `needle`, and returns it; panics
    /// with everything read so far when none comes.
    pub fn wait_for(&mut self, needle: &str, limit: std::time::Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no line with {needle:?} ({e}); read so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Everything read, up to the end of the pipe.
    pub fn rest(mut self) -> String {
        self.seen.extend(self.rx.iter());
        self.seen.join("\n")
    }
}

/// Whether process `pid` has a handler for `sig` installed (`SigCgt` of /proc/PID/status).
pub fn catches(pid: u32, sig: nix::sys::signal::Signal) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (sig as i32 - 1)) != 0)
}

/// Waits at most `limit` until `pid` has installed its handler for `sig` (it is ready to be
/// signalled); panics otherwise.
pub fn wait_until_catches(pid: u32, sig: nix::sys::signal::Signal, limit: std::time::Duration) {
    let t = std::time::Instant::now();
    while !catches(pid, sig) {
        assert!(
            t.elapsed() < limit,
            "{pid} installed no handler for {sig} within {limit:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Waits at most `limit` until the file at `path` has `n` complete lines (a trace o3 is
/// writing: its first flush), and returns them.
pub fn wait_for_lines(path: &Path, n: usize, limit: std::time::Duration) -> Vec<String> {
    let t = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .map(|l| l.trim_end().to_string())
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            t.elapsed() < limit,
            "{} has {} of {n} lines after {limit:?}",
            path.display(),
            lines.len()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
