//! `o3 import-legacy DIR`: the legacy O3 tool's logs and defaults into the results store, as
//! untrusted results.

use std::path::PathBuf;

use crate::learn::legacy::{self, ImportSummary};
use crate::learn::store::{self, Store};

use super::{CliResult, Roots};

#[derive(Debug, clap::Args)]
pub struct ImportLegacyArgs {
    /// The legacy tool's output folder (with logs/*.jsonl and/or defaults/*.yaml).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// The results store (default: $XDG_DATA_HOME/o3/o3.db or ~/.local/share/o3/o3.db).
    #[arg(long, value_name = "FILE")]
    pub db: Option<PathBuf>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn render(s: &ImportSummary, dir: &str, db: &str) -> String {
    let mut out = format!("imported {dir} into {db}\n");
    out += &format!(
        "  files:    {} log{}, {} defaults\n",
        s.log_files,
        if s.log_files == 1 { "" } else { "s" },
        s.defaults_files
    );
    out += &format!(
        "  imported: {} run{}, {} requests in {} probes, {} presets; all untrusted (legacy TTFT was total time, tokens/s counted words)\n",
        s.runs_imported,
        if s.runs_imported == 1 { "" } else { "s" },
        s.requests,
        s.probes,
        s.presets
    );
    if s.runs_already_imported > 0 {
        out += &format!(
            "  already in the store: {} run{} (left as they were)\n",
            s.runs_already_imported,
            if s.runs_already_imported == 1 {
                ""
            } else {
                "s"
            }
        );
    }
    if s.skipped.is_empty() {
        out += "  skipped:  nothing\n";
    } else {
        out += &format!("  skipped:  {}\n", s.skipped.len());
        for k in &s.skipped {
            out += &format!("    {k}\n");
        }
    }
    out
}

pub fn run(_roots: &Roots, a: ImportLegacyArgs) -> CliResult {
    let path = a.db.unwrap_or_else(store::default_path);
    // Parse first: a wrong folder leaves no database behind.
    if let Err(e) = legacy::parse_dir(&a.dir) {
        return Err((anyhow::Error::new(e), 1));
    }
    let store = Store::open(&path).map_err(|e| (anyhow::Error::new(e), 1))?;
    let summary = legacy::import(&a.dir, &store).map_err(|e| (anyhow::Error::new(e), 1))?;
    if a.json {
        // The summary lists them for people; with --json they go to stderr too.
        for k in &summary.skipped {
            eprintln!("o3: warning: skipped {k}");
        }
        let v = serde_json::json!({
            "schema_version": 1,
            "dir": a.dir.display().to_string(),
            "db": path.display().to_string(),
            "trusted": false,
            "summary": summary,
        });
        super::stdout::line(v)?;
    } else {
        super::stdout::print(&render(
            &summary,
            &a.dir.display().to_string(),
            &path.display().to_string(),
        ))?;
    }
    Ok(0)
}
