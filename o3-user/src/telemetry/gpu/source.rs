//! The GPU [`Source`]: every selected device, each read by the best reader that works for it
//! (AMD: DRM info ioctl for memory and sensors, then sysfs, then `gpu_metrics`; NVIDIA: NVML;
//! an SMI tool only when no direct reader works), plus per-process GPU memory of the tracked
//! tree from fdinfo/KFD/NVML.
//!
//! Memory and temperatures are read every tick (sysfs `mem_info_*` or the DRM info ioctl,
//! hwmon `temp*_input`, NVML: one small read each, exact at read time), so the watchdog and the
//! trace follow them at the sampling interval. The other sensors (busy, power, clocks,
//! gpu_metrics) are read at most every `sensor_every` (slower, some wake firmware, and averaged
//! over ~1 ms–1 s by the device anyway); per-process memory (fdinfo scans of every process,
//! NVML process lists) every `process_every`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::amd::{self, AmdDevice, AmdSysfs};
use super::amd_ioctl::{AmdIoctl, RenderNode};
use super::fdinfo::{self, ProcessGpu};
use super::nvidia::Nvidia;
use super::smi::{self, RealRunner, Tool};
use super::GpuReading;
use crate::telemetry::{Sample, Source, TreeEvent};

/// Which GPUs to read (`--gpu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuSelect {
    Auto,
    Amd,
    Nvidia,
    None,
    /// One device by its o3 index (as `o3 doctor` lists them).
    Index(u32),
}

impl std::str::FromStr for GpuSelect {
    type Err = String;
    fn from_str(s: &str) -> Result<GpuSelect, String> {
        match s {
            "auto" => Ok(GpuSelect::Auto),
            "amd" => Ok(GpuSelect::Amd),
            "nvidia" => Ok(GpuSelect::Nvidia),
            "none" => Ok(GpuSelect::None),
            n => n.parse().map(GpuSelect::Index).map_err(|_| {
                format!(
                    "`{s}` is not a GPU selection: use auto, amd, nvidia, none or a device index"
                )
            }),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GpuOptions {
    pub select: GpuSelect,
    pub sysfs_root: PathBuf,
    pub procfs_root: PathBuf,
    pub dev_root: PathBuf,
    pub sensor_every: Duration,
    pub process_every: Duration,
}

/// Identity of a device and which reader serves what, for `doctor`, traces and summaries.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuInfo {
    /// o3's index: AMD devices by card number first, then NVIDIA devices after them.
    pub index: u32,
    pub vendor: &'static str,
    pub name: String,
    pub pci_id: Option<String>,
    pub pci_slot: Option<String>,
    pub apu: bool,
    pub apu_basis: Option<String>,
    /// Reader per metric group: `memory`, `sensors`, `processes`.
    pub memory_reader: String,
    pub sensor_reader: String,
    pub process_reader: String,
    /// Critical temperatures the device reports (°C).
    pub crit_c: Vec<(String, f64)>,
    pub notes: Vec<String>,
}

/// One device in one sample.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GpuSample {
    pub index: u32,
    #[serde(flatten)]
    pub reading: GpuReading,
    /// Memory the GPU can use and how much of it is in use: GTT on an APU (bounded by system
    /// RAM; the VRAM carve-out is reported separately, never added), VRAM on a discrete card.
    pub usable_used_bytes: Option<u64>,
    pub usable_total_bytes: Option<u64>,
    /// Runtime-suspended: sensors were not read so as not to wake it.
    pub asleep: bool,
}

enum Reader {
    Amd {
        sysfs: Box<AmdSysfs>,
        ioctl: Option<AmdIoctl>,
    },
    Nvidia {
        nvml_index: u32,
    },
    Smi {
        tool: Tool,
        smi_index: u32,
    },
}

struct Device {
    info: GpuInfo,
    reader: Reader,
    /// Last sensor values, repeated on ticks between sensor reads.
    sensors: GpuReading,
}

pub struct GpuSource {
    devices: Vec<Device>,
    nvidia: Option<Nvidia>,
    opts: GpuOptions,
    ram_total: Option<u64>,
    last_sensors_ns: Option<u64>,
    last_procs_ns: Option<u64>,
    pids: BTreeSet<u32>,
}

fn ram_total(procfs: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(procfs.join("meminfo")).ok()?;
    crate::telemetry::procfs::parse_meminfo(&text)
        .ok()
        .map(|m| m.total)
}

impl GpuSource {
    /// Finds the selected devices and opens their readers. Never fails: a device nothing can
    /// read is listed with a note, and warnings come back for the caller to print once.
    pub fn open(opts: GpuOptions) -> (GpuSource, Vec<String>) {
        let mut warnings = Vec::new();
        let mut devices = Vec::new();
        let want_amd = matches!(
            opts.select,
            GpuSelect::Auto | GpuSelect::Amd | GpuSelect::Index(_)
        );
        let want_nv = matches!(
            opts.select,
            GpuSelect::Auto | GpuSelect::Nvidia | GpuSelect::Index(_)
        );
        if want_amd {
            for d in amd::discover(&opts.sysfs_root, &opts.dev_root) {
                devices.push(Self::open_amd(d, &mut warnings));
            }
        }
        let mut nvidia = None;
        if want_nv {
            // After the highest AMD index (card numbers need not start at 0 or be contiguous).
            let base = devices.iter().map(|d| d.info.index + 1).max().unwrap_or(0);
            match Nvidia::init() {
                Ok(Some(nv)) => {
                    for d in nv.devices() {
                        devices.push(Device {
                            info: GpuInfo {
                                index: base + d.index,
                                vendor: "nvidia",
                                name: d.name,
                                pci_id: None,
                                pci_slot: d.pci_slot,
                                apu: false,
                                apu_basis: None,
                                memory_reader: "nvml".into(),
                                sensor_reader: "nvml".into(),
                                process_reader: "nvml".into(),
                                crit_c: Vec::new(),
                                notes: Vec::new(),
                            },
                            reader: Reader::Nvidia {
                                nvml_index: d.index,
                            },
                            sensors: GpuReading::default(),
                        });
                    }
                    nvidia = Some(nv);
                }
                Ok(None) => {}
                Err(e) => {
                    // A driver is there but NVML does not work: nvidia-smi as a fallback.
                    if let Ok(gpus) = smi::query(&RealRunner, Tool::NvidiaSmi) {
                        warnings.push(format!(
                            "{e}; using nvidia-smi instead (one process per sample, about 14 ms each): sensors are read at most once a second"
                        ));
                        for g in gpus {
                            devices.push(Device {
                                info: GpuInfo {
                                    index: base + g.index,
                                    vendor: "nvidia",
                                    name: g.name.unwrap_or_else(|| "NVIDIA GPU".into()),
                                    pci_id: None,
                                    pci_slot: None,
                                    apu: false,
                                    apu_basis: None,
                                    memory_reader: "nvidia-smi".into(),
                                    sensor_reader: "nvidia-smi".into(),
                                    process_reader: "none".into(),
                                    crit_c: Vec::new(),
                                    notes: Vec::new(),
                                },
                                reader: Reader::Smi {
                                    tool: Tool::NvidiaSmi,
                                    smi_index: g.index,
                                },
                                sensors: GpuReading::default(),
                            });
                        }
                    } else {
                        warnings.push(format!("{e}; NVIDIA GPUs are not measured"));
                    }
                }
            }
        }
        if let GpuSelect::Index(i) = opts.select {
            devices.retain(|d| d.info.index == i);
            if devices.is_empty() {
                warnings.push(format!(
                    "no GPU with index {i} (`o3 doctor` lists them); GPUs are not measured"
                ));
            }
        }
        let ram_total = ram_total(&opts.procfs_root);
        (
            GpuSource {
                devices,
                nvidia,
                opts,
                ram_total,
                last_sensors_ns: None,
                last_procs_ns: None,
                pids: BTreeSet::new(),
            },
            warnings,
        )
    }

    fn open_amd(d: AmdDevice, warnings: &mut Vec<String>) -> Device {
        let mut notes = Vec::new();
        let mut ioctl = match d.render_node.as_deref() {
            Some(p) if !p.exists() => {
                notes.push(format!("no render node at {}: sysfs is used", p.display()));
                None
            }
            Some(p) => match RenderNode::open(p) {
                Ok(node) => Some(AmdIoctl::new(Box::new(node))),
                Err(e) => {
                    warnings.push(format!("{}: {e}; reading sysfs instead", d.card));
                    None
                }
            },
            None => None,
        };
        let mut probe = GpuReading::default();
        if let Some(io) = ioctl.as_mut() {
            if !io.read_memory(&mut probe) {
                notes.push("the DRM info ioctl did not answer; sysfs is used".into());
                ioctl = None;
            }
        }
        let mut sysfs = AmdSysfs::open(&d);
        let mut sys_probe = GpuReading::default();
        sysfs.read_memory(&mut sys_probe);
        let memory_reader = if ioctl.is_some() {
            "amdgpu DRM info ioctl"
        } else if sys_probe.vram_total_bytes.is_some() {
            "amdgpu sysfs"
        } else {
            "none"
        };
        let crit_c = sysfs
            .crit_limits()
            .into_iter()
            .map(|(n, c)| (n.to_string(), c))
            .collect();
        let reader = if memory_reader == "none" {
            match smi::query(&RealRunner, Tool::RocmSmi) {
                Ok(gpus) if gpus.iter().any(|g| g.index == d.index) => {
                    warnings.push(format!(
                        "{}: no direct reader works; using rocm-smi (a process per read, slow): sensors at most once a second",
                        d.card
                    ));
                    Reader::Smi {
                        tool: Tool::RocmSmi,
                        smi_index: d.index,
                    }
                }
                _ => {
                    notes.push("no reader works for this device".into());
                    Reader::Amd {
                        sysfs: Box::new(sysfs),
                        ioctl,
                    }
                }
            }
        } else {
            Reader::Amd {
                sysfs: Box::new(sysfs),
                ioctl,
            }
        };
        let (memory_reader, sensor_reader) = match &reader {
            Reader::Smi { .. } => ("rocm-smi".to_string(), "rocm-smi".to_string()),
            Reader::Amd { ioctl, .. } => (
                memory_reader.to_string(),
                if ioctl.is_some() {
                    "amdgpu DRM info ioctl, then hwmon/sysfs, then gpu_metrics".to_string()
                } else {
                    "amdgpu hwmon/sysfs, then gpu_metrics".to_string()
                },
            ),
            Reader::Nvidia { .. } => unreachable!("AMD device"),
        };
        Device {
            info: GpuInfo {
                index: d.index,
                vendor: "amd",
                name: d.name.clone(),
                pci_id: Some(d.pci_id.clone()),
                pci_slot: d.pci_slot.clone(),
                apu: d.apu,
                apu_basis: Some(d.apu_basis.clone()),
                memory_reader,
                sensor_reader,
                process_reader: "DRM fdinfo + KFD".into(),
                crit_c,
                notes,
            },
            reader,
            sensors: GpuReading::default(),
        }
    }

    pub fn infos(&self) -> Vec<GpuInfo> {
        self.devices.iter().map(|d| d.info.clone()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Adds a process whose GPU memory is read (the tree's root; descendants arrive as events).
    pub fn track(&mut self, pid: u32) {
        self.pids.insert(pid);
    }

    fn read_device(&mut self, i: usize, sensors: bool) -> GpuSample {
        let ram_total = self.ram_total;
        let nvidia = self.nvidia.as_ref();
        let d = &mut self.devices[i];
        let mut r = GpuReading::default();
        let mut asleep = false;
        match &mut d.reader {
            Reader::Amd { sysfs, ioctl } => {
                asleep = sysfs.asleep();
                let by_ioctl = !asleep && ioctl.as_mut().is_some_and(|io| io.read_memory(&mut r));
                if !by_ioctl {
                    sysfs.read_memory(&mut r);
                }
                if sensors && !asleep {
                    let mut s = GpuReading::default();
                    if let Some(io) = ioctl.as_mut() {
                        io.read_sensors(&mut s);
                    }
                    let mut sys = GpuReading::default();
                    sysfs.read_sensors(&mut sys);
                    // sysfs gives edge/junction/mem separately and power over the device's
                    // average window; the ioctl's single temperature is the edge one.
                    sys.fill_from(&s);
                    d.sensors = sys;
                } else if !asleep {
                    // Between sensor reads, the temperatures still follow every tick.
                    sysfs.read_temps(&mut d.sensors);
                } else {
                    d.sensors = GpuReading::default();
                }
            }
            Reader::Nvidia { nvml_index } => {
                if let Some(nv) = nvidia {
                    let full = nv.read(*nvml_index);
                    r.vram_total_bytes = full.vram_total_bytes;
                    r.vram_used_bytes = full.vram_used_bytes;
                    if sensors {
                        d.sensors = full;
                    } else {
                        // NVML answered every query of this tick: keep its temperatures.
                        d.sensors.temp_edge_c = full.temp_edge_c;
                        d.sensors.temp_junction_c = full.temp_junction_c;
                        d.sensors.temp_mem_c = full.temp_mem_c;
                    }
                }
            }
            Reader::Smi { tool, smi_index } => {
                if sensors {
                    if let Ok(gpus) = smi::query(&RealRunner, *tool) {
                        if let Some(g) = gpus.into_iter().find(|g| g.index == *smi_index) {
                            d.sensors = g.reading;
                        }
                    }
                }
                r.fill_from(&d.sensors);
            }
        }
        r.fill_from(&d.sensors);
        let (usable_used, usable_total) = if d.info.apu {
            let cap = r.gtt_usable_bytes.or(r.gtt_total_bytes);
            let cap = match (cap, ram_total) {
                (Some(c), Some(ram)) => Some(c.min(ram)),
                (c, _) => c,
            };
            (r.gtt_used_bytes, cap)
        } else {
            (
                r.vram_used_bytes,
                r.vram_usable_bytes.or(r.vram_total_bytes),
            )
        };
        GpuSample {
            index: d.info.index,
            reading: r,
            usable_used_bytes: usable_used,
            usable_total_bytes: usable_total,
            asleep,
        }
    }

    fn due(last: &mut Option<u64>, now: u64, every: Duration) -> bool {
        match *last {
            Some(t) if now.saturating_sub(t) < every.as_nanos() as u64 => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }

    /// Per-process GPU memory of the tracked processes.
    pub fn read_processes(&self) -> Vec<ProcessGpu> {
        let pids: Vec<u32> = self.pids.iter().copied().collect();
        let mut out = if self
            .devices
            .iter()
            .any(|d| matches!(d.reader, Reader::Amd { .. }))
        {
            fdinfo::read_processes(&self.opts.procfs_root, &self.opts.sysfs_root, &pids)
        } else {
            Vec::new()
        };
        if let Some(nv) = self.nvidia.as_ref() {
            for d in &self.devices {
                if let Reader::Nvidia { nvml_index } = d.reader {
                    for (pid, used) in nv.processes(nvml_index) {
                        if !self.pids.contains(&pid) {
                            continue;
                        }
                        match out.iter_mut().find(|p| p.pid == pid) {
                            Some(p) => p.vram_bytes += used,
                            None => out.push(ProcessGpu {
                                pid,
                                vram_bytes: used,
                                ..ProcessGpu::default()
                            }),
                        }
                    }
                }
            }
        }
        out
    }
}

impl Source for GpuSource {
    fn name(&self) -> &'static str {
        "gpu"
    }

    fn sample(&mut self, now_ns: u64, _t0: u64, out: &mut Sample, events: &mut Vec<TreeEvent>) {
        // Events of sources before this one (the tree) keep the pid set current.
        for e in events.iter() {
            match e {
                TreeEvent::Fork { pid, .. } | TreeEvent::Exec { pid, .. } => {
                    self.pids.insert(*pid);
                }
                TreeEvent::Exit { pid, .. } => {
                    self.pids.remove(pid);
                }
                _ => {}
            }
        }
        let sensors = Self::due(&mut self.last_sensors_ns, now_ns, self.opts.sensor_every);
        for i in 0..self.devices.len() {
            let s = self.read_device(i, sensors);
            out.gpus.push(s);
        }
        if !self.pids.is_empty()
            && Self::due(&mut self.last_procs_ns, now_ns, self.opts.process_every)
        {
            out.gpu_processes = self.read_processes();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(tree: &str) -> GpuOptions {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(tree);
        GpuOptions {
            select: GpuSelect::Amd,
            sysfs_root: root.join("sys"),
            procfs_root: root.join("proc"),
            dev_root: root.join("dev"),
            sensor_every: Duration::from_millis(100),
            process_every: Duration::from_millis(500),
        }
    }

    fn one(tree: &str) -> (GpuInfo, GpuSample) {
        let (mut src, _warnings) = GpuSource::open(opts(tree));
        let mut s = Sample::default();
        src.sample(1, 0, &mut s, &mut Vec::new());
        assert_eq!(s.gpus.len(), 1, "{tree}");
        (src.infos().remove(0), s.gpus.remove(0))
    }

    #[test]
    fn strix_halo_capacity_is_gtt_bounded_by_ram_not_carve_out_plus_gtt() {
        let (info, g) = one("strix-halo");
        assert!(info.apu);
        assert_eq!(info.memory_reader, "amdgpu sysfs");
        assert_eq!(g.reading.vram_total_bytes, Some(512 << 20));
        assert_eq!(g.usable_used_bytes, Some(40 << 30));
        // GTT is 120 GiB; the machine has 124 GiB of RAM: capacity is the GTT, not 120.5 GiB.
        assert_eq!(g.usable_total_bytes, Some(120 << 30));
        assert_eq!(g.reading.temp_edge_c, Some(48.0));
        assert_eq!(g.reading.power_w, Some(65.0));
    }

    #[test]
    fn discrete_capacity_is_vram() {
        let (info, g) = one("rdna3");
        assert!(!info.apu);
        assert_eq!(g.usable_total_bytes, Some(25_753_026_560));
        assert_eq!(g.usable_used_bytes, Some(8 << 30));
        assert_eq!(info.crit_c.len(), 3);
        assert_eq!(g.reading.temp_junction_c, Some(52.0));
    }

    #[test]
    fn suspended_device_is_not_woken() {
        let (_, g) = one("rdna3-suspended");
        assert!(g.asleep);
        assert_eq!(g.reading.vram_used_bytes, Some(0));
        assert_eq!(g.reading.temp_edge_c, None, "reading hwmon would wake it");
        assert_eq!(g.reading.gpu_busy_percent, None);
    }

    #[test]
    fn no_gpu_and_bad_index() {
        let (src, w) = GpuSource::open(opts("no-gpu"));
        assert!(src.is_empty() && w.is_empty());
        let mut o = opts("rdna3");
        o.select = GpuSelect::Index(7);
        let (src, w) = GpuSource::open(o);
        assert!(src.is_empty());
        assert!(w[0].contains("no GPU with index 7"), "{w:?}");
    }

    #[test]
    fn sensors_are_read_at_their_own_cadence() {
        let (mut src, _) = GpuSource::open(opts("rdna3"));
        let mut now = 0;
        let mut reads = 0;
        for _ in 0..20 {
            let before = src.last_sensors_ns;
            let mut s = Sample::default();
            src.sample(now, 0, &mut s, &mut Vec::new());
            if src.last_sensors_ns != before {
                reads += 1;
            }
            assert_eq!(
                s.gpus[0].reading.temp_edge_c,
                Some(45.0),
                "repeated between reads"
            );
            now += 10_000_000;
        }
        assert_eq!(reads, 2, "200 ms at 100 ms cadence");
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let dest = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &dest);
            } else {
                std::fs::copy(e.path(), dest).unwrap();
            }
        }
    }

    /// The rdna3 fixture (an RX 7900-class amdgpu sysfs tree) copied, so its hwmon files can
    /// change between ticks as the driver's do.
    #[test]
    fn temperatures_follow_every_tick_while_power_keeps_the_sensor_cadence() {
        let dir = tempfile::tempdir().unwrap();
        let src_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/rdna3");
        copy_dir(&src_root, dir.path());
        let mut o = opts("rdna3");
        o.sysfs_root = dir.path().join("sys");
        o.procfs_root = dir.path().join("proc");
        o.dev_root = dir.path().join("dev");
        let (mut src, _) = GpuSource::open(o);
        let hwmon = dir.path().join("sys/class/drm/card0/device/hwmon/hwmon2");
        let mut s = Sample::default();
        src.sample(0, 0, &mut s, &mut Vec::new());
        assert_eq!(s.gpus[0].reading.temp_edge_c, Some(45.0));
        assert_eq!(s.gpus[0].reading.power_w, Some(212.0));
        std::fs::write(hwmon.join("temp1_input"), "71000\n").unwrap();
        std::fs::write(hwmon.join("power1_average"), "300000000\n").unwrap();
        // 10 ms later: inside the 100 ms sensor cadence.
        let mut s = Sample::default();
        src.sample(10_000_000, 0, &mut s, &mut Vec::new());
        assert_eq!(
            s.gpus[0].reading.temp_edge_c,
            Some(71.0),
            "temperature at the tick"
        );
        assert_eq!(
            s.gpus[0].reading.power_w,
            Some(212.0),
            "power at its own cadence"
        );
        let mut s = Sample::default();
        src.sample(100_000_000, 0, &mut s, &mut Vec::new());
        assert_eq!(s.gpus[0].reading.power_w, Some(300.0));
    }

    #[test]
    fn selection_parses() {
        assert_eq!("auto".parse::<GpuSelect>().unwrap(), GpuSelect::Auto);
        assert_eq!("1".parse::<GpuSelect>().unwrap(), GpuSelect::Index(1));
        assert!("intel"
            .parse::<GpuSelect>()
            .unwrap_err()
            .contains("auto, amd"));
    }
}
