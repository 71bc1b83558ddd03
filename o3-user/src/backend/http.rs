//! One streamed request, timed on the client: time to first token from sending the request,
//! end-to-end latency, and every event parsed by the backend's own line parser. Failures come
//! back classified, never as an error that ends the run.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;

use super::classify;
use super::{OutcomeClass, ProtocolError, StreamEvent, Timings};

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
        }
    }
}

/// POSTs `body` to `url` and reads the streamed answer line by line with `parse`, within
/// `timeout` for the whole request.
pub async fn stream(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    parse: LineParser,
    timeout: Duration,
) -> Streamed {
    let started = Instant::now();
    let fut = stream_inner(client, url, body, parse, started);
    match tokio::time::timeout(timeout, fut).await {
        Ok(s) => s,
        Err(_) => Streamed::failed(
            OutcomeClass::Timeout,
            started,
            None,
            format!("no complete answer within {:.0} s", timeout.as_secs_f64()),
        ),
    }
}

async fn stream_inner(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    parse: LineParser,
    started: Instant,
) -> Streamed {
    let resp = match client.post(url).json(body).send().await {
        Ok(r) => r,
        Err(e) => {
            // Connection refused/reset: the server is gone or never listened.
            return Streamed::failed(OutcomeClass::Crashed, started, None, e.to_string());
        }
    };
    let status = resp.status().as_u16();
    if !resp.status().is_success() {
        let text = resp.text().await.unwrap_or_default();
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
    };
    let mut first_token: Option<Instant> = None;
    let mut last_token: Option<Instant> = None;
    let mut pending = Vec::new();
    let mut bytes = resp.bytes_stream();
    let mut done = false;
    'read: while let Some(chunk) = bytes.next().await {
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
            match parse(line) {
                Ok(None) => {}
                Ok(Some(StreamEvent::Token(t))) => {
                    let now = Instant::now();
                    if first_token.is_none() && !t.is_empty() {
                        first_token = Some(now);
                        out.ttft_ms = Some((now - started).as_secs_f64() * 1000.0);
                    }
                    last_token = Some(now);
                    out.token_events += 1;
                    out.text.push_str(&t);
                }
                Ok(Some(StreamEvent::Done(t))) => {
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
