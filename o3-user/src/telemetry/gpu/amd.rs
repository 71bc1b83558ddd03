//! amdgpu devices: discovery under `<sysfs>/class/drm`, and the sysfs reader (memory, busy %,
//! hwmon temperatures and power, `gpu_metrics`). Files are opened once and re-read with pread;
//! a device in runtime suspend is not woken (only its memory counters are read).

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::gpu_metrics;
use super::GpuReading;
use crate::telemetry::reread::RereadFile;

/// PCI device ids of AMD APUs (integrated graphics sharing system RAM). Newest first.
const APU_PCI_IDS: &[(u16, &str)] = &[
    (0x1586, "Strix Halo"),
    (0x150e, "Strix Point"),
    (0x1114, "Krackan Point"),
    (0x13c0, "Granite Ridge"),
    (0x15bf, "Phoenix"),
    (0x15c8, "Phoenix 2"),
    (0x164e, "Raphael"),
    (0x1506, "Mendocino"),
    (0x1681, "Rembrandt"),
    (0x163f, "Van Gogh"),
    (0x164c, "Lucienne"),
    (0x15e7, "Barcelo"),
    (0x1638, "Cezanne"),
    (0x1636, "Renoir"),
    (0x15d8, "Picasso"),
    (0x15dd, "Raven"),
];

/// An amdgpu device found in sysfs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmdDevice {
    /// `card1` → 1.
    pub index: u32,
    pub card: String,
    #[serde(skip)]
    pub device_dir: PathBuf,
    /// `1002:1586`.
    pub pci_id: String,
    pub pci_slot: Option<String>,
    /// `<dev-root>/dri/renderD128`.
    pub render_node: Option<PathBuf>,
    /// Shares system RAM (model memory lives in GTT there).
    pub apu: bool,
    /// Why `apu` is what it is.
    pub apu_basis: String,
    pub name: String,
}

fn uevent(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_string())
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Classifies a device as APU: by PCI id when known, else by a small VRAM carve-out next to a
/// larger GTT (no discrete card of the last decade has under 2 GiB of VRAM).
fn classify(
    pci_id: &str,
    vram_total: Option<u64>,
    gtt_total: Option<u64>,
) -> (bool, String, String) {
    let dev = pci_id
        .split(':')
        .nth(1)
        .and_then(|d| u16::from_str_radix(d, 16).ok());
    if let Some((_, name)) = APU_PCI_IDS.iter().find(|(id, _)| Some(*id) == dev) {
        return (
            true,
            format!("PCI id {pci_id} is a {name} APU"),
            format!("AMD {name}"),
        );
    }
    match (vram_total, gtt_total) {
        (Some(v), Some(g)) if v <= 2 << 30 && g > v => (
            true,
            format!(
                "VRAM of {} MiB is a carve-out next to a larger GTT",
                v >> 20
            ),
            format!("AMD GPU {pci_id}"),
        ),
        _ => (
            false,
            "dedicated VRAM".to_string(),
            format!("AMD GPU {pci_id}"),
        ),
    }
}

/// Every amdgpu device under `<sysfs_root>/class/drm/card*/device`, sorted by card index.
pub fn discover(sysfs_root: &Path, dev_root: &Path) -> Vec<AmdDevice> {
    let Ok(dir) = std::fs::read_dir(sysfs_root.join("class/drm")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let card = entry.file_name().to_string_lossy().into_owned();
        let Some(index) = card
            .strip_prefix("card")
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue; // renderD*, card0-DP-1 connectors, version
        };
        let device_dir = entry.path().join("device");
        let ev = std::fs::read_to_string(device_dir.join("uevent")).unwrap_or_default();
        let driver = uevent(&ev, "DRIVER").or_else(|| {
            std::fs::read_link(device_dir.join("driver"))
                .ok()
                .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
        });
        if driver.as_deref() != Some("amdgpu") {
            continue;
        }
        let pci_id = uevent(&ev, "PCI_ID").unwrap_or_else(|| "1002:????".into());
        let render_node = std::fs::read_dir(device_dir.join("drm"))
            .ok()
            .and_then(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .find(|n| n.starts_with("renderD"))
                    .map(|n| dev_root.join("dri").join(n))
            });
        let (apu, apu_basis, name) = classify(
            &pci_id,
            read_u64(&device_dir.join("mem_info_vram_total")),
            read_u64(&device_dir.join("mem_info_gtt_total")),
        );
        out.push(AmdDevice {
            index,
            card,
            device_dir,
            pci_id: pci_id.to_ascii_lowercase(),
            pci_slot: uevent(&ev, "PCI_SLOT_NAME"),
            render_node,
            apu,
            apu_basis,
            name,
        });
    }
    out.sort_by_key(|d| d.index);
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TempKind {
    Edge,
    Junction,
    Mem,
}

struct Temp {
    kind: TempKind,
    input: RereadFile,
    /// `_crit`, °C (read once; it does not change).
    crit_c: Option<f64>,
}

/// Critical temperature limits a device reports, °C.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TempLimits {
    pub edge_crit_c: Option<f64>,
    pub junction_crit_c: Option<f64>,
    pub mem_crit_c: Option<f64>,
}

/// The sysfs reader of one device.
pub struct AmdSysfs {
    vram_total: Option<RereadFile>,
    vram_used: Option<RereadFile>,
    vis_total: Option<RereadFile>,
    vis_used: Option<RereadFile>,
    gtt_total: Option<RereadFile>,
    gtt_used: Option<RereadFile>,
    busy: Option<RereadFile>,
    mem_busy: Option<RereadFile>,
    runtime_status: Option<RereadFile>,
    temps: Vec<Temp>,
    /// (file, is average)
    power: Option<RereadFile>,
    power_is_average: bool,
    gpu_metrics: Option<std::fs::File>,
    pub limits: TempLimits,
}

fn open(dir: &Path, name: &str) -> Option<RereadFile> {
    RereadFile::open(&dir.join(name)).ok()
}

fn hwmon_dir(device_dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(device_dir.join("hwmon"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("name").exists())
}

impl AmdSysfs {
    /// Opens the files this device has; absent files are simply not read.
    pub fn open(dev: &AmdDevice) -> AmdSysfs {
        let d = &dev.device_dir;
        let mut temps = Vec::new();
        let mut power = None;
        let mut power_is_average = false;
        let mut limits = TempLimits::default();
        if let Some(h) = hwmon_dir(d) {
            for n in 1..=3 {
                let Some(input) = open(&h, &format!("temp{n}_input")) else {
                    continue;
                };
                let label =
                    std::fs::read_to_string(h.join(format!("temp{n}_label"))).unwrap_or_default();
                // amdgpu labels them edge/junction/mem; without labels the order is the same.
                let kind = match (label.trim(), n) {
                    ("edge", _) | ("", 1) => TempKind::Edge,
                    ("junction", _) | ("", 2) => TempKind::Junction,
                    ("mem", _) | ("", 3) => TempKind::Mem,
                    _ => continue,
                };
                let crit_c = read_u64(&h.join(format!("temp{n}_crit"))).map(|v| v as f64 / 1000.0);
                match kind {
                    TempKind::Edge => limits.edge_crit_c = crit_c,
                    TempKind::Junction => limits.junction_crit_c = crit_c,
                    TempKind::Mem => limits.mem_crit_c = crit_c,
                }
                temps.push(Temp {
                    kind,
                    input,
                    crit_c,
                });
            }
            if let Some(f) = open(&h, "power1_average") {
                power = Some(f);
                power_is_average = true;
            } else {
                power = open(&h, "power1_input");
            }
        }
        AmdSysfs {
            vram_total: open(d, "mem_info_vram_total"),
            vram_used: open(d, "mem_info_vram_used"),
            vis_total: open(d, "mem_info_vis_vram_total"),
            vis_used: open(d, "mem_info_vis_vram_used"),
            gtt_total: open(d, "mem_info_gtt_total"),
            gtt_used: open(d, "mem_info_gtt_used"),
            busy: open(d, "gpu_busy_percent"),
            mem_busy: open(d, "mem_busy_percent"),
            runtime_status: open(d, "power/runtime_status"),
            temps,
            power,
            power_is_average,
            gpu_metrics: std::fs::File::open(d.join("gpu_metrics")).ok(),
            limits,
        }
    }

    /// Whether power1 is an average (else instantaneous input power).
    pub fn power_is_average(&self) -> bool {
        self.power_is_average
    }

    /// True when the device is runtime-suspended: its sensors must not be read.
    pub fn asleep(&mut self) -> bool {
        match self
            .runtime_status
            .as_mut()
            .map(|f| f.read().map(|s| s.trim() == "active"))
        {
            Some(Ok(active)) => !active,
            // No runtime PM file (runtime PM off): the device is always awake.
            _ => false,
        }
    }

    /// Memory counters: cheap, exact at read time, safe while the device sleeps.
    pub fn read_memory(&mut self, r: &mut GpuReading) {
        let get = |f: &mut Option<RereadFile>| f.as_mut().and_then(RereadFile::read_u64);
        r.vram_total_bytes = get(&mut self.vram_total);
        r.vram_used_bytes = get(&mut self.vram_used);
        r.vis_vram_total_bytes = get(&mut self.vis_total);
        r.vis_vram_used_bytes = get(&mut self.vis_used);
        r.gtt_total_bytes = get(&mut self.gtt_total);
        r.gtt_used_bytes = get(&mut self.gtt_used);
    }

    /// Temperatures (hwmon `temp*_input`, one small file each): read at every tick, so the
    /// watchdog and the trace see them at the sampling interval. Skipped while the device
    /// sleeps.
    pub fn read_temps(&mut self, r: &mut GpuReading) {
        for t in &mut self.temps {
            let v = t.input.read_u64().map(|m| m as f64 / 1000.0);
            match t.kind {
                TempKind::Edge => r.temp_edge_c = v,
                TempKind::Junction => r.temp_junction_c = v,
                TempKind::Mem => r.temp_mem_c = v,
            }
        }
    }

    /// Busy %, temperatures, power and the gpu_metrics table. Skipped by the caller while the
    /// device sleeps.
    pub fn read_sensors(&mut self, r: &mut GpuReading) {
        let pct = |f: &mut Option<RereadFile>| {
            f.as_mut()
                .and_then(RereadFile::read_u64)
                .filter(|v| *v <= 100)
                .map(|v| v as f64)
        };
        r.gpu_busy_percent = pct(&mut self.busy);
        r.mem_busy_percent = pct(&mut self.mem_busy);
        self.read_temps(r);
        r.power_w = self
            .power
            .as_mut()
            .and_then(RereadFile::read_u64)
            .map(|uw| uw as f64 / 1e6);
        let table = self
            .gpu_metrics
            .as_ref()
            .and_then(|f| gpu_metrics::read_once(f).ok());
        if let Some(Ok(m)) = table.map(|b| gpu_metrics::decode(&b)) {
            r.fill_from(&m.to_reading());
        }
    }

    /// Critical limits of the temperatures this device has.
    pub fn crit_limits(&self) -> Vec<(&'static str, f64)> {
        self.temps
            .iter()
            .filter_map(|t| {
                let name = match t.kind {
                    TempKind::Edge => "edge",
                    TempKind::Junction => "junction",
                    TempKind::Mem => "mem",
                };
                t.crit_c.map(|c| (name, c))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(name)
    }

    #[test]
    fn discovers_strix_halo_as_apu() {
        let devs = discover(&fixture("strix-halo/sys"), Path::new("/dev"));
        assert_eq!(devs.len(), 1);
        let d = &devs[0];
        assert_eq!((d.index, d.card.as_str()), (1, "card1"));
        assert_eq!(d.pci_id, "1002:1586");
        assert_eq!(d.pci_slot.as_deref(), Some("0000:c3:00.0"));
        assert_eq!(
            d.render_node.as_deref(),
            Some(Path::new("/dev/dri/renderD128"))
        );
        assert!(d.apu, "{}", d.apu_basis);
        assert!(d.name.contains("Strix Halo"));
    }

    #[test]
    fn discovers_discrete_rdna3_and_no_gpu() {
        let devs = discover(&fixture("rdna3/sys"), Path::new("/dev"));
        assert_eq!(devs.len(), 1);
        assert!(!devs[0].apu);
        assert!(discover(&fixture("no-gpu/sys"), Path::new("/dev")).is_empty());
        assert!(discover(Path::new("/nonexistent"), Path::new("/dev")).is_empty());
    }

    #[test]
    fn classifies_unknown_apus_by_carve_out() {
        let (apu, basis, _) = classify("1002:ffff", Some(512 << 20), Some(64 << 30));
        assert!(apu && basis.contains("carve-out"));
        let (apu, _, _) = classify("1002:ffff", Some(16 << 30), Some(8 << 30));
        assert!(!apu);
    }

    #[test]
    fn reads_strix_halo_memory_and_sensors() {
        let d = &discover(&fixture("strix-halo/sys"), Path::new("/dev"))[0];
        let mut s = AmdSysfs::open(d);
        assert!(!s.asleep());
        let mut r = GpuReading::default();
        s.read_memory(&mut r);
        s.read_sensors(&mut r);
        assert_eq!(r.vram_total_bytes, Some(512 << 20));
        assert_eq!(r.gtt_total_bytes, Some(120 << 30));
        assert_eq!(r.gtt_used_bytes, Some(40 << 30));
        assert_eq!(r.gpu_busy_percent, Some(41.0));
        assert_eq!(r.mem_busy_percent, None, "APUs have no mem_busy_percent");
        assert_eq!(r.temp_edge_c, Some(48.0));
        assert_eq!((r.temp_junction_c, r.temp_mem_c), (None, None));
        assert_eq!(r.power_w, Some(65.0));
        assert!(!s.power_is_average());
    }

    #[test]
    fn reads_rdna3_temps_limits_and_average_power() {
        let d = &discover(&fixture("rdna3/sys"), Path::new("/dev"))[0];
        let mut s = AmdSysfs::open(d);
        let mut r = GpuReading::default();
        s.read_memory(&mut r);
        s.read_sensors(&mut r);
        assert_eq!(r.vram_total_bytes, Some(25_753_026_560));
        assert_eq!(r.vis_vram_total_bytes, Some(256 << 20));
        assert_eq!(r.mem_busy_percent, Some(12.0));
        assert_eq!(
            (r.temp_edge_c, r.temp_junction_c, r.temp_mem_c),
            (Some(45.0), Some(52.0), Some(60.0))
        );
        assert_eq!(r.power_w, Some(212.0));
        assert!(s.power_is_average());
        assert_eq!(s.limits.junction_crit_c, Some(110.0));
        assert_eq!(s.crit_limits().len(), 3);
    }

    #[test]
    fn suspended_device_reports_asleep() {
        let d = &discover(&fixture("rdna3-suspended/sys"), Path::new("/dev"))[0];
        let mut s = AmdSysfs::open(d);
        assert!(s.asleep());
        let mut r = GpuReading::default();
        s.read_memory(&mut r);
        assert_eq!(r.vram_used_bytes, Some(0));
    }

    #[test]
    fn garbage_and_vanished_files_read_as_missing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sys");
        let dev = root.join("class/drm/card0/device");
        std::fs::create_dir_all(dev.join("hwmon/hwmon0")).unwrap();
        std::fs::write(dev.join("uevent"), "DRIVER=amdgpu\nPCI_ID=1002:744C\n").unwrap();
        std::fs::write(dev.join("mem_info_vram_total"), "").unwrap();
        std::fs::write(dev.join("mem_info_vram_used"), "N/A\n").unwrap();
        std::fs::write(dev.join("mem_info_gtt_used"), "-4096\n").unwrap();
        std::fs::write(dev.join("gpu_busy_percent"), "250\n").unwrap();
        std::fs::write(dev.join("gpu_metrics"), [1u8, 2, 3]).unwrap();
        std::fs::write(dev.join("hwmon/hwmon0/name"), "amdgpu\n").unwrap();
        std::fs::write(dev.join("hwmon/hwmon0/temp1_input"), "garbage").unwrap();
        let d = &discover(&root, Path::new("/dev"))[0];
        let mut s = AmdSysfs::open(d);
        let mut r = GpuReading::default();
        s.read_memory(&mut r);
        s.read_sensors(&mut r);
        assert_eq!(r, GpuReading::default(), "nothing valid, nothing invented");
        // The device disappears mid-run: reads fail, nothing panics.
        std::fs::remove_dir_all(&root).unwrap();
        s.read_memory(&mut r);
        s.read_sensors(&mut r);
    }
}
