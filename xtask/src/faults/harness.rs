//! The fault suite's harness: one scenario's bookkeeping, the o3 processes it starts and
//! watches, what they printed, and the /proc and file helpers the scenarios share.

use super::*;

/// One scenario's bookkeeping: its directory, the o3 processes it started (the owners its
/// orphans would name) and what went wrong.
pub(super) struct Scn {
    pub(super) index: usize,
    pub(super) o3: PathBuf,
    pub(super) dir: PathBuf,
    /// Its XDG_DATA_HOME: no default store or run directory of the user is touched.
    pub(super) data: PathBuf,
    pub(super) owners: Vec<(u32, u64)>,
    pub(super) lost: u64,
    pub(super) orphans: u64,
    pub(super) hangs: u64,
    pub(super) panics: u64,
    pub(super) problems: Vec<String>,
}

impl Scn {
    pub(super) fn new(s: &Suite, index: usize, name: &str) -> Result<Scn> {
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

    pub(super) fn problem(&mut self, p: impl Into<String>) {
        self.problems.push(p.into());
    }

    pub(super) fn lose(&mut self, n: u64, p: impl Into<String>) {
        self.lost += n;
        self.problem(p);
    }

    /// The o3 binary with this scenario's data directory.
    pub(super) fn o3(&self) -> Command {
        let mut c = Command::new(&self.o3);
        c.env("XDG_DATA_HOME", &self.data);
        c
    }

    pub(super) fn start(&mut self, mut cmd: Command, limit: Duration) -> Result<Running> {
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
    pub(super) fn finish(&mut self, mut r: Running) -> Out {
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
                    r.status = r.rx.recv().ok().and_then(std::result::Result::ok);
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

    pub(super) fn run(&mut self, cmd: Command, limit: Duration) -> Result<Out> {
        let r = self.start(cmd, limit)?;
        Ok(self.finish(r))
    }

    /// Checks the run's answer against the undisturbed run's (a difference is a loss).
    pub(super) fn same_answer(&mut self, s: &Suite, summary: &Value) {
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
pub(super) struct Drain {
    pub(super) buf: Arc<Mutex<Vec<u8>>>,
    /// Disconnected once the stream is at its end.
    pub(super) open: mpsc::Receiver<()>,
}

impl Drain {
    pub(super) fn new(mut r: impl Read + Send + 'static) -> Drain {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let (tx, open) = mpsc::channel::<()>();
        let b = buf.clone();
        std::thread::spawn(move || {
            let _tx = tx;
            let mut chunk = [0u8; 65536];
            while let Ok(n @ 1..) = r.read(&mut chunk) {
                b.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .extend_from_slice(&chunk[..n]);
            }
        });
        Drain { buf, open }
    }

    /// What was read by `until` (the end of the stream, or then), and whether the stream was
    /// still open then.
    pub(super) fn take(&self, until: Instant) -> (String, bool) {
        let left = until.saturating_duration_since(Instant::now());
        let open = matches!(
            self.open.recv_timeout(left),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        let b = self
            .buf
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (String::from_utf8_lossy(&b).into_owned(), open)
    }
}

/// An o3 process this suite started, waited for by a thread of its own.
pub(super) struct Running {
    pub(super) what: String,
    pub(super) pid: u32,
    pub(super) started: Instant,
    pub(super) limit: Duration,
    pub(super) rx: mpsc::Receiver<std::io::Result<ExitStatus>>,
    /// Whether the waiter thread has reported.
    pub(super) ended: bool,
    pub(super) status: Option<ExitStatus>,
    pub(super) stdout: Drain,
    pub(super) stderr: Drain,
}

impl Running {
    pub(super) fn exited(&mut self) -> bool {
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
    pub(super) fn wait_for<T>(
        &mut self,
        what: &str,
        mut found: impl FnMut() -> Option<T>,
    ) -> Result<T> {
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
    pub(super) fn server(&mut self, bin: &Path, except: &[u32]) -> Result<u32> {
        let pid = self.pid;
        self.wait_for("its server started", || {
            children(pid, bin).into_iter().find(|p| !except.contains(p))
        })
    }

    pub(super) fn journal_lines(&mut self, run: &Path, n: usize) -> Result<usize> {
        let j = run.join("journal.jsonl");
        self.wait_for(&format!("{n} journal line(s)"), || {
            Some(complete_lines(&j)).filter(|&l| l >= n)
        })
    }

    pub(super) fn signal(&self, sig: Signal) {
        if !self.ended {
            // Our own unreaped child, so the pid is still ours.
            let _ = signal::kill(pid(self.pid), sig);
        }
    }
}

pub(super) struct Out {
    pub(super) what: String,
    pub(super) status: Option<ExitStatus>,
    pub(super) stdout: String,
    pub(super) stderr: String,
    pub(super) secs: f64,
    pub(super) hung: bool,
}

impl Out {
    pub(super) fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    pub(super) fn panicked(&self) -> bool {
        self.stderr.contains("panicked at") || self.code() == Some(101)
    }

    /// The JSON object on stdout's last line (`--json`).
    pub(super) fn json(&self) -> Option<Value> {
        serde_json::from_str(self.stdout.lines().rev().find(|l| !l.trim().is_empty())?).ok()
    }

    /// "exit 1: <stderr's last line>", for messages.
    pub(super) fn brief(&self) -> String {
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
    pub(super) fn success(&self) -> Result<Value> {
        match (self.code(), self.json()) {
            (Some(0), Some(j)) => Ok(j),
            _ => bail!("{}", self.brief()),
        }
    }

    /// A failure's message: exactly one error line, starting with "o3: ". Warnings and
    /// notices o3 printed on the way (`o3: warning: …`, `o3: notice: …`, one line each) may
    /// precede it: a full disk may first cost a trace file, which o3 says before it stops.
    pub(super) fn one_line(&self) -> Result<&str, String> {
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

pub(super) fn describe(cmd: &Command) -> String {
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

pub(super) fn show(v: &Value) -> String {
    match v {
        Value::Null => "none".into(),
        v => v.to_string(),
    }
}

pub(super) fn plural(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// "3 of 3 probes kept", and how many more the journal held (probes that finished while o3
/// stopped).
pub(super) fn kept_text(kept: u64, noted: usize) -> String {
    let noted = noted as u64;
    let mut t = format!("{} of {} kept", kept.min(noted), plural(noted, "probe"));
    if kept > noted {
        t += &format!(" (+{} journaled while stopping)", kept - noted);
    }
    t
}

pub(super) fn thousands(n: u64) -> String {
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

pub(super) fn count(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

// ---- /proc ----

/// (state, start time in clock ticks since boot, ppid) of `pid`.
pub(super) fn stat(pid: u32) -> Option<(char, u64, u32)> {
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

pub(super) fn alive(pid: u32, start: u64) -> bool {
    matches!(stat(pid), Some((state, s, _)) if s == start && state != 'Z' && state != 'X')
}

pub(super) fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn cmdline(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The servers `parent` started: its children whose argv[0] is `bin` and that listen
/// (`--port`; o3 also runs the binary for its `--help` and `--version`).
pub(super) fn children(parent: u32, bin: &Path) -> Vec<u32> {
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
pub(super) fn gone_within(pid: u32, limit: Duration) -> Option<Duration> {
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
pub(super) fn owner_of(pid: u32) -> Option<(u32, u64)> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{OWNER_VAR}=");
    let value = env
        .split(|&b| b == 0)
        .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))?;
    let (p, s) = std::str::from_utf8(value).ok()?.split_once(':')?;
    Some((p.parse().ok()?, s.parse().ok()?))
}

/// Running processes marked by one of `owners` (o3 processes this scenario started).
pub(super) fn marked_by(owners: &[(u32, u64)]) -> Vec<(u32, char, (u32, u64))> {
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
pub(super) fn sweep(owners: &[(u32, u64)]) -> Vec<String> {
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
pub(super) fn complete_lines(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

pub(super) fn copy_tree(from: &Path, to: &Path) -> Result<()> {
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
pub(super) fn files(dir: &Path) -> Vec<PathBuf> {
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
pub(super) fn tmpfs_bytes(dir: &Path) -> u64 {
    files(dir)
        .iter()
        .filter_map(|f| f.metadata().ok())
        .map(|m| m.len().div_ceil(4096) * 4096 + 4096)
        .sum()
}
