//! `cargo xtask faults`: the fault suite. A fixed list of scenarios drives the real o3 debug
//! binary against llama.cpp's llama-server and the tiny test model (or a simulated server) and
//! disturbs it: signals mid-probe, a crashed or stopped server, a full disk, a damaged store or
//! journal, mutated inputs, runs sharing a store, recordings at the same time. Each scenario
//! prints one row (survived or FAILED, seconds, what happened), then one closing line
//! `N scenarios, M survived: L lost, O orphans, H hangs, P panics`; any loss, orphan, hang,
//! panic or failed scenario fails the command. docs/faults.md describes every scenario.
//!
//! - panic: o3's stderr holds "panicked at", or it exits 101;
//! - hang: an o3 invocation outlives its time limit (it is then killed with SIGKILL);
//! - orphan: after a scenario, a process marked `O3_SERVER_OWNER=<pid>:<start>` by an o3 this
//!   scenario started, still running 2 s after that o3 ended (its process group is killed);
//! - lost: a journaled probe missing after a resume, a store run missing, an answer that differs
//!   from the undisturbed run's, or a run directory or store left unusable.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::{cargo, root, run, setup};

mod fuzz;
mod harness;
mod real_runs;
mod sharing;

use fuzz::*;
use harness::*;
use real_runs::*;
use sharing::*;

/// The longest a real optimization (or its resume) may take: config/short.yaml takes 20-40 s
/// on two idle cores, a few times that on a busy machine.
const RUN_LIMIT: Duration = Duration::from_secs(300);
/// The longest any short o3 command may take (report, a simulated run, history, record).
const SHORT_LIMIT: Duration = Duration::from_secs(60);
/// The longest one fuzzed input may take (each normally takes well under a second).
const FUZZ_LIMIT: Duration = Duration::from_secs(10);
/// How long each fuzz scenario mutates inputs.
const FUZZ_TIME: Duration = Duration::from_secs(8);
/// How long a server may outlive the o3 that started it.
const GRACE: Duration = Duration::from_secs(2);
/// How long a server runs before o3 is signalled: it is loading the model (a probe of the
/// tiny model takes 0.2-1 s, so a longer wait could miss it).
const SETTLE: Duration = Duration::from_millis(100);
/// The fuzzers' seed ("o3faults"); the scenario's index is added to it.
const SEED: u64 = 0x6f33_6661_756c_7473;
/// The environment variable o3 marks every server it starts with (`<pid>:<start time>`).
const OWNER_VAR: &str = "O3_SERVER_OWNER";

/// A process id as nix takes it.
fn pid(p: u32) -> Pid {
    Pid::from_raw(p as i32)
}

type Scenario = fn(&mut Suite, &mut Scn) -> Result<String>;

const SCENARIOS: &[(&str, Scenario)] = &[
    ("undisturbed", undisturbed),
    ("kill -9 mid-probe", kill_9),
    ("SIGINT mid-probe", sigint),
    ("SIGTERM mid-probe", sigterm),
    ("SIGHUP mid-probe", sighup),
    ("server crash", server_crash),
    ("server hang", server_hang),
    ("disk full", disk_full),
    ("damaged store", damaged_store),
    ("damaged journal", damaged_journal),
    ("fuzz: GGUF", fuzz_gguf),
    ("fuzz: config", fuzz_config),
    ("fuzz: sysfs", fuzz_sysfs),
    ("fuzz: traces", fuzz_traces),
    ("shared store", shared_store),
    ("three records", three_records),
];

/// What every scenario uses, and what the undisturbed run leaves for the others.
struct Suite {
    o3: PathBuf,
    workload: PathBuf,
    server_bin: PathBuf,
    model: PathBuf,
    /// Everything the suite writes lives here (removed when every scenario survived).
    dir: PathBuf,
    /// config/short.yaml with one request per validated configuration (see docs/faults.md).
    config: PathBuf,
    /// The same with `timeouts: {load_s: 20, stall_s: 3}`, for the stopped server.
    hang_config: PathBuf,
    /// The undisturbed run's `context.validated`.
    reference: Option<Value>,
    /// The undisturbed run's directory.
    undisturbed: Option<PathBuf>,
}

/// Runs every scenario, or (for a reproduction) those whose names contain one of `only`,
/// always after the undisturbed run (their reference).
pub fn faults(only: &[&str]) -> Result<()> {
    let chosen = choose(only)?;
    let mut suite = prepare()?;
    eprintln!(
        "xtask: fault suite: {} scenarios, files in {}",
        chosen.len(),
        suite.dir.display()
    );

    let width = chosen
        .iter()
        .map(|(_, n, _)| n.len())
        .chain(["scenario".len()])
        .max()
        .unwrap_or(0);
    println!(
        "{:<width$}  {:<8}  {:>7}  detail",
        "scenario", "result", "seconds"
    );
    let started = Instant::now();
    let mut totals = Totals::default();
    for &(i, name, scenario) in &chosen {
        let (c, secs, detail) = run_scenario(&mut suite, i, name, scenario)?;
        let ok = c.problems.is_empty();
        totals.add(&c, ok);
        println!(
            "{name:<width$}  {:<8}  {secs:>7.1}  {detail}",
            if ok { "survived" } else { "FAILED" }
        );
        if !ok {
            for p in &c.problems {
                println!("{:width$}  - {p}", "");
            }
        }
    }
    let total = started.elapsed().as_secs_f64();
    println!("{:<width$}  {:<8}  {total:>7.1}", "total", "");
    totals.finish(chosen.len() as u64, &suite.dir)
}

/// The scenarios to run, each with its index in SCENARIOS (its directory and its fuzz seed):
/// all of them, or the undisturbed run and those whose names contain one of `only`.
fn choose(only: &[&str]) -> Result<Vec<(usize, &'static str, Scenario)>> {
    let named = |name: &str| {
        only.iter()
            .any(|o| name.to_lowercase().contains(&o.to_lowercase()))
    };
    if !only.is_empty() && !SCENARIOS.iter().any(|(n, _)| named(n)) {
        bail!(
            "no scenario matches {only:?}; the scenarios: {}",
            SCENARIOS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(SCENARIOS
        .iter()
        .enumerate()
        .filter(|(i, (name, _))| only.is_empty() || *i == 0 || named(name))
        .map(|(i, (name, f))| (i, *name, *f))
        .collect())
}

/// Sets up the toolchain and test server, builds o3, and writes the suite's directory and
/// its two configurations, which o3 must accept.
fn prepare() -> Result<Suite> {
    setup::setup()?;
    let server = setup::test_server()?;
    let server_bin = setup::llama_server_bin()?;
    run(cargo().args(["build", "-p", "o3-user", "--bins"]))?;
    let bin = root().join("target/debug");
    let dir = std::env::temp_dir().join(format!("o3-faults-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (config, hang_config) = write_configs(&dir)?;
    let suite = Suite {
        o3: bin.join("o3"),
        workload: bin.join("o3-workload"),
        server_bin,
        model: server.model,
        dir,
        config,
        hang_config,
        reference: None,
        undisturbed: None,
    };
    check_configs(&suite)?;
    Ok(suite)
}

/// Writes config/short.yaml with one request per validated configuration, and the same with
/// the stopped server's timeouts, into `dir`; returns both paths.
fn write_configs(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let short = std::fs::read_to_string(root().join("config/short.yaml"))
        .context("reading config/short.yaml")?;
    let config = dir.join("short.yaml");
    let quick = set_key(&short, "validation", "samples", "1");
    std::fs::write(&config, &quick)?;
    let hang_config = dir.join("short-hang.yaml");
    let hang = set_key(
        &set_key(&quick, "timeouts", "load_s", "20"),
        "timeouts",
        "stall_s",
        "3",
    );
    std::fs::write(&hang_config, hang)?;
    Ok((config, hang_config))
}

/// `o3 config check` on both of the suite's configurations.
fn check_configs(suite: &Suite) -> Result<()> {
    for c in [&suite.config, &suite.hang_config] {
        let out = Command::new(&suite.o3)
            .args(["config", "check"])
            .arg(c)
            .env("XDG_DATA_HOME", suite.dir.join("config-check"))
            .output()
            .with_context(|| format!("starting {}", suite.o3.display()))?;
        if !out.status.success() {
            bail!(
                "the suite's configuration {} is refused: {}",
                c.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

/// Runs one scenario and sweeps its orphans; returns its state, its seconds and its detail
/// (the error, first among its problems, when it failed).
fn run_scenario(
    suite: &mut Suite,
    i: usize,
    name: &'static str,
    scenario: Scenario,
) -> Result<(Scn, f64, String)> {
    let mut c = Scn::new(suite, i, name)?;
    let t0 = Instant::now();
    let result = scenario(suite, &mut c);
    let swept = sweep(&c.owners);
    if !swept.is_empty() {
        c.orphans += swept.len() as u64;
        c.problem(format!(
            "{} orphan(s) still running {} s after their o3 ended, killed: {}",
            swept.len(),
            GRACE.as_secs(),
            swept.join("; ")
        ));
    }
    let secs = t0.elapsed().as_secs_f64();
    let detail = match result {
        Ok(d) => d,
        Err(e) => {
            let e = format!("{e:#}");
            c.problems.insert(0, e.clone());
            e
        }
    };
    Ok((c, secs, detail))
}

/// The suite's counts over the scenarios run.
#[derive(Default)]
struct Totals {
    survived: u64,
    lost: u64,
    orphans: u64,
    hangs: u64,
    panics: u64,
}

impl Totals {
    fn add(&mut self, c: &Scn, ok: bool) {
        self.survived += u64::from(ok);
        self.lost += c.lost;
        self.orphans += c.orphans;
        self.hangs += c.hangs;
        self.panics += c.panics;
    }

    /// Prints the closing line; removes the suite's files when every one of the `n`
    /// scenarios survived, or fails keeping them.
    fn finish(&self, n: u64, dir: &Path) -> Result<()> {
        let Totals {
            survived,
            lost,
            orphans,
            hangs,
            panics,
        } = *self;
        println!(
            "{n} scenarios, {survived} survived: {lost} lost, {orphans} orphans, {hangs} hangs, {panics} panics"
        );
        if survived == n && lost + orphans + hangs + panics == 0 {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                eprintln!("xtask: could not remove {}: {e}", dir.display());
            }
            Ok(())
        } else {
            bail!(
                "the fault suite failed ({} of {n} scenarios did not survive); its files are kept in {} for the reproductions above",
                n - survived,
                dir.display()
            )
        }
    }
}

/// `yaml` with `section.key` set to `value`: the key's line replaced where the top-level
/// section has one, else added under the section (the section added where missing).
fn set_key(yaml: &str, section: &str, key: &str, value: &str) -> String {
    let lines: Vec<&str> = yaml.lines().collect();
    let line = format!("  {key}: {value}");
    let header = format!("{section}:");
    let Some(start) = lines.iter().position(|l| l.trim_end() == header) else {
        return format!("{}\n{header}\n{line}\n", yaml.trim_end());
    };
    let end = lines[start + 1..]
        .iter()
        .position(|l| !l.is_empty() && !l.starts_with(' ') && !l.starts_with('#'))
        .map_or(lines.len(), |i| start + 1 + i);
    let mut out: Vec<String> = lines.iter().map(std::string::ToString::to_string).collect();
    let prefix = format!("  {key}:");
    match (start + 1..end).find(|&i| lines[i].starts_with(&prefix)) {
        Some(i) => out[i] = line,
        None => out.insert(start + 1, line),
    }
    out.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_key_replaces_adds_and_appends() {
        let y = "# c\nsearch:\n  a: 1\ntimeouts:\n  load_s: 120\nsafety:\n  x: 1\n";
        let t = set_key(y, "timeouts", "load_s", "20");
        assert!(t.contains("timeouts:\n  load_s: 20\nsafety:"), "{t}");
        let t = set_key(&t, "timeouts", "stall_s", "3");
        assert!(t.contains("timeouts:\n  stall_s: 3\n  load_s: 20\n"), "{t}");
        let t = set_key(&t, "validation", "samples", "1");
        assert!(t.ends_with("validation:\n  samples: 1\n"), "{t}");
    }

    #[test]
    fn the_generator_is_deterministic_and_mutations_stay_in_bounds() {
        let (mut a, mut b) = (Rng::new(SEED), Rng::new(SEED));
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        for _ in 0..10_000 {
            let mut d = b"gpu_busy_percent 42\n".to_vec();
            mutate(&mut a, &mut d);
            let mut e = Vec::new();
            mutate(&mut a, &mut e);
        }
    }

    fn scn() -> Scn {
        Scn {
            index: 0,
            o3: PathBuf::from("o3"),
            dir: std::env::temp_dir(),
            data: std::env::temp_dir(),
            owners: Vec::new(),
            lost: 0,
            orphans: 0,
            hangs: 0,
            panics: 0,
            problems: Vec::new(),
        }
    }

    #[test]
    fn an_invocation_past_its_limit_is_killed_and_counted_as_a_hang() {
        let mut c = scn();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo started; exec sleep 30"]);
        let t0 = Instant::now();
        let out = c.run(cmd, Duration::from_millis(300)).unwrap();
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert!(
            out.hung && c.hangs == 1 && c.panics == 0,
            "{:?}",
            c.problems
        );
        assert_eq!(out.stdout, "started\n");
        assert!(
            out.brief().starts_with("killed at its limit"),
            "{}",
            out.brief()
        );
    }

    #[test]
    fn a_panic_and_a_failure_of_several_lines_are_seen() {
        let mut c = scn();
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo \"thread 'main' panicked at src/x.rs:1:1:\" >&2; exit 101",
        ]);
        let out = c.run(cmd, Duration::from_secs(10)).unwrap();
        assert!(
            !out.hung && c.panics == 1 && c.hangs == 0,
            "{:?}",
            c.problems
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo 'o3: one' >&2; echo 'two' >&2; exit 1"]);
        let out = c.run(cmd, Duration::from_secs(10)).unwrap();
        assert!(out.one_line().is_err());
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo 'o3: refused' >&2; exit 2"]);
        let out = c.run(cmd, Duration::from_secs(10)).unwrap();
        assert_eq!(out.one_line(), Ok("o3: refused"));
        assert_eq!(c.panics, 1);
    }

    #[test]
    fn thousands_separates() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1234), "1,234");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
