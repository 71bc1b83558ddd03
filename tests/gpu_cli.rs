//! `o3 monitor` and `o3 doctor` on the GPU fixture trees (tests/fixtures/README.md says which
//! real layouts they reproduce), and the Prometheus endpoint scraped over loopback.

// A test may unwrap: a panic there is the failure, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

use common::*;

fn monitor_once(tree: &str) -> serde_json::Value {
    let root = fixtures().join(tree);
    let out = o3()
        .arg("--sysfs-root")
        .arg(root.join("sys"))
        .arg("--procfs-root")
        .arg(if root.join("proc").exists() {
            root.join("proc")
        } else {
            "/proc".into()
        })
        .args(["monitor", "--once", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn monitor_once_on_strix_halo_reports_gtt_capacity_and_carve_out_apart() {
    let s = monitor_once("strix-halo");
    let g = &s["gpus"][0];
    assert_eq!(g["index"], 1);
    assert_eq!(i(&g["usable_total_bytes"]), 120 << 30);
    assert_eq!(i(&g["usable_used_bytes"]), 40 << 30);
    assert_eq!(i(&g["vram_total_bytes"]), 512 << 20);
    assert_eq!(g["temp_edge_c"], 48.0);
    assert_eq!(g["power_w"], 65.0);
    assert_eq!(g["asleep"], false);
    assert_eq!(i(&s["mem_total_bytes"]), 130_023_424 * 1024);
}

#[test]
fn monitor_once_on_rdna3_and_a_sleeping_card() {
    let g = &monitor_once("rdna3")["gpus"][0];
    assert_eq!(i(&g["usable_total_bytes"]), 25_753_026_560);
    assert_eq!(
        (&g["temp_edge_c"], &g["temp_junction_c"], &g["temp_mem_c"]),
        (&45.0.into(), &52.0.into(), &60.0.into())
    );
    assert_eq!(g["mem_busy_percent"], 12.0);
    assert_eq!(g["sclk_mhz"], 2300.0, "from gpu_metrics v1.3");
    let g = &monitor_once("rdna3-suspended")["gpus"][0];
    assert_eq!(g["asleep"], true);
    assert!(
        g["temp_edge_c"].is_null(),
        "a sleeping card is not woken: {g}"
    );
}

#[test]
fn monitor_once_without_gpus() {
    let s = monitor_once("no-gpu");
    assert!(s.get("gpus").is_none());
    assert!(i(&s["mem_total_bytes"]) > 0);
}

fn monitor_text(sys: &str, proc: &str, args: &[&str]) -> std::process::Output {
    o3().arg("--sysfs-root")
        .arg(fixtures().join(sys))
        .arg("--procfs-root")
        .arg(fixtures().join(proc))
        .arg("monitor")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn text_line_names_gtt_on_an_apu_and_what_bounds_it() {
    let out = monitor_text("strix-halo/sys", "strix-halo/proc", &["--once"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("   time s  RAM used / total  CPU busy %  | GPU1 "),
        "{text}"
    );
    assert!(
        text.contains(
            "GPU1 GTT 40.0 GiB of 120.0 GiB usable (bounded by the GTT size) \
             (carve-out 187.5 MiB / 512.0 MiB)"
        ),
        "{text}"
    );
    // The same APU on a 24 GB machine (ram-90's meminfo): its 120 GiB GTT cannot all be used.
    let out = monitor_text("strix-halo/sys", "ram-90/proc", &["--once"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("GPU1 GTT 40.0 GiB of 23.4 GiB usable (bounded by RAM)"),
        "{text}"
    );
}

#[test]
fn prometheus_with_once_is_a_usage_error() {
    let out = monitor_text(
        "rdna3/sys",
        "ram-90/proc",
        &["--once", "--prometheus", "127.0.0.1:0"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--once"), "{err}");
    assert!(err.trim().ends_with("(see `o3 monitor --help`)"), "{err}");
}

#[test]
fn doctor_lists_the_gpu_and_its_readers() {
    let out = o3()
        .arg("--sysfs-root")
        .arg(fixtures().join("strix-halo/sys"))
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let gpu = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "gpu")
        .expect("a gpu check");
    let d = gpu["detail"].as_str().unwrap();
    assert!(
        d.contains("Strix Halo") && d.contains("APU") && d.contains("GTT"),
        "{d}"
    );
    assert!(d.contains("memory from amdgpu sysfs"), "{d}");
}

#[test]
fn bad_gpu_selection_is_one_line() {
    let out = o3()
        .args(["monitor", "--once", "--gpu", "intel"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("auto, amd, nvidia, none"), "{err}");
}

#[test]
fn prometheus_endpoint_is_scraped_over_loopback() {
    let root = fixtures().join("rdna3");
    let mut child = Command::new(env!("CARGO_BIN_EXE_o3"))
        .arg("--sysfs-root")
        .arg(root.join("sys"))
        .args([
            "monitor",
            "--interval",
            "50ms",
            "--prometheus",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.strip_suffix("/metrics\n"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    // The metrics are rendered from each sample before its line is printed: once a line is
    // out, the endpoint has something to serve.
    let mut out = Lines::of(child.stdout.take().unwrap());
    out.wait_for("GPU0", std::time::Duration::from_secs(30));
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    signal(child.id(), nix::sys::signal::Signal::SIGINT);
    let status = child.wait().unwrap();
    assert!(status.success());
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(
        body.contains("o3_gpu_usable_total_bytes{gpu=\"0\""),
        "{body}"
    );
    assert!(body.contains("sensor=\"junction\"} 52"), "{body}");
    let peak = body
        .lines()
        .find(|l| l.starts_with("o3_gpu_temperature_peak_celsius{gpu=\"0\",name="))
        .unwrap_or_else(|| panic!("no temperature peak in {body}"));
    assert!(
        peak.contains(",apu=\"false\",sensor=\"edge\"} 45"),
        "{peak}"
    );
    // rdna3's gpu_busy_percent is 37 and gpu_metrics v1.3's graphics clock 2300 MHz.
    assert!(body.contains("o3_gpu_busy_ratio{gpu=\"0\""), "{body}");
    assert!(body.contains("} 0.37\n"), "{body}");
    assert!(
        body.contains("o3_gpu_graphics_clock_hertz{gpu=\"0\""),
        "{body}"
    );
    assert!(body.contains("} 2300000000\n"), "{body}");
    assert!(body.contains("o3_memory_used_bytes "), "{body}");
}

/// tmux, or `None` (the test is skipped with the reason) where it is missing; under
/// O3_REQUIRE_SERVER=1 (CI, where `cargo xtask setup` installs it) a missing tmux fails.
fn tmux() -> Option<&'static str> {
    let tmux = "tmux";
    if Command::new(tmux)
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Some(tmux);
    }
    missing(
        "tmux is missing",
        "`cargo xtask setup` installs Debian's tmux",
    )
}

/// A tmux server of the test's own (its socket in a temporary directory), killed on drop.
struct Tmux {
    bin: &'static str,
    socket: std::path::PathBuf,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new(self.bin)
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    fn pane(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "o3"]).stdout).into()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// Polls `done` every 50 ms until it holds or `limit` passed; the deadline only bounds a
/// failing test, it is never the verdict.
fn wait_until(limit: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + limit;
    while std::time::Instant::now() < end {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    done()
}

/// `o3 monitor --tui` on the Strix Halo tree in a 120×40 pane of a tmux server of its own;
/// the pane's shell writes o3's exit status and `stty -a` to `dir` when o3 ends, then waits (so
/// the pane's screen can still be read).
fn start_tui(dir: &std::path::Path) -> Option<Tmux> {
    let bin = tmux()?;
    let tmux = Tmux {
        bin,
        socket: dir.join("tmux.sock"),
    };
    let root = fixtures().join("strix-halo");
    let script = format!(
        "{} --sysfs-root {} --procfs-root {} monitor --tui --interval 200ms; \
         echo $? > {d}/status.tmp; stty -a > {d}/stty; mv {d}/status.tmp {d}/status; sleep 600",
        env!("CARGO_BIN_EXE_o3"),
        root.join("sys").display(),
        root.join("proc").display(),
        d = dir.display()
    );
    let out = tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "o3",
        "-x",
        "120",
        "-y",
        "40",
        &script,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut frame = String::new();
    let drawn = wait_until(std::time::Duration::from_secs(30), || {
        frame = tmux.pane();
        frame.contains("GPU1 AMD Strix Halo (APU)")
            && frame.contains("GTT    33% ████████░")
            && frame.contains("(bounded by the GTT size)")
            && frame.contains("llama-server")
    });
    assert!(
        drawn,
        "no frame with the device, its bars and llama-server within 30 s:\n{frame}"
    );
    Some(tmux)
}

/// After o3 ended: its exit status, and the terminal as it left it (main screen, cursor shown,
/// cooked mode with echo).
fn assert_ended_and_restored(tmux: &Tmux, dir: &std::path::Path, how: &str) {
    let status = dir.join("status");
    let ended = wait_until(std::time::Duration::from_secs(30), || status.exists());
    assert!(ended, "o3 still runs 30 s after {how}:\n{}", tmux.pane());
    assert_eq!(
        std::fs::read_to_string(&status).unwrap(),
        "0\n",
        "after {how}"
    );
    let flags = tmux.cmd(&[
        "display-message",
        "-p",
        "-t",
        "o3",
        "#{alternate_on} #{cursor_flag}",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&flags.stdout),
        "0 1\n",
        "alternate screen, cursor after {how}"
    );
    let stty = std::fs::read_to_string(dir.join("stty")).unwrap();
    let words: Vec<&str> = stty.split_whitespace().collect();
    assert!(
        words.contains(&"icanon") && words.contains(&"echo"),
        "raw mode left on after {how}: {stty}"
    );
}

#[test]
fn tui_in_tmux_draws_the_fixture_and_quits_on_q() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tmux) = start_tui(dir.path()) else {
        return;
    };
    tmux.cmd(&["send-keys", "-t", "o3", "q"]);
    assert_ended_and_restored(&tmux, dir.path(), "q");
}

/// SIGTERM ends the view like q, the terminal restored.
#[test]
fn tui_in_tmux_ends_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tmux) = start_tui(dir.path()) else {
        return;
    };
    let pane = tmux.cmd(&["display-message", "-p", "-t", "o3", "#{pane_pid}"]);
    let shell = String::from_utf8_lossy(&pane.stdout).trim().to_string();
    let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children")).unwrap();
    let o3: u32 = children
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("the pane's shell {shell} has no child"))
        .parse()
        .unwrap();
    signal(o3, nix::sys::signal::Signal::SIGTERM);
    assert_ended_and_restored(&tmux, dir.path(), "SIGTERM");
}

#[test]
fn tui_is_refused_without_a_terminal_and_with_json() {
    let out = o3().args(["monitor", "--tui"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("needs a terminal on stdout"), "{err}");
    let out = o3().args(["monitor", "--tui", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("'--tui' cannot be used with '--json'"),
        "{err}"
    );
}
