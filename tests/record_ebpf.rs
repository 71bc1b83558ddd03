//! `o3 record` with the kernel programs really loaded (root). Ground truth comes from the
//! kernel, reported by the workload about itself: a page-table walk of its own address space
//! (`/proc/self/smaps_rollup`), VmHWM, and getrusage. Without root these tests skip with the
//! reason printed; with O3_REQUIRE_EBPF=1 (CI) that is a failure instead.
//!
//! The tests in this file run one at a time: they measure CPU and memory, and one of them
//! unmounts tracefs.

// A test may unwrap: a panic there is the failure, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The kernel's VmHWM / ru_maxrss read per-CPU RSS counters without their unfolded per-CPU
/// deltas (percpu_counter_read), so they may differ from the exact sum by up to
/// batch × CPUs pages for each of the three counters (batch = max(32, 2 × CPUs)).
fn hwm_slack() -> i64 {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as i64;
    3 * cpus * (2 * cpus).max(32) * PAGE
}

/// The summary's warnings, less the one that says a run was too short for CPU % (these
/// workloads take milliseconds).
fn warnings_besides_a_short_run(s: &serde_json::Value) -> Vec<String> {
    s["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .filter(|w| !w.starts_with("the command took less than"))
        .collect()
}

#[test]
fn spike_peak_is_exact_at_10ms_and_at_1s_sampling() {
    if !ebpf_or_skip("spike_peak_is_exact") {
        return;
    }
    let _g = serial();
    for interval in ["10ms", "1s"] {
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("r.json");
        let (s, out) = record_json(
            &["--interval", interval, "--method", "ebpf"],
            &[
                workload(),
                "spike",
                "--mib",
                "64",
                "--hold-us",
                "1000",
                "--repeat",
                "10",
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
        let truth = i(&r["smaps_rss_max_during_hold_bytes"]);
        assert!(truth > 64 << 20, "truth {truth}");
        let p = process(&s, i(&r["pid"]));
        let peak = i(&p["peak_rss_bytes"]);
        assert!(
            (peak - truth).abs() <= PAGE,
            "{interval}: process peak {peak} vs page-table truth {truth}"
        );
        // o3 execs the workload directly: the tree is this one process.
        let tree = i(&s["rss"]["peak_bytes"]);
        assert!(
            (tree - truth).abs() <= PAGE,
            "{interval}: tree peak {tree} vs {truth}"
        );
        let hwm = i(&r["vm_hwm_bytes"]);
        assert!(
            (peak - hwm).abs() <= hwm_slack(),
            "{interval}: peak {peak} vs VmHWM {hwm}"
        );
        assert_eq!(s["rss"]["method"], "ebpf");
        // This kernel has what the raw tracepoint programs need: no fallback, no warning.
        assert_eq!(s["rss"]["program"], "raw", "{}", s["warnings"]);
        assert_eq!(warnings_besides_a_short_run(&s), Vec::<String>::new());
        assert_eq!(s["sampling"]["kernel"], true);
        assert_eq!(i(&s["rss"]["final_bytes"]), 0, "the process is gone");
        // With 1 s sampling the whole run fits between two samples: the peak is still exact.
        if interval == "1s" {
            assert!(i(&s["sampling"]["samples"]) <= 3, "{}", s["sampling"]);
        }
    }
}

/// The classic tracepoint programs (the fallback where the kernel lacks what the raw ones
/// need) measure the same exact peak.
#[test]
fn classic_fallback_programs_measure_the_same_exact_peak() {
    if !ebpf_or_skip("classic_fallback") {
        return;
    }
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let (s, out) = record_json(
        &["--method", "ebpf", "--rss-program", "classic"],
        &[
            workload(),
            "spike",
            "--mib",
            "32",
            "--hold-us",
            "1000",
            "--repeat",
            "3",
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
    let truth = i(&r["smaps_rss_max_during_hold_bytes"]);
    let peak = i(&process(&s, i(&r["pid"]))["peak_rss_bytes"]);
    assert!(
        (peak - truth).abs() <= PAGE,
        "classic: peak {peak} vs truth {truth}"
    );
    assert_eq!(s["rss"]["program"], "classic");
}

/// At 1 ms the tree is sampled by the kernel (no wake-up of o3 per sample): every sample is
/// in the trace, in time order, CPU time never goes back, and o3 itself reads system memory
/// every 100 ms.
#[test]
fn kernel_samples_the_tree_at_the_interval() {
    if !ebpf_or_skip("kernel_samples") {
        return;
    }
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.jsonl");
    let (s, out) = record_json(
        &[
            "--interval",
            "1ms",
            "--method",
            "ebpf",
            "--out",
            trace.to_str().unwrap(),
        ],
        &[workload(), "loop", "--ms", "300"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s["sampling"]["kernel"], true);
    assert_eq!(i(&s["sampling"]["sources_every_ns"]), 100_000_000);
    let samples: Vec<serde_json::Value> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "sample")
        .collect();
    let wall_ms = i(&s["wall_ns"]) / 1_000_000;
    // One per millisecond of the run; half of that leaves room for a machine that delays
    // timers, and is still ten times what o3's own wake-ups (every 100 ms) could give.
    assert!(
        samples.len() as i64 >= wall_ms / 2,
        "{} samples in {wall_ms} ms",
        samples.len()
    );
    let ts: Vec<i64> = samples.iter().map(|v| i(&v["t_ns"])).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "samples in time order");
    let cpu: Vec<i64> = samples
        .iter()
        .filter_map(|v| v["cpu_ns"].as_i64())
        .collect();
    assert!(
        cpu.windows(2).all(|w| w[0] <= w[1]),
        "CPU time never goes back"
    );
    assert!(
        *cpu.last().unwrap() >= 250_000_000,
        "the loop burned ~300 ms"
    );
}

#[test]
fn simultaneous_peak_of_a_tree_is_the_sum_no_per_process_mark_gives() {
    if !ebpf_or_skip("simultaneous_peak") {
        return;
    }
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let (s, out) = record_json(
        &["--method", "ebpf"],
        &[
            workload(),
            "tree",
            "--children",
            "2",
            "--mib",
            "32",
            "--hold-ms",
            "100",
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
    let children = r["children"].as_array().unwrap();
    assert_eq!(children.len(), 2);
    // Measured by the parent from page-table walks while both children held their memory.
    let during_hold: i64 = children
        .iter()
        .map(|c| i(&c["smaps_rss_bytes"]))
        .sum::<i64>()
        + i(&r["parent_smaps_rss_during_hold_bytes"]);
    let tree = i(&s["rss"]["peak_bytes"]);
    assert!(
        tree >= during_hold - 4 * PAGE,
        "tree peak {tree} below the simultaneous sum {during_hold}"
    );
    // Every process' own high-water mark bounds the tree peak from above.
    let hwm_sum: i64 =
        children.iter().map(|c| i(&c["vm_hwm_bytes"])).sum::<i64>() + i(&r["rusage_maxrss_bytes"]);
    assert!(
        tree <= hwm_sum + hwm_slack(),
        "tree peak {tree} above the sum of high-water marks {hwm_sum}"
    );
    let biggest = children
        .iter()
        .map(|c| i(&process(&s, i(&c["pid"]))["peak_rss_bytes"]))
        .max()
        .unwrap();
    assert!(
        tree > biggest + (30 << 20),
        "tree peak {tree} is not a sum (largest single {biggest})"
    );
    for c in children {
        let p = process(&s, i(&c["pid"]));
        let peak = i(&p["peak_rss_bytes"]);
        let truth = i(&c["smaps_rss_bytes"]);
        assert!(
            peak >= truth - PAGE && peak <= truth + hwm_slack(),
            "child {} peak {peak} vs {truth}",
            c["pid"]
        );
    }
}

#[test]
fn cpu_time_matches_rusage_within_2_percent() {
    if !ebpf_or_skip("cpu_time") {
        return;
    }
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let (s, out) = record_json(
        &["--method", "ebpf"],
        &[
            workload(),
            "cpu",
            "--threads",
            "2",
            "--ms",
            "400",
            "--report",
            report.to_str().unwrap(),
        ],
    );
    assert!(out.status.success());
    let r = read_report(&report);
    let truth = i(&r["rusage_cpu_ns"]) as f64;
    assert!(truth >= 0.8e9, "burned {truth} ns");
    let p = process(&s, i(&r["pid"]));
    let cpu = i(&p["cpu_ns"]) as f64;
    assert!(
        (cpu / truth - 1.0).abs() <= 0.02,
        "process CPU {cpu} vs rusage {truth}"
    );
    let tree = i(&s["cpu"]["total_ns"]) as f64;
    assert!(
        (tree / truth - 1.0).abs() <= 0.02,
        "tree CPU {tree} vs rusage {truth}"
    );
    // o3's own wait4 rusage of the command agrees too.
    let ru = i(&s["rusage"]["cpu_ns"]) as f64;
    assert!(
        (tree / ru - 1.0).abs() <= 0.02,
        "tree CPU {tree} vs wait4 {ru}"
    );
    let peak = s["cpu"]["peak_percent"].as_f64().unwrap();
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as f64;
    // Never more than the machine has. How far above 100 % two threads get depends on what
    // else runs on this shared machine, so that is not asserted.
    assert!(
        peak > 0.0 && peak <= 100.0 * cores * 1.02,
        "peak {peak} % on {cores} cores"
    );
}

#[test]
fn descendants_started_later_are_tracked_and_an_unrelated_process_is_not() {
    if !ebpf_or_skip("descendants") {
        return;
    }
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let r1 = dir.path().join("r1.json");
    let r2 = dir.path().join("r2.json");
    // An unrelated process allocating much more than the tree, during the whole recording.
    let mut unrelated = Command::new(workload())
        .args([
            "spike",
            "--mib",
            "96",
            "--hold-us",
            "20000",
            "--repeat",
            "40",
        ])
        .spawn()
        .unwrap();
    let w = workload();
    // A grandchild (`; true` keeps each shell from exec'ing its last command) and a child.
    let script = format!(
        "sh -c '{w} spike --mib 16 --repeat 3 --report {r1}; true'; {w} spike --mib 24 --repeat 3 --report {r2}; true",
        r1 = r1.display(),
        r2 = r2.display()
    );
    let (s, out) = record_json(&["--method", "ebpf"], &["sh", "-c", &script]);
    let _ = unrelated.kill();
    let _ = unrelated.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (r, mib) in [(&r1, 16), (&r2, 24)] {
        let rep = read_report(r);
        let p = process(&s, i(&rep["pid"]));
        let truth = i(&rep["smaps_rss_max_during_hold_bytes"]);
        assert!(truth > mib << 20);
        assert!(
            (i(&p["peak_rss_bytes"]) - truth).abs() <= PAGE,
            "descendant peak {} vs {truth}",
            p["peak_rss_bytes"]
        );
    }
    assert!(
        !has_process(&s, i64::from(unrelated.id())),
        "unrelated pid tracked"
    );
    let tree = i(&s["rss"]["peak_bytes"]);
    assert!(
        tree < 64 << 20,
        "tree peak {tree} includes the unrelated process"
    );
    assert!(
        s["processes"].as_array().unwrap().len() >= 4,
        "{}",
        s["processes"]
    );
}

#[test]
fn attach_to_a_running_process_by_pid() {
    if !ebpf_or_skip("attach") {
        return;
    }
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let mut child = Command::new(workload())
        .args([
            "spike",
            "--mib",
            "48",
            "--hold-us",
            "20000",
            "--repeat",
            "30",
        ])
        .args(["--gap-ms", "10", "--report", report.to_str().unwrap()])
        .args(["--ready", "1"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Attach once the workload runs (exec'd, about to start its spikes).
    let mut err = Lines::of(child.stderr.take().unwrap());
    err.wait_for("o3-workload: ready", Duration::from_secs(30));
    let pid = child.id().to_string();
    let out = o3()
        .args(["record", "--method", "ebpf", "--json", "--pid", &pid])
        .output()
        .unwrap();
    child.wait().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    let r = read_report(&report);
    let truth = i(&r["smaps_rss_max_during_hold_bytes"]);
    let peak = i(&process(&s, i(&r["pid"]))["peak_rss_bytes"]);
    assert!(
        (peak - truth).abs() <= PAGE,
        "attached peak {peak} vs {truth}"
    );
    assert!((i(&s["rss"]["peak_bytes"]) - truth).abs() <= PAGE);
    assert!(
        s["exit"].is_null() && s["rusage"].is_null(),
        "not our child"
    );
}

#[test]
fn attach_stops_after_the_duration() {
    if !ebpf_or_skip("attach_duration") {
        return;
    }
    let _g = serial();
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let t = Instant::now();
    let out = o3()
        .args([
            "record",
            "--method",
            "ebpf",
            "--json",
            "--duration",
            "300ms",
        ])
        .args(["--pid", &sleeper.id().to_string()])
        .output()
        .unwrap();
    let took = t.elapsed();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let s: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    let wall = i(&s["wall_ns"]);
    assert!((300_000_000..1_000_000_000).contains(&wall), "wall {wall}");
    // The seeded RSS of the sleeping process is counted from the start.
    assert!(i(&s["rss"]["peak_bytes"]) > 100 * 1024);
}

/// A shell with 30 children under 13 names: the text summary lists the 10 commands with the
/// largest peaks and says how many more there are; --all-processes lists all 31 processes.
/// eBPF sees every process however short, so the counts are exact.
#[test]
fn the_process_table_is_cut_to_ten_commands_unless_all_are_asked_for() {
    if !ebpf_or_skip("process_table") {
        return;
    }
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let sleep = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v sleep"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    // c01..c12 are `sleep` under other names (a process is named by the file it runs).
    for n in 1..=12 {
        std::os::unix::fs::symlink(sleep.trim(), dir.path().join(format!("c{n:02}"))).unwrap();
    }
    let script = format!(
        "cd {}; for n in 01 02 03 04 05 06 07 08 09 10 11 12; do ./c$n 0.05 & done; i=0; while [ $i -lt 18 ]; do sleep 0.05 & i=$((i + 1)); done; wait",
        dir.path().display()
    );
    let run = |all: bool| {
        let mut c = o3();
        c.args(["record", "--method", "ebpf"]);
        if all {
            c.arg("--all-processes");
        }
        let out = c.args(["--", "sh", "-c", &script]).output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let top = run(false);
    // sh, sleep, c01..c12: 14 commands, 10 shown.
    assert!(
        top.contains("  … 4 more commands (use --all-processes)\n"),
        "{top}"
    );
    let rows = top
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("PROCS"))
        .skip(1);
    assert_eq!(
        rows.take_while(|l| !l.contains("more commands")).count(),
        10,
        "{top}"
    );
    let all = run(true);
    let rows = all
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("PID"))
        .skip(1);
    assert_eq!(rows.filter(|l| !l.contains("warning")).count(), 31, "{all}");
    assert!(!all.contains("more commands"), "{all}");
}

#[test]
fn trace_file_has_header_samples_events_and_summary() {
    if !ebpf_or_skip("trace_file") {
        return;
    }
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.jsonl");
    let (s, out) = record_json(
        &["--method", "ebpf", "--out", trace.to_str().unwrap()],
        &[workload(), "spike", "--mib", "8", "--repeat", "3"],
    );
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let h = &lines[0];
    assert_eq!(h["type"], "header");
    assert_eq!(h["schema_version"], 1);
    assert_eq!(h["methods"]["rss"], "ebpf");
    assert_eq!(h["methods"]["cpu"], "ebpf");
    assert_eq!(i(&h["interval_ns"]), 10_000_000);
    let samples = lines.iter().filter(|l| l["type"] == "sample").count() as i64;
    assert_eq!(samples, i(&s["sampling"]["samples"]));
    assert!(lines.iter().any(|l| l["type"] == "event"
        && l["event"] == "exec"
        && l["filename"].as_str().unwrap().ends_with("o3-workload")));
    let last = lines.last().unwrap();
    assert_eq!(last["type"], "summary");
    assert_eq!(last["rss"]["peak_bytes"], s["rss"]["peak_bytes"]);
    // The kernel's counters of the command are in the trace's summary too.
    assert_eq!(last["counters"]["source"], "rusage");
    assert!(i(&last["counters"]["minor_faults"]) > 0);
    let ts: Vec<i64> = lines
        .iter()
        .filter(|l| l["type"] == "sample")
        .map(|l| i(&l["t_ns"]))
        .collect();
    assert!(ts.windows(2).all(|w| w[0] < w[1]), "samples in time order");
}

#[test]
fn mounts_tracefs_when_it_is_missing_and_says_so() {
    if !ebpf_or_skip("mounts_tracefs") {
        return;
    }
    let _g = serial();
    let dir = std::path::Path::new("/sys/kernel/tracing");
    if dir.join("events").is_dir() {
        let st = Command::new("umount").arg(dir).status().unwrap();
        assert!(st.success(), "umount tracefs");
    }
    let (s, out) = record_json(&["--method", "ebpf"], &["true"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mounted tracefs at /sys/kernel/tracing"),
        "{err}"
    );
    assert!(dir.join("events").is_dir());
    assert_eq!(s["rss"]["method"], "ebpf");
}

#[test]
fn unprivileged_run_falls_back_to_procfs_with_one_warning() {
    if !ebpf_or_skip("unprivileged_fallback") {
        return;
    }
    let _g = serial();
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let nobody = 65534;
    // A copy of o3 that `nobody` can reach whatever the permissions of the checkout.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("o3");
    std::fs::copy(env!("CARGO_BIN_EXE_o3"), &bin).unwrap();
    let o3 = || {
        let mut c = Command::new(&bin);
        c.current_dir("/");
        c
    };
    let out = o3()
        .args(["record", "--json", "--", "sh", "-c", "echo hi"])
        .env_remove("O3_REQUIRE_EBPF")
        .uid(nobody)
        .gid(nobody)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("warning").count(), 1, "{err}");
    assert!(err.contains("procfs polling"), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("hi\n"), "{stdout}");
    let s: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(s["rss"]["method"], "procfs_polling");
    assert_eq!(
        warnings_besides_a_short_run(&s).len(),
        1,
        "{}",
        s["warnings"]
    );
    // Required eBPF turns the same situation into an error.
    let out = o3()
        .args(["record", "--", "true"])
        .env("O3_REQUIRE_EBPF", "1")
        .uid(nobody)
        .gid(nobody)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("eBPF is required but unavailable"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn doctor_reports_a_working_ebpf_path() {
    if !ebpf_or_skip("doctor") {
        return;
    }
    let _g = serial();
    let out = o3().args(["doctor", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks = v["checks"].as_array().unwrap();
    for name in ["root", "bpf", "tracefs", "ebpf-load"] {
        let c = checks.iter().find(|c| c["name"] == name).unwrap();
        assert_eq!(c["ok"], true, "{c}");
    }
    // This kernel (6.18 with BTF) runs the raw tracepoint programs.
    let raw = checks
        .iter()
        .find(|c| c["name"] == "raw-tracepoints")
        .unwrap();
    assert_eq!(raw["ok"], true, "{raw}");
    let kprobes = checks.iter().find(|c| c["name"] == "kprobes").unwrap();
    assert!(kprobes["detail"].as_str().unwrap().len() > 20);
}

#[test]
fn safety_breach_stops_the_command_within_one_interval() {
    if !ebpf_or_skip("safety_breach") {
        return;
    }
    let _g = serial();
    // tests/fixtures/ram-90 is /proc/meminfo of a machine with 90 % of its RAM in use: the
    // watchdog (RAM limit 85 %) must fire on the first sample and stop the command.
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.jsonl");
    let t = Instant::now();
    let out = o3()
        .arg("--procfs-root")
        .arg(fixtures().join("ram-90/proc"))
        .args(["record", "--method", "ebpf", "--safety", "--json", "--out"])
        .arg(&trace)
        .args(["--", "sleep", "30"])
        .output()
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(
        out.status.code(),
        Some(128 + nix::sys::signal::Signal::SIGTERM as i32)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let b = &s["safety"]["breaches"][0];
    assert_eq!(b["metric"], "ram_percent", "{s}");
    assert!((b["value"].as_f64().unwrap() - 90.23).abs() < 0.1, "{b}");
    assert_eq!(b["limit"], 85.0);
    // Within one interval of the first sample (10 ms), plus exit.
    assert!(i(&b["t_ns"]) < 20_000_000, "{b}");
    assert!(i(&s["wall_ns"]) < 1_000_000_000);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("safety limit: ram_percent 90.2 over 85.0"),
        "{err}"
    );
    let text = std::fs::read_to_string(&trace).unwrap();
    assert!(text.contains("\"event\":\"safety_breach\""), "{text}");
}

#[test]
fn attached_to_an_ancestor_o3_does_not_measure_itself() {
    if !ebpf_or_skip("attach_ancestor") {
        return;
    }
    let _g = serial();
    // The shell is the root of the recorded tree and o3 is its child (the trailing command
    // keeps the shell from replacing itself with o3).
    let out = Command::new("sh")
        .args([
            "-c",
            r#""$0" record --method ebpf --json --duration 300ms --pid $$; echo done >&2"#,
            env!("CARGO_BIN_EXE_o3"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    let procs = s["processes"].as_array().unwrap();
    assert!(
        procs.iter().any(|p| p["comm"] == "sh"),
        "the root is measured: {procs:?}"
    );
    assert!(
        !procs.iter().any(|p| p["comm"] == "o3"),
        "o3 measured itself: {procs:?}"
    );
}
