//! The run journal: one JSON line per finished probe, written and fsync'd before the next probe
//! starts. On resume the search asks for the same probes in the same order (it is
//! deterministic in the outcomes), and every one already in the journal is answered from it.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::ProbeConfig;

use super::prober::{ProbeOutcome, ProbeRequest, Prober};

#[derive(Debug, Serialize, Deserialize)]
struct Line {
    key: String,
    request: ProbeRequest,
    outcome: ProbeOutcome,
    /// Unix time the probe finished, ns.
    finished_unix_ns: u64,
    /// The full probe result as measured (per request, per round), for reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    raw: Option<serde_json::Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot open the journal {path}: {source}; check the run directory is writable")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the journal {path}: {source}; the run stops so no result is lost (free space, then resume)")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Sink(String),
    #[error("{path} line {line}: {what}; the journal is damaged (move it away to start over)")]
    Corrupt {
        path: PathBuf,
        line: usize,
        what: String,
    },
}

pub struct Journal {
    path: PathBuf,
    file: File,
    done: HashMap<String, ProbeOutcome>,
    /// Probes in the journal when it was opened.
    pub loaded: usize,
}

impl Journal {
    /// Opens (creating) the journal. A last line cut short by a kill is dropped; any other
    /// unreadable line is an error.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        let open_err = |source| JournalError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(open_err)?;
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(open_err)?;
        let complete = match text.rfind('\n') {
            Some(i) => i + 1,
            None => 0,
        };
        if complete < text.len() {
            // A torn last line: drop it so the next append starts on a fresh line.
            file.set_len(complete as u64).map_err(open_err)?;
            file.seek(SeekFrom::End(0)).map_err(open_err)?;
        }
        let mut done = HashMap::new();
        for (i, l) in text[..complete].lines().enumerate() {
            if l.trim().is_empty() {
                continue;
            }
            let line: Line = serde_json::from_str(l).map_err(|e| JournalError::Corrupt {
                path: path.to_path_buf(),
                line: i + 1,
                what: e.to_string(),
            })?;
            done.insert(line.key, line.outcome);
        }
        let loaded = done.len();
        Ok(Journal {
            path: path.to_path_buf(),
            file,
            done,
            loaded,
        })
    }

    pub fn get(&self, req: &ProbeRequest) -> Option<&ProbeOutcome> {
        self.done.get(&req.key())
    }

    /// Appends one probe and makes it durable (fsync) before returning.
    pub fn append(
        &mut self,
        req: &ProbeRequest,
        outcome: &ProbeOutcome,
        raw: Option<serde_json::Value>,
    ) -> Result<(), JournalError> {
        let line = Line {
            key: req.key(),
            request: req.clone(),
            outcome: outcome.clone(),
            finished_unix_ns: crate::record::unix_now_ns(),
            raw,
        };
        let mut text = serde_json::to_string(&line).expect("a journal line serialises");
        text.push('\n');
        let werr = |source| JournalError::Write {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(text.as_bytes()).map_err(werr)?;
        self.file.sync_data().map_err(werr)?;
        self.done.insert(line.key, line.outcome);
        Ok(())
    }
}

/// One journal line as a report reads it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub request: ProbeRequest,
    pub outcome: ProbeOutcome,
    /// Unix time the probe finished, ns.
    pub finished_unix_ns: u64,
}

/// A journal line that could not be read: 1-based line number, why.
pub type BadLine = (usize, String);

/// Reads a journal without changing it (reports): the probes in the order they ran, and the
/// lines that could not be read, which are skipped.
pub fn read_entries(path: &Path) -> std::io::Result<(Vec<Entry>, Vec<BadLine>)> {
    let text = std::fs::read_to_string(path)?;
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    for (i, l) in lines.iter().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        if !l.ends_with('\n') {
            problems.push((
                i + 1,
                "truncated line (the run was killed while writing it)".into(),
            ));
            continue;
        }
        match serde_json::from_str::<Line>(l) {
            Ok(line) => entries.push(Entry {
                request: line.request,
                outcome: line.outcome,
                finished_unix_ns: line.finished_unix_ns,
            }),
            Err(e) => problems.push((i + 1, e.to_string())),
        }
    }
    Ok((entries, problems))
}

/// Where the full result of the last probe can be had (the live prober keeps it for the
/// journal; simulators have none).
pub trait Raw {
    fn take_raw(&mut self) -> Option<serde_json::Value> {
        None
    }
}

impl<R: Raw + ?Sized> Raw for &mut R {
    fn take_raw(&mut self) -> Option<serde_json::Value> {
        (**self).take_raw()
    }
}

/// A prober whose finished probes are journaled, and answered from the journal when asked again.
pub struct Journaled<'j, P> {
    pub inner: P,
    journal: &'j mut Journal,
    /// Probes answered from the journal.
    pub replayed: u32,
    /// Probes run now.
    pub ran: u32,
    /// Set when the journal could not be written: the run stops.
    pub error: Option<JournalError>,
    /// Also given every probe run now, before the journal line is written (the results store).
    pub sink: Option<Sink<'j>>,
}

/// Where finished probes also go; an error stops the run.
pub type Sink<'j> = Box<
    dyn FnMut(&ProbeRequest, &ProbeOutcome, Option<&serde_json::Value>) -> Result<(), String> + 'j,
>;

impl<'j, P> Journaled<'j, P> {
    pub fn new(inner: P, journal: &'j mut Journal) -> Self {
        Journaled {
            inner,
            journal,
            replayed: 0,
            ran: 0,
            error: None,
            sink: None,
        }
    }
}

impl<P: Prober + Raw> Prober for Journaled<'_, P> {
    fn know(&mut self, model: &crate::timing::TimeModel) {
        self.inner.know(model)
    }

    fn probe(&mut self, req: &ProbeRequest) -> Option<ProbeOutcome> {
        if self.error.is_some() {
            return None;
        }
        if let Some(o) = self.journal.get(req) {
            self.replayed += 1;
            return Some(o.clone());
        }
        let out = self.inner.probe(req)?;
        let raw = self.inner.take_raw();
        if let Some(sink) = self.sink.as_mut() {
            if let Err(e) = sink(req, &out, raw.as_ref()) {
                self.error = Some(JournalError::Sink(e));
                return None;
            }
        }
        if let Err(e) = self.journal.append(req, &out, raw) {
            self.error = Some(e);
            return None;
        }
        self.ran += 1;
        Some(out)
    }

    fn fixed_by_server(&self, cfg: &ProbeConfig) -> Vec<&'static str> {
        self.inner.fixed_by_server(cfg)
    }
}
