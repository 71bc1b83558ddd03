//! When to give up on a request, and why. A request that is making progress is never killed
//! for being slow: the only limits are silence and, where a server shows no progress while it
//! reads the prompt, the time model's prediction times a margin.
//!
//! - **Stalled**: once events flow (llama-server's prompt-progress events, one per batch of
//!   prompt tokens; generated tokens), a silence longer than the stall bound. The bound is
//!   `max(timeouts.stall_s, margin × the model's upper time of one event)`, so a deep,
//!   slow batch is never mistaken for a stall.
//! - **Beyond the model**: no first event within `margin × the model's upper time for the
//!   whole prompt + stall bound`: for servers without progress events (Ollama, most
//!   OpenAI-compatible servers) that is the only way a silent prefill can be judged.
//!
//! Times are seconds on a caller's clock, so the logic is tested with a fake one.

use serde::{Deserialize, Serialize};

use super::model::TimeModel;

/// The user's settings (`timeouts.stall_s`, `timeouts.margin`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Silence tolerated between events, s (a floor: deep batches get more).
    pub stall_s: f64,
    /// Multiple of the model's upper estimate before a silent request is abandoned.
    pub margin: f64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            stall_s: 60.0,
            margin: 3.0,
        }
    }
}

/// What one request is expected to do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// Prompt tokens expected from the cache, and in all.
    pub cached: u64,
    pub prompt: u64,
    /// The server's batch (tokens per progress event while reading the prompt).
    pub batch: u64,
    /// The server streams progress events while it reads the prompt.
    pub progress_events: bool,
    /// Requests sharing the server at once (their prompts are read together).
    pub streams: u32,
    /// The server may load the model inside this request (Ollama's first request), s allowed.
    pub load_s: f64,
}

/// The limits of one request.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Longest silence between events once they flow, s.
    pub stall_s: f64,
    /// Longest wait for the first event, s.
    pub first_event_s: f64,
    /// What the model expects before the first event (the prompt's upper time when the server
    /// shows no progress), s; `None` when the first event is judged by the stall bound.
    pub expected_first_s: Option<f64>,
    pub margin: f64,
}

impl Policy {
    /// Limits for a request of this shape on a server with this model.
    pub fn new(model: &TimeModel, shape: &Shape, limits: &Limits) -> Policy {
        let streams = f64::from(shape.streams.max(1));
        let depth = shape.prompt;
        // One progress event: a batch of prompt tokens at the deepest point; one token event:
        // a generated token there. Concurrent prompts share the server.
        let batch = shape.batch.clamp(1, depth.max(1));
        let per_batch = model.fill(depth.saturating_sub(batch), depth).upper_s;
        let per_token = model.decode(depth, 1).upper_s;
        let per_event = per_token.max(if shape.progress_events {
            per_batch
        } else {
            0.0
        });
        let stall_s = limits.stall_s.max(limits.margin * per_event * streams);
        if shape.progress_events {
            return Policy {
                stall_s,
                first_event_s: stall_s + shape.load_s,
                expected_first_s: None,
                margin: limits.margin,
            };
        }
        // No progress events: the whole prompt is silent. A cached prefix may be missed (a
        // sliding-window model re-reads everything), so the bound covers the full prompt.
        let first = model.fill(0, depth).plus(model.decode(depth, 1)).upper_s * streams;
        let expected = model
            .fill(shape.cached.min(depth), depth)
            .plus(model.decode(depth, 1))
            .expected_s
            * streams;
        Policy {
            stall_s,
            first_event_s: limits.margin * first + stall_s + shape.load_s,
            expected_first_s: Some(expected),
            margin: limits.margin,
        }
    }
}

/// Why a request was abandoned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutKind {
    /// Events stopped: the server is stuck (or stopped).
    Stalled,
    /// No first event far beyond what the time model expects.
    BeyondModel,
}

/// The judgement at one moment.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Still within the limits; look again after this many seconds at the latest.
    Wait(f64),
    TimedOut(TimeoutKind, String),
}

/// Follows one request: when it started, when it last showed life.
#[derive(Debug, Clone)]
pub struct Judge {
    policy: Policy,
    started: f64,
    last_event: Option<f64>,
    events: u64,
}

impl Judge {
    pub fn new(policy: Policy, now: f64) -> Judge {
        Judge {
            policy,
            started: now,
            last_event: None,
            events: 0,
        }
    }

    /// The server showed progress (a progress event, a token, the final answer).
    pub fn event(&mut self, now: f64) {
        self.last_event = Some(now);
        self.events += 1;
    }

    pub fn verdict(&self, now: f64) -> Verdict {
        let p = &self.policy;
        match self.last_event {
            Some(t) => {
                let silent = now - t;
                if silent > p.stall_s {
                    return Verdict::TimedOut(
                        TimeoutKind::Stalled,
                        format!(
                            "stalled: no progress for {silent:.0} s (bound {:.0} s) after {} events in {:.0} s",
                            p.stall_s,
                            self.events,
                            now - self.started
                        ),
                    );
                }
                Verdict::Wait(p.stall_s - silent)
            }
            None => {
                let waited = now - self.started;
                if waited > p.first_event_s {
                    let (kind, why) = match p.expected_first_s {
                        Some(e) => (
                            TimeoutKind::BeyondModel,
                            format!(
                                "beyond the model: no answer after {waited:.0} s where the time model expects {e:.0} s (bound {:.0} s: ×{} margin on its upper estimate)",
                                p.first_event_s, p.margin
                            ),
                        ),
                        None => (
                            TimeoutKind::Stalled,
                            format!(
                                "stalled: no progress event in {waited:.0} s (bound {:.0} s)",
                                p.first_event_s
                            ),
                        ),
                    };
                    return Verdict::TimedOut(kind, why);
                }
                Verdict::Wait(p.first_event_s - waited)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::{Obs, Prior};
    use super::*;

    fn model() -> TimeModel {
        // Measured: 1000 tok/s at depth 0 halving by 8192; decode 50 tok/s, flat-ish.
        let mut m = TimeModel::new(Prior::from_size(Some(8_000_000_000), None));
        for d in [1024u64, 4096, 16384] {
            let df = d as f64;
            m.observe(&[
                Obs::Prefill {
                    from: 0,
                    to: d,
                    s: (df + df * df / (2.0 * 8192.0)) / 1000.0,
                    batch: None,
                },
                Obs::Decode {
                    depth: d,
                    tokens: 50,
                    s: 1.0,
                },
            ]);
        }
        m
    }

    fn shape(progress: bool) -> Shape {
        Shape {
            cached: 0,
            prompt: 32_768,
            batch: 2048,
            progress_events: progress,
            streams: 1,
            load_s: 0.0,
        }
    }

    #[test]
    fn a_progressing_request_is_never_cut_however_long_it_runs() {
        let limits = Limits {
            stall_s: 5.0,
            margin: 3.0,
        };
        let p = Policy::new(&model(), &shape(true), &limits);
        let mut j = Judge::new(p, 0.0);
        // An event every 4 s for 10 hours of fake time.
        let mut t = 0.0;
        while t < 36_000.0 {
            t += 4.0;
            assert!(matches!(j.verdict(t), Verdict::Wait(_)), "cut at {t}");
            j.event(t);
        }
    }

    #[test]
    fn silence_after_events_is_a_stall_within_the_bound() {
        let limits = Limits {
            stall_s: 5.0,
            margin: 3.0,
        };
        let p = Policy::new(&model(), &shape(true), &limits);
        // One batch of 2048 at 32K: (2048 + (32768² − 30720²)/16384)/1000 ≈ 9.9 s expected;
        // its upper bound times the margin exceeds the 5 s floor.
        assert!(p.stall_s > 3.0 * 9.0, "{p:?}");
        let mut j = Judge::new(p, 100.0);
        j.event(110.0);
        match j.verdict(110.0 + p.stall_s - 1.0) {
            Verdict::Wait(w) => assert!((w - 1.0).abs() < 1e-9, "{w}"),
            v => panic!("{v:?}"),
        }
        match j.verdict(110.0 + p.stall_s + 0.5) {
            Verdict::TimedOut(TimeoutKind::Stalled, why) => {
                assert!(why.starts_with("stalled: no progress for"), "{why}");
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn a_silent_server_is_judged_against_the_model() {
        let limits = Limits {
            stall_s: 5.0,
            margin: 3.0,
        };
        let m = model();
        let p = Policy::new(&m, &shape(false), &limits);
        let full = m.fill(0, 32_768).plus(m.decode(32_768, 1));
        assert!((p.expected_first_s.unwrap() - full.expected_s).abs() < 1e-9);
        assert!(p.first_event_s >= 3.0 * full.upper_s);
        let j = Judge::new(p, 0.0);
        // Twice the expected time is fine; past the bound it is beyond the model.
        assert!(matches!(j.verdict(2.0 * full.expected_s), Verdict::Wait(_)));
        match j.verdict(p.first_event_s + 1.0) {
            Verdict::TimedOut(TimeoutKind::BeyondModel, why) => {
                assert!(why.starts_with("beyond the model"), "{why}");
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn a_cached_prompt_still_allows_a_full_reread_and_streams_share_the_server() {
        let limits = Limits::default();
        let m = model();
        let cached = Shape {
            cached: 32_000,
            ..shape(false)
        };
        let one = Policy::new(&m, &cached, &limits);
        // Expected only the suffix, bound for the whole prompt.
        assert!(one.expected_first_s.unwrap() < m.fill(0, 32_768).expected_s / 10.0);
        assert!(one.first_event_s >= 3.0 * m.fill(0, 32_768).upper_s);
        let four = Policy::new(
            &m,
            &Shape {
                streams: 4,
                ..cached
            },
            &limits,
        );
        assert!(four.first_event_s > 3.9 * (one.first_event_s - one.stall_s) + four.stall_s);
    }

    #[test]
    fn the_stall_floor_holds_for_fast_servers_and_load_time_is_added() {
        let limits = Limits {
            stall_s: 60.0,
            margin: 3.0,
        };
        let mut s = shape(true);
        s.prompt = 100;
        s.load_s = 30.0;
        let p = Policy::new(&model(), &s, &limits);
        assert_eq!(p.stall_s, 60.0);
        assert_eq!(p.first_event_s, 90.0);
        let j = Judge::new(p, 0.0);
        match j.verdict(91.0) {
            Verdict::TimedOut(TimeoutKind::Stalled, why) => {
                assert!(why.contains("no progress event in 91 s"), "{why}");
            }
            v => panic!("{v:?}"),
        }
    }
}
