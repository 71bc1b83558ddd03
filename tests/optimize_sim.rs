//! `o3 optimize --backend ollama` against the Ollama simulator (tests/sim/ollama_sim.py, real
//! HTTP, the Ollama API subset o3 uses). Its memory model is the truth: sim-llama:8b on a 12 GiB
//! device loads at batch b while 4920000000 + 131072·ctx + 67108864 + 524288·b ≤ 12884901888.
//! A run killed with SIGKILL resumes without repeating a probe and ends where an uninterrupted
//! run ends.

// A test may unwrap: a panic there is the failure, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The simulator's time scale (its simulated seconds pass a thousand times faster) makes a
/// whole run a few wall-clock seconds: no budget, every stage runs.
const CONFIG: &str = "\
search:\n  granularity: 1024\n  min_context: 2048\n  max_context: 131072\n\
validation:\n  samples: 3\n  max_cv: 1.0\n\
prompt:\n  output_tokens: 8\n\
plan:\n  floor_multiple: 0\n";

/// The truth at the initial batch of an 8B model (32): the largest context that loads, to the
/// granule.
fn truth() -> u64 {
    let free: u64 = 12_884_901_888 - 4_920_000_000 - 67_108_864 - 524_288 * 32;
    free / 131_072 / 1024 * 1024
}

fn optimize(url: &str, run: &Path, cfg: &Path) -> Command {
    let mut c = o3();
    c.args(["optimize", "--backend", "ollama", "--quiet", "--json"])
        .args(["--model", "sim-llama:8b", "--url", url, "--config"])
        .arg(cfg)
        .arg("--out")
        .arg(run);
    c
}

#[test]
fn finds_the_simulators_true_maximum_and_resumes_after_kill_9_repeating_nothing() {
    let s = sim(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("o3.yaml");
    std::fs::write(&cfg, CONFIG).unwrap();

    // Uninterrupted.
    let whole = dir.path().join("whole");
    let out = optimize(&s.url, &whole, &cfg).output().unwrap();
    let w = last_json(&out);
    assert_eq!(out.status.code(), Some(0), "{w}");
    assert_eq!(
        w["context"]["validated"].as_u64(),
        Some(truth()),
        "{}",
        w["context"]
    );
    assert!(
        w["context"]["probes"].as_array().unwrap().len() as u64
            <= w["context"]["probe_bound"].as_u64().unwrap()
    );
    // An Ollama server o3 did not start keeps its slots: no concurrency level is claimed.
    assert!(w["notes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n.as_str().unwrap().contains("slot count is fixed")));
    let modelfile = std::fs::read_to_string(whole.join("artefacts/max_context.Modelfile")).unwrap();
    assert!(modelfile.starts_with("FROM sim-llama:8b"), "{modelfile}");
    assert!(
        modelfile.contains(&format!("PARAMETER num_ctx {}", truth())),
        "{modelfile}"
    );

    // Killed with SIGKILL after three journaled probes, then resumed.
    let run = dir.path().join("killed");
    let mut child = optimize(&s.url, &run, &cfg)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let journal = run.join("journal.jsonl");
    let t0 = Instant::now();
    let lines = |p: &Path| {
        std::fs::read_to_string(p)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    while lines(&journal) < 3 {
        assert!(t0.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done = lines(&journal) as u64;
    assert!(
        !run.join("summary.json").exists(),
        "killed before it could finish"
    );

    let out = o3()
        .args(["optimize", "--quiet", "--json", "--resume"])
        .arg(&run)
        .output()
        .unwrap();
    let r = last_json(&out);
    assert_eq!(out.status.code(), Some(0), "{r}");
    assert_eq!(r["probes"]["from_journal"].as_u64(), Some(done));
    assert_eq!(
        r["probes"]["ran_now"].as_u64().unwrap() + done,
        r["probes"]["total"].as_u64().unwrap()
    );
    // Every probe is in the journal exactly once.
    let keys: Vec<String> = std::fs::read_to_string(&journal)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["key"].to_string())
        .collect();
    let mut unique = keys.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), keys.len(), "a probe ran twice");
    assert_eq!(keys.len() as u64, r["probes"]["total"].as_u64().unwrap());
    // Same search path and answer as the uninterrupted run. (Later stages compare measured
    // rates, which real HTTP timing makes noisy, so their path may differ between two runs;
    // the in-process simulator's resume test pins the whole path.)
    assert_eq!(r["context"]["probes"], w["context"]["probes"]);
    assert_eq!(
        r["context"]["validated"], w["context"]["validated"],
        "{}",
        r["notes"]
    );
}

#[test]
fn resume_of_a_directory_without_a_run_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = o3()
        .args(["optimize", "--resume"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("run.json") && err.contains("is it a run directory")
            || err.contains("a run directory of `o3 optimize`"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn a_run_directory_in_use_is_not_overwritten() {
    let s = sim(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("r");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("journal.jsonl"), "").unwrap();
    let cfg = dir.path().join("o3.yaml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let out = optimize(&s.url, &run, &cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already holds a run") && err.contains("--resume"),
        "{err}"
    );
}

#[test]
fn a_managed_ollama_is_restarted_with_more_slots_until_memory_runs_out() {
    // o3 starts the simulator itself (it reads OLLAMA_HOST, OLLAMA_NUM_PARALLEL, ... as Ollama
    // does) for every configuration. Truth at ctx 12288 and batch 256 on 12 GiB:
    // 4920000000 + 131072·12288·p + 67108864 + 524288·256 fits for p ≤ 4, not for p = 8.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("o3.yaml");
    std::fs::write(
        &cfg,
        format!("{CONFIG}concurrency:\n  levels: [1, 2, 4, 8]\n  stabilization_delay_s: 0\n"),
    )
    .unwrap();
    let sim_cfg = fixtures().join("../sim/example.json");
    let serve = format!(
        "python3 {} --quiet --config {}",
        fixtures().join("../sim/ollama_sim.py").display(),
        sim_cfg.display()
    );
    let run = dir.path().join("run");
    let out = o3()
        .args(["optimize", "--backend", "ollama", "--quiet", "--json"])
        .args([
            "--model",
            "sim-llama:8b",
            "--ollama-serve",
            &serve,
            "--config",
        ])
        .arg(&cfg)
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    let s = last_json(&out);
    assert_eq!(out.status.code(), Some(0), "{s}");
    // The trained context came from the managed server's /api/show.
    assert_eq!(s["trained_context"], 131072);
    assert_eq!(s["context"]["validated"].as_u64(), Some(truth()));
    let fits = |ctx: u64, p: u64, b: u64| {
        4_920_000_000 + 131_072 * ctx * p + 67_108_864 + 524_288 * b <= 12_884_901_888
    };
    let levels: Vec<(u64, String)> = s["configurations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["stage"] == "concurrency" && m["config"]["ctx"] == 12288)
        .map(|m| {
            let p = m["config"]["parallel"].as_u64().unwrap();
            let b = m["config"]["batch"].as_u64().unwrap();
            let outcome = m["outcome"].as_str().unwrap().to_string();
            assert_eq!(outcome == "ok", fits(12288, p, b), "{m}");
            (p, outcome)
        })
        .collect();
    assert_eq!(
        levels.last().map(|l| l.1.as_str()),
        Some("oom"),
        "{levels:?}"
    );
    assert!(levels.len() >= 2, "{levels:?}");
    // The preset artefacts carry the server environment the slots need.
    for p in s["presets"].as_array().unwrap() {
        let slots = p["config"]["parallel"].as_u64().unwrap_or(1);
        if slots > 1 {
            let env = p["artefacts"]["server_env"].as_array().unwrap();
            assert!(
                env.iter()
                    .any(|e| e == &format!("OLLAMA_NUM_PARALLEL={slots}")),
                "{p}"
            );
        }
    }
}

/// `o3 optimize --simulate`: the in-process simulator (truth from its memory model) through
/// the whole CLI, with a results database.
fn simulated(dir: &Path, sim: &str, run: &str, db: &Path) -> Value {
    let f = dir.join(format!("{run}.json"));
    std::fs::write(&f, sim).unwrap();
    let out = o3()
        .args(["optimize", "--quiet", "--json", "--simulate"])
        .arg(&f)
        .arg("--out")
        .arg(dir.join(run))
        .arg("--db")
        .arg(db)
        .output()
        .unwrap();
    let s = last_json(&out);
    assert_eq!(out.status.code(), Some(0), "{s}");
    s
}

#[test]
fn learning_reuses_a_verified_run_and_predicts_for_a_new_machine() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("o3.db");
    // Truth at batch 32: (capacity − 4920000000 − 67108864 − 524288·32) / 131072, to 1024.
    let truth =
        |cap: u64| (cap - 4_920_000_000 - 67_108_864 - 524_288 * 32) / 131_072 / 1024 * 1024;
    let g12 = 12u64 << 30;
    let first = simulated(dir.path(), "{}", "a", &db);
    assert_eq!(first["context"]["validated"].as_u64(), Some(truth(g12)));
    // Same machine, same model: one verification probe per learned configuration, no search.
    let second = simulated(dir.path(), "{}", "b", &db);
    assert_eq!(second["context"]["validated"].as_u64(), Some(truth(g12)));
    assert_eq!(second["context"]["probes"].as_array().unwrap().len(), 0);
    assert!(
        second["probes"]["total"].as_u64().unwrap() <= 4,
        "{}",
        second["probes"]
    );
    assert!(!second["reused"].as_array().unwrap().is_empty());
    // Another machine (16 GiB): nothing to reuse, but the predictor trained on the first
    // machine's probes starts the search next to the answer; it never skips the optimum.
    let g16 = 16u64 << 30;
    let third = simulated(
        dir.path(),
        &format!("{{\"capacity_bytes\": {g16}}}"),
        "c",
        &db,
    );
    assert_eq!(third["context"]["validated"].as_u64(), Some(truth(g16)));
    assert!(
        third["context"]["probes"].as_array().unwrap().len() <= 3,
        "{}",
        third["context"]
    );
    for s in third["skipped"].as_array().unwrap() {
        let c = &s["config"];
        let need = 4_920_000_000
            + 131_072 * c["ctx"].as_u64().unwrap() * c["parallel"].as_u64().unwrap_or(1)
            + 67_108_864
            + 524_288 * c["batch"].as_u64().unwrap_or(512);
        assert!(need > g16, "skipped a configuration that fits: {s}");
    }
    // The history lists all three.
    let out = o3()
        .args(["history", "--json", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success());
    let h = String::from_utf8_lossy(&out.stdout);
    assert_eq!(h.matches("\"finished\"").count(), 3, "{h}");
}

#[test]
fn the_plan_the_budget_and_a_prompt_cap_are_said_where_the_user_reads() {
    let dir = tempfile::tempdir().unwrap();
    let sim = dir.path().join("sim.json");
    std::fs::write(&sim, "{}").unwrap();
    // A cap below the depth of every context above 9.2K: those are not proven at depth.
    let cfg = dir.path().join("o3.yaml");
    std::fs::write(&cfg, "prompt:\n  max_prompt_tokens: 8192\n").unwrap();
    let out = o3()
        .args(["optimize", "--json", "--simulate"])
        .arg(&sim)
        .arg("--config")
        .arg(&cfg)
        .args(["--budget", "2m", "--db"])
        .arg(dir.path().join("o3.db"))
        .arg("--out")
        .arg(dir.path().join("run"))
        .output()
        .unwrap();
    let s = last_json(&out);
    assert_eq!(out.status.code(), Some(0), "{s}");
    let err = String::from_utf8_lossy(&out.stderr);
    // The plan before the first probe, the cuts of a 2-minute budget, the cap.
    assert!(err.contains("plan (budget 2.0 min (--budget)"), "{err}");
    assert!(
        err.contains("cut by the budget 2.0 min (--budget)"),
        "{err}"
    );
    // The results table is on stdout.
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("NOT PROVEN AT DEPTH: prompts were capped at 8192 tokens"),
        "{table}"
    );
    assert!(!s["plan"]["cut"].as_array().unwrap().is_empty(), "{s}");
    let max = s["presets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "max_context")
        .unwrap();
    assert_eq!(max["proven_at_depth"], false, "{max}");
    let vmax = s["context"]["validated"].as_u64().unwrap();
    let proof = s["configurations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["config"]["ctx"] == vmax && m["stage"] == "validate")
        .unwrap();
    assert_eq!(proof["prompt_tokens"], 8192, "{proof}");
    assert_eq!(proof["proven_at_depth"], false);
    // The required work ran whatever the budget: the maximum is there.
    assert!(vmax > 8192);
    // The store and `o3 history` say so too.
    let h = o3()
        .args(["history", "--db"])
        .arg(dir.path().join("o3.db"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&h.stdout);
    assert!(
        text.contains(&format!("{vmax} (not proven at depth)")),
        "{text}"
    );
}

#[test]
fn a_damaged_store_or_model_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("o3.db");
    simulated(dir.path(), "{}", "a", &db);
    // Every page after the first overwritten (the header and schema stay readable), as a bad
    // sector or a stray writer would leave them.
    let mut bytes = std::fs::read(&db).unwrap();
    let page = u16::from_be_bytes([bytes[16], bytes[17]]) as usize;
    for (i, b) in bytes[page..].iter_mut().enumerate() {
        *b = (i % 251) as u8 ^ 0x5a;
    }
    std::fs::write(&db, &bytes).unwrap();
    let f = dir.path().join("b.json");
    std::fs::write(&f, "{}").unwrap();
    let run = dir.path().join("b");
    let out = o3()
        .args(["optimize", "--quiet", "--json", "--simulate"])
        .arg(&f)
        .arg("--out")
        .arg(&run)
        .arg("--db")
        .arg(&db)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("is damaged") && err.contains(&db.display().to_string()),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&db).unwrap(),
        bytes,
        "the store was written to"
    );
    assert!(
        !run.exists(),
        "--out was created for a run that never started"
    );

    // A model file that is not a complete GGUF file: one line, before any server starts.
    let model = dir.path().join("cut.gguf");
    std::fs::write(&model, b"GGUF\x03\x00\x00\x00").unwrap();
    let run = dir.path().join("c");
    let out = o3()
        .args([
            "optimize",
            "--backend",
            "llama-server",
            "--server-bin",
            "/bin/false",
        ])
        .arg("--model")
        .arg(&model)
        .arg("--out")
        .arg(&run)
        .arg("--db")
        .arg(dir.path().join("fresh.db"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cut.gguf") && err.contains("truncated"),
        "{err}"
    );
    assert!(!run.exists());
    assert!(
        !dir.path().join("fresh.db").exists(),
        "the store was created"
    );
}
