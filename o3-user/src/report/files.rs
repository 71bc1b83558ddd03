//! The report's files: `report.md` with its plots as SVG files beside it, and with `html` one
//! self-contained `report.html`. `o3 report` writes them on request, `o3 optimize` at the end of
//! every run.

use std::path::{Path, PathBuf};

use super::{doc, run, run_report};

/// What was written, and what the run's files lacked (a report is written all the same).
#[derive(Debug)]
pub struct Written {
    pub files: Vec<PathBuf>,
    pub problems: Vec<String>,
}

/// Why no report was written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Run(#[from] run::RunError),
    #[error("cannot write {}: {source} (choose a writable --out)", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Reads the run in `run_dir` and writes its report into `out`.
pub fn write(run_dir: &Path, out: &Path, html: bool) -> Result<Written, WriteError> {
    let r = run::read_run(run_dir)?;
    let d = run_report::build(&r);
    let plots = out.join("plots");
    std::fs::create_dir_all(&plots).map_err(|source| WriteError::Io {
        path: plots.clone(),
        source,
    })?;
    for (name, chart) in d.plots() {
        put(
            &plots.join(format!("{name}.svg")),
            doc::svg_file(chart).as_bytes(),
        )?;
    }
    let md = out.join("report.md");
    put(&md, doc::markdown(&d, "plots").as_bytes())?;
    let mut files = vec![md];
    if html {
        let page = out.join("report.html");
        put(&page, doc::html(&d).as_bytes())?;
        files.push(page);
    }
    Ok(Written {
        files,
        problems: r.problems,
    })
}

fn put(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    std::fs::write(path, bytes).map_err(|source| WriteError::Io {
        path: path.to_path_buf(),
        source,
    })
}
