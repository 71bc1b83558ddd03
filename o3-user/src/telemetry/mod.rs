//! Telemetry: sources that fill a [`Sample`] (eBPF maps, procfs), the sampler thread that
//! drives them at absolute deadlines, and process-tree bookkeeping.

pub mod doctor;
pub mod ebpf;
pub mod gpu;
pub mod procfs;
pub mod prometheus;
pub mod reread;
pub mod sampler;
pub mod watchdog;

use serde::Serialize;

/// How a metric was obtained; written next to every number in summaries and traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Kept by a kernel program on every change: exact, including peaks between samples.
    Ebpf,
    /// Read from procfs at each sample: peaks between two samples are missed.
    ProcfsPolling,
    /// Reported by the kernel for the waited-for command (wait4 rusage).
    Rusage,
}

/// One tick's readings. Cumulative counters are monotonic; `None` means not measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Sample {
    /// ns since the recording started (CLOCK_MONOTONIC).
    pub t_ns: u64,
    /// RSS of the tracked tree (file + anon + shmem), bytes.
    pub rss_bytes: Option<u64>,
    pub rss_anon_bytes: Option<u64>,
    pub rss_file_bytes: Option<u64>,
    pub rss_shmem_bytes: Option<u64>,
    pub swap_bytes: Option<u64>,
    /// Highest tree RSS so far, as known to this source (exact with eBPF), and when (ns since
    /// start).
    pub rss_peak_bytes: Option<u64>,
    pub rss_peak_t_ns: Option<u64>,
    /// Cumulative on-CPU time of the tree, ns.
    pub cpu_ns: Option<u64>,
    /// When `cpu_ns` holds (ns since start) if the source read it later than `t_ns`; rates
    /// computed from `cpu_ns` must use this instant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_t_ns: Option<u64>,
    /// Processes currently tracked.
    pub processes: Option<u32>,
    /// System RAM in use (MemTotal - MemAvailable), bytes.
    pub mem_used_bytes: Option<u64>,
    pub mem_total_bytes: Option<u64>,
    /// System CPU busy since the previous sample, % of all cores (/proc/stat).
    pub system_cpu_percent: Option<f64>,
    /// One entry per measured GPU.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<gpu::source::GpuSample>,
    /// GPU memory per tracked process (on the ticks it is read).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gpu_processes: Vec<gpu::fdinfo::ProcessGpu>,
}

/// A discrete event of the tracked tree, in order.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TreeEvent {
    Fork {
        t_ns: u64,
        pid: u32,
        parent: u32,
        comm: String,
    },
    Exec {
        t_ns: u64,
        pid: u32,
        comm: String,
        filename: String,
    },
    Exit {
        t_ns: u64,
        pid: u32,
        comm: String,
    },
    /// The tree's RSS reached a new high (throttled; the exact final peak is in the summary).
    Peak {
        t_ns: u64,
        pid: u32,
        rss_bytes: u64,
    },
    /// The watchdog saw a safety threshold crossed.
    SafetyBreach {
        t_ns: u64,
        metric: String,
        value: f64,
        limit: f64,
        gpu: Option<u32>,
    },
}

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

/// CLOCK_MONOTONIC in ns, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CPU time of the calling thread in ns.
pub fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
