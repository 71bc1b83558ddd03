//! Small helpers shared by the stages: durations, byte sizes, order statistics.

pub mod duration;
pub mod order;
pub mod spawn;
pub mod units;
