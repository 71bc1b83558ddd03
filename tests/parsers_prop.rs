//! Property tests of every parser of outside input: arbitrary bytes and mutations of real
//! inputs (the fixtures reproduce real formats: llama.cpp GGUF headers, o3's trace files, the
//! legacy tool's request logs, amdgpu sysfs trees of a Strix Halo, procfs files of Linux 6.x)
//! never panic, and what they refuse is refused with a one-line reason.

// A test may unwrap: a panic there is the failure, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use o3::learn::{gguf, legacy};
use o3::telemetry::gpu::{amd, gpu_metrics, smi, GpuReading};
use o3::telemetry::procfs;
use proptest::prelude::*;

fn fixture(p: &str) -> Vec<u8> {
    std::fs::read(common::fixtures().join(p)).unwrap()
}

/// A real input changed the ways damage and bad writers change files: bytes overwritten, the
/// file cut, a range deleted or repeated, a large integer written over a length field.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Cut(usize),
    Delete(usize, usize),
    Repeat(usize, usize),
    BigInt(usize, u64),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        any::<usize>().prop_map(Edit::Cut),
        (any::<usize>(), 0usize..64).prop_map(|(i, n)| Edit::Delete(i, n)),
        (any::<usize>(), 0usize..64).prop_map(|(i, n)| Edit::Repeat(i, n)),
        (any::<usize>(), any::<u64>()).prop_map(|(i, v)| Edit::BigInt(i, v)),
    ]
}

fn apply(mut b: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        if b.is_empty() {
            break;
        }
        let at = |i: usize| i % b.len();
        match *e {
            Edit::Set(i, v) => {
                let i = at(i);
                b[i] = v;
            }
            Edit::Cut(i) => b.truncate(at(i)),
            Edit::Delete(i, n) => {
                let i = at(i);
                let end = (i + n).min(b.len());
                b.drain(i..end);
            }
            Edit::Repeat(i, n) => {
                let i = at(i);
                let end = (i + n).min(b.len());
                let copy = b[i..end].to_vec();
                b.splice(i..i, copy);
            }
            Edit::BigInt(i, v) => {
                let i = at(i);
                for (k, byte) in v.to_le_bytes().iter().enumerate() {
                    if let Some(x) = b.get_mut(i + k) {
                        *x = *byte;
                    }
                }
            }
        }
    }
    b
}

fn one_line(e: &dyn std::fmt::Display) -> Result<(), TestCaseError> {
    let text = e.to_string();
    prop_assert!(!text.contains('\n'), "a multi-line error: {text}");
    prop_assert!(!text.is_empty());
    Ok(())
}

fn gguf_fixtures() -> Vec<Vec<u8>> {
    [
        "llama31-8b-q4km",
        "gemma2-2b-v2",
        "openelm-per-layer-kv",
        "mixtral-8x7b-q4km",
    ]
    .iter()
    .map(|n| fixture(&format!("gguf/{n}.gguf")))
    .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn gguf_headers(which in 0usize..4, edits in prop::collection::vec(edit(), 1..6)) {
        let bytes = apply(gguf_fixtures()[which].clone(), &edits);
        match gguf::parse(&bytes[..], bytes.len() as u64, "m.gguf") {
            Ok(info) => {
                prop_assert!(info.tensor_count <= gguf::MAX_TENSOR_COUNT);
                prop_assert!(info.file_size_bytes == bytes.len() as u64);
            }
            Err(e) => one_line(&e)?,
        }
    }

    #[test]
    fn gguf_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut b = b"GGUF\x03\x00\x00\x00".to_vec();
        b.extend_from_slice(&bytes);
        if let Err(e) = gguf::parse(&b[..], b.len() as u64, "m.gguf") {
            one_line(&e)?;
        }
    }

    #[test]
    fn configs(edits in prop::collection::vec(edit(), 1..6), pick in 0usize..2) {
        let base = [
            o3::config::default_yaml().as_bytes().to_vec(),
            std::fs::read(common::fixtures().join("../../config/short.yaml")).unwrap(),
        ];
        let bytes = apply(base[pick].clone(), &edits);
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = o3::config::parse(&text, "o3.yaml") {
            one_line(&e)?;
        }
    }

    #[test]
    fn traces(pick in 0usize..3, edits in prop::collection::vec(edit(), 1..6)) {
        let name = ["traces/record.jsonl", "traces/handmade-gpu.jsonl", "traces/tree.jsonl"][pick];
        let bytes = apply(fixture(name), &edits);
        if let Err(e) = o3::trace::read::parse_bytes(&bytes, Path::new("t.jsonl")) {
            one_line(&e)?;
        }
    }

    #[test]
    fn legacy_request_lines(edits in prop::collection::vec(edit(), 1..4)) {
        let line = br#"{"model": "llama3.1:8b", "config": {"num_ctx": 8192, "batch": 512, "num_thread": 8}, "success": true, "timestamp": "2024-05-01T12:00:00", "concurrency_level": 2, "tokens_per_second": 41.5}"#;
        let bytes = apply(line.to_vec(), &edits);
        let _ = legacy::parse_request(1, &String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn procfs_files(text in "\\PC{0,200}") {
        for r in [
            procfs::parse_stat(&text).err(),
            procfs::parse_status(&text).err(),
            procfs::parse_statm(&text).err(),
            procfs::parse_meminfo(&text).err(),
            procfs::parse_smaps_rollup(&text).err(),
            procfs::parse_stat_cpu(&text).err(),
        ].into_iter().flatten() {
            one_line(&r)?;
        }
        let _ = procfs::parse_children(&text);
    }

    #[test]
    fn smi_outputs(text in "\\PC{0,300}") {
        for r in [
            smi::parse_rocm_smi_csv(&text).err(),
            smi::parse_amd_smi_json(&text).err(),
            smi::parse_nvidia_smi_csv(&text).err(),
        ].into_iter().flatten() {
            one_line(&r)?;
        }
    }

    #[test]
    fn gpu_metrics_tables(pick in 0usize..2, edits in prop::collection::vec(edit(), 1..6)) {
        let name = ["amdgpu/rdna3-gpu_metrics-v1_3.bin", "amdgpu/strix-halo-gpu_metrics-v3_0.bin"][pick];
        let bytes = apply(fixture(name), &edits);
        if let Err(e) = gpu_metrics::decode(&bytes) {
            one_line(&e)?;
        }
    }
}

/// The files of a fixture tree, relative to it.
fn files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

fn copy_tree(from: &Path, to: &Path) {
    for f in files(from) {
        let dst = to.join(&f);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(from.join(&f), dst).unwrap();
    }
}

#[test]
fn amdgpu_sysfs_trees_with_one_damaged_file() {
    // One copy of the Strix Halo tree; each case damages one file and puts it back.
    let src = common::fixtures().join("strix-halo/sys");
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("sys");
    copy_tree(&src, &sys);
    let list = files(&sys);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    });
    let strategy = (
        0..list.len(),
        prop_oneof![
            "\\PC{0,40}".prop_map(std::string::String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..64),
            Just(b"18446744073709551616\n".to_vec()),
            Just(b"-1\n".to_vec()),
        ],
    );
    runner
        .run(&strategy, |(i, content)| {
            let f = sys.join(&list[i]);
            let original = std::fs::read(&f).unwrap();
            std::fs::write(&f, &content).unwrap();
            for dev in amd::discover(&sys, &dir.path().join("dev")) {
                let mut s = amd::AmdSysfs::open(&dev);
                let mut r = GpuReading::default();
                s.read_memory(&mut r);
                s.read_sensors(&mut r);
                let _ = s.crit_limits();
            }
            std::fs::write(&f, original).unwrap();
            Ok(())
        })
        .unwrap();
}
