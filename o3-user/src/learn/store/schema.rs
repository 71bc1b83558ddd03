//! The store's schema: an ordered list of migrations, version `n` being the state after the
//! first `n` steps. The version is SQLite's `PRAGMA user_version` (0 in a new file).
//!
//! A step is never edited once released: a change is a new step appended at the end. Each step
//! runs with the version bump in one `BEGIN IMMEDIATE` transaction, so a crash mid-migration
//! leaves the file at the old version, and two processes opening a new file at once migrate it
//! once.

/// Version 1: hosts, models, runs, probes, presets.
const V1: &str = "
CREATE TABLE hosts (
    id TEXT PRIMARY KEY,                    -- fingerprint::Host::id()
    label TEXT NOT NULL,                    -- one-line summary for tables
    fingerprint_json TEXT NOT NULL,         -- the latest fingerprint seen
    first_seen_unix_s INTEGER NOT NULL,
    last_seen_unix_s INTEGER NOT NULL
);
CREATE TABLE models (
    id TEXT PRIMARY KEY,                    -- hash of the digest (of the name when none)
    name TEXT NOT NULL,
    digest TEXT NOT NULL,                   -- Ollama sha256:..., o3q1:... for a GGUF file, or ''
    shape_json TEXT NOT NULL                -- learn::ModelShape
);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    host_id TEXT NOT NULL REFERENCES hosts(id),
    model_id TEXT NOT NULL REFERENCES models(id),
    backend TEXT NOT NULL,
    started_unix_s INTEGER NOT NULL,
    finished_unix_s INTEGER,
    run_dir TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'interrupted')),
    config_json TEXT NOT NULL,
    host_json TEXT NOT NULL,                -- the host's fingerprint when the run began
    max_context INTEGER,                    -- validated maximum context (tokens)
    source TEXT NOT NULL CHECK (source IN ('measured', 'legacy'))
);
CREATE TABLE probes (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    stage TEXT NOT NULL,
    config_json TEXT NOT NULL,              -- backend::ProbeConfig
    concurrency INTEGER NOT NULL,
    outcome TEXT NOT NULL,                  -- backend::OutcomeClass, snake_case
    success INTEGER NOT NULL,
    prefill_tokens_per_s REAL,
    decode_tokens_per_s REAL,
    ttft_ms REAL,
    rss_peak_bytes INTEGER,
    gpu_used_peak_bytes INTEGER,
    capacity_bytes INTEGER,
    trusted INTEGER NOT NULL,               -- 0: imported legacy numbers, never measurements
    unix_s INTEGER NOT NULL,
    raw_json TEXT
);
CREATE INDEX probes_run ON probes(run_id);
CREATE TABLE presets (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    config_json TEXT NOT NULL,              -- backend::ProbeConfig, or null: none qualified
    metrics_json TEXT NOT NULL,
    PRIMARY KEY (run_id, name)
);
";

/// Version 2: configurations the predictor skipped (with its probability of success and why),
/// and the index `learned()` looks runs up by.
const V2: &str = "
CREATE TABLE skips (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    config_json TEXT NOT NULL,
    p_success REAL NOT NULL,
    reason TEXT NOT NULL,
    unix_s INTEGER NOT NULL
);
CREATE INDEX skips_run ON skips(run_id);
CREATE INDEX runs_host_model ON runs(host_id, model_id, status, finished_unix_s);
";

/// Version 3: the depth of each probe and whether it proved its context at depth, the same for
/// a run's maximum, and each probe's spans of work for the time model.
const V3: &str = "
ALTER TABLE probes ADD COLUMN prompt_tokens INTEGER;
ALTER TABLE probes ADD COLUMN proven_at_depth INTEGER;  -- NULL: not a filled probe
ALTER TABLE probes ADD COLUMN timing_json TEXT;         -- [timing::Obs], or NULL
ALTER TABLE runs ADD COLUMN max_context_proven INTEGER; -- 0: not proven at depth (capped)
";

/// Version 4: a run can end `failed` (nothing passed, or an error stopped it), with why. SQLite
/// cannot change a CHECK constraint in place: the table is rebuilt (foreign keys are switched
/// on only after migrating, so dropping the old table touches no probe).
const V4: &str = "
CREATE TABLE runs_v4 (
    id INTEGER PRIMARY KEY,
    host_id TEXT NOT NULL REFERENCES hosts(id),
    model_id TEXT NOT NULL REFERENCES models(id),
    backend TEXT NOT NULL,
    started_unix_s INTEGER NOT NULL,
    finished_unix_s INTEGER,
    run_dir TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'interrupted', 'failed')),
    config_json TEXT NOT NULL,
    host_json TEXT NOT NULL,
    max_context INTEGER,
    source TEXT NOT NULL CHECK (source IN ('measured', 'legacy')),
    max_context_proven INTEGER,
    failure TEXT                            -- why a failed run failed
);
INSERT INTO runs_v4 (id, host_id, model_id, backend, started_unix_s, finished_unix_s, run_dir,
                     status, config_json, host_json, max_context, source, max_context_proven)
    SELECT id, host_id, model_id, backend, started_unix_s, finished_unix_s, run_dir,
           status, config_json, host_json, max_context, source, max_context_proven FROM runs;
DROP TABLE runs;
ALTER TABLE runs_v4 RENAME TO runs;
CREATE INDEX runs_host_model ON runs(host_id, model_id, status, finished_unix_s);
";

/// Version 5: what o3 predicted for each probe just before it ran (from everything stored
/// before it), beside the measurement that followed: the running error of predictions.
const V5: &str = "
CREATE TABLE predictions (
    probe_id INTEGER PRIMARY KEY REFERENCES probes(id) ON DELETE CASCADE,
    place TEXT NOT NULL CHECK (place IN ('ram', 'gpu')),  -- the peak it is set beside
    peak_bytes INTEGER NOT NULL,        -- the memory model at the probe's fill
    peak_low_bytes INTEGER NOT NULL,    -- the estimate's range
    peak_high_bytes INTEGER NOT NULL,
    fitted_points INTEGER NOT NULL,     -- measured peaks the law was fitted to (0: the prior)
    p_success REAL NOT NULL,
    prefill_tokens_per_s REAL,          -- single-stream rates; NULL: none predicted
    decode_tokens_per_s REAL,
    basis TEXT NOT NULL                 -- cold start or trained, in words
);
";

/// The migrations, in order: `MIGRATIONS[n]` takes version `n` to `n + 1`.
pub const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5];

/// The schema version this o3 writes.
pub const LATEST: u32 = MIGRATIONS.len() as u32;

/// Applies the steps from `from` up to `to` (exclusive of `from`, inclusive of `to`) on a
/// connection inside the caller's transaction, and sets `user_version` to `to`.
pub(crate) fn apply(conn: &rusqlite::Connection, from: u32, to: u32) -> rusqlite::Result<()> {
    for step in &MIGRATIONS[from as usize..to as usize] {
        conn.execute_batch(step)?;
    }
    conn.pragma_update(None, "user_version", to)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_applies_on_its_predecessor() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        for v in 0..LATEST {
            apply(&c, v, v + 1).unwrap();
            let got: u32 = c
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap();
            assert_eq!(got, v + 1);
        }
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
    }

    #[test]
    fn all_at_once_equals_step_by_step() {
        let dump = |c: &rusqlite::Connection| -> Vec<String> {
            let mut s = c
                .prepare("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name")
                .unwrap();
            s.query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        let a = rusqlite::Connection::open_in_memory().unwrap();
        apply(&a, 0, LATEST).unwrap();
        let b = rusqlite::Connection::open_in_memory().unwrap();
        for v in 0..LATEST {
            apply(&b, v, v + 1).unwrap();
        }
        assert_eq!(dump(&a), dump(&b));
    }
}
