//! `cargo xtask bench optimize`: what a whole `o3 optimize` run costs at the target machine's
//! time scale, in units of its *floor* (one load, one prompt filled to `prompt.fill` of the true
//! answer, one sample's decode: what proving the answer at depth cannot go below), written to
//! docs/benchmarks.md.
//!
//! First on simulated servers calibrated to published Strix Halo figures (bench/optimize/*.json,
//! each citing its sources; o3's hidden `--simulate`): the simulator is deterministic and its
//! truth known, so each variant runs once and its simulated time is exact. Variants: o3 as
//! shipped, o3 with no budget, the probe design before the time model (every probe filled, no
//! prefix reuse), and the linear and grid baselines. Then on the real test server (llama-server
//! with the tiny test model), o3 and the earlier probe design interleaved; its times are
//! compared only as ratios within this run. Every o3 run gets an empty learning store of its
//! own, so runs cannot learn from each other.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::bench::{machine, median, read_json};
use crate::{build_release, root};

mod real_server;
mod simulator;

use real_server::real_server;
use simulator::simulator;

const START: &str = "<!-- bench:optimize:start -->";
const END: &str = "<!-- bench:optimize:end -->";
/// Rounds of (o3, every probe filled, linear) on the real server.
const REAL_ROUNDS: usize = 2;
/// The target: a whole run within this many floors.
const TARGET_FLOORS: f64 = 2.0;
/// A cached sample must be served at least this share of its prompt from the server's cache.
const CACHE_SHARE: f64 = 0.9;

/// A simulated server and the configuration fragment all its runs use.
struct Profile {
    key: &'static str,
    file: &'static str,
    label: &'static str,
    config: Option<&'static str>,
    /// Part of the target (a to d); the others check correctness only.
    target: bool,
}

const PROFILES: [Profile; 5] = [
    Profile {
        key: "a",
        file: "strix-halo-128gib-30b-a3b.json",
        label: "(a) Qwen3-30B-A3B Q4_K_M on a 128 GB Strix Halo (~110 GiB GTT), trained to 262144",
        config: Some("strix-halo.yaml"),
        target: true,
    },
    Profile {
        key: "b",
        file: "strix-halo-128gib-gpt-oss-120b.json",
        label: "(b) gpt-oss-120b MXFP4 on a 128 GB Strix Halo, trained to 131072",
        config: None,
        target: true,
    },
    Profile {
        key: "c",
        file: "strix-halo-64gib-70b.json",
        label: "(c) dense 70B Q4_K_M (39.6 GiB) on a 64 GB Strix Halo, memory binds near 52K",
        config: None,
        target: true,
    },
    Profile {
        key: "d",
        file: "default-12gib.json",
        label: "(d) 8B Q4_K_M on a 12 GiB device",
        config: None,
        target: true,
    },
    Profile {
        key: "flaky",
        file: "flaky-12gib.json",
        label: "8B Q4_K_M on 12 GiB with a flaky zone under the memory limit (step-downs)",
        config: None,
        target: false,
    },
];

/// Configuration fragments under bench/optimize/.
const EVERY_PROBE_FILLED: &str = "every-probe-filled.yaml";
const MIN_BUDGET: &str = "min-budget-10min.yaml";

/// How a run is made.
#[derive(Clone, Copy, PartialEq)]
struct Variant {
    key: &'static str,
    label: &'static str,
    strategy: &'static str,
    /// `--budget none`.
    no_budget: bool,
    /// The probe design before the time model (bench/optimize/every-probe-filled.yaml).
    every_filled: bool,
    /// A minimum budget of 10 minutes (bench/optimize/min-budget-10min.yaml).
    min_budget: bool,
}

const O3: Variant = Variant {
    key: "o3",
    label: "o3 (default budget)",
    strategy: "binary",
    no_budget: false,
    every_filled: false,
    min_budget: false,
};
const STRICT: Variant = Variant {
    key: "min-budget",
    label: "o3, `plan.min_budget_s: 600` (a run under 10 minutes is not cut)",
    strategy: "binary",
    no_budget: false,
    every_filled: false,
    min_budget: true,
};
const NO_BUDGET: Variant = Variant {
    key: "no-budget",
    label: "o3, `--budget none`",
    strategy: "binary",
    no_budget: true,
    every_filled: false,
    min_budget: false,
};
const FILLED: Variant = Variant {
    key: "every-filled",
    label: "every probe filled, no prefix reuse, no budget (the design before)",
    strategy: "binary",
    no_budget: true,
    every_filled: true,
    min_budget: false,
};
const LINEAR: Variant = Variant {
    key: "linear",
    label: "linear sweep (default budget)",
    strategy: "linear",
    no_budget: false,
    every_filled: false,
    min_budget: false,
};
const GRID: Variant = Variant {
    key: "grid",
    label: "grid (every context × batch, filled)",
    strategy: "grid",
    no_budget: true,
    every_filled: false,
    min_budget: false,
};

/// The sections of a configuration fragment: each top-level key with its indented lines
/// (comments dropped). Fragments are plain two-level YAML.
fn sections(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if !line.starts_with([' ', '\t']) {
            if let Some((k, _)) = line.split_once(':') {
                out.push((k.trim().to_string(), Vec::new()));
            }
        } else if let Some(last) = out.last_mut() {
            last.1.push(line.to_string());
        }
    }
    out
}

/// Writes the merge of configuration fragments to `path` and returns it, or `None` when there
/// are none (o3's defaults): sections of the same name are joined; a key set twice is an
/// error.
fn compose(path: &Path, parts: &[PathBuf]) -> Result<Option<PathBuf>> {
    if parts.is_empty() {
        return Ok(None);
    }
    let mut merged: Vec<(String, Vec<String>)> = Vec::new();
    for p in parts {
        let t = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        for (k, lines) in sections(&t) {
            let at = match merged.iter().position(|(m, _)| *m == k) {
                Some(i) => i,
                None => {
                    merged.push((k.clone(), Vec::new()));
                    merged.len() - 1
                }
            };
            for l in lines {
                let key = l.trim().split(':').next().unwrap_or("").to_string();
                if merged[at]
                    .1
                    .iter()
                    .any(|x| x.trim().starts_with(&format!("{key}:")))
                {
                    bail!(
                        "{} sets `{k}.{key}`, which another fragment of the same run sets too",
                        p.display()
                    );
                }
                merged[at].1.push(l);
            }
        }
    }
    let names: Vec<String> = parts.iter().map(|p| p.display().to_string()).collect();
    let mut text = format!("# merged from {}\n", names.join(", "));
    for (k, lines) in merged {
        text += &format!("{k}:\n{}\n", lines.join("\n"));
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(Some(path.to_path_buf()))
}

/// One `o3 optimize` run, read back from its summary, run file and journal.
struct Run {
    validated: Option<u64>,
    probes: u64,
    search_probes: u64,
    low: u64,
    high: u64,
    granularity: u64,
    /// `simulated_s` on the simulator, `wall_s` on a real server.
    time_s: f64,
    /// Probe time by stage (context, batch, validate, concurrency, verify), s; the proof of the
    /// maximum apart from the presets' own contexts.
    stages: BTreeMap<&'static str, f64>,
    /// Work the budget cut.
    cut: usize,
    /// o3's own prediction of the whole run before its first probe, s.
    predicted_s: Option<f64>,
    /// The floor as o3 measured it (the proof's load, fill and decode), s.
    o3_floor_s: Option<f64>,
    /// Probes that did not pass, by outcome class.
    failed: Vec<String>,
    /// The smallest share of its prompt a cached sample was served from the server's cache
    /// (live runs), and how many cached samples there were.
    cache_share: Option<(f64, usize)>,
    run_file: Value,
}

fn num(v: &Value, key: &str) -> Result<u64> {
    v[key]
        .as_u64()
        .with_context(|| format!("`{key}` is missing or not a whole number"))
}

/// Runs `o3 optimize ARGS --strategy S --json --quiet --out DIR` in a fresh DIR.
fn optimize(o3: &Path, dir: &Path, args: &[OsString], strategy: &str) -> Result<Run> {
    eprintln!(
        "xtask: bench optimize: {}",
        dir.file_name().unwrap_or_default().to_string_lossy()
    );
    let s = run_optimize(o3, dir, args, strategy)?;
    let c = &s["context"];
    let validated = c["validated"].as_u64();
    let journal = Journal::read(&dir.join("journal.jsonl"), validated)?;
    Ok(Run {
        validated,
        probes: num(&s["probes"], "total")?,
        search_probes: num(&s["probes"], "context_search")?,
        low: num(c, "low")?,
        high: num(c, "high")?,
        granularity: num(c, "granularity")?.max(1),
        time_s: s["simulated_s"]
            .as_f64()
            .or_else(|| s["wall_s"].as_f64())
            .context("the summary has neither simulated_s nor wall_s")?,
        stages: journal.stages,
        cut: s["plan"]["cut"].as_array().map_or(0, Vec::len),
        predicted_s: s["plan"]["predicted_at_start_s"].as_f64(),
        o3_floor_s: s["plan"]["floor_s"].as_f64(),
        failed: journal.failed,
        cache_share: journal.cache_share,
        run_file: read_json(&dir.join("run.json"))?,
    })
}

/// Runs o3 in a fresh DIR with a learning store of its own and returns its summary JSON.
fn run_optimize(o3: &Path, dir: &Path, args: &[OsString], strategy: &str) -> Result<Value> {
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
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!(
            "{cmd:?} failed with {status}: {}",
            std::fs::read_to_string(&err_path)
                .unwrap_or_default()
                .trim()
        );
    }
    let stdout = std::fs::read_to_string(&out_path)
        .with_context(|| format!("reading {}", out_path.display()))?;
    serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .with_context(|| format!("{cmd:?}: its last line of output is not the summary JSON"))
}

/// What a run's journal says: seconds per stage, the outcomes of probes that did not pass,
/// and the smallest share of a cached sample's prompt the server served from its cache.
struct Journal {
    stages: BTreeMap<&'static str, f64>,
    failed: Vec<String>,
    cache_share: Option<(f64, usize)>,
}

impl Journal {
    fn read(jpath: &Path, validated: Option<u64>) -> Result<Journal> {
        let journal = std::fs::read_to_string(jpath)
            .with_context(|| format!("reading {}", jpath.display()))?;
        let mut stages: BTreeMap<&'static str, f64> = BTreeMap::new();
        let mut failed = Vec::new();
        let (mut share, mut cached) = (f64::INFINITY, 0usize);
        for line in journal.lines() {
            let j: Value = serde_json::from_str(line)
                .with_context(|| format!("a line of {} is not JSON", jpath.display()))?;
            let secs = j["outcome"]["wall_ms"].as_f64().unwrap_or(0.0) / 1000.0;
            *stages.entry(stage(&j["request"], validated)).or_insert(0.0) += secs;
            let outcome = j["outcome"]["outcome"].as_str().unwrap_or("unknown");
            if outcome != "ok" {
                failed.push(outcome.to_string());
            }
            for x in j["raw"]["samples"].as_array().into_iter().flatten() {
                if x["kind"] == "cached" && x["outcome"] == "ok" {
                    if let (Some(c), Some(p)) =
                        (x["cached_tokens"].as_f64(), x["prompt_tokens"].as_f64())
                    {
                        share = share.min(c / p.max(1.0));
                        cached += 1;
                    }
                }
            }
        }
        Ok(Journal {
            stages,
            failed,
            cache_share: (cached > 0).then_some((share, cached)),
        })
    }
}

/// The stage of the table a journal entry's request counts under.
fn stage(r: &Value, validated: Option<u64>) -> &'static str {
    match (r["stage"].as_str(), r["config"]["ctx"].as_u64()) {
        (Some("context"), _) => "search",
        (Some("batch"), _) => "batch ranking",
        (Some("validate"), ctx) if ctx == validated => "proof of the maximum",
        (Some("validate"), ctx) if ctx.zip(validated).is_some_and(|(c, v)| c > v) => {
            "proof of the maximum"
        }
        (Some("validate"), _) => "presets' contexts",
        (Some("concurrency"), _) => "concurrency",
        _ => "other",
    }
}

/// The simulator's truth for a run: the answer and the floor.
struct Truth {
    /// The search's first batch.
    batch: u64,
    /// The largest context that loads at it with one slot, and that passes filled.
    loads: u64,
    stable: u64,
    /// The largest multiple of the granularity in the searched range at or below `stable`.
    answer: Option<u64>,
    /// One load + one fill to prompt.fill of the answer + one sample's decode, at the fastest
    /// batch of the ladder that loads there, s.
    floor_s: f64,
}

fn f(v: &Value, key: &str, default: f64) -> f64 {
    v[key].as_f64().unwrap_or(default)
}

fn truth(r: &Run) -> Result<Truth> {
    let m = &r.run_file["target"]["simulate"];
    let cfg = &r.run_file["config"];
    let params = m["parameters"].as_u64();
    let key = match params {
        Some(p) if p >= 27_000_000_000 => "initial_large",
        Some(p) if p < 3_000_000_000 => "initial_small",
        _ => "initial_medium",
    };
    let batch = num(&cfg["batch"], key)?;
    let weights = num(m, "weights_bytes")?;
    let kv = num(m, "kv_bytes_per_token")?.max(1);
    let cap = num(m, "capacity_bytes")?;
    let (base, per) = (
        num(m, "compute_base_bytes")?,
        num(m, "compute_per_batch_bytes")?,
    );
    let loads_at = |b: u64| {
        cap.checked_sub(weights + base + per * b)
            .map_or(0, |free| free / kv)
            .min(num(m, "trained_context").unwrap_or(u64::MAX))
    };
    let loads = loads_at(batch);
    let mut stable = m["flaky_above"].as_u64().map_or(loads, |x| loads.min(x));
    stable = m["fill_fails_above"]
        .as_u64()
        .map_or(stable, |x| stable.min(x));
    let top = stable.min(r.high) / r.granularity * r.granularity;
    let answer = (top >= r.low).then_some(top);
    // The fastest batch of the ladder that loads at the answer.
    let scale = cfg["batch"]["scale_factor"].as_f64().unwrap_or(2.0);
    let max = num(&cfg["batch"], "max_batch")?;
    let mut best = batch;
    let mut b = batch;
    loop {
        let next = ((b as f64 * scale).round() as u64).min(max);
        if next <= b || answer.is_some_and(|a| loads_at(next) < a) {
            break;
        }
        best = next;
        b = next;
    }
    let fill = cfg["prompt"]["fill"].as_f64().unwrap_or(0.9);
    let out = num(&cfg["prompt"], "output_tokens")? as f64;
    let depth = answer.map_or(0.0, |a| ((a as f64 * fill) as u64) as f64 - out);
    let knee = f(m, "batch_knee", 512.0);
    let r0 = f(m, "prefill_tps", 2400.0) * (best as f64 / knee).min(1.0).sqrt();
    let h = f(m, "prefill_half_depth", 24576.0);
    let k = f(m, "decode_half_depth", 65536.0);
    let fill_s = (depth + depth * depth / (2.0 * h)) / r0;
    let decode_s = (out + (out * depth + out * out / 2.0) / k) / f(m, "decode_tps", 62.0);
    Ok(Truth {
        batch,
        loads,
        stable,
        answer,
        floor_s: f(m, "load_ms", 3000.0) / 1000.0 + fill_s + decode_s,
    })
}

fn ceil_log2(n: u64) -> u64 {
    if n <= 1 {
        0
    } else {
        64 - u64::from((n - 1).leading_zeros())
    }
}

/// ceil(log2(range / granularity)) + 1.
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

/// Outcome classes with counts (`oom ×3, http_error ×1`), or `none`.
fn tally(failed: &[String]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for class in failed {
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

const STAGES: [&str; 5] = [
    "search",
    "batch ranking",
    "proof of the maximum",
    "presets' contexts",
    "concurrency",
];

/// What the verdict lines need.
#[derive(Default)]
struct Verdicts {
    /// (profile, o3's whole run in floors) for the target profiles.
    floors: Vec<(String, f64)>,
    /// (profile, o3's whole run in the floors it measured itself).
    own_floors: Vec<(String, f64)>,
    /// (profile, the earlier design's whole run in floors).
    before: Vec<(String, f64)>,
    /// (profile, o3's whole run in floors with a 10-minute minimum budget).
    strict: Vec<(String, f64)>,
    within: usize,
    checked: usize,
    misses: Vec<String>,
    bounded: usize,
    bound_checked: usize,
    bound_detail: Vec<String>,
    real: Option<RealVerdict>,
}

struct RealVerdict {
    /// o3's whole run over the earlier design's, per round and median.
    ratios: Vec<f64>,
    median_ratio: f64,
    /// Smallest cache share of o3's cached samples, and their count.
    cache: Option<(f64, usize)>,
    agree: bool,
}

impl Verdicts {
    fn check(&mut self, what: String, r: &Run, t: &Truth) {
        let e = error(r.validated, t.answer, r.granularity);
        self.checked += 1;
        if e.is_some_and(|e| e.abs() <= 1) {
            self.within += 1;
        } else {
            self.misses.push(format!(
                "{what}: found {}, expected {}",
                show_ctx(r.validated),
                show_ctx(t.answer)
            ));
        }
    }

    fn bound(&mut self, r: &Run) {
        self.bound_checked += 1;
        if r.search_probes <= log_bound(r) {
            self.bounded += 1;
        }
    }
}

fn verdicts(v: &Verdicts) -> String {
    let yes = |b: bool| if b { "met" } else { "not met" };
    let show = |xs: &[(String, f64)]| {
        xs.iter()
            .map(|(k, x)| format!("({k}) {x:.2}×"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = format!(
        "### Verdicts\n\n- **Whole run ≤ {TARGET_FLOORS:.1}× the floor on every profile, o3 as shipped: {}** ({}). In the floor o3 estimates itself (its time model, or the proof's own load, fill and decode where less; the simulator adds 2 % noise to its rates), which its budget holds to: {}.\n\
- With `plan.min_budget_s: 600` (a run whose whole plan takes under 10 minutes is not cut): {}.\n\
- The earlier design (every probe filled, no prefix reuse, no budget) on the same profiles: {}.\n",
        yes(v.floors.iter().all(|(_, x)| *x <= TARGET_FLOORS)),
        show(&v.floors),
        show(&v.own_floors),
        show(&v.strict),
        v.before
            .iter()
            .map(|(k, x)| format!("({k}) {x:.1}×"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    out += &format!(
        "- **The maximum within one granule of the truth: {}** ({} of {} runs of o3, o3 with a minimum budget, o3 without a budget, the earlier design and the linear sweep, on every simulated profile).{}\n",
        yes(v.within == v.checked),
        v.within,
        v.checked,
        if v.misses.is_empty() {
            String::new()
        } else {
            format!(" Misses: {}.", v.misses.join("; "))
        }
    );
    out += &format!(
        "- **Search probes within ceil(log2(range/granularity)) + 1: {}** ({} of {} binary runs; most used / bound: {}).\n",
        yes(v.bounded == v.bound_checked),
        v.bounded,
        v.bound_checked,
        v.bound_detail.join(", ")
    );
    match &v.real {
        Some(r) => {
            out += &format!(
                "- **Real server: a cached sample shows cache_n ≥ {:.0} % of its prompt: {}** ({}). **o3's whole run no slower than the earlier design's: {}** (median ratio {:.1} %; per round {}); answers agree: {}.\n",
                CACHE_SHARE * 100.0,
                yes(r.cache.is_some_and(|(s, _)| s >= CACHE_SHARE)),
                r.cache.map_or("none measured".into(), |(s, n)| format!("lowest {:.1} % over {n} samples", s * 100.0)),
                yes(r.median_ratio <= 1.0),
                r.median_ratio * 100.0,
                r.ratios.iter().map(|x| format!("{:.1} %", x * 100.0)).collect::<Vec<_>>().join(", "),
                if r.agree { "yes" } else { "no" },
            );
        }
        None => out += "- Real server: skipped (not installed).\n",
    }
    out
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
    let mut v = Verdicts::default();
    let sim = simulator(&o3, &tmp, &mut v)?;
    let real = real_server(&o3, &tmp, &mut v)?;
    let section = format!(
        "{START}\n\
## optimize: a whole run in floor units\n\n\
`cargo xtask bench optimize`: builds o3 in release, then for each simulated profile \
`o3 optimize --simulate bench/optimize/<profile>.json [--config <fragments>] [--budget none] [--strategy linear|grid] --json --quiet --out target/bench/optimize/<run>`, \
then the real test server (below). Measured on {machine}, {date}; this run took {took:.0} s.\n\n\
**The floor** of a profile is what proving its answer at depth cannot go below: one load, one prompt filled to `prompt.fill` (90 %) of the true answer less the output tokens, and one sample's decode, \
at the simulator's own rates and the fastest batch of the ladder that loads there. A whole run (search, batch ranking, proof of the maximum, the presets' own contexts, concurrency levels, to the presets) is given in floor units, and so is each stage (probe times from the run's journal). \
Simulated times are simulated seconds: loads, and every request at the profile's rates: the marginal prefill rate of a token at depth d is r0 / (1 + d/h) (r0 reduced below the batch knee), decode falls likewise with depth, a filled prefix is reused by the next request of the same stream on the same loaded configuration and lost on reload (o3-user/src/optimize/sim.rs). The simulator is deterministic: one run each.\n\n\
Runs: **o3** as shipped (its default budget: twice the floor, optional work beyond it cut and said); **o3 with `plan.min_budget_s: 600`** (`bench/optimize/{MIN_BUDGET}`: a run whose whole plan takes under 10 minutes is not cut); **o3 with `--budget none`** (everything); **every probe filled** (`bench/optimize/{EVERY_PROBE_FILLED}`, no budget): the probe design before the time model, where search probes fill their context and every validation sample reads its whole prompt; \
**linear** (search upward one granule at a time, o3's stages after it); **grid** (every context of the grid at every batch of the ladder, each validated filled, no early stop: a llama-bench-style sweep). \
Every run has an empty learning store of its own. Found is the validated maximum (`context.validated`); cut is how many items o3's budget cut; predicted at start is o3's own prediction of the whole run before its first probe (from a prior by model size, nothing measured yet).\n\n\
Truth of a simulated server: at the search's first batch b (16 at 27B parameters and above, 32 from 3B, 64 below) with one slot, the largest context that loads is \
floor((capacity − weights − compute_base − compute_per_batch × b) / kv_bytes_per_token), capped by the trained context, and with `flaky_above` or `fill_fails_above` the largest that also passes filled is the smaller; \
the expected answer is the largest multiple of the granularity in the searched range at or below it.\n\n\
{sim}{real}{verdicts}\n{END}\n",
        machine = machine(),
        date = today(),
        took = started.elapsed().as_secs_f64(),
        verdicts = verdicts(&v),
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
