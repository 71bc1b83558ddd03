//! Raw or classic tracepoints, and what the raw programs need from the kernel's BTF.
//!
//! Raw tracepoint programs (the default) get the kernel's own arguments instead of a record
//! the kernel formats before any program runs, and detaching one does not wait for an RCU
//! grace period (a classic tracepoint's perf event does, ~70 ms each here). The raw rss_stat
//! program reads an mm's RSS counters itself. They need the layout of `struct mm_struct`,
//! `struct percpu_counter`, `struct bpf_array`, `struct task_struct` and
//! `struct linux_binprm` and the tracepoints' argument lists from the kernel's BTF, Linux
//! 6.2's per-CPU RSS counters, Linux 5.18's `sched_switch` arguments and
//! `bpf_map_lookup_percpu_elem` (Linux 5.19). Where any is missing, the classic tracepoint
//! programs are used and the reason is reported.

use std::path::{Path, PathBuf};

use o3_common::{
    RawTp, COUNTER_READ_MAX, MAX_CPUS, RSS_CLASSIC, RSS_FLOOR_CLASSIC, RSS_FLOOR_RAW, RSS_RAW,
    RSS_RAW_LOOKUP, RSS_RAW_READ,
};
use thiserror::Error;

use super::btf::{Btf, BtfError};

/// Why the raw tracepoint programs cannot run on this kernel.
#[derive(Debug, Error)]
pub enum RawTpError {
    #[error("no kernel BTF ({0})")]
    NoBtf(#[source] BtfError),
    #[error("raw tracepoint {tracepoint} has {args} arguments here (o3 knows {known:?})")]
    Arguments {
        tracepoint: &'static str,
        args: u32,
        known: &'static [u32],
    },
    #[error("the kernel's BTF does not describe raw tracepoint {0}")]
    NoTracepoint(&'static str),
    #[error("mm_struct.rss_stat is {0} here, not per-CPU counters (Linux 6.2 and later)")]
    NotPerCpu(String),
    #[error("{0} possible CPUs (the raw program sums up to {MAX_CPUS})")]
    Cpus(u32),
    #[error("the kernel's BTF has no {0}.{1}")]
    NoMember(&'static str, &'static str),
    #[error("the kernel's BTF has no struct {0}")]
    NoStruct(&'static str),
    #[error("struct percpu_counter has an unexpected layout (lock at {lock}, count at {count}, counters at {counters})")]
    CounterLayout {
        lock: u32,
        count: u32,
        counters: u32,
    },
    #[error(transparent)]
    CpuCount(#[from] CpuCountError),
}

/// The number of possible CPUs is unknown.
#[derive(Debug, Error)]
pub enum CpuCountError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: cannot parse {text:?}", path.display())]
    Parse { path: PathBuf, text: String },
    /// The file under the sysfs root failed, and so did the real `/sys`.
    #[error("{root}; {path}: {source}")]
    Real {
        root: Box<CpuCountError>,
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The programs to attach, named by their rss_stat program: `Raw` attaches raw tracepoints
/// throughout, `Classic` classic ones throughout. Only these two measure RSS; the others are
/// the steps and floors `cargo xtask bench record` compares (the floors with the process and
/// CPU programs of their own kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RssProgram {
    Raw,
    Classic,
    RawLookup,
    RawRead,
    FloorClassic,
    FloorRaw,
}

impl RssProgram {
    pub const ALL: [RssProgram; 6] = [
        RssProgram::Raw,
        RssProgram::Classic,
        RssProgram::RawLookup,
        RssProgram::RawRead,
        RssProgram::FloorClassic,
        RssProgram::FloorRaw,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RssProgram::Raw => "raw",
            RssProgram::Classic => "classic",
            RssProgram::RawLookup => "raw-lookup",
            RssProgram::RawRead => "raw-read",
            RssProgram::FloorClassic => "floor-classic",
            RssProgram::FloorRaw => "floor-raw",
        }
    }

    pub fn parse(s: &str) -> Option<RssProgram> {
        Self::ALL.into_iter().find(|p| p.name() == s)
    }

    /// Whether RSS figures are measured (the bench variants measure nothing).
    pub fn measures(self) -> bool {
        matches!(self, RssProgram::Raw | RssProgram::Classic)
    }

    /// Whether raw tracepoints are attached.
    pub fn is_raw(self) -> bool {
        matches!(
            self,
            RssProgram::Raw | RssProgram::RawLookup | RssProgram::RawRead | RssProgram::FloorRaw
        )
    }

    /// The program's name in the object.
    pub(super) fn program(self) -> &'static str {
        match self {
            RssProgram::Raw | RssProgram::RawLookup | RssProgram::RawRead => "o3_rss_raw",
            RssProgram::Classic => "o3_rss",
            RssProgram::FloorClassic => "o3_floor_tp",
            RssProgram::FloorRaw => "o3_floor_raw",
        }
    }

    fn mode(self) -> u32 {
        match self {
            RssProgram::Raw => RSS_RAW,
            RssProgram::Classic => RSS_CLASSIC,
            RssProgram::RawLookup => RSS_RAW_LOOKUP,
            RssProgram::RawRead => RSS_RAW_READ,
            RssProgram::FloorClassic => RSS_FLOOR_CLASSIC,
            RssProgram::FloorRaw => RSS_FLOOR_RAW,
        }
    }
}

/// The program to load and its globals; a wanted raw program that cannot run here becomes
/// the classic one, with the reason.
pub fn choose(
    want: RssProgram,
    sysfs_root: &Path,
    ncpus: u32,
) -> (RssProgram, RawTp, Option<String>) {
    // The kernel sampler sums every CPU's slot, whichever programs run.
    let classic = RawTp {
        mode: RSS_CLASSIC,
        ncpus: ncpus.min(MAX_CPUS),
        ..RawTp::default()
    };
    if !want.is_raw() {
        let raw = RawTp {
            mode: want.mode(),
            ..classic
        };
        return (want, raw, None);
    }
    match raw_offsets_for(sysfs_root, ncpus) {
        Ok(mut raw) => {
            raw.mode = want.mode();
            (want, raw, None)
        }
        Err(why) => (RssProgram::Classic, classic, Some(why.to_string())),
    }
}

/// `nr_cpu_ids`, from `devices/system/cpu/possible` under `sysfs_root`, else from the real
/// `/sys`: the kernel programs and the readers of their per-CPU slots use this one count.
pub fn cpu_count(sysfs_root: &Path) -> Result<u32, CpuCountError> {
    possible_cpus(sysfs_root).or_else(|root| {
        aya::util::nr_cpus()
            .map(|n| n as u32)
            .map_err(|(path, source)| CpuCountError::Real {
                root: Box::new(root),
                path,
                source,
            })
    })
}

/// Offsets and sizes the raw program needs, or why it cannot run on this kernel.
pub fn raw_offsets(sysfs_root: &Path) -> Result<RawTp, RawTpError> {
    raw_offsets_for(sysfs_root, cpu_count(sysfs_root)?)
}

fn raw_offsets_for(sysfs_root: &Path, ncpus: u32) -> Result<RawTp, RawTpError> {
    let path = sysfs_root.join("kernel/btf/vmlinux");
    let btf = Btf::from_file(&path).map_err(RawTpError::NoBtf)?;
    offsets_from_btf(&btf, ncpus, page_shift())
}

/// The raw tracepoints o3 attaches and the argument counts it can read.
const RAW_TRACEPOINTS: [(&str, &[u32]); 5] = [
    ("sched_switch", &[4]),
    ("task_newtask", &[2]),
    ("sched_process_exec", &[3]),
    ("sched_process_exit", &[1, 2]),
    ("rss_stat", &[2]),
];

/// Pure part of [`raw_offsets`].
pub fn offsets_from_btf(btf: &Btf, ncpus: u32, page_shift: u32) -> Result<RawTp, RawTpError> {
    check_tracepoints(btf)?;
    match btf.member_struct_name("mm_struct", "rss_stat").as_deref() {
        Some("percpu_counter") => {}
        other => {
            return Err(RawTpError::NotPerCpu(
                other.map_or("something else".to_string(), |n| format!("struct {n}")),
            ))
        }
    }
    if ncpus == 0 || ncpus > MAX_CPUS {
        return Err(RawTpError::Cpus(ncpus));
    }
    let raw = raw_tp(btf, ncpus, page_shift)?;
    let fits = |off: u32, len: u32| off % len == 0 && off + len <= COUNTER_READ_MAX;
    if !(fits(raw.counter_lock, 4) && fits(raw.counter_count, 8) && fits(raw.counter_counters, 8)) {
        return Err(RawTpError::CounterLayout {
            lock: raw.counter_lock,
            count: raw.counter_count,
            counters: raw.counter_counters,
        });
    }
    Ok(raw)
}

/// Every raw tracepoint is described, with an argument list o3 can read.
fn check_tracepoints(btf: &Btf) -> Result<(), RawTpError> {
    for (tracepoint, known) in RAW_TRACEPOINTS {
        match btf.raw_tracepoint_args(tracepoint) {
            Some(args) if known.contains(&args) => {}
            Some(args) => {
                return Err(RawTpError::Arguments {
                    tracepoint,
                    args,
                    known,
                })
            }
            None => return Err(RawTpError::NoTracepoint(tracepoint)),
        }
    }
    Ok(())
}

/// The offsets the raw programs read, from the BTF.
fn raw_tp(btf: &Btf, ncpus: u32, page_shift: u32) -> Result<RawTp, RawTpError> {
    let member = |s: &'static str, m: &'static str| {
        btf.member_offset(s, &[m]).ok_or(RawTpError::NoMember(s, m))
    };
    Ok(RawTp {
        mm_rss_stat: member("mm_struct", "rss_stat")?,
        counter_size: btf
            .struct_size("percpu_counter")
            .ok_or(RawTpError::NoStruct("percpu_counter"))?,
        counter_lock: member("percpu_counter", "lock")?,
        counter_count: member("percpu_counter", "count")?,
        counter_counters: member("percpu_counter", "counters")?,
        array_pptrs: member("bpf_array", "pptrs")?,
        task_mm: member("task_struct", "mm")?,
        task_pid: member("task_struct", "pid")?,
        task_tgid: member("task_struct", "tgid")?,
        binprm_filename: member("linux_binprm", "filename")?,
        exit_group_dead: u32::from(btf.raw_tracepoint_args("sched_process_exit") == Some(2)),
        ncpus,
        page_shift,
        mode: RSS_RAW,
    })
}

/// `nr_cpu_ids`: one more than the highest CPU in `devices/system/cpu/possible` ("0-31").
fn possible_cpus(sysfs_root: &Path) -> Result<u32, CpuCountError> {
    let path = sysfs_root.join("devices/system/cpu/possible");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(source) => return Err(CpuCountError::Read { path, source }),
    };
    match parse_possible(&text) {
        Some(n) => Ok(n),
        None => Err(CpuCountError::Parse { path, text }),
    }
}

pub fn parse_possible(text: &str) -> Option<u32> {
    let mut max = None;
    for part in text.trim().split(',') {
        let hi = part.rsplit('-').next()?.trim().parse::<u32>().ok()?;
        max = Some(max.map_or(hi, |m: u32| m.max(hi)));
    }
    max.map(|m| m + 1)
}

fn page_shift() -> u32 {
    (crate::telemetry::page_size() as u64).trailing_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::ebpf::btf::test_blobs::Builder;
    use crate::telemetry::ebpf::btf::{
        KIND_ARRAY, KIND_FUNC_PROTO, KIND_INT, KIND_PTR, KIND_STRUCT, KIND_TYPEDEF,
    };

    /// The kernel BTF the raw programs read, reduced to what they need: Linux 6.18's layout
    /// (offsets as on this project's CI kernel), `exit_args` arguments of sched_process_exit,
    /// and mm_struct.rss_stat as an array of `rss_elem` structs.
    fn kernel_btf(exit_args: u32, rss_elem: &str) -> Btf {
        let mut b = Builder::new();
        // 1: int
        b.head("int", KIND_INT, 0, false, 4);
        b.u32(32);
        // 2: struct percpu_counter (or another element type)
        b.composite(
            KIND_STRUCT,
            rss_elem,
            40,
            false,
            &[("lock", 1, 0), ("count", 1, 64), ("counters", 1, 256)],
        );
        // 3: rss_elem[4]
        b.head("", KIND_ARRAY, 0, false, 0);
        b.u32(2);
        b.u32(1);
        b.u32(4);
        // 4..7: the structs with the members read
        b.composite(
            KIND_STRUCT,
            "mm_struct",
            1472,
            false,
            &[("rss_stat", 3, 968 * 8)],
        );
        b.composite(
            KIND_STRUCT,
            "bpf_array",
            320,
            false,
            &[("pptrs", 1, 312 * 8)],
        );
        b.composite(
            KIND_STRUCT,
            "task_struct",
            4096,
            false,
            &[
                ("mm", 1, 1136 * 8),
                ("pid", 1, 1264 * 8),
                ("tgid", 1, 1268 * 8),
            ],
        );
        b.composite(
            KIND_STRUCT,
            "linux_binprm",
            256,
            false,
            &[("filename", 1, 96 * 8)],
        );
        // 8..: per tracepoint a func proto (void *__data, args...), a pointer to it, and the
        // btf_trace_<name> typedef of that pointer.
        let mut id = 8;
        for (tp, n) in [
            ("sched_switch", 4),
            ("task_newtask", 2),
            ("sched_process_exec", 3),
            ("sched_process_exit", exit_args),
            ("rss_stat", 2),
        ] {
            b.head("", KIND_FUNC_PROTO, n + 1, false, 0);
            for _ in 0..=n {
                b.u32(0);
                b.u32(1);
            }
            b.head("", KIND_PTR, 0, false, id);
            b.head(&format!("btf_trace_{tp}"), KIND_TYPEDEF, 0, false, id + 1);
            id += 3;
        }
        Btf::parse(b.finish()).unwrap()
    }

    #[test]
    fn offsets_and_argument_counts_come_from_the_kernels_btf() {
        let btf = kernel_btf(2, "percpu_counter");
        assert_eq!(btf.raw_tracepoint_args("sched_switch"), Some(4));
        assert_eq!(btf.raw_tracepoint_args("no_such_tracepoint"), None);
        assert_eq!(
            btf.member_struct_name("mm_struct", "rss_stat").as_deref(),
            Some("percpu_counter")
        );
        let r = offsets_from_btf(&btf, 32, 12).unwrap();
        assert_eq!(
            (
                r.mm_rss_stat,
                r.counter_size,
                r.counter_count,
                r.counter_counters
            ),
            (968, 40, 8, 32)
        );
        assert_eq!((r.task_mm, r.task_pid, r.binprm_filename), (1136, 1264, 96));
        assert_eq!(r.task_tgid, 1268);
        assert_eq!((r.array_pptrs, r.ncpus, r.page_shift), (312, 32, 12));
        assert_eq!(
            r.exit_group_dead, 1,
            "6.16+: sched_process_exit has group_dead"
        );
        let before_6_16 = offsets_from_btf(&kernel_btf(1, "percpu_counter"), 2, 12).unwrap();
        assert_eq!(before_6_16.exit_group_dead, 0);
    }

    #[test]
    fn kernels_the_raw_programs_cannot_read_are_refused_with_the_reason() {
        // Before Linux 6.2, rss_stat was an array of atomics in struct mm_rss_stat.
        let old = offsets_from_btf(&kernel_btf(1, "mm_rss_stat"), 2, 12)
            .unwrap_err()
            .to_string();
        assert!(
            old.contains("struct mm_rss_stat") && old.contains("6.2"),
            "{old}"
        );
        let too_many = offsets_from_btf(&kernel_btf(2, "percpu_counter"), MAX_CPUS + 1, 12);
        assert!(matches!(too_many, Err(RawTpError::Cpus(n)) if n == MAX_CPUS + 1));
        assert!(too_many.unwrap_err().to_string().contains("possible CPUs"));
        let empty = Btf::parse(Builder::new().finish()).unwrap();
        assert!(offsets_from_btf(&empty, 2, 12)
            .unwrap_err()
            .to_string()
            .contains("does not describe raw tracepoint sched_switch"));
    }

    #[test]
    fn possible_cpu_lists_give_the_count() {
        assert_eq!(parse_possible("0-1\n"), Some(2));
        assert_eq!(parse_possible("0"), Some(1));
        assert_eq!(parse_possible("0-3,8-11"), Some(12));
        assert_eq!(parse_possible(""), None);
        assert_eq!(parse_possible("zero"), None);
    }

    #[test]
    fn names_round_trip() {
        for p in RssProgram::ALL {
            assert_eq!(RssProgram::parse(p.name()), Some(p));
        }
        assert_eq!(RssProgram::parse("fast"), None);
    }
}
