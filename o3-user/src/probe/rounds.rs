//! The measured rounds of a probe: `concurrency` simultaneous requests per round, prompts of
//! the target length (or short ones), each request judged by the time model's limits, and what
//! each answer measured: TTFT, prefill and decode rates, whether a reused prefix really came
//! from the cache, the peaks of the server tree, and spans for the time model.

use std::time::Instant;

use crate::backend::http::{self, HttpError, Streamed};
use crate::backend::{classify, OutcomeClass, Timings};
use crate::timing::{Obs, Policy, Shape};

use super::server::{self, Backend};
use super::session::{Session, Stop};
use super::{
    chat_stream, prompt, reusable, suffix_tokens, Peaks, Prompts, Round, SampleKind, SampleResult,
    INTERRUPTED,
};

/// Words of a short prompt (`Prompts::Short`).
const SHORT_WORDS: usize = 64;

/// A cached sample reused its prefix when the server served at least this share of it from
/// its cache (or, for a server that does not say, read the prompt in under half the fill's
/// time).
const HIT_SHARE: f64 = 0.9;

/// One request's prompt.
struct Req {
    seed: u64,
    text: String,
    /// Counted by the server's tokenizer.
    tokens: Option<u64>,
    source: &'static str,
    kind: SampleKind,
    /// For a `cached` request: the prefix's tokens.
    prefix_tokens: Option<u64>,
}

/// A stream's prefix (`Prompts::ReusePrefix`).
#[derive(Clone)]
struct Prefix {
    text: String,
    tokens: u64,
}

/// What a stream's fill measured, to judge its cached samples by.
#[derive(Clone, Copy)]
struct FillRef {
    prompt_ms: Option<f64>,
    ttft_ms: Option<f64>,
}

/// One round as sent: each stream's answer, the round's wall time, the server tree's peaks.
struct Measured {
    streamed: Vec<Streamed>,
    wall_ms: f64,
    peaks: Peaks,
}

/// The first failed request of a round: its outcome and error.
type Failure = (OutcomeClass, Option<String>);

impl Req {
    fn new(
        seed: u64,
        text: String,
        tokens: Option<usize>,
        kind: SampleKind,
        prefix_tokens: Option<u64>,
    ) -> Req {
        Req {
            seed,
            text,
            tokens: tokens.map(|n| n as u64),
            source: if tokens.is_some() {
                "server_tokenizer"
            } else {
                "estimate"
            },
            kind,
            prefix_tokens,
        }
    }
}

impl Session<'_> {
    pub fn rounds(&mut self) -> Result<(), Stop> {
        let spec = self.spec;
        let streams = spec.concurrency.max(1) as usize;
        let target = spec.target_tokens();
        let mode = self.prompt_mode(target);
        let mut prefixes: Vec<Option<Prefix>> = vec![None; streams];
        let mut fills: Vec<Option<FillRef>> = vec![None; streams];
        for round in 0..spec.samples {
            spec.at(|p| p.sample(round, spec.samples));
            let reqs = self.round_prompts(mode, round, target, &mut prefixes)?;
            if self.cancelled() {
                return Err(self.fail(OutcomeClass::HttpError, INTERRUPTED.into()));
            }
            let measured = self.measure(&reqs, mode, target)?;
            let failure = self.record(round, measured, reqs, &mut fills);
            if self.ends_probe(failure) {
                break;
            }
        }
        self.judge_reuse();
        Ok(())
    }

    /// How the measured requests' prompts are made: as the spec asks, unless the target is too
    /// short to split into a prefix and a suffix (then every request reads it whole).
    fn prompt_mode(&mut self, target: u64) -> Prompts {
        let mut mode = self.spec.prompts;
        if mode == Prompts::ReusePrefix && !reusable(target) {
            mode = Prompts::Fresh;
        }
        self.result.prompts = mode;
        self.result.prompt_tokens_target = match mode {
            Prompts::Short => 0,
            _ => target,
        };
        mode
    }

    /// The prompt of every stream of `round`.
    fn round_prompts(
        &mut self,
        mode: Prompts,
        round: u32,
        target: u64,
        prefixes: &mut [Option<Prefix>],
    ) -> Result<Vec<Req>, Stop> {
        let mut reqs = Vec::with_capacity(prefixes.len());
        for (k, prefix) in prefixes.iter_mut().enumerate() {
            match self.prompt(mode, round, k as u32, target, prefix) {
                Some(r) => reqs.push(r),
                None => return Err(self.tokenizer_failed()),
            }
        }
        Ok(reqs)
    }

    /// Sends one round and measures it.
    fn measure(&mut self, reqs: &[Req], mode: Prompts, target: u64) -> Result<Measured, Stop> {
        let from = self.watch.as_ref().map_or(0, |w| w.now());
        let started = Instant::now();
        let streamed = self.send(reqs, mode, target)?;
        let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
        let to = self.watch.as_ref().map_or(0, |w| w.now());
        let peaks = self
            .watch
            .as_mut()
            .map(|w| w.peaks(from, to))
            .unwrap_or_default();
        Ok(Measured {
            streamed,
            wall_ms,
            peaks,
        })
    }

    /// Keeps what each request of `round` measured, the round itself, and the spans of a lone
    /// request for the time model; the round's first failure.
    fn record(
        &mut self,
        round: u32,
        m: Measured,
        reqs: Vec<Req>,
        fills: &mut [Option<FillRef>],
    ) -> Option<Failure> {
        let streams = reqs.len() as u32;
        let mut round_tokens = 0u64;
        let mut first_failure = None;
        let mut obs = Vec::new();
        for (k, (mut s, req)) in m.streamed.into_iter().zip(reqs).enumerate() {
            self.explain_empty_stream(&mut s, &req);
            let outcome = self.outcome(&s);
            let sample = self.sample(round, k as u32, &req, &s, outcome, &m.peaks, fills[k]);
            if sample.kind == SampleKind::Fill && outcome == OutcomeClass::Ok {
                fills[k] = Some(FillRef {
                    prompt_ms: s.timings.as_ref().and_then(|t| t.prompt_ms),
                    ttft_ms: s.ttft_ms,
                });
            }
            if outcome == OutcomeClass::Ok {
                round_tokens += sample.output_tokens.unwrap_or(0);
                if streams == 1 {
                    obs.extend(spans(&s, &sample, self.spec.config.batch));
                }
            } else if first_failure.is_none() {
                first_failure = Some((outcome, sample.error.clone()));
            }
            self.result.samples.push(sample);
        }
        self.model.observe(&obs);
        self.result.timing.extend(obs);
        self.result.rounds.push(Round {
            streams,
            wall_ms: m.wall_ms,
            output_tokens: round_tokens,
            output_tokens_per_s: round_tokens as f64 / m.wall_ms.max(1e-9) * 1000.0,
        });
        first_failure
    }

    /// Whether a round's failure ends the probe (the result then says why). A timeout among
    /// concurrent streams is data for the concurrency stage, not the end of the probe, unless
    /// the server is gone.
    fn ends_probe(&mut self, failure: Option<Failure>) -> bool {
        let Some((outcome, error)) = failure else {
            return false;
        };
        let alone = self.spec.concurrency.max(1) == 1;
        let gone = self.server.as_mut().is_some_and(|l| l.exited().is_some());
        if outcome != OutcomeClass::Timeout || alone || gone {
            self.fail(outcome, error.unwrap_or_default());
            return true;
        }
        false
    }

    /// The prompt of stream `k` in `round`.
    fn prompt(
        &self,
        mode: Prompts,
        round: u32,
        k: u32,
        target: u64,
        prefix: &mut Option<Prefix>,
    ) -> Option<Req> {
        let spec = self.spec;
        let streams = spec.concurrency.max(1);
        let seed = spec
            .seed
            .wrapping_add(u64::from(round) * u64::from(streams) + u64::from(k) + 1);
        if mode != Prompts::Short && chat_stream(k, streams, spec.chat_streams) {
            // A chat turn beside the streams at depth: short, fresh each round.
            return self.short_prompt(seed, SampleKind::Chat);
        }
        match mode {
            Prompts::Short => self.short_prompt(seed, SampleKind::Short),
            Prompts::Fresh => self.fresh_prompt(seed, target),
            Prompts::ReusePrefix => {
                let kind = if round == 0 {
                    SampleKind::Fill
                } else {
                    SampleKind::Cached
                };
                if prefix.is_none() {
                    *prefix = Some(self.prefix(k, target - suffix_tokens(target))?);
                }
                self.reusing_prompt(seed, kind, target, prefix.as_ref().expect("made above"))
            }
        }
    }

    /// Words for about `tokens` tokens where the server has no tokenizer.
    fn words_for(&self, tokens: u64) -> usize {
        ((tokens as f64 - self.fixed) / self.per_word).max(1.0) as usize
    }

    /// A short prompt (`Prompts::Short`, chat turns).
    fn short_prompt(&self, seed: u64, kind: SampleKind) -> Option<Req> {
        let text = prompt::words(&mut prompt::Rng::new(seed), SHORT_WORDS);
        let n = if self.has_tokenizer {
            Some(self.count(&text)?)
        } else {
            None
        };
        Some(Req::new(seed, text, n, kind, None))
    }

    /// A fresh prompt of the target length.
    fn fresh_prompt(&self, seed: u64, target: u64) -> Option<Req> {
        if self.has_tokenizer {
            let (text, n) = prompt::fit(seed, target as usize, 1.0, |t: &str| self.count(t))?;
            Some(Req::new(seed, text, Some(n), SampleKind::Fresh, None))
        } else {
            let text = prompt::words(&mut prompt::Rng::new(seed), self.words_for(target));
            Some(Req::new(seed, text, None, SampleKind::Fresh, None))
        }
    }

    /// Stream `k`'s prefix of `want` tokens, made once and reused by its every request.
    fn prefix(&self, k: u32, want: u64) -> Option<Prefix> {
        let pseed = self.spec.seed ^ 0x5eed_0000_0000 ^ (u64::from(k) + 1);
        Some(if self.has_tokenizer {
            let (text, n) = prompt::fit(pseed, want as usize, 1.0, |t: &str| self.count(t))?;
            Prefix {
                text,
                tokens: n as u64,
            }
        } else {
            Prefix {
                text: prompt::words(&mut prompt::Rng::new(pseed), self.words_for(want)),
                tokens: want,
            }
        })
    }

    /// The stream's prefix with a fresh suffix, the whole of the target length: a fill (the
    /// first request of the stream) or a cached request.
    fn reusing_prompt(&self, seed: u64, kind: SampleKind, target: u64, p: &Prefix) -> Option<Req> {
        let cached = (kind == SampleKind::Cached).then_some(p.tokens);
        if self.has_tokenizer {
            let count = |t: &str| self.count(t);
            let (text, n) =
                prompt::fit_suffix(&p.text, p.tokens as usize, seed, target as usize, count)?;
            Some(Req::new(seed, text, Some(n), kind, cached))
        } else {
            let n = (suffix_tokens(target) as f64 / self.per_word).max(1.0) as usize;
            let suffix = prompt::words(&mut prompt::Rng::new(seed), n);
            let text = format!("{}\n{suffix}", p.text);
            Some(Req::new(seed, text, None, kind, cached))
        }
    }

    /// A prompt of a guessed length would measure something else: the probe ends, saying why.
    fn tokenizer_failed(&mut self) -> Stop {
        match self
            .server
            .as_mut()
            .and_then(|l| server::settle(l.as_mut()))
        {
            Some(exit) => {
                self.result.server_exit = Some(format!("{exit:?}"));
                self.fail(
                    OutcomeClass::Crashed,
                    format!("the server exited ({exit:?})"),
                )
            }
            // The tokenizer answers: the words could not be fitted to the target.
            None if self.count("a b c").is_some() => {
                let target = self.spec.target_tokens();
                self.fail(
                    OutcomeClass::HttpError,
                    format!(
                        "no prompt of at most {target} tokens (with a fresh suffix of {}) could \
                         be made with this server's tokenizer",
                        super::suffix_tokens(target)
                    ),
                )
            }
            None => self.fail(
                OutcomeClass::HttpError,
                "the server's tokenizer stopped answering".into(),
            ),
        }
    }

    /// Sends one round's requests at once, each within its own limits.
    fn send(&mut self, reqs: &[Req], mode: Prompts, target: u64) -> Result<Vec<Streamed>, Stop> {
        let spec = self.spec;
        let streams = reqs.len() as u32;
        let cfg = &spec.config;
        let slots = cfg.parallel.unwrap_or(1);
        let jobs: Vec<(serde_json::Value, Policy)> = reqs
            .iter()
            .enumerate()
            .map(|(k, r)| {
                let slot = (mode == Prompts::ReusePrefix && (k as u32) < slots).then_some(k as u32);
                let body = self
                    .driver
                    .body(cfg, &r.text, spec.output_tokens, r.seed as u32, slot);
                let shape = Shape {
                    cached: r.prefix_tokens.unwrap_or(0),
                    prompt: r.tokens.unwrap_or(match r.kind {
                        SampleKind::Short | SampleKind::Chat => SHORT_WORDS as u64 * 2,
                        _ => target,
                    }),
                    batch: cfg.batch.map_or(2048, u64::from),
                    progress_events: self.driver.progress_events(),
                    streams,
                    load_s: 0.0,
                };
                (body, Policy::new(&self.model, &shape, &spec.limits))
            })
            .collect();
        let all = futures_util::future::join_all(jobs.iter().map(|(body, policy)| {
            http::stream(
                self.http.client(),
                &self.driver.request_url,
                body,
                self.driver.parse,
                *policy,
            )
        }));
        match self.cancellable(all) {
            Some(s) => Ok(s),
            None => Err(self.fail(OutcomeClass::HttpError, INTERRUPTED.into())),
        }
    }

    /// Some servers (llama-cpp-python) answer a streamed request they reject with an empty 200
    /// stream; the same request unstreamed says why.
    fn explain_empty_stream(&mut self, s: &mut Streamed, req: &Req) {
        let alive = self.server.as_mut().is_none_or(|l| l.exited().is_none());
        if s.outcome != OutcomeClass::Crashed || s.token_events != 0 || !alive {
            return;
        }
        let mut body = self
            .driver
            .body(&self.spec.config, &req.text, 1, req.seed as u32, None);
        body["stream"] = serde_json::Value::Bool(false);
        let limit = std::time::Duration::from_secs_f64(
            Policy::new(
                &self.model,
                &Shape {
                    cached: 0,
                    prompt: req.tokens.unwrap_or(1),
                    batch: 2048,
                    progress_events: false,
                    streams: 1,
                    load_s: 0.0,
                },
                &self.spec.limits,
            )
            .first_event_s,
        );
        let post = || {
            self.http
                .client()
                .post(&self.driver.request_url)
                .json(&body)
        };
        let (status, text) = match self.http.block_on(http::send_retrying(post, limit)) {
            Ok(r) => (r.status, r.body),
            Err(HttpError::Body { status, .. }) => (status, String::new()),
            Err(e) => (0, e.to_string()),
        };
        if status >= 400 {
            s.outcome = classify::classify_http(status, &text);
            s.status = Some(status);
            s.error = Some(text);
        }
    }

    /// The request's outcome, with the server's exit and the watchdog taken into account.
    fn outcome(&mut self, s: &Streamed) -> OutcomeClass {
        let mut outcome = s.outcome;
        if let Some(l) = self.server.as_mut() {
            let exited = if s.outcome == OutcomeClass::Crashed {
                server::settle(l.as_mut())
            } else {
                l.exited()
            };
            if let Some(exit) = exited {
                outcome = classify::classify_exit(exit.code, exit.signal, &l.tail(), false);
                self.result.server_exit = Some(format!("{exit:?}"));
            }
        }
        if self.breach().is_some() {
            outcome = OutcomeClass::SafetyAbort;
        }
        outcome
    }

    /// What one request measured.
    #[allow(clippy::too_many_arguments)]
    fn sample(
        &self,
        round: u32,
        stream: u32,
        req: &Req,
        s: &Streamed,
        outcome: OutcomeClass,
        peaks: &Peaks,
        fill: Option<FillRef>,
    ) -> SampleResult {
        let t = s.timings.clone().unwrap_or_default();
        let output_tokens = t
            .predicted_tokens
            .or(Some(s.token_events))
            .filter(|_| s.token_events > 0);
        let (cached, hit) = reuse(req, s, &t, fill);
        let counts = self.counts(req, &t, cached);
        let (prefill, decode, rates) = match counts.server_rates(&t) {
            Some((p, d)) => (Some(p), Some(d), "server"),
            None => {
                let (p, d) = client_rates(s, counts.read);
                (p, d, "client")
            }
        };
        let mut error = s.error.clone();
        if let Some(b) = self.breach() {
            error = Some(b.to_string());
        }
        SampleResult {
            outcome,
            round,
            stream,
            kind: req.kind,
            prompt_tokens: counts.prompt,
            prompt_tokens_source: if req.tokens.is_some() {
                req.source
            } else if t.prompt_tokens.is_some() {
                "server_reported"
            } else {
                "estimate"
            },
            cached_tokens: cached,
            prefix_hit: hit,
            output_tokens,
            ttft_ms: s.ttft_ms,
            e2e_ms: s.e2e_ms,
            prefill_tokens_per_s: prefill,
            decode_tokens_per_s: decode,
            rates_source: rates,
            peaks: peaks.clone(),
            error,
            timeout: s.timeout,
        }
    }

    /// A request's prompt tokens, and of them those the server read (not from its cache).
    fn counts(&self, req: &Req, t: &Timings, cached: Option<u64>) -> Counts {
        // llama-server's prompt_n counts only the tokens read; Ollama's prompt_eval_count (and
        // an OpenAI usage count) include the cached ones.
        let server_counts_cache = self.driver.backend == Backend::LlamaServer;
        let prompt = req.tokens.or(match (server_counts_cache, t.prompt_tokens) {
            (true, Some(n)) => Some(n + t.cached_tokens.unwrap_or(0)),
            (_, n) => n,
        });
        let read = prompt.map(|n| n.saturating_sub(cached.unwrap_or(0)));
        Counts {
            prompt,
            read,
            evaluated: if server_counts_cache {
                t.prompt_tokens
            } else {
                read
            },
        }
    }

    /// Whether the cached samples reused their prefix; a server that re-read it is said so.
    fn judge_reuse(&mut self) {
        let judged: Vec<bool> = self
            .result
            .samples
            .iter()
            .filter(|s| s.kind == SampleKind::Cached && s.outcome == OutcomeClass::Ok)
            .filter_map(|s| s.prefix_hit)
            .collect();
        if judged.is_empty() {
            return;
        }
        let misses = judged.iter().filter(|h| !**h).count();
        self.result.prefix_reuse = Some(misses == 0);
        self.model.observe_reuse(misses == 0);
        if misses > 0 {
            self.result.notes.push(format!(
                "the server re-read the whole prompt in {misses} of {} samples meant to reuse a filled prefix (typical of sliding-window or hybrid/recurrent attention): those samples paid the full depth",
                judged.len()
            ));
        }
    }
}

/// A request's prompt tokens as counted for its rates.
struct Counts {
    prompt: Option<u64>,
    /// Read by the server: the prompt less what the sample says came from the cache.
    read: Option<u64>,
    /// Read by the server, as its own timings count them.
    evaluated: Option<u64>,
}

impl Counts {
    /// Prefill and decode rates from the server's own timings, when it gave them.
    fn server_rates(&self, t: &Timings) -> Option<(f64, f64)> {
        let p = self.evaluated? as f64 / t.prompt_ms.filter(|&ms| ms > 0.0)? * 1000.0;
        Some((p, t.decode_tokens_per_s()?))
    }
}

/// Whether a cached request reused its prefix, and its cached tokens: the server's own count
/// where it reports one; else its prompt time (Ollama), else the client's TTFT, against the
/// fill's.
fn reuse(
    req: &Req,
    s: &Streamed,
    t: &Timings,
    fill: Option<FillRef>,
) -> (Option<u64>, Option<bool>) {
    let (SampleKind::Cached, Some(p)) = (req.kind, req.prefix_tokens) else {
        return (t.cached_tokens, None);
    };
    let hit = match (t.cached_tokens, t.prompt_ms, fill) {
        (Some(c), _, _) => Some(c as f64 >= HIT_SHARE * p as f64),
        (
            None,
            Some(ms),
            Some(FillRef {
                prompt_ms: Some(f), ..
            }),
        ) => Some(ms < 0.5 * f),
        (
            None,
            None,
            Some(FillRef {
                ttft_ms: Some(f), ..
            }),
        ) => s.ttft_ms.map(|ms| ms < 0.5 * f),
        _ => None,
    };
    let cached = t
        .cached_tokens
        .or_else(|| hit.map(|h| if h { p } else { 0 }));
    (cached, hit)
}

/// Client-side rates: prefill = tokens `read` / TTFT, decode = (tokens - 1) / time between
/// the first and the last token.
fn client_rates(s: &Streamed, read: Option<u64>) -> (Option<f64>, Option<f64>) {
    let prefill = match (read, s.ttft_ms) {
        (Some(n), Some(ms)) if ms > 0.0 && n > 0 => Some(n as f64 / ms * 1000.0),
        _ => None,
    };
    let decode = match (s.decode_ms, s.token_events) {
        (Some(ms), n) if ms > 0.0 && n > 1 => Some((n - 1) as f64 / ms * 1000.0),
        _ => None,
    };
    (prefill, decode)
}

/// Spans for the time model from one answer of a lone request: the prompt read (per
/// progress event where the server sends them) and the tokens generated.
fn spans(s: &Streamed, sample: &SampleResult, batch: Option<u32>) -> Vec<Obs> {
    let mut out = Vec::new();
    let t = s.timings.clone().unwrap_or_default();
    let Some(prompt) = sample.prompt_tokens else {
        return out;
    };
    let cached = sample.cached_tokens.unwrap_or(0).min(prompt);
    let steps: Vec<_> = s.progress.iter().map(|(p, _)| *p).collect();
    let mut from_progress = false;
    for w in steps.windows(2) {
        let (a, b) = (w[0], w[1]);
        let dt = (b.time_ms - a.time_ms) / 1000.0;
        if b.processed > a.processed && dt > 0.0 {
            out.push(Obs::Prefill {
                from: a.processed,
                to: b.processed,
                s: dt,
                batch,
            });
            from_progress = true;
        }
    }
    if !from_progress {
        let secs = t
            .prompt_ms
            .map(|ms| ms / 1000.0)
            .or(s.ttft_ms.map(|ms| ms / 1000.0));
        if let Some(secs) = secs {
            out.push(Obs::Prefill {
                from: cached,
                to: prompt,
                s: secs,
                batch,
            });
        }
    }
    let decode = match (t.predicted_tokens, t.predicted_ms) {
        (Some(n), Some(ms)) if n > 0 && ms > 0.0 => Some((n, ms / 1000.0)),
        _ => match (s.decode_ms, s.token_events) {
            (Some(ms), n) if n > 1 && ms > 0.0 => Some((n - 1, ms / 1000.0)),
            _ => None,
        },
    };
    if let Some((n, secs)) = decode {
        out.push(Obs::Decode {
            depth: prompt,
            tokens: n,
            s: secs,
        });
    }
    out
}
