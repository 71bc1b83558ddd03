//! What a run tells its user while it runs: the search's progress ([`Observer`]) and the lines
//! around it. Showing them (a bar, stderr) is the CLI's; tests collect them.

use std::sync::atomic::{AtomicU64, Ordering};

use super::search::{Eta, Observer};

/// Where a run's messages go, besides the search's own progress.
pub trait Events: Observer {
    /// Something decided for the user that they should know (`notice: …`).
    fn notice(&mut self, msg: &str);
    /// Something degraded that the results survive (`warning: …`).
    fn warning(&mut self, msg: &str);
    /// A line of the run's own story (resuming, a stop by the heat guard).
    fn say(&mut self, msg: &str);
    /// The search starts: progress is shown from here on.
    fn start(&mut self) {}
    /// The search ended: whatever showed progress is cleared.
    fn finish(&mut self) {}
    /// Where each live probe stands while it runs (loading, warm-up, sample i/n).
    fn follow(&mut self, _phase: std::sync::Arc<crate::probe::phase::Phase>) {}
}

/// What a progress display shows between redraws: times in ms since the run started, in
/// atomics so a display's own redraw thread can read them while the search writes them.
#[derive(Debug, Default)]
pub struct Clock {
    /// When the probe in flight started.
    probe_started_ms: AtomicU64,
    /// Its predicted duration.
    probe_ms: AtomicU64,
    /// Predicted work after it.
    after_ms: AtomicU64,
    /// Probe time spent before it.
    spent_ms: AtomicU64,
    /// The largest share of the work shown done, in thousandths: the bar never goes back.
    shown_permille: AtomicU64,
}

impl Clock {
    /// A probe starts at `now_ms` with the run standing at `eta`.
    pub fn set(&self, now_ms: u64, eta: &Eta) {
        let ms = |s: f64| (s.max(0.0) * 1000.0) as u64;
        self.probe_started_ms.store(now_ms, Ordering::Relaxed);
        self.probe_ms
            .store(ms(eta.probe.expected_s), Ordering::Relaxed);
        self.after_ms.store(ms(eta.after_s), Ordering::Relaxed);
        self.spent_ms.store(ms(eta.spent_s), Ordering::Relaxed);
    }

    /// (done, total, remaining) in s at `now_ms`: within a probe the remaining time falls as
    /// it runs and stops at the work after it (never grows), however long the probe overruns.
    pub fn read(&self, now_ms: u64) -> (f64, f64, f64) {
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / 1000.0;
        let elapsed = (now_ms as f64 / 1000.0 - ld(&self.probe_started_ms)).max(0.0);
        let probe = ld(&self.probe_ms);
        let left_in_probe = (probe - elapsed).max(0.0);
        let done = ld(&self.spent_ms) + elapsed.min(probe);
        let remaining = left_in_probe + ld(&self.after_ms);
        (done, done + remaining, remaining)
    }

    /// The share of the work done at `now_ms`, 0 to 1, never less than one shown before: work
    /// found on the way (a revised total) slows the bar down, it does not move it back.
    pub fn fraction(&self, now_ms: u64) -> f64 {
        let (done, total, _) = self.read(now_ms);
        let f = if total > 0.0 {
            ((done / total).clamp(0.0, 1.0) * 1000.0) as u64
        } else {
            0
        };
        let before = self.shown_permille.fetch_max(f, Ordering::Relaxed);
        before.max(f) as f64 / 1000.0
    }

    /// Seconds the probe in flight has run at `now_ms`, and its prediction.
    pub fn probe_time(&self, now_ms: u64) -> (f64, f64) {
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / 1000.0;
        let elapsed = (now_ms as f64 / 1000.0 - ld(&self.probe_started_ms)).max(0.0);
        (elapsed, ld(&self.probe_ms))
    }
}

/// Why the predicted total moved after a probe, when it moved by more than a fifth and a
/// minute: the probe's own time against its prediction (the time model is refitted to it), or
/// else what its outcome changed in the work ahead. `None` for a smaller move.
pub fn revision(
    old_total_s: f64,
    new_total_s: f64,
    probe_s: f64,
    predicted_s: f64,
    what: &str,
) -> Option<String> {
    let moved = new_total_s - old_total_s;
    if moved.abs() < 60.0 || moved.abs() < 0.2 * old_total_s {
        return None;
    }
    let span = crate::util::units::span;
    let ratio = probe_s / predicted_s.max(1e-9);
    // The time model explains a move only in its own direction: a slow probe, a longer total.
    let model_moved = (ratio > 1.5 && moved > 0.0) || (ratio < 0.67 && moved < 0.0);
    let why = if model_moved {
        format!(
            "{what} took {} where {} was predicted: the time model is refitted to it",
            span(probe_s),
            span(predicted_s)
        )
    } else {
        format!("{what} changed the work ahead")
    };
    Some(format!(
        "total revised from {} to {}: {why}",
        span(old_total_s),
        span(new_total_s)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timing::Estimate;

    #[test]
    fn remaining_time_falls_within_a_probe_and_stops_at_the_work_after_it() {
        let c = Clock::default();
        let eta = Eta {
            probe: Estimate {
                expected_s: 10.0,
                upper_s: 30.0,
            },
            after_s: 100.0,
            spent_s: 50.0,
            probes_done: 3,
        };
        c.set(1_000, &eta);
        assert_eq!(c.read(1_000), (50.0, 160.0, 110.0));
        assert_eq!(c.read(5_000), (54.0, 160.0, 106.0));
        // Overrunning its prediction: done and remaining stay where the prediction ends.
        assert_eq!(c.read(61_000), (60.0, 160.0, 100.0));
        // A clock read before the probe's start counts nothing of it.
        assert_eq!(c.read(0), (50.0, 160.0, 110.0));
        assert_eq!(c.probe_time(5_000), (4.0, 10.0));
    }

    #[test]
    fn the_bar_never_goes_back_when_work_is_found() {
        let c = Clock::default();
        let eta = |spent_s: f64, after_s: f64| Eta {
            probe: Estimate {
                expected_s: 10.0,
                upper_s: 30.0,
            },
            after_s,
            spent_s,
            probes_done: 1,
        };
        c.set(0, &eta(50.0, 40.0));
        assert_eq!(c.fraction(0), 0.5);
        // The next probe finds twice the work ahead: done/total falls to 0.25, the bar stays.
        c.set(0, &eta(50.0, 140.0));
        assert_eq!(c.read(0), (50.0, 200.0, 150.0));
        assert_eq!(c.fraction(0), 0.5);
        // And moves again once the work done passes it.
        c.set(0, &eta(150.0, 40.0));
        assert_eq!(c.fraction(0), 0.75);
    }

    #[test]
    fn a_revised_total_says_why() {
        assert_eq!(revision(600.0, 650.0, 100.0, 20.0, "validate c8192"), None);
        assert_eq!(
            revision(3600.0, 7200.0, 1800.0, 600.0, "validate c131072").as_deref(),
            Some("total revised from 60.0 min to 2.0 h: validate c131072 took 30.0 min where 10.0 min was predicted: the time model is refitted to it")
        );
        assert_eq!(
            revision(3600.0, 1800.0, 600.0, 600.0, "context c65536 (oom)").as_deref(),
            Some("total revised from 60.0 min to 30.0 min: context c65536 (oom) changed the work ahead")
        );
        // A fast probe does not explain a longer total.
        assert_eq!(
            revision(120.0, 360.0, 3.0, 10.0, "context c131072 (ok)").as_deref(),
            Some("total revised from 2.0 min to 6.0 min: context c131072 (ok) changed the work ahead")
        );
    }
}
