//! The waiter thread: blocks in poll(2) on the root process and the signal pipe, so the
//! recording loop wakes only for batches of ticks and for these events, and the end is noticed
//! at once.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::{Options, RecordError, Target};
use crate::telemetry::watchdog::Breach;
use crate::telemetry::{monotonic_ns, procfs, sampler};

/// What the recording loop receives.
pub(super) enum Msg {
    Ticks(Vec<sampler::Tick>),
    /// The root process exited (CLOCK_MONOTONIC ns when noticed).
    Exited(u64),
    /// --duration elapsed.
    Deadline(u64),
    Signal(i32),
    /// The watchdog saw a limit crossed.
    Breach(Breach),
}

/// How o3 notices that the root process has exited.
pub(super) enum Liveness {
    /// A pidfd (our own pid namespace): readable once the process exits.
    Pidfd(OwnedFd),
    /// Under another procfs root (a host's /proc mounted in a container, a fixture tree), pids
    /// may belong to another namespace: the process is gone when its directory is, or it is a
    /// zombie. Checked every 50 ms.
    Procfs(PathBuf),
}

/// pidfd_open(2); nix has no wrapper for it.
fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

impl Liveness {
    pub(super) fn new(opts: &Options, root: u32) -> Result<Liveness, RecordError> {
        let default_root = opts.procfs_root == Path::new("/proc");
        if matches!(opts.target, Target::Command(_)) || default_root {
            let fd =
                pidfd_open(root).map_err(|e| RecordError::Io(format!("pidfd_open({root})"), e))?;
            return Ok(Liveness::Pidfd(fd));
        }
        Ok(Liveness::Procfs(opts.procfs_root.join(root.to_string())))
    }

    fn procfs_gone(dir: &Path) -> bool {
        match std::fs::read_to_string(dir.join("stat")) {
            Ok(text) => procfs::parse_stat(&text).is_ok_and(|s| s.state == 'Z'),
            Err(_) => true,
        }
    }

    /// How long one poll may block: forever on a pidfd, 50 ms when polling procfs; never past
    /// the deadline.
    fn timeout_ms(&self, deadline_ns: Option<u64>, now: u64) -> i32 {
        let own: i64 = match self {
            Liveness::Pidfd(_) => -1,
            Liveness::Procfs(_) => 50,
        };
        let ms = match deadline_ns {
            Some(d) => {
                let left = d.saturating_sub(now).div_ceil(1_000_000) as i64;
                if own < 0 {
                    left
                } else {
                    own.min(left)
                }
            }
            None => own,
        };
        ms.min(i64::from(i32::MAX)) as i32
    }
}

/// Forwards every signal number waiting in the pipe; false once the loop has gone.
fn forward_signals(sig_fd: RawFd, tx: &Sender<Msg>) -> bool {
    let mut b = [0u8; 1];
    while nix::unistd::read(sig_fd, &mut b) == Ok(1) {
        if tx.send(Msg::Signal(i32::from(b[0]))).is_err() {
            return false;
        }
    }
    true
}

/// Blocks until the root process exits, the deadline passes or the loop goes away, sending
/// signals as they arrive.
pub(super) fn spawn_waiter(
    liveness: Liveness,
    deadline_ns: Option<u64>,
    sig_fd: RawFd,
    tx: Sender<Msg>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || loop {
        let now = monotonic_ns();
        if deadline_ns.is_some_and(|d| now >= d) {
            let _ = tx.send(Msg::Deadline(now));
            return;
        }
        // SAFETY: the signal pipe's read end stays open for the whole recording (it is never
        // closed once installed).
        let sig = unsafe { BorrowedFd::borrow_raw(sig_fd) };
        let mut fds = vec![PollFd::new(sig, PollFlags::POLLIN)];
        if let Liveness::Pidfd(fd) = &liveness {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
        }
        let timeout = PollTimeout::try_from(liveness.timeout_ms(deadline_ns, now))
            .unwrap_or(PollTimeout::NONE);
        if poll(&mut fds, timeout).is_err() {
            continue; // EINTR
        }
        let now = monotonic_ns();
        let readable = |i: usize| {
            fds.get(i)
                .and_then(|f| f.revents())
                .is_some_and(|r| !r.is_empty())
        };
        if readable(0) && !forward_signals(sig_fd, &tx) {
            return;
        }
        let exited = match &liveness {
            Liveness::Pidfd(_) => readable(1),
            Liveness::Procfs(dir) => Liveness::procfs_gone(dir),
        };
        if exited {
            let _ = tx.send(Msg::Exited(now));
            return;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_never_blocks_past_the_deadline() {
        let procfs = Liveness::Procfs(PathBuf::from("/nonexistent"));
        assert_eq!(procfs.timeout_ms(None, 0), 50);
        assert_eq!(procfs.timeout_ms(Some(20_000_000), 0), 20);
        assert_eq!(procfs.timeout_ms(Some(10), 20), 0);
    }

    #[test]
    fn a_missing_process_directory_is_a_gone_process() {
        assert!(Liveness::procfs_gone(Path::new("/nonexistent/123")));
    }
}
