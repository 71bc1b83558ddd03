//! What the store writes: hosts and models, runs with their probes, skips and presets, and
//! whole imported runs. Each write is one transaction.

use rusqlite::{params, Connection, ErrorCode, OptionalExtension};

use super::{model_id, now_s, to_i64, ImportedRun, Store, StoreError};
use crate::backend::ProbeConfig;
use crate::learn::fingerprint::Host;
use crate::learn::{ModelShape, Record};

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

    pub(super) fn insert_probe(
        &self,
        conn: &Connection,
        run_id: i64,
        stage: &str,
        rec: &Record,
        trusted: bool,
        raw: Option<&str>,
    ) -> Result<i64, StoreError> {
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
        Ok(conn.last_insert_rowid())
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

    /// Stores one probe of a run; committed (durable) before this returns; returns its id. The
    /// host and model are the run's (`rec.host_id` / `rec.model_id` are not read).
    pub fn add_probe(
        &self,
        run_id: i64,
        stage: &str,
        rec: &Record,
        raw: Option<&str>,
    ) -> Result<i64, StoreError> {
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

    /// Ends a run as `failed`, with why (nothing passed, or an error stopped it). Its probes
    /// stay: they are measurements like any other.
    pub fn fail_run(&self, run_id: i64, why: &str) -> Result<(), StoreError> {
        let n = self
            .conn
            .execute(
                "UPDATE runs SET status = 'failed', failure = ?2, finished_unix_s = ?3 WHERE id = ?1",
                params![run_id, why, to_i64(now_s())],
            )
            .map_err(self.err("ending a failed run"))?;
        if n == 0 {
            return Err(StoreError::NoRun {
                path: self.path_str(),
                run_id,
            });
        }
        Ok(())
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
}
