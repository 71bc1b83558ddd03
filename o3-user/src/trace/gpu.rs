//! The GPU parts of the trace's records: a device's identity (in the header), its values in a
//! sample, and a process's GPU memory. The GPU readers in `telemetry::gpu` fill them.

use serde::{Deserialize, Serialize};

/// One device's values at one instant. `None` means "not available from this reader" (a
/// sensor that is absent, asleep, or returned garbage), never zero.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GpuReading {
    pub vram_used_bytes: Option<u64>,
    pub vram_total_bytes: Option<u64>,
    /// VRAM minus pinned and reserved memory (ioctl heap info).
    pub vram_usable_bytes: Option<u64>,
    pub vis_vram_used_bytes: Option<u64>,
    pub vis_vram_total_bytes: Option<u64>,
    pub gtt_used_bytes: Option<u64>,
    pub gtt_total_bytes: Option<u64>,
    /// GTT minus pinned memory (ioctl heap info); on an APU the GPU-usable capacity.
    pub gtt_usable_bytes: Option<u64>,
    /// Graphics/compute engine busy, 0–100.
    pub gpu_busy_percent: Option<f64>,
    /// Memory controller busy, 0–100.
    pub mem_busy_percent: Option<f64>,
    pub temp_edge_c: Option<f64>,
    pub temp_junction_c: Option<f64>,
    pub temp_mem_c: Option<f64>,
    /// Average power over the device's own window, else instantaneous power (W). On an APU
    /// this is the whole SoC, CPU included.
    pub power_w: Option<f64>,
    /// Cumulative energy counter (J), where the device has one (exact average power between
    /// two readings).
    pub energy_j: Option<f64>,
    pub sclk_mhz: Option<f64>,
    pub mclk_mhz: Option<f64>,
}

impl GpuReading {
    /// Fills every field that is `None` here from `other` (readers are merged in order of
    /// preference: the first one that has a value wins).
    pub fn fill_from(&mut self, other: &GpuReading) {
        macro_rules! fill {
            ($($f:ident),*) => { $( if self.$f.is_none() { self.$f = other.$f; } )* };
        }
        fill!(
            vram_used_bytes,
            vram_total_bytes,
            vram_usable_bytes,
            vis_vram_used_bytes,
            vis_vram_total_bytes,
            gtt_used_bytes,
            gtt_total_bytes,
            gtt_usable_bytes,
            gpu_busy_percent,
            mem_busy_percent,
            temp_edge_c,
            temp_junction_c,
            temp_mem_c,
            power_w,
            energy_j,
            sclk_mhz,
            mclk_mhz
        );
    }
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

#[cfg(test)]
impl GpuInfo {
    /// A Strix Halo APU read through amdgpu sysfs, hwmon and fdinfo: the device the unit tests
    /// of the monitor, the exposition and doctor describe.
    pub fn strix_halo() -> GpuInfo {
        GpuInfo {
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
            notes: Vec::new(),
        }
    }
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

/// GPU memory of one process, summed over its clients, bytes. Also the trace's
/// `gpu_processes` entry, read back with a missing figure as 0.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessGpu {
    pub pid: u32,
    #[serde(default)]
    pub vram_bytes: u64,
    #[serde(default)]
    pub gtt_bytes: u64,
    /// KFD (ROCm) VRAM, which DRM fdinfo does not show for compute queues.
    #[serde(default)]
    pub kfd_vram_bytes: u64,
    /// Sum of engine busy ns over clients (for busy % between two readings).
    #[serde(default)]
    pub engine_ns: u64,
}
