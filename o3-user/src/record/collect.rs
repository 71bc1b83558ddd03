//! The recording loop: takes the sampler's batches into the aggregate and the trace, and
//! decides the end from the waiter's events (exit, deadline, signal, watchdog breach).

use std::collections::BTreeMap;
use std::sync::mpsc::Receiver;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::summary::{Aggregate, ExitInfo, Rusage};
use super::waiter::Msg;
use super::Target;
use crate::telemetry::counters::{Counters, SampledTree};
use crate::telemetry::ebpf::Loaded;
use crate::telemetry::watchdog::Breach;
use crate::telemetry::{monotonic_ns, sampler, TreeEvent};
use crate::trace::record::{CounterSource, TreeCounters};
use crate::trace::{TraceError, TraceWriter};

/// How often an attached tree's procfs counters are read (and once more at the end).
const COUNTERS_EVERY_NS: u64 = 1_000_000_000;

/// Everything the loop learns.
pub(super) struct Collected {
    pub agg: Aggregate,
    /// The last known command name of each pid.
    pub comms: BTreeMap<u32, String>,
    pub exit: Option<ExitInfo>,
    pub child_rusage: Option<Rusage>,
    /// The tree's faults, switches and block I/O: the command's rusage, or procfs reads.
    pub counters: Option<TreeCounters>,
    /// An attached tree's procfs counters, and when they were last read.
    sampled: Option<(SampledTree, u64)>,
    pub end_ns: Option<u64>,
    pub breaches: Vec<Breach>,
    /// The first failed trace write (the recording goes on; the run fails at the end).
    pub write_error: Option<TraceError>,
    forwarded: bool,
}

fn basename(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

fn tv_ns(tv: libc::timeval) -> u64 {
    tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1_000
}

/// Reaps the command o3 started, with its rusage. wait4(2): nix's waitpid gives no rusage.
fn reap(root: u32) -> Option<(ExitInfo, Rusage, Counters)> {
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: reaping our own child, which has exited; valid out-pointers.
    let r = unsafe { libc::wait4(root as i32, &raw mut status, 0, &raw mut ru) };
    (r == root as i32).then(|| {
        let (user, sys) = (tv_ns(ru.ru_utime), tv_ns(ru.ru_stime));
        let usage = Rusage {
            user_ns: user,
            sys_ns: sys,
            cpu_ns: user + sys,
            maxrss_bytes: ru.ru_maxrss as u64 * 1024,
        };
        // ru_inblock and ru_oublock count 512-byte blocks.
        let counts = Counters {
            minor_faults: ru.ru_minflt as u64,
            major_faults: ru.ru_majflt as u64,
            voluntary_context_switches: ru.ru_nvcsw as u64,
            involuntary_context_switches: ru.ru_nivcsw as u64,
            read_bytes: ru.ru_inblock as u64 * 512,
            write_bytes: ru.ru_oublock as u64 * 512,
        };
        (ExitInfo::from_status(status), usage, counts)
    })
}

impl Collected {
    /// `sampled`: an attached tree's counters, read at the start.
    pub(super) fn new(interval_ns: u64, sampled: Option<SampledTree>) -> Collected {
        Collected {
            agg: Aggregate::new(interval_ns),
            comms: BTreeMap::new(),
            exit: None,
            child_rusage: None,
            counters: None,
            sampled: sampled.map(|t| (t, monotonic_ns())),
            end_ns: None,
            breaches: Vec::new(),
            write_error: None,
            forwarded: false,
        }
    }

    /// Receives until the recording ends (or every sender is gone).
    pub(super) fn run(
        &mut self,
        rx: &Receiver<Msg>,
        target: &Target,
        root: u32,
        mut loaded: Option<&mut Loaded>,
        trace: &mut Option<TraceWriter>,
    ) {
        while self.end_ns.is_none() {
            let Ok(msg) = rx.recv() else { break };
            if let Msg::Ticks(batch) = msg {
                self.take(batch, trace);
                self.read_counters(false);
                if let Some(l) = loaded.as_deref_mut() {
                    // It worked at the start; a later failure only shortens the sampling.
                    let _ = l.sample_cost(monotonic_ns());
                }
            } else {
                self.on_event(msg, target, root);
            }
        }
    }

    /// Reads an attached tree's counters when a second has passed since the last read (or
    /// `now`), and keeps their total.
    pub(super) fn read_counters(&mut self, now: bool) {
        let Some((tree, last)) = self.sampled.as_mut() else {
            return;
        };
        let t = monotonic_ns();
        if now || t.saturating_sub(*last) >= COUNTERS_EVERY_NS {
            tree.read();
            *last = t;
            self.counters = Some(TreeCounters {
                source: CounterSource::ProcfsSampled,
                counts: tree.total(),
            });
        }
    }

    /// The sampler's last batch (taken when it stopped), already in the channel.
    pub(super) fn drain(&mut self, rx: &Receiver<Msg>, trace: &mut Option<TraceWriter>) {
        while let Ok(msg) = rx.try_recv() {
            if let Msg::Ticks(batch) = msg {
                self.take(batch, trace);
            }
        }
    }

    fn on_event(&mut self, msg: Msg, target: &Target, root: u32) {
        let attached = matches!(target, Target::Pid { .. });
        match msg {
            Msg::Ticks(_) => {}
            Msg::Exited(now) => {
                if !attached {
                    if let Some((exit, usage, counts)) = reap(root) {
                        self.exit = Some(exit);
                        self.child_rusage = Some(usage);
                        self.counters = Some(TreeCounters {
                            source: CounterSource::Rusage,
                            counts,
                        });
                    }
                }
                self.end_ns = Some(now);
            }
            Msg::Deadline(now) => self.end_ns = Some(now),
            Msg::Breach(b) => {
                eprintln!("o3: {b}");
                if attached {
                    // Not o3's process to stop: the recording ends and says why.
                    self.end_ns = Some(monotonic_ns());
                }
                self.breaches.push(b);
            }
            // An attached recording ends on Ctrl-C or SIGTERM.
            Msg::Signal(_) if attached => self.end_ns = Some(monotonic_ns()),
            // With a command, o3 waits for it like `time` does: Ctrl-C reaches the command
            // through the terminal; a SIGTERM/SIGHUP sent to o3 alone is passed on to it.
            Msg::Signal(sig) => {
                if sig != Signal::SIGINT as i32 && !self.forwarded {
                    self.forwarded = true;
                    if let Ok(sig) = Signal::try_from(sig) {
                        let _ = kill(Pid::from_raw(root as i32), sig);
                    }
                }
            }
        }
    }

    /// One batch of ticks: names of new processes, the trace, the aggregate.
    fn take(&mut self, batch: Vec<sampler::Tick>, trace: &mut Option<TraceWriter>) {
        for tick in batch {
            for e in &tick.events {
                self.name(e);
                if let Some(t) = trace.as_mut() {
                    if let Err(err) = t.event(e) {
                        self.write_error.get_or_insert(err);
                    }
                }
            }
            if let Some(t) = trace.as_mut() {
                if let Err(err) = t.sample(&tick.sample) {
                    self.write_error.get_or_insert(err);
                }
            }
            self.agg.add(tick.sample);
        }
    }

    fn name(&mut self, e: &TreeEvent) {
        match e {
            TreeEvent::Fork { pid, comm, .. } => {
                self.comms.entry(*pid).or_insert_with(|| comm.clone());
            }
            TreeEvent::Exec { pid, filename, .. } => {
                self.comms.insert(*pid, basename(filename));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exec_names_the_process_by_its_file_and_a_fork_keeps_the_first_name() {
        let mut c = Collected::new(10_000_000, None);
        c.name(&TreeEvent::Exec {
            t_ns: 0,
            pid: 7,
            comm: "sh".into(),
            filename: "/usr/bin/python3".into(),
        });
        c.name(&TreeEvent::Fork {
            t_ns: 1,
            pid: 7,
            parent: 1,
            comm: "sh".into(),
        });
        assert_eq!(c.comms[&7], "python3");
        assert_eq!(basename("plain"), "plain");
    }
}
