//! Running a short-lived tool to its end within a time limit: `--version` of a server binary,
//! an SMI tool's query. The output is read on threads, so a chatty tool cannot block on a full
//! pipe while its exit is awaited; one that overruns is killed and reaped.

use std::io::{self, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Upper bound on what is read from a tool's stdout or stderr.
const MAX_OUTPUT: u64 = 16 * 1024 * 1024;

/// What a tool printed and how it ended. Output that is not UTF-8 is converted lossily.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program` with `args` (stdin closed) and waits for it up to `timeout`; past it the
/// tool is killed and reaped and the error says so.
pub fn output_within(program: &str, args: &[&str], timeout: Duration) -> io::Result<Output> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = spawn_reader(child.stdout.take());
    let stderr = spawn_reader(child.stderr.take());
    // On timeout the reader threads are left to finish on their own: a grandchild may still
    // hold the pipes open.
    let status = wait_with_timeout(&mut child, timeout)?;
    Ok(Output {
        status,
        stdout: join_reader(stdout)?,
        stderr: join_reader(stderr)?,
    })
}

/// Reads a pipe to the end on a thread.
fn spawn_reader(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<io::Result<Vec<u8>>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(p) = pipe {
            p.take(MAX_OUTPUT).read_to_end(&mut buf)?;
        }
        Ok(buf)
    })
}

fn join_reader(h: JoinHandle<io::Result<Vec<u8>>>) -> io::Result<String> {
    let bytes = h
        .join()
        .map_err(|_| io::Error::other("output reader thread panicked"))??;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Waits for `child` up to `timeout`; kills and reaps it when the time is up.
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> io::Result<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            // Best effort: the child may have exited between try_wait and kill.
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("did not finish within {timeout:?}; killed"),
            ));
        }
        thread::sleep(
            timeout
                .saturating_sub(elapsed)
                .min(Duration::from_millis(10)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_and_status_come_back() {
        let o = output_within(
            "sh",
            &["-c", "echo out; echo err >&2; exit 3"],
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!((o.stdout.as_str(), o.stderr.as_str()), ("out\n", "err\n"));
        assert_eq!(o.status.code(), Some(3));
    }

    #[test]
    fn a_tool_past_its_time_is_killed() {
        let e = output_within("sleep", &["30"], Duration::from_millis(50)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("killed"), "{e}");
    }
}
