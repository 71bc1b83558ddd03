//! Small helpers shared by the stages: durations, byte sizes, order statistics, starting
//! processes and making sure the servers among them die with o3.

pub mod duration;
pub mod order;
pub mod owner;
pub mod spawn;
pub mod units;
