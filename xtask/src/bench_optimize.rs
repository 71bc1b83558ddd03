//! `cargo xtask bench optimize`: o3 optimize's context search (binary, with and without its
//! memory model's first guess) against two baselines, a linear sweep upward one granule at a
//! time and the full grid a llama-bench-style sweep measures, written to docs/benchmarks.md.
//!
//! First on simulated servers whose truth is known (bench/optimize/*.json, o3's hidden
//! `--simulate`): the simulator is deterministic, so each strategy runs once and its simulated
//! time is exact. Then on the real test server (llama-server with the tiny test model), the
//! strategies interleaved; its times are compared only as ratios within this run. Every o3 run
//! gets an empty learning store of its own, so runs cannot learn from each other.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::bench::{machine, median, read_json};
use crate::{build_release, root};

const START: &str = "<!-- bench:optimize:start -->";
const END: &str = "<!-- bench:optimize:end -->";
/// The full grid runs on the real server only when estimated to take less than this, s.
const GRID_LIMIT_S: f64 = 180.0;
/// The benchmark's time budget after the build, s: the grid runs only if it fits in what is
/// left (the whole command must stay under 10 minutes on a 2-core machine).
const BUDGET_S: u64 = 420;
/// Rounds of (binary, linear) on the real server.
const REAL_ROUNDS: usize = 2;
/// The target: binary's time at most this % of the linear sweep's.
const TARGET_PERCENT: f64 = 30.0;

/// A simulated server (a file under bench/optimize/) and the configuration fragment it needs.
struct Truth {
    file: &'static str,
    label: &'static str,
    /// A configuration fragment under bench/optimize/ for all its runs; o3's defaults when
    /// `None`.
    config: Option<&'static str>,
}

const TRUTHS: [Truth; 5] = [
    Truth {
        file: "default-12gib.json",
        label: "8B Q4_K_M on a 12 GiB device (the simulator's default)",
        config: None,
    },
    Truth {
        file: "24gib-14b.json",
        label: "14B Q4_K_M on a 24 GiB device",
        config: None,
    },
    Truth {
        file: "strix-halo-96gib-30b.json",
        label: "30B-A3B Q4_K_M on 96 GiB of unified memory (Strix-Halo-like), trained to 262144",
        config: Some("strix-halo.yaml"),
    },
    Truth {
        file: "small-6gib-3b.json",
        label: "3B Q4_K_M on a 6 GiB device",
        config: None,
    },
    Truth {
        file: "flaky-12gib.json",
        label: "8B Q4_K_M on 12 GiB with a flaky zone under the memory limit",
        config: None,
    },
];

/// Configuration fragments under bench/optimize/, each setting its own top-level keys.
const DISCOVERY_ONLY: &str = "discovery-only.yaml";
const NO_PREDICTION: &str = "no-prediction.yaml";

/// How a run finds the largest context.
#[derive(Clone, Copy, PartialEq)]
struct Variant {
    key: &'static str,
    label: &'static str,
    strategy: &'static str,
    /// o3's memory model picks the binary search's first probe (learning.predict, o3's
    /// default); only binary uses it.
    predict: bool,
}

const BINARY: Variant = Variant {
    key: "binary",
    label: "binary (o3)",
    strategy: "binary",
    predict: true,
};
const BINARY_NP: Variant = Variant {
    key: "binary-no-prediction",
    label: "binary, no prediction",
    strategy: "binary",
    predict: false,
};
const LINEAR: Variant = Variant {
    key: "linear",
    label: "linear",
    strategy: "linear",
    predict: true,
};
const GRID: Variant = Variant {
    key: "grid",
    label: "grid",
    strategy: "grid",
    predict: true,
};

/// Top-level keys of a YAML file (lines that start a mapping entry at column 0).
fn top_level_keys(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with([' ', '\t', '#', '-']) && !l.trim().is_empty())
        .filter_map(|l| l.split_once(':').map(|(k, _)| k.trim().to_string()))
        .collect()
}

/// Writes the concatenation of configuration files to `path` and returns it, or `None` when
/// there are none (o3's defaults). The files must not share a top-level key.
fn compose(path: &Path, parts: &[PathBuf]) -> Result<Option<PathBuf>> {
    if parts.is_empty() {
        return Ok(None);
    }
    let mut text = String::new();
    let mut keys: Vec<String> = Vec::new();
    for p in parts {
        let t = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        for k in top_level_keys(&t) {
            if keys.contains(&k) {
                bail!(
                    "{} sets `{k}`, which another configuration of the same run sets too",
                    p.display()
                );
            }
            keys.push(k);
        }
        text += &format!("# from {}\n{t}\n", p.display());
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(Some(path.to_path_buf()))
}

/// One `o3 optimize` run, read back from its summary, run file and journal.
struct Run {
    /// The binary search's first context (the configuration's, or o3's prediction).
    start: Option<u64>,
    /// Learned results from earlier runs this run reused (none with a store of its own).
    reused: usize,
    /// The model's parameter count (the search's first batch depends on it).
    parameters: Option<u64>,
    /// Stopped before the search finished (by the benchmark's deadline).
    interrupted: bool,
    probes: u64,
    search_probes: u64,
    validated: Option<u64>,
    low: u64,
    high: u64,
    granularity: u64,
    /// o3's own bound: ceil(log2(grid points + 1)) + 1.
    probe_bound: u64,
    /// `simulated_s` on the simulator, `wall_s` on a real server.
    time_s: f64,
    /// The context-stage probes' times summed from the journal, s.
    context_stage_s: f64,
    /// The slowest passing probe of the validate and batch stages, s.
    slowest_validated_s: f64,
    /// Probes that did not pass: (outcome class, what: error and where).
    failed: Vec<(String, String)>,
    run_file: Value,
}

fn num(v: &Value, key: &str) -> Result<u64> {
    v[key]
        .as_u64()
        .with_context(|| format!("`{key}` is missing or not a whole number"))
}

/// Runs `o3 optimize ARGS --strategy S --json --quiet --out DIR` in a fresh DIR. At the
/// deadline, if any, o3 is interrupted (SIGINT: it stops its server and writes a partial
/// summary).
fn optimize(
    o3: &Path,
    dir: &Path,
    args: &[OsString],
    strategy: &str,
    deadline: Option<Instant>,
) -> Result<Run> {
    eprintln!(
        "xtask: bench optimize: {}",
        dir.file_name().unwrap_or_default().to_string_lossy()
    );
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    // Output goes to files beside the run directory: a grid's summary outgrows a pipe.
    let (out_path, err_path) = (dir.with_extension("stdout"), dir.with_extension("stderr"));
    // A learning store of its own, empty: no run reuses or is predicted from another's
    // results, and the user's store is left alone.
    let data = dir.with_extension("data");
    if data.exists() {
        std::fs::remove_dir_all(&data).with_context(|| format!("removing {}", data.display()))?;
    }
    let create =
        |p: &Path| std::fs::File::create(p).with_context(|| format!("creating {}", p.display()));
    let mut cmd = Command::new(o3);
    cmd.arg("optimize")
        .args(args)
        .args(["--strategy", strategy, "--json", "--quiet", "--out"])
        .arg(dir)
        .env("XDG_DATA_HOME", &data)
        .stdout(create(&out_path)?)
        .stderr(create(&err_path)?);
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let mut interrupted = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if !interrupted && deadline.is_some_and(|d| Instant::now() >= d) {
            eprintln!("xtask: bench optimize: out of time, interrupting {strategy}");
            // SAFETY: kill(2) on the id of our own child, which has not been waited for.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
            interrupted = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let stopped_by_us = interrupted && status.code() == Some(130);
    if !status.success() && !stopped_by_us {
        bail!(
            "{cmd:?} failed with {status}: {}",
            std::fs::read_to_string(&err_path)
                .unwrap_or_default()
                .trim()
        );
    }
    let stdout = std::fs::read_to_string(&out_path)
        .with_context(|| format!("reading {}", out_path.display()))?;
    let s: Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .with_context(|| format!("{cmd:?}: its last line of output is not the summary JSON"))?;
    let c = &s["context"];
    let jpath = dir.join("journal.jsonl");
    let journal =
        std::fs::read_to_string(&jpath).with_context(|| format!("reading {}", jpath.display()))?;
    let (mut context_stage_s, mut slowest_validated_s) = (0.0, 0.0f64);
    let mut failed = Vec::new();
    for line in journal.lines() {
        let j: Value = serde_json::from_str(line)
            .with_context(|| format!("a line of {} is not JSON", jpath.display()))?;
        let s = j["outcome"]["wall_ms"].as_f64().unwrap_or(0.0) / 1000.0;
        let outcome = j["outcome"]["outcome"].as_str().unwrap_or("unknown");
        match j["request"]["stage"].as_str() {
            Some("context") => context_stage_s += s,
            Some("validate" | "batch") if outcome == "ok" => {
                slowest_validated_s = slowest_validated_s.max(s)
            }
            _ => {}
        }
        if outcome != "ok" {
            let why = j["outcome"]["error"].as_str().unwrap_or("no detail");
            let r = &j["request"];
            let streams = r["concurrency"].as_u64().unwrap_or(1);
            failed.push((
                outcome.to_string(),
                format!(
                    "{why}; {} stage, ctx {}{}",
                    r["stage"].as_str().unwrap_or("unknown"),
                    r["config"]["ctx"],
                    if streams > 1 {
                        format!(", {streams} streams")
                    } else {
                        String::new()
                    }
                ),
            ));
        }
    }
    Ok(Run {
        start: c["start"].as_u64(),
        reused: s["reused"].as_array().map_or(0, Vec::len),
        parameters: s["parameters"].as_u64(),
        interrupted: s["interrupted"].as_bool().unwrap_or(false),
        probes: num(&s["probes"], "total")?,
        search_probes: num(&s["probes"], "context_search")?,
        validated: c["validated"].as_u64(),
        low: num(c, "low")?,
        high: num(c, "high")?,
        granularity: num(c, "granularity")?.max(1),
        probe_bound: num(c, "probe_bound")?,
        time_s: s["simulated_s"]
            .as_f64()
            .or_else(|| s["wall_s"].as_f64())
            .context("the summary has neither simulated_s nor wall_s")?,
        context_stage_s,
        slowest_validated_s,
        failed,
        run_file: read_json(&dir.join("run.json"))?,
    })
}

/// The first batch of the context search: by parameter count, as o3's configuration says.
fn initial_batch(r: &Run) -> Result<u64> {
    let key = match r.parameters {
        Some(p) if p >= 27_000_000_000 => "initial_large",
        Some(p) if p < 3_000_000_000 => "initial_small",
        _ => "initial_medium",
    };
    num(&r.run_file["config"]["batch"], key)
}

/// Batches a grid visits at each context: the initial one times the scale factor up to the
/// maximum.
fn ladder(r: &Run) -> Result<Vec<u64>> {
    let b = &r.run_file["config"]["batch"];
    let scale = b["scale_factor"]
        .as_f64()
        .context("no batch.scale_factor")?;
    let max = num(b, "max_batch")?;
    let mut out = vec![initial_batch(r)?];
    loop {
        let last = out[out.len() - 1];
        let next = ((last as f64 * scale).round() as u64).min(max);
        if next <= last {
            return Ok(out);
        }
        out.push(next);
    }
}

/// A simulated server's truth at the search's batch with one slot.
struct Expected {
    batch: u64,
    /// The largest context that loads.
    memory: u64,
    /// The largest that also passes validation (below a flaky zone).
    stable: u64,
    /// The largest multiple of the granularity in the searched range at or below `stable`.
    answer: Option<u64>,
}

fn expected(r: &Run) -> Result<Expected> {
    let m = &r.run_file["target"]["simulate"];
    let batch = initial_batch(r)?;
    let fixed = num(m, "weights_bytes")?
        + num(m, "compute_base_bytes")?
        + num(m, "compute_per_batch_bytes")? * batch;
    let kv = num(m, "kv_bytes_per_token")?.max(1);
    let memory = num(m, "capacity_bytes")?
        .checked_sub(fixed)
        .map_or(0, |free| free / kv)
        .min(num(m, "trained_context")?);
    let stable = m["flaky_above"].as_u64().map_or(memory, |f| memory.min(f));
    let top = stable.min(r.high) / r.granularity * r.granularity;
    Ok(Expected {
        batch,
        memory,
        stable,
        answer: (top >= r.low).then_some(top),
    })
}

fn ceil_log2(n: u64) -> u64 {
    if n <= 1 {
        0
    } else {
        64 - (n - 1).leading_zeros() as u64
    }
}

/// The target bound on search probes: ceil(log2(range / granularity)) + 1.
fn log_bound(r: &Run) -> u64 {
    ceil_log2((r.high - r.low) / r.granularity) + 1
}

/// Found minus expected, in granules; `None` when only one of them exists.
fn error(found: Option<u64>, expected: Option<u64>, g: u64) -> Option<i64> {
    match (found, expected) {
        (Some(f), Some(e)) => Some((f as i64 - e as i64) / g as i64),
        (None, None) => Some(0),
        _ => None,
    }
}

fn show_error(e: Option<i64>) -> String {
    match e {
        Some(0) => "0".into(),
        Some(e) => format!("{e:+}"),
        None => "wrong (one side has none)".into(),
    }
}

fn show_ctx(c: Option<u64>) -> String {
    c.map_or("none".into(), |c| c.to_string())
}

fn show_time(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.1} s")
    } else if s < 7200.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

fn pct(a: f64, b: f64) -> f64 {
    a / b * 100.0
}

fn range(v: &[f64]) -> String {
    let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if v.is_empty() {
        "–".into()
    } else if (hi - lo).abs() < 0.05 {
        format!("{lo:.1} %")
    } else {
        format!("{lo:.1}–{hi:.1} %")
    }
}

/// Several values as one, or all of them when they differ.
fn same_or_all<T: PartialEq + std::fmt::Display>(v: &[T]) -> String {
    if v.windows(2).all(|w| w[0] == w[1]) {
        v.first().map_or("–".into(), |x| x.to_string())
    } else {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(" / ")
    }
}

/// What the verdict lines need, gathered over every run.
#[derive(Default)]
struct Verdicts {
    /// Binary runs whose answer is within one granule of the reference, exact, of how many.
    within: usize,
    exact: usize,
    checked: usize,
    misses: Vec<String>,
    /// Binary runs within the log bound, of how many, and "used/bound" per setting.
    bounded: usize,
    bound_checked: usize,
    bound_detail: Vec<String>,
    /// Binary's time as a % of linear's per truth: (o3, no prediction).
    sim_whole: Vec<(f64, f64)>,
    sim_discovery: Vec<(f64, f64)>,
    sim_context: Vec<(f64, f64)>,
    real_whole: Option<(f64, f64)>,
    real_context: Option<(f64, f64)>,
    real_skipped: Option<String>,
    /// The real server's runs had a reference answer (the full grid ran to the end).
    real_reference: bool,
    /// Runs that reused learned results (should be none: each has a store of its own).
    reused_runs: usize,
}

impl Verdicts {
    fn check(&mut self, what: String, found: Option<u64>, reference: Option<u64>, g: u64) {
        let e = error(found, reference, g);
        self.checked += 1;
        if e.is_some_and(|e| e.abs() <= 1) {
            self.within += 1;
        } else {
            self.misses.push(format!(
                "{what}: found {}, expected {}",
                show_ctx(found),
                show_ctx(reference)
            ));
        }
        if e == Some(0) {
            self.exact += 1;
        }
    }

    fn bound(&mut self, r: &Run) {
        self.bound_checked += 1;
        if r.search_probes <= log_bound(r) {
            self.bounded += 1;
        }
    }
}

fn batches(r: &Run) -> Result<String> {
    Ok(ladder(r)?
        .iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(", "))
}

fn simulator(o3: &Path, tmp: &Path, v: &mut Verdicts) -> Result<String> {
    let dir = root().join("bench/optimize");
    let mut md = String::new();
    let mut overview = String::new();
    for t in &TRUTHS {
        let truth = dir.join(t.file);
        let stem = t.file.trim_end_matches(".json");
        let run = |variant: Variant, discovery: bool| -> Result<Run> {
            let name = format!(
                "{stem}-{}{}",
                variant.key,
                if discovery { "-discovery" } else { "" }
            );
            let mut parts: Vec<PathBuf> = t.config.iter().map(|c| dir.join(c)).collect();
            if discovery {
                parts.push(dir.join(DISCOVERY_ONLY));
            }
            if !variant.predict {
                parts.push(dir.join(NO_PREDICTION));
            }
            let mut args: Vec<OsString> = vec!["--simulate".into(), truth.clone().into()];
            if let Some(c) = compose(&tmp.join(format!("{name}.yaml")), &parts)? {
                args.push("--config".into());
                args.push(c.into());
            }
            optimize(o3, &tmp.join(&name), &args, variant.strategy, None)
        };
        let [b, np, l, g] = [BINARY, BINARY_NP, LINEAR, GRID].map(|x| run(x, false));
        let (b, np, l, g) = (b?, np?, l?, g?);
        let [db, dnp, dl] = [BINARY, BINARY_NP, LINEAR].map(|x| run(x, true));
        let (db, dnp, dl) = (db?, dnp?, dl?);
        let all = [&b, &np, &l, &g, &db, &dnp, &dl];
        if all
            .iter()
            .any(|r| (r.low, r.high, r.granularity) != (b.low, b.high, b.granularity))
        {
            bail!("{}: the runs searched different ranges", t.file);
        }
        v.reused_runs += all.iter().filter(|r| r.reused > 0).count();
        let e = expected(&b)?;
        let gran = b.granularity;
        for (what, r) in [
            ("binary", &b),
            ("binary, no prediction", &np),
            ("binary, discovery only", &db),
            ("binary, no prediction, discovery only", &dnp),
        ] {
            v.check(format!("{stem}, {what}"), r.validated, e.answer, gran);
            v.bound(r);
        }
        v.bound_detail.push(format!(
            "{stem} {}/{bound} ({}/{bound} without prediction)",
            b.search_probes.max(db.search_probes),
            np.search_probes.max(dnp.search_probes),
            bound = log_bound(&b),
        ));
        let whole = (pct(b.time_s, l.time_s), pct(np.time_s, l.time_s));
        let discovery = (pct(db.time_s, dl.time_s), pct(dnp.time_s, dl.time_s));
        let context = (
            pct(b.context_stage_s, l.context_stage_s),
            pct(np.context_stage_s, l.context_stage_s),
        );
        v.sim_whole.push(whole);
        v.sim_discovery.push(discovery);
        v.sim_context.push(context);

        let config = match t.config {
            Some(c) => format!("`--config` with `bench/optimize/{c}`"),
            None => "o3's default configuration".into(),
        };
        let stable = if e.stable < e.memory {
            format!(
                ", passes validation only up to {} (`flaky_above`; above it one request in {} fails)",
                e.stable,
                b.run_file["target"]["simulate"]["flaky_every"]
            )
        } else {
            String::new()
        };
        let start = match (b.start, e.answer) {
            (Some(s), Some(a)) => format!(
                "{s} ({} granules from the answer)",
                show_error(error(Some(s), Some(a), gran))
            ),
            (s, _) => show_ctx(s),
        };
        md += &format!(
            "### Simulator: {label}\n\n\
`bench/optimize/{file}`, {config}. \
Truth at the search's batch {batch} with one slot: loads up to {memory} tokens{stable}. \
Expected answer: **{answer}**. Searched {low}..{high} step {gran}: \
ceil(log2({n})) + 1 = {bound} search probes at most (o3's own bound, ceil(log2(grid points + 1)) + 1: {o3_bound}). \
First probe of binary (o3): {start}; without prediction: {np_start}.\n\n\
| strategy | probes | search probes | found | error (granules) | time to presets | % of linear | discovery only | % of linear | context stage | % of linear |\n\
|---|---|---|---|---|---|---|---|---|---|---|\n",
            label = t.label,
            file = t.file,
            batch = e.batch,
            memory = e.memory,
            answer = show_ctx(e.answer),
            low = b.low,
            high = b.high,
            n = (b.high - b.low) / gran,
            bound = log_bound(&b),
            o3_bound = b.probe_bound,
            np_start = show_ctx(np.start),
        );
        for (variant, r, d) in [(BINARY, &b, &db), (BINARY_NP, &np, &dnp), (LINEAR, &l, &dl)] {
            md += &format!(
                "| {} | {} | {} | {} | {} | {} | {:.1} % | {} | {:.1} % | {} | {:.1} % |\n",
                variant.label,
                r.probes,
                r.search_probes,
                show_ctx(r.validated),
                show_error(error(r.validated, e.answer, gran)),
                show_time(r.time_s),
                pct(r.time_s, l.time_s),
                show_time(d.time_s),
                pct(d.time_s, dl.time_s),
                show_time(r.context_stage_s),
                pct(r.context_stage_s, l.context_stage_s),
            );
        }
        md += &format!(
            "| grid ({} contexts × batches {}) | {} | – | {} | {} | {} | {:.1} % | – | – | – | – |\n\n",
            (g.high - g.low) / gran + 1,
            batches(&g)?,
            g.probes,
            show_ctx(g.validated),
            show_error(error(g.validated, e.answer, gran)),
            show_time(g.time_s),
            pct(g.time_s, l.time_s),
        );
        overview += &format!(
            "| {stem} | {} | {} / {} | {} / {} of {} | {:.1} / {:.1} % | {:.1} / {:.1} % | {:.1} / {:.1} % | {:.2} % |\n",
            show_ctx(e.answer),
            show_error(error(b.validated, e.answer, gran)),
            show_error(error(np.validated, e.answer, gran)),
            b.search_probes,
            np.search_probes,
            log_bound(&b),
            whole.0,
            whole.1,
            discovery.0,
            discovery.1,
            context.0,
            context.1,
            pct(b.time_s, g.time_s),
        );
    }
    Ok(format!(
        "{md}### Simulator: all truths\n\n\
Each cell: binary (o3) / binary without prediction. Times are binary's simulated time as a % of the linear sweep's for the same truth (last column: of the full grid's).\n\n\
| truth | expected | error (granules) | search probes / bound | whole run | discovery only | context stage | whole run vs grid |\n\
|---|---|---|---|---|---|---|---|\n{overview}\n"
    ))
}

fn home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
}

/// The 1-, 5- and 15-minute load averages as /proc/loadavg gives them.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Outcome classes with counts ("safety_abort ×3, crashed ×1"), or "none".
fn tally<'a>(failed: impl Iterator<Item = &'a (String, String)>) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for (class, _) in failed {
        match counts.iter_mut().find(|(k, _)| k == class) {
            Some((_, n)) => *n += 1,
            None => counts.push((class, 1)),
        }
    }
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(k, n)| format!("{k} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// CPU time the whole machine spent busy (all cores), s, from /proc/stat.
fn machine_busy_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait are busy.
    let busy = f.get(..8)?.iter().sum::<f64>() - f[3] - f[4];
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (tick > 0.0).then(|| busy / tick)
}

/// CPU time of this process's finished children and their waited-for descendants (o3 and the
/// servers it started), s.
fn children_cpu_s() -> f64 {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn probes(n: usize) -> String {
    format!("{n} probe{}", if n == 1 { "" } else { "s" })
}

fn real_server(o3: &Path, tmp: &Path, deadline: Instant, v: &mut Verdicts) -> Result<String> {
    let server = home().join(".cache/o3/llama-server/bin/llama-server");
    let model = home().join(".cache/o3/models/o3-tiny-llama.gguf");
    let title = "### Real server: llama-server, tiny test model, `config/short.yaml`\n\n";
    if let Some(missing) = [&server, &model].into_iter().find(|p| !p.is_file()) {
        let why = format!(
            "{} is missing (`cargo xtask setup` installs it)",
            missing.display()
        );
        eprintln!("xtask: bench optimize: real server skipped: {why}");
        v.real_skipped = Some(why.clone());
        return Ok(format!("{title}Skipped: {why}.\n\n"));
    }
    let short = root().join("config/short.yaml");
    let args = |variant: Variant| -> Result<Vec<OsString>> {
        let config = if variant.predict {
            short.clone()
        } else {
            let parts = [
                short.clone(),
                root().join("bench/optimize").join(NO_PREDICTION),
            ];
            compose(&tmp.join(format!("real-{}.yaml", variant.key)), &parts)?.expect("two parts")
        };
        Ok(vec![
            "--backend".into(),
            "llama-server".into(),
            "--server-bin".into(),
            server.clone().into(),
            "--model".into(),
            model.clone().into(),
            "--config".into(),
            config.into(),
        ])
    };
    let variants = [BINARY, BINARY_NP, LINEAR];
    let load_before = loadavg();
    let (busy0, ours0, t0) = (machine_busy_s(), children_cpu_s(), Instant::now());
    let mut runs: [Vec<Run>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..REAL_ROUNDS {
        for (i, x) in variants.iter().enumerate() {
            let out = tmp.join(format!("real-{}-{}", x.key, round + 1));
            runs[i].push(optimize(o3, &out, &args(*x)?, x.strategy, None)?);
        }
    }
    let first = &runs[0][0];
    let gran = first.granularity;
    let contexts = (first.high - first.low) / gran + 1;
    let grid_probes = contexts * ladder(first)?.len() as u64;
    let slowest = runs
        .iter()
        .flatten()
        .map(|r| r.slowest_validated_s)
        .fold(0.0, f64::max);
    let estimate = grid_probes as f64 * slowest;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .as_secs_f64();
    let grid = if estimate < GRID_LIMIT_S.min(left) {
        let out = tmp.join("real-grid");
        Some(optimize(o3, &out, &args(GRID)?, "grid", Some(deadline))?)
    } else {
        eprintln!(
            "xtask: bench optimize: real server, grid skipped (estimated {estimate:.0} s; limit {GRID_LIMIT_S:.0} s, {left:.0} s left of the benchmark's budget)"
        );
        None
    };
    let load_after = loadavg();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    // CPU the machine spent on anything but this benchmark's processes, % of all cores.
    let others = match (busy0, machine_busy_s()) {
        (Some(a), Some(b)) => Some(
            ((b - a) - (children_cpu_s() - ours0)).max(0.0) / (t0.elapsed().as_secs_f64() * cores)
                * 100.0,
        ),
        _ => None,
    };
    v.reused_runs += runs
        .iter()
        .flatten()
        .chain(&grid)
        .filter(|r| r.reused > 0)
        .count();
    let reference = grid
        .as_ref()
        .filter(|g| !g.interrupted)
        .map(|g| g.validated);
    v.real_reference = reference.is_some();
    for (i, what) in [(0, "binary"), (1, "binary, no prediction")] {
        for (k, r) in runs[i].iter().enumerate() {
            if let Some(reference) = reference {
                let what = format!("real server, {what}, run {}", k + 1);
                v.check(what, r.validated, reference, gran);
            }
            v.bound(r);
        }
    }
    let med = |rs: &[Run], f: fn(&Run) -> f64| median(&mut rs.iter().map(f).collect::<Vec<_>>());
    let wall: Vec<f64> = runs.iter().map(|rs| med(rs, |r| r.time_s)).collect();
    let ctx: Vec<f64> = runs
        .iter()
        .map(|rs| med(rs, |r| r.context_stage_s))
        .collect();
    v.real_whole = Some((pct(wall[0], wall[2]), pct(wall[1], wall[2])));
    v.real_context = Some((pct(ctx[0], ctx[2]), pct(ctx[1], ctx[2])));
    let most = |i: usize| runs[i].iter().map(|r| r.search_probes).max().unwrap_or(0);
    v.bound_detail.push(format!(
        "real server {}/{bound} ({}/{bound} without prediction)",
        most(0),
        most(1),
        bound = log_bound(first)
    ));
    // Binary / linear within each round.
    let per_round = |i: usize, f: fn(&Run) -> f64| {
        runs[i]
            .iter()
            .zip(&runs[2])
            .map(|(b, l)| format!("{:.1} %", pct(f(b), f(l))))
            .collect::<Vec<_>>()
            .join(", ")
    };

    let mut rows = String::new();
    for (i, x) in variants.iter().enumerate() {
        let rs = &runs[i];
        let found: Vec<String> = rs.iter().map(|r| show_ctx(r.validated)).collect();
        let err = match reference {
            Some(reference) => {
                let e: Vec<String> = rs
                    .iter()
                    .map(|r| show_error(error(r.validated, reference, gran)))
                    .collect();
                same_or_all(&e)
            }
            None => "–".into(),
        };
        rows += &format!(
            "| {} | {} | {} | {} | {} | {err} | {} | {:.1} s | {:.1} % | {:.2} s | {:.1} % |\n",
            x.label,
            rs.len(),
            same_or_all(&rs.iter().map(|r| r.probes).collect::<Vec<_>>()),
            same_or_all(&rs.iter().map(|r| r.search_probes).collect::<Vec<_>>()),
            same_or_all(&found),
            tally(rs.iter().flat_map(|r| &r.failed)),
            wall[i],
            pct(wall[i], wall[2]),
            ctx[i],
            pct(ctx[i], ctx[2]),
        );
    }
    let grid_line = match &grid {
        Some(g) => {
            rows += &format!(
                "| grid ({contexts} contexts × batches {}) | 1 | {} | – | {} | {} | {} | {:.1} s | {:.1} % | – | – |\n",
                batches(g)?,
                g.probes,
                show_ctx(g.validated),
                if g.interrupted {
                    "– (interrupted)"
                } else {
                    "0 (the reference)"
                },
                tally(g.failed.iter()),
                g.time_s,
                pct(g.time_s, wall[2]),
            );
            let outcome = if g.interrupted {
                format!("it was interrupted at this benchmark's time budget ({BUDGET_S} s after the build), so it gives no reference and no error is counted")
            } else {
                "its answer is the reference the errors are counted against (the real server's truth is not known otherwise)".into()
            };
            format!(
                "The full grid ({grid_probes} validated probes) was estimated at {estimate:.0} s (the slowest passing validation probe of the runs above, {slowest:.2} s, × {grid_probes}), under {GRID_LIMIT_S:.0} s, so it ran once after them; {outcome}."
            )
        }
        None => format!(
            "The full grid was not run: {grid_probes} validated probes at up to {slowest:.2} s each (the slowest passing validation probe of the runs above) is an estimated {estimate:.0} s, over the limit of {GRID_LIMIT_S:.0} s (or the {left:.0} s left of this benchmark's time budget); without it there is no reference answer, so no error is given."
        ),
    };
    let aborts: Vec<&(String, String)> = runs
        .iter()
        .flatten()
        .chain(&grid)
        .flat_map(|r| &r.failed)
        .filter(|(class, _)| class == "safety_abort")
        .collect();
    let others_line = match others {
        Some(o) => format!(
            "Other work (CPU time not spent by o3 and its servers) used {o:.1} % of this machine's {cores:.0} cores during these runs."
        ),
        None => "Other work's CPU use could not be measured (/proc/stat unreadable).".into(),
    };
    let disturbed = match (aborts.first(), others) {
        (Some((_, why)), Some(o)) if o >= 5.0 => format!(
            "\n\n**Disturbed:** {} ended in `safety_abort` (o3's watchdog stopped the server; first: {why}) while other work used {o:.1} % of the CPU, so these runs' answers and times are not those of a quiet machine: rerun `cargo xtask bench optimize` when it is idle.",
            probes(aborts.len())
        ),
        (Some(_), _) => format!(
            "\n\n**Safety aborts:** {} ended in `safety_abort` (o3's watchdog stopped the server; {}) with little other work on the machine: the probes themselves crossed a safety limit of `config/short.yaml` on this 2-core machine. Each costs the watchdog's wait and changes what the run does next, so the whole-run times of the runs concerned are not comparable; the context stage is unaffected unless an abort is listed there.",
            probes(aborts.len()),
            aborts.iter().map(|(_, w)| w.as_str()).collect::<Vec<_>>().join("; "),
        ),
        (None, _) => String::new(),
    };
    Ok(format!(
        "{title}`o3 optimize --backend llama-server --server-bin ~/.cache/o3/llama-server/bin/llama-server --model ~/.cache/o3/models/o3-tiny-llama.gguf --config config/short.yaml --strategy binary|linear --json --quiet --out <tmp>` \
(without prediction: `config/short.yaml` followed by `bench/optimize/{NO_PREDICTION}`), \
{REAL_ROUNDS} rounds, each running binary, binary without prediction and linear in turn. \
Searched {low}..{high} step {gran}: ceil(log2({n})) + 1 = {bound} search probes at most (o3's own bound: {o3_bound}). \
First probe of binary (o3): {start}; without prediction: {np_start}. \
Wall time is o3's own `wall_s` (start of the search to the presets); the context stage is the sum of the context-stage probes' wall times from each run's journal. \
Medians of the runs; % of linear from the medians of this one run (binary (o3) / linear per round: whole run {round_b}, context stage {round_b_ctx}; without prediction: {round_np}, context stage {round_np_ctx}). \
Load average (1, 5, 15 min) before these runs: {load_before}; after: {load_after}. {others_line}\n\n\
| strategy | runs | probes | search probes | found | error (granules) | probes that did not pass | wall time | % of linear | context stage | % of linear |\n\
|---|---|---|---|---|---|---|---|---|---|---|\n{rows}\n{grid_line}{disturbed}\n\n",
        low = first.low,
        high = first.high,
        n = (first.high - first.low) / gran,
        bound = log_bound(first),
        o3_bound = first.probe_bound,
        start = same_or_all(&runs[0].iter().map(|r| show_ctx(r.start)).collect::<Vec<_>>()),
        np_start = same_or_all(&runs[1].iter().map(|r| show_ctx(r.start)).collect::<Vec<_>>()),
        round_b = per_round(0, |r| r.time_s),
        round_b_ctx = per_round(0, |r| r.context_stage_s),
        round_np = per_round(1, |r| r.time_s),
        round_np_ctx = per_round(1, |r| r.context_stage_s),
    ))
}

fn verdicts(v: &Verdicts) -> String {
    let yes = |b: bool| if b { "yes" } else { "no" };
    let within = format!(
        "- **Within one granule every time: {}** ({} of {} binary runs, with and without prediction, within one granule, {} exact; on the simulator against its truth, whole runs and discovery-only runs; {}).{}\n",
        yes(v.within == v.checked),
        v.within,
        v.checked,
        v.exact,
        if v.real_skipped.is_some() {
            "the real server was skipped"
        } else if v.real_reference {
            "on the real server against the full grid's answer"
        } else {
            "the real server's runs are not counted: the grid did not run there to the end, so there is no reference"
        },
        if v.misses.is_empty() {
            String::new()
        } else {
            format!(" Misses: {}.", v.misses.join("; "))
        }
    );
    let bound = format!(
        "- **≤ ceil(log2(range/granularity)) + 1 search probes: {}** ({} of {} binary runs; most used / bound: {}).\n",
        yes(v.bounded == v.bound_checked),
        v.bounded,
        v.bound_checked,
        v.bound_detail.join(", ")
    );
    let firsts = |xs: &[(f64, f64)]| xs.iter().map(|x| x.0).collect::<Vec<_>>();
    let seconds = |xs: &[(f64, f64)]| xs.iter().map(|x| x.1).collect::<Vec<_>>();
    let met = |xs: &[f64]| xs.iter().all(|&x| x <= TARGET_PERCENT);
    let mut whole = firsts(&v.sim_whole);
    whole.extend(v.real_whole.map(|x| x.0));
    let mut whole_np = seconds(&v.sim_whole);
    whole_np.extend(v.real_whole.map(|x| x.1));
    let mut discovery = firsts(&v.sim_discovery);
    discovery.extend(firsts(&v.sim_context));
    discovery.extend(v.real_context.map(|x| x.0));
    let mut discovery_np = seconds(&v.sim_discovery);
    discovery_np.extend(seconds(&v.sim_context));
    discovery_np.extend(v.real_context.map(|x| x.1));
    let word = |xs: &[f64]| if met(xs) { "met" } else { "not met" };
    let count = |xs: &[f64]| {
        let n = xs.iter().filter(|&&x| x <= TARGET_PERCENT).count();
        format!("{n} of {} measurements within it", xs.len())
    };
    let real_whole = |pick: fn(&(f64, f64)) -> f64| match &v.real_whole {
        Some(x) => format!("real server {:.1} %", pick(x)),
        None => "real server not measured (skipped)".into(),
    };
    let real_ctx = |pick: fn(&(f64, f64)) -> f64| match &v.real_context {
        Some(x) => format!("real server, context stage {:.1} %", pick(x)),
        None => "real server not measured (skipped)".into(),
    };
    let time = format!(
        "- **≤ {TARGET_PERCENT:.0} % of the linear sweep's wall time, whole run (to the presets): {}** ({}). \
o3 as shipped: simulator {} (per truth: {}), {}. Without prediction, {} ({}): simulator {}, {}. \
The whole run includes the validation, batch and concurrency stages, which cost the same for both strategies once they agree on the maximum, so the search's saving is diluted by them.\n\
- **≤ {TARGET_PERCENT:.0} % of the linear sweep's wall time, context discovery only: {}** ({}). \
o3 as shipped: simulator discovery-only runs {}, context stage alone {}, {}. Without prediction, {} ({}): {}, {}, {}.\n",
        word(&whole),
        count(&whole),
        range(&firsts(&v.sim_whole)),
        v.sim_whole
            .iter()
            .map(|x| format!("{:.1} %", x.0))
            .collect::<Vec<_>>()
            .join(", "),
        real_whole(|x| x.0),
        word(&whole_np),
        count(&whole_np),
        range(&seconds(&v.sim_whole)),
        real_whole(|x| x.1),
        word(&discovery),
        count(&discovery),
        range(&firsts(&v.sim_discovery)),
        range(&firsts(&v.sim_context)),
        real_ctx(|x| x.0),
        word(&discovery_np),
        count(&discovery_np),
        range(&seconds(&v.sim_discovery)),
        range(&seconds(&v.sim_context)),
        real_ctx(|x| x.1),
    );
    format!("### Verdicts (o3's binary search)\n\n{within}{bound}{time}")
}

/// Today's date (UTC) as YYYY-MM-DD.
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    // Civil date from days since 1970-01-01 (H. Hinnant, "chrono-Compatible Low-Level Date
    // Algorithms", days_from_civil's inverse).
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

pub fn optimize_bench() -> Result<()> {
    let o3 = build_release()?.join("o3");
    let tmp = root().join("target/bench/optimize");
    std::fs::create_dir_all(&tmp)?;
    let started = Instant::now();
    let deadline = started + std::time::Duration::from_secs(BUDGET_S);
    let mut v = Verdicts::default();
    let sim = simulator(&o3, &tmp, &mut v)?;
    let real = real_server(&o3, &tmp, deadline, &mut v)?;
    let section = format!(
        "{START}\n\
## optimize: search vs linear sweep vs full grid\n\n\
`cargo xtask bench optimize`: builds o3 in release, then for each simulated truth \
`o3 optimize --simulate bench/optimize/<truth>.json --strategy binary|linear|grid --json --quiet --out target/bench/optimize/<run> [--config target/bench/optimize/<run>.yaml]`, \
then the real test server (below). Measured on {machine}, {date}; this run took {took:.0} s.\n\n\
Strategies: **binary (o3)** is o3's search as it runs by default: its memory model picks the first probe (the largest context predicted to fit; `learning.predict`), then it bisects the grid of multiples of the granularity between the largest context that passed and the smallest that failed; \
**binary, no prediction** is the same search with `learning.predict: false` (`bench/optimize/{NO_PREDICTION}`), starting at `search.initial_context`; \
**linear** probes upward one granule at a time from the bottom of the range until the first failure. All three then run the same stages (validation of the maximum with step-down, batch adaptation, concurrency levels at the presets' contexts). \
**grid** validates every context of the grid at every batch of the ladder, with no early stop (a llama-bench-style sweep). \
Search probes are the context stage's single-request probes; found is the validated maximum (`context.validated`). \
Every o3 run has an empty learning store of its own (`XDG_DATA_HOME` beside its run directory), so none reuses or learns from another's results: this is o3 on a model and machine it has not seen (runs that reused learned results anyway: {reused}).\n\n\
Truth of a simulated server (o3-user/src/optimize/sim.rs): at the search's first batch b (32 from 3B to under 27B parameters, 64 below, 16 at 27B and above) with one slot, the largest context that loads is \
floor((capacity − weights − compute_base − compute_per_batch × b) / kv_bytes_per_token), capped by the trained context; with `flaky_above`, the largest stable one is the smaller of that and `flaky_above`. \
The expected answer is the largest multiple of the granularity in the searched range at or below it. \
The simulator's memory accounting has the same form as o3's memory model (weights + KV cache × context + compute buffer), so there the prediction lands close to the truth; the rows without prediction show the search alone. \
Simulator times are simulated seconds (loads plus requests at the truth's rates; the simulator is deterministic, one run each). \
Time to presets is the whole run; it includes the batch and concurrency stages, which cost the same for binary and linear. \
Discovery only is the same truth run with `bench/optimize/{DISCOVERY_ONLY}` added (batch.enabled: false, concurrency.enabled: false: the search, validation with step-down, one validation per preset context); \
context stage is the sum of the context-stage probes' simulated times from the run's journal. \
A run's configuration is the concatenation of the fragments named (written beside its run directory).\n\n\
{sim}{real}{verdicts}\n{END}\n",
        machine = machine(),
        date = today(),
        took = started.elapsed().as_secs_f64(),
        verdicts = verdicts(&v),
        reused = v.reused_runs,
    );
    let path = root().join("docs/benchmarks.md");
    let old = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        "# Benchmarks\n\nEach section is written by the `cargo xtask bench` command it names. Figures are ratios within one interleaved run on the machine named in the section.\n\n".into()
    });
    let new = match (old.find(START), old.find(END)) {
        (Some(a), Some(b)) if a < b => {
            let mut end = b + END.len();
            if old[end..].starts_with('\n') {
                end += 1;
            }
            format!("{}{section}{}", &old[..a], &old[end..])
        }
        _ => {
            let sep = if old.ends_with("\n\n") {
                ""
            } else if old.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            };
            format!("{old}{sep}{section}")
        }
    };
    std::fs::write(&path, new).with_context(|| format!("writing {}", path.display()))?;
    eprint!("{section}");
    eprintln!("xtask: wrote {}", path.display());
    Ok(())
}
