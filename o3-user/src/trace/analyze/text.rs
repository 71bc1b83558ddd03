//! `o3 analyze` for people: every value in a human unit chosen by its metric's name (`_bytes`
//! KiB/MiB/GiB, `_ns`/`_ms` ms/s/min, `_percent` %, `_c` °C, `_w` W). `--json` keeps the raw
//! numbers, with the units in the key names.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use super::{Analysis, Peak, ProcessCpu, Stats, Thresholds};
use crate::util::units;

/// A duration in ms for people: `850 µs`, `103.5 ms`, `2.35 s`, `12.5 min`.
pub(super) fn ms(v: f64) -> String {
    if !v.is_finite() {
        return "?".into();
    }
    if v == 0.0 {
        "0 ms".into()
    } else if v < 1.0 {
        format!("{:.0} µs", v * 1000.0)
    } else if v < 1000.0 {
        format!("{v:.1} ms")
    } else if v < 120_000.0 {
        format!("{:.2} s", v / 1000.0)
    } else {
        units::span(v / 1000.0)
    }
}

/// A plain number: whole numbers without decimals, others to three.
fn plain(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// `v` in the unit the metric's name ends with.
pub(super) fn value(metric: &str, v: f64) -> String {
    let unit = metric.rsplit('_').next().unwrap_or("");
    match unit {
        "bytes" | "b" if v >= 0.0 => units::bytes(v.round() as u64),
        "ns" => ms(v / 1e6),
        "ms" => ms(v),
        "percent" => format!("{v:.1} %"),
        "c" => format!("{v:.1} °C"),
        "w" => format!("{v:.1} W"),
        _ => plain(v),
    }
}

/// The analysis as text, one fact per line. Skipped lines and warnings are not in it: they are
/// diagnostics, which `o3 analyze` prints on stderr (and `--json` lists in the object).
pub fn text(a: &Analysis) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "trace {} (schema {}): {} samples over {}",
        a.trace,
        a.trace_schema_version,
        a.samples,
        a.duration_ms.map_or("?".into(), ms)
    );
    peaks_text(&mut o, &a.peaks);
    percentiles_text(&mut o, &a.percentiles);
    thresholds_text(&mut o, &a.thresholds);
    processes_text(&mut o, &a.processes);
    overhead_text(&mut o, a.overhead.as_ref());
    o
}

fn peaks_text(o: &mut String, peaks: &BTreeMap<String, Peak>) {
    let _ = writeln!(o, "peaks");
    for (k, p) in peaks {
        let shown = p
            .value
            .as_f64()
            .map_or_else(|| p.value.to_string(), |v| value(k, v));
        let _ = writeln!(o, "  {k:<32} {shown:>12} at {}  ({})", ms(p.t_ms), p.source);
    }
}

fn percentiles_text(o: &mut String, percentiles: &BTreeMap<String, Stats>) {
    let _ = writeln!(
        o,
        "percentiles (nearest rank)\n  {:<32} {:>6} {:>12} {:>12} {:>12} {:>12}",
        "metric", "n", "p50", "p90", "p99", "max"
    );
    for (k, s) in percentiles {
        let _ = writeln!(
            o,
            "  {k:<32} {:>6} {:>12} {:>12} {:>12} {:>12}",
            s.count,
            value(k, s.p50),
            value(k, s.p90),
            value(k, s.p99),
            value(k, s.max)
        );
    }
}

fn thresholds_text(o: &mut String, t: &Thresholds) {
    let which = match t.source {
        "trace" => "thresholds from the trace",
        _ => "default thresholds: 85 % RAM, 90 % VRAM (the trace names none)",
    };
    let _ = writeln!(o, "time above safety thresholds ({which})");
    if t.items.is_empty() {
        let _ = writeln!(o, "  (no measured metric has a threshold)");
    }
    for i in &t.items {
        let _ = writeln!(
            o,
            "  {:<32} > {:<8} {} ({} of {} samples)",
            i.metric,
            value(&i.metric, i.limit),
            ms(i.above_ms),
            i.samples_above,
            i.samples_measured
        );
    }
}

fn processes_text(o: &mut String, processes: &[ProcessCpu]) {
    if processes.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "CPU and GPU per process\n  {:>8} {:>10} {:>9} {:>10} {:>9} {:>12}  COMMAND",
        "PID", "CPU TIME", "CPU SHARE", "PEAK RSS", "GPU BUSY", "GPU MEM PEAK"
    );
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    for p in processes {
        let _ = writeln!(
            o,
            "  {:>8} {:>10} {:>9} {:>10} {:>9} {:>12}  {}",
            p.pid,
            or_dash(p.cpu_ns.map(|c| ms(c as f64 / 1e6))),
            or_dash(p.cpu_share_percent.map(|s| format!("{s:.1} %"))),
            or_dash(p.peak_rss_bytes.map(units::bytes)),
            or_dash(p.gpu_busy_percent.map(|s| format!("{s:.1} %"))),
            or_dash(p.gpu_mem_peak_bytes.map(units::bytes)),
            p.comm
        );
    }
}

fn overhead_text(o: &mut String, overhead: Option<&Value>) {
    match overhead {
        Some(Value::Object(m)) => {
            let parts: Vec<String> = m
                .iter()
                .map(|(k, v)| match v.as_f64() {
                    Some(n) => format!("{k}={}", overhead_value(k, n)),
                    None => format!("{k}={v}"),
                })
                .collect();
            let _ = writeln!(o, "recording overhead  {}", parts.join(" "));
        }
        _ => {
            let _ = writeln!(o, "recording overhead  unknown (no summary)");
        }
    }
}

/// The overhead object's values: `percent_of_one_core` is a percent though its name does not
/// end with it.
fn overhead_value(k: &str, v: f64) -> String {
    if k.starts_with("percent") {
        format!("{v:.2} %")
    } else {
        value(k, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_take_the_unit_their_name_ends_with() {
        assert_eq!(value("rss_bytes", 35_876_864.0), "34.2 MiB");
        assert_eq!(value("gpu0_vram_used_bytes", 512.0), "512 B");
        assert_eq!(value("ram_used_percent", 2.637_375), "2.6 %");
        assert_eq!(value("gpu0_temp_edge_c", 61.0), "61.0 °C");
        assert_eq!(value("gpu0_power_w", 35.25), "35.2 W");
        assert_eq!(value("o3_cpu_ns", 2_826_000.0), "2.8 ms");
        assert_eq!(value("bpf_run_count", 23_640.0), "23640");
        assert_eq!(ms(0.25), "250 µs");
        assert_eq!(ms(103.483_565), "103.5 ms");
        assert_eq!(ms(2345.0), "2.35 s");
        assert_eq!(ms(750_000.0), "12.5 min");
        assert_eq!(overhead_value("percent_of_one_core", 8.047), "8.05 %");
    }
}
