//! Servers o3 launches: a free loopback port, the process in a group of its own (so its
//! workers stop with it) that the kernel kills should o3 die (see `util::owner`), its output
//! captured into a bounded tail for failure classification, and a teardown that always runs
//! (also on drop).
//!
//! [`Launcher`] is the seam below the probe: the probe starts and stops its server through
//! it, [`Processes`] with real processes, tests with fakes that exit early or never answer.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::classify::StderrTail;
use crate::util::owner;
use crate::util::spawn::{self, Held, Prepared, SpawnError};

/// A free TCP port on 127.0.0.1 (bound, read, released: a small race with other programs is
/// possible and shows up as a load failure naming the port).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// How a launched server ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// Why a server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(
        "server command not found: `{0}` (check the path in the launch template or --server-bin)"
    )]
    NotFound(String),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("pipe: {0}")]
    Pipe(nix::Error),
    /// Putting the held child into the tracked set failed.
    #[error("{0}")]
    Track(String),
    #[error("reading the server's output: {0}")]
    Output(std::io::Error),
}

/// A server o3 started, as the probe sees it.
pub trait Server {
    fn pid(&self) -> u32;
    /// The last lines the server printed.
    fn tail(&self) -> String;
    /// Whether the server has exited (non-blocking).
    fn exited(&mut self) -> Option<Exit>;
    /// Stops the server and its workers: SIGTERM, then SIGKILL after `grace`.
    fn stop(&mut self, grace: Duration);
}

/// What starts the servers of probes.
pub trait Launcher {
    /// Starts `argv` (already filled in, listening on `port`) with `env` added to its
    /// environment. `before_exec` runs with the child forked and held before exec (the
    /// recorder puts its pid into the tracked set there); a failure there kills the child.
    fn launch(
        &mut self,
        argv: &[String],
        port: u16,
        env: &[(String, String)],
        before_exec: &mut dyn FnMut(u32) -> Result<(), String>,
    ) -> Result<Box<dyn Server>, LaunchError>;
}

/// Servers as processes of this machine ([`Launched`]).
pub struct Processes;

impl Launcher for Processes {
    fn launch(
        &mut self,
        argv: &[String],
        port: u16,
        env: &[(String, String)],
        before_exec: &mut dyn FnMut(u32) -> Result<(), String>,
    ) -> Result<Box<dyn Server>, LaunchError> {
        Ok(Box::new(Launched::start(argv, port, env, before_exec)?))
    }
}

/// A running server process.
pub struct Launched {
    pub pid: u32,
    pub port: u16,
    pub argv: Vec<String>,
    tail: Arc<Mutex<StderrTail>>,
    exit: Option<Exit>,
    /// Its group was killed after it exited: the group id may belong to others now.
    stopped: bool,
}

impl Launched {
    /// Starts `argv` (already filled in) with its output captured. `before_exec` runs with the
    /// child forked and held before exec (the recorder puts its pid into the tracked set
    /// there); a failure there kills the child.
    pub fn start(
        argv: &[String],
        port: u16,
        env: &[(String, String)],
        before_exec: impl FnOnce(u32) -> Result<(), String>,
    ) -> Result<Launched, LaunchError> {
        let prepared = prepare(argv, env)?;
        let (out, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(LaunchError::Pipe)?;
        let opts = spawn::Options {
            output: Some(out_w.as_raw_fd()),
            own_group: true,
            die_with_parent: true,
        };
        let held = spawn::fork_held_with(&prepared, opts)?;
        // The child has its copy of the write end: the reader sees the end when it exits.
        drop(out_w);
        let pid = release(held, &argv.join(" "), before_exec)?;
        let l = Launched {
            pid,
            port,
            argv: argv.to_vec(),
            tail: Arc::default(),
            exit: None,
            stopped: false,
        };
        // A failure to read the output drops `l`, which stops the server.
        l.read_output(File::from(out))?;
        Ok(l)
    }

    /// Keeps the last lines of `out` (the server's stdout and stderr) in the tail, on a thread
    /// of its own until the server closes it.
    fn read_output(&self, mut out: File) -> Result<(), LaunchError> {
        let tail = self.tail.clone();
        std::thread::Builder::new()
            .name("o3-server-log".into())
            .spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = out.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut t) = tail.lock() {
                        t.push_bytes(&buf[..n]);
                    }
                }
            })
            .map(drop)
            .map_err(LaunchError::Output)
    }

    /// The last lines the server printed.
    pub fn tail(&self) -> String {
        self.tail.lock().map(|t| t.tail()).unwrap_or_default()
    }

    fn group(&self) -> Pid {
        Pid::from_raw(self.pid as i32)
    }

    /// Whether the server has exited (non-blocking); reaps it once.
    pub fn exited(&mut self) -> Option<Exit> {
        if self.exit.is_none() {
            self.exit = match waitpid(self.group(), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => Some(Exit {
                    code: Some(code),
                    signal: None,
                }),
                Ok(WaitStatus::Signaled(_, sig, _)) => Some(Exit {
                    code: None,
                    signal: Some(sig as i32),
                }),
                _ => None,
            };
        }
        self.exit.clone()
    }

    /// Stops the whole process group: SIGTERM, then SIGKILL after `grace`. Once is enough.
    pub fn stop(&mut self, grace: Duration) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        owner::stopped(self.pid);
        let group = self.group();
        if self.exited().is_some() {
            // The group may have survivors; signalling a missing group is harmless.
            let _ = killpg(group, Signal::SIGKILL);
            return;
        }
        // A stopped server (SIGSTOP, a debugger) acts on SIGTERM only once continued.
        let _ = killpg(group, Signal::SIGTERM);
        let _ = killpg(group, Signal::SIGCONT);
        let t = Instant::now();
        while t.elapsed() < grace && self.exited().is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = killpg(group, Signal::SIGKILL);
        if self.exit.is_none() {
            let _ = waitpid(group, None);
            self.exit = Some(Exit {
                code: None,
                signal: Some(Signal::SIGKILL as i32),
            });
        }
    }
}

/// The command with the owner mark in its environment: it lets a later o3 find this server
/// (and its workers) should o3 die in a way the kernel's parent-death signal does not cover
/// for the workers.
fn prepare(argv: &[String], env: &[(String, String)]) -> Result<Prepared, LaunchError> {
    let command: Vec<std::ffi::OsString> = argv.iter().map(Into::into).collect();
    let mut env = env.to_vec();
    env.push(owner::marker());
    Ok(Prepared::with_env(&command, &env)?)
}

/// Puts the held child into the run's ledger (o3 may die at any instant from here on), runs
/// `before_exec`, and lets the child exec: its pid, or why it did not start.
fn release(
    held: Held,
    command: &str,
    before_exec: impl FnOnce(u32) -> Result<(), String>,
) -> Result<u32, LaunchError> {
    let pid = held.pid;
    owner::started(pid, command);
    if let Err(e) = before_exec(pid) {
        owner::stopped(pid);
        held.abandon();
        return Err(LaunchError::Track(e));
    }
    held.release().map_err(|e| {
        owner::stopped(pid);
        match e {
            SpawnError::NotFound(p) => LaunchError::NotFound(p),
            e => LaunchError::Spawn(e),
        }
    })
}

impl Server for Launched {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn tail(&self) -> String {
        Launched::tail(self)
    }

    fn exited(&mut self) -> Option<Exit> {
        Launched::exited(self)
    }

    fn stop(&mut self, grace: Duration) {
        Launched::stop(self, grace);
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// Servers that never run, for tests of what launches them.
#[cfg(test)]
pub mod fake {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::{Exit, LaunchError, Launcher, Server};

    /// A server whose life is scripted: it exits as `exit` says (`None`: it runs until
    /// stopped), after printing `tail`.
    pub struct FakeServer {
        pub pid: u32,
        pub exit: Option<Exit>,
        pub tail: String,
        /// Runs once, when the exit is first seen.
        pub on_exit: Option<Box<dyn FnOnce()>>,
        /// How many times it was stopped.
        pub stops: Arc<AtomicUsize>,
    }

    impl FakeServer {
        /// A server that runs until stopped, with this process's pid (so its telemetry reads
        /// a real process). Not for probes with safety limits: a breach would signal the
        /// process group of that pid.
        pub fn running() -> FakeServer {
            FakeServer {
                pid: std::process::id(),
                exit: None,
                tail: String::new(),
                on_exit: None,
                stops: Arc::default(),
            }
        }
    }

    impl Server for FakeServer {
        fn pid(&self) -> u32 {
            self.pid
        }

        fn tail(&self) -> String {
            self.tail.clone()
        }

        fn exited(&mut self) -> Option<Exit> {
            if self.exit.is_some() {
                if let Some(f) = self.on_exit.take() {
                    f();
                }
            }
            self.exit.clone()
        }

        fn stop(&mut self, _grace: Duration) {
            self.stops.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Launches its one server, and keeps the command lines it was asked to start.
    #[derive(Default)]
    pub struct FakeLauncher {
        pub server: Option<FakeServer>,
        pub launched: Arc<Mutex<Vec<Vec<String>>>>,
    }

    impl FakeLauncher {
        pub fn with(server: FakeServer) -> FakeLauncher {
            FakeLauncher {
                server: Some(server),
                ..FakeLauncher::default()
            }
        }
    }

    impl Launcher for FakeLauncher {
        fn launch(
            &mut self,
            argv: &[String],
            _port: u16,
            _env: &[(String, String)],
            _before_exec: &mut dyn FnMut(u32) -> Result<(), String>,
        ) -> Result<Box<dyn Server>, LaunchError> {
            self.launched.lock().unwrap().push(argv.to_vec());
            let s = self
                .server
                .take()
                .ok_or_else(|| LaunchError::NotFound(argv.first().cloned().unwrap_or_default()))?;
            Ok(Box::new(s))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    /// Waits up to 5 s for the server to exit.
    fn exit_of(l: &mut Launched) -> Option<Exit> {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if let Some(e) = l.exited() {
                return Some(e);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    #[test]
    fn a_server_that_exits_leaves_its_status_and_its_last_lines() {
        let mut l = Launched::start(
            &sh("echo loading; echo 'out of memory' >&2; exit 3"),
            1,
            &[],
            |_| Ok(()),
        )
        .unwrap();
        let e = exit_of(&mut l).expect("exited");
        assert_eq!(
            e,
            Exit {
                code: Some(3),
                signal: None
            }
        );
        // The reader thread may still be draining the pipe when the exit is seen.
        let t = Instant::now();
        while !l.tail().contains("out of memory") && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(l.tail().contains("loading"), "{}", l.tail());
        assert!(l.tail().contains("out of memory"), "{}", l.tail());
    }

    #[test]
    fn stop_ends_the_whole_group_and_says_how() {
        let mut l =
            Launched::start(&sh("sleep 30 & echo worker $!; wait"), 1, &[], |_| Ok(())).unwrap();
        let t = Instant::now();
        let worker = loop {
            let tail = l.tail();
            if let Some(pid) = tail.lines().find_map(|x| x.strip_prefix("worker ")) {
                break pid.trim().parse::<u32>().unwrap();
            }
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "no worker in {tail:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        l.stop(Duration::from_secs(5));
        assert_eq!(
            l.exited(),
            Some(Exit {
                code: None,
                signal: Some(Signal::SIGTERM as i32)
            })
        );
        // The worker got the signal too (gone, or a zombie its new parent has not reaped).
        let proc = std::path::Path::new("/proc");
        let t = Instant::now();
        while matches!(owner::stat(proc, worker), Some((s, _)) if s != 'Z') {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "worker {worker} survived"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_failed_before_exec_kills_the_child() {
        let e = Launched::start(&sh("exit 0"), 1, &[], |_| Err("no tracking".into()))
            .err()
            .expect("refused");
        assert!(matches!(e, LaunchError::Track(_)), "{e}");
        assert_eq!(e.to_string(), "no tracking");
        let e = Launched::start(&["/nonexistent/server".into()], 1, &[], |_| Ok(()))
            .err()
            .expect("not found");
        assert!(e.to_string().contains("/nonexistent/server"), "{e}");
    }
}
