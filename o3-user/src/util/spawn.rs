//! Starting the command to record: it is forked, held before exec until o3 has put it into
//! the tracked set, then released. Exec failures come back through a close-on-exec pipe.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::sys::wait::waitpid;
use nix::unistd::{self, ForkResult, Pid};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SpawnError {
    #[error("command not found: `{0}` (check the name and PATH)")]
    NotFound(String),
    #[error("cannot execute `{0}`: permission denied (check the file's execute bit)")]
    NotExecutable(String),
    #[error("cannot execute `{0}`: {1}")]
    Exec(String, std::io::Error),
    #[error("{0} failed: {1}")]
    Sys(&'static str, std::io::Error),
    #[error("an argument contains a NUL byte")]
    Nul,
}

impl SpawnError {
    /// Exit status o3 uses, as a shell does: 127 not found, 126 not executable.
    pub fn exit_code(&self) -> i32 {
        match self {
            SpawnError::NotFound(_) => 127,
            SpawnError::NotExecutable(_) | SpawnError::Exec(..) => 126,
            _ => 1,
        }
    }
}

/// Resolves a program like execvp does: a name with a slash is a path; otherwise the first
/// executable file of that name in PATH.
pub fn resolve(program: &OsStr, path_var: Option<&OsStr>) -> Result<PathBuf, SpawnError> {
    let shown = program.to_string_lossy().into_owned();
    let check = |p: &Path| -> Option<Result<PathBuf, SpawnError>> {
        let meta = std::fs::metadata(p).ok()?;
        if !meta.is_file() {
            return None;
        }
        if meta.permissions().mode() & 0o111 == 0 {
            return Some(Err(SpawnError::NotExecutable(shown.clone())));
        }
        Some(Ok(p.to_path_buf()))
    };
    if program.as_bytes().contains(&b'/') {
        return check(Path::new(program)).unwrap_or(Err(SpawnError::NotFound(shown.clone())));
    }
    let mut denied = None;
    let path_var = path_var.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    for dir in std::env::split_paths(path_var) {
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        match check(&dir.join(program)) {
            Some(Ok(p)) => return Ok(p),
            Some(Err(e)) => denied = Some(e),
            None => {}
        }
    }
    Err(denied.unwrap_or(SpawnError::NotFound(shown)))
}

/// Everything exec needs, prepared before fork (the child only makes async-signal-safe calls).
pub struct Prepared {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    pub display: String,
}

impl Prepared {
    pub fn new(command: &[OsString]) -> Result<Prepared, SpawnError> {
        Prepared::with_env(command, &[])
    }

    /// As [`Prepared::new`], with `extra` variables set (or replaced) in the environment.
    pub fn with_env(
        command: &[OsString],
        extra: &[(String, String)],
    ) -> Result<Prepared, SpawnError> {
        let program = command.first().ok_or(SpawnError::NotFound(String::new()))?;
        let path = resolve(program, std::env::var_os("PATH").as_deref())?;
        let c = |s: &[u8]| CString::new(s).map_err(|_| SpawnError::Nul);
        let argv = command
            .iter()
            .map(|a| c(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let envp = std::env::vars_os()
            .filter(|(k, _)| !extra.iter().any(|(e, _)| k.as_bytes() == e.as_bytes()))
            .chain(extra.iter().map(|(k, v)| (k.into(), v.into())))
            .map(|(k, v): (OsString, OsString)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                c(&kv)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let display = command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Prepared {
            path: c(path.as_os_str().as_bytes())?,
            argv,
            envp,
            display,
        })
    }
}

/// A forked child waiting before exec.
pub struct Held {
    pub pid: u32,
    /// Written once to let the child exec; closed unwritten, it makes the child exit.
    go: OwnedFd,
    /// The child's errno when exec failed; closed by a successful exec.
    err: OwnedFd,
    display: String,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| SpawnError::Sys("pipe2", e.into()))
}

/// `read(2)` again after an interrupted call.
fn read_retrying(fd: RawFd, buf: &mut [u8]) -> nix::Result<usize> {
    loop {
        match unistd::read(fd, buf) {
            Err(Errno::EINTR) => {}
            r => return r,
        }
    }
}

/// Forks; the child blocks until [`Held::release`]. Call before starting any thread that
/// holds locks the child could need (the child calls only read, execve, write, _exit).
pub fn fork_held(p: &Prepared) -> Result<Held, SpawnError> {
    fork_held_with(p, Options::default())
}

/// How [`fork_held_with`] sets up the child.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// The child's stdout and stderr go to this fd.
    pub output: Option<RawFd>,
    /// The child leads a new process group of its own (so the whole group can be stopped: a
    /// server's workers included).
    pub own_group: bool,
    /// The kernel kills the child (SIGKILL) when the thread that forked it ends: o3's
    /// servers fork from the main thread, so they die with o3 whatever kills it (kill -9
    /// included). A parent already gone when the child starts makes the child exit at once.
    pub die_with_parent: bool,
}

/// As [`fork_held`], set up as `opts` says.
pub fn fork_held_with(p: &Prepared, opts: Options) -> Result<Held, SpawnError> {
    let (go_r, go_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let mut argv: Vec<*const libc::c_char> = p.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = p.envp.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let child = Child {
        path: &p.path,
        argv: &argv,
        envp: &envp,
        go: go_r.as_raw_fd(),
        err: err_w.as_raw_fd(),
        parent: unistd::getpid(),
        opts,
    };
    // SAFETY: fork in a process whose other threads (if any) hold no locks the child uses: the
    // child only makes async-signal-safe calls on memory prepared before the fork.
    match unsafe { unistd::fork() } {
        Err(e) => Err(SpawnError::Sys("fork", e.into())),
        // SAFETY: the child side, right after fork; see above.
        Ok(ForkResult::Child) => unsafe { child.exec(&go_w, &err_r) },
        // The child's ends close in the parent when `go_r` and `err_w` drop here.
        Ok(ForkResult::Parent { child }) => Ok(Held {
            pid: child.as_raw() as u32,
            go: go_w,
            err: err_r,
            display: p.display.clone(),
        }),
    }
}

/// What the forked child needs, prepared before the fork.
struct Child<'a> {
    path: &'a CStr,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    /// The child's ends of the two pipes.
    go: RawFd,
    err: RawFd,
    parent: Pid,
    opts: Options,
}

impl Child<'_> {
    /// Sets the child up, waits for the go, and execs; every path ends in execve or _exit.
    /// `go_w` and `err_r` are the parent's ends, closed here.
    ///
    /// # Safety
    /// Only in the child, right after fork: it makes async-signal-safe calls only.
    unsafe fn exec(&self, go_w: &OwnedFd, err_r: &OwnedFd) -> ! {
        let _ = unistd::close(go_w.as_raw_fd());
        let _ = unistd::close(err_r.as_raw_fd());
        if let Some(fd) = self.opts.output {
            let _ = unistd::dup2(fd, 1);
            let _ = unistd::dup2(fd, 2);
        }
        if self.opts.own_group {
            let _ = unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
        }
        if self.opts.die_with_parent {
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
            // The parent may have died before the prctl: then nobody would kill us.
            if unistd::getppid() != self.parent {
                libc::_exit(127);
            }
        }
        let mut go = [0u8; 1];
        let _ = read_retrying(self.go, &mut go);
        if go[0] != 1 {
            libc::_exit(127);
        }
        // libc's execve: nix's allocates the pointer arrays, which a forked child must not.
        libc::execve(self.path.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr());
        let errno = Errno::last_raw().to_ne_bytes();
        let _ = unistd::write(BorrowedFd::borrow_raw(self.err), &errno);
        libc::_exit(127);
    }
}

impl Held {
    /// Lets the child exec and reports whether exec succeeded.
    pub fn release(self) -> Result<u32, SpawnError> {
        let Held {
            pid,
            go,
            err,
            display,
        } = self;
        let _ = unistd::write(&go, &[1]);
        drop(go);
        let mut errno = [0u8; 4];
        let n = read_retrying(err.as_raw_fd(), &mut errno);
        drop(err);
        if n != Ok(4) {
            return Ok(pid);
        }
        // The child has exited after the failed exec: reap it.
        let _ = waitpid(Pid::from_raw(pid as i32), None);
        let errno = i32::from_ne_bytes(errno);
        Err(match Errno::from_raw(errno) {
            Errno::ENOENT => SpawnError::NotFound(display),
            Errno::EACCES => SpawnError::NotExecutable(display),
            _ => SpawnError::Exec(display, std::io::Error::from_raw_os_error(errno)),
        })
    }

    /// Kills the held child (when setting up tracking failed): closing our pipe ends makes it
    /// exit, then it is reaped.
    pub fn abandon(self) {
        let pid = Pid::from_raw(self.pid as i32);
        drop(self);
        let _ = waitpid(pid, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_through_path() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("tool");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plain = dir.path().join("data");
        std::fs::write(&plain, "x").unwrap();
        let path = std::env::join_paths(["/nonexistent", dir.path().to_str().unwrap()]).unwrap();
        assert_eq!(resolve(OsStr::new("tool"), Some(&path)).unwrap(), exe);
        assert!(matches!(
            resolve(OsStr::new("nope"), Some(&path)),
            Err(SpawnError::NotFound(_))
        ));
        assert!(matches!(
            resolve(OsStr::new("data"), Some(&path)),
            Err(SpawnError::NotExecutable(_))
        ));
        assert!(matches!(
            resolve(plain.as_os_str(), None),
            Err(SpawnError::NotExecutable(_))
        ));
        assert_eq!(SpawnError::NotFound("x".into()).exit_code(), 127);
        assert_eq!(SpawnError::NotExecutable("x".into()).exit_code(), 126);
    }

    #[test]
    fn an_exec_failure_comes_back_from_the_child() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("not-a-program");
        std::fs::write(&exe, [0x7f, b'E', b'L', b'F', 0, 0, 0, 0]).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = Prepared::new(&[exe.into_os_string()]).unwrap();
        let e = fork_held(&p).unwrap().release().unwrap_err();
        assert!(matches!(e, SpawnError::Exec(..)), "{e}");
        assert_eq!(e.exit_code(), 126);
    }

    #[test]
    fn an_abandoned_child_never_runs() {
        let dir = tempfile::tempdir().unwrap();
        let mark = dir.path().join("ran");
        let script = format!("touch {}", mark.display());
        let p = Prepared::new(&["sh".into(), "-c".into(), script.into()]).unwrap();
        let held = fork_held(&p).unwrap();
        let pid = Pid::from_raw(held.pid as i32);
        held.abandon();
        // Reaped by abandon: no such child any more.
        assert_eq!(waitpid(pid, None), Err(Errno::ECHILD));
        assert!(!mark.exists());
    }

    #[test]
    fn held_child_runs_after_release() {
        let p = Prepared::new(&["sh".into(), "-c".into(), "exit 7".into()]).unwrap();
        let held = fork_held(&p).unwrap();
        let pid = Pid::from_raw(held.release().unwrap() as i32);
        assert_eq!(
            waitpid(pid, None).unwrap(),
            nix::sys::wait::WaitStatus::Exited(pid, 7)
        );
    }
}
