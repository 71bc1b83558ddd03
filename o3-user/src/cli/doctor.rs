//! `o3 doctor`: what this machine offers o3, each check with what is lost without it.

use serde::Serialize;

use crate::telemetry::ebpf::{self, tracefs};
use crate::telemetry::gpu::source::{GpuOptions, GpuSelect, GpuSource};

use super::{CliResult, Roots};

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Print the checks as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// What was found, or what is lost without it.
    pub detail: String,
}

fn check(name: &'static str, ok: bool, yes: impl Into<String>, no: impl Into<String>) -> Check {
    Check {
        name,
        ok,
        detail: if ok { yes.into() } else { no.into() },
    }
}

/// bpf(BPF_MAP_CREATE) of a one-entry array: the cheapest proof that bpf() works here.
fn bpf_usable() -> Result<(), std::io::Error> {
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
    // SAFETY: valid bpf_attr prefix for MAP_CREATE; the returned fd is closed below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &attr as *const Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: closing the fd we just got.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

pub fn checks(roots: &Roots) -> Vec<Check> {
    let mut out = Vec::new();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    out.push(check(
        "root",
        root,
        "running as root",
        "not root: eBPF needs root (or CAP_BPF + CAP_PERFMON); record falls back to procfs polling",
    ));
    let bpf = bpf_usable();
    out.push(check(
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
    ));
    let dir = tracefs::tracefs_dir(&roots.sysfs_root);
    let mounted = match tracefs::ensure_mounted(&dir) {
        Ok(true) => Check {
            name: "tracefs",
            ok: true,
            detail: format!("was not mounted; o3 mounted it at {}", dir.display()),
        },
        Ok(false) => check("tracefs", true, format!("mounted at {}", dir.display()), ""),
        Err(e) => check(
            "tracefs",
            false,
            "",
            format!("{e}; tracepoints cannot be attached"),
        ),
    };
    let tracefs_ok = mounted.ok;
    out.push(mounted);
    let btf = roots.sysfs_root.join("kernel/btf/vmlinux");
    out.push(check(
        "btf",
        btf.exists(),
        format!("{} present", btf.display()),
        "no kernel BTF: o3 uses its classic tracepoint programs (more costly per page fault), and kprobe field access is less portable",
    ));
    let raw = ebpf::rss::raw_offsets(&roots.sysfs_root);
    out.push(check(
        "raw-tracepoints",
        raw.is_ok(),
        "the kernel's BTF describes what o3's raw tracepoint programs read: RSS changes of untracked processes cost one lookup, detaching takes no grace period",
        format!(
            "{}: o3 uses its classic tracepoint programs instead (exact too; more costly per page fault, ~70 ms per program to detach)",
            raw.as_ref().err().map(|e| e.to_string()).unwrap_or_default()
        ),
    ));
    for (prog, cat, name) in ebpf::PROGRAMS {
        let found = tracefs_ok && tracefs::read_format(&dir, cat, name).is_ok();
        out.push(Check {
            name: "tracepoint",
            ok: found,
            detail: if found {
                format!("{cat}:{name} present (for {prog})")
            } else {
                format!("{cat}:{name} missing: {prog} cannot attach, eBPF mode unavailable")
            },
        });
    }
    let kprobes = dir.join("kprobe_events").exists()
        || roots
            .sysfs_root
            .join("bus/event_source/devices/kprobe")
            .exists();
    out.push(check(
        "kprobes",
        kprobes,
        "kprobes available",
        "this kernel has no kprobes: exact in-kernel GPU-memory peaks are unavailable; GPU memory is sampled",
    ));
    if root && bpf.is_ok() && tracefs_ok {
        let load = ebpf::Loaded::load(&roots.sysfs_root, 1 << 20);
        out.push(check(
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
        ));
        if let Ok(l) = &load {
            out.push(match &l.gpu_mem {
                Ok(_) => check(
                    "gpu-mem-ebpf",
                    true,
                    "amdgpu VRAM/GTT manager kprobes attached: exact GPU-memory peaks",
                    "",
                ),
                Err(why) => check("gpu-mem-ebpf", false, "", why.to_string()),
            });
        }
    }
    let (gpus, warnings) = GpuSource::open(GpuOptions {
        select: GpuSelect::Auto,
        sysfs_root: roots.sysfs_root.clone(),
        procfs_root: roots.procfs_root.clone(),
        dev_root: roots.dev_root.clone(),
        sensor_every: std::time::Duration::ZERO,
        process_every: std::time::Duration::ZERO,
    });
    if gpus.is_empty() {
        out.push(check(
            "gpus",
            false,
            "",
            "no AMD or NVIDIA GPU found: GPU metrics will be absent",
        ));
    }
    for g in gpus.infos() {
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
        out.push(Check {
            name: "gpu",
            ok: g.memory_reader != "none",
            detail,
        });
    }
    for w in warnings {
        out.push(Check {
            name: "gpu",
            ok: false,
            detail: w,
        });
    }
    out
}

pub fn run(roots: &Roots, a: DoctorArgs) -> CliResult {
    let checks = checks(roots);
    if a.json {
        let v = serde_json::json!({ "schema_version": 1, "checks": checks });
        println!("{v}");
    } else {
        for c in &checks {
            println!(
                "{} {:<11} {}",
                if c.ok { "[ok]" } else { "[--]" },
                c.name,
                c.detail
            );
        }
    }
    Ok(0)
}
