//! Where a probe in flight stands, for a display that redraws on its own thread: loading the
//! server, the warm-up, or measured sample i of n. The probe sets it as it goes; nothing in the
//! probe reads it.

use std::sync::atomic::{AtomicU32, Ordering};

/// The step of a probe in flight (`0`: none; `1`: loading; `2`: warm-up; `3 + i`: sample
/// `i + 1`), and its number of samples.
#[derive(Debug, Default)]
pub struct Phase {
    step: AtomicU32,
    samples: AtomicU32,
}

impl Phase {
    /// The server is being started and loads the model.
    pub fn loading(&self) {
        self.step.store(1, Ordering::Relaxed);
    }

    /// The warm-up request (it fills the prompt cache at depth where prefixes are reused).
    pub fn warm_up(&self) {
        self.step.store(2, Ordering::Relaxed);
    }

    /// Measured sample `i` (0-based) of `n`.
    pub fn sample(&self, i: u32, n: u32) {
        self.samples.store(n, Ordering::Relaxed);
        self.step.store(3 + i, Ordering::Relaxed);
    }

    /// No probe in flight.
    pub fn idle(&self) {
        self.step.store(0, Ordering::Relaxed);
    }

    /// `loading`, `warm-up`, `sample 2/3`, or `None` with no probe in flight.
    pub fn describe(&self) -> Option<String> {
        match self.step.load(Ordering::Relaxed) {
            0 => None,
            1 => Some("loading".into()),
            2 => Some("warm-up".into()),
            s => Some(format!(
                "sample {}/{}",
                s - 2,
                self.samples.load(Ordering::Relaxed)
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_step_is_said() {
        let p = Phase::default();
        assert_eq!(p.describe(), None);
        p.loading();
        assert_eq!(p.describe().as_deref(), Some("loading"));
        p.warm_up();
        assert_eq!(p.describe().as_deref(), Some("warm-up"));
        p.sample(0, 3);
        assert_eq!(p.describe().as_deref(), Some("sample 1/3"));
        p.sample(2, 3);
        assert_eq!(p.describe().as_deref(), Some("sample 3/3"));
        p.idle();
        assert_eq!(p.describe(), None);
    }
}
