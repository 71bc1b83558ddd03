//! `o3 config`: every file in tests/fixtures/config/valid/ checks ok, every file in invalid/
//! fails with exit status 2 and the one-line message its `.expected` file holds (adding a
//! fixture adds a case), and the default configuration checks ok.

// A test may unwrap: a panic there is the failure, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{fixtures, o3};

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    v.sort();
    v
}

fn check(args: &[&str], file: &Path) -> Output {
    o3().args(["config", "check"])
        .args(args)
        .arg(file)
        .output()
        .expect("running o3")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn every_valid_fixture_checks_ok() {
    let files = yaml_files(&fixtures().join("config/valid"));
    assert!(files.len() >= 5, "{files:?}");
    for f in files {
        let out = check(&[], &f);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "{}: {stderr}", f.display());
        let first = stdout.lines().next().unwrap_or_default();
        let layout = if f
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("legacy")
        {
            "legacy"
        } else {
            "current"
        };
        assert_eq!(first, format!("{}: ok ({layout} layout)", f.display()));
        for line in stdout.lines().skip(1) {
            assert!(line.starts_with("notice: "), "{line}");
        }
        assert!(stderr.is_empty(), "{stderr}");
    }
}

#[test]
fn every_invalid_fixture_fails_with_its_expected_message() {
    let dir = fixtures().join("config/invalid");
    let files = yaml_files(&dir);
    assert!(files.len() >= 10, "{files:?}");
    for f in files {
        let exp = f.with_extension("expected");
        let expected = std::fs::read_to_string(&exp).unwrap_or_else(|e| {
            panic!(
                "{}: every invalid fixture needs a .expected file ({e})",
                exp.display()
            )
        });
        let expected = expected.trim_end_matches('\n');
        assert!(
            !expected.is_empty() && !expected.contains('\n'),
            "{}: one non-empty line expected",
            exp.display()
        );
        let out = check(&[], &f);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", f.display());
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{}: not one line: {stderr:?}",
            f.display()
        );
        assert!(
            stderr.contains(expected),
            "{}:\n  got:      {stderr}  expected: {expected}",
            f.display()
        );
        assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    }
}

#[test]
fn every_expected_file_has_its_fixture() {
    let dir = fixtures().join("config/invalid");
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        match p.extension().and_then(|x| x.to_str()) {
            Some("expected") => assert!(
                p.with_extension("yaml").exists(),
                "{} has no .yaml",
                p.display()
            ),
            Some("yaml") => {}
            _ => panic!("{}: only .yaml and .expected files here", p.display()),
        }
    }
}

#[test]
fn default_output_parses_back_and_checks_ok() {
    let out = o3().args(["config", "default"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let yaml = text(&out.stdout);
    let repo_default =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/o3.yaml"))
            .unwrap();
    assert_eq!(yaml, repo_default);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("o3.yaml");
    std::fs::write(&f, &yaml).unwrap();
    let out = check(&[], &f);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("{}: ok (current layout)\n", f.display())
    );
    // The effective configuration of the default file is the built-in default.
    let out = check(&["--json"], &f);
    let v = common::last_json(&out);
    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, "").unwrap();
    let w = common::last_json(&check(&["--json"], &empty));
    assert_eq!(v["config"], w["config"]);
}

#[test]
fn json_prints_the_effective_config() {
    let f = fixtures().join("config/valid/legacy_high_context.yaml");
    let out = check(&["--json"], &f);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let v = common::last_json(&out);
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["layout"], "legacy");
    assert_eq!(v["file"], f.display().to_string());
    let c = &v["config"];
    assert_eq!(c["search"]["initial_context"], 262144);
    assert_eq!(c["search"]["max_context"], 262144);
    assert_eq!(c["monitoring"]["interval_ms"], 50);
    assert_eq!(c["learning"]["predict"], false);
    assert_eq!(c["batch"]["ubatch"], serde_json::Value::Null);
    assert_eq!(c["concurrency"]["levels"], serde_json::json!([1, 2, 4, 8]));
    let notices = v["notices"].as_array().unwrap();
    assert_eq!(notices.len(), 2);
    assert!(notices[1].as_str().unwrap().contains("raised to 262144"));
}

#[test]
fn legacy_notices_are_printed_one_per_line() {
    let f = fixtures().join("config/valid/legacy_o3_ai_config.yaml");
    let out = check(&[], &f);
    let stdout = text(&out.stdout);
    let notices: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("notice: "))
        .collect();
    assert_eq!(notices.len(), 19, "{stdout}");
    assert_eq!(notices.iter().filter(|n| n.contains("SMI")).count(), 1);
    assert_eq!(
        notices
            .iter()
            .filter(|n| n.contains("memory_field_index"))
            .count(),
        1
    );
}

#[test]
fn the_legacy_tools_own_file_checks_ok_with_its_unused_keys_named() {
    let f = fixtures().join("config/valid/legacy-full.yaml");
    let out = check(&[], &f);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    let name = f.display().to_string();
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some(format!("{name}: ok (legacy layout)").as_str())
    );
    let notices: Vec<&str> = lines.collect();
    assert_eq!(notices.len(), 21, "{stdout}");
    for (line, key) in [
        (6, "objectives: ignored (max_context_priority, throughput_priority, ttft_priority, stability_margin); "),
        (20, "search_strategy.binary_search_factor: ignored; "),
        (76, "hardware_monitoring.gpu_handling: ignored (nvidia, amd); "),
        (112, "learning_system.auto_improvement: ignored (adaptive_search_params, range_expansion, test_prioritization); "),
        (129, "fine_tuning: ignored (throughput_targets, ttft_targets); o3 does not train models"),
        (156, "deployment: ignored (auto_deployment, persistence); "),
    ] {
        let want = format!("notice: {name}:{line}: {key}");
        assert_eq!(
            notices.iter().filter(|n| n.starts_with(&want)).count(),
            1,
            "{want}\n{stdout}"
        );
    }
    // No key is named twice.
    let mut keys: Vec<&str> = notices
        .iter()
        .map(|n| n.split(": ").nth(1).unwrap())
        .collect();
    keys.sort_unstable();
    let n = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), n, "{stdout}");

    // The mapped values are in the effective configuration.
    let out = check(&["--json"], &f);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v = common::last_json(&out);
    assert_eq!(v["layout"], "legacy");
    assert_eq!(v["notices"].as_array().unwrap().len(), 21);
    let c = &v["config"];
    assert_eq!(c["search"]["initial_context"], 262144);
    assert_eq!(c["search"]["max_context"], 262144);
    assert_eq!(c["search"]["max_iterations"], 7);
    assert_eq!(c["monitoring"]["interval_ms"], 100);
    assert_eq!(c["batch"]["max_batch"], 256);
    assert_eq!(c["learning"]["max_age_days"], 7.0);
    assert_eq!(c["learning"]["store_results"], true);
}

#[test]
fn the_current_layout_still_refuses_an_unknown_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("o3.yaml");
    std::fs::write(
        &f,
        "search:\n  initial_context: 16384\n  binary_search_factor: 1.3\n",
    )
    .unwrap();
    let out = check(&[], &f);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:3: search.binary_search_factor: unknown key; known keys here: initial_context,",
            f.display()
        )),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
}

#[test]
fn a_missing_file_is_one_line_with_exit_2() {
    let out = check(&[], Path::new("/nonexistent/o3.yaml"));
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("/nonexistent/o3.yaml: cannot read the configuration")
            && stderr.contains("o3 config default > /nonexistent/o3.yaml"),
        "{stderr}"
    );
}

#[test]
fn check_without_a_file_is_a_usage_error() {
    let out = o3().args(["config", "check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
