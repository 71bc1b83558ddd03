//! The run journal: one JSON line per finished probe, written and fsync'd before the next probe
//! starts. On resume the search asks for the same probes in the same order (it is
//! deterministic in the outcomes), and every one already in the journal is answered from it.
//!
//! The journal is read as bytes, line by line ([`crate::trace::lines`]): a write cut short by a
//! kill or a full disk, anywhere (inside a multi-byte UTF-8 character of a model path too),
//! loses only the line it was writing.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::ProbeConfig;
use crate::learn::store::StoreError;
use crate::trace::lines;

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
    /// The results store refused a finished probe (said as the store says it).
    #[error("{0}")]
    Sink(StoreError),
    #[error("{path} line {line}: {what}; the journal is damaged (move it away to start over)")]
    Corrupt {
        path: PathBuf,
        line: usize,
        what: BadRecord,
    },
}

/// Why a journal line is not a record.
#[derive(Debug, thiserror::Error)]
pub enum BadRecord {
    /// Not UTF-8 text (where, as the line reader says it).
    #[error("{0}")]
    Text(String),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

pub struct Journal {
    path: PathBuf,
    file: File,
    done: HashMap<String, ProbeOutcome>,
    /// Probes in the journal when it was opened.
    pub loaded: usize,
}

/// One journal line's record, or why it is not one.
fn parse_line(line: &lines::Line) -> Result<Line, BadRecord> {
    Ok(serde_json::from_str(
        line.text().map_err(|e| BadRecord::Text(e.to_string()))?,
    )?)
}

impl Journal {
    /// Opens (creating) the journal. A last line without a newline is kept when it is a whole
    /// record (its newline is added); otherwise it is cut off the file, with a notice on
    /// stderr, and that probe runs again. Any other unreadable line is an error.
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
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(open_err)?;
        let mut done = HashMap::new();
        for l in lines::split(&data) {
            if l.is_blank() {
                continue;
            }
            match parse_line(&l) {
                Ok(line) => {
                    if !l.terminated {
                        // A whole record whose newline was not written: complete the line so
                        // the next one starts on its own.
                        file.write_all(b"\n")
                            .and_then(|()| file.sync_data())
                            .map_err(|source| JournalError::Write {
                                path: path.to_path_buf(),
                                source,
                            })?;
                    }
                    // Keyed by the request as this version writes it, so that a journal
                    // of an earlier version (`"flash_attn": true`) still answers.
                    done.insert(line.request.key(), line.outcome);
                }
                Err(_) if !l.terminated => {
                    // Appends then start where the cut line started.
                    file.set_len(l.offset)
                        .and_then(|()| file.sync_data())
                        .map_err(|source| JournalError::Write {
                            path: path.to_path_buf(),
                            source,
                        })?;
                    eprintln!(
                        "o3: warning: {}: dropped its last {} bytes, a line without a newline \
                         that is not a whole record (a write interrupted by a kill or a full \
                         disk); that probe runs again",
                        path.display(),
                        l.bytes.len()
                    );
                }
                Err(what) => {
                    return Err(JournalError::Corrupt {
                        path: path.to_path_buf(),
                        line: l.number,
                        what,
                    })
                }
            }
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
            finished_unix_ns: crate::util::system::unix_now_ns(),
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
/// lines that could not be read, which are skipped: a damaged line anywhere, and a last line
/// cut short (a last line without a newline that is a whole record is read).
pub fn read_entries(path: &Path) -> std::io::Result<(Vec<Entry>, Vec<BadLine>)> {
    let data = std::fs::read(path)?;
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    for l in lines::split(&data) {
        if l.is_blank() {
            continue;
        }
        match parse_line(&l) {
            Ok(line) => entries.push(Entry {
                request: line.request,
                outcome: line.outcome,
                finished_unix_ns: line.finished_unix_ns,
            }),
            Err(_) if !l.terminated => problems.push((
                l.number,
                format!(
                    "truncated last line: {} bytes without a newline (a write interrupted by a \
                     kill or a full disk)",
                    l.bytes.len()
                ),
            )),
            Err(e) => problems.push((l.number, e.to_string())),
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

/// Where finished probes also go (the results store); an error stops the run.
pub type Sink<'j> = Box<
    dyn FnMut(&ProbeRequest, &ProbeOutcome, Option<&serde_json::Value>) -> Result<(), StoreError>
        + 'j,
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
        self.inner.know(model);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::OutcomeClass;
    use crate::optimize::prober::{Depth, Stage};

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

    /// A journal of three probes of a model whose path has an "è" (C3 A8 in UTF-8) in every
    /// line, as the live prober's full results do; its bytes.
    fn three_probes(path: &Path) -> Vec<u8> {
        let mut j = Journal::open(path).unwrap();
        for ctx in [1024, 2048, 4096] {
            let out = ProbeOutcome::failed(OutcomeClass::Oom, "out of memory");
            let raw = serde_json::json!({ "model": "/models/modèle.gguf", "ctx": ctx });
            j.append(&req(ctx), &out, Some(raw)).unwrap();
        }
        std::fs::read(path).unwrap()
    }

    /// Where line `n` (1-based) starts.
    fn line_start(bytes: &[u8], n: usize) -> usize {
        lines::split(bytes).nth(n - 1).unwrap().offset as usize
    }

    #[test]
    fn a_line_cut_inside_a_multibyte_character_is_dropped_and_resume_appends_after_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let whole = three_probes(&path);
        let third = line_start(&whole, 3);
        let e_grave = third + whole[third..].iter().position(|&b| b == 0xC3).unwrap();
        // Cut between the two bytes of "è".
        std::fs::write(&path, &whole[..=e_grave]).unwrap();

        let (entries, bad) = read_entries(&path).unwrap();
        assert_eq!(entries.len(), 2);
        let cut = e_grave + 1 - third;
        assert_eq!(
            bad,
            vec![(
                3,
                format!(
                    "truncated last line: {cut} bytes without a newline (a write interrupted \
                     by a kill or a full disk)"
                )
            )]
        );

        let mut j = Journal::open(&path).unwrap();
        assert_eq!(j.loaded, 2);
        assert!(j.get(&req(2048)).is_some() && j.get(&req(4096)).is_none());
        // The fragment is gone: the file ends after the second line.
        assert_eq!(std::fs::read(&path).unwrap(), &whole[..third]);
        // The probe that was being written runs again and lands on a line of its own.
        let raw = serde_json::json!({ "model": "/models/modèle.gguf", "ctx": 4096 });
        let out = ProbeOutcome::failed(OutcomeClass::Oom, "out of memory");
        j.append(&req(4096), &out, Some(raw)).unwrap();
        drop(j);
        let (entries, bad) = read_entries(&path).unwrap();
        assert_eq!((entries.len(), bad.len()), (3, 0));
        assert_eq!(Journal::open(&path).unwrap().loaded, 3);
    }

    /// A journal line as an earlier version wrote it: flash attention as a bool, the outcome
    /// run together (`loadfailed`). Resuming answers the same request from it.
    #[test]
    fn a_journal_with_the_old_spellings_still_answers_on_resume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let mut r = req(8192);
        r.config.flash_attn = Some(crate::backend::FlashAttn::On);
        let mut j = Journal::open(&path).unwrap();
        let out = ProbeOutcome::failed(OutcomeClass::LoadFailed, "never became ready");
        j.append(&r, &out, None).unwrap();
        drop(j);
        let new = std::fs::read_to_string(&path).unwrap();
        let old = new
            .replace(r#""flash_attn":"on""#, r#""flash_attn":true"#)
            .replace(r#"\"flash_attn\":\"on\""#, r#"\"flash_attn\":true"#)
            .replace(r#""load_failed""#, r#""loadfailed""#);
        assert!(
            !old.contains("\"on\"") && old.contains("loadfailed"),
            "{old}"
        );
        std::fs::write(&path, old).unwrap();
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.get(&r).unwrap().outcome, OutcomeClass::LoadFailed);
    }

    #[test]
    fn a_whole_last_record_without_its_newline_is_kept_and_completed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let whole = three_probes(&path);
        std::fs::write(&path, &whole[..whole.len() - 1]).unwrap();
        let (entries, bad) = read_entries(&path).unwrap();
        assert_eq!((entries.len(), bad.len()), (3, 0));
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.loaded, 3);
        assert_eq!(std::fs::read(&path).unwrap(), whole);
    }

    /// A damaged line with lines after it is not a cut write: resuming refuses it (its probe
    /// would silently run again out of order), a report skips it.
    #[test]
    fn a_damaged_line_in_the_middle_is_an_error_to_resume_and_skipped_by_reports() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let mut bytes = three_probes(&path);
        let second = line_start(&bytes, 2);
        let at = second + bytes[second..].iter().position(|&b| b == 0xA8).unwrap();
        // "è" becomes C3 28: not UTF-8.
        bytes[at] = b'(';
        std::fs::write(&path, &bytes).unwrap();
        let column = at - second;
        let e = Journal::open(&path).err().unwrap().to_string();
        assert_eq!(
            e,
            format!(
                "{} line 2: not UTF-8 text (an invalid byte at column {column}); the journal \
                 is damaged (move it away to start over)",
                path.display()
            )
        );
        let (entries, bad) = read_entries(&path).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            bad,
            vec![(
                2,
                format!("not UTF-8 text (an invalid byte at column {column})")
            )]
        );
        // Not JSON at all.
        let mut garbage = bytes[..second].to_vec();
        garbage.extend_from_slice(b"{\"key\": \n");
        garbage.extend_from_slice(&bytes[line_start(&bytes, 3)..]);
        std::fs::write(&path, &garbage).unwrap();
        assert!(Journal::open(&path).err().unwrap().to_string().contains(
            "line 2: EOF while parsing a value at line 1 column 8; the journal is damaged"
        ));
        let (entries, bad) = read_entries(&path).unwrap();
        assert_eq!((entries.len(), bad[0].0), (2, 2));
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 128, ..Default::default() })]

        /// A journal cut at any byte (a kill or a full disk mid-write) opens, keeps exactly
        /// the whole records before the cut, and takes the next append as a line of its own:
        /// a resume loses nothing journaled and repeats only the cut probe.
        #[test]
        fn a_journal_cut_anywhere_resumes_exactly(cut_at in 0.0f64..1.0, tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("journal.jsonl");
            let whole = three_probes(&path);
            let cut = (whole.len() as f64 * cut_at) as usize;
            // The cut line may also end in bytes no writer wrote (a sector of garbage).
            let mut damaged = whole[..cut].to_vec();
            if cut > 0 && whole[cut - 1] != b'\n' {
                damaged.extend(tail.iter().filter(|&&b| b != b'\n'));
            }
            // Whole records in what is left: lines that are still complete JSON (a cut right
            // after a record's closing brace leaves it whole, only its newline missing; garbage
            // after that brace damages it).
            let kept = damaged
                .split(|&b| b == b'\n')
                .filter(|l| serde_json::from_slice::<serde_json::Value>(l).is_ok())
                .count();
            std::fs::write(&path, &damaged).unwrap();
            let mut j = Journal::open(&path).unwrap();
            let garbage_kept_whole = damaged.len() > cut
                && serde_json::from_slice::<serde_json::Value>(damaged.rsplit(|&b| b == b'\n').next().unwrap()).is_ok();
            proptest::prop_assume!(!garbage_kept_whole);
            proptest::prop_assert_eq!(j.loaded, kept);
            j.append(&req(8192), &ProbeOutcome::failed(OutcomeClass::Ok, ""), None).unwrap();
            drop(j);
            let j = Journal::open(&path).unwrap();
            proptest::prop_assert_eq!(j.loaded, kept + 1);
            proptest::prop_assert!(j.get(&req(8192)).is_some());
        }
    }
}
