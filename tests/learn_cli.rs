//! `o3 import-legacy`, `o3 history` and `o3 profiles` against a store in a temporary folder:
//! legacy results come in untrusted and are shown so; a missing store is "no history yet"; a
//! file that is not a store is one line and exit status 1.

// A test may unwrap: a panic there is the failure, with its message.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use o3::backend::{OutcomeClass, ProbeConfig};
use o3::learn::fingerprint::{Gpu, Host};
use o3::learn::store::Store;
use o3::learn::{ModelShape, Record};

fn o3() -> Command {
    let mut c = Command::cargo_bin("o3").unwrap();
    c.env_remove("XDG_DATA_HOME");
    c
}

fn legacy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/legacy")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn one_line_error(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
    assert!(err.starts_with("o3: "), "{err}");
    err
}

fn import(db: &Path) -> Output {
    o3().arg("import-legacy")
        .arg(legacy_dir())
        .arg("--db")
        .arg(db)
        .output()
        .unwrap()
}

#[test]
fn import_then_history_shows_untrusted_runs() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("o3.db");
    let out = import(&db);
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(
            "imported: 3 runs, 23 requests in 8 probes, 5 presets; all untrusted (legacy TTFT was total time, tokens/s counted words)"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("files:    2 logs, 2 defaults"), "{stdout}");
    assert!(stdout.contains("skipped:  2"), "{stdout}");
    assert!(
        stdout.contains("llama3.1_8b_20250114_093012.jsonl:12: not JSON"),
        "{stdout}"
    );
    assert!(
        stdout.contains("llama3.1_8b_20250114_093012.jsonl:15: no config"),
        "{stdout}"
    );
    assert!(out.stderr.is_empty(), "listed once, in the summary");

    let out = o3().args(["history", "--db"]).arg(&db).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let h = text(&out.stdout);
    assert!(h.contains("legacy import (unknown host)"), "{h}");
    for model in ["llama3.1:8b", "qwen2.5:14b", "mistral:7b"] {
        assert!(h.contains(model), "{model}: {h}");
    }
    assert_eq!(h.matches("imported (untrusted)").count(), 3, "{h}");
    assert!(h.contains("ollama (legacy O3)"), "{h}");
    assert!(!h.contains("measured"), "{h}");

    let out = o3()
        .args(["history", "--json", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["schema_version"], 1);
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    assert!(runs
        .iter()
        .all(|r| r["imported"] == true && r["trusted"] == false && r["trusted_probes"] == 0));
    let llama = runs.iter().find(|r| r["model"] == "llama3.1:8b").unwrap();
    assert_eq!(llama["probes"], 6);
    assert_eq!(llama["max_context"], serde_json::Value::Null);

    // A second import changes nothing.
    let out = import(&db);
    assert!(out.status.success());
    let again = text(&out.stdout);
    assert!(again.contains("imported: 0 runs"), "{again}");
    assert!(again.contains("already in the store: 3 runs"), "{again}");
    let out = o3()
        .arg("import-legacy")
        .arg(legacy_dir())
        .args(["--json", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["trusted"], false);
    assert_eq!(v["summary"]["runs_already_imported"], 3);
    let skipped = v["summary"]["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 2);
    assert_eq!(skipped[1]["line"], 15);
    assert_eq!(skipped[1]["reason"], "no config");
    assert_eq!(
        text(&out.stderr).matches("o3: warning: skipped ").count(),
        2
    );
}

fn seed_measured_run(db: &Path) {
    let s = Store::open(db).unwrap();
    let host = Host {
        cpu_model: "AMD RYZEN AI MAX+ 395 w/ Radeon 8060S".into(),
        cpu_cores: 32,
        ram_bytes: 124 << 30,
        gpus: vec![Gpu {
            name: "AMD Strix Halo".into(),
            pci_id: Some("1002:1586".into()),
            apu: true,
            vram_bytes: Some(512 << 20),
            gtt_bytes: Some(120 << 30),
            driver_version: None,
            firmware: None,
        }],
        kernel: "6.18.1".into(),
        rocm_version: None,
        vulkan_driver: None,
        cuda_driver: None,
    };
    let h = s.upsert_host(&host).unwrap();
    let m = s
        .upsert_model(
            "llama3.1:8b",
            "sha256:46e0c10c039e5d2aa3b4b8c1c6a4c2f5e3d1b0a9f8e7d6c5b4a3928170f6e5d4",
            &ModelShape::default(),
        )
        .unwrap();
    let run = s.begin_run(&h, &m, "ollama", "/tmp/o3-run", "{}").unwrap();
    let config = ProbeConfig {
        ctx: 32768,
        parallel: Some(2),
        ..ProbeConfig::default()
    };
    s.add_probe(
        run,
        "context",
        &Record {
            host_id: h.clone(),
            model_id: m.clone(),
            config: config.clone(),
            concurrency: 2,
            outcome: OutcomeClass::Ok,
            success: true,
            prefill_tokens_per_s: Some(800.0),
            decode_tokens_per_s: Some(40.0),
            ttft_ms: Some(350.0),
            rss_peak_bytes: None,
            gpu_used_peak_bytes: Some(9 << 30),
            capacity_bytes: Some(120 << 30),
            model: ModelShape::default(),
            trusted: true,
            unix_s: 1_760_000_000,
            prompt_tokens: Some(29_427),
            proven_at_depth: Some(true),
            timing: Vec::new(),
        },
        None,
    )
    .unwrap();
    let preset = serde_json::json!({
        "config": config,
        "concurrency": 2,
        "output_tokens_per_s": 78.5,
        "ttft_p95_ms": 412.0
    });
    s.finish_run(
        run,
        "finished",
        Some(32768),
        Some(true),
        &[("balanced".into(), preset)],
    )
    .unwrap();
}

#[test]
fn profiles_show_measured_and_imported_presets_apart() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("o3.db");
    seed_measured_run(&db);
    assert!(import(&db).status.success());
    let out = o3().args(["profiles", "--db"]).arg(&db).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let p = text(&out.stdout);
    assert!(
        p.contains("AMD RYZEN AI MAX+ 395 w/ Radeon 8060S (32 CPUs), 124 GiB RAM, AMD Strix Halo (APU, GTT 120 GiB), kernel 6.18.1"),
        "{p}"
    );
    assert!(p.contains("validated max context 32768"), "{p}");
    assert!(
        p.contains("balanced  ctx 32768 · 2 slots  concurrency 2, 78.5 tok/s, TTFT p95 412 ms"),
        "{p}"
    );
    assert!(
        p.contains("host ") && p.contains("legacy import (unknown host)"),
        "{p}"
    );
    assert!(
        p.contains("legacy, untrusted: 41.2 words/s, total time 5012 ms"),
        "{p}"
    );
    assert!(p.contains("mistral:7b"), "{p}");

    let out = o3()
        .args(["profiles", "--json", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let hosts = v["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 2);
    let real = hosts.iter().find(|h| h["host"]["cpu_cores"] == 32).unwrap();
    assert_eq!(real["models"][0]["max_context"], 32768);
    assert_eq!(real["models"][0]["presets"][0]["config"]["ctx"], 32768);
    let legacy = hosts.iter().find(|h| h["host"]["cpu_cores"] == 0).unwrap();
    assert!(legacy["models"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["imported"] == true));
    // The measured run is history's only measured one.
    let out = o3().args(["history", "--db"]).arg(&db).output().unwrap();
    let h = text(&out.stdout);
    assert_eq!(h.matches("measured").count(), 1, "{h}");
    assert_eq!(h.matches("imported (untrusted)").count(), 3, "{h}");
}

#[test]
fn no_store_yet_is_said_with_its_path_and_nothing_is_created() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("none/o3.db");
    for cmd in ["history", "profiles"] {
        let out = o3().args([cmd, "--db"]).arg(&db).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{cmd}: {out:?}");
        let s = text(&out.stdout);
        assert!(
            s.starts_with(&format!("no history yet: {} does not exist", db.display())),
            "{cmd}: {s}"
        );
        let out = o3()
            .args([cmd, "--json", "--db"])
            .arg(&db)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["exists"], false);
    }
    assert!(!db.exists() && !db.parent().unwrap().exists());
    // The default path follows XDG_DATA_HOME.
    let out = o3()
        .arg("history")
        .env("XDG_DATA_HOME", d.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = text(&out.stdout);
    assert!(
        s.contains(&format!("{}/o3/o3.db does not exist", d.path().display())),
        "{s}"
    );
}

#[test]
fn a_file_that_is_not_a_store_is_one_line_and_exit_1() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("notes.txt");
    std::fs::write(&db, "shopping list: eggs, milk, a bigger GPU\n".repeat(100)).unwrap();
    for args in [
        vec!["history".to_string()],
        vec!["profiles".into()],
        vec!["import-legacy".into(), legacy_dir().display().to_string()],
    ] {
        let out = o3().args(&args).arg("--db").arg(&db).output().unwrap();
        let err = one_line_error(&out);
        assert!(
            err.contains(&format!("{} is not an o3 database", db.display()))
                && err.contains("move it away"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn a_store_of_a_newer_o3_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("o3.db");
    drop(Store::open(&db).unwrap());
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
    }
    let out = o3().args(["history", "--db"]).arg(&db).output().unwrap();
    let err = one_line_error(&out);
    assert!(
        err.contains("schema version 99") && err.contains("upgrade o3"),
        "{err}"
    );
}

#[test]
fn import_of_a_folder_that_is_not_legacy_output_creates_nothing() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("o3.db");
    let out = o3()
        .arg("import-legacy")
        .arg(d.path())
        .arg("--db")
        .arg(&db)
        .output()
        .unwrap();
    let err = one_line_error(&out);
    assert!(err.contains("is not a legacy O3 output folder"), "{err}");
    assert!(!db.exists());
    let out = o3().args(["import-legacy"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "DIR is required");
}
