//! Import of the legacy O3 (Python) tool's outputs: `logs/<model>_<ts>.jsonl` (one object per
//! request) and `defaults/<model>.yaml` (its presets).
//!
//! Every imported number is stored **untrusted**: the legacy tool's `ttft_ms` was the total
//! request time, its tokens/s counted whitespace-split words over wall time, its `batch` and
//! `f16_kv` were ignored by Ollama, and its memory columns came from `rocm-smi` columns that on
//! an APU are not the GTT the model lives in. So:
//! - requests are grouped by (model, configuration, concurrency) into one probe each, with the
//!   medians of `tokens_per_sec` (as the decode rate) and `ttft_ms` over the successful
//!   requests, and every original request kept in the probe's raw JSON;
//! - memory numbers are not turned into peaks (they were not peaks, and on an APU not even the
//!   right memory); they stay in the raw JSON;
//! - no maximum context is claimed validated (the legacy prompt never filled the context);
//! - the host is a placeholder fingerprint ("legacy import"), never matched to a real machine.
//!
//! Timestamps without a zone (Python's `datetime.isoformat()`) are read as UTC.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::fingerprint::Host;
use super::store::{ImportedRun, Store, StoreError};
use super::{ModelShape, Record};
use crate::backend::{classify, OutcomeClass, ProbeConfig};
use crate::util::order::median;

/// What the stored runs' backend column says.
pub const BACKEND: &str = "ollama (legacy O3)";
/// The stage of imported probes.
pub const STAGE: &str = "legacy";

#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    #[error("{dir} is not a legacy O3 output folder: it has neither logs/*.jsonl nor defaults/*.yaml; point at the folder the legacy tool wrote")]
    NotLegacy { dir: String },
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a legacy request line or defaults file is left out.
#[derive(Debug, thiserror::Error)]
pub enum Unusable {
    #[error("not JSON ({0})")]
    NotJson(serde_json::Error),
    #[error("not a JSON object")]
    NotObject,
    /// A member that must be there (`model`, `config`, `timestamp`, `presets mapping`).
    #[error("no {0}")]
    Missing(&'static str),
    #[error("no config.num_ctx (a positive integer)")]
    NoContext,
    #[error("success is not true or false")]
    Success,
    #[error("timestamp {0} is not ISO 8601")]
    Timestamp(Value),
    #[error("concurrency_level {0} is not a positive integer")]
    Concurrency(Value),
    #[error("cannot read: {0}")]
    Read(std::io::Error),
    #[error("not YAML ({0})")]
    NotYaml(serde_yaml::Error),
    #[error("not representable ({0})")]
    NotRepresentable(serde_json::Error),
    #[error("preset {name}: {why}")]
    Preset { name: String, why: Box<Unusable> },
}

/// A line or file left out, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Skipped {
    pub file: String,
    /// 1-based; `None` for a whole file.
    pub line: Option<usize>,
    pub reason: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.file, self.reason),
            None => write!(f, "{}: {}", self.file, self.reason),
        }
    }
}

/// One legacy request that parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub line: usize,
    pub unix_s: u64,
    pub run_id: String,
    pub model: String,
    pub digest: String,
    pub config: ProbeConfig,
    pub concurrency: u32,
    pub success: bool,
    pub error: Option<String>,
    pub ttft_ms: Option<f64>,
    pub tokens_per_s: Option<f64>,
    /// The request as the legacy tool wrote it.
    pub raw: Value,
}

/// One legacy run (a log file's requests of one legacy `run_id` and model), grouped into probes.
#[derive(Debug, Clone)]
pub struct LegacyRun {
    pub file: PathBuf,
    pub run_id: String,
    pub model: String,
    pub digest: String,
    pub requests: usize,
    pub started_unix_s: u64,
    pub finished_unix_s: u64,
    /// Largest context whose every probe succeeded (a claim of the legacy tool, not validated).
    pub claimed_max_context: Option<u32>,
    pub probes: Vec<(Record, Value)>,
    pub presets: Vec<(String, Value)>,
}

/// What `o3 import-legacy` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportSummary {
    pub log_files: usize,
    pub defaults_files: usize,
    pub requests: usize,
    pub probes: usize,
    pub runs_imported: usize,
    /// Runs stored by an earlier import (left as they were).
    pub runs_already_imported: usize,
    pub presets: usize,
    pub skipped: Vec<Skipped>,
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn u32_field(v: &Value, key: &str) -> Option<u32> {
    v.get(key)
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
}

/// Unix seconds of `YYYY-MM-DD[T ]HH:MM:SS[.frac][Z|±HH:MM]` (no zone: UTC), or of a number.
pub fn parse_timestamp(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_f64() {
        return (n >= 0.0).then_some(n as u64);
    }
    let s = v.as_str()?.trim();
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    // The zone, after an optional fraction.
    let mut rest = &s[19..];
    if let Some(r) = rest.strip_prefix('.') {
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        rest = &r[digits..];
    }
    let offset_s = match rest {
        "" | "Z" | "z" => 0,
        z if (z.starts_with('+') || z.starts_with('-')) && z.len() == 6 && &z[3..4] == ":" => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            sign * (z[1..3].parse::<i64>().ok()? * 3600 + z[4..6].parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let t = days * 86_400 + h * 3600 + mi * 60 + se - offset_s;
    u64::try_from(t).ok()
}

/// The configuration a legacy request asked for: `num_ctx`, `batch` (which Ollama ignored) and
/// `num_thread`. `num_predict`, `f16_kv` and sampling stay in the raw JSON.
fn legacy_config(c: &Value) -> Result<ProbeConfig, Unusable> {
    let ctx = u32_field(c, "num_ctx").ok_or(Unusable::NoContext)?;
    Ok(ProbeConfig {
        ctx,
        batch: u32_field(c, "batch"),
        threads: u32_field(c, "num_thread"),
        ..ProbeConfig::default()
    })
}

/// One request line. `Err` is the reason it is skipped.
pub fn parse_request(line_no: usize, text: &str) -> Result<Request, Unusable> {
    let v: Value = serde_json::from_str(text).map_err(Unusable::NotJson)?;
    if !v.is_object() {
        return Err(Unusable::NotObject);
    }
    let model = str_field(&v, "model")
        .ok_or(Unusable::Missing("model"))?
        .to_string();
    let config = legacy_config(v.get("config").ok_or(Unusable::Missing("config"))?)?;
    let success = v
        .get("success")
        .and_then(Value::as_bool)
        .ok_or(Unusable::Success)?;
    let unix_s = match v.get("timestamp") {
        None | Some(Value::Null) => return Err(Unusable::Missing("timestamp")),
        Some(t) => parse_timestamp(t).ok_or_else(|| Unusable::Timestamp(t.clone()))?,
    };
    let concurrency = match v.get("concurrency_level") {
        None | Some(Value::Null) => 1,
        Some(c) => c
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n >= 1)
            .ok_or_else(|| Unusable::Concurrency(c.clone()))?,
    };
    let f = |k: &str| v.get(k).and_then(Value::as_f64).filter(|x| x.is_finite());
    Ok(Request {
        line: line_no,
        unix_s,
        run_id: match v.get("run_id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        },
        model,
        digest: str_field(&v, "model_digest").unwrap_or("").to_string(),
        config,
        concurrency,
        success,
        error: str_field(&v, "error").map(str::to_string),
        ttft_ms: f("ttft_ms"),
        tokens_per_s: f("tokens_per_sec"),
        raw: v,
    })
}

/// How a failed legacy request ended, from its error text.
fn outcome_of(error: Option<&str>) -> OutcomeClass {
    let text = error.unwrap_or("");
    let lower = text.to_lowercase();
    if lower.contains("timed out") || lower.contains("timeout") {
        OutcomeClass::Timeout
    } else {
        classify::classify_error_text(text)
    }
}

/// Groups one run's requests into probes (by configuration and concurrency).
fn probes_of(file: &Path, reqs: &[Request]) -> Vec<(Record, Value)> {
    let mut groups: BTreeMap<(String, u32), Vec<&Request>> = BTreeMap::new();
    for r in reqs {
        let key = serde_json::to_string(&r.config).unwrap_or_default();
        groups.entry((key, r.concurrency)).or_default().push(r);
    }
    let mut out: Vec<(Record, Value)> = groups
        .into_values()
        .map(|g| {
            let ok: Vec<&&Request> = g.iter().filter(|r| r.success).collect();
            let success = ok.len() == g.len();
            let outcome = match g.iter().find(|r| !r.success) {
                None => OutcomeClass::Ok,
                Some(r) => outcome_of(r.error.as_deref()),
            };
            let rec = Record {
                host_id: String::new(),
                model_id: String::new(),
                config: g[0].config.clone(),
                concurrency: g[0].concurrency,
                outcome,
                success,
                prefill_tokens_per_s: None,
                decode_tokens_per_s: median(ok.iter().filter_map(|r| r.tokens_per_s).collect()),
                ttft_ms: median(ok.iter().filter_map(|r| r.ttft_ms).collect()),
                rss_peak_bytes: None,
                gpu_used_peak_bytes: None,
                capacity_bytes: None,
                model: ModelShape::default(),
                trusted: false,
                unix_s: g.iter().map(|r| r.unix_s).max().unwrap_or(0),
                prompt_tokens: None,
                proven_at_depth: None,
                timing: Vec::new(),
            };
            let raw = serde_json::json!({
                "source": "legacy O3",
                "untrusted": "ttft_ms was total request time; tokens_per_sec counted words over wall time; batch and f16_kv were ignored by Ollama; memory columns were rocm-smi/nvidia-smi snapshots",
                "file": file.display().to_string(),
                "lines": g.iter().map(|r| r.line).collect::<Vec<_>>(),
                "requests": g.iter().map(|r| r.raw.clone()).collect::<Vec<_>>(),
            });
            (rec, raw)
        })
        .collect();
    out.sort_by_key(|a| (a.0.config.ctx, a.0.concurrency));
    out
}

/// Reads one log file: its runs and the lines left out.
pub fn parse_log(path: &Path) -> Result<(Vec<LegacyRun>, Vec<Skipped>), LegacyError> {
    let text = std::fs::read(path).map_err(|source| LegacyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let text = String::from_utf8_lossy(&text);
    let mut skipped = Vec::new();
    let mut by_run: BTreeMap<(String, String), Vec<Request>> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_request(i + 1, line) {
            Ok(r) => by_run
                .entry((r.run_id.clone(), r.model.clone()))
                .or_default()
                .push(r),
            Err(reason) => skipped.push(Skipped {
                file: path.display().to_string(),
                line: Some(i + 1),
                reason: reason.to_string(),
            }),
        }
    }
    let runs = by_run
        .into_iter()
        .map(|((run_id, model), reqs)| {
            let probes = probes_of(path, &reqs);
            let mut ctx_ok: BTreeMap<u32, bool> = BTreeMap::new();
            for (p, _) in &probes {
                *ctx_ok.entry(p.config.ctx).or_insert(true) &= p.success;
            }
            LegacyRun {
                file: path.to_path_buf(),
                run_id,
                model,
                digest: reqs
                    .iter()
                    .find(|r| !r.digest.is_empty())
                    .map(|r| r.digest.clone())
                    .unwrap_or_default(),
                requests: reqs.len(),
                started_unix_s: reqs.iter().map(|r| r.unix_s).min().unwrap_or(0),
                finished_unix_s: reqs.iter().map(|r| r.unix_s).max().unwrap_or(0),
                claimed_max_context: ctx_ok.iter().filter(|(_, ok)| **ok).map(|(c, _)| *c).max(),
                probes,
                presets: Vec::new(),
            }
        })
        .collect();
    Ok((runs, skipped))
}

/// Reads one defaults file: the model and its presets as store values (a `config` member and
/// the legacy performance numbers, flagged untrusted).
pub fn parse_defaults(path: &Path) -> Result<(String, Vec<(String, Value)>), Unusable> {
    let text = std::fs::read_to_string(path).map_err(Unusable::Read)?;
    let v: serde_yaml::Value = serde_yaml::from_str(&text).map_err(Unusable::NotYaml)?;
    let v: Value = serde_json::to_value(&v).map_err(Unusable::NotRepresentable)?;
    let model = str_field(&v, "model")
        .map(str::to_string)
        .or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .ok_or(Unusable::Missing("model"))?;
    let presets = v
        .get("presets")
        .and_then(Value::as_object)
        .ok_or(Unusable::Missing("presets mapping"))?;
    let mut out = Vec::new();
    for (name, p) in presets {
        let config = legacy_config(p).map_err(|why| Unusable::Preset {
            name: name.clone(),
            why: Box::new(why),
        })?;
        let mut value = serde_json::json!({
            "config": config,
            "source": "legacy O3 defaults",
            "trusted": false,
        });
        for k in [
            "num_predict",
            "f16_kv",
            "temperature",
            "top_p",
            "performance",
        ] {
            if let Some(x) = p.get(k) {
                value[k] = x.clone();
            }
        }
        out.push((name.clone(), value));
    }
    Ok((model, out))
}

fn files_with(dir: &Path, ext: &[&str]) -> Result<Vec<PathBuf>, LegacyError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(LegacyError::Io {
                path: dir.display().to_string(),
                source,
            })
        }
    };
    let mut out: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|x| ext.iter().any(|e| x == std::ffi::OsStr::new(e)))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Everything in a legacy output folder, parsed (nothing stored yet): the runs with the
/// defaults' presets attached to each model's newest run (a model with defaults but no log gets
/// a run of its own without probes), and what was left out.
pub fn parse_dir(dir: &Path) -> Result<(Vec<LegacyRun>, ImportSummary), LegacyError> {
    let logs = files_with(&dir.join("logs"), &["jsonl"])?;
    let defaults = files_with(&dir.join("defaults"), &["yaml", "yml"])?;
    if logs.is_empty() && defaults.is_empty() {
        return Err(LegacyError::NotLegacy {
            dir: dir.display().to_string(),
        });
    }
    let mut summary = ImportSummary {
        log_files: logs.len(),
        defaults_files: defaults.len(),
        ..ImportSummary::default()
    };
    let mut runs = Vec::new();
    for f in &logs {
        let (r, s) = parse_log(f)?;
        runs.extend(r);
        summary.skipped.extend(s);
    }
    for f in &defaults {
        let (model, presets) = match parse_defaults(f) {
            Ok(x) => x,
            Err(reason) => {
                summary.skipped.push(Skipped {
                    file: f.display().to_string(),
                    line: None,
                    reason: reason.to_string(),
                });
                continue;
            }
        };
        let newest = runs
            .iter_mut()
            .filter(|r| r.model == model)
            .max_by_key(|r| r.finished_unix_s);
        match newest {
            Some(r) => r.presets.extend(presets),
            None => {
                let t = std::fs::metadata(f)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                runs.push(LegacyRun {
                    file: f.clone(),
                    run_id: String::new(),
                    model,
                    digest: String::new(),
                    requests: 0,
                    started_unix_s: t,
                    finished_unix_s: t,
                    claimed_max_context: None,
                    probes: Vec::new(),
                    presets,
                });
            }
        }
    }
    Ok((runs, summary))
}

/// Imports a legacy output folder into the store: one run per log file and legacy run id, one
/// transaction each; a run imported before is left alone.
pub fn import(dir: &Path, store: &Store) -> Result<ImportSummary, LegacyError> {
    let (runs, mut summary) = parse_dir(dir)?;
    let host_id = store.upsert_host(&Host::legacy_placeholder())?;
    for run in runs {
        let model_id = store.upsert_model(&run.model, &run.digest, &ModelShape::default())?;
        let file = std::fs::canonicalize(&run.file).unwrap_or_else(|_| run.file.clone());
        let key = if run.run_id.is_empty() {
            file.display().to_string()
        } else {
            format!("{}#{}", file.display(), run.run_id)
        };
        let config = serde_json::json!({
            "source": "legacy O3",
            "legacy_run_id": run.run_id,
            "file": file.display().to_string(),
            "requests": run.requests,
            "claimed_max_context": run.claimed_max_context,
        });
        let imported = ImportedRun {
            host_id: host_id.clone(),
            model_id: model_id.clone(),
            backend: BACKEND.into(),
            run_dir: key,
            config_json: config.to_string(),
            started_unix_s: run.started_unix_s,
            finished_unix_s: run.finished_unix_s,
            max_context: None,
            probes: run
                .probes
                .iter()
                .map(|(rec, raw)| {
                    let mut rec = rec.clone();
                    rec.host_id = host_id.clone();
                    rec.model_id = model_id.clone();
                    (STAGE.to_string(), rec, Some(raw.to_string()))
                })
                .collect(),
            presets: run.presets.clone(),
        };
        match store.import_run(&imported)? {
            Some(_) => {
                summary.runs_imported += 1;
                summary.requests += run.requests;
                summary.probes += run.probes.len();
                summary.presets += run.presets.len();
            }
            None => summary.runs_already_imported += 1,
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/legacy")
    }

    #[test]
    fn timestamps() {
        let t = |s: &str| parse_timestamp(&Value::String(s.into()));
        assert_eq!(t("1970-01-01T00:00:00"), Some(0));
        assert_eq!(t("2025-01-14T09:30:15.482913"), Some(1_736_847_015));
        assert_eq!(t("2025-01-14 09:30:15"), Some(1_736_847_015));
        assert_eq!(t("2025-01-14T10:30:15+01:00"), Some(1_736_847_015));
        assert_eq!(t("2025-01-14T09:30:15Z"), Some(1_736_847_015));
        assert_eq!(t("2024-02-29T00:00:00"), Some(1_709_164_800));
        assert_eq!(t("14/01/2025"), None);
        assert_eq!(t("2025-13-01T00:00:00"), None);
        assert_eq!(
            parse_timestamp(&serde_json::json!(1_736_847_015.5)),
            Some(1_736_847_015)
        );
    }

    #[test]
    fn a_request_line_maps_to_the_config_and_its_failure() {
        let line = r#"{"timestamp": "2025-01-14T09:31:02.1", "run_id": "r", "model": "llama3.1:8b", "model_digest": "sha256:46e0", "config": {"num_ctx": 131072, "batch": 32, "num_predict": 256, "num_thread": 16, "f16_kv": true, "temperature": 0.7, "top_p": 0.9, "seed": 42}, "success": false, "error": "llama runner process has terminated: error:hipMalloc failed: out of memory", "ttft_ms": null, "total_ms": 812.0, "output_tokens": 0, "tokens_per_sec": 0.0, "concurrency_level": 2, "run_index": 0}"#;
        let r = parse_request(3, line).unwrap();
        assert_eq!(r.config.ctx, 131072);
        assert_eq!((r.config.batch, r.config.threads), (Some(32), Some(16)));
        assert_eq!(r.config.cache_type_k, None, "f16_kv was ignored by Ollama");
        assert_eq!(r.concurrency, 2);
        assert!(!r.success);
        assert_eq!(outcome_of(r.error.as_deref()), OutcomeClass::Oom);
        assert_eq!(
            outcome_of(Some("Read timed out. (read timeout=60)")),
            OutcomeClass::Timeout
        );
        for (bad, why) in [
            ("{\"model\": ", "not JSON"),
            ("[1]", "not a JSON object"),
            ("{\"config\": {\"num_ctx\": 1}, \"success\": true}", "no model"),
            ("{\"model\": \"m\", \"config\": {}, \"success\": true}", "no config.num_ctx"),
            (
                "{\"model\": \"m\", \"config\": {\"num_ctx\": 1}, \"success\": \"yes\"}",
                "success is not",
            ),
            (
                "{\"model\": \"m\", \"config\": {\"num_ctx\": 1}, \"success\": true, \"timestamp\": \"yesterday\"}",
                "is not ISO 8601",
            ),
        ] {
            let e = parse_request(1, bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn the_fixture_groups_into_probes_with_medians_and_failures() {
        let (runs, summary) = parse_dir(&fixture()).unwrap();
        assert_eq!((summary.log_files, summary.defaults_files), (2, 2));
        let llama = runs
            .iter()
            .find(|r| r.model == "llama3.1:8b" && r.requests > 0)
            .unwrap();
        assert_eq!(llama.requests, 19);
        assert_eq!(
            llama.digest,
            "sha256:46e0c10c039e5d2aa3b4b8c1c6a4c2f5e3d1b0a9f8e7d6c5b4a3928170f6e5d4"
        );
        let by = |ctx: u32, c: u32| {
            llama
                .probes
                .iter()
                .find(|(p, _)| p.config.ctx == ctx && p.concurrency == c)
                .map(|(p, _)| p)
                .unwrap_or_else(|| panic!("no probe {ctx}/{c}"))
        };
        let p = by(16384, 1);
        assert!(p.success && !p.trusted);
        assert_eq!(p.decode_tokens_per_s, Some(45.35));
        assert_eq!(p.ttft_ms, Some(4123.5));
        assert_eq!(p.gpu_used_peak_bytes, None, "snapshots are not peaks");
        let oom = by(131072, 1);
        assert!(!oom.success);
        assert_eq!(oom.outcome, OutcomeClass::Oom);
        assert_eq!(oom.decode_tokens_per_s, None);
        let c4 = by(16384, 4);
        assert_eq!(c4.outcome, OutcomeClass::Timeout);
        assert!(!c4.success && c4.decode_tokens_per_s.is_some());
        assert_eq!(llama.claimed_max_context, Some(65536));
        assert_eq!(llama.probes.len(), 6);
        assert_eq!(llama.presets.len(), 3, "defaults attach to the model's run");
        // The second model's defaults without a log make a run of their own.
        let mistral = runs.iter().find(|r| r.model == "mistral:7b").unwrap();
        assert!(mistral.probes.is_empty() && mistral.presets.len() == 2);
        let skipped: Vec<String> = summary.skipped.iter().map(|s| s.to_string()).collect();
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(
            skipped[0]
                .ends_with(".jsonl:12: not JSON (EOF while parsing a string at line 1 column 110)"),
            "{skipped:?}"
        );
        assert!(skipped[1].contains(".jsonl:15: no config"), "{skipped:?}");
    }

    #[test]
    fn import_stores_untrusted_probes_once() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(&d.path().join("o3.db")).unwrap();
        let s = import(&fixture(), &store).unwrap();
        assert_eq!(s.runs_imported, 3);
        assert_eq!(s.requests, 23);
        assert_eq!(s.probes, 8);
        assert_eq!(s.presets, 5);
        assert_eq!(s.skipped.len(), 2);
        let recs = store.records(None, None).unwrap();
        assert_eq!(recs.len(), 8);
        assert!(recs.iter().all(|r| !r.trusted));
        let again = import(&fixture(), &store).unwrap();
        assert_eq!((again.runs_imported, again.runs_already_imported), (0, 3));
        assert_eq!(store.records(None, None).unwrap().len(), 8);
        let h = store.history().unwrap();
        assert!(h
            .iter()
            .all(|r| r.imported && r.trusted_probes == 0 && r.max_context.is_none()));
        assert!(h.iter().all(|r| r.backend == BACKEND));
    }

    #[test]
    fn a_folder_without_legacy_files_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let e = parse_dir(d.path()).unwrap_err();
        assert!(
            e.to_string()
                .contains("neither logs/*.jsonl nor defaults/*.yaml"),
            "{e}"
        );
    }
}
