//! GPU telemetry: discovery of AMD (amdgpu) and NVIDIA devices and the readers that fill a
//! [`GpuReading`] per device: amdgpu sysfs, the amdgpu DRM info ioctl, the binary
//! `gpu_metrics` table, per-process fdinfo and KFD, NVML, and SMI tools as a last resort.

pub mod amd;
pub mod amd_ioctl;
pub mod fdinfo;
pub mod gpu_metrics;
pub mod nvidia;
pub mod smi;
pub mod source;

use serde::Serialize;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_prefers_the_first_reader() {
        let mut a = GpuReading {
            vram_used_bytes: Some(1),
            ..GpuReading::default()
        };
        let b = GpuReading {
            vram_used_bytes: Some(2),
            temp_edge_c: Some(40.0),
            ..GpuReading::default()
        };
        a.fill_from(&b);
        assert_eq!(a.vram_used_bytes, Some(1));
        assert_eq!(a.temp_edge_c, Some(40.0));
    }
}
