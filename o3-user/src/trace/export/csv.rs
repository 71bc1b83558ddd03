//! CSV export: one row per sample, one column per metric, units in the column names, empty
//! cells for values that were not measured.

use serde_json::Value;

use crate::trace::{SampleRec, Trace};

/// Per-GPU fields, in column order (`gpu{N}_{field}`).
pub const GPU_FIELDS: &[&str] = &[
    "vram_used_bytes",
    "vram_total_bytes",
    "vram_usable_bytes",
    "vis_vram_used_bytes",
    "vis_vram_total_bytes",
    "gtt_used_bytes",
    "gtt_total_bytes",
    "gtt_usable_bytes",
    "usable_used_bytes",
    "usable_total_bytes",
    "gpu_busy_percent",
    "mem_busy_percent",
    "temp_edge_c",
    "temp_junction_c",
    "temp_mem_c",
    "power_w",
    "energy_j",
    "sclk_mhz",
    "mclk_mhz",
    "asleep",
];

/// Columns before the per-GPU ones.
pub const COLUMNS: &[&str] = &[
    "t_ms",
    "rss_bytes",
    "rss_anon_bytes",
    "rss_file_bytes",
    "rss_shmem_bytes",
    "swap_bytes",
    "rss_peak_bytes",
    "rss_peak_t_ms",
    "cpu_ns",
    "cpu_t_ms",
    "processes",
    "mem_used_bytes",
    "mem_total_bytes",
    "system_cpu_percent",
];

/// ns as exact milliseconds with 6 decimals.
pub fn ms(t_ns: u64) -> String {
    format!("{}.{:06}", t_ns / 1_000_000, t_ns % 1_000_000)
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.replace([',', '"', '\n'], " "),
        Some(other) => other.to_string(),
    }
}

fn base_cells(s: &SampleRec) -> Vec<String> {
    vec![
        ms(s.t_ns),
        opt(s.rss_bytes),
        opt(s.rss_anon_bytes),
        opt(s.rss_file_bytes),
        opt(s.rss_shmem_bytes),
        opt(s.swap_bytes),
        opt(s.rss_peak_bytes),
        opt(s.rss_peak_t_ns.map(ms)),
        opt(s.cpu_ns),
        opt(s.cpu_t_ns.map(ms)),
        opt(s.processes),
        opt(s.mem_used_bytes),
        opt(s.mem_total_bytes),
        opt(s.system_cpu_percent),
    ]
}

/// The trace's samples as CSV (header row first, `\n` line ends).
pub fn csv(trace: &Trace) -> Vec<u8> {
    let gpus = trace.gpu_indices();
    let mut header: Vec<String> = COLUMNS.iter().map(|c| c.to_string()).collect();
    for i in &gpus {
        header.extend(GPU_FIELDS.iter().map(|f| format!("gpu{i}_{f}")));
    }
    let mut out = header.join(",");
    out.push('\n');
    for s in &trace.samples {
        let mut row = base_cells(s);
        for i in &gpus {
            let g = s.gpus.iter().find(|g| g.index == *i);
            row.extend(
                GPU_FIELDS
                    .iter()
                    .map(|f| cell(g.and_then(|g| g.fields.get(*f)))),
            );
        }
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn unmeasured_values_are_empty_cells_and_gpus_get_columns() {
        let text = concat!(
            r#"{"type":"header","schema_version":1,"gpus":[{"index":0}]}"#,
            "\n",
            r#"{"type":"sample","t_ns":1500000,"rss_bytes":4096,"cpu_ns":null,"system_cpu_percent":12.5,"gpus":[{"index":0,"vram_used_bytes":7,"asleep":false}]}"#,
            "\n"
        );
        let t = crate::trace::read::parse(text, Path::new("t")).unwrap();
        let out = String::from_utf8(csv(&t)).unwrap();
        let mut lines = out.lines();
        let head: Vec<&str> = lines.next().unwrap().split(',').collect();
        let row: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!(head.len(), COLUMNS.len() + GPU_FIELDS.len());
        assert_eq!(head.len(), row.len());
        let col = |name: &str| row[head.iter().position(|h| *h == name).unwrap()];
        assert_eq!(col("t_ms"), "1.500000");
        assert_eq!(col("rss_bytes"), "4096");
        assert_eq!(col("cpu_ns"), "");
        assert_eq!(col("system_cpu_percent"), "12.5");
        assert_eq!(col("gpu0_vram_used_bytes"), "7");
        assert_eq!(col("gpu0_temp_edge_c"), "");
        assert_eq!(col("gpu0_asleep"), "false");
    }
}
