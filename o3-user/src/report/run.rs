//! An `o3 optimize` run directory, read for a report without changing it: run.json, the
//! journal (every probe in the order it ran), summary.json when the run got that far, and the
//! per-probe trace files under traces/.

use std::path::{Path, PathBuf};

use serde_json::Value;
use thiserror::Error;

use crate::optimize::journal::{read_entries, Entry};

use super::read::{read_file, Trace};

#[derive(Debug, Error)]
pub enum RunError {
    #[error("{0} is not an o3 optimize run directory: it has no run.json (give the directory `o3 optimize --out` wrote, or one listed by `o3 history`)")]
    NotARun(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {what} (the file is damaged; run `o3 optimize --resume` on the directory to rewrite the summary)")]
    Json { path: PathBuf, what: String },
}

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

fn read_json(path: &Path) -> Result<Value, RunError> {
    let text = std::fs::read_to_string(path).map_err(|source| RunError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| RunError::Json {
        path: path.to_path_buf(),
        what: e.to_string(),
    })
}

pub fn read_run(dir: &Path) -> Result<Run, RunError> {
    let run_path = dir.join("run.json");
    if !run_path.is_file() {
        return Err(RunError::NotARun(dir.to_path_buf()));
    }
    let run = read_json(&run_path)?;
    let mut problems = Vec::new();
    let summary_path = dir.join("summary.json");
    let summary = if summary_path.is_file() {
        Some(read_json(&summary_path)?)
    } else {
        problems.push(
            "no summary.json: the run was cut before it finished (`o3 optimize --resume DIR` completes it); the report shows the probes in the journal".into(),
        );
        None
    };
    let jpath = dir.join("journal.jsonl");
    let probes = if jpath.is_file() {
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
    if let Ok(rd) = std::fs::read_dir(&tdir) {
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
                Err(e) => problems.push(format!("traces/{file}: {e} (skipped)")),
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
