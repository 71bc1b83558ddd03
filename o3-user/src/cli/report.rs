//! `o3 report`: an optimize run directory as Markdown with SVG plots, or one HTML page.

use std::path::PathBuf;

use super::{CliResult, Roots};

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The run directory written by `o3 optimize --out`.
    #[arg(value_name = "RUN_DIR")]
    pub run_dir: PathBuf,
    /// Also write one self-contained HTML page (inline SVG plots, no network assets).
    #[arg(long)]
    pub html: bool,
    /// Where to write the report (default: RUN_DIR/report).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

pub fn run(_roots: &Roots, _a: ReportArgs) -> CliResult {
    Err((anyhow::anyhow!("o3 report: not yet written"), 1))
}
