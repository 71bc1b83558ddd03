//! procfs: parsers for the files o3 reads (pure functions, tested on fixtures) and readers that
//! re-read pre-opened files with pread under a configurable root (`--procfs-root`).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::reread::RereadFile;
use super::{ProcessPeak, Sample, Source, TreeEvent};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("{file}: {what}")]
    Malformed { file: &'static str, what: String },
}

fn malformed(file: &'static str, what: impl Into<String>) -> ParseError {
    ParseError::Malformed {
        file,
        what: what.into(),
    }
}

/// `/proc/PID/statm` in pages: total, resident (file + anon + shmem), shared (file + shmem).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Statm {
    pub size_pages: u64,
    pub resident_pages: u64,
    pub shared_pages: u64,
}

pub fn parse_statm(text: &str) -> Result<Statm, ParseError> {
    let mut it = text.split_ascii_whitespace().map(|w| w.parse::<u64>());
    let mut next = |name: &str| match it.next() {
        Some(Ok(v)) => Ok(v),
        Some(Err(_)) => Err(malformed("statm", format!("{name} is not a number"))),
        None => Err(malformed("statm", format!("missing {name}"))),
    };
    Ok(Statm {
        size_pages: next("size")?,
        resident_pages: next("resident")?,
        shared_pages: next("shared")?,
    })
}

/// The fields o3 uses from `/proc/PID/stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    pub comm: String,
    pub state: char,
    pub ppid: u32,
    /// Page faults of the whole process (all its threads, live and exited): minor (no disk
    /// read) and major.
    pub minflt: u64,
    pub majflt: u64,
    /// Clock ticks (USER_HZ).
    pub utime: u64,
    pub stime: u64,
    /// Clock ticks since boot; with the pid it identifies a process across pid reuse.
    pub starttime: u64,
}

/// Parses `/proc/PID/stat`. The command name may contain spaces and parentheses, so it is
/// delimited by the first `(` and the last `)`.
pub fn parse_stat(text: &str) -> Result<Stat, ParseError> {
    let open = text.find('(').ok_or_else(|| malformed("stat", "no '('"))?;
    let close = text.rfind(')').ok_or_else(|| malformed("stat", "no ')'"))?;
    if close < open {
        return Err(malformed("stat", "')' before '('"));
    }
    let pid = text[..open]
        .trim()
        .parse()
        .map_err(|_| malformed("stat", "pid is not a number"))?;
    let comm = text[open + 1..close].to_string();
    let rest: Vec<&str> = text[close + 1..].split_ascii_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    let field = |n: usize| -> Result<u64, ParseError> {
        rest.get(n - 3)
            .ok_or_else(|| malformed("stat", format!("missing field {n}")))?
            .parse()
            .map_err(|_| malformed("stat", format!("field {n} is not a number")))
    };
    let state = rest
        .first()
        .and_then(|s| s.chars().next())
        .ok_or_else(|| malformed("stat", "missing state"))?;
    Ok(Stat {
        pid,
        comm,
        state,
        ppid: field(4)? as u32,
        minflt: field(10)?,
        majflt: field(12)?,
        utime: field(14)?,
        stime: field(15)?,
        starttime: field(22)?,
    })
}

/// The fields o3 uses from `/proc/PID/status` (sizes in bytes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub name: String,
    pub tgid: u32,
    pub ppid: u32,
    pub vm_hwm: u64,
    pub vm_rss: u64,
    pub rss_anon: u64,
    pub rss_file: u64,
    pub rss_shmem: u64,
    pub vm_swap: u64,
}

/// Parses `/proc/PID/status`; kernel threads have no Vm* lines, which leaves them at 0.
pub fn parse_status(text: &str) -> Result<Status, ParseError> {
    let mut s = Status::default();
    let mut seen_tgid = false;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let num = || -> Result<u64, ParseError> {
            value
                .split_ascii_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| malformed("status", format!("{key} is not a number")))
        };
        let kib = || num().map(|v| v * 1024);
        match key {
            "Name" => s.name = value.to_string(),
            "Tgid" => {
                s.tgid = num()? as u32;
                seen_tgid = true;
            }
            "PPid" => s.ppid = num()? as u32,
            "VmHWM" => s.vm_hwm = kib()?,
            "VmRSS" => s.vm_rss = kib()?,
            "RssAnon" => s.rss_anon = kib()?,
            "RssFile" => s.rss_file = kib()?,
            "RssShmem" => s.rss_shmem = kib()?,
            "VmSwap" => s.vm_swap = kib()?,
            _ => {}
        }
    }
    if !seen_tgid {
        return Err(malformed("status", "no Tgid line"));
    }
    Ok(s)
}

/// Totals of `/proc/PID/smaps_rollup` (bytes). They come from a walk of the page tables, so
/// unlike VmRSS they include the per-CPU counter deltas not yet folded in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SmapsRollup {
    pub rss: u64,
    pub anonymous: u64,
    pub swap: u64,
}

pub fn parse_smaps_rollup(text: &str) -> Result<SmapsRollup, ParseError> {
    let mut out = SmapsRollup::default();
    let mut seen_rss = false;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "Rss" => {
                seen_rss = true;
                &mut out.rss
            }
            "Anonymous" => &mut out.anonymous,
            "Swap" => &mut out.swap,
            _ => continue,
        };
        *slot = value
            .split_ascii_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| malformed("smaps_rollup", format!("{key} is not a number")))?
            * 1024;
    }
    if !seen_rss {
        return Err(malformed("smaps_rollup", "no Rss line"));
    }
    Ok(out)
}

/// Current RSS of a process by kind, `[file, anon, swap, shmem]` in bytes (the kernel's
/// MM_* order): exact from smaps_rollup where readable, else from status.
pub fn rss_by_kind(procfs: &Path, pid: u32) -> io::Result<[u64; 4]> {
    let st = read_status(procfs, pid)?;
    let dir = procfs.join(pid.to_string());
    let exact = std::fs::read_to_string(dir.join("smaps_rollup"))
        .ok()
        .and_then(|t| parse_smaps_rollup(&t).ok());
    Ok(match exact {
        Some(r) => [
            r.rss.saturating_sub(r.anonymous + st.rss_shmem),
            r.anonymous,
            r.swap,
            st.rss_shmem,
        ],
        None => [st.rss_file, st.rss_anon, st.vm_swap, st.rss_shmem],
    })
}

/// MemTotal and MemAvailable of `/proc/meminfo`, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    pub total: u64,
    pub available: u64,
}

impl MemInfo {
    pub fn used(&self) -> u64 {
        self.total.saturating_sub(self.available)
    }
}

pub fn parse_meminfo(text: &str) -> Result<MemInfo, ParseError> {
    let mut total = None;
    let mut available = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "MemTotal" => &mut total,
            "MemAvailable" => &mut available,
            _ => continue,
        };
        let v: u64 = value
            .split_ascii_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| malformed("meminfo", format!("{key} is not a number")))?;
        *slot = Some(v * 1024);
        if total.is_some() && available.is_some() {
            break;
        }
    }
    Ok(MemInfo {
        total: total.ok_or_else(|| malformed("meminfo", "no MemTotal"))?,
        available: available.ok_or_else(|| malformed("meminfo", "no MemAvailable"))?,
    })
}

/// `/proc/PID/task/TID/children`: space-separated pids.
pub fn parse_children(text: &str) -> Result<Vec<u32>, ParseError> {
    text.split_ascii_whitespace()
        .map(|w| {
            w.parse()
                .map_err(|_| malformed("children", format!("`{w}` is not a pid")))
        })
        .collect()
}

/// Reads `/proc/PID/status` once (not on a hot path).
pub fn read_status(procfs: &Path, pid: u32) -> io::Result<Status> {
    let text = std::fs::read_to_string(procfs.join(pid.to_string()).join("status"))?;
    parse_status(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The `<procfs>/<pid>` directories: (pid, path) of every process.
pub fn pid_dirs(procfs: &Path) -> io::Result<impl Iterator<Item = (u32, PathBuf)>> {
    Ok(std::fs::read_dir(procfs)?.flatten().filter_map(|e| {
        let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
        Some((pid, e.path()))
    }))
}

/// All processes under `procfs` with their parent, from one scan of `/proc/*/stat`.
pub fn scan_parents(procfs: &Path) -> io::Result<BTreeMap<u32, u32>> {
    let mut out = BTreeMap::new();
    for (pid, dir) in pid_dirs(procfs)? {
        let Ok(text) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        if let Ok(stat) = parse_stat(&text) {
            out.insert(pid, stat.ppid);
        }
    }
    Ok(out)
}

/// `root` and all its descendants in a parent map, root first.
pub fn descendants(parents: &BTreeMap<u32, u32>, root: u32) -> Vec<u32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(
            parents
                .iter()
                .filter(|(pid, ppid)| **ppid == p && **pid != p)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    out
}

/// Busy and total jiffies of all CPUs from the first line of `/proc/stat`
/// (`cpu  user nice system idle iowait irq softirq steal guest guest_nice`).
pub fn parse_stat_cpu(text: &str) -> Result<(u64, u64), ParseError> {
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| malformed("stat", "no `cpu` line"))?;
    let v: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .map(|w| {
            w.parse()
                .map_err(|_| malformed("stat", format!("`{w}` is not a number")))
        })
        .collect::<Result<_, _>>()?;
    if v.len() < 4 {
        return Err(malformed("stat", "fewer than 4 cpu fields"));
    }
    // guest and guest_nice are already counted in user and nice.
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// System memory (`/proc/meminfo`) and CPU busy (`/proc/stat`).
pub struct SystemMemory {
    file: RereadFile,
    stat: Option<RereadFile>,
    prev_cpu: Option<(u64, u64)>,
    warned: bool,
}

impl SystemMemory {
    /// Memory and system CPU busy.
    pub fn open(procfs: &Path) -> io::Result<SystemMemory> {
        let mut s = SystemMemory::memory_only(procfs)?;
        s.stat = RereadFile::open(&procfs.join("stat")).ok();
        Ok(s)
    }

    /// Memory only: one pread per tick instead of two, for recordings that do not need system
    /// CPU (no watchdog).
    pub fn memory_only(procfs: &Path) -> io::Result<SystemMemory> {
        Ok(SystemMemory {
            file: RereadFile::open(&procfs.join("meminfo"))?,
            stat: None,
            prev_cpu: None,
            warned: false,
        })
    }
}

impl Source for SystemMemory {
    fn name(&self) -> &'static str {
        "procfs-meminfo"
    }

    fn sample(&mut self, _now: u64, _t0: u64, out: &mut Sample, _ev: &mut Vec<TreeEvent>) {
        match self.file.read().map(parse_meminfo) {
            Ok(Ok(m)) => {
                out.mem_used_bytes = Some(m.used());
                out.mem_total_bytes = Some(m.total);
            }
            Ok(Err(e)) if !self.warned => {
                self.warned = true;
                eprintln!("o3: warning: {e}; system memory is not measured");
            }
            Err(e) if !self.warned => {
                self.warned = true;
                eprintln!("o3: warning: reading meminfo: {e}; system memory is not measured");
            }
            _ => {}
        }
        if let Some(Ok(Ok((busy, total)))) =
            self.stat.as_mut().map(|f| f.read().map(parse_stat_cpu))
        {
            if let Some((pb, pt)) = self.prev_cpu {
                let dt = total.saturating_sub(pt);
                if dt > 0 {
                    let pct = busy.saturating_sub(pb) as f64 / dt as f64 * 100.0;
                    out.system_cpu_percent = Some(pct.min(100.0));
                }
            }
            self.prev_cpu = Some((busy, total));
        }
    }
}

struct Tracked {
    stat: RereadFile,
    statm: RereadFile,
    children: Option<RereadFile>,
    comm: String,
    cpu_ticks: u64,
}

/// Process-tree RSS and CPU by polling procfs: the fallback without eBPF. Peaks between two
/// samples are missed, CPU time has clock-tick resolution.
pub struct ProcTree {
    procfs: PathBuf,
    procs: BTreeMap<u32, Tracked>,
    /// CPU ticks of processes that are gone (their last reading).
    exited_ticks: u64,
    page_size: u64,
    tick_ns: u64,
    peak: u64,
    peak_t_ns: u64,
    ticks: u64,
    /// Per process: highest RSS seen, when, and the last CPU time read.
    proc_peaks: BTreeMap<u32, ProcessPeak>,
}

impl ProcTree {
    pub fn new(procfs: &Path, root: u32) -> io::Result<ProcTree> {
        let page_size = super::page_size() as u64;
        let hz = super::clock_ticks_per_second();
        let mut t = ProcTree {
            procfs: procfs.to_path_buf(),
            procs: BTreeMap::new(),
            exited_ticks: 0,
            page_size,
            tick_ns: 1_000_000_000 / hz,
            peak: 0,
            peak_t_ns: 0,
            ticks: 0,
            proc_peaks: BTreeMap::new(),
        };
        t.add(root)?;
        Ok(t)
    }

    fn add(&mut self, pid: u32) -> io::Result<()> {
        if self.procs.contains_key(&pid) {
            return Ok(());
        }
        let dir = self.procfs.join(pid.to_string());
        let mut stat = RereadFile::open(&dir.join("stat"))?;
        let comm = stat
            .read()
            .ok()
            .and_then(|t| parse_stat(t).ok())
            .map(|s| s.comm)
            .unwrap_or_default();
        let tracked = Tracked {
            stat,
            statm: RereadFile::open(&dir.join("statm"))?,
            children: RereadFile::open(&dir.join(format!("task/{pid}/children"))).ok(),
            comm,
            cpu_ticks: 0,
        };
        self.procs.insert(pid, tracked);
        Ok(())
    }

    /// New children of tracked processes: of each main thread every tick, of every thread
    /// every 100 ticks (a process may fork from any thread).
    fn discover(&mut self) {
        let mut found = Vec::new();
        let all_threads = self.ticks % 100 == 0;
        for (pid, t) in &mut self.procs {
            if let Some(children) = t.children.as_mut() {
                if let Ok(Ok(list)) = children.read().map(parse_children) {
                    found.extend(list);
                }
            }
            if all_threads {
                let tasks = self.procfs.join(format!("{pid}/task"));
                let Ok(dir) = std::fs::read_dir(&tasks) else {
                    continue;
                };
                for entry in dir.flatten() {
                    if let Ok(text) = std::fs::read_to_string(entry.path().join("children")) {
                        found.extend(parse_children(&text).unwrap_or_default());
                    }
                }
            }
        }
        for pid in found {
            let _ = self.add(pid);
        }
    }
}

impl Source for ProcTree {
    fn name(&self) -> &'static str {
        "procfs-tree"
    }

    fn sample(&mut self, _now: u64, _t0: u64, out: &mut Sample, events: &mut Vec<TreeEvent>) {
        self.discover();
        self.ticks += 1;
        let mut rss = 0u64;
        let mut shared = 0u64;
        let mut ticks = self.exited_ticks;
        let mut gone = Vec::new();
        for (pid, t) in &mut self.procs {
            let stat = t.stat.read().map(parse_stat);
            let statm = t.statm.read().map(parse_statm);
            match (stat, statm) {
                (Ok(Ok(stat)), Ok(Ok(statm))) => {
                    t.cpu_ticks = stat.utime + stat.stime;
                    let r = statm.resident_pages * self.page_size;
                    rss += r;
                    shared += statm.shared_pages * self.page_size;
                    let e = self.proc_peaks.entry(*pid).or_insert(ProcessPeak {
                        pid: *pid,
                        comm: stat.comm.clone(),
                        peak_rss_bytes: 0,
                        peak_t_ns: 0,
                        cpu_ns: None,
                    });
                    e.cpu_ns = Some(t.cpu_ticks * self.tick_ns);
                    if r > e.peak_rss_bytes {
                        e.peak_rss_bytes = r;
                        e.peak_t_ns = out.t_ns;
                        e.comm = stat.comm;
                    }
                    if stat.state == 'Z' {
                        gone.push(*pid);
                    }
                }
                _ => gone.push(*pid),
            }
            ticks += t.cpu_ticks;
        }
        for pid in gone {
            if let Some(t) = self.procs.remove(&pid) {
                self.exited_ticks += t.cpu_ticks;
                events.push(TreeEvent::Exit {
                    t_ns: out.t_ns,
                    pid,
                    comm: t.comm,
                });
            }
        }
        if rss > self.peak {
            self.peak = rss;
            self.peak_t_ns = out.t_ns;
        }
        out.rss_bytes = Some(rss);
        out.rss_anon_bytes = Some(rss.saturating_sub(shared));
        out.rss_peak_bytes = Some(self.peak);
        out.rss_peak_t_ns = Some(self.peak_t_ns);
        out.cpu_ns = Some(ticks * self.tick_ns);
        out.processes = Some(self.procs.len() as u32);
    }

    fn processes(&self) -> Vec<ProcessPeak> {
        self.proc_peaks.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/procfs")
            .join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn statm_fixture() {
        let s = parse_statm(&fixture("1234/statm")).unwrap();
        assert_eq!(s.resident_pages, 1530);
        assert_eq!(s.shared_pages, 1018);
    }

    #[test]
    fn statm_malformed() {
        assert!(parse_statm("").is_err());
        assert!(parse_statm("12 x 3").is_err());
        assert!(parse_statm("12 13").is_err());
    }

    #[test]
    fn stat_with_spaces_and_parens_in_comm() {
        let s = parse_stat(&fixture("1234/stat")).unwrap();
        assert_eq!(s.pid, 1234);
        assert_eq!(s.comm, "llama server (x)");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1200);
        assert_eq!((s.utime, s.stime), (4125, 310));
        assert_eq!((s.minflt, s.majflt), (7766, 2));
        assert_eq!(s.starttime, 987654);
    }

    #[test]
    fn stat_malformed() {
        assert!(parse_stat("").is_err());
        assert!(parse_stat("12 (a) S 1").is_err());
        assert!(parse_stat("x (a) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20").is_err());
        assert!(parse_stat("12 )a( S").is_err());
    }

    #[test]
    fn status_fixture() {
        let s = parse_status(&fixture("1234/status")).unwrap();
        assert_eq!(s.tgid, 1234);
        assert_eq!(s.ppid, 1200);
        assert_eq!(s.vm_hwm, 8120 * 1024);
        assert_eq!(s.vm_rss, 6120 * 1024);
        assert_eq!(s.rss_anon, 2048 * 1024);
        assert_eq!(s.rss_file, 4072 * 1024);
        assert_eq!(s.rss_shmem, 0);
        assert_eq!(s.vm_swap, 0);
    }

    #[test]
    fn status_kernel_thread_and_malformed() {
        let s = parse_status("Name:\tkthreadd\nTgid:\t2\nPPid:\t0\n").unwrap();
        assert_eq!((s.tgid, s.vm_rss), (2, 0));
        assert!(parse_status("Name:\tx\n").is_err());
        assert!(parse_status("Tgid:\tabc\n").is_err());
    }

    #[test]
    fn smaps_rollup_fixture_and_kinds() {
        let r = parse_smaps_rollup(&fixture("1234/smaps_rollup")).unwrap();
        assert_eq!(r.rss, 6124 * 1024);
        assert_eq!(r.anonymous, 2052 * 1024);
        assert_eq!(r.swap, 0);
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/procfs");
        // smaps for 1234; 1300 has none, so its status lines are used.
        assert_eq!(
            rss_by_kind(&root, 1234).unwrap(),
            [4072 * 1024, 2052 * 1024, 0, 0]
        );
        assert!(parse_smaps_rollup("Pss: 1 kB\n").is_err());
        assert!(parse_smaps_rollup("Rss: many kB\n").is_err());
    }

    #[test]
    fn meminfo_fixture() {
        let m = parse_meminfo(&fixture("meminfo")).unwrap();
        assert_eq!(m.total, 24_568_964 * 1024);
        assert_eq!(m.available, 23_102_112 * 1024);
        assert_eq!(m.used(), (24_568_964 - 23_102_112) * 1024);
    }

    #[test]
    fn meminfo_malformed() {
        assert!(parse_meminfo("").is_err());
        assert!(parse_meminfo("MemTotal: 10 kB\n").is_err());
        assert!(parse_meminfo("MemTotal: x kB\nMemAvailable: 1 kB\n").is_err());
    }

    #[test]
    fn stat_cpu_line() {
        let (busy, total) =
            parse_stat_cpu("cpu  100 5 50 800 20 3 2 0 0 0\ncpu0 1 2 3 4\n").unwrap();
        assert_eq!((busy, total), (160, 980));
        assert!(parse_stat_cpu("intr 1 2\n").is_err());
        assert!(parse_stat_cpu("cpu  1 x 3 4\n").is_err());
        assert!(parse_stat_cpu("cpu  1 2\n").is_err());
    }

    #[test]
    fn children_lists() {
        assert_eq!(parse_children("12 13 \n").unwrap(), vec![12, 13]);
        assert_eq!(parse_children("").unwrap(), Vec::<u32>::new());
        assert!(parse_children("12 x").is_err());
    }

    #[test]
    fn descendants_follow_the_parent_map() {
        let parents: BTreeMap<u32, u32> =
            [(1, 0), (10, 1), (11, 10), (12, 10), (13, 11), (20, 1)].into();
        assert_eq!(descendants(&parents, 10), vec![10, 11, 12, 13]);
        assert_eq!(descendants(&parents, 13), vec![13]);
    }

    #[test]
    fn proc_tree_on_fixture_root() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/procfs");
        let mut t = ProcTree::new(&root, 1234).unwrap();
        let mut s = Sample::default();
        let mut ev = Vec::new();
        t.sample(0, 0, &mut s, &mut ev);
        // 1234 (1530 pages) and its child 1300 (from task/1234/children, 500 pages).
        let page = t.page_size;
        assert_eq!(s.rss_bytes, Some((1530 + 500) * page));
        assert_eq!(s.processes, Some(2));
        assert_eq!(s.cpu_ns, Some((4125 + 310 + 100 + 50) * t.tick_ns));
        assert!(ev.is_empty());
    }
}
