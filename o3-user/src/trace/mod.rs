//! Trace files, both ways (docs/trace-format.md): JSON Lines with a header, then sample and
//! event records in time order, then a summary; field names carry units (`rss_bytes`, `cpu_ns`,
//! `t_ns`). The record types ([`record`]), the writer `o3 record --out` and `o3 probe --out`
//! use, the reader ([`read`]; line splitting in [`lines`]), the exporters (CSV, Perfetto,
//! Parquet, and the Prometheus exposition of live samples; [`export`], docs/exports.md) and
//! the analysis behind `o3 analyze` ([`analyze`]).

pub mod analyze;
pub mod export;
pub mod gpu;
pub mod lines;
pub mod read;
pub mod record;
mod write;

#[cfg(test)]
mod round_trip;

pub use read::{read_file, Problem, ReadError, Trace};
pub use record::{
    tree_cpu_percent, GpuRec, Header, HeaderRec, Method, Methods, Sample, SampleRec, TreeEvent,
};
pub use write::{TraceError, TraceWriter};

/// Bumped whenever a record changes incompatibly.
pub const SCHEMA_VERSION: u32 = 1;
