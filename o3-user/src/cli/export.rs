//! `o3 export`: a trace file as CSV, Chrome trace-event JSON (Perfetto) or Apache Parquet.

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
    /// The trace written by `o3 record --out` or `o3 probe --out`.
    #[arg(value_name = "TRACE")]
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
    let trace = load("export", &a.trace)?;
    let bytes = match a.format {
        Format::Csv => export::csv::csv(&trace),
        Format::Perfetto => export::perfetto::perfetto(&trace),
        Format::Parquet => export::parquet::parquet(&trace),
    };
    match &a.out {
        Some(path) => std::fs::write(path, &bytes)
            .with_context(|| format!("cannot write {} (choose a writable --out)", path.display()))
            .map_err(|e| (e, 1))?,
        None => super::stdout::write_to(&mut std::io::stdout().lock(), &bytes)?,
    }
    Ok(0)
}
