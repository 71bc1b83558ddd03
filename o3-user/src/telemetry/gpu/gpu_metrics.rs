//! Decoder for amdgpu's binary `gpu_metrics` table (`/sys/class/drm/cardN/device/gpu_metrics`).
//!
//! The file is one C struct from the kernel header
//! `drivers/gpu/drm/amd/include/kgd_pp_interface.h`, little endian, laid out with natural
//! alignment (no packing). It starts with `struct metrics_table_header { u16 structure_size;
//! u8 format_revision; u8 content_revision; }`; the revisions select the struct:
//!
//! | format | structs | who emits them |
//! |---|---|---|
//! | 1 | `gpu_metrics_v1_0` .. `v1_3` | discrete GPUs (Vega20, Navi1x/2x/3x/4x, MI100/MI200) |
//! | 1 | `gpu_metrics_v1_4` .. `v1_8` | MI300-class parts: a new layout, *not* a `v1_3` prefix |
//! | 2 | `gpu_metrics_v2_0` .. `v2_4` | APUs (Renoir, Van Gogh, Rembrandt, Phoenix, ...) |
//! | 3 | `gpu_metrics_v3_0` | SMU 14 APUs (Strix Point, Krackan, Strix Halo) |
//!
//! Every field that the firmware does not fill is left at the kernel's initial 0xFF fill
//! (`smu_cmn_init_soft_gpu_metrics()`), so 0xFFFF / 0xFFFFFFFF / all-ones mean "not
//! supported" and decode to `None`.
//!
//! Units are not uniform across versions; the decoder follows what the kernel's own
//! `*_get_smu_metrics_data()` (the hwmon / `gpu_busy_percent` path) does with the very same
//! firmware fields that `*_get_gpu_metrics()` copies into the table:
//!
//! - **Temperatures.** v1.0–v1.3: whole degrees C (`smu_v13_0_0_get_gpu_metrics()` copies
//!   `AvgTemperature[]` unscaled and hwmon multiplies it by
//!   `SMU_TEMPERATURE_UNITS_PER_CENTIGRADES`; navi10/sienna_cichlid/arcturus likewise copy
//!   `TemperatureEdge` unscaled). v1.4+: degrees C (the struct says "Celsius"). v2.x and v3.0:
//!   centi-degrees C (`renoir_ppt.c`, `yellow_carp_ppt.c`, `smu_v14_0_0_ppt.c` divide
//!   `GfxTemperature` by 100; `gpu_metrics_v2_4` says "centi-Celsius").
//! - **Activity.** v1.x: percent. v2.x: centi-percent (`GfxActivity / 100` in
//!   renoir/yellow_carp/vangogh; amdgpu_top also divides v2.x by 100). v3.0: the struct
//!   comment says "[0-100]", but `smu_v14_0_0_get_smu_metrics_data()` computes
//!   `gpu_busy_percent` as `GfxActivity / 100`, i.e. the firmware reports centi-percent, and
//!   amdgpu_top (which shows v3.0 raw) gets > 100 % "Media" readings on a Radeon 8060S
//!   (Umio-Yasuno/amdgpu_top#139). So v3.0 is decoded as centi-percent, always. A value-based
//!   guess (">100 means centi") is deliberately not used: it would turn a centi-percent
//!   0.5 % idle reading (raw 50) into 50 %. Values above 100 % after scaling are `None`.
//! - **Socket power.** v1.0–v1.3 `average_socket_power`: W (hwmon shifts it `<< 8` for
//!   Q8.8 W). v1.4+ `curr_socket_power`: W. v3.0 (u32): mW (struct says "[mW]";
//!   `SocketPower / 1000` in smu_v14_0_0). v2.x (u16): mW on most firmware, but W on Renoir
//!   firmware ≥ 0x373200 (SMU 12.0.0) / ≥ 0x40000f (SMU 12.0.1), where
//!   `renoir_get_smu_metrics_data()` switches from `(CurrentSocketPower << 8) / 1000` to
//!   `CurrentSocketPower << 8`. The table carries no firmware version, so a v2.x raw value
//!   above [`V2_POWER_MAX_WATTS`] is taken as mW, anything else as W (no APU socket draws
//!   300 W, and no running APU socket draws under 0.3 W).
//! - **Clocks:** MHz everywhere. The average clock is preferred, the current clock is the
//!   fallback.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use thiserror::Error;

use super::GpuReading;

/// Values decoded from one `gpu_metrics` table, in SI-ish units. `None`: the table has no such
/// field, or the firmware marked it "not supported" (all ones), or the value is out of range.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuMetrics {
    pub format_revision: u8,
    pub content_revision: u8,
    pub temp_edge_c: Option<f64>,
    pub temp_hotspot_c: Option<f64>,
    pub temp_mem_c: Option<f64>,
    /// APU graphics temperature (`temperature_gfx`, v2.x / v3.0).
    pub temp_gfx_c: Option<f64>,
    /// APU SoC temperature (`temperature_soc`, v2.x / v3.0).
    pub temp_soc_c: Option<f64>,
    pub gfx_activity_percent: Option<f64>,
    pub umc_activity_percent: Option<f64>,
    /// Average socket power (W); `curr_socket_power` on v1.4+. On an APU: the whole SoC.
    pub socket_power_w: Option<f64>,
    /// Raw `energy_accumulator` counter, where the table has one (v1.x). Its unit is
    /// ASIC-dependent (v1.4+ document 15.259 µJ); it is not converted.
    pub energy_accumulator: Option<u64>,
    pub gfxclk_mhz: Option<f64>,
    pub uclk_mhz: Option<f64>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum MetricsError {
    /// Too short, truncated, or a `structure_size` that does not fit the bytes or the layout.
    #[error("gpu_metrics: {0}")]
    Malformed(String),
    /// A `format_revision` this decoder does not know.
    #[error("gpu_metrics: unsupported format {0}.{1}")]
    Unsupported(u8, u8),
}

/// `sizeof(struct metrics_table_header)`.
const HEADER_LEN: usize = 4;

/// Read buffer for [`read_once`]; the largest table (`gpu_metrics_v1_8`) is well below it.
const READ_BUF_LEN: usize = 4096;

/// v2.x `average_socket_power` above this raw value is mW, otherwise W (see module docs).
pub const V2_POWER_MAX_WATTS: u16 = 300;

/// Reads the file in ONE `pread` at offset 0 into a 4096-byte buffer and truncates it to the
/// bytes read. One call, no seek: some firmware returns zeros on a re-read after a seek, and
/// the kernel regenerates the table on every read at offset 0.
pub fn read_once(file: &File) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; READ_BUF_LEN];
    let n = loop {
        match file.read_at(&mut buf, 0) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => break r?,
        }
    };
    buf.truncate(n);
    Ok(buf)
}

/// Decodes a `gpu_metrics` table (see the module docs for versions and units).
pub fn decode(bytes: &[u8]) -> Result<GpuMetrics, MetricsError> {
    let header = Header::parse(bytes)?;
    let layout = Layout::for_revision(header.format_revision, header.content_revision).ok_or(
        MetricsError::Unsupported(header.format_revision, header.content_revision),
    )?;
    let size = usize::from(header.structure_size);
    if size > bytes.len() {
        return Err(MetricsError::Malformed(format!(
            "structure_size {size} but only {} bytes read",
            bytes.len()
        )));
    }
    let needed = layout.required_len();
    if size < needed {
        return Err(MetricsError::Malformed(format!(
            "structure_size {size} too small for {} ({needed} bytes needed)",
            layout.name
        )));
    }
    // Only the bytes the table claims are read; anything after it is ignored.
    let table = bytes.get(..size).unwrap_or_default();
    Ok(layout.decode(table, &header))
}

impl GpuMetrics {
    /// The values as a [`GpuReading`]. On APUs (no edge sensor) the graphics temperature
    /// stands in for the edge temperature.
    pub fn to_reading(&self) -> GpuReading {
        GpuReading {
            temp_edge_c: self.temp_edge_c.or(self.temp_gfx_c),
            temp_junction_c: self.temp_hotspot_c,
            temp_mem_c: self.temp_mem_c,
            gpu_busy_percent: self.gfx_activity_percent,
            mem_busy_percent: self.umc_activity_percent,
            power_w: self.socket_power_w,
            sclk_mhz: self.gfxclk_mhz,
            mclk_mhz: self.uclk_mhz,
            ..GpuReading::default()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checked little-endian reads: `None` when the field does not lie inside `b`.

fn u8_at(b: &[u8], off: usize) -> Option<u8> {
    b.get(off).copied()
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    let raw = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes(raw.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let raw = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes(raw.try_into().ok()?))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    let raw = b.get(off..off.checked_add(8)?)?;
    Some(u64::from_le_bytes(raw.try_into().ok()?))
}

/// `struct metrics_table_header`.
#[derive(Debug, Clone, Copy)]
struct Header {
    structure_size: u16,
    format_revision: u8,
    content_revision: u8,
}

impl Header {
    fn parse(b: &[u8]) -> Result<Self, MetricsError> {
        let short = || MetricsError::Malformed(format!("{} bytes, header needs 4", b.len()));
        let header = Header {
            structure_size: u16_at(b, 0).ok_or_else(short)?,
            format_revision: u8_at(b, 2).ok_or_else(short)?,
            content_revision: u8_at(b, 3).ok_or_else(short)?,
        };
        if usize::from(header.structure_size) < HEADER_LEN {
            return Err(MetricsError::Malformed(format!(
                "structure_size {} is smaller than the header",
                header.structure_size
            )));
        }
        Ok(header)
    }
}

// ---------------------------------------------------------------------------------------------
// Layouts: byte offsets of the fields o3 uses in each kernel struct. Computed with C layout
// rules and cross-checked with ctypes (tests/fixtures/amdgpu/make_gpu_metrics.py --offsets).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Width {
    U16,
    U32,
    U64,
}

impl Width {
    fn len(self) -> usize {
        match self {
            Width::U16 => 2,
            Width::U32 => 4,
            Width::U64 => 8,
        }
    }
}

/// One field: offset and width.
#[derive(Debug, Clone, Copy)]
struct Field(usize, Width);

impl Field {
    fn end(self) -> usize {
        self.0 + self.1.len()
    }

    /// The raw value, `None` if out of bounds or all ones ("not supported").
    fn read(self, b: &[u8]) -> Option<u64> {
        match self.1 {
            Width::U16 => u16_at(b, self.0).filter(|&v| v != u16::MAX).map(u64::from),
            Width::U32 => u32_at(b, self.0).filter(|&v| v != u32::MAX).map(u64::from),
            Width::U64 => u64_at(b, self.0).filter(|&v| v != u64::MAX),
        }
    }
}

const fn w16(off: usize) -> Option<Field> {
    Some(Field(off, Width::U16))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TempUnit {
    Celsius,
    CentiCelsius,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActivityUnit {
    Percent,
    CentiPercent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PowerUnit {
    Watts,
    MilliWatts,
    /// v2.x: mW or W depending on firmware; see [`V2_POWER_MAX_WATTS`].
    WattsOrMilliWatts,
}

/// Where one kernel struct keeps the fields o3 uses, and in which units.
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// Kernel struct name, for messages.
    name: &'static str,
    temp_edge: Option<Field>,
    temp_hotspot: Option<Field>,
    temp_mem: Option<Field>,
    temp_gfx: Option<Field>,
    temp_soc: Option<Field>,
    gfx_activity: Option<Field>,
    umc_activity: Option<Field>,
    socket_power: Option<Field>,
    energy: Option<Field>,
    /// Average gfxclk, then current gfxclk as the fallback.
    gfxclk: [Option<Field>; 2],
    uclk: [Option<Field>; 2],
    temp_unit: TempUnit,
    activity_unit: ActivityUnit,
    power_unit: PowerUnit,
}

/// Nothing: the base the layouts below fill in.
const EMPTY: Layout = Layout {
    name: "",
    temp_edge: None,
    temp_hotspot: None,
    temp_mem: None,
    temp_gfx: None,
    temp_soc: None,
    gfx_activity: None,
    umc_activity: None,
    socket_power: None,
    energy: None,
    gfxclk: [None, None],
    uclk: [None, None],
    temp_unit: TempUnit::Celsius,
    activity_unit: ActivityUnit::Percent,
    power_unit: PowerUnit::Watts,
};

/// `struct gpu_metrics_v1_0` (sizeof 80): `system_clock_counter` (u64) at 8 pushes the rest
/// down, and `energy_accumulator` is u32.
const V1_0: Layout = Layout {
    name: "gpu_metrics_v1_0",
    temp_edge: w16(16),
    temp_hotspot: w16(18),
    temp_mem: w16(20),
    gfx_activity: w16(28),
    umc_activity: w16(30),
    socket_power: w16(34),
    energy: Some(Field(36, Width::U32)),
    gfxclk: [w16(40), w16(54)],
    uclk: [w16(44), w16(58)],
    ..EMPTY
};

/// `struct gpu_metrics_v1_1` (sizeof 96); `v1_2` (104) and `v1_3` (120) only append fields.
const V1_1: Layout = Layout {
    name: "gpu_metrics_v1_1..v1_3",
    temp_edge: w16(4),
    temp_hotspot: w16(6),
    temp_mem: w16(8),
    gfx_activity: w16(16),
    umc_activity: w16(18),
    socket_power: w16(22),
    energy: Some(Field(24, Width::U64)),
    gfxclk: [w16(40), w16(54)],
    uclk: [w16(44), w16(58)],
    ..EMPTY
};

/// The prefix that `gpu_metrics_v1_4` .. `v1_8` (MI300 class) share: hotspot, mem, vrsoc,
/// `curr_socket_power`, gfx and umc activity at offsets 4..16. What follows differs per
/// revision (and `v1_6` changed between kernel releases), so only this is decoded for v1.6
/// and for revisions newer than this decoder.
const V1_4_PREFIX: Layout = Layout {
    name: "gpu_metrics_v1_4+ prefix",
    temp_hotspot: w16(4),
    temp_mem: w16(6),
    socket_power: w16(10),
    gfx_activity: w16(12),
    umc_activity: w16(14),
    ..EMPTY
};

/// `struct gpu_metrics_v1_4` (sizeof 288): `vcn_activity[4]` then `energy_accumulator`.
const V1_4: Layout = Layout {
    name: "gpu_metrics_v1_4",
    energy: Some(Field(24, Width::U64)),
    gfxclk: [w16(240), None],
    uclk: [w16(280), None],
    ..V1_4_PREFIX
};

/// `struct gpu_metrics_v1_5` (sizeof 360): `vcn_activity[4]`, `jpeg_activity[32]`, then
/// `energy_accumulator`.
const V1_5: Layout = Layout {
    name: "gpu_metrics_v1_5",
    energy: Some(Field(88, Width::U64)),
    gfxclk: [w16(312), None],
    uclk: [w16(352), None],
    ..V1_4_PREFIX
};

/// `struct gpu_metrics_v1_7` / `v1_8`: u64 `mem_max_bandwidth` at 16, `energy_accumulator`
/// at 24.
const V1_7: Layout = Layout {
    name: "gpu_metrics_v1_7/v1_8",
    energy: Some(Field(24, Width::U64)),
    ..V1_4_PREFIX
};

/// `struct gpu_metrics_v2_0` (sizeof 120): `system_clock_counter` (u64) at 8 first.
const V2_0: Layout = Layout {
    name: "gpu_metrics_v2_0",
    temp_gfx: w16(16),
    temp_soc: w16(18),
    gfx_activity: w16(40),
    socket_power: w16(44),
    gfxclk: [w16(68), w16(80)],
    uclk: [w16(72), w16(84)],
    temp_unit: TempUnit::CentiCelsius,
    activity_unit: ActivityUnit::CentiPercent,
    power_unit: PowerUnit::WattsOrMilliWatts,
    ..EMPTY
};

/// `struct gpu_metrics_v2_1` (sizeof 120); `v2_2` (128), `v2_3` (152), `v2_4` (168) only
/// append fields.
const V2_1: Layout = Layout {
    name: "gpu_metrics_v2_1..v2_4",
    temp_gfx: w16(4),
    temp_soc: w16(6),
    gfx_activity: w16(28),
    socket_power: w16(40),
    gfxclk: [w16(64), w16(76)],
    uclk: [w16(68), w16(80)],
    ..V2_0
};

/// `struct gpu_metrics_v3_0` (sizeof 264): u32 `average_socket_power` in mW.
const V3_0: Layout = Layout {
    name: "gpu_metrics_v3_0",
    temp_gfx: w16(4),
    temp_soc: w16(6),
    gfx_activity: w16(42),
    socket_power: Some(Field(112, Width::U32)),
    gfxclk: [w16(174), None],
    uclk: [w16(186), None],
    temp_unit: TempUnit::CentiCelsius,
    activity_unit: ActivityUnit::CentiPercent,
    power_unit: PowerUnit::MilliWatts,
    ..EMPTY
};

impl Layout {
    /// The struct for a header's revisions. Later content revisions of a format are decoded
    /// with the newest known layout whose prefix they keep (the kernel only appends within
    /// v1.1–v1.3, v2.1–v2.4); `structure_size` bounds every read.
    fn for_revision(format: u8, content: u8) -> Option<&'static Layout> {
        Some(match (format, content) {
            (1, 0) => &V1_0,
            (1, 1..=3) => &V1_1,
            (1, 4) => &V1_4,
            (1, 5) => &V1_5,
            (1, 7 | 8) => &V1_7,
            (1, _) => &V1_4_PREFIX,
            (2, 0) => &V2_0,
            (2, _) => &V2_1,
            (3, _) => &V3_0,
            _ => return None,
        })
    }

    fn fields(&self) -> impl Iterator<Item = Field> {
        [
            self.temp_edge,
            self.temp_hotspot,
            self.temp_mem,
            self.temp_gfx,
            self.temp_soc,
            self.gfx_activity,
            self.umc_activity,
            self.socket_power,
            self.energy,
            self.gfxclk[0],
            self.gfxclk[1],
            self.uclk[0],
            self.uclk[1],
        ]
        .into_iter()
        .flatten()
    }

    /// Bytes a table must have for every field this layout reads.
    fn required_len(&self) -> usize {
        self.fields().map(Field::end).max().unwrap_or(HEADER_LEN)
    }

    fn decode(&self, b: &[u8], header: &Header) -> GpuMetrics {
        let temp = |f: Option<Field>| f.and_then(|f| f.read(b)).map(|v| self.temp_c(v));
        let activity =
            |f: Option<Field>| f.and_then(|f| f.read(b)).and_then(|v| self.activity_pct(v));
        let clock = |fs: [Option<Field>; 2]| {
            fs.into_iter()
                .flatten()
                .find_map(|f| f.read(b))
                .map(|v| v as f64)
        };
        GpuMetrics {
            format_revision: header.format_revision,
            content_revision: header.content_revision,
            temp_edge_c: temp(self.temp_edge),
            temp_hotspot_c: temp(self.temp_hotspot),
            temp_mem_c: temp(self.temp_mem),
            temp_gfx_c: temp(self.temp_gfx),
            temp_soc_c: temp(self.temp_soc),
            gfx_activity_percent: activity(self.gfx_activity),
            umc_activity_percent: activity(self.umc_activity),
            socket_power_w: self
                .socket_power
                .and_then(|f| f.read(b))
                .map(|v| self.power_w(v)),
            energy_accumulator: self.energy.and_then(|f| f.read(b)),
            gfxclk_mhz: clock(self.gfxclk),
            uclk_mhz: clock(self.uclk),
        }
    }

    fn temp_c(&self, raw: u64) -> f64 {
        match self.temp_unit {
            TempUnit::Celsius => raw as f64,
            TempUnit::CentiCelsius => raw as f64 / 100.0,
        }
    }

    /// Percent, `None` when the value is above 100 % (garbage).
    fn activity_pct(&self, raw: u64) -> Option<f64> {
        let pct = match self.activity_unit {
            ActivityUnit::Percent => raw as f64,
            ActivityUnit::CentiPercent => raw as f64 / 100.0,
        };
        (pct <= 100.0).then_some(pct)
    }

    fn power_w(&self, raw: u64) -> f64 {
        match self.power_unit {
            PowerUnit::Watts => raw as f64,
            PowerUnit::MilliWatts => raw as f64 / 1000.0,
            PowerUnit::WattsOrMilliWatts if raw > u64::from(V2_POWER_MAX_WATTS) => {
                raw as f64 / 1000.0
            }
            PowerUnit::WattsOrMilliWatts => raw as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RDNA3_V1_3: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/amdgpu/rdna3-gpu_metrics-v1_3.bin"
    ));
    const STRIX_HALO_V3_0: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/amdgpu/strix-halo-gpu_metrics-v3_0.bin"
    ));

    /// A table as the kernel starts one: all 0xFF, then the header.
    fn soft_table(size: u16, format: u8, content: u8) -> Vec<u8> {
        let mut t = vec![0xFF; usize::from(size)];
        t[..2].copy_from_slice(&size.to_le_bytes());
        t[2] = format;
        t[3] = content;
        t
    }

    fn put_u16(t: &mut [u8], off: usize, v: u16) {
        t[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn put_u64(t: &mut [u8], off: usize, v: u64) {
        t[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn decodes_rdna3_v1_3_fixture() {
        let m = decode(RDNA3_V1_3).unwrap();
        assert_eq!(
            m,
            GpuMetrics {
                format_revision: 1,
                content_revision: 3,
                temp_edge_c: Some(45.0),
                temp_hotspot_c: Some(52.0),
                temp_mem_c: Some(60.0),
                temp_gfx_c: None,
                temp_soc_c: None,
                gfx_activity_percent: Some(37.0),
                umc_activity_percent: Some(12.0),
                socket_power_w: Some(212.0),
                energy_accumulator: Some(0x0000_0001_2345_6789),
                gfxclk_mhz: Some(2300.0),
                uclk_mhz: Some(1249.0),
            }
        );
        let r = m.to_reading();
        assert_eq!(r.temp_edge_c, Some(45.0));
        assert_eq!(r.temp_junction_c, Some(52.0));
        assert_eq!(r.temp_mem_c, Some(60.0));
        assert_eq!(r.gpu_busy_percent, Some(37.0));
        assert_eq!(r.mem_busy_percent, Some(12.0));
        assert_eq!(r.power_w, Some(212.0));
        assert_eq!(r.sclk_mhz, Some(2300.0));
        assert_eq!(r.mclk_mhz, Some(1249.0));
        assert_eq!(r.vram_used_bytes, None);
    }

    #[test]
    fn decodes_strix_halo_v3_0_fixture() {
        let m = decode(STRIX_HALO_V3_0).unwrap();
        assert_eq!(
            m,
            GpuMetrics {
                format_revision: 3,
                content_revision: 0,
                temp_edge_c: None,
                temp_hotspot_c: None,
                temp_mem_c: None,
                temp_gfx_c: Some(48.5),
                temp_soc_c: Some(47.0),
                gfx_activity_percent: Some(23.5),
                umc_activity_percent: None,
                socket_power_w: Some(65.0),
                energy_accumulator: None,
                gfxclk_mhz: Some(2900.0),
                uclk_mhz: Some(2000.0),
            }
        );
        let r = m.to_reading();
        assert_eq!(
            r.temp_edge_c,
            Some(48.5),
            "APU: gfx temperature stands in for edge"
        );
        assert_eq!(r.temp_junction_c, None);
        assert_eq!(r.gpu_busy_percent, Some(23.5));
        assert_eq!(r.mem_busy_percent, None);
        assert_eq!(r.power_w, Some(65.0));
    }

    #[test]
    fn v3_0_activity_is_centi_percent_even_when_small() {
        let mut t = STRIX_HALO_V3_0.to_vec();
        put_u16(&mut t, 42, 50);
        assert_eq!(decode(&t).unwrap().gfx_activity_percent, Some(0.5));
        put_u16(&mut t, 42, 10_001);
        assert_eq!(decode(&t).unwrap().gfx_activity_percent, None);
    }

    /// A Renoir-style `gpu_metrics_v2_2` table (sizeof 128).
    fn v2_2_table(socket_power: u16) -> Vec<u8> {
        let mut t = soft_table(128, 2, 2);
        put_u16(&mut t, 4, 5125); // temperature_gfx, centi-C
        put_u16(&mut t, 6, 4800); // temperature_soc
        put_u16(&mut t, 28, 4200); // average_gfx_activity, centi-%
        put_u64(&mut t, 32, 42); // system_clock_counter
        put_u16(&mut t, 40, socket_power);
        put_u16(&mut t, 64, 1800); // average_gfxclk_frequency
        put_u16(&mut t, 80, 1600); // current_uclk (average_uclk left unsupported)
        t
    }

    #[test]
    fn decodes_v2_2_apu_table() {
        let m = decode(&v2_2_table(15_000)).unwrap();
        assert_eq!(
            m,
            GpuMetrics {
                format_revision: 2,
                content_revision: 2,
                temp_gfx_c: Some(51.25),
                temp_soc_c: Some(48.0),
                gfx_activity_percent: Some(42.0),
                socket_power_w: Some(15.0),
                gfxclk_mhz: Some(1800.0),
                uclk_mhz: Some(1600.0),
                ..GpuMetrics::default()
            }
        );
        assert_eq!(m.to_reading().temp_edge_c, Some(51.25));
    }

    #[test]
    fn v2_socket_power_in_watts_on_newer_renoir_firmware() {
        let m = decode(&v2_2_table(25)).unwrap();
        assert_eq!(m.socket_power_w, Some(25.0));
        let m = decode(&v2_2_table(V2_POWER_MAX_WATTS + 1)).unwrap();
        assert_eq!(m.socket_power_w, Some(0.301));
    }

    #[test]
    fn decodes_v2_0_with_its_own_offsets() {
        let mut t = soft_table(120, 2, 0);
        put_u16(&mut t, 16, 6000);
        put_u16(&mut t, 40, 9900);
        put_u16(&mut t, 44, 8000);
        put_u16(&mut t, 68, 400);
        let m = decode(&t).unwrap();
        assert_eq!(m.temp_gfx_c, Some(60.0));
        assert_eq!(m.gfx_activity_percent, Some(99.0));
        assert_eq!(m.socket_power_w, Some(8.0));
        assert_eq!(m.gfxclk_mhz, Some(400.0));
    }

    #[test]
    fn decodes_v1_0_with_u32_energy() {
        let mut t = soft_table(80, 1, 0);
        put_u16(&mut t, 16, 40);
        put_u16(&mut t, 34, 150);
        t[36..40].copy_from_slice(&7u32.to_le_bytes());
        put_u16(&mut t, 54, 1500); // current_gfxclk only
        let m = decode(&t).unwrap();
        assert_eq!(m.temp_edge_c, Some(40.0));
        assert_eq!(m.socket_power_w, Some(150.0));
        assert_eq!(m.energy_accumulator, Some(7));
        assert_eq!(m.gfxclk_mhz, Some(1500.0), "current clock is the fallback");
    }

    #[test]
    fn decodes_mi300_v1_5_and_not_as_v1_3() {
        let mut t = soft_table(360, 1, 5);
        put_u16(&mut t, 4, 61); // temperature_hotspot
        put_u16(&mut t, 6, 55); // temperature_mem
        put_u16(&mut t, 10, 540); // curr_socket_power, W
        put_u16(&mut t, 12, 88);
        put_u16(&mut t, 14, 30);
        put_u64(&mut t, 88, 1 << 40);
        put_u16(&mut t, 312, 2100);
        put_u16(&mut t, 352, 1300);
        let m = decode(&t).unwrap();
        assert_eq!(m.temp_edge_c, None);
        assert_eq!(m.temp_hotspot_c, Some(61.0));
        assert_eq!(m.temp_mem_c, Some(55.0));
        assert_eq!(m.socket_power_w, Some(540.0));
        assert_eq!(m.gfx_activity_percent, Some(88.0));
        assert_eq!(m.umc_activity_percent, Some(30.0));
        assert_eq!(m.energy_accumulator, Some(1 << 40));
        assert_eq!(m.gfxclk_mhz, Some(2100.0));
        assert_eq!(m.uclk_mhz, Some(1300.0));
        // An unknown later v1 content revision: only the shared MI300 prefix.
        t[3] = 9;
        let m = decode(&t).unwrap();
        assert_eq!(m.temp_hotspot_c, Some(61.0));
        assert_eq!(m.energy_accumulator, None);
        assert_eq!(m.gfxclk_mhz, None);
    }

    #[test]
    fn later_content_revision_keeps_the_known_prefix() {
        // A hypothetical v2.9 that appends fields to v2.4.
        let mut t = v2_2_table(15_000);
        t[3] = 9;
        t.extend_from_slice(&[0u8; 64]);
        let size = u16::try_from(t.len()).unwrap();
        put_u16(&mut t, 0, size);
        let m = decode(&t).unwrap();
        assert_eq!(m.content_revision, 9);
        assert_eq!(m.gfx_activity_percent, Some(42.0));
    }

    #[test]
    fn truncated_tables_are_malformed() {
        for n in 0..HEADER_LEN {
            assert!(
                matches!(decode(&RDNA3_V1_3[..n]), Err(MetricsError::Malformed(_))),
                "{n} bytes"
            );
        }
        for n in [HEADER_LEN, 24, 60, RDNA3_V1_3.len() - 1] {
            assert!(
                matches!(decode(&RDNA3_V1_3[..n]), Err(MetricsError::Malformed(_))),
                "{n} bytes"
            );
        }
        assert!(matches!(
            decode(&STRIX_HALO_V3_0[..200]),
            Err(MetricsError::Malformed(_))
        ));
    }

    #[test]
    fn structure_size_mismatch_is_malformed() {
        // Larger than the bytes read.
        let mut t = RDNA3_V1_3.to_vec();
        put_u16(&mut t, 0, 121);
        assert_eq!(
            decode(&t),
            Err(MetricsError::Malformed(
                "structure_size 121 but only 120 bytes read".into()
            ))
        );
        // Smaller than the fields the layout reads (current_uclk ends at 60).
        put_u16(&mut t, 0, 59);
        assert!(matches!(decode(&t), Err(MetricsError::Malformed(_))));
        // Smaller than the header itself.
        put_u16(&mut t, 0, 3);
        assert!(matches!(decode(&t), Err(MetricsError::Malformed(_))));
        // Trailing bytes after the table are ignored.
        let mut t = RDNA3_V1_3.to_vec();
        t.extend_from_slice(&[0xAB; 16]);
        assert_eq!(decode(&t), decode(RDNA3_V1_3));
    }

    #[test]
    fn unknown_format_revision_is_unsupported() {
        let mut t = RDNA3_V1_3.to_vec();
        t[2] = 9;
        t[3] = 1;
        assert_eq!(decode(&t), Err(MetricsError::Unsupported(9, 1)));
        t[2] = 0;
        assert_eq!(decode(&t), Err(MetricsError::Unsupported(0, 1)));
        assert_eq!(
            MetricsError::Unsupported(9, 1).to_string(),
            "gpu_metrics: unsupported format 9.1"
        );
    }

    #[test]
    fn all_ones_fields_are_none() {
        for (size, format, content) in [
            (80, 1, 0),
            (120, 1, 3),
            (288, 1, 4),
            (360, 1, 5),
            (120, 2, 0),
            (168, 2, 4),
            (264, 3, 0),
        ] {
            let m = decode(&soft_table(size, format, content)).unwrap();
            assert_eq!(
                m,
                GpuMetrics {
                    format_revision: format,
                    content_revision: content,
                    ..GpuMetrics::default()
                },
                "v{format}.{content}"
            );
            assert_eq!(m.to_reading(), GpuReading::default());
        }
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut state: u64 = 0x0123_4567_89AB_CDEF;
        let mut next = || {
            // Knuth's MMIX LCG.
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as u8
        };
        for i in 0..500usize {
            let len = usize::from(next()) + (i % 3) * 256;
            let mut t: Vec<u8> = (0..len).map(|_| next()).collect();
            // Every other table gets a plausible header so the layouts are exercised too.
            if i % 2 == 0 && t.len() >= HEADER_LEN {
                let size = u16::try_from(t.len()).unwrap();
                t[..2].copy_from_slice(&size.to_le_bytes());
                t[2] = 1 + (next() % 3);
                t[3] = next() % 10;
            }
            if let Ok(m) = decode(&t) {
                for v in [m.gfx_activity_percent, m.umc_activity_percent]
                    .into_iter()
                    .flatten()
                {
                    assert!((0.0..=100.0).contains(&v));
                }
            }
        }
    }

    #[test]
    fn read_once_returns_the_file_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpu_metrics");
        std::fs::write(&path, STRIX_HALO_V3_0).unwrap();
        let f = File::open(&path).unwrap();
        assert_eq!(read_once(&f).unwrap(), STRIX_HALO_V3_0);
        // pread at offset 0: a second call reads the same table again.
        assert_eq!(read_once(&f).unwrap(), STRIX_HALO_V3_0);
        std::fs::write(&path, b"").unwrap();
        assert_eq!(read_once(&f).unwrap(), Vec::<u8>::new());
    }
}
