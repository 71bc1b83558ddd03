//! The summary of a finished recording: per-process peaks and every figure the aggregate, the
//! sampler and the kernel programs measured.

use super::collect::Collected;
use super::summary::{self, CpuSummary, Overhead, RssSummary, Safety, Sampling, Summary};
use super::Options;
use crate::telemetry::ebpf::Loaded;
use crate::telemetry::gpu::source::GpuInfo;
use crate::telemetry::{sampler, Method, ProcessPeak, Source};
use crate::trace::SCHEMA_VERSION;

/// What the run measured besides the aggregate, for the summary.
pub(super) struct Measured<'a> {
    pub opts: &'a Options,
    pub loaded: Option<&'a Loaded>,
    pub method: Method,
    pub target_json: serde_json::Value,
    pub t0: u64,
    pub wall_ns: u64,
    pub attach_ns: u64,
    pub cpu_self_ns: u64,
    pub bpf: (u64, u64),
    pub sampler: sampler::SamplerStats,
    pub user_every_ns: u64,
    pub kernel_ticks: bool,
    pub gpu_infos: &'a [GpuInfo],
    pub warnings: Vec<String>,
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole > 0 {
        part as f64 / whole as f64 * 100.0
    } else {
        0.0
    }
}

/// Each process's peak, largest first: exact from the kernel's maps, else from the sources.
pub(super) fn processes(
    m: &Measured,
    c: &Collected,
    sources: &[Box<dyn Source>],
) -> Vec<ProcessPeak> {
    let mut processes: Vec<ProcessPeak> = match m.loaded {
        Some(l) => l
            .per_process()
            .into_iter()
            .map(|(pid, peak, cpu)| ProcessPeak {
                pid,
                comm: c.comms.get(&pid).cloned().unwrap_or_else(|| {
                    std::fs::read_to_string(m.opts.procfs_root.join(format!("{pid}/comm")))
                        .map(|s| s.trim().to_string())
                        .unwrap_or_else(|_| "?".into())
                }),
                peak_rss_bytes: peak.rss_peak.max(0) as u64,
                peak_t_ns: peak.rss_peak_ns.saturating_sub(m.t0),
                cpu_ns: Some(cpu),
            })
            .collect(),
        None => sources.iter().flat_map(|s| s.processes()).collect(),
    };
    processes.sort_by_key(|p| std::cmp::Reverse(p.peak_rss_bytes));
    processes
}

/// The exact GPU memory peaks of the kernel's memory managers, if their programs loaded.
fn exact_gpu_mem(m: &Measured) -> Vec<summary::ExactGpuMem> {
    match m.loaded.map(|l| &l.gpu_mem) {
        Some(Ok(p)) => p
            .managers()
            .into_iter()
            .map(|(_, mm)| summary::ExactGpuMem {
                kind: if mm.kind == o3_common::GPU_MEM_KIND_GTT {
                    "gtt"
                } else {
                    "vram"
                },
                allocated_peak_bytes: mm.peak.max(0) as u64,
                allocated_peak_t_ns: mm.peak_ns.saturating_sub(m.t0),
                allocations: mm.allocs,
                frees: mm.frees,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn sampling(m: &Measured, c: &Collected) -> Sampling {
    Sampling {
        interval_ns: m.opts.interval.as_nanos() as u64,
        kernel: m.kernel_ticks,
        sources_every_ns: m.user_every_ns,
        samples: c.agg.samples,
        late_ticks: m.sampler.late_ticks,
        max_tick_ns: m.sampler.max_tick_ns,
    }
}

fn overhead(m: &Measured) -> Overhead {
    let (bpf_ns, bpf_cnt) = m.bpf;
    Overhead {
        attach_ns: m.attach_ns,
        o3_cpu_ns: m.cpu_self_ns,
        sampler_cpu_ns: m.sampler.cpu_ns,
        bpf_run_ns: bpf_ns,
        bpf_run_count: bpf_cnt,
        percent_of_one_core: percent(m.cpu_self_ns + bpf_ns, m.wall_ns),
    }
}

/// The summary of the whole recording.
pub(super) fn summary(m: Measured, c: Collected, processes: Vec<ProcessPeak>) -> Summary {
    let mut s = figures(m, c, processes);
    if summary::is_short(&s) {
        let w = summary::short_warning(&s);
        s.warnings.push(w);
    }
    s
}

/// Every figure of the summary.
fn figures(m: Measured, c: Collected, processes: Vec<ProcessPeak>) -> Summary {
    let last = &c.agg.last;
    let cpu_total = last.cpu_ns.unwrap_or(0);
    Summary {
        schema_version: SCHEMA_VERSION,
        o3_version: env!("CARGO_PKG_VERSION"),
        target: m.target_json.clone(),
        wall_ns: m.wall_ns,
        exit: c.exit.clone(),
        rss: RssSummary {
            peak_bytes: last.rss_peak_bytes.unwrap_or(0),
            peak_t_ns: last.rss_peak_t_ns.unwrap_or(0),
            final_bytes: last.rss_bytes.unwrap_or(0),
            method: m.method,
            program: m.loaded.map(|l| l.report.rss_program),
            sampled_peak: c.agg.rss_split(),
        },
        processes,
        cpu: CpuSummary {
            total_ns: cpu_total,
            // More than the CPUs can give: the run was too short to time (the tree's CPU
            // time also counts its start, before the wall clock's zero).
            avg_percent: Some(percent(cpu_total, m.wall_ns))
                .filter(|a| *a <= c.agg.cpu_capacity_percent()),
            peak_percent: c.agg.cpu_peak_percent(),
            peak_window_ns: c.agg.window_ns(),
            method: m.method,
        },
        system_memory: c.agg.system_memory(),
        rusage: c.child_rusage.clone(),
        counters: c.counters,
        sampling: sampling(&m, &c),
        overhead: overhead(&m),
        gpus: c.agg.gpus(m.gpu_infos),
        gpu_mem_exact: exact_gpu_mem(&m),
        gpu_processes: c.agg.gpu_processes(),
        safety: m.opts.safety.clone().map(|thresholds| Safety {
            thresholds,
            breaches: c.breaches,
        }),
        warnings: m.warnings,
    }
}
