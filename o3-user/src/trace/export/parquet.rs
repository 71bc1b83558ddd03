//! Parquet export: the CSV export's table (the same columns, names and rows) with typed,
//! nullable columns, Snappy-compressed, and the trace header in the footer's key-value
//! metadata. Written with parquet's low-level column writers (no arrow).
//!
//! Each column has a declared type: INT64 for counters in bytes or ns, DOUBLE for times in ms,
//! percentages, temperatures, power, energy and clocks, BOOLEAN for `gpuN_asleep`. A column
//! whose values in this trace do not fit its type (a hand-edited trace with a string there, a
//! count above `i64::MAX`) is written as UTF8 text instead, the way the CSV writes it, so no
//! value is lost.

use std::borrow::Cow;
use std::sync::Arc;

use parquet::basic::{Compression, ConvertedType, LogicalType, Repetition, Type as Physical};
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::{SerializedColumnWriter, SerializedFileWriter};
use parquet::schema::types::Type;
use serde_json::Value;

use super::csv::GPU_FIELDS;
use crate::trace::{SampleRec, Trace};

/// Rows per row group: readers parallelise over row groups; a 10 ms trace of 24 hours is 8.6
/// million rows.
const ROWS_PER_GROUP: usize = 1 << 20;

/// A column's type in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Int64,
    Double,
    Bool,
    Text,
}

/// One value as the trace holds it, before it is fitted to its column's type.
enum Cell<'a> {
    Null,
    UInt(u64),
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(Cow<'a, str>),
}

impl Cell<'_> {
    fn fits(&self, kind: Kind) -> bool {
        match (kind, self) {
            (_, Cell::Null) | (Kind::Text, _) => true,
            (Kind::Int64, Cell::UInt(u)) => i64::try_from(*u).is_ok(),
            (Kind::Int64, Cell::Int(_)) => true,
            (Kind::Double, Cell::UInt(_) | Cell::Int(_) | Cell::Float(_)) => true,
            (Kind::Bool, Cell::Bool(_)) => true,
            _ => false,
        }
    }

    fn int64(&self) -> Option<i64> {
        match self {
            Cell::UInt(u) => i64::try_from(*u).ok(),
            Cell::Int(i) => Some(*i),
            _ => None,
        }
    }

    fn double(&self) -> Option<f64> {
        match self {
            Cell::UInt(u) => Some(*u as f64),
            Cell::Int(i) => Some(*i as f64),
            Cell::Float(f) => Some(*f),
            _ => None,
        }
    }

    fn bool(&self) -> Option<bool> {
        match self {
            Cell::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The text of a value in a column written as text: strings as they are, anything else as
    /// the CSV export writes it (JSON numbers in the trace's own form).
    fn text(&self) -> Option<ByteArray> {
        let s = match self {
            Cell::Null => return None,
            Cell::UInt(u) => u.to_string(),
            Cell::Int(i) => i.to_string(),
            Cell::Float(f) => Value::from(*f).to_string(),
            Cell::Bool(b) => b.to_string(),
            Cell::Text(s) => s.to_string(),
        };
        Some(ByteArray::from(s.into_bytes()))
    }
}

fn uint(v: Option<u64>) -> Cell<'static> {
    v.map_or(Cell::Null, Cell::UInt)
}

/// ns as ms, the CSV's `*_t_ms` columns; exact to the ns below 2^53 ns (104 days).
fn ms(t_ns: Option<u64>) -> Cell<'static> {
    t_ns.map_or(Cell::Null, |t| Cell::Float(t as f64 / 1e6))
}

fn json(v: Option<&Value>) -> Cell<'_> {
    match v {
        None | Some(Value::Null) => Cell::Null,
        Some(Value::Bool(b)) => Cell::Bool(*b),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Cell::UInt)
            .or_else(|| n.as_i64().map(Cell::Int))
            .or_else(|| n.as_f64().map(Cell::Float))
            .unwrap_or_else(|| Cell::Text(Cow::Owned(n.to_string()))),
        Some(Value::String(s)) => Cell::Text(Cow::Borrowed(s)),
        Some(other) => Cell::Text(Cow::Owned(other.to_string())),
    }
}

type Get = fn(&SampleRec) -> Cell<'static>;

/// The columns before the per-GPU ones, in the order of [`super::csv::COLUMNS`].
const BASE: [(&str, Kind, Get); 14] = [
    ("t_ms", Kind::Double, |s| ms(Some(s.t_ns))),
    ("rss_bytes", Kind::Int64, |s| uint(s.rss_bytes)),
    ("rss_anon_bytes", Kind::Int64, |s| uint(s.rss_anon_bytes)),
    ("rss_file_bytes", Kind::Int64, |s| uint(s.rss_file_bytes)),
    ("rss_shmem_bytes", Kind::Int64, |s| uint(s.rss_shmem_bytes)),
    ("swap_bytes", Kind::Int64, |s| uint(s.swap_bytes)),
    ("rss_peak_bytes", Kind::Int64, |s| uint(s.rss_peak_bytes)),
    ("rss_peak_t_ms", Kind::Double, |s| ms(s.rss_peak_t_ns)),
    ("cpu_ns", Kind::Int64, |s| uint(s.cpu_ns)),
    ("cpu_t_ms", Kind::Double, |s| ms(s.cpu_t_ns)),
    ("processes", Kind::Int64, |s| {
        uint(s.processes.map(u64::from))
    }),
    ("mem_used_bytes", Kind::Int64, |s| uint(s.mem_used_bytes)),
    ("mem_total_bytes", Kind::Int64, |s| uint(s.mem_total_bytes)),
    ("system_cpu_percent", Kind::Double, |s| {
        s.system_cpu_percent.map_or(Cell::Null, Cell::Float)
    }),
];

/// The declared type of a per-GPU field (`GpuReading` and `GpuSample`): byte counts are
/// integers, `asleep` a flag, the rest (percent, °C, W, J, MHz) floats.
fn gpu_kind(field: &str) -> Kind {
    if field.ends_with("_bytes") {
        Kind::Int64
    } else if field == "asleep" {
        Kind::Bool
    } else {
        Kind::Double
    }
}

enum Source {
    Base(Get),
    Gpu { index: u32, field: &'static str },
}

impl Source {
    fn cell<'a>(&self, s: &'a SampleRec) -> Cell<'a> {
        match self {
            Source::Base(get) => get(s),
            Source::Gpu { index, field } => json(
                s.gpus
                    .iter()
                    .find(|g| g.index == *index)
                    .and_then(|g| g.fields.get(*field)),
            ),
        }
    }
}

struct Column {
    name: String,
    kind: Kind,
    source: Source,
}

/// The CSV's columns, each with the declared type where every value fits it, else text.
fn columns(t: &Trace) -> Vec<Column> {
    let base = BASE.iter().map(|(name, kind, get)| Column {
        name: name.to_string(),
        kind: *kind,
        source: Source::Base(*get),
    });
    let gpus = t.gpu_indices().into_iter().flat_map(|index| {
        GPU_FIELDS.iter().map(move |field| Column {
            name: format!("gpu{index}_{field}"),
            kind: gpu_kind(field),
            source: Source::Gpu { index, field },
        })
    });
    base.chain(gpus)
        .map(|mut c| {
            if !t.samples.iter().all(|s| c.source.cell(s).fits(c.kind)) {
                c.kind = Kind::Text;
            }
            c
        })
        .collect()
}

fn schema_field(c: &Column) -> Type {
    primitive(&c.name, c.kind)
}

/// A nullable column of `kind` named `name` (UTF8 text, INT64, DOUBLE or BOOLEAN); the
/// results export types its columns the same way.
pub(crate) fn primitive(name: &str, kind: Kind) -> Type {
    let (physical, logical, converted) = match kind {
        Kind::Int64 => (Physical::INT64, None, ConvertedType::NONE),
        Kind::Double => (Physical::DOUBLE, None, ConvertedType::NONE),
        Kind::Bool => (Physical::BOOLEAN, None, ConvertedType::NONE),
        Kind::Text => (
            Physical::BYTE_ARRAY,
            Some(LogicalType::String),
            ConvertedType::UTF8,
        ),
    };
    Type::primitive_type_builder(name, physical)
        .with_repetition(Repetition::OPTIONAL)
        .with_logical_type(logical)
        .with_converted_type(converted)
        .build()
        .expect("a primitive column type is valid")
}

/// The trace header, as `o3.<header field>` keys.
fn footer(t: &Trace) -> Vec<KeyValue> {
    let h = &t.header;
    [
        ("o3.schema_version", Some(h.schema_version.to_string())),
        ("o3.o3_version", h.o3_version.clone()),
        ("o3.host", h.host.clone()),
        ("o3.kernel", h.kernel.clone()),
        ("o3.interval_ns", h.interval_ns.map(|v| v.to_string())),
        ("o3.start_unix_ns", h.start_unix_ns.map(|v| v.to_string())),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some(KeyValue::new(k.to_string(), v?)))
    .collect()
}

/// Definition levels (1 present, 0 null) and the present values of one column.
fn levels<T>(
    c: &Column,
    rows: &[SampleRec],
    value: impl Fn(&Cell) -> Option<T>,
) -> (Vec<i16>, Vec<T>) {
    let mut defs = Vec::with_capacity(rows.len());
    let mut values = Vec::with_capacity(rows.len());
    for s in rows {
        match value(&c.source.cell(s)) {
            Some(v) => {
                defs.push(1);
                values.push(v);
            }
            None => defs.push(0),
        }
    }
    (defs, values)
}

fn write_column(w: &mut SerializedColumnWriter<'_>, c: &Column, rows: &[SampleRec]) {
    let written = match c.kind {
        Kind::Int64 => {
            let (defs, values) = levels(c, rows, |x| x.int64());
            w.typed::<Int64Type>()
                .write_batch(&values, Some(&defs), None)
        }
        Kind::Double => {
            let (defs, values) = levels(c, rows, |x| x.double());
            w.typed::<DoubleType>()
                .write_batch(&values, Some(&defs), None)
        }
        Kind::Bool => {
            let (defs, values) = levels(c, rows, |x| x.bool());
            w.typed::<BoolType>()
                .write_batch(&values, Some(&defs), None)
        }
        Kind::Text => {
            let (defs, values) = levels(c, rows, |x| x.text());
            w.typed::<ByteArrayType>()
                .write_batch(&values, Some(&defs), None)
        }
    };
    written.expect("writing a column into memory");
}

/// The trace's samples as a Parquet file: one row per sample, the CSV export's columns.
pub fn parquet(t: &Trace) -> Vec<u8> {
    write(t, ROWS_PER_GROUP)
}

fn write(t: &Trace, rows_per_group: usize) -> Vec<u8> {
    let columns = columns(t);
    let schema = Type::group_type_builder("o3_samples")
        .with_fields(columns.iter().map(|c| Arc::new(schema_field(c))).collect())
        .build()
        .expect("a group of primitive columns is valid");
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_key_value_metadata(Some(footer(t)))
        .build();
    let mut file = SerializedFileWriter::new(Vec::new(), Arc::new(schema), Arc::new(props))
        .expect("the schema and properties are valid");
    for rows in t.samples.chunks(rows_per_group) {
        let mut group = file.next_row_group().expect("starting a row group");
        for c in &columns {
            let mut w = group
                .next_column()
                .expect("starting a column")
                .expect("one writer per schema column");
            write_column(&mut w, c, rows);
            w.close().expect("closing a column");
        }
        group.close().expect("closing a row group");
    }
    file.into_inner().expect("writing the footer into memory")
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    use std::io::{Seek, Write};
    use std::path::{Path, PathBuf};

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/traces")
            .join(format!("{name}.jsonl"))
    }

    fn reader(bytes: &[u8]) -> SerializedFileReader<std::fs::File> {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f.rewind().unwrap();
        SerializedFileReader::new(f).unwrap()
    }

    /// Every row of the Parquet file equals the CSV row: same names, null where the cell is
    /// empty, the same number, flag or text otherwise.
    fn assert_same_as_csv(name: &str, t: &Trace, bytes: &[u8]) {
        let csv = String::from_utf8(super::super::csv::csv(t)).unwrap();
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
        let r = reader(bytes);
        let meta = r.metadata();
        assert_eq!(meta.file_metadata().num_rows(), rows.len() as i64, "{name}");
        let schema = meta.file_metadata().schema_descr();
        let names: Vec<&str> = schema.columns().iter().map(|c| c.name()).collect();
        assert_eq!(names, header, "{name}");
        let mut n = 0;
        for (row, want) in r.get_row_iter(None).unwrap().zip(&rows) {
            let row = row.unwrap();
            let got: Vec<(&String, &Field)> = row.get_column_iter().collect();
            assert_eq!(got.len(), want.len(), "{name} row {n}");
            for ((col, field), cell) in got.into_iter().zip(want) {
                let at = format!("{name} row {n} {col}: {field:?} vs CSV {cell:?}");
                match field {
                    Field::Null => assert_eq!(*cell, "", "{at}"),
                    Field::Long(v) => assert_eq!(Ok(*v), cell.parse::<i64>(), "{at}"),
                    Field::Double(v) => assert_eq!(Ok(*v), cell.parse::<f64>(), "{at}"),
                    Field::Bool(v) => assert_eq!(Ok(*v), cell.parse::<bool>(), "{at}"),
                    Field::Str(v) => assert_eq!(v.replace([',', '"', '\n'], " "), *cell, "{at}"),
                    other => panic!("{at}: unexpected type {other:?}"),
                }
            }
            n += 1;
        }
        assert_eq!(n, rows.len(), "{name}");
    }

    #[test]
    fn fixtures_round_trip_to_the_csv_values() {
        for name in ["record", "tree", "handmade-gpu", "truncated", "garbage"] {
            let t = crate::trace::read_file(&fixture(name)).unwrap();
            assert!(!t.samples.is_empty(), "{name}");
            assert_same_as_csv(name, &t, &parquet(&t));
            // Several row groups read back as the same rows.
            assert_same_as_csv(name, &t, &write(&t, 5));
        }
    }

    #[test]
    fn columns_are_typed_nullable_and_snappy_compressed() {
        let t = crate::trace::read_file(&fixture("handmade-gpu")).unwrap();
        let r = reader(&parquet(&t));
        let schema = r.metadata().file_metadata().schema_descr();
        let physical = |name: &str| {
            let c = schema.columns().iter().find(|c| c.name() == name).unwrap();
            assert!(c.self_type().is_optional(), "{name}");
            c.physical_type()
        };
        assert_eq!(physical("t_ms"), Physical::DOUBLE);
        assert_eq!(physical("rss_bytes"), Physical::INT64);
        assert_eq!(physical("processes"), Physical::INT64);
        assert_eq!(physical("system_cpu_percent"), Physical::DOUBLE);
        assert_eq!(physical("gpu0_vram_used_bytes"), Physical::INT64);
        // Null in every sample, still the declared type.
        assert_eq!(physical("gpu0_temp_mem_c"), Physical::DOUBLE);
        assert_eq!(physical("gpu0_gpu_busy_percent"), Physical::DOUBLE);
        assert_eq!(physical("gpu0_asleep"), Physical::BOOLEAN);
        for c in r.metadata().row_group(0).columns() {
            assert_eq!(c.compression(), Compression::SNAPPY, "{}", c.column_path());
        }
    }

    #[test]
    fn the_header_is_in_the_footer() {
        let t = crate::trace::read_file(&fixture("record")).unwrap();
        let r = reader(&parquet(&t));
        let kv: Vec<(String, Option<String>)> = r
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .unwrap()
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect();
        let get = |k: &str| {
            kv.iter()
                .find(|(key, _)| key == k)
                .and_then(|(_, v)| v.as_deref())
                .unwrap_or_else(|| panic!("no {k} in {kv:?}"))
        };
        assert_eq!(get("o3.host"), "vm");
        assert_eq!(get("o3.kernel"), "6.18.44-fc-v669");
        assert_eq!(get("o3.o3_version"), "0.1.0");
        assert_eq!(get("o3.interval_ns"), "10000000");
        assert_eq!(get("o3.schema_version"), "1");
        assert_eq!(get("o3.start_unix_ns"), "1795706764414107108");
    }

    #[test]
    fn base_columns_follow_the_csv_order() {
        let names: Vec<&str> = BASE.iter().map(|(n, _, _)| *n).collect();
        assert_eq!(names, super::super::csv::COLUMNS);
    }

    #[test]
    fn values_that_do_not_fit_make_a_text_column_and_nothing_is_lost() {
        let text = concat!(
            r#"{"type":"header","schema_version":1}"#,
            "\n",
            r#"{"type":"sample","t_ns":1,"rss_bytes":18446744073709551615,"gpus":[{"index":1,"power_w":"n/a","sclk_mhz":1800,"asleep":true}]}"#,
            "\n",
            r#"{"type":"sample","t_ns":2,"rss_bytes":5,"gpus":[{"index":1,"power_w":12.5,"vram_used_bytes":1.5,"asleep":false}]}"#,
            "\n",
            r#"{"type":"sample","t_ns":3,"gpus":[]}"#,
            "\n",
        );
        let t = crate::trace::read::parse(text, Path::new("t")).unwrap();
        let bytes = parquet(&t);
        assert_same_as_csv("hand-edited", &t, &bytes);
        let r = reader(&bytes);
        let schema = r.metadata().file_metadata().schema_descr();
        let physical = |name: &str| {
            schema
                .columns()
                .iter()
                .find(|c| c.name() == name)
                .unwrap()
                .physical_type()
        };
        assert_eq!(physical("rss_bytes"), Physical::BYTE_ARRAY);
        assert_eq!(physical("gpu1_power_w"), Physical::BYTE_ARRAY);
        assert_eq!(physical("gpu1_vram_used_bytes"), Physical::BYTE_ARRAY);
        assert_eq!(physical("gpu1_sclk_mhz"), Physical::DOUBLE);
        assert_eq!(physical("gpu1_asleep"), Physical::BOOLEAN);
        assert_eq!(physical("rss_anon_bytes"), Physical::INT64);
    }

    #[test]
    fn a_trace_without_samples_is_a_file_with_the_columns_and_no_rows() {
        let t = crate::trace::read::parse(
            "{\"type\":\"header\",\"schema_version\":1}\n",
            Path::new("t"),
        )
        .unwrap();
        let bytes = parquet(&t);
        assert_same_as_csv("empty", &t, &bytes);
        assert_eq!(reader(&bytes).metadata().num_row_groups(), 0);
    }
}
