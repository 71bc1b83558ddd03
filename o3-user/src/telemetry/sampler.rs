//! The sampler: one thread that owns its sources and calls them at absolute deadlines
//! (`t0 + k * interval` on CLOCK_MONOTONIC), sending each tick over a channel. A tick that
//! starts after the next deadline has passed skips the missed deadlines and counts them as late;
//! nothing is hidden by drifting the schedule.
//!
//! Ticks are sent in batches (at most `flush` apart): waking the consumer on every tick would
//! cost a cross-CPU wake-up per tick, which on a VM costs more than the tick's own work.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::{monotonic_ns, thread_cpu_ns, Sample, Source, TreeEvent};

/// Accepted sampling intervals.
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);
pub const MAX_INTERVAL: Duration = Duration::from_secs(10);

/// One tick's output.
#[derive(Debug, Clone)]
pub struct Tick {
    pub sample: Sample,
    pub events: Vec<TreeEvent>,
}

/// What the sampler measured about itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct SamplerStats {
    pub ticks: u64,
    /// Deadlines that passed before the tick for them could start.
    pub late_ticks: u64,
    /// CPU time of the sampler thread, ns.
    pub cpu_ns: u64,
    /// Longest time spent in one tick, ns.
    pub max_tick_ns: u64,
}

pub struct SamplerHandle {
    stop: Arc<AtomicBool>,
    join: JoinHandle<(Vec<Box<dyn Source>>, SamplerStats)>,
}

impl SamplerHandle {
    /// A flag that, once set, makes the sampler take one last sample and stop.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Stops (if not yet stopped) and returns the sources and the sampler's own figures. The
    /// sampler is woken at once, not at its next deadline.
    pub fn finish(self) -> (Vec<Box<dyn Source>>, SamplerStats) {
        self.stop.store(true, Ordering::SeqCst);
        self.join.thread().unpark();
        self.join.join().expect("sampler thread panicked")
    }
}

/// How often user-space sources are read. With kernel samples of the tree at `interval`, a
/// wake-up of o3 per sample is not needed: GPU readings and the watchdog (`per_tick`) still
/// want every interval, system memory alone is read every 100 ms (a wake-up costs more than
/// the read; a thread that only wakes costs ~0.2 % of a core at 100 Hz and ~2 % at 1 kHz on
/// this project's CI machine).
pub fn user_cadence(interval: Duration, kernel_ticks: bool, per_tick: bool) -> Duration {
    if kernel_ticks && !per_tick {
        interval.max(SLOW_SOURCES)
    } else {
        interval
    }
}

/// Cadence of system memory when nothing else needs user space at every interval.
pub const SLOW_SOURCES: Duration = Duration::from_millis(100);

/// Longest time ticks wait in the sampler before they are sent.
pub const FLUSH: Duration = Duration::from_millis(100);

/// Where batches of ticks go; returning false stops the sampler (the consumer is gone).
pub trait Sink: Send + 'static {
    fn send(&mut self, batch: Vec<Tick>) -> bool;
}

impl<F: FnMut(Vec<Tick>) -> bool + Send + 'static> Sink for F {
    fn send(&mut self, batch: Vec<Tick>) -> bool {
        self(batch)
    }
}

/// Starts the sampler thread. The first tick is at `t0_ns` (CLOCK_MONOTONIC); ticks are sent
/// in batches at most `flush` apart, and on stop.
pub fn spawn(
    mut sources: Vec<Box<dyn Source>>,
    interval: Duration,
    flush: Duration,
    t0_ns: u64,
    mut sink: impl Sink,
) -> SamplerHandle {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let join = std::thread::Builder::new()
        .name("o3-sampler".into())
        .spawn(move || {
            let cpu0 = thread_cpu_ns();
            let mut stats = SamplerStats::default();
            let step = interval.as_nanos() as u64;
            let flush_ns = flush.as_nanos() as u64;
            let mut deadline = t0_ns;
            let mut batch = Vec::new();
            let mut kernel = Vec::new();
            let mut last_flush = t0_ns;
            loop {
                let stopping = sleep_until(deadline, &flag);
                let now = monotonic_ns();
                // Samples the kernel took since the last wake-up come first, in time order.
                for s in sources.iter_mut() {
                    s.drain_samples(now, t0_ns, &mut kernel);
                }
                kernel.sort_by_key(|s| s.t_ns);
                batch.extend(kernel.drain(..).map(|sample| Tick {
                    sample,
                    events: Vec::new(),
                }));
                let mut tick = Tick {
                    sample: Sample {
                        t_ns: now.saturating_sub(t0_ns),
                        ..Sample::default()
                    },
                    events: Vec::new(),
                };
                for s in sources.iter_mut() {
                    s.sample(now, t0_ns, &mut tick.sample, &mut tick.events);
                }
                stats.ticks += 1;
                stats.max_tick_ns = stats.max_tick_ns.max(monotonic_ns().saturating_sub(now));
                batch.push(tick);
                if stopping || now.saturating_sub(last_flush) >= flush_ns {
                    last_flush = now;
                    if !sink.send(std::mem::take(&mut batch)) || stopping {
                        break;
                    }
                }
                deadline += step;
                let now = monotonic_ns();
                if now > deadline {
                    let missed = (now - deadline) / step + 1;
                    stats.late_ticks += missed;
                    deadline += missed * step;
                }
            }
            stats.cpu_ns = thread_cpu_ns().saturating_sub(cpu0);
            (sources, stats)
        })
        .expect("spawning the sampler thread");
    SamplerHandle { stop, join }
}

/// Sleeps until `deadline_ns` (absolute, CLOCK_MONOTONIC), or until [`SamplerHandle::finish`]
/// unparks the thread (every way to stop the sampler goes through it; a wake-up each second
/// checks `stop` anyway). Returns true when stop was requested (the caller takes a last sample
/// now).
fn sleep_until(deadline_ns: u64, stop: &AtomicBool) -> bool {
    const CHECK_NS: u64 = 1_000_000_000;
    loop {
        if stop.load(Ordering::SeqCst) {
            return true;
        }
        let now = monotonic_ns();
        if now >= deadline_ns {
            return false;
        }
        std::thread::park_timeout(Duration::from_nanos((deadline_ns - now).min(CHECK_NS)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{channel, Sender};

    fn to(tx: Sender<Vec<Tick>>) -> impl Sink {
        move |b| tx.send(b).is_ok()
    }

    /// A scripted source: counts its calls and records the times it was called at.
    struct Counter {
        calls: u64,
        stall_on: Option<u64>,
    }

    impl Source for Counter {
        fn name(&self) -> &'static str {
            "counter"
        }
        fn sample(&mut self, _now: u64, _t0: u64, out: &mut Sample, _ev: &mut Vec<TreeEvent>) {
            self.calls += 1;
            out.processes = Some(self.calls as u32);
            if self.stall_on == Some(self.calls) {
                std::thread::sleep(Duration::from_millis(55));
            }
        }
    }

    #[test]
    fn ticks_follow_absolute_deadlines_and_count_late_ones() {
        let (tx, rx) = channel();
        let src = Box::new(Counter {
            calls: 0,
            stall_on: Some(3),
        });
        let t0 = monotonic_ns();
        let h = spawn(
            vec![src],
            Duration::from_millis(10),
            Duration::ZERO,
            t0,
            to(tx),
        );
        let mut ts = Vec::new();
        while ts.len() < 8 {
            ts.extend(rx.recv().unwrap().iter().map(|t| t.sample.t_ns));
        }
        let (_, stats) = h.finish();
        // The third tick stalled 55 ms: at least 4 deadlines were skipped and counted.
        assert!(stats.late_ticks >= 4, "{stats:?}");
        // Ticks after the stall land on the original grid (multiples of 10 ms), not shifted.
        let after = ts[4];
        let offset = after % 10_000_000;
        assert!(
            offset < 5_000_000,
            "tick at {after} ns is off the 10 ms grid"
        );
        assert!(ts.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn user_space_wakes_at_the_interval_only_when_something_needs_it() {
        let ms = Duration::from_millis;
        // Kernel samples, nothing else per tick: system memory every 100 ms.
        assert_eq!(user_cadence(ms(1), true, false), ms(100));
        assert_eq!(user_cadence(ms(10), true, false), ms(100));
        assert_eq!(user_cadence(ms(1000), true, false), ms(1000));
        // GPUs or the watchdog: every interval.
        assert_eq!(user_cadence(ms(10), true, true), ms(10));
        // No kernel samples (procfs): every interval.
        assert_eq!(user_cadence(ms(1), false, false), ms(1));
    }

    /// A source holding samples taken elsewhere, with the times they were taken at.
    struct Kernel {
        times: Vec<u64>,
    }

    impl Source for Kernel {
        fn name(&self) -> &'static str {
            "kernel"
        }
        fn sample(&mut self, _now: u64, _t0: u64, _out: &mut Sample, _ev: &mut Vec<TreeEvent>) {}
        fn drain_samples(&mut self, up_to: u64, t0: u64, out: &mut Vec<Sample>) {
            let (now, later): (Vec<u64>, Vec<u64>) = self.times.iter().partition(|t| **t <= up_to);
            self.times = later;
            out.extend(now.into_iter().map(|t| Sample {
                t_ns: t - t0,
                ..Sample::default()
            }));
        }
    }

    #[test]
    fn drained_samples_come_before_the_tick_that_drained_them() {
        let (tx, rx) = channel();
        let t0 = monotonic_ns();
        let src = Box::new(Kernel {
            times: vec![t0 + 1_000_000, t0 + 2_000_000, t0 + 60_000_000],
        });
        let h = spawn(
            vec![src],
            Duration::from_millis(50),
            Duration::ZERO,
            t0,
            to(tx),
        );
        let mut ts = Vec::new();
        while ts.len() < 5 {
            ts.extend(rx.recv().unwrap().iter().map(|t| t.sample.t_ns));
        }
        h.finish();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{ts:?}");
        // The tick at 0 ms, the two kernel samples, the tick at 50 ms, then the 60 ms sample
        // (it waited for the drain at 100 ms).
        assert_eq!(ts[1], 1_000_000, "{ts:?}");
        assert_eq!(ts[2], 2_000_000, "{ts:?}");
        assert!(ts.contains(&60_000_000), "{ts:?}");
    }

    #[test]
    fn stop_takes_a_final_sample_promptly() {
        let (tx, rx) = channel();
        let src = Box::new(Counter {
            calls: 0,
            stall_on: None,
        });
        let t0 = monotonic_ns();
        let h = spawn(
            vec![src],
            Duration::from_secs(10),
            Duration::ZERO,
            t0,
            to(tx),
        );
        rx.recv().unwrap();
        let before = monotonic_ns();
        let (sources, stats) = h.finish();
        assert!(monotonic_ns() - before < 1_000_000_000);
        assert_eq!(stats.ticks, 2);
        assert_eq!(sources.len(), 1);
        let last = rx.recv().unwrap();
        assert_eq!(last[0].sample.processes, Some(2));
    }

    #[test]
    fn ticks_are_batched_up_to_the_flush_period() {
        let (tx, rx) = channel();
        let src = Box::new(Counter {
            calls: 0,
            stall_on: None,
        });
        let h = spawn(
            vec![src],
            Duration::from_millis(5),
            Duration::from_millis(50),
            monotonic_ns(),
            to(tx),
        );
        let first = rx.recv().unwrap();
        let second = rx.recv().unwrap();
        h.finish();
        // The first batch holds the tick at t0 plus those of the next 50 ms; then ~10 per batch.
        assert!(
            first.len() >= 8 && second.len() >= 8,
            "{} {}",
            first.len(),
            second.len()
        );
        let all: Vec<u32> = first
            .iter()
            .chain(&second)
            .map(|t| t.sample.processes.unwrap())
            .collect();
        assert!(
            all.windows(2).all(|w| w[1] == w[0] + 1),
            "no tick lost or reordered"
        );
    }
}
