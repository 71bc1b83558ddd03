//! o3: find the best serving configuration of a local LLM on this machine, and measure peak
//! resources exactly while doing it.
//!
//! Data flows one way: `cli` → `record` → `telemetry` / `trace` → `o3-common`.

pub mod backend;
pub mod cli;
pub mod config;
pub mod learn;
pub mod optimize;
pub mod probe;
pub mod record;
pub mod report;
pub mod telemetry;
pub mod timing;
pub mod trace;
pub mod util;
