//! o3: find the best serving configuration of a local LLM on this machine, and measure peak
//! resources exactly while doing it.
//!
//! Data flows one way (docs/architecture.md); every arrow is an import and none points back:
//!
//! - `cli` → `report` → `optimize` → `probe` → `backend` → `timing` → `util`
//! - `optimize` → `learn` (→ `backend`, `telemetry`), `config` (→ `telemetry`, `timing`)
//! - `cli` → `record` → `telemetry` → `trace` → `util`
//! - `probe` → `telemetry`, `trace`
//!
//! `cli` parses arguments and prints; each command's work lives in its stage.

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
