//! Prometheus text exposition (format 0.0.4) of the latest sample and the peaks so far, and a
//! minimal HTTP endpoint serving it on `GET /metrics`.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use crate::trace::gpu::{GpuInfo, GpuSample};
use crate::trace::Sample;

/// Highest values seen so far.
#[derive(Debug, Clone, Default)]
pub struct Peaks {
    pub mem_used_bytes: u64,
    /// Per GPU index: usable used bytes, temperature °C, power W.
    pub gpus: Vec<(u32, u64, f64, f64)>,
}

impl Peaks {
    pub fn add(&mut self, s: &Sample) {
        self.mem_used_bytes = self.mem_used_bytes.max(s.mem_used_bytes.unwrap_or(0));
        for g in &s.gpus {
            let i = match self.gpus.iter().position(|p| p.0 == g.index) {
                Some(i) => i,
                None => {
                    self.gpus.push((g.index, 0, f64::NAN, f64::NAN));
                    self.gpus.len() - 1
                }
            };
            let p = &mut self.gpus[i];
            p.1 = p.1.max(g.usable_used_bytes.unwrap_or(0));
            let hottest = [
                g.reading.temp_edge_c,
                g.reading.temp_junction_c,
                g.reading.temp_mem_c,
            ]
            .into_iter()
            .flatten()
            .fold(f64::NAN, f64::max);
            p.2 = p.2.max(hottest);
            if let Some(w) = g.reading.power_w {
                p.3 = p.3.max(w);
            }
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One gauge: its help and type lines, then its rows; nothing when it has no row.
fn gauge(o: &mut String, name: &str, help: &str, rows: impl IntoIterator<Item = String>) {
    let mut rows = rows.into_iter().peekable();
    if rows.peek().is_none() {
        return;
    }
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
    for r in rows {
        let _ = writeln!(o, "{r}");
    }
}

/// A gauge without labels, when it was measured.
fn scalar(o: &mut String, name: &str, help: &str, v: Option<f64>) {
    gauge(o, name, help, v.map(|v| format!("{name} {v}")));
}

fn bytes(v: Option<u64>) -> Option<f64> {
    v.map(|v| v as f64)
}

type GpuGet = fn(&GpuSample) -> Option<f64>;

/// The per-GPU gauges: name, help, value.
const GPU_GAUGES: [(&str, &str, GpuGet); 12] = [
    (
        "o3_gpu_vram_used_bytes",
        "VRAM in use (the carve-out on an APU).",
        |g| bytes(g.reading.vram_used_bytes),
    ),
    ("o3_gpu_vram_total_bytes", "VRAM size.", |g| {
        bytes(g.reading.vram_total_bytes)
    }),
    (
        "o3_gpu_gtt_used_bytes",
        "GTT (system memory mapped for the GPU) in use.",
        |g| bytes(g.reading.gtt_used_bytes),
    ),
    ("o3_gpu_gtt_total_bytes", "GTT size.", |g| {
        bytes(g.reading.gtt_total_bytes)
    }),
    (
        "o3_gpu_usable_used_bytes",
        "GPU-usable memory in use: GTT on an APU, VRAM on a discrete GPU.",
        |g| bytes(g.usable_used_bytes),
    ),
    (
        "o3_gpu_usable_total_bytes",
        "GPU-usable capacity: GTT bounded by RAM on an APU, VRAM on a discrete GPU.",
        |g| bytes(g.usable_total_bytes),
    ),
    (
        "o3_gpu_busy_percent",
        "Graphics/compute engine busy.",
        |g| g.reading.gpu_busy_percent,
    ),
    (
        "o3_gpu_memory_busy_percent",
        "Memory controller busy.",
        |g| g.reading.mem_busy_percent,
    ),
    (
        "o3_gpu_power_watts",
        "Power (average where the device has it; the whole SoC on an APU).",
        |g| g.reading.power_w,
    ),
    ("o3_gpu_energy_joules", "Cumulative energy counter.", |g| {
        g.reading.energy_j
    }),
    ("o3_gpu_sclk_mhz", "Graphics clock.", |g| g.reading.sclk_mhz),
    (
        "o3_gpu_asleep",
        "1 when the device is runtime-suspended (its sensors are not read).",
        |g| Some(if g.asleep { 1.0 } else { 0.0 }),
    ),
];

/// Renders the exposition text (pure: tested on fixed samples).
pub fn render(s: &Sample, peaks: &Peaks, gpus: &[GpuInfo]) -> String {
    let mut o = String::new();
    system(&mut o, s, peaks);
    let label = |g: &GpuSample| gpu_label(g, gpus);
    for (name, help, get) in GPU_GAUGES {
        let rows = s
            .gpus
            .iter()
            .filter_map(|g| get(g).map(|v| format!("{name}{{{}}} {v}", label(g))));
        gauge(&mut o, name, help, rows);
    }
    gpu_temperatures(&mut o, &s.gpus, &label);
    gpu_peaks(&mut o, peaks);
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
        bytes(Some(peaks.mem_used_bytes)),
    );
    scalar(
        o,
        "o3_cpu_busy_percent",
        "System CPU busy, percent of all cores.",
        s.system_cpu_percent,
    );
}

/// The labels of a GPU's rows: index, name (`?` when not listed), APU or not.
fn gpu_label(g: &GpuSample, gpus: &[GpuInfo]) -> String {
    let info = gpus.iter().find(|i| i.index == g.index);
    format!(
        "gpu=\"{}\",name=\"{}\",apu=\"{}\"",
        g.index,
        escape(info.map_or("?", |i| i.name.as_str())),
        info.is_some_and(|i| i.apu)
    )
}

/// Every temperature sensor of every GPU, one gauge labelled by sensor.
fn gpu_temperatures(o: &mut String, gpus: &[GpuSample], label: &dyn Fn(&GpuSample) -> String) {
    let rows = gpus.iter().flat_map(|g| {
        [
            ("edge", g.reading.temp_edge_c),
            ("junction", g.reading.temp_junction_c),
            ("mem", g.reading.temp_mem_c),
        ]
        .into_iter()
        .filter_map(move |(sensor, t)| {
            t.map(|t| {
                format!(
                    "o3_gpu_temperature_celsius{{{},sensor=\"{sensor}\"}} {t}",
                    label(g)
                )
            })
        })
    });
    gauge(o, "o3_gpu_temperature_celsius", "GPU temperatures.", rows);
}

/// The GPUs' highest usable memory and temperature so far.
fn gpu_peaks(o: &mut String, peaks: &Peaks) {
    gauge(
        o,
        "o3_gpu_usable_used_peak_bytes",
        "Highest GPU-usable memory in use since o3 started (sampled).",
        peaks
            .gpus
            .iter()
            .map(|(i, used, _, _)| format!("o3_gpu_usable_used_peak_bytes{{gpu=\"{i}\"}} {used}")),
    );
    gauge(
        o,
        "o3_gpu_temperature_peak_celsius",
        "Highest GPU temperature since o3 started.",
        peaks
            .gpus
            .iter()
            .filter(|p| p.2.is_finite())
            .map(|(i, _, t, _)| format!("o3_gpu_temperature_peak_celsius{{gpu=\"{i}\"}} {t}")),
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

    #[test]
    fn exposition_has_units_labels_and_peaks() {
        let s = sample();
        let mut p = Peaks::default();
        p.add(&s);
        let text = render(&s, &p, &[]);
        assert!(
            text.contains("# TYPE o3_memory_used_bytes gauge\no3_memory_used_bytes 3221225472\n")
        );
        assert!(text.contains(
            "o3_gpu_usable_total_bytes{gpu=\"1\",name=\"?\",apu=\"false\"} 128849018880"
        ));
        assert!(text.contains(
            "o3_gpu_temperature_celsius{gpu=\"1\",name=\"?\",apu=\"false\",sensor=\"edge\"} 48"
        ));
        assert!(text.contains("o3_gpu_usable_used_peak_bytes{gpu=\"1\"} 42949672960"));
        assert!(
            !text.contains("o3_gpu_vram_used_bytes"),
            "absent values are not exported"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(name.starts_with("o3_"), "{line}");
        }
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
        assert!(text.contains("o3_gpu_usable_used_peak_bytes{gpu=\"1\"} 42949672960\n"));
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
