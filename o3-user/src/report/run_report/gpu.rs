//! The GPUs over the run: memory in use (VRAM, or GTT on an APU) against its limit, and the
//! hottest sensor against the temperature limit, one line per GPU.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::report::plot::{self, Chart, Rule, Series, Style};
use crate::util::units::bytes;

use super::resources::{byte_unit, first_max, peak_series, Timeline, MAX_POINTS, TIME_AXIS};
use super::ReportDoc;

/// The temperatures a GPU sample may hold; the hottest is drawn.
const TEMPERATURES: [&str; 3] = ["temp_edge_c", "temp_junction_c", "temp_mem_c"];

pub(super) fn gpu(d: &mut ReportDoc, tl: &Timeline, safety: &Value) {
    let mut idx: Vec<u32> = tl
        .traces
        .iter()
        .flat_map(|t| t.trace.gpu_indices())
        .collect();
    idx.sort_unstable();
    idx.dedup();
    if idx.is_empty() {
        return;
    }
    let vram_p = safety["max_vram_percent"].as_f64();
    let totals = usable_totals(tl);
    let (div, unit) = byte_unit(memory_scale(tl, &totals, vram_p));
    let mut mem = Chart::new(
        "GPU memory over the run (usable: VRAM, or GTT on an APU)",
        TIME_AXIS,
        &format!("GPU memory ({unit})"),
    );
    let mut temp = Chart::new("GPU temperature over the run", TIME_AXIS, "°C");
    for (k, i) in idx.iter().enumerate() {
        let color = plot::PALETTE[k % plot::PALETTE.len()];
        let (used, hot) = gpu_lines(tl, *i, color, div);
        mem.add(used);
        temp.add(hot);
        if let Some((x, b)) = used_peak(tl, *i) {
            let label = format!(" peak {} at {x:.1} s", bytes(b as u64));
            mem.add(peak_series(format!("GPU {i} peak"), x, b / div, label));
        }
        if let (Some(p), Some(t)) = (vram_p, totals.get(i)) {
            mem.hrules.push(Rule {
                label: format!(
                    "GPU {i} safety limit {p:.0} % ({})",
                    bytes((t * p / 100.0) as u64)
                ),
                at: t * p / 100.0 / div,
                color: plot::RED,
            });
        }
    }
    if let Some(c) = safety["max_temperature_c"].as_f64() {
        temp.hrules.push(Rule {
            label: format!("temperature limit {c:.0} °C"),
            at: c,
            color: plot::RED,
        });
    }
    d.plot("gpu-memory", mem);
    d.plot("gpu-temperature", temp);
}

/// Each GPU's usable memory (bytes), as the last sample that states it says.
fn usable_totals(tl: &Timeline) -> BTreeMap<u32, f64> {
    let mut totals = BTreeMap::new();
    for (_, x) in tl.samples() {
        for g in &x.gpus {
            if let Some(t) = g.num("usable_total_bytes") {
                totals.insert(g.index, t);
            }
        }
    }
    totals
}

/// The largest memory figure drawn: the most any GPU used, or a GPU's limit above that.
fn memory_scale(tl: &Timeline, totals: &BTreeMap<u32, f64>, vram_p: Option<f64>) -> f64 {
    let mut max_b = tl
        .samples()
        .flat_map(|(_, x)| &x.gpus)
        .map(|g| g.num("usable_used_bytes").unwrap_or(0.0))
        .fold(0f64, f64::max);
    if let Some(p) = vram_p {
        for t in totals.values() {
            max_b = max_b.max(t * p / 100.0);
        }
    }
    max_b
}

/// GPU `i`'s memory in use (divided by `div`) and its hottest sensor: one segment per trace
/// each, thinned.
fn gpu_lines(tl: &Timeline, i: u32, color: plot::Rgb, div: f64) -> (Series, Series) {
    let mut used = Series::new(format!("GPU {i} used"), color, Style::Line);
    let mut hot = Series::new(format!("GPU {i} hottest sensor"), color, Style::Line);
    for tr in tl.traces {
        let mut u = Vec::new();
        let mut h = Vec::new();
        for x in &tr.trace.samples {
            for g in x.gpus.iter().filter(|g| g.index == i) {
                let t = tl.at(tr, x.t_ns);
                if let Some(b) = g.num("usable_used_bytes") {
                    u.push((t, b / div));
                }
                if let Some(c) = hottest(TEMPERATURES.iter().filter_map(|k| g.num(k))) {
                    h.push((t, c));
                }
            }
        }
        used = used.points(plot::thin(&u, MAX_POINTS));
        hot = hot.points(plot::thin(&h, MAX_POINTS));
    }
    (used, hot)
}

/// The highest of some temperatures; `None` without any.
fn hottest(temps: impl Iterator<Item = f64>) -> Option<f64> {
    temps.fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
}

/// When GPU `i` used the most memory (the first sample of equals), and how much (bytes).
fn used_peak(tl: &Timeline, i: u32) -> Option<(f64, f64)> {
    let samples = tl.samples().flat_map(|(tr, x)| {
        x.gpus
            .iter()
            .filter(move |g| g.index == i)
            .filter_map(move |g| Some((tl.at(tr, x.t_ns), g.num("usable_used_bytes")?)))
    });
    first_max(samples, |c| c.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hottest_sensor_is_drawn() {
        assert_eq!(hottest([41.0, 77.5, 60.0].into_iter()), Some(77.5));
        assert_eq!(hottest(std::iter::empty()), None);
    }
}
