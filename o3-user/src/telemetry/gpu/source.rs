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

use nvml_wrapper::error::NvmlError;
use thiserror::Error;

use super::amd::{self, AmdDevice, AmdSysfs};
use super::amd_ioctl::{AmdIoctl, RenderNode};
use super::fdinfo::{self, ProcessGpu};
use super::nvidia::{Nvidia, NvidiaDevice, NvidiaError, NvmlApi, RealNvml};
use super::smi::{self, RealRunner, SmiGpu, Tool, ToolRunner};
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

/// `--gpu` was given something else.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("`{0}` is not a GPU selection: use auto, amd, nvidia, none or a device index")]
pub struct GpuSelectError(pub String);

impl std::str::FromStr for GpuSelect {
    type Err = GpuSelectError;
    fn from_str(s: &str) -> Result<GpuSelect, GpuSelectError> {
        match s {
            "auto" => Ok(GpuSelect::Auto),
            "amd" => Ok(GpuSelect::Amd),
            "nvidia" => Ok(GpuSelect::Nvidia),
            "none" => Ok(GpuSelect::None),
            n => n
                .parse()
                .map(GpuSelect::Index)
                .map_err(|_| GpuSelectError(s.to_string())),
        }
    }
}

impl GpuSelect {
    /// Whether amdgpu devices are looked for (an index may name one).
    fn wants_amd(self) -> bool {
        matches!(self, GpuSelect::Auto | GpuSelect::Amd | GpuSelect::Index(_))
    }

    /// Whether NVIDIA devices are looked for (an index may name one).
    fn wants_nvidia(self) -> bool {
        matches!(
            self,
            GpuSelect::Auto | GpuSelect::Nvidia | GpuSelect::Index(_)
        )
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

/// What the source reaches besides the sysfs, procfs and /dev trees of [`GpuOptions`]: NVML
/// and the SMI tools. [`GpuBackends::real`] loads the real NVML and runs the real tools; tests
/// hand in fakes.
pub struct GpuBackends {
    /// Initialises NVML; called once, and only when NVIDIA devices are wanted.
    pub nvml: Box<dyn FnOnce() -> Result<Box<dyn NvmlApi>, NvmlError>>,
    /// Runs `nvidia-smi` or `rocm-smi` where no direct reader works.
    pub smi: Box<dyn ToolRunner + Send>,
}

impl GpuBackends {
    pub fn real() -> GpuBackends {
        GpuBackends {
            nvml: Box::new(RealNvml::init_boxed),
            smi: Box::new(RealRunner),
        }
    }
}

pub use crate::trace::gpu::{GpuInfo, GpuSample};

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
    smi: Box<dyn ToolRunner + Send>,
    opts: GpuOptions,
    ram_total: Option<u64>,
    last_sensors_ns: Option<u64>,
    last_procs_ns: Option<u64>,
    pids: BTreeSet<u32>,
}

/// What bounds a device's usable capacity (the denominator of its memory figure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsableBound {
    /// The GTT size (`mem_info_gtt_total`, set by `ttm.pages_limit` / `amdgpu.gttsize`).
    GttSize,
    /// GTT less pinned memory (the ioctl's heap info).
    GttUnpinned,
    /// System RAM: an APU's GTT larger than RAM cannot all be used.
    Ram,
    VramSize,
    /// VRAM less pinned and reserved memory (the ioctl's heap info).
    VramUnreserved,
}

impl UsableBound {
    /// For people: `bounded by RAM`.
    pub fn describe(self) -> &'static str {
        match self {
            UsableBound::GttSize => "bounded by the GTT size",
            UsableBound::GttUnpinned => "bounded by GTT less pinned memory",
            UsableBound::Ram => "bounded by RAM",
            UsableBound::VramSize => "bounded by the VRAM size",
            UsableBound::VramUnreserved => "bounded by VRAM less reserved memory",
        }
    }
}

/// A device's usable memory: in use, capacity, and what bounds the capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usable {
    pub used_bytes: Option<u64>,
    pub total_bytes: u64,
    pub bound: UsableBound,
}

/// Usable memory of a device: GTT bounded by system RAM (`ram_total`) on an APU (its carve-out
/// is reported apart, never added), VRAM on a discrete card. `None` without a capacity.
pub fn usable(apu: bool, r: &GpuReading, ram_total: Option<u64>) -> Option<Usable> {
    let (used, cap) = if apu {
        let cap = match (r.gtt_usable_bytes, r.gtt_total_bytes) {
            (Some(u), _) => (u, UsableBound::GttUnpinned),
            (None, Some(t)) => (t, UsableBound::GttSize),
            (None, None) => return None,
        };
        let cap = match ram_total {
            Some(ram) if ram < cap.0 => (ram, UsableBound::Ram),
            _ => cap,
        };
        (r.gtt_used_bytes, cap)
    } else {
        let cap = match (r.vram_usable_bytes, r.vram_total_bytes) {
            (Some(u), _) => (u, UsableBound::VramUnreserved),
            (None, Some(t)) => (t, UsableBound::VramSize),
            (None, None) => return None,
        };
        (r.vram_used_bytes, cap)
    };
    Some(Usable {
        used_bytes: used,
        total_bytes: cap.0,
        bound: cap.1,
    })
}

fn ram_total(procfs: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(procfs.join("meminfo")).ok()?;
    crate::telemetry::procfs::parse_meminfo(&text)
        .ok()
        .map(|m| m.total)
}

/// An NVIDIA device's identity; `reader` serves memory and sensors.
fn nvidia_info(
    index: u32,
    name: String,
    pci_slot: Option<String>,
    reader: &str,
    process_reader: &str,
) -> GpuInfo {
    GpuInfo {
        index,
        vendor: "nvidia",
        name,
        pci_id: None,
        pci_slot,
        apu: false,
        apu_basis: None,
        memory_reader: reader.into(),
        sensor_reader: reader.into(),
        process_reader: process_reader.into(),
        crit_c: Vec::new(),
        notes: Vec::new(),
    }
}

/// A device NVML reads, at o3 index `base + its NVML index`.
fn nvml_device(base: u32, d: NvidiaDevice) -> Device {
    Device {
        info: nvidia_info(base + d.index, d.name, d.pci_slot, "nvml", "nvml"),
        reader: Reader::Nvidia {
            nvml_index: d.index,
        },
        sensors: GpuReading::default(),
    }
}

/// A device nvidia-smi reads, at o3 index `base + its nvidia-smi index`.
fn nvidia_smi_device(base: u32, g: SmiGpu) -> Device {
    let name = g.name.unwrap_or_else(|| "NVIDIA GPU".into());
    Device {
        info: nvidia_info(base + g.index, name, None, "nvidia-smi", "none"),
        reader: Reader::Smi {
            tool: Tool::NvidiaSmi,
            smi_index: g.index,
        },
        sensors: GpuReading::default(),
    }
}

/// The amdgpu DRM info ioctl reader of `d`, when its render node opens and answers; why not
/// goes to `notes` (expected: no node) or `warnings` (the node is there but will not open).
fn open_ioctl(
    d: &AmdDevice,
    notes: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Option<AmdIoctl> {
    let path = d.render_node.as_deref()?;
    if !path.exists() {
        notes.push(format!(
            "no render node at {}: sysfs is used",
            path.display()
        ));
        return None;
    }
    let mut io = match RenderNode::open(path) {
        Ok(node) => AmdIoctl::new(Box::new(node)),
        Err(e) => {
            warnings.push(format!("{}: {e}; reading sysfs instead", d.card));
            return None;
        }
    };
    if !io.read_memory(&mut GpuReading::default()) {
        notes.push("the DRM info ioctl did not answer; sysfs is used".into());
        return None;
    }
    Some(io)
}

/// The reader of an AMD device's memory: the ioctl, else sysfs if it has the totals, else
/// "none".
fn amd_memory_reader(ioctl: &Option<AmdIoctl>, sysfs: &mut AmdSysfs) -> &'static str {
    if ioctl.is_some() {
        return "amdgpu DRM info ioctl";
    }
    let mut probe = GpuReading::default();
    sysfs.read_memory(&mut probe);
    if probe.vram_total_bytes.is_some() {
        "amdgpu sysfs"
    } else {
        "none"
    }
}

/// rocm-smi as the reader of an AMD device no direct reader works for, if it lists the
/// device.
fn rocm_smi_reader(d: &AmdDevice, runner: &dyn ToolRunner) -> Option<Reader> {
    let gpus = smi::query(runner, Tool::RocmSmi).ok()?;
    gpus.iter()
        .any(|g| g.index == d.index)
        .then_some(Reader::Smi {
            tool: Tool::RocmSmi,
            smi_index: d.index,
        })
}

/// (memory, sensor) reader names of an AMD device's reader.
fn amd_reader_names(reader: &Reader, memory_reader: &str) -> (String, String) {
    match reader {
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
    }
}

impl GpuSource {
    /// Finds the selected devices and opens their readers, with the real NVML and SMI tools.
    /// Never fails: a device nothing can read is listed with a note, and warnings come back
    /// for the caller to print once.
    pub fn open(opts: GpuOptions) -> (GpuSource, Vec<String>) {
        GpuSource::open_with(opts, GpuBackends::real())
    }

    /// [`GpuSource::open`] with the given NVML and SMI runner.
    pub fn open_with(opts: GpuOptions, backends: GpuBackends) -> (GpuSource, Vec<String>) {
        let GpuBackends { nvml, smi } = backends;
        let mut warnings = Vec::new();
        let mut devices = Vec::new();
        if opts.select.wants_amd() {
            for d in amd::discover(&opts.sysfs_root, &opts.dev_root) {
                devices.push(Self::open_amd(d, &*smi, &mut warnings));
            }
        }
        let mut nvidia = None;
        if opts.select.wants_nvidia() {
            // After the highest AMD index (card numbers need not start at 0 or be contiguous).
            let base = devices.iter().map(|d| d.info.index + 1).max().unwrap_or(0);
            let init = Nvidia::open(nvml());
            nvidia = Self::open_nvidia(init, base, &*smi, &mut devices, &mut warnings);
        }
        if let GpuSelect::Index(i) = opts.select {
            Self::keep_index(&mut devices, i, &mut warnings);
        }
        let ram_total = ram_total(&opts.procfs_root);
        (
            GpuSource {
                devices,
                nvidia,
                smi,
                opts,
                ram_total,
                last_sensors_ns: None,
                last_procs_ns: None,
                pids: BTreeSet::new(),
            },
            warnings,
        )
    }

    /// NVIDIA devices from NVML's outcome: NVML's devices, or (NVML broken) nvidia-smi's.
    /// Returns the NVML to read them with.
    fn open_nvidia(
        init: Result<Option<Nvidia>, NvidiaError>,
        base: u32,
        runner: &dyn ToolRunner,
        devices: &mut Vec<Device>,
        warnings: &mut Vec<String>,
    ) -> Option<Nvidia> {
        match init {
            Ok(Some(nv)) => {
                devices.extend(nv.devices().into_iter().map(|d| nvml_device(base, d)));
                Some(nv)
            }
            Ok(None) => None,
            Err(e) => {
                // A driver is there but NVML does not work: nvidia-smi as a fallback.
                match smi::query(runner, Tool::NvidiaSmi) {
                    Ok(gpus) => {
                        warnings.push(format!(
                            "{e}; using nvidia-smi instead (one process per sample, about 14 ms each): sensors are read at most once a second"
                        ));
                        devices.extend(gpus.into_iter().map(|g| nvidia_smi_device(base, g)));
                    }
                    Err(_) => warnings.push(format!("{e}; NVIDIA GPUs are not measured")),
                }
                None
            }
        }
    }

    /// `--gpu N`: only device N, or a warning that there is none.
    fn keep_index(devices: &mut Vec<Device>, i: u32, warnings: &mut Vec<String>) {
        devices.retain(|d| d.info.index == i);
        if devices.is_empty() {
            warnings.push(format!(
                "no GPU with index {i} (`o3 doctor` lists them); GPUs are not measured"
            ));
        }
    }

    fn open_amd(d: AmdDevice, runner: &dyn ToolRunner, warnings: &mut Vec<String>) -> Device {
        let mut notes = Vec::new();
        let ioctl = open_ioctl(&d, &mut notes, warnings);
        let mut sysfs = AmdSysfs::open(&d);
        let memory_reader = amd_memory_reader(&ioctl, &mut sysfs);
        let crit_c = sysfs
            .crit_limits()
            .into_iter()
            .map(|(n, c)| (n.to_string(), c))
            .collect();
        let direct = |sysfs, ioctl| Reader::Amd {
            sysfs: Box::new(sysfs),
            ioctl,
        };
        let reader = if memory_reader != "none" {
            direct(sysfs, ioctl)
        } else if let Some(smi) = rocm_smi_reader(&d, runner) {
            warnings.push(format!(
                "{}: no direct reader works; using rocm-smi (a process per read, slow): sensors at most once a second",
                d.card
            ));
            smi
        } else {
            notes.push("no reader works for this device".into());
            direct(sysfs, ioctl)
        };
        let (memory_reader, sensor_reader) = amd_reader_names(&reader, memory_reader);
        Device {
            info: GpuInfo {
                index: d.index,
                vendor: "amd",
                name: d.name,
                pci_id: Some(d.pci_id),
                pci_slot: d.pci_slot,
                apu: d.apu,
                apu_basis: Some(d.apu_basis),
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

    /// Reads the GPU memory of exactly `pids` from now on (the live view: every process).
    pub fn track_only(&mut self, pids: impl IntoIterator<Item = u32>) {
        self.pids = pids.into_iter().collect();
    }

    fn read_device(&mut self, i: usize, sensors: bool) -> GpuSample {
        let ram_total = self.ram_total;
        let nvidia = self.nvidia.as_ref();
        let runner = &*self.smi;
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
                    if let Ok(gpus) = smi::query(runner, *tool) {
                        if let Some(g) = gpus.into_iter().find(|g| g.index == *smi_index) {
                            d.sensors = g.reading;
                        }
                    }
                }
                r.fill_from(&d.sensors);
            }
        }
        r.fill_from(&d.sensors);
        let (usable_used, usable_total) = usable(d.info.apu, &r, ram_total)
            .map_or((None, None), |u| (u.used_bytes, Some(u.total_bytes)));
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
    use super::super::nvidia::fake::{a100_mig, h100, FakeNvml};
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};

    /// An SMI runner that answers every call with `answer` and records the programs it ran.
    #[derive(Clone)]
    struct FakeSmi {
        answer: Result<String, io::ErrorKind>,
        ran: Arc<Mutex<Vec<String>>>,
    }

    impl FakeSmi {
        /// Answers with the text of `tests/fixtures/smi/<name>`.
        fn fixture(name: &str) -> FakeSmi {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/fixtures/smi")
                .join(name);
            FakeSmi {
                answer: Ok(std::fs::read_to_string(path).unwrap()),
                ran: Arc::default(),
            }
        }

        /// No tool is installed.
        fn missing() -> FakeSmi {
            FakeSmi {
                answer: Err(io::ErrorKind::NotFound),
                ran: Arc::default(),
            }
        }

        fn ran(&self) -> Vec<String> {
            self.ran.lock().unwrap().clone()
        }
    }

    impl ToolRunner for FakeSmi {
        fn run(&self, program: &str, _args: &[&str], _timeout: Duration) -> io::Result<String> {
            self.ran.lock().unwrap().push(program.to_string());
            self.answer.clone().map_err(io::Error::from)
        }
    }

    /// No NVIDIA driver and no SMI tool: only the fixture trees are read.
    fn offline() -> GpuBackends {
        backends(|| Err(NvmlError::DriverNotLoaded), FakeSmi::missing())
    }

    fn backends(
        nvml: impl FnOnce() -> Result<Box<dyn NvmlApi>, NvmlError> + 'static,
        smi: FakeSmi,
    ) -> GpuBackends {
        GpuBackends {
            nvml: Box::new(nvml),
            smi: Box::new(smi),
        }
    }

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
        let (mut src, _warnings) = GpuSource::open_with(opts(tree), offline());
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

    /// The bound named with each capacity: whichever of GTT size, pinned-less GTT and RAM is
    /// smallest on an APU; VRAM (less reserved when the ioctl says) on a discrete card.
    #[test]
    fn each_capacity_names_its_bound() {
        let gtt = GpuReading {
            gtt_used_bytes: Some(40 << 30),
            gtt_total_bytes: Some(120 << 30),
            ..GpuReading::default()
        };
        let u = usable(true, &gtt, Some(124 << 30)).unwrap();
        assert_eq!((u.total_bytes, u.bound), (120 << 30, UsableBound::GttSize));
        let u = usable(true, &gtt, Some(24 << 30)).unwrap();
        assert_eq!((u.total_bytes, u.bound), (24 << 30, UsableBound::Ram));
        assert_eq!(u.bound.describe(), "bounded by RAM");
        let pinned = GpuReading {
            gtt_usable_bytes: Some(100 << 30),
            ..gtt.clone()
        };
        let u = usable(true, &pinned, None).unwrap();
        assert_eq!(
            (u.total_bytes, u.bound),
            (100 << 30, UsableBound::GttUnpinned)
        );
        let vram = GpuReading {
            vram_used_bytes: Some(1),
            vram_total_bytes: Some(24 << 30),
            ..GpuReading::default()
        };
        let u = usable(false, &vram, Some(1)).unwrap();
        assert_eq!((u.total_bytes, u.bound), (24 << 30, UsableBound::VramSize));
        assert_eq!(
            usable(false, &gtt, None),
            None,
            "a discrete card without VRAM size"
        );
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
        let (src, w) = GpuSource::open_with(opts("no-gpu"), offline());
        assert!(src.is_empty() && w.is_empty());
        let mut o = opts("rdna3");
        o.select = GpuSelect::Index(7);
        let (src, w) = GpuSource::open_with(o, offline());
        assert!(src.is_empty());
        assert!(w[0].contains("no GPU with index 7"), "{w:?}");
    }

    #[test]
    fn sensors_are_read_at_their_own_cadence() {
        let (mut src, _) = GpuSource::open_with(opts("rdna3"), offline());
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
        let (mut src, _) = GpuSource::open_with(o, offline());
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

    fn sample_at(src: &mut GpuSource, now_ns: u64) -> Sample {
        let mut s = Sample::default();
        src.sample(now_ns, 0, &mut s, &mut Vec::new());
        s
    }

    const MIB: u64 = 1 << 20;

    /// A driver whose NVML does not initialise: the two GPUs of the nvidia-smi fixture (an
    /// H100 and a MIG-mode A100) are read through nvidia-smi instead.
    #[test]
    fn broken_nvml_falls_back_to_nvidia_smi() {
        let smi = FakeSmi::fixture("nvidia_smi_2gpu.csv");
        let mut o = opts("no-gpu");
        o.select = GpuSelect::Nvidia;
        let (mut src, w) =
            GpuSource::open_with(o, backends(|| Err(NvmlError::Unknown), smi.clone()));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("NVML: ") && w[0].contains("using nvidia-smi instead"));
        let infos = src.infos();
        assert_eq!(infos.len(), 2);
        assert_eq!(
            (infos[0].index, infos[0].name.as_str()),
            (0, "NVIDIA H100 80GB HBM3")
        );
        assert_eq!(infos[1].memory_reader, "nvidia-smi");
        assert_eq!(infos[1].process_reader, "none");
        let s = sample_at(&mut src, 1);
        let h100 = &s.gpus[0];
        assert_eq!(h100.reading.vram_used_bytes, Some(71_243 * MIB));
        assert_eq!(h100.usable_total_bytes, Some(81_559 * MIB));
        assert_eq!(h100.reading.power_w, Some(612.45));
        assert_eq!(
            s.gpus[1].reading.gpu_busy_percent, None,
            "[N/A] in MIG mode"
        );
        // Once to find the devices, then once per device at each sensor read (every 100 ms
        // here), none between them.
        assert_eq!(smi.ran(), ["nvidia-smi"; 3]);
        sample_at(&mut src, 50_000_000);
        assert_eq!(smi.ran().len(), 3);
        sample_at(&mut src, 101_000_000);
        assert_eq!(smi.ran().len(), 5);
    }

    #[test]
    fn broken_nvml_without_nvidia_smi_measures_no_nvidia_gpu() {
        let mut o = opts("no-gpu");
        o.select = GpuSelect::Nvidia;
        let (src, w) =
            GpuSource::open_with(o, backends(|| Err(NvmlError::Unknown), FakeSmi::missing()));
        assert!(src.is_empty());
        assert_eq!(w.len(), 1);
        assert!(w[0].starts_with("NVML: ") && w[0].ends_with("; NVIDIA GPUs are not measured"));
    }

    /// An amdgpu device whose sysfs has no memory counters and no render node: rocm-smi
    /// (the 6.2 fixture, warning preamble and all) reads it.
    #[test]
    fn amd_device_no_direct_reader_works_for_is_read_by_rocm_smi() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("sys/class/drm/card0/device");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("uevent"), "DRIVER=amdgpu\nPCI_ID=1002:74A1\n").unwrap();
        let mut o = opts("no-gpu");
        o.sysfs_root = dir.path().join("sys");
        let smi = FakeSmi::fixture("rocm_smi_6.2_warning.csv");
        let (mut src, w) =
            GpuSource::open_with(o, backends(|| Err(NvmlError::DriverNotLoaded), smi.clone()));
        assert!(
            w[0].starts_with("card0: no direct reader works; using rocm-smi"),
            "{w:?}"
        );
        let info = &src.infos()[0];
        assert_eq!(
            (info.memory_reader.as_str(), info.sensor_reader.as_str()),
            ("rocm-smi", "rocm-smi")
        );
        let g = &sample_at(&mut src, 1).gpus[0];
        assert_eq!(g.reading.vram_total_bytes, Some(51_522_830_336));
        assert_eq!(g.usable_used_bytes, Some(47_915_057_152));
        assert_eq!(g.reading.temp_junction_c, Some(61.0));
        assert_eq!(smi.ran(), ["rocm-smi", "rocm-smi"]);
    }

    /// NVML's devices come after the AMD ones (rdna3's card0), memory every tick and the
    /// tracked processes' GPU memory from NVML's process list.
    #[test]
    fn nvml_devices_follow_the_amd_ones_and_are_read_through_the_seam() {
        let smi = FakeSmi::missing();
        let mut o = opts("rdna3");
        o.select = GpuSelect::Auto;
        let (mut src, w) = GpuSource::open_with(
            o,
            backends(|| FakeNvml::boxed(vec![h100(), a100_mig()]), smi.clone()),
        );
        assert!(w.is_empty(), "{w:?}");
        let infos = src.infos();
        let nv: Vec<_> = infos.iter().filter(|i| i.vendor == "nvidia").collect();
        assert_eq!((nv[0].index, nv[1].index), (1, 2));
        assert_eq!(nv[0].pci_slot.as_deref(), Some("00000000:19:00.0"));
        assert_eq!(nv[0].memory_reader, "nvml");
        src.track(4242);
        let s = sample_at(&mut src, 1);
        assert_eq!(s.gpus.len(), 3);
        let h = &s.gpus[1];
        assert_eq!(h.index, 1);
        assert_eq!(h.usable_total_bytes, Some(81_559 * MIB));
        assert_eq!(h.reading.power_w, Some(612.45));
        assert_eq!(s.gpu_processes.len(), 1);
        assert_eq!(s.gpu_processes[0].pid, 4242);
        assert_eq!(s.gpu_processes[0].vram_bytes, 70_656 * MIB);
        assert!(smi.ran().is_empty(), "no tool while NVML works");
        // --gpu 2: the A100 alone.
        let mut o = opts("rdna3");
        o.select = GpuSelect::Index(2);
        let (src, _) = GpuSource::open_with(
            o,
            backends(|| FakeNvml::boxed(vec![h100(), a100_mig()]), smi),
        );
        assert_eq!(src.infos()[0].name, "NVIDIA A100-SXM4-40GB");
    }

    #[test]
    fn selection_parses() {
        assert_eq!("auto".parse::<GpuSelect>().unwrap(), GpuSelect::Auto);
        assert_eq!("1".parse::<GpuSelect>().unwrap(), GpuSelect::Index(1));
        assert!("intel"
            .parse::<GpuSelect>()
            .unwrap_err()
            .to_string()
            .contains("auto, amd"));
    }
}
