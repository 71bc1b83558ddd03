//! `cargo xtask bench learn`: probes learning saves, on simulated machines and models whose
//! truth is known (o3-user/src/optimize/sim.rs), written to docs/benchmarks.md.
//!
//! Per scenario, against the same truth: o3 without learning (`learning.predict`,
//! `reuse_learned_configs` and `store_results` off), then with learning on one store: a first
//! run (memory model only), a second run on the same machine (verification of what the first
//! learned), and a run on a different machine (more memory) predicted from the first two.
//! Then `o3 accuracy --json` on that store: how well the memory model, the rates and P(success)
//! predict the store's own records (each held out of its own prediction).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::bench::machine;
use crate::{build_release, root};

const START: &str = "<!-- bench:learn:start -->";
const END: &str = "<!-- bench:learn:end -->";

/// Simulated models (bench/optimize/*.json): file, description.
const MODELS: &[(&str, &str)] = &[
    ("default-12gib.json", "8B Q4_K_M, 12 GiB → 18 GiB device"),
    ("24gib-14b.json", "14B Q4_K_M, 24 GiB → 36 GiB device"),
    ("small-6gib-3b.json", "3B Q4_K_M, 6 GiB → 9 GiB device"),
    (
        "fill-fails-12gib.json",
        "8B Q4_K_M, 12 GiB → 18 GiB device, prompts fail filled above 56000 tokens",
    ),
];

struct Out {
    total: u64,
    search: u64,
    validated: Option<u64>,
    skipped: Vec<Value>,
    reused: usize,
}

fn run(
    o3: &Path,
    sim: &Path,
    dir: &Path,
    name: &str,
    db: &Path,
    cfg: Option<&Path>,
) -> Result<Out> {
    let out_dir = dir.join(name);
    let _ = std::fs::remove_dir_all(&out_dir);
    let mut c = Command::new(o3);
    c.args(["optimize", "--quiet", "--json", "--simulate"])
        .arg(sim)
        .arg("--out")
        .arg(&out_dir)
        .arg("--db")
        .arg(db);
    if let Some(f) = cfg {
        c.arg("--config").arg(f);
    }
    let o = c.output().context("running o3 optimize")?;
    if !o.status.success() {
        bail!(
            "o3 optimize {name} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let text = String::from_utf8_lossy(&o.stdout);
    let v: Value = serde_json::from_str(text.lines().last().unwrap_or("{}"))?;
    Ok(Out {
        total: v["probes"]["total"].as_u64().unwrap_or(0),
        search: v["context"]["probes"]
            .as_array()
            .map_or(0, |a| a.len() as u64),
        validated: v["context"]["validated"].as_u64(),
        skipped: v["skipped"].as_array().cloned().unwrap_or_default(),
        reused: v["reused"].as_array().map_or(0, Vec::len),
    })
}

fn u(v: &Value, k: &str, default: u64) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(default)
}

/// The simulator's truth: the largest context on the 1024 grid that loads at `batch` with one
/// slot and passes filled (below `fill_fails_above`), and whether a configuration fits at all.
struct Truth {
    cap: u64,
    weights: u64,
    kv: u64,
    base: u64,
    per_batch: u64,
    trained: u64,
    /// Contexts above this fail filled, whatever the memory (`fill_fails_above`).
    fails_above: Option<u64>,
}

impl Truth {
    fn of(v: &Value) -> Truth {
        Truth {
            cap: u(v, "capacity_bytes", 12 << 30),
            weights: u(v, "weights_bytes", 4_920_000_000),
            kv: u(v, "kv_bytes_per_token", 131_072),
            base: u(v, "compute_base_bytes", 64 << 20),
            per_batch: u(v, "compute_per_batch_bytes", 512 << 10),
            trained: u(v, "trained_context", 131_072),
            fails_above: v.get("fill_fails_above").and_then(Value::as_u64),
        }
    }
    fn expected(&self, batch: u64) -> u64 {
        let free = self.cap - self.weights - self.base - self.per_batch * batch;
        let stable = self.fails_above.unwrap_or(u64::MAX);
        (free / self.kv).min(self.trained).min(stable) / 1024 * 1024
    }
    fn fits(&self, c: &Value) -> bool {
        let ctx = c["ctx"].as_u64().unwrap_or(0);
        let slots = c["parallel"].as_u64().unwrap_or(1);
        let b = c["batch"].as_u64().unwrap_or(512);
        self.weights + self.kv * ctx * slots + self.base + self.per_batch * b <= self.cap
            && ctx <= self.fails_above.unwrap_or(u64::MAX)
    }
}

fn initial_batch(v: &Value) -> u64 {
    match u(v, "parameters", 8_030_261_248) {
        p if p >= 27_000_000_000 => 16,
        p if p >= 3_000_000_000 => 32,
        _ => 64,
    }
}

pub fn learn_bench() -> Result<()> {
    let o3 = build_release()?.join("o3");
    let dir = root().join("target/bench/learn");
    std::fs::create_dir_all(&dir)?;
    let started = Instant::now();
    let off = no_learning_config(&dir)?;
    let mut rows = String::new();
    let mut tally = Tally::default();
    for (file, what) in MODELS {
        let m = Machines::write(&dir, file)?;
        let runs = Runs::of(&o3, &dir, file, &m, &off)?;
        tally.add(&m, &runs);
        rows += &runs.row(what, &m);
    }
    let section = section_text(&rows, &tally, started.elapsed().as_secs_f64());
    write_section(START, END, &section)?;
    eprint!("{section}");
    if tally.wrong > 0 || tally.skipped_optimum > 0 {
        bail!("learning changed an answer or skipped a configuration that fits");
    }
    Ok(())
}

/// Writes the configuration that turns learning off and returns its path.
fn no_learning_config(dir: &Path) -> Result<PathBuf> {
    let off = dir.join("no-learning.yaml");
    std::fs::write(
        &off,
        "learning:\n  store_results: false\n  reuse_learned_configs: false\n  predict: false\n",
    )?;
    Ok(off)
}

/// One scenario's two simulated machines (B has 50 % more memory), written to files, and
/// their truths.
struct Machines {
    a: PathBuf,
    b: PathBuf,
    ta: Truth,
    tb: Truth,
    batch: u64,
}

impl Machines {
    fn write(dir: &Path, file: &str) -> Result<Machines> {
        let src: Value = crate::bench::read_json(&root().join("bench/optimize").join(file))?;
        let mut bigger = src.clone();
        let cap = u(&src, "capacity_bytes", 12 << 30);
        bigger["capacity_bytes"] = Value::from(cap + cap / 2);
        let a = dir.join(format!("{file}.a.json"));
        let b = dir.join(format!("{file}.b.json"));
        std::fs::write(&a, src.to_string())?;
        std::fs::write(&b, bigger.to_string())?;
        Ok(Machines {
            a,
            b,
            ta: Truth::of(&src),
            tb: Truth::of(&bigger),
            batch: initial_batch(&src),
        })
    }
}

/// One scenario's five runs: without learning on A and B, then with one store: A, A again, B.
struct Runs {
    base_a: Out,
    base_b: Out,
    first: Out,
    second: Out,
    other: Out,
    /// The store's model in `o3 accuracy --json` after the three runs.
    accuracy: Value,
}

/// `o3 accuracy --json --db DB`: the figures of the store's (one) model.
fn accuracy(o3: &Path, db: &Path) -> Result<Value> {
    let o = Command::new(o3)
        .args(["accuracy", "--json", "--db"])
        .arg(db)
        .output()
        .context("running o3 accuracy")?;
    if !o.status.success() {
        bail!(
            "o3 accuracy --db {} failed: {}",
            db.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&o.stdout).context("reading o3 accuracy --json")?;
    Ok(v["models"][0].clone())
}

/// A percentage cell ("1.1 %", "+4.1 %" signed; "-" when absent).
fn pct(v: &Value, signed: bool) -> String {
    match v.as_f64() {
        Some(x) if signed && (x * 10.0).round() == 0.0 => "0.0 %".into(),
        Some(x) if signed => format!("{x:+.1} %"),
        Some(x) => format!("{x:.1} %"),
        None => "-".into(),
    }
}

/// The scenario's accuracy cells: memory on measured points and on held-out contexts
/// (median / worst), rates (prefill / decode median), Brier (predictor / memory model alone).
fn accuracy_cells(a: &Value) -> String {
    let m = &a["memory"];
    let r = &a["rates"];
    let brier = |k: &str| {
        a["success"][k]
            .as_f64()
            .map_or("-".into(), |b| format!("{b:.3}"))
    };
    format!(
        "{} / {} | {} / {} | {} / {} | {} / {}",
        pct(&m["fitted_median_abs_error_pct"], false),
        pct(&m["fitted_worst_error_pct"], true),
        pct(&m["held_out_median_abs_error_pct"], false),
        pct(&m["held_out_worst_error_pct"], true),
        pct(&r["prefill_median_abs_error_pct"], false),
        pct(&r["decode_median_abs_error_pct"], false),
        brier("brier_predictor"),
        brier("brier_memory_model"),
    )
}

impl Runs {
    fn of(o3: &Path, dir: &Path, file: &str, m: &Machines, off: &Path) -> Result<Runs> {
        let db = dir.join(format!("{file}.db"));
        let _ = std::fs::remove_file(&db);
        let none_db = dir.join(format!("{file}.none.db"));
        let base_a = run(o3, &m.a, dir, &format!("{file}-off-a"), &none_db, Some(off))?;
        let base_b = run(o3, &m.b, dir, &format!("{file}-off-b"), &none_db, Some(off))?;
        let first = run(o3, &m.a, dir, &format!("{file}-first"), &db, None)?;
        let second = run(o3, &m.a, dir, &format!("{file}-second"), &db, None)?;
        let other = run(o3, &m.b, dir, &format!("{file}-other"), &db, None)?;
        Ok(Runs {
            base_a,
            base_b,
            first,
            second,
            other,
            accuracy: accuracy(o3, &db)?,
        })
    }

    /// The scenario's row of the table.
    fn row(&self, what: &str, m: &Machines) -> String {
        let Runs {
            base_a,
            base_b,
            first,
            second,
            other,
            accuracy: acc,
        } = self;
        let show = |o: &Out| format!("{} ({})", o.total, o.search);
        let saved = format!(
            "{} / {} / {}",
            base_a.total as i64 - first.total as i64,
            base_a.total as i64 - second.total as i64,
            base_b.total as i64 - other.total as i64
        );
        format!(
            "| {what} | {} / {} | {} / {} | {} | {} | {} (reused {}) | {} | {} ({} skipped) | {} | {} |\n",
            m.ta.expected(m.batch),
            m.tb.expected(m.batch),
            first.validated.map_or("-".into(), |v| v.to_string()),
            other.validated.map_or("-".into(), |v| v.to_string()),
            show(base_a),
            show(first),
            show(second),
            second.reused,
            show(base_b),
            show(other),
            other.skipped.len(),
            saved,
            accuracy_cells(acc),
        )
    }
}

/// Brier scores closer than this are a tie (the JSON's three decimals).
const BRIER_TIE: f64 = 0.0005;

/// What the scenarios add up to against the targets.
#[derive(Default)]
struct Tally {
    worst_second: u64,
    skipped_optimum: usize,
    wrong: usize,
    skips_total: usize,
    /// The largest held-out memory error in size over the scenarios (percent), if any.
    worst_held_out: Option<f64>,
    /// Scenarios with both Brier scores, and of them those where the predictor's is lower, and
    /// higher, by more than [`BRIER_TIE`].
    briers: usize,
    brier_better: usize,
    brier_worse: usize,
    /// Scenarios whose failures are not all memory's (prompts failing filled), and of them those where
    /// the predictor's Brier score is the lower.
    not_memory: usize,
    not_memory_better: usize,
}

impl Tally {
    fn add(&mut self, m: &Machines, r: &Runs) {
        self.worst_second = self.worst_second.max(r.second.search);
        for (o, t) in [
            (&r.first, &m.ta),
            (&r.second, &m.ta),
            (&r.other, &m.tb),
            (&r.base_a, &m.ta),
            (&r.base_b, &m.tb),
        ] {
            if o.validated != Some(t.expected(m.batch)) {
                self.wrong += 1;
            }
        }
        for (o, t) in [(&r.first, &m.ta), (&r.second, &m.ta), (&r.other, &m.tb)] {
            self.skips_total += o.skipped.len();
            self.skipped_optimum += o.skipped.iter().filter(|s| t.fits(&s["config"])).count();
        }
        if let Some(w) = r.accuracy["memory"]["held_out_worst_error_pct"].as_f64() {
            let w = w.abs();
            self.worst_held_out = Some(self.worst_held_out.map_or(w, |o| o.max(w)));
        }
        let s = &r.accuracy["success"];
        if let (Some(p), Some(mem)) = (
            s["brier_predictor"].as_f64(),
            s["brier_memory_model"].as_f64(),
        ) {
            let better = p < mem - BRIER_TIE;
            self.briers += 1;
            self.brier_better += usize::from(better);
            self.brier_worse += usize::from(p > mem + BRIER_TIE);
            if m.ta.fails_above.is_some() {
                self.not_memory += 1;
                self.not_memory_better += usize::from(better);
            }
        }
    }
}

/// The section for docs/benchmarks.md, between its markers.
fn section_text(rows: &str, tally: &Tally, took_s: f64) -> String {
    format!(
        "{START}\n## learning: probes saved (`cargo xtask bench learn`)\n\n\
Measured on {machine}, {date}; this run took {took:.1} s. Simulated models and machines \
(`o3 optimize --simulate`, truths from the simulator's memory model: the largest context on the \
1024-token grid that loads at the initial batch with one slot). Each scenario: o3 with learning \
off (`learning.*: false`) on machine A and on machine B (50 % more memory), then with learning on \
one store: a first run on A (the memory model alone picks the first probe), a second run on A \
(verifies what the first learned), a run on B (nothing to reuse; the predictor trained on A's \
probes picks the first probe and skips configurations under P = 0.05). Cells: probes in total \
(context-search probes). The last four columns are `o3 accuracy` on the store after the three \
runs, each record predicted by what the others teach: the memory model's relative error on the \
measured peaks (law fitted to all; median of sizes / worst, signed: + over), with every probe of \
one context held out of the fit (median / worst), the rates' median error (prefill / decode; \
predictor trained without the record) and the Brier score of P(success) (0 exact, 0.25 a coin; \
the predictor / the memory model alone).\n\n\
| model, machines | truth A / B | found A / B | A, no learning | A, first | A, second | B, no learning | B, predicted | probes saved vs no learning (A first / A second / B) | memory error, measured peaks | memory error, context held out | rate error, prefill / decode | Brier, predictor / memory model |\n\
|---|---|---|---|---|---|---|---|---|---|---|---|---|\n{rows}\n\
- Second run on the same machine: at most {worst_second} context-search probes (target ≤ 3): {second_ok}.\n\
- Answers against the truth: {wrong_txt}.\n\
- Configurations the predictor skipped: {skips_total}; of them would have fit: {skipped_optimum} \
(target: never skip one that fits, in particular the optimum): {skip_ok}.\n\
- Memory error with a context held out: at most {held_txt} in size over the scenarios (target \
≤ 5 %): {held_ok}.\n\
- Brier score of the predictor against the memory model's alone: lower in {brier_better}, \
higher in {brier_worse}, tied (within 0.0005) in the rest of {briers} scenarios. Where the memory \
law is the whole truth (every scenario but the last) the memory model alone is already \
exact and the cross-validated blend gives it all the weight; where requests fail for reasons \
memory does not see, the trees must add what it misses (target: never higher, lower where \
failures are not memory's): {brier_ok}.\n{END}\n",
        worst_second = tally.worst_second,
        skips_total = tally.skips_total,
        skipped_optimum = tally.skipped_optimum,
        machine = machine(),
        date = date(),
        took = took_s,
        second_ok = if tally.worst_second <= 3 { "met" } else { "not met" },
        wrong_txt = if tally.wrong == 0 {
            "every run exact".to_string()
        } else {
            format!("{} runs differ", tally.wrong)
        },
        skip_ok = if tally.skipped_optimum == 0 { "met" } else { "not met" },
        held_txt = tally
            .worst_held_out
            .map_or("-".into(), |w| format!("{w:.1} %")),
        held_ok = if tally.worst_held_out.is_some_and(|w| w <= 5.0) {
            "met"
        } else {
            "not met"
        },
        briers = tally.briers,
        brier_better = tally.brier_better,
        brier_worse = tally.brier_worse,
        brier_ok = if tally.brier_worse == 0
            && tally.not_memory > 0
            && tally.not_memory_better == tally.not_memory
        {
            "met"
        } else {
            "not met"
        },
    )
}

pub(crate) fn date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Writes `section` between the markers `start` and `end` of docs/benchmarks.md (replacing
/// what was there, else at the end).
pub(crate) fn write_section(start: &str, end: &str, section: &str) -> Result<()> {
    let path: PathBuf = root().join("docs/benchmarks.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let new = match (old.find(start), old.find(end)) {
        (Some(a), Some(b)) if a < b => {
            let mut end = b + end.len();
            if old[end..].starts_with('\n') {
                end += 1;
            }
            format!("{}{section}{}", &old[..a], &old[end..])
        }
        _ => format!(
            "{}\n{section}",
            old.trim_end_matches('\n').to_string() + "\n"
        ),
    };
    std::fs::write(&path, new)?;
    eprintln!("xtask: wrote {}", path.display());
    Ok(())
}
