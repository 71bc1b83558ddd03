//! `o3 report`: an optimize run directory as Markdown with SVG plots, and optionally one
//! self-contained HTML page.

use std::path::PathBuf;

use crate::report::files;

use super::{CliResult, Roots};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Writes DIR/report.md with its plots in DIR/plots/*.svg, and with --html DIR/report.html\n(one file: plots inline, no scripts, no network assets).\n\nExamples:\n  o3 report ~/.local/share/o3/runs/my-model-1764000000 --html\n  o3 report run/ --out /tmp/run-report"
)]
pub struct ReportArgs {
    /// The run directory written by `o3 optimize --out` (finished, interrupted or resumed).
    #[arg(value_name = "RUN_DIR")]
    pub run_dir: PathBuf,
    /// Also write one self-contained HTML page.
    #[arg(long)]
    pub html: bool,
    /// Where to write the report [default: RUN_DIR/report].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

pub fn run(_roots: &Roots, a: ReportArgs) -> CliResult {
    let out = a.out.clone().unwrap_or_else(|| a.run_dir.join("report"));
    let w = files::write(&a.run_dir, &out, a.html).map_err(|e| (anyhow::Error::new(e), 1))?;
    for p in &w.problems {
        eprintln!("o3 report: {}: {p}", a.run_dir.display());
    }
    for p in w.files {
        super::stdout::line(p.display())?;
    }
    Ok(0)
}
