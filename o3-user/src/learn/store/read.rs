//! What the store reads back: training records, learned results, timings, the history of
//! runs and the profiles of hosts.

use rusqlite::{params, OptionalExtension};

use super::{from_i64, Learned, PresetRow, Profile, ProfileModel, RunRow, Store, StoreError};
use crate::learn::fingerprint::Host;
use crate::learn::Record;

/// A run's backend as stored by any version: `llamaserver`, the spelling of earlier versions,
/// reads as `llama-server` (the `--backend` value); any other name is kept.
fn normalize_backend(name: String) -> String {
    if name == "llamaserver" {
        "llama-server".into()
    } else {
        name
    }
}

impl Store {
    /// Training rows: every probe (of this host and/or model when given), newest first.
    pub fn records(
        &self,
        host_id: Option<&str>,
        model_id: Option<&str>,
    ) -> Result<Vec<Record>, StoreError> {
        let mut s = self
            .conn
            .prepare(ProbeRow::SELECT)
            .map_err(self.err("reading probes"))?;
        let rows: Vec<ProbeRow> = s
            .query_map(params![host_id, model_id], ProbeRow::read)
            .map_err(self.err("reading probes"))?
            .collect::<Result<_, _>>()
            .map_err(self.err("reading probes"))?;
        rows.into_iter().map(|r| self.record_of(r)).collect()
    }

    /// A probe row as a training record, its JSON columns decoded.
    fn record_of(&self, r: ProbeRow) -> Result<Record, StoreError> {
        Ok(Record {
            host_id: r.host_id,
            model_id: r.model_id,
            config: serde_json::from_str(&r.config_json).map_err(self.data_err("probe config"))?,
            concurrency: r.concurrency,
            outcome: serde_json::from_value(serde_json::Value::String(r.outcome))
                .map_err(self.data_err("probe outcome"))?,
            success: r.success,
            prefill_tokens_per_s: r.prefill_tokens_per_s,
            decode_tokens_per_s: r.decode_tokens_per_s,
            ttft_ms: r.ttft_ms,
            rss_peak_bytes: r.rss_peak_bytes.map(from_i64),
            gpu_used_peak_bytes: r.gpu_used_peak_bytes.map(from_i64),
            capacity_bytes: r.capacity_bytes.map(from_i64),
            model: serde_json::from_str(&r.shape_json).map_err(self.data_err("model shape"))?,
            trusted: r.trusted,
            unix_s: from_i64(r.unix_s),
            prompt_tokens: r.prompt_tokens.map(from_i64),
            proven_at_depth: r.proven_at_depth,
            timing: Vec::new(),
        })
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

    /// Every model in the store as (id, name), by name then id.
    pub fn models(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut s = self
            .conn
            .prepare("SELECT id, name FROM models ORDER BY name, id")
            .map_err(self.err("reading models"))?;
        let rows = s
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.err("reading models"))?
            .collect::<Result<_, _>>()
            .map_err(self.err("reading models"))?;
        Ok(rows)
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
                        r.max_context_proven, r.failure
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
                    backend: normalize_backend(r.get(5)?),
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
                    failure: r.get(16)?,
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
            let models = self.profile_models(&mut best, &id)?;
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

    /// Per model, the first of the host's finished runs that `best` (the runs of host `?1`,
    /// best first per model) lists, with its presets.
    fn profile_models(
        &self,
        best: &mut rusqlite::Statement,
        host_id: &str,
    ) -> Result<Vec<ProfileModel>, StoreError> {
        type RunRowT = (i64, String, String, Option<i64>, Option<u32>, String);
        let runs: Vec<RunRowT> = best
            .query_map([host_id], |r| {
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
        Ok(models)
    }
}

/// One probe as [`Store::records`] selects it, with its run's host and model, before its JSON
/// columns are decoded.
struct ProbeRow {
    host_id: String,
    model_id: String,
    config_json: String,
    concurrency: u32,
    outcome: String,
    success: bool,
    prefill_tokens_per_s: Option<f64>,
    decode_tokens_per_s: Option<f64>,
    ttft_ms: Option<f64>,
    rss_peak_bytes: Option<i64>,
    gpu_used_peak_bytes: Option<i64>,
    capacity_bytes: Option<i64>,
    shape_json: String,
    trusted: bool,
    unix_s: i64,
    prompt_tokens: Option<i64>,
    proven_at_depth: Option<bool>,
}

impl ProbeRow {
    /// The probes of a host (`?1`) and/or model (`?2`; NULL for any), newest first, in the
    /// order of [`ProbeRow`]'s fields.
    const SELECT: &'static str =
        "SELECT r.host_id, r.model_id, p.config_json, p.concurrency, p.outcome, p.success,
                p.prefill_tokens_per_s, p.decode_tokens_per_s, p.ttft_ms,
                p.rss_peak_bytes, p.gpu_used_peak_bytes, p.capacity_bytes,
                m.shape_json, p.trusted, p.unix_s, p.prompt_tokens, p.proven_at_depth
         FROM probes p JOIN runs r ON r.id = p.run_id JOIN models m ON m.id = r.model_id
         WHERE (?1 IS NULL OR r.host_id = ?1) AND (?2 IS NULL OR r.model_id = ?2)
         ORDER BY p.unix_s DESC, p.id DESC";

    fn read(r: &rusqlite::Row) -> rusqlite::Result<ProbeRow> {
        Ok(ProbeRow {
            host_id: r.get(0)?,
            model_id: r.get(1)?,
            config_json: r.get(2)?,
            concurrency: r.get(3)?,
            outcome: r.get(4)?,
            success: r.get(5)?,
            prefill_tokens_per_s: r.get(6)?,
            decode_tokens_per_s: r.get(7)?,
            ttft_ms: r.get(8)?,
            rss_peak_bytes: r.get(9)?,
            gpu_used_peak_bytes: r.get(10)?,
            capacity_bytes: r.get(11)?,
            shape_json: r.get(12)?,
            trusted: r.get(13)?,
            unix_s: r.get(14)?,
            prompt_tokens: r.get(15)?,
            proven_at_depth: r.get(16)?,
        })
    }
}
