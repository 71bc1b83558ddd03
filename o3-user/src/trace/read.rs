//! Trace reader: a JSON Lines trace (docs/trace-format.md) into its records
//! ([`super::record`]). The file is split into lines as bytes ([`super::lines`]); malformed
//! lines (not UTF-8, not JSON, not a record) and a truncated last line are reported with their
//! line number and skipped; the rest is kept.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;
use thiserror::Error;

use super::lines::{self, Line, NotUtf8};
use super::record::{HeaderRec, SampleRec, TreeEvent};
use super::SCHEMA_VERSION;

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

/// Why a line was skipped.
#[derive(Debug, Error)]
enum Skip {
    #[error(transparent)]
    NotUtf8(#[from] NotUtf8),
    #[error("not a JSON object: {0}")]
    NotJson(serde_json::Error),
    #[error(
        "truncated last line: {0} bytes without a newline (the recording was probably killed)"
    )]
    Truncated(usize),
    #[error("no `type` field: not a trace record")]
    NoType,
    #[error("a second header: ignored")]
    SecondHeader,
    #[error("bad {kind}: {source}")]
    Bad {
        kind: &'static str,
        source: serde_json::Error,
    },
    #[error("unknown event kind {0} (written by a newer o3?)")]
    UnknownEvent(Value),
    #[error("unknown record type `{0}` (written by a newer o3?)")]
    UnknownType(String),
}

/// A parsed trace.
#[derive(Debug, Clone)]
pub struct Trace {
    /// The file it was read from, as given.
    pub path: PathBuf,
    pub header: HeaderRec,
    pub samples: Vec<SampleRec>,
    pub events: Vec<TreeEvent>,
    /// The `summary` record without its `type` (the object `o3 record --json` prints), absent
    /// when the recording was killed.
    pub summary: Option<Value>,
    /// `probe` records without their `type` (`o3 probe --out`).
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
    let mut p = Parser::default();
    for l in lines::split(data) {
        p.line(&l);
    }
    p.finish(path)
}

/// The records read so far.
#[derive(Default)]
struct Parser {
    header: Option<HeaderRec>,
    samples: Vec<SampleRec>,
    events: Vec<TreeEvent>,
    summary: Option<Value>,
    probes: Vec<Value>,
    problems: Vec<Problem>,
    warnings: Vec<String>,
}

impl Parser {
    /// Keeps the line's record, or notes why not. Blank lines are nothing.
    fn line(&mut self, l: &Line) {
        if l.is_blank() {
            return;
        }
        if let Err(skip) = decode(l).and_then(|v| self.record(v)) {
            self.problems.push(Problem {
                line: l.number,
                reason: skip.to_string(),
            });
        }
    }

    fn record(&mut self, v: Value) -> Result<(), Skip> {
        match v.get("type").and_then(Value::as_str).ok_or(Skip::NoType)? {
            "header" => self.header(&v)?,
            "sample" => self.samples.push(typed("sample", &v)?),
            "event" => self.events.push(event(&v)?),
            "summary" => self.summary = Some(body(v)),
            "probe" => self.probes.push(body(v)),
            other => return Err(Skip::UnknownType(other.to_owned())),
        }
        Ok(())
    }

    /// The first header counts; its schema version is compared with this o3's.
    fn header(&mut self, v: &Value) -> Result<(), Skip> {
        if self.header.is_some() {
            return Err(Skip::SecondHeader);
        }
        let h: HeaderRec = typed("header", v)?;
        self.warnings.extend(schema_warning(h.schema_version));
        self.header = Some(h);
        Ok(())
    }

    fn finish(mut self, path: &Path) -> Result<Trace, ReadError> {
        let Some(header) = self.header else {
            return Err(ReadError::NoHeader {
                path: path.to_path_buf(),
            });
        };
        if self.summary.is_none() && self.probes.is_empty() {
            self.warnings.push(
                "no summary record: the recording did not end normally; peaks come from the \
                 samples"
                    .into(),
            );
        }
        Ok(Trace {
            path: path.to_path_buf(),
            header,
            samples: self.samples,
            events: self.events,
            summary: self.summary,
            probes: self.probes,
            problems: self.problems,
            warnings: self.warnings,
        })
    }
}

/// The line as JSON. A last line without a newline that does not decode was cut short.
fn decode(l: &Line) -> Result<Value, Skip> {
    let parsed = l
        .text()
        .map_err(Skip::from)
        .and_then(|text| serde_json::from_str(text).map_err(Skip::NotJson));
    match parsed {
        Err(_) if !l.terminated => Err(Skip::Truncated(l.bytes.len())),
        parsed => parsed,
    }
}

/// A record of type `kind` as its Rust type.
fn typed<T: DeserializeOwned>(kind: &'static str, v: &Value) -> Result<T, Skip> {
    T::deserialize(v).map_err(|source| Skip::Bad { kind, source })
}

/// An event of a kind this o3 knows.
fn event(v: &Value) -> Result<TreeEvent, Skip> {
    let kind = v.get("event");
    if !kind
        .and_then(Value::as_str)
        .is_some_and(|k| TreeEvent::KINDS.contains(&k))
    {
        return Err(Skip::UnknownEvent(kind.cloned().unwrap_or(Value::Null)));
    }
    typed("event", v)
}

/// A record whose content is free-form (summary, probe), without its `type`: the object as
/// it was written.
fn body(mut v: Value) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.remove("type");
    }
    v
}

fn schema_warning(version: u32) -> Option<String> {
    if version > SCHEMA_VERSION {
        Some(format!(
            "schema_version {version} is newer than the one this o3 reads ({SCHEMA_VERSION}): \
             records and fields it does not know are skipped; upgrade o3 to read them all"
        ))
    } else if version < SCHEMA_VERSION {
        Some(format!(
            "schema_version {version} is older than the one this o3 writes ({SCHEMA_VERSION}): \
             read as version {SCHEMA_VERSION}"
        ))
    } else {
        None
    }
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
            vec![TreeEvent::Exit {
                t_ns: 6,
                pid: 7,
                comm: "x".into()
            }]
        );
        assert_eq!(t.summary, Some(serde_json::json!({"wall_ns": 9})));
        assert_eq!(t.probes, vec![serde_json::json!({"outcome": "ok"})]);
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

    /// A computed percentage has 17 significant digits; about one in twelve read back one ulp
    /// off with serde_json's default float parser (hence its `float_roundtrip` feature).
    #[test]
    fn floats_read_back_exactly() {
        let x = 30.044374992603554;
        let s = SAMPLE.replace(
            "\"system_cpu_percent\":null",
            &format!("\"system_cpu_percent\":{x}"),
        );
        let t = parse_str(&format!("{HEADER}\n{s}\n")).unwrap();
        assert_eq!(t.samples[0].system_cpu_percent, Some(x));
    }

    /// The hand-made damaged copies of the real recording in tests/fixtures/traces.
    #[test]
    fn malformed_fixtures_keep_the_rest() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/traces");
        let read = |n: &str| read_file(&dir.join(format!("{n}.jsonl")));
        let full = read("record").unwrap();
        let g = read("garbage").unwrap();
        assert_eq!(
            g.problems.iter().map(|p| p.line).collect::<Vec<_>>(),
            vec![26, 27]
        );
        assert_eq!(g.samples.len(), full.samples.len());
        let t = read("truncated").unwrap();
        assert_eq!(t.problems.len(), 1);
        assert!(t.problems[0].reason.contains("truncated"));
        assert_eq!(t.samples.len(), full.samples.len() - 1);
        assert!(t.summary.is_none());
        let f = read("future-schema").unwrap();
        assert!(f.warnings[0].contains("newer"));
        assert_eq!(f.problems.len(), 2);
        assert_eq!(f.samples.len(), full.samples.len());
        let e = read("no-header").unwrap_err().to_string();
        assert!(
            e.contains("no-header.jsonl") && e.contains("no header"),
            "{e}"
        );
    }
}
