//! `o3 analyze`: an offline summary of a trace file.

use std::path::PathBuf;

use crate::trace::analyze;

use super::{CliResult, Roots};

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  o3 analyze trace.jsonl\n  o3 analyze trace.jsonl --json")]
pub struct AnalyzeArgs {
    /// The trace written by `o3 record --out` or `o3 probe --out`.
    #[arg(value_name = "TRACE")]
    pub trace: PathBuf,
    /// Print one JSON object on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(_roots: &Roots, a: AnalyzeArgs) -> CliResult {
    let trace = super::export::load("analyze", &a.trace)?;
    let analysis = analyze::analyze(&trace);
    if a.json {
        let text = serde_json::to_string(&analysis).map_err(|e| (e.into(), 1))?;
        super::stdout::line(text)?;
    } else {
        super::stdout::print(&analyze::text(&analysis))?;
    }
    Ok(0)
}
