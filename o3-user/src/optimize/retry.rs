//! One hiccup does not move an answer: a probe that failed in a way that says nothing about
//! its configuration is run once more before its result counts.
//!
//! Transient: the server died by a signal that was not the kernel's OOM killer (the probe
//! attributes those to `oom` first), a connection that broke, an HTTP 5xx whose text names no
//! memory failure. Deterministic, never retried: OOM, load failure, context exceeded, clamping,
//! spill, timeouts (a slow configuration stays slow), the watchdog, skips. The retried probe's
//! notes say what the first attempt met; its wall time counts in the run's time.

use crate::backend::{OutcomeClass, ProbeConfig};
use crate::timing::TimeModel;

use super::journal::Raw;
use super::prober::{ProbeOutcome, ProbeRequest, Prober};

/// Why a failed probe may be a hiccup rather than its configuration's fault, or None.
/// `raw`: the probe's full result (its samples' HTTP statuses, the server's exit), if any.
pub fn transient(out: &ProbeOutcome, raw: Option<&serde_json::Value>) -> Option<String> {
    let exit = raw
        .and_then(|r| r.get("server_exit"))
        .and_then(|e| e.as_str())
        .map(|e| format!(" ({e})"))
        .unwrap_or_default();
    match out.outcome {
        OutcomeClass::Crashed => Some(format!(
            "the server died or dropped the connection{exit}: {}",
            out.error.as_deref().unwrap_or("no message")
        )),
        OutcomeClass::HttpError => {
            let status = raw
                .and_then(|r| r.get("samples"))
                .and_then(|s| s.as_array())
                .into_iter()
                .flatten()
                .filter_map(|s| s.get("status").and_then(|v| v.as_u64()))
                .find(|&s| s >= 500)?;
            Some(format!(
                "HTTP {status}: {}",
                out.error.as_deref().unwrap_or("no message")
            ))
        }
        _ => None,
    }
}

/// The first attempt of a probe run again, as its raw result keeps it.
pub(super) fn first_attempt(
    first: &ProbeOutcome,
    first_raw: Option<&serde_json::Value>,
) -> serde_json::Value {
    serde_json::json!({
        "outcome": first.outcome,
        "error": first.error,
        "wall_ms": first.wall_ms,
        "server_exit": first_raw.and_then(|r| r.get("server_exit")).cloned(),
    })
}

/// A probe run again carries its first attempt: the time it took counts in the run's time,
/// what it measured of the server's speed is still true, and the raw result keeps `entry`
/// under `key`.
pub(super) fn carry_first_attempt(
    first: ProbeOutcome,
    out: &mut ProbeOutcome,
    raw: &mut Option<serde_json::Value>,
    key: &str,
    entry: serde_json::Value,
) {
    out.wall_ms += first.wall_ms;
    let mut timing = first.timing;
    timing.append(&mut out.timing);
    out.timing = timing;
    if let Some(serde_json::Value::Object(m)) = raw.as_mut() {
        m.insert(key.into(), entry);
    }
}

/// A prober that retries a transient failure once.
pub struct Retried<P> {
    pub inner: P,
    raw: Option<serde_json::Value>,
    /// Probes retried so far.
    pub retries: u32,
}

impl<P> Retried<P> {
    pub fn new(inner: P) -> Self {
        Retried {
            inner,
            raw: None,
            retries: 0,
        }
    }
}

impl<P: Raw> Raw for Retried<P> {
    fn take_raw(&mut self) -> Option<serde_json::Value> {
        self.raw.take()
    }
}

impl<P: Prober + Raw> Prober for Retried<P> {
    fn know(&mut self, model: &TimeModel) {
        self.inner.know(model);
    }

    fn probe(&mut self, req: &ProbeRequest) -> Option<ProbeOutcome> {
        let first = self.inner.probe(req)?;
        let first_raw = self.inner.take_raw();
        let Some(why) = transient(&first, first_raw.as_ref()) else {
            self.raw = first_raw;
            return Some(first);
        };
        self.retries += 1;
        // A stop request during the retry records nothing, as for any probe.
        let mut out = self.inner.probe(req)?;
        let mut raw = self.inner.take_raw();
        out.notes.insert(
            0,
            format!(
                "retried once: the first attempt failed ({}), a failure that may be transient: \
                 {why}",
                first.outcome.name()
            ),
        );
        let entry = first_attempt(&first, first_raw.as_ref());
        carry_first_attempt(first, &mut out, &mut raw, "first_attempt", entry);
        self.raw = raw;
        Some(out)
    }

    fn fixed_by_server(&self, cfg: &ProbeConfig) -> Vec<&'static str> {
        self.inner.fixed_by_server(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optimize::prober::{Depth, Stage};
    use serde_json::json;

    fn out(class: OutcomeClass) -> ProbeOutcome {
        let mut o = ProbeOutcome::failed(class, "why");
        o.wall_ms = 1000.0;
        o
    }

    #[test]
    fn only_failures_that_say_nothing_about_the_configuration_are_transient() {
        let crashed = json!({"server_exit": "Exit { code: None, signal: Some(9) }"});
        let why = transient(&out(OutcomeClass::Crashed), Some(&crashed)).unwrap();
        assert!(why.contains("signal: Some(9)"), "{why}");
        assert!(transient(&out(OutcomeClass::Crashed), None).is_some());
        let http = |status| json!({"samples": [{"status": 200}, {"status": status}]});
        assert!(transient(&out(OutcomeClass::HttpError), Some(&http(503))).is_some());
        assert!(transient(&out(OutcomeClass::HttpError), Some(&http(400))).is_none());
        assert!(transient(&out(OutcomeClass::HttpError), None).is_none());
        for c in [
            OutcomeClass::Ok,
            OutcomeClass::Oom,
            OutcomeClass::LoadFailed,
            OutcomeClass::ContextExceeded,
            OutcomeClass::Clamped,
            OutcomeClass::CpuSpill,
            OutcomeClass::Timeout,
            OutcomeClass::SafetyAbort,
            OutcomeClass::Skipped,
        ] {
            assert!(transient(&out(c), Some(&crashed)).is_none(), "{c:?}");
        }
    }

    /// Answers from a script, one per probe.
    struct Script(Vec<ProbeOutcome>);
    impl Raw for Script {}
    impl Prober for Script {
        fn probe(&mut self, _: &ProbeRequest) -> Option<ProbeOutcome> {
            (!self.0.is_empty()).then(|| self.0.remove(0))
        }
        fn fixed_by_server(&self, _: &ProbeConfig) -> Vec<&'static str> {
            Vec::new()
        }
    }

    fn req() -> ProbeRequest {
        ProbeRequest {
            stage: Stage::Context,
            config: ProbeConfig {
                ctx: 4096,
                ..ProbeConfig::default()
            },
            depth: Depth::Load,
            rounds: 1,
            concurrency: 1,
        }
    }

    #[test]
    fn a_crash_is_retried_once_and_says_so() {
        let mut p = Retried::new(Script(vec![
            out(OutcomeClass::Crashed),
            out(OutcomeClass::Ok),
            out(OutcomeClass::Crashed),
            out(OutcomeClass::Crashed),
        ]));
        let o = p.probe(&req()).unwrap();
        assert_eq!(o.outcome, OutcomeClass::Ok);
        assert!(o.notes[0].starts_with("retried once"), "{:?}", o.notes);
        assert_eq!(o.wall_ms, 2000.0);
        // A second crash in a row counts.
        let o = p.probe(&req()).unwrap();
        assert_eq!(o.outcome, OutcomeClass::Crashed);
        assert_eq!(p.retries, 2);
        assert!(p.inner.0.is_empty());
    }

    #[test]
    fn deterministic_failures_are_not_retried() {
        let mut p = Retried::new(Script(vec![out(OutcomeClass::Oom), out(OutcomeClass::Ok)]));
        assert_eq!(p.probe(&req()).unwrap().outcome, OutcomeClass::Oom);
        assert_eq!(p.retries, 0);
        assert_eq!(p.inner.0.len(), 1);
    }
}
