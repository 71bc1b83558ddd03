//! Time at the target machine's scale: a model of how long a server takes to load, to read a
//! prompt at a depth and to generate at it, fitted from its own answers (`model`), and the
//! limits of one request derived from it (`deadline`). Used by the probe (deadlines), the
//! optimizer (plans, budgets, the ETA) and the summaries.

pub mod deadline;
pub mod model;

pub use deadline::{Judge, Limits, Policy, Shape, TimeoutKind, Verdict};
pub use model::{Estimate, Obs, Prior, TimeModel};
