//! o3's one HTTP client. [`client`] builds every `reqwest::Client` o3 uses (connect timeout,
//! user agent, no idle connection reuse); [`send`] and [`send_retrying`] are one request with
//! its whole answer; [`Blocking`] gives callers without a runtime (the probe, `o3 predict`,
//! one-off questions to a running server) a client and a runtime of their own; [`stream`] is
//! one streamed request, timed on the client.
//!
//! A stream measures time to first token from sending the request, end-to-end latency,
//! prompt-progress events, and parses every event with the backend's own line parser.
//! Failures come back classified, never as an error that ends the run; a request is abandoned
//! only when it stalls or goes far beyond the time model (`crate::timing`).

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;

use super::classify;
use super::{OutcomeClass, PromptProgress, ProtocolError, StreamEvent, Timings};
use crate::timing::{Judge, Policy, TimeoutKind, Verdict};

/// What o3 says it is.
const USER_AGENT: &str = concat!("o3/", env!("CARGO_PKG_VERSION"));

/// Longest wait for a TCP connection: servers o3 talks to are local.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// Nothing answered: refused, reset, or timed out.
    #[error("{0}")]
    Send(reqwest::Error),
    /// The server answered with `status` but its body could not be read.
    #[error("{source}")]
    Body { status: u16, source: reqwest::Error },
}

impl HttpError {
    pub fn is_timeout(&self) -> bool {
        match self {
            HttpError::Send(e) | HttpError::Body { source: e, .. } => e.is_timeout(),
            _ => false,
        }
    }
}

/// A whole answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// The client every request of o3 goes through. No idle connection reuse: llama-server closes
/// a connection after a streamed answer while advertising keep-alive, and a POST sent on it
/// fails (reqwest does not retry POSTs).
pub fn client() -> Result<reqwest::Client, HttpError> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_max_idle_per_host(0)
        .user_agent(USER_AGENT)
        .build()
        .map_err(HttpError::Client)
}

/// Sends `req` and reads its whole answer, all within `timeout`.
pub async fn send(req: reqwest::RequestBuilder, timeout: Duration) -> Result<Reply, HttpError> {
    let resp = req.timeout(timeout).send().await.map_err(HttpError::Send)?;
    let status = resp.status().as_u16();
    let body = resp
        .text()
        .await
        .map_err(|source| HttpError::Body { status, source })?;
    Ok(Reply { status, body })
}

/// As [`send`], sent once more when the first one fails other than by timing out: a server
/// may have closed the connection the first one went out on (llama-server closes idle
/// keep-alive connections, and the connection of a broken stream); the second opens a new one.
pub async fn send_retrying(
    req: impl Fn() -> reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<Reply, HttpError> {
    match send(req(), timeout).await {
        Err(HttpError::Send(e)) if !e.is_timeout() => send(req(), timeout).await,
        r => r,
    }
}

/// A client with a runtime of its own, for callers that block.
pub struct Blocking {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Blocking {
    pub fn new() -> Result<Blocking, HttpError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(HttpError::Runtime)?;
        Ok(Blocking {
            rt,
            client: client()?,
        })
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Runs `fut` to its end on this client's runtime.
    pub fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        self.rt.block_on(fut)
    }

    pub fn get(&self, url: &str, timeout: Duration) -> Result<Reply, HttpError> {
        self.block_on(send(self.client.get(url), timeout))
    }

    pub fn post_json(
        &self,
        url: &str,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<Reply, HttpError> {
        self.block_on(send(self.client.post(url).json(body), timeout))
    }
}

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
    fn new(outcome: OutcomeClass, status: Option<u16>, error: Option<String>) -> Streamed {
        Streamed {
            outcome,
            ttft_ms: None,
            e2e_ms: 0.0,
            token_events: 0,
            decode_ms: None,
            text: String::new(),
            timings: None,
            status,
            error,
            progress: Vec::new(),
            timeout: None,
        }
    }

    fn failed(
        outcome: OutcomeClass,
        started: Instant,
        status: Option<u16>,
        error: String,
    ) -> Streamed {
        let mut s = Streamed::new(outcome, status, Some(error));
        s.e2e_ms = started.elapsed().as_secs_f64() * 1000.0;
        s
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
                    () = tokio::time::sleep(nap) => {}
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
    let judge = Judge::new(policy, 0.0);
    match open(client.post(url).json(body), &judge, started).await {
        Ok(resp) => match Reader::new(resp.status().as_u16(), started, judge, parse)
            .read(resp)
            .await
        {
            Ok(reader) => reader.finish(),
            Err(timed_out) => timed_out,
        },
        Err(failed) => failed,
    }
}

/// Sends the request: its answer when the status says it streams, else what failed.
async fn open(
    req: reqwest::RequestBuilder,
    judge: &Judge,
    started: Instant,
) -> Result<reqwest::Response, Streamed> {
    let resp = match within(judge, started, req.send()).await {
        Err((kind, why)) => {
            return Err(
                Streamed::failed(OutcomeClass::Timeout, started, None, String::new())
                    .timed_out(kind, why, started),
            )
        }
        // Connection refused/reset: the server is gone or never listened.
        Ok(Err(e)) => {
            return Err(Streamed::failed(
                OutcomeClass::Crashed,
                started,
                None,
                e.to_string(),
            ))
        }
        Ok(Ok(r)) => r,
    };
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let text = match within(judge, started, resp.text()).await {
        Ok(t) => t.unwrap_or_default(),
        Err(_) => String::new(),
    };
    Err(Streamed::failed(
        classify::classify_http(status, &text),
        started,
        Some(status),
        text,
    ))
}

/// The reading of one streamed answer: its bytes split into lines, each line parsed and
/// judged.
struct Reader {
    out: Streamed,
    started: Instant,
    judge: Judge,
    parse: LineParser,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    /// The final object came.
    done: bool,
    /// Bytes after the last complete line.
    pending: Vec<u8>,
}

impl Reader {
    fn new(status: u16, started: Instant, judge: Judge, parse: LineParser) -> Reader {
        Reader {
            out: Streamed::new(OutcomeClass::Ok, Some(status), None),
            started,
            judge,
            parse,
            first_token: None,
            last_token: None,
            done: false,
            pending: Vec::new(),
        }
    }

    /// Reads the body until it ends, breaks, or carries an error; a request that timed out
    /// is over at once (`Err`, what it gave until then).
    async fn read(mut self, resp: reqwest::Response) -> Result<Reader, Streamed> {
        let mut bytes = resp.bytes_stream();
        loop {
            let chunk = match within(&self.judge, self.started, bytes.next()).await {
                Err((kind, why)) => return Err(self.out.timed_out(kind, why, self.started)),
                Ok(None) => return Ok(self),
                Ok(Some(Err(e))) => {
                    self.out.outcome = OutcomeClass::Crashed;
                    self.out.error = Some(format!("stream broke: {e}"));
                    return Ok(self);
                }
                Ok(Some(Ok(c))) => c,
            };
            self.pending.extend_from_slice(&chunk);
            if self.lines().is_break() {
                return Ok(self);
            }
        }
    }

    /// Handles every complete line received so far; `Break` when one ends the stream.
    fn lines(&mut self) -> ControlFlow<()> {
        while let Some(nl) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\r', '\n']);
            let event = (self.parse)(line);
            self.event(event, Instant::now())?;
        }
        ControlFlow::Continue(())
    }

    /// One parsed line, received at `now`.
    fn event(
        &mut self,
        event: Result<Option<StreamEvent>, ProtocolError>,
        now: Instant,
    ) -> ControlFlow<()> {
        let since = (now - self.started).as_secs_f64();
        match event {
            Ok(None) => {}
            Ok(Some(StreamEvent::Progress(p))) => {
                self.judge.event(since);
                self.progress(p, since);
            }
            Ok(Some(StreamEvent::Token(t))) => {
                self.judge.event(since);
                self.token(&t, now, since);
            }
            Ok(Some(StreamEvent::Done(t))) => {
                self.judge.event(since);
                match self.out.timings.as_mut() {
                    Some(old) => old.merge(t),
                    None => self.out.timings = Some(t),
                }
                self.done = true;
            }
            Ok(Some(StreamEvent::Error(e))) => {
                self.out.outcome = if classify::is_oom(&e) {
                    OutcomeClass::Oom
                } else if classify::is_context_exceeded(400, &e) {
                    OutcomeClass::ContextExceeded
                } else {
                    OutcomeClass::HttpError
                };
                self.out.error = Some(e);
                return ControlFlow::Break(());
            }
            Err(e) => {
                self.out.outcome = OutcomeClass::HttpError;
                self.out.error = Some(e.to_string());
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }

    fn progress(&mut self, p: PromptProgress, since: f64) {
        let kept = &mut self.out.progress;
        if kept.len() >= MAX_PROGRESS {
            let mut k = 0;
            kept.retain(|_| {
                k += 1;
                k % 2 == 0
            });
        }
        kept.push((p, since * 1000.0));
    }

    fn token(&mut self, t: &str, now: Instant, since: f64) {
        if self.first_token.is_none() && !t.is_empty() {
            self.first_token = Some(now);
            self.out.ttft_ms = Some(since * 1000.0);
        }
        self.last_token = Some(now);
        self.out.token_events += 1;
        self.out.text.push_str(t);
    }

    /// What the stream gave, with its client-side decode time and end-to-end latency.
    fn finish(self) -> Streamed {
        let mut out = self.out;
        if out.outcome == OutcomeClass::Ok && !self.done {
            // The stream ended without its final object: the server went away mid-answer.
            out.outcome = OutcomeClass::Crashed;
            out.error
                .get_or_insert_with(|| "the stream ended before its final message".into());
        }
        if let (Some(a), Some(b)) = (self.first_token, self.last_token) {
            out.decode_ms = Some((b - a).as_secs_f64() * 1000.0);
        }
        out.e2e_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    use crate::timing::{Limits, Prior, Shape, TimeModel};

    /// A server on a loopback port that answers its connections in turn: `Some(text)` is
    /// written after the request is read (then the connection closes), `None` closes the
    /// connection without an answer. The first line of each request comes back on the
    /// channel.
    fn serve(
        answers: Vec<Option<String>>,
    ) -> (String, std::sync::mpsc::Receiver<(String, Vec<String>)>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for answer in answers {
                let (c, _) = l.accept().unwrap();
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut head = Vec::new();
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    r.read_line(&mut line).unwrap();
                    let line = line.trim_end().to_string();
                    if line.is_empty() {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    head.push(line);
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                let _ = tx.send((head[0].clone(), head));
                if let Some(a) = answer {
                    (&c).write_all(a.as_bytes()).unwrap();
                }
            }
        });
        (url, rx)
    }

    fn ok(body: &str) -> Option<String> {
        Some(format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\n\r\n{body}"
        ))
    }

    fn policy() -> Policy {
        let shape = Shape {
            cached: 0,
            prompt: 16,
            batch: 512,
            progress_events: false,
            streams: 1,
            load_s: 0.0,
        };
        let limits = Limits {
            stall_s: 5.0,
            margin: 2.0,
        };
        Policy::new(
            &TimeModel::new(Prior::from_size(None, None)),
            &shape,
            &limits,
        )
    }

    #[test]
    fn a_stream_is_parsed_line_by_line_and_timed() {
        let lines = concat!(
            r#"{"response":"Hel","done":false}"#,
            "\n",
            r#"{"response":"lo","done":false}"#,
            "\n\n",
            r#"{"response":"","done":true,"prompt_eval_count":12,"eval_count":2,"eval_duration":4000000}"#,
            "\n"
        );
        let (url, seen) = serve(vec![ok(lines)]);
        let http = Blocking::new().unwrap();
        let body = serde_json::json!({ "prompt": "hi" });
        let s = http.block_on(stream(
            http.client(),
            &format!("{url}/api/generate"),
            &body,
            super::super::ollama::parse_stream_line,
            policy(),
        ));
        assert_eq!(s.outcome, OutcomeClass::Ok, "{:?}", s.error);
        assert_eq!((s.text.as_str(), s.token_events), ("Hello", 2));
        assert_eq!(s.status, Some(200));
        let t = s.timings.unwrap();
        assert_eq!((t.prompt_tokens, t.predicted_tokens), (Some(12), Some(2)));
        assert!(s.ttft_ms.unwrap() <= s.e2e_ms && s.decode_ms.is_some());
        let (first, head) = seen.recv().unwrap();
        assert_eq!(first, "POST /api/generate HTTP/1.1");
        let agent = format!("user-agent: {USER_AGENT}");
        assert!(
            head.iter().any(|h| h.to_ascii_lowercase() == agent),
            "{head:?}"
        );
    }

    #[test]
    fn a_stream_cut_before_its_final_object_is_crashed_and_an_error_status_is_classified() {
        let (url, _seen) = serve(vec![
            ok("{\"response\":\"a\",\"done\":false}\n"),
            Some(
                "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 36\r\nConnection: close\r\n\r\n{\"error\":\"CUDA error: out of memory\"}"
                    .into(),
            ),
        ]);
        let http = Blocking::new().unwrap();
        let body = serde_json::json!({});
        let go = || {
            http.block_on(stream(
                http.client(),
                &url,
                &body,
                super::super::ollama::parse_stream_line,
                policy(),
            ))
        };
        let cut = go();
        assert_eq!(cut.outcome, OutcomeClass::Crashed);
        assert_eq!(
            cut.error.as_deref(),
            Some("the stream ended before its final message")
        );
        assert_eq!(cut.token_events, 1);
        let oom = go();
        assert_eq!(oom.outcome, OutcomeClass::Oom);
        assert_eq!(oom.status, Some(500));
    }

    #[test]
    fn a_request_whose_connection_was_closed_is_sent_again() {
        let (url, seen) = serve(vec![
            None,
            Some("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".into()),
        ]);
        let http = Blocking::new().unwrap();
        let body = serde_json::json!({ "content": "a b" });
        let post = || http.client().post(&url).json(&body);
        let r = http
            .block_on(send_retrying(post, Duration::from_secs(5)))
            .unwrap();
        assert_eq!(
            r,
            Reply {
                status: 200,
                body: "ok".into()
            }
        );
        assert_eq!(seen.iter().take(2).count(), 2, "sent twice");
    }
}
