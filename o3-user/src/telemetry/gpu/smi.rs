//! Parsers for the output of GPU vendor command-line tools (`rocm-smi`, `amd-smi`,
//! `nvidia-smi`), and a small runner that calls them with a timeout.
//!
//! These are a last resort: o3 reads amdgpu sysfs / the DRM info ioctl / `gpu_metrics` and NVML
//! directly, and only falls back to a tool when no direct reader works. Tools are slow (hundreds
//! of milliseconds per call), their formats drift between releases, and some columns changed
//! meaning, so every parser here maps values by column or key **name** (never by position),
//! treats `N/A`-style values as "not available" (`None`, never zero), ignores what it does not
//! know, and reports anything else it cannot read as [`SmiError::Malformed`] naming the line and
//! column. No parser panics on any input.
//!
//! Tests never spawn a real tool: [`query`] takes a [`ToolRunner`], and [`RealRunner`] is the
//! only implementation that starts processes.

use std::io;
use std::time::Duration;

use serde_json::{Map, Value};
use thiserror::Error;

use super::GpuReading;

/// One device as a tool reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct SmiGpu {
    /// The tool's own device index (`cardN` for rocm-smi, `gpu` for amd-smi, `index` for
    /// nvidia-smi). It is not necessarily the DRM minor or the CUDA/HIP ordinal.
    pub index: u32,
    /// Marketing name, when the output carries one.
    pub name: Option<String>,
    pub reading: GpuReading,
}

/// The tool's output could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SmiError {
    #[error("{tool}: {problem}")]
    Malformed {
        tool: &'static str,
        problem: Problem,
    },
}

/// What is wrong in a tool's output; the outer variants say where (line, column, field,
/// GPU and key path), the inner ones what.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Problem {
    #[error("line {line}: {problem}")]
    Line { line: usize, problem: Box<Problem> },
    #[error("column `{column}`: {problem}")]
    Column {
        column: String,
        problem: Box<Problem>,
    },
    #[error("field `{field}`: {problem}")]
    Field {
        field: &'static str,
        problem: Box<Problem>,
    },
    #[error("gpu {gpu}, `{path}`: {problem}")]
    Leaf {
        gpu: u32,
        path: String,
        problem: Box<Problem>,
    },
    #[error("gpu {gpu}: {problem}")]
    Gpu { gpu: u32, problem: Box<Problem> },
    #[error("entry {0}: not an object")]
    EntryNotAnObject(usize),
    #[error("entry {0}: no valid `gpu` index")]
    NoGpuIndex(usize),
    #[error("no header line starting with `device,`")]
    NoHeader,
    #[error("no JSON array or object in the output")]
    NoJson,
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("expected an array or an object with a `gpu_data` array")]
    NoGpuData,
    #[error("expected a JSON array or object")]
    NotArrayOrObject,
    #[error("{found} fields, but the header has {header}")]
    RowWidth { found: usize, header: usize },
    #[error("{found} fields, expected {expected} ({fields})")]
    LineWidth {
        found: usize,
        expected: usize,
        fields: String,
    },
    #[error("expected `cardN`, found `{0}`")]
    NotACard(String),
    #[error("unterminated quoted field")]
    UnterminatedQuote,
    #[error("`{0}` is not a number")]
    NotANumber(String),
    #[error("`{0}` is not a finite number")]
    NotFinite(String),
    #[error("expected a number, found `{0}`")]
    NotNumeric(String),
    #[error("negative size `{0}`")]
    NegativeSize(String),
    #[error("size `{0}` is out of range")]
    SizeOutOfRange(String),
    #[error("`{0}` is not a GPU index")]
    NotAnIndex(String),
    #[error("object without `value`")]
    NoValue,
    #[error("`unit` is not a string: `{0}`")]
    UnitNotAString(String),
    #[error("unexpected unit `{0}`")]
    UnexpectedUnit(String),
    #[error("`{0}` is not an object")]
    NotAnObject(String),
}

impl Problem {
    fn on_line(self, line: usize) -> Problem {
        Problem::Line {
            line,
            problem: Box::new(self),
        }
    }
}

/// Running a tool and reading its output failed.
#[derive(Debug, Error)]
pub enum SmiQueryError {
    /// The tool is not installed (or not on `PATH`).
    #[error("{tool} not found; it is only a fallback when {fallback_for} do not work")]
    NotFound {
        tool: &'static str,
        fallback_for: &'static str,
    },
    /// The tool could not be started, timed out, or failed without output.
    #[error("{tool}: {source}")]
    Io {
        tool: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Malformed(#[from] SmiError),
}

/// Which tool to ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    RocmSmi,
    AmdSmi,
    NvidiaSmi,
}

impl Tool {
    /// The executable name, looked up on `PATH`.
    pub fn program(self) -> &'static str {
        match self {
            Tool::RocmSmi => ROCM_SMI,
            Tool::AmdSmi => AMD_SMI,
            Tool::NvidiaSmi => NVIDIA_SMI,
        }
    }

    /// The fixed arguments whose output the matching parser expects.
    pub fn args(self) -> &'static [&'static str] {
        match self {
            Tool::RocmSmi => ROCM_SMI_ARGS,
            Tool::AmdSmi => AMD_SMI_ARGS,
            Tool::NvidiaSmi => NVIDIA_SMI_ARGS,
        }
    }

    /// The direct readers this tool stands in for (for the "not found" message).
    fn fallback_for(self) -> &'static str {
        match self {
            Tool::RocmSmi | Tool::AmdSmi => "amdgpu sysfs/ioctl readers",
            Tool::NvidiaSmi => "NVML readers",
        }
    }

    /// Parses this tool's output.
    pub fn parse(self, text: &str) -> Result<Vec<SmiGpu>, SmiError> {
        match self {
            Tool::RocmSmi => parse_rocm_smi_csv(text),
            Tool::AmdSmi => parse_amd_smi_json(text),
            Tool::NvidiaSmi => parse_nvidia_smi_csv(text),
        }
    }
}

const ROCM_SMI: &str = "rocm-smi";
const AMD_SMI: &str = "amd-smi";
const NVIDIA_SMI: &str = "nvidia-smi";

/// rocm-smi arguments: VRAM/GTT sizes, engine and memory use, temperatures and power, as CSV.
pub const ROCM_SMI_ARGS: &[&str] = &[
    "--showmeminfo",
    "vram",
    "gtt",
    "--showuse",
    "--showmemuse",
    "--showtemp",
    "--showpower",
    "--csv",
];

/// amd-smi arguments: all metrics of all devices as JSON.
pub const AMD_SMI_ARGS: &[&str] = &["metric", "--json"];

/// The nvidia-smi query. The parser reads the field names from this string, so the columns
/// and their meaning cannot drift apart.
const NVIDIA_QUERY: &str = "--query-gpu=index,name,memory.used,memory.total,utilization.gpu,\
utilization.memory,temperature.gpu,power.draw,clocks.sm,clocks.mem";

/// The fixed nvidia-smi arguments the parser expects (one line per GPU, no header, no units).
pub const NVIDIA_SMI_ARGS: &[&str] = &[NVIDIA_QUERY, "--format=csv,noheader,nounits"];

/// How long [`query`] lets a tool run before killing it.
pub const SMI_TIMEOUT: Duration = Duration::from_secs(5);

const MIB_BYTES: u64 = 1024 * 1024;
const MIB: f64 = MIB_BYTES as f64;

fn malformed(tool: &'static str, problem: Problem) -> SmiError {
    SmiError::Malformed { tool, problem }
}

// ---------------------------------------------------------------------------------------------
// Shared value parsing
// ---------------------------------------------------------------------------------------------

/// True for the spellings tools use for "no value": `N/A`, `[N/A]`, `[Not Supported]`, any
/// other bracketed nvidia-smi status, and an empty field.
fn is_not_available(v: &str) -> bool {
    let v = v.trim();
    v.is_empty()
        || v.eq_ignore_ascii_case("n/a")
        || v.eq_ignore_ascii_case("na")
        || (v.starts_with('[') && v.ends_with(']'))
}

/// A finite number, or `None` when not available.
fn parse_f64(v: &str) -> Result<Option<f64>, Problem> {
    if is_not_available(v) {
        return Ok(None);
    }
    match v.trim().parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(Some(x)),
        _ => Err(Problem::NotANumber(v.trim().to_string())),
    }
}

/// A byte count from a value in units of `scale` bytes, rounded to a whole byte; negative or
/// overflowing values are errors.
fn to_bytes(x: f64, scale: f64) -> Result<u64, Problem> {
    if x < 0.0 {
        return Err(Problem::NegativeSize(x.to_string()));
    }
    let bytes = (x * scale).round();
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(Problem::SizeOutOfRange(x.to_string()));
    }
    // Finite, non-negative and below 2^64: the conversion cannot saturate.
    Ok(bytes as u64)
}

/// A non-negative size in units of `unit` bytes (integers exactly, decimals rounded), or
/// `None` when not available.
fn parse_size(v: &str, unit: u64) -> Result<Option<u64>, Problem> {
    let t = v.trim();
    if is_not_available(t) {
        return Ok(None);
    }
    if let Ok(n) = t.parse::<u64>() {
        return n
            .checked_mul(unit)
            .map(Some)
            .ok_or_else(|| Problem::SizeOutOfRange(t.to_string()));
    }
    match parse_f64(t)? {
        Some(x) => to_bytes(x, unit as f64).map(Some),
        None => Ok(None),
    }
}

/// Splits one CSV line. Simple double-quoted fields may contain commas; `""` inside quotes is
/// a literal quote. Fields are not trimmed.
fn split_csv_line(line: &str) -> Result<Vec<String>, Problem> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (in_quotes, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            (true, '"') => in_quotes = false,
            (false, '"') if cur.trim().is_empty() => {
                cur.clear();
                in_quotes = true;
            }
            (false, ',') => fields.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if in_quotes {
        return Err(Problem::UnterminatedQuote);
    }
    fields.push(cur);
    Ok(fields)
}

/// Lines with 1-based numbers, without a trailing `\r`.
fn numbered_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
}

// ---------------------------------------------------------------------------------------------
// rocm-smi --csv
// ---------------------------------------------------------------------------------------------

/// What a rocm-smi CSV column means for o3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RocmColumn {
    GpuBusy,
    MemBusy,
    VramTotal,
    VramUsed,
    VisVramTotal,
    VisVramUsed,
    GttTotal,
    GttUsed,
    TempEdge,
    TempJunction,
    TempMem,
    /// Average power over the SMU's window (preferred).
    PowerAverage,
    /// Instantaneous socket power (MI300 and later), used when there is no average.
    PowerCurrent,
    EnergyMicrojoules,
    /// A device name; lower rank wins.
    Name(u8),
}

/// Maps a rocm-smi CSV header (trimmed, case-insensitive) to its meaning; `None` for columns
/// o3 does not use.
///
/// Deliberately unmapped:
/// - `GPU Memory Allocated (VRAM%)` (ROCm >= 6.1.2) is VRAM used / total, not a busy figure.
/// - `GFX Activity` and `Memory Activity` are cumulative activity counters from `gpu_metrics`
///   (values like `2248597662`), not percentages.
fn rocm_column(header: &str) -> Option<RocmColumn> {
    use RocmColumn::*;
    let h = header.trim().to_ascii_lowercase();
    let col = match h.as_str() {
        "gpu use (%)" => GpuBusy,
        // Before ROCm 6.1.2 `--showmemuse` printed the memory controller busy percent under
        // this name; from 6.1.2 it is `GPU Memory Read/Write Activity (%)`.
        "gpu memory use (%)" | "gpu memory read/write activity (%)" => MemBusy,
        "vram total memory (b)" => VramTotal,
        "vram total used memory (b)" => VramUsed,
        "vis_vram total memory (b)" => VisVramTotal,
        "vis_vram total used memory (b)" => VisVramUsed,
        "gtt total memory (b)" => GttTotal,
        "gtt total used memory (b)" => GttUsed,
        "temperature (sensor edge) (c)" => TempEdge,
        "temperature (sensor junction) (c)" => TempJunction,
        "temperature (sensor memory) (c)" => TempMem,
        "average graphics package power (w)" => PowerAverage,
        "current socket graphics package power (w)" => PowerCurrent,
        "accumulated energy (uj)" => EnergyMicrojoules,
        "device name" => Name(0),
        "card series" => Name(1),
        "card sku" => Name(2),
        _ => return None,
    };
    Some(col)
}

/// One rocm-smi row while its columns are being read.
#[derive(Default)]
struct RocmRow {
    reading: GpuReading,
    power_current: Option<f64>,
    name: Option<(u8, String)>,
}

impl RocmRow {
    /// Stores one cell; `value` is the raw (untrimmed) field.
    fn set(&mut self, col: RocmColumn, value: &str) -> Result<(), Problem> {
        use RocmColumn::*;
        let r = &mut self.reading;
        match col {
            GpuBusy => r.gpu_busy_percent = parse_f64(value)?,
            MemBusy => r.mem_busy_percent = parse_f64(value)?,
            VramTotal => r.vram_total_bytes = parse_size(value, 1)?,
            VramUsed => r.vram_used_bytes = parse_size(value, 1)?,
            VisVramTotal => r.vis_vram_total_bytes = parse_size(value, 1)?,
            VisVramUsed => r.vis_vram_used_bytes = parse_size(value, 1)?,
            GttTotal => r.gtt_total_bytes = parse_size(value, 1)?,
            GttUsed => r.gtt_used_bytes = parse_size(value, 1)?,
            TempEdge => r.temp_edge_c = parse_f64(value)?,
            TempJunction => r.temp_junction_c = parse_f64(value)?,
            TempMem => r.temp_mem_c = parse_f64(value)?,
            PowerAverage => r.power_w = parse_f64(value)?,
            PowerCurrent => self.power_current = parse_f64(value)?,
            EnergyMicrojoules => r.energy_j = parse_f64(value)?.map(|uj| uj / 1e6),
            Name(rank) => self.set_name(rank, value),
        }
        Ok(())
    }

    fn set_name(&mut self, rank: u8, value: &str) {
        let v = value.trim();
        if is_not_available(v) || self.name.as_ref().is_some_and(|(r, _)| *r <= rank) {
            return;
        }
        self.name = Some((rank, v.to_string()));
    }

    fn finish(mut self, index: u32) -> SmiGpu {
        if self.reading.power_w.is_none() {
            self.reading.power_w = self.power_current;
        }
        SmiGpu {
            index,
            name: self.name.map(|(_, n)| n),
            reading: self.reading,
        }
    }
}

/// Lines rocm-smi prints around the CSV that are not part of it: warnings and `=====` banners.
fn is_rocm_noise(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('=') || t.to_ascii_uppercase().starts_with("WARNING")
}

/// `cardN` -> N.
fn rocm_card_index(field: &str) -> Option<u32> {
    let t = field.trim();
    let digits = t
        .get(..4)
        .filter(|p| p.eq_ignore_ascii_case("card"))
        .map(|_| &t[4..])?;
    digits.parse().ok()
}

/// Parses `rocm-smi ... --csv` output ([`ROCM_SMI_ARGS`]): any preamble (warnings, banners,
/// blank lines), a header line starting with `device,`, then one `cardN,...` row per GPU.
/// Columns are matched by name (see [`rocm_column`]); unknown columns are ignored.
pub fn parse_rocm_smi_csv(text: &str) -> Result<Vec<SmiGpu>, SmiError> {
    const TOOL: &str = ROCM_SMI;
    let mut lines = numbered_lines(text);
    let header = loop {
        let Some((_, line)) = lines.next() else {
            return Err(malformed(TOOL, Problem::NoHeader));
        };
        if let Ok(fields) = split_csv_line(line) {
            if fields.len() > 1 && fields[0].trim().eq_ignore_ascii_case("device") {
                break fields;
            }
        }
    };
    let columns: Vec<Option<RocmColumn>> = header.iter().map(|h| rocm_column(h)).collect();
    let mut gpus = Vec::new();
    for (n, line) in lines {
        if is_rocm_noise(line) {
            continue;
        }
        let row = parse_rocm_row(line, &header, &columns)
            .map_err(|problem| malformed(TOOL, problem.on_line(n)))?;
        gpus.push(row);
    }
    Ok(gpus)
}

/// One `cardN,...` row.
fn parse_rocm_row(
    line: &str,
    header: &[String],
    columns: &[Option<RocmColumn>],
) -> Result<SmiGpu, Problem> {
    let fields = split_csv_line(line)?;
    if fields.len() != header.len() {
        return Err(Problem::RowWidth {
            found: fields.len(),
            header: header.len(),
        });
    }
    let first = fields.first().map_or("", |f| f.trim());
    let index = rocm_card_index(first).ok_or_else(|| Problem::NotACard(first.to_string()))?;
    let mut row = RocmRow::default();
    for ((value, name), col) in fields.iter().zip(header).zip(columns).skip(1) {
        if let Some(col) = col {
            row.set(*col, value).map_err(|e| Problem::Column {
                column: name.trim().to_string(),
                problem: Box::new(e),
            })?;
        }
    }
    Ok(row.finish(index))
}

// ---------------------------------------------------------------------------------------------
// amd-smi metric --json
// ---------------------------------------------------------------------------------------------

/// The physical kind of an amd-smi leaf, which decides the units it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Percent,
    Celsius,
    Watts,
    Megahertz,
    Joules,
    Bytes,
}

impl Kind {
    /// Multiplier from `unit` to this kind's base unit (bytes for sizes); `None` if the unit
    /// does not fit. A missing unit means amd-smi's default for the kind (MB for sizes).
    /// amd-smi's `KB`/`MB`/`GB` are binary (KiB/MiB/GiB).
    fn scale(self, unit: Option<&str>) -> Option<f64> {
        let u = unit.map(|u| u.trim().to_ascii_lowercase());
        let s = match (self, u.as_deref()) {
            (Kind::Bytes, None) => MIB,
            (_, None) => 1.0,
            (Kind::Percent, Some("%")) => 1.0,
            (Kind::Celsius, Some("c" | "°c")) => 1.0,
            (Kind::Watts, Some("w")) => 1.0,
            (Kind::Watts, Some("mw")) => 1e-3,
            (Kind::Watts, Some("uw" | "µw" | "μw")) => 1e-6,
            (Kind::Megahertz, Some("mhz")) => 1.0,
            (Kind::Megahertz, Some("ghz")) => 1e3,
            (Kind::Megahertz, Some("khz")) => 1e-3,
            (Kind::Joules, Some("j")) => 1.0,
            (Kind::Joules, Some("mj")) => 1e-3,
            (Kind::Joules, Some("uj" | "µj" | "μj")) => 1e-6,
            (Kind::Bytes, Some("b")) => 1.0,
            (Kind::Bytes, Some("kb" | "kib")) => 1024.0,
            (Kind::Bytes, Some("mb" | "mib")) => MIB,
            (Kind::Bytes, Some("gb" | "gib")) => MIB * 1024.0,
            (Kind::Bytes, Some("tb" | "tib")) => MIB * MIB,
            _ => return None,
        };
        Some(s)
    }
}

/// A value read from an amd-smi leaf, before unit conversion.
struct Leaf<'a> {
    value: f64,
    unit: Option<&'a str>,
}

/// Key lookup that tolerates case differences between amd-smi versions.
fn get_ci<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

fn is_na_value(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => is_not_available(s),
        _ => false,
    }
}

/// Reads a leaf: `{"value": N, "unit": "U"}`, a bare number, a string `"N"` or `"N U"`, or a
/// not-available marker (`"N/A"`, `null`, `{"value": "N/A", ...}`).
fn read_leaf(v: &Value) -> Result<Option<Leaf<'_>>, Problem> {
    match v {
        _ if is_na_value(v) => Ok(None),
        Value::Number(n) => n
            .as_f64()
            .filter(|x| x.is_finite())
            .map(|value| Some(Leaf { value, unit: None }))
            .ok_or_else(|| Problem::NotFinite(n.to_string())),
        Value::String(s) => read_string_leaf(s),
        Value::Object(o) => read_object_leaf(o),
        other => Err(Problem::NotNumeric(other.to_string())),
    }
}

fn read_string_leaf(s: &str) -> Result<Option<Leaf<'_>>, Problem> {
    let t = s.trim();
    let (num, unit) = match t.split_once(char::is_whitespace) {
        Some((n, u)) => (n, Some(u.trim())),
        None => (t, None),
    };
    Ok(parse_f64(num)
        .map_err(|_| Problem::NotANumber(t.to_string()))?
        .map(|value| Leaf { value, unit }))
}

fn read_object_leaf(o: &Map<String, Value>) -> Result<Option<Leaf<'_>>, Problem> {
    let value = get_ci(o, "value").ok_or(Problem::NoValue)?;
    let unit = match get_ci(o, "unit") {
        None | Some(Value::Null) => None,
        Some(Value::String(u)) => Some(u.as_str()),
        Some(other) => return Err(Problem::UnitNotAString(other.to_string())),
    };
    Ok(read_leaf(value)?.map(|leaf| Leaf {
        value: leaf.value,
        unit: unit.or(leaf.unit),
    }))
}

/// One GPU object of `amd-smi metric --json`.
struct AmdGpu<'a> {
    index: u32,
    obj: &'a Map<String, Value>,
}

impl AmdGpu<'_> {
    /// The leaf at `path`, or `None` when any part is missing or not available.
    fn lookup(&self, path: &[&str]) -> Result<Option<&Value>, Problem> {
        let mut cur = self.obj;
        for (i, key) in path.iter().enumerate() {
            let Some(v) = get_ci(cur, key) else {
                return Ok(None);
            };
            if i + 1 == path.len() {
                return Ok(Some(v));
            }
            match v {
                Value::Object(o) => cur = o,
                _ if is_na_value(v) => return Ok(None),
                _ => return Err(Problem::NotAnObject(path[..=i].join("."))),
            }
        }
        Ok(None)
    }

    /// `problem` at the leaf `path` of this GPU.
    fn at_leaf(&self, path: &[&str], problem: Problem) -> SmiError {
        malformed(
            AMD_SMI,
            Problem::Leaf {
                gpu: self.index,
                path: path.join("."),
                problem: Box::new(problem),
            },
        )
    }

    /// A quantity in `kind`'s base unit, or `None` when absent or not available.
    fn float(&self, path: &[&str], kind: Kind) -> Result<Option<f64>, SmiError> {
        let Some(v) = self.lookup(path).map_err(|problem| {
            malformed(
                AMD_SMI,
                Problem::Gpu {
                    gpu: self.index,
                    problem: Box::new(problem),
                },
            )
        })?
        else {
            return Ok(None);
        };
        let Some(leaf) = read_leaf(v).map_err(|p| self.at_leaf(path, p))? else {
            return Ok(None);
        };
        let scale = kind.scale(leaf.unit).ok_or_else(|| {
            let unit = leaf.unit.unwrap_or("").to_string();
            self.at_leaf(path, Problem::UnexpectedUnit(unit))
        })?;
        Ok(Some(leaf.value * scale))
    }

    fn bytes(&self, path: &[&str]) -> Result<Option<u64>, SmiError> {
        self.float(path, Kind::Bytes)?
            .map(|b| to_bytes(b, 1.0))
            .transpose()
            .map_err(|p| self.at_leaf(path, p))
    }

    fn reading(&self) -> Result<GpuReading, SmiError> {
        use Kind::*;
        Ok(GpuReading {
            vram_used_bytes: self.bytes(&["mem_usage", "used_vram"])?,
            vram_total_bytes: self.bytes(&["mem_usage", "total_vram"])?,
            vis_vram_used_bytes: self.bytes(&["mem_usage", "used_visible_vram"])?,
            vis_vram_total_bytes: self.bytes(&["mem_usage", "total_visible_vram"])?,
            gtt_used_bytes: self.bytes(&["mem_usage", "used_gtt"])?,
            gtt_total_bytes: self.bytes(&["mem_usage", "total_gtt"])?,
            gpu_busy_percent: self.float(&["usage", "gfx_activity"], Percent)?,
            mem_busy_percent: self.float(&["usage", "umc_activity"], Percent)?,
            temp_edge_c: self.float(&["temperature", "edge"], Celsius)?,
            temp_junction_c: self.float(&["temperature", "hotspot"], Celsius)?,
            temp_mem_c: self.float(&["temperature", "mem"], Celsius)?,
            power_w: self.float(&["power", "socket_power"], Watts)?,
            // A cumulative energy counter that reads exactly 0 is one the device does not
            // keep (consumer parts report 0.0 J), not a real reading.
            energy_j: self
                .float(&["energy", "total_energy_consumption"], Joules)?
                .filter(|j| *j > 0.0),
            sclk_mhz: self.float(&["clock", "gfx_0", "clk"], Megahertz)?,
            mclk_mhz: self.float(&["clock", "mem_0", "clk"], Megahertz)?,
            ..GpuReading::default()
        })
    }
}

/// Lines tried as the start of the JSON document before giving up.
const MAX_JSON_STARTS: usize = 4;

/// The first JSON value in `text`, skipping non-JSON lines before it (warnings) and ignoring
/// anything after it. Only lines that start with `[` or `{` in the first column are tried (the
/// document's nested lines are indented), and only a few, so bad input costs linear time.
fn first_json_value(text: &str) -> Result<Value, SmiError> {
    let mut first_err = None;
    let mut offset = 0;
    let mut tries = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let line = line.trim_start_matches('\u{feff}');
        if !(line.starts_with('[') || line.starts_with('{')) {
            continue;
        }
        let rest = text[start..].trim_start_matches('\u{feff}');
        match serde_json::Deserializer::from_str(rest).into_iter().next() {
            Some(Ok(v)) => return Ok(v),
            Some(Err(e)) => {
                first_err.get_or_insert_with(|| Problem::InvalidJson(e.to_string()));
            }
            None => {}
        }
        tries += 1;
        if tries == MAX_JSON_STARTS {
            break;
        }
    }
    Err(malformed(AMD_SMI, first_err.unwrap_or(Problem::NoJson)))
}

/// Parses `amd-smi metric --json` ([`AMD_SMI_ARGS`]): a JSON array of per-GPU objects, or
/// (newer versions) an object `{"gpu_data": [...]}`. Each GPU has `"gpu": N` and sections
/// whose leaves are `{"value": N, "unit": "U"}` or `"N/A"`; sizes are converted by unit (amd-smi
/// `MB` = MiB). Missing sections or leaves are "not available"; unknown keys are ignored.
pub fn parse_amd_smi_json(text: &str) -> Result<Vec<SmiGpu>, SmiError> {
    let root = first_json_value(text)?;
    let list = match &root {
        Value::Array(list) => list,
        Value::Object(o) => match get_ci(o, "gpu_data") {
            Some(Value::Array(list)) => list,
            _ => return Err(malformed(AMD_SMI, Problem::NoGpuData)),
        },
        _ => return Err(malformed(AMD_SMI, Problem::NotArrayOrObject)),
    };
    list.iter()
        .enumerate()
        .map(|(i, item)| parse_amd_gpu(i, item))
        .collect()
}

/// Entry `i` of the GPU list.
fn parse_amd_gpu(i: usize, item: &Value) -> Result<SmiGpu, SmiError> {
    let obj = item
        .as_object()
        .ok_or_else(|| malformed(AMD_SMI, Problem::EntryNotAnObject(i)))?;
    let index = get_ci(obj, "gpu")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| malformed(AMD_SMI, Problem::NoGpuIndex(i)))?;
    let gpu = AmdGpu { index, obj };
    Ok(SmiGpu {
        index,
        name: None,
        reading: gpu.reading()?,
    })
}

// ---------------------------------------------------------------------------------------------
// nvidia-smi --query-gpu --format=csv,noheader,nounits
// ---------------------------------------------------------------------------------------------

/// The field names of [`NVIDIA_QUERY`], in output order.
fn nvidia_fields() -> Vec<&'static str> {
    NVIDIA_QUERY
        .trim_start_matches("--query-gpu=")
        .split(',')
        .map(str::trim)
        .collect()
}

/// Stores one nvidia-smi field into `gpu` by its query name.
///
/// `temperature.gpu` is the GPU core (die) temperature; it is stored as `temp_edge_c`, the
/// closest of o3's fields (NVIDIA does not expose a separate hotspot value here).
fn set_nvidia_field(gpu: &mut SmiGpu, field: &str, value: &str) -> Result<(), Problem> {
    let r = &mut gpu.reading;
    match field {
        "index" => {
            gpu.index = value
                .trim()
                .parse()
                .map_err(|_| Problem::NotAnIndex(value.trim().to_string()))?;
        }
        "name" if !is_not_available(value) => gpu.name = Some(value.trim().to_string()),
        "memory.used" => r.vram_used_bytes = parse_size(value, MIB_BYTES)?,
        "memory.total" => r.vram_total_bytes = parse_size(value, MIB_BYTES)?,
        "utilization.gpu" => r.gpu_busy_percent = parse_f64(value)?,
        "utilization.memory" => r.mem_busy_percent = parse_f64(value)?,
        "temperature.gpu" => r.temp_edge_c = parse_f64(value)?,
        "power.draw" => r.power_w = parse_f64(value)?,
        "clocks.sm" => r.sclk_mhz = parse_f64(value)?,
        "clocks.mem" => r.mclk_mhz = parse_f64(value)?,
        _ => {}
    }
    Ok(())
}

/// One nvidia-smi line.
fn parse_nvidia_line(line: &str, fields: &[&'static str]) -> Result<SmiGpu, Problem> {
    let values: Vec<&str> = line.split(',').collect();
    if values.len() != fields.len() {
        return Err(Problem::LineWidth {
            found: values.len(),
            expected: fields.len(),
            fields: fields.join(","),
        });
    }
    let mut gpu = SmiGpu {
        index: 0,
        name: None,
        reading: GpuReading::default(),
    };
    for (field, value) in fields.iter().zip(&values) {
        set_nvidia_field(&mut gpu, field, value).map_err(|e| Problem::Field {
            field,
            problem: Box::new(e),
        })?;
    }
    Ok(gpu)
}

/// Parses nvidia-smi output for [`NVIDIA_SMI_ARGS`]: one line per GPU, values separated by
/// `, ` in the order of the query (memory in MiB, power in W, clocks in MHz). `[N/A]` and
/// `[Not Supported]` are "not available". `No devices were found` yields an empty list.
pub fn parse_nvidia_smi_csv(text: &str) -> Result<Vec<SmiGpu>, SmiError> {
    let fields = nvidia_fields();
    let mut gpus = Vec::new();
    for (n, line) in numbered_lines(text) {
        let t = line.trim();
        if t.is_empty() || t.eq_ignore_ascii_case("No devices were found") {
            continue;
        }
        let gpu = parse_nvidia_line(t, &fields)
            .map_err(|problem| malformed(NVIDIA_SMI, problem.on_line(n)))?;
        gpus.push(gpu);
    }
    Ok(gpus)
}

// ---------------------------------------------------------------------------------------------
// Running the tools
// ---------------------------------------------------------------------------------------------

/// Runs a tool with a timeout (killing it after `timeout`) and returns its stdout. A seam so
/// that tests never spawn real tools.
pub trait ToolRunner {
    fn run(&self, program: &str, args: &[&str], timeout: Duration) -> io::Result<String>;
}

/// Starts the program with [`std::process::Command`] (stdin closed), polls `try_wait` until
/// `timeout`, then kills and reaps it. Output that is not UTF-8 is converted lossily. A tool
/// that exits unsuccessfully is an error only if it printed nothing on stdout (some tools exit
/// non-zero after printing valid values for the sensors they could read).
pub struct RealRunner;

impl ToolRunner for RealRunner {
    fn run(&self, program: &str, args: &[&str], timeout: Duration) -> io::Result<String> {
        let o = crate::util::command::output_within(program, args, timeout)?;
        if !o.status.success() && o.stdout.trim().is_empty() {
            let detail = o
                .stderr
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Err(io::Error::other(format!(
                "exited with {}: {detail}",
                o.status
            )));
        }
        Ok(o.stdout)
    }
}

/// Runs `tool` with its fixed arguments through `runner` (timeout [`SMI_TIMEOUT`]) and parses
/// its output. A missing tool gives [`SmiQueryError::NotFound`], whose message names the tool
/// and says that it is only a fallback.
pub fn query(runner: &dyn ToolRunner, tool: Tool) -> Result<Vec<SmiGpu>, SmiQueryError> {
    let text = runner
        .run(tool.program(), tool.args(), SMI_TIMEOUT)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => SmiQueryError::NotFound {
                tool: tool.program(),
                fallback_for: tool.fallback_for(),
            },
            _ => SmiQueryError::Io {
                tool: tool.program(),
                source: e,
            },
        })?;
    Ok(tool.parse(&text)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::path::Path;

    const GIB: u64 = 1024 * 1024 * 1024;
    const MIB_U: u64 = 1024 * 1024;

    fn fixture(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/smi")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    // ---- rocm-smi ---------------------------------------------------------------------------

    #[test]
    fn rocm_smi_warning_preamble_is_skipped() {
        let gpus = parse_rocm_smi_csv(&fixture("rocm_smi_6.2_warning.csv")).unwrap();
        assert_eq!(gpus.len(), 1);
        let g = &gpus[0];
        assert_eq!(g.index, 0);
        assert_eq!(g.name, None);
        let r = &g.reading;
        assert_eq!(r.temp_edge_c, Some(52.0));
        assert_eq!(r.temp_junction_c, Some(61.0));
        assert_eq!(r.temp_mem_c, Some(58.0));
        assert_eq!(r.power_w, Some(187.0));
        assert_eq!(r.gpu_busy_percent, Some(97.0));
        // `GPU Memory Read/Write Activity (%)`, not `GPU Memory Allocated (VRAM%)` (93).
        assert_eq!(r.mem_busy_percent, Some(41.0));
        assert_eq!(r.vram_total_bytes, Some(51_522_830_336));
        assert_eq!(r.vram_used_bytes, Some(47_915_057_152));
        assert_eq!(r.gtt_total_bytes, Some(67_430_715_392));
        assert_eq!(r.gtt_used_bytes, Some(24_887_296));
        assert_eq!(r.sclk_mhz, None);
        assert_eq!(r.energy_j, None);
    }

    #[test]
    fn rocm_smi_old_columns_map_memory_busy_and_name() {
        let gpus = parse_rocm_smi_csv(&fixture("rocm_smi_5.7_old_columns.csv")).unwrap();
        assert_eq!(gpus.len(), 2);
        let (a, b) = (&gpus[0], &gpus[1]);
        assert_eq!((a.index, b.index), (0, 1));
        assert_eq!(a.name.as_deref(), Some("Instinct MI210"));
        assert_eq!(a.reading.gpu_busy_percent, Some(87.0));
        // Pre-6.1.2 `GPU memory use (%)` is memory-controller busy.
        assert_eq!(a.reading.mem_busy_percent, Some(34.0));
        assert_eq!(a.reading.power_w, Some(212.0));
        assert_eq!(a.reading.vram_used_bytes, Some(61_203_283_968));
        assert_eq!(a.reading.gtt_used_bytes, Some(15_806_464));
        assert_eq!(b.reading.gpu_busy_percent, Some(0.0));
        assert_eq!(b.reading.temp_mem_c, Some(50.0));
    }

    #[test]
    fn rocm_smi_gfx_activity_counter_is_not_a_percentage() {
        let text = "device,GFX Activity,Memory Activity\ncard0,2248597662,304605986\n";
        let gpus = parse_rocm_smi_csv(text).unwrap();
        assert_eq!(gpus[0].reading, GpuReading::default());
    }

    #[test]
    fn rocm_smi_allocation_percent_is_not_busy() {
        let text = "device,GPU Memory Allocated (VRAM%)\ncard3,93\n";
        let gpus = parse_rocm_smi_csv(text).unwrap();
        assert_eq!(gpus[0].index, 3);
        assert_eq!(gpus[0].reading.mem_busy_percent, None);
        assert_eq!(gpus[0].reading.gpu_busy_percent, None);
    }

    #[test]
    fn rocm_smi_two_gpus_with_na() {
        let gpus = parse_rocm_smi_csv(&fixture("rocm_smi_6.2_mi300x_2gpu_na.csv")).unwrap();
        assert_eq!(gpus.len(), 2);
        let (a, b) = (&gpus[0].reading, &gpus[1].reading);
        assert_eq!(a.temp_edge_c, None);
        assert_eq!(a.temp_junction_c, Some(71.0));
        // `Current Socket Graphics Package Power (W)` when there is no average.
        assert_eq!(a.power_w, Some(683.0));
        assert_eq!(a.gpu_busy_percent, Some(100.0));
        assert_eq!(a.mem_busy_percent, Some(23.0));
        assert_eq!(a.vram_used_bytes, Some(183_464_488_960));
        assert_eq!(b.power_w, None);
        assert_eq!(b.gpu_busy_percent, None);
        assert_eq!(b.mem_busy_percent, None);
        assert_eq!(b.gtt_used_bytes, None);
        assert_eq!(b.vram_used_bytes, Some(295_272_448));
        assert_eq!(gpus[1].index, 1);
    }

    #[test]
    fn rocm_smi_average_power_wins_over_current() {
        let text =
            "device,Current Socket Graphics Package Power (W),Average Graphics Package Power (W)\n\
                    card0,300.0,250.0\n";
        assert_eq!(
            parse_rocm_smi_csv(text).unwrap()[0].reading.power_w,
            Some(250.0)
        );
    }

    #[test]
    fn rocm_smi_banner_blank_lines_quotes_and_case() {
        let text = "\r\n============ ROCm System Management Interface ============\r\n\r\n\
                    DEVICE , gpu USE (%) ,Card Vendor,Card SKU,Device Name,Card series\r\n\
                    \r\n\
                    card0, 12 ,\"Advanced Micro Devices, Inc. [AMD/ATI]\",D65209,N/A,\"MI250 \"\"OAM\"\"\"\r\n\
                    \r\n\
                    ============ End of ROCm SMI Log ============\r\n";
        let gpus = parse_rocm_smi_csv(text).unwrap();
        assert_eq!(gpus.len(), 1);
        assert_eq!(gpus[0].reading.gpu_busy_percent, Some(12.0));
        // `Device Name` is N/A, so `Card series` wins over `Card SKU`.
        assert_eq!(gpus[0].name.as_deref(), Some("MI250 \"OAM\""));
    }

    #[test]
    fn rocm_smi_header_without_rows_is_no_gpus() {
        assert_eq!(parse_rocm_smi_csv("device,GPU use (%)\n"), Ok(vec![]));
    }

    #[test]
    fn rocm_smi_malformed_inputs() {
        let cases: &[(&str, &str)] = &[
            ("", "no header"),
            ("garbage\n\u{0}\u{1}zzz", "no header"),
            ("WARNING: No AMD GPUs specified\n", "no header"),
            (
                "device,GPU use (%)\ncard0,1,2\n",
                "line 2: 3 fields, but the header has 2",
            ),
            ("device,GPU use (%)\ncard0\n", "line 2: 1 fields"),
            (
                "device,GPU use (%)\n\ncard0,abc\n",
                "line 3: column `GPU use (%)`: `abc` is not a number",
            ),
            (
                "device,VRAM Total Memory (B)\ncard0,-5\n",
                "column `VRAM Total Memory (B)`: negative size",
            ),
            ("device,VRAM Total Memory (B)\ncard0,1e30\n", "out of range"),
            (
                "device,GPU use (%)\ngpu0,1\n",
                "expected `cardN`, found `gpu0`",
            ),
            ("device,GPU use (%)\ncard,1\n", "expected `cardN`"),
            (
                "device,GPU use (%)\ncard0,\"1\n",
                "unterminated quoted field",
            ),
            (
                "device,Temperature (Sensor edge) (C)\ncard0,inf\n",
                "is not a number",
            ),
        ];
        for (text, expected) in cases {
            let err = parse_rocm_smi_csv(text).unwrap_err();
            assert!(err.to_string().starts_with("rocm-smi: "), "{text:?}: {err}");
            assert!(err.to_string().contains(expected), "{text:?}: {err}");
        }
    }

    // ---- amd-smi ----------------------------------------------------------------------------

    #[test]
    fn amd_smi_array_form() {
        let gpus = parse_amd_smi_json(&fixture("amd_smi_6.2_metric_array.json")).unwrap();
        assert_eq!(gpus.len(), 1);
        let g = &gpus[0];
        assert_eq!((g.index, g.name.as_deref()), (0, None));
        let r = &g.reading;
        assert_eq!(r.gpu_busy_percent, Some(94.0));
        assert_eq!(r.mem_busy_percent, Some(37.0));
        assert_eq!(r.power_w, Some(318.0));
        assert_eq!(r.temp_edge_c, Some(68.0));
        assert_eq!(r.temp_junction_c, Some(89.0));
        assert_eq!(r.temp_mem_c, Some(80.0));
        assert_eq!(r.vram_total_bytes, Some(24_560 * MIB_U));
        assert_eq!(r.vram_used_bytes, Some(22_718 * MIB_U));
        assert_eq!(r.vis_vram_total_bytes, Some(24_560 * MIB_U));
        assert_eq!(r.vis_vram_used_bytes, Some(22_718 * MIB_U));
        assert_eq!(r.gtt_total_bytes, Some(31_999 * MIB_U));
        assert_eq!(r.gtt_used_bytes, Some(112 * MIB_U));
        assert_eq!(r.sclk_mhz, Some(2482.0));
        assert_eq!(r.mclk_mhz, Some(1249.0));
        // The consumer part reports a 0.0 J energy counter: not kept, so not available.
        assert_eq!(r.energy_j, None);
    }

    #[test]
    fn amd_smi_gpu_data_form() {
        let gpus = parse_amd_smi_json(&fixture("amd_smi_6.4_metric_gpu_data.json")).unwrap();
        assert_eq!(gpus.len(), 2);
        let (a, b) = (&gpus[0].reading, &gpus[1].reading);
        assert_eq!((gpus[0].index, gpus[1].index), (0, 1));
        assert_eq!(a.gpu_busy_percent, Some(100.0));
        assert_eq!(a.mem_busy_percent, Some(42.0));
        assert_eq!(a.power_w, Some(698.0));
        assert_eq!(a.temp_edge_c, None);
        assert_eq!(a.temp_junction_c, Some(82.0));
        assert_eq!(a.vram_total_bytes, Some(196_592 * MIB_U));
        assert_eq!(a.vram_used_bytes, Some(174_962 * MIB_U));
        assert_eq!(a.energy_j, Some(183_467_921.615));
        assert_eq!(a.sclk_mhz, Some(2100.0));
        assert_eq!(a.mclk_mhz, Some(1300.0));
        assert_eq!(b.gpu_busy_percent, None);
        assert_eq!(b.mem_busy_percent, None);
        assert_eq!(b.power_w, None);
        assert_eq!(b.gtt_used_bytes, Some(0));
    }

    #[test]
    fn amd_smi_units_and_not_available_forms() {
        let text = r#"WARNING: something on stdout
[{"gpu": 7,
  "usage": "N/A",
  "power": {"socket_power": {"value": 45000, "unit": "mW"}},
  "temperature": {"edge": {"value": "N/A", "unit": "C"}, "hotspot": 61, "mem": null},
  "clock": {"GFX_0": {"clk": {"value": 1.2, "unit": "GHz"}}, "mem_0": "N/A"},
  "energy": {"total_energy_consumption": "12.5 J"},
  "mem_usage": {"total_vram": {"value": 16, "unit": "GB"}, "used_vram": {"value": 4096, "unit": "B"},
                "total_gtt": {"value": 2, "unit": "KB"}, "used_gtt": 3,
                "total_visible_vram": "N/A"}}]
trailing text"#;
        let gpus = parse_amd_smi_json(text).unwrap();
        let r = &gpus[0].reading;
        assert_eq!(gpus[0].index, 7);
        assert_eq!(r.gpu_busy_percent, None);
        assert_eq!(r.power_w, Some(45.0));
        assert_eq!(r.temp_edge_c, None);
        assert_eq!(r.temp_junction_c, Some(61.0));
        assert_eq!(r.temp_mem_c, None);
        assert_eq!(r.sclk_mhz, Some(1200.0));
        assert_eq!(r.mclk_mhz, None);
        assert_eq!(r.energy_j, Some(12.5));
        assert_eq!(r.vram_total_bytes, Some(16 * GIB));
        assert_eq!(r.vram_used_bytes, Some(4096));
        assert_eq!(r.gtt_total_bytes, Some(2048));
        // A bare number for a size is in amd-smi's default unit, MB (MiB).
        assert_eq!(r.gtt_used_bytes, Some(3 * MIB_U));
        assert_eq!(r.vis_vram_total_bytes, None);
    }

    #[test]
    fn amd_smi_empty_list_is_no_gpus() {
        assert_eq!(parse_amd_smi_json("[]"), Ok(vec![]));
        assert_eq!(parse_amd_smi_json(r#"{"gpu_data": []}"#), Ok(vec![]));
    }

    #[test]
    fn amd_smi_malformed_inputs() {
        let cases: &[(&str, &str)] = &[
            ("", "no JSON"),
            ("garbage", "no JSON"),
            ("[{\"gpu\": 0,", "invalid JSON"),
            ("{\"other\": []}", "`gpu_data`"),
            ("[1]", "entry 0: not an object"),
            ("[{\"usage\": {}}]", "entry 0: no valid `gpu` index"),
            ("[{\"gpu\": -1}]", "no valid `gpu` index"),
            (
                r#"[{"gpu": 0, "usage": {"gfx_activity": {"value": "busy", "unit": "%"}}}]"#,
                "gpu 0, `usage.gfx_activity`: `busy` is not a number",
            ),
            (
                r#"[{"gpu": 0, "mem_usage": {"used_vram": {"value": -1, "unit": "MB"}}}]"#,
                "gpu 0, `mem_usage.used_vram`: negative size",
            ),
            (
                r#"[{"gpu": 0, "mem_usage": {"used_vram": {"value": 1, "unit": "XB"}}}]"#,
                "unexpected unit `XB`",
            ),
            (
                r#"[{"gpu": 0, "power": {"socket_power": {"value": 1, "unit": "C"}}}]"#,
                "unexpected unit `C`",
            ),
            (
                r#"[{"gpu": 2, "usage": 5}]"#,
                "gpu 2: `usage` is not an object",
            ),
            (
                r#"[{"gpu": 0, "usage": {"gfx_activity": [1]}}]"#,
                "expected a number",
            ),
            (
                r#"[{"gpu": 0, "usage": {"gfx_activity": {"unit": "%"}}}]"#,
                "without `value`",
            ),
        ];
        for (text, expected) in cases {
            let err = parse_amd_smi_json(text).unwrap_err();
            assert!(err.to_string().starts_with("amd-smi: "), "{text:?}: {err}");
            assert!(err.to_string().contains(expected), "{text:?}: {err}");
        }
    }

    // ---- nvidia-smi -------------------------------------------------------------------------

    #[test]
    fn nvidia_smi_two_gpus_with_na() {
        let gpus = parse_nvidia_smi_csv(&fixture("nvidia_smi_2gpu.csv")).unwrap();
        assert_eq!(gpus.len(), 2);
        let (a, b) = (&gpus[0], &gpus[1]);
        assert_eq!(a.index, 0);
        assert_eq!(a.name.as_deref(), Some("NVIDIA H100 80GB HBM3"));
        assert_eq!(a.reading.vram_used_bytes, Some(71_243 * MIB_U));
        assert_eq!(a.reading.vram_total_bytes, Some(81_559 * MIB_U));
        assert_eq!(a.reading.gpu_busy_percent, Some(98.0));
        assert_eq!(a.reading.mem_busy_percent, Some(61.0));
        assert_eq!(a.reading.temp_edge_c, Some(67.0));
        assert_eq!(a.reading.power_w, Some(612.45));
        assert_eq!(a.reading.sclk_mhz, Some(1980.0));
        assert_eq!(a.reading.mclk_mhz, Some(2619.0));
        assert_eq!(b.index, 1);
        assert_eq!(b.reading.gpu_busy_percent, None);
        assert_eq!(b.reading.mem_busy_percent, None);
        assert_eq!(b.reading.vram_used_bytes, Some(37 * MIB_U));
        assert_eq!(b.reading.temp_junction_c, None);
    }

    #[test]
    fn nvidia_smi_not_supported_and_no_devices() {
        let text = "\n3, Tesla K80, 0, 11441, 0, 0, 30, [Not Supported], 324, 324\n\n";
        let gpus = parse_nvidia_smi_csv(text).unwrap();
        assert_eq!(gpus[0].index, 3);
        assert_eq!(gpus[0].reading.power_w, None);
        assert_eq!(gpus[0].reading.vram_used_bytes, Some(0));
        assert_eq!(parse_nvidia_smi_csv("No devices were found\n"), Ok(vec![]));
        assert_eq!(parse_nvidia_smi_csv(""), Ok(vec![]));
    }

    #[test]
    fn nvidia_smi_malformed_inputs() {
        let cases: &[(&str, &str)] = &[
            (
                "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
                "line 1: 1 fields, expected 10",
            ),
            ("0, A, 1, 2, 3, 4, 5, 6, 7\n", "9 fields"),
            (
                "0, A, 1, 2, 3, 4, 5, 6, 7, 8\n0, B, 1, 2\n",
                "line 2: 4 fields",
            ),
            (
                "x, A, 1, 2, 3, 4, 5, 6, 7, 8\n",
                "field `index`: `x` is not a GPU index",
            ),
            ("[N/A], A, 1, 2, 3, 4, 5, 6, 7, 8\n", "field `index`"),
            (
                "0, A, -1, 2, 3, 4, 5, 6, 7, 8\n",
                "field `memory.used`: negative size",
            ),
            (
                "0, A, 1, 2, hot, 4, 5, 6, 7, 8\n",
                "field `utilization.gpu`: `hot` is not a number",
            ),
        ];
        for (text, expected) in cases {
            let err = parse_nvidia_smi_csv(text).unwrap_err();
            assert!(
                err.to_string().starts_with("nvidia-smi: "),
                "{text:?}: {err}"
            );
            assert!(err.to_string().contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn nvidia_smi_args_match_the_parser_fields() {
        assert_eq!(
            nvidia_fields(),
            [
                "index",
                "name",
                "memory.used",
                "memory.total",
                "utilization.gpu",
                "utilization.memory",
                "temperature.gpu",
                "power.draw",
                "clocks.sm",
                "clocks.mem"
            ]
        );
        assert!(NVIDIA_SMI_ARGS[0].starts_with("--query-gpu=index,name,"));
        assert!(!NVIDIA_SMI_ARGS[0].contains(' '));
        assert_eq!(NVIDIA_SMI_ARGS[1], "--format=csv,noheader,nounits");
        assert!(ROCM_SMI_ARGS.contains(&"--csv") && ROCM_SMI_ARGS.contains(&"--showmemuse"));
        assert_eq!(AMD_SMI_ARGS, ["metric", "--json"]);
    }

    /// Every prefix of every fixture, and some garbage, must parse or fail without panicking.
    #[test]
    fn parsers_never_panic_on_truncated_or_garbage_input() {
        let names = [
            "rocm_smi_6.2_warning.csv",
            "rocm_smi_5.7_old_columns.csv",
            "rocm_smi_6.2_mi300x_2gpu_na.csv",
            "amd_smi_6.2_metric_array.json",
            "amd_smi_6.4_metric_gpu_data.json",
            "nvidia_smi_2gpu.csv",
        ];
        let mut inputs: Vec<String> = vec![
            "\"".into(),
            ",,,,".into(),
            "device,\"".into(),
            "card99999999999999999999,".into(),
            "{\"gpu_data\": {}}".into(),
            "[{\"gpu\": 1e400}]".into(),
            "\u{feff}ä,ö,ü\n€".into(),
        ];
        for name in names {
            let text = fixture(name);
            // Every cut in the first 200 bytes (headers, preambles), then about 250 more.
            let step = (text.len() / 250).max(1);
            let cuts = (0..200.min(text.len()))
                .chain((200..=text.len()).step_by(step))
                .filter(|&i| text.is_char_boundary(i));
            inputs.extend(cuts.map(|i| text[..i].to_string()));
        }
        for text in &inputs {
            let _ = parse_rocm_smi_csv(text);
            let _ = parse_amd_smi_json(text);
            let _ = parse_nvidia_smi_csv(text);
        }
    }

    // ---- query / runner ---------------------------------------------------------------------

    /// Records the call and answers with a canned result.
    struct FakeRunner {
        answer: fn() -> io::Result<String>,
        calls: RefCell<Vec<(String, Vec<String>, Duration)>>,
    }

    impl FakeRunner {
        fn new(answer: fn() -> io::Result<String>) -> Self {
            FakeRunner {
                answer,
                calls: RefCell::new(Vec::new()),
            }
        }
    }

    impl ToolRunner for FakeRunner {
        fn run(&self, program: &str, args: &[&str], timeout: Duration) -> io::Result<String> {
            let args = args.iter().map(|a| a.to_string()).collect();
            self.calls
                .borrow_mut()
                .push((program.to_string(), args, timeout));
            (self.answer)()
        }
    }

    #[test]
    fn query_runs_the_tool_with_its_args_and_parses() {
        let runner = FakeRunner::new(|| Ok(fixture("nvidia_smi_2gpu.csv")));
        let gpus = query(&runner, Tool::NvidiaSmi).unwrap();
        assert_eq!(gpus.len(), 2);
        let calls = runner.calls.borrow();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0, "nvidia-smi");
        assert_eq!(calls[0].1, NVIDIA_SMI_ARGS);
        assert_eq!(calls[0].2, SMI_TIMEOUT);

        let runner = FakeRunner::new(|| Ok(fixture("rocm_smi_6.2_warning.csv")));
        assert_eq!(query(&runner, Tool::RocmSmi).unwrap().len(), 1);
        assert_eq!(runner.calls.borrow()[0].1, ROCM_SMI_ARGS);

        let runner = FakeRunner::new(|| Ok(fixture("amd_smi_6.4_metric_gpu_data.json")));
        assert_eq!(query(&runner, Tool::AmdSmi).unwrap().len(), 2);
        assert_eq!(runner.calls.borrow()[0].0, "amd-smi");
    }

    #[test]
    fn query_missing_tool_names_it_and_says_fallback() {
        let runner = FakeRunner::new(|| Err(io::Error::from(io::ErrorKind::NotFound)));
        let err = query(&runner, Tool::RocmSmi).unwrap_err();
        assert!(matches!(
            err,
            SmiQueryError::NotFound {
                tool: "rocm-smi",
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "rocm-smi not found; it is only a fallback when amdgpu sysfs/ioctl readers do not work"
        );
        let err = query(&runner, Tool::AmdSmi).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("amd-smi not found; it is only a fallback"));
        let err = query(&runner, Tool::NvidiaSmi).unwrap_err();
        assert_eq!(
            err.to_string(),
            "nvidia-smi not found; it is only a fallback when NVML readers do not work"
        );
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn query_reports_io_and_parse_errors() {
        let runner = FakeRunner::new(|| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "did not finish within 5s; killed",
            ))
        });
        let err = query(&runner, Tool::AmdSmi).unwrap_err();
        assert!(matches!(
            err,
            SmiQueryError::Io {
                tool: "amd-smi",
                ..
            }
        ));
        assert_eq!(err.to_string(), "amd-smi: did not finish within 5s; killed");

        let runner = FakeRunner::new(|| Ok("garbage".to_string()));
        let err = query(&runner, Tool::RocmSmi).unwrap_err();
        assert!(matches!(err, SmiQueryError::Malformed(_)));
        assert!(err.to_string().starts_with("rocm-smi: "));
    }

    // RealRunner is exercised with coreutils only; no GPU tool is ever spawned by tests.

    #[test]
    fn real_runner_returns_stdout() {
        let out = RealRunner
            .run("echo", &["a,b"], Duration::from_secs(10))
            .unwrap();
        assert_eq!(out, "a,b\n");
    }

    #[test]
    fn real_runner_kills_after_timeout() {
        let start = std::time::Instant::now();
        let err = RealRunner
            .run("sleep", &["10"], Duration::from_millis(100))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn real_runner_missing_program_is_not_found() {
        let err = RealRunner
            .run("o3-no-such-smi-tool", &[], Duration::from_secs(1))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn real_runner_failure_without_output_is_an_error() {
        let err = RealRunner
            .run(
                "sh",
                &["-c", "echo oops >&2; exit 3"],
                Duration::from_secs(10),
            )
            .unwrap_err();
        assert!(err.to_string().contains("oops"), "{err}");
    }
}
