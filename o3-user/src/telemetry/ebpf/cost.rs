//! The kernel programs' own cost, without timing every call.
//!
//! BPF run-time statistics time each program call with two clock reads. On a VM those reads
//! cost more than o3's programs themselves: with statistics on, page-fault-heavy work ran
//! 10 to 15 points slower on this project's CI machine (`o3-workload faults` under `o3 record`,
//! statistics on for the whole run against off, five runs each). So the programs
//! count their calls (a per-CPU counter, no clock), and o3 turns the statistics on only in
//! short windows: the time per call measured there, times all calls counted, is the estimate.

use std::time::Duration;

/// Statistics are on for `WINDOW` out of every `PERIOD`, the first window from the start.
pub const WINDOW: Duration = Duration::from_millis(100);
pub const PERIOD: Duration = Duration::from_secs(2);

/// What one program's windows measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sampled {
    /// Run time and runs inside windows.
    pub ns: u64,
    pub runs: u64,
}

/// When the statistics should be on, given the start of the recording.
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    pub start_ns: u64,
    pub window_ns: u64,
    pub period_ns: u64,
}

impl Windows {
    pub fn new(start_ns: u64) -> Windows {
        Windows {
            start_ns,
            window_ns: WINDOW.as_nanos() as u64,
            period_ns: PERIOD.as_nanos() as u64,
        }
    }

    /// Whether `now_ns` falls in a window.
    pub fn open_at(&self, now_ns: u64) -> bool {
        now_ns.saturating_sub(self.start_ns) % self.period_ns < self.window_ns
    }
}

/// Estimated run time (ns) of all calls: each program's calls at its own sampled time per
/// call; a program never seen in a window gets the mean of all that were.
pub fn estimate(per_prog: &[(Sampled, u64)]) -> u64 {
    let (ns, runs) = per_prog
        .iter()
        .fold((0u64, 0u64), |(n, r), (s, _)| (n + s.ns, r + s.runs));
    let mean = if runs > 0 {
        ns as f64 / runs as f64
    } else {
        0.0
    };
    per_prog
        .iter()
        .map(|(s, calls)| {
            let per_call = if s.runs > 0 {
                s.ns as f64 / s.runs as f64
            } else {
                mean
            };
            (per_call * *calls as f64).round() as u64
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_open_for_their_length_each_period() {
        let w = Windows::new(1_000);
        assert!(w.open_at(1_000));
        assert!(w.open_at(1_000 + 99_999_999));
        assert!(!w.open_at(1_000 + 100_000_000));
        assert!(!w.open_at(1_000 + 1_999_999_999));
        assert!(w.open_at(1_000 + 2_000_000_000));
        assert!(
            w.open_at(0),
            "a clock read before the start counts as the start"
        );
    }

    #[test]
    fn estimate_scales_each_programs_sampled_cost_to_all_its_calls() {
        let rss = Sampled {
            ns: 1_000,
            runs: 10,
        }; // 100 ns per call
        let switch = Sampled { ns: 400, runs: 2 }; // 200 ns per call
        assert_eq!(estimate(&[(rss, 1_000), (switch, 50)]), 100_000 + 10_000);
        // Never sampled: the mean of the sampled ones, (1000 + 400) / 12 per call.
        let exec = Sampled::default();
        assert_eq!(estimate(&[(rss, 0), (switch, 0), (exec, 12)]), 1_400);
        assert_eq!(
            estimate(&[(exec, 5)]),
            0,
            "nothing sampled: nothing to scale"
        );
    }
}
