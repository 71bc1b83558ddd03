//! GGUF model files: architecture, shapes, quantization and exact parameter count, read from
//! the header; and whether the file is long enough to hold the tensor data the header declares.
//!
//! Layout (ggml `docs/gguf.md`, versions 2 and 3, little endian): the magic `"GGUF"`, version
//! `u32`, tensor count `u64`, metadata key/value count `u64`; then each key/value (key: `u64`
//! length + UTF-8 bytes, value type `u32`, value); then each tensor info (name, `n_dims` `u32`,
//! `n_dims` × `u64` dimensions, ggml type `u32`, data offset `u64`); then padding to
//! `general.alignment` (a `u32` power of two, default 32) and the tensor data. Each tensor's data
//! starts at the start of the data section plus its offset, a multiple of the alignment.
//!
//! [`read`] (what `o3 predict`, `o3 probe` and `o3 optimize` use) is strict, as llama.cpp is:
//! every offset must be aligned and every tensor's data must end within the file, so a file cut
//! short (an interrupted download) is refused although its header is intact. The data itself
//! is never read: only the file size is compared. [`read_header`] and [`parse`] read the header
//! alone and accept a file without its data (the fixtures are such files).
//!
//! Value types: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool, 8 string, 9 array
//! (element type `u32`, count `u64`, elements), 10 u64, 11 i64, 12 f64.
//!
//! The header is read front to back through one buffered reader, and nothing after the last
//! tensor info is read; nothing is sought, except a rewind for a second pass when a strict
//! read finds data past the end (to name the first tensor cut). Large arrays (a 128k-token
//! vocabulary) are streamed past without being kept. Every length is checked against the bytes
//! left in the file and against the limits below *before* anything is read or allocated, so a
//! truncated or malformed file gives a one-line [`GgufError`], never a panic or a huge
//! allocation.
//!
//! Version 1 files (2023, 32-bit lengths) and big-endian files are refused with a message that
//! says so. Like llama.cpp, nested arrays are refused.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest string (key or value) accepted: 1 MiB. Chat templates are the longest seen (tens
/// of KiB).
pub const MAX_STRING_BYTES: u64 = 1 << 20;
/// Most elements accepted in one array (2^28); vocabularies hold ~2^18.
pub const MAX_ARRAY_COUNT: u64 = 1 << 28;
/// Most dimensions accepted for one tensor (ggml itself uses at most 4).
pub const MAX_DIMS: u32 = 8;
/// Most tensors accepted (2^20); the largest MoE models have a few thousand.
pub const MAX_TENSOR_COUNT: u64 = 1 << 20;
/// Most metadata key/values accepted (2^20); real files have a few dozen.
pub const MAX_KV_COUNT: u64 = 1 << 20;
/// Alignment of the data section and of every tensor's offset without `general.alignment`.
pub const DEFAULT_ALIGNMENT: u32 = 32;
const ALIGNMENT_KEY: &str = "general.alignment";

const MAGIC: [u8; 4] = *b"GGUF";
/// Buffer of [`read`]: headers are a few MiB at most (the vocabulary), read in large chunks.
const READ_BUF_BYTES: usize = 256 * 1024;

const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

/// Architecture-prefixed keys (`<arch>.<field>`) whose integer values are kept.
const ARCH_FIELDS: [&str; 9] = [
    "context_length",
    "block_count",
    "embedding_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.value_length",
    "attention.sliding_window",
    "expert_count",
];

/// What o3 needs to know about a model file, from its GGUF header.
///
/// Integer metadata is accepted in any GGUF integer type (u8..u64, i8..i64) that fits a
/// `u32`; a value of another type, negative, or too large reads as `None`. A per-layer array
/// (e.g. OpenELM's `<arch>.attention.head_count`) reads as its largest element.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The path as given to [`read`] / [`parse`].
    pub path: String,
    pub file_size_bytes: u64,
    /// 2 or 3.
    pub gguf_version: u32,
    /// `general.architecture` (e.g. `llama`, `qwen2`, `gemma2`).
    pub architecture: Option<String>,
    /// `general.name`.
    pub name: Option<String>,
    /// `<arch>.context_length`: the context the model was trained for.
    pub trained_context: Option<u32>,
    /// `<arch>.block_count`: transformer layers.
    pub block_count: Option<u32>,
    /// `<arch>.embedding_length`.
    pub embedding_length: Option<u32>,
    /// `<arch>.attention.head_count`; per-layer arrays: the largest.
    pub head_count: Option<u32>,
    /// `<arch>.attention.head_count_kv`. Some models (OpenELM, hybrid attention/SSM models)
    /// store one value per layer as an array: this is then the **largest** per-layer value, so
    /// KV sizes computed from it are upper bounds.
    pub head_count_kv: Option<u32>,
    /// `<arch>.attention.key_length` (per-head K size), when the file states it.
    pub key_length: Option<u32>,
    /// `<arch>.attention.value_length` (per-head V size), when the file states it.
    pub value_length: Option<u32>,
    /// `<arch>.attention.sliding_window` (tokens), for models with sliding-window layers.
    pub sliding_window: Option<u32>,
    /// `<arch>.expert_count`, for mixture-of-experts models.
    pub expert_count: Option<u32>,
    /// `general.file_type`: llama.cpp's `llama_ftype`.
    pub file_type: Option<u32>,
    /// Human name of `file_type` (15 → `Q4_K_M`); where the file has no `file_type` or one
    /// this reader does not name, the ggml type holding the most elements (e.g. `Q8_0`);
    /// `None` for a file without either.
    pub quantization: Option<String>,
    /// Exact parameter count: the sum over tensors of the product of their dimensions.
    pub parameters: u64,
    pub tensor_count: u64,
    /// Bytes of tensor data (without alignment padding), from the ggml types' block sizes
    /// (ggml-common.h): F32 4 B/element, F16/BF16 2, I8 1, I16 2, I32 4, I64 8, F64 8; per 32
    /// elements Q4_0 18 B, Q4_1 20, Q5_0 22, Q5_1 24, Q8_0 34, Q8_1 36, IQ4_NL 18, MXFP4 17;
    /// per 256 Q2_K 84, Q3_K 110, Q4_K 144, Q5_K 176, Q6_K 210, Q8_K 292, IQ2_XXS 66,
    /// IQ2_XS 74, IQ2_S 82, IQ3_XXS 98, IQ3_S 110, IQ1_S 50, IQ1_M 56, IQ4_XS 136, TQ1_0 54,
    /// TQ2_0 66. Tensors of any other type (removed or unknown types) count 0 bytes here,
    /// making this a lower bound: see `tensor_bytes_exact`.
    pub tensor_bytes: u64,
    /// False when some tensor's type has no block size above: `tensor_bytes` is then a lower
    /// bound (the file size is an upper bound).
    pub tensor_bytes_exact: bool,
    /// Bytes the file needs to hold its tensor data: the start of the data section (the end of
    /// the tensor infos rounded up to the alignment) plus the furthest end of a tensor's data
    /// (its offset plus its bytes; a tensor of an unsized type counts its offset alone). The
    /// end of the tensor infos for a file without tensors. A complete file is at least this
    /// long; [`read`] refuses a shorter one.
    #[serde(default)]
    pub data_end: u64,
}

impl ModelInfo {
    /// KV cache bytes per token of context at f16 (2 bytes per element):
    /// block_count × head_count_kv × (key_length + value_length) × 2, with key/value length
    /// defaulting to embedding_length / head_count, and head_count_kv defaulting to
    /// head_count (no grouped-query attention), as llama.cpp does. None when the shapes are
    /// unknown.
    ///
    /// An upper bound for models whose `head_count_kv` is a per-layer array (the largest is
    /// used) and for sliding-window models (every layer is counted as full attention).
    pub fn kv_bytes_per_token_f16(&self) -> Option<u64> {
        let blocks = u64::from(self.block_count?);
        let heads = self.head_count.filter(|&h| h > 0).map(u64::from);
        let kv_heads = self.head_count_kv.map(u64::from).or(heads)?;
        let per_head = || Some(u64::from(self.embedding_length?) / heads?);
        let k = self.key_length.map(u64::from).or_else(per_head)?;
        let v = self.value_length.map(u64::from).or_else(per_head)?;
        blocks
            .checked_mul(kv_heads)?
            .checked_mul(k.checked_add(v)?)?
            .checked_mul(2)
    }

    /// Size class for the optimizer's initial batch: parameters, in billions.
    pub fn parameter_billions(&self) -> f64 {
        self.parameters as f64 / 1e9
    }
}

/// Why a model file's header could not be read. Each message is one line naming the file,
/// the offset and what is wrong, and what to do.
#[derive(Debug, Error)]
pub enum GgufError {
    #[error("cannot open model file {path}: {error}; check the path and its permissions")]
    Open { path: String, error: io::Error },
    #[error("model file {path} is not a regular file; pass the path of a .gguf model file")]
    NotAFile { path: String },
    #[error("{path}: read failed at offset {offset}: {error}; check the disk and retry")]
    Read {
        path: String,
        offset: u64,
        error: io::Error,
    },
    #[error(
        "{path}: not a GGUF file: offset 0 holds \"{found}\" instead of the magic \"GGUF\"; \
         is it a GGUF model file? (for Ollama, pass the model blob, not its manifest)"
    )]
    BadMagic { path: String, found: String },
    #[error("{path}: GGUF version {version} at offset 4 is not supported (2 and 3 are); {hint}")]
    UnsupportedVersion {
        path: String,
        version: u32,
        hint: &'static str,
    },
    #[error(
        "{path}: {what} at offset {offset} is cut off: the file ends at {file_size} bytes; \
         the file is truncated (interrupted download or copy?): fetch it again"
    )]
    Truncated {
        path: String,
        offset: u64,
        file_size: u64,
        what: String,
    },
    #[error(
        "{path}: {what} at offset {offset} needs {len} bytes but only {left} are left in the \
         {file_size}-byte file; the file is truncated or corrupt: fetch it again"
    )]
    PastEnd {
        path: String,
        offset: u64,
        what: String,
        len: u64,
        left: u64,
        file_size: u64,
    },
    #[error(
        "{path}: malformed GGUF header at offset {offset}: {what}; the file is corrupt or not \
         a GGUF model file"
    )]
    Malformed {
        path: String,
        offset: u64,
        what: String,
    },
    #[error(
        "{path}: tensor \"{tensor}\" data ends at byte {end} but the file has {file_size} \
         bytes; the file is truncated (interrupted download or copy?): fetch it again"
    )]
    DataPastEnd {
        path: String,
        tensor: String,
        end: u64,
        file_size: u64,
    },
    #[error(
        "{path}: tensor \"{tensor}\" has data offset {offset}, not a multiple of the alignment \
         {alignment}; the file is corrupt: fetch it again"
    )]
    Misaligned {
        path: String,
        tensor: String,
        offset: u64,
        alignment: u32,
    },
}

/// Reads the model file at `path` as a model server loads it: its header (buffered; the
/// tensor data is never read), then checks every tensor's data offset is aligned and its data
/// ends within the file ([`parse_strict`]). A file cut short is an error.
pub fn read(path: &Path) -> Result<ModelInfo, GgufError> {
    let (r, file_size, shown) = open(path)?;
    parse_strict(r, file_size, &shown)
}

/// Reads the GGUF header of the model file at `path` alone ([`parse`]): a file without its
/// tensor data reads.
pub fn read_header(path: &Path) -> Result<ModelInfo, GgufError> {
    let (r, file_size, shown) = open(path)?;
    parse(r, file_size, &shown)
}

fn open(path: &Path) -> Result<(BufReader<File>, u64, String), GgufError> {
    let shown = path.display().to_string();
    let open_err = |error| GgufError::Open {
        path: shown.clone(),
        error,
    };
    let file = File::open(path).map_err(open_err)?;
    let meta = file.metadata().map_err(open_err)?;
    if !meta.is_file() {
        return Err(GgufError::NotAFile { path: shown });
    }
    Ok((
        BufReader::with_capacity(READ_BUF_BYTES, file),
        meta.len(),
        shown,
    ))
}

/// Parses a GGUF header from `r`, a stream of a file of `file_size` bytes shown as `path` in
/// errors. Reads up to the end of the tensor infos, not further; the tensor data may be
/// missing (see [`parse_strict`]).
pub fn parse<R: Read>(r: R, file_size: u64, path: &str) -> Result<ModelInfo, GgufError> {
    parse_layout(r, file_size, path, None).map(|(info, _)| info)
}

/// [`parse`], then the checks a model server makes before it maps the data: every tensor's
/// data offset is a multiple of the alignment, and every tensor's data ends within the
/// `file_size` bytes ([`ModelInfo::data_end`] ≤ `file_size`). The error names the first
/// tensor (in header order) that is misaligned or whose data is past the end, as llama.cpp
/// does; finding the latter takes a second pass over the header, on that error only.
pub fn parse_strict<R: Read + Seek>(
    mut r: R,
    file_size: u64,
    path: &str,
) -> Result<ModelInfo, GgufError> {
    let (info, layout) = parse_layout(&mut r, file_size, path, None)?;
    if let Some((tensor, offset)) = layout.misaligned {
        return Err(GgufError::Misaligned {
            path: path.to_owned(),
            tensor,
            offset,
            alignment: layout.alignment,
        });
    }
    if info.data_end <= file_size {
        return Ok(info);
    }
    r.rewind().map_err(|error| GgufError::Read {
        path: path.to_owned(),
        offset: 0,
        error,
    })?;
    let (_, again) = parse_layout(&mut r, file_size, path, Some(layout.data_start))?;
    // Without a first one (the file changed between the passes): the one that ends last.
    let (tensor, end) = again
        .first_past
        .unwrap_or((layout.furthest.unwrap_or_default(), info.data_end));
    Err(GgufError::DataPastEnd {
        path: path.to_owned(),
        tensor,
        end,
        file_size,
    })
}

/// Where the header says the tensor data lies, for [`parse_strict`].
struct Layout {
    alignment: u32,
    data_start: u64,
    /// The first tensor (in header order) whose data offset is not a multiple of the
    /// alignment, and that offset.
    misaligned: Option<(String, u64)>,
    /// The tensor whose data ends furthest into the file (the first of equals).
    furthest: Option<String>,
    /// With the data start given: the first tensor whose data ends past the end of the file,
    /// and where it ends.
    first_past: Option<(String, u64)>,
}

/// The header; with `data_start` (known from a first pass), also the first tensor whose data
/// ends past the end of the file.
fn parse_layout<R: Read>(
    r: R,
    file_size: u64,
    path: &str,
    data_start: Option<u64>,
) -> Result<(ModelInfo, Layout), GgufError> {
    let mut r = Reader {
        inner: r,
        offset: 0,
        file_size,
        path,
    };
    let (version, tensor_count, kv_count) = r.preamble()?;
    let mut meta = Meta::default();
    for index in 0..kv_count {
        r.kv(index, &mut meta)?;
    }
    let alignment = meta.alignment.unwrap_or(DEFAULT_ALIGNMENT);
    let mut tensors = Tensors {
        exact: true,
        alignment: u64::from(alignment),
        past: data_start.map(|start| (start, file_size)),
        ..Tensors::default()
    };
    for index in 0..tensor_count {
        r.tensor_info(index, &mut tensors)?;
    }
    // The data section starts at the end of the tensor infos, padded to the alignment.
    let data_start = r.offset.next_multiple_of(u64::from(alignment));
    let data_end = if tensor_count == 0 {
        r.offset
    } else {
        data_start.saturating_add(tensors.furthest_end)
    };
    let layout = Layout {
        alignment,
        data_start,
        misaligned: tensors.misaligned.take(),
        furthest: tensors.furthest.take(),
        first_past: tensors.first_past.take(),
    };
    let info = meta.into_info(path, file_size, version, tensor_count, tensors, data_end);
    Ok((info, layout))
}

/// What to do about a file of an unsupported GGUF `version`.
fn version_hint(version: u32) -> &'static str {
    if version == 1 {
        "version 1 files (2023) use 32-bit lengths: convert the model again with a current \
         llama.cpp or download a newer file"
    } else if (2..=3).contains(&version.swap_bytes()) {
        "this is a big-endian GGUF file: use the model's little-endian build"
    } else {
        "is it a GGUF model file? (a newer format may need a newer o3)"
    }
}

/// The metadata kept while reading: two strings, the alignment and the integers of [`wanted`]
/// keys.
#[derive(Default)]
struct Meta {
    architecture: Option<String>,
    name: Option<String>,
    /// `general.alignment`, checked to be a power of two.
    alignment: Option<u32>,
    ints: HashMap<String, u64>,
}

/// Totals over the tensor infos.
#[derive(Default)]
struct Tensors {
    parameters: u64,
    bytes: u64,
    exact: bool,
    /// Elements per ggml type, for the dominant type.
    elements_by_type: BTreeMap<u32, u64>,
    /// The alignment every data offset must be a multiple of.
    alignment: u64,
    /// The furthest end of a tensor's data, from the start of the data section, and whose.
    furthest_end: u64,
    furthest: Option<String>,
    /// The first misaligned tensor and its offset.
    misaligned: Option<(String, u64)>,
    /// The data start and the file size, when the first tensor past the end is looked for;
    /// that tensor and where its data ends.
    past: Option<(u64, u64)>,
    first_past: Option<(String, u64)>,
}

impl Tensors {
    /// Where a tensor's data lies (`data_offset` into the data section, `tensor_bytes` long):
    /// notes the first misaligned tensor, the first whose data ends past the end of the file
    /// (when looked for) and the one whose data ends furthest (the first of equals).
    fn place(&mut self, name: String, data_offset: u64, tensor_bytes: u64) {
        if self.misaligned.is_none() && data_offset % self.alignment != 0 {
            self.misaligned = Some((name.clone(), data_offset));
        }
        let end = data_offset.saturating_add(tensor_bytes);
        if let Some((data_start, file_size)) = self.past {
            let end = data_start.saturating_add(end);
            if self.first_past.is_none() && end > file_size {
                self.first_past = Some((name.clone(), end));
            }
        }
        if self.furthest.is_none() || end > self.furthest_end {
            self.furthest_end = end;
            self.furthest = Some(name);
        }
    }
}

impl Meta {
    fn into_info(
        self,
        path: &str,
        file_size: u64,
        version: u32,
        tensor_count: u64,
        tensors: Tensors,
        data_end: u64,
    ) -> ModelInfo {
        let int = |key: &str| self.ints.get(key).and_then(|&v| u32::try_from(v).ok());
        let field = |f: &str| {
            self.architecture
                .as_ref()
                .and_then(|arch| int(&format!("{arch}.{f}")))
        };
        let file_type = int("general.file_type");
        let dominant = tensors
            .elements_by_type
            .iter()
            .max_by_key(|&(&ty, &n)| (n, Reverse(ty)))
            .map(|(&ty, _)| {
                ggml_type_name(ty).map_or_else(|| format!("ggml type {ty}"), str::to_owned)
            });
        let quantization = file_type
            .and_then(ftype_name)
            .map(str::to_owned)
            .or(dominant);
        ModelInfo {
            path: path.to_owned(),
            file_size_bytes: file_size,
            gguf_version: version,
            trained_context: field("context_length"),
            block_count: field("block_count"),
            embedding_length: field("embedding_length"),
            head_count: field("attention.head_count"),
            head_count_kv: field("attention.head_count_kv"),
            key_length: field("attention.key_length"),
            value_length: field("attention.value_length"),
            sliding_window: field("attention.sliding_window"),
            expert_count: field("expert_count"),
            file_type,
            quantization,
            parameters: tensors.parameters,
            tensor_count,
            tensor_bytes: tensors.bytes,
            tensor_bytes_exact: tensors.exact,
            data_end,
            architecture: self.architecture,
            name: self.name,
        }
    }
}

/// Whether the integer value of `key` is kept: `general.file_type` and `<prefix>.<field>` for
/// the [`ARCH_FIELDS`] (the architecture may come later in the file than its keys).
fn wanted(key: &str) -> bool {
    key == "general.file_type"
        || ARCH_FIELDS.iter().any(|field| {
            key.strip_suffix(field)
                .is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.'))
        })
}

/// Bytes of one value of a fixed-size type; None for strings, arrays and unknown types.
fn scalar_size(ty: u32) -> Option<u64> {
    match ty {
        T_U8 | T_I8 | T_BOOL => Some(1),
        T_U16 | T_I16 => Some(2),
        T_U32 | T_I32 | T_F32 => Some(4),
        T_U64 | T_I64 | T_F64 => Some(8),
        _ => None,
    }
}

fn is_integer(ty: u32) -> bool {
    matches!(
        ty,
        T_U8 | T_I8 | T_U16 | T_I16 | T_U32 | T_I32 | T_U64 | T_I64
    )
}

/// The non-negative value of an integer of type `ty` stored little endian in the first bytes
/// of `b`; None for negative values and non-integer types.
fn int_value(ty: u32, b: &[u8; 8]) -> Option<u64> {
    let signed = match ty {
        T_U8 => return Some(u64::from(b[0])),
        T_U16 => return Some(u64::from(u16::from_le_bytes([b[0], b[1]]))),
        T_U32 => return Some(u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        T_U64 => return Some(u64::from_le_bytes(*b)),
        T_I8 => i64::from(i8::from_le_bytes([b[0]])),
        T_I16 => i64::from(i16::from_le_bytes([b[0], b[1]])),
        T_I32 => i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        T_I64 => i64::from_le_bytes(*b),
        _ => return None,
    };
    u64::try_from(signed).ok()
}

/// Name of a ggml tensor type (`enum ggml_type` in ggml.h; 4, 5, 31..=33 and 36..=38 are
/// removed types).
pub fn ggml_type_name(ty: u32) -> Option<&'static str> {
    Some(match ty {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return None,
    })
}

/// (elements per block, bytes per block) of the ggml types this reader sizes (see
/// [`ModelInfo::tensor_bytes`]); None for the others. The block structs of ggml-common.h
/// (QK_K = 256); "d" is an f16 scale.
fn ggml_block(ty: u32) -> Option<(u64, u64)> {
    Some(match ty {
        0 => (1, 4),       // F32
        1 | 30 => (1, 2),  // F16, BF16
        2 => (32, 18),     // Q4_0: d + 16 B
        3 => (32, 20),     // Q4_1: d, f16 min + 16 B
        6 => (32, 22),     // Q5_0
        7 => (32, 24),     // Q5_1
        8 => (32, 34),     // Q8_0: d + 32 B
        9 => (32, 36),     // Q8_1: d, f16 sum + 32 B
        10 => (256, 84),   // Q2_K
        11 => (256, 110),  // Q3_K
        12 => (256, 144),  // Q4_K
        13 => (256, 176),  // Q5_K
        14 => (256, 210),  // Q6_K
        15 => (256, 292),  // Q8_K
        16 => (256, 66),   // IQ2_XXS: d + 32 u16
        17 => (256, 74),   // IQ2_XS: d + 32 u16 + 8 scales
        18 => (256, 98),   // IQ3_XXS: d + 96 B
        19 => (256, 50),   // IQ1_S: d + 32 B + 8 u16
        20 => (32, 18),    // IQ4_NL: d + 16 B
        21 => (256, 110),  // IQ3_S: d + 64 + 8 + 32 + 4 B
        22 => (256, 82),   // IQ2_S: d + 64 + 8 + 8 B
        23 => (256, 136),  // IQ4_XS: d, u16 scales_h + 4 + 128 B
        24 => (1, 1),      // I8
        25 => (1, 2),      // I16
        26 => (1, 4),      // I32
        27 | 28 => (1, 8), // I64, F64
        29 => (256, 56),   // IQ1_M: 32 + 16 + 8 B (no d)
        34 => (256, 54),   // TQ1_0: 48 + 4 B + d
        35 => (256, 66),   // TQ2_0: 64 B + d
        39 => (32, 17),    // MXFP4: u8 exponent + 16 B
        _ => return None,
    })
}

/// Human name of llama.cpp's `llama_ftype` (`general.file_type`), as llama.cpp's quantize
/// tool and Ollama spell them. 5, 6 and 33..=35 are removed types.
pub fn ftype_name(ftype: u32) -> Option<&'static str> {
    Some(match ftype {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        4 => "Q4_1_SOME_F16",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        _ => return None,
    })
}

/// A string of the file as o3 shows it: control characters (a newline in a key, a NUL)
/// escaped, so every message naming a key or tensor stays on one line. Real keys, names and
/// architectures have none, so nothing o3 matches on changes.
fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// Describes the item being read, for errors; called only when there is one.
type What<'a> = &'a dyn Fn() -> String;

/// A counting reader over the header: every read is checked against the bytes left.
struct Reader<'p, R> {
    inner: R,
    offset: u64,
    file_size: u64,
    path: &'p str,
}

impl<R: Read> Reader<'_, R> {
    fn left(&self) -> u64 {
        self.file_size.saturating_sub(self.offset)
    }

    fn malformed(&self, offset: u64, what: String) -> GgufError {
        GgufError::Malformed {
            path: self.path.to_owned(),
            offset,
            what,
        }
    }

    fn truncated(&self, offset: u64, what: String) -> GgufError {
        GgufError::Truncated {
            path: self.path.to_owned(),
            offset,
            file_size: self.file_size,
            what,
        }
    }

    fn past_end(&self, offset: u64, len: u64, what: String) -> GgufError {
        GgufError::PastEnd {
            path: self.path.to_owned(),
            offset,
            what,
            len,
            left: self.file_size.saturating_sub(offset),
            file_size: self.file_size,
        }
    }

    fn fill(&mut self, buf: &mut [u8], what: What) -> Result<(), GgufError> {
        let at = self.offset;
        if buf.len() as u64 > self.left() {
            return Err(self.truncated(at, what()));
        }
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.offset += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(self.truncated(at, what())),
            Err(error) => Err(GgufError::Read {
                path: self.path.to_owned(),
                offset: at,
                error,
            }),
        }
    }

    fn bytes<const N: usize>(&mut self, what: What) -> Result<[u8; N], GgufError> {
        let mut buf = [0u8; N];
        self.fill(&mut buf, what)?;
        Ok(buf)
    }

    fn u32(&mut self, what: What) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }

    fn u64(&mut self, what: What) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }

    /// One value of a fixed-size type (`size` ≤ 8 bytes), zero-padded to 8 bytes.
    fn scalar(&mut self, size: u64, what: What) -> Result<[u8; 8], GgufError> {
        let mut buf = [0u8; 8];
        let n = usize::try_from(size).unwrap_or(8).min(8);
        self.fill(&mut buf[..n], what)?;
        Ok(buf)
    }

    /// Reads past `n` bytes without keeping them; the caller has checked `n` against the
    /// bytes left.
    fn skip(&mut self, n: u64, what: What) -> Result<(), GgufError> {
        let at = self.offset;
        if n > self.left() {
            return Err(self.past_end(at, n, what()));
        }
        let copied =
            io::copy(&mut (&mut self.inner).take(n), &mut io::sink()).map_err(|error| {
                GgufError::Read {
                    path: self.path.to_owned(),
                    offset: at,
                    error,
                }
            })?;
        self.offset += copied;
        if copied < n {
            return Err(self.truncated(at, what()));
        }
        Ok(())
    }

    /// A string's length, checked against [`MAX_STRING_BYTES`] and the bytes left.
    fn string_len(&mut self, what: What) -> Result<u64, GgufError> {
        let at = self.offset;
        let len = self.u64(&|| format!("the length of {}", what()))?;
        if len > MAX_STRING_BYTES {
            return Err(self.malformed(
                at,
                format!(
                    "{} claims a length of {len} bytes, above the limit of {MAX_STRING_BYTES}",
                    what()
                ),
            ));
        }
        if len > self.left() {
            return Err(self.past_end(self.offset, len, what()));
        }
        Ok(len)
    }

    fn string(&mut self, what: What) -> Result<String, GgufError> {
        let len = self.string_len(what)?;
        // Bounded by MAX_STRING_BYTES and by the bytes left in the file.
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
        self.fill(&mut buf, what)?;
        Ok(printable(&String::from_utf8_lossy(&buf)))
    }

    fn skip_string(&mut self, what: What) -> Result<(), GgufError> {
        let len = self.string_len(what)?;
        self.skip(len, what)
    }

    /// One metadata key/value; keeps what [`Meta`] wants, skips the rest.
    fn kv(&mut self, index: u64, meta: &mut Meta) -> Result<(), GgufError> {
        let key = self.string(&|| format!("the key of metadata entry {index}"))?;
        let ty_at = self.offset;
        let ty = self.u32(&|| format!("the value type of key \"{key}\""))?;
        let what = || format!("the value of key \"{key}\"");
        if key == ALIGNMENT_KEY && !is_integer(ty) {
            return Err(self.malformed(
                ty_at,
                format!("key \"{key}\" has value type {ty}, not an integer"),
            ));
        }
        match ty {
            T_STRING => match key.as_str() {
                "general.architecture" => meta.architecture = Some(self.string(&what)?),
                "general.name" => meta.name = Some(self.string(&what)?),
                _ => self.skip_string(&what)?,
            },
            T_ARRAY => self.array(&key, meta)?,
            _ => {
                let Some(size) = scalar_size(ty) else {
                    return Err(self.malformed(
                        ty_at,
                        format!("key \"{key}\" has unknown value type {ty} (known: 0 to 12)"),
                    ));
                };
                let value_at = self.offset;
                let value = self.scalar(size, &what)?;
                if key == ALIGNMENT_KEY {
                    let alignment = int_value(ty, &value)
                        .and_then(|a| u32::try_from(a).ok())
                        .filter(|a| a.is_power_of_two());
                    let Some(alignment) = alignment else {
                        return Err(self.malformed(
                            value_at,
                            format!("\"{key}\" is not a power of two that fits 32 bits"),
                        ));
                    };
                    meta.alignment = Some(alignment);
                } else if wanted(&key) {
                    if let Some(v) = int_value(ty, &value) {
                        meta.ints.insert(key, v);
                    }
                }
            }
        }
        Ok(())
    }

    /// The magic, the version (2 or 3), and the tensor and metadata key/value counts (each
    /// within its limit).
    fn preamble(&mut self) -> Result<(u32, u64, u64), GgufError> {
        let magic: [u8; 4] = self.bytes(&|| "the GGUF magic".to_owned())?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic {
                path: self.path.to_owned(),
                found: magic.escape_ascii().to_string(),
            });
        }
        let version = self.u32(&|| "the GGUF version".to_owned())?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion {
                path: self.path.to_owned(),
                version,
                hint: version_hint(version),
            });
        }
        let tensor_count = self.count("tensor count", MAX_TENSOR_COUNT)?;
        let kv_count = self.count("metadata key/value count", MAX_KV_COUNT)?;
        Ok((version, tensor_count, kv_count))
    }

    /// The `u64` count `name`, refused above `limit`.
    fn count(&mut self, name: &str, limit: u64) -> Result<u64, GgufError> {
        let at = self.offset;
        let n = self.u64(&|| format!("the {name}"))?;
        if n > limit {
            return Err(self.malformed(at, format!("{name} {n} is above the limit of {limit}")));
        }
        Ok(n)
    }

    /// An array value (after its key and type): integer arrays of wanted keys keep their
    /// largest element; everything else is read past.
    fn array(&mut self, key: &str, meta: &mut Meta) -> Result<(), GgufError> {
        let at = self.offset;
        let elem = self.u32(&|| format!("the element type of array \"{key}\""))?;
        let count_at = self.offset;
        let count = self.u64(&|| format!("the element count of array \"{key}\""))?;
        if count > MAX_ARRAY_COUNT {
            return Err(self.malformed(
                count_at,
                format!(
                    "array \"{key}\" claims {count} elements, above the limit of \
                     {MAX_ARRAY_COUNT}"
                ),
            ));
        }
        match elem {
            T_STRING => {
                // Each string takes at least its 8-byte length.
                let min = count * 8;
                if min > self.left() {
                    return Err(self.past_end(
                        self.offset,
                        min,
                        format!("array \"{key}\" of {count} strings (8+ bytes each)"),
                    ));
                }
                for i in 0..count {
                    self.skip_string(&|| format!("string {i} of array \"{key}\""))?;
                }
            }
            T_ARRAY => {
                return Err(self.malformed(
                    at,
                    format!("array \"{key}\" holds arrays; nested arrays are not supported"),
                ))
            }
            _ => {
                let Some(size) = scalar_size(elem) else {
                    return Err(self.malformed(
                        at,
                        format!("array \"{key}\" has unknown element type {elem} (known: 0 to 12)"),
                    ));
                };
                let len = count * size; // ≤ 2^28 × 8: no overflow
                if len > self.left() {
                    return Err(self.past_end(
                        self.offset,
                        len,
                        format!("array \"{key}\" of {count} elements"),
                    ));
                }
                if is_integer(elem) && wanted(key) {
                    let mut max = None;
                    for i in 0..count {
                        let value =
                            self.scalar(size, &|| format!("element {i} of array \"{key}\""))?;
                        max = max.max(int_value(elem, &value));
                    }
                    if let Some(max) = max {
                        meta.ints.insert(key.to_owned(), max);
                    }
                } else {
                    self.skip(len, &|| format!("array \"{key}\""))?;
                }
            }
        }
        Ok(())
    }

    /// One tensor info: name, dimensions, type, offset. Adds its elements and bytes.
    fn tensor_info(&mut self, index: u64, acc: &mut Tensors) -> Result<(), GgufError> {
        let name = self.string(&|| format!("the name of tensor {index}"))?;
        let dims_at = self.offset;
        let (elements, first_dim) = self.tensor_dims(&name)?;
        let ty_at = self.offset;
        let ty = self.u32(&|| format!("the type of tensor \"{name}\""))?;
        let data_offset = self.u64(&|| format!("the data offset of tensor \"{name}\""))?;
        let tensor_bytes = match ggml_block(ty) {
            Some(block) => {
                let b = self.tensor_bytes(&name, ty, ty_at, block, elements, first_dim)?;
                acc.bytes = acc
                    .bytes
                    .checked_add(b)
                    .ok_or_else(|| self.sizes_overflow(ty_at))?;
                b
            }
            None => {
                acc.exact = false;
                0
            }
        };
        acc.place(name, data_offset, tensor_bytes);
        acc.parameters = acc.parameters.checked_add(elements).ok_or_else(|| {
            self.malformed(
                dims_at,
                "the tensors add up to more than 2^64 elements".into(),
            )
        })?;
        let by_type = acc.elements_by_type.entry(ty).or_insert(0);
        *by_type = by_type.saturating_add(elements);
        Ok(())
    }

    /// A tensor's dimension count (at most [`MAX_DIMS`]) and dimensions: its element count (at
    /// most 2^63-1) and its first dimension.
    fn tensor_dims(&mut self, name: &str) -> Result<(u64, u64), GgufError> {
        let dims_at = self.offset;
        let n_dims = self.u32(&|| format!("the dimension count of tensor \"{name}\""))?;
        if n_dims > MAX_DIMS {
            return Err(self.malformed(
                dims_at,
                format!(
                    "tensor \"{name}\" claims {n_dims} dimensions, above the limit of {MAX_DIMS}"
                ),
            ));
        }
        let max_elements = i64::MAX as u64;
        let mut elements: u64 = 1;
        let mut first_dim = 1;
        for d in 0..n_dims {
            let at = self.offset;
            let dim = self.u64(&|| format!("dimension {d} of tensor \"{name}\""))?;
            if d == 0 {
                first_dim = dim;
            }
            elements = elements
                .checked_mul(dim)
                .filter(|&n| n <= max_elements)
                .ok_or_else(|| {
                    self.malformed(
                        at,
                        format!("tensor \"{name}\" has more than 2^63-1 elements"),
                    )
                })?;
        }
        Ok((elements, first_dim))
    }

    /// Bytes of a tensor of ggml type `ty` (read at `ty_at`) with `(block, block_bytes)`: its
    /// first dimension must be whole blocks.
    fn tensor_bytes(
        &self,
        name: &str,
        ty: u32,
        ty_at: u64,
        (block, block_bytes): (u64, u64),
        elements: u64,
        first_dim: u64,
    ) -> Result<u64, GgufError> {
        if first_dim % block != 0 {
            let ty_name = ggml_type_name(ty).unwrap_or("?");
            return Err(self.malformed(
                ty_at,
                format!(
                    "tensor \"{name}\" of type {ty_name} has a first dimension of \
                     {first_dim}, not a multiple of its block size {block}"
                ),
            ));
        }
        (elements / block)
            .checked_mul(block_bytes)
            .ok_or_else(|| self.sizes_overflow(ty_at))
    }

    fn sizes_overflow(&self, at: u64) -> GgufError {
        self.malformed(at, "the tensor sizes add up to more than 2^64 bytes".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/gguf")
            .join(name)
    }

    /// The header of a fixture (the fixtures hold no tensor data).
    fn read_fixture(name: &str) -> Result<ModelInfo, GgufError> {
        read_header(&fixture(name))
    }

    fn err_text(name: &str) -> String {
        match read_fixture(name) {
            Ok(info) => panic!("{name} read without error: {info:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn assert_contains(text: &str, want: &str) {
        assert!(
            text.contains(want),
            "{text:?}\n  does not contain\n{want:?}"
        );
        assert!(!text.contains('\n'), "not one line: {text:?}");
    }

    /// Builds GGUF bytes in memory, for cases that need no fixture file.
    struct Gguf(Vec<u8>);

    impl Gguf {
        fn new(version: u32, tensors: u64, kvs: u64) -> Self {
            let mut b = b"GGUF".to_vec();
            b.extend(version.to_le_bytes());
            b.extend(tensors.to_le_bytes());
            b.extend(kvs.to_le_bytes());
            Gguf(b)
        }
        fn raw(mut self, bytes: &[u8]) -> Self {
            self.0.extend_from_slice(bytes);
            self
        }
        fn u32(self, v: u32) -> Self {
            self.raw(&v.to_le_bytes())
        }
        fn u64(self, v: u64) -> Self {
            self.raw(&v.to_le_bytes())
        }
        fn str(self, s: &str) -> Self {
            self.u64(s.len() as u64).raw(s.as_bytes())
        }
        fn kv_str(self, key: &str, v: &str) -> Self {
            self.str(key).u32(T_STRING).str(v)
        }
        fn kv_u32(self, key: &str, v: u32) -> Self {
            self.str(key).u32(T_U32).u32(v)
        }
        fn tensor(self, name: &str, dims: &[u64], ty: u32) -> Self {
            self.tensor_at(name, dims, ty, 0)
        }
        fn tensor_at(self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
            let mut g = self.str(name).u32(dims.len() as u32);
            for &d in dims {
                g = g.u64(d);
            }
            g.u32(ty).u64(offset)
        }
        /// Zero bytes up to a length of `len` (padding and tensor data).
        fn zeros_to(mut self, len: usize) -> Self {
            self.0.resize(len, 0);
            self
        }
        fn parse(&self) -> Result<ModelInfo, GgufError> {
            parse(&self.0[..], self.0.len() as u64, "mem.gguf")
        }
        fn strict(&self) -> Result<ModelInfo, GgufError> {
            let r = io::Cursor::new(&self.0[..]);
            parse_strict(r, self.0.len() as u64, "mem.gguf")
        }
        fn strict_err(&self) -> String {
            match self.strict() {
                Ok(info) => panic!("parsed without error: {info:?}"),
                Err(e) => e.to_string(),
            }
        }
        fn err(&self) -> String {
            match self.parse() {
                Ok(info) => panic!("parsed without error: {info:?}"),
                Err(e) => e.to_string(),
            }
        }
    }

    /// Bytes of `n` elements of a block-quantized type.
    fn q(n: u64, block: u64, bytes: u64) -> u64 {
        n / block * bytes
    }

    #[test]
    fn llama31_8b_q4_k_m_v3() {
        let info = read_fixture("llama31-8b-q4km.gguf").unwrap();
        let (e, ff, vocab, kv) = (4096u64, 14336u64, 128256u64, 8 * 128u64);
        let q4k = |n| q(n, 256, 144);
        let q6k = |n| q(n, 256, 210);
        let parameters = 2 * e * vocab + 64 + 3 * e + 2 * e * e + 2 * e * kv + 3 * e * ff;
        let bytes = q4k(e * vocab) // token_embd
            + 4 * (64 + 3 * e) // rope_freqs, attn_norm, ffn_norm, output_norm
            + q4k(2 * e * e + e * kv) // attn_q, attn_output, attn_k
            + q6k(e * kv) // attn_v
            + q4k(2 * e * ff) // ffn_gate, ffn_up
            + q6k(ff * e) // ffn_down
            + q6k(e * vocab); // output
        let expected = ModelInfo {
            path: fixture("llama31-8b-q4km.gguf").display().to_string(),
            file_size_bytes: 2476,
            gguf_version: 3,
            architecture: Some("llama".into()),
            name: Some("Meta Llama 3.1 8B Instruct".into()),
            trained_context: Some(131072),
            block_count: Some(32),
            embedding_length: Some(4096),
            head_count: Some(32),
            head_count_kv: Some(8),
            key_length: None,
            value_length: None,
            sliding_window: None,
            expert_count: None,
            file_type: Some(15),
            quantization: Some("Q4_K_M".into()),
            parameters,
            tensor_count: 13,
            tensor_bytes: bytes,
            tensor_bytes_exact: true,
            // The header's 2476 bytes padded to 32, then every tensor's data (each a multiple
            // of 32 bytes, so no padding between them).
            data_end: 2496 + bytes,
        };
        assert_eq!(info, expected);
        assert_eq!(info.parameters, 1_268_789_312);
        // 32 layers × 8 KV heads × (128 + 128) × 2 bytes = 128 KiB per token.
        assert_eq!(info.kv_bytes_per_token_f16(), Some(131_072));
        assert!((info.parameter_billions() - 1.268789312).abs() < 1e-12);
    }

    #[test]
    fn gemma2_v2_with_sliding_window_and_an_iq4_xs_tensor() {
        let info = read_fixture("gemma2-2b-v2.gguf").unwrap();
        assert_eq!(info.gguf_version, 2);
        // general.architecture is the last key: the gemma2.* keys before it still count.
        assert_eq!(info.architecture.as_deref(), Some("gemma2"));
        assert_eq!(info.name.as_deref(), Some("gemma-2-2b-it"));
        assert_eq!(info.trained_context, Some(8192));
        assert_eq!(info.block_count, Some(26));
        assert_eq!(info.embedding_length, Some(2304));
        assert_eq!((info.head_count, info.head_count_kv), (Some(8), Some(4)));
        assert_eq!((info.key_length, info.value_length), (Some(256), Some(256)));
        assert_eq!(info.sliding_window, Some(4096));
        // No general.file_type: the type holding the most elements names the quantization.
        assert_eq!(info.file_type, None);
        assert_eq!(info.quantization.as_deref(), Some("Q8_0"));
        let e = 2304u64;
        let q8 = e * 256000 + e * 2048 + 2 * e * 1024 + 2048 * e;
        let iq4_xs = 9216 * e;
        assert_eq!(info.parameters, q8 + iq4_xs + 2 * e);
        // IQ4_XS: 136 bytes per 256 elements.
        assert!(info.tensor_bytes_exact);
        assert_eq!(
            info.tensor_bytes,
            q(q8, 32, 34) + 4 * 2 * e + q(iq4_xs, 256, 136)
        );
        // Explicit key/value lengths (256 each), not embedding / heads (288).
        assert_eq!(info.kv_bytes_per_token_f16(), Some(26 * 4 * 512 * 2));
    }

    #[test]
    fn per_layer_head_counts_read_as_their_max() {
        let info = read_fixture("openelm-per-layer-kv.gguf").unwrap();
        assert_eq!(info.architecture.as_deref(), Some("openelm"));
        assert_eq!(info.block_count, Some(16));
        assert_eq!(info.head_count, Some(20));
        assert_eq!(info.head_count_kv, Some(5));
        assert_eq!(info.file_type, Some(1));
        assert_eq!(info.quantization.as_deref(), Some("F16"));
        assert_eq!(info.parameters, 1280 * 32000 + 1280 * 18 * 64 + 2 * 1280);
        assert_eq!(
            info.tensor_bytes,
            2 * (1280 * 32000 + 1280 * 18 * 64) + 4 * 2 * 1280
        );
        assert!(info.tensor_bytes_exact);
        assert_eq!(info.kv_bytes_per_token_f16(), Some(16 * 5 * 128 * 2));
    }

    #[test]
    fn mixtral_expert_count_and_3d_tensors() {
        let info = read_fixture("mixtral-8x7b-q4km.gguf").unwrap();
        assert_eq!(info.expert_count, Some(8));
        assert_eq!(info.quantization.as_deref(), Some("Q4_K_M"));
        assert_eq!(info.trained_context, Some(32768));
        let (e, ff, vocab) = (4096u64, 14336u64, 32000u64);
        let experts = 3 * e * ff * 8;
        assert_eq!(info.parameters, 2 * e * vocab + e * 8 + experts);
        assert_eq!(
            info.tensor_bytes,
            q(e * vocab, 256, 144)
                + 4 * e * 8
                + q(2 * e * ff * 8, 256, 144)
                + q(e * ff * 8, 256, 210)
                + q(e * vocab, 256, 210)
        );
        assert_eq!(info.tensor_count, 6);
    }

    #[test]
    fn bad_magic_says_it_is_not_a_gguf_file() {
        let text = err_text("bad-magic.gguf");
        assert_contains(
            &text,
            "bad-magic.gguf: not a GGUF file: offset 0 holds \"{\\\"sc\" instead of the magic \
             \"GGUF\"; is it a GGUF model file?",
        );
    }

    #[test]
    fn version_1_and_big_endian_are_refused_with_the_reason() {
        assert_contains(
            &err_text("version-1.gguf"),
            "version-1.gguf: GGUF version 1 at offset 4 is not supported (2 and 3 are); \
             version 1 files (2023) use 32-bit lengths: convert the model again",
        );
        assert_contains(
            &err_text("big-endian.gguf"),
            "GGUF version 50331648 at offset 4 is not supported (2 and 3 are); this is a \
             big-endian GGUF file",
        );
        assert_contains(
            &Gguf::new(4, 0, 0).err(),
            "GGUF version 4 at offset 4 is not supported (2 and 3 are); is it a GGUF model file?",
        );
    }

    #[test]
    fn truncated_in_a_kv_names_the_key_and_offset() {
        assert_contains(
            &err_text("truncated-in-kv.gguf"),
            "truncated-in-kv.gguf: the value of key \"llama.context_length\" at offset 657 is \
             cut off: the file ends at 659 bytes; the file is truncated (interrupted download \
             or copy?): fetch it again",
        );
    }

    #[test]
    fn string_length_past_the_end_of_the_file() {
        assert_contains(
            &err_text("string-past-end.gguf"),
            "string-past-end.gguf: the key of metadata entry 0 at offset 32 needs 1000 bytes \
             but only 12 are left in the 44-byte file; the file is truncated or corrupt",
        );
    }

    #[test]
    fn absurd_array_count() {
        assert_contains(
            &err_text("array-count-absurd.gguf"),
            "array-count-absurd.gguf: malformed GGUF header at offset 61: array \
             \"tokenizer.ggml.tokens\" claims 1099511627776 elements, above the limit of \
             268435456; the file is corrupt or not a GGUF model file",
        );
    }

    #[test]
    fn unknown_value_type() {
        assert_contains(
            &err_text("unknown-value-type.gguf"),
            "unknown-value-type.gguf: malformed GGUF header at offset 94: key \
             \"llama.block_count\" has unknown value type 13 (known: 0 to 12)",
        );
    }

    #[test]
    fn limits_are_checked_before_reading_or_allocating() {
        assert_contains(
            &Gguf::new(3, (1 << 20) + 1, 0).err(),
            "offset 8: tensor count 1048577 is above the limit of 1048576",
        );
        assert_contains(
            &Gguf::new(3, 0, u64::MAX).err(),
            "offset 16: metadata key/value count 18446744073709551615 is above the limit of \
             1048576",
        );
        // A 2 MiB key length is refused on the limit even though the bytes would be there.
        let mut big = Gguf::new(3, 0, 1).u64(2 << 20);
        big.0.resize(big.0.len() + (2 << 20), b'a');
        assert_contains(
            &big.err(),
            "offset 24: the key of metadata entry 0 claims a length of 2097152 bytes, above \
             the limit of 1048576",
        );
        assert_contains(
            &Gguf::new(3, 1, 0).str("t").u32(9).raw(&[0; 100]).err(),
            "offset 33: tensor \"t\" claims 9 dimensions, above the limit of 8",
        );
        assert_contains(
            &Gguf::new(3, 1, 0).tensor("t", &[1 << 32, 1 << 32], 0).err(),
            "offset 45: tensor \"t\" has more than 2^63-1 elements",
        );
        // An array of u32 longer than the file.
        assert_contains(
            &Gguf::new(3, 0, 1)
                .str("k")
                .u32(T_ARRAY)
                .u32(T_U32)
                .u64(1000)
                .err(),
            "array \"k\" of 1000 elements at offset 49 needs 4000 bytes but only 0 are left",
        );
        assert_contains(
            &Gguf::new(3, 0, 1)
                .str("k")
                .u32(T_ARRAY)
                .u32(T_ARRAY)
                .u64(1)
                .err(),
            "offset 37: array \"k\" holds arrays; nested arrays are not supported",
        );
        assert_contains(
            &Gguf::new(3, 0, 1)
                .str("k")
                .u32(T_ARRAY)
                .u32(13)
                .u64(1)
                .err(),
            "offset 37: array \"k\" has unknown element type 13",
        );
    }

    #[test]
    fn quantized_tensor_rows_must_fill_whole_blocks() {
        assert_contains(
            &Gguf::new(3, 1, 0).tensor("w", &[100, 4], 12).err(),
            "offset 53: tensor \"w\" of type Q4_K has a first dimension of 100, not a multiple \
             of its block size 256",
        );
    }

    /// Two tensors, F32 [8] (32 bytes) at offset 0 and Q8_0 [32, 2] (2 × 34 bytes) at
    /// `b_offset`, after `kvs` (general.alignment, when given). Tensor infos end at byte 98
    /// without a key/value.
    fn two_tensors(alignment: Option<u32>, b_offset: u64) -> Gguf {
        let g = match alignment {
            Some(a) => Gguf::new(3, 2, 1).kv_u32(ALIGNMENT_KEY, a),
            None => Gguf::new(3, 2, 0),
        };
        g.tensor_at("a", &[8], 0, 0)
            .tensor_at("b", &[32, 2], 8, b_offset)
    }

    #[test]
    fn a_complete_file_passes_and_one_byte_short_is_truncated() {
        let header = two_tensors(None, 32);
        assert_eq!(header.0.len(), 98);
        // The data section starts at 128 (98 padded to 32); "b" ends at 128 + 32 + 68.
        let whole = two_tensors(None, 32).zeros_to(228);
        let info = whole.strict().unwrap();
        assert_eq!(info.data_end, 228);
        assert_eq!(info.tensor_bytes, 32 + 68);
        assert!(info.tensor_bytes_exact);
        // One byte short: refused by the strict reader, read by the header reader.
        let cut = two_tensors(None, 32).zeros_to(227);
        assert_eq!(
            cut.strict_err(),
            "mem.gguf: tensor \"b\" data ends at byte 228 but the file has 227 bytes; the file \
             is truncated (interrupted download or copy?): fetch it again"
        );
        assert_eq!(cut.parse().unwrap().data_end, 228);
        // Cut inside the first tensor's data, or the header alone: the first tensor (in header
        // order) past the end is named, as llama.cpp does.
        assert_contains(
            &two_tensors(None, 32).zeros_to(150).strict_err(),
            "tensor \"a\" data ends at byte 160 but the file has 150 bytes",
        );
        assert_contains(
            &header.strict_err(),
            "tensor \"a\" data ends at byte 160 but the file has 98 bytes",
        );
        // Extra bytes after the data (a writer's final padding) are fine.
        two_tensors(None, 32).zeros_to(256).strict().unwrap();
    }

    #[test]
    fn placing_tensors_keeps_the_first_misaligned_the_first_past_and_the_furthest() {
        let mut t = Tensors {
            alignment: 32,
            // Data starts at 100 in a file of 200 bytes.
            past: Some((100, 200)),
            ..Tensors::default()
        };
        t.place("a".into(), 0, 64);
        t.place("b".into(), 64, 50); // ends at 100 + 114 > 200
        t.place("c".into(), 70, 44); // misaligned; ends where b does
        t.place("d".into(), 96, 200); // past too, and furthest
        assert_eq!(t.misaligned, Some(("c".into(), 70)));
        assert_eq!(t.first_past, Some(("b".into(), 214)));
        assert_eq!((t.furthest.as_deref(), t.furthest_end), (Some("d"), 296));
        let mut equal = Tensors {
            alignment: 32,
            ..Tensors::default()
        };
        equal.place("x".into(), 0, 32);
        equal.place("y".into(), 0, 32);
        assert_eq!(equal.furthest.as_deref(), Some("x"));
        assert_eq!(equal.first_past, None);
    }

    #[test]
    fn a_misaligned_data_offset_is_refused() {
        let g = two_tensors(None, 40).zeros_to(4096);
        assert_eq!(
            g.strict_err(),
            "mem.gguf: tensor \"b\" has data offset 40, not a multiple of the alignment 32; \
             the file is corrupt: fetch it again"
        );
        // The header reader does not check offsets.
        assert_eq!(g.parse().unwrap().data_end, 128 + 40 + 68);
    }

    #[test]
    fn general_alignment_moves_the_data_and_sets_the_offsets_multiple() {
        // The key adds 8 + 17 + 4 + 4 bytes: infos end at 131.
        let header = two_tensors(Some(64), 64);
        assert_eq!(header.0.len(), 131);
        // Data from 192 (131 padded to 64); "b" at 64 ends at 192 + 64 + 68.
        let whole = two_tensors(Some(64), 64).zeros_to(324);
        assert_eq!(whole.strict().unwrap().data_end, 324);
        assert_contains(
            &two_tensors(Some(64), 64).zeros_to(323).strict_err(),
            "tensor \"b\" data ends at byte 324 but the file has 323 bytes",
        );
        // 32 is aligned by default but not to 64.
        assert_contains(
            &two_tensors(Some(64), 32).zeros_to(4096).strict_err(),
            "tensor \"b\" has data offset 32, not a multiple of the alignment 64",
        );
        // 16: infos end at 131, data from 144; "b" at 48 is aligned.
        let small = two_tensors(Some(16), 48).zeros_to(144 + 48 + 68);
        assert_eq!(small.strict().unwrap().data_end, 260);
    }

    #[test]
    fn general_alignment_must_be_a_power_of_two() {
        for bad in [0, 48] {
            assert_contains(
                &two_tensors(Some(bad), 0).err(),
                "offset 53: \"general.alignment\" is not a power of two that fits 32 bits",
            );
        }
        assert_contains(
            &Gguf::new(3, 0, 1).kv_str(ALIGNMENT_KEY, "32").err(),
            "offset 49: key \"general.alignment\" has value type 8, not an integer",
        );
        // Any integer type that fits is taken, as for the other keys.
        let g = Gguf::new(3, 1, 1)
            .str(ALIGNMENT_KEY)
            .u32(T_U64)
            .u64(16)
            .tensor_at("a", &[4], 0, 16);
        assert_eq!(
            g.parse().unwrap().data_end,
            g.0.len().next_multiple_of(16) as u64 + 32
        );
    }

    #[test]
    fn a_tensor_of_an_unsized_type_has_only_its_offset_checked() {
        // Type 77 (unknown): 0 bytes counted, so its offset is where the file must reach.
        let g = Gguf::new(3, 2, 0)
            .tensor_at("a", &[8], 0, 0)
            .tensor_at("x", &[4, 4], 77, 64);
        let len = g.0.len();
        let start = len.next_multiple_of(32);
        let info = g.zeros_to(start + 64).strict().unwrap();
        assert!(!info.tensor_bytes_exact);
        assert_eq!(info.tensor_bytes, 32);
        assert_eq!(info.data_end, start as u64 + 64);
        let short = Gguf::new(3, 2, 0)
            .tensor_at("a", &[8], 0, 0)
            .tensor_at("x", &[4, 4], 77, 64)
            .zeros_to(start + 63);
        assert_contains(
            &short.strict_err(),
            &format!("tensor \"x\" data ends at byte {} but", start + 64),
        );
        let misaligned = Gguf::new(3, 1, 0)
            .tensor_at("x", &[4, 4], 77, 8)
            .zeros_to(4096);
        assert_contains(
            &misaligned.strict_err(),
            "tensor \"x\" has data offset 8, not a multiple of the alignment 32",
        );
    }

    #[test]
    fn a_file_without_tensors_needs_no_data() {
        let g = Gguf::new(3, 0, 1).kv_str("general.architecture", "llama");
        let info = g.strict().unwrap();
        assert_eq!(info.data_end, g.0.len() as u64);
    }

    /// The header-only fixtures (real llama.cpp layouts without their data) are refused by
    /// [`read`], naming the first tensor, until they are extended (sparsely) to their declared
    /// data end: then they read exactly as their header does.
    #[test]
    fn fixtures_need_their_data_to_read_strictly() {
        let dir = tempfile::tempdir().unwrap();
        // Each fixture's first tensor is token_embd.weight (at offset 0), with its size.
        for (name, first_bytes, last) in [
            (
                "llama31-8b-q4km.gguf",
                q(4096 * 128256, 256, 144),
                "output.weight",
            ),
            (
                "gemma2-2b-v2.gguf",
                q(2304 * 256000, 32, 34),
                "output_norm.weight",
            ),
            (
                "openelm-per-layer-kv.gguf",
                2 * 1280 * 32000,
                "output_norm.weight",
            ),
            (
                "mixtral-8x7b-q4km.gguf",
                q(4096 * 32000, 256, 144),
                "output.weight",
            ),
        ] {
            let header = read_fixture(name).unwrap();
            let start = header.file_size_bytes.next_multiple_of(32);
            // Every tensor's size is a multiple of 32 here: no padding between them.
            assert_eq!(header.data_end, start + header.tensor_bytes, "{name}");
            assert_contains(
                &err_of(read(&fixture(name))),
                &format!(
                    "{name}: tensor \"token_embd.weight\" data ends at byte {} but the file has \
                     {} bytes; the file is truncated",
                    start + first_bytes,
                    header.file_size_bytes
                ),
            );

            let copy = dir.path().join(name);
            std::fs::copy(fixture(name), &copy).unwrap();
            let f = std::fs::OpenOptions::new().write(true).open(&copy).unwrap();
            f.set_len(header.data_end - 1).unwrap();
            assert_contains(
                &err_of(read(&copy)),
                &format!(
                    "tensor \"{last}\" data ends at byte {} but the file has {} bytes",
                    header.data_end,
                    header.data_end - 1
                ),
            );
            f.set_len(header.data_end).unwrap();
            let info = read(&copy).unwrap();
            assert_eq!(info.file_size_bytes, header.data_end);
            assert_eq!(
                ModelInfo {
                    path: header.path.clone(),
                    file_size_bytes: header.file_size_bytes,
                    ..info
                },
                header
            );
        }
    }

    #[test]
    fn integers_of_any_type_that_fit_u32_are_accepted() {
        let g = Gguf::new(3, 0, 6)
            .kv_str("general.architecture", "qwen2")
            .str("qwen2.context_length")
            .u32(T_U64)
            .u64(32768)
            .str("qwen2.block_count")
            .u32(T_I32)
            .u32(28)
            .str("qwen2.embedding_length")
            .u32(T_I32)
            .u32(-5i32 as u32)
            .str("qwen2.attention.head_count")
            .u32(T_U64)
            .u64(1 << 40)
            .str("qwen2.attention.head_count_kv")
            .u32(T_F32)
            .u32(4.0f32.to_bits());
        let info = g.parse().unwrap();
        assert_eq!(info.trained_context, Some(32768));
        assert_eq!(info.block_count, Some(28));
        // Negative, too large for u32, or not an integer: None.
        assert_eq!(info.embedding_length, None);
        assert_eq!(info.head_count, None);
        assert_eq!(info.head_count_kv, None);
        // Keys of another architecture are not taken.
        let other = Gguf::new(3, 0, 2)
            .kv_str("general.architecture", "llama")
            .kv_u32("qwen2.block_count", 28)
            .parse()
            .unwrap();
        assert_eq!(other.block_count, None);
    }

    #[test]
    fn header_without_tensors_or_architecture() {
        let info = Gguf::new(3, 0, 0).parse().unwrap();
        assert_eq!(info.architecture, None);
        assert_eq!(info.quantization, None);
        assert_eq!((info.parameters, info.tensor_bytes), (0, 0));
        assert!(info.tensor_bytes_exact);
        assert_eq!(info.kv_bytes_per_token_f16(), None);
        // An unknown ftype and an unknown tensor type: named by the tensor type number.
        let info = Gguf::new(3, 1, 1)
            .kv_u32("general.file_type", 1024)
            .tensor("w", &[4, 4], 77)
            .parse()
            .unwrap();
        assert_eq!(info.file_type, Some(1024));
        assert_eq!(info.quantization.as_deref(), Some("ggml type 77"));
        assert_eq!((info.parameters, info.tensor_bytes), (16, 0));
        assert!(!info.tensor_bytes_exact);
    }

    #[test]
    fn kv_bytes_defaults() {
        let base = Gguf::new(3, 0, 4)
            .kv_str("general.architecture", "llama")
            .kv_u32("llama.block_count", 2)
            .kv_u32("llama.embedding_length", 512)
            .kv_u32("llama.attention.head_count", 8)
            .parse()
            .unwrap();
        // No head_count_kv: every head has its own K/V (64 per head).
        assert_eq!(base.kv_bytes_per_token_f16(), Some(2 * 8 * 128 * 2));
        let mut gqa = base.clone();
        gqa.head_count_kv = Some(2);
        assert_eq!(gqa.kv_bytes_per_token_f16(), Some(2 * 2 * 128 * 2));
        let mut unknown = base.clone();
        unknown.block_count = None;
        assert_eq!(unknown.kv_bytes_per_token_f16(), None);
        let mut no_heads = base;
        no_heads.head_count = Some(0);
        assert_eq!(no_heads.kv_bytes_per_token_f16(), None);
        no_heads.key_length = Some(64);
        no_heads.value_length = Some(64);
        no_heads.head_count_kv = Some(1);
        assert_eq!(no_heads.kv_bytes_per_token_f16(), Some(2 * 128 * 2));
    }

    /// Every prefix of a valid header fails with an error (never a panic), and the errors
    /// name the file; corrupting bytes anywhere gives a result or an error, never a panic.
    #[test]
    fn every_truncation_and_corruption_is_an_error_not_a_panic() {
        let bytes = std::fs::read(fixture("llama31-8b-q4km.gguf")).unwrap();
        for len in 0..bytes.len() {
            let cut = &bytes[..len];
            let e = parse(cut, len as u64, "cut.gguf").unwrap_err();
            assert!(e.to_string().starts_with("cut.gguf: "), "{e}");
            // A file size larger than the bytes (the file shrank while read): still an error.
            parse(cut, bytes.len() as u64, "cut.gguf").unwrap_err();
        }
        let mut state = 0x0303_0303_u64;
        for _ in 0..3000 {
            let mut b = bytes.clone();
            for _ in 0..4 {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let i = (state >> 33) as usize % b.len();
                b[i] = (state >> 17) as u8;
            }
            let _ = parse(&b[..], b.len() as u64, "fuzz.gguf");
            let _ = parse_strict(io::Cursor::new(&b[..]), b.len() as u64, "fuzz.gguf");
        }
    }

    #[test]
    fn read_errors_name_the_path() {
        let missing = err_of(read(Path::new("/nonexistent/o3/model.gguf")));
        assert_contains(
            &missing,
            "cannot open model file /nonexistent/o3/model.gguf: No such file or directory",
        );
        let dir = tempfile::tempdir().unwrap();
        assert_contains(
            &err_of(read(dir.path())),
            "is not a regular file; pass the path of a .gguf model file",
        );
        let empty = dir.path().join("empty.gguf");
        std::fs::write(&empty, b"").unwrap();
        assert_contains(
            &err_of(read(&empty)),
            "empty.gguf: the GGUF magic at offset 0 is cut off: the file ends at 0 bytes",
        );
    }

    /// A 128k-token vocabulary (as in Llama 3) is streamed past through the buffered reader.
    #[test]
    fn large_vocabulary_is_skipped() {
        let n = 128_256u64;
        let mut g = Gguf::new(3, 0, 3)
            .kv_str("general.architecture", "llama")
            .str("tokenizer.ggml.tokens")
            .u32(T_ARRAY)
            .u32(T_STRING)
            .u64(n);
        for i in 0..n {
            g = g.str(&format!("tok{i}"));
        }
        let g = g.kv_u32("llama.context_length", 131072);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vocab.gguf");
        std::fs::write(&path, &g.0).unwrap();
        let info = read(&path).unwrap();
        assert_eq!(info.trained_context, Some(131072));
        assert_eq!(info.file_size_bytes, g.0.len() as u64);
    }

    fn err_of(r: Result<ModelInfo, GgufError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn model_info_round_trips_through_json() {
        let info = read_fixture("llama31-8b-q4km.gguf").unwrap();
        let json = serde_json::to_string(&info).unwrap();
        assert!(json.contains("\"trained_context\":131072"), "{json}");
        let back: ModelInfo = serde_json::from_str(&json).unwrap();
        assert_eq!(back, info);
    }

    #[test]
    fn ftype_and_ggml_type_names() {
        assert_eq!(ftype_name(15), Some("Q4_K_M"));
        assert_eq!(ftype_name(0), Some("F32"));
        assert_eq!(ftype_name(32), Some("BF16"));
        assert_eq!(ftype_name(38), Some("MXFP4_MOE"));
        for removed in [5, 6, 33, 34, 35, 39] {
            assert_eq!(ftype_name(removed), None, "{removed}");
        }
        assert_eq!(ggml_type_name(12), Some("Q4_K"));
        assert_eq!(ggml_type_name(30), Some("BF16"));
        assert_eq!(ggml_type_name(4), None);
    }

    /// The real test model written by tests/server/make_model.py (with the `gguf` package):
    /// every value below follows from that script's constants.
    #[test]
    fn reads_the_tiny_test_model() {
        let path = match std::env::var_os("O3_TEST_MODEL") {
            Some(p) => std::path::PathBuf::from(p),
            None => match std::env::var_os("HOME") {
                Some(home) => Path::new(&home).join(".cache/o3/models/o3-tiny-llama.gguf"),
                None => {
                    eprintln!("skipped: neither O3_TEST_MODEL nor HOME is set");
                    return;
                }
            },
        };
        if !path.is_file() {
            eprintln!(
                "skipped: {} is absent (`cargo xtask setup` generates it)",
                path.display()
            );
            return;
        }
        // make_model.py: N_EMBD, N_BLOCKS, N_HEAD, N_HEAD_KV, HEAD_DIM, N_FF, N_CTX_TRAIN.
        let (embd, blocks, heads, kv_heads, ff, ctx) = (256u64, 4u64, 8u64, 4u64, 512u64, 131072);
        let head_dim = embd / heads;
        // len(vocab()[0]): 3 special + 256 byte tokens + 352 ordinary ones.
        let n_vocab = 611u64;
        let per_block = 2 * embd // attn_norm, ffn_norm
            + 2 * (heads * head_dim) * embd // attn_q, attn_output
            + 2 * (kv_heads * head_dim) * embd // attn_k, attn_v
            + 3 * ff * embd; // ffn_gate, ffn_up, ffn_down
        let parameters = 2 * n_vocab * embd + embd + blocks * per_block;

        let info = read(&path).unwrap();
        assert_eq!(info.gguf_version, 3);
        assert_eq!(info.architecture.as_deref(), Some("llama"));
        assert_eq!(info.name.as_deref(), Some("o3-tiny-llama"));
        assert_eq!(info.trained_context, Some(ctx));
        assert_eq!(info.block_count, Some(blocks as u32));
        assert_eq!(info.embedding_length, Some(embd as u32));
        assert_eq!(info.head_count, Some(heads as u32));
        assert_eq!(info.head_count_kv, Some(kv_heads as u32));
        assert_eq!((info.key_length, info.value_length), (None, None));
        assert_eq!((info.sliding_window, info.expert_count), (None, None));
        assert_eq!(info.file_type, Some(0));
        assert_eq!(info.quantization.as_deref(), Some("F32"));
        assert_eq!(info.tensor_count, 2 + blocks * 9 + 1);
        assert_eq!(info.parameters, parameters);
        assert_eq!(info.tensor_bytes, 4 * parameters);
        assert!(info.tensor_bytes_exact);
        // The data follows a header of a few KiB, and ends the file (every tensor's size is a
        // multiple of the alignment, so the writer added no padding after the last).
        assert!(info.tensor_bytes < info.file_size_bytes);
        assert!(info.file_size_bytes - info.tensor_bytes < 64 * 1024);
        assert_eq!(info.data_end, info.file_size_bytes);
        assert_eq!(
            info.kv_bytes_per_token_f16(),
            Some(blocks * kv_heads * 2 * head_dim * 2)
        );
    }

    #[test]
    fn control_characters_in_keys_stay_on_one_line() {
        // A key with a newline, whose value type is unknown: the error names the key.
        let e = Gguf::new(3, 0, 1).str("general.na\nme\0").u32(512).err();
        assert!(!e.contains('\n') && !e.contains('\0'), "{e}");
        assert!(e.contains("general.na\\nme\\u{0}"), "{e}");
        assert_eq!(printable("llama.context_length"), "llama.context_length");
    }
}
