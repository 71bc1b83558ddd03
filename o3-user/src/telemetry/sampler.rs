//! The sampler: one thread that owns its sources and calls them at absolute deadlines
//! (`t0 + k * interval` on CLOCK_MONOTONIC), sending each tick over a channel. A tick that
//! starts after the next deadline has passed skips the missed deadlines and counts them as late;
//! nothing is hidden by drifting the schedule.
//!
//! Ticks are sent in batches (at most `flush` apart): waking the consumer on every tick would
//! cost a cross-CPU wake-up per tick, which on a VM costs more than the tick's own work.
//!
//! Time comes from a [`Clock`] (a generic parameter, so the real one costs what calling
//! `clock_gettime` and `park_timeout` directly costs); tests drive deadlines with a fake one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::{monotonic_ns, thread_cpu_ns, Sample, Source, TreeEvent};

/// The sampler's time: CLOCK_MONOTONIC and a sleep that [`SamplerHandle::finish`] can cut
/// short.
pub trait Clock: Send + 'static {
    /// Now, in ns on the clock of the deadlines (CLOCK_MONOTONIC for the real one).
    fn now_ns(&self) -> u64;
    /// Sleeps up to `ns`; may return early (an unpark), the caller checks the time again.
    fn sleep(&self, ns: u64);
}

/// The real clock: CLOCK_MONOTONIC, and `park_timeout` so that an unpark wakes the sampler.
#[derive(Debug, Clone, Copy, Default)]
pub struct Monotonic;

impl Clock for Monotonic {
    #[inline]
    fn now_ns(&self) -> u64 {
        monotonic_ns()
    }
    #[inline]
    fn sleep(&self, ns: u64) {
        std::thread::park_timeout(Duration::from_nanos(ns));
    }
}

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
    sources: Vec<Box<dyn Source>>,
    interval: Duration,
    flush: Duration,
    t0_ns: u64,
    sink: impl Sink,
) -> SamplerHandle {
    spawn_with(Monotonic, sources, interval, flush, t0_ns, sink)
}

/// [`spawn`] on `clock`: `t0_ns` and every deadline are on its time.
pub fn spawn_with<C: Clock>(
    clock: C,
    sources: Vec<Box<dyn Source>>,
    interval: Duration,
    flush: Duration,
    t0_ns: u64,
    sink: impl Sink,
) -> SamplerHandle {
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = Sampler {
        clock,
        sources,
        sink,
        stop: stop.clone(),
        t0_ns,
        step: interval.as_nanos() as u64,
        flush_ns: flush.as_nanos() as u64,
        stats: SamplerStats::default(),
        batch: Vec::new(),
        kernel: Vec::new(),
        last_flush: t0_ns,
    };
    let join = std::thread::Builder::new()
        .name("o3-sampler".into())
        .spawn(move || sampler.run())
        .expect("spawning the sampler thread");
    SamplerHandle { stop, join }
}

/// The sampler thread's state.
struct Sampler<C, S> {
    clock: C,
    sources: Vec<Box<dyn Source>>,
    sink: S,
    stop: Arc<AtomicBool>,
    t0_ns: u64,
    step: u64,
    flush_ns: u64,
    stats: SamplerStats,
    /// Ticks not sent yet.
    batch: Vec<Tick>,
    /// Kernel samples drained this tick (reused).
    kernel: Vec<Sample>,
    last_flush: u64,
}

impl<C: Clock, S: Sink> Sampler<C, S> {
    fn run(mut self) -> (Vec<Box<dyn Source>>, SamplerStats) {
        let cpu0 = thread_cpu_ns();
        let mut deadline = self.t0_ns;
        loop {
            let stopping = self.sleep_until(deadline);
            let now = self.clock.now_ns();
            self.drain_kernel_samples(now);
            self.tick(now);
            if stopping || now.saturating_sub(self.last_flush) >= self.flush_ns {
                let sent = self.flush(now);
                if !sent || stopping {
                    break;
                }
            }
            deadline = self.next_deadline(deadline);
        }
        self.stats.cpu_ns = thread_cpu_ns().saturating_sub(cpu0);
        (self.sources, self.stats)
    }

    /// Sleeps until `deadline_ns`, or until [`SamplerHandle::finish`] unparks the thread
    /// (every way to stop the sampler goes through it; a wake-up each second checks `stop`
    /// anyway). Returns true when stop was requested (the caller takes a last sample now).
    fn sleep_until(&self, deadline_ns: u64) -> bool {
        const CHECK_NS: u64 = 1_000_000_000;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return true;
            }
            let now = self.clock.now_ns();
            if now >= deadline_ns {
                return false;
            }
            self.clock.sleep((deadline_ns - now).min(CHECK_NS));
        }
    }

    /// Samples the kernel took since the last wake-up, in time order, before this tick's.
    fn drain_kernel_samples(&mut self, now: u64) {
        for s in &mut self.sources {
            s.drain_samples(now, self.t0_ns, &mut self.kernel);
        }
        self.kernel.sort_by_key(|s| s.t_ns);
        self.batch.extend(self.kernel.drain(..).map(|sample| Tick {
            sample,
            events: Vec::new(),
        }));
    }

    /// Every source fills one sample taken at `now`.
    fn tick(&mut self, now: u64) {
        let mut tick = Tick {
            sample: Sample {
                t_ns: now.saturating_sub(self.t0_ns),
                ..Sample::default()
            },
            events: Vec::new(),
        };
        for s in &mut self.sources {
            s.sample(now, self.t0_ns, &mut tick.sample, &mut tick.events);
        }
        self.stats.ticks += 1;
        let took = self.clock.now_ns().saturating_sub(now);
        self.stats.max_tick_ns = self.stats.max_tick_ns.max(took);
        self.batch.push(tick);
    }

    /// Sends the batch; false when the consumer is gone.
    fn flush(&mut self, now: u64) -> bool {
        self.last_flush = now;
        self.sink.send(std::mem::take(&mut self.batch))
    }

    /// The deadline after `deadline` on the grid `t0 + k * step`; deadlines that already
    /// passed are skipped and counted as late.
    fn next_deadline(&mut self, deadline: u64) -> u64 {
        let next = deadline + self.step;
        let now = self.clock.now_ns();
        if now <= next {
            return next;
        }
        let missed = (now - next) / self.step + 1;
        self.stats.late_ticks += missed;
        next + missed * self.step
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::mpsc::{channel, Sender};

    fn to(tx: Sender<Vec<Tick>>) -> impl Sink {
        move |b| tx.send(b).is_ok()
    }

    /// A clock that only moves when the sampler sleeps (by exactly the time asked) or a test
    /// source advances it (a stall).
    #[derive(Clone, Default)]
    struct FakeClock {
        now: Arc<AtomicU64>,
    }

    impl FakeClock {
        fn at(ns: u64) -> FakeClock {
            FakeClock {
                now: Arc::new(AtomicU64::new(ns)),
            }
        }
        fn advance(&self, ns: u64) {
            self.now.fetch_add(ns, Ordering::SeqCst);
        }
    }

    impl Clock for FakeClock {
        fn now_ns(&self) -> u64 {
            self.now.load(Ordering::SeqCst)
        }
        fn sleep(&self, ns: u64) {
            self.advance(ns);
        }
    }

    /// Collects batches until `n` ticks came, then stops the sampler (returns false).
    fn collect(n: usize) -> (impl Sink, std::sync::mpsc::Receiver<Vec<Tick>>) {
        let (tx, rx) = channel();
        let mut seen = 0;
        let sink = move |b: Vec<Tick>| {
            seen += b.len();
            tx.send(b).is_ok() && seen < n
        };
        (sink, rx)
    }

    const MS: u64 = 1_000_000;
    /// An arbitrary start on the fake clock.
    const T0: u64 = 5_000 * MS;

    /// A scripted source: counts its calls; on call `stall_on` it takes `stall_ns` of the
    /// fake clock's time.
    struct Counter {
        calls: u64,
        stall_on: Option<u64>,
        stall_ns: u64,
        clock: FakeClock,
    }

    impl Counter {
        fn new(clock: &FakeClock) -> Counter {
            Counter {
                calls: 0,
                stall_on: None,
                stall_ns: 0,
                clock: clock.clone(),
            }
        }
    }

    impl Source for Counter {
        fn name(&self) -> &'static str {
            "counter"
        }
        fn sample(&mut self, _now: u64, _t0: u64, out: &mut Sample, _ev: &mut Vec<TreeEvent>) {
            self.calls += 1;
            out.processes = Some(self.calls as u32);
            if self.stall_on == Some(self.calls) {
                self.clock.advance(self.stall_ns);
            }
        }
    }

    /// Runs the sampler at 10 ms on the fake clock until `n` ticks came, with tick number
    /// `stall_on` taking `stall_ns`; the tick times (ms) and the stats.
    fn stalled_run(stall_on: u64, stall_ns: u64, n: usize) -> (Vec<u64>, SamplerStats) {
        let clock = FakeClock::at(T0);
        let mut src = Counter::new(&clock);
        src.stall_on = Some(stall_on);
        src.stall_ns = stall_ns;
        let (sink, rx) = collect(n);
        let h = spawn_with(
            clock,
            vec![Box::new(src)],
            Duration::from_millis(10),
            Duration::ZERO,
            T0,
            sink,
        );
        // The sink stops the sampler; the channel closes when its thread ends.
        let ts: Vec<u64> = rx.iter().flatten().map(|t| t.sample.t_ns / MS).collect();
        (ts, h.finish().1)
    }

    #[test]
    fn ticks_follow_absolute_deadlines_and_count_late_ones() {
        let (ts, stats) = stalled_run(3, 55 * MS, 8);
        // The third tick (at 20 ms) took 55 ms: the deadlines at 30..=70 ms passed during it
        // and are counted; the next tick is at 80 ms, on the original grid, not at 75 ms.
        assert_eq!(ts, [0, 10, 20, 80, 90, 100, 110, 120]);
        assert_eq!(stats.late_ticks, 5);
        assert_eq!(stats.ticks, 8);
        assert_eq!(stats.max_tick_ns, 55 * MS);
    }

    #[test]
    fn a_tick_that_ends_on_a_deadline_is_not_late() {
        let (ts, stats) = stalled_run(1, 10 * MS, 3);
        assert_eq!(ts, [0, 10, 20]);
        assert_eq!(stats.late_ticks, 0);
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
        let src = Box::new(Kernel {
            // Out of order, as two CPUs' samples may come.
            times: vec![T0 + 2 * MS, T0 + MS, T0 + 60 * MS, T0 + 50 * MS],
        });
        let (sink, rx) = collect(7);
        let h = spawn_with(
            FakeClock::at(T0),
            vec![src],
            Duration::from_millis(50),
            Duration::ZERO,
            T0,
            sink,
        );
        let ts: Vec<u64> = rx.iter().flatten().map(|t| t.sample.t_ns / MS).collect();
        h.finish();
        // The tick at 0 ms; the two kernel samples, then the tick at 50 ms that drained them
        // (with the one taken at 50 ms itself); the 60 ms sample waits for the drain at 100 ms.
        assert_eq!(ts, [0, 1, 2, 50, 50, 60, 100]);
    }

    /// On the real clock: finish wakes a sampler asleep until a deadline 10 s away.
    #[test]
    fn stop_takes_a_final_sample_promptly() {
        let (tx, rx) = channel();
        let src = Box::new(Counter::new(&FakeClock::default()));
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
        let clock = FakeClock::at(T0);
        let (sink, rx) = collect(31);
        let h = spawn_with(
            clock.clone(),
            vec![Box::new(Counter::new(&clock))],
            Duration::from_millis(5),
            Duration::from_millis(50),
            T0,
            sink,
        );
        let batches: Vec<Vec<Tick>> = rx.iter().collect();
        h.finish();
        // The first batch is sent at the first tick 50 ms after t0 (ticks at 0..=50 ms), then
        // every 10 ticks.
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, [11, 10, 10]);
        let all: Vec<u32> = batches
            .iter()
            .flatten()
            .map(|t| t.sample.processes.unwrap())
            .collect();
        assert_eq!(
            all,
            (1..=31).collect::<Vec<u32>>(),
            "no tick lost or reordered"
        );
    }

    /// The real clock is CLOCK_MONOTONIC, and its sleep sleeps.
    #[test]
    fn the_real_clock_is_monotonic_and_sleeps() {
        let a = Monotonic.now_ns();
        Monotonic.sleep(2 * MS);
        let b = Monotonic.now_ns();
        assert!(b - a >= 2 * MS, "{a} {b}");
        assert!(monotonic_ns() >= b);
    }
}
