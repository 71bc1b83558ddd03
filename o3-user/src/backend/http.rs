//! One streamed request, timed on the client: time to first token from sending the request,
//! end-to-end latency, prompt-progress events, and every event parsed by the backend's own line
//! parser. Failures come back classified, never as an error that ends the run; a request is
//! abandoned only when it stalls or goes far beyond the time model (`crate::timing`).

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;

use super::classify;
use super::{OutcomeClass, PromptProgress, ProtocolError, StreamEvent, Timings};
use crate::timing::{Judge, Policy, TimeoutKind, Verdict};

/// A backend's line parser (NDJSON or SSE).
pub type LineParser = fn(&str) -> Result<Option<StreamEvent>, ProtocolError>;

/// What one streamed request gave.
#[derive(Debug, Clone, Serialize)]
pub struct Streamed {
    pub outcome: OutcomeClass,
    /// From sending the request to the first generated text, ms.
    pub ttft_ms: Option<f64>,
    pub e2e_ms: f64,
    /// Text events received (≈ tokens for servers that stream one token per event).
    pub token_events: u64,
    /// Time from the first to the last token event, ms (client-side decode time).
    pub decode_ms: Option<f64>,
    pub text: String,
    pub timings: Option<Timings>,
    pub status: Option<u16>,
    /// The error text (server body, stream error, or transport error).
    pub error: Option<String>,
    /// Prompt-progress events, each with the client's time since sending, ms.
    pub progress: Vec<(PromptProgress, f64)>,
    /// Why the request was abandoned, when it timed out.
    pub timeout: Option<TimeoutKind>,
}

impl Streamed {
    fn failed(
        outcome: OutcomeClass,
        started: Instant,
        status: Option<u16>,
        error: String,
    ) -> Streamed {
        Streamed {
            outcome,
            ttft_ms: None,
            e2e_ms: started.elapsed().as_secs_f64() * 1000.0,
            token_events: 0,
            decode_ms: None,
            text: String::new(),
            timings: None,
            status,
            error: Some(error),
            progress: Vec::new(),
            timeout: None,
        }
    }

    fn timed_out(mut self, kind: TimeoutKind, why: String, started: Instant) -> Streamed {
        self.outcome = OutcomeClass::Timeout;
        self.timeout = Some(kind);
        self.error = Some(why);
        self.e2e_ms = started.elapsed().as_secs_f64() * 1000.0;
        self
    }
}

/// Most progress events kept per request (a deep prompt read in small batches sends
/// thousands; every other one is dropped when full, so the span stays covered).
const MAX_PROGRESS: usize = 512;

/// Awaits `fut` while the judge allows; the judge's verdict when it runs out.
async fn within<F: std::future::Future>(
    judge: &Judge,
    started: Instant,
    fut: F,
) -> Result<F::Output, (TimeoutKind, String)> {
    tokio::pin!(fut);
    loop {
        let now = started.elapsed().as_secs_f64();
        match judge.verdict(now) {
            Verdict::TimedOut(kind, why) => return Err((kind, why)),
            Verdict::Wait(w) => {
                // Wake at the bound (plus a hair, so the verdict is past it).
                let nap = Duration::from_secs_f64(w.max(0.0) + 0.01);
                tokio::select! {
                    out = &mut fut => return Ok(out),
                    _ = tokio::time::sleep(nap) => {}
                }
            }
        }
    }
}

/// POSTs `body` to `url` and reads the streamed answer line by line with `parse`. The request
/// lives as long as it makes progress: `policy` bounds only the silence before the first event
/// and between events (see [`crate::timing::deadline`]).
pub async fn stream(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    parse: LineParser,
    policy: Policy,
) -> Streamed {
    let started = Instant::now();
    let mut judge = Judge::new(policy, 0.0);
    let resp = match within(&judge, started, client.post(url).json(body).send()).await {
        Err((kind, why)) => {
            return Streamed::failed(OutcomeClass::Timeout, started, None, String::new())
                .timed_out(kind, why, started)
        }
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            // Connection refused/reset: the server is gone or never listened.
            return Streamed::failed(OutcomeClass::Crashed, started, None, e.to_string());
        }
    };
    let status = resp.status().as_u16();
    if !resp.status().is_success() {
        let text = match within(&judge, started, resp.text()).await {
            Ok(t) => t.unwrap_or_default(),
            Err(_) => String::new(),
        };
        return Streamed::failed(
            classify::classify_http(status, &text),
            started,
            Some(status),
            text,
        );
    }
    let mut out = Streamed {
        outcome: OutcomeClass::Ok,
        ttft_ms: None,
        e2e_ms: 0.0,
        token_events: 0,
        decode_ms: None,
        text: String::new(),
        timings: None,
        status: Some(status),
        error: None,
        progress: Vec::new(),
        timeout: None,
    };
    let mut first_token: Option<Instant> = None;
    let mut last_token: Option<Instant> = None;
    let mut pending = Vec::new();
    let mut bytes = resp.bytes_stream();
    let mut done = false;
    'read: loop {
        let chunk = match within(&judge, started, bytes.next()).await {
            Err((kind, why)) => return out.timed_out(kind, why, started),
            Ok(None) => break,
            Ok(Some(c)) => c,
        };
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                out.outcome = OutcomeClass::Crashed;
                out.error = Some(format!("stream broke: {e}"));
                break;
            }
        };
        pending.extend_from_slice(&chunk);
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\r', '\n']);
            let now = Instant::now();
            let since = (now - started).as_secs_f64();
            match parse(line) {
                Ok(None) => {}
                Ok(Some(StreamEvent::Progress(p))) => {
                    judge.event(since);
                    if out.progress.len() >= MAX_PROGRESS {
                        let mut k = 0;
                        out.progress.retain(|_| {
                            k += 1;
                            k % 2 == 0
                        });
                    }
                    out.progress.push((p, since * 1000.0));
                }
                Ok(Some(StreamEvent::Token(t))) => {
                    judge.event(since);
                    if first_token.is_none() && !t.is_empty() {
                        first_token = Some(now);
                        out.ttft_ms = Some(since * 1000.0);
                    }
                    last_token = Some(now);
                    out.token_events += 1;
                    out.text.push_str(&t);
                }
                Ok(Some(StreamEvent::Done(t))) => {
                    judge.event(since);
                    match out.timings.as_mut() {
                        Some(old) => old.merge(t),
                        None => out.timings = Some(t),
                    }
                    done = true;
                }
                Ok(Some(StreamEvent::Error(e))) => {
                    out.outcome = if classify::is_oom(&e) {
                        OutcomeClass::Oom
                    } else if classify::is_context_exceeded(400, &e) {
                        OutcomeClass::ContextExceeded
                    } else {
                        OutcomeClass::HttpError
                    };
                    out.error = Some(e);
                    break 'read;
                }
                Err(e) => {
                    out.outcome = OutcomeClass::HttpError;
                    out.error = Some(e.to_string());
                    break 'read;
                }
            }
        }
    }
    if out.outcome == OutcomeClass::Ok && !done {
        // The stream ended without its final object: the server went away mid-answer.
        out.outcome = OutcomeClass::Crashed;
        out.error
            .get_or_insert_with(|| "the stream ended before its final message".into());
    }
    if let (Some(a), Some(b)) = (first_token, last_token) {
        out.decode_ms = Some((b - a).as_secs_f64() * 1000.0);
    }
    out.e2e_ms = started.elapsed().as_secs_f64() * 1000.0;
    out
}
