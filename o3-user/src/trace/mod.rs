//! Trace files: JSON Lines with a header, then sample and event records in time order, then a
//! summary. Field names carry units (`rss_bytes`, `cpu_ns`, `t_ns`). See docs/trace-format.md.

pub mod lines;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

use crate::telemetry::{Method, Sample, TreeEvent};

/// Bumped whenever a record changes incompatibly.
pub const SCHEMA_VERSION: u32 = 1;

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

/// Which method produced each metric.
#[derive(Debug, Clone, Serialize)]
pub struct Methods {
    pub rss: Method,
    pub cpu: Method,
    pub mem_used: Method,
    /// `ebpf` (kprobes on the amdgpu memory managers) or `sampled`.
    pub gpu_mem: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Header {
    pub schema_version: u32,
    pub o3_version: &'static str,
    pub host: String,
    pub kernel: String,
    pub interval_ns: u64,
    /// Wall-clock time of t_ns = 0, ns since the Unix epoch.
    pub start_unix_ns: u64,
    pub target: serde_json::Value,
    pub methods: Methods,
    /// The GPUs measured and which reader serves each metric.
    pub gpus: Vec<crate::telemetry::gpu::source::GpuInfo>,
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

    #[test]
    fn records_are_tagged_lines_with_units() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl");
        let mut w = TraceWriter::create(&p).unwrap();
        let h = Header {
            schema_version: SCHEMA_VERSION,
            o3_version: "0.1.0",
            host: "h".into(),
            kernel: "6.18".into(),
            interval_ns: 10_000_000,
            start_unix_ns: 1,
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
}
