//! The trace writer: records appended as JSON Lines, flushed at least once a second.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

use super::record::{Header, Sample, TreeEvent};

#[derive(Debug, Error)]
pub enum TraceError {
    #[error("cannot write trace file {path}: {source} (choose a writable path with --out)")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing trace file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Record<'a> {
    Header(&'a Header),
    Sample(&'a Sample),
    Event(&'a TreeEvent),
    Summary(&'a serde_json::Value),
    /// One measured configuration (`o3 probe`).
    Probe(&'a serde_json::Value),
}

/// Appends records; flushed at least once a second so a killed recording leaves a readable
/// trace up to the last second.
pub struct TraceWriter {
    path: PathBuf,
    out: BufWriter<File>,
    last_flush_ns: u64,
}

impl TraceWriter {
    /// Creates the file (before any work starts, so a bad path fails early).
    pub fn create(path: &Path) -> Result<TraceWriter, TraceError> {
        let file = File::create(path).map_err(|source| TraceError::Create {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(TraceWriter {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(64 * 1024, file),
            last_flush_ns: 0,
        })
    }

    fn write(&mut self, rec: &Record) -> Result<(), TraceError> {
        let err = |source| TraceError::Write {
            path: self.path.clone(),
            source,
        };
        serde_json::to_writer(&mut self.out, rec).map_err(|e| err(e.into()))?;
        self.out.write_all(b"\n").map_err(err)
    }

    pub fn header(&mut self, h: &Header) -> Result<(), TraceError> {
        self.write(&Record::Header(h))
    }

    pub fn sample(&mut self, s: &Sample) -> Result<(), TraceError> {
        self.write(&Record::Sample(s))?;
        if s.t_ns >= self.last_flush_ns + 1_000_000_000 {
            self.last_flush_ns = s.t_ns;
            self.flush()?;
        }
        Ok(())
    }

    pub fn event(&mut self, e: &TreeEvent) -> Result<(), TraceError> {
        self.write(&Record::Event(e))
    }

    pub fn summary(&mut self, s: &serde_json::Value) -> Result<(), TraceError> {
        self.write(&Record::Summary(s))?;
        self.flush()
    }

    pub fn probe(&mut self, p: &serde_json::Value) -> Result<(), TraceError> {
        self.write(&Record::Probe(p))?;
        self.flush()
    }

    pub fn flush(&mut self) -> Result<(), TraceError> {
        self.out.flush().map_err(|source| TraceError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::record::{Method, Methods};
    use crate::trace::SCHEMA_VERSION;

    #[test]
    fn records_are_tagged_lines_with_units() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl");
        let mut w = TraceWriter::create(&p).unwrap();
        let h = Header {
            schema_version: SCHEMA_VERSION,
            o3_version: Some("0.1.0".into()),
            host: Some("h".into()),
            kernel: Some("6.18".into()),
            interval_ns: Some(10_000_000),
            start_unix_ns: Some(1),
            target: serde_json::json!({"command": ["true"]}),
            methods: Methods {
                rss: Method::Ebpf,
                cpu: Method::Ebpf,
                mem_used: Method::ProcfsPolling,
                gpu_mem: "sampled",
            },
            gpus: Vec::new(),
        };
        w.header(&h).unwrap();
        let s = Sample {
            t_ns: 5,
            rss_bytes: Some(4096),
            ..Sample::default()
        };
        w.sample(&s).unwrap();
        w.event(&TreeEvent::Exit {
            t_ns: 6,
            pid: 7,
            comm: "x".into(),
        })
        .unwrap();
        w.summary(&serde_json::json!({"wall_ns": 9})).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0]["type"], "header");
        assert_eq!(lines[0]["methods"]["rss"], "ebpf");
        assert_eq!(lines[0]["methods"]["mem_used"], "procfs_polling");
        assert_eq!(lines[1]["type"], "sample");
        assert_eq!(lines[1]["rss_bytes"], 4096);
        assert_eq!(lines[2]["type"], "event");
        assert_eq!(lines[2]["event"], "exit");
        assert_eq!(lines[3]["type"], "summary");
    }

    #[test]
    fn unwritable_path_names_the_flag() {
        let e = TraceWriter::create(Path::new("/nonexistent-dir/x.jsonl"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("/nonexistent-dir/x.jsonl") && e.contains("--out"),
            "{e}"
        );
    }

    /// The writer reproduces lines of the fixture traces byte for byte: the format of the
    /// files o3 wrote before (and the docs describe) is the format it writes.
    #[test]
    #[allow(clippy::too_many_lines)] // literal records equal to the fixture lines
    fn writes_the_fixture_lines_byte_for_byte() {
        use crate::trace::gpu::GpuReading;
        use crate::trace::gpu::GpuSample;
        use crate::trace::gpu::ProcessGpu;

        let fixture = |name: &str, lines: &[usize]| {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/traces");
            let text = std::fs::read_to_string(dir.join(name)).unwrap();
            let all: Vec<&str> = text.lines().collect();
            lines
                .iter()
                .map(|n| format!("{}\n", all[n - 1]))
                .collect::<String>()
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl");
        let mut w = TraceWriter::create(&p).unwrap();
        w.header(&Header {
            schema_version: SCHEMA_VERSION,
            o3_version: Some("0.1.0".into()),
            host: Some("vm".into()),
            kernel: Some("6.18.44-fc-v669".into()),
            interval_ns: Some(10_000_000),
            start_unix_ns: Some(1795706764414107108),
            target: serde_json::json!({
                "command": ["./target/debug/o3-workload", "spike", "--mib", "32", "--hold-us",
                    "1000", "--repeat", "3"],
                "pid": 10501
            }),
            methods: Methods {
                rss: Method::Ebpf,
                cpu: Method::Ebpf,
                mem_used: Method::ProcfsPolling,
                gpu_mem: "sampled",
            },
            gpus: Vec::new(),
        })
        .unwrap();
        w.event(&TreeEvent::Exec {
            t_ns: 278966,
            pid: 10501,
            comm: "o3-workload".into(),
            filename: "./target/debug/o3-workload".into(),
        })
        .unwrap();
        w.sample(&Sample {
            t_ns: 5442283,
            rss_bytes: Some(7147520),
            rss_anon_bytes: Some(5033984),
            rss_file_bytes: Some(2113536),
            rss_shmem_bytes: Some(0),
            swap_bytes: Some(0),
            rss_peak_bytes: Some(7147520),
            rss_peak_t_ns: Some(4660037),
            cpu_ns: Some(4290607),
            cpu_t_ns: Some(5478868),
            processes: Some(1),
            mem_used_bytes: Some(642134016),
            mem_total_bytes: Some(25276502016),
            ..Sample::default()
        })
        .unwrap();
        w.flush().unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            fixture("record.jsonl", &[1, 2, 9])
        );

        let mut w = TraceWriter::create(&p).unwrap();
        w.sample(&Sample {
            t_ns: 100_000_000,
            rss_bytes: Some(1 << 30),
            rss_anon_bytes: Some(1 << 29),
            rss_file_bytes: Some(1 << 29),
            rss_shmem_bytes: Some(0),
            swap_bytes: Some(0),
            rss_peak_bytes: Some(1 << 30),
            rss_peak_t_ns: Some(100_000_000),
            cpu_ns: Some(90_000_000),
            cpu_t_ns: None,
            processes: Some(2),
            mem_used_bytes: Some(30_000_000_000),
            mem_total_bytes: Some(64 << 30),
            system_cpu_percent: Some(45.5),
            gpus: vec![GpuSample {
                index: 0,
                reading: GpuReading {
                    vram_used_bytes: Some(4 << 30),
                    vram_total_bytes: Some(25753026560),
                    gtt_used_bytes: Some(50 << 20),
                    gtt_total_bytes: Some(33554432000),
                    gpu_busy_percent: Some(12.0),
                    ..GpuReading::default()
                },
                usable_used_bytes: Some(4 << 30),
                usable_total_bytes: Some(25753026560),
                asleep: false,
            }],
            gpu_processes: vec![ProcessGpu {
                pid: 4243,
                vram_bytes: 4 << 30,
                gtt_bytes: 0,
                kfd_vram_bytes: 0,
                engine_ns: 10_000_000,
            }],
        })
        .unwrap();
        w.flush().unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            fixture("handmade-gpu.jsonl", &[3])
        );
    }
}
