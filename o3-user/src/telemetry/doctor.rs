//! What this machine offers o3's measurements (`o3 doctor`): each check with what was found,
//! or what is lost without it. Each check is a step of its own; the judgements
//! (found → [`Check`]) are pure, the probing of the machine is kept apart from them.

use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::Path;

use serde::Serialize;

use super::ebpf::{self, tracefs};
use super::gpu::source::{GpuInfo, GpuOptions, GpuSelect, GpuSource};
use crate::backend::version::{self, Found, VersionError};

/// One check: what it is about, whether o3 has it, and the detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// What was found, or what is lost without it.
    pub detail: String,
}

/// Where the machine's trees are (`--sysfs-root`, `--procfs-root`, `--dev-root`).
#[derive(Debug, Clone, Copy)]
pub struct Roots<'a> {
    pub sysfs: &'a Path,
    pub procfs: &'a Path,
    pub dev: &'a Path,
}

fn check(name: &'static str, ok: bool, yes: impl Into<String>, no: impl Into<String>) -> Check {
    Check {
        name,
        ok,
        detail: if ok { yes.into() } else { no.into() },
    }
}

/// Every check, in the order `o3 doctor` prints them.
pub fn checks(roots: Roots<'_>) -> Vec<Check> {
    let root = nix::unistd::geteuid().is_root();
    let bpf = bpf_usable();
    let dir = tracefs::tracefs_dir(roots.sysfs);
    let tracefs = tracefs_check(&dir, see_tracefs(&dir, roots.procfs, root));
    let tracefs_ok = tracefs.ok;
    let btf = roots.sysfs.join("kernel/btf/vmlinux");
    let mut out = vec![
        root_check(root),
        bpf_check(&bpf),
        tracefs,
        btf_check(&btf, btf.exists()),
        raw_tracepoints_check(ebpf::rss::raw_offsets(roots.sysfs).err()),
    ];
    out.extend(ebpf::PROGRAMS.iter().map(|&(prog, cat, name)| {
        let found = tracefs_ok.then(|| tracefs::read_format(&dir, cat, name).is_ok());
        tracepoint_check(prog, cat, name, found)
    }));
    let kprobes = dir.join("kprobe_events").exists()
        || roots.sysfs.join("bus/event_source/devices/kprobe").exists();
    out.push(kprobes_check(kprobes));
    if root && bpf.is_ok() && tracefs_ok {
        out.extend(ebpf_load_checks(roots.sysfs));
    }
    out.extend(gpu_checks(roots));
    out
}

fn root_check(root: bool) -> Check {
    check(
        "root",
        root,
        "running as root",
        "not root: eBPF needs root (or CAP_BPF + CAP_PERFMON); record falls back to procfs polling",
    )
}

/// bpf(BPF_MAP_CREATE) of a one-entry array: the cheapest proof that bpf() works here. nix has
/// no bpf() wrapper, so this is the raw system call.
fn bpf_usable() -> std::io::Result<()> {
    #[repr(C)]
    struct Attr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    let attr = Attr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 8,
        max_entries: 1,
        map_flags: 0,
    };
    // SAFETY: `attr` is a valid prefix of `union bpf_attr` for BPF_MAP_CREATE (the kernel
    // zero-extends a shorter attribute) and lives across the call; the size passed is its own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &raw const attr,
            std::mem::size_of::<Attr>(),
        )
    };
    let fd = nix::errno::Errno::result(fd)?;
    // SAFETY: a successful BPF_MAP_CREATE returns a new file descriptor that nothing else
    // owns; dropping the OwnedFd closes it.
    drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    Ok(())
}

fn bpf_check(bpf: &std::io::Result<()>) -> Check {
    check(
        "bpf",
        bpf.is_ok(),
        "bpf() works",
        format!(
            "bpf() failed ({}): no exact peaks, procfs polling only",
            bpf.as_ref()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        ),
    )
}

/// What o3 found of tracefs at its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TracefsSeen {
    Mounted,
    /// It was not mounted; o3 (root) mounted it.
    MountedByO3,
    /// Reading the directory was refused (EACCES); `listed`: the mount table lists tracefs
    /// there, so it is mounted but readable by root only.
    Unreadable {
        listed: bool,
    },
    /// Not mounted, and o3 is not root (it would mount it).
    NotMounted,
    MountFailed(String),
}

/// Whether `<procfs>/mounts` lists a tracefs mounted at `dir` (`tracefs /sys/kernel/tracing
/// tracefs rw,nosuid,nodev,noexec,relatime 0 0`, fstab's fields).
pub fn listed_in_mounts(mounts: &str, dir: &Path) -> bool {
    mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 3 && f[2] == "tracefs" && Path::new(f[1]) == dir
    })
}

/// Looks at `dir` (mounting tracefs there when o3 is root and it is not mounted).
fn see_tracefs(dir: &Path, procfs: &Path, root: bool) -> TracefsSeen {
    match std::fs::metadata(dir.join("events")) {
        Ok(m) if m.is_dir() => return TracefsSeen::Mounted,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            let mounts = std::fs::read_to_string(procfs.join("mounts")).unwrap_or_default();
            return TracefsSeen::Unreadable {
                listed: listed_in_mounts(&mounts, dir),
            };
        }
        _ => {}
    }
    if !root {
        return TracefsSeen::NotMounted;
    }
    match tracefs::ensure_mounted(dir) {
        Ok(true) => TracefsSeen::MountedByO3,
        Ok(false) => TracefsSeen::Mounted,
        Err(e) => TracefsSeen::MountFailed(e.to_string()),
    }
}

/// The tracefs check: mounted (readable), unreadable (root only: run as root), or not
/// mounted (mount it).
fn tracefs_check(dir: &Path, seen: TracefsSeen) -> Check {
    let d = dir.display();
    let no = |detail: String| Check {
        name: "tracefs",
        ok: false,
        detail: format!("{detail}; tracepoints cannot be attached"),
    };
    match seen {
        TracefsSeen::Mounted => check("tracefs", true, format!("mounted at {d}"), ""),
        TracefsSeen::MountedByO3 => check(
            "tracefs",
            true,
            format!("was not mounted; o3 mounted it at {d}"),
            "",
        ),
        TracefsSeen::Unreadable { listed: true } => no(format!(
            "mounted at {d} but readable by root only: run o3 as root (sudo)"
        )),
        TracefsSeen::Unreadable { listed: false } => no(format!(
            "{d} cannot be read (permission denied): run o3 as root (sudo)"
        )),
        TracefsSeen::NotMounted => no(format!(
            "not mounted at {d}: mount it as root (`sudo mount -t tracefs nodev {d}`), or run o3 as root, which mounts it"
        )),
        TracefsSeen::MountFailed(e) => no(e),
    }
}

fn btf_check(btf: &Path, present: bool) -> Check {
    check(
        "btf",
        present,
        format!("{} present", btf.display()),
        "no kernel BTF: o3 uses its classic tracepoint programs (more costly per page fault), and kprobe field access is less portable",
    )
}

/// `why_not`: why the raw tracepoint programs cannot be used, if they cannot.
fn raw_tracepoints_check(why_not: Option<impl std::fmt::Display>) -> Check {
    check(
        "raw-tracepoints",
        why_not.is_none(),
        "the kernel's BTF describes what o3's raw tracepoint programs read: RSS changes of untracked processes cost one lookup, detaching takes no grace period",
        format!(
            "{}: o3 uses its classic tracepoint programs instead (exact too; more costly per page fault, ~70 ms per program to detach)",
            why_not.map(|w| w.to_string()).unwrap_or_default()
        ),
    )
}

/// The tracepoint `cat:name` program `prog` attaches to; `found` is `None` when tracefs could
/// not be looked in.
fn tracepoint_check(prog: &str, cat: &str, name: &str, found: Option<bool>) -> Check {
    let no = match found {
        None => format!("{cat}:{name} not checked (tracefs cannot be read): {prog} cannot attach"),
        _ => format!("{cat}:{name} missing: {prog} cannot attach, eBPF mode unavailable"),
    };
    check(
        "tracepoint",
        found == Some(true),
        format!("{cat}:{name} present (for {prog})"),
        no,
    )
}

fn kprobes_check(kprobes: bool) -> Check {
    check(
        "kprobes",
        kprobes,
        "kprobes available",
        "this kernel has no kprobes: exact in-kernel GPU-memory peaks are unavailable; GPU memory is sampled",
    )
}

/// Loads and attaches o3's kernel programs (root, bpf() and tracefs are there): whether they
/// load, and whether the GPU-memory kprobes attached.
fn ebpf_load_checks(sysfs_root: &Path) -> Vec<Check> {
    let load = ebpf::Loaded::load(sysfs_root, 1 << 20);
    let mut out = vec![check(
        "ebpf-load",
        load.is_ok(),
        "o3's kernel programs load and attach",
        format!(
            "loading o3's kernel programs failed: {}",
            load.as_ref()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        ),
    )];
    if let Ok(l) = &load {
        out.push(gpu_mem_check(l.gpu_mem.as_ref().err()));
    }
    out
}

/// `why_not`: why the amdgpu memory-manager kprobes did not attach, if they did not.
fn gpu_mem_check(why_not: Option<impl std::fmt::Display>) -> Check {
    match why_not {
        None => check(
            "gpu-mem-ebpf",
            true,
            "amdgpu VRAM/GTT manager kprobes attached: exact GPU-memory peaks",
            "",
        ),
        Some(why) => check("gpu-mem-ebpf", false, "", why.to_string()),
    }
}

/// The GPUs found, each with the readers that serve it, and the warnings of looking for them.
fn gpu_checks(roots: Roots<'_>) -> Vec<Check> {
    let (gpus, warnings) = GpuSource::open(GpuOptions {
        select: GpuSelect::Auto,
        sysfs_root: roots.sysfs.to_path_buf(),
        procfs_root: roots.procfs.to_path_buf(),
        dev_root: roots.dev.to_path_buf(),
        sensor_every: std::time::Duration::ZERO,
        process_every: std::time::Duration::ZERO,
    });
    let mut out = Vec::new();
    if gpus.is_empty() {
        out.push(check(
            "gpus",
            false,
            "",
            "no AMD or NVIDIA GPU found: GPU metrics will be absent",
        ));
    }
    out.extend(gpus.infos().iter().map(gpu_check));
    out.extend(warnings.into_iter().map(|w| Check {
        name: "gpu",
        ok: false,
        detail: w,
    }));
    out
}

/// One GPU: ok when its memory can be read.
fn gpu_check(g: &GpuInfo) -> Check {
    let mut detail = format!(
        "GPU {}: {} ({}{}): memory from {}; sensors from {}; per process from {}",
        g.index,
        g.name,
        g.vendor,
        if g.apu {
            ", APU: model memory lives in GTT"
        } else {
            ""
        },
        g.memory_reader,
        g.sensor_reader,
        g.process_reader
    );
    for n in &g.notes {
        detail += &format!("; {n}");
    }
    Check {
        name: "gpu",
        ok: g.memory_reader != "none",
        detail,
    }
}

/// llama-server, found (`bin` a name in PATH or a path) with its version, or what to do.
pub fn llama_server_check(bin: &str, found: &Result<Found, VersionError>) -> Check {
    match found {
        Ok(f) => Check {
            name: "llama-server",
            ok: true,
            detail: format!("{}: version {}", f.path.display(), f.version),
        },
        Err(e) => Check {
            name: "llama-server",
            ok: false,
            detail: format!(
                "{e}: the llama-server backend needs it; build llama.cpp (https://github.com/ggml-org/llama.cpp) and put llama-server in PATH, or name it with --server-bin{}",
                if bin == "llama-server" { "" } else { " (given here)" }
            ),
        },
    }
}

/// Ollama: its program in PATH and the server at `url`; ok when either is there.
pub fn ollama_check(
    url: &str,
    program: &Result<Found, VersionError>,
    api: &Result<String, VersionError>,
) -> Check {
    let program_part = match program {
        Ok(f) => format!("{}: version {}", f.path.display(), f.version),
        Err(e) => e.to_string(),
    };
    let api_part = match api {
        Ok(v) => format!("server at {url}: version {v}"),
        Err(e) => e.to_string(),
    };
    let ok = program.is_ok() || api.is_ok();
    let advice = match (program.is_ok(), api.is_ok()) {
        (true, true) => "",
        (true, false) => ": start it (`ollama serve`) or name a running one with --url",
        (false, true) => "",
        (false, false) => ": the Ollama backend needs it; install Ollama (https://ollama.com/download) and start `ollama serve`, or name a running server with --url",
    };
    Check {
        name: "ollama",
        ok,
        detail: format!("{program_part}; {api_part}{advice}"),
    }
}

/// The server checks: llama-server (`server_bin`) and Ollama (at `ollama_url`).
pub fn server_checks(server_bin: &str, ollama_url: &str) -> Vec<Check> {
    let llama = version::llama_server(server_bin);
    let program = version::ollama_program();
    let api = version::ollama_api(ollama_url, std::time::Duration::from_secs(2));
    vec![
        llama_server_check(server_bin, &llama),
        ollama_check(ollama_url, &program, &api),
    ]
}

/// The checks without which o3's exact path (root, eBPF programs loaded) is unavailable.
const EXACT_PATH: [&str; 5] = ["root", "bpf", "tracefs", "tracepoint", "ebpf-load"];

/// The last line of `o3 doctor`: whether the exact path is available, and what is degraded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Root, and o3's kernel programs loaded and attached.
    pub exact: bool,
    pub line: String,
}

fn failed(checks: &[Check], exact_path: bool) -> Vec<&'static str> {
    let mut names: Vec<&str> = Vec::new();
    for c in checks.iter().filter(|c| !c.ok) {
        if EXACT_PATH.contains(&c.name) == exact_path && !names.contains(&c.name) {
            names.push(c.name);
        }
    }
    names
}

/// Judges the checks: exact only when the programs loaded (`ebpf-load` ok, which needs root).
pub fn verdict(checks: &[Check]) -> Verdict {
    let exact = checks.iter().any(|c| c.name == "ebpf-load" && c.ok)
        && checks.iter().any(|c| c.name == "root" && c.ok);
    let others = failed(checks, false);
    let also = if others.is_empty() {
        String::new()
    } else {
        format!("; degraded: {}", others.join(", "))
    };
    let line = if exact {
        format!("verdict: exact path available (root, eBPF programs load): peaks are exact{also}")
    } else {
        let missing = failed(checks, true);
        format!(
            "verdict: exact path unavailable ({}): peaks come from procfs polling and can miss short spikes; run o3 as root on a kernel with eBPF{also}",
            if missing.is_empty() { "eBPF programs not loaded".to_string() } else { missing.join(", ") }
        )
    };
    Verdict { exact, line }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_check_says_what_is_lost_without_it() {
        assert_eq!(
            tracefs_check(Path::new("/t"), TracefsSeen::MountedByO3).detail,
            "was not mounted; o3 mounted it at /t"
        );
        let no = tracefs_check(
            Path::new("/t"),
            TracefsSeen::MountFailed("mounting failed".into()),
        );
        assert!(!no.ok);
        assert_eq!(no.detail, "mounting failed; tracepoints cannot be attached");
        assert_eq!(
            tracepoint_check("o3_rss", "kmem", "rss_stat", None).detail,
            "kmem:rss_stat not checked (tracefs cannot be read): o3_rss cannot attach"
        );
        let raw = raw_tracepoints_check(Some("no kernel BTF"));
        assert!(!raw.ok && raw.detail.starts_with("no kernel BTF: o3 uses its classic"));
        assert!(raw_tracepoints_check(None::<String>).ok);
        assert_eq!(
            tracepoint_check("o3_rss", "kmem", "rss_stat", Some(false)).detail,
            "kmem:rss_stat missing: o3_rss cannot attach, eBPF mode unavailable"
        );
        let bpf = bpf_check(&Err(std::io::Error::from_raw_os_error(1)));
        assert_eq!(
            bpf.detail,
            "bpf() failed (Operation not permitted (os error 1)): no exact peaks, procfs polling only"
        );
        assert_eq!(gpu_mem_check(Some("no kprobes")).detail, "no kprobes");
    }

    /// Mounted but root-only (the mount table lists it, reading it is refused) is told apart
    /// from not mounted, each with its own advice.
    #[test]
    fn tracefs_unreadable_is_not_tracefs_unmounted() {
        let dir = Path::new("/sys/kernel/tracing");
        // /proc/mounts of a Debian 12 machine (fstab's fields, one mount per line).
        let mounts = "sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0\n\
                      tracefs /sys/kernel/tracing tracefs rw,nosuid,nodev,noexec,relatime 0 0\n";
        assert!(listed_in_mounts(mounts, dir));
        assert!(!listed_in_mounts(
            mounts,
            Path::new("/sys/kernel/debug/tracing")
        ));
        assert!(!listed_in_mounts("sysfs /sys sysfs rw 0 0\n", dir));
        let c = tracefs_check(dir, TracefsSeen::Unreadable { listed: true });
        assert!(!c.ok);
        assert_eq!(
            c.detail,
            "mounted at /sys/kernel/tracing but readable by root only: run o3 as root (sudo); \
             tracepoints cannot be attached"
        );
        let c = tracefs_check(dir, TracefsSeen::NotMounted);
        assert_eq!(
            c.detail,
            "not mounted at /sys/kernel/tracing: mount it as root (`sudo mount -t tracefs nodev \
             /sys/kernel/tracing`), or run o3 as root, which mounts it; tracepoints cannot be \
             attached"
        );
        assert!(tracefs_check(dir, TracefsSeen::Mounted).ok);
    }

    #[test]
    fn server_checks_give_the_version_or_what_to_do() {
        let found = Ok(Found {
            path: "/usr/bin/llama-server".into(),
            version: "4589 (1d1e6a90)".into(),
        });
        let c = llama_server_check("llama-server", &found);
        assert!(c.ok);
        assert_eq!(c.detail, "/usr/bin/llama-server: version 4589 (1d1e6a90)");
        let c = llama_server_check(
            "llama-server",
            &Err(VersionError::NotInPath("llama-server".into())),
        );
        assert!(!c.ok);
        assert!(
            c.detail.starts_with(
                "llama-server is not in PATH: the llama-server backend needs it; build llama.cpp"
            ),
            "{}",
            c.detail
        );
        let url = "http://127.0.0.1:11434";
        let down = || Err(VersionError::Api(url.into(), "connection refused".into()));
        let c = ollama_check(url, &Err(VersionError::NotInPath("ollama".into())), &down());
        assert!(!c.ok);
        assert!(c.detail.starts_with(
            "ollama is not in PATH; no answer at http://127.0.0.1:11434: connection refused: the \
             Ollama backend needs it; install Ollama"
        ), "{}", c.detail);
        let c = ollama_check(
            url,
            &Err(VersionError::NotInPath("ollama".into())),
            &Ok("0.5.7".into()),
        );
        assert!(c.ok);
        assert_eq!(
            c.detail,
            "ollama is not in PATH; server at http://127.0.0.1:11434: version 0.5.7"
        );
    }

    fn named(name: &'static str, ok: bool) -> Check {
        Check {
            name,
            ok,
            detail: String::new(),
        }
    }

    #[test]
    fn the_verdict_is_exact_only_when_the_programs_load_as_root() {
        let v = verdict(&[
            named("root", true),
            named("bpf", true),
            named("ebpf-load", true),
            named("kprobes", false),
            named("ollama", false),
        ]);
        assert!(v.exact);
        assert_eq!(
            v.line,
            "verdict: exact path available (root, eBPF programs load): peaks are exact; \
             degraded: kprobes, ollama"
        );
        let v = verdict(&[
            named("root", false),
            named("bpf", false),
            named("tracefs", false),
            named("tracepoint", false),
            named("tracepoint", false),
            named("llama-server", true),
        ]);
        assert!(!v.exact);
        assert_eq!(
            v.line,
            "verdict: exact path unavailable (root, bpf, tracefs, tracepoint): peaks come from \
             procfs polling and can miss short spikes; run o3 as root on a kernel with eBPF"
        );
        assert!(!verdict(&[named("root", true), named("ebpf-load", false)]).exact);
    }

    #[test]
    fn a_gpu_is_ok_when_its_memory_can_be_read() {
        let mut g = GpuInfo {
            notes: vec!["a note".into()],
            ..GpuInfo::strix_halo()
        };
        let c = gpu_check(&g);
        assert!(c.ok);
        assert_eq!(
            c.detail,
            "GPU 1: AMD Strix Halo (amd, APU: model memory lives in GTT): memory from amdgpu \
             sysfs; sensors from hwmon; per process from fdinfo; a note"
        );
        g.memory_reader = "none".into();
        assert!(!gpu_check(&g).ok);
    }
}
