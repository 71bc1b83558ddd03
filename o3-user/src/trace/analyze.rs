//! `o3 analyze`: an offline summary of a trace: peaks with their time, percentiles per
//! metric, time above the safety thresholds, CPU per process, and the recording's overhead.

mod text;

use crate::util::order::nearest_rank as percentile;
use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Value};

use super::export::perfetto::number;
use super::{tree_cpu_percent, GpuRec, SampleRec, Trace};

pub use text::text;

/// Version of the `o3 analyze --json` object.
pub const ANALYSIS_SCHEMA_VERSION: u32 = 1;

/// Defaults of the watchdog (`o3 record --safety`), used when the trace names none.
pub const DEFAULT_MAX_RAM_PERCENT: f64 = 85.0;
pub const DEFAULT_MAX_VRAM_PERCENT: f64 = 90.0;

/// GPU fields summarised per GPU (peaks and percentiles).
const GPU_METRICS: &[&str] = &[
    "vram_used_bytes",
    "gtt_used_bytes",
    "usable_used_bytes",
    "gpu_busy_percent",
    "mem_busy_percent",
    "temp_edge_c",
    "temp_junction_c",
    "temp_mem_c",
    "power_w",
];

/// A highest value and when it happened.
#[derive(Debug, Clone, Serialize)]
pub struct Peak {
    pub value: Value,
    pub t_ms: f64,
    /// `summary` (as the recording measured it, exact with eBPF) or `samples`.
    pub source: &'static str,
}

/// Nearest-rank percentiles of one metric over the samples.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// Time one metric spent above one limit.
#[derive(Debug, Clone, Serialize)]
pub struct Above {
    /// What is compared, units in the name (`ram_used_percent`, `gpu0_usable_used_percent`).
    pub metric: String,
    pub limit: f64,
    pub above_ms: f64,
    pub samples_above: usize,
    pub samples_measured: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Thresholds {
    /// `trace` (the summary's safety thresholds) or `default` (85 % RAM, 90 % VRAM).
    pub source: &'static str,
    pub items: Vec<Above>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessCpu {
    pub pid: u64,
    pub comm: String,
    pub cpu_ns: Option<u64>,
    /// Share of the tree's CPU time summed over processes.
    pub cpu_share_percent: Option<f64>,
    pub peak_rss_bytes: Option<u64>,
    /// GPU engine time over the samples the process was seen in, in % of that time: 100 % is
    /// one engine busy throughout (the engines of all GPUs summed, so it can exceed 100).
    pub gpu_busy_percent: Option<f64>,
    /// Largest GPU memory the process held in one sample: VRAM + GTT + KFD VRAM.
    pub gpu_mem_peak_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProblemOut {
    pub line: usize,
    pub reason: String,
}

/// The whole analysis; `--json` prints it as one object.
#[derive(Debug, Clone, Serialize)]
pub struct Analysis {
    pub schema_version: u32,
    pub trace: String,
    pub trace_schema_version: u32,
    pub samples: usize,
    pub duration_ms: Option<f64>,
    /// Keyed by metric with its unit (`rss_bytes`, `gpu0_temp_edge_c`).
    pub peaks: BTreeMap<String, Peak>,
    pub percentiles: BTreeMap<String, Stats>,
    pub thresholds: Thresholds,
    pub processes: Vec<ProcessCpu>,
    /// The summary's `overhead` object (`o3_cpu_ns`, `percent_of_one_core`, ...).
    pub overhead: Option<Value>,
    pub problems: Vec<ProblemOut>,
    pub warnings: Vec<String>,
}

fn ms(t_ns: u64) -> f64 {
    t_ns as f64 / 1e6
}

fn stats(mut v: Vec<f64>) -> Option<Stats> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(Stats {
        count: v.len(),
        p50: percentile(&v, 50.0),
        p90: percentile(&v, 90.0),
        p99: percentile(&v, 99.0),
        max: v[v.len() - 1],
    })
}

/// Points of one metric: (t_ns, value) for every sample that measured it.
type Points = Vec<(u64, f64)>;

fn add(m: &mut BTreeMap<String, Points>, key: String, t: u64, v: Option<f64>) {
    if let Some(v) = v {
        m.entry(key).or_default().push((t, v));
    }
}

fn percent(part: Option<f64>, whole: Option<f64>) -> Option<f64> {
    match (part, whole) {
        (Some(p), Some(w)) if w > 0.0 => Some(p * 100.0 / w),
        _ => None,
    }
}

/// Series per metric, keyed with its unit.
fn series(trace: &Trace) -> BTreeMap<String, Points> {
    let mut m = BTreeMap::new();
    let mut prev = None;
    for s in &trace.samples {
        tree_and_system_series(&mut m, prev, s);
        for g in &s.gpus {
            gpu_series(&mut m, s.t_ns, g);
        }
        prev = Some(s);
    }
    m
}

fn tree_and_system_series(
    m: &mut BTreeMap<String, Points>,
    prev: Option<&SampleRec>,
    s: &SampleRec,
) {
    let t = s.t_ns;
    let f = |v: Option<u64>| v.map(|x| x as f64);
    add(m, "rss_bytes".into(), t, f(s.rss_bytes));
    add(m, "rss_anon_bytes".into(), t, f(s.rss_anon_bytes));
    add(m, "mem_used_bytes".into(), t, f(s.mem_used_bytes));
    add(m, "system_cpu_percent".into(), t, s.system_cpu_percent);
    add(
        m,
        "tree_cpu_percent".into(),
        t,
        prev.and_then(|p| tree_cpu_percent(p, s)),
    );
    add(
        m,
        "ram_used_percent".into(),
        t,
        percent(f(s.mem_used_bytes), f(s.mem_total_bytes)),
    );
}

/// A GPU's metrics, and its usable memory in use in % (VRAM where usable is not known).
fn gpu_series(m: &mut BTreeMap<String, Points>, t: u64, g: &GpuRec) {
    for f in GPU_METRICS {
        add(m, format!("gpu{}_{f}", g.index), t, g.num(f));
    }
    let pct = percent(g.num("usable_used_bytes"), g.num("usable_total_bytes"))
        .or_else(|| percent(g.num("vram_used_bytes"), g.num("vram_total_bytes")));
    add(m, format!("gpu{}_usable_used_percent", g.index), t, pct);
}

fn max_of(points: &[(u64, f64)]) -> Option<(u64, f64)> {
    points
        .iter()
        .copied()
        .reduce(|a, b| if b.1.total_cmp(&a.1).is_gt() { b } else { a })
}

/// GPU metrics whose peak is reported (key suffixes).
const GPU_PEAKS: &[&str] = &[
    "_vram_used_bytes",
    "_gtt_used_bytes",
    "_usable_used_bytes",
    "_temp_edge_c",
    "_temp_junction_c",
    "_temp_mem_c",
    "_power_w",
];

/// RSS and system memory peaks from the summary (as the recording measured them) where it has
/// them, else from the samples; GPU peaks from the samples.
fn peaks(trace: &Trace, series: &BTreeMap<String, Points>) -> BTreeMap<String, Peak> {
    let summary = trace.summary.as_ref();
    let rss = summary_peak(summary, "rss", "peak_bytes", "peak_t_ns")
        .or_else(|| running_rss_peak(&trace.samples))
        .or_else(|| sample_peak(series, "rss_bytes"));
    let mem = summary_peak(
        summary,
        "system_memory",
        "used_peak_bytes",
        "used_peak_t_ns",
    )
    .or_else(|| sample_peak(series, "mem_used_bytes"));
    let gpus = series
        .keys()
        .filter(|k| k.starts_with("gpu") && GPU_PEAKS.iter().any(|w| k.ends_with(w)))
        .filter_map(|k| Some((k.clone(), sample_peak(series, k)?)));
    rss.map(|p| ("rss_bytes".to_string(), p))
        .into_iter()
        .chain(mem.map(|p| ("system_memory_used_bytes".to_string(), p)))
        .chain(gpus)
        .collect()
}

/// `summary.obj.bytes` at `summary.obj.t`.
fn summary_peak(summary: Option<&Value>, obj: &str, bytes: &str, t: &str) -> Option<Peak> {
    let o = summary?.get(obj)?;
    Some(Peak {
        value: json!(o.get(bytes)?.as_u64()?),
        t_ms: ms(o.get(t)?.as_u64()?),
        source: "summary",
    })
}

/// The highest running peak the samples carry (the source's own, exact with eBPF).
fn running_rss_peak(samples: &[SampleRec]) -> Option<Peak> {
    let s = samples
        .iter()
        .filter(|s| s.rss_peak_bytes.is_some() && s.rss_peak_t_ns.is_some())
        .max_by_key(|s| s.rss_peak_bytes)?;
    Some(Peak {
        value: json!(s.rss_peak_bytes?),
        t_ms: ms(s.rss_peak_t_ns?),
        source: "samples",
    })
}

/// The largest sample of a series.
fn sample_peak(series: &BTreeMap<String, Points>, key: &str) -> Option<Peak> {
    let (t, v) = max_of(series.get(key)?)?;
    Some(Peak {
        value: number(v),
        t_ms: ms(t),
        source: "samples",
    })
}

fn thresholds(trace: &Trace, series: &BTreeMap<String, Points>) -> Thresholds {
    let (source, [ram, vram, temp, cpu]) = limits(trace);
    let mut items = Vec::new();
    let mut check = |metric: String, limit: Option<f64>| {
        if let (Some(limit), Some(points)) = (limit, series.get(&metric)) {
            items.push(time_above(trace, metric, limit, points));
        }
    };
    check("ram_used_percent".into(), ram);
    check("system_cpu_percent".into(), cpu);
    for i in trace.gpu_indices() {
        check(format!("gpu{i}_usable_used_percent"), vram);
        check(format!("gpu{i}_temp_edge_c"), temp);
    }
    Thresholds { source, items }
}

/// Where the limits come from, and the limits on RAM %, VRAM %, temperature and CPU %: the
/// summary's safety thresholds, else the watchdog's defaults.
fn limits(trace: &Trace) -> (&'static str, [Option<f64>; 4]) {
    let given = trace
        .summary
        .as_ref()
        .and_then(|s| s.pointer("/safety/thresholds"))
        .filter(|t| t.is_object());
    match given {
        Some(t) => {
            let get = |k: &str| t.get(k).and_then(Value::as_f64);
            (
                "trace",
                [
                    get("max_ram_percent"),
                    get("max_vram_percent"),
                    get("max_temperature_c"),
                    get("max_cpu_percent"),
                ],
            )
        }
        None => (
            "default",
            [
                Some(DEFAULT_MAX_RAM_PERCENT),
                Some(DEFAULT_MAX_VRAM_PERCENT),
                None,
                None,
            ],
        ),
    }
}

/// Time a metric spent above its limit: each sample stands for the time until the next one
/// (the last: one interval).
fn time_above(trace: &Trace, metric: String, limit: f64, points: &Points) -> Above {
    let last_dt = trace.header.interval_ns.unwrap_or(0);
    let mut above_ns = 0u64;
    let mut n = 0;
    for (t, _) in points.iter().filter(|(_, v)| *v > limit) {
        n += 1;
        let next = trace
            .samples
            .iter()
            .map(|s| s.t_ns)
            .find(|n| n > t)
            .map_or(last_dt, |n| n - t);
        above_ns = above_ns.saturating_add(next);
    }
    Above {
        metric,
        limit,
        above_ms: ms(above_ns),
        samples_above: n,
        samples_measured: points.len(),
    }
}

impl ProcessCpu {
    fn new(pid: u64) -> ProcessCpu {
        ProcessCpu {
            pid,
            comm: String::new(),
            cpu_ns: None,
            cpu_share_percent: None,
            peak_rss_bytes: None,
            gpu_busy_percent: None,
            gpu_mem_peak_bytes: None,
        }
    }
}

/// The summary's processes with the GPU use the samples show, by CPU time, most first.
fn processes(trace: &Trace) -> Vec<ProcessCpu> {
    let mut v = summary_processes(trace.summary.as_ref());
    add_gpu_use(&mut v, &trace.samples);
    let total: u64 = v.iter().filter_map(|p| p.cpu_ns).sum();
    for p in &mut v {
        p.cpu_share_percent = p
            .cpu_ns
            .filter(|_| total > 0)
            .map(|c| c as f64 * 100.0 / total as f64);
    }
    v.sort_by(|a, b| b.cpu_ns.cmp(&a.cpu_ns).then(a.pid.cmp(&b.pid)));
    v
}

fn summary_processes(summary: Option<&Value>) -> Vec<ProcessCpu> {
    let list = summary
        .and_then(|s| s.get("processes"))
        .and_then(Value::as_array);
    list.into_iter()
        .flatten()
        .map(|p| ProcessCpu {
            comm: p
                .get("comm")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            cpu_ns: p.get("cpu_ns").and_then(Value::as_u64),
            peak_rss_bytes: p.get("peak_rss_bytes").and_then(Value::as_u64),
            ..ProcessCpu::new(p.get("pid").and_then(Value::as_u64).unwrap_or(0))
        })
        .collect()
}

/// GPU use from the samples' per-process readings; a process only seen there is added.
fn add_gpu_use(v: &mut Vec<ProcessCpu>, samples: &[SampleRec]) {
    // Per pid: (t_ns, engine_ns) when first and last seen, largest memory.
    type Seen = ((u64, u64), (u64, u64), u64);
    let mut gpu: BTreeMap<u32, Seen> = BTreeMap::new();
    for s in samples {
        for g in &s.gpu_processes {
            let mem = g.vram_bytes + g.gtt_bytes + g.kfd_vram_bytes;
            let e = gpu
                .entry(g.pid)
                .or_insert(((s.t_ns, g.engine_ns), (s.t_ns, g.engine_ns), 0));
            e.1 = (s.t_ns, g.engine_ns);
            e.2 = e.2.max(mem);
        }
    }
    for (pid, ((t0, e0), (t1, e1), mem)) in gpu {
        let busy = (t1 > t0).then(|| e1.saturating_sub(e0) as f64 * 100.0 / (t1 - t0) as f64);
        let i = match v.iter().position(|p| p.pid == u64::from(pid)) {
            Some(i) => i,
            None => {
                v.push(ProcessCpu::new(u64::from(pid)));
                v.len() - 1
            }
        };
        v[i].gpu_busy_percent = busy;
        v[i].gpu_mem_peak_bytes = Some(mem);
    }
}

/// Analyses a parsed trace.
pub fn analyze(trace: &Trace) -> Analysis {
    let series = series(trace);
    Analysis {
        schema_version: ANALYSIS_SCHEMA_VERSION,
        trace: trace.path.display().to_string(),
        trace_schema_version: trace.header.schema_version,
        samples: trace.samples.len(),
        duration_ms: trace
            .summary
            .as_ref()
            .and_then(|s| s.get("wall_ns"))
            .and_then(Value::as_u64)
            .or_else(|| trace.samples.last().map(|s| s.t_ns))
            .map(ms),
        peaks: peaks(trace, &series),
        percentiles: series
            .iter()
            .filter_map(|(k, v)| stats(v.iter().map(|p| p.1).collect()).map(|s| (k.clone(), s)))
            .collect(),
        thresholds: thresholds(trace, &series),
        processes: processes(trace),
        overhead: trace
            .summary
            .as_ref()
            .and_then(|s| s.get("overhead"))
            .cloned(),
        problems: trace
            .problems
            .iter()
            .map(|p| ProblemOut {
                line: p.line,
                reason: p.reason.clone(),
            })
            .collect(),
        warnings: trace.warnings.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn trace(extra: &str) -> Trace {
        let mut text = String::from(
            r#"{"type":"header","schema_version":1,"interval_ns":10,"gpus":[{"index":0}]}"#,
        );
        text.push('\n');
        for (t, used, vram, cpu) in [
            (0u64, 50u64, 10u64, 0u64),
            (10, 90, 95, 5),
            (20, 60, 50, 10),
        ] {
            text.push_str(&format!(
                r#"{{"type":"sample","t_ns":{t},"rss_bytes":{used},"cpu_ns":{cpu},"mem_used_bytes":{used},"mem_total_bytes":100,"gpus":[{{"index":0,"vram_used_bytes":{vram},"vram_total_bytes":100}}]}}"#
            ));
            text.push('\n');
        }
        text.push_str(extra);
        crate::trace::read::parse(&text, Path::new("t.jsonl")).unwrap()
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let s = stats((1..=100).map(f64::from).collect()).unwrap();
        assert_eq!((s.p50, s.p90, s.p99, s.max), (50.0, 90.0, 99.0, 100.0));
        let s = stats(vec![3.0]).unwrap();
        assert_eq!((s.p50, s.p99), (3.0, 3.0));
        assert!(stats(Vec::new()).is_none());
    }

    #[test]
    fn defaults_apply_without_a_summary_and_time_above_counts_intervals() {
        let a = analyze(&trace(""));
        assert_eq!(a.thresholds.source, "default");
        let ram = &a.thresholds.items[0];
        assert_eq!(ram.metric, "ram_used_percent");
        assert_eq!((ram.limit, ram.samples_above), (85.0, 1));
        assert_eq!(ram.above_ms, 10.0 / 1e6);
        let vram = a
            .thresholds
            .items
            .iter()
            .find(|i| i.metric == "gpu0_usable_used_percent")
            .unwrap();
        assert_eq!((vram.limit, vram.samples_above), (90.0, 1));
        assert_eq!(a.peaks["rss_bytes"].value, json!(90));
        assert_eq!(a.peaks["rss_bytes"].source, "samples");
        assert_eq!(a.peaks["gpu0_vram_used_bytes"].t_ms, 10.0 / 1e6);
        assert_eq!(a.percentiles["tree_cpu_percent"].max, 50.0);
        assert!(text(&a).contains("default thresholds"));
    }

    #[test]
    fn summary_gives_peaks_thresholds_processes_and_overhead() {
        let summary = r#"{"type":"summary","rss":{"peak_bytes":123,"peak_t_ns":15},"processes":[{"pid":1,"comm":"a","cpu_ns":1},{"pid":2,"comm":"b","cpu_ns":3}],"overhead":{"o3_cpu_ns":7},"safety":{"thresholds":{"max_ram_percent":55.0,"max_vram_percent":40.0}}}"#;
        let a = analyze(&trace(summary));
        assert_eq!(a.peaks["rss_bytes"].value, json!(123));
        assert_eq!(a.peaks["rss_bytes"].source, "summary");
        assert_eq!(a.thresholds.source, "trace");
        assert_eq!(a.thresholds.items[0].samples_above, 2);
        assert_eq!(a.processes[0].pid, 2);
        assert_eq!(a.processes[0].cpu_share_percent, Some(75.0));
        assert_eq!(a.overhead, Some(json!({"o3_cpu_ns": 7})));
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(v["schema_version"], 1);
    }
}
