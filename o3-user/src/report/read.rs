//! Trace reader: a JSON Lines trace (docs/trace-format.md) into typed records. The file is
//! split into lines as bytes ([`crate::trace::lines`]); malformed lines (not UTF-8, not JSON,
//! not a record) and a truncated last line are reported with their line number and skipped;
//! the rest is kept.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

use crate::trace::{lines, SCHEMA_VERSION};

#[derive(Debug, Error)]
pub enum ReadError {
    #[error("cannot read trace {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not an o3 trace: it has no header record (write one with `o3 record --out FILE`)"
    )]
    NoHeader { path: PathBuf },
}

/// A line that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line number in the file.
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// The `header` record; fields absent from an older or newer writer are `None`/empty.
#[derive(Debug, Clone, Deserialize)]
pub struct Header {
    pub schema_version: u32,
    #[serde(default)]
    pub o3_version: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub kernel: Option<String>,
    #[serde(default)]
    pub interval_ns: Option<u64>,
    #[serde(default)]
    pub start_unix_ns: Option<u64>,
    #[serde(default)]
    pub target: Value,
    #[serde(default)]
    pub methods: Value,
    #[serde(default)]
    pub gpus: Vec<Value>,
}

/// One GPU's readings in a sample: its index and every field by name (units in the names).
#[derive(Debug, Clone, Deserialize)]
pub struct GpuRec {
    pub index: u32,
    #[serde(flatten)]
    pub fields: BTreeMap<String, Value>,
}

impl GpuRec {
    /// A numeric field, `None` when absent or null.
    pub fn num(&self, key: &str) -> Option<f64> {
        self.fields.get(key).and_then(Value::as_f64)
    }
}

/// The `sample` record.
#[derive(Debug, Clone, Deserialize)]
pub struct SampleRec {
    pub t_ns: u64,
    pub rss_bytes: Option<u64>,
    pub rss_anon_bytes: Option<u64>,
    pub rss_file_bytes: Option<u64>,
    pub rss_shmem_bytes: Option<u64>,
    pub swap_bytes: Option<u64>,
    pub rss_peak_bytes: Option<u64>,
    pub rss_peak_t_ns: Option<u64>,
    pub cpu_ns: Option<u64>,
    pub cpu_t_ns: Option<u64>,
    pub processes: Option<u32>,
    pub mem_used_bytes: Option<u64>,
    pub mem_total_bytes: Option<u64>,
    pub system_cpu_percent: Option<f64>,
    #[serde(default)]
    pub gpus: Vec<GpuRec>,
    /// GPU memory and engine time per tracked process, on the ticks it is read (fdinfo, KFD).
    #[serde(default)]
    pub gpu_processes: Vec<GpuProcRec>,
}

/// One process's GPU use in a sample (`gpu_processes`).
#[derive(Debug, Clone, Deserialize)]
pub struct GpuProcRec {
    pub pid: u32,
    #[serde(default)]
    pub vram_bytes: u64,
    #[serde(default)]
    pub gtt_bytes: u64,
    #[serde(default)]
    pub kfd_vram_bytes: u64,
    /// Engine busy time summed over the process's DRM clients and engines, cumulative, ns.
    #[serde(default)]
    pub engine_ns: u64,
}

/// CPU of the tree in % of one core between two samples, at the instants `cpu_ns` holds
/// (`cpu_t_ns` where the source read it after the tick); `None` when unmeasured or no time
/// passed. A counter that went backwards counts as 0.
pub fn tree_cpu_percent(prev: &SampleRec, cur: &SampleRec) -> Option<f64> {
    let (a, b) = (prev.cpu_ns?, cur.cpu_ns?);
    let ta = prev.cpu_t_ns.unwrap_or(prev.t_ns);
    let tb = cur.cpu_t_ns.unwrap_or(cur.t_ns);
    let dt = tb.checked_sub(ta).filter(|d| *d > 0)?;
    Some(b.saturating_sub(a) as f64 * 100.0 / dt as f64)
}

/// The `event` record.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventRec {
    Fork {
        t_ns: u64,
        pid: u32,
        parent: u32,
        comm: String,
    },
    Exec {
        t_ns: u64,
        pid: u32,
        comm: String,
        filename: String,
    },
    Exit {
        t_ns: u64,
        pid: u32,
        comm: String,
    },
    Peak {
        t_ns: u64,
        pid: u32,
        rss_bytes: u64,
    },
    SafetyBreach {
        t_ns: u64,
        metric: String,
        value: f64,
        limit: f64,
        gpu: Option<u32>,
    },
}

impl EventRec {
    pub fn t_ns(&self) -> u64 {
        match self {
            EventRec::Fork { t_ns, .. }
            | EventRec::Exec { t_ns, .. }
            | EventRec::Exit { t_ns, .. }
            | EventRec::Peak { t_ns, .. }
            | EventRec::SafetyBreach { t_ns, .. } => *t_ns,
        }
    }
}

/// A parsed trace.
#[derive(Debug, Clone)]
pub struct Trace {
    /// The file it was read from, as given.
    pub path: PathBuf,
    pub header: Header,
    pub samples: Vec<SampleRec>,
    pub events: Vec<EventRec>,
    /// The `summary` record, absent when the recording was killed.
    pub summary: Option<Value>,
    /// `probe` records (`o3 probe --out`).
    pub probes: Vec<Value>,
    /// Lines that could not be used.
    pub problems: Vec<Problem>,
    /// Whole-file remarks (a newer schema, a missing summary).
    pub warnings: Vec<String>,
}

impl Trace {
    /// The GPU indices present in the header or in any sample, sorted.
    pub fn gpu_indices(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .header
            .gpus
            .iter()
            .filter_map(|g| g.get("index").and_then(Value::as_u64))
            .map(|i| i as u32)
            .chain(
                self.samples
                    .iter()
                    .flat_map(|s| s.gpus.iter().map(|g| g.index)),
            )
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

fn is_known_event(kind: &str) -> bool {
    matches!(kind, "fork" | "exec" | "exit" | "peak" | "safety_breach")
}

/// Reads and parses a trace file.
pub fn read_file(path: &Path) -> Result<Trace, ReadError> {
    let bytes = std::fs::read(path).map_err(|source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_bytes(&bytes, path)
}

/// Parses trace text; `path` names it in messages.
pub fn parse(text: &str, path: &Path) -> Result<Trace, ReadError> {
    parse_bytes(text.as_bytes(), path)
}

/// Parses the bytes of a trace file; `path` names it in messages.
pub fn parse_bytes(data: &[u8], path: &Path) -> Result<Trace, ReadError> {
    let mut header: Option<Header> = None;
    let mut samples = Vec::new();
    let mut events = Vec::new();
    let mut summary = None;
    let mut probes = Vec::new();
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    for l in lines::split(data) {
        let line = l.number;
        if l.is_blank() {
            continue;
        }
        let mut problem = |reason: String| problems.push(Problem { line, reason });
        let parsed = l.text().and_then(|text| {
            serde_json::from_str::<Value>(text).map_err(|e| format!("not a JSON object: {e}"))
        });
        let v = match parsed {
            Ok(v) => v,
            Err(_) if !l.terminated => {
                problem(format!(
                    "truncated last line: {} bytes without a newline (the recording was \
                     probably killed)",
                    l.bytes.len()
                ));
                continue;
            }
            Err(reason) => {
                problem(reason);
                continue;
            }
        };
        let Some(kind) = v.get("type").and_then(Value::as_str).map(str::to_owned) else {
            problem("no `type` field: not a trace record".into());
            continue;
        };
        match kind.as_str() {
            "header" => {
                if header.is_some() {
                    problem("a second header: ignored".into());
                    continue;
                }
                match Header::deserialize(&v) {
                    Ok(h) => {
                        if h.schema_version > SCHEMA_VERSION {
                            warnings.push(format!(
                                "schema_version {} is newer than the one this o3 reads ({}): \
                                 records and fields it does not know are skipped; upgrade o3 \
                                 to read them all",
                                h.schema_version, SCHEMA_VERSION
                            ));
                        } else if h.schema_version < SCHEMA_VERSION {
                            warnings.push(format!(
                                "schema_version {} is older than the one this o3 writes ({}): \
                                 read as version {}",
                                h.schema_version, SCHEMA_VERSION, SCHEMA_VERSION
                            ));
                        }
                        header = Some(h);
                    }
                    Err(e) => problem(format!("bad header: {e}")),
                }
            }
            "sample" => match SampleRec::deserialize(&v) {
                Ok(s) => samples.push(s),
                Err(e) => problem(format!("bad sample: {e}")),
            },
            "event"
                if !v
                    .get("event")
                    .and_then(Value::as_str)
                    .is_some_and(is_known_event) =>
            {
                problem(format!(
                    "unknown event kind {} (written by a newer o3?)",
                    v.get("event").unwrap_or(&Value::Null)
                ))
            }
            "event" => match EventRec::deserialize(&v) {
                Ok(ev) => events.push(ev),
                Err(e) => problem(format!("bad event: {e}")),
            },
            "summary" => {
                if v.is_object() {
                    summary = Some(v);
                }
            }
            "probe" => probes.push(v),
            other => problem(format!(
                "unknown record type `{other}` (written by a newer o3?)"
            )),
        }
    }
    let Some(header) = header else {
        return Err(ReadError::NoHeader {
            path: path.to_path_buf(),
        });
    };
    if summary.is_none() && probes.is_empty() {
        warnings.push(
            "no summary record: the recording did not end normally; peaks come from the samples"
                .into(),
        );
    }
    Ok(Trace {
        path: path.to_path_buf(),
        header,
        samples,
        events,
        summary,
        probes,
        problems,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = r#"{"type":"header","schema_version":1,"o3_version":"0.1.0","host":"h","kernel":"k","interval_ns":10000000,"start_unix_ns":1,"target":{"pid":1},"methods":{},"gpus":[]}"#;
    const SAMPLE: &str = r#"{"type":"sample","t_ns":5,"rss_bytes":4096,"rss_anon_bytes":null,"rss_file_bytes":null,"rss_shmem_bytes":null,"swap_bytes":null,"rss_peak_bytes":4096,"rss_peak_t_ns":5,"cpu_ns":10,"processes":1,"mem_used_bytes":100,"mem_total_bytes":1000,"system_cpu_percent":null}"#;

    fn parse_str(s: &str) -> Result<Trace, ReadError> {
        parse(s, Path::new("t.jsonl"))
    }

    #[test]
    fn reads_every_record_kind() {
        let text = format!(
            "{HEADER}\n{SAMPLE}\n{}\n{}\n{}\n",
            r#"{"type":"event","event":"exit","t_ns":6,"pid":7,"comm":"x"}"#,
            r#"{"type":"summary","wall_ns":9}"#,
            r#"{"type":"probe","outcome":"ok"}"#
        );
        let t = parse_str(&text).unwrap();
        assert_eq!(t.header.schema_version, 1);
        assert_eq!(t.samples.len(), 1);
        assert_eq!(t.samples[0].rss_bytes, Some(4096));
        assert_eq!(t.samples[0].rss_anon_bytes, None);
        assert_eq!(
            t.events,
            vec![EventRec::Exit {
                t_ns: 6,
                pid: 7,
                comm: "x".into()
            }]
        );
        assert!(t.summary.is_some());
        assert_eq!(t.probes.len(), 1);
        assert!(t.problems.is_empty() && t.warnings.is_empty());
    }

    #[test]
    fn malformed_lines_are_reported_and_the_rest_kept() {
        let text = format!(
            "{HEADER}\n{SAMPLE}\nthis is not json\n{SAMPLE}\n{}\n{}\n{}",
            r#"{"type":"sample","rss_bytes":1}"#,
            r#"{"type":"mystery"}"#,
            &SAMPLE[..40]
        );
        let t = parse_str(&text).unwrap();
        assert_eq!(t.samples.len(), 2);
        let lines: Vec<usize> = t.problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![3, 5, 6, 7], "{:?}", t.problems);
        assert!(t.problems[0].reason.contains("not a JSON object"));
        assert!(t.problems[1].reason.contains("t_ns"), "{}", t.problems[1]);
        assert!(t.problems[2].reason.contains("mystery"));
        assert!(t.problems[3].reason.contains("truncated last line"));
        assert_eq!(t.problems[3].to_string().split(':').next(), Some("line 7"));
        assert!(t.warnings.iter().any(|w| w.contains("no summary")));
    }

    /// A recording cut inside the "è" (C3 A8) of an exec event's file name, after a line
    /// whose "è" was damaged (C3 28): both lines are reported, the rest read.
    #[test]
    fn lines_that_are_not_utf8_are_reported_and_a_cut_one_is_dropped() {
        let exec =
            r#"{"type":"event","event":"exec","t_ns":6,"pid":7,"comm":"x","filename":"/m/modèle"}"#;
        let mut data = format!("{HEADER}\n{exec}\n{SAMPLE}\n{exec}\n{exec}").into_bytes();
        let column = exec.find('è').unwrap() + 1;
        // Line 2's "è" is damaged; the last line is cut between the two bytes of its own.
        data[HEADER.len() + 1 + column] = b'(';
        data.truncate(data.len() - exec.len() + column);
        let t = parse_bytes(&data, Path::new("t.jsonl")).unwrap();
        assert_eq!(t.samples.len(), 1);
        assert_eq!(t.events.len(), 1, "{:?}", t.problems);
        assert_eq!(
            t.problems,
            vec![
                Problem {
                    line: 2,
                    reason: format!("not UTF-8 text (an invalid byte at column {column})"),
                },
                Problem {
                    line: 5,
                    reason: format!(
                        "truncated last line: {column} bytes without a newline (the recording \
                         was probably killed)"
                    ),
                },
            ]
        );
        // The same through the file reader.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.jsonl");
        std::fs::write(&path, &data).unwrap();
        assert_eq!(read_file(&path).unwrap().problems, t.problems);
    }

    #[test]
    fn newer_schema_is_a_warning_and_known_records_are_read() {
        let text = format!(
            "{}\n{SAMPLE}\n{}\n",
            HEADER.replace("\"schema_version\":1", "\"schema_version\":7"),
            r#"{"type":"event","event":"teleport","t_ns":1}"#
        );
        let t = parse_str(&text).unwrap();
        assert_eq!(t.samples.len(), 1);
        assert!(
            t.warnings[0].contains("schema_version 7 is newer"),
            "{:?}",
            t.warnings
        );
        assert_eq!(t.problems.len(), 1);
        assert_eq!(t.problems[0].line, 3);
    }

    #[test]
    fn missing_header_is_an_error_naming_the_file() {
        let e = parse_str(&format!("{SAMPLE}\n")).unwrap_err().to_string();
        assert!(e.contains("t.jsonl") && e.contains("no header"), "{e}");
        let e = read_file(Path::new("/nonexistent/x.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/x.jsonl"), "{e}");
    }

    #[test]
    fn gpu_fields_are_kept_by_name() {
        let s = SAMPLE.replace(
            "\"system_cpu_percent\":null",
            "\"system_cpu_percent\":null,\"gpus\":[{\"index\":1,\"vram_used_bytes\":5,\"temp_edge_c\":40.5,\"asleep\":false}]",
        );
        let t = parse_str(&format!("{HEADER}\n{s}\n")).unwrap();
        let g = &t.samples[0].gpus[0];
        assert_eq!(g.index, 1);
        assert_eq!(g.num("vram_used_bytes"), Some(5.0));
        assert_eq!(g.num("temp_edge_c"), Some(40.5));
        assert_eq!(t.gpu_indices(), vec![1]);
    }
}
