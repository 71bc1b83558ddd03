//! tracefs: where it is, mounting it when o3 is root, and the tracepoint `format` files that
//! give the byte offset of each field.

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::unistd::geteuid;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TracefsError {
    #[error("tracefs is not mounted at {0} and o3 is not root: run `sudo mount -t tracefs tracefs {0}` or run o3 as root")]
    NotMounted(PathBuf),
    #[error("mounting tracefs at {path} failed: {source}")]
    Mount {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tracepoint {0} does not exist on this kernel ({1} is missing)")]
    MissingTracepoint(String, PathBuf),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tracepoint {tracepoint} has no field `{field}` in its format file")]
    MissingField { tracepoint: String, field: String },
}

/// One field of a tracepoint record, as declared in its format file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// Parsed `format` file of one tracepoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    pub name: String,
    pub fields: Vec<Field>,
}

impl Format {
    /// Parses the text of `/sys/kernel/tracing/events/<cat>/<name>/format`. Lines look like
    /// `\tfield:unsigned int mm_id;\toffset:8;\tsize:4;\tsigned:0;`; the field name is the last
    /// word of the declaration, without array brackets.
    pub fn parse(text: &str) -> Format {
        let mut name = String::new();
        let mut fields = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if let Some(n) = line.strip_prefix("name:") {
                name = n.trim().to_string();
                continue;
            }
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            let mut decl = None;
            let mut offset = None;
            let mut size = None;
            for (i, part) in rest.split(';').enumerate() {
                let part = part.trim();
                if i == 0 {
                    decl = Some(part);
                } else if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.trim().parse().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.trim().parse().ok();
                }
            }
            let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) else {
                continue;
            };
            let Some(last) = decl.split_whitespace().last() else {
                continue;
            };
            let fname = last.split('[').next().unwrap_or(last).to_string();
            fields.push(Field {
                name: fname,
                offset,
                size,
            });
        }
        Format { name, fields }
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// The tracefs directory o3 uses: `<sysfs-root>/kernel/tracing`.
pub fn tracefs_dir(sysfs_root: &Path) -> PathBuf {
    sysfs_root.join("kernel/tracing")
}

/// True when tracefs is mounted at `dir` (its `events` directory exists).
pub fn is_mounted(dir: &Path) -> bool {
    dir.join("events").is_dir()
}

/// Mounts tracefs at `dir` when it is not mounted yet. Returns whether it mounted it.
pub fn ensure_mounted(dir: &Path) -> Result<bool, TracefsError> {
    if is_mounted(dir) {
        return Ok(false);
    }
    if !geteuid().is_root() {
        return Err(TracefsError::NotMounted(dir.to_path_buf()));
    }
    mount(
        Some("tracefs"),
        dir,
        Some("tracefs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|errno| TracefsError::Mount {
        path: dir.to_path_buf(),
        source: errno.into(),
    })?;
    Ok(true)
}

/// Reads and parses the format file of `category:name`.
pub fn read_format(dir: &Path, category: &str, name: &str) -> Result<Format, TracefsError> {
    let path = dir.join("events").join(category).join(name).join("format");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Format::parse(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(TracefsError::MissingTracepoint(
            format!("{category}:{name}"),
            path,
        )),
        Err(source) => Err(TracefsError::Read { path, source }),
    }
}

/// Offset of a required field.
pub fn offset(fmt: &Format, tracepoint: &str, field: &str) -> Result<u32, TracefsError> {
    fmt.field(field)
        .map(|f| f.offset)
        .ok_or_else(|| TracefsError::MissingField {
            tracepoint: tracepoint.to_string(),
            field: field.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reproduces kmem:rss_stat's format file of Linux 6.18 (as read on this machine kind).
    const RSS_STAT: &str = "name: rss_stat\nID: 646\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\tfield:unsigned int mm_id;\toffset:8;\tsize:4;\tsigned:0;\n\tfield:unsigned int curr;\toffset:12;\tsize:4;\tsigned:0;\n\tfield:int member;\toffset:16;\tsize:4;\tsigned:1;\n\tfield:long size;\toffset:24;\tsize:8;\tsigned:1;\n\nprint fmt: \"mm_id=%u\", REC->mm_id\n";

    #[test]
    fn parses_rss_stat() {
        let f = Format::parse(RSS_STAT);
        assert_eq!(f.name, "rss_stat");
        assert_eq!(f.field("mm_id").unwrap().offset, 8);
        assert_eq!(f.field("curr").unwrap().offset, 12);
        assert_eq!(f.field("member").unwrap().offset, 16);
        let size = f.field("size").unwrap();
        assert_eq!((size.offset, size.size), (24, 8));
        assert_eq!(f.field("common_pid").unwrap().offset, 4);
    }

    #[test]
    fn parses_arrays_and_data_loc() {
        let text = "name: sched_switch\n\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;\n";
        let f = Format::parse(text);
        assert_eq!(f.field("prev_comm").unwrap().size, 16);
        assert_eq!(f.field("filename").unwrap().offset, 8);
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let text = "name: x\n\tfield:int a;\toffset:zz;\tsize:4;\n\tfield:;offset:4;size:4;\n\tfield:int b;\toffset:12;\tsize:4;\tsigned:1;\ngarbage\n";
        let f = Format::parse(text);
        assert_eq!(f.fields.len(), 1);
        assert_eq!(f.field("b").unwrap().offset, 12);
        assert!(offset(&f, "x:x", "a").is_err());
    }
}
