//! How busy the machine is from outside: the share of all CPUs that other processes use while
//! o3 is about to measure (before the run, and before each probe, when no server of o3's
//! runs). Rates and their variation measured on a busy machine reflect its load as much as
//! the configuration: o3 warns, as benchmark tools do, and the summary's notes record it.

use std::path::Path;
use std::time::Duration;

/// Share of all CPUs used by others from which o3 warns: a tenth, e.g. a busy core of ten.
pub const WARN_SHARE: f64 = 0.10;

/// Counters read at one instant: busy and total jiffies of all CPUs, o3's own CPU ticks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Counters {
    pub busy: u64,
    pub total: u64,
    pub own: u64,
}

/// `/proc/stat` and `/proc/self/stat` (utime + stime, fields 14 and 15, in the same clock
/// ticks as /proc/stat).
pub fn read(procfs: &Path) -> Option<Counters> {
    let stat = std::fs::read_to_string(procfs.join("stat")).ok()?;
    let (busy, total) = crate::telemetry::procfs::parse_stat_cpu(&stat).ok()?;
    let me = std::fs::read_to_string(procfs.join("self/stat")).ok()?;
    let s = crate::telemetry::procfs::parse_stat(&me).ok()?;
    Some(Counters {
        busy,
        total,
        own: s.utime + s.stime,
    })
}

/// Others' share of all CPUs between two readings (0 when nothing elapsed).
pub fn others_share(a: Counters, b: Counters) -> f64 {
    let total = b.total.saturating_sub(a.total);
    if total == 0 {
        return 0.0;
    }
    let busy = b.busy.saturating_sub(a.busy);
    let own = b.own.saturating_sub(a.own);
    (busy.saturating_sub(own) as f64 / total as f64).clamp(0.0, 1.0)
}

/// Others' share of all CPUs over `window` (o3 sleeps meanwhile).
pub fn measure(procfs: &Path, window: Duration) -> Option<f64> {
    let a = read(procfs)?;
    std::thread::sleep(window);
    let b = read(procfs)?;
    Some(others_share(a, b))
}

/// The warning for a share measured before the run, if it is worth one.
pub fn warning(share: f64, window: Duration) -> Option<String> {
    (share >= WARN_SHARE).then(|| {
        format!(
            "other processes use {:.0} % of the CPUs (measured over {} before the run): rates \
             and their variation will reflect them; stop them or expect wider intervals and \
             more configurations judged unstable",
            share * 100.0,
            crate::util::units::span(window.as_secs_f64())
        )
    })
}

/// The summary's note on the shares measured before each probe, if any reached
/// [`WARN_SHARE`].
pub fn note(shares: &[f64]) -> Option<String> {
    let max = shares.iter().copied().fold(0.0, f64::max);
    if max < WARN_SHARE {
        return None;
    }
    let mut sorted = shares.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let busy = shares.iter().filter(|&&s| s >= WARN_SHARE).count();
    Some(format!(
        "the machine was busy: before {busy} of {} probes other processes used at least {:.0} % \
         of the CPUs (up to {:.0} %, median {:.0} %); rates and their variation reflect that load",
        shares.len(),
        WARN_SHARE * 100.0,
        max * 100.0,
        median * 100.0
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(busy: u64, total: u64, own: u64) -> Counters {
        Counters { busy, total, own }
    }

    #[test]
    fn others_share_leaves_o3_out() {
        // 2 CPUs for 1 s at 100 ticks/s: 200 ticks; 120 busy, 20 of them o3's own.
        assert_eq!(others_share(c(0, 0, 0), c(120, 200, 20)), 0.5);
        assert_eq!(others_share(c(5, 9, 1), c(5, 9, 1)), 0.0);
        // o3 counted more than the system (different sampling instants): never negative.
        assert_eq!(others_share(c(0, 0, 0), c(10, 200, 30)), 0.0);
    }

    #[test]
    fn warnings_and_notes_only_for_a_busy_machine() {
        assert!(warning(0.05, Duration::from_secs(1)).is_none());
        let w = warning(0.35, Duration::from_secs(1)).unwrap();
        assert!(
            w.starts_with("other processes use 35 % of the CPUs (measured over 1"),
            "{w}"
        );
        assert!(note(&[0.0, 0.02, 0.05]).is_none());
        assert!(note(&[]).is_none());
        let n = note(&[0.0, 0.5, 0.2, 0.01]).unwrap();
        assert!(n.contains("before 2 of 4 probes"), "{n}");
        assert!(n.contains("up to 50 %"), "{n}");
    }

    #[test]
    fn this_machine_can_be_measured() {
        let s = measure(Path::new("/proc"), Duration::from_millis(50)).unwrap();
        assert!((0.0..=1.0).contains(&s), "{s}");
    }
}
