//! GPU memory and engine time per process: DRM fdinfo (`/proc/PID/fdinfo/FD` of fds open on
//! `/dev/dri/*`, Documentation/gpu/drm-usage-stats.rst) and, for ROCm processes, KFD
//! (`/sys/class/kfd/kfd/proc/<pid>/vram_<gpu_id>`). Several fds of one process can share a
//! DRM client: clients are deduplicated by (device, client id).

use std::collections::BTreeMap;
use std::path::Path;

/// One DRM client as its fdinfo describes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DrmClient {
    pub driver: String,
    /// `drm-pdev` (PCI slot), identifies the device.
    pub pdev: String,
    pub client_id: u64,
    /// Bytes per memory region (`vram`, `gtt`, `cpu`): `drm-memory-*`, or on newer kernels
    /// `drm-resident-*` (which is what is actually allocated).
    pub memory: BTreeMap<String, u64>,
    /// Cumulative busy ns per engine (`gfx`, `compute`, `dma`, `dec`, `enc`, ...).
    pub engines_ns: BTreeMap<String, u64>,
}

fn size_bytes(v: &str) -> Option<u64> {
    let mut it = v.split_whitespace();
    let n: u64 = it.next()?.parse().ok()?;
    let mult = match it.next() {
        None => 1,
        Some("KiB") => 1 << 10,
        Some("MiB") => 1 << 20,
        Some("GiB") => 1 << 30,
        Some(_) => return None,
    };
    n.checked_mul(mult)
}

/// Parses one fdinfo text; `None` when it is not a DRM client (no `drm-client-id`).
pub fn parse(text: &str) -> Option<DrmClient> {
    let mut c = DrmClient::default();
    let mut has_id = false;
    let mut resident = BTreeMap::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "drm-driver" => c.driver = v.to_string(),
            "drm-pdev" => c.pdev = v.to_string(),
            "drm-client-id" => {
                c.client_id = v.parse().ok()?;
                has_id = true;
            }
            _ => {
                if let Some(region) = k.strip_prefix("drm-memory-") {
                    if let Some(b) = size_bytes(v) {
                        c.memory.insert(region.to_string(), b);
                    }
                } else if let Some(region) = k.strip_prefix("drm-resident-") {
                    if let Some(b) = size_bytes(v) {
                        resident.insert(region.to_string(), b);
                    }
                } else if let Some(engine) = k.strip_prefix("drm-engine-") {
                    if engine.starts_with("capacity-") {
                        continue;
                    }
                    let ns = v.split_whitespace().next().and_then(|n| n.parse().ok());
                    if let Some(ns) = ns {
                        c.engines_ns.insert(engine.to_string(), ns);
                    }
                }
            }
        }
    }
    // Newer kernels print both; resident is the allocated size.
    for (k, v) in resident {
        c.memory.insert(k, v);
    }
    has_id.then_some(c)
}

/// The DRM clients a process holds (deduplicated), read from procfs.
pub fn process_clients(procfs: &Path, pid: u32) -> Vec<DrmClient> {
    let dir = procfs.join(pid.to_string());
    let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
        return Vec::new();
    };
    let mut out: Vec<DrmClient> = Vec::new();
    for fd in fds.flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        if !target.starts_with("/dev/dri/") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(dir.join("fdinfo").join(fd.file_name())) else {
            continue;
        };
        if let Some(c) = parse(&text) {
            if !out
                .iter()
                .any(|o| o.client_id == c.client_id && o.pdev == c.pdev)
            {
                out.push(c);
            }
        }
    }
    out
}

pub use crate::trace::gpu::ProcessGpu;

/// KFD per-process VRAM: the sum of `vram_<gpu_id>` files under
/// `<sysfs>/class/kfd/kfd/proc/<pid>/`.
pub fn kfd_vram(sysfs: &Path, pid: u32) -> u64 {
    let dir = sysfs.join(format!("class/kfd/kfd/proc/{pid}"));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("vram_"))
        .filter_map(|e| {
            std::fs::read_to_string(e.path())
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Reads fdinfo and KFD for each pid.
pub fn read_processes(procfs: &Path, sysfs: &Path, pids: &[u32]) -> Vec<ProcessGpu> {
    pids.iter()
        .map(|&pid| {
            let clients = process_clients(procfs, pid);
            let sum = |region: &str| {
                clients
                    .iter()
                    .filter_map(|c| c.memory.get(region))
                    .sum::<u64>()
            };
            ProcessGpu {
                pid,
                vram_bytes: sum("vram"),
                gtt_bytes: sum("gtt"),
                kfd_vram_bytes: kfd_vram(sysfs, pid),
                engine_ns: clients.iter().flat_map(|c| c.engines_ns.values()).sum(),
            }
        })
        .filter(|p| p.vram_bytes + p.gtt_bytes + p.kfd_vram_bytes + p.engine_ns > 0)
        .collect()
}

/// Busy % of a process between two readings of its engine ns, surviving counter resets.
pub fn busy_percent(prev_ns: u64, cur_ns: u64, wall_ns: u64) -> Option<f64> {
    let d = cur_ns.checked_sub(prev_ns)?;
    (wall_ns > 0).then(|| (d as f64 / wall_ns as f64 * 100.0).min(100.0 * 64.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gpu-procfs")
    }

    #[test]
    fn parses_amdgpu_fdinfo_old_and_new_keys() {
        let text = std::fs::read_to_string(fixtures().join("4242/fdinfo/5")).unwrap();
        let c = parse(&text).unwrap();
        assert_eq!(c.driver, "amdgpu");
        assert_eq!(c.pdev, "0000:c3:00.0");
        assert_eq!(c.client_id, 17);
        // drm-resident-* wins over drm-memory-* when both exist.
        assert_eq!(c.memory["vram"], 180_224 * 1024);
        assert_eq!(c.memory["gtt"], 41_943_040 * 1024);
        assert_eq!(c.engines_ns["gfx"], 1_234_567_890);
        assert!(!c.engines_ns.contains_key("capacity-gfx"));
    }

    #[test]
    fn not_a_drm_client_or_malformed() {
        assert!(parse("pos:\t0\nflags:\t02\n").is_none());
        assert!(parse("drm-client-id:\tabc\n").is_none());
        let c =
            parse("drm-client-id: 1\ndrm-memory-vram: lots KiB\ndrm-engine-gfx: x ns\n").unwrap();
        assert!(c.memory.is_empty() && c.engines_ns.is_empty());
    }

    #[test]
    fn clients_are_deduplicated_per_process() {
        // 4242 holds the same client on fds 5 and 6, and a second client on fd 7.
        let clients = process_clients(&fixtures(), 4242);
        assert_eq!(clients.len(), 2);
        let p = &read_processes(&fixtures(), &fixtures().join("sys"), &[4242, 4243])[..];
        assert_eq!(p.len(), 1, "4243 has no GPU use");
        assert_eq!(p[0].gtt_bytes, (41_943_040 + 1024) * 1024);
        assert_eq!(p[0].kfd_vram_bytes, 268_435_456);
    }

    #[test]
    fn busy_survives_resets() {
        assert_eq!(busy_percent(100, 50, 1000), None);
        assert_eq!(busy_percent(0, 500, 1000), Some(50.0));
        assert_eq!(busy_percent(0, 500, 0), None);
    }
}
