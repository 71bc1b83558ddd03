//! The command line: bad input gives one clear line and the right exit status; the child's
//! output and exit status pass through. These tests use procfs polling (no root needed).

// A test may unwrap: a panic there is the failure, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use assert_cmd::Command;
use common::*;
use nix::sys::signal::Signal;

fn o3_cmd() -> Command {
    let mut c = Command::cargo_bin("o3").unwrap();
    c.env_remove("O3_REQUIRE_EBPF");
    c
}

fn one_line_stderr(out: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
    err
}

#[test]
fn nonexistent_command_exits_127_with_one_line() {
    let out = o3_cmd()
        .args([
            "record",
            "--method",
            "procfs",
            "--",
            "o3-no-such-command-xyz",
            "a",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
    let err = one_line_stderr(&out);
    assert!(
        err.contains("command not found: `o3-no-such-command-xyz`") && err.contains("PATH"),
        "{err}"
    );
}

#[test]
fn non_executable_file_exits_126() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("data.txt");
    std::fs::write(&f, "x").unwrap();
    let out = o3_cmd()
        .args(["record", "--method", "procfs", "--"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(126));
    assert!(one_line_stderr(&out).contains("permission denied"));
}

#[test]
fn nonexistent_pid_is_an_error() {
    let out = o3_cmd()
        .args(["record", "--method", "procfs", "--pid", "4294967294"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = one_line_stderr(&out);
    assert!(err.contains("no process with pid 4294967294"), "{err}");
}

#[test]
fn bad_intervals_name_the_accepted_range() {
    for bad in ["0", "0ms", "abc", "5h", "10", "-1ms", "20s", "500us"] {
        let out = o3_cmd()
            .args(["record", "--interval", bad, "--", "true"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--interval {bad}");
        let err = one_line_stderr(&out);
        assert!(
            err.contains("accepted range 1ms to 10s"),
            "--interval {bad}: {err}"
        );
    }
}

#[test]
fn unwritable_out_fails_before_the_command_starts() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    let out = o3_cmd()
        .args([
            "record",
            "--method",
            "procfs",
            "--out",
            "/nonexistent-dir/t.jsonl",
            "--",
        ])
        .arg("touch")
        .arg(&marker)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = one_line_stderr(&out);
    assert!(
        err.contains("/nonexistent-dir/t.jsonl") && err.contains("--out"),
        "{err}"
    );
    assert!(
        !marker.exists(),
        "the command ran although the trace could not be written"
    );
}

#[test]
fn nothing_to_record_is_explained() {
    let out = o3_cmd().args(["record"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(one_line_stderr(&out).contains("give a command after `--`"));
}

#[test]
fn duration_needs_pid() {
    let out = o3_cmd()
        .args(["record", "--duration", "1s", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    one_line_stderr(&out);
}

#[test]
fn child_output_and_exit_status_pass_through() {
    let out = o3_cmd()
        .args(["record", "--method", "procfs", "--"])
        .args(["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "to-stdout\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("to-stderr\n"), "{err}");
    assert!(err.contains("exited with status 3"), "{err}");
}

#[test]
fn killed_child_gives_128_plus_signal() {
    let out = o3_cmd()
        .args([
            "record",
            "--method",
            "procfs",
            "--",
            "sh",
            "-c",
            "kill -9 $$",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(137));
    assert!(String::from_utf8_lossy(&out.stderr).contains("killed by signal 9"));
}

#[test]
fn procfs_polling_forced_by_option() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.jsonl");
    let report = dir.path().join("r.json");
    let (s, out) = record_json(
        &["--method", "procfs", "--out", trace.to_str().unwrap()],
        &[
            workload(),
            "spike",
            "--mib",
            "32",
            "--hold-us",
            "200000",
            "--repeat",
            "2",
            "--report",
            report.to_str().unwrap(),
        ],
    );
    assert!(out.status.success());
    assert_eq!(s["rss"]["method"], "procfs_polling");
    assert_eq!(s["cpu"]["method"], "procfs_polling");
    // Holding 200 ms at 10 ms polling: the peak is seen, but only to the sample's precision.
    let r = read_report(&report);
    let truth = i(&r["smaps_rss_max_during_hold_bytes"]);
    let peak = i(&s["rss"]["peak_bytes"]);
    assert!(
        peak > 32 << 20 && peak <= truth + 64 * PAGE,
        "{peak} vs {truth}"
    );
    let header: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&trace)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["methods"]["rss"], "procfs_polling");
}

#[test]
fn procfs_root_points_at_a_fixture_tree() {
    // tests/fixtures/procfs reproduces /proc for pid 1234 with one child 1300.
    let out = o3_cmd()
        .arg("--procfs-root")
        .arg(fixtures().join("procfs"))
        .args(["record", "--method", "procfs", "--json", "--pid", "1234"])
        .args(["--duration", "50ms", "--interval", "10ms"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .unwrap()
        .unwrap();
    assert_eq!(i(&s["rss"]["peak_bytes"]), (1530 + 500) * page);
    assert_eq!(i(&s["system_memory"]["total_bytes"]), 24_568_964 * 1024);
    assert!(has_process(&s, 1234) && has_process(&s, 1300));
    assert_eq!(process(&s, 1234)["comm"], "llama server (x)");
    // An attached tree's counters come from procfs, counted from the attach: the fixture
    // files do not change, so nothing happened.
    assert_eq!(s["counters"]["source"], "procfs_sampled");
    assert_eq!(i(&s["counters"]["minor_faults"]), 0);
    assert_eq!(i(&s["counters"]["write_bytes"]), 0);
}

/// At 1 s a sample a run shorter than 10 s cannot give CPU %: the summary leaves the rates
/// out and says why, and what to do.
#[test]
fn a_short_run_gets_a_warning_and_no_cpu_percentages() {
    let out = o3_cmd()
        .args([
            "record",
            "--method",
            "procfs",
            "--interval",
            "1s",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: the command took less than 10000 ms")
            && err.contains("CPU % and the monitor's overhead % are not meaningful"),
        "{err}"
    );
    let cpu = err
        .lines()
        .find(|l| l.contains("CPU time of the tree"))
        .unwrap();
    assert!(!cpu.contains('%'), "{cpu}");
    let overhead = err
        .lines()
        .find(|l| l.contains("monitor overhead"))
        .unwrap();
    assert!(!overhead.contains('%'), "{overhead}");
    // The command's stdout stays clean: the summary is on stderr.
    assert!(out.stdout.is_empty());
}

#[test]
fn record_help_says_the_summary_goes_to_stderr() {
    let out = o3_cmd().args(["record", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("The summary goes to stderr") && text.contains("--all-processes"),
        "{text}"
    );
}

#[test]
fn help_lists_the_subcommands() {
    let out = o3_cmd().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("record") && text.contains("doctor"), "{text}");
}

#[test]
fn wall_time_is_the_commands_own() {
    let (s, out) = record_json(&["--method", "procfs"], &["sleep", "0.3"]);
    assert!(out.status.success());
    let wall = i(&s["wall_ns"]);
    assert!(
        (300_000_000..340_000_000).contains(&wall),
        "wall {wall} ns for sleep 0.3"
    );
}

fn spawn_o3(args: &[&str]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_o3"))
        .args(args)
        .env_remove("O3_REQUIRE_EBPF")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn sigterm_to_o3_reaches_the_command() {
    let mut o3 = spawn_o3(&[
        "record",
        "--method",
        "procfs",
        "--json",
        "--",
        workload(),
        "wait",
        "--ms",
        "30000",
        "--ready",
        "1",
    ]);
    // The command shares o3's stderr: it says when it runs; o3 has its handler by then (it
    // installs it once the command has exec'd), which the kernel confirms.
    let mut err = Lines::of(o3.stderr.take().unwrap());
    err.wait_for("o3-workload: ready", Duration::from_secs(30));
    wait_until_catches(o3.id(), Signal::SIGTERM, Duration::from_secs(5));
    let t = std::time::Instant::now();
    signal(o3.id(), Signal::SIGTERM);
    let out = o3.wait_with_output().unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(out.status.code(), Some(128 + Signal::SIGTERM as i32));
    let s: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", err.rest()));
    assert_eq!(s["exit"]["signal"], Signal::SIGTERM as i32);
}

#[test]
fn ctrl_c_ends_an_attached_recording_with_a_summary() {
    let mut sleeper = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = sleeper.id().to_string();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.jsonl");
    let o3 = spawn_o3(&[
        "record",
        "--method",
        "procfs",
        "--json",
        "--pid",
        &pid,
        "--out",
        trace.to_str().unwrap(),
    ]);
    // o3 is recording, and listening for Ctrl-C, once its first samples are in the trace
    // (the header and samples reach the file with the first flush).
    wait_for_lines(&trace, 2, Duration::from_secs(30));
    signal(o3.id(), Signal::SIGINT);
    let out = o3.wait_with_output().unwrap();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let wall = i(&s["wall_ns"]);
    assert!((50_000_000..5_000_000_000).contains(&wall), "wall {wall}");
    assert!(i(&s["rss"]["peak_bytes"]) > 0);
}

#[test]
fn completions_bash_prints_a_script_naming_the_subcommands() {
    let out = o3_cmd().args(["completions", "bash"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("optimize"), "{script}");
    assert!(out.stderr.is_empty());
}

#[test]
fn completions_for_an_unknown_shell_exit_2_with_one_line() {
    let out = o3_cmd()
        .args(["completions", "nosuchshell"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = one_line_stderr(&out);
    assert!(err.contains("nosuchshell"), "{err}");
}

/// `o3 doctor` as nobody (uid 65534) through setpriv: exit status 1, and tracefs judged from
/// the kernel's own mount table and the directory's mode: mounted but root-only, or not
/// mounted, each with its advice. Needs root to switch users (skipped otherwise).
#[test]
fn doctor_as_an_unprivileged_user_exits_1_and_tells_unreadable_from_unmounted() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: switching to an unprivileged user needs root");
        return;
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_o3"))
        .args(["doctor", "--server-bin", "/nonexistent/llama-server"])
        .env("HOME", "/nonexistent")
        .output()
        .expect("setpriv runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tracefs = text
        .lines()
        .find(|l| l.contains(" tracefs "))
        .unwrap_or_else(|| panic!("no tracefs line in {text}"));
    let dir = std::path::Path::new("/sys/kernel/tracing");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let listed = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 3 && f[1] == "/sys/kernel/tracing" && f[2] == "tracefs"
    });
    let others_may_read = std::fs::metadata(dir)
        .is_ok_and(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o005 == 0o005);
    if listed && !others_may_read {
        assert!(
            tracefs.contains(
                "mounted at /sys/kernel/tracing but readable by root only: run o3 as root"
            ),
            "{tracefs}"
        );
    } else if !listed {
        assert!(
            tracefs.contains("mount -t tracefs nodev /sys/kernel/tracing"),
            "{tracefs}"
        );
    }
    assert!(!tracefs.contains("is not mounted") || !listed, "{tracefs}");
    let verdict = text.lines().last().unwrap();
    assert!(
        verdict.starts_with("verdict: exact path unavailable (root, bpf"),
        "{verdict}"
    );
    assert!(
        text.contains("/nonexistent/llama-server does not exist"),
        "{text}"
    );
}

/// As root, the exit status is the verdict's: 0 with the exact path (CI: O3_REQUIRE_EBPF=1
/// requires it), 1 without.
#[test]
fn doctor_exit_status_is_its_verdict() {
    let out = o3().arg("doctor").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let verdict = text.lines().last().unwrap_or("");
    assert!(verdict.starts_with("verdict: exact path "), "{text}");
    let exact = verdict.starts_with("verdict: exact path available");
    assert_eq!(out.status.code(), Some(if exact { 0 } else { 1 }), "{text}");
    if !nix::unistd::geteuid().is_root() {
        assert!(!exact, "{text}");
    } else if std::env::var("O3_REQUIRE_EBPF").is_ok_and(|v| v == "1") {
        assert!(exact, "O3_REQUIRE_EBPF=1 but: {text}");
    }
}

/// llama-server's version as the binary itself prints it; Ollama's from the simulator's
/// `GET /api/version`.
#[test]
fn doctor_reports_the_servers_versions() {
    let Some((bin, _model)) = server() else {
        return;
    };
    let printed = Command::new(&bin).arg("--version").output().unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&printed.stdout),
        String::from_utf8_lossy(&printed.stderr)
    );
    let version = printed
        .lines()
        .find_map(|l| l.strip_prefix("version: "))
        .unwrap_or_else(|| panic!("no version line in {printed}"));
    let sim = sim(|_| {});
    let out = o3()
        .args(["doctor", "--json", "--url", &sim.url, "--server-bin"])
        .arg(&bin)
        .output()
        .unwrap();
    let v = last_json(&out);
    let check = |name: &str| {
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check in {v}"))
            .clone()
    };
    let llama = check("llama-server");
    assert_eq!(llama["ok"], true, "{llama}");
    assert_eq!(
        llama["detail"],
        format!("{}: version {version}", bin.display()),
        "{llama}"
    );
    let ollama = check("ollama");
    assert_eq!(ollama["ok"], true, "{ollama}");
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("../sim/example.json")).unwrap(),
    )
    .unwrap();
    let want = format!(
        "server at {}: version {}",
        sim.url,
        cfg["version"].as_str().unwrap()
    );
    assert!(
        ollama["detail"].as_str().unwrap().contains(&want),
        "{ollama}"
    );
    assert_eq!(v["exact"], out.status.code() == Some(0), "{v}");
}
