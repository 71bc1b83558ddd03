//! Resources: the peaks the summary holds, then every sample of the per-probe traces on one
//! time line: the server's memory, the system's, CPU; the GPUs in [`super::gpu`].

use std::collections::BTreeMap;

use serde_json::Value;

use crate::report::plot::{self, Chart, Marker, Rule, Series, Style};
use crate::report::run::ProbeTrace;
use crate::util::units::bytes;

use super::cells::opt_bytes;
use super::{gpu, tree_cpu_percent, ReportDoc, Run, SampleRec};

/// Most points per trace and series on a timeline (peaks survive the thinning).
pub(super) const MAX_POINTS: usize = 600;

/// The axis label of every timeline.
pub(super) const TIME_AXIS: &str = "time since the first probe (s)";

pub(super) fn resources(d: &mut ReportDoc, run: &Run, s: &Value) {
    let peaks = &s["peaks"];
    if run.traces.is_empty() && peaks.is_null() {
        return;
    }
    d.h2("Resources");
    if !peaks.is_null() {
        d.table(
            &[
                "server RSS peak",
                "measured by",
                "system RAM used peak",
                "GPU memory peak",
            ],
            vec![peaks_row(peaks)],
        );
    }
    let Some(tl) = Timeline::new(&run.traces) else {
        d.para("No per-probe traces in this run directory (a simulated run has none, nor has a run written before o3 kept them), so no timelines.");
        return;
    };
    d.para(format!(
        "Every sample of the server's process tree during the {} probes (traces/), on one time line; gaps are the time between probes. Dashed lines are the safety thresholds of the run's configuration.",
        run.traces.len()
    ));
    let safety = &run.run["config"]["safety"];
    d.plot("memory-server", server_memory_chart(&tl));
    d.plot("memory-system", system_memory_chart(&tl, safety));
    // CPU, in % of all cores (the unit of the safety threshold).
    let cores = run.run["host"]["cpu_cores"]
        .as_f64()
        .unwrap_or(1.0)
        .max(1.0);
    d.plot("cpu", cpu_chart(&tl, cores, safety));
    gpu::gpu(d, &tl, safety);
}

/// The summary's peaks: server RSS and how it was measured, system RAM, GPU memory.
fn peaks_row(peaks: &Value) -> Vec<String> {
    vec![
        opt_bytes(peaks["rss_peak_bytes"].as_u64()),
        match peaks["rss_method"].as_str() {
            Some("ebpf") => "eBPF (exact)".into(),
            Some("procfs_polling") => "procfs polling (sampled)".into(),
            other => other.unwrap_or("–").to_string(),
        },
        opt_bytes(peaks["mem_used_peak_bytes"].as_u64()),
        opt_bytes(peaks["gpu_used_peak_bytes"].as_u64()),
    ]
}

/// Bytes as the unit that suits the largest value.
pub(super) fn byte_unit(max: f64) -> (f64, &'static str) {
    if max >= 2.0 * (1u64 << 30) as f64 {
        ((1u64 << 30) as f64, "GiB")
    } else {
        ((1u64 << 20) as f64, "MiB")
    }
}

/// The per-probe traces on one time line: seconds since the first trace started.
pub(super) struct Timeline<'a> {
    pub traces: &'a [ProbeTrace],
    t0: u64,
}

impl<'a> Timeline<'a> {
    /// `None` without traces.
    fn new(traces: &'a [ProbeTrace]) -> Option<Timeline<'a>> {
        let t0 = traces.first()?.start_unix_ns();
        Some(Timeline { traces, t0 })
    }

    /// Seconds on the time line of `t_ns` into `tr`.
    pub fn at(&self, tr: &ProbeTrace, t_ns: u64) -> f64 {
        (tr.start_unix_ns().saturating_sub(self.t0) + t_ns) as f64 / 1e9
    }

    /// Every sample of every trace, in order, with its trace.
    pub fn samples(&self) -> impl Iterator<Item = (&'a ProbeTrace, &'a SampleRec)> + 'a {
        self.traces
            .iter()
            .flat_map(|tr| tr.trace.samples.iter().map(move |x| (tr, x)))
    }

    /// One byte figure of the samples, divided by `div`: one segment per trace, thinned.
    fn series(
        &self,
        name: &str,
        color: plot::Rgb,
        div: f64,
        f: fn(&SampleRec) -> Option<u64>,
    ) -> Series {
        let mut s = Series::new(name, color, Style::Line);
        for tr in self.traces {
            s = s.points(plot::thin(
                &tr.trace
                    .samples
                    .iter()
                    .filter_map(|x| Some((self.at(tr, x.t_ns), f(x)? as f64 / div)))
                    .collect::<Vec<_>>(),
                MAX_POINTS,
            ));
        }
        s
    }

    /// Where each probe starts, at height `y`, numbered.
    fn probe_starts(&self, y: f64) -> Series {
        let mut starts = Series::new("probe start (number)", plot::GREY, Style::Points);
        for (i, tr) in self.traces.iter().enumerate() {
            if let Some(first) = tr.trace.samples.first() {
                let x = self.at(tr, first.t_ns);
                starts = starts.points(vec![(x, y)]);
                starts.labels.push((x, y, format!("{}", i + 1)));
            }
        }
        starts
    }
}

/// The first of the items with the largest key (compared with `>`: the first of equals wins).
pub(super) fn first_max<T, K: PartialOrd>(
    items: impl Iterator<Item = T>,
    key: impl Fn(&T) -> K,
) -> Option<T> {
    let mut best: Option<T> = None;
    for c in items {
        if best.as_ref().is_none_or(|b| key(&c) > key(b)) {
            best = Some(c);
        }
    }
    best
}

/// A red triangle at a peak, labelled.
pub(super) fn peak_series(name: impl Into<String>, x: f64, y: f64, label: String) -> Series {
    let mut pk = Series::new(name, plot::RED, Style::Points)
        .marker(Marker::Triangle)
        .points(vec![(x, y)]);
    pk.labels.push((x, y, label));
    pk
}

/// The server's own tree on its scale, with its peak: the exact running peak (eBPF) at its
/// instant, else the largest sample.
fn server_memory_chart(tl: &Timeline) -> Chart {
    let rss_max = tl
        .samples()
        .map(|(_, x)| x.rss_peak_bytes.or(x.rss_bytes).unwrap_or(0) as f64)
        .fold(0f64, f64::max);
    let best_rss = first_max(
        tl.samples()
            .filter_map(|(tr, x)| match (x.rss_peak_bytes, x.rss_peak_t_ns) {
                (Some(p), Some(t)) => Some((tl.at(tr, t), p, true)),
                _ => x.rss_bytes.map(|p| (tl.at(tr, x.t_ns), p, false)),
            }),
        |c| c.1,
    );
    let (div, unit) = byte_unit(rss_max);
    let mut own = Chart::new(
        "Server memory (RSS of its process tree)",
        TIME_AXIS,
        &format!("RSS ({unit})"),
    );
    own.add(tl.series("server RSS", plot::BLUE, div, |x| x.rss_bytes));
    own.add(tl.probe_starts(0.0));
    if let Some((x, b, exact)) = best_rss {
        let label = format!(
            " peak {} at {x:.1} s{}",
            bytes(b),
            if exact { " (exact)" } else { " (sampled)" }
        );
        own.add(peak_series("peak", x, b as f64 / div, label));
    }
    own
}

/// The whole system's RAM in use against the RAM threshold, with its peak.
fn system_memory_chart(tl: &Timeline, safety: &Value) -> Chart {
    let mem_total = tl.samples().find_map(|(_, x)| x.mem_total_bytes);
    let best_used = first_max(
        tl.samples()
            .filter_map(|(tr, x)| x.mem_used_bytes.map(|u| (tl.at(tr, x.t_ns), u))),
        |c| c.1,
    );
    let ram_limit = match (safety["max_ram_percent"].as_f64(), mem_total) {
        (Some(p), Some(t)) => Some((p, t as f64 * p / 100.0)),
        _ => None,
    };
    let used_max = best_used.map_or(0.0, |(_, b)| b as f64);
    // The limit sets the unit only where it is drawn on the scale.
    let scale_max = match ram_limit {
        Some((_, l)) if plot::rule_on_scale(used_max, l) => used_max.max(l),
        _ => used_max,
    };
    let (div, unit) = byte_unit(scale_max);
    let mut sys = Chart::new(
        "System RAM in use",
        TIME_AXIS,
        &format!("RAM used ({unit})"),
    );
    sys.add(tl.series("system RAM used", plot::ORANGE, div, |x| x.mem_used_bytes));
    sys.add(tl.probe_starts(0.0));
    if let Some((x, b)) = best_used {
        let label = format!(" peak {} at {x:.1} s", bytes(b));
        sys.add(peak_series("peak", x, b as f64 / div, label));
    }
    if let Some((p, l)) = ram_limit {
        sys.hrules.push(Rule {
            label: format!("RAM safety limit {p:.0} % ({})", bytes(l as u64)),
            at: l / div,
            color: plot::RED,
        });
    }
    sys
}

/// CPU of the server's tree and of the whole system, in % of all `cores`, against the CPU
/// threshold.
fn cpu_chart(tl: &Timeline, cores: f64, safety: &Value) -> Chart {
    let mut cpu = Chart::new("CPU over the run", TIME_AXIS, "% of all cores");
    let mut tree = Series::new("server process tree", plot::BLUE, Style::Line);
    let mut system = Series::new("whole system", plot::ORANGE, Style::Line);
    for tr in tl.traces {
        tree = tree.points(tree_cpu(tl, tr, cores));
        system = system.points(system_cpu(tl, tr));
    }
    cpu.add(tree);
    cpu.add(system);
    if let Some(p) = safety["max_cpu_percent"].as_f64() {
        cpu.hrules.push(Rule {
            label: format!("CPU safety limit {p:.0} %"),
            at: p,
            color: plot::RED,
        });
    }
    cpu
}

/// The tree's CPU rate over windows of at least 100 ms (a 10 ms tick holds a scheduler slice
/// or none), in % of all `cores`.
fn tree_cpu(tl: &Timeline, tr: &ProbeTrace, cores: f64) -> Vec<(f64, f64)> {
    let mut pts = Vec::new();
    let mut prev: Option<&SampleRec> = None;
    for x in &tr.trace.samples {
        match prev {
            Some(p) if x.t_ns.saturating_sub(p.t_ns) >= 100_000_000 => {
                if let Some(c) = tree_cpu_percent(p, x) {
                    pts.push((tl.at(tr, x.t_ns), c / cores));
                }
                prev = Some(x);
            }
            None => prev = Some(x),
            _ => {}
        }
    }
    pts
}

/// The system's CPU, a per-tick figure too: averaged over the same 100 ms windows, each at the
/// time of its last sample.
fn system_cpu(tl: &Timeline, tr: &ProbeTrace) -> Vec<(f64, f64)> {
    let mut win: BTreeMap<u64, (f64, f64, u32)> = BTreeMap::new();
    for x in &tr.trace.samples {
        if let Some(c) = x.system_cpu_percent {
            let w = win.entry(x.t_ns / 100_000_000).or_insert((0.0, 0.0, 0));
            *w = (tl.at(tr, x.t_ns), w.1 + c, w.2 + 1);
        }
    }
    win.values()
        .map(|(t, sum, n)| (*t, sum / f64::from(*n)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_of_equal_peaks_is_kept() {
        let items = [(1.0, 5u64), (2.0, 7), (3.0, 7), (4.0, 6)];
        assert_eq!(first_max(items.into_iter(), |c| c.1), Some((2.0, 7)));
        assert_eq!(first_max(std::iter::empty::<(f64, u64)>(), |c| c.1), None);
    }

    #[test]
    fn bytes_switch_to_gib_from_two_gib() {
        assert_eq!(byte_unit((2u64 << 30) as f64 - 1.0).1, "MiB");
        assert_eq!(byte_unit((2u64 << 30) as f64), ((1u64 << 30) as f64, "GiB"));
    }
}
