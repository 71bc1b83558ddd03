//! `o3 report`: an optimize run directory as Markdown with SVG plots, and optionally one
//! self-contained HTML page.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::report::{doc, run, run_report};

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

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes)
        .with_context(|| format!("cannot write {} (choose a writable --out)", path.display()))
}

pub fn run(_roots: &Roots, a: ReportArgs) -> CliResult {
    let r = run::read_run(&a.run_dir).map_err(|e| (anyhow::Error::new(e), 1))?;
    for p in &r.problems {
        eprintln!("o3 report: {}: {p}", a.run_dir.display());
    }
    let d = run_report::build(&r);
    let out = a.out.clone().unwrap_or_else(|| a.run_dir.join("report"));
    let plots = out.join("plots");
    let made = std::fs::create_dir_all(&plots).with_context(|| {
        format!(
            "cannot create {} (choose a writable --out)",
            plots.display()
        )
    });
    made.map_err(|e| (e, 1))?;
    let mut written = Vec::new();
    for (name, chart) in d.plots() {
        let p = plots.join(format!("{name}.svg"));
        write(&p, doc::svg_file(chart).as_bytes()).map_err(|e| (e, 1))?;
    }
    let md = out.join("report.md");
    write(&md, doc::markdown(&d, "plots").as_bytes()).map_err(|e| (e, 1))?;
    written.push(md);
    if a.html {
        let html = out.join("report.html");
        write(&html, doc::html(&d).as_bytes()).map_err(|e| (e, 1))?;
        written.push(html);
    }
    for p in written {
        super::stdout::line(p.display())?;
    }
    Ok(0)
}
