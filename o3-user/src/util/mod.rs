//! Small helpers shared by the stages: durations, byte sizes.

pub mod duration;
pub mod spawn;
pub mod units;
