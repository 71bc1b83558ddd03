//! NVIDIA GPUs through NVML (libnvidia-ml.so.1, loaded at run time: an absent library means
//! "no NVIDIA devices", not an error). Memory, temperature, utilization and power every read;
//! the cumulative energy counter gives exact average power; per-process memory is polled less
//! often by the caller (it takes a driver lock and can cost milliseconds).

use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::Nvml;

use super::GpuReading;

/// An initialised NVML with at least one device.
pub struct Nvidia {
    nvml: Nvml,
    count: u32,
}

/// A device's identity.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NvidiaDevice {
    pub index: u32,
    pub name: String,
    pub pci_slot: Option<String>,
}

impl Nvidia {
    /// `Ok(None)` when there is no NVIDIA driver or no device; `Err` only for a broken driver.
    pub fn init() -> Result<Option<Nvidia>, String> {
        let nvml = match Nvml::init() {
            Ok(n) => n,
            Err(nvml_wrapper::error::NvmlError::LibloadingError(_)) => return Ok(None),
            Err(nvml_wrapper::error::NvmlError::DriverNotLoaded) => return Ok(None),
            Err(e) => return Err(format!("NVML: {e}")),
        };
        let count = nvml.device_count().map_err(|e| format!("NVML: {e}"))?;
        Ok((count > 0).then_some(Nvidia { nvml, count }))
    }

    pub fn devices(&self) -> Vec<NvidiaDevice> {
        (0..self.count)
            .filter_map(|i| {
                let d = self.nvml.device_by_index(i).ok()?;
                Some(NvidiaDevice {
                    index: i,
                    name: d.name().unwrap_or_else(|_| "NVIDIA GPU".into()),
                    pci_slot: d.pci_info().ok().map(|p| p.bus_id),
                })
            })
            .collect()
    }

    /// One device's reading; a failing query leaves its field `None`.
    pub fn read(&self, index: u32) -> GpuReading {
        let mut r = GpuReading::default();
        let Ok(d) = self.nvml.device_by_index(index) else {
            return r;
        };
        if let Ok(m) = d.memory_info() {
            r.vram_total_bytes = Some(m.total);
            r.vram_used_bytes = Some(m.used);
        }
        r.temp_edge_c = d.temperature(TemperatureSensor::Gpu).ok().map(f64::from);
        if let Ok(u) = d.utilization_rates() {
            r.gpu_busy_percent = Some(f64::from(u.gpu));
            r.mem_busy_percent = Some(f64::from(u.memory));
        }
        r.power_w = d.power_usage().ok().map(|mw| f64::from(mw) / 1000.0);
        r.energy_j = d
            .total_energy_consumption()
            .ok()
            .map(|mj| mj as f64 / 1000.0);
        r
    }

    /// (pid, used bytes) of compute processes on a device.
    pub fn processes(&self, index: u32) -> Vec<(u32, u64)> {
        let Ok(d) = self.nvml.device_by_index(index) else {
            return Vec::new();
        };
        d.running_compute_processes()
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                let used = match p.used_gpu_memory {
                    UsedGpuMemory::Used(b) => b,
                    UsedGpuMemory::Unavailable => 0,
                };
                (p.pid, used)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_library_means_no_devices() {
        // This test machine has no NVIDIA driver: init must say "none", not fail.
        if std::path::Path::new("/dev/nvidiactl").exists() {
            eprintln!("skipped: an NVIDIA driver is present");
            return;
        }
        assert!(matches!(Nvidia::init(), Ok(None)));
    }
}
