//! Starting the command to record: it is forked, held before exec until o3 has put it into
//! the tracked set, then released. Exec failures come back through a close-on-exec pipe.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

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
    go: libc::c_int,
    err: libc::c_int,
    display: String,
}

fn pipe() -> Result<(libc::c_int, libc::c_int), SpawnError> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid out-array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(SpawnError::Sys("pipe2", std::io::Error::last_os_error()));
    }
    Ok((fds[0], fds[1]))
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
    pub output: Option<libc::c_int>,
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
    let Options {
        output,
        own_group,
        die_with_parent,
    } = opts;
    let (go_r, go_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let mut argv: Vec<*const libc::c_char> = p.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = p.envp.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: fork in a process whose other threads (if any) hold no locks the child uses: the
    // child only calls async-signal-safe functions on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(SpawnError::Sys("fork", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: child side; see above. Every path ends in execve or _exit.
        unsafe {
            libc::close(go_w);
            libc::close(err_r);
            if let Some(fd) = output {
                libc::dup2(fd, 1);
                libc::dup2(fd, 2);
            }
            if own_group {
                libc::setpgid(0, 0);
            }
            if die_with_parent {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                );
                // The parent may have died before the prctl: then nobody would kill us.
                if libc::getppid() != parent {
                    libc::_exit(127);
                }
            }
            let mut b = 0u8;
            loop {
                let n = libc::read(go_r, &mut b as *mut u8 as *mut libc::c_void, 1);
                if n >= 0 || *libc::__errno_location() != libc::EINTR {
                    break;
                }
            }
            if b != 1 {
                libc::_exit(127);
            }
            libc::execve(p.path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            let errno = *libc::__errno_location();
            libc::write(err_w, &errno as *const i32 as *const libc::c_void, 4);
            libc::_exit(127);
        }
    }
    // SAFETY: closing the child's ends in the parent.
    unsafe {
        libc::close(go_r);
        libc::close(err_w);
    }
    Ok(Held {
        pid: pid as u32,
        go: go_w,
        err: err_r,
        display: p.display.clone(),
    })
}

impl Held {
    /// Lets the child exec and reports whether exec succeeded.
    pub fn release(self) -> Result<u32, SpawnError> {
        let go = 1u8;
        let mut errno = 0i32;
        // SAFETY: valid fds owned by `self`, valid buffers.
        let n = unsafe {
            libc::write(self.go, &go as *const u8 as *const libc::c_void, 1);
            libc::close(self.go);
            let n = loop {
                let n = libc::read(self.err, &mut errno as *mut i32 as *mut libc::c_void, 4);
                if n >= 0 || *libc::__errno_location() != libc::EINTR {
                    break n;
                }
            };
            libc::close(self.err);
            n
        };
        if n == 4 {
            let mut status = 0;
            // SAFETY: reaping our own child, which has exited after the failed exec.
            unsafe { libc::waitpid(self.pid as i32, &mut status, 0) };
            let e = std::io::Error::from_raw_os_error(errno);
            return Err(match errno {
                libc::ENOENT => SpawnError::NotFound(self.display),
                libc::EACCES => SpawnError::NotExecutable(self.display),
                _ => SpawnError::Exec(self.display, e),
            });
        }
        Ok(self.pid)
    }

    /// Kills the held child (when setting up tracking failed).
    pub fn abandon(self) {
        // SAFETY: our own child; closing our pipe ends makes it exit, then we reap it.
        unsafe {
            libc::close(self.go);
            libc::close(self.err);
            let mut status = 0;
            libc::waitpid(self.pid as i32, &mut status, 0);
        }
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
    fn held_child_runs_after_release() {
        let p = Prepared::new(&["sh".into(), "-c".into(), "exit 7".into()]).unwrap();
        let held = fork_held(&p).unwrap();
        let pid = held.release().unwrap();
        let mut status = 0;
        // SAFETY: our own child.
        unsafe { libc::waitpid(pid as i32, &mut status, 0) };
        assert!(libc::WIFEXITED(status));
        assert_eq!(libc::WEXITSTATUS(status), 7);
    }
}
