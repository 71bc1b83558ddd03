//! `DRM_IOCTL_AMDGPU_INFO` on the render node: memory heaps and sensors with one syscall per
//! value and no text parsing. Preferred over sysfs where it works. All device access goes
//! through the [`DrmInfo`] seam, so the decoding runs on a fake device in tests.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::ioctl::ioctl_num_type;
use thiserror::Error;

use super::GpuReading;

/// `struct drm_amdgpu_info` (include/uapi/drm/amdgpu_drm.h): 32 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DrmAmdgpuInfo {
    pub return_pointer: u64,
    pub return_size: u32,
    pub query: u32,
    /// The union; for AMDGPU_INFO_SENSOR its first u32 is the sensor type.
    pub union: [u32; 4],
}

/// `DRM_IOCTL_BASE`.
const DRM_IOCTL_BASE: u8 = b'd';
/// `DRM_COMMAND_BASE + DRM_AMDGPU_INFO`.
const DRM_AMDGPU_INFO_NR: u8 = 0x40 + 0x05;

/// `_IOW('d', DRM_COMMAND_BASE + DRM_AMDGPU_INFO, struct drm_amdgpu_info)` (0x40206445).
pub const DRM_IOCTL_AMDGPU_INFO: ioctl_num_type = nix::request_code_write!(
    DRM_IOCTL_BASE,
    DRM_AMDGPU_INFO_NR,
    std::mem::size_of::<DrmAmdgpuInfo>()
);

nix::ioctl_write_ptr!(
    /// `DRM_IOCTL_AMDGPU_INFO`: the kernel reads the struct and writes the answer to its
    /// `return_pointer`.
    amdgpu_info,
    DRM_IOCTL_BASE,
    DRM_AMDGPU_INFO_NR,
    DrmAmdgpuInfo
);

pub const AMDGPU_INFO_VRAM_USAGE: u32 = 0x10;
pub const AMDGPU_INFO_GTT_USAGE: u32 = 0x11;
pub const AMDGPU_INFO_VRAM_GTT: u32 = 0x14;
pub const AMDGPU_INFO_VIS_VRAM_USAGE: u32 = 0x17;
pub const AMDGPU_INFO_MEMORY: u32 = 0x19;
pub const AMDGPU_INFO_SENSOR: u32 = 0x1d;

pub const SENSOR_GFX_SCLK: u32 = 1;
pub const SENSOR_GFX_MCLK: u32 = 2;
pub const SENSOR_GPU_TEMP: u32 = 3;
pub const SENSOR_GPU_LOAD: u32 = 4;
pub const SENSOR_GPU_AVG_POWER: u32 = 5;
pub const SENSOR_GPU_INPUT_POWER: u32 = 0xc;

/// One query against a device: fills `out` (the kernel writes at most `out.len()` bytes).
pub trait DrmInfo: Send {
    fn query(&self, query: u32, sensor: u32, out: &mut [u8]) -> io::Result<()>;
}

/// An opened render node.
pub struct RenderNode {
    fd: OwnedFd,
}

/// The render node would not open.
#[derive(Debug, Error)]
pub enum RenderNodeError {
    #[error("permission denied opening {}: add your user to the `{group}` group (owner of the node) and log in again", path.display())]
    PermissionDenied { path: PathBuf, group: String },
    #[error("opening {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl RenderNode {
    /// Opens the node; permission denied names the group that owns it.
    pub fn open(path: &Path) -> Result<RenderNode, RenderNodeError> {
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
        {
            Ok(f) => Ok(RenderNode { fd: f.into() }),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                Err(RenderNodeError::PermissionDenied {
                    path: path.to_path_buf(),
                    group: owner_group(path).unwrap_or_else(|| "render".into()),
                })
            }
            Err(source) => Err(RenderNodeError::Open {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

fn owner_group(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let gid = std::fs::metadata(path).ok()?.gid();
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _pw = f.next()?;
        (f.next()?.parse::<u32>().ok()? == gid).then(|| name.to_string())
    })
}

impl DrmInfo for RenderNode {
    fn query(&self, query: u32, sensor: u32, out: &mut [u8]) -> io::Result<()> {
        let info = DrmAmdgpuInfo {
            return_pointer: out.as_mut_ptr() as u64,
            return_size: out.len() as u32,
            query,
            union: [sensor, 0, 0, 0],
        };
        // SAFETY: DRM_IOCTL_AMDGPU_INFO reads `info` and writes at most `return_size` bytes
        // to `return_pointer`, which points at `out`, alive and exclusively borrowed for the
        // call; the fd is an open render node owned by `self`.
        unsafe { amdgpu_info(self.fd.as_raw_fd(), &raw const info) }?;
        Ok(())
    }
}

/// One heap of `struct drm_amdgpu_memory_info`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Heap {
    pub total: u64,
    pub usable: u64,
    pub usage: u64,
    pub max_allocation: u64,
}

/// `struct drm_amdgpu_memory_info`: VRAM, CPU-accessible VRAM, GTT.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryInfo {
    pub vram: Heap,
    pub cpu_accessible_vram: Heap,
    pub gtt: Heap,
}

/// Decodes the 96-byte memory info (three heaps of four u64).
pub fn decode_memory(b: &[u8; 96]) -> MemoryInfo {
    let u = |i: usize| u64::from_ne_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let heap = |h: usize| Heap {
        total: u(h * 4),
        usable: u(h * 4 + 1),
        usage: u(h * 4 + 2),
        max_allocation: u(h * 4 + 3),
    };
    MemoryInfo {
        vram: heap(0),
        cpu_accessible_vram: heap(1),
        gtt: heap(2),
    }
}

/// The ioctl reader of one device.
pub struct AmdIoctl {
    dev: Box<dyn DrmInfo>,
    /// Sensors that answered ENOENT/EINVAL once are not asked again.
    missing: Vec<u32>,
}

impl AmdIoctl {
    pub fn new(dev: Box<dyn DrmInfo>) -> AmdIoctl {
        AmdIoctl {
            dev,
            missing: Vec::new(),
        }
    }

    /// The memory heaps, or an error if this device does not answer the query.
    pub fn memory(&self) -> io::Result<MemoryInfo> {
        let mut b = [0u8; 96];
        self.dev.query(AMDGPU_INFO_MEMORY, 0, &mut b)?;
        Ok(decode_memory(&b))
    }

    fn sensor(&mut self, t: u32) -> Option<u32> {
        if self.missing.contains(&t) {
            return None;
        }
        let mut b = [0u8; 4];
        match self.dev.query(AMDGPU_INFO_SENSOR, t, &mut b) {
            Ok(()) => Some(u32::from_ne_bytes(b)),
            // ENOENT: power management is off or the sensor does not exist on this ASIC;
            // "not available", never zero.
            Err(_) => {
                self.missing.push(t);
                None
            }
        }
    }

    /// Memory into `r`; returns false if the device does not answer (fall back to sysfs).
    pub fn read_memory(&mut self, r: &mut GpuReading) -> bool {
        let Ok(m) = self.memory() else {
            return false;
        };
        r.vram_total_bytes = Some(m.vram.total);
        r.vram_usable_bytes = Some(m.vram.usable);
        r.vram_used_bytes = Some(m.vram.usage);
        r.vis_vram_total_bytes = Some(m.cpu_accessible_vram.total);
        r.vis_vram_used_bytes = Some(m.cpu_accessible_vram.usage);
        r.gtt_total_bytes = Some(m.gtt.total);
        r.gtt_usable_bytes = Some(m.gtt.usable);
        r.gtt_used_bytes = Some(m.gtt.usage);
        true
    }

    /// Sensors into `r` (fields whose sensor is not available stay `None`).
    pub fn read_sensors(&mut self, r: &mut GpuReading) {
        r.sclk_mhz = self.sensor(SENSOR_GFX_SCLK).map(f64::from);
        r.mclk_mhz = self.sensor(SENSOR_GFX_MCLK).map(f64::from);
        r.temp_edge_c = self.sensor(SENSOR_GPU_TEMP).map(|m| f64::from(m) / 1000.0);
        r.gpu_busy_percent = self
            .sensor(SENSOR_GPU_LOAD)
            .filter(|v| *v <= 100)
            .map(f64::from);
        // The kernel returns whole watts (it drops the 8 fractional bits of the SMU value).
        r.power_w = self
            .sensor(SENSOR_GPU_AVG_POWER)
            .or_else(|| self.sensor(SENSOR_GPU_INPUT_POWER))
            .map(f64::from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn struct_layout_matches_the_uapi_header() {
        assert_eq!(size_of::<DrmAmdgpuInfo>(), 32);
        assert_eq!(offset_of!(DrmAmdgpuInfo, return_pointer), 0);
        assert_eq!(offset_of!(DrmAmdgpuInfo, return_size), 8);
        assert_eq!(offset_of!(DrmAmdgpuInfo, query), 12);
        assert_eq!(offset_of!(DrmAmdgpuInfo, union), 16);
        // _IOW('d', 0x45, 32 bytes), as the header's macro computes it.
        assert_eq!(DRM_IOCTL_AMDGPU_INFO, 0x4020_6445);
    }

    /// A device answering with the documented structs: memory heaps of a Strix Halo APU and
    /// a sensor set where power management reports no input power.
    struct FakeDevice {
        sensors: Vec<(u32, u32)>,
    }

    impl DrmInfo for FakeDevice {
        fn query(&self, query: u32, sensor: u32, out: &mut [u8]) -> io::Result<()> {
            match query {
                AMDGPU_INFO_MEMORY => {
                    assert_eq!(out.len(), 96);
                    let vals: [u64; 12] = [
                        512 << 20,
                        400 << 20,
                        100 << 20,
                        400 << 20,
                        512 << 20,
                        400 << 20,
                        100 << 20,
                        400 << 20,
                        120 << 30,
                        119 << 30,
                        40 << 30,
                        119 << 30,
                    ];
                    for (i, v) in vals.iter().enumerate() {
                        out[i * 8..i * 8 + 8].copy_from_slice(&v.to_ne_bytes());
                    }
                    Ok(())
                }
                AMDGPU_INFO_SENSOR => match self.sensors.iter().find(|(t, _)| *t == sensor) {
                    Some((_, v)) => {
                        out.copy_from_slice(&v.to_ne_bytes());
                        Ok(())
                    }
                    None => Err(nix::errno::Errno::ENOENT.into()),
                },
                _ => Err(nix::errno::Errno::EINVAL.into()),
            }
        }
    }

    #[test]
    fn decodes_memory_and_sensors_through_the_seam() {
        let dev = FakeDevice {
            sensors: vec![
                (SENSOR_GFX_SCLK, 2900),
                (SENSOR_GFX_MCLK, 1000),
                (SENSOR_GPU_TEMP, 48_500),
                (SENSOR_GPU_LOAD, 41),
                (SENSOR_GPU_AVG_POWER, 65),
            ],
        };
        let mut io = AmdIoctl::new(Box::new(dev));
        let mut r = GpuReading::default();
        assert!(io.read_memory(&mut r));
        io.read_sensors(&mut r);
        assert_eq!(r.vram_total_bytes, Some(512 << 20));
        assert_eq!(r.vram_used_bytes, Some(100 << 20));
        assert_eq!(r.gtt_total_bytes, Some(120 << 30));
        assert_eq!(r.gtt_usable_bytes, Some(119 << 30));
        assert_eq!(r.gtt_used_bytes, Some(40 << 30));
        assert_eq!(r.sclk_mhz, Some(2900.0));
        assert_eq!(r.temp_edge_c, Some(48.5));
        assert_eq!(r.gpu_busy_percent, Some(41.0));
        assert_eq!(r.power_w, Some(65.0));
    }

    #[test]
    fn enoent_sensors_are_missing_not_zero_and_not_asked_again() {
        let dev = FakeDevice { sensors: vec![] };
        let mut io = AmdIoctl::new(Box::new(dev));
        let mut r = GpuReading::default();
        io.read_sensors(&mut r);
        assert_eq!(r, GpuReading::default());
        assert_eq!(io.missing.len(), 6);
        io.read_sensors(&mut r);
        assert_eq!(io.missing.len(), 6);
    }

    #[test]
    fn permission_denied_names_a_group() {
        // A node we cannot open as an unprivileged user is hard to create portably; check the
        // message for a missing node instead, and the group lookup on a file we know.
        let e = RenderNode::open(Path::new("/nonexistent/renderD128"))
            .err()
            .unwrap();
        assert!(matches!(e, RenderNodeError::Open { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/renderD128"), "{e}");
        let denied = RenderNodeError::PermissionDenied {
            path: "/dev/dri/renderD128".into(),
            group: "render".into(),
        };
        assert!(
            denied.to_string().contains("to the `render` group"),
            "{denied}"
        );
        assert!(owner_group(Path::new("/etc/passwd")).is_some());
    }
}
