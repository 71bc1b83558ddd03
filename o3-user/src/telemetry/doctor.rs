//! What this machine offers o3's measurements (`o3 doctor`): each check with what was found,
//! or what is lost without it. Each check is a step of its own; the judgements
//! (found → [`Check`]) are pure, the probing of the machine is kept apart from them.

use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::Path;

use serde::Serialize;

use super::ebpf::{self, tracefs};
use super::gpu::source::{GpuInfo, GpuOptions, GpuSelect, GpuSource};

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
    let tracefs = tracefs_check(&dir, tracefs::ensure_mounted(&dir));
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
        let found = tracefs_ok && tracefs::read_format(&dir, cat, name).is_ok();
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

/// `mounted`: whether o3 had to mount tracefs at `dir` (`Ok(true)`), found it mounted
/// (`Ok(false)`), or could not mount it.
fn tracefs_check(dir: &Path, mounted: Result<bool, impl std::fmt::Display>) -> Check {
    match mounted {
        Ok(true) => check(
            "tracefs",
            true,
            format!("was not mounted; o3 mounted it at {}", dir.display()),
            "",
        ),
        Ok(false) => check("tracefs", true, format!("mounted at {}", dir.display()), ""),
        Err(e) => check(
            "tracefs",
            false,
            "",
            format!("{e}; tracepoints cannot be attached"),
        ),
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

/// The tracepoint `cat:name` program `prog` attaches to.
fn tracepoint_check(prog: &str, cat: &str, name: &str, found: bool) -> Check {
    check(
        "tracepoint",
        found,
        format!("{cat}:{name} present (for {prog})"),
        format!("{cat}:{name} missing: {prog} cannot attach, eBPF mode unavailable"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_check_says_what_is_lost_without_it() {
        assert_eq!(
            tracefs_check(Path::new("/t"), Ok::<_, String>(true)).detail,
            "was not mounted; o3 mounted it at /t"
        );
        let no = tracefs_check(Path::new("/t"), Err("mounting failed"));
        assert!(!no.ok);
        assert_eq!(no.detail, "mounting failed; tracepoints cannot be attached");
        let raw = raw_tracepoints_check(Some("no kernel BTF"));
        assert!(!raw.ok && raw.detail.starts_with("no kernel BTF: o3 uses its classic"));
        assert!(raw_tracepoints_check(None::<String>).ok);
        assert_eq!(
            tracepoint_check("o3_rss", "kmem", "rss_stat", false).detail,
            "kmem:rss_stat missing: o3_rss cannot attach, eBPF mode unavailable"
        );
        let bpf = bpf_check(&Err(std::io::Error::from_raw_os_error(1)));
        assert_eq!(
            bpf.detail,
            "bpf() failed (Operation not permitted (os error 1)): no exact peaks, procfs polling only"
        );
        assert_eq!(gpu_mem_check(Some("no kprobes")).detail, "no kprobes");
    }

    #[test]
    fn a_gpu_is_ok_when_its_memory_can_be_read() {
        let mut g = GpuInfo {
            index: 1,
            vendor: "amd",
            name: "AMD Strix Halo".into(),
            pci_id: None,
            pci_slot: None,
            apu: true,
            apu_basis: None,
            memory_reader: "amdgpu sysfs".into(),
            sensor_reader: "hwmon".into(),
            process_reader: "fdinfo".into(),
            crit_c: Vec::new(),
            notes: vec!["a note".into()],
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
