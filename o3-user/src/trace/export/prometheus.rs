//! Prometheus text exposition (format 0.0.4) of the latest sample and the peaks so far, and a
//! minimal HTTP endpoint serving it on `GET /metrics`.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use crate::trace::gpu::{GpuInfo, GpuSample};
use crate::trace::Sample;

/// The temperature sensors, in the order [`GpuPeaks::temps_c`] keeps them: `sensor` label.
const SENSORS: [&str; 3] = ["edge", "junction", "mem"];

fn temps(g: &GpuSample) -> [Option<f64>; 3] {
    [
        g.reading.temp_edge_c,
        g.reading.temp_junction_c,
        g.reading.temp_mem_c,
    ]
}

/// One GPU's highest values so far; `None` until a value was read.
#[derive(Debug, Clone, Default)]
pub struct GpuPeaks {
    pub index: u32,
    pub usable_used_bytes: Option<u64>,
    /// Per sensor, as [`SENSORS`].
    pub temps_c: [Option<f64>; 3],
    pub power_w: Option<f64>,
}

/// Highest values seen so far.
#[derive(Debug, Clone, Default)]
pub struct Peaks {
    pub mem_used_bytes: Option<u64>,
    pub gpus: Vec<GpuPeaks>,
}

fn max<T: PartialOrd + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y > x { y } else { x }),
        (x, y) => x.or(y),
    }
}

impl Peaks {
    pub fn add(&mut self, s: &Sample) {
        self.mem_used_bytes = max(self.mem_used_bytes, s.mem_used_bytes);
        for g in &s.gpus {
            let i = match self.gpus.iter().position(|p| p.index == g.index) {
                Some(i) => i,
                None => {
                    self.gpus.push(GpuPeaks {
                        index: g.index,
                        ..GpuPeaks::default()
                    });
                    self.gpus.len() - 1
                }
            };
            let p = &mut self.gpus[i];
            p.usable_used_bytes = max(p.usable_used_bytes, g.usable_used_bytes);
            for (peak, t) in p.temps_c.iter_mut().zip(temps(g)) {
                *peak = max(*peak, t);
            }
            p.power_w = max(p.power_w, g.reading.power_w);
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric family: its help and type lines, then its rows; nothing when it has no row.
fn family(
    o: &mut String,
    kind: &str,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = String>,
) {
    let mut rows = rows.into_iter().peekable();
    if rows.peek().is_none() {
        return;
    }
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for r in rows {
        let _ = writeln!(o, "{r}");
    }
}

/// A gauge without labels, when it was measured.
fn scalar(o: &mut String, name: &str, help: &str, v: Option<f64>) {
    family(o, "gauge", name, help, v.map(|v| format!("{name} {v}")));
}

fn bytes(v: Option<u64>) -> Option<f64> {
    v.map(|v| v as f64)
}

/// 0–100 to 0–1.
fn ratio(percent: Option<f64>) -> Option<f64> {
    percent.map(|p| p / 100.0)
}

fn hertz(mhz: Option<f64>) -> Option<f64> {
    mhz.map(|m| m * 1e6)
}

type GpuGet = fn(&GpuSample) -> Option<f64>;

/// The per-GPU families: type, name, help, value; all labelled `gpu`, `name`, `apu`.
const GPU_FAMILIES: [(&str, &str, &str, GpuGet); 13] = [
    (
        "gauge",
        "o3_gpu_vram_used_bytes",
        "VRAM in use (the carve-out on an APU).",
        |g| bytes(g.reading.vram_used_bytes),
    ),
    ("gauge", "o3_gpu_vram_total_bytes", "VRAM size.", |g| {
        bytes(g.reading.vram_total_bytes)
    }),
    (
        "gauge",
        "o3_gpu_gtt_used_bytes",
        "GTT (system memory mapped for the GPU) in use.",
        |g| bytes(g.reading.gtt_used_bytes),
    ),
    ("gauge", "o3_gpu_gtt_total_bytes", "GTT size.", |g| {
        bytes(g.reading.gtt_total_bytes)
    }),
    (
        "gauge",
        "o3_gpu_usable_used_bytes",
        "GPU-usable memory in use: GTT on an APU, VRAM on a discrete GPU.",
        |g| bytes(g.usable_used_bytes),
    ),
    (
        "gauge",
        "o3_gpu_usable_total_bytes",
        "GPU-usable capacity: GTT bounded by RAM on an APU, VRAM on a discrete GPU.",
        |g| bytes(g.usable_total_bytes),
    ),
    (
        "gauge",
        "o3_gpu_busy_ratio",
        "Graphics/compute engine busy, 0 to 1.",
        |g| ratio(g.reading.gpu_busy_percent),
    ),
    (
        "gauge",
        "o3_gpu_memory_busy_ratio",
        "Memory controller busy, 0 to 1.",
        |g| ratio(g.reading.mem_busy_percent),
    ),
    (
        "gauge",
        "o3_gpu_power_watts",
        "Power (average where the device has it; the whole SoC on an APU).",
        |g| g.reading.power_w,
    ),
    (
        "counter",
        "o3_gpu_energy_joules_total",
        "Energy used, from the device's cumulative counter.",
        |g| g.reading.energy_j,
    ),
    (
        "gauge",
        "o3_gpu_graphics_clock_hertz",
        "Graphics clock.",
        |g| hertz(g.reading.sclk_mhz),
    ),
    ("gauge", "o3_gpu_memory_clock_hertz", "Memory clock.", |g| {
        hertz(g.reading.mclk_mhz)
    }),
    (
        "gauge",
        "o3_gpu_asleep",
        "1 when the device is runtime-suspended (its sensors are not read).",
        |g| Some(if g.asleep { 1.0 } else { 0.0 }),
    ),
];

/// Renders the exposition text (pure: tested on fixed samples).
pub fn render(s: &Sample, peaks: &Peaks, gpus: &[GpuInfo]) -> String {
    let mut o = String::new();
    system(&mut o, s, peaks);
    let label = |i: u32| gpu_label(i, gpus);
    for (kind, name, help, get) in GPU_FAMILIES {
        let rows = s
            .gpus
            .iter()
            .filter_map(|g| get(g).map(|v| format!("{name}{{{}}} {v}", label(g.index))));
        family(&mut o, kind, name, help, rows);
    }
    let rows = s.gpus.iter().flat_map(|g| sensor_rows(g.index, temps(g)));
    family(
        &mut o,
        "gauge",
        "o3_gpu_temperature_celsius",
        "GPU temperatures.",
        rows.map(|(i, sensor, t)| {
            format!(
                "o3_gpu_temperature_celsius{{{},sensor=\"{sensor}\"}} {t}",
                label(i)
            )
        }),
    );
    gpu_peaks(&mut o, peaks, &label);
    o
}

/// System memory and CPU.
fn system(o: &mut String, s: &Sample, peaks: &Peaks) {
    scalar(
        o,
        "o3_memory_used_bytes",
        "System RAM in use (MemTotal - MemAvailable).",
        bytes(s.mem_used_bytes),
    );
    scalar(
        o,
        "o3_memory_total_bytes",
        "System RAM.",
        bytes(s.mem_total_bytes),
    );
    scalar(
        o,
        "o3_memory_used_peak_bytes",
        "Highest system RAM in use since o3 started.",
        bytes(peaks.mem_used_bytes),
    );
    scalar(
        o,
        "o3_cpu_busy_ratio",
        "System CPU busy, share of all cores, 0 to 1.",
        ratio(s.system_cpu_percent),
    );
}

/// The labels of a GPU's rows: index, name (`?` when not listed), APU or not.
fn gpu_label(index: u32, gpus: &[GpuInfo]) -> String {
    let info = gpus.iter().find(|i| i.index == index);
    format!(
        "gpu=\"{index}\",name=\"{}\",apu=\"{}\"",
        escape(info.map_or("?", |i| i.name.as_str())),
        info.is_some_and(|i| i.apu)
    )
}

/// (gpu, sensor, value) of each sensor that has a value.
fn sensor_rows(
    index: u32,
    temps: [Option<f64>; 3],
) -> impl Iterator<Item = (u32, &'static str, f64)> {
    SENSORS
        .into_iter()
        .zip(temps)
        .filter_map(move |(sensor, t)| t.map(|t| (index, sensor, t)))
}

/// The GPUs' highest usable memory, temperatures and power so far, with the labels of the
/// families they are the peaks of.
fn gpu_peaks(o: &mut String, peaks: &Peaks, label: &dyn Fn(u32) -> String) {
    let name = "o3_gpu_usable_used_peak_bytes";
    family(
        o,
        "gauge",
        name,
        "Highest GPU-usable memory in use since o3 started (sampled).",
        peaks.gpus.iter().filter_map(|p| {
            p.usable_used_bytes
                .map(|v| format!("{name}{{{}}} {v}", label(p.index)))
        }),
    );
    let name = "o3_gpu_temperature_peak_celsius";
    family(
        o,
        "gauge",
        name,
        "Highest GPU temperature per sensor since o3 started.",
        peaks
            .gpus
            .iter()
            .flat_map(|p| sensor_rows(p.index, p.temps_c))
            .map(|(i, sensor, t)| format!("{name}{{{},sensor=\"{sensor}\"}} {t}", label(i))),
    );
    let name = "o3_gpu_power_peak_watts";
    family(
        o,
        "gauge",
        name,
        "Highest GPU power since o3 started.",
        peaks.gpus.iter().filter_map(|p| {
            p.power_w
                .map(|w| format!("{name}{{{}}} {w}", label(p.index)))
        }),
    );
}

/// Serves `text` (shared, replaced by the caller each tick) on `GET /metrics` until the
/// process exits. Returns the bound address (port 0 picks a free one).
pub fn serve(addr: &str, text: Arc<Mutex<String>>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("o3-prometheus".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(&stream);
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    continue;
                }
                // Drain the headers.
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let path = request.split_whitespace().nth(1).unwrap_or("");
                let (status, body, ctype) = if path == "/metrics" {
                    (
                        "200 OK",
                        text.lock().map(|t| t.clone()).unwrap_or_default(),
                        "text/plain; version=0.0.4",
                    )
                } else {
                    (
                        "404 Not Found",
                        "o3 serves /metrics\n".to_string(),
                        "text/plain",
                    )
                };
                let mut w = &stream;
                let _ = write!(
                    w,
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        })?;
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::gpu::GpuReading;

    fn sample() -> Sample {
        Sample {
            mem_used_bytes: Some(3 << 30),
            mem_total_bytes: Some(24 << 30),
            system_cpu_percent: Some(12.5),
            gpus: vec![GpuSample {
                index: 1,
                reading: GpuReading {
                    gtt_used_bytes: Some(40 << 30),
                    temp_edge_c: Some(48.0),
                    power_w: Some(65.0),
                    ..GpuReading::default()
                },
                usable_used_bytes: Some(40 << 30),
                usable_total_bytes: Some(120 << 30),
                asleep: false,
            }],
            ..Sample::default()
        }
    }

    fn info() -> GpuInfo {
        GpuInfo::strix_halo()
    }

    /// The whole exposition of a fixed sample, after a hotter one (the peaks differ from the
    /// current values): base units, ratios, hertz, a counter, the same labels on the peaks.
    #[test]
    fn exposition_golden() {
        let mut s = sample();
        s.gpus[0].reading.gpu_busy_percent = Some(41.0);
        s.gpus[0].reading.sclk_mhz = Some(2900.0);
        s.gpus[0].reading.energy_j = Some(1234.5);
        let mut hot = s.clone();
        hot.gpus[0].reading.temp_edge_c = Some(71.0);
        hot.gpus[0].reading.power_w = Some(90.0);
        let mut p = Peaks::default();
        p.add(&hot);
        p.add(&s);
        let l = "gpu=\"1\",name=\"AMD Strix Halo\",apu=\"true\"";
        let want = format!(
            "# HELP o3_memory_used_bytes System RAM in use (MemTotal - MemAvailable).
# TYPE o3_memory_used_bytes gauge
o3_memory_used_bytes 3221225472
# HELP o3_memory_total_bytes System RAM.
# TYPE o3_memory_total_bytes gauge
o3_memory_total_bytes 25769803776
# HELP o3_memory_used_peak_bytes Highest system RAM in use since o3 started.
# TYPE o3_memory_used_peak_bytes gauge
o3_memory_used_peak_bytes 3221225472
# HELP o3_cpu_busy_ratio System CPU busy, share of all cores, 0 to 1.
# TYPE o3_cpu_busy_ratio gauge
o3_cpu_busy_ratio 0.125
# HELP o3_gpu_gtt_used_bytes GTT (system memory mapped for the GPU) in use.
# TYPE o3_gpu_gtt_used_bytes gauge
o3_gpu_gtt_used_bytes{{{l}}} 42949672960
# HELP o3_gpu_usable_used_bytes GPU-usable memory in use: GTT on an APU, VRAM on a discrete GPU.
# TYPE o3_gpu_usable_used_bytes gauge
o3_gpu_usable_used_bytes{{{l}}} 42949672960
# HELP o3_gpu_usable_total_bytes GPU-usable capacity: GTT bounded by RAM on an APU, VRAM on a discrete GPU.
# TYPE o3_gpu_usable_total_bytes gauge
o3_gpu_usable_total_bytes{{{l}}} 128849018880
# HELP o3_gpu_busy_ratio Graphics/compute engine busy, 0 to 1.
# TYPE o3_gpu_busy_ratio gauge
o3_gpu_busy_ratio{{{l}}} 0.41
# HELP o3_gpu_power_watts Power (average where the device has it; the whole SoC on an APU).
# TYPE o3_gpu_power_watts gauge
o3_gpu_power_watts{{{l}}} 65
# HELP o3_gpu_energy_joules_total Energy used, from the device's cumulative counter.
# TYPE o3_gpu_energy_joules_total counter
o3_gpu_energy_joules_total{{{l}}} 1234.5
# HELP o3_gpu_graphics_clock_hertz Graphics clock.
# TYPE o3_gpu_graphics_clock_hertz gauge
o3_gpu_graphics_clock_hertz{{{l}}} 2900000000
# HELP o3_gpu_asleep 1 when the device is runtime-suspended (its sensors are not read).
# TYPE o3_gpu_asleep gauge
o3_gpu_asleep{{{l}}} 0
# HELP o3_gpu_temperature_celsius GPU temperatures.
# TYPE o3_gpu_temperature_celsius gauge
o3_gpu_temperature_celsius{{{l},sensor=\"edge\"}} 48
# HELP o3_gpu_usable_used_peak_bytes Highest GPU-usable memory in use since o3 started (sampled).
# TYPE o3_gpu_usable_used_peak_bytes gauge
o3_gpu_usable_used_peak_bytes{{{l}}} 42949672960
# HELP o3_gpu_temperature_peak_celsius Highest GPU temperature per sensor since o3 started.
# TYPE o3_gpu_temperature_peak_celsius gauge
o3_gpu_temperature_peak_celsius{{{l},sensor=\"edge\"}} 71
# HELP o3_gpu_power_peak_watts Highest GPU power since o3 started.
# TYPE o3_gpu_power_peak_watts gauge
o3_gpu_power_peak_watts{{{l}}} 90
"
        );
        assert_eq!(render(&s, &p, &[info()]), want);
    }

    /// The label names of each family's rows, by family.
    fn label_sets(text: &str) -> std::collections::BTreeMap<String, Vec<String>> {
        let mut out = std::collections::BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap().to_string();
            let labels = line
                .split_once('{')
                .map(|(_, r)| r.split('}').next().unwrap())
                .unwrap_or("")
                .split(',')
                .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_string()))
                .collect();
            out.insert(name, labels);
        }
        out
    }

    /// Every family has HELP and TYPE, ends in a base unit (or is a ratio or a 0/1 state),
    /// counters end in `_total`, and a `*_peak_*` family has its base family's labels.
    #[test]
    fn every_family_follows_the_naming_conventions() {
        let mut s = sample();
        s.gpus[0].reading.temp_junction_c = Some(50.0);
        s.gpus[0].reading.mclk_mhz = Some(1000.0);
        s.gpus[0].reading.energy_j = Some(1.0);
        let mut p = Peaks::default();
        p.add(&s);
        let text = render(&s, &p, &[info()]);
        let sets = label_sets(&text);
        for (name, labels) in &sets {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name}");
            let unit = [
                "_bytes",
                "_ratio",
                "_watts",
                "_celsius",
                "_hertz",
                "_joules_total",
            ]
            .iter()
            .any(|u| name.ends_with(u));
            assert!(unit || name == "o3_gpu_asleep", "{name} has no base unit");
            if let Some((head, tail)) = name.split_once("_peak") {
                let base = format!("{head}{tail}");
                assert_eq!(Some(labels), sets.get(&base), "{name} vs {base}");
            }
        }
        assert!(!text.contains("percent") && !text.contains("mhz"), "{text}");
    }

    /// A sleeping GPU has no temperature: no temperature family at all, not an empty one.
    #[test]
    fn a_gauge_without_rows_is_left_out() {
        let mut s = sample();
        s.gpus[0].reading = GpuReading::default();
        s.gpus[0].asleep = true;
        let mut p = Peaks::default();
        p.add(&s);
        let text = render(&s, &p, &[]);
        assert!(text.contains("o3_gpu_asleep{gpu=\"1\",name=\"?\",apu=\"false\"} 1\n"));
        assert!(text.contains(
            "o3_gpu_usable_used_peak_bytes{gpu=\"1\",name=\"?\",apu=\"false\"} 42949672960\n"
        ));
        assert!(!text.contains("temperature"), "{text}");
    }

    #[test]
    fn serves_metrics_over_loopback() {
        let text = Arc::new(Mutex::new("o3_up 1\n".to_string()));
        let addr = serve("127.0.0.1:0", text.clone()).unwrap();
        let get = |path: &str| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut body = String::new();
            std::io::Read::read_to_string(&mut s, &mut body).unwrap();
            body
        };
        let r = get("/metrics");
        assert!(
            r.starts_with("HTTP/1.1 200 OK") && r.ends_with("o3_up 1\n"),
            "{r}"
        );
        *text.lock().unwrap() = "o3_up 2\n".into();
        assert!(get("/metrics").ends_with("o3_up 2\n"));
        assert!(get("/").starts_with("HTTP/1.1 404"));
    }
}
