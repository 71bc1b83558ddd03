//! `o3 export` and `o3 analyze` on the fixture traces in tests/fixtures/traces (real recordings
//! and hand-made malformed ones). No root needed.

use std::path::PathBuf;

use assert_cmd::Command;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/traces")
        .join(name)
}

fn o3() -> Command {
    Command::cargo_bin("o3").unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn export_csv_to_stdout_matches_the_snapshot() {
    let out = o3()
        .args(["export", "--format", "csv"])
        .arg(fixture("record.jsonl"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        out.stdout,
        std::fs::read(fixture("record.expected.csv")).unwrap()
    );
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

#[test]
fn export_perfetto_to_a_file_is_valid_trace_event_json() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("trace.json");
    let out = o3()
        .args(["export", "--format", "perfetto", "--out"])
        .arg(&dest)
        .arg(fixture("handmade-gpu.jsonl"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    let bytes = std::fs::read(&dest).unwrap();
    assert_eq!(
        bytes,
        std::fs::read(fixture("handmade-gpu.expected.perfetto.json")).unwrap()
    );
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["displayTimeUnit"], "ms");
    let evs = v["traceEvents"].as_array().unwrap();
    for e in evs {
        assert!(e["ph"].is_string() && e["pid"].is_u64(), "{e}");
        assert!(e["ph"] == "M" || e["ts"].is_number(), "{e}");
    }
    for ph in ["M", "C", "i", "X"] {
        assert!(evs.iter().any(|e| e["ph"] == ph), "no {ph} event");
    }
}

#[test]
fn malformed_lines_go_to_stderr_with_line_numbers_and_the_rest_is_exported() {
    let out = o3()
        .args(["export", "--format", "csv"])
        .arg(fixture("garbage.jsonl"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(lines[0].contains("line 26: not a JSON object"), "{err}");
    assert!(lines[1].contains("line 27: bad sample"), "{err}");
    // Every real sample is still there.
    assert_eq!(
        out.stdout,
        std::fs::read(fixture("record.expected.csv")).unwrap()
    );

    let out = o3()
        .args(["export", "--format", "perfetto"])
        .arg(fixture("truncated.jsonl"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(err.contains("line 49: truncated last line"), "{err}");
    assert!(err.contains("warning: no summary record"), "{err}");
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap();
}

#[test]
fn newer_schema_is_read_with_a_warning() {
    let out = o3()
        .args(["export", "--format", "csv"])
        .arg(fixture("future-schema.jsonl"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(err.contains("schema_version 2 is newer"), "{err}");
    assert!(
        err.contains("line 5: unknown record type `annotation`"),
        "{err}"
    );
    assert!(
        err.contains("line 6: unknown event kind \"oom_kill\""),
        "{err}"
    );
    assert_eq!(
        out.stdout,
        std::fs::read(fixture("record.expected.csv")).unwrap()
    );
}

#[test]
fn unreadable_or_headerless_trace_is_a_one_line_error() {
    for (path, want) in [
        (
            PathBuf::from("/nonexistent/trace.jsonl"),
            "cannot read trace /nonexistent/trace.jsonl",
        ),
        (fixture("no-header.jsonl"), "no header record"),
    ] {
        for cmd in [vec!["export", "--format", "csv"], vec!["analyze"]] {
            let out = o3().args(&cmd).arg(&path).output().unwrap();
            assert_eq!(out.status.code(), Some(1), "{cmd:?} {}", path.display());
            assert!(out.stdout.is_empty());
            let err = text(&out.stderr);
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(err.starts_with("o3: ") && err.contains(want), "{err}");
        }
    }
}

#[test]
fn analyze_text_names_peaks_thresholds_processes_and_overhead() {
    let out = o3()
        .arg("analyze")
        .arg(fixture("tree.jsonl"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    for want in [
        "rss_bytes                        24047616 at 18.766 ms  (summary)",
        "percentiles (nearest rank)",
        "time above safety thresholds (thresholds from the trace)",
        "CPU per process",
        "recording overhead",
    ] {
        assert!(s.contains(want), "missing {want:?} in\n{s}");
    }
    let out = o3()
        .arg("analyze")
        .arg(fixture("truncated.jsonl"))
        .output()
        .unwrap();
    let s = text(&out.stdout);
    assert!(s.contains("default thresholds: 85 % RAM, 90 % VRAM"), "{s}");
}

#[test]
fn analyze_json_is_one_object_with_units_in_keys() {
    let out = o3()
        .args(["analyze", "--json"])
        .arg(fixture("handmade-gpu.jsonl"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert_eq!(s.lines().count(), 1);
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["peaks"]["rss_bytes"]["value"], 2147500000u64);
    assert_eq!(v["peaks"]["rss_bytes"]["t_ms"], 190.0);
    assert_eq!(v["peaks"]["gpu0_temp_edge_c"]["value"], 88);
    assert_eq!(v["percentiles"]["gpu0_power_w"]["max"], 330.0);
    assert_eq!(v["thresholds"]["source"], "trace");
    assert_eq!(v["processes"][0]["cpu_share_percent"], 80.0);
    assert_eq!(v["overhead"]["percent_of_one_core"], 1.1);
}
