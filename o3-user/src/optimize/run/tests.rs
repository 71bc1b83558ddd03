//! A whole run in process against the simulator: the run directory, resume from the journal,
//! and the steps that decide before the first probe.

use super::runfile::{RunFile, Target};
use super::*;
use crate::config::Config;
use crate::optimize::search::Observer;
use crate::optimize::sim::SimModel;

/// Events that keep what they are told, as the CLI would print it.
#[derive(Default)]
pub(super) struct Kept(pub Vec<String>);

impl Observer for Kept {}

impl Events for Kept {
    fn notice(&mut self, msg: &str) {
        self.0.push(format!("notice: {msg}"));
    }
    fn warning(&mut self, msg: &str) {
        self.0.push(format!("warning: {msg}"));
    }
    fn say(&mut self, msg: &str) {
        self.0.push(msg.to_string());
    }
}

/// Roots under which nothing exists: no sensors, no GPUs.
pub(super) fn no_roots() -> Roots {
    Roots {
        procfs: "/nonexistent/proc".into(),
        sysfs: "/nonexistent/sys".into(),
        dev: "/nonexistent/dev".into(),
    }
}

/// A new run's file for a simulated server, with the default configuration.
pub(super) fn simulated_runfile(m: SimModel) -> RunFile {
    let target = Target {
        backend: BackendKind::Ollama,
        model: "simulated".into(),
        url: String::new(),
        server_bin: String::new(),
        server_bins: Vec::new(),
        launch: None,
        ready: String::new(),
        tokenize: String::new(),
        ollama_serve: None,
        base: ProbeConfig::default(),
        simulate: Some(m),
    };
    let loaded = crate::config::Loaded {
        config: Config::default(),
        layout: crate::config::Layout::Current,
        notices: Vec::new(),
    };
    RunFile::new(target, loaded, &no_roots(), None)
}

/// A new simulated run of the 12 GiB example, its files and store under `dir`.
fn simulated(dir: &Path, config: &str) -> Request {
    let sim = dir.join("sim.json");
    std::fs::write(&sim, r#"{"capacity_bytes": 12884901888, "noise_cv": 0.0}"#).unwrap();
    let cfg = dir.join("o3.yaml");
    std::fs::write(&cfg, config).unwrap();
    Request {
        start: Start::New(Box::new(NewRun {
            backend: BackendKind::Ollama,
            model: None,
            url: String::new(),
            server_bin: String::new(),
            server_bins: Vec::new(),
            launch: None,
            ready: String::new(),
            tokenize: String::new(),
            ollama_serve: None,
            base: ProbeConfig::default(),
            config: Some(cfg),
            simulate: Some(sim),
            out: Some(dir.join("run")),
            db: Some(dir.join("o3.db")),
        })),
        budget: Some(BudgetChoice::None),
        strategy: Strategy::Binary,
        no_reuse: true,
        quiet: false,
    }
}

const SMALL: &str = "search:\n  granularity: 4096\nconcurrency:\n  enabled: false\n";

#[test]
fn a_simulated_run_writes_its_directory_and_resumes_from_its_journal() {
    let d = tempfile::tempdir().unwrap();
    let req = simulated(d.path(), SMALL);
    let mut ev = Kept::default();
    let first = run(&req, &no_roots(), &mut ev).unwrap();
    let s = &first.summary;
    assert!(!s.interrupted && s.simulated);
    let m = SimModel {
        capacity_bytes: 12_884_901_888,
        ..SimModel::default()
    };
    let batch0 = Config::default().batch.initial_for(Some(m.parameters));
    let truth = m.max_context(Some(batch0), 1) / 4096 * 4096;
    assert_eq!(s.context.validated, Some(truth));
    assert!(s.probes.ran_now > 0 && s.probes.from_journal == 0);
    for f in ["run.json", "journal.jsonl", "summary.json", "presets.yaml"] {
        assert!(first.dir.join(f).is_file(), "{f}");
    }
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(first.dir.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(
        written,
        serde_json::from_str::<serde_json::Value>(&first.json).unwrap()
    );
    // A simulated run measures no load and starts no server: nothing but the notices.
    assert!(ev.0.iter().all(|l| l.starts_with("notice: ")), "{:?}", ev.0);

    // The same directory again is refused; resumed, every probe comes from the journal.
    let again = run(&req, &no_roots(), &mut Kept::default()).unwrap_err();
    assert!(again.is_usage(), "{again}");
    let resume = Request {
        start: Start::Resume(first.dir.clone()),
        ..req
    };
    let mut ev = Kept::default();
    let second = run(&resume, &no_roots(), &mut ev).unwrap();
    assert_eq!(second.summary.probes.ran_now, 0);
    assert_eq!(second.summary.probes.from_journal, s.probes.ran_now);
    assert_eq!(second.summary.context.validated, Some(truth));
    assert!(
        ev.0.iter().any(|l| l.starts_with("resuming ")
            && l.ends_with(&format!(
                "{} probes already in the journal",
                s.probes.ran_now
            ))),
        "{:?}",
        ev.0
    );
}

#[test]
fn a_broken_configuration_is_a_usage_error_before_the_directory_exists() {
    let d = tempfile::tempdir().unwrap();
    let req = simulated(d.path(), "search: [\n");
    let e = run(&req, &no_roots(), &mut Kept::default()).unwrap_err();
    assert!(matches!(e, RunError::Config(_)) && e.is_usage(), "{e}");
    assert!(!d.path().join("run").exists());
}

#[test]
fn the_budget_flag_overrides_the_plan() {
    let mut p = crate::config::Plan {
        floor_multiple: 0.0,
        ..crate::config::Plan::default()
    };
    apply_budget(&mut p, BudgetChoice::Auto);
    assert_eq!(
        p.floor_multiple,
        crate::config::Plan::default().floor_multiple
    );
    apply_budget(&mut p, BudgetChoice::Seconds(600.0));
    assert_eq!(p.budget_s, Some(600.0));
    apply_budget(&mut p, BudgetChoice::None);
    assert_eq!((p.budget_s, p.floor_multiple), (None, 0.0));
}

#[test]
fn learning_off_opens_no_store() {
    let mut c = Config::default();
    c.learning.store_results = false;
    c.learning.reuse_learned_configs = false;
    c.learning.predict = false;
    // Under a file: no store can be created there.
    let f = tempfile::NamedTempFile::new().unwrap();
    let db = f.path().join("o3.db");
    assert!(learning::open_store(Some(&db), &c).unwrap().is_none());
    c.learning.store_results = true;
    assert!(matches!(
        learning::open_store(Some(&db), &c),
        Err(RunError::Store(_))
    ));
}
