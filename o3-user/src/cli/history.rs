//! `o3 history`: the runs in the results store, per host and model.

use std::path::{Path, PathBuf};

use crate::learn::store::{self, RunRow, Store};
use crate::util::units::utc;

use super::{stdout, CliResult, Roots};

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// The results store (default: $XDG_DATA_HOME/o3/o3.db or ~/.local/share/o3/o3.db).
    #[arg(long, value_name = "FILE")]
    pub db: Option<PathBuf>,
    /// Print the runs as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The store at `--db` (or the default), when it exists: `Ok(None)` prints "no history yet".
pub(super) fn open_existing(
    db: Option<PathBuf>,
) -> Result<(PathBuf, Option<Store>), (anyhow::Error, i32)> {
    let path = db.unwrap_or_else(store::default_path);
    if !path.exists() {
        return Ok((path, None));
    }
    match Store::open(&path) {
        Ok(s) => Ok((path, Some(s))),
        Err(e) => Err((anyhow::Error::new(e), 1)),
    }
}

pub(super) fn no_history_yet(
    path: &Path,
    json: bool,
    key: &str,
) -> Result<(), (anyhow::Error, i32)> {
    if json {
        let mut v = serde_json::json!({
            "schema_version": 1,
            "db": path.display().to_string(),
            "exists": false,
        });
        v[key] = serde_json::json!([]);
        stdout::line(v)
    } else {
        stdout::line(format!(
            "no history yet: {} does not exist (o3 optimize stores every run there; o3 import-legacy DIR imports the legacy tool's results)",
            path.display()
        ))
    }
}

/// What a run's numbers are: measurements, or imported legacy numbers.
pub(super) fn trust(r: &RunRow) -> String {
    if r.imported {
        "imported (untrusted)".into()
    } else if r.trusted_probes == r.probes {
        "measured".into()
    } else {
        format!("measured, {} untrusted", r.probes - r.trusted_probes)
    }
}

/// Left-aligned columns, two spaces apart.
pub(super) fn table(rows: &[Vec<String>], indent: &str) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = indent.to_string();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line += cell;
            } else {
                line += &format!("{cell:<w$}  ", w = widths[c]);
            }
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}

/// The runs as text: a header per host, then one row per run, by model, newest first.
pub fn render(runs: &[RunRow]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < runs.len() {
        let host = &runs[i].host_id;
        let end = runs[i..]
            .iter()
            .position(|r| &r.host_id != host)
            .map_or(runs.len(), |n| i + n);
        if !out.is_empty() {
            out.push('\n');
        }
        out += &format!("host {}: {}\n", host, runs[i].host);
        let mut rows = vec![[
            "MODEL",
            "BACKEND",
            "STARTED (UTC)",
            "STATUS",
            "MAX CONTEXT",
            "PROBES",
            "DATA",
        ]
        .map(String::from)
        .to_vec()];
        for r in &runs[i..end] {
            rows.push(vec![
                r.model.clone(),
                r.backend.clone(),
                utc(r.started_unix_s),
                r.status.clone(),
                match (r.max_context, r.max_context_proven) {
                    (None, _) => "-".into(),
                    (Some(c), Some(false)) => format!("{c} (not proven at depth)"),
                    (Some(c), _) => c.to_string(),
                },
                if r.skips > 0 {
                    format!("{} (+{} skipped)", r.probes, r.skips)
                } else {
                    r.probes.to_string()
                },
                trust(r),
            ]);
        }
        out += &table(&rows, "  ");
        for r in runs[i..end].iter().filter(|r| r.status == "failed") {
            out += &format!(
                "  {} started {} failed: {}\n",
                r.model,
                utc(r.started_unix_s),
                r.failure.as_deref().unwrap_or("no reason stored")
            );
        }
        i = end;
    }
    out
}

pub fn run(_roots: &Roots, a: HistoryArgs) -> CliResult {
    let (path, store) = open_existing(a.db)?;
    let Some(store) = store else {
        no_history_yet(&path, a.json, "runs")?;
        return Ok(0);
    };
    let runs = store.history().map_err(|e| (anyhow::Error::new(e), 1))?;
    if a.json {
        let runs: Vec<serde_json::Value> = runs
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                v["trusted"] = serde_json::Value::Bool(!r.imported && r.trusted_probes == r.probes);
                v
            })
            .collect();
        let v = serde_json::json!({
            "schema_version": 1,
            "generated_unix_s": crate::util::system::unix_now_ns() / 1_000_000_000,
            "db": path.display().to_string(),
            "exists": true,
            "runs": runs,
        });
        stdout::line(v)?;
    } else if runs.is_empty() {
        stdout::line(format!("no runs in {} yet", path.display()))?;
    } else {
        stdout::print(&render(&runs))?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_per_host_with_trust() {
        let row = |id: i64, host: &str, imported: bool| RunRow {
            run_id: id,
            host_id: host.into(),
            host: format!("{host} summary"),
            model_id: "m".into(),
            model: "llama3.1:8b".into(),
            backend: "ollama".into(),
            started_unix_s: 1_736_847_015,
            finished_unix_s: Some(1_736_847_100),
            status: "finished".into(),
            failure: None,
            max_context: (!imported).then_some(32768),
            max_context_proven: None,
            probes: 6,
            trusted_probes: if imported { 0 } else { 6 },
            skips: 0,
            imported,
            run_dir: "/r".into(),
        };
        let text = render(&[row(1, "aaa", false), row(2, "bbb", true)]);
        assert!(text.contains("host aaa: aaa summary\n"), "{text}");
        assert!(
            text.contains("32768") && text.contains("measured"),
            "{text}"
        );
        assert!(text.contains("imported (untrusted)"), "{text}");
        assert_eq!(text.matches("MODEL").count(), 2, "{text}");
        let mut failed = row(3, "aaa", false);
        failed.status = "failed".into();
        failed.failure = Some("no configuration passed: 7 configurations measured".into());
        let text = render(&[failed]);
        assert!(
            text.contains("  llama3.1:8b started 2025-01-14 09:30 failed: no configuration passed: 7 configurations measured\n"),
            "{text}"
        );
    }
}
