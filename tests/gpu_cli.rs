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

#[test]
fn text_line_names_gtt_on_an_apu() {
    let root = fixtures().join("strix-halo");
    let out = o3()
        .arg("--sysfs-root")
        .arg(root.join("sys"))
        .arg("--procfs-root")
        .arg(root.join("proc"))
        .args(["monitor", "--once"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("GPU1 GTT 40.0 GiB / 120.0 GiB (carve-out 187.5 MiB / 512.0 MiB)"),
        "{text}"
    );
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
    assert!(
        body.contains("o3_gpu_temperature_peak_celsius{gpu=\"0\"} 60"),
        "{body}"
    );
    assert!(body.contains("o3_memory_used_bytes "), "{body}");
}
