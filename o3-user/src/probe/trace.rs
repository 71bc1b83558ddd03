//! One probe as a trace file (docs/trace-format.md): a header, every sample of the server tree
//! taken during the probe, then the probe's result. `o3 probe --out` writes one; `o3 optimize`
//! writes one per probe into the run directory, where `o3 report` draws the resource timelines.

use std::path::Path;
use std::time::Duration;

use crate::telemetry::Method;
use crate::trace::{Header, Methods, TraceError, TraceWriter, SCHEMA_VERSION};

use super::ProbeResult;

/// Writes `r` to `path`. `target` says what was probed (it goes into the header).
pub fn write(
    path: &Path,
    r: &ProbeResult,
    target: serde_json::Value,
    interval: Duration,
) -> Result<(), TraceError> {
    let mut w = TraceWriter::create(path)?;
    let (host, kernel) = crate::util::system::uname();
    let method = match r.rss_method {
        "ebpf" => Method::Ebpf,
        _ => Method::ProcfsPolling,
    };
    let empty = super::Timeline::default();
    let timeline = r.timeline.as_ref().unwrap_or(&empty);
    let header = Header {
        schema_version: SCHEMA_VERSION,
        o3_version: Some(env!("CARGO_PKG_VERSION").into()),
        host: Some(host),
        kernel: Some(kernel),
        interval_ns: Some(interval.as_nanos() as u64),
        start_unix_ns: Some(if timeline.start_unix_ns > 0 {
            timeline.start_unix_ns
        } else {
            crate::util::system::unix_now_ns()
        }),
        target,
        methods: Methods {
            rss: method,
            cpu: method,
            mem_used: Method::ProcfsPolling,
            gpu_mem: "sampled",
        },
        gpus: Vec::new(),
    };
    w.header(&header)?;
    for s in &timeline.samples {
        w.sample(s)?;
    }
    let v = serde_json::to_value(r).expect("a probe result serialises");
    w.probe(&v)
}
