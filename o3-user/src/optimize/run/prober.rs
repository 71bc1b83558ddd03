//! The prober a run uses: the simulator for a simulated target, else the live server, with
//! what goes with a live one (the backend spec and its load mode, eBPF, the servers earlier runs
//! left behind, stop signals, the machine's load before measuring).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::backend::ProbeConfig;
use crate::optimize::journal::Raw;
use crate::optimize::live::Live;
use crate::optimize::noise;
use crate::optimize::prober::{ProbeOutcome, ProbeRequest, Prober};
use crate::optimize::progress::Events;
use crate::optimize::sim::Sim;
use crate::optimize::target::{backend_spec, pin_load_mode};
use crate::probe::BackendSpec;
use crate::timing::TimeModel;

use super::runfile::RunFile;
use super::{Roots, RunError};

/// Where the processes of servers o3 started are looked for. The real /proc, not
/// `--procfs-root`: the servers to stop are this machine's.
const PROC: &str = "/proc";

/// A prober that is either live or simulated.
pub(super) enum Any {
    Live(Box<Live>),
    Sim(Box<Sim>),
}

impl Raw for Any {
    fn take_raw(&mut self) -> Option<serde_json::Value> {
        match self {
            Any::Live(l) => l.take_raw(),
            Any::Sim(_) => None,
        }
    }
}

impl Prober for Any {
    fn know(&mut self, model: &TimeModel) {
        if let Any::Live(l) = self {
            l.know(model);
        }
    }

    fn probe(&mut self, req: &ProbeRequest) -> Option<ProbeOutcome> {
        match self {
            Any::Live(l) => l.probe(req),
            Any::Sim(s) => s.probe(req),
        }
    }

    fn fixed_by_server(&self, cfg: &ProbeConfig) -> Vec<&'static str> {
        match self {
            Any::Live(l) => l.fixed_by_server(cfg),
            Any::Sim(s) => s.fixed_by_server(cfg),
        }
    }
}

impl Any {
    /// Where a live probe in flight stands (a simulated probe is over at once).
    pub fn phase(&self) -> Option<Arc<crate::probe::phase::Phase>> {
        match self {
            Any::Live(l) => Some(l.phase.clone()),
            Any::Sim(_) => None,
        }
    }

    /// Set when the run is asked to stop (a simulated run never is).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        match self {
            Any::Live(l) => l.stop.clone(),
            Any::Sim(_) => Arc::new(AtomicBool::new(false)),
        }
    }

    /// SIGINT, SIGTERM and SIGHUP set the flag a live probe watches (the probe then stops the
    /// server it started); a simulated run ignores them.
    pub fn watch_signals(&self) -> Result<(), RunError> {
        match self {
            Any::Live(l) => watch_signals(l.stop.clone()),
            Any::Sim(_) => Ok(()),
        }
    }

    /// How busy the machine is from outside, before o3 starts measuring (1 s), as a warning
    /// when it matters; nothing for a simulated run.
    pub fn warn_if_busy<E: Events>(&self, ev: &mut E) {
        if let Any::Sim(_) = self {
            return;
        }
        let window = Duration::from_secs(1);
        let share = noise::measure(Path::new(PROC), window);
        if let Some(w) = share.and_then(|s| noise::warning(s, window)) {
            ev.warning(&w);
        }
    }

    /// What the machine's load did to the probes, for the report's notes.
    pub fn busy_note(&self) -> Option<String> {
        match self {
            Any::Live(l) => noise::note(&l.busy),
            Any::Sim(_) => None,
        }
    }

    /// Why probe traces are missing, if they are.
    pub fn trace_error(&self) -> Option<&str> {
        match self {
            Any::Live(l) => l.trace_error.as_deref(),
            Any::Sim(_) => None,
        }
    }

    /// Simulated time of all probes, s (`None` for a live server).
    pub fn simulated_s(&self) -> Option<f64> {
        match self {
            Any::Sim(s) => Some(s.wall_ms / 1000.0),
            Any::Live(_) => None,
        }
    }
}

/// The prober for the run's target, and the backend a live one measures (for the artefacts).
pub(super) fn choose<E: Events>(
    rf: &RunFile,
    dir: &Path,
    roots: &Roots,
    quiet: bool,
    ev: &mut E,
) -> Result<(Any, Option<BackendSpec>), RunError> {
    if let Some(m) = &rf.target.simulate {
        return Ok((Any::Sim(Box::new(Sim::new(m.clone()))), None));
    }
    let mut spec = backend_spec(rf.target.flags())?;
    let integrated = rf.host.gpus.iter().any(|g| g.apu);
    if let Some(n) = pin_load_mode(&mut spec, integrated) {
        if !quiet {
            ev.notice(&n);
        }
    }
    let ebpf = ebpf_available(&roots.sysfs, ev)?;
    sweep_servers(&dir.join("servers"), ev);
    let traces = dir.join("traces");
    let live = Live::new(spec.clone(), rf.config.clone(), roots.sysfs.clone(), ebpf)
        .with_builds(builds(rf, integrated)?)
        .with_procfs_root(roots.procfs.clone())
        .with_traces(traces.clone())
        .map_err(|e| RunError::io("create", &traces, e))?;
    Ok((Any::Live(Box::new(live)), Some(spec)))
}

/// The backend of each llama-server build compared, by path (none with one build).
fn builds(rf: &RunFile, integrated: bool) -> Result<Vec<(String, BackendSpec)>, RunError> {
    if rf.target.server_bins.len() < 2 {
        return Ok(Vec::new());
    }
    rf.target
        .server_bins
        .iter()
        .map(|b| {
            let t = super::runfile::Target {
                server_bin: b.clone(),
                ..rf.target.clone()
            };
            let mut spec = backend_spec(t.flags())?;
            pin_load_mode(&mut spec, integrated);
            Ok((b.clone(), spec))
        })
        .collect()
}

/// Whether eBPF can measure the server's peaks; where it cannot, procfs polling does (with a
/// warning), unless `O3_REQUIRE_EBPF=1` makes that an error.
fn ebpf_available<E: Events>(sysfs: &Path, ev: &mut E) -> Result<bool, RunError> {
    match crate::probe::ebpf_for_servers(sysfs) {
        Ok(Ok(_)) => Ok(true),
        Ok(Err(warning)) => {
            ev.warning(&warning);
            Ok(false)
        }
        Err(e) => Err(RunError::EbpfRequired(e)),
    }
}

/// Servers of earlier runs that outlived their o3 (this run's, on `--resume`, first: its
/// ledger names them) are stopped before this run starts its own; this run's servers go into
/// the ledger.
fn sweep_servers<E: Events>(ledger: &Path, ev: &mut E) {
    use crate::util::owner;
    let mut swept = owner::stop_recorded(Path::new(PROC), ledger);
    swept.extend(owner::reap_orphans(Path::new(PROC)));
    if let Some(n) = owner::notice(&swept) {
        ev.notice(&n);
    }
    owner::keep_ledger(ledger.to_path_buf());
}

/// A thread that sets `stop` when a stop signal arrives.
fn watch_signals(stop: Arc<AtomicBool>) -> Result<(), RunError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::BorrowedFd;
    let fd = crate::util::signals::install().map_err(RunError::Signals)?;
    std::thread::Builder::new()
        .name("o3-signals".into())
        .spawn(move || loop {
            // SAFETY: the signal pipe's read end stays open for the life of the process
            // (`install` never closes it), so the borrow cannot outlive the descriptor.
            let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
            let mut fds = [PollFd::new(borrowed, PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::NONE).is_ok_and(|n| n > 0) {
                let mut b = [0u8; 16];
                // The bytes only say which signal came: any of them means stop.
                let _ = nix::unistd::read(fd, &mut b);
                stop.store(true, Ordering::SeqCst);
            }
        })
        .map_err(RunError::Signals)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{no_roots, simulated_runfile, Kept};
    use super::*;
    use crate::optimize::sim::SimModel;

    #[test]
    fn a_simulated_target_gets_the_simulator_and_no_server() {
        let rf = simulated_runfile(SimModel::default());
        let dir = tempfile::tempdir().unwrap();
        let mut ev = Kept::default();
        let (p, backend) = choose(&rf, dir.path(), &no_roots(), false, &mut ev).unwrap();
        assert!(matches!(p, Any::Sim(_)));
        assert!(backend.is_none());
        // Nothing live: no signals watched, no load measured, no servers swept, no files.
        p.watch_signals().unwrap();
        p.warn_if_busy(&mut ev);
        assert!(ev.0.is_empty(), "{:?}", ev.0);
        assert!(!p.stop_flag().load(Ordering::SeqCst));
        assert_eq!(p.simulated_s(), Some(0.0));
        assert_eq!(p.busy_note(), None);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
