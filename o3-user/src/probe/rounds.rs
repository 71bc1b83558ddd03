//! The measured rounds of a probe: `concurrency` simultaneous requests per round, prompts of
//! the target length (or short ones), each request judged by the time model's limits, and what
//! each answer measured: TTFT, prefill and decode rates, whether a reused prefix really came
//! from the cache, the peaks of the server tree, and spans for the time model.

use std::time::Instant;

use crate::backend::http::{self, Streamed};
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

impl Session<'_> {
    pub fn rounds(&mut self) -> Result<(), Stop> {
        let spec = self.spec;
        let streams = spec.concurrency.max(1);
        let target = spec.target_tokens();
        let mut mode = spec.prompts;
        if mode == Prompts::ReusePrefix && !reusable(target) {
            // Too short to split into a prefix and a suffix: every request reads it whole.
            mode = Prompts::Fresh;
        }
        self.result.prompts = mode;
        self.result.prompt_tokens_target = match mode {
            Prompts::Short => 0,
            _ => target,
        };
        let mut prefixes: Vec<Option<Prefix>> = vec![None; streams as usize];
        let mut fills: Vec<Option<FillRef>> = vec![None; streams as usize];
        for round in 0..spec.samples {
            let mut reqs = Vec::with_capacity(streams as usize);
            for k in 0..streams {
                match self.prompt(mode, round, k, target, &mut prefixes[k as usize]) {
                    Some(r) => reqs.push(r),
                    None => return Err(self.tokenizer_failed()),
                }
            }
            if self.cancelled() {
                return Err(self.fail(OutcomeClass::HttpError, INTERRUPTED.into()));
            }
            let from = self.watch.as_ref().map_or(0, |w| w.now());
            let started = Instant::now();
            let streamed = self.send(&reqs, mode, streams, target)?;
            let round_ms = started.elapsed().as_secs_f64() * 1000.0;
            let to = self.watch.as_ref().map_or(0, |w| w.now());
            let peaks = self
                .watch
                .as_mut()
                .map(|w| w.peaks(from, to))
                .unwrap_or_default();
            let mut round_tokens = 0u64;
            let mut first_failure: Option<(OutcomeClass, Option<String>)> = None;
            let mut obs = Vec::new();
            for (k, (mut s, req)) in streamed.into_iter().zip(reqs).enumerate() {
                self.explain_empty_stream(&mut s, &req);
                let outcome = self.outcome(&s);
                let sample = self.sample(round, k as u32, &req, &s, outcome, &peaks, fills[k]);
                if sample.kind == SampleKind::Fill && outcome == OutcomeClass::Ok {
                    fills[k] = Some(FillRef {
                        prompt_ms: s.timings.as_ref().and_then(|t| t.prompt_ms),
                        ttft_ms: s.ttft_ms,
                    });
                }
                if outcome == OutcomeClass::Ok {
                    round_tokens += sample.output_tokens.unwrap_or(0);
                    if streams == 1 {
                        obs.extend(spans(&s, &sample, spec.config.batch));
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
                wall_ms: round_ms,
                output_tokens: round_tokens,
                output_tokens_per_s: round_tokens as f64 / round_ms.max(1e-9) * 1000.0,
            });
            if let Some((outcome, error)) = first_failure {
                // A timeout among concurrent streams is data for the concurrency stage, not
                // the end of the probe, unless the server is gone.
                let gone = self.server.as_mut().is_some_and(|l| l.exited().is_some());
                if outcome != OutcomeClass::Timeout || streams == 1 || gone {
                    self.fail(outcome, error.unwrap_or_default());
                    break;
                }
            }
        }
        self.judge_reuse();
        Ok(())
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
        let streams = spec.concurrency.max(1) as u64;
        let seed = spec
            .seed
            .wrapping_add(round as u64 * streams + k as u64 + 1);
        let count = |t: &str| self.count(t);
        let estimate = |tokens: u64| -> usize {
            ((tokens as f64 - self.fixed) / self.per_word).max(1.0) as usize
        };
        let made = |text: String, tokens: Option<usize>, kind, prefix_tokens| Req {
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
        };
        let short = |kind| {
            let text = prompt::words(&mut prompt::Rng::new(seed), SHORT_WORDS);
            let n = if self.has_tokenizer {
                Some(count(&text)?)
            } else {
                None
            };
            Some(made(text, n, kind, None))
        };
        if mode != Prompts::Short && chat_stream(k, streams as u32, spec.chat_streams) {
            // A chat turn beside the streams at depth: short, fresh each round.
            return short(SampleKind::Chat);
        }
        match mode {
            Prompts::Short => short(SampleKind::Short),
            Prompts::Fresh => {
                if self.has_tokenizer {
                    let (text, n) = prompt::fit(seed, target as usize, 1.0, count)?;
                    Some(made(text, Some(n), SampleKind::Fresh, None))
                } else {
                    let text = prompt::words(&mut prompt::Rng::new(seed), estimate(target));
                    Some(made(text, None, SampleKind::Fresh, None))
                }
            }
            Prompts::ReusePrefix => {
                let want = target - suffix_tokens(target);
                if prefix.is_none() {
                    let pseed = spec.seed ^ 0x5eed_0000_0000 ^ (k as u64 + 1);
                    *prefix = Some(if self.has_tokenizer {
                        let (text, n) = prompt::fit(pseed, want as usize, 1.0, count)?;
                        Prefix {
                            text,
                            tokens: n as u64,
                        }
                    } else {
                        Prefix {
                            text: prompt::words(&mut prompt::Rng::new(pseed), estimate(want)),
                            tokens: want,
                        }
                    });
                }
                let p = prefix.as_ref().expect("made above");
                let kind = if round == 0 {
                    SampleKind::Fill
                } else {
                    SampleKind::Cached
                };
                let cached = (kind == SampleKind::Cached).then_some(p.tokens);
                if self.has_tokenizer {
                    let (text, n) = prompt::fit_suffix(
                        &p.text,
                        p.tokens as usize,
                        seed,
                        target as usize,
                        count,
                    )?;
                    Some(made(text, Some(n), kind, cached))
                } else {
                    let n = (suffix_tokens(target) as f64 / self.per_word).max(1.0) as usize;
                    let text = format!(
                        "{}\n{}",
                        p.text,
                        prompt::words(&mut prompt::Rng::new(seed), n)
                    );
                    Some(made(text, None, kind, cached))
                }
            }
        }
    }

    /// A prompt of a guessed length would measure something else: the probe ends, saying why.
    fn tokenizer_failed(&mut self) -> Stop {
        match self.server.as_mut().and_then(server::settle) {
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
    fn send(
        &mut self,
        reqs: &[Req],
        mode: Prompts,
        streams: u32,
        target: u64,
    ) -> Result<Vec<Streamed>, Stop> {
        let spec = self.spec;
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
                &self.client,
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
        let (status, text) = self.rt.block_on(async {
            // The server closed the pooled connection of the broken stream: the first send may
            // fail on it, the retry opens a new one.
            let mut last = (0, String::new());
            for _ in 0..2 {
                match self
                    .client
                    .post(&self.driver.request_url)
                    .json(&body)
                    .timeout(limit)
                    .send()
                    .await
                {
                    Ok(r) => return (r.status().as_u16(), r.text().await.unwrap_or_default()),
                    Err(e) => last = (0, e.to_string()),
                }
            }
            last
        });
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
                server::settle(l)
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
        // Whether a cached sample reused its prefix: the server's own count where it reports
        // one; else its prompt time (Ollama), else the client's TTFT, against the fill's.
        let (cached, hit) = match (req.kind, req.prefix_tokens) {
            (SampleKind::Cached, Some(p)) => {
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
            _ => (t.cached_tokens, None),
        };
        let server_counts_cache = self.driver.backend == Backend::LlamaServer;
        // llama-server's prompt_n counts only the tokens read; Ollama's prompt_eval_count (and
        // an OpenAI usage count) include the cached ones.
        let prompt_tokens = req.tokens.or(match (server_counts_cache, t.prompt_tokens) {
            (true, Some(n)) => Some(n + t.cached_tokens.unwrap_or(0)),
            (_, n) => n,
        });
        let evaluated = if server_counts_cache {
            t.prompt_tokens
        } else {
            prompt_tokens.map(|n| n.saturating_sub(cached.unwrap_or(0)))
        };
        let server_rates = |t: &Timings| -> Option<(f64, f64)> {
            let p = evaluated? as f64 / t.prompt_ms.filter(|&ms| ms > 0.0)? * 1000.0;
            Some((p, t.decode_tokens_per_s()?))
        };
        let (prefill, decode, rates) = match server_rates(&t) {
            Some((p, d)) => (Some(p), Some(d), "server"),
            None => {
                // Client-side: prefill = tokens read / TTFT, decode = (tokens - 1) / time
                // between the first and the last token.
                let read = prompt_tokens.map(|n| n.saturating_sub(cached.unwrap_or(0)));
                let p = match (read, s.ttft_ms) {
                    (Some(n), Some(ms)) if ms > 0.0 && n > 0 => Some(n as f64 / ms * 1000.0),
                    _ => None,
                };
                let d = match (s.decode_ms, s.token_events) {
                    (Some(ms), n) if ms > 0.0 && n > 1 => Some((n - 1) as f64 / ms * 1000.0),
                    _ => None,
                };
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
            prompt_tokens,
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
