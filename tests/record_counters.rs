//! `o3 record`'s page faults, context switches and block I/O against the kernel's own figures,
//! reported by the workload about itself (getrusage(RUSAGE_SELF) and /proc/self/io, read
//! before and after its work): for a command (o3's figures come from wait4's rusage) and for
//! an attached process (from procfs). No root needed: procfs polling measures the tree.

// A test may unwrap: a panic there is the failure, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The work: 32 MiB faulted in, 32 MiB written and fsynced.
const MIB: u64 = 32;

/// A directory on the disk the build is on: block writes are counted there (not on tmpfs).
fn disk_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("expected a count, got {v}"))
}

/// The workload's own figures after its work, checked to be what the work implies.
fn truth(report: &Value) -> (&Value, &Value) {
    let (before, after) = (&report["before"], &report["after"]);
    let written = u(&after["io_write_bytes"]) - u(&before["io_write_bytes"]);
    assert!(
        written >= MIB << 20,
        "the kernel counted {written} bytes written: the file system of {} does not count block writes",
        env!("CARGO_TARGET_TMPDIR")
    );
    // Two kernel sources agree: rusage's 512-byte blocks and /proc/self/io.
    assert_eq!(u(&after["oublock_bytes"]), u(&after["io_write_bytes"]));
    (before, after)
}

/// `low <= got <= high`, with the figure's name in the message.
fn within(name: &str, got: u64, low: u64, high: u64) {
    assert!(
        (low..=high).contains(&got),
        "{name}: o3 says {got}, the kernel's own figures give {low}..={high}"
    );
}

#[test]
fn a_commands_counters_are_its_rusage() {
    let dir = disk_dir();
    let report = dir.path().join("r.json");
    let file = dir.path().join("data");
    let (s, out) = record_json(
        &["--method", "procfs"],
        &[
            workload(),
            "io",
            "--mib",
            &MIB.to_string(),
            "--file",
            file.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = read_report(&report);
    let (_, after) = truth(&r);
    let c = &s["counters"];
    assert_eq!(c["source"], "rusage");
    // The workload's figures were read before it wrote its report and exited: o3's cover
    // that too, and the few pages o3's child touched before exec.
    within(
        "minor_faults",
        u(&c["minor_faults"]),
        u(&after["minflt"]),
        u(&after["minflt"]) + 2000,
    );
    within(
        "major_faults",
        u(&c["major_faults"]),
        u(&after["majflt"]),
        u(&after["majflt"]) + 100,
    );
    let w = u(&after["io_write_bytes"]);
    within("write_bytes", u(&c["write_bytes"]), w, w + (1 << 20));
    let r = u(&after["io_read_bytes"]);
    within("read_bytes", u(&c["read_bytes"]), r, r + (1 << 20));
    let v = u(&after["nvcsw"]);
    within(
        "voluntary",
        u(&c["voluntary_context_switches"]),
        v,
        v + 1000,
    );
    let iv = u(&after["nivcsw"]);
    within(
        "involuntary",
        u(&c["involuntary_context_switches"]),
        iv,
        iv + 1000,
    );
    // The text summary states where they come from.
    let text = o3()
        .args(["record", "--method", "procfs", "--", "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&text.stderr);
    assert!(
        err.contains("page faults") && err.contains("(kernel rusage of CMD"),
        "{err}"
    );
}

/// Waits until `path` holds a JSON object (the workload writes its report in one go, but a
/// read may catch it half written).
fn wait_for_json(path: &Path) -> Value {
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Ok(v) = serde_json::from_str::<Value>(&text) {
            return v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no report in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the file at `path` has content.
fn wait_for_content(path: &PathBuf) {
    let t = Instant::now();
    while std::fs::metadata(path).map_or(0, |m| m.len()) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "nothing in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_attached_process_counters_come_from_procfs_and_count_from_the_attach() {
    let dir = disk_dir();
    let report = dir.path().join("r.json");
    let trace = dir.path().join("t.jsonl");
    let file = dir.path().join("data");
    let mut child = Command::new(workload())
        .args(["io", "--mib", &MIB.to_string(), "--go-stdin", "1"])
        .arg("--file")
        .arg(&file)
        .arg("--report")
        .arg(&report)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let o3_run = o3()
        .args([
            "record", "--method", "procfs", "--json", "--pid", &pid, "--out",
        ])
        .arg(&trace)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The trace has content once the recording runs: o3 has read the tree's counters at the
    // attach by then. Only now does the workload start its work.
    wait_for_content(&trace);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    let (before, after) = {
        let r = wait_for_json(&report);
        let (b, a) = truth(&r);
        (b.clone(), a.clone())
    };
    // The workload stays (its stdin is open) while the recording ends and reads it once more.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(o3_run.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = o3_run.wait_with_output().unwrap();
    drop(stdin);
    child.wait().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = last_json(&out);
    let c = &s["counters"];
    assert_eq!(c["source"], "procfs_sampled");
    // At least what the work did, at most all the process did since it started.
    let d = |k: &str| u(&after[k]) - u(&before[k]);
    within(
        "minor_faults",
        u(&c["minor_faults"]),
        d("minflt"),
        u(&after["minflt"]) + 2000,
    );
    within(
        "write_bytes",
        u(&c["write_bytes"]),
        d("io_write_bytes"),
        u(&after["io_write_bytes"]) + (1 << 20),
    );
    within(
        "voluntary",
        u(&c["voluntary_context_switches"]),
        d("nvcsw"),
        u(&after["nvcsw"]) + 100,
    );
}
