//! The results store: one SQLite file holding every host, model, run, probe, skipped
//! configuration and preset o3 has seen, so later runs start from what earlier ones learned.
//!
//! Durability and sharing: WAL journal, `synchronous = FULL`, `busy_timeout` 5 s, foreign keys
//! on. Every write is one short transaction (a probe is committed before [`Store::add_probe`]
//! returns), so a killed o3 loses at most the probe it was writing, and two o3 processes can
//! write the same file at once (the second waits for the first's transaction, milliseconds).
//!
//! The schema is versioned (`PRAGMA user_version`, see [`schema`]); opening an older file
//! migrates it, opening a file of a newer o3 is refused with both versions named.
//!
//! Here: opening, checking and migrating the file, and the rows the store hands out. What it
//! writes is in `write`, what it reads back in `read`, predictions beside their measurements
//! in `predictions`, its errors in `error`.

mod error;
mod predictions;
mod read;
pub mod schema;
mod write;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OpenFlags};
use serde::Serialize;

pub use error::StoreError;
pub use predictions::{Checked, PredictionRow};

use super::fingerprint::{self, Host};
use super::Record;
use crate::backend::ProbeConfig;

/// How long a writer waits for another one before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// `$XDG_DATA_HOME/o3/o3.db`, else `~/.local/share/o3/o3.db` (`./o3.db` without a home).
pub fn default_path() -> PathBuf {
    default_path_from(std::env::var_os("XDG_DATA_HOME"), std::env::var_os("HOME"))
}

/// [`default_path`] from given `XDG_DATA_HOME` and `HOME` values (a relative `XDG_DATA_HOME`
/// is ignored, as the XDG specification says).
pub fn default_path_from(
    xdg_data_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> PathBuf {
    let data = xdg_data_home
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            home.filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".local/share"))
        });
    match data {
        Some(d) => d.join("o3").join("o3.db"),
        None => PathBuf::from("o3.db"),
    }
}

/// What an earlier finished run of a host and model established.
#[derive(Debug, Clone, Serialize)]
pub struct Learned {
    pub run_id: i64,
    pub finished_unix_s: u64,
    /// The validated maximum context (tokens), when the run established one.
    pub max_context: Option<u32>,
    /// Preset name and configuration (presets for which no configuration qualified are left
    /// out).
    pub presets: Vec<(String, ProbeConfig)>,
    /// The host's fingerprint when the run began: compare with today's
    /// ([`Host::changes_from`]) to decide whether the results still hold.
    pub host: Host,
}

/// One run, as `o3 history` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRow {
    pub run_id: i64,
    pub host_id: String,
    /// The host's one-line summary.
    pub host: String,
    pub model_id: String,
    pub model: String,
    pub backend: String,
    pub started_unix_s: u64,
    pub finished_unix_s: Option<u64>,
    /// `running`, `finished`, `interrupted` or `failed` (`running` for a run whose o3 was
    /// killed).
    pub status: String,
    /// Why a `failed` run failed.
    pub failure: Option<String>,
    pub max_context: Option<u32>,
    /// `Some(false)`: the maximum was not proven at depth (prompts capped).
    pub max_context_proven: Option<bool>,
    pub probes: u64,
    pub trusted_probes: u64,
    pub skips: u64,
    /// Imported from the legacy tool: its numbers are not measurements.
    pub imported: bool,
    pub run_dir: String,
}

/// A stored preset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PresetRow {
    pub name: String,
    /// `None`: no configuration qualified.
    pub config: Option<ProbeConfig>,
    pub metrics: serde_json::Value,
}

/// The best presets of one model on one host: those of its newest finished run (measured runs
/// before imported ones).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfileModel {
    pub model_id: String,
    pub model: String,
    pub run_id: i64,
    pub finished_unix_s: Option<u64>,
    pub max_context: Option<u32>,
    pub imported: bool,
    pub presets: Vec<PresetRow>,
}

/// A host and what o3 learned on it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profile {
    pub host_id: String,
    pub summary: String,
    pub host: Host,
    pub first_seen_unix_s: u64,
    pub last_seen_unix_s: u64,
    pub models: Vec<ProfileModel>,
}

/// A whole run from another tool, written in one transaction by [`Store::import_run`].
#[derive(Debug, Clone)]
pub struct ImportedRun {
    pub host_id: String,
    pub model_id: String,
    pub backend: String,
    /// Where the run came from (file and run id): a run with the same key is not imported twice.
    pub run_dir: String,
    pub config_json: String,
    pub started_unix_s: u64,
    pub finished_unix_s: u64,
    pub max_context: Option<u32>,
    /// (stage, record, raw JSON); stored with `trusted = false` whatever the record says.
    pub probes: Vec<(String, Record, Option<String>)>,
    pub presets: Vec<(String, serde_json::Value)>,
}

/// The results store; one connection. Open one per thread or process.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_i64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The model id: a hash of the digest, or of the name when there is no digest.
pub fn model_id(name: &str, digest: &str) -> String {
    if digest.trim().is_empty() {
        fingerprint::fnv_hex(&format!("name:{name}"))
    } else {
        fingerprint::fnv_hex(&format!("digest:{}", digest.trim()))
    }
}

impl Store {
    /// Opens (creating it and its folder when absent) and migrates the store at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                dir: dir.display().to_string(),
                source,
            })?;
        }
        let err = |op| move |e| StoreError::from_sqlite(path, op, e);
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err("opening"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(err("setting busy_timeout"))?;
        // The first statement that reads the file: a file that is not a database fails here.
        let version: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err("reading the schema version"))?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
        };
        store.check_version(version)?;
        if version > 0 {
            store.check_integrity()?;
        }
        store.switch_to_wal()?;
        store
            .conn
            .execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = OFF;")
            .map_err(err("setting pragmas"))?;
        if version < schema::LATEST {
            store.migrate_to(schema::LATEST)?;
        }
        // Off while migrating (this SQLite build turns them on by default): a step that
        // rebuilds a table drops the old one, which with foreign keys on would delete the rows
        // that refer to it.
        store
            .conn
            .execute_batch("PRAGMA foreign_keys = ON;")
            .map_err(err("setting pragmas"))?;
        Ok(store)
    }

    /// WAL mode, persistent in the file once set. Switching needs the file to itself and
    /// SQLite answers "busy" at once instead of calling the busy handler, so two o3 creating a
    /// new store at the same moment would see one of them fail: the switch is retried for up
    /// to [`BUSY_TIMEOUT`]. A store already in WAL mode is only read.
    fn switch_to_wal(&self) -> Result<(), StoreError> {
        let mode = |sql: &str| self.conn.query_row(sql, [], |r| r.get::<_, String>(0));
        let started = std::time::Instant::now();
        loop {
            // The pragma answers the mode in effect: the old one when it could not switch.
            let res = match mode("PRAGMA journal_mode") {
                Ok(m) if m.eq_ignore_ascii_case("wal") => return Ok(()),
                Ok(_) => mode("PRAGMA journal_mode = WAL"),
                Err(e) => Err(e),
            };
            match res {
                Ok(m) if m.eq_ignore_ascii_case("wal") => return Ok(()),
                Ok(m) if started.elapsed() >= BUSY_TIMEOUT => {
                    return Err(StoreError::Invalid {
                        path: self.path_str(),
                        what: "switching to WAL",
                        detail: format!("the journal mode stayed {m}"),
                    })
                }
                Ok(_) => std::thread::sleep(Duration::from_millis(10)),
                Err(e)
                    if matches!(
                        e.sqlite_error_code(),
                        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                    ) && started.elapsed() < BUSY_TIMEOUT =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(StoreError::from_sqlite(&self.path, "switching to WAL", e)),
            }
        }
    }

    /// SQLite's own structural check (b-trees, free list, index order), read-only: a damaged
    /// store is refused before anything is written to it. Linear in the file's size: a few
    /// milliseconds for a store of thousands of probes.
    fn check_integrity(&self) -> Result<(), StoreError> {
        let first: String = self
            .conn
            .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
            .map_err(self.err("checking integrity"))?;
        if first == "ok" {
            return Ok(());
        }
        Err(StoreError::Corrupt {
            path: self.path_str(),
            detail: format!(
                "integrity check: {}",
                first
                    .replace("*** in database main ***", "")
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        })
    }

    fn check_version(&self, found: u32) -> Result<(), StoreError> {
        if found > schema::LATEST {
            return Err(StoreError::TooNew {
                path: self.path_str(),
                found,
                supported: schema::LATEST,
            });
        }
        Ok(())
    }

    /// Migrates to `target` in one immediate transaction (re-reading the version inside it, so
    /// two processes opening a new file at once migrate it once).
    fn migrate_to(&mut self, target: u32) -> Result<(), StoreError> {
        let path = self.path.clone();
        let path = &path;
        let err = |op| move |e| StoreError::from_sqlite(path, op, e);
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err("starting the migration"))?;
        let version: u32 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err("reading the schema version"))?;
        if version > schema::LATEST {
            return Err(StoreError::TooNew {
                path: self.path.display().to_string(),
                found: version,
                supported: schema::LATEST,
            });
        }
        if version < target {
            schema::apply(&tx, version, target).map_err(err("migrating the schema"))?;
        }
        tx.commit().map_err(err("committing the migration"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn path_str(&self) -> String {
        self.path.display().to_string()
    }

    fn err(&self, op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |e| StoreError::from_sqlite(&self.path, op, e)
    }

    fn data_err(&self, what: &'static str) -> impl Fn(serde_json::Error) -> StoreError + '_ {
        move |e| StoreError::Data {
            path: self.path_str(),
            what,
            detail: e.to_string(),
        }
    }

    /// The schema version of the file.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(self.err("reading the schema version"))
    }

    /// SQLite's `PRAGMA integrity_check`: `ok`, or the problems found.
    pub fn integrity_check(&self) -> Result<String, StoreError> {
        let mut s = self
            .conn
            .prepare("PRAGMA integrity_check")
            .map_err(self.err("checking integrity"))?;
        let rows: Vec<String> = s
            .query_map([], |r| r.get(0))
            .map_err(self.err("checking integrity"))?
            .collect::<Result<_, _>>()
            .map_err(self.err("checking integrity"))?;
        Ok(rows.join("; "))
    }

    /// Test seam: the raw connection (e.g. to set `max_page_count`).
    #[cfg(test)]
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }
}

#[cfg(test)]
mod tests;
