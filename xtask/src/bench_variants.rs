//! `cargo xtask bench variants`: the variant stages (`variants.*`, `--server-bin` twice) on
//! simulated servers whose truth for every variant is computed here from the simulator's
//! published model (bench/optimize/*.json; o3-user/src/optimize/sim.rs), never from o3's
//! output: each variant's largest loading context, its rates at the ranking depth, the variant
//! that must win, and the floor of the answer. Written to docs/benchmarks.md.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::bench::{machine, read_json};
use crate::{build_release, root};

const START: &str = "<!-- bench:variants:start -->";
const END: &str = "<!-- bench:variants:end -->";
/// The target: a whole run with the variant stages on within this many floors.
const TARGET_FLOORS: f64 = 3.0;

/// One simulated case: the server, the configuration fragment and the builds compared.
struct Case {
    key: &'static str,
    label: &'static str,
    file: &'static str,
    config: &'static str,
    bins: &'static [&'static str],
}

const CASES: [Case; 4] = [
    Case {
        key: "kv",
        label: "dense 70B Q4_K_M on a 64 GB Strix Halo: KV cache f16 / q8_0 / q4_0 × flash attention on / off",
        file: "strix-halo-64gib-70b.json",
        config: "variants-kv-fa.yaml",
        bins: &[],
    },
    Case {
        key: "ubatch",
        label: "8B Q4_K_M on a 12 GiB device at batch 2048: micro-batch 2048 / 512",
        file: "default-12gib.json",
        config: "variants-ubatch.yaml",
        bins: &[],
    },
    Case {
        key: "builds",
        label: "Qwen3-30B-A3B on a 128 GB Strix Halo: a Vulkan RADV and a ROCm build of llama-server",
        file: "strix-halo-128gib-30b-a3b-builds.json",
        config: "strix-halo.yaml",
        bins: &["llama-server-vulkan", "llama-server-rocm"],
    },
    Case {
        key: "offload",
        label: "dense 70B Q4_K_M on a 24 GB NVIDIA GPU (it does not fit whole): GPU layers 999 / 44 / 40 / 32 of 80",
        file: "nvidia-24gib-70b-offload.json",
        config: "variants-gpu-layers.yaml",
        bins: &[],
    },
];

/// The simulator's model, read from a profile with the simulator's defaults.
struct Model<'a> {
    m: &'a Value,
    cfg: &'a Value,
}

/// A variant as o3 reports it (its settings in `config`).
struct Variant<'a> {
    v: &'a Value,
}

fn f(v: &Value, key: &str, default: f64) -> f64 {
    v[key].as_f64().unwrap_or(default)
}

/// Bytes of a KV cache type per element (llama.cpp's block sizes).
fn type_bytes(t: Option<&str>) -> f64 {
    match t.unwrap_or("f16") {
        "f32" => 4.0,
        "q8_0" => 34.0 / 32.0,
        "q4_0" | "iq4_nl" => 18.0 / 32.0,
        "q4_1" => 20.0 / 32.0,
        "q5_0" => 22.0 / 32.0,
        "q5_1" => 24.0 / 32.0,
        _ => 2.0,
    }
}

impl Variant<'_> {
    fn c(&self) -> &Value {
        &self.v["config"]
    }
    fn kv(&self, which: &str) -> Option<&str> {
        self.c()[which].as_str()
    }
    fn quantized(&self) -> bool {
        type_bytes(self.kv("cache_type_k")) < 2.0 || type_bytes(self.kv("cache_type_v")) < 2.0
    }
    fn fa_off(&self) -> bool {
        self.c()["flash_attn"].as_str() == Some("off")
    }
    fn bin(&self) -> Option<&str> {
        self.c()["server_bin"].as_str()
    }
}

impl Model<'_> {
    /// The share of the layers on the device (`gpu_layers` of `block_count`).
    fn offloaded(&self, v: &Variant) -> f64 {
        let blocks = f(self.m, "block_count", 0.0);
        match v.c()["gpu_layers"].as_f64() {
            Some(n) if blocks > 0.0 && n >= 0.0 && n < blocks => n / blocks,
            _ => 1.0,
        }
    }
}

impl Model<'_> {
    fn build(&self, v: &Variant) -> Option<&Value> {
        let bin = v.bin()?;
        self.m["builds"]
            .as_array()?
            .iter()
            .find(|b| b["bin"].as_str() == Some(bin))
    }

    /// The search's first batch (by the model's size class).
    fn batch(&self) -> f64 {
        let key = match self.m["parameters"].as_u64().unwrap_or(0) {
            p if p >= 27_000_000_000 => "initial_large",
            p if p < 3_000_000_000 => "initial_small",
            _ => "initial_medium",
        };
        self.cfg["batch"][key].as_f64().unwrap_or(32.0)
    }

    /// The micro-batch a variant computes with at `batch`.
    fn ubatch(&self, v: &Variant, batch: f64) -> f64 {
        v.c()["ubatch"].as_f64().map_or(batch, |u| u.min(batch))
    }

    /// The largest context that loads at `batch`: (capacity − weights − compute buffer −
    /// build) / (KV bytes at the cache types + attention scores with flash attention off).
    fn loads(&self, v: &Variant, batch: f64) -> f64 {
        let m = self.m;
        let ub = self.ubatch(v, batch);
        let on = self.offloaded(v);
        let fixed = (f(m, "weights_bytes", 0.0) * on).round()
            + f(m, "compute_base_bytes", 64.0 * 1048576.0)
            + f(m, "compute_per_batch_bytes", 524288.0) * ub
            + self.build(v).map_or(0.0, |b| f(b, "extra_bytes", 0.0));
        let kv = (f(m, "kv_bytes_per_token", 131072.0)
            * (type_bytes(v.kv("cache_type_k")) + type_bytes(v.kv("cache_type_v")))
            / 4.0
            * on)
            .round();
        let scores = if v.fa_off() {
            f(m, "fa_off_bytes_per_ctx_ubatch", 130.0) * ub
        } else {
            0.0
        };
        let free = f(m, "capacity_bytes", 0.0) - fixed;
        if free <= 0.0 {
            return 0.0;
        }
        (free / (kv + scores))
            .floor()
            .min(f(m, "trained_context", 131072.0))
    }

    /// The answer on the grid: the largest multiple of the granularity at or below `loads`,
    /// within the range searched.
    fn answer(&self, loads: f64) -> Option<u64> {
        let g = self.cfg["search"]["granularity"].as_u64().unwrap_or(1024);
        let hi = self.cfg["search"]["max_context"].as_u64().unwrap_or(131072);
        let lo = self.cfg["search"]["min_context"].as_u64().unwrap_or(2048);
        let top = (loads as u64).min(hi) / g * g;
        (top >= lo.div_ceil(g) * g).then_some(top)
    }

    /// (prefill, decode) factors of a variant: its build, quantized KV, flash attention off,
    /// a micro-batch under the knee.
    fn factors(&self, v: &Variant, batch: f64) -> (f64, f64) {
        let m = self.m;
        let (mut p, mut d) = self.build(v).map_or((1.0, 1.0), |b| {
            (f(b, "prefill_factor", 1.0), f(b, "decode_factor", 1.0))
        });
        if v.quantized() {
            p *= f(m, "kv_quant_prefill_factor", 1023.0 / 1217.0);
            d *= f(m, "kv_quant_decode_factor", 54.6 / 51.0);
        }
        if v.fa_off() {
            p *= f(m, "fa_off_prefill_factor", 1.0 / 1.037);
            d *= f(m, "fa_off_decode_factor", 1.01);
        }
        let on = self.offloaded(v);
        let offload = 1.0 / (on + (1.0 - on) * f(m, "cpu_layer_slowdown", 10.0));
        p *= offload;
        d *= offload;
        if v.c()["ubatch"].is_number() {
            let knee = f(m, "batch_knee", 512.0);
            let share = |n: f64| (n / knee).min(1.0).sqrt();
            p *= share(self.ubatch(v, batch)) / share(batch);
        }
        (p, d)
    }

    /// One request of `tokens` fresh prompt and the configured output at `batch`, s.
    fn request_s(&self, v: &Variant, batch: f64, tokens: f64) -> f64 {
        let m = self.m;
        let (p, d) = self.factors(v, batch);
        let knee = f(m, "batch_knee", 512.0);
        let r0 = f(m, "prefill_tps", 2400.0) * (batch / knee).min(1.0).sqrt() * p;
        let h = f(m, "prefill_half_depth", 24576.0);
        let k = f(m, "decode_half_depth", 65536.0);
        let out = self.cfg["prompt"]["output_tokens"].as_f64().unwrap_or(64.0);
        let fill = (tokens + tokens * tokens / (2.0 * h)) / r0;
        let decode = (out + (out * tokens + out * out / 2.0) / k) / (f(m, "decode_tps", 62.0) * d);
        fill + decode
    }

    /// The floor of the answer `ctx` with variant `v`: one load, one prompt of `prompt.fill`
    /// of it less the output, one sample's decode, at the fastest batch of the ladder that
    /// loads there (as the optimize bench's floor).
    fn floor_s(&self, v: &Variant, ctx: u64) -> f64 {
        let b = &self.cfg["batch"];
        let (scale, max) = (
            b["scale_factor"].as_f64().unwrap_or(2.0),
            b["max_batch"].as_f64().unwrap_or(256.0),
        );
        let mut best = self.batch();
        loop {
            let next = (best * scale).round().min(max);
            if next <= best || self.loads(v, next) < ctx as f64 {
                break;
            }
            best = next;
        }
        let fill = self.cfg["prompt"]["fill"].as_f64().unwrap_or(0.9);
        let out = self.cfg["prompt"]["output_tokens"].as_f64().unwrap_or(64.0);
        let depth = ((ctx as f64 * fill) as u64) as f64 - out;
        f(self.m, "load_ms", 3000.0) / 1000.0 + self.request_s(v, best, depth)
    }
}

/// What one case showed against its truth.
struct Outcome {
    rows: String,
    /// Every measured variant's largest loading context equals the truth.
    maxima_exact: bool,
    /// The winner is the variant that must win, its maximum validated within one granule.
    winner_right: bool,
    floors: f64,
    line: String,
}

fn run_case(o3: &Path, tmp: &Path, c: &Case) -> Result<Outcome> {
    let dir = root().join("bench/optimize");
    let sim = dir.join(c.file);
    let out = tmp.join(c.key);
    let _ = std::fs::remove_dir_all(&out);
    let data = tmp.join(format!("{}.data", c.key));
    let _ = std::fs::remove_dir_all(&data);
    let mut cmd = Command::new(o3);
    cmd.args(["optimize", "--quiet", "--json", "--simulate"])
        .arg(&sim)
        .arg("--config")
        .arg(dir.join(c.config))
        .arg("--out")
        .arg(&out)
        .env("XDG_DATA_HOME", &data);
    for b in c.bins {
        cmd.args(["--server-bin", b]);
    }
    let o = cmd.output().context("running o3 optimize")?;
    if !o.status.success() {
        bail!(
            "o3 optimize ({}) failed: {}",
            c.key,
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let s: Value = serde_json::from_str(
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .unwrap_or(""),
    )?;
    let rf = read_json(&out.join("run.json"))?;
    judge(&s, &rf)
}

/// The case's variants against the truth: each maximum, the winner, the floors.
fn judge(s: &Value, rf: &Value) -> Result<Outcome> {
    let model = Model {
        m: &rf["target"]["simulate"],
        cfg: &rf["config"],
    };
    let vs = s["variants"]
        .as_array()
        .context("the summary lists no variants")?;
    let batch = model.batch();
    let g = s["context"]["granularity"].as_u64().unwrap_or(1024);
    let rank_tokens = vs.iter().find_map(|v| v["rate_tokens"].as_f64());
    // The variant that must win: the longest answer; ties go to the faster request at the
    // ranking depth.
    let truth = |v: &Value| model.answer(model.loads(&Variant { v }, batch));
    let speed = |v: &Value| rank_tokens.map_or(0.0, |t| model.request_s(&Variant { v }, batch, t));
    let must = vs
        .iter()
        .max_by(|a, b| truth(a).cmp(&truth(b)).then(speed(b).total_cmp(&speed(a))))
        .context("no variant")?;
    let mut rows = String::new();
    let mut exact = true;
    for v in vs {
        let t = truth(v);
        let measured = v["max_loads"].as_u64();
        if measured.is_some() && measured != t {
            exact = false;
        }
        rows += &row(&model, v, t, batch, rank_tokens);
    }
    let winner = vs.iter().find(|v| {
        v["roles"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x == "longest"))
    });
    let answer = truth(must);
    let validated = s["context"]["validated"].as_u64();
    let within = match (validated, answer) {
        (Some(a), Some(b)) => a.abs_diff(b) <= g,
        _ => false,
    };
    let winner_right = winner.is_some_and(|w| w["label"] == must["label"]) && within;
    let floor = model.floor_s(&Variant { v: must }, answer.unwrap_or(0));
    let spent = s["simulated_s"].as_f64().unwrap_or(f64::NAN);
    let floors = spent / floor;
    let line = format!(
        "Must win: **{}** (largest context that loads {}); o3 chose {} and validated {}. Whole run {:.1} min of simulated probes = **{floors:.2}×** the floor of {:.1} min ({} probes).",
        must["label"].as_str().unwrap_or("?"),
        answer.map_or("none".into(), |x| x.to_string()),
        winner.and_then(|w| w["label"].as_str()).unwrap_or("none"),
        validated.map_or("none".into(), |x| x.to_string()),
        spent / 60.0,
        floor / 60.0,
        s["probes"]["total"].as_u64().unwrap_or(0),
    );
    Ok(Outcome {
        rows,
        maxima_exact: exact,
        winner_right,
        floors,
        line,
    })
}

/// A variant's row: the truth against what o3 measured, and its role.
fn row(model: &Model, v: &Value, t: Option<u64>, batch: f64, rank_tokens: Option<f64>) -> String {
    let measured = v["max_loads"].as_u64();
    format!(
        "| {} | {} | {} | {} | {} | {} |\n",
        v["label"].as_str().unwrap_or("?"),
        t.map_or("none".into(), |x| x.to_string()),
        measured.map_or("–".into(), |x| x.to_string()),
        rank_tokens
            .filter(|_| t.is_some())
            .map_or("–".into(), |r| format!(
                "{:.1}",
                model.request_s(&Variant { v }, batch, r)
            )),
        v["request_s"]
            .as_f64()
            .map_or("–".into(), |x| format!("{x:.1}")),
        v["roles"]
            .as_array()
            .filter(|r| !r.is_empty())
            .map(|r| r
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "))
            .or_else(|| v["skipped"].as_str().map(str::to_string))
            .unwrap_or_default(),
    )
}

pub fn variants_bench() -> Result<()> {
    let o3 = build_release()?.join("o3");
    let tmp = root().join("target/bench/variants");
    std::fs::create_dir_all(&tmp)?;
    let started = Instant::now();
    let mut body = String::new();
    let (mut exact, mut right, mut within) = (0, 0, 0);
    let mut floors = Vec::new();
    for c in &CASES {
        eprintln!("xtask: bench variants: {}", c.key);
        let o = run_case(&o3, &tmp, c)?;
        exact += usize::from(o.maxima_exact);
        right += usize::from(o.winner_right);
        within += usize::from(o.floors <= TARGET_FLOORS);
        floors.push(format!("({}) {:.2}×", c.key, o.floors));
        body += &format!(
            "### ({}) {}\n\n`bench/optimize/{}`, `--config bench/optimize/{}`{}. {}\n\n| variant | truth: largest that loads (grid) | o3: largest that loads | truth: one request at the ranking depth, s | o3: measured, s | role |\n|---|---|---|---|---|---|\n{}\n",
            c.key,
            c.label,
            c.file,
            c.config,
            c.bins
                .iter()
                .map(|b| format!(" `--server-bin {b}`"))
                .collect::<String>(),
            o.line,
            o.rows
        );
    }
    let n = CASES.len();
    let yes = |k: usize| if k == n { "met" } else { "not met" };
    let section = format!(
        "{START}\n## variants: KV cache type, flash attention, micro-batch and server builds (`cargo xtask bench variants`)\n\n\
Measured on {machine}, {date}; this run took {took:.1} s. Each case is one `o3 optimize --simulate` run with its default budget (three floors while variants are compared: `plan.floor_multiple` 2 + `variants.extra_floors` 1) and the variant stages on. \
The truth is computed by the bench from the profile (the simulator's model): a variant's largest loading context is (capacity − weights × s − compute_base − compute_per_batch × micro-batch − the build's extra bytes) / (KV bytes per token × s × (bytes(K) + bytes(V)) / 4 + with flash attention off 130 × micro-batch), capped by the trained context, on the search's grid, where s is the share of the layers on the device (`gpu_layers` of `block_count`, else 1); \
its rates are the profile's times the build's factors, quantized KV (prefill × 0.84, decode × 1.07), flash attention off (× 1/1.037, × 1.01), a micro-batch under the knee (× √(ub/knee) / √(b/knee)) and layers in system RAM (× 1 / (s + (1 − s) × cpu_layer_slowdown)). \
The variant that must win has the longest answer, ties going to the faster request at the ranking depth. The floor is that of the answer with the winning variant (one load, one prompt of 90 % of it, one decode, at the fastest batch of the ladder that loads there).\n\n\
{body}\
- **Every variant measured found its largest loading context exactly: {}** ({exact} of {n} cases).\n\
- **The variant that must win was chosen and its maximum validated within one granule: {}** ({right} of {n}).\n\
- **Whole run ≤ {TARGET_FLOORS:.0}× the floor with the variant stages on: {}** ({}).\n{END}\n",
        yes(exact),
        yes(right),
        yes(within),
        floors.join(", "),
        machine = machine(),
        date = crate::bench_learn::date(),
        took = started.elapsed().as_secs_f64(),
    );
    crate::bench_learn::write_section(START, END, &section)?;
    eprint!("{section}");
    Ok(())
}
