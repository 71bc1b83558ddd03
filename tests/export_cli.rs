//! `o3 export` and `o3 analyze` on the fixture traces in tests/fixtures/traces (real recordings
//! and hand-made malformed ones). No root needed.

// A test may unwrap: a panic there is the failure, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

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
        // 24047616 bytes at 18.766 ms in the trace.
        "rss_bytes                            22.9 MiB at 18.8 ms  (summary)",
        "percentiles (nearest rank)",
        "time above safety thresholds (thresholds from the trace)",
        "CPU and GPU per process",
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

/// The text says every value in a human unit; the raw numbers of handmade-gpu.jsonl converted
/// by hand: 23622320128 B = 22 GiB, 1000000 B = 976.6 KiB, 8642363392 B = 8.05 GiB,
/// 50000000 ns = 50 ms, 360 ms of samples.
#[test]
fn analyze_text_is_in_human_units() {
    let out = o3()
        .arg("analyze")
        .arg(fixture("handmade-gpu.jsonl"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    for want in [
        "3 samples over 360.0 ms",
        "gpu0_vram_used_bytes                 22.0 GiB at 200.0 ms  (samples)",
        "gpu0_temp_edge_c                      88.0 °C at 300.0 ms  (samples)",
        "gpu0_power_w                          330.0 W at 300.0 ms  (samples)",
        "gpu0_usable_used_percent         > 90.0 %   200.0 ms (2 of 3 samples)",
        "      4243    50.0 ms    20.0 %  976.6 KiB    50.0 %      8.0 GiB  llama-server",
        "o3_cpu_ns=3.0 ms percent_of_one_core=1.10 %",
    ] {
        assert!(s.contains(want), "missing {want:?} in\n{s}");
    }
    assert!(!s.contains("23622320128"), "{s}");
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

/// The python of the tools venv, with DuckDB (`cargo xtask setup` installs it; `cargo xtask
/// test` sets O3_TEST_TOOLS_PYTHON). Unset: skip with the reason printed, unless
/// O3_REQUIRE_SERVER=1 (CI), where that is a failure.
fn tools_python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("O3_TEST_TOOLS_PYTHON") {
        return Some(PathBuf::from(p));
    }
    common::missing(
        "the tools venv with DuckDB is missing (O3_TEST_TOOLS_PYTHON is unset)",
        "`cargo xtask setup` installs it; `cargo xtask test` sets the variable",
    )
}

/// DuckDB's view of a Parquet file: its columns with their SQL types, the row count, and per
/// column the count of non-null values and their sum (`count_if` for booleans).
const DUCKDB_SCRIPT: &str = r#"
import json, sys, duckdb
con = duckdb.connect()
src = "read_parquet('%s')" % sys.argv[1].replace("'", "''")
cols = [(r[0], r[1]) for r in con.execute("DESCRIBE SELECT * FROM " + src).fetchall()]
aggs = ["count(*)"]
for name, typ in cols:
    q = '"%s"' % name
    aggs.append("count(%s)" % q)
    aggs.append("count_if(%s)" % q if typ == "BOOLEAN" else "sum(%s)" % q if typ in ("BIGINT", "DOUBLE") else "NULL")
row = con.execute("SELECT " + ", ".join(aggs) + " FROM " + src).fetchone()
stats = {name: {"count": row[1 + 2 * i], "sum": str(row[2 + 2 * i])} for i, (name, _) in enumerate(cols)}
print(json.dumps({"columns": cols, "rows": row[0], "stats": stats}))
"#;

fn duckdb(python: &std::path::Path, parquet: &std::path::Path) -> serde_json::Value {
    let out = std::process::Command::new(python)
        .args(["-c", DUCKDB_SCRIPT])
        .arg(parquet)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
    assert!(
        out.status.success(),
        "DuckDB could not read {} with {}: {}",
        parquet.display(),
        python.display(),
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The SQL type the Parquet export gives a CSV column (docs/exports.md).
fn sql_type(column: &str) -> &'static str {
    if column.ends_with("_bytes") || column == "cpu_ns" || column == "processes" {
        "BIGINT"
    } else if column.ends_with("_asleep") {
        "BOOLEAN"
    } else {
        "DOUBLE"
    }
}

/// Exports `trace` as Parquet and as CSV, and checks DuckDB reads the Parquet file as the CSV's
/// columns, types, row count, null counts and sums.
fn assert_duckdb_reads_the_csv_numbers(python: &Path, trace: &Path, dest: &Path) {
    let name = trace.file_name().unwrap().to_string_lossy().into_owned();
    let out = o3()
        .args(["export", "--format", "parquet", "--out"])
        .arg(dest)
        .arg(trace)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
    let csv = o3()
        .args(["export", "--format", "csv"])
        .arg(trace)
        .output()
        .unwrap();
    assert_eq!(csv.status.code(), Some(0), "{}", text(&csv.stderr));
    let csv = text(&csv.stdout);
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();

    let got = duckdb(python, dest);
    let columns: Vec<(String, String)> = serde_json::from_value(got["columns"].clone()).unwrap();
    let want: Vec<(String, String)> = header
        .iter()
        .map(|h| (h.to_string(), sql_type(h).to_string()))
        .collect();
    assert_eq!(columns, want, "{name}: DESCRIBE");
    assert_eq!(got["rows"], rows.len(), "{name}: count(*)");
    for (i, column) in header.iter().enumerate() {
        let cells: Vec<&str> = rows
            .iter()
            .map(|r| r[i])
            .filter(|c| !c.is_empty())
            .collect();
        let stats = &got["stats"][column];
        let at = format!("{name}: {column}: DuckDB {stats} vs CSV {cells:?}");
        assert_eq!(
            stats["count"],
            cells.len(),
            "{at}: count (nulls where the CSV is empty)"
        );
        let sum = stats["sum"].as_str().unwrap();
        match sql_type(column) {
            "BIGINT" if cells.is_empty() => assert_eq!(sum, "None", "{at}"),
            "BIGINT" => {
                let csv_sum: i128 = cells.iter().map(|c| c.parse::<i128>().unwrap()).sum();
                assert_eq!(sum.parse::<i128>().unwrap(), csv_sum, "{at}: sum");
            }
            "BOOLEAN" => {
                let trues = cells.iter().filter(|c| **c == "true").count();
                assert_eq!(sum.parse::<usize>().unwrap(), trues, "{at}: count_if");
            }
            _ if cells.is_empty() => assert_eq!(sum, "None", "{at}"),
            _ => {
                let csv_sum: f64 = cells.iter().map(|c| c.parse::<f64>().unwrap()).sum();
                let got: f64 = sum.parse().unwrap();
                assert!(
                    (got - csv_sum).abs() <= 1e-9 * csv_sum.abs().max(1.0),
                    "{at}: sum {got} vs {csv_sum}"
                );
            }
        }
    }
}

#[test]
fn export_parquet_reads_back_in_duckdb_as_the_csv_numbers() {
    let Some(python) = tools_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for name in ["record", "handmade-gpu"] {
        assert_duckdb_reads_the_csv_numbers(
            &python,
            &fixture(&format!("{name}.jsonl")),
            &dir.path().join(format!("{name}.parquet")),
        );
    }
}

/// A recording made now (eBPF as root, else procfs polling) exports in all three formats: the
/// CSV's largest `rss_peak_bytes` is the recording's own peak, which covers the workload's
/// 64 MiB spikes when eBPF kept it, Perfetto gets RSS counters, DuckDB reads the Parquet file as
/// the CSV, and analyze finds the same peak.
#[test]
fn a_fresh_recording_exports_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.jsonl");
    let rec = o3()
        .args(["record", "--interval", "10ms", "--json", "--out"])
        .arg(&trace)
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_o3-workload"))
        .args(["spike", "--mib", "64", "--hold-us", "2000", "--repeat", "3"])
        .output()
        .unwrap();
    assert_eq!(rec.status.code(), Some(0), "{}", text(&rec.stderr));
    let summary: serde_json::Value =
        serde_json::from_str(text(&rec.stdout).lines().last().unwrap()).unwrap();
    let peak = summary["rss"]["peak_bytes"].as_u64().unwrap();
    if summary["rss"]["method"] == "ebpf" {
        assert!(peak >= 64 << 20, "{summary}");
    }

    let csv = o3()
        .args(["export", "--format", "csv"])
        .arg(&trace)
        .output()
        .unwrap();
    assert_eq!(csv.status.code(), Some(0), "{}", text(&csv.stderr));
    let csv = text(&csv.stdout);
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "rss_peak_bytes").unwrap();
    let csv_peak = csv
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').nth(col)?.parse::<u64>().ok())
        .max()
        .unwrap();
    assert_eq!(csv_peak, peak);

    let pf = o3()
        .args(["export", "--format", "perfetto"])
        .arg(&trace)
        .output()
        .unwrap();
    assert_eq!(pf.status.code(), Some(0), "{}", text(&pf.stderr));
    let pf: serde_json::Value = serde_json::from_slice(&pf.stdout).unwrap();
    let counters = pf["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "C")
        .count();
    assert!(counters >= 10, "{counters} counter events");

    let an = o3()
        .args(["analyze", "--json"])
        .arg(&trace)
        .output()
        .unwrap();
    assert_eq!(an.status.code(), Some(0), "{}", text(&an.stderr));
    let an: serde_json::Value = serde_json::from_slice(&an.stdout).unwrap();
    assert_eq!(
        an["peaks"]["rss_bytes"]["value"].as_u64(),
        Some(peak),
        "{an}"
    );

    if let Some(python) = tools_python() {
        assert_duckdb_reads_the_csv_numbers(&python, &trace, &dir.path().join("t.parquet"));
    }
}

#[test]
fn export_parquet_to_a_pipe_is_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("trace.parquet");
    let to_file = o3()
        .args(["export", "--format", "parquet", "--out"])
        .arg(&dest)
        .arg(fixture("tree.jsonl"))
        .output()
        .unwrap();
    assert_eq!(to_file.status.code(), Some(0), "{}", text(&to_file.stderr));
    let piped = o3()
        .args(["export", "--format", "parquet"])
        .arg(fixture("tree.jsonl"))
        .output()
        .unwrap();
    assert_eq!(piped.status.code(), Some(0), "{}", text(&piped.stderr));
    assert!(piped.stdout.starts_with(b"PAR1") && piped.stdout.ends_with(b"PAR1"));
    assert_eq!(piped.stdout, std::fs::read(&dest).unwrap());
}

#[test]
fn export_parquet_to_a_terminal_is_a_one_line_error() {
    let pty = nix::pty::openpty(None, None).unwrap();
    let (master, slave) = (pty.master, pty.slave);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_o3"))
        .args(["export", "--format", "parquet"])
        .arg(fixture("record.jsonl"))
        .stdout(std::process::Stdio::from(slave))
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    drop(master);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("o3: ")
            && err.contains("stdout is a terminal")
            && err.contains("--out FILE"),
        "{err}"
    );
}

/// `o3 export RUN_DIR`: an `o3 optimize` run's results, a row per measured configuration, as
/// CSV and Parquet. The run is the in-process simulator's (its truth is known; the table must
/// hold every configuration summary.json lists, in its order).
#[test]
fn a_run_directorys_results_export_as_csv_and_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let sim = dir.path().join("sim.json");
    std::fs::write(&sim, "{}").unwrap();
    let run = dir.path().join("run");
    let out = common::o3()
        .args(["optimize", "--quiet", "--json", "--simulate"])
        .arg(&sim)
        .arg("--out")
        .arg(&run)
        .arg("--db")
        .arg(dir.path().join("o3.db"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    let measured = summary["configurations"].as_array().unwrap();
    assert!(!measured.is_empty());

    let csv = o3()
        .arg("export")
        .arg(&run)
        .args(["--format", "csv"])
        .output()
        .unwrap();
    assert!(csv.status.success(), "{csv:?}");
    let csv = text(&csv.stdout);
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("id,stage,ctx,batch,"), "{csv}");
    assert_eq!(lines.len(), measured.len() + 1, "{csv}");
    for (line, m) in lines[1..].iter().zip(measured) {
        let id = m["id"].as_str().unwrap();
        assert!(line.starts_with(&format!("{id},")), "{line}");
    }

    let pq = dir.path().join("results.parquet");
    let out = o3()
        .arg("export")
        .arg(&run)
        .args(["--format", "parquet", "--out"])
        .arg(&pq)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let bytes = std::fs::read(&pq).unwrap();
    assert!(bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"));

    let out = o3()
        .arg("export")
        .arg(&run)
        .args(["--format", "perfetto"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains(
            "a run directory's results are a table: export them with --format csv or parquet"
        ),
        "{out:?}"
    );
}
