//! One `o3 optimize` run, start to end: the run directory (created, or resumed from its
//! run.json), the facts learning and the plan need (the model, the host), learning at the
//! start, the prober (a live server or the simulator), the journaled search, and the outputs
//! (summary.json, presets.yaml, artefacts). The CLI turns its flags into a [`Request`], calls
//! [`run`] and prints what comes back; what the run has to say on the way goes to [`Events`].
//!
//! - `runfile`: run.json, what a run searches and decided at its start;
//! - `facts`: the model's shape and identity, the host, the server's version;
//! - `learning`: the results store at the start (reuse, prediction, the time model's seed);
//! - `prober`: the live server or the simulator, and what goes with a live one;
//! - `search_loop`: the search behind the journal, retries, the heat guard and pruning;
//! - `outputs`: the summary, the presets file and the artefacts.

mod facts;
mod learning;
mod outputs;
mod prober;
mod runfile;
mod search_loop;

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::backend::ProbeConfig;
use crate::config::ConfigError;
use crate::learn::gguf::GgufError;
use crate::learn::store::{Store, StoreError};
use crate::telemetry::ebpf::EbpfError;

use super::journal::{Journal, JournalError};
use super::preflight::PreflightError;
use super::progress::Events;
use super::search::Strategy;
use super::target::{BackendKind, TargetError};

pub use outputs::{PeaksOut, PresetOut, ProbesOut, Summary};
pub use runfile::SCHEMA_VERSION;

/// Where the machine's own files are (`--procfs-root`, `--sysfs-root`, `--dev-root`).
#[derive(Debug, Clone)]
pub struct Roots {
    pub procfs: PathBuf,
    pub sysfs: PathBuf,
    pub dev: PathBuf,
}

/// What the user asked of a run.
#[derive(Debug, Clone)]
pub struct Request {
    pub start: Start,
    /// `--budget` (`None`: as the configuration says).
    pub budget: Option<BudgetChoice>,
    pub strategy: Strategy,
    /// Search even where learning could reuse an earlier run.
    pub no_reuse: bool,
    /// Only what must be said (no notices, no measurement of the machine's load before).
    pub quiet: bool,
}

/// A new run, or the one in a run directory.
#[derive(Debug, Clone)]
pub enum Start {
    New(Box<NewRun>),
    Resume(PathBuf),
}

/// What a new run searches and where its files go.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub backend: BackendKind,
    /// Model name (Ollama) or GGUF path; `None`: a simulated run's `simulated`.
    pub model: Option<String>,
    pub url: String,
    pub server_bin: String,
    /// llama-server builds to compare (`--server-bin` given more than once; the first is
    /// `server_bin`); empty: one build.
    pub server_bins: Vec<String>,
    pub launch: Option<String>,
    pub ready: String,
    pub tokenize: String,
    pub ollama_serve: Option<String>,
    /// The fields the user fixed for the whole search.
    pub base: ProbeConfig,
    /// The configuration file (`None`: the defaults).
    pub config: Option<PathBuf>,
    /// A simulated server's description instead of a real server.
    pub simulate: Option<PathBuf>,
    /// The run directory (`None`: one under the data directory).
    pub out: Option<PathBuf>,
    /// The results store (`None`: the configuration's, else the default).
    pub db: Option<PathBuf>,
}

/// `--budget`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BudgetChoice {
    /// A multiple of the floor (`plan.floor_multiple`, its default when the file says 0).
    Auto,
    /// Everything runs.
    None,
    Seconds(f64),
}

/// What a finished (or interrupted) run leaves for the user.
#[derive(Debug)]
pub struct Finished {
    pub dir: PathBuf,
    pub summary: Summary,
    /// The summary as written to summary.json.
    pub json: String,
}

/// Why a run could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot read {}: {source} (is {} a run directory of `o3 optimize`?)", .path.display(), .dir.display())]
    NoRunFile {
        path: PathBuf,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a run file o3 can resume: {source}", .path.display())]
    BadRunFile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// Said as the configuration check says it (its causes are in its message).
    #[error("{0}")]
    Config(ConfigError),
    #[error("cannot read {}: {source}", .path.display())]
    SimRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", .path.display())]
    SimParse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} already holds a run: continue it with `o3 optimize --resume {}` or choose another --out", .dir.display(), .dir.display())]
    AlreadyARun { dir: PathBuf },
    #[error(transparent)]
    ModelFile(#[from] GgufError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot {what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("eBPF is required but unavailable: {0}")]
    EbpfRequired(EbpfError),
    #[error("cannot watch for stop signals: {0}")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("{0}")]
    Variants(String),
}

impl RunError {
    /// The request was wrong (flags, files named), as opposed to a failure while running.
    pub fn is_usage(&self) -> bool {
        match self {
            RunError::NoRunFile { .. }
            | RunError::BadRunFile { .. }
            | RunError::Config(_)
            | RunError::SimRead { .. }
            | RunError::SimParse { .. }
            | RunError::AlreadyARun { .. }
            | RunError::ModelFile(_)
            | RunError::Variants(_)
            | RunError::Preflight(_) => true,
            RunError::Target(t) => t.is_usage(),
            _ => false,
        }
    }

    fn io(what: &'static str, path: &Path, source: std::io::Error) -> RunError {
        RunError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Runs (or resumes) one optimization to its end or its interruption.
pub fn run<E: Events>(req: &Request, roots: &Roots, ev: &mut E) -> Result<Finished, RunError> {
    // 1. What to search, and where the run lives.
    let (dir, mut rf) = match &req.start {
        Start::Resume(dir) => runfile::resume(dir)?,
        Start::New(new) => runfile::create(new, roots, req)?,
    };
    if !req.quiet {
        announce(&rf, ev);
    }
    let store = rf.store.as_ref().map(|r| Store::open(&r.db)).transpose()?;
    if let Some(b) = req.budget {
        apply_budget(&mut rf.config.plan, b);
    }
    let rf = rf;
    let done = search_and_finish(req, roots, ev, &dir, &rf, store.as_ref());
    // A run that an error stopped is stored as failed, with why, not left `running`.
    if let (Err(e), Some(st), Some(r)) = (&done, &store, &rf.store) {
        if let Err(se) = st.fail_run(r.run_id, &e.to_string()) {
            ev.warning(&format!("cannot store the run as failed: {se}"));
        }
    }
    done
}

/// Steps 2 to 5: the prober, the journaled search, the summary and the outputs.
fn search_and_finish<E: Events>(
    req: &Request,
    roots: &Roots,
    ev: &mut E,
    dir: &Path,
    rf: &runfile::RunFile,
    store: Option<&Store>,
) -> Result<Finished, RunError> {
    // 2. The prober; 3. stop requests end a live run's probes.
    let (mut prober, backend) = prober::choose(rf, dir, roots, req.quiet, ev)?;
    prober.watch_signals()?;
    if let Some(p) = prober.phase() {
        ev.follow(p);
    }
    if !req.quiet {
        prober.warn_if_busy(ev);
    }

    // 4. The search, journaled.
    let mut journal = Journal::open(&dir.join("journal.jsonl"))?;
    if matches!(req.start, Start::Resume(_)) && !req.quiet {
        ev.say(&format!(
            "resuming {}: {} probes already in the journal",
            dir.display(),
            journal.loaded
        ));
    }
    let started = Instant::now();
    let searched = search_loop::search(
        rf,
        store,
        &mut prober,
        &mut journal,
        roots,
        req.strategy,
        ev,
    )?;

    // 5. Presets and outputs.
    if let Some(e) = prober.trace_error() {
        ev.warning(&format!(
            "probe traces incomplete: {e} (the results are not affected)"
        ));
    }
    let mut summary = outputs::summary(rf, dir, searched, &prober, backend.as_ref(), started);
    if let (Some(st), Some(r)) = (store, &rf.store) {
        summary.predictions = outputs::predictions(st, r);
        outputs::finish_store(st, r, &summary)?;
    }
    let json = outputs::write(dir, &summary)?;
    Ok(Finished {
        dir: dir.to_path_buf(),
        summary,
        json,
    })
}

/// The notices of the run's start: the configuration's, learning's, the server's version.
fn announce<E: Events>(rf: &runfile::RunFile, ev: &mut E) {
    for n in rf.config_notices.iter().chain(&rf.learning_notes) {
        ev.notice(n);
    }
    if let Some(v) = &rf.server_version {
        ev.notice(&format!("server: {v}"));
    }
}

/// `--budget` over the configuration's plan (a resumed run may be given another).
fn apply_budget(plan: &mut crate::config::Plan, b: BudgetChoice) {
    match b {
        BudgetChoice::Seconds(x) => plan.budget_s = Some(x),
        BudgetChoice::None => {
            plan.budget_s = None;
            plan.floor_multiple = 0.0;
        }
        BudgetChoice::Auto => {
            plan.budget_s = None;
            if plan.floor_multiple == 0.0 {
                plan.floor_multiple = crate::config::Plan::default().floor_multiple;
            }
        }
    }
}

#[cfg(test)]
mod tests;
