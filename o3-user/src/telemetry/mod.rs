//! Telemetry: sources that fill a [`Sample`] (eBPF maps, procfs), the sampler thread that
//! drives them at absolute deadlines, and process-tree bookkeeping.

pub mod counters;
pub mod doctor;
pub mod ebpf;
pub mod gpu;
pub mod procfs;
pub mod reread;
pub mod sampler;
pub mod top;
pub mod watchdog;

use serde::Serialize;

/// The on-disk record types the sources fill; defined with the trace format.
pub use crate::trace::record::{Method, Sample, TreeEvent};

/// Peak of one process as a source saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessPeak {
    pub pid: u32,
    pub comm: String,
    pub peak_rss_bytes: u64,
    /// ns since start.
    pub peak_t_ns: u64,
    pub cpu_ns: Option<u64>,
}

/// A collector. Each tick the sampler calls every source with the same sample; a source fills
/// the fields it measures and may report events that happened since the last tick.
pub trait Source: Send {
    fn name(&self) -> &'static str;
    /// `now_ns` is CLOCK_MONOTONIC, `t0_ns` the recording's start on the same clock.
    fn sample(&mut self, now_ns: u64, t0_ns: u64, out: &mut Sample, events: &mut Vec<TreeEvent>);
    /// Per-process peaks, for sources that keep them themselves (the procfs tree).
    fn processes(&self) -> Vec<ProcessPeak> {
        Vec::new()
    }
    /// Samples taken without the sampler (by a kernel timer) up to `up_to_ns`
    /// (CLOCK_MONOTONIC), oldest first; later ones wait for the next call.
    fn drain_samples(&mut self, _up_to_ns: u64, _t0_ns: u64, _out: &mut Vec<Sample>) {}
}

mod sys;
pub use sys::{clock_ticks_per_second, monotonic_ns, page_size, thread_cpu_ns};
