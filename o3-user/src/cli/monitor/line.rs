//! Line mode of `o3 monitor`: one compact line per refresh, under a header that names the
//! columns and their units (repeated every [`HEADER_EVERY`] lines, like vmstat).

use crate::telemetry::gpu::source::{self, GpuInfo};
use crate::telemetry::Sample;
use crate::util::units::bytes;

/// Lines between two headers.
pub const HEADER_EVERY: usize = 20;

/// The header: what each part of a line is, in the order [`line`] prints them.
pub fn header(infos: &[GpuInfo]) -> String {
    let mut out = format!("{:>9}  RAM used / total  CPU busy %", "time s");
    for g in infos {
        let memory = if g.apu {
            "GTT used of usable (bound) (carve-out used / size)"
        } else {
            "VRAM used of usable (bound)"
        };
        out += &format!(
            "  | GPU{} {}: {memory}, busy %, °C edge (junction), W",
            g.index, g.name
        );
    }
    out
}

/// Prints the header before the first line and every [`HEADER_EVERY`] lines after it.
#[derive(Debug, Default)]
pub struct Paged {
    lines: usize,
}

impl Paged {
    /// The text for one sample: its line, preceded by the header when one is due.
    pub fn next(&mut self, s: &Sample, infos: &[GpuInfo]) -> String {
        let due = self.lines % HEADER_EVERY == 0;
        self.lines += 1;
        let l = format!("{:>9.3}  {}", s.t_ns as f64 / 1e9, line(s, infos));
        if due {
            format!("{}\n{l}", header(infos))
        } else {
            l
        }
    }
}

/// One compact line: RAM, CPU, then each GPU's memory (GTT and carve-out apart on an APU),
/// each capacity with what bounds it.
pub fn line(s: &Sample, infos: &[GpuInfo]) -> String {
    let mut out = String::new();
    if let (Some(u), Some(t)) = (s.mem_used_bytes, s.mem_total_bytes) {
        out += &format!("RAM {} / {}", bytes(u), bytes(t));
    }
    if let Some(c) = s.system_cpu_percent {
        out += &format!("  CPU {c:.0} %");
    }
    for g in &s.gpus {
        let apu = infos.iter().any(|i| i.index == g.index && i.apu);
        out += &format!("  | GPU{}", g.index);
        if g.asleep {
            out += " asleep";
        }
        let r = &g.reading;
        if let Some(u) = source::usable(apu, r, s.mem_total_bytes) {
            if let Some(used) = u.used_bytes {
                out += &format!(
                    " {} {} of {} usable ({})",
                    if apu { "GTT" } else { "VRAM" },
                    bytes(used),
                    bytes(u.total_bytes),
                    u.bound.describe()
                );
            }
        }
        if apu {
            if let (Some(u), Some(t)) = (r.vram_used_bytes, r.vram_total_bytes) {
                out += &format!(" (carve-out {} / {})", bytes(u), bytes(t));
            }
        }
        if let Some(b) = r.gpu_busy_percent {
            out += &format!(" busy {b:.0} %");
        }
        if let Some(t) = r.temp_edge_c {
            out += &format!(" {t:.0} °C");
        }
        if let Some(t) = r.temp_junction_c {
            out += &format!(" (junction {t:.0} °C)");
        }
        if let Some(p) = r.power_w {
            out += &format!(" {p:.0} W");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::gpu::{GpuReading, GpuSample};

    fn apu() -> GpuInfo {
        GpuInfo::strix_halo()
    }

    /// A 120 GiB GTT on a machine with 23.6 GiB of RAM: the capacity is the RAM, and says so.
    fn small_ram() -> Sample {
        Sample {
            t_ns: 1_500_000_000,
            mem_used_bytes: Some(3 << 30),
            mem_total_bytes: Some(25_340_000_000),
            gpus: vec![GpuSample {
                index: 1,
                reading: GpuReading {
                    gtt_used_bytes: Some(40 << 30),
                    gtt_total_bytes: Some(120 << 30),
                    vram_used_bytes: Some(187 << 20),
                    vram_total_bytes: Some(512 << 20),
                    temp_edge_c: Some(48.0),
                    power_w: Some(65.0),
                    ..GpuReading::default()
                },
                ..GpuSample::default()
            }],
            ..Sample::default()
        }
    }

    #[test]
    fn an_apu_capacity_bounded_by_ram_says_so() {
        assert_eq!(
            line(&small_ram(), &[apu()]),
            "RAM 3.0 GiB / 23.6 GiB  | GPU1 GTT 40.0 GiB of 23.6 GiB usable (bounded by RAM) \
             (carve-out 187.0 MiB / 512.0 MiB) 48 °C 65 W"
        );
    }

    #[test]
    fn the_header_comes_first_and_every_twenty_lines() {
        let mut p = Paged::default();
        let infos = [apu()];
        let texts: Vec<String> = (0..41).map(|_| p.next(&small_ram(), &infos)).collect();
        let with_header: Vec<usize> = (0..texts.len())
            .filter(|&i| texts[i].starts_with("   time s"))
            .collect();
        assert_eq!(with_header, [0, 20, 40]);
        assert_eq!(
            texts[0].lines().next().unwrap(),
            "   time s  RAM used / total  CPU busy %  | GPU1 AMD Strix Halo: GTT used of usable \
             (bound) (carve-out used / size), busy %, °C edge (junction), W"
        );
        assert!(
            texts[1].starts_with("    1.500  RAM 3.0 GiB"),
            "{}",
            texts[1]
        );
    }
}
