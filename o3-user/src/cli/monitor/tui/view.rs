//! One frame of `o3 monitor --tui`, a pure function of a [`Snapshot`]: a header, a block per
//! GPU (memory bars labelled with what bounds them, busy, temperatures, power, clocks), system
//! RAM, and the top processes by GPU memory and by RSS.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table};
use ratatui::Frame;

use crate::telemetry::gpu::source::{self, GpuInfo};
use crate::telemetry::top::TopProcess;
use crate::trace::gpu::GpuSample;
use crate::util::duration;
use crate::util::units::{bytes, utc};

use super::snapshot::Snapshot;

/// Rows of a GPU block: borders, two memory bars, and one line of sensors (or of sleep).
const GPU_HEIGHT: u16 = 5;

/// Width of a bar (with its name and percent) left of its figures.
const BAR_WIDTH: u16 = 36;

/// Draws `s` on the whole frame.
pub fn draw(f: &mut Frame, s: &Snapshot) {
    let mut heights = vec![Constraint::Length(1)];
    heights.extend(s.sample.gpus.iter().map(|_| Constraint::Length(GPU_HEIGHT)));
    heights.extend([Constraint::Length(3), Constraint::Min(4)]);
    let rows = Layout::vertical(heights).split(f.area());
    f.render_widget(Paragraph::new(header(s)), rows[0]);
    for (i, g) in s.sample.gpus.iter().enumerate() {
        let info = s.gpus.iter().find(|x| x.index == g.index);
        gpu_block(f, rows[i + 1], g, info, s.sample.mem_total_bytes);
    }
    let n = s.sample.gpus.len();
    system_block(f, rows[n + 1], s);
    let halves = Layout::horizontal([Constraint::Percentage(50); 2]).split(rows[n + 2]);
    processes(f, halves[0], "Top processes by GPU memory", &s.by_gpu, true);
    processes(f, halves[1], "Top processes by RSS", &s.by_rss, false);
}

/// `o3 monitor  host strix  every 200ms  2026-12-07 00:40:05 UTC  q quits`.
fn header(s: &Snapshot) -> Line<'static> {
    Line::from(format!(
        "o3 monitor  host {}  every {}  {}:{:02} UTC  q quits{}",
        s.host,
        duration::show(s.interval),
        utc(s.unix_s),
        s.unix_s % 60,
        if s.sample.gpus.is_empty() {
            "  (no AMD or NVIDIA GPU found)"
        } else {
            ""
        }
    ))
    .style(Style::default().add_modifier(Modifier::BOLD))
}

/// The cells of a bar `width` wide filled to `ratio` (0–1): `█` filled, `░` not, so that the
/// level shows without colours too.
fn cells(ratio: f64, width: u16) -> (String, String) {
    let filled = ((ratio.clamp(0.0, 1.0) * f64::from(width)).round() as u16).min(width);
    (
        "█".repeat(usize::from(filled)),
        "░".repeat(usize::from(width - filled)),
    )
}

/// A memory bar: `GTT    33% ████░░░░` filled to `used / total`, then the figures.
fn bar(f: &mut Frame, area: Rect, name: &str, used: u64, total: u64, figures: String) {
    // The label says the share as it is (over 100 % too); the bar stops at its end.
    let ratio = if total == 0 {
        0.0
    } else {
        used as f64 / total as f64
    };
    let color = match ratio {
        r if r >= 0.9 => Color::Red,
        r if r >= 0.7 => Color::Yellow,
        _ => Color::Green,
    };
    let label = format!("{name:<5}{:>4.0}% ", ratio * 100.0);
    let (full, empty) = cells(
        ratio,
        BAR_WIDTH.saturating_sub(label.chars().count() as u16),
    );
    let line = Line::from(vec![
        Span::raw(label),
        Span::styled(full, Style::default().fg(color)),
        Span::styled(empty, Style::default().fg(Color::DarkGray)),
        Span::raw(format!(" {figures}")),
    ]);
    f.render_widget(Paragraph::new(line), area);
}

/// One GPU: its usable memory bar, the other memory bar, then busy, temperatures, power and
/// clocks.
fn gpu_block(f: &mut Frame, area: Rect, g: &GpuSample, info: Option<&GpuInfo>, ram: Option<u64>) {
    let apu = info.is_some_and(|i| i.apu);
    let title = match info {
        Some(i) => format!(
            " GPU{} {}{} ",
            g.index,
            i.name,
            if apu { " (APU)" } else { "" }
        ),
        None => format!(" GPU{} ", g.index),
    };
    let block = Block::default().borders(Borders::ALL).title(title);
    let inner = block.inner(area);
    f.render_widget(block, area);
    let lines = Layout::vertical([Constraint::Length(1); 3]).split(inner);
    let r = &g.reading;
    let (usable_name, other) = if apu {
        ("GTT", "VRAM")
    } else {
        ("VRAM", "GTT")
    };
    if let Some(u) = source::usable(apu, r, ram) {
        let used = u.used_bytes.unwrap_or(0);
        let figures = format!(
            "{} of {} usable ({})",
            bytes(used),
            bytes(u.total_bytes),
            u.bound.describe()
        );
        bar(f, lines[0], usable_name, used, u.total_bytes, figures);
    }
    let (used, total, bound) = if apu {
        (
            r.vram_used_bytes,
            r.vram_total_bytes,
            "the carve-out set in firmware",
        )
    } else {
        (
            r.gtt_used_bytes,
            r.gtt_total_bytes,
            "bounded by the GTT size",
        )
    };
    if let (Some(u), Some(t)) = (used, total) {
        let figures = format!("{} of {} ({bound})", bytes(u), bytes(t));
        bar(f, lines[1], other, u, t, figures);
    }
    f.render_widget(Paragraph::new(sensors(g)), lines[2]);
}

/// `busy 41 %  edge 48 °C  power 65 W  clocks 2900 / 1000 MHz`, or why there is none.
fn sensors(g: &GpuSample) -> String {
    if g.asleep {
        return "asleep (runtime-suspended): its sensors are not read, so as not to wake it".into();
    }
    let r = &g.reading;
    let mut parts = Vec::new();
    if let Some(b) = r.gpu_busy_percent {
        parts.push(format!("busy {b:.0} %"));
    }
    for (name, t) in [
        ("edge", r.temp_edge_c),
        ("junction", r.temp_junction_c),
        ("mem", r.temp_mem_c),
    ] {
        if let Some(t) = t {
            parts.push(format!("{name} {t:.0} °C"));
        }
    }
    if let Some(p) = r.power_w {
        parts.push(format!("power {p:.0} W"));
    }
    match (r.sclk_mhz, r.mclk_mhz) {
        (Some(s), Some(m)) => parts.push(format!("clocks {s:.0} / {m:.0} MHz (graphics / memory)")),
        (Some(s), None) => parts.push(format!("graphics clock {s:.0} MHz")),
        (None, Some(m)) => parts.push(format!("memory clock {m:.0} MHz")),
        (None, None) => {}
    }
    if parts.is_empty() {
        "no sensor readings".into()
    } else {
        parts.join("   ")
    }
}

/// System RAM and CPU.
fn system_block(f: &mut Frame, area: Rect, s: &Snapshot) {
    let cpu = s
        .sample
        .system_cpu_percent
        .map_or(String::new(), |c| format!(" · CPU {c:.0} %"));
    let block = Block::default()
        .borders(Borders::ALL)
        .title(format!(" System{cpu} "));
    let inner = block.inner(area);
    f.render_widget(block, area);
    match (s.sample.mem_used_bytes, s.sample.mem_total_bytes) {
        (Some(u), Some(t)) => {
            let figures = format!("{} of {} (MemTotal - MemAvailable)", bytes(u), bytes(t));
            bar(f, inner, "RAM", u, t, figures);
        }
        _ => f.render_widget(Paragraph::new("RAM not read (no meminfo)"), inner),
    }
}

/// A table of processes, GPU memory first when `gpu_first`.
fn processes(f: &mut Frame, area: Rect, title: &str, procs: &[TopProcess], gpu_first: bool) {
    let block = Block::default()
        .borders(Borders::ALL)
        .title(format!(" {title} "));
    if procs.is_empty() {
        let why = if gpu_first {
            "no process holds GPU memory that o3 can read"
        } else {
            "no process readable"
        };
        f.render_widget(Paragraph::new(why).block(block), area);
        return;
    }
    let cols = if gpu_first {
        ["GPU mem", "RSS"]
    } else {
        ["RSS", "GPU mem"]
    };
    let head = Row::new(["PID", "COMMAND", cols[0], cols[1]])
        .style(Style::default().add_modifier(Modifier::BOLD));
    let rows = procs.iter().map(|p| {
        let gpu = if p.gpu_bytes > 0 {
            bytes(p.gpu_bytes)
        } else {
            "-".into()
        };
        let rss = bytes(p.rss_bytes);
        let (a, b) = if gpu_first { (gpu, rss) } else { (rss, gpu) };
        Row::new([p.pid.to_string(), p.command.clone(), a, b])
    });
    let widths = [
        Constraint::Length(8),
        Constraint::Min(12),
        Constraint::Length(11),
        Constraint::Length(11),
    ];
    f.render_widget(Table::new(rows, widths).header(head).block(block), area);
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    use super::super::snapshot::Collector;
    use super::*;
    use crate::telemetry::gpu::source::{GpuOptions, GpuSelect, GpuSource};
    use crate::telemetry::procfs::SystemMemory;

    fn fixture(p: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(p)
    }

    /// A snapshot read from a fixture tree by the sampling thread's own collector.
    fn snapshot(sys: &str, proc_: &str) -> Snapshot {
        let (gpu, _) = GpuSource::open(GpuOptions {
            select: GpuSelect::Auto,
            sysfs_root: fixture(sys),
            procfs_root: fixture(proc_),
            dev_root: fixture("no-gpu"),
            sensor_every: Duration::ZERO,
            process_every: Duration::ZERO,
        });
        let system = SystemMemory::memory_only(&fixture(proc_)).ok();
        let mut c = Collector::new(system, gpu, fixture(proc_), Duration::from_millis(200));
        let mut s = c.collect();
        // Fixed, so the frame is the same on every machine.
        s.host = "strix".into();
        s.unix_s = 1_796_517_605;
        s
    }

    fn render(s: &Snapshot) -> String {
        let mut t = Terminal::new(TestBackend::new(120, 40)).unwrap();
        t.draw(|f| draw(f, s)).unwrap();
        let buf = t.backend().buffer();
        let mut out = String::new();
        for y in 0..buf.area.height {
            for x in 0..buf.area.width {
                out += buf.cell((x, y)).map_or(" ", |c| c.symbol());
            }
            out += "\n";
        }
        out
    }

    /// Strix Halo (tests/fixtures/strix-halo): a 120 GiB GTT on a 124 GiB machine, a 512 MiB
    /// carve-out, and llama-server (pid 4242) holding 40 GiB of GTT through two DRM clients.
    #[test]
    fn strix_halo_frame_has_bars_bounds_and_processes() {
        let text = render(&snapshot("strix-halo/sys", "strix-halo/proc"));
        let has = |s: &str| assert!(text.contains(s), "{s:?} not in\n{text}");
        has("o3 monitor  host strix  every 200ms  2026-12-06 00:40:05 UTC  q quits");
        has(" GPU1 AMD Strix Halo (APU) ");
        // 40 of 120 GiB: 8 of the bar's 25 cells.
        has(&format!(
            "GTT    33% {}{} 40.0",
            "█".repeat(8),
            "░".repeat(17)
        ));
        has(" 40.0 GiB of 120.0 GiB usable (bounded by the GTT size)");
        has("VRAM   37%");
        has(" 187.5 MiB of 512.0 MiB (the carve-out set in firmware)");
        has("edge 48 °C   power 65 W");
        has("RAM ");
        has(" 43.7 GiB of 124.0 GiB (MemTotal - MemAvailable)");
        has(" Top processes by GPU memory ");
        let row = |cmd: &str| {
            text.lines()
                .flat_map(|l| l.split('│'))
                .find(|cell| cell.contains(cmd))
                .map(|c| c.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_else(|| panic!("no row of {cmd} in\n{text}"))
        };
        assert_eq!(row("llama-server"), "4242 llama-server 40.2 GiB 42.0 GiB");
        has(" Top processes by RSS ");
        // bash's statm: 1200 resident pages of 4 KiB; it has no GPU client.
        assert_eq!(row("bash"), "4300 bash 4.7 MiB -");
    }

    /// A discrete card (tests/fixtures/rdna3): the VRAM bar names the VRAM size as its bound,
    /// the GTT bar the GTT size; no process of ram-90's procfs has GPU memory.
    #[test]
    fn discrete_frame_names_vram_and_gtt_bounds() {
        let text = render(&snapshot("rdna3/sys", "ram-90/proc"));
        let has = |s: &str| assert!(text.contains(s), "{s:?} not in\n{text}");
        has(" 8.0 GiB of 24.0 GiB usable (bounded by the VRAM size)");
        has("(bounded by the GTT size)");
        has("edge 45 °C   junction 52 °C   mem 60 °C");
        has("no process holds GPU memory that o3 can read");
    }

    /// The same APU with ram-90's 23.4 GiB of RAM: the GTT capacity is the RAM, says so, and
    /// 40 GiB in use fills the bar without overflowing it.
    #[test]
    fn an_apu_bounded_by_ram_says_so() {
        let text = render(&snapshot("strix-halo/sys", "ram-90/proc"));
        let want = format!(
            "GTT   171% {} 40.0 GiB of 23.4 GiB usable (bounded by RAM)",
            "█".repeat(25)
        );
        assert!(text.contains(&want), "{want:?} not in\n{text}");
    }

    #[test]
    fn bars_fill_in_proportion_and_stay_in_their_width() {
        assert_eq!(cells(0.0, 4), (String::new(), "░░░░".into()));
        assert_eq!(cells(0.5, 4), ("██".into(), "░░".into()));
        assert_eq!(cells(1.7, 4), ("████".into(), String::new()));
    }

    #[test]
    fn without_a_gpu_the_header_says_so() {
        let text = render(&snapshot("no-gpu/sys", "procfs"));
        let first = text.lines().next().unwrap();
        assert!(
            first.contains("q quits  (no AMD or NVIDIA GPU found)"),
            "{text}"
        );
        assert!(!text.contains("┌ GPU"), "{text}");
        // tests/fixtures/procfs: the command name with spaces and parentheses is one cell.
        assert!(text.contains("llama server (x)"), "{text}");
    }

    #[test]
    fn a_sleeping_card_says_why_it_has_no_sensors() {
        let text = render(&snapshot("rdna3-suspended/sys", "ram-90/proc"));
        assert!(text.contains("asleep (runtime-suspended)"), "{text}");
    }
}
