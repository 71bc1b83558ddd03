use std::io::BufRead;

use rusqlite::params;

use super::*;
use crate::backend::OutcomeClass;
use crate::learn::fingerprint::Gpu;
use crate::learn::ModelShape;

pub(crate) fn host() -> Host {
    Host {
        cpu_model: "AMD RYZEN AI MAX+ 395".into(),
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
        rocm_version: Some("6.4.1".into()),
        vulkan_driver: None,
        cuda_driver: None,
    }
}

pub(crate) fn shape() -> ModelShape {
    ModelShape {
        architecture: Some("llama".into()),
        parameters: Some(8_030_261_248),
        weights_bytes: Some(4_920_734_720),
        trained_context: Some(131_072),
        block_count: Some(32),
        ..ModelShape::default()
    }
}

pub(crate) fn rec(ctx: u32, success: bool, unix_s: u64) -> Record {
    Record {
        host_id: String::new(),
        model_id: String::new(),
        config: ProbeConfig {
            ctx,
            parallel: Some(1),
            ..ProbeConfig::default()
        },
        concurrency: 1,
        outcome: if success {
            OutcomeClass::Ok
        } else {
            OutcomeClass::Oom
        },
        success,
        prefill_tokens_per_s: success.then_some(900.0),
        decode_tokens_per_s: success.then_some(42.5),
        ttft_ms: success.then_some(310.0),
        rss_peak_bytes: Some(1 << 30),
        gpu_used_peak_bytes: Some(6 << 30),
        capacity_bytes: Some(120 << 30),
        model: ModelShape::default(),
        trusted: true,
        unix_s,
        prompt_tokens: None,
        proven_at_depth: None,
        timing: Vec::new(),
    }
}

fn setup(s: &Store) -> (String, String, i64) {
    let h = s.upsert_host(&host()).unwrap();
    let m = s
        .upsert_model("llama3.1:8b", "sha256:abc", &shape())
        .unwrap();
    let r = s.begin_run(&h, &m, "ollama", "/tmp/run1", "{}").unwrap();
    (h, m, r)
}

fn count(s: &Store, sql: &str) -> i64 {
    s.conn().query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn default_path_follows_xdg() {
    assert_eq!(
        default_path_from(Some("/x/data".into()), Some("/home/u".into())),
        PathBuf::from("/x/data/o3/o3.db")
    );
    assert_eq!(
        default_path_from(Some("relative".into()), Some("/home/u".into())),
        PathBuf::from("/home/u/.local/share/o3/o3.db")
    );
    assert_eq!(
        default_path_from(None, Some("/home/u".into())),
        PathBuf::from("/home/u/.local/share/o3/o3.db")
    );
    assert_eq!(default_path_from(None, None), PathBuf::from("o3.db"));
}

#[test]
fn open_creates_folders_wal_and_latest_schema() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("a/b/o3.db");
    let s = Store::open(&p).unwrap();
    assert!(p.exists());
    assert_eq!(s.schema_version().unwrap(), schema::LATEST);
    let mode: String = s
        .conn()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let fk: i64 = count(&s, "PRAGMA foreign_keys");
    assert_eq!(fk, 1);
    drop(s);
    // Reopening a current file changes nothing.
    let s = Store::open(&p).unwrap();
    assert_eq!(s.integrity_check().unwrap(), "ok");
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario end to end, each step asserted in order
fn run_roundtrip_records_learned_history_profiles() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(&d.path().join("o3.db")).unwrap();
    let (h, m, run) = setup(&s);
    assert_eq!(h, host().id());
    s.add_probe(run, "context", &rec(8192, true, 100), None)
        .unwrap();
    s.add_probe(run, "context", &rec(65536, false, 200), Some("{\"x\":1}"))
        .unwrap();
    s.add_probe(run, "context", &rec(32768, true, 300), None)
        .unwrap();
    s.add_skip(
        run,
        &ProbeConfig {
            ctx: 131072,
            ..ProbeConfig::default()
        },
        0.02,
        "predicted OOM",
    )
    .unwrap();
    let preset = serde_json::json!({
        "name": "max_context",
        "config": {"ctx": 32768, "batch": null, "ubatch": null, "parallel": 1, "gpu_layers": null,
                   "flash_attn": null, "cache_type_k": null, "cache_type_v": null, "threads": null},
        "concurrency": 1,
        "output_tokens_per_s": 42.5
    });
    let none = serde_json::json!({"name": "fast_response", "config": null, "why": "no stable configuration"});
    s.finish_run(
        run,
        "finished",
        Some(32768),
        Some(true),
        &[
            ("max_context".into(), preset),
            ("fast_response".into(), none),
        ],
    )
    .unwrap();

    let r = s.records(Some(&h), Some(&m)).unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!(
        r.iter().map(|r| r.config.ctx).collect::<Vec<_>>(),
        vec![32768, 65536, 8192],
        "newest first"
    );
    assert_eq!(r[1].outcome, OutcomeClass::Oom);
    assert!(!r[1].success && r[0].trusted);
    assert_eq!((r[0].host_id.as_str(), r[0].model_id.as_str()), (&*h, &*m));
    assert_eq!(r[0].model, shape(), "the model's stored shape");
    assert_eq!(r[0].gpu_used_peak_bytes, Some(6 << 30));
    assert!(s.records(Some("other"), None).unwrap().is_empty());
    assert_eq!(s.records(None, None).unwrap().len(), 3);

    let l = s.learned(&h, &m).unwrap().unwrap();
    assert_eq!(l.run_id, run);
    assert_eq!(l.max_context, Some(32768));
    assert_eq!(
        l.presets.len(),
        1,
        "a preset without a configuration is left out"
    );
    assert_eq!(l.presets[0].0, "max_context");
    assert_eq!(l.presets[0].1.ctx, 32768);
    assert_eq!(l.host, host());

    let hist = s.history().unwrap();
    assert_eq!(hist.len(), 1);
    let row = &hist[0];
    assert_eq!((row.probes, row.trusted_probes, row.skips), (3, 3, 1));
    assert_eq!(row.status, "finished");
    assert!(!row.imported);
    assert_eq!(row.model, "llama3.1:8b");
    assert!(row.host.contains("AMD Strix Halo"));

    let p = s.profiles().unwrap();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].models.len(), 1);
    let pm = &p[0].models[0];
    assert_eq!(pm.max_context, Some(32768));
    assert_eq!(pm.presets[0].name, "max_context");
    assert_eq!(pm.presets[0].metrics["output_tokens_per_s"], 42.5);
    assert!(pm.presets[0].metrics.get("config").is_none());
    assert_eq!(pm.presets[1].config, None);
}

#[test]
fn learned_is_the_newest_finished_measured_run_with_the_host_as_it_was() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(&d.path().join("o3.db")).unwrap();
    let (h, m, first) = setup(&s);
    assert!(s.learned(&h, &m).unwrap().is_none(), "still running");
    s.finish_run(first, "finished", Some(16384), None, &[])
        .unwrap();
    // The kernel is updated: same host id, new fingerprint.
    let mut newer = host();
    newer.kernel = "6.18.2".into();
    assert_eq!(s.upsert_host(&newer).unwrap(), h);
    let second = s.begin_run(&h, &m, "ollama", "/tmp/run2", "{}").unwrap();
    s.finish_run(second, "interrupted", Some(65536), None, &[])
        .unwrap();
    let l = s.learned(&h, &m).unwrap().unwrap();
    assert_eq!(l.run_id, first, "an interrupted run is not learned from");
    assert_eq!(
        l.host.kernel, "6.18.1",
        "the fingerprint stored with the run"
    );
    assert_eq!(newer.changes_from(&l.host), vec!["kernel 6.18.1 -> 6.18.2"]);
    let third = s.begin_run(&h, &m, "ollama", "/tmp/run3", "{}").unwrap();
    s.finish_run(third, "finished", Some(24576), None, &[])
        .unwrap();
    let l = s.learned(&h, &m).unwrap().unwrap();
    assert_eq!((l.run_id, l.max_context), (third, Some(24576)));
    assert_eq!(l.host.kernel, "6.18.2");
    // first seen stays, the label follows the fingerprint.
    let p = s.profiles().unwrap();
    assert!(p[0].summary.contains("6.18.2"));
    assert_eq!(p[0].models[0].run_id, third);
}

#[test]
fn models_are_identified_by_digest_and_keep_their_shape() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(&d.path().join("o3.db")).unwrap();
    let a = s
        .upsert_model("llama3.1:8b", "sha256:abc", &shape())
        .unwrap();
    let b = s
        .upsert_model("llama3.1:latest", "sha256:abc", &ModelShape::default())
        .unwrap();
    assert_eq!(a, b, "the same weights under another tag");
    let shape_json: String = s
        .conn()
        .query_row("SELECT shape_json FROM models WHERE id = ?1", [&a], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(
        shape_json.contains("8030261248"),
        "an unknown shape does not erase a known one"
    );
    let c = s.upsert_model("llama3.1:8b", "", &shape()).unwrap();
    assert_ne!(a, c);
    assert_eq!(c, model_id("llama3.1:8b", ""));
    // Listed once each, by name.
    let models = s.models().unwrap();
    assert_eq!(models.len(), 2, "{models:?}");
    assert!(models.contains(&(c, "llama3.1:8b".into())), "{models:?}");
    assert!(models.iter().any(|(id, _)| id == &a), "{models:?}");
    assert!(models.windows(2).all(|w| w[0].1 <= w[1].1), "{models:?}");
}

#[test]
fn misuse_gives_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(&d.path().join("o3.db")).unwrap();
    let (h, m, run) = setup(&s);
    let e = s
        .add_probe(run + 100, "x", &rec(1, true, 1), None)
        .unwrap_err();
    assert!(matches!(e, StoreError::NoRun { .. }), "{e}");
    assert!(e.to_string().contains(&format!("no run {}", run + 100)));
    let e = s.finish_run(run, "done", None, None, &[]).unwrap_err();
    assert!(
        e.to_string()
            .contains("neither `finished` nor `interrupted`"),
        "{e}"
    );
    let e = s
        .finish_run(run + 100, "finished", None, None, &[])
        .unwrap_err();
    assert!(matches!(e, StoreError::NoRun { .. }), "{e}");
    let e = s.begin_run("nohost", &m, "ollama", "/x", "{}").unwrap_err();
    assert!(e.to_string().contains("unknown host nohost"), "{e}");
    let e = s
        .begin_run(&h, "nomodel", "ollama", "/x", "{}")
        .unwrap_err();
    assert!(e.to_string().contains("unknown model nomodel"), "{e}");
}

/// Builds a version-1 file by hand, as an o3 of that version left it.
fn v1_file(path: &Path) {
    let c = Connection::open(path).unwrap();
    c.execute_batch("PRAGMA journal_mode = WAL;").unwrap();
    schema::apply(&c, 0, 1).unwrap();
    let hj = serde_json::to_string(&host()).unwrap();
    c.execute(
        "INSERT INTO hosts VALUES (?1, 'old host', ?2, 10, 10)",
        params![host().id(), hj],
    )
    .unwrap();
    c.execute(
        "INSERT INTO models VALUES ('m1', 'qwen2.5:7b', 'sha256:q', '{}')",
        [],
    )
    .unwrap();
    c.execute(
        "INSERT INTO runs (id, host_id, model_id, backend, started_unix_s, finished_unix_s,
            run_dir, status, config_json, host_json, max_context, source)
         VALUES (1, ?1, 'm1', 'ollama', 10, 20, '/r', 'finished', '{}', ?2, 8192, 'measured')",
        params![host().id(), hj],
    )
    .unwrap();
    c.execute(
        "INSERT INTO probes (run_id, stage, config_json, concurrency, outcome, success, trusted,
            unix_s, decode_tokens_per_s)
         VALUES (1, 'context', '{\"ctx\":8192}', 1, 'ok', 1, 1, 15, 30.0)",
        [],
    )
    .unwrap();
}

#[test]
fn a_version_1_file_is_migrated_and_keeps_its_data() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("o3.db");
    v1_file(&p);
    let s = Store::open(&p).unwrap();
    assert_eq!(s.schema_version().unwrap(), schema::LATEST);
    let r = s.records(None, None).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].config.ctx, 8192);
    assert_eq!(r[0].decode_tokens_per_s, Some(30.0));
    // Probes stored before version 3 say nothing of their depth.
    assert_eq!((r[0].prompt_tokens, r[0].proven_at_depth), (None, None));
    let l = s.learned(&host().id(), "m1").unwrap().unwrap();
    assert_eq!(l.max_context, Some(8192));
    // The table version 2 added works.
    s.add_skip(1, &ProbeConfig::default(), 0.1, "predicted OOM")
        .unwrap();
    assert_eq!(count(&s, "SELECT COUNT(*) FROM skips"), 1);
    assert_eq!(s.integrity_check().unwrap(), "ok");
    // Version 4 rebuilt the runs table: the probe that refers to the run survived it, and the
    // foreign keys are whole.
    assert_eq!(count(&s, "SELECT COUNT(*) FROM probes WHERE run_id = 1"), 1);
    assert_eq!(
        count(&s, "SELECT COUNT(*) FROM pragma_foreign_key_check"),
        0
    );
}

#[test]
fn a_failed_run_says_why_and_is_not_learned_from() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("o3.db");
    v1_file(&p);
    let s = Store::open(&p).unwrap();
    s.fail_run(1, "no configuration passed: 7 probes, 7 load_failed")
        .unwrap();
    let h = s.history().unwrap();
    assert_eq!(h[0].status, "failed");
    assert_eq!(
        h[0].failure.as_deref(),
        Some("no configuration passed: 7 probes, 7 load_failed")
    );
    assert!(s.learned(&host().id(), "m1").unwrap().is_none());
    assert!(s.fail_run(99, "x").is_err());
    // Deleting a run still deletes its probes: foreign keys are on after the migration.
    s.conn.execute("DELETE FROM runs WHERE id = 1", []).unwrap();
    assert_eq!(count(&s, "SELECT COUNT(*) FROM probes"), 0);
}

#[test]
fn depth_and_timing_are_stored_and_seed_the_next_run() {
    use crate::timing::Obs;
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(&d.path().join("o3.db")).unwrap();
    let h = s.upsert_host(&host()).unwrap();
    let m = s.upsert_model("m", "d", &ModelShape::default()).unwrap();
    let run = s.begin_run(&h, &m, "llama-server", "/r", "{}").unwrap();
    let mut deep = rec(32768, true, 10);
    deep.prompt_tokens = Some(29_427);
    deep.proven_at_depth = Some(true);
    deep.timing = vec![
        Obs::Load { s: 12.0 },
        Obs::Prefill {
            from: 0,
            to: 29_427,
            s: 40.0,
            batch: Some(256),
        },
    ];
    s.add_probe(run, "validate", &deep, None).unwrap();
    let mut capped = rec(65536, true, 20);
    capped.prompt_tokens = Some(32_768);
    capped.proven_at_depth = Some(false);
    s.add_probe(run, "validate", &capped, None).unwrap();
    s.finish_run(run, "finished", Some(65536), Some(false), &[])
        .unwrap();
    let r = s.records(Some(&h), Some(&m)).unwrap();
    assert_eq!(r[0].proven_at_depth, Some(false));
    assert_eq!(r[1].prompt_tokens, Some(29_427));
    assert_eq!(s.timing(&h, &m, 10).unwrap(), deep.timing);
    let row = s
        .history()
        .unwrap()
        .into_iter()
        .find(|x| x.run_id == run)
        .unwrap();
    assert_eq!(row.max_context_proven, Some(false));
}

/// A prediction is stored beside its probe and read back with the probe's measurement in the
/// prediction's place, newest first, by host, model or run; deleting the run removes it.
#[test]
fn predictions_are_kept_beside_their_probes() {
    use crate::learn::memory::Place;
    use crate::learn::store::PredictionRow;
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(&d.path().join("o3.db")).unwrap();
    let (h, m, run) = setup(&s);
    let other = s.begin_run(&h, &m, "ollama", "/tmp/run2", "{}").unwrap();
    let row = |place, peak: u64| PredictionRow {
        place,
        peak_bytes: peak,
        peak_low_bytes: peak - 10,
        peak_high_bytes: peak + 10,
        fitted_points: 3,
        p_success: 0.75,
        prefill_tokens_per_s: Some(500.0),
        decode_tokens_per_s: None,
        basis: "cold start: memory model only".into(),
    };
    let a = s
        .add_probe(run, "context", &rec(4096, true, 10), None)
        .unwrap();
    let b = s
        .add_probe(run, "context", &rec(8192, false, 20), None)
        .unwrap();
    let c = s
        .add_probe(other, "batch", &rec(2048, true, 30), None)
        .unwrap();
    assert!(a < b && b < c);
    s.add_prediction(a, &row(Place::Gpu, 7 << 30)).unwrap();
    s.add_prediction(b, &row(Place::Ram, 2 << 30)).unwrap();
    s.add_prediction(c, &row(Place::Gpu, 5 << 30)).unwrap();
    // A second prediction of the same probe replaces the first.
    s.add_prediction(c, &row(Place::Gpu, 6 << 30)).unwrap();
    let all = s.checked_predictions(Some(&h), Some(&m), None, 10).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].stage, "batch");
    assert_eq!(all[0].predicted.peak_bytes, 6 << 30);
    // The measurement of the prediction's place: GPU 6 GiB, RSS 1 GiB (rec's peaks).
    assert_eq!(all[0].measured_peak_bytes, Some(6 << 30));
    assert_eq!(all[1].measured_peak_bytes, Some(1 << 30));
    assert!(!all[1].success);
    assert_eq!(all[2].predicted, row(Place::Gpu, 7 << 30));
    assert_eq!(all[2].config.ctx, 4096);
    assert_eq!(
        all[2].prefill_tokens_per_s,
        rec(4096, true, 10).prefill_tokens_per_s
    );
    let first = s.checked_predictions(None, None, Some(run), 10).unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(s.checked_predictions(None, None, None, 1).unwrap().len(), 1);
    assert!(s
        .checked_predictions(Some("nobody"), None, None, 10)
        .unwrap()
        .is_empty());
    s.conn()
        .execute("DELETE FROM runs WHERE id = ?1", [other])
        .unwrap();
    assert_eq!(count(&s, "SELECT COUNT(*) FROM predictions"), 2);
}

#[test]
fn a_file_of_a_newer_o3_is_refused_naming_both_versions() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("o3.db");
    {
        let c = Connection::open(&p).unwrap();
        schema::apply(&c, 0, schema::LATEST).unwrap();
        c.pragma_update(None, "user_version", 7).unwrap();
    }
    let e = Store::open(&p).err().unwrap();
    assert!(matches!(e, StoreError::TooNew { found: 7, .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("schema version 7") && msg.contains(&format!("version {})", schema::LATEST)),
        "{msg}"
    );
    assert!(
        msg.contains(&p.display().to_string()) && msg.contains("upgrade o3"),
        "{msg}"
    );
    // Untouched.
    let c = Connection::open(&p).unwrap();
    let v: u32 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 7);
}

#[test]
fn a_file_that_is_not_a_database_is_one_clear_line() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("notes.txt");
    std::fs::write(&p, "these are my notes, not a database\n".repeat(200)).unwrap();
    let e = Store::open(&p).err().unwrap();
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("{} is not an o3 database", p.display())),
        "{msg}"
    );
    assert!(msg.contains("move it away") && !msg.contains('\n'), "{msg}");
}

#[test]
fn a_directory_cannot_be_opened() {
    let d = tempfile::tempdir().unwrap();
    let e = Store::open(d.path()).err().unwrap();
    assert!(matches!(e, StoreError::CantOpen { .. }), "{e:?}");
    assert!(e.to_string().contains("cannot open the database"), "{e}");
}

#[test]
fn a_read_only_file_is_named_as_such() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("o3.db");
    {
        let s = Store::open(&p).unwrap();
        setup(&s);
        // What a read-only file gives, even as root (who may write a 0444 file).
        s.conn().execute_batch("PRAGMA query_only = ON;").unwrap();
        let e = s.upsert_host(&host()).unwrap_err();
        assert!(matches!(e, StoreError::ReadOnly { .. }), "{e:?}");
        assert!(e.to_string().contains("is read-only"), "{e}");
        s.conn().execute_batch("PRAGMA query_only = OFF;").unwrap();
        // Leave no WAL behind for the file-permission case below.
        s.conn()
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode = DELETE;")
            .unwrap();
    }
    if nix::unistd::geteuid().is_root() {
        eprintln!("file-permission case skipped: root writes read-only files");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).unwrap();
    let result = Store::open(&p).and_then(|s| s.upsert_host(&host()));
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = result.unwrap_err();
    assert!(matches!(e, StoreError::ReadOnly { .. }), "{e:?}");
}

#[test]
fn a_writer_held_up_too_long_is_told_to_retry() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("o3.db");
    let a = Store::open(&p).unwrap();
    let (_, _, run) = setup(&a);
    let b = Store::open(&p).unwrap();
    b.conn().busy_timeout(Duration::from_millis(50)).unwrap();
    a.conn().execute_batch("BEGIN IMMEDIATE;").unwrap();
    let e = b
        .add_probe(run, "context", &rec(1, true, 1), None)
        .unwrap_err();
    a.conn().execute_batch("ROLLBACK;").unwrap();
    assert!(matches!(e, StoreError::Busy { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "the database {} is locked by another writer for more than 5 s; retry when the other o3 finishes",
            p.display()
        )
    );
    b.add_probe(run, "context", &rec(1, true, 1), None).unwrap();
}

#[test]
fn two_writers_on_one_file_both_succeed() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("o3.db");
    // Both open a new file at the same moment: it is created and migrated once.
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let p = p.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let s = Store::open(&p).unwrap();
                let h = s.upsert_host(&host()).unwrap();
                let m = s.upsert_model("m", "sha256:m", &shape()).unwrap();
                let run = s
                    .begin_run(&h, &m, "ollama", &format!("/run{t}"), "{}")
                    .unwrap();
                for i in 0..200 {
                    s.add_probe(run, "batch", &rec(1024 + i, i % 5 != 0, u64::from(i)), None)
                        .unwrap();
                }
                s.finish_run(run, "finished", Some(4096), None, &[])
                    .unwrap();
                run
            })
        })
        .collect();
    let runs: Vec<i64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let s = Store::open(&p).unwrap();
    assert_eq!(count(&s, "SELECT COUNT(*) FROM probes"), 400);
    for run in runs {
        let n: i64 = s
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM probes WHERE run_id = ?1",
                [run],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 200);
    }
    assert_eq!(s.history().unwrap().len(), 2);
    assert_eq!(s.integrity_check().unwrap(), "ok");
}

const KILL_ENV: &str = "O3_STORE_KILL_HELPER_DB";

/// Not a test on its own: the child of `killed_mid_write_loses_nothing_committed`, which
/// writes probes until it is SIGKILLed (it returns at once when the variable is unset).
#[test]
fn kill_helper_writes_until_killed() {
    let Some(p) = std::env::var_os(KILL_ENV) else {
        return;
    };
    let s = Store::open(Path::new(&p)).unwrap();
    let (_, _, run) = setup(&s);
    let raw = "x".repeat(20_000);
    let mut out = std::io::stdout();
    for i in 0u32.. {
        s.add_probe(run, "reported", &rec(i, true, u64::from(i)), Some(&raw))
            .unwrap();
        use std::io::Write;
        writeln!(out, "committed {run} {}", i + 1).unwrap();
        out.flush().unwrap();
        // A bigger transaction in flight most of the time, so the kill lands inside one.
        let tx = s.conn().unchecked_transaction().unwrap();
        for j in 0..20 {
            s.insert_probe(&tx, run, "bulk", &rec(j, true, 0), true, Some(&raw))
                .unwrap();
        }
        tx.commit().unwrap();
    }
}

#[test]
fn killed_mid_write_loses_nothing_committed() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("o3.db");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "learn::store::tests::kill_helper_writes_until_killed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(KILL_ENV, &p)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut last = (0i64, 0i64);
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("committed ") {
            let mut it = rest.split(' ').map(|v| v.parse::<i64>().unwrap());
            last = (it.next().unwrap(), it.next().unwrap());
            if last.1 >= 25 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL, mid-write
    child.wait().unwrap();
    assert!(last.1 >= 25, "the child wrote {last:?}");
    let s = Store::open(&p).unwrap();
    assert_eq!(s.integrity_check().unwrap(), "ok");
    let reported: i64 = s
        .conn()
        .query_row(
            "SELECT COUNT(*) FROM probes WHERE run_id = ?1 AND stage = 'reported'",
            [last.0],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        reported >= last.1,
        "{reported} reported probes stored, {} were committed",
        last.1
    );
    let bulk = count(&s, "SELECT COUNT(*) FROM probes WHERE stage = 'bulk'");
    assert_eq!(bulk % 20, 0, "a transaction is all or nothing");
    // And the file takes new writes.
    s.add_probe(last.0, "after", &rec(1, true, 1), None)
        .unwrap();
}

#[test]
fn disk_full_is_named_and_loses_nothing() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("o3.db");
    let s = Store::open(&p).unwrap();
    let (_, _, run) = setup(&s);
    s.add_probe(run, "context", &rec(1, true, 1), None).unwrap();
    let pages: i64 = count(&s, "PRAGMA page_count");
    let _: i64 = s
        .conn()
        .query_row(&format!("PRAGMA max_page_count = {}", pages + 4), [], |r| {
            r.get(0)
        })
        .unwrap();
    let raw = "y".repeat(8192);
    let mut err = None;
    for i in 0..100 {
        if let Err(e) = s.add_probe(run, "context", &rec(i, true, 2), Some(&raw)) {
            err = Some(e);
            break;
        }
    }
    let e = err.expect("the page limit was never reached");
    assert!(matches!(e, StoreError::Full { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "disk full while writing {}: free space and resume; nothing was lost",
            p.display()
        )
    );
    assert!(count(&s, "SELECT COUNT(*) FROM probes") >= 1);
    assert_eq!(s.integrity_check().unwrap(), "ok");
}

#[test]
fn imported_runs_are_untrusted_once_and_never_learned_from() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(&d.path().join("o3.db")).unwrap();
    let h = s.upsert_host(&Host::legacy_placeholder()).unwrap();
    let m = s
        .upsert_model("qwen2.5:7b", "sha256:q", &ModelShape::default())
        .unwrap();
    let imported = ImportedRun {
        host_id: h.clone(),
        model_id: m.clone(),
        backend: "ollama (legacy O3)".into(),
        run_dir: "/logs/q.jsonl#r1".into(),
        config_json: "{}".into(),
        started_unix_s: 100,
        finished_unix_s: 200,
        max_context: None,
        probes: vec![("legacy".into(), rec(4096, true, 150), None)],
        presets: vec![(
            "balanced".into(),
            serde_json::json!({"config": {"ctx": 4096}, "trusted": false}),
        )],
    };
    let id = s.import_run(&imported).unwrap().unwrap();
    assert_eq!(s.import_run(&imported).unwrap(), None, "not imported twice");
    let r = s.records(None, None).unwrap();
    assert_eq!(r.len(), 1);
    assert!(!r[0].trusted, "stored untrusted whatever the record said");
    assert!(s.learned(&h, &m).unwrap().is_none());
    let hist = s.history().unwrap();
    assert_eq!(hist[0].run_id, id);
    assert!(hist[0].imported);
    assert_eq!((hist[0].probes, hist[0].trusted_probes), (1, 0));
    assert_eq!(hist[0].finished_unix_s, Some(200));
    let p = s.profiles().unwrap();
    assert_eq!(p[0].summary, "legacy import (unknown host)");
    assert!(p[0].models[0].imported);
    assert_eq!(p[0].models[0].presets[0].config.as_ref().unwrap().ctx, 4096);
}

#[test]
fn a_damaged_store_is_refused_before_anything_is_written() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("o3.db");
    {
        let s = Store::open(&p).unwrap();
        setup(&s);
    }
    // Every page after the first (the header and the schema stay intact) overwritten, as a
    // bad sector or a stray writer would leave them.
    let mut bytes = std::fs::read(&p).unwrap();
    let page = u16::from_be_bytes([bytes[16], bytes[17]]) as usize;
    assert!(bytes.len() > 2 * page, "the store has more than one page");
    for (i, b) in bytes[page..].iter_mut().enumerate() {
        *b = (i % 251) as u8 ^ 0x5a;
    }
    std::fs::write(&p, &bytes).unwrap();
    let e = Store::open(&p).err().expect("a damaged store is refused");
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("damaged") && !msg.contains('\n'), "{msg}");
    assert_eq!(std::fs::read(&p).unwrap(), bytes, "nothing was written");
}

const WRITER_ENV: &str = "O3_STORE_WRITER_DB";

/// Not a test on its own: the child of the test below, another process in a write
/// transaction on a new store for 300 ms, as an o3 migrating it is (it returns at once when
/// the variable is unset).
#[test]
fn writer_helper_holds_a_write_transaction() {
    let Some(p) = std::env::var_os(WRITER_ENV) else {
        return;
    };
    let c = Connection::open(Path::new(&p)).unwrap();
    c.execute_batch("CREATE TABLE IF NOT EXISTS t(x); BEGIN IMMEDIATE; INSERT INTO t VALUES (1);")
        .unwrap();
    println!("writing");
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    c.execute_batch("COMMIT").unwrap();
}

#[test]
fn a_new_store_opened_while_another_process_writes_it_waits_instead_of_failing() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("o3.db");
    // Another o3 writes the new (still rollback-journal) file: the switch to WAL needs the
    // file to itself, and SQLite answers "busy" at once instead of calling the busy handler.
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "learn::store::tests::writer_helper_holds_a_write_transaction",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WRITER_ENV, &p)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    assert!(lines.any(|l| l.unwrap().ends_with("writing")));
    let s = Store::open(&p).expect("the open waits for the other process");
    child.wait().unwrap();
    let mode: String = s
        .conn()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

/// A store an earlier version wrote: the backend as `llamaserver`, a failure as `loadfailed`,
/// flash attention as a bool (their spellings then); all read in today's spelling.
#[test]
fn old_spellings_in_a_store_read_in_todays_spelling() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("o3.db");
    v1_file(&p);
    let c = Connection::open(&p).unwrap();
    c.execute("UPDATE runs SET backend = 'llamaserver'", [])
        .unwrap();
    c.execute(
        "INSERT INTO probes (run_id, stage, config_json, concurrency, outcome, success, trusted,
            unix_s)
         VALUES (1, 'context', '{\"ctx\":16384,\"flash_attn\":true}', 1, 'loadfailed', 0, 1,
            16)",
        [],
    )
    .unwrap();
    drop(c);
    let s = Store::open(&p).unwrap();
    assert_eq!(s.history().unwrap()[0].backend, "llama-server");
    let r = s.records(None, None).unwrap();
    let failed = r.iter().find(|r| r.config.ctx == 16_384).unwrap();
    assert_eq!(failed.outcome, OutcomeClass::LoadFailed);
    assert_eq!(
        failed.config.flash_attn,
        Some(crate::backend::FlashAttn::On)
    );
}
