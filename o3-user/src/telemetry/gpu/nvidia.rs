//! NVIDIA GPUs through NVML (libnvidia-ml.so.1, loaded at run time: an absent library means
//! "no NVIDIA devices", not an error). Memory, temperature, utilization, power and clocks every
//! read; the cumulative energy counter gives exact average power; per-process memory is polled
//! less often by the caller (it takes a driver lock and can cost milliseconds).
//!
//! Every NVML call goes through the [`NvmlApi`] seam, in NVML's own units and types, so the
//! conversion into a [`GpuReading`] runs on a fake device in tests; [`RealNvml`] is the only
//! implementation that loads the library.

use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::device::{MemoryInfo, ProcessInfo, Utilization};
use nvml_wrapper::Nvml;
use thiserror::Error;

use super::GpuReading;

/// NVML is there but does not work (a broken or mismatched driver).
#[derive(Debug, Error)]
#[error("NVML: {0}")]
pub struct NvidiaError(#[from] pub NvmlError);

/// The NVML calls o3 makes, each on the device with NVML index `index`. Values are NVML's:
/// bytes, °C, percent, milliwatts, millijoules, MHz.
pub trait NvmlApi: Send {
    fn device_count(&self) -> Result<u32, NvmlError>;
    /// Whether NVML gives a handle for the device (`nvmlDeviceGetHandleByIndex`): it fails
    /// for a device that is lost or that o3 may not use.
    fn handle(&self, index: u32) -> Result<(), NvmlError>;
    fn name(&self, index: u32) -> Result<String, NvmlError>;
    /// `nvmlPciInfo_t.busId`, e.g. `00000000:19:00.0`.
    fn pci_bus_id(&self, index: u32) -> Result<String, NvmlError>;
    fn memory_info(&self, index: u32) -> Result<MemoryInfo, NvmlError>;
    fn temperature(&self, index: u32, sensor: TemperatureSensor) -> Result<u32, NvmlError>;
    fn utilization_rates(&self, index: u32) -> Result<Utilization, NvmlError>;
    /// Milliwatts.
    fn power_usage(&self, index: u32) -> Result<u32, NvmlError>;
    /// Millijoules since the driver was loaded.
    fn total_energy_consumption(&self, index: u32) -> Result<u64, NvmlError>;
    fn running_compute_processes(&self, index: u32) -> Result<Vec<ProcessInfo>, NvmlError>;
}

/// NVML through nvml-wrapper. Each call looks the device up by index (a table lookup in the
/// library, next to the driver call the query itself makes).
pub struct RealNvml {
    nvml: Nvml,
}

impl RealNvml {
    /// Loads libnvidia-ml.so.1 and initialises it.
    pub fn init() -> Result<RealNvml, NvmlError> {
        Nvml::init().map(|nvml| RealNvml { nvml })
    }

    /// [`RealNvml::init`] boxed, as [`Nvidia::open`] and the GPU source take it.
    pub fn init_boxed() -> Result<Box<dyn NvmlApi>, NvmlError> {
        RealNvml::init().map(|n| Box::new(n) as Box<dyn NvmlApi>)
    }
}

impl NvmlApi for RealNvml {
    fn device_count(&self) -> Result<u32, NvmlError> {
        self.nvml.device_count()
    }
    fn handle(&self, index: u32) -> Result<(), NvmlError> {
        self.nvml.device_by_index(index).map(drop)
    }
    fn name(&self, index: u32) -> Result<String, NvmlError> {
        self.nvml.device_by_index(index)?.name()
    }
    fn pci_bus_id(&self, index: u32) -> Result<String, NvmlError> {
        Ok(self.nvml.device_by_index(index)?.pci_info()?.bus_id)
    }
    fn memory_info(&self, index: u32) -> Result<MemoryInfo, NvmlError> {
        self.nvml.device_by_index(index)?.memory_info()
    }
    fn temperature(&self, index: u32, sensor: TemperatureSensor) -> Result<u32, NvmlError> {
        self.nvml.device_by_index(index)?.temperature(sensor)
    }
    fn utilization_rates(&self, index: u32) -> Result<Utilization, NvmlError> {
        self.nvml.device_by_index(index)?.utilization_rates()
    }
    fn power_usage(&self, index: u32) -> Result<u32, NvmlError> {
        self.nvml.device_by_index(index)?.power_usage()
    }
    fn total_energy_consumption(&self, index: u32) -> Result<u64, NvmlError> {
        self.nvml.device_by_index(index)?.total_energy_consumption()
    }
    fn running_compute_processes(&self, index: u32) -> Result<Vec<ProcessInfo>, NvmlError> {
        self.nvml
            .device_by_index(index)?
            .running_compute_processes()
    }
}

/// An initialised NVML with at least one device.
pub struct Nvidia {
    api: Box<dyn NvmlApi>,
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
    pub fn init() -> Result<Option<Nvidia>, NvidiaError> {
        Nvidia::open(RealNvml::init_boxed())
    }

    /// [`Nvidia::init`] on the outcome of initialising an NVML: no library or no loaded
    /// driver is "no devices", any other failure is an error.
    pub fn open(init: Result<Box<dyn NvmlApi>, NvmlError>) -> Result<Option<Nvidia>, NvidiaError> {
        let api = match init {
            Ok(api) => api,
            Err(NvmlError::LibloadingError(_) | NvmlError::DriverNotLoaded) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let count = api.device_count()?;
        Ok((count > 0).then_some(Nvidia { api, count }))
    }

    pub fn devices(&self) -> Vec<NvidiaDevice> {
        (0..self.count)
            .filter_map(|i| {
                self.api.handle(i).ok()?;
                Some(NvidiaDevice {
                    index: i,
                    name: self.api.name(i).unwrap_or_else(|_| "NVIDIA GPU".into()),
                    pci_slot: self.api.pci_bus_id(i).ok(),
                })
            })
            .collect()
    }

    /// One device's reading; a failing query leaves its field `None`.
    pub fn read(&self, index: u32) -> GpuReading {
        let api = &*self.api;
        let mut r = GpuReading::default();
        if let Ok(m) = api.memory_info(index) {
            r.vram_total_bytes = Some(m.total);
            r.vram_used_bytes = Some(m.used);
        }
        r.temp_edge_c = api
            .temperature(index, TemperatureSensor::Gpu)
            .ok()
            .map(f64::from);
        if let Ok(u) = api.utilization_rates(index) {
            r.gpu_busy_percent = Some(f64::from(u.gpu));
            r.mem_busy_percent = Some(f64::from(u.memory));
        }
        r.power_w = api.power_usage(index).ok().map(|mw| f64::from(mw) / 1000.0);
        r.energy_j = api
            .total_energy_consumption(index)
            .ok()
            .map(|mj| mj as f64 / 1000.0);
        r
    }

    /// (pid, used bytes) of compute processes on a device; a process whose use NVML cannot
    /// tell counts 0.
    pub fn processes(&self, index: u32) -> Vec<(u32, u64)> {
        self.api
            .running_compute_processes(index)
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

/// A scripted NVML for tests (here and in the GPU source's).
#[cfg(test)]
pub(crate) mod fake {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// One device's answers; `None` answers `NotSupported`, as NVML does for a query the
    /// device or its mode lacks.
    #[derive(Clone)]
    pub struct FakeDevice {
        pub name: &'static str,
        pub bus_id: &'static str,
        pub memory: Option<MemoryInfo>,
        pub temp_c: Option<u32>,
        pub utilization: Option<(u32, u32)>,
        pub power_mw: Option<u32>,
        pub energy_mj: Option<u64>,
        pub processes: Vec<(u32, UsedGpuMemory)>,
    }

    /// An H100 80GB HBM3 under load, with the figures of the nvidia-smi fixture
    /// (tests/fixtures/smi/nvidia_smi_2gpu.csv, GPU 0) in NVML's units: memory in bytes
    /// (nvidia-smi prints NVML's bytes in MiB: 81559 MiB total, 71243 MiB used), power
    /// 612450 mW (612.45 W), clocks SM 1980 / memory 2619 MHz, 67 °C. The shapes are NVML's:
    /// `nvmlMemory_v2_t` (version word `NVML_STRUCT_VERSION(Memory, 2)`, a reservation kept
    /// outside `used`; the 579 MiB here is made up), a bus id with NVML's 8-digit domain, and a
    /// process whose use NVML cannot tell. The energy counter value is made up.
    pub fn h100() -> FakeDevice {
        let total = 81_559 * MIB;
        let reserved = 579 * MIB;
        let used = 71_243 * MIB;
        FakeDevice {
            name: "NVIDIA H100 80GB HBM3",
            bus_id: "00000000:19:00.0",
            memory: Some(MemoryInfo {
                free: total - reserved - used,
                reserved,
                total,
                used,
                version: 0x0200_0028,
            }),
            temp_c: Some(67),
            utilization: Some((98, 61)),
            power_mw: Some(612_450),
            energy_mj: Some(7_324_518_003),
            processes: vec![
                (4242, UsedGpuMemory::Used(70_656 * MIB)),
                (4243, UsedGpuMemory::Unavailable),
            ],
        }
    }

    /// An A100-SXM4-40GB in MIG mode (GPU 1 of the same fixture): utilization is not
    /// supported there, and this one has no energy counter either.
    pub fn a100_mig() -> FakeDevice {
        let total = 40_960 * MIB;
        FakeDevice {
            name: "NVIDIA A100-SXM4-40GB",
            bus_id: "00000000:3B:00.0",
            memory: Some(MemoryInfo {
                free: total - 37 * MIB,
                reserved: 0,
                total,
                used: 37 * MIB,
                version: 0x0200_0028,
            }),
            temp_c: Some(31),
            utilization: None,
            power_mw: Some(57_120),
            energy_mj: None,
            processes: Vec::new(),
        }
    }

    pub struct FakeNvml {
        pub devices: Vec<FakeDevice>,
    }

    impl FakeNvml {
        /// Boxed, as [`Nvidia::open`] takes an initialised NVML.
        pub fn boxed(devices: Vec<FakeDevice>) -> Result<Box<dyn NvmlApi>, NvmlError> {
            Ok(Box::new(FakeNvml { devices }))
        }

        fn dev(&self, index: u32) -> Result<&FakeDevice, NvmlError> {
            self.devices
                .get(index as usize)
                .ok_or(NvmlError::InvalidArg)
        }
    }

    fn answer<T: Clone>(v: &Option<T>) -> Result<T, NvmlError> {
        v.clone().ok_or(NvmlError::NotSupported)
    }

    impl NvmlApi for FakeNvml {
        fn device_count(&self) -> Result<u32, NvmlError> {
            Ok(self.devices.len() as u32)
        }
        fn handle(&self, index: u32) -> Result<(), NvmlError> {
            self.dev(index).map(drop)
        }
        fn name(&self, index: u32) -> Result<String, NvmlError> {
            Ok(self.dev(index)?.name.to_string())
        }
        fn pci_bus_id(&self, index: u32) -> Result<String, NvmlError> {
            Ok(self.dev(index)?.bus_id.to_string())
        }
        fn memory_info(&self, index: u32) -> Result<MemoryInfo, NvmlError> {
            answer(&self.dev(index)?.memory)
        }
        fn temperature(&self, index: u32, sensor: TemperatureSensor) -> Result<u32, NvmlError> {
            assert_eq!(sensor, TemperatureSensor::Gpu, "the only sensor NVML has");
            answer(&self.dev(index)?.temp_c)
        }
        fn utilization_rates(&self, index: u32) -> Result<Utilization, NvmlError> {
            answer(&self.dev(index)?.utilization).map(|(gpu, memory)| Utilization { gpu, memory })
        }
        fn power_usage(&self, index: u32) -> Result<u32, NvmlError> {
            answer(&self.dev(index)?.power_mw)
        }
        fn total_energy_consumption(&self, index: u32) -> Result<u64, NvmlError> {
            answer(&self.dev(index)?.energy_mj)
        }
        fn running_compute_processes(&self, index: u32) -> Result<Vec<ProcessInfo>, NvmlError> {
            Ok(self
                .dev(index)?
                .processes
                .iter()
                .map(|(pid, used)| ProcessInfo {
                    pid: *pid,
                    used_gpu_memory: used.clone(),
                    gpu_instance_id: None,
                    compute_instance_id: None,
                })
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{a100_mig, h100, FakeNvml};
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn absent_library_means_no_devices() {
        // This test machine has no NVIDIA driver: init must say "none", not fail.
        if std::path::Path::new("/dev/nvidiactl").exists() {
            eprintln!("skipped: an NVIDIA driver is present");
            return;
        }
        assert!(matches!(Nvidia::init(), Ok(None)));
    }

    #[test]
    fn init_outcomes() {
        assert!(matches!(
            Nvidia::open(Err(NvmlError::DriverNotLoaded)),
            Ok(None)
        ));
        assert!(matches!(Nvidia::open(FakeNvml::boxed(vec![])), Ok(None)));
        // A driver that is there but broken is an error, said as NVML's.
        let err = Nvidia::open(Err(NvmlError::Unknown)).err().unwrap();
        assert!(err.to_string().starts_with("NVML: "), "{err}");
        assert!(Nvidia::open(FakeNvml::boxed(vec![h100()]))
            .unwrap()
            .is_some());
    }

    #[test]
    fn devices_are_named_with_their_pci_slot() {
        let nv = Nvidia::open(FakeNvml::boxed(vec![h100(), a100_mig()]))
            .unwrap()
            .unwrap();
        let d = nv.devices();
        assert_eq!(
            d,
            vec![
                NvidiaDevice {
                    index: 0,
                    name: "NVIDIA H100 80GB HBM3".into(),
                    pci_slot: Some("00000000:19:00.0".into()),
                },
                NvidiaDevice {
                    index: 1,
                    name: "NVIDIA A100-SXM4-40GB".into(),
                    pci_slot: Some("00000000:3B:00.0".into()),
                },
            ]
        );
    }

    #[test]
    fn an_h100_reading_in_o3_units() {
        let nv = Nvidia::open(FakeNvml::boxed(vec![h100()]))
            .unwrap()
            .unwrap();
        let r = nv.read(0);
        // The same device as nvidia-smi's fixture line, read without the MiB rounding.
        assert_eq!(r.vram_total_bytes, Some(85_520_809_984));
        assert_eq!(r.vram_used_bytes, Some(71_243 * MIB));
        assert_eq!(r.gpu_busy_percent, Some(98.0));
        assert_eq!(r.mem_busy_percent, Some(61.0));
        assert_eq!(r.temp_edge_c, Some(67.0));
        assert_eq!(r.power_w, Some(612.45));
        assert_eq!(r.energy_j, Some(7_324_518.003));
        // Clocks come from nvidia-smi's fallback only; NVML's path reads none.
        assert_eq!((r.sclk_mhz, r.mclk_mhz), (None, None));
        // NVML has no junction, memory or GTT figures.
        assert_eq!((r.temp_junction_c, r.temp_mem_c), (None, None));
        assert_eq!((r.gtt_total_bytes, r.vram_usable_bytes), (None, None));
    }

    #[test]
    fn unsupported_queries_are_not_available_not_zero() {
        let nv = Nvidia::open(FakeNvml::boxed(vec![h100(), a100_mig()]))
            .unwrap()
            .unwrap();
        let r = nv.read(1);
        assert_eq!(r.vram_used_bytes, Some(37 * MIB));
        assert_eq!((r.gpu_busy_percent, r.mem_busy_percent), (None, None));
        assert_eq!(r.energy_j, None);
        assert_eq!(r.power_w, Some(57.12));
        // A device index NVML does not have reads as nothing at all.
        assert_eq!(nv.read(7), GpuReading::default());
        assert!(nv.processes(7).is_empty());
    }

    #[test]
    fn process_memory_unavailable_counts_zero() {
        let nv = Nvidia::open(FakeNvml::boxed(vec![h100()]))
            .unwrap()
            .unwrap();
        assert_eq!(nv.processes(0), vec![(4242, 70_656 * MIB), (4243, 0)]);
    }
}
