//! A minimal, safe reader of the kernel's BTF (`/sys/kernel/btf/*`): enough to find the byte
//! offset of a struct member, so kernel programs can read fields of structs whose layout
//! differs between kernels.
//!
//! Format (include/uapi/linux/btf.h): a header (magic 0xeB9F, version 1, then the offsets and
//! lengths of the type and string sections, relative to the end of the header), a type
//! section of variable-length records, and a string section of NUL-terminated names. Module
//! BTF is "split BTF": its type ids continue after those of its base (vmlinux) and its string
//! offsets after the base's string section; [`Btf::parse_split`] takes that base.
//!
//! Every read is bounds-checked: garbage or truncated input gives an error or `None`, never a
//! panic, and the only allocation sized from the input (the type index) is bounded by the
//! input's real length.

use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

/// `btf_header.magic`.
pub const BTF_MAGIC: u16 = 0xEB9F;
/// Largest BTF file read (vmlinux BTF is a few MiB).
const MAX_BTF_BYTES: u64 = 256 << 20;
/// Size of `struct btf_header` in version 1.
const HEADER_LEN: usize = 24;
/// Size of `struct btf_type`.
const TYPE_LEN: usize = 12;
/// Bound on typedef/modifier chains and anonymous-member nesting (real BTF needs a handful;
/// garbage may contain cycles).
const MAX_HOPS: u32 = 32;

pub(crate) const KIND_INT: u32 = 1;
pub(crate) const KIND_PTR: u32 = 2;
pub(crate) const KIND_ARRAY: u32 = 3;
pub(crate) const KIND_STRUCT: u32 = 4;
pub(crate) const KIND_UNION: u32 = 5;
pub(crate) const KIND_ENUM: u32 = 6;
pub(crate) const KIND_FWD: u32 = 7;
pub(crate) const KIND_TYPEDEF: u32 = 8;
pub(crate) const KIND_VOLATILE: u32 = 9;
pub(crate) const KIND_CONST: u32 = 10;
pub(crate) const KIND_RESTRICT: u32 = 11;
pub(crate) const KIND_FUNC: u32 = 12;
pub(crate) const KIND_FUNC_PROTO: u32 = 13;
pub(crate) const KIND_VAR: u32 = 14;
pub(crate) const KIND_DATASEC: u32 = 15;
pub(crate) const KIND_FLOAT: u32 = 16;
pub(crate) const KIND_DECL_TAG: u32 = 17;
pub(crate) const KIND_TYPE_TAG: u32 = 18;
pub(crate) const KIND_ENUM64: u32 = 19;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is larger than {MAX_BTF_BYTES} bytes")]
    TooLarge(PathBuf),
    #[error("not BTF: bad magic {0:#06x}")]
    BadMagic(u16),
    #[error("unsupported BTF version {0}")]
    BadVersion(u8),
    #[error("BTF truncated or inconsistent: {0}")]
    Malformed(&'static str),
    #[error("unknown BTF kind {kind} at type id {id}")]
    UnknownKind { kind: u32, id: u32 },
    #[error("split BTF and its base differ in byte order")]
    BaseEndianness,
}

/// Parsed BTF: the raw bytes plus an index of where each type record starts.
#[derive(Debug)]
pub struct Btf {
    data: Vec<u8>,
    big_endian: bool,
    types: Range<usize>,
    strs: Range<usize>,
    /// Start (in `data`) of the record of type id `first_id + i`.
    index: Vec<usize>,
    /// Id of this blob's first type: 1 for a base, the base's next id for split BTF.
    first_id: u32,
    /// String offset of this blob's string section: 0 for a base.
    str_base: u32,
    base: Option<Arc<Btf>>,
}

/// One type record.
#[derive(Clone, Copy)]
struct Type<'a> {
    name_off: u32,
    kind: u32,
    vlen: u32,
    kind_flag: bool,
    /// `size` for INT/STRUCT/UNION/ENUM/DATASEC/FLOAT, else `type`.
    size_or_type: u32,
    /// The bytes after the 12-byte common part.
    extra: &'a [u8],
    big_endian: bool,
}

impl Type<'_> {
    fn u32_at(&self, off: usize) -> Option<u32> {
        read_u32(self.extra, off, self.big_endian)
    }
}

fn read_u32(b: &[u8], off: usize, big_endian: bool) -> Option<u32> {
    let bytes: [u8; 4] = b.get(off..off.checked_add(4)?)?.try_into().ok()?;
    Some(if big_endian {
        u32::from_be_bytes(bytes)
    } else {
        u32::from_le_bytes(bytes)
    })
}

/// Bytes following the common `btf_type` part for a kind, or None for an unknown kind.
fn extra_len(kind: u32, vlen: u32) -> Option<usize> {
    let vlen = vlen as usize;
    Some(match kind {
        KIND_INT => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION => 12 * vlen,
        KIND_ENUM => 8 * vlen,
        KIND_FUNC_PROTO => 8 * vlen,
        KIND_VAR => 4,
        KIND_DATASEC => 12 * vlen,
        KIND_DECL_TAG => 4,
        KIND_ENUM64 => 12 * vlen,
        KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
        | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
        _ => return None,
    })
}

fn read_file(path: &Path) -> Result<Vec<u8>, BtfError> {
    let read_err = |source| BtfError::Read {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(read_err)?;
    let mut data = Vec::new();
    f.take(MAX_BTF_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(read_err)?;
    if data.len() as u64 > MAX_BTF_BYTES {
        return Err(BtfError::TooLarge(path.to_path_buf()));
    }
    Ok(data)
}

/// The blob's byte order, from its magic, after checking its length and version.
fn byte_order(data: &[u8]) -> Result<bool, BtfError> {
    if data.len() < HEADER_LEN {
        return Err(BtfError::Malformed("shorter than the header"));
    }
    let magic = u16::from_le_bytes([data[0], data[1]]);
    let big_endian = if magic == BTF_MAGIC {
        false
    } else if magic.swap_bytes() == BTF_MAGIC {
        true
    } else {
        return Err(BtfError::BadMagic(magic));
    };
    if data[2] != 1 {
        return Err(BtfError::BadVersion(data[2]));
    }
    Ok(big_endian)
}

/// The type and string sections the header names, inside the blob and apart.
fn sections(data: &[u8], big_endian: bool) -> Result<(Range<usize>, Range<usize>), BtfError> {
    let h = |i: usize| read_u32(data, 4 + 4 * i, big_endian).unwrap_or(0) as usize;
    let (hdr_len, type_off, type_len, str_off, str_len) = (h(0), h(1), h(2), h(3), h(4));
    if hdr_len < HEADER_LEN || hdr_len > data.len() {
        return Err(BtfError::Malformed("header length"));
    }
    let section = |off: usize, len: usize| -> Option<Range<usize>> {
        let start = hdr_len.checked_add(off)?;
        let end = start.checked_add(len)?;
        (end <= data.len()).then_some(start..end)
    };
    let types = section(type_off, type_len).ok_or(BtfError::Malformed("type section bounds"))?;
    let strs = section(str_off, str_len).ok_or(BtfError::Malformed("string section bounds"))?;
    if strs.start < types.end && types.start < strs.end {
        return Err(BtfError::Malformed("type and string sections overlap"));
    }
    Ok((types, strs))
}

/// The string section ends with a NUL and, in base BTF, starts with the empty name.
fn check_strings(s: &[u8], is_base: bool) -> Result<(), BtfError> {
    if s.last().is_some_and(|&b| b != 0) {
        return Err(BtfError::Malformed("string section not NUL-terminated"));
    }
    if is_base && s.first() != Some(&0) {
        return Err(BtfError::Malformed(
            "string section must start with an empty name",
        ));
    }
    Ok(())
}

/// Where each type record in `types` starts; an unknown kind cannot be skipped, so it ends
/// the parse.
fn index_types(
    data: &[u8],
    types: Range<usize>,
    first_id: u32,
    big_endian: bool,
) -> Result<Vec<usize>, BtfError> {
    let mut index = Vec::with_capacity(types.len() / TYPE_LEN);
    let mut pos = types.start;
    while pos < types.end {
        let id = first_id.saturating_add(index.len() as u32);
        if types.end - pos < TYPE_LEN {
            return Err(BtfError::Malformed("type record cut short"));
        }
        let info = read_u32(data, pos + 4, big_endian).unwrap_or(0);
        let kind = (info >> 24) & 0x1f;
        let vlen = info & 0xffff;
        let extra = extra_len(kind, vlen).ok_or(BtfError::UnknownKind { kind, id })?;
        if types.end - pos - TYPE_LEN < extra {
            return Err(BtfError::Malformed("type record cut short"));
        }
        if id == u32::MAX {
            return Err(BtfError::Malformed("too many types"));
        }
        index.push(pos);
        pos += TYPE_LEN + extra;
    }
    Ok(index)
}

impl Btf {
    /// Reads base BTF (e.g. `/sys/kernel/btf/vmlinux`).
    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        Btf::parse(read_file(path)?)
    }

    /// Reads split BTF (e.g. `/sys/kernel/btf/ttm`) on top of `base`.
    pub fn from_file_split(path: &Path, base: Arc<Btf>) -> Result<Btf, BtfError> {
        Btf::parse_split(read_file(path)?, base)
    }

    /// Parses base BTF.
    pub fn parse(data: Vec<u8>) -> Result<Btf, BtfError> {
        Btf::parse_inner(data, None)
    }

    /// Parses split BTF whose type ids and string offsets continue after `base`'s.
    pub fn parse_split(data: Vec<u8>, base: Arc<Btf>) -> Result<Btf, BtfError> {
        Btf::parse_inner(data, Some(base))
    }

    fn parse_inner(data: Vec<u8>, base: Option<Arc<Btf>>) -> Result<Btf, BtfError> {
        let big_endian = byte_order(&data)?;
        if base.as_ref().is_some_and(|b| b.big_endian != big_endian) {
            return Err(BtfError::BaseEndianness);
        }
        let (types, strs) = sections(&data, big_endian)?;
        check_strings(&data[strs.clone()], base.is_none())?;
        let (first_id, str_base) = match &base {
            None => (1u32, 0u32),
            Some(b) => b.continued_ids()?,
        };
        if u32::try_from(str_base as usize + strs.len()).is_err() {
            return Err(BtfError::Malformed("string section size"));
        }
        let index = index_types(&data, types.clone(), first_id, big_endian)?;
        Ok(Btf {
            data,
            big_endian,
            types,
            strs,
            index,
            first_id,
            str_base,
            base,
        })
    }

    /// (first type id, string offset base) of split BTF on top of this blob.
    fn continued_ids(&self) -> Result<(u32, u32), BtfError> {
        let strs = self.str_base as usize + self.strs.len();
        let strs = u32::try_from(strs).map_err(|_| BtfError::Malformed("base size"))?;
        Ok((self.next_id(), strs))
    }

    /// One past the highest type id (base types included).
    fn next_id(&self) -> u32 {
        self.first_id.saturating_add(self.index.len() as u32)
    }

    /// Number of types in this blob (not counting a base).
    pub fn own_types(&self) -> usize {
        self.index.len()
    }

    fn ty(&self, id: u32) -> Option<Type<'_>> {
        if id < self.first_id {
            return self.base.as_ref()?.ty(id);
        }
        let pos = *self.index.get((id - self.first_id) as usize)?;
        let rec = self.data.get(pos..self.types.end)?;
        let info = read_u32(rec, 4, self.big_endian)?;
        let kind = (info >> 24) & 0x1f;
        let vlen = info & 0xffff;
        let extra = extra_len(kind, vlen)?;
        Some(Type {
            name_off: read_u32(rec, 0, self.big_endian)?,
            kind,
            vlen,
            kind_flag: info >> 31 != 0,
            size_or_type: read_u32(rec, 8, self.big_endian)?,
            extra: rec.get(TYPE_LEN..TYPE_LEN + extra)?,
            big_endian: self.big_endian,
        })
    }

    /// The name at string offset `off` (bytes, without the NUL).
    fn name(&self, off: u32) -> Option<&[u8]> {
        if off < self.str_base {
            return self.base.as_ref()?.name(off);
        }
        let s = self.data.get(self.strs.clone())?;
        let rest = s.get((off - self.str_base) as usize..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        Some(&rest[..end])
    }

    /// Id of the first type of `kind` named `name`: this blob's own types first, then the
    /// base's.
    fn find_named(&self, kind: u32, name: &str) -> Option<u32> {
        let own = (0..self.index.len() as u32).map(|i| self.first_id + i);
        for id in own {
            if let Some(t) = self.ty(id) {
                if t.kind == kind && self.name(t.name_off) == Some(name.as_bytes()) {
                    return Some(id);
                }
            }
        }
        self.base.as_ref()?.find_named(kind, name)
    }

    /// Arguments a raw tracepoint hands its programs: the parameters of the kernel's
    /// `btf_trace_<name>` typedef (a pointer to `void (*)(void *__data, <tracepoint args>)`),
    /// less `__data`. None when the typedef is missing or has another shape.
    pub fn raw_tracepoint_args(&self, tracepoint: &str) -> Option<u32> {
        let id = self.find_named(KIND_TYPEDEF, &format!("btf_trace_{tracepoint}"))?;
        let (_, ptr) = self.resolve(id)?;
        if ptr.kind != KIND_PTR {
            return None;
        }
        let (_, proto) = self.resolve(ptr.size_or_type)?;
        if proto.kind != KIND_FUNC_PROTO || proto.vlen == 0 {
            return None;
        }
        Some(proto.vlen - 1)
    }

    /// Id of the first struct named `name`: this blob's own types first, then the base's.
    fn find_struct(&self, name: &str) -> Option<u32> {
        let own = (0..self.index.len() as u32).map(|i| self.first_id + i);
        for id in own {
            if let Some(t) = self.ty(id) {
                if t.kind == KIND_STRUCT && self.name(t.name_off) == Some(name.as_bytes()) {
                    return Some(id);
                }
            }
        }
        self.base.as_ref()?.find_struct(name)
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<(u32, Type<'_>)> {
        for _ in 0..MAX_HOPS {
            let t = self.ty(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Some((id, t)),
            }
        }
        None
    }

    /// Bit offset of member `name` in the struct or union `t`, searching anonymous struct and
    /// union members too, with the member's type id.
    fn find_member(&self, t: &Type<'_>, name: &[u8], depth: u32) -> Option<(u64, u32)> {
        if depth > MAX_HOPS || !matches!(t.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        let mut anonymous = Vec::new();
        for i in 0..t.vlen as usize {
            let m_name = t.u32_at(12 * i)?;
            let m_type = t.u32_at(12 * i + 4)?;
            let m_off = t.u32_at(12 * i + 8)?;
            // With kind_flag, the top 8 bits hold a bitfield's size.
            let bits = u64::from(if t.kind_flag {
                m_off & 0x00ff_ffff
            } else {
                m_off
            });
            if m_name == 0 {
                anonymous.push((bits, m_type));
            } else if self.name(m_name) == Some(name) {
                return Some((bits, m_type));
            }
        }
        for (bits, m_type) in anonymous {
            let Some((_, inner)) = self.resolve(m_type) else {
                continue;
            };
            if let Some((b, ty)) = self.find_member(&inner, name, depth + 1) {
                return Some((bits + b, ty));
            }
        }
        None
    }

    /// Byte offset of `member_path` (e.g. `["base", "size"]`, following embedded structs)
    /// from the start of `struct struct_name`. None when the struct or a member is missing,
    /// a path step goes through something that is not an embedded struct or union, or the
    /// offset is not a whole number of bytes (a bitfield).
    pub fn member_offset(&self, struct_name: &str, member_path: &[&str]) -> Option<u32> {
        if member_path.is_empty() {
            return None;
        }
        let mut t = self.ty(self.find_struct(struct_name)?)?;
        let mut bits = 0u64;
        for (i, step) in member_path.iter().enumerate() {
            let (b, m_type) = self.find_member(&t, step.as_bytes(), 0)?;
            bits = bits.checked_add(b)?;
            if i + 1 < member_path.len() {
                t = self.resolve(m_type)?.1;
            }
        }
        if bits % 8 != 0 {
            return None;
        }
        u32::try_from(bits / 8).ok()
    }

    /// Name of the struct a member is (or, for an array member, holds): `Some("percpu_counter")`
    /// for `struct percpu_counter rss_stat[4]`. None for other types or a missing member.
    pub fn member_struct_name(&self, struct_name: &str, member: &str) -> Option<String> {
        let t = self.ty(self.find_struct(struct_name)?)?;
        let (_, m_type) = self.find_member(&t, member.as_bytes(), 0)?;
        let (_, mut inner) = self.resolve(m_type)?;
        if inner.kind == KIND_ARRAY {
            // btf_array: type, index_type, nelems.
            inner = self.resolve(inner.u32_at(0)?)?.1;
        }
        if inner.kind != KIND_STRUCT {
            return None;
        }
        Some(String::from_utf8_lossy(self.name(inner.name_off)?).into_owned())
    }

    /// Size in bytes of `struct name`.
    pub fn struct_size(&self, name: &str) -> Option<u32> {
        Some(self.ty(self.find_struct(name)?)?.size_or_type)
    }
}

/// Hand-built BTF blobs for tests (here and in `gpu_mem`).
#[cfg(test)]
pub(crate) mod test_blobs {
    use super::*;

    /// Builds BTF blobs by hand.
    pub(crate) struct Builder {
        types: Vec<u8>,
        strs: Vec<u8>,
        pub big_endian: bool,
        /// String offset of this blob's first string (the base's string length for split).
        str_base: u32,
    }

    impl Builder {
        pub(crate) fn new() -> Builder {
            Builder {
                types: Vec::new(),
                strs: vec![0],
                big_endian: false,
                str_base: 0,
            }
        }

        pub(crate) fn split(base_str_len: u32) -> Builder {
            Builder {
                types: Vec::new(),
                strs: Vec::new(),
                big_endian: false,
                str_base: base_str_len,
            }
        }

        pub(crate) fn u32(&mut self, v: u32) {
            let b = if self.big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            self.types.extend_from_slice(&b);
        }

        pub(crate) fn str(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.str_base + self.strs.len() as u32;
            self.strs.extend_from_slice(s.as_bytes());
            self.strs.push(0);
            off
        }

        pub(crate) fn head(&mut self, name: &str, kind: u32, vlen: u32, kflag: bool, st: u32) {
            let n = self.str(name);
            self.u32(n);
            self.u32(u32::from(kflag) << 31 | kind << 24 | vlen);
            self.u32(st);
        }

        /// A struct (or union) with (name, type, bit offset) members.
        pub(crate) fn composite(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            kflag: bool,
            m: &[(&str, u32, u32)],
        ) {
            self.head(name, kind, m.len() as u32, kflag, size);
            for &(n, t, off) in m {
                let n = self.str(n);
                self.u32(n);
                self.u32(t);
                self.u32(off);
            }
        }

        /// Length of the string section so far (the `str_base` of a split blob on top).
        pub(crate) fn str_len(&self) -> u32 {
            self.str_base + self.strs.len() as u32
        }

        pub(crate) fn finish(&self) -> Vec<u8> {
            let mut out = Vec::new();
            let w = |out: &mut Vec<u8>, v: u32| {
                out.extend_from_slice(&if self.big_endian {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                });
            };
            let magic = if self.big_endian {
                BTF_MAGIC.to_be_bytes()
            } else {
                BTF_MAGIC.to_le_bytes()
            };
            out.extend_from_slice(&magic);
            out.push(1);
            out.push(0);
            w(&mut out, HEADER_LEN as u32);
            w(&mut out, 0);
            w(&mut out, self.types.len() as u32);
            w(&mut out, self.types.len() as u32);
            w(&mut out, self.strs.len() as u32);
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strs);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_blobs::Builder;
    use super::*;

    /// A base blob with one record of every kind before the structs, so a wrong record
    /// length anywhere desyncs the walk and the lookups fail.
    fn every_kind(big_endian: bool) -> Vec<u8> {
        let mut b = Builder::new();
        b.big_endian = big_endian;
        // 1: int
        b.head("int", KIND_INT, 0, false, 4);
        b.u32(32);
        // 2: long
        b.head("long", KIND_INT, 0, false, 8);
        b.u32(64);
        // 3: ptr to int
        b.head("", KIND_PTR, 0, false, 1);
        // 4: int[4]
        b.head("", KIND_ARRAY, 0, false, 0);
        b.u32(1);
        b.u32(1);
        b.u32(4);
        // 5: enum with 3 values
        b.head("e", KIND_ENUM, 3, false, 4);
        for v in 0..3 {
            let n = b.str(&format!("E{v}"));
            b.u32(n);
            b.u32(v);
        }
        // 6: fwd
        b.head("fwd", KIND_FWD, 0, false, 0);
        // 7: typedef size_t -> long
        b.head("size_t", KIND_TYPEDEF, 0, false, 2);
        // 8, 9, 10: volatile, const, restrict -> 7
        b.head("", KIND_VOLATILE, 0, false, 7);
        b.head("", KIND_CONST, 0, false, 8);
        b.head("", KIND_RESTRICT, 0, false, 3);
        // 11: func proto (int, long)
        b.head("", KIND_FUNC_PROTO, 2, false, 1);
        for t in [1, 2] {
            b.u32(0);
            b.u32(t);
        }
        // 12: func
        b.head("f", KIND_FUNC, 0, false, 11);
        // 13: var
        b.head("v", KIND_VAR, 0, false, 1);
        b.u32(1);
        // 14: datasec with 2 vars
        b.head(".data", KIND_DATASEC, 2, false, 16);
        for _ in 0..2 {
            b.u32(13);
            b.u32(0);
            b.u32(4);
        }
        // 15: float
        b.head("double", KIND_FLOAT, 0, false, 8);
        // 16: decl tag
        b.head("tag", KIND_DECL_TAG, 0, false, 12);
        b.u32(u32::MAX);
        // 17: type tag -> 2
        b.head("user", KIND_TYPE_TAG, 0, false, 2);
        // 18: enum64 with 2 values
        b.head("e64", KIND_ENUM64, 2, false, 8);
        for v in 0..2 {
            let n = b.str(&format!("F{v}"));
            b.u32(n);
            b.u32(v);
            b.u32(0);
        }
        // 19: struct inner { int refcount; <pad>; const volatile size_t size @64; }
        b.composite(
            KIND_STRUCT,
            "inner",
            16,
            false,
            &[("refcount", 1, 0), ("size", 9, 64)],
        );
        // 20: typedef inner_t -> 19
        b.head("inner_t", KIND_TYPEDEF, 0, false, 19);
        // 21: anonymous union { long u0; long u1; }
        b.composite(KIND_UNION, "", 8, false, &[("u0", 2, 0), ("u1", 2, 0)]);
        // 22: struct outer, kind_flag: bitfields a (3 bits @0), b (5 bits @3), c (8 bits @8),
        // then inner_t base @64, anonymous union @192, a pointer @256
        let bf = |size: u32, off: u32| size << 24 | off;
        b.composite(
            KIND_STRUCT,
            "outer",
            40,
            true,
            &[
                ("a", 1, bf(3, 0)),
                ("b", 1, bf(5, 3)),
                ("c", 1, bf(8, 8)),
                ("base", 20, bf(0, 64)),
                ("", 21, bf(0, 192)),
                ("p", 3, bf(0, 256)),
            ],
        );
        b.finish()
    }

    #[test]
    fn walks_every_kind_and_finds_members() {
        for be in [false, true] {
            let btf = Btf::parse(every_kind(be)).unwrap();
            assert_eq!(btf.own_types(), 22);
            assert_eq!(btf.struct_size("outer"), Some(40));
            assert_eq!(btf.member_offset("inner", &["size"]), Some(8));
            assert_eq!(btf.member_offset("outer", &["base"]), Some(8));
            // Nested through a typedef, then const/volatile/typedef on the leaf.
            assert_eq!(btf.member_offset("outer", &["base", "size"]), Some(16));
            assert_eq!(btf.member_offset("outer", &["base", "refcount"]), Some(8));
            // Members of an anonymous union are found through it.
            assert_eq!(btf.member_offset("outer", &["u1"]), Some(24));
            assert_eq!(btf.member_offset("outer", &["p"]), Some(32));
            // Bitfields: a whole-byte offset is fine, others are rejected.
            assert_eq!(btf.member_offset("outer", &["a"]), Some(0));
            assert_eq!(btf.member_offset("outer", &["b"]), None);
            assert_eq!(btf.member_offset("outer", &["c"]), Some(1));
            // Missing things.
            assert_eq!(btf.member_offset("outer", &["nope"]), None);
            assert_eq!(btf.member_offset("nope", &["a"]), None);
            assert_eq!(btf.member_offset("outer", &[]), None);
            // A path through a non-struct member.
            assert_eq!(btf.member_offset("outer", &["p", "x"]), None);
            // Only structs are looked up by name (not unions, typedefs or fwds).
            assert_eq!(btf.struct_size("inner_t"), None);
            assert_eq!(btf.struct_size("fwd"), None);
        }
    }

    #[test]
    fn split_btf_continues_ids_and_strings() {
        let base_bytes = every_kind(false);
        let base = Arc::new(Btf::parse(base_bytes).unwrap());
        let base_str_len = base.strs.len() as u32;
        let mut s = Builder::split(base_str_len);
        // 23: struct module_obj { int x; struct inner base @128 } (the inner type is the
        // base's id 19; "refcount" is a base string).
        let name = s.str("module_obj");
        s.u32(name);
        s.u32(KIND_STRUCT << 24 | 2);
        s.u32(32);
        let x = s.str("x");
        for (n, t, off) in [(x, 1, 0), (s.str("base"), 19, 128)] {
            s.u32(n);
            s.u32(t);
            s.u32(off);
        }
        let split = Btf::parse_split(s.finish(), base.clone()).unwrap();
        assert_eq!(split.first_id, 23);
        assert_eq!(
            split.member_offset("module_obj", &["base", "size"]),
            Some(24)
        );
        assert_eq!(split.member_offset("module_obj", &["x"]), Some(0));
        // Base structs are found through the split blob.
        assert_eq!(split.member_offset("outer", &["base", "size"]), Some(16));
        // Byte orders must match.
        let mut be = Builder::split(base_str_len);
        be.big_endian = true;
        assert!(matches!(
            Btf::parse_split(be.finish(), base),
            Err(BtfError::BaseEndianness)
        ));
    }

    #[test]
    fn bad_headers_are_errors() {
        let good = every_kind(false);
        let mut bad = good.clone();
        bad[0] = 0;
        assert!(matches!(Btf::parse(bad), Err(BtfError::BadMagic(_))));
        let mut bad = good.clone();
        bad[2] = 2;
        assert!(matches!(Btf::parse(bad), Err(BtfError::BadVersion(2))));
        // A type length claiming 4 GiB: rejected before any allocation.
        let mut bad = good.clone();
        bad[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(Btf::parse(bad), Err(BtfError::Malformed(_))));
        // Header length beyond the data, and offsets that overflow.
        let mut bad = good.clone();
        bad[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Btf::parse(bad).is_err());
        let mut bad = good.clone();
        bad[16..20].copy_from_slice(&(u32::MAX - 3).to_le_bytes());
        assert!(Btf::parse(bad).is_err());
        // Unknown kind in the first record.
        let mut bad = good.clone();
        bad[HEADER_LEN + 7] = 31;
        assert!(matches!(
            Btf::parse(bad),
            Err(BtfError::UnknownKind { kind: 31, id: 1 })
        ));
        // Strings not terminated.
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] = b'x';
        assert!(Btf::parse(bad).is_err());
    }

    #[test]
    fn truncated_and_garbage_input_never_panics() {
        let good = every_kind(false);
        for len in 0..good.len() {
            // Truncation cuts the string section or the types: always an error.
            assert!(Btf::parse(good[..len].to_vec()).is_err(), "len {len}");
        }
        // Random bytes behind a valid header prefix, and flipped bytes in a valid blob.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2000 {
            let mut b = good.clone();
            for _ in 0..=(rnd() % 8) {
                let i = (rnd() as usize) % b.len();
                b[i] = rnd() as u8;
            }
            if let Ok(btf) = Btf::parse(b) {
                let _ = btf.member_offset("outer", &["base", "size"]);
                let _ = btf.member_offset("outer", &["u1"]);
                let _ = btf.struct_size("inner");
            }
            let n = (rnd() % 512) as usize;
            let mut g: Vec<u8> = (0..n).map(|_| rnd() as u8).collect();
            if g.len() >= 4 {
                g[..4].copy_from_slice(&[0x9f, 0xeb, 1, 0]);
            }
            if let Ok(btf) = Btf::parse(g) {
                let _ = btf.member_offset("outer", &["a"]);
            }
        }
    }

    #[test]
    fn cycles_end() {
        let mut b = Builder::new();
        // 1: typedef loop -> 2, 2: typedef -> 1
        b.head("t1", KIND_TYPEDEF, 0, false, 2);
        b.head("t2", KIND_TYPEDEF, 0, false, 1);
        // 3: struct s { t1 x; <anonymous s> } (contains itself)
        b.composite(KIND_STRUCT, "s", 8, false, &[("x", 1, 0), ("", 3, 0)]);
        let btf = Btf::parse(b.finish()).unwrap();
        assert_eq!(btf.member_offset("s", &["x"]), Some(0));
        assert_eq!(btf.member_offset("s", &["x", "y"]), None);
        assert_eq!(btf.member_offset("s", &["missing"]), None);
    }

    /// The running kernel's BTF (this machine's CI kernel has it; skipped where absent).
    fn vmlinux() -> Option<Btf> {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            eprintln!("skipped: {} missing", path.display());
            return None;
        }
        Some(Btf::from_file(path).expect("the kernel's BTF parses"))
    }

    #[test]
    fn reads_the_running_kernels_btf() {
        let Some(btf) = vmlinux() else { return };
        assert!(btf.own_types() > 10_000);
        assert_eq!(btf.member_offset("list_head", &["next"]), Some(0));
        assert_eq!(btf.member_offset("list_head", &["prev"]), Some(8));
        assert_eq!(btf.struct_size("list_head"), Some(16));
        assert!(btf.struct_size("mm_struct").is_some_and(|s| s > 0));
        let task = btf.struct_size("task_struct").unwrap();
        let se = btf.member_offset("task_struct", &["se"]).unwrap();
        let vruntime = btf
            .member_offset("task_struct", &["se", "vruntime"])
            .unwrap();
        let in_se = btf.member_offset("sched_entity", &["vruntime"]).unwrap();
        assert_eq!(vruntime, se + in_se);
        assert!(vruntime < task, "{vruntime} < {task}");
        assert_eq!(btf.member_offset("task_struct", &["se", "nope"]), None);
    }

    #[test]
    fn split_btf_on_the_running_kernel() {
        let Some(base) = vmlinux() else { return };
        let base = Arc::new(base);
        let dir = Path::new("/sys/kernel/btf");
        let Some(module) = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n != "vmlinux"))
        else {
            eprintln!("skipped: no module BTF in {}", dir.display());
            return;
        };
        let m = Btf::from_file_split(&module, base).unwrap();
        // Base types resolve through the module's blob.
        assert_eq!(m.member_offset("list_head", &["prev"]), Some(8));
    }
}
