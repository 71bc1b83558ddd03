//! Host and model fingerprints: what identifies a machine (so results are reused only where
//! they were measured) and what, when it changes, forces learned results to be revalidated.
//!
//! A host's **identity** ([`Host::id`]) is its CPU model, logical core count, RAM rounded to
//! GiB and its GPUs (name, PCI id, APU or not). Everything else in [`Host`] (kernel, drivers,
//! firmware, GTT/VRAM sizes, ROCm/CUDA versions) is **state**: the same machine after an
//! update, whose learned limits may no longer hold ([`Host::changes_from`] lists what moved).
//!
//! Every file is read under a root (`--procfs-root`, `--sysfs-root`, `--dev-root`, and `/` for
//! `/opt/rocm` and the Vulkan ICDs) so fixture trees stand in for a machine; NVIDIA devices come
//! from NVML through one function that tests replace.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::telemetry::gpu::amd;

/// What a machine is and what state it was in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub cpu_model: String,
    /// Logical CPUs (`processor` entries of /proc/cpuinfo).
    pub cpu_cores: u32,
    pub ram_bytes: u64,
    pub gpus: Vec<Gpu>,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: String,
    /// `/opt/rocm/.info/version`.
    pub rocm_version: Option<String>,
    /// Vulkan ICDs installed (`libvulkan_radeon.so 1.4.305`, ...), `;`-separated.
    pub vulkan_driver: Option<String>,
    /// CUDA version the NVIDIA driver supports (`12.4`).
    pub cuda_driver: Option<String>,
}

/// One GPU of a [`Host`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpu {
    pub name: String,
    /// `1002:1586`.
    pub pci_id: Option<String>,
    pub apu: bool,
    pub vram_bytes: Option<u64>,
    /// GTT (system memory the GPU may map): where an APU's model lives.
    pub gtt_bytes: Option<u64>,
    /// `/sys/module/amdgpu/version` (DKMS builds only; in-tree drivers go with the kernel) or
    /// the NVIDIA driver version.
    pub driver_version: Option<String>,
    /// amdgpu firmware versions from sysfs `fw_version/*`: `mec=0x000000a3;sos=0x...`, sorted.
    pub firmware: Option<String>,
}

const GIB: u64 = 1 << 30;

/// FNV-1a, 64 bit: stable across Rust versions and platforms (unlike `DefaultHasher`).
#[derive(Clone, Copy)]
pub(crate) struct Fnv(u64);

impl Fnv {
    pub(crate) fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    pub(crate) fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// FNV-1a 64 of a string, as 16 hex digits.
pub fn fnv_hex(s: &str) -> String {
    let mut h = Fnv::new();
    h.write(s.as_bytes());
    h.hex()
}

impl Host {
    /// Stable id of the machine's identity parts (see the module docs): 16 hex digits.
    pub fn id(&self) -> String {
        let mut key = format!(
            "cpu={}|cores={}|ram_gib={}",
            self.cpu_model.trim(),
            self.cpu_cores,
            (self.ram_bytes + GIB / 2) / GIB
        );
        for g in &self.gpus {
            key += &format!(
                "|gpu={},{},{}",
                g.name,
                g.pci_id.as_deref().unwrap_or("-"),
                g.apu
            );
        }
        fnv_hex(&key)
    }

    /// The placeholder host of imported legacy results: the legacy tool recorded nothing about
    /// the machine, so its results are never matched to a real host.
    pub fn legacy_placeholder() -> Host {
        Host {
            cpu_model: "legacy import (unknown host)".into(),
            cpu_cores: 0,
            ram_bytes: 0,
            gpus: Vec::new(),
            kernel: String::new(),
            rocm_version: None,
            vulkan_driver: None,
            cuda_driver: None,
        }
    }

    pub fn is_legacy_placeholder(&self) -> bool {
        *self == Host::legacy_placeholder()
    }

    /// One line for tables: `AMD Ryzen AI MAX+ 395 (32 CPUs), 124 GiB RAM, AMD Strix Halo
    /// (APU, GTT 120 GiB), kernel 6.18.1`.
    pub fn summary(&self) -> String {
        if self.is_legacy_placeholder() {
            return "legacy import (unknown host)".into();
        }
        let mut s = format!(
            "{} ({} CPUs), {} GiB RAM",
            self.cpu_model,
            self.cpu_cores,
            (self.ram_bytes + GIB / 2) / GIB
        );
        for g in &self.gpus {
            let mem = if g.apu {
                g.gtt_bytes.map(|b| format!("APU, GTT {}", gib(b)))
            } else {
                g.vram_bytes.map(|b| format!("VRAM {}", gib(b)))
            };
            match mem {
                Some(m) => s += &format!(", {} ({m})", g.name),
                None => s += &format!(", {}", g.name),
            }
        }
        if self.gpus.is_empty() {
            s += ", no GPU";
        }
        if !self.kernel.is_empty() {
            s += &format!(", kernel {}", self.kernel);
        }
        s
    }

    /// What changed since `then` that may invalidate learned limits, one human-readable item
    /// each (`kernel 6.18.1 -> 6.18.2`). Empty when nothing did. When the GPUs themselves
    /// differ that is said alone, without comparing their states.
    pub fn changes_from(&self, then: &Host) -> Vec<String> {
        let mut out = Vec::new();
        changed(&mut out, "kernel", &then.kernel, &self.kernel);
        changed(
            &mut out,
            "ROCm",
            &opt(&then.rocm_version),
            &opt(&self.rocm_version),
        );
        changed(
            &mut out,
            "CUDA driver",
            &opt(&then.cuda_driver),
            &opt(&self.cuda_driver),
        );
        changed(
            &mut out,
            "Vulkan driver",
            &opt(&then.vulkan_driver),
            &opt(&self.vulkan_driver),
        );
        if let Some(c) = gpu_set_change(&then.gpus, &self.gpus) {
            out.push(c);
            return out;
        }
        for (i, (new, old)) in self.gpus.iter().zip(&then.gpus).enumerate() {
            out.extend(gpu_changes(i, old, new));
        }
        out
    }
}

/// `what old -> new` into `out` where they differ.
fn changed(out: &mut Vec<String>, what: &str, old: &str, new: &str) {
    if old != new {
        out.push(format!("{what} {old} -> {new}"));
    }
}

/// A version, or `none`.
fn opt(o: &Option<String>) -> String {
    o.clone().unwrap_or_else(|| "none".into())
}

/// `GPUs a, b -> c` when the GPUs (names and PCI ids, in order) are not the same ones.
fn gpu_set_change(then: &[Gpu], now: &[Gpu]) -> Option<String> {
    let ident = |g: &Gpu| format!("{} {}", g.name, g.pci_id.as_deref().unwrap_or(""));
    if now.iter().map(ident).eq(then.iter().map(ident)) {
        return None;
    }
    let names = |gs: &[Gpu]| {
        if gs.is_empty() {
            "none".to_string()
        } else {
            gs.iter()
                .map(|g| g.name.clone())
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    Some(format!("GPUs {} -> {}", names(then), names(now)))
}

/// What changed of the same GPU, number `i`: its memory sizes, driver and firmware.
fn gpu_changes(i: usize, old: &Gpu, new: &Gpu) -> Vec<String> {
    let mut out = Vec::new();
    let p = format!("GPU {i} ({})", new.name);
    let size = |b: Option<u64>| b.map(gib).unwrap_or_else(|| "unknown".into());
    if new.vram_bytes != old.vram_bytes {
        out.push(format!(
            "{p} VRAM {} -> {}",
            size(old.vram_bytes),
            size(new.vram_bytes)
        ));
    }
    if new.gtt_bytes != old.gtt_bytes {
        out.push(format!(
            "{p} GTT {} -> {}",
            size(old.gtt_bytes),
            size(new.gtt_bytes)
        ));
    }
    if new.driver_version != old.driver_version {
        out.push(format!(
            "{p} driver {} -> {}",
            opt(&old.driver_version),
            opt(&new.driver_version)
        ));
    }
    if new.firmware != old.firmware {
        out.extend(firmware_changes(&p, &old.firmware, &new.firmware));
    }
    out
}

/// Each firmware whose version changed (or that came or went), by name: `{gpu} firmware mec
/// 0xa3 -> 0xa4`.
fn firmware_changes(gpu: &str, old: &Option<String>, new: &Option<String>) -> Vec<String> {
    let (a, b) = (firmware_versions(old), firmware_versions(new));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            format!(
                "{gpu} firmware {k} {} -> {}",
                a.get(k).map(String::as_str).unwrap_or("none"),
                b.get(k).map(String::as_str).unwrap_or("none")
            )
        })
        .collect()
}

/// `mec=0xa3;sos=0x1` as name → version.
fn firmware_versions(f: &Option<String>) -> BTreeMap<String, String> {
    f.as_deref()
        .unwrap_or("")
        .split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Sizes in changes and summaries: whole GiB where exact, else one decimal.
fn gib(b: u64) -> String {
    if b % GIB == 0 {
        format!("{} GiB", b / GIB)
    } else {
        format!("{:.1} GiB", b as f64 / GIB as f64)
    }
}

fn read_trim(path: &Path) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

fn read_u64(path: &Path) -> Option<u64> {
    read_trim(path)?.parse().ok()
}

/// CPU model name and logical CPU count from `/proc/cpuinfo` text. x86 names the model in
/// `model name`; some ARM kernels only in `Hardware` or `Processor`.
pub fn parse_cpuinfo(text: &str) -> (String, u32) {
    let mut model = None;
    let mut fallback = None;
    let mut cores = 0u32;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        match k {
            "processor" if v.parse::<u32>().is_ok() => cores += 1,
            "model name" if model.is_none() && !v.is_empty() => model = Some(v.to_string()),
            "Hardware" | "Processor" | "cpu model" if fallback.is_none() && !v.is_empty() => {
                fallback = Some(v.to_string());
            }
            _ => {}
        }
    }
    (
        model
            .or(fallback)
            .unwrap_or_else(|| "unknown CPU".to_string()),
        cores,
    )
}

/// amdgpu firmware versions under `<device>/fw_version/*_fw_version`, `name=value;...`.
fn amd_firmware(device_dir: &Path) -> Option<String> {
    let dir = std::fs::read_dir(device_dir.join("fw_version")).ok()?;
    let mut items: Vec<(String, String)> = dir
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let v = read_trim(&e.path())?;
            let k = name
                .strip_suffix("_fw_version")
                .unwrap_or(&name)
                .to_string();
            Some((k, v))
        })
        .collect();
    items.sort();
    (!items.is_empty()).then(|| {
        items
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    })
}

/// Installed Vulkan ICDs under `<root>/usr/share/vulkan/icd.d` and `<root>/etc/vulkan/icd.d`:
/// the driver library and the API version it declares.
fn vulkan_icds(root: &Path) -> Option<String> {
    let mut out = Vec::new();
    for dir in ["usr/share/vulkan/icd.d", "etc/vulkan/icd.d"] {
        let Ok(rd) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            let icd = &v["ICD"];
            let lib = icd["library_path"].as_str().unwrap_or("?");
            let lib = lib.rsplit('/').next().unwrap_or(lib);
            let api = icd["api_version"].as_str().unwrap_or("?");
            out.push(format!("{lib} {api}"));
        }
    }
    out.sort();
    out.dedup();
    (!out.is_empty()).then(|| out.join(";"))
}

/// NVIDIA GPUs through NVML, and the CUDA version the driver supports. Nothing when there is no
/// NVIDIA driver.
fn nvidia_gpus() -> (Vec<Gpu>, Option<String>) {
    let Ok(nvml) = nvml_wrapper::Nvml::init() else {
        return (Vec::new(), None);
    };
    let driver = nvml.sys_driver_version().ok();
    let cuda = nvml.sys_cuda_driver_version().ok().map(|v| {
        format!(
            "{}.{}",
            nvml_wrapper::cuda_driver_version_major(v),
            nvml_wrapper::cuda_driver_version_minor(v)
        )
    });
    let count = nvml.device_count().unwrap_or(0);
    let gpus = (0..count)
        .filter_map(|i| {
            let d = nvml.device_by_index(i).ok()?;
            let pci_id = d.pci_info().ok().map(|p| {
                format!(
                    "{:04x}:{:04x}",
                    p.pci_device_id & 0xffff,
                    p.pci_device_id >> 16
                )
            });
            Some(Gpu {
                name: d.name().unwrap_or_else(|_| "NVIDIA GPU".into()),
                pci_id,
                apu: false,
                vram_bytes: d.memory_info().ok().map(|m| m.total),
                gtt_bytes: None,
                driver_version: driver.clone(),
                firmware: d.vbios_version().ok().map(|v| format!("vbios={v}")),
            })
        })
        .collect();
    (gpus, cuda)
}

/// This machine's fingerprint, read under the given roots (NVIDIA devices from NVML).
pub fn host(procfs_root: &Path, sysfs_root: &Path, dev_root: &Path) -> Host {
    host_with(
        procfs_root,
        sysfs_root,
        dev_root,
        Path::new("/"),
        nvidia_gpus,
    )
}

/// [`host`] with the file-system root for `/opt/rocm` and the Vulkan ICDs, and the NVIDIA
/// reader, given: the seam the tests use.
pub fn host_with(
    procfs_root: &Path,
    sysfs_root: &Path,
    dev_root: &Path,
    fs_root: &Path,
    nvidia: impl FnOnce() -> (Vec<Gpu>, Option<String>),
) -> Host {
    let (cpu_model, cpu_cores) = std::fs::read_to_string(procfs_root.join("cpuinfo"))
        .map(|t| parse_cpuinfo(&t))
        .unwrap_or_else(|_| ("unknown CPU".into(), 0));
    let ram_bytes = std::fs::read_to_string(procfs_root.join("meminfo"))
        .ok()
        .and_then(|t| crate::telemetry::procfs::parse_meminfo(&t).ok())
        .map(|m| m.total)
        .unwrap_or(0);
    let kernel = read_trim(&procfs_root.join("sys/kernel/osrelease")).unwrap_or_default();
    let amd_driver = read_trim(&sysfs_root.join("module/amdgpu/version"));
    let mut gpus: Vec<Gpu> = amd::discover(sysfs_root, dev_root)
        .into_iter()
        .map(|d| Gpu {
            name: d.name.clone(),
            pci_id: Some(d.pci_id.clone()),
            apu: d.apu,
            vram_bytes: read_u64(&d.device_dir.join("mem_info_vram_total")),
            gtt_bytes: read_u64(&d.device_dir.join("mem_info_gtt_total")),
            driver_version: amd_driver.clone(),
            firmware: amd_firmware(&d.device_dir),
        })
        .collect();
    let (nv, cuda_driver) = nvidia();
    gpus.extend(nv);
    Host {
        cpu_model,
        cpu_cores,
        ram_bytes,
        gpus,
        kernel,
        rocm_version: read_trim(&fs_root.join("opt/rocm/.info/version")),
        vulkan_driver: vulkan_icds(fs_root),
        cuda_driver,
    }
}

/// Bytes hashed from the start of a model file.
pub const DIGEST_HEAD_BYTES: u64 = 16 << 20;
/// Bytes hashed from the end of a model file.
pub const DIGEST_TAIL_BYTES: u64 = 1 << 20;

/// A quick digest of a model file: FNV-1a 64 of its size, its first 16 MiB and its last 1 MiB
/// (`o3q1:<16 hex digits>`). Reads at most 17 MiB, so a 70 GB GGUF digests in milliseconds; it
/// tells apart different files (the GGUF header with every tensor's shape and offset is in the
/// head), not a deliberate forgery. Ollama models use Ollama's own `sha256:` digest instead.
pub fn model_digest(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let size = f.metadata()?.len();
    let mut h = Fnv::new();
    h.write(&size.to_le_bytes());
    let mut buf = vec![0u8; 1 << 20];
    let head = size.min(DIGEST_HEAD_BYTES);
    let mut left = head;
    while left > 0 {
        let n = (left as usize).min(buf.len());
        f.read_exact(&mut buf[..n])?;
        h.write(&buf[..n]);
        left -= n as u64;
    }
    // The tail, where it does not overlap the head.
    let tail_start = size.saturating_sub(DIGEST_TAIL_BYTES).max(head);
    if tail_start < size {
        f.seek(SeekFrom::Start(tail_start))?;
        let mut left = size - tail_start;
        while left > 0 {
            let n = (left as usize).min(buf.len());
            f.read_exact(&mut buf[..n])?;
            h.write(&buf[..n]);
            left -= n as u64;
        }
    }
    Ok(format!("o3q1:{}", h.hex()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(tree: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(tree)
    }

    fn no_nvidia() -> (Vec<Gpu>, Option<String>) {
        (Vec::new(), None)
    }

    const CPUINFO: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD RYZEN AI MAX+ 395 w/ Radeon 8060S\n\nprocessor\t: 1\nmodel name\t: AMD RYZEN AI MAX+ 395 w/ Radeon 8060S\n\n";

    /// A procfs with cpuinfo and osrelease next to a fixture tree's meminfo.
    fn procfs(meminfo_from: &str, kernel: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cpuinfo"), CPUINFO).unwrap();
        std::fs::create_dir_all(d.path().join("sys/kernel")).unwrap();
        std::fs::write(d.path().join("sys/kernel/osrelease"), format!("{kernel}\n")).unwrap();
        std::fs::copy(
            fixture(meminfo_from).join("meminfo"),
            d.path().join("meminfo"),
        )
        .unwrap();
        d
    }

    #[test]
    fn strix_halo_host() {
        let proc = procfs("strix-halo/proc", "6.18.1-arch1-1");
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("opt/rocm/.info")).unwrap();
        std::fs::write(root.path().join("opt/rocm/.info/version"), "6.4.1-120\n").unwrap();
        std::fs::create_dir_all(root.path().join("usr/share/vulkan/icd.d")).unwrap();
        std::fs::write(
            root.path().join("usr/share/vulkan/icd.d/radeon_icd.x86_64.json"),
            r#"{"ICD":{"api_version":"1.4.305","library_path":"/usr/lib/libvulkan_radeon.so"},"file_format_version":"1.0.1"}"#,
        )
        .unwrap();
        let sys = fixture("strix-halo/sys");
        let h = host_with(
            proc.path(),
            &sys,
            Path::new("/nonexistent"),
            root.path(),
            no_nvidia,
        );
        assert_eq!(h.cpu_model, "AMD RYZEN AI MAX+ 395 w/ Radeon 8060S");
        assert_eq!(h.cpu_cores, 2);
        assert_eq!(h.ram_bytes, 130_023_424 * 1024);
        assert_eq!(h.kernel, "6.18.1-arch1-1");
        assert_eq!(h.rocm_version.as_deref(), Some("6.4.1-120"));
        assert_eq!(
            h.vulkan_driver.as_deref(),
            Some("libvulkan_radeon.so 1.4.305")
        );
        assert_eq!(h.gpus.len(), 1);
        let g = &h.gpus[0];
        assert!(g.apu);
        assert_eq!(g.name, "AMD Strix Halo");
        assert_eq!(g.pci_id.as_deref(), Some("1002:1586"));
        assert_eq!(g.vram_bytes, Some(512 << 20));
        assert_eq!(g.gtt_bytes, Some(120 << 30));
        assert!(
            h.summary().contains("AMD Strix Halo (APU, GTT 120 GiB)"),
            "{}",
            h.summary()
        );
        assert_eq!(h.id().len(), 16);
    }

    #[test]
    fn discrete_and_no_gpu_hosts_differ_and_nvidia_is_added() {
        let proc = procfs("procfs", "6.8.0");
        let none = Path::new("/nonexistent");
        let rdna3 = host_with(proc.path(), &fixture("rdna3/sys"), none, none, no_nvidia);
        assert_eq!(rdna3.gpus.len(), 1);
        assert!(!rdna3.gpus[0].apu);
        assert_eq!(rdna3.gpus[0].vram_bytes, Some(25_753_026_560));
        assert_eq!(rdna3.rocm_version, None);
        let bare = host_with(proc.path(), &fixture("no-gpu/sys"), none, none, no_nvidia);
        assert!(bare.gpus.is_empty());
        assert!(bare.summary().contains("no GPU"));
        assert_ne!(rdna3.id(), bare.id());
        let nv = host_with(proc.path(), &fixture("no-gpu/sys"), none, none, || {
            (
                vec![Gpu {
                    name: "NVIDIA GeForce RTX 4090".into(),
                    pci_id: Some("10de:2684".into()),
                    apu: false,
                    vram_bytes: Some(24 << 30),
                    gtt_bytes: None,
                    driver_version: Some("550.54.14".into()),
                    firmware: None,
                }],
                Some("12.4".into()),
            )
        });
        assert_eq!(nv.gpus.len(), 1);
        assert_eq!(nv.cuda_driver.as_deref(), Some("12.4"));
    }

    #[test]
    fn missing_files_give_unknowns_not_panics() {
        let none = Path::new("/nonexistent");
        let h = host_with(none, none, none, none, no_nvidia);
        assert_eq!(h.cpu_model, "unknown CPU");
        assert_eq!((h.cpu_cores, h.ram_bytes), (0, 0));
        assert!(h.kernel.is_empty() && h.gpus.is_empty());
    }

    #[test]
    fn firmware_and_driver_from_sysfs() {
        let sys = tempfile::tempdir().unwrap();
        let dev = sys.path().join("class/drm/card0/device");
        std::fs::create_dir_all(dev.join("fw_version")).unwrap();
        std::fs::write(
            dev.join("uevent"),
            "DRIVER=amdgpu\nPCI_ID=1002:744C\nPCI_SLOT_NAME=0000:03:00.0\n",
        )
        .unwrap();
        std::fs::write(dev.join("mem_info_vram_total"), "25753026560\n").unwrap();
        std::fs::write(dev.join("fw_version/mec_fw_version"), "0x000000a3\n").unwrap();
        std::fs::write(dev.join("fw_version/sos_fw_version"), "0x00270042\n").unwrap();
        std::fs::create_dir_all(sys.path().join("module/amdgpu")).unwrap();
        std::fs::write(sys.path().join("module/amdgpu/version"), "6.10.5\n").unwrap();
        let none = Path::new("/nonexistent");
        let h = host_with(none, sys.path(), none, none, no_nvidia);
        assert_eq!(
            h.gpus[0].firmware.as_deref(),
            Some("mec=0x000000a3;sos=0x00270042")
        );
        assert_eq!(h.gpus[0].driver_version.as_deref(), Some("6.10.5"));
    }

    fn sample() -> Host {
        Host {
            cpu_model: "AMD RYZEN AI MAX+ 395".into(),
            cpu_cores: 32,
            ram_bytes: 124 * GIB + 12345,
            gpus: vec![Gpu {
                name: "AMD Strix Halo".into(),
                pci_id: Some("1002:1586".into()),
                apu: true,
                vram_bytes: Some(512 << 20),
                gtt_bytes: Some(120 * GIB),
                driver_version: None,
                firmware: Some("mec=0x1;sos=0x2".into()),
            }],
            kernel: "6.18.1".into(),
            rocm_version: Some("6.4.1".into()),
            vulkan_driver: None,
            cuda_driver: None,
        }
    }

    #[test]
    fn id_is_stable_and_ignores_state() {
        let a = sample();
        // Pinned: a change here orphans every stored host.
        assert_eq!(a.id(), "a8460dfdff4a35ed");
        let mut b = a.clone();
        b.kernel = "6.18.2".into();
        b.ram_bytes = 124 * GIB - (300 << 20); // the same GiB after rounding
        b.gpus[0].gtt_bytes = Some(96 * GIB);
        b.gpus[0].firmware = Some("mec=0x9".into());
        b.rocm_version = None;
        assert_eq!(a.id(), b.id(), "state is not identity");
        let mut c = a.clone();
        c.cpu_cores = 16;
        assert_ne!(a.id(), c.id());
        let mut d = a.clone();
        d.gpus[0].pci_id = Some("1002:150e".into());
        assert_ne!(a.id(), d.id());
        assert_ne!(a.id(), Host::legacy_placeholder().id());
    }

    #[test]
    fn changes_are_listed_in_words() {
        let then = sample();
        assert!(then.changes_from(&then).is_empty());
        let mut now = then.clone();
        now.kernel = "6.18.2".into();
        now.rocm_version = Some("7.0.0".into());
        now.gpus[0].gtt_bytes = Some(96 * GIB);
        now.gpus[0].firmware = Some("mec=0x3;sos=0x2".into());
        now.gpus[0].driver_version = Some("6.10.5".into());
        let c = now.changes_from(&then);
        assert_eq!(
            c,
            vec![
                "kernel 6.18.1 -> 6.18.2",
                "ROCm 6.4.1 -> 7.0.0",
                "GPU 0 (AMD Strix Halo) GTT 120 GiB -> 96 GiB",
                "GPU 0 (AMD Strix Halo) driver none -> 6.10.5",
                "GPU 0 (AMD Strix Halo) firmware mec 0x1 -> 0x3",
            ]
        );
        let mut swapped = then.clone();
        swapped.gpus.clear();
        assert_eq!(
            swapped.changes_from(&then),
            vec!["GPUs AMD Strix Halo -> none"]
        );
    }

    #[test]
    fn firmware_that_came_or_went_is_named_with_none() {
        let fw = |s: &str| Some(s.to_string());
        assert_eq!(
            firmware_changes("GPU 0 (x)", &fw("mec=0x1;sos=0x2"), &fw("sos=0x2;ta=0x9")),
            vec![
                "GPU 0 (x) firmware mec 0x1 -> none",
                "GPU 0 (x) firmware ta none -> 0x9",
            ]
        );
        assert!(firmware_changes("g", &None, &fw("garbage")).is_empty());
        let g = |name: &str, pci: Option<&str>| Gpu {
            name: name.into(),
            pci_id: pci.map(String::from),
            apu: false,
            vram_bytes: None,
            gtt_bytes: None,
            driver_version: None,
            firmware: None,
        };
        assert_eq!(gpu_set_change(&[g("a", None)], &[g("a", None)]), None);
        assert_eq!(
            gpu_set_change(&[g("a", Some("1:2"))], &[g("a", Some("1:3")), g("b", None)]).as_deref(),
            Some("GPUs a -> a, b")
        );
    }

    #[test]
    fn cpuinfo_arm_fallback() {
        let (m, n) = parse_cpuinfo("processor\t: 0\nprocessor\t: 1\nHardware\t: BCM2835\n");
        assert_eq!((m.as_str(), n), ("BCM2835", 2));
    }

    #[test]
    fn model_digest_reads_head_and_tail_only() {
        let d = tempfile::tempdir().unwrap();
        let small = d.path().join("small.gguf");
        std::fs::write(&small, b"GGUF tiny").unwrap();
        let a = model_digest(&small).unwrap();
        assert!(a.starts_with("o3q1:") && a.len() == 5 + 16, "{a}");
        assert_eq!(a, model_digest(&small).unwrap());
        // 18 MiB: a change in the unhashed middle is not seen, one in the tail is.
        let big = d.path().join("big.gguf");
        let mut data = vec![7u8; 18 << 20];
        std::fs::write(&big, &data).unwrap();
        let base = model_digest(&big).unwrap();
        data[(16 << 20) + 100] = 1;
        std::fs::write(&big, &data).unwrap();
        assert_eq!(model_digest(&big).unwrap(), base);
        let n = data.len();
        data[n - 1] = 1;
        std::fs::write(&big, &data).unwrap();
        assert_ne!(model_digest(&big).unwrap(), base);
        assert!(model_digest(&d.path().join("missing")).is_err());
    }
}
