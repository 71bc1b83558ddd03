//! The report on one `o3 optimize` run: what was searched and found, the presets with their
//! artefacts, the statistics per configuration, what learning reused or predicted, and the
//! resources over time. Pure: a `Run` in, a `ReportDoc` out.
//!
//! One module per section, in the order [`build`] writes them: `overview` (the run and its
//! time plan), `presets`, `variants` (the variants compared), `context` (the context search), `sweeps` (batch size and
//! concurrency), `resources` (memory and CPU timelines, with `gpu`), `statistics`, `learning`
//! (with the notes). `cells` formats values as table cells; `metrics` reads the probes.

mod cells;
mod context;
mod gpu;
mod learning;
mod metrics;
mod overview;
mod presets;
mod resources;
mod statistics;
mod sweeps;
#[cfg(test)]
mod tests;
mod variants;

use serde_json::Value;

use super::doc::ReportDoc;
use super::run::Run;
// The trace reader's records and CPU rate: the one place this report names the reader.
use crate::trace::{tree_cpu_percent, SampleRec};

/// Builds the report.
pub fn build(run: &Run) -> ReportDoc {
    let s = run.summary.as_ref().unwrap_or(&Value::Null);
    let r = &run.run;
    let model = r["target"]["model"].as_str().unwrap_or("?");
    let model_name = model.rsplit('/').next().unwrap_or(model);
    let mut d = ReportDoc {
        title: format!("o3 optimize report: {model_name}"),
        ..ReportDoc::default()
    };
    overview::overview(&mut d, run, s);
    overview::time(&mut d, s);
    presets::presets(&mut d, s);
    variants::variants(&mut d, s);
    context::context(&mut d, run, s);
    sweeps::batch(&mut d, run);
    sweeps::concurrency(&mut d, run);
    resources::resources(&mut d, run, s);
    statistics::statistics(&mut d, s);
    learning::learning(&mut d, run, s);
    learning::predictions(&mut d, s);
    learning::notes(&mut d, run, s);
    d
}
