//! Small helpers shared by the stages: durations, percents and fractions, byte sizes, order
//! statistics, starting processes and making sure the servers among them die with o3, running
//! a short tool within a time limit, the host name, kernel release and wall clock, the signal
//! pipe of long-running commands, shell quoting.

pub mod command;
pub mod duration;
pub mod order;
pub mod owner;
pub mod percent;
pub mod shell;
pub mod signals;
pub mod spawn;
pub mod system;
pub mod units;
