//! The report of an `o3 optimize` run directory (docs/report.md): the run read back (`run`),
//! what it says (`run_report`), rendered by `doc` with `plot`. Single traces are read,
//! exported and analysed in [`crate::trace`].

pub mod doc;
pub mod files;
pub mod plot;
pub mod results;
pub mod run;
pub mod run_report;
