//! Servers o3 starts never outlive it. Three layers, because each alone has a hole:
//!
//! - The kernel kills a server when o3 dies, however it dies (`PR_SET_PDEATHSIG`, set in the
//!   child by [`crate::util::spawn::Options::die_with_parent`]). That reaches the server
//!   itself, not workers it started (Ollama's runners).
//! - Every server carries [`VAR`]`=<o3 pid>:<o3 start time>` in its environment, which its
//!   workers inherit. [`reap_orphans`], run when o3 starts a job that launches servers, stops
//!   every process group whose marked owner is no longer alive (pid gone, reused or a zombie).
//! - The run directory holds a ledger of the servers its run started (pid, start time, group):
//!   a `--resume` stops those still alive, checking both pid and start time before signalling.
//!
//! A process is identified by (pid, start time in clock ticks since boot): a reused pid has
//! another start time, so nothing unrelated is ever signalled.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The environment variable that marks a process as started by an o3 process.
pub const VAR: &str = "O3_SERVER_OWNER";

/// A process that o3 started or found, as its ledger and notices show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    /// Clock ticks since boot (`/proc/PID/stat` field 22).
    pub start: u64,
    /// Its command line, for notices.
    pub command: String,
}

/// (state, start time) of `pid` from `<proc>/PID/stat`; None when it does not exist.
pub fn stat(proc_root: &Path, pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let rest: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    let state = rest.first()?.chars().next()?;
    // Field 3 is rest[0]; field 22 is rest[19].
    Some((state, rest.get(19)?.parse().ok()?))
}

/// Whether the process (pid, start) still runs (a zombie does not).
pub fn alive(proc_root: &Path, pid: u32, start: u64) -> bool {
    matches!(stat(proc_root, pid), Some((state, s)) if s == start && state != 'Z' && state != 'X')
}

/// This o3 process as an owner: `(VAR, "pid:start")`, for a server's environment.
pub fn marker() -> (String, String) {
    let pid = std::process::id();
    let start = stat(Path::new("/proc"), pid).map_or(0, |(_, s)| s);
    (VAR.to_string(), format!("{pid}:{start}"))
}

fn command(proc_root: &Path, pid: u32) -> String {
    let raw = std::fs::read(proc_root.join(pid.to_string()).join("cmdline")).unwrap_or_default();
    raw.split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The owner a process's environment names, if it carries [`VAR`].
fn owner_of(proc_root: &Path, pid: u32) -> Option<(u32, u64)> {
    let env = std::fs::read(proc_root.join(pid.to_string()).join("environ")).ok()?;
    let prefix = format!("{VAR}=");
    let value = env
        .split(|&b| b == 0)
        .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))?;
    let (p, s) = std::str::from_utf8(value).ok()?.split_once(':')?;
    Some((p.parse().ok()?, s.parse().ok()?))
}

/// Kills the process group `pid` leads (servers lead their own) and the process itself.
fn kill_group(pid: u32) {
    use nix::sys::signal::{kill, killpg, Signal};
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    // A missing group or process makes these fail harmlessly.
    let _ = killpg(pid, Signal::SIGKILL);
    let _ = kill(pid, Signal::SIGKILL);
}

/// Stops every process marked with [`VAR`] whose owner is no longer alive, with its process
/// group, and returns what it stopped (for a notice). Processes owned by a live o3 (another
/// run at the same time) are left alone.
pub fn reap_orphans(proc_root: &Path) -> Vec<Proc> {
    let mut stopped = Vec::new();
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return stopped;
    };
    let me = std::process::id();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Some((owner, owner_start)) = owner_of(proc_root, pid) else {
            continue;
        };
        if alive(proc_root, owner, owner_start) {
            continue;
        }
        let Some((state, start)) = stat(proc_root, pid) else {
            continue;
        };
        if state == 'Z' {
            continue;
        }
        let command = command(proc_root, pid);
        kill_group(pid);
        stopped.push(Proc {
            pid,
            start,
            command,
        });
    }
    stopped
}

/// Where servers started from now on are recorded (the run directory's ledger), if anywhere.
static LEDGER: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Records every server started from now on in `path` (one `pid start command` line each,
/// removed when o3 stops it).
pub fn keep_ledger(path: PathBuf) {
    if let Ok(mut l) = LEDGER.lock() {
        *l = Some(path);
    }
}

fn read_ledger(path: &Path) -> Vec<Proc> {
    let text = std::fs::read(path).unwrap_or_default();
    text.split(|&b| b == b'\n')
        .filter_map(|line| {
            let line = std::str::from_utf8(line).ok()?;
            let mut it = line.splitn(3, ' ');
            Some(Proc {
                pid: it.next()?.parse().ok()?,
                start: it.next()?.parse().ok()?,
                command: it.next().unwrap_or_default().to_string(),
            })
        })
        .collect()
}

fn write_ledger(path: &Path, procs: &[Proc]) {
    let mut text = String::new();
    for p in procs {
        text.push_str(&format!("{} {} {}\n", p.pid, p.start, p.command));
    }
    let tmp = path.with_extension("tmp");
    let ok = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if ok.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Notes a server o3 just started in the ledger, if one is kept.
pub fn started(pid: u32, command: &str) {
    let Ok(l) = LEDGER.lock() else { return };
    let Some(path) = l.as_ref() else { return };
    let Some((_, start)) = stat(Path::new("/proc"), pid) else {
        return;
    };
    let mut procs = read_ledger(path);
    procs.push(Proc {
        pid,
        start,
        command: command.replace('\n', " "),
    });
    write_ledger(path, &procs);
}

/// Notes that o3 stopped the server `pid`.
pub fn stopped(pid: u32) {
    let Ok(l) = LEDGER.lock() else { return };
    let Some(path) = l.as_ref() else { return };
    let mut procs = read_ledger(path);
    let before = procs.len();
    procs.retain(|p| p.pid != pid);
    if procs.len() != before {
        write_ledger(path, &procs);
    }
}

/// Stops the servers of the ledger at `path` that still run (pid and start time both match),
/// with their process groups; empties the ledger; returns what it stopped.
pub fn stop_recorded(proc_root: &Path, path: &Path) -> Vec<Proc> {
    let procs = read_ledger(path);
    let mut stopped = Vec::new();
    for p in procs {
        if alive(proc_root, p.pid, p.start) {
            kill_group(p.pid);
            stopped.push(p);
        }
    }
    if path.exists() {
        write_ledger(path, &[]);
    }
    stopped
}

/// One notice line for servers stopped on start, or None.
pub fn notice(stopped: &[Proc]) -> Option<String> {
    let first = stopped.first()?;
    let mut shown: String = first.command.chars().take(80).collect();
    if stopped.len() > 1 {
        shown.push_str(&format!(" and {} more", stopped.len() - 1));
    }
    Some(format!(
        "stopped {} server process{} left running by an earlier o3 (pid {}: {shown})",
        stopped.len(),
        if stopped.len() == 1 { "" } else { "es" },
        first.pid
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    fn proc() -> &'static Path {
        Path::new("/proc")
    }

    /// A child that exits at once: its (pid, start) is a dead owner once reaped.
    fn dead_owner() -> (u32, u64) {
        let mut c = Command::new("sleep").arg("0.2").spawn().unwrap();
        let pid = c.id();
        let (_, start) = stat(proc(), pid).unwrap();
        c.wait().unwrap();
        (pid, start)
    }

    fn gone_within(pid: u32, limit: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < limit {
            match stat(proc(), pid) {
                None => return true,
                Some(('Z', _)) => return true,
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        false
    }

    #[test]
    fn stat_reads_state_and_start_time_of_this_process() {
        let (state, start) = stat(proc(), std::process::id()).unwrap();
        assert!(state == 'R' || state == 'S', "{state}");
        assert!(start > 0);
        assert!(alive(proc(), std::process::id(), start));
        assert!(!alive(proc(), std::process::id(), start + 1));
        let (var, value) = marker();
        assert_eq!(var, VAR);
        assert_eq!(value, format!("{}:{start}", std::process::id()));
    }

    #[test]
    fn orphans_of_a_dead_owner_are_stopped_and_those_of_a_live_one_kept() {
        let (dead, dead_start) = dead_owner();
        let (_, me) = marker();
        let spawn = |owner: &str| {
            Command::new("sleep")
                .arg("30")
                .env(VAR, owner)
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        };
        let mut orphan = spawn(&format!("{dead}:{dead_start}"));
        let mut owned = spawn(&me);
        // Wait until both have exec'd: only then is their environment the marked one.
        let t = Instant::now();
        while [orphan.id(), owned.id()]
            .iter()
            .any(|&pid| owner_of(proc(), pid).is_none())
        {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the children never exec'd"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let stopped = reap_orphans(proc());
        assert!(stopped.iter().any(|p| p.pid == orphan.id()), "{stopped:?}");
        assert!(!stopped.iter().any(|p| p.pid == owned.id()), "{stopped:?}");
        assert!(gone_within(orphan.id(), Duration::from_secs(2)));
        let _ = orphan.wait();
        assert!(
            owned.try_wait().unwrap().is_none(),
            "a live owner's process was stopped"
        );
        owned.kill().unwrap();
        owned.wait().unwrap();
        let text = notice(&stopped).unwrap();
        assert!(text.contains("sleep 30"), "{text}");
    }

    #[test]
    fn the_ledger_stops_only_processes_whose_pid_and_start_time_match() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("servers");
        let mut c = Command::new("sleep").arg("30").spawn().unwrap();
        let (_, start) = stat(proc(), c.id()).unwrap();
        // A recorded process with a wrong start time is someone else: left alone.
        write_ledger(
            &ledger,
            &[Proc {
                pid: c.id(),
                start: start + 7,
                command: "other".into(),
            }],
        );
        assert!(stop_recorded(proc(), &ledger).is_empty());
        assert!(c.try_wait().unwrap().is_none());
        write_ledger(
            &ledger,
            &[Proc {
                pid: c.id(),
                start,
                command: "sleep 30".into(),
            }],
        );
        let stopped = stop_recorded(proc(), &ledger);
        assert_eq!(stopped.len(), 1);
        assert!(c.wait().unwrap().code().is_none(), "killed by a signal");
        assert!(read_ledger(&ledger).is_empty());
    }
}
