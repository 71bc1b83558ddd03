//! The records of a trace file (docs/trace-format.md), one definition each, serialised by the
//! writer and deserialised by the reader.
//!
//! A record's own fields are typed on both sides. The parts whose contents depend on the o3
//! and the machine that wrote them (each GPU's readings in a sample, each GPU and the
//! measurement methods in the header) are held typed when o3 writes them (what telemetry
//! produced) and by name when a trace is read ([`GpuRec`], JSON values): a trace from another
//! o3 version, another GPU vendor or a hand-edited one reads with whatever those parts hold.
//! Hence [`SampleOf`] and [`HeaderOf`] are generic over those parts; [`Sample`] and [`Header`]
//! are what o3 writes, [`SampleRec`] and [`HeaderRec`] what the reader gives.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::trace::gpu::ProcessGpu;
use crate::trace::gpu::{GpuInfo, GpuSample};

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

/// Which method produced each metric (the header's `methods`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Methods {
    pub rss: Method,
    pub cpu: Method,
    pub mem_used: Method,
    /// `ebpf` (kprobes on the amdgpu memory managers) or `sampled`.
    pub gpu_mem: &'static str,
}

/// Page faults, context switches and block I/O: what `time -v` reports besides time and
/// memory. Fields a trace lacks read as 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Page faults served without reading from disk.
    pub minor_faults: u64,
    /// Page faults that read from disk.
    pub major_faults: u64,
    /// Context switches because a thread waited (I/O, a lock, sleep).
    pub voluntary_context_switches: u64,
    /// Context switches because a thread's time slice ran out or a higher-priority one woke.
    pub involuntary_context_switches: u64,
    /// Bytes read from and written to block devices (the page cache's reads and writebacks
    /// caused by the tree; rusage counts them in 512-byte blocks).
    pub read_bytes: u64,
    pub write_bytes: u64,
}

impl Counters {
    /// Field by field `self - base`, 0 where a counter went back.
    pub fn since(self, base: Counters) -> Counters {
        Counters {
            minor_faults: self.minor_faults.saturating_sub(base.minor_faults),
            major_faults: self.major_faults.saturating_sub(base.major_faults),
            voluntary_context_switches: self
                .voluntary_context_switches
                .saturating_sub(base.voluntary_context_switches),
            involuntary_context_switches: self
                .involuntary_context_switches
                .saturating_sub(base.involuntary_context_switches),
            read_bytes: self.read_bytes.saturating_sub(base.read_bytes),
            write_bytes: self.write_bytes.saturating_sub(base.write_bytes),
        }
    }

    /// Field by field `self + other`.
    pub fn plus(self, o: Counters) -> Counters {
        Counters {
            minor_faults: self.minor_faults.saturating_add(o.minor_faults),
            major_faults: self.major_faults.saturating_add(o.major_faults),
            voluntary_context_switches: self
                .voluntary_context_switches
                .saturating_add(o.voluntary_context_switches),
            involuntary_context_switches: self
                .involuntary_context_switches
                .saturating_add(o.involuntary_context_switches),
            read_bytes: self.read_bytes.saturating_add(o.read_bytes),
            write_bytes: self.write_bytes.saturating_add(o.write_bytes),
        }
    }
}

/// Where the summary's `counters` come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CounterSource {
    /// The kernel's rusage of the command o3 started (wait4): exact, for the command and every
    /// descendant it waited for.
    Rusage,
    /// Each tracked process' procfs counters, read every second and at the end, counted from
    /// the start of the recording: a lower bound (what a process did after its last read
    /// before it exited is missed).
    ProcfsSampled,
}

/// The summary's `counters`: the whole tree's [`Counters`] and their source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeCounters {
    pub source: CounterSource,
    #[serde(flatten)]
    pub counts: Counters,
}

/// The `header` record, generic over its methods `M` and GPU entries `G`. Fields an older, a
/// newer or a hand-made trace lacks read as `None` (or null, or empty).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeaderOf<M, G> {
    pub schema_version: u32,
    /// Version of o3 that wrote the file.
    #[serde(default)]
    pub o3_version: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub kernel: Option<String>,
    #[serde(default)]
    pub interval_ns: Option<u64>,
    /// Wall-clock time of t_ns = 0, ns since the Unix epoch.
    #[serde(default)]
    pub start_unix_ns: Option<u64>,
    /// `{"command": [...], "pid": N}`, `{"pid": N}`, or what a probe measured.
    #[serde(default)]
    pub target: Value,
    #[serde(default)]
    pub methods: M,
    /// The GPUs measured and which reader serves each metric.
    #[serde(default)]
    pub gpus: Vec<G>,
}

/// The header o3 writes.
pub type Header = HeaderOf<Methods, GpuInfo>;

/// The header as read: methods and GPUs by name.
pub type HeaderRec = HeaderOf<Value, Value>;

/// The `sample` record: one tick's readings, generic over its GPU entries `G`. Cumulative
/// counters are monotonic; `None` (null) means not measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SampleOf<G> {
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
    /// computed from `cpu_ns` must use this instant ([`tree_cpu_percent`]).
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
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<G>,
    /// GPU memory and engine time per tracked process, on the ticks it is read (fdinfo, KFD).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_processes: Vec<ProcessGpu>,
}

/// The sample the sources fill and o3 writes.
pub type Sample = SampleOf<GpuSample>;

/// The sample as read: each GPU's fields by name.
pub type SampleRec = SampleOf<GpuRec>;

/// One GPU's readings in a sample as read: its index and every field by name (units in the
/// names), whatever its type.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct GpuRec {
    pub index: u32,
    #[serde(flatten)]
    pub fields: BTreeMap<String, Value>,
}

impl GpuRec {
    /// A numeric field, `None` when absent, null or not a number.
    pub fn num(&self, key: &str) -> Option<f64> {
        self.fields.get(key).and_then(Value::as_f64)
    }
}

/// CPU of the tree in % of one core between two samples, at the instants `cpu_ns` holds
/// (`cpu_t_ns` where the source read it after the tick); `None` when unmeasured or no time
/// passed. A counter that went backwards counts as 0.
pub fn tree_cpu_percent<G>(prev: &SampleOf<G>, cur: &SampleOf<G>) -> Option<f64> {
    let (a, b) = (prev.cpu_ns?, cur.cpu_ns?);
    let ta = prev.cpu_t_ns.unwrap_or(prev.t_ns);
    let tb = cur.cpu_t_ns.unwrap_or(cur.t_ns);
    let dt = tb.checked_sub(ta).filter(|d| *d > 0)?;
    Some(b.saturating_sub(a) as f64 * 100.0 / dt as f64)
}

/// The `event` record: a discrete event of the tracked tree, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

impl TreeEvent {
    /// The `event` names, in the order of the variants.
    pub const KINDS: [&'static str; 5] = ["fork", "exec", "exit", "peak", "safety_breach"];

    pub fn t_ns(&self) -> u64 {
        match self {
            TreeEvent::Fork { t_ns, .. }
            | TreeEvent::Exec { t_ns, .. }
            | TreeEvent::Exit { t_ns, .. }
            | TreeEvent::Peak { t_ns, .. }
            | TreeEvent::SafetyBreach { t_ns, .. } => *t_ns,
        }
    }

    /// Its `event` name, one of [`TreeEvent::KINDS`].
    pub fn kind(&self) -> &'static str {
        let i = match self {
            TreeEvent::Fork { .. } => 0,
            TreeEvent::Exec { .. } => 1,
            TreeEvent::Exit { .. } => 2,
            TreeEvent::Peak { .. } => 3,
            TreeEvent::SafetyBreach { .. } => 4,
        };
        TreeEvent::KINDS[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_are_the_written_tags() {
        let all = [
            TreeEvent::Fork {
                t_ns: 1,
                pid: 2,
                parent: 1,
                comm: "a".into(),
            },
            TreeEvent::Exec {
                t_ns: 1,
                pid: 2,
                comm: "a".into(),
                filename: "/a".into(),
            },
            TreeEvent::Exit {
                t_ns: 1,
                pid: 2,
                comm: "a".into(),
            },
            TreeEvent::Peak {
                t_ns: 1,
                pid: 2,
                rss_bytes: 3,
            },
            TreeEvent::SafetyBreach {
                t_ns: 1,
                metric: "ram_percent".into(),
                value: 90.0,
                limit: 85.0,
                gpu: None,
            },
        ];
        for (e, kind) in all.iter().zip(TreeEvent::KINDS) {
            assert_eq!(serde_json::to_value(e).unwrap()["event"], kind);
            assert_eq!(e.kind(), kind);
        }
    }

    #[test]
    fn counters_read_with_the_fields_a_trace_has() {
        let c: TreeCounters =
            serde_json::from_str(r#"{"source":"procfs_sampled","minor_faults":7}"#).unwrap();
        assert_eq!(c.source, CounterSource::ProcfsSampled);
        assert_eq!(c.counts.minor_faults, 7);
        assert_eq!(c.counts.write_bytes, 0);
        let v = serde_json::to_value(c).unwrap();
        assert_eq!(v["source"], "procfs_sampled");
        assert_eq!(v["involuntary_context_switches"], 0);
        let a = Counters {
            minor_faults: 5,
            write_bytes: 10,
            ..Counters::default()
        };
        let b = Counters {
            minor_faults: 7,
            write_bytes: 4,
            ..Counters::default()
        };
        assert_eq!(b.since(a).minor_faults, 2);
        assert_eq!(b.since(a).write_bytes, 0);
        assert_eq!(a.plus(b).write_bytes, 14);
    }

    #[test]
    fn tree_cpu_uses_the_instant_the_counter_holds() {
        let s = |t_ns, cpu_ns, cpu_t_ns| SampleRec {
            t_ns,
            cpu_ns: Some(cpu_ns),
            cpu_t_ns,
            ..SampleRec::default()
        };
        assert_eq!(
            tree_cpu_percent(&s(0, 0, None), &s(10, 5, None)),
            Some(50.0)
        );
        assert_eq!(
            tree_cpu_percent(&s(0, 0, Some(0)), &s(10, 5, Some(20))),
            Some(25.0)
        );
        assert_eq!(
            tree_cpu_percent(&s(10, 9, None), &s(20, 5, None)),
            Some(0.0)
        );
        assert_eq!(tree_cpu_percent(&s(10, 0, None), &s(10, 5, None)), None);
    }
}
