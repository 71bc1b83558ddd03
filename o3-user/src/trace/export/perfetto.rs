//! Chrome trace-event JSON (opens in ui.perfetto.dev and chrome://tracing): counters per metric,
//! instants for peaks, process events and safety breaches, complete events for probe spans.
//! Timestamps are µs since the start of the recording.

use serde_json::{json, Map, Value};

use crate::trace::{tree_cpu_percent, GpuRec, SampleRec, Trace, TreeEvent};

/// The recording's own track (counters and instants).
pub const PID_RECORDING: u32 = 1;
/// Probe spans, when the trace has probe records.
pub const PID_PROBE: u32 = 2;
const TID_SAMPLES: u32 = 1;
const TID_EVENTS: u32 = 2;

fn us(t_ns: u64) -> Value {
    json!(t_ns as f64 / 1000.0)
}

fn meta(name: &str, pid: u32, tid: u32, value: &str) -> Value {
    json!({"ph": "M", "name": name, "pid": pid, "tid": tid, "args": {"name": value}})
}

fn counter(name: &str, t_ns: u64, args: Map<String, Value>) -> Option<Value> {
    if args.is_empty() {
        return None;
    }
    Some(
        json!({"ph": "C", "name": name, "ts": us(t_ns), "pid": PID_RECORDING,
        "tid": TID_SAMPLES, "args": args}),
    )
}

fn instant(name: String, t_ns: u64, scope: &str, args: Value) -> Value {
    json!({"ph": "i", "name": name, "ts": us(t_ns), "pid": PID_RECORDING, "tid": TID_EVENTS,
        "s": scope, "args": args})
}

fn args<const N: usize>(pairs: [(&str, Option<f64>); N]) -> Map<String, Value> {
    pairs
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_string(), number(v))))
        .collect()
}

/// Integral values as JSON integers (bytes), others as floats.
pub fn number(v: f64) -> Value {
    if v.fract() == 0.0 && (0.0..9.0e15).contains(&v) {
        json!(v as u64)
    } else {
        json!(v)
    }
}

fn f(v: Option<u64>) -> Option<f64> {
    v.map(|x| x as f64)
}

fn sample_counters(prev: Option<&SampleRec>, s: &SampleRec, out: &mut Vec<Value>) {
    let t = s.t_ns;
    let mut push = |name: &str, a: Map<String, Value>| out.extend(counter(name, t, a));
    push("RSS (bytes)", args([("rss_bytes", f(s.rss_bytes))]));
    push(
        "RSS by kind (bytes)",
        args([
            ("rss_anon_bytes", f(s.rss_anon_bytes)),
            ("rss_file_bytes", f(s.rss_file_bytes)),
            ("rss_shmem_bytes", f(s.rss_shmem_bytes)),
        ]),
    );
    push(
        "Tree CPU (% of one core)",
        args([("cpu_percent", prev.and_then(|p| tree_cpu_percent(p, s)))]),
    );
    push(
        "System CPU (% of all cores)",
        args([("system_cpu_percent", s.system_cpu_percent)]),
    );
    push(
        "System memory used (bytes)",
        args([("mem_used_bytes", f(s.mem_used_bytes))]),
    );
    for g in &s.gpus {
        gpu_counters(g, t, out);
    }
}

fn gpu_counters(g: &GpuRec, t: u64, out: &mut Vec<Value>) {
    let i = g.index;
    let mut push = |name: String, a: Map<String, Value>| out.extend(counter(&name, t, a));
    push(
        format!("GPU{i} memory (bytes)"),
        args([
            ("vram_used_bytes", g.num("vram_used_bytes")),
            ("gtt_used_bytes", g.num("gtt_used_bytes")),
        ]),
    );
    push(
        format!("GPU{i} busy (%)"),
        args([
            ("gpu_busy_percent", g.num("gpu_busy_percent")),
            ("mem_busy_percent", g.num("mem_busy_percent")),
        ]),
    );
    push(
        format!("GPU{i} temperature (C)"),
        args([
            ("temp_edge_c", g.num("temp_edge_c")),
            ("temp_junction_c", g.num("temp_junction_c")),
            ("temp_mem_c", g.num("temp_mem_c")),
        ]),
    );
    push(
        format!("GPU{i} power (W)"),
        args([("power_w", g.num("power_w"))]),
    );
}

fn event_instant(e: &TreeEvent) -> Option<Value> {
    Some(match e {
        TreeEvent::Fork {
            t_ns,
            pid,
            parent,
            comm,
        } => instant(
            format!("fork {pid} ({comm})"),
            *t_ns,
            "t",
            json!({"pid": pid, "parent": parent, "comm": comm}),
        ),
        TreeEvent::Exec {
            t_ns,
            pid,
            comm,
            filename,
        } => instant(
            format!("exec {pid} {filename}"),
            *t_ns,
            "t",
            json!({"pid": pid, "comm": comm, "filename": filename}),
        ),
        TreeEvent::Exit { t_ns, pid, comm } => instant(
            format!("exit {pid} ({comm})"),
            *t_ns,
            "t",
            json!({"pid": pid, "comm": comm}),
        ),
        // Throttled progress marks; the RSS counter shows the same curve.
        TreeEvent::Peak { .. } => return None,
        TreeEvent::SafetyBreach {
            t_ns,
            metric,
            value,
            limit,
            gpu,
        } => instant(
            format!("safety breach: {metric}"),
            *t_ns,
            "g",
            json!({"metric": metric, "value": value, "limit": limit, "gpu": gpu}),
        ),
    })
}

fn summary_peaks(summary: &Value, out: &mut Vec<Value>) {
    let u = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64);
    if let Some(rss) = summary.get("rss") {
        if let (Some(b), Some(t)) = (u(rss, "peak_bytes"), u(rss, "peak_t_ns")) {
            out.push(instant(
                "peak RSS".into(),
                t,
                "g",
                json!({"rss_bytes": b, "method": rss.get("method")}),
            ));
        }
    }
    if let Some(m) = summary.get("system_memory") {
        if let (Some(b), Some(t)) = (u(m, "used_peak_bytes"), u(m, "used_peak_t_ns")) {
            out.push(instant(
                "peak system memory used".into(),
                t,
                "g",
                json!({"mem_used_bytes": b}),
            ));
        }
    }
    for (n, g) in summary
        .get("gpus")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let i = u(g, "index").unwrap_or(n as u64);
        if let (Some(b), Some(t)) = (
            u(g, "usable_used_peak_bytes"),
            u(g, "usable_used_peak_t_ns"),
        ) {
            out.push(instant(
                format!("peak GPU{i} usable memory used"),
                t,
                "g",
                json!({"usable_used_bytes": b}),
            ));
        }
    }
}

fn num(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(Value::as_f64)
}

fn span(name: String, tid: u32, ts: f64, dur: f64, args: Value) -> Value {
    json!({"ph": "X", "name": name, "ts": ts, "dur": dur, "pid": PID_PROBE, "tid": tid,
        "args": args})
}

/// Probe spans laid end to end from t = 0 (a probe record has durations, not start times):
/// load, then each round, with its requests (and their time to first token) inside it.
fn probe_spans(probes: &[Value], out: &mut Vec<Value>) {
    let mut cursor_us = 0.0;
    for (p, probe) in probes.iter().enumerate() {
        if let Some(load) = num(probe, "load_ms") {
            let outcome = probe.get("outcome").cloned().unwrap_or(Value::Null);
            out.push(span(
                format!("probe {p}: load"),
                1,
                cursor_us,
                load * 1000.0,
                json!({"load_ms": load, "outcome": outcome}),
            ));
            cursor_us += load * 1000.0;
        }
        let rounds = probe.get("rounds").and_then(Value::as_array);
        let samples = probe.get("samples").and_then(Value::as_array);
        for (r, round) in rounds.into_iter().flatten().enumerate() {
            let wall = num(round, "wall_ms").unwrap_or(0.0) * 1000.0;
            out.push(span(
                format!("probe {p}: round {r}"),
                1,
                cursor_us,
                wall,
                round.clone(),
            ));
            let in_round = samples
                .into_iter()
                .flatten()
                .filter(|s| s.get("round").and_then(Value::as_u64) == Some(r as u64));
            request_spans(in_round, cursor_us, out);
            cursor_us += wall;
        }
    }
}

/// A round's requests from its start, each on a track of its own, with its time to first
/// token.
fn request_spans<'a>(
    requests: impl Iterator<Item = &'a Value>,
    start_us: f64,
    out: &mut Vec<Value>,
) {
    for (k, s) in requests.enumerate() {
        let tid = 10 + k as u32;
        if let Some(e2e) = num(s, "e2e_ms") {
            let a = json!({"outcome": s.get("outcome"), "e2e_ms": e2e,
                "ttft_ms": s.get("ttft_ms"), "output_tokens": s.get("output_tokens"),
                "decode_tokens_per_s": s.get("decode_tokens_per_s")});
            out.push(span("request".into(), tid, start_us, e2e * 1000.0, a));
        }
        if let Some(ttft) = num(s, "ttft_ms") {
            out.push(span(
                "time to first token".into(),
                tid,
                start_us,
                ttft * 1000.0,
                json!({"ttft_ms": ttft}),
            ));
        }
    }
}

fn target_name(trace: &Trace) -> String {
    let t = &trace.header.target;
    if let Some(cmd) = t.get("command").and_then(Value::as_array) {
        let words: Vec<&str> = cmd.iter().filter_map(Value::as_str).collect();
        return format!("o3 record: {}", words.join(" "));
    }
    match t.get("pid").and_then(Value::as_u64) {
        Some(pid) => format!("o3 record: pid {pid}"),
        None => "o3 trace".into(),
    }
}

/// The trace as Chrome trace-event JSON, one event per line.
pub fn perfetto(trace: &Trace) -> Vec<u8> {
    let mut ev = vec![
        meta("process_name", PID_RECORDING, 0, &target_name(trace)),
        meta("thread_name", PID_RECORDING, TID_SAMPLES, "samples"),
        meta("thread_name", PID_RECORDING, TID_EVENTS, "events"),
    ];
    let mut prev: Option<&SampleRec> = None;
    for s in &trace.samples {
        sample_counters(prev, s, &mut ev);
        prev = Some(s);
    }
    ev.extend(trace.events.iter().filter_map(event_instant));
    if let Some(summary) = &trace.summary {
        summary_peaks(summary, &mut ev);
    }
    if !trace.probes.is_empty() {
        ev.push(meta(
            "process_name",
            PID_PROBE,
            0,
            "o3 probe (spans laid end to end)",
        ));
        ev.push(meta("thread_name", PID_PROBE, 1, "load and rounds"));
        probe_spans(&trace.probes, &mut ev);
    }
    let mut out = String::from("{\"traceEvents\":[\n");
    for (i, e) in ev.iter().enumerate() {
        if i > 0 {
            out.push_str(",\n");
        }
        out.push_str(&e.to_string());
    }
    out.push_str("\n],\"displayTimeUnit\":\"ms\"}\n");
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn every_event_has_ph_pid_and_ts_except_metadata() {
        let text = concat!(
            r#"{"type":"header","schema_version":1,"target":{"command":["x"]},"gpus":[]}"#,
            "\n",
            r#"{"type":"sample","t_ns":1000,"rss_bytes":4096,"cpu_ns":0}"#,
            "\n",
            r#"{"type":"sample","t_ns":2000,"rss_bytes":8192,"cpu_ns":500,"gpus":[{"index":0,"temp_edge_c":50.0}]}"#,
            "\n",
            r#"{"type":"event","event":"safety_breach","t_ns":2000,"metric":"ram","value":90.0,"limit":85.0,"gpu":null}"#,
            "\n",
            r#"{"type":"probe","outcome":"ok","load_ms":2.0,"rounds":[{"wall_ms":3.0}],"samples":[{"round":0,"e2e_ms":3.0,"ttft_ms":1.0}]}"#,
            "\n"
        );
        let t = crate::trace::read::parse(text, Path::new("t")).unwrap();
        let v: Value = serde_json::from_slice(&perfetto(&t)).unwrap();
        assert_eq!(v["displayTimeUnit"], "ms");
        let evs = v["traceEvents"].as_array().unwrap();
        for e in evs {
            assert!(e["ph"].is_string() && e["pid"].is_u64(), "{e}");
            assert!(e["ph"] == "M" || e["ts"].is_number(), "{e}");
        }
        let cpu = evs
            .iter()
            .find(|e| e["name"] == "Tree CPU (% of one core)")
            .unwrap();
        assert_eq!(cpu["args"]["cpu_percent"], 50.0);
        assert_eq!(cpu["ts"], 2.0);
        assert!(evs.iter().any(|e| e["name"] == "GPU0 temperature (C)"));
        assert!(evs.iter().any(|e| e["name"] == "safety breach: ram"));
        let req = evs.iter().find(|e| e["name"] == "request").unwrap();
        assert_eq!(req["ph"], "X");
        assert_eq!(req["ts"], 2000.0);
        assert_eq!(req["dur"], 3000.0);
    }
}
