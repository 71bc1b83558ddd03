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

pub mod schema;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};
use serde::Serialize;

use super::fingerprint::{self, Host};
use super::{ModelShape, Record};
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

/// A store failure: one line naming the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database {path} is locked by another writer for more than 5 s; retry when the other o3 finishes")]
    Busy { path: String },
    #[error("disk full while writing {path}: free space and resume; nothing was lost")]
    Full { path: String },
    #[error("{path} is not an o3 database or is damaged ({detail}): move it away (o3 then starts a new one) or pass another --db")]
    Corrupt { path: String, detail: String },
    #[error("the database {path} is read-only ({detail}): make it (and its folder) writable or pass another --db")]
    ReadOnly { path: String, detail: String },
    #[error("cannot open the database {path} ({detail}): check that its folder exists and is writable, or pass another --db")]
    CantOpen { path: String, detail: String },
    #[error("the database {path} has schema version {found}, newer than this o3 knows (version {supported}): upgrade o3 or pass another --db")]
    TooNew {
        path: String,
        found: u32,
        supported: u32,
    },
    #[error("cannot create {dir} for the database: {source}; create it or pass another --db")]
    CreateDir {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no run {run_id} in {path}: begin_run first")]
    NoRun { path: String, run_id: i64 },
    #[error("{what} for {path}: {detail}")]
    Invalid {
        path: String,
        what: &'static str,
        detail: String,
    },
    #[error("{path}: a stored {what} does not decode ({detail}); the file was changed by another program: move it away or pass another --db")]
    Data {
        path: String,
        what: &'static str,
        detail: String,
    },
    #[error("{op} in {path} failed: {source}")]
    Sqlite {
        path: String,
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
}

impl StoreError {
    fn from_sqlite(path: &Path, op: &'static str, e: rusqlite::Error) -> StoreError {
        let path_s = path.display().to_string();
        let code = e.sqlite_error_code();
        let detail = e.to_string();
        match code {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                StoreError::Busy { path: path_s }
            }
            Some(ErrorCode::DiskFull) => StoreError::Full { path: path_s },
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StoreError::Corrupt {
                path: path_s,
                detail,
            },
            Some(ErrorCode::ReadOnly) => StoreError::ReadOnly {
                path: path_s,
                detail,
            },
            Some(ErrorCode::CannotOpen) => StoreError::CantOpen {
                path: path_s,
                detail,
            },
            _ => StoreError::Sqlite {
                path: path_s,
                op,
                source: e,
            },
        }
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
    /// `running`, `finished` or `interrupted` (`running` for a run whose o3 was killed).
    pub status: String,
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

/// Splits a preset value into its configuration (`config` member, or the value itself when it
/// is a configuration) and the rest (metrics).
fn split_preset(v: &serde_json::Value) -> (Option<ProbeConfig>, serde_json::Value) {
    if let Some(obj) = v.as_object() {
        if let Some(c) = obj.get("config") {
            let cfg = serde_json::from_value::<ProbeConfig>(c.clone()).ok();
            let mut rest = obj.clone();
            rest.remove("config");
            return (cfg, serde_json::Value::Object(rest));
        }
        if let Ok(cfg) = serde_json::from_value::<ProbeConfig>(v.clone()) {
            return (Some(cfg), serde_json::json!({}));
        }
    }
    (None, v.clone())
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
            .execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
            .map_err(err("setting pragmas"))?;
        if version < schema::LATEST {
            store.migrate_to(schema::LATEST)?;
        }
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

    /// Records a host (its latest fingerprint and when it was seen); returns its id.
    pub fn upsert_host(&self, fp: &Host) -> Result<String, StoreError> {
        let id = fp.id();
        let json = serde_json::to_string(fp).map_err(self.data_err("host"))?;
        let now = to_i64(now_s());
        self.conn
            .execute(
                "INSERT INTO hosts (id, label, fingerprint_json, first_seen_unix_s, last_seen_unix_s)
                 VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT(id) DO UPDATE SET label = excluded.label,
                     fingerprint_json = excluded.fingerprint_json,
                     last_seen_unix_s = excluded.last_seen_unix_s",
                params![id, fp.summary(), json, now],
            )
            .map_err(self.err("recording the host"))?;
        Ok(id)
    }

    /// Records a model; a known model keeps its shape unless `shape` says more. Returns its id
    /// ([`model_id`]).
    pub fn upsert_model(
        &self,
        name: &str,
        digest: &str,
        shape: &ModelShape,
    ) -> Result<String, StoreError> {
        let id = model_id(name, digest);
        let json = serde_json::to_string(shape).map_err(self.data_err("model shape"))?;
        let known = *shape != ModelShape::default();
        self.conn
            .execute(
                "INSERT INTO models (id, name, digest, shape_json) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(id) DO UPDATE SET name = excluded.name,
                     shape_json = CASE WHEN ?5 THEN excluded.shape_json ELSE models.shape_json END",
                params![id, name, digest.trim(), json, known],
            )
            .map_err(self.err("recording the model"))?;
        Ok(id)
    }

    /// Starts a run (status `running`); returns its id.
    pub fn begin_run(
        &self,
        host_id: &str,
        model_id: &str,
        backend: &str,
        run_dir: &str,
        config_json: &str,
    ) -> Result<i64, StoreError> {
        self.insert_run(
            &self.conn,
            host_id,
            model_id,
            backend,
            run_dir,
            config_json,
            now_s(),
            "measured",
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn insert_run(
        &self,
        conn: &Connection,
        host_id: &str,
        model_id: &str,
        backend: &str,
        run_dir: &str,
        config_json: &str,
        started: u64,
        source: &str,
    ) -> Result<i64, StoreError> {
        let n = conn
            .execute(
                "INSERT INTO runs (host_id, model_id, backend, started_unix_s, run_dir, status,
                                   config_json, host_json, source)
                 SELECT ?1, ?2, ?3, ?4, ?5, 'running', ?6, h.fingerprint_json, ?7
                 FROM hosts h WHERE h.id = ?1",
                params![
                    host_id,
                    model_id,
                    backend,
                    to_i64(started),
                    run_dir,
                    config_json,
                    source
                ],
            )
            .map_err(|e| match e.sqlite_error_code() {
                Some(ErrorCode::ConstraintViolation) => StoreError::Invalid {
                    path: self.path_str(),
                    what: "beginning a run",
                    detail: format!("unknown model {model_id}: upsert_model first"),
                },
                _ => StoreError::from_sqlite(&self.path, "beginning a run", e),
            })?;
        if n == 0 {
            return Err(StoreError::Invalid {
                path: self.path_str(),
                what: "beginning a run",
                detail: format!("unknown host {host_id}: upsert_host first"),
            });
        }
        Ok(conn.last_insert_rowid())
    }

    fn insert_probe(
        &self,
        conn: &Connection,
        run_id: i64,
        stage: &str,
        rec: &Record,
        trusted: bool,
        raw: Option<&str>,
    ) -> Result<(), StoreError> {
        let cfg = serde_json::to_string(&rec.config).map_err(self.data_err("probe config"))?;
        let timing = if rec.timing.is_empty() {
            None
        } else {
            Some(serde_json::to_string(&rec.timing).map_err(self.data_err("probe timing"))?)
        };
        conn.execute(
            "INSERT INTO probes (run_id, stage, config_json, concurrency, outcome, success,
                 prefill_tokens_per_s, decode_tokens_per_s, ttft_ms, rss_peak_bytes,
                 gpu_used_peak_bytes, capacity_bytes, trusted, unix_s, raw_json,
                 prompt_tokens, proven_at_depth, timing_json)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                     ?18)",
            params![
                run_id,
                stage,
                cfg,
                rec.concurrency,
                rec.outcome.name(),
                rec.success,
                rec.prefill_tokens_per_s,
                rec.decode_tokens_per_s,
                rec.ttft_ms,
                rec.rss_peak_bytes.map(to_i64),
                rec.gpu_used_peak_bytes.map(to_i64),
                rec.capacity_bytes.map(to_i64),
                trusted,
                to_i64(rec.unix_s),
                raw,
                rec.prompt_tokens.map(to_i64),
                rec.proven_at_depth,
                timing,
            ],
        )
        .map_err(|e| self.no_run_or(run_id, "storing a probe", e))?;
        Ok(())
    }

    fn no_run_or(&self, run_id: i64, op: &'static str, e: rusqlite::Error) -> StoreError {
        match e.sqlite_error_code() {
            Some(ErrorCode::ConstraintViolation) => StoreError::NoRun {
                path: self.path_str(),
                run_id,
            },
            _ => StoreError::from_sqlite(&self.path, op, e),
        }
    }

    /// Stores one probe of a run; committed (durable) before this returns. The host and model
    /// are the run's (`rec.host_id` / `rec.model_id` are not read).
    pub fn add_probe(
        &self,
        run_id: i64,
        stage: &str,
        rec: &Record,
        raw: Option<&str>,
    ) -> Result<(), StoreError> {
        self.insert_probe(&self.conn, run_id, stage, rec, rec.trusted, raw)
    }

    /// Stores a configuration the predictor skipped, with its probability of success and why.
    pub fn add_skip(
        &self,
        run_id: i64,
        config: &ProbeConfig,
        p_success: f64,
        reason: &str,
    ) -> Result<(), StoreError> {
        let cfg = serde_json::to_string(config).map_err(self.data_err("skip config"))?;
        self.conn
            .execute(
                "INSERT INTO skips (run_id, config_json, p_success, reason, unix_s)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![run_id, cfg, p_success, reason, to_i64(now_s())],
            )
            .map_err(|e| self.no_run_or(run_id, "storing a skip", e))?;
        Ok(())
    }

    /// Ends a run: its status (`finished` or `interrupted`), its validated maximum context and
    /// its presets (name, value: a preset object with a `config` member, or a bare
    /// configuration; replaces presets stored before for this run), in one transaction.
    pub fn finish_run(
        &self,
        run_id: i64,
        status: &str,
        max_context: Option<u32>,
        max_context_proven: Option<bool>,
        presets: &[(String, serde_json::Value)],
    ) -> Result<(), StoreError> {
        if !matches!(status, "finished" | "interrupted") {
            return Err(StoreError::Invalid {
                path: self.path_str(),
                what: "finishing a run",
                detail: format!("status `{status}` is neither `finished` nor `interrupted`"),
            });
        }
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(self.err("finishing a run"))?;
        self.finish_in(&tx, run_id, status, now_s(), max_context, presets)?;
        tx.execute(
            "UPDATE runs SET max_context_proven = ?2 WHERE id = ?1",
            params![run_id, max_context_proven],
        )
        .map_err(self.err("finishing a run"))?;
        tx.commit().map_err(self.err("finishing a run"))
    }

    fn finish_in(
        &self,
        conn: &Connection,
        run_id: i64,
        status: &str,
        finished: u64,
        max_context: Option<u32>,
        presets: &[(String, serde_json::Value)],
    ) -> Result<(), StoreError> {
        let n = conn
            .execute(
                "UPDATE runs SET status = ?2, finished_unix_s = ?3, max_context = ?4 WHERE id = ?1",
                params![run_id, status, to_i64(finished), max_context],
            )
            .map_err(self.err("finishing a run"))?;
        if n == 0 {
            return Err(StoreError::NoRun {
                path: self.path_str(),
                run_id,
            });
        }
        conn.execute("DELETE FROM presets WHERE run_id = ?1", [run_id])
            .map_err(self.err("storing presets"))?;
        for (name, value) in presets {
            let (cfg, metrics) = split_preset(value);
            let cfg = serde_json::to_string(&cfg).map_err(self.data_err("preset config"))?;
            conn.execute(
                "INSERT INTO presets (run_id, name, config_json, metrics_json) VALUES (?1, ?2, ?3, ?4)",
                params![run_id, name, cfg, metrics.to_string()],
            )
            .map_err(self.err("storing presets"))?;
        }
        Ok(())
    }

    /// Writes a run of another tool (the legacy O3) with its probes and presets in one
    /// transaction. Every probe is stored untrusted. Returns `None` when a legacy run with the
    /// same `run_dir` is already stored (nothing is written).
    pub fn import_run(&self, r: &ImportedRun) -> Result<Option<i64>, StoreError> {
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(self.err("importing a run"))?;
        let seen: Option<i64> = tx
            .query_row(
                "SELECT id FROM runs WHERE source = 'legacy' AND run_dir = ?1",
                [&r.run_dir],
                |row| row.get(0),
            )
            .optional()
            .map_err(self.err("importing a run"))?;
        if seen.is_some() {
            return Ok(None);
        }
        let run_id = self.insert_run(
            &tx,
            &r.host_id,
            &r.model_id,
            &r.backend,
            &r.run_dir,
            &r.config_json,
            r.started_unix_s,
            "legacy",
        )?;
        for (stage, rec, raw) in &r.probes {
            self.insert_probe(&tx, run_id, stage, rec, false, raw.as_deref())?;
        }
        self.finish_in(
            &tx,
            run_id,
            "finished",
            r.finished_unix_s,
            r.max_context,
            &r.presets,
        )?;
        tx.commit().map_err(self.err("importing a run"))?;
        Ok(Some(run_id))
    }

    /// Training rows: every probe (of this host and/or model when given), newest first.
    pub fn records(
        &self,
        host_id: Option<&str>,
        model_id: Option<&str>,
    ) -> Result<Vec<Record>, StoreError> {
        let mut s = self
            .conn
            .prepare(
                "SELECT r.host_id, r.model_id, p.config_json, p.concurrency, p.outcome, p.success,
                        p.prefill_tokens_per_s, p.decode_tokens_per_s, p.ttft_ms,
                        p.rss_peak_bytes, p.gpu_used_peak_bytes, p.capacity_bytes,
                        m.shape_json, p.trusted, p.unix_s, p.prompt_tokens, p.proven_at_depth
                 FROM probes p JOIN runs r ON r.id = p.run_id JOIN models m ON m.id = r.model_id
                 WHERE (?1 IS NULL OR r.host_id = ?1) AND (?2 IS NULL OR r.model_id = ?2)
                 ORDER BY p.unix_s DESC, p.id DESC",
            )
            .map_err(self.err("reading probes"))?;
        type Row = (
            String,
            String,
            String,
            u32,
            String,
            bool,
            Option<f64>,
            Option<f64>,
            Option<f64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            String,
            bool,
            i64,
            Option<i64>,
            Option<bool>,
        );
        let rows: Vec<Row> = s
            .query_map(params![host_id, model_id], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                    r.get(10)?,
                    r.get(11)?,
                    r.get(12)?,
                    r.get(13)?,
                    r.get(14)?,
                    r.get(15)?,
                    r.get(16)?,
                ))
            })
            .map_err(self.err("reading probes"))?
            .collect::<Result<_, _>>()
            .map_err(self.err("reading probes"))?;
        rows.into_iter()
            .map(|r| {
                Ok(Record {
                    host_id: r.0,
                    model_id: r.1,
                    config: serde_json::from_str(&r.2).map_err(self.data_err("probe config"))?,
                    concurrency: r.3,
                    outcome: serde_json::from_value(serde_json::Value::String(r.4))
                        .map_err(self.data_err("probe outcome"))?,
                    success: r.5,
                    prefill_tokens_per_s: r.6,
                    decode_tokens_per_s: r.7,
                    ttft_ms: r.8,
                    rss_peak_bytes: r.9.map(from_i64),
                    gpu_used_peak_bytes: r.10.map(from_i64),
                    capacity_bytes: r.11.map(from_i64),
                    model: serde_json::from_str(&r.12).map_err(self.data_err("model shape"))?,
                    trusted: r.13,
                    unix_s: from_i64(r.14),
                    prompt_tokens: r.15.map(from_i64),
                    proven_at_depth: r.16,
                    timing: Vec::new(),
                })
            })
            .collect()
    }

    fn presets_of(&self, run_id: i64) -> Result<Vec<PresetRow>, StoreError> {
        let mut s = self
            .conn
            .prepare(
                "SELECT name, config_json, metrics_json FROM presets WHERE run_id = ?1
                 ORDER BY CASE name WHEN 'max_context' THEN 0 WHEN 'balanced' THEN 1
                          WHEN 'fast_response' THEN 2 ELSE 3 END, name",
            )
            .map_err(self.err("reading presets"))?;
        let rows: Vec<(String, String, String)> = s
            .query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(self.err("reading presets"))?
            .collect::<Result<_, _>>()
            .map_err(self.err("reading presets"))?;
        rows.into_iter()
            .map(|(name, cfg, metrics)| {
                Ok(PresetRow {
                    name,
                    config: serde_json::from_str(&cfg).map_err(self.data_err("preset config"))?,
                    metrics: serde_json::from_str(&metrics)
                        .map_err(self.data_err("preset metrics"))?,
                })
            })
            .collect()
    }

    /// The spans of work stored with this host's and model's probes, newest probes first, at
    /// most `limit` probes' worth: a new run's time model starts from them.
    pub fn timing(
        &self,
        host_id: &str,
        model_id: &str,
        limit: u32,
    ) -> Result<Vec<crate::timing::Obs>, StoreError> {
        let mut s = self
            .conn
            .prepare(
                "SELECT p.timing_json FROM probes p JOIN runs r ON r.id = p.run_id
                 WHERE r.host_id = ?1 AND r.model_id = ?2 AND p.trusted
                       AND p.timing_json IS NOT NULL
                 ORDER BY p.unix_s DESC, p.id DESC LIMIT ?3",
            )
            .map_err(self.err("reading probe timings"))?;
        let rows: Vec<String> = s
            .query_map(params![host_id, model_id, limit], |r| r.get(0))
            .map_err(self.err("reading probe timings"))?
            .collect::<Result<_, _>>()
            .map_err(self.err("reading probe timings"))?;
        let mut out = Vec::new();
        for text in rows {
            let obs: Vec<crate::timing::Obs> =
                serde_json::from_str(&text).map_err(self.data_err("probe timing"))?;
            out.extend(obs);
        }
        Ok(out)
    }

    /// The newest finished measured run of this host and model: its validated maximum context,
    /// presets, when it finished and the host's fingerprint then. Imported runs never count.
    pub fn learned(&self, host_id: &str, model_id: &str) -> Result<Option<Learned>, StoreError> {
        let row: Option<(i64, i64, Option<u32>, String)> = self
            .conn
            .query_row(
                "SELECT id, finished_unix_s, max_context, host_json FROM runs
                 WHERE host_id = ?1 AND model_id = ?2 AND status = 'finished'
                       AND source = 'measured'
                 ORDER BY finished_unix_s DESC, id DESC LIMIT 1",
                params![host_id, model_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(self.err("reading learned results"))?;
        let Some((run_id, finished, max_context, host_json)) = row else {
            return Ok(None);
        };
        let host: Host = serde_json::from_str(&host_json).map_err(self.data_err("host"))?;
        let presets = self
            .presets_of(run_id)?
            .into_iter()
            .filter_map(|p| p.config.map(|c| (p.name, c)))
            .collect();
        Ok(Some(Learned {
            run_id,
            finished_unix_s: from_i64(finished),
            max_context,
            presets,
            host,
        }))
    }

    /// Every run, by host, then model, newest first.
    pub fn history(&self) -> Result<Vec<RunRow>, StoreError> {
        let mut s = self
            .conn
            .prepare(
                "SELECT r.id, r.host_id, h.label, r.model_id, m.name, r.backend, r.started_unix_s,
                        r.finished_unix_s, r.status, r.max_context, r.source, r.run_dir,
                        (SELECT COUNT(*) FROM probes p WHERE p.run_id = r.id),
                        (SELECT COUNT(*) FROM probes p WHERE p.run_id = r.id AND p.trusted),
                        (SELECT COUNT(*) FROM skips k WHERE k.run_id = r.id),
                        r.max_context_proven
                 FROM runs r JOIN hosts h ON h.id = r.host_id JOIN models m ON m.id = r.model_id
                 ORDER BY h.label, r.host_id, m.name, r.model_id, r.started_unix_s DESC, r.id DESC",
            )
            .map_err(self.err("reading runs"))?;
        let rows = s
            .query_map([], |r| {
                let source: String = r.get(10)?;
                Ok(RunRow {
                    run_id: r.get(0)?,
                    host_id: r.get(1)?,
                    host: r.get(2)?,
                    model_id: r.get(3)?,
                    model: r.get(4)?,
                    backend: r.get(5)?,
                    started_unix_s: from_i64(r.get(6)?),
                    finished_unix_s: r.get::<_, Option<i64>>(7)?.map(from_i64),
                    status: r.get(8)?,
                    max_context: r.get(9)?,
                    imported: source == "legacy",
                    run_dir: r.get(11)?,
                    probes: from_i64(r.get(12)?),
                    trusted_probes: from_i64(r.get(13)?),
                    skips: from_i64(r.get(14)?),
                    max_context_proven: r.get(15)?,
                })
            })
            .map_err(self.err("reading runs"))?
            .collect::<Result<_, _>>()
            .map_err(self.err("reading runs"))?;
        Ok(rows)
    }

    /// Every host and, per model, the presets of its newest finished run (measured runs before
    /// imported ones).
    pub fn profiles(&self) -> Result<Vec<Profile>, StoreError> {
        let mut s = self
            .conn
            .prepare(
                "SELECT id, label, fingerprint_json, first_seen_unix_s, last_seen_unix_s
                 FROM hosts ORDER BY last_seen_unix_s DESC, id",
            )
            .map_err(self.err("reading hosts"))?;
        let hosts: Vec<(String, String, String, i64, i64)> = s
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .map_err(self.err("reading hosts"))?
            .collect::<Result<_, _>>()
            .map_err(self.err("reading hosts"))?;
        let mut best = self
            .conn
            .prepare(
                "SELECT r.id, r.model_id, m.name, r.finished_unix_s, r.max_context, r.source
                 FROM runs r JOIN models m ON m.id = r.model_id
                 WHERE r.host_id = ?1 AND r.status = 'finished'
                 ORDER BY m.name, r.model_id, r.source = 'legacy', r.finished_unix_s DESC, r.id DESC",
            )
            .map_err(self.err("reading runs"))?;
        let mut out = Vec::new();
        for (id, label, json, first, last) in hosts {
            let host: Host = serde_json::from_str(&json).map_err(self.data_err("host"))?;
            type RunRowT = (i64, String, String, Option<i64>, Option<u32>, String);
            let runs: Vec<RunRowT> = best
                .query_map([&id], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })
                .map_err(self.err("reading runs"))?
                .collect::<Result<_, _>>()
                .map_err(self.err("reading runs"))?;
            let mut models: Vec<ProfileModel> = Vec::new();
            for (run_id, model_id, name, finished, max_context, source) in runs {
                if models.iter().any(|m| m.model_id == model_id) {
                    continue; // an older run of a model already listed
                }
                models.push(ProfileModel {
                    model_id,
                    model: name,
                    run_id,
                    finished_unix_s: finished.map(from_i64),
                    max_context,
                    imported: source == "legacy",
                    presets: self.presets_of(run_id)?,
                });
            }
            out.push(Profile {
                host_id: id,
                summary: label,
                host,
                first_seen_unix_s: from_i64(first),
                last_seen_unix_s: from_i64(last),
                models,
            });
        }
        Ok(out)
    }

    /// Test seam: the raw connection (e.g. to set `max_page_count`).
    #[cfg(test)]
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }
}

#[cfg(test)]
mod tests;
