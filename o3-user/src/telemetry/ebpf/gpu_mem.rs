//! Exact GPU-memory peaks: kprobes on amdgpu's VRAM and GTT memory managers
//! (`amdgpu_{vram,gtt}_mgr_new` / `_del`), with the struct field offsets they read taken from
//! the kernel's BTF. Kernels without kprobes (the CI kernel) keep sampled GPU-memory readings;
//! [`kprobes_available`] says why.
//!
//! [`GpuMemMirror`] is the kernel programs' accounting (o3-ebpf/src/main.rs, "GPU memory")
//! written again in user space, line for line, so recorded event sequences can test it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aya::maps::{MapData, MapError};
use aya::programs::{KProbe, ProgramError};
use aya::Ebpf;
use o3_common::{GpuMem, GpuMemOffsets, GpuPending, MAX_GPU_MANAGERS};
use thiserror::Error;

use super::btf::{Btf, BtfError};
use super::tracefs;

/// Why exact GPU-memory peaks are not available; every message is one line.
#[derive(Debug, Error)]
pub enum GpuMemError {
    #[error("this kernel has no kprobes (no {} and no {}): GPU memory peaks are sampled, not exact", events.display(), pmu.display())]
    NoKprobes { events: PathBuf, pmu: PathBuf },
    #[error("kernel BTF ({}): {source}", path.display())]
    KernelBtf { path: PathBuf, source: BtfError },
    #[error("module BTF ({}): {source}", path.display())]
    ModuleBtf { path: PathBuf, source: BtfError },
    #[error("no BTF with struct ttm_resource.size in {} ({searched}): GPU memory peaks are sampled, not exact", dir.display())]
    NoTtmResourceSize { dir: PathBuf, searched: String },
    #[error("no BTF with struct {what} in {}", dir.display())]
    NoMember { what: &'static str, dir: PathBuf },
    #[error("offset overflow")]
    OffsetOverflow,
    #[error("BTF gives a zero offset for a size field")]
    ZeroOffset,
    #[error("program {0} is missing from the embedded object")]
    MissingProgram(&'static str),
    #[error("program {prog}: {source}")]
    NotAKprobe {
        prog: &'static str,
        source: ProgramError,
    },
    #[error("loading {prog}: {}", super::one_line(&source.to_string()))]
    Load {
        prog: &'static str,
        source: ProgramError,
    },
    #[error("attaching {prog} to {func}: {} (is the amdgpu module loaded?)", super::one_line(&source.to_string()))]
    Attach {
        prog: &'static str,
        func: &'static str,
        source: ProgramError,
    },
    #[error("map GPU_MEM is missing from the embedded object")]
    MissingMap,
    #[error("map GPU_MEM: {0}")]
    Map(#[source] MapError),
}

/// (program, kernel function) in attach order: a return probe before its entry probe (so no
/// entry is left waiting for a return probe not yet there), frees last.
pub const GPU_PROGRAMS: [(&str, &str); 6] = [
    ("o3_vram_new_ret", "amdgpu_vram_mgr_new"),
    ("o3_vram_new", "amdgpu_vram_mgr_new"),
    ("o3_vram_del", "amdgpu_vram_mgr_del"),
    ("o3_gtt_new_ret", "amdgpu_gtt_mgr_new"),
    ("o3_gtt_new", "amdgpu_gtt_mgr_new"),
    ("o3_gtt_del", "amdgpu_gtt_mgr_del"),
];

/// Ok when this kernel can attach kprobes (kprobe_events in tracefs, or the kprobe PMU that
/// perf_event_open uses); otherwise the reason, in one line.
pub fn kprobes_available(sysfs_root: &Path) -> Result<(), GpuMemError> {
    let events = tracefs::tracefs_dir(sysfs_root).join("kprobe_events");
    let pmu = sysfs_root.join("bus/event_source/devices/kprobe");
    if events.exists() || pmu.exists() {
        return Ok(());
    }
    Err(GpuMemError::NoKprobes { events, pmu })
}

/// Reads the offsets of `ttm_buffer_object.base.size` and `ttm_resource.size` from the BTF in
/// `btf_dir` (`<sysfs>/kernel/btf`). The TTM types are looked up, in order, in amdgpu's own
/// BTF (the copies it was built with), `amdttm` (AMD's DKMS TTM), `ttm`, and vmlinux (TTM
/// built in); `drm_gem_object.size` in the same blob, else in `drm` or vmlinux.
pub fn offsets(btf_dir: &Path) -> Result<GpuMemOffsets, GpuMemError> {
    // AMD's DKMS driver brings its own TTM (amdttm); the in-tree ttm's layout may differ.
    let dkms = btf_dir
        .parent()
        .and_then(Path::parent)
        .is_some_and(|sysfs| sysfs.join("module/amdttm").exists());
    offsets_in(btf_dir, dkms)
}

/// [`offsets`] with the DKMS question answered: with `dkms`, the in-tree `ttm` is not used.
pub fn offsets_in(btf_dir: &Path, dkms: bool) -> Result<GpuMemOffsets, GpuMemError> {
    let path = btf_dir.join("vmlinux");
    let vmlinux = match Btf::from_file(&path) {
        Ok(b) => Arc::new(b),
        Err(source) => return Err(GpuMemError::KernelBtf { path, source }),
    };
    let module = |name: &str| -> Result<Option<Btf>, GpuMemError> {
        let path = btf_dir.join(name);
        if !path.exists() {
            return Ok(None);
        }
        match Btf::from_file_split(&path, vmlinux.clone()) {
            Ok(b) => Ok(Some(b)),
            Err(source) => Err(GpuMemError::ModuleBtf { path, source }),
        }
    };
    let mut ttm_names = vec!["amdgpu", "amdttm"];
    if !dkms {
        ttm_names.push("ttm");
    }
    let mut modules = Vec::new();
    for name in &ttm_names {
        if let Some(b) = module(name)? {
            modules.push(b);
        }
    }
    // vmlinux last (TTM built in).
    let ttm: Vec<&Btf> = modules.iter().chain([&*vmlinux]).collect();

    let res_size = ttm
        .iter()
        .find_map(|b| b.member_offset("ttm_resource", &["size"]))
        .ok_or_else(|| GpuMemError::NoTtmResourceSize {
            dir: btf_dir.to_path_buf(),
            searched: ttm_names.join(", "),
        })?;
    let tbo_size = match ttm
        .iter()
        .find_map(|b| b.member_offset("ttm_buffer_object", &["base", "size"]))
    {
        Some(off) => off,
        None => {
            // The embedded drm_gem_object from drm's BTF (never needed with complete module
            // BTF, which carries its own copy of every type vmlinux lacks).
            let base = ttm
                .iter()
                .find_map(|b| b.member_offset("ttm_buffer_object", &["base"]))
                .ok_or_else(|| GpuMemError::NoMember {
                    what: "ttm_buffer_object.base",
                    dir: btf_dir.to_path_buf(),
                })?;
            let size = match module("drm")? {
                Some(drm) => drm.member_offset("drm_gem_object", &["size"]),
                None => vmlinux.member_offset("drm_gem_object", &["size"]),
            }
            .ok_or_else(|| GpuMemError::NoMember {
                what: "drm_gem_object.size",
                dir: btf_dir.to_path_buf(),
            })?;
            base.checked_add(size).ok_or(GpuMemError::OffsetOverflow)?
        }
    };
    if tbo_size == 0 || res_size == 0 {
        return Err(GpuMemError::ZeroOffset);
    }
    Ok(GpuMemOffsets { tbo_size, res_size })
}

/// The offsets to set as the `GPU_OFFSETS` global at load time: zeros (the programs then do
/// nothing) when kprobes or the BTF are unavailable.
pub fn loader_offsets(sysfs_root: &Path) -> GpuMemOffsets {
    if kprobes_available(sysfs_root).is_err() {
        return GpuMemOffsets::default();
    }
    offsets(&sysfs_root.join("kernel/btf")).unwrap_or_default()
}

/// The attached GPU-memory probes and their per-manager map.
pub struct GpuMemProbes {
    mem: aya::maps::HashMap<MapData, u64, GpuMem>,
    pub offsets: GpuMemOffsets,
}

impl GpuMemProbes {
    /// Every manager seen so far (kernel address, usage), VRAM before GTT.
    pub fn managers(&self) -> Vec<(u64, GpuMem)> {
        let mut out: Vec<(u64, GpuMem)> = self.mem.iter().filter_map(Result::ok).collect();
        out.sort_by_key(|(man, g)| (g.kind, *man));
        out
    }
}

/// Loads the kprobe programs (verifier) without attaching them; on failure the ones already
/// loaded are unloaded again.
pub fn load_programs(ebpf: &mut Ebpf) -> Result<(), GpuMemError> {
    for (i, (prog, _)) in GPU_PROGRAMS.into_iter().enumerate() {
        let loaded = kprobe(ebpf, prog).and_then(|p| {
            p.load()
                .map_err(|source| GpuMemError::Load { prog, source })
        });
        if let Err(e) = loaded {
            unload(ebpf, i);
            return Err(e);
        }
    }
    Ok(())
}

fn kprobe<'a>(ebpf: &'a mut Ebpf, prog: &'static str) -> Result<&'a mut KProbe, GpuMemError> {
    ebpf.program_mut(prog)
        .ok_or(GpuMemError::MissingProgram(prog))?
        .try_into()
        .map_err(|source| GpuMemError::NotAKprobe { prog, source })
}

/// Unloads (and so detaches) the first `n` programs.
fn unload(ebpf: &mut Ebpf, n: usize) {
    for (prog, _) in GPU_PROGRAMS.iter().take(n) {
        if let Ok(p) = kprobe(ebpf, prog) {
            let _ = p.unload();
        }
    }
}

/// Loads and attaches the kprobes when this kernel has them and the BTF gives the offsets
/// (the same ones [`loader_offsets`] handed to the loader). All or nothing: on any failure
/// nothing stays attached and the reason comes back in one line.
pub fn attach(ebpf: &mut Ebpf, sysfs_root: &Path) -> Result<GpuMemProbes, GpuMemError> {
    kprobes_available(sysfs_root)?;
    let offsets = offsets(&sysfs_root.join("kernel/btf"))?;
    load_programs(ebpf)?;
    for (prog, func) in GPU_PROGRAMS {
        let attached = kprobe(ebpf, prog).and_then(|p| {
            p.attach(func, 0)
                .map(drop)
                .map_err(|source| GpuMemError::Attach { prog, func, source })
        });
        if let Err(e) = attached {
            unload(ebpf, GPU_PROGRAMS.len());
            return Err(e);
        }
    }
    let map = ebpf.take_map("GPU_MEM").ok_or(GpuMemError::MissingMap)?;
    let mem = aya::maps::HashMap::try_from(map).map_err(GpuMemError::Map)?;
    Ok(GpuMemProbes { mem, offsets })
}

// ---------------------------------------------------------------- user-side mirror

/// What the kernel programs see, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuMemEvent {
    /// Entry of `amdgpu_*_mgr_new(man, tbo, ..)` on thread `tid`; `size` = `tbo->base.size`.
    New {
        man: u64,
        kind: u32,
        tid: u32,
        size: u64,
    },
    /// Return of that call on thread `tid`; `ok` = it returned 0.
    NewRet { tid: u32, ok: bool, t_ns: u64 },
    /// Entry of `amdgpu_*_mgr_del(man, res)`; `size` = `res->size`.
    Del {
        man: u64,
        kind: u32,
        size: u64,
        t_ns: u64,
    },
}

/// The kernel programs' accounting, replayed in user space. Each step below corresponds to
/// one line of `try_gpu_new`, `try_gpu_new_ret`, `try_gpu_del`, `gpu_manager` and
/// `raise_gpu_peak` in o3-ebpf/src/main.rs (atomics become plain arithmetic: one event at a
/// time). Differences: the kernel's pending map is an LRU of `MAX_GPU_PENDING` entries (only
/// missed returns are ever evicted) and it drops the pending entry when the size cannot be
/// read (not an event here).
#[derive(Debug, Default, Clone)]
pub struct GpuMemMirror {
    pending: HashMap<u32, GpuPending>,
    managers: BTreeMap<u64, GpuMem>,
}

impl GpuMemMirror {
    pub fn new() -> GpuMemMirror {
        GpuMemMirror::default()
    }

    pub fn apply(&mut self, ev: GpuMemEvent) {
        match ev {
            // try_gpu_new
            GpuMemEvent::New {
                man,
                kind,
                tid,
                size,
            } => {
                let p = GpuPending {
                    man,
                    size,
                    kind,
                    _pad: 0,
                };
                self.pending.insert(tid, p);
            }
            // try_gpu_new_ret
            GpuMemEvent::NewRet { tid, ok, t_ns } => {
                let Some(p) = self.pending.get(&tid).copied() else {
                    return;
                };
                self.pending.remove(&tid);
                if !ok {
                    return;
                }
                let Some(g) = self.manager_mut(p.man, p.kind) else {
                    return;
                };
                let size = p.size as i64;
                let cur = g.cur + size;
                g.cur = cur;
                g.allocs += 1;
                raise_peak(g, cur, t_ns);
            }
            // try_gpu_del
            GpuMemEvent::Del {
                man,
                kind,
                size,
                t_ns,
            } => {
                let size = size as i64;
                let Some(g) = self.manager_mut(man, kind) else {
                    return;
                };
                let old = g.cur;
                g.cur = old - size;
                g.frees += 1;
                let new = old - size;
                if new < 0 {
                    let excess = if size < -new { size } else { -new };
                    let cur = g.cur + excess;
                    g.cur = cur;
                    g.clamped += 1;
                    raise_peak(g, cur, t_ns);
                }
            }
        }
    }

    /// gpu_manager: the entry, created on first sight unless the map is full.
    fn manager_mut(&mut self, man: u64, kind: u32) -> Option<&mut GpuMem> {
        if !self.managers.contains_key(&man) && self.managers.len() >= MAX_GPU_MANAGERS as usize {
            return None;
        }
        Some(self.managers.entry(man).or_insert(GpuMem {
            kind,
            ..GpuMem::default()
        }))
    }

    pub fn manager(&self, man: u64) -> Option<GpuMem> {
        self.managers.get(&man).copied()
    }

    /// Every manager seen (address, usage).
    pub fn managers(&self) -> impl Iterator<Item = (u64, GpuMem)> + '_ {
        self.managers.iter().map(|(m, g)| (*m, *g))
    }

    /// Allocations between entry and return.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// raise_gpu_peak (without the compare-and-swap retries: one event at a time).
fn raise_peak(g: &mut GpuMem, cur: i64, now: u64) {
    if cur <= g.peak {
        return;
    }
    g.peak = cur;
    g.peak_ns = now;
}

#[cfg(test)]
mod tests {
    use super::super::btf::test_blobs::Builder;
    use super::super::btf::{KIND_INT, KIND_STRUCT};
    use super::*;
    use o3_common::{GPU_MEM_KIND_GTT, GPU_MEM_KIND_VRAM};
    use GpuMemEvent::*;

    const VRAM: u64 = 0xffff_8881_0000_1000;
    const GTT: u64 = 0xffff_8881_0000_2000;
    const MIB: u64 = 1 << 20;

    fn alloc(man: u64, kind: u32, tid: u32, size: u64, ok: bool, t_ns: u64) -> [GpuMemEvent; 2] {
        [
            New {
                man,
                kind,
                tid,
                size,
            },
            NewRet { tid, ok, t_ns },
        ]
    }

    fn run(events: &[GpuMemEvent]) -> GpuMemMirror {
        let mut m = GpuMemMirror::new();
        for &e in events {
            m.apply(e);
        }
        m
    }

    #[test]
    fn interleaved_allocations_on_two_managers() {
        let v = GPU_MEM_KIND_VRAM;
        let g = GPU_MEM_KIND_GTT;
        // Two threads allocate at once: entries of both before either returns.
        let events = [
            New {
                man: VRAM,
                kind: v,
                tid: 10,
                size: 64 * MIB,
            },
            New {
                man: GTT,
                kind: g,
                tid: 11,
                size: 8 * MIB,
            },
            NewRet {
                tid: 11,
                ok: true,
                t_ns: 100,
            },
            NewRet {
                tid: 10,
                ok: true,
                t_ns: 110,
            },
            New {
                man: VRAM,
                kind: v,
                tid: 11,
                size: 32 * MIB,
            },
            NewRet {
                tid: 11,
                ok: true,
                t_ns: 200,
            },
            Del {
                man: VRAM,
                kind: v,
                size: 64 * MIB,
                t_ns: 300,
            },
            Del {
                man: GTT,
                kind: g,
                size: 8 * MIB,
                t_ns: 310,
            },
        ];
        let m = run(&events);
        let vram = m.manager(VRAM).unwrap();
        assert_eq!(vram.kind, GPU_MEM_KIND_VRAM);
        assert_eq!(
            (vram.cur, vram.peak, vram.peak_ns),
            (32 * MIB as i64, 96 * MIB as i64, 200)
        );
        assert_eq!((vram.allocs, vram.frees, vram.clamped), (2, 1, 0));
        let gtt = m.manager(GTT).unwrap();
        assert_eq!(gtt.kind, GPU_MEM_KIND_GTT);
        assert_eq!((gtt.cur, gtt.peak, gtt.peak_ns), (0, 8 * MIB as i64, 100));
        assert_eq!(m.pending(), 0);
    }

    #[test]
    fn failed_allocation_is_not_counted() {
        let v = GPU_MEM_KIND_VRAM;
        let mut events = Vec::new();
        events.extend(alloc(VRAM, v, 7, 16 * MIB, true, 10));
        // -ENOSPC: the size was parked at entry but never counted.
        events.extend(alloc(VRAM, v, 7, 4096 * MIB, false, 20));
        // A return without an entry (attached between the two) is ignored too.
        events.push(NewRet {
            tid: 8,
            ok: true,
            t_ns: 30,
        });
        let m = run(&events);
        let vram = m.manager(VRAM).unwrap();
        assert_eq!(
            (vram.cur, vram.peak, vram.peak_ns),
            (16 * MIB as i64, 16 * MIB as i64, 10)
        );
        assert_eq!(vram.allocs, 1);
        assert_eq!(m.pending(), 0);
    }

    #[test]
    fn free_of_memory_allocated_before_attach_clamps_at_zero() {
        let v = GPU_MEM_KIND_VRAM;
        let mut events = Vec::new();
        events.extend(alloc(VRAM, v, 1, 10 * MIB, true, 10));
        // 100 MiB allocated before attach is freed: usage stops at 0, and it is counted.
        events.push(Del {
            man: VRAM,
            kind: v,
            size: 100 * MIB,
            t_ns: 20,
        });
        // Also on a manager seen for the first time through a free.
        events.push(Del {
            man: GTT,
            kind: GPU_MEM_KIND_GTT,
            size: MIB,
            t_ns: 25,
        });
        events.extend(alloc(VRAM, v, 1, 4 * MIB, true, 30));
        let m = run(&events);
        let vram = m.manager(VRAM).unwrap();
        assert_eq!(
            (vram.cur, vram.peak, vram.peak_ns),
            (4 * MIB as i64, 10 * MIB as i64, 10)
        );
        assert_eq!((vram.allocs, vram.frees, vram.clamped), (2, 1, 1));
        let gtt = m.manager(GTT).unwrap();
        assert_eq!((gtt.cur, gtt.peak, gtt.frees, gtt.clamped), (0, 0, 1, 1));
        assert!(m.managers().all(|(_, g)| g.cur >= 0));
    }

    #[test]
    fn microsecond_spike_between_samples_is_caught() {
        let v = GPU_MEM_KIND_VRAM;
        // Samples at 0 and 10 ms; a 1 GiB buffer lives for 1 µs in between.
        let (s0, s1) = (0u64, 10_000_000u64);
        let mut timed: Vec<(u64, GpuMemEvent)> = Vec::new();
        for e in alloc(VRAM, v, 3, 512 * MIB, true, 0) {
            timed.push((0, e));
        }
        for e in alloc(VRAM, v, 3, 1024 * MIB, true, 5_000_000) {
            timed.push((5_000_000, e));
        }
        timed.push((
            5_001_000,
            Del {
                man: VRAM,
                kind: v,
                size: 1024 * MIB,
                t_ns: 5_001_000,
            },
        ));
        // A sampler reading the usage at s0 and s1 sees 512 MiB both times.
        let sampled = |t: u64| {
            let m = run(&timed
                .iter()
                .filter(|(at, _)| *at <= t)
                .map(|(_, e)| *e)
                .collect::<Vec<_>>());
            m.manager(VRAM).map_or(0, |g| g.cur)
        };
        let sampled_peak = sampled(s0).max(sampled(s1));
        assert_eq!(sampled_peak, 512 * MIB as i64);
        // The mirror (like the kernel) has the exact peak and its time.
        let m = run(&timed.iter().map(|(_, e)| *e).collect::<Vec<_>>());
        let vram = m.manager(VRAM).unwrap();
        assert_eq!(vram.peak, 1536 * MIB as i64);
        assert_eq!(vram.peak_ns, 5_000_000);
        assert_eq!(vram.cur, 512 * MIB as i64);
    }

    #[test]
    fn manager_map_is_bounded_like_the_kernels() {
        let mut m = GpuMemMirror::new();
        for i in 0..(u64::from(MAX_GPU_MANAGERS) + 4) {
            for e in alloc(0x1000 * (i + 1), GPU_MEM_KIND_GTT, 1, MIB, true, i) {
                m.apply(e);
            }
        }
        assert_eq!(m.managers().count(), MAX_GPU_MANAGERS as usize);
    }

    #[test]
    fn no_kprobes_on_a_bare_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let err = kprobes_available(dir.path()).unwrap_err().to_string();
        assert!(err.starts_with("this kernel has no kprobes (no "), "{err}");
        assert!(err.contains("kprobe_events") && err.contains("bus/event_source/devices/kprobe"));
        assert!(err.ends_with("GPU memory peaks are sampled, not exact"));
        assert!(!err.contains('\n'));
        assert_eq!(loader_offsets(dir.path()), GpuMemOffsets::default());
        std::fs::create_dir_all(dir.path().join("bus/event_source/devices/kprobe")).unwrap();
        assert!(kprobes_available(dir.path()).is_ok());
        // Kprobes but no BTF: zeros, and a reason from `offsets`.
        assert_eq!(loader_offsets(dir.path()), GpuMemOffsets::default());
        assert!(matches!(
            offsets(&dir.path().join("kernel/btf")),
            Err(GpuMemError::KernelBtf { .. })
        ));
    }

    /// Fills one module's BTF blob.
    type Blob = fn(&mut Builder);

    /// Writes a fake `<sysfs>/kernel/btf` with a vmlinux blob (ids 1-2: long, unsigned int)
    /// and module blobs on top of it.
    fn btf_dir(modules: &[(&str, Blob)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut base = Builder::new();
        base.head("long", KIND_INT, 0, false, 8);
        base.u32(64);
        base.head("unsigned int", KIND_INT, 0, false, 4);
        base.u32(32);
        std::fs::write(dir.path().join("vmlinux"), base.finish()).unwrap();
        for (name, build) in modules {
            let mut m = Builder::split(base.str_len());
            build(&mut m);
            std::fs::write(dir.path().join(name), m.finish()).unwrap();
        }
        dir
    }

    /// ids 3-5: drm_gem_object (size at byte 56), ttm_buffer_object (base at byte `tbo`),
    /// ttm_resource (size at byte `res`).
    fn ttm_types(m: &mut Builder, tbo: u32, res: u32) {
        m.composite(
            KIND_STRUCT,
            "drm_gem_object",
            64,
            false,
            &[("refcount", 2, 0), ("size", 1, 56 * 8)],
        );
        m.composite(
            KIND_STRUCT,
            "ttm_buffer_object",
            256,
            false,
            &[("base", 3, tbo * 8)],
        );
        m.composite(
            KIND_STRUCT,
            "ttm_resource",
            64,
            false,
            &[("start", 1, 0), ("size", 1, res * 8)],
        );
    }

    #[test]
    fn offsets_come_from_module_btf() {
        let ttm: Blob = |m| ttm_types(m, 0, 8);
        let amdttm: Blob = |m| ttm_types(m, 8, 16);
        let want = |tbo_size, res_size| Some(GpuMemOffsets { tbo_size, res_size });

        let dir = btf_dir(&[("ttm", ttm)]);
        assert_eq!(offsets_in(dir.path(), false).ok(), want(56, 8));
        // With AMD's DKMS driver loaded, the in-tree ttm's layout is not trusted.
        let err = offsets_in(dir.path(), true).unwrap_err().to_string();
        assert!(
            err.contains("ttm_resource") && err.contains("amdttm"),
            "{err}"
        );

        // amdttm (and amdgpu's own BTF) come before ttm.
        let dir = btf_dir(&[("ttm", ttm), ("amdttm", amdttm)]);
        assert_eq!(offsets_in(dir.path(), false).ok(), want(64, 16));
        let dir = btf_dir(&[("ttm", ttm), ("amdgpu", amdttm)]);
        assert_eq!(offsets_in(dir.path(), false).ok(), want(64, 16));

        // An incomplete drm_gem_object in ttm's blob: its size comes from drm's BTF.
        let dir = btf_dir(&[
            ("ttm", |m| {
                m.composite(KIND_STRUCT, "drm_gem_object", 0, false, &[]);
                m.composite(
                    KIND_STRUCT,
                    "ttm_buffer_object",
                    256,
                    false,
                    &[("base", 3, 64)],
                );
                m.composite(KIND_STRUCT, "ttm_resource", 64, false, &[("size", 1, 64)]);
            }),
            ("drm", |m| {
                m.composite(
                    KIND_STRUCT,
                    "drm_gem_object",
                    64,
                    false,
                    &[("size", 1, 40 * 8)],
                );
            }),
        ]);
        assert_eq!(offsets_in(dir.path(), false).ok(), want(48, 8));

        // A broken module blob is a reason, not a panic.
        let dir = btf_dir(&[("ttm", ttm)]);
        std::fs::write(dir.path().join("amdgpu"), b"garbage").unwrap();
        let err = offsets_in(dir.path(), false).unwrap_err();
        assert!(matches!(err, GpuMemError::ModuleBtf { .. }), "{err}");
        assert!(err.to_string().starts_with("module BTF ("), "{err}");
    }

    #[test]
    fn offsets_need_the_ttm_types() {
        // This machine's vmlinux has no TTM (no GPU driver): a one-line reason.
        let src = Path::new("/sys/kernel/btf/vmlinux");
        if !src.exists() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vmlinux"), std::fs::read(src).unwrap()).unwrap();
        match offsets_in(dir.path(), false) {
            Ok(o) => assert!(o.tbo_size > 0 && o.res_size > 0), // TTM built in
            Err(e) => assert!(e.to_string().contains("ttm_resource"), "{e}"),
        }
    }

    /// On the real machine: the embedded object has the programs and the global, the kprobe
    /// programs pass the verifier, and attaching gives the reason where kprobes are missing.
    /// Needs root (skipped otherwise).
    #[test]
    fn programs_load_and_attach_reports_why_not() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: not root");
            return;
        }
        let offs = GpuMemOffsets {
            tbo_size: 8,
            res_size: 8,
        };
        let mut ebpf = match aya::EbpfLoader::new()
            .set_global("GPU_OFFSETS", &offs, true)
            .load(super::super::EBPF_OBJ)
        {
            Ok(e) => e,
            Err(e) => {
                eprintln!("skipped: cannot load BPF here: {e}");
                return;
            }
        };
        for (prog, _) in GPU_PROGRAMS {
            assert!(kprobe(&mut ebpf, prog).is_ok(), "{prog}");
        }
        load_programs(&mut ebpf).unwrap();
        let sysfs = Path::new("/sys");
        match kprobes_available(sysfs) {
            Err(why) => assert_eq!(
                attach(&mut ebpf, sysfs).err().map(|e| e.to_string()),
                Some(why.to_string())
            ),
            Ok(()) => {
                // Kprobes but (on CI) no amdgpu: attaching fails and nothing stays attached.
                if let Err(e) = attach(&mut ebpf, sysfs) {
                    assert!(!e.to_string().contains('\n'), "{e}");
                }
            }
        }
    }
}
