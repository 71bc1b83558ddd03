//! Exporters. From a trace: pure `fn(&Trace) -> Vec<u8>` into CSV, Chrome trace-event JSON
//! (Perfetto) and Parquet (docs/exports.md). From a live sample: the Prometheus text
//! exposition that `o3 monitor --prometheus` serves.

pub mod csv;
pub mod parquet;
pub mod perfetto;
pub mod prometheus;

#[cfg(test)]
mod snapshots {
    //! Exporters and the analysis on the real fixture traces, compared byte for byte with the
    //! `tests/fixtures/traces/*.expected.*` files; `O3_UPDATE_SNAPSHOTS=1` rewrites them.

    use std::path::{Path, PathBuf};

    use crate::trace::{read_file, Trace};

    fn dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/traces")
    }

    fn check(trace: &str, ext: &str, render: fn(&Trace) -> Vec<u8>) {
        let t = read_file(&dir().join(format!("{trace}.jsonl"))).unwrap();
        let got = render(&t);
        let want_path = dir().join(format!("{trace}.expected.{ext}"));
        if std::env::var_os("O3_UPDATE_SNAPSHOTS").is_some_and(|v| v == "1") {
            std::fs::write(&want_path, &got).unwrap();
            return;
        }
        let want = std::fs::read(&want_path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (create it with O3_UPDATE_SNAPSHOTS=1)",
                want_path.display()
            )
        });
        assert!(
            got == want,
            "{} differs from the export; review the change, then rerun with O3_UPDATE_SNAPSHOTS=1\n{}",
            want_path.display(),
            String::from_utf8_lossy(&got)
        );
    }

    fn analysis_json(t: &Trace) -> Vec<u8> {
        let mut a = crate::trace::analyze::analyze(t);
        // The path differs between checkouts; the file name does not.
        a.trace = t.path.file_name().unwrap().to_string_lossy().into_owned();
        let mut v = serde_json::to_string_pretty(&a).unwrap();
        v.push('\n');
        v.into_bytes()
    }

    #[test]
    fn csv_of_the_recorded_trace() {
        check("record", "csv", super::csv::csv);
        check("tree", "csv", super::csv::csv);
        check("handmade-gpu", "csv", super::csv::csv);
    }

    #[test]
    fn perfetto_of_the_recorded_trace() {
        check("record", "perfetto.json", super::perfetto::perfetto);
        check("tree", "perfetto.json", super::perfetto::perfetto);
        check("handmade-gpu", "perfetto.json", super::perfetto::perfetto);
    }

    #[test]
    fn analysis_of_the_recorded_trace() {
        check("record", "analyze.json", analysis_json);
        check("handmade-gpu", "analyze.json", analysis_json);
    }

    #[test]
    fn perfetto_exports_are_valid_trace_event_json() {
        for name in ["record", "tree", "handmade-gpu", "garbage", "truncated"] {
            let t = read_file(&dir().join(format!("{name}.jsonl"))).unwrap();
            let v: serde_json::Value =
                serde_json::from_slice(&super::perfetto::perfetto(&t)).unwrap();
            let evs = v["traceEvents"].as_array().unwrap();
            assert!(evs.len() > 3, "{name}");
            for e in evs {
                assert!(e["ph"].is_string() && e["pid"].is_u64(), "{name}: {e}");
                assert!(e["ph"] == "M" || e["ts"].is_number(), "{name}: {e}");
                assert!(e["name"].is_string(), "{name}: {e}");
            }
        }
    }
}
