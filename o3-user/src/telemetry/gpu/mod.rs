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

pub use crate::trace::gpu::GpuReading;

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
