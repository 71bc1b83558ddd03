//! SIGINT/SIGTERM/SIGHUP while recording: the handler writes the signal number into a pipe,
//! which the waiter thread watches next to the process; the recording loop decides what to do
//! (stop an attached recording, pass it on to the command).

use std::os::fd::{BorrowedFd, IntoRawFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::fcntl::OFlag;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

static WRITE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = WRITE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: the pipe's write end is open for the rest of the process (never closed).
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        // write(2) is async-signal-safe and nix's wrapper allocates nothing; the pipe is
        // non-blocking, so a full pipe drops the byte (a signal is already pending then).
        let _ = nix::unistd::write(fd, &[sig as u8]);
    }
}

/// Installs the handlers (after the command was forked, so it keeps the default ones) and
/// returns the read end of the pipe the signal numbers arrive on. Both ends stay open for the
/// rest of the process.
pub fn install() -> std::io::Result<RawFd> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    WRITE_FD.store(write.into_raw_fd(), Ordering::SeqCst);
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only loads an atomic and calls write(2).
        unsafe { sigaction(sig, &action) }?;
    }
    Ok(read.into_raw_fd())
}
