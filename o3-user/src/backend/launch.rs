//! Servers o3 launches: a free loopback port, the process in a group of its own (so its
//! workers stop with it) that the kernel kills should o3 die (see `util::owner`), its output
//! captured into a bounded tail for failure classification,
//! readiness polling, and a teardown that always runs (also on drop).

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::classify::StderrTail;
use crate::util::owner;
use crate::util::spawn::{self, Prepared, SpawnError};

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

/// A running server process.
pub struct Launched {
    pub pid: u32,
    pub port: u16,
    pub argv: Vec<String>,
    tail: Arc<Mutex<StderrTail>>,
    exit: Option<Exit>,
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
    ) -> Result<Launched, String> {
        let command: Vec<OsString> = argv.iter().map(OsString::from).collect();
        // The owner mark lets a later o3 find this server (and its workers) should o3 die
        // in a way the kernel's parent-death signal does not cover for the workers.
        let mut env = env.to_vec();
        env.push(owner::marker());
        let prepared = Prepared::with_env(&command, &env).map_err(|e| e.to_string())?;
        let mut fds = [0; 2];
        // SAFETY: valid out-array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(format!("pipe: {}", std::io::Error::last_os_error()));
        }
        let opts = spawn::Options {
            output: Some(fds[1]),
            own_group: true,
            die_with_parent: true,
        };
        let held = match spawn::fork_held_with(&prepared, opts) {
            Ok(h) => h,
            Err(e) => {
                // SAFETY: closing the pipe we created.
                unsafe {
                    libc::close(fds[0]);
                    libc::close(fds[1]);
                }
                return Err(e.to_string());
            }
        };
        // SAFETY: the parent's copy of the write end is not needed.
        unsafe { libc::close(fds[1]) };
        // In the run's ledger before it can exec: o3 may die at any instant from here on.
        owner::started(held.pid, &argv.join(" "));
        if let Err(e) = before_exec(held.pid) {
            owner::stopped(held.pid);
            held.abandon();
            // SAFETY: closing the read end.
            unsafe { libc::close(fds[0]) };
            return Err(e);
        }
        let held_pid = held.pid;
        let pid = match held.release() {
            Ok(pid) => pid,
            Err(e) => {
                owner::stopped(held_pid);
                return Err(match e {
                    SpawnError::NotFound(p) => format!("server command not found: `{p}` (check the path in the launch template or --server-bin)"),
                    e => e.to_string(),
                });
            }
        };
        let tail = Arc::new(Mutex::new(StderrTail::default()));
        let t = tail.clone();
        // SAFETY: we own the read end; the File closes it when the thread ends.
        let mut out = unsafe { std::fs::File::from_raw_fd(fds[0]) };
        std::thread::Builder::new()
            .name("o3-server-log".into())
            .spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = out.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut t) = t.lock() {
                        t.push_bytes(&buf[..n]);
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(Launched {
            pid,
            port,
            argv: argv.to_vec(),
            tail,
            exit: None,
        })
    }

    /// The last lines the server printed.
    pub fn tail(&self) -> String {
        self.tail.lock().map(|t| t.tail()).unwrap_or_default()
    }

    /// Whether the server has exited (non-blocking); reaps it once.
    pub fn exited(&mut self) -> Option<Exit> {
        if self.exit.is_none() {
            let mut status = 0;
            // SAFETY: our own child; WNOHANG.
            let r = unsafe { libc::waitpid(self.pid as i32, &mut status, libc::WNOHANG) };
            if r == self.pid as i32 {
                self.exit = Some(if libc::WIFSIGNALED(status) {
                    Exit {
                        code: None,
                        signal: Some(libc::WTERMSIG(status)),
                    }
                } else {
                    Exit {
                        code: Some(libc::WEXITSTATUS(status)),
                        signal: None,
                    }
                });
            }
        }
        self.exit.clone()
    }

    /// Stops the whole process group: SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        owner::stopped(self.pid);
        if self.exited().is_some() {
            // SAFETY: the group may have survivors; signalling a missing group is harmless.
            unsafe { libc::kill(-(self.pid as i32), libc::SIGKILL) };
            return;
        }
        // SAFETY: signalling the process group o3 created for this server. A stopped server
        // (SIGSTOP, a debugger) acts on SIGTERM only once continued.
        unsafe {
            libc::kill(-(self.pid as i32), libc::SIGTERM);
            libc::kill(-(self.pid as i32), libc::SIGCONT);
        }
        let t = Instant::now();
        while t.elapsed() < grace {
            if self.exited().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-(self.pid as i32), libc::SIGKILL) };
        let mut status = 0;
        if self.exit.is_none() {
            // SAFETY: reaping our own child after SIGKILL.
            unsafe { libc::waitpid(self.pid as i32, &mut status, 0) };
            self.exit = Some(Exit {
                code: None,
                signal: Some(libc::SIGKILL),
            });
        }
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}
