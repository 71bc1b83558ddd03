//! `o3 export`: a trace file as CSV, Chrome trace-event JSON (Perfetto) or Apache Parquet; an
//! `o3 optimize` run directory's results (a row per measured configuration) as CSV or Parquet.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;

use crate::trace::{self, export, Trace};

use super::{CliResult, Roots};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One row per sample, one column per metric (units in the names).
    Csv,
    /// Chrome trace-event JSON: open it in ui.perfetto.dev or chrome://tracing.
    Perfetto,
    /// Apache Parquet: one row per sample, typed columns, for DuckDB, Polars or Spark.
    Parquet,
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  o3 export trace.jsonl --format csv --out trace.csv\n  o3 export trace.jsonl --format perfetto --out trace.json   (then open it in ui.perfetto.dev)\n  o3 export trace.jsonl --format parquet --out trace.parquet   (then: duckdb -c \"SELECT max(rss_bytes) FROM 'trace.parquet'\")\n  o3 export trace.jsonl --format parquet > trace.parquet   (a file or a pipe, never a terminal)"
)]
pub struct ExportArgs {
    /// The trace written by `o3 record --out` or `o3 probe --out`, or the run directory of
    /// `o3 optimize` (its results: a row per measured configuration).
    #[arg(value_name = "TRACE|RUN_DIR")]
    pub trace: PathBuf,
    /// Output format.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Format,
    /// Write to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Reads a trace and prints its problems and warnings to stderr, one per line.
pub(super) fn load(cmd: &str, path: &std::path::Path) -> Result<Trace, (anyhow::Error, i32)> {
    let trace = trace::read_file(path).map_err(|e| (anyhow::Error::new(e), 1))?;
    for p in &trace.problems {
        eprintln!("o3 {cmd}: {}: {p} (skipped)", path.display());
    }
    for w in &trace.warnings {
        eprintln!("o3 {cmd}: {}: warning: {w}", path.display());
    }
    Ok(trace)
}

pub fn run(_roots: &Roots, a: ExportArgs) -> CliResult {
    if a.format == Format::Parquet && a.out.is_none() && std::io::stdout().is_terminal() {
        return Err((
            anyhow::anyhow!(
                "Parquet is binary and stdout is a terminal: add --out FILE, or redirect stdout to a file or a pipe"
            ),
            2,
        ));
    }
    let bytes = if a.trace.is_dir() {
        results(&a)?
    } else {
        trace_bytes(&a)?
    };
    match &a.out {
        Some(path) => std::fs::write(path, &bytes)
            .with_context(|| format!("cannot write {} (choose a writable --out)", path.display()))
            .map_err(|e| (e, 1))?,
        None => super::stdout::write_to(&mut std::io::stdout().lock(), &bytes)?,
    }
    Ok(0)
}

/// A run directory's results table.
fn results(a: &ExportArgs) -> Result<Vec<u8>, (anyhow::Error, i32)> {
    let run = crate::report::run::read_run(&a.trace).map_err(|e| (anyhow::Error::new(e), 1))?;
    let Some(summary) = &run.summary else {
        return Err((
            anyhow::anyhow!(
                "{} has no summary.json yet (the run was stopped before its end): finish it with `o3 optimize --resume {}`",
                a.trace.display(),
                a.trace.display()
            ),
            1,
        ));
    };
    match a.format {
        Format::Csv => Ok(crate::report::results::csv(summary)),
        Format::Parquet => Ok(crate::report::results::parquet(summary)),
        Format::Perfetto => Err((
            anyhow::anyhow!(
                "a run directory's results are a table: export them with --format csv or parquet (perfetto takes a probe's trace, e.g. {}/traces/*.jsonl)",
                a.trace.display()
            ),
            2,
        )),
    }
}

/// A trace file, exported.
fn trace_bytes(a: &ExportArgs) -> Result<Vec<u8>, (anyhow::Error, i32)> {
    let trace = load("export", &a.trace)?;
    Ok(match a.format {
        Format::Csv => export::csv::csv(&trace),
        Format::Perfetto => export::perfetto::perfetto(&trace),
        Format::Parquet => export::parquet::parquet(&trace),
    })
}
