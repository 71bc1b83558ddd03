//! An `o3 optimize` run's results as one table, a row per measured configuration, for a
//! spreadsheet or a data frame: `o3 export RUN_DIR --format csv|parquet`. The columns are
//! summary.json's `configurations` (docs/optimizer.md), flattened, units in the names, and the
//! presets that chose each row. Parquet columns are typed (INT64 counts and bytes, DOUBLE
//! rates and times, BOOLEAN verdicts, UTF8 text), every one nullable.

use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::{SerializedColumnWriter, SerializedFileWriter};
use parquet::schema::types::Type;
use serde_json::Value;

use crate::trace::export::parquet::{primitive, Kind};

/// The columns, in order: a name and the path to its value in a configuration object.
const COLUMNS: [(&str, &[&str]); 21] = [
    ("id", &["id"]),
    ("stage", &["stage"]),
    ("ctx", &["config", "ctx"]),
    ("batch", &["config", "batch"]),
    ("ubatch", &["config", "ubatch"]),
    ("parallel", &["config", "parallel"]),
    ("concurrency", &["concurrency"]),
    ("outcome", &["outcome"]),
    ("stable", &["stable"]),
    ("proven_at_depth", &["proven_at_depth"]),
    ("success_rate", &["validation", "success_rate"]),
    ("output_tokens_per_s", &["output_tokens_per_s"]),
    ("ttft_p50_ms", &["ttft_p50_ms"]),
    ("ttft_p95_ms", &["ttft_p95_ms"]),
    ("cached_ttft_p50_ms", &["cached_ttft_p50_ms"]),
    ("prompt_tokens", &["prompt_tokens"]),
    ("rss_peak_bytes", &["rss_peak_bytes"]),
    ("gpu_used_peak_bytes", &["gpu_used_peak_bytes"]),
    ("mem_used_peak_bytes", &["mem_used_peak_bytes"]),
    ("presets", &[]),
    ("error", &["error"]),
];

fn kind(column: &str) -> Kind {
    match column {
        "id" | "stage" | "outcome" | "presets" | "error" => Kind::Text,
        "stable" | "proven_at_depth" => Kind::Bool,
        "success_rate"
        | "output_tokens_per_s"
        | "ttft_p50_ms"
        | "ttft_p95_ms"
        | "cached_ttft_p50_ms" => Kind::Double,
        _ => Kind::Int64,
    }
}

/// The rows as cells: the value at each column's path, the presets column as text.
fn rows(summary: &Value) -> Vec<Vec<Value>> {
    let chosen = chosen_by(summary);
    let rows = summary["configurations"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    rows.iter()
        .map(|m| {
            COLUMNS
                .iter()
                .map(|(name, path)| {
                    if *name == "presets" {
                        let id = m["id"].as_str().unwrap_or("");
                        let names: Vec<&str> = chosen
                            .iter()
                            .filter(|(_, c)| c == id)
                            .map(|(p, _)| p.as_str())
                            .collect();
                        return Value::String(names.join(" "));
                    }
                    path.iter().fold(m, |v, k| &v[*k]).clone()
                })
                .collect()
        })
        .collect()
}

/// The same table as a Parquet file (Snappy, one row group).
pub fn parquet(summary: &Value) -> Vec<u8> {
    let rows = rows(summary);
    let fields = COLUMNS
        .iter()
        .map(|(name, _)| Arc::new(primitive(name, kind(name))))
        .collect();
    let schema = Type::group_type_builder("o3_configurations")
        .with_fields(fields)
        .build()
        .expect("a group of primitive columns is valid");
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut file = SerializedFileWriter::new(Vec::new(), Arc::new(schema), Arc::new(props))
        .expect("the schema and properties are valid");
    let mut group = file.next_row_group().expect("starting a row group");
    for (i, (name, _)) in COLUMNS.iter().enumerate() {
        let mut w = group
            .next_column()
            .expect("starting a column")
            .expect("one writer per schema column");
        let cells: Vec<&Value> = rows.iter().map(|r| &r[i]).collect();
        write_column(&mut w, kind(name), &cells);
        w.close().expect("closing a column");
    }
    group.close().expect("closing a row group");
    file.into_inner().expect("writing the footer into memory")
}

/// Definition levels (1 present, 0 null) and the present values.
fn levels<T>(cells: &[&Value], value: impl Fn(&Value) -> Option<T>) -> (Vec<i16>, Vec<T>) {
    let mut defs = Vec::with_capacity(cells.len());
    let mut values = Vec::new();
    for c in cells {
        match value(c) {
            Some(v) => {
                defs.push(1);
                values.push(v);
            }
            None => defs.push(0),
        }
    }
    (defs, values)
}

fn write_column(w: &mut SerializedColumnWriter<'_>, k: Kind, cells: &[&Value]) {
    let written = match k {
        Kind::Int64 => {
            let (d, v) = levels(cells, Value::as_i64);
            w.typed::<Int64Type>().write_batch(&v, Some(&d), None)
        }
        Kind::Double => {
            let (d, v) = levels(cells, Value::as_f64);
            w.typed::<DoubleType>().write_batch(&v, Some(&d), None)
        }
        Kind::Bool => {
            let (d, v) = levels(cells, Value::as_bool);
            w.typed::<BoolType>().write_batch(&v, Some(&d), None)
        }
        Kind::Text => {
            let (d, v) = levels(cells, |c| c.as_str().map(ByteArray::from));
            w.typed::<ByteArrayType>().write_batch(&v, Some(&d), None)
        }
    };
    written.expect("writing a column into memory");
}

/// The CSV of a run's summary.json: a header, then a row per configuration. Text cells that
/// hold a comma, a quote or a line break are quoted as RFC 4180 says.
pub fn csv(summary: &Value) -> Vec<u8> {
    let mut out = COLUMNS.map(|(n, _)| n).join(",") + "\n";
    for r in rows(summary) {
        let cells: Vec<String> = r.iter().map(cell).collect();
        out += &(cells.join(",") + "\n");
    }
    out.into_bytes()
}

/// (preset, configuration id) for each preset that chose one.
fn chosen_by(summary: &Value) -> Vec<(String, String)> {
    summary["presets"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_string(),
                p["chosen"].as_str()?.to_string(),
            ))
        })
        .collect()
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => quote(s),
        other => other.to_string(),
    }
}

fn quote(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_configuration_is_a_row_with_the_presets_that_chose_it() {
        let s = serde_json::json!({
            "presets": [
                {"name": "max_context", "chosen": "c8192-b64-p1"},
                {"name": "balanced", "chosen": "c8192-b64-p1"},
                {"name": "fast_response", "chosen": null},
            ],
            "configurations": [
                {"id": "c8192-b64-p1", "stage": "validate", "config": {"ctx": 8192, "batch": 64},
                 "concurrency": 1, "outcome": "ok", "stable": true, "proven_at_depth": true,
                 "validation": {"success_rate": 1.0}, "output_tokens_per_s": 41.5,
                 "rss_peak_bytes": 123, "error": null},
                {"id": "c16384-b64-p1", "stage": "context", "config": {"ctx": 16384, "batch": 64},
                 "concurrency": 1, "outcome": "oom", "stable": false,
                 "error": "out of memory, \"cudaMalloc\"\nfailed"},
            ]
        });
        let text = String::from_utf8(csv(&s)).unwrap();
        let lines: Vec<&str> = text.split_terminator('\n').collect();
        assert_eq!(lines[0].split(',').count(), COLUMNS.len());
        assert_eq!(
            lines[1],
            "c8192-b64-p1,validate,8192,64,,,1,ok,true,true,1.0,41.5,,,,,123,,,max_context balanced,"
        );
        // The error's comma, quotes and line break stay inside one quoted cell.
        assert_eq!(
            &text[text.find("c16384").unwrap()..],
            "c16384-b64-p1,context,16384,64,,,1,oom,false,,,,,,,,,,,,\"out of memory, \"\"cudaMalloc\"\"\nfailed\"\n"
        );
    }

    #[test]
    fn the_parquet_table_reads_back_typed() {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        use parquet::record::Field;
        let s = serde_json::json!({
            "presets": [{"name": "max_context", "chosen": "c8192-b64-p1"}],
            "configurations": [
                {"id": "c8192-b64-p1", "stage": "validate", "config": {"ctx": 8192, "batch": 64},
                 "concurrency": 1, "outcome": "ok", "stable": true,
                 "validation": {"success_rate": 1.0}, "output_tokens_per_s": 41.5},
                {"id": "c16384-b64-p1", "stage": "context", "config": {"ctx": 16384},
                 "concurrency": 1, "outcome": "oom", "stable": false},
            ]
        });
        use std::io::{Seek, Write};
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&parquet(&s)).unwrap();
        f.rewind().unwrap();
        let r = SerializedFileReader::new(f).unwrap();
        let rows: Vec<_> = r.get_row_iter(None).unwrap().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 2);
        let get = |row: usize, name: &str| {
            rows[row]
                .get_column_iter()
                .find(|(n, _)| n.as_str() == name)
                .map(|(_, f)| f.clone())
                .unwrap()
        };
        assert_eq!(get(0, "ctx"), Field::Long(8192));
        assert_eq!(get(0, "stable"), Field::Bool(true));
        assert_eq!(get(0, "output_tokens_per_s"), Field::Double(41.5));
        assert_eq!(get(0, "presets"), Field::Str("max_context".into()));
        assert_eq!(get(1, "batch"), Field::Null);
        assert_eq!(get(1, "outcome"), Field::Str("oom".into()));
    }
}
