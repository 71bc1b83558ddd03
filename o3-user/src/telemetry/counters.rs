//! Page faults, context switches and block I/O of a process tree o3 did not start (`--pid`),
//! from procfs: there is no rusage to wait for. Each process' counters are read every so often
//! and at the end, and counted from the start of the recording (a process already running
//! counts from its first read; one started later from 0), so the sum is a lower bound: what a
//! process did between its last read and its exit is missed.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use super::procfs::{parse_children, parse_stat, ParseError};
pub use crate::trace::record::Counters;

fn malformed(file: &'static str, what: String) -> ParseError {
    ParseError::Malformed { file, what }
}

/// The value of `key: N` lines of a procfs file, `None` where the key is missing.
fn keyed(text: &str, file: &'static str, key: &str) -> Result<Option<u64>, ParseError> {
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        if k == key {
            return v
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| malformed(file, format!("{key} is not a number")));
        }
    }
    Ok(None)
}

/// `read_bytes` and `write_bytes` of `/proc/PID/io`: bytes the process (all its threads, live
/// and exited) made the kernel read from and write to block devices.
pub fn parse_io(text: &str) -> Result<(u64, u64), ParseError> {
    let get =
        |key: &str| keyed(text, "io", key)?.ok_or_else(|| malformed("io", format!("no {key}")));
    Ok((get("read_bytes")?, get("write_bytes")?))
}

/// `voluntary_ctxt_switches` and `nonvoluntary_ctxt_switches` of one thread's `status`
/// (`/proc/PID/status` counts the main thread alone); 0 where the kernel lacks them.
pub fn parse_switches(text: &str) -> Result<(u64, u64), ParseError> {
    Ok((
        keyed(text, "status", "voluntary_ctxt_switches")?.unwrap_or(0),
        keyed(text, "status", "nonvoluntary_ctxt_switches")?.unwrap_or(0),
    ))
}

/// Why one process could not be read (it exited, or a file did not parse).
#[derive(Debug, thiserror::Error)]
pub enum CountersError {
    #[error("reading {0}: {1}")]
    Io(PathBuf, io::Error),
    #[error(transparent)]
    Parse(#[from] ParseError),
}

fn read_text(path: PathBuf) -> Result<String, CountersError> {
    std::fs::read_to_string(&path).map_err(|e| CountersError::Io(path, e))
}

/// The live threads of a process (`task/TID`), the process itself where that is unreadable.
fn threads(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir.join("task")) {
        Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
        Err(_) => vec![dir.to_path_buf()],
    }
}

/// One process' counters now, with its start time (which tells a reused pid apart).
/// Context switches are summed over its live threads: those of exited threads are missed.
pub fn read(procfs_root: &Path, pid: u32) -> Result<(u64, Counters), CountersError> {
    let dir = procfs_root.join(pid.to_string());
    let stat = parse_stat(&read_text(dir.join("stat"))?)?;
    let (read_bytes, write_bytes) = parse_io(&read_text(dir.join("io"))?)?;
    let (mut vol, mut invol) = (0, 0);
    for t in threads(&dir) {
        // A thread that exited since the listing is skipped.
        if let Ok(text) = read_text(t.join("status")) {
            let (v, i) = parse_switches(&text)?;
            vol += v;
            invol += i;
        }
    }
    let c = Counters {
        minor_faults: stat.minflt,
        major_faults: stat.majflt,
        voluntary_context_switches: vol,
        involuntary_context_switches: invol,
        read_bytes,
        write_bytes,
    };
    Ok((stat.starttime, c))
}

/// `root` and its descendants now, from the `children` files of every thread.
pub fn tree(procfs_root: &Path, root: u32) -> Vec<u32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let dir = procfs_root.join(out[i].to_string());
        for t in threads(&dir) {
            let kids = std::fs::read_to_string(t.join("children"))
                .ok()
                .and_then(|s| parse_children(&s).ok())
                .unwrap_or_default();
            for k in kids {
                if !out.contains(&k) {
                    out.push(k);
                }
            }
        }
        i += 1;
    }
    out
}

/// The counters of a tree over a recording, kept per process (pid and start time).
#[derive(Debug)]
pub struct SampledTree {
    procfs_root: PathBuf,
    root: u32,
    /// Each process' counters at its first read, for those already running at the start.
    base: BTreeMap<(u32, u64), Counters>,
    /// Each process' counters at its last read.
    last: BTreeMap<(u32, u64), Counters>,
}

impl SampledTree {
    /// Reads the tree as it is at the start: what its processes did before is not counted.
    pub fn start(procfs_root: &Path, root: u32) -> SampledTree {
        let mut t = SampledTree {
            procfs_root: procfs_root.to_path_buf(),
            root,
            base: BTreeMap::new(),
            last: BTreeMap::new(),
        };
        t.read();
        t.base = t.last.clone();
        t
    }

    /// Reads every process of the tree now; the processes that are gone keep their last read.
    pub fn read(&mut self) {
        for pid in tree(&self.procfs_root, self.root) {
            if let Ok((start, c)) = read(&self.procfs_root, pid) {
                self.last.insert((pid, start), c);
            }
        }
    }

    /// The tree's counters since the start, as far as read.
    pub fn total(&self) -> Counters {
        self.last.iter().fold(Counters::default(), |sum, (k, c)| {
            sum.plus(c.since(self.base.get(k).copied().unwrap_or_default()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/procfs")
    }

    #[test]
    fn io_and_switches_parse_and_refuse_garbage() {
        let io = "rchar: 6976\nwchar: 0\nsyscr: 10\nsyscw: 0\nread_bytes: 4096\nwrite_bytes: 8192\ncancelled_write_bytes: 0\n";
        assert_eq!(parse_io(io).unwrap(), (4096, 8192));
        assert!(parse_io("rchar: 1\n").is_err());
        assert!(parse_io("read_bytes: x\nwrite_bytes: 1\n").is_err());
        let st = "Name:\tx\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(parse_switches(st).unwrap(), (12, 3));
        assert_eq!(parse_switches("Name:\tx\n").unwrap(), (0, 0));
        assert!(parse_switches("voluntary_ctxt_switches:\tmany\n").is_err());
    }

    #[test]
    fn a_fixture_process_sums_its_threads() {
        // 1234 has two thread directories: 12 + 30 voluntary, 3 + 4 involuntary switches.
        let (start, c) = read(&fixture(), 1234).unwrap();
        assert_eq!(start, 987654);
        assert_eq!(
            c,
            Counters {
                minor_faults: 7766,
                major_faults: 2,
                voluntary_context_switches: 42,
                involuntary_context_switches: 7,
                read_bytes: 1 << 20,
                write_bytes: 3 << 20,
            }
        );
        assert_eq!(tree(&fixture(), 1234), vec![1234, 1300]);
        assert!(read(&fixture(), 999_999).is_err());
    }

    /// Writes one process of a procfs tree (formats as in tests/fixtures/procfs).
    fn put(root: &Path, pid: u32, start: u64, minflt: u64, write: u64, kids: &str) {
        let dir = root.join(format!("{pid}/task/{pid}"));
        std::fs::create_dir_all(&dir).unwrap();
        let stat = format!(
            "{pid} (w) S 1 {pid} 1 0 -1 0 {minflt} 0 0 0 1 1 0 0 20 0 1 0 {start} 1000 10 0"
        );
        std::fs::write(root.join(format!("{pid}/stat")), stat).unwrap();
        let io = format!("read_bytes: 0\nwrite_bytes: {write}\n");
        std::fs::write(root.join(format!("{pid}/io")), io).unwrap();
        std::fs::write(dir.join("status"), "voluntary_ctxt_switches:\t1\n").unwrap();
        std::fs::write(dir.join("children"), kids).unwrap();
    }

    #[test]
    fn a_tree_counts_from_the_start_and_keeps_what_exited_processes_did() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        put(root, 10, 100, 50, 4096, "");
        let mut t = SampledTree::start(root, 10);
        assert_eq!(t.total(), Counters::default());
        // 10 faults 5 more times and starts 11, which faults 7 times and writes 1 MiB.
        put(root, 10, 100, 55, 4096, "11");
        put(root, 11, 200, 7, 1 << 20, "");
        t.read();
        let c = t.total();
        assert_eq!((c.minor_faults, c.write_bytes), (12, 1 << 20));
        assert_eq!(c.voluntary_context_switches, 1);
        // 11 exits: its last read stays. Its pid comes back as an unrelated process of 10's
        // tree (another start time), counted from 0 apart from the first.
        std::fs::remove_dir_all(root.join("11")).unwrap();
        t.read();
        assert_eq!(t.total().minor_faults, 12);
        put(root, 11, 300, 1, 0, "");
        t.read();
        assert_eq!(t.total().minor_faults, 13);
    }
}
