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
    }
}
