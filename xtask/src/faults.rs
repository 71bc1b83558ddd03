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
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let prefix = format!("  {key}:");
    match (start + 1..end).find(|&i| lines[i].starts_with(&prefix)) {
        Some(i) => out[i] = line,
        None => out.insert(start + 1, line),
    }
    out.join("\n") + "\n"
}

/// One scenario's bookkeeping: its directory, the o3 processes it started (the owners its
/// orphans would name) and what went wrong.
struct Scn {
    index: usize,
    o3: PathBuf,
    dir: PathBuf,
    /// Its XDG_DATA_HOME: no default store or run directory of the user is touched.
    data: PathBuf,
    owners: Vec<(u32, u64)>,
    lost: u64,
    orphans: u64,
    hangs: u64,
    panics: u64,
    problems: Vec<String>,
}

impl Scn {
    fn new(s: &Suite, index: usize, name: &str) -> Result<Scn> {
        let slug: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        let dir = s.dir.join(format!("{index:02}-{}", slug.trim_matches('-')));
        let data = dir.join("data");
        std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        Ok(Scn {
            index,
            o3: s.o3.clone(),
            dir,
            data,
            owners: Vec::new(),
            lost: 0,
            orphans: 0,
            hangs: 0,
            panics: 0,
            problems: Vec::new(),
        })
    }

    fn problem(&mut self, p: impl Into<String>) {
        self.problems.push(p.into());
    }

    fn lose(&mut self, n: u64, p: impl Into<String>) {
        self.lost += n;
        self.problem(p);
    }

    /// The o3 binary with this scenario's data directory.
    fn o3(&self) -> Command {
        let mut c = Command::new(&self.o3);
        c.env("XDG_DATA_HOME", &self.data);
        c
    }

    fn start(&mut self, mut cmd: Command, limit: Duration) -> Result<Running> {
        let what = describe(&cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let pid = child.id();
        // The child is not reaped before its waiter thread waits: its stat stays readable.
        if let Some((_, start, _)) = stat(pid) {
            self.owners.push((pid, start));
        }
        let stdout = Drain::new(child.stdout.take().expect("piped"));
        let stderr = Drain::new(child.stderr.take().expect("piped"));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        Ok(Running {
            what,
            pid,
            started: Instant::now(),
            limit,
            rx,
            ended: false,
            status: None,
            stdout,
            stderr,
        })
    }

    /// Waits for `r` within its limit (killing it with SIGKILL past it: a hang) and counts a
    /// panic or a hang.
    fn finish(&mut self, mut r: Running) -> Out {
        let mut hung = false;
        if !r.ended {
            let left = r.limit.saturating_sub(r.started.elapsed());
            match r.rx.recv_timeout(left) {
                Ok(s) => r.status = s.ok(),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    hung = true;
                    // Our own child, not reaped yet (its waiter thread has not returned), so
                    // the pid is still ours.
                    let _ = signal::kill(pid(r.pid), Signal::SIGKILL);
                    r.status = r.rx.recv().ok().and_then(|s| s.ok());
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {}
            }
        }
        let secs = r.started.elapsed().as_secs_f64();
        // A process o3 started that inherited its stdout or stderr keeps them open.
        let until = Instant::now() + GRACE;
        let (stdout, out_open) = r.stdout.take(until);
        let (stderr, err_open) = r.stderr.take(until);
        let out = Out {
            stdout,
            stderr,
            status: r.status,
            secs,
            hung,
            what: r.what,
        };
        if out_open || err_open {
            self.problem(format!(
                "o3's output was still open {} s after it ended: a process it started outlived it: {}",
                GRACE.as_secs(),
                out.what
            ));
        }
        if hung {
            self.hangs += 1;
            self.problem(format!(
                "hang: still running after {} s, killed: {}",
                r.limit.as_secs(),
                out.what
            ));
        }
        if out.panicked() {
            self.panics += 1;
            let line = out
                .stderr
                .lines()
                .find(|l| l.contains("panicked at"))
                .unwrap_or("exit status 101");
            self.problem(format!("panic: {line}: {}", out.what));
        }
        out
    }

    fn run(&mut self, cmd: Command, limit: Duration) -> Result<Out> {
        let r = self.start(cmd, limit)?;
        Ok(self.finish(r))
    }

    /// Checks the run's answer against the undisturbed run's (a difference is a loss).
    fn same_answer(&mut self, s: &Suite, summary: &Value) {
        let answer = &summary["context"]["validated"];
        match &s.reference {
            None => self.problem("no reference answer: the undisturbed run did not finish"),
            Some(r) if r != answer => self.lose(
                1,
                format!(
                    "answer {} differs from the undisturbed run's {}",
                    show(answer),
                    show(r)
                ),
            ),
            Some(_) => {}
        }
    }
}

/// One output stream of a process, read by a thread of its own.
struct Drain {
    buf: Arc<Mutex<Vec<u8>>>,
    /// Disconnected once the stream is at its end.
    open: mpsc::Receiver<()>,
}

impl Drain {
    fn new(mut r: impl Read + Send + 'static) -> Drain {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let (tx, open) = mpsc::channel::<()>();
        let b = buf.clone();
        std::thread::spawn(move || {
            let _tx = tx;
            let mut chunk = [0u8; 65536];
            while let Ok(n @ 1..) = r.read(&mut chunk) {
                b.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&chunk[..n]);
            }
        });
        Drain { buf, open }
    }

    /// What was read by `until` (the end of the stream, or then), and whether the stream was
    /// still open then.
    fn take(&self, until: Instant) -> (String, bool) {
        let left = until.saturating_duration_since(Instant::now());
        let open = matches!(
            self.open.recv_timeout(left),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        let b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        (String::from_utf8_lossy(&b).into_owned(), open)
    }
}

/// An o3 process this suite started, waited for by a thread of its own.
struct Running {
    what: String,
    pid: u32,
    started: Instant,
    limit: Duration,
    rx: mpsc::Receiver<std::io::Result<ExitStatus>>,
    /// Whether the waiter thread has reported.
    ended: bool,
    status: Option<ExitStatus>,
    stdout: Drain,
    stderr: Drain,
}

impl Running {
    fn exited(&mut self) -> bool {
        if !self.ended {
            match self.rx.try_recv() {
                Ok(s) => (self.ended, self.status) = (true, s.ok()),
                Err(mpsc::TryRecvError::Disconnected) => self.ended = true,
                Err(mpsc::TryRecvError::Empty) => {}
            }
        }
        self.ended
    }

    /// Polls `found` until it gives a value; fails when o3 ends or outlives its limit first
    /// (then [`Scn::finish`] says which).
    fn wait_for<T>(&mut self, what: &str, mut found: impl FnMut() -> Option<T>) -> Result<T> {
        loop {
            if let Some(v) = found() {
                return Ok(v);
            }
            if self.exited() {
                bail!("o3 ended before {what}");
            }
            if self.started.elapsed() >= self.limit {
                bail!("no {what} within {} s", self.limit.as_secs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The llama-server `bin` this o3 started, other than those in `except`.
    fn server(&mut self, bin: &Path, except: &[u32]) -> Result<u32> {
        let pid = self.pid;
        self.wait_for("its server started", || {
            children(pid, bin).into_iter().find(|p| !except.contains(p))
        })
    }

    fn journal_lines(&mut self, run: &Path, n: usize) -> Result<usize> {
        let j = run.join("journal.jsonl");
        self.wait_for(&format!("{n} journal line(s)"), || {
            Some(complete_lines(&j)).filter(|&l| l >= n)
        })
    }

    fn signal(&self, sig: Signal) {
        if !self.ended {
            // Our own unreaped child, so the pid is still ours.
            let _ = signal::kill(pid(self.pid), sig);
        }
    }
}

struct Out {
    what: String,
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
    secs: f64,
    hung: bool,
}

impl Out {
    fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    fn panicked(&self) -> bool {
        self.stderr.contains("panicked at") || self.code() == Some(101)
    }

    /// The JSON object on stdout's last line (`--json`).
    fn json(&self) -> Option<Value> {
        serde_json::from_str(self.stdout.lines().rev().find(|l| !l.trim().is_empty())?).ok()
    }

    /// "exit 1: <stderr's last line>", for messages.
    fn brief(&self) -> String {
        let status = match (self.hung, self.status) {
            (true, _) => "killed at its limit".to_string(),
            (_, Some(s)) => match s.code() {
                Some(c) => format!("exit {c}"),
                None => format!("{s}"),
            },
            (_, None) => "no exit status".to_string(),
        };
        let last = self
            .stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        format!("{status}: {last} ({})", self.what)
    }

    /// The summary of a run that must have exited 0 with its JSON line.
    fn success(&self) -> Result<Value> {
        match (self.code(), self.json()) {
            (Some(0), Some(j)) => Ok(j),
            _ => bail!("{}", self.brief()),
        }
    }

    /// A failure's message: exactly one error line, starting with "o3: ". Warnings and
    /// notices o3 printed on the way (`o3: warning: …`, `o3: notice: …`, one line each) may
    /// precede it: a full disk may first cost a trace file, which o3 says before it stops.
    fn one_line(&self) -> Result<&str, String> {
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter(|l| !l.starts_with("o3: warning: ") && !l.starts_with("o3: notice: "))
            .collect();
        match lines.as_slice() {
            [l] if l.starts_with("o3: ") => Ok(l),
            _ => Err(format!(
                "a failure that is not one `o3: ` line ({} lines: {:?}): {}",
                lines.len(),
                lines.iter().take(3).collect::<Vec<_>>(),
                self.what
            )),
        }
    }
}

fn describe(cmd: &Command) -> String {
    let quote = |s: &std::ffi::OsStr| {
        let s = s.to_string_lossy();
        if !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@".contains(c))
        {
            s.into_owned()
        } else {
            format!("'{}'", s.replace('\'', "'\\''"))
        }
    };
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), quote(v?))))
        .collect();
    parts.push(quote(cmd.get_program()));
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => "none".into(),
        v => v.to_string(),
    }
}

fn plural(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// "3 of 3 probes kept", and how many more the journal held (probes that finished while o3
/// stopped).
fn kept_text(kept: u64, noted: usize) -> String {
    let noted = noted as u64;
    let mut t = format!("{} of {} kept", kept.min(noted), plural(noted, "probe"));
    if kept > noted {
        t += &format!(" (+{} journaled while stopping)", kept - noted);
    }
    t
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn count(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

// ---- /proc ----

/// (state, start time in clock ticks since boot, ppid) of `pid`.
fn stat(pid: u32) -> Option<(char, u64, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let rest: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    let state = rest.first()?.chars().next()?;
    // rest[0] is field 3 (state), rest[1] field 4 (ppid), rest[19] field 22 (start time).
    Some((
        state,
        rest.get(19)?.parse().ok()?,
        rest.get(1)?.parse().ok()?,
    ))
}

fn alive(pid: u32, start: u64) -> bool {
    matches!(stat(pid), Some((state, s, _)) if s == start && state != 'Z' && state != 'X')
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn cmdline(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The servers `parent` started: its children whose argv[0] is `bin` and that listen
/// (`--port`; o3 also runs the binary for its `--help` and `--version`).
fn children(parent: u32, bin: &Path) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|&pid| {
            matches!(stat(pid), Some((state, _, ppid)) if ppid == parent && state != 'Z')
                && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    let mut argv = c.split(|&b| b == 0);
                    argv.next() == Some(bin.as_os_str().as_encoded_bytes())
                        && argv.any(|a| a == b"--port")
                })
        })
        .collect()
}

/// Whether `pid` is gone (or a zombie: it runs no more) within `limit`; how long it took.
fn gone_within(pid: u32, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    loop {
        if !matches!(stat(pid), Some((s, _, _)) if s != 'Z' && s != 'X') {
            return Some(t0.elapsed());
        }
        if t0.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The owner (pid, start time) a process's environment names, when it carries the mark.
fn owner_of(pid: u32) -> Option<(u32, u64)> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{OWNER_VAR}=");
    let value = env
        .split(|&b| b == 0)
        .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))?;
    let (p, s) = std::str::from_utf8(value).ok()?.split_once(':')?;
    Some((p.parse().ok()?, s.parse().ok()?))
}

/// Running processes marked by one of `owners` (o3 processes this scenario started).
fn marked_by(owners: &[(u32, u64)]) -> Vec<(u32, char, (u32, u64))> {
    pids()
        .into_iter()
        .filter_map(|pid| {
            let owner = owner_of(pid).filter(|o| owners.contains(o))?;
            let (state, _, _) = stat(pid).filter(|(s, _, _)| *s != 'Z' && *s != 'X')?;
            Some((pid, state, owner))
        })
        .collect()
}

/// The orphans of `owners`: marked processes whose owner is no longer alive, still running
/// [`GRACE`] after the scenario; kills their process groups and describes them.
fn sweep(owners: &[(u32, u64)]) -> Vec<String> {
    let t0 = Instant::now();
    loop {
        let orphans: Vec<u32> = marked_by(owners)
            .into_iter()
            .filter(|(_, _, (o, s))| !alive(*o, *s))
            .map(|(pid, _, _)| pid)
            .collect();
        if orphans.is_empty() {
            return Vec::new();
        }
        if t0.elapsed() >= GRACE {
            return orphans
                .into_iter()
                .map(|orphan| {
                    let what = format!("{orphan} {}", cmdline(orphan));
                    // A process (and the group it leads) that an o3 of this suite started
                    // and that outlived it.
                    let _ = signal::killpg(pid(orphan), Signal::SIGKILL);
                    let _ = signal::kill(pid(orphan), Signal::SIGKILL);
                    what
                })
                .collect();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---- files ----

/// Lines ending in a newline (a cut last line is not counted).
fn complete_lines(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for e in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let t = e.file_type()?;
        if t.is_dir() {
            copy_tree(&src, &dst)?;
        } else if t.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else {
            std::fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
        }
    }
    Ok(())
}

/// Regular files under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => todo.push(e.path()),
                Ok(t) if t.is_file() => out.push(e.path()),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// The space `dir` takes on a tmpfs (each file rounded up to 4 KiB pages).
fn tmpfs_bytes(dir: &Path) -> u64 {
    files(dir)
        .iter()
        .filter_map(|f| f.metadata().ok())
        .map(|m| m.len().div_ceil(4096) * 4096 + 4096)
        .sum()
}

// ---- real runs ----

impl Suite {
    fn optimize(&self, c: &Scn, run: &Path, config: &Path) -> Command {
        let mut cmd = c.o3();
        cmd.args(["optimize", "--backend", "llama-server", "--server-bin"])
            .arg(&self.server_bin)
            .arg("--model")
            .arg(&self.model)
            .arg("--config")
            .arg(config)
            .arg("--out")
            .arg(run)
            .args(["--quiet", "--json"]);
        cmd
    }

    fn simulated(&self, c: &Scn, run: &Path, db: &Path) -> Command {
        let mut cmd = c.o3();
        cmd.args(["optimize", "--simulate"])
            .arg(root().join("bench/optimize/default-12gib.json"))
            .arg("--out")
            .arg(run)
            .arg("--db")
            .arg(db)
            .args(["--quiet", "--json"]);
        cmd
    }
}

fn resume(c: &Scn, run: &Path) -> Command {
    let mut cmd = c.o3();
    cmd.args(["optimize", "--resume"])
        .arg(run)
        .args(["--json", "--quiet"]);
    cmd
}

fn undisturbed(s: &mut Suite, c: &mut Scn) -> Result<String> {
    let run = c.dir.join("run");
    let out = c.run(s.optimize(c, &run, &s.config), RUN_LIMIT)?;
    let j = out.success()?;
    let answer = j["context"]["validated"].clone();
    s.reference = Some(answer.clone());
    s.undisturbed = Some(run);
    Ok(format!(
        "answer {}, {} probes",
        show(&answer),
        count(&j["probes"]["total"])
    ))
}

fn kill_9(s: &mut Suite, c: &mut Scn) -> Result<String> {
    interrupted(s, c, Signal::SIGKILL, 0)
}

fn sigint(s: &mut Suite, c: &mut Scn) -> Result<String> {
    interrupted(s, c, Signal::SIGINT, 1)
}

fn sigterm(s: &mut Suite, c: &mut Scn) -> Result<String> {
    interrupted(s, c, Signal::SIGTERM, 0)
}

fn sighup(s: &mut Suite, c: &mut Scn) -> Result<String> {
    interrupted(s, c, Signal::SIGHUP, 1)
}

/// A run signalled mid-probe (once `after` probes are journaled, while the next one's server
/// runs): its server is gone within [`GRACE`], and the resumed run keeps every journaled probe
/// and finds the undisturbed answer.
fn interrupted(s: &mut Suite, c: &mut Scn, sig: Signal, after: usize) -> Result<String> {
    let run = c.dir.join("run");
    let mut r = c.start(s.optimize(c, &run, &s.config), RUN_LIMIT)?;
    let step = (|| -> Result<(u32, usize)> {
        let mut server = r.server(&s.server_bin, &[])?;
        if after > 0 {
            r.journal_lines(&run, after)?;
            server = r.server(&s.server_bin, &[server])?;
        }
        std::thread::sleep(SETTLE);
        let noted = complete_lines(&run.join("journal.jsonl"));
        r.signal(sig);
        Ok((server, noted))
    })();
    let out = c.finish(r);
    let (server, noted) = step.map_err(|e| anyhow!("{e:#}: {}", out.brief()))?;
    let gone = gone_within(server, GRACE);
    let expected = match sig {
        Signal::SIGKILL => out
            .status
            .is_some_and(|s| std::os::unix::process::ExitStatusExt::signal(&s) == Some(9)),
        _ => out.code() == Some(130),
    };
    if !expected {
        c.problem(format!(
            "o3 did not end as the signal asks: {}",
            out.brief()
        ));
    }
    if sig != Signal::SIGKILL {
        let summary = std::fs::read_to_string(run.join("summary.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok());
        if summary.as_ref().map(|s| &s["interrupted"]) != Some(&Value::Bool(true)) {
            c.problem("summary.json does not say `interrupted: true`");
        }
    }
    let gone_text = match gone {
        Some(d) => format!("server gone in {:.2} s", d.as_secs_f64()),
        None => {
            c.problem(format!(
                "server {server} outlived o3 by more than {} s",
                GRACE.as_secs()
            ));
            format!("server {server} left running")
        }
    };
    let status = match out.code() {
        Some(code) => format!("exit {code}"),
        None => "killed".into(),
    };
    let resumed = c.run(resume(c, &run), RUN_LIMIT)?;
    let j = match resumed.success() {
        Ok(j) => j,
        Err(e) => {
            c.lose(1, format!("the run directory is unusable: --resume: {e:#}"));
            return Ok(format!("{status}, {gone_text}; resume failed"));
        }
    };
    let kept = count(&j["probes"]["from_journal"]);
    if (kept as usize) < noted {
        c.lose(
            noted as u64 - kept,
            format!("resume kept {kept} of the {noted} journaled probes"),
        );
    }
    c.same_answer(s, &j);
    Ok(format!(
        "{status}, {gone_text}; resumed: {}, answer {}",
        kept_text(kept, noted),
        show(&j["context"]["validated"])
    ))
}

/// The server killed with SIGKILL once mid-probe: the probe is retried once and the run
/// finds the undisturbed answer.
fn server_crash(s: &mut Suite, c: &mut Scn) -> Result<String> {
    let run = c.dir.join("run");
    let mut r = c.start(s.optimize(c, &run, &s.config), RUN_LIMIT)?;
    let step = (|| -> Result<u32> {
        // At once, as a stray `kill -9` would: the server is loading, mid-probe.
        let server = r.server(&s.server_bin, &[])?;
        // The server the o3 we started started.
        let _ = signal::kill(pid(server), Signal::SIGKILL);
        Ok(server)
    })();
    let out = c.finish(r);
    step.map_err(|e| anyhow!("{e:#}: {}", out.brief()))?;
    let j = out.success()?;
    c.same_answer(s, &j);
    let journal = std::fs::read_to_string(run.join("journal.jsonl")).unwrap_or_default();
    let retried = journal.lines().position(|l| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| {
            v["outcome"]["notes"].as_array().is_some_and(|n| {
                n.iter()
                    .any(|n| n.as_str().is_some_and(|n| n.contains("retried once")))
            })
        })
    });
    match retried {
        Some(i) => Ok(format!(
            "probe {} retried once, answer {}",
            i + 1,
            show(&j["context"]["validated"])
        )),
        None => bail!("no probe's outcome.notes in the journal says \"retried once\""),
    }
}

/// The second probe's server stopped with SIGSTOP: the run ends on its own and leaves no
/// stopped process.
fn server_hang(s: &mut Suite, c: &mut Scn) -> Result<String> {
    let run = c.dir.join("run");
    let mut r = c.start(s.optimize(c, &run, &s.hang_config), RUN_LIMIT)?;
    let step = (|| -> Result<u32> {
        let first = r.server(&s.server_bin, &[])?;
        r.journal_lines(&run, 1)?;
        let second = r.server(&s.server_bin, &[first])?;
        std::thread::sleep(SETTLE);
        // The server the o3 we started started.
        let _ = signal::kill(pid(second), Signal::SIGSTOP);
        Ok(second)
    })();
    let out = c.finish(r);
    let stopped = step.map_err(|e| anyhow!("{e:#}: {}", out.brief()))?;
    let gone = gone_within(stopped, GRACE);
    let left: Vec<u32> = marked_by(&c.owners)
        .into_iter()
        .filter(|(_, state, _)| matches!(state, 'T' | 't'))
        .map(|(pid, _, _)| pid)
        .collect();
    let left_text = if gone.is_none() || !left.is_empty() {
        c.problem(format!(
            "stopped processes left behind: {:?}",
            gone.map_or(vec![stopped], |_| left)
        ));
        "a stopped process left"
    } else {
        "nothing left stopped"
    };
    let j = out.success()?;
    Ok(format!(
        "server {stopped} stopped in probe 2; run ended on its own in {:.0} s, answer {}; {left_text}",
        out.secs,
        show(&j["context"]["validated"])
    ))
}

/// A tmpfs mounted for one scenario, unmounted when dropped (also on failure).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs> {
        std::fs::create_dir_all(at)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .context("starting mount")?;
        if !out.status.success() {
            bail!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Tmpfs(at.to_path_buf()))
    }

    fn resize(&self, size: &str) -> Result<()> {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()
            .context("starting mount")?;
        if !out.status.success() {
            bail!(
                "mount -o remount failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// A run whose disk fills partway: one line says so, the journal holds only whole records
/// (but a cut last line), and the resume on a larger disk finds the undisturbed answer.
fn disk_full(s: &mut Suite, c: &mut Scn) -> Result<String> {
    if !nix::unistd::geteuid().is_root() {
        bail!("needs root to mount a tmpfs: run as root");
    }
    // A third of what a whole run took (the undisturbed run's directory): the disk fills
    // partway through.
    let whole = s.undisturbed.as_deref().map_or(768 << 10, tmpfs_bytes);
    let kib = (whole / 3 / 1024).div_ceil(4) * 4;
    let kib = kib.max(64);
    let disk = Tmpfs::mount(&c.dir.join("disk"), &format!("{kib}k"))?;
    let run = disk.0.join("run");
    let out = c.run(s.optimize(c, &run, &s.config), RUN_LIMIT)?;
    if out.code() == Some(0) {
        bail!(
            "the run finished on a {kib} KiB disk (a whole run takes {} KiB)",
            whole >> 10
        );
    }
    match out.one_line() {
        Ok(l) => {
            let lower = l.to_lowercase();
            if !["no space left", "os error 28", "disk is full", "disk full"]
                .iter()
                .any(|w| lower.contains(w))
            {
                c.problem(format!("the error does not name the full disk: {l}"));
            }
        }
        Err(e) => c.problem(e),
    }
    let journal = std::fs::read(run.join("journal.jsonl")).unwrap_or_default();
    let whole_lines: Vec<&[u8]> = {
        let mut v: Vec<&[u8]> = journal.split(|&b| b == b'\n').collect();
        v.pop(); // the part after the last newline: empty, or a cut last line
        v
    };
    let bad = whole_lines
        .iter()
        .filter(|l| serde_json::from_slice::<Value>(l).is_err())
        .count();
    if bad > 0 {
        c.lose(
            bad as u64,
            format!("{bad} journal line(s) are not valid JSON"),
        );
    }
    let noted = whole_lines.len();
    disk.resize("256m")?;
    let resumed = c.run(resume(c, &run), RUN_LIMIT)?;
    let j = match resumed.success() {
        Ok(j) => j,
        Err(e) => {
            c.lose(1, format!("the run directory is unusable: --resume: {e:#}"));
            return Ok(format!("{kib} KiB disk: {}; resume failed", out.brief()));
        }
    };
    let kept = count(&j["probes"]["from_journal"]);
    if (kept as usize) < noted {
        c.lose(
            (noted as u64).saturating_sub(kept),
            format!("resume kept {kept} of the {noted} journaled probes"),
        );
    }
    c.same_answer(s, &j);
    drop(disk);
    Ok(format!(
        "{kib} KiB disk: exit {} after {}; on 256 MiB resumed: {}, answer {}",
        out.code().map_or("-".into(), |c| c.to_string()),
        plural(noted as u64, "journaled probe"),
        kept_text(kept, noted),
        show(&j["context"]["validated"])
    ))
}

/// A store whose pages after the first are overwritten is refused before anything is written:
/// one line, the store's bytes unchanged, no run directory created.
fn damaged_store(s: &mut Suite, c: &mut Scn) -> Result<String> {
    let db = c.dir.join("store.db");
    let first = c.run(s.simulated(c, &c.dir.join("first"), &db), SHORT_LIMIT)?;
    first.success().context("making the store")?;
    let mut bytes = std::fs::read(&db).with_context(|| format!("reading {}", db.display()))?;
    if bytes.len() < 18 {
        bail!("{} is {} bytes: not a database", db.display(), bytes.len());
    }
    let page = match u16::from_be_bytes([bytes[16], bytes[17]]) {
        1 => 65536,
        p => p as usize,
    };
    for (i, b) in bytes.iter_mut().enumerate().skip(page) {
        *b = 0xA5 ^ (i as u8);
    }
    std::fs::write(&db, &bytes)?;
    let pages = bytes.len().div_ceil(page) - 1;
    let second_dir = c.dir.join("second");
    let out = c.run(s.simulated(c, &second_dir, &db), SHORT_LIMIT)?;
    if out.code() == Some(0) || out.hung {
        bail!("the damaged store was used: {}", out.brief());
    }
    match out.one_line() {
        Ok(l) if l.contains("damaged") && l.contains(&*db.to_string_lossy()) => {}
        Ok(l) => c.problem(format!(
            "the error does not name the database as damaged: {l}"
        )),
        Err(e) => c.problem(e),
    }
    if std::fs::read(&db).ok().as_ref() != Some(&bytes) {
        c.lose(1, "the damaged store's bytes changed");
    }
    if second_dir.exists() {
        c.problem(format!("{} was created", second_dir.display()));
    }
    Ok(format!(
        "{pages} of {} pages overwritten: refused with one line (exit {}), store unchanged, no --out",
        pages + 1,
        out.code().map_or("-".into(), |c| c.to_string())
    ))
}

/// The undisturbed run's journal cut in its last line (inside a multi-byte character where
/// that line holds one): report works and the resume re-runs only the cut probe. And a copy
/// whose middle line is garbage: report works and names the line.
fn damaged_journal(s: &mut Suite, c: &mut Scn) -> Result<String> {
    let Some(src) = s.undisturbed.clone() else {
        bail!("no undisturbed run to damage");
    };
    let journal = std::fs::read(src.join("journal.jsonl")).context("reading the journal")?;
    let (lines, cut, inside) = last_line_cut(&journal)?;
    let cut_dir = c.dir.join("cut");
    copy_tree(&src, &cut_dir)?;
    std::fs::write(cut_dir.join("journal.jsonl"), &journal[..cut])?;
    let report_cut = report_on_cut(c, &cut_dir)?;
    let resume_text = resume_cut(s, c, &cut_dir, lines)?;
    let (mid, report_garbage) = report_on_garbage(c, &src, &journal, lines)?;
    Ok(format!(
        "line {lines} cut {inside}: {report_cut}, {resume_text}; garbage line {}: {report_garbage}",
        mid + 1
    ))
}

/// The journal's line count and where to cut its last line: inside a multi-byte character
/// where that line holds one, else mid-line; and which of the two it is.
fn last_line_cut(journal: &[u8]) -> Result<(usize, usize, &'static str)> {
    let lines = journal.iter().filter(|&&b| b == b'\n').count();
    if lines < 2 || journal.last() != Some(&b'\n') {
        bail!("the undisturbed run's journal has {lines} line(s): too few to damage");
    }
    let body = &journal[..journal.len() - 1];
    let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let (cut, inside) = match (start..body.len()).find(|&i| body[i] >= 0xC0) {
        Some(i) => (i + 1, "inside a multi-byte character"),
        None => (
            start + (body.len() - start) / 2,
            "mid-line; no multi-byte character",
        ),
    };
    Ok((lines, cut, inside))
}

/// `o3 report` on the run with the cut journal: it works, or refuses with one line.
fn report_on_cut(c: &mut Scn, cut_dir: &Path) -> Result<&'static str> {
    let mut report = c.o3();
    report.arg("report").arg(cut_dir);
    let out = c.run(report, SHORT_LIMIT)?;
    if out.code() != Some(0) && !out.hung && !out.panicked() {
        if let Err(e) = out.one_line() {
            c.problem(format!("report on the cut journal: {e}"));
        }
    }
    Ok(if out.code() == Some(0) {
        "report ok"
    } else {
        "report refused"
    })
}

/// `--resume` of the run with the cut journal: it keeps every whole line, re-runs only the
/// cut probe and finds the undisturbed answer.
fn resume_cut(s: &Suite, c: &mut Scn, cut_dir: &Path, lines: usize) -> Result<String> {
    let resumed = c.run(resume(c, cut_dir), RUN_LIMIT)?;
    Ok(match resumed.success() {
        Ok(j) => {
            let (kept, ran) = (
                count(&j["probes"]["from_journal"]),
                count(&j["probes"]["ran_now"]),
            );
            let want = (lines - 1) as u64;
            if kept < want {
                c.lose(
                    want - kept,
                    format!("resume kept {kept} of the {want} whole journal lines"),
                );
            }
            if ran != 1 {
                c.problem(format!("resume ran {ran} probes, not only the cut one"));
            }
            c.same_answer(s, &j);
            format!(
                "resumed: {kept} kept, {ran} re-run, answer {}",
                show(&j["context"]["validated"])
            )
        }
        Err(e) => {
            c.lose(
                1,
                format!("the cut run directory is unusable: --resume: {e:#}"),
            );
            "resume failed".into()
        }
    })
}

/// A copy of the run whose journal's middle line is garbage: `o3 report` works and its
/// notice names the line. Returns the line's index and the report's outcome.
fn report_on_garbage(
    c: &mut Scn,
    src: &Path,
    journal: &[u8],
    lines: usize,
) -> Result<(usize, &'static str)> {
    let garbage_dir = c.dir.join("garbage");
    copy_tree(src, &garbage_dir)?;
    let mid = lines / 2;
    let mut parts: Vec<&[u8]> = journal.split(|&b| b == b'\n').collect();
    parts[mid] = b"\x00{\"key\": garbage \xff\xfe not a record";
    std::fs::write(garbage_dir.join("journal.jsonl"), parts.join(&b'\n'))?;
    let mut report = c.o3();
    report.arg("report").arg(&garbage_dir);
    let out = c.run(report, SHORT_LIMIT)?;
    let named = format!("line {}", mid + 1);
    let report_garbage = if out.code() == Some(0) {
        "report ok"
    } else {
        "report failed"
    };
    if out.code() != Some(0) {
        c.problem(format!(
            "report on a journal with a garbage line: {}",
            out.brief()
        ));
    } else if !out.stderr.contains(&named) {
        c.problem(format!(
            "report's notice does not name {named} of the journal: {:?}",
            out.stderr.trim()
        ));
    }
    Ok((mid, report_garbage))
}

// ---- fuzzing ----

/// xorshift64* (Vigna, "An experimental exploration of Marsaglia's xorshift generators,
/// scrambled", 2016): deterministic, so a seed replays the same inputs.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in 0..n (0 when n is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

const BIG_BINARY: &[u64] = &[
    u64::MAX,
    i64::MAX as u64,
    1 << 63,
    1 << 32,
    u32::MAX as u64,
    0x7fff_ffff,
    0x8000_0000,
    0,
];

const BIG_TEXT: &[&str] = &[
    "18446744073709551616",
    "-9223372036854775809",
    "340282366920938463463374607431768211456",
    "4294967296",
    "9007199254740993",
    "-1",
    "0",
    "1e308",
    "NaN",
    "inf",
];

/// One to three of: a bit flip, a random byte, truncation at a random offset, a duplicated
/// range, a deleted range, a large integer (written over a decimal number in text, or as 4 or
/// 8 little-endian bytes).
fn mutate(rng: &mut Rng, data: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(3) {
        let len = data.len();
        let range = |rng: &mut Rng| {
            let a = rng.below(len);
            (a, a + 1 + rng.below((len - a).min(4096)))
        };
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = rng.next_u64() as u8;
            }
            2 => data.truncate(rng.below(len + 1)),
            3 if len > 0 => {
                let (a, b) = range(rng);
                let copy = data[a..b].to_vec();
                let at = rng.below(len + 1);
                data.splice(at..at, copy);
            }
            4 if len > 0 => {
                let (a, b) = range(rng);
                data.drain(a..b);
            }
            5 => {
                // The next decimal number from a random offset, replaced.
                let from = rng.below(len);
                match data[from..].iter().position(u8::is_ascii_digit) {
                    Some(i) => {
                        let a = from + i;
                        let b = a + data[a..].iter().take_while(|c| c.is_ascii_digit()).count();
                        let s = BIG_TEXT[rng.below(BIG_TEXT.len())].as_bytes();
                        data.splice(a..b, s.iter().copied());
                    }
                    None => big_binary(rng, data),
                }
            }
            _ => big_binary(rng, data),
        }
    }
}

fn big_binary(rng: &mut Rng, data: &mut Vec<u8>) {
    let v = match rng.below(BIG_BINARY.len() + 1) {
        i if i < BIG_BINARY.len() => BIG_BINARY[i],
        _ => rng.next_u64(),
    };
    let width = if rng.below(2) == 0 { 4 } else { 8 };
    let bytes = &v.to_le_bytes()[..width];
    if data.len() < width {
        data.extend_from_slice(bytes);
    } else {
        let at = rng.below(data.len() - width + 1);
        data[at..at + width].copy_from_slice(bytes);
    }
}

/// One input of a fuzz corpus: its bytes and where a mutation of it is written.
struct Input {
    bytes: Vec<u8>,
    path: PathBuf,
}

/// Counts of one fuzz scenario.
#[derive(Default)]
struct Fuzzed {
    runs: u64,
    refused: u64,
    /// Runs that did not survive; the first [`KEPT`] keep their input.
    failed: u64,
}

/// Failed fuzz inputs kept (and problems listed) per scenario.
const KEPT: u64 = 5;

impl Fuzzed {
    /// Judges one fuzzed run: a panic or a hang (counted by [`Scn::finish`]) or a failure
    /// that is not exactly one `o3: ` line keeps its input for the reproduction.
    fn judge(&mut self, c: &mut Scn, out: &Out, input: &Path, bytes: &[u8], note: &str) {
        self.runs += 1;
        let mut bad = out.hung || out.panicked();
        if !bad && out.code() != Some(0) {
            self.refused += 1;
            if let Err(e) = out.one_line() {
                bad = true;
                c.problem(e);
            }
        }
        if !bad {
            return;
        }
        self.failed += 1;
        if self.failed > KEPT {
            return;
        }
        let ext = input
            .extension()
            .map_or(String::new(), |e| format!(".{}", e.to_string_lossy()));
        let saved = c.dir.join(format!("failure-{}{ext}", self.failed));
        let _ = std::fs::write(&saved, bytes);
        c.problem(format!(
            "input kept as {}{note}; reproduce: copy it to {} and run {}",
            saved.display(),
            input.display(),
            out.what
        ));
    }
}

fn fuzz_gguf(s: &mut Suite, c: &mut Scn) -> Result<String> {
    let mut corpus = Vec::new();
    for f in files(&root().join("tests/fixtures/gguf")) {
        if f.extension().is_some_and(|e| e == "gguf") {
            corpus.push(std::fs::read(&f)?);
        }
    }
    let mut head = Vec::new();
    std::fs::File::open(&s.model)?
        .take(64 << 10)
        .read_to_end(&mut head)?;
    corpus.push(head);
    let input = c.dir.join("input.gguf");
    let inputs: Vec<Input> = corpus
        .into_iter()
        .map(|bytes| Input {
            bytes,
            path: input.clone(),
        })
        .collect();
    fuzz(c, &inputs, |rng, c, _| {
        // Half the inputs are extended (sparse) past any data end a header declares, so the
        // reader gets beyond its "file too short" check.
        let pad = rng.below(2) == 0;
        if pad {
            let f = std::fs::OpenOptions::new().write(true).open(&input)?;
            f.set_len(f.metadata()?.len().max(1 << 36))?;
        }
        let mut cmd = c.o3();
        cmd.args(["predict", "--backend", "llama-server", "--model"])
            .arg(&input)
            .args(["--ctx", "4096"]);
        Ok((
            cmd,
            if pad {
                " (then extended to 64 GiB: truncate -s 64G)"
            } else {
                ""
            },
        ))
    })
}

fn fuzz_config(_: &mut Suite, c: &mut Scn) -> Result<String> {
    let mut default = c.o3();
    default.args(["config", "default"]);
    let out = c.run(default, SHORT_LIMIT)?;
    if out.code() != Some(0) {
        bail!("o3 config default: {}", out.brief());
    }
    let input = c.dir.join("input.yaml");
    let inputs = vec![
        Input {
            bytes: std::fs::read(root().join("config/short.yaml"))?,
            path: input.clone(),
        },
        Input {
            bytes: out.stdout.into_bytes(),
            path: input.clone(),
        },
    ];
    fuzz(c, &inputs, |_, c, _| {
        let mut cmd = c.o3();
        cmd.args(["config", "check"]).arg(&input);
        Ok((cmd, ""))
    })
}

fn fuzz_sysfs(_: &mut Suite, c: &mut Scn) -> Result<String> {
    let dev = c.dir.join("dev");
    std::fs::create_dir_all(&dev)?;
    let mut inputs = Vec::new();
    let mut trees = Vec::new();
    for tree in ["strix-halo", "rdna3"] {
        let copy = c.dir.join(tree);
        copy_tree(&root().join("tests/fixtures").join(tree), &copy)?;
        for f in files(&copy) {
            inputs.push(Input {
                bytes: std::fs::read(&f)?,
                path: f,
            });
        }
        trees.push(copy);
    }
    fuzz(c, &inputs, |_, c, input| {
        let tree = trees
            .iter()
            .find(|t| input.path.starts_with(t))
            .expect("every input is in a tree");
        let mut cmd = c.o3();
        cmd.arg("--sysfs-root").arg(tree.join("sys"));
        if tree.join("proc").is_dir() {
            cmd.arg("--procfs-root").arg(tree.join("proc"));
        }
        cmd.arg("--dev-root")
            .arg(&dev)
            .args(["monitor", "--once", "--json"]);
        Ok((cmd, ""))
    })
}

fn fuzz_traces(s: &mut Suite, c: &mut Scn) -> Result<String> {
    let recorded = c.dir.join("spike.jsonl");
    let mut record = c.o3();
    record
        .arg("record")
        .arg("--out")
        .arg(&recorded)
        .arg("--")
        .arg(&s.workload)
        .args(["spike", "--mib", "64", "--hold-us", "1000", "--repeat", "5"]);
    let out = c.run(record, SHORT_LIMIT)?;
    if out.code() != Some(0) {
        bail!("o3 record: {}", out.brief());
    }
    let input = c.dir.join("input.jsonl");
    let mut inputs = vec![Input {
        bytes: std::fs::read(&recorded)?,
        path: input.clone(),
    }];
    // The smallest trace of the undisturbed run (a probe of the real server).
    if let Some(t) = s
        .undisturbed
        .as_ref()
        .map(|r| files(&r.join("traces")))
        .unwrap_or_default()
        .into_iter()
        .min_by_key(|f| f.metadata().map_or(u64::MAX, |m| m.len()))
    {
        inputs.push(Input {
            bytes: std::fs::read(&t)?,
            path: input.clone(),
        });
    }
    let n = inputs.len();
    let detail = fuzz(c, &inputs, |rng, c, _| {
        let mut cmd = c.o3();
        if rng.below(2) == 0 {
            cmd.args(["export", "--format", "csv"]);
        } else {
            cmd.arg("analyze");
        }
        cmd.arg(&input);
        Ok((cmd, ""))
    })?;
    Ok(if n < 2 {
        format!("{detail} (no run trace: the undisturbed run did not finish)")
    } else {
        detail
    })
}

/// Mutates inputs of `corpus` for [`FUZZ_TIME`]: each run writes one mutated input to its
/// path, runs the command `command` gives, judges it, and puts the original back.
fn fuzz(
    c: &mut Scn,
    corpus: &[Input],
    mut command: impl FnMut(&mut Rng, &Scn, &Input) -> Result<(Command, &'static str)>,
) -> Result<String> {
    let seed = SEED.wrapping_add(c.index as u64);
    let mut rng = Rng::new(seed);
    let mut stats = Fuzzed::default();
    let listed = c.problems.len();
    let t0 = Instant::now();
    while t0.elapsed() < FUZZ_TIME {
        let input = &corpus[rng.below(corpus.len())];
        let mut bytes = input.bytes.clone();
        mutate(&mut rng, &mut bytes);
        std::fs::write(&input.path, &bytes)
            .with_context(|| format!("writing {}", input.path.display()))?;
        let (cmd, note) = command(&mut rng, c, input)?;
        let out = c.run(cmd, FUZZ_LIMIT)?;
        stats.judge(c, &out, &input.path, &bytes, note);
        std::fs::write(&input.path, &input.bytes)?;
    }
    if stats.failed > KEPT {
        // The problems of the first KEPT are listed; the rest only counted.
        let keep = listed + 2 * KEPT as usize;
        if c.problems.len() > keep {
            c.problems.truncate(keep);
        }
        c.problem(format!(
            "{} more inputs did not survive (not kept)",
            stats.failed - KEPT
        ));
    }
    Ok(format!(
        "{} runs ({} refused with one line{}), seed {seed:#018x}",
        thousands(stats.runs),
        thousands(stats.refused),
        if stats.failed > 0 {
            format!(", {} not survived", thousands(stats.failed))
        } else {
            String::new()
        }
    ))
}

// ---- sharing ----

/// The stores of the shared-store rounds: three start on a file that does not exist yet (two
/// o3 creating one store at once), two more share the first round's.
const SHARED_ROUNDS: &[&str] = &["one.db", "two.db", "three.db", "one.db", "one.db"];

/// Two simulated runs at once on one store, in rounds: both exit 0 each time and each store
/// then holds every run that did.
fn shared_store(s: &mut Suite, c: &mut Scn) -> Result<String> {
    // (store, run directory) of each run that exited 0.
    let mut finished: Vec<(PathBuf, PathBuf)> = Vec::new();
    for (round, name) in SHARED_ROUNDS.iter().enumerate() {
        let db = c.dir.join(name);
        let mut running = Vec::new();
        for side in ["a", "b"] {
            let run = c.dir.join(format!("run{}{side}", round + 1));
            running.push((
                run.clone(),
                c.start(s.simulated(c, &run, &db), SHORT_LIMIT)?,
            ));
        }
        for (run, r) in running {
            let out = c.finish(r);
            if out.code() == Some(0) {
                finished.push((db.clone(), run));
            } else {
                c.problem(format!(
                    "round {} ({}): {}",
                    round + 1,
                    if SHARED_ROUNDS[..round].contains(name) {
                        "a store in use"
                    } else {
                        "a new store"
                    },
                    out.brief()
                ));
            }
        }
    }
    let mut stores: Vec<&str> = SHARED_ROUNDS.to_vec();
    stores.sort_unstable();
    stores.dedup();
    let mut missing = Vec::new();
    for name in stores {
        let db = c.dir.join(name);
        let mut history = c.o3();
        history.arg("history").arg("--db").arg(&db).arg("--json");
        let out = c.run(history, SHORT_LIMIT)?;
        let j = out.success().context("o3 history")?;
        let stored: Vec<&str> = j["runs"]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r["run_dir"].as_str()).collect())
            .unwrap_or_default();
        missing.extend(
            finished
                .iter()
                .filter(|(d, _)| *d == db)
                .map(|(_, r)| r.display().to_string())
                .filter(|r| !stored.contains(&r.as_str())),
        );
    }
    if !missing.is_empty() {
        c.lose(
            missing.len() as u64,
            format!("runs that exited 0 missing from their store: {missing:?}"),
        );
    }
    let all = 2 * SHARED_ROUNDS.len();
    Ok(format!(
        "{} rounds of 2 at once: {} of {all} exited 0, {} stored",
        SHARED_ROUNDS.len(),
        finished.len(),
        finished.len() - missing.len(),
    ))
}

/// Three recordings at once, each of a process holding 64 MiB: each reports its peak.
fn three_records(s: &mut Suite, c: &mut Scn) -> Result<String> {
    let mut running = Vec::new();
    for _ in 0..3 {
        let mut cmd = c.o3();
        cmd.args(["record", "--json", "--"]).arg(&s.workload).args([
            "spike",
            "--mib",
            "64",
            "--hold-us",
            "1000",
            "--repeat",
            "5",
        ]);
        running.push(c.start(cmd, SHORT_LIMIT)?);
    }
    let mut peaks = Vec::new();
    let mut method = String::new();
    for r in running {
        let out = c.finish(r);
        match out.success() {
            Ok(j) => {
                let peak = count(&j["rss"]["peak_bytes"]);
                method = j["rss"]["method"].as_str().unwrap_or("?").to_string();
                if peak < 64 << 20 {
                    c.problem(format!(
                        "peak RSS {peak} bytes is below 64 MiB: {}",
                        out.what
                    ));
                }
                peaks.push(format!("{:.1}", peak as f64 / (1 << 20) as f64));
            }
            Err(e) => c.problem(format!("{e:#}")),
        }
    }
    Ok(format!("peaks {} MiB ({method})", peaks.join(", ")))
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
