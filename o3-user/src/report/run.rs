//! An `o3 optimize` run directory, read for a report without changing it: run.json, the
//! journal (every probe in the order it ran), summary.json when the run got that far, and the
//! per-probe trace files under traces/.
//!
//! What a cut or damaged run still holds is reported: a damaged line of the journal or of a
//! trace, and a last line cut short, are skipped and listed in [`Run::problems`]. A file that is
//! not what `o3 optimize` writes (a directory where a file belongs, a file where traces/
//! belongs, run.json or summary.json with values of the wrong JSON type) refuses the run: its
//! report would be silently wrong.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde_json::Value;
use thiserror::Error;

use crate::optimize::journal::{read_entries, Entry};

use crate::trace::{read_file, Trace};

#[derive(Debug, Error)]
pub enum RunError {
    #[error("{0} is not an o3 optimize run directory: it has no run.json (give the directory `o3 optimize --out` wrote, or one listed by `o3 history`)")]
    NotARun(PathBuf),
    #[error("cannot read {path}: {source}; check its permissions")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {what}; {fix}")]
    Json {
        path: PathBuf,
        what: String,
        fix: &'static str,
    },
    #[error(
        "{path} is {found}, but o3 optimize writes {expected} there; move it away, or give the \
         directory `o3 optimize --out` wrote"
    )]
    WrongKind {
        path: PathBuf,
        found: &'static str,
        expected: &'static str,
    },
}

/// What to do about a damaged run.json.
const RUN_FIX: &str =
    "the file is damaged or not written by o3 optimize: this run cannot be reported or resumed";
/// What to do about a damaged summary.json.
const SUMMARY_FIX: &str = "the file is damaged or not written by o3 optimize: move it away to \
     report from the journal, and `o3 optimize --resume DIR` writes it again";

/// A probe's samples, placed in the run's time line.
#[derive(Debug, Clone)]
pub struct ProbeTrace {
    /// File name under traces/.
    pub file: String,
    /// The stage that asked for the probe.
    pub stage: String,
    pub trace: Trace,
}

impl ProbeTrace {
    pub fn start_unix_ns(&self) -> u64 {
        self.trace.header.start_unix_ns.unwrap_or(0)
    }
}

#[derive(Debug, Clone)]
pub struct Run {
    pub dir: PathBuf,
    pub run: Value,
    /// Absent when the run was killed before it wrote one.
    pub summary: Option<Value>,
    /// Probes in the order they ran.
    pub probes: Vec<Entry>,
    /// Per-probe traces in time order (runs without them, e.g. simulated ones, have none).
    pub traces: Vec<ProbeTrace>,
    /// Lines or files that could not be used, each with where and why.
    pub problems: Vec<String>,
}

/// The JSON types the report reads a key of run.json or summary.json as. A key may be absent
/// or null (an earlier o3, an optional value).
#[derive(Debug, Clone, Copy)]
enum Want {
    Object,
    /// An array of objects.
    Objects,
    /// An array of strings.
    Strings,
    Str,
    Number,
    /// A non-negative integer.
    Count,
    Bool,
}

impl Want {
    fn describe(self) -> &'static str {
        match self {
            Want::Object => "an object",
            Want::Objects => "an array of objects",
            Want::Strings => "an array of strings",
            Want::Str => "a string",
            Want::Number => "a number",
            Want::Count => "a non-negative integer",
            Want::Bool => "true or false",
        }
    }

    /// What an element of an array type is.
    fn element(self) -> &'static str {
        match self {
            Want::Objects => "an object",
            Want::Strings => "a string",
            other => other.describe(),
        }
    }

    /// Whether `v` is of this type; for arrays, the index of the first element that is not.
    fn mismatch(self, v: &Value) -> Option<Option<usize>> {
        let elements = |of: fn(&Value) -> bool| match v.as_array() {
            None => Some(None),
            Some(a) => a.iter().position(|e| !of(e)).map(Some),
        };
        let ok = match self {
            Want::Object => v.is_object(),
            Want::Objects => return elements(Value::is_object),
            Want::Strings => return elements(Value::is_string),
            Want::Str => v.is_string(),
            Want::Number => v.is_number(),
            Want::Count => v.is_u64(),
            Want::Bool => v.is_boolean(),
        };
        (!ok).then_some(None)
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The keys of run.json, with the JSON types `o3 optimize` writes them as.
const RUN_KEYS: &[(&str, Want)] = &[
    ("schema_version", Want::Count),
    ("o3_version", Want::Str),
    ("created_unix_ns", Want::Count),
    ("target", Want::Object),
    ("config", Want::Object),
    ("config_notices", Want::Strings),
    ("shape", Want::Object),
    ("host", Want::Object),
    ("learned", Want::Object),
    ("learning_notes", Want::Strings),
    ("start_context", Want::Count),
    ("gallop", Want::Bool),
];

/// The keys of summary.json, with the JSON types `o3 optimize` writes them as
/// (docs/optimizer.md, Output).
const SUMMARY_KEYS: &[(&str, Want)] = &[
    ("schema_version", Want::Count),
    ("o3_version", Want::Str),
    ("run_dir", Want::Str),
    ("model", Want::Str),
    ("backend", Want::Str),
    ("simulated", Want::Bool),
    ("trained_context", Want::Count),
    ("parameters", Want::Count),
    ("fill", Want::Number),
    ("max_prompt_tokens", Want::Count),
    ("output_tokens", Want::Count),
    ("presets", Want::Objects),
    ("context", Want::Object),
    ("configurations", Want::Objects),
    ("notes", Want::Strings),
    ("reused", Want::Strings),
    ("learning_notes", Want::Strings),
    ("skipped", Want::Objects),
    ("explored", Want::Objects),
    ("probes", Want::Object),
    ("peaks", Want::Object),
    ("plan", Want::Object),
    ("simulated_s", Want::Number),
    ("wall_s", Want::Number),
    ("interrupted", Want::Bool),
    ("predictions", Want::Object),
    ("finished_unix_ns", Want::Count),
];

/// Reads the JSON object at `path` and checks the types of its `keys` that are present.
fn read_json(path: &Path, keys: &[(&str, Want)], fix: &'static str) -> Result<Value, RunError> {
    let bytes = std::fs::read(path).map_err(|source| RunError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let json_err = |what: String| RunError::Json {
        path: path.to_path_buf(),
        what,
        fix,
    };
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| json_err(e.to_string()))?;
    let Some(obj) = v.as_object() else {
        return Err(json_err(format!(
            "it holds {}, not a JSON object",
            json_type(&v)
        )));
    };
    for &(key, want) in keys {
        let Some(value) = obj.get(key).filter(|v| !v.is_null()) else {
            continue;
        };
        match want.mismatch(value) {
            None => {}
            Some(None) => {
                return Err(json_err(format!(
                    "`{key}` is {}, not {}",
                    json_type(value),
                    want.describe()
                )))
            }
            Some(Some(i)) => {
                return Err(json_err(format!(
                    "`{key}[{i}]` is {}, not {}",
                    json_type(&value[i]),
                    want.element()
                )))
            }
        }
    }
    Ok(v)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Missing,
    File,
    Dir,
    Other,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Missing => "missing",
            Kind::File => "a file",
            Kind::Dir => "a directory",
            Kind::Other => "neither a file nor a directory",
        }
    }
}

/// What is at `path` (links followed; a dangling link is missing).
fn kind(path: &Path) -> Result<Kind, RunError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(Kind::File),
        Ok(m) if m.is_dir() => Ok(Kind::Dir),
        Ok(_) => Ok(Kind::Other),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Kind::Missing),
        Err(source) => Err(RunError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Whether `path` is there: `want` (true), absent (false), or something else (an error that
/// says what `o3 optimize` writes there).
fn present(path: &Path, want: Kind, expected: &'static str) -> Result<bool, RunError> {
    match kind(path)? {
        Kind::Missing => Ok(false),
        k if k == want => Ok(true),
        k => Err(RunError::WrongKind {
            path: path.to_path_buf(),
            found: k.describe(),
            expected,
        }),
    }
}

pub fn read_run(dir: &Path) -> Result<Run, RunError> {
    let run_path = dir.join("run.json");
    if !present(&run_path, Kind::File, "a JSON file")? {
        return Err(RunError::NotARun(dir.to_path_buf()));
    }
    let run = read_json(&run_path, RUN_KEYS, RUN_FIX)?;
    let mut problems = Vec::new();
    let summary_path = dir.join("summary.json");
    let summary = if present(&summary_path, Kind::File, "a JSON file")? {
        Some(read_json(&summary_path, SUMMARY_KEYS, SUMMARY_FIX)?)
    } else {
        problems.push(
            "no summary.json: the run was cut before it finished (`o3 optimize --resume DIR` completes it); the report shows the probes in the journal".into(),
        );
        None
    };
    let jpath = dir.join("journal.jsonl");
    let probes = if present(&jpath, Kind::File, "a file of one JSON line per probe")? {
        let (entries, bad) = read_entries(&jpath).map_err(|source| RunError::Io {
            path: jpath.clone(),
            source,
        })?;
        problems.extend(
            bad.into_iter()
                .map(|(line, why)| format!("journal.jsonl line {line}: {why} (skipped)")),
        );
        entries
    } else {
        Vec::new()
    };
    let mut traces = Vec::new();
    let tdir = dir.join("traces");
    if present(&tdir, Kind::Dir, "a directory of per-probe trace files")? {
        let rd = std::fs::read_dir(&tdir).map_err(|source| RunError::Io {
            path: tdir.clone(),
            source,
        })?;
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect();
        files.sort();
        for p in files {
            let file = p
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            match read_file(&p) {
                Ok(trace) => {
                    for pr in &trace.problems {
                        problems.push(format!("traces/{file}: {pr} (skipped)"));
                    }
                    let stage = trace.header.target["optimize"]["stage"]
                        .as_str()
                        .unwrap_or("?")
                        .to_string();
                    traces.push(ProbeTrace { file, stage, trace });
                }
                Err(e) => {
                    let why = std::error::Error::source(&e)
                        .map_or_else(|| e.to_string(), |s| format!("{e}: {s}"));
                    problems.push(format!("traces/{file}: {why} (skipped)"));
                }
            }
        }
    }
    traces.sort_by_key(ProbeTrace::start_unix_ns);
    Ok(Run {
        dir: dir.to_path_buf(),
        run,
        summary,
        probes,
        traces,
        problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{OutcomeClass, ProbeConfig};
    use crate::optimize::journal::Journal;
    use crate::optimize::prober::{Depth, ProbeOutcome, ProbeRequest, Stage};

    /// A run directory with run.json and, when given, summary.json.
    fn run_dir(run: &str, summary: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("run.json"), run).unwrap();
        if let Some(s) = summary {
            std::fs::write(dir.path().join("summary.json"), s).unwrap();
        }
        dir
    }

    fn err(dir: &Path) -> String {
        match read_run(dir) {
            Ok(r) => panic!("read without error: {:?}", r.problems),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn files_of_the_wrong_kind_refuse_the_run() {
        for (name, found, expected) in [
            (
                "journal.jsonl",
                "a directory",
                "a file of one JSON line per probe",
            ),
            ("summary.json", "a directory", "a JSON file"),
            ("run.json", "a directory", "a JSON file"),
            ("traces", "a file", "a directory of per-probe trace files"),
        ] {
            let dir = run_dir("{}", None);
            let path = dir.path().join(name);
            if name == "traces" {
                std::fs::write(&path, "").unwrap();
            } else {
                let _ = std::fs::remove_file(&path);
                std::fs::create_dir(&path).unwrap();
            }
            assert_eq!(
                err(dir.path()),
                format!(
                    "{} is {found}, but o3 optimize writes {expected} there; move it away, or \
                     give the directory `o3 optimize --out` wrote",
                    path.display()
                )
            );
        }
    }

    #[test]
    fn json_of_the_wrong_types_refuses_the_run() {
        let summary = |s: &str| {
            let dir = run_dir("{}", Some(s));
            let e = err(dir.path());
            let prefix = format!("{}: ", dir.path().join("summary.json").display());
            let what = e.strip_prefix(&prefix).unwrap_or_else(|| panic!("{e}"));
            let (what, fix) = what.split_once("; ").unwrap();
            assert_eq!(fix, SUMMARY_FIX);
            what.to_string()
        };
        assert_eq!(summary("[1, 2]"), "it holds an array, not a JSON object");
        assert_eq!(
            summary(r#"{"presets": "fast"}"#),
            "`presets` is a string, not an array of objects"
        );
        assert_eq!(
            summary(r#"{"presets": [{}, 3]}"#),
            "`presets[1]` is a number, not an object"
        );
        assert_eq!(
            summary(r#"{"wall_s": "12.5"}"#),
            "`wall_s` is a string, not a number"
        );
        assert_eq!(
            summary(r#"{"interrupted": 0}"#),
            "`interrupted` is a number, not true or false"
        );
        assert_eq!(
            summary(r#"{"probes": {"total": 3}, "trained_context": -1}"#),
            "`trained_context` is a number, not a non-negative integer"
        );
        assert_eq!(
            summary(r#"{"notes": ["a", null]}"#),
            "`notes[1]` is null, not a string"
        );
        // Absent and null keys are fine (an earlier o3, optional values).
        let dir = run_dir("{}", Some(r#"{"trained_context": null, "presets": []}"#));
        assert!(read_run(dir.path()).unwrap().summary.is_some());

        let dir = run_dir(r#"{"target": ["m.gguf"]}"#, None);
        assert_eq!(
            err(dir.path()),
            format!(
                "{}: `target` is an array, not an object; {RUN_FIX}",
                dir.path().join("run.json").display()
            )
        );
    }

    fn req(ctx: u32) -> ProbeRequest {
        ProbeRequest {
            stage: Stage::Context,
            config: ProbeConfig {
                ctx,
                ..ProbeConfig::default()
            },
            depth: Depth::Load,
            rounds: 1,
            concurrency: 1,
        }
    }

    /// A journal whose lines all hold the model path /m/modèle.gguf ("è" is C3 A8): line 2
    /// damaged (C3 28, not UTF-8) and the last line cut between the two bytes of its "è", as a
    /// full disk leaves it; and a trace cut the same way. The run reads, the lines are listed.
    #[test]
    fn damaged_and_cut_lines_are_skipped_with_the_file_and_line() {
        let dir = run_dir("{}", None);
        let jpath = dir.path().join("journal.jsonl");
        {
            let mut j = Journal::open(&jpath).unwrap();
            for ctx in [1024, 2048, 4096] {
                let raw = serde_json::json!({ "model": "/m/modèle.gguf" });
                let out = ProbeOutcome::failed(OutcomeClass::Oom, "out of memory");
                j.append(&req(ctx), &out, Some(raw)).unwrap();
            }
        }
        let mut bytes = std::fs::read(&jpath).unwrap();
        let e_grave: Vec<usize> = bytes
            .windows(2)
            .enumerate()
            .filter(|(_, w)| *w == [0xC3, 0xA8])
            .map(|(i, _)| i)
            .collect();
        assert_eq!(e_grave.len(), 3);
        bytes[e_grave[1] + 1] = b'(';
        bytes.truncate(e_grave[2] + 1);
        let third = bytes.iter().rposition(|&b| b == b'\n').unwrap() + 1;
        std::fs::write(&jpath, &bytes).unwrap();

        let traces = dir.path().join("traces");
        std::fs::create_dir(&traces).unwrap();
        let header =
            r#"{"type":"header","schema_version":1,"target":{"optimize":{"stage":"context"}}}"#;
        let exec =
            r#"{"type":"event","event":"exec","t_ns":6,"pid":7,"comm":"x","filename":"/m/modèle"}"#;
        let trace = format!("{header}\n{exec}\n{exec}");
        let cut = trace.len() - exec.len() + exec.find('è').unwrap() + 1;
        std::fs::write(traces.join("001-context.jsonl"), &trace.as_bytes()[..cut]).unwrap();

        let r = read_run(dir.path()).unwrap();
        assert_eq!(r.probes.len(), 1);
        assert_eq!(r.traces.len(), 1);
        assert_eq!(r.traces[0].trace.events.len(), 1);
        let line2 = bytes[..e_grave[1]]
            .iter()
            .rposition(|&b| b == b'\n')
            .unwrap();
        assert_eq!(
            r.problems,
            vec![
                "no summary.json: the run was cut before it finished (`o3 optimize --resume DIR` \
                 completes it); the report shows the probes in the journal"
                    .to_string(),
                format!(
                    "journal.jsonl line 2: not UTF-8 text (an invalid byte at column {}) \
                     (skipped)",
                    e_grave[1] - line2
                ),
                format!(
                    "journal.jsonl line 3: truncated last line: {} bytes without a newline (a \
                     write interrupted by a kill or a full disk) (skipped)",
                    bytes.len() - third
                ),
                format!(
                    "traces/001-context.jsonl: line 3: truncated last line: {} bytes without a \
                     newline (the recording was probably killed) (skipped)",
                    exec.find('è').unwrap() + 1
                ),
            ]
        );
    }
}
