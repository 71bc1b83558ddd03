//! `o3 predict`: what one configuration is expected to need and do, before it is run: the
//! memory model's estimate term by term, P(success), expected rates, and why.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::anyhow;
use serde::Serialize;

use crate::backend::http::{Blocking, HttpError, Reply};
use crate::backend::{ollama, FlashAttnChoice, ProbeConfig};
use crate::learn::memory::{self, Estimate};
use crate::learn::predict::{Prediction, Predictor};
use crate::learn::running::RunningError;
use crate::learn::store::{self, Store};
use crate::learn::{fingerprint, gguf, ModelShape, Record};
use crate::telemetry::gpu::source::{GpuOptions, GpuSelect, GpuSource};
use crate::telemetry::{Sample, Source};

use super::{CliResult, Roots};

/// Where the model's shape comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShapeFrom {
    /// The GGUF file's header (--model is its path).
    LlamaServer,
    /// A running Ollama server's /api/show (--model is its name).
    Ollama,
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  o3 predict --model model.gguf --ctx 32768 --batch 512\n  o3 predict --backend ollama --model llama3.1:8b --ctx 16384 --capacity-gib 16 --json"
)]
pub struct PredictArgs {
    /// A GGUF file (llama-server) or an Ollama model name.
    #[arg(long)]
    pub model: String,
    /// Where the model's shape is read from (default: llama-server for a .gguf file, else
    /// Ollama, as `o3 probe` and `o3 optimize` choose).
    #[arg(long, value_enum)]
    pub backend: Option<ShapeFrom>,
    /// Ollama's address.
    #[arg(long, default_value = "http://127.0.0.1:11434")]
    pub url: String,
    /// Context length per slot (tokens).
    #[arg(long)]
    pub ctx: u32,
    /// Logical batch size (tokens; llama-server's -b, Ollama's num_batch).
    #[arg(long)]
    pub batch: Option<u32>,
    /// Physical batch size (tokens; llama-server's -ub).
    #[arg(long)]
    pub ubatch: Option<u32>,
    /// Parallel slots (each gets --ctx tokens).
    #[arg(long)]
    pub parallel: Option<u32>,
    /// Layers offloaded to the GPU (-1: all).
    #[arg(long, allow_hyphen_values = true)]
    pub gpu_layers: Option<i32>,
    /// KV cache type of K (f16, q8_0, q4_0, ...).
    #[arg(long, value_name = "TYPE")]
    pub cache_type_k: Option<String>,
    /// KV cache type of V (f16, q8_0, q4_0, ...).
    #[arg(long, value_name = "TYPE")]
    pub cache_type_v: Option<String>,
    /// Flash attention on, off or auto (the server decides, assumed on; true/false mean
    /// on/off).
    #[arg(long, value_enum, value_name = "on|off|auto")]
    pub flash_attn: Option<FlashAttnChoice>,
    /// Prompt tokens the rates are predicted for (default: 90 % of --ctx, o3's probe fill).
    #[arg(long, value_name = "TOKENS")]
    pub depth: Option<u64>,
    /// Memory the configuration may use, in GiB (default: this machine's GPU-usable memory,
    /// else its RAM).
    #[arg(long, value_name = "GIB", allow_negative_numbers = true)]
    pub capacity_gib: Option<f64>,
    /// The results store whose records train the predictor (default: $XDG_DATA_HOME/o3/o3.db
    /// or ~/.local/share/o3/o3.db; none yet: the memory model alone).
    #[arg(long, value_name = "FILE")]
    pub db: Option<PathBuf>,
    /// More training records, as JSON Lines (one record per line, the store's `Record`).
    #[arg(long, value_name = "FILE")]
    pub records: Option<PathBuf>,
    /// Print the prediction as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// What `--json` prints.
#[derive(Debug, Serialize)]
struct Output<'a> {
    schema_version: u32,
    model: &'a str,
    backend: ShapeFrom,
    shape: &'a ModelShape,
    config: &'a ProbeConfig,
    capacity_bytes: Option<u64>,
    /// Where the capacity comes from, in words.
    capacity_source: &'a str,
    host_id: &'a str,
    /// Training records of this model (all hosts).
    records: usize,
    prediction: &'a Prediction,
    /// The last predictions o3 made for this model on this machine during runs, against what
    /// the probes then measured (`None`: none yet).
    running_error: Option<&'a RunningError>,
    /// What the command assumed or could not find.
    notes: &'a [String],
}

fn usage(msg: String) -> (anyhow::Error, i32) {
    (anyhow!(msg), 2)
}

fn failure(msg: String) -> (anyhow::Error, i32) {
    (anyhow!(msg), 1)
}

pub fn run(roots: &Roots, a: PredictArgs) -> CliResult {
    let mut cfg = config(&a)?;
    let capacity_override = capacity_gib(a.capacity_gib)?;
    let mut notes = Vec::new();
    let backend = a.backend.unwrap_or(
        match crate::optimize::target::choose_backend(None, Some(&a.model), false).0 {
            crate::optimize::target::BackendKind::Ollama => ShapeFrom::Ollama,
            _ => ShapeFrom::LlamaServer,
        },
    );
    let (shape, digest) = model_shape(&a, backend)?;
    if let Some(trained) = shape.trained_context.filter(|&t| a.ctx > t) {
        notes.push(format!(
            "--ctx {} is above the model's trained context {trained}: Ollama clamps it, \
             llama.cpp runs it with degraded quality",
            a.ctx
        ));
    }
    let (capacity, capacity_source, has_gpu, place) = capacity_and_place(roots, capacity_override);
    if !has_gpu && cfg.gpu_layers.is_some() {
        notes
            .push("no GPU found: --gpu-layers ignored, everything is counted in system RAM".into());
        cfg.gpu_layers = None;
    }
    let host_id = fingerprint::host(&roots.procfs_root, &roots.sysfs_root, &roots.dev_root).id();
    let model_id = store::model_id(&a.model, &digest);
    let Stored {
        mut records,
        running,
        spans,
    } = store_records(a.db.as_deref(), &model_id, &host_id, &mut notes)?;
    if let Some(p) = &a.records {
        records.extend(read_records(p)?);
    }
    let predictor = trained(&records, &spans, &shape, &host_id, place);
    let depth = a
        .depth
        .unwrap_or_else(|| crate::learn::predict::default_depth(cfg.ctx));
    let prediction = predictor.predict_at(&shape, &cfg, capacity, memory::Fill::Full, depth);
    if a.json {
        let out = Output {
            schema_version: 1,
            model: &a.model,
            backend,
            shape: &shape,
            config: &cfg,
            capacity_bytes: capacity,
            capacity_source: &capacity_source,
            host_id: &host_id,
            records: predictor.records(),
            prediction: &prediction,
            running_error: running.as_ref(),
            notes: &notes,
        };
        super::stdout::line(serde_json::to_string(&out).expect("prediction serialises"))?;
    } else {
        super::stdout::print(&render(
            &a.model,
            &cfg,
            &capacity_source,
            &prediction,
            running.as_ref(),
            &notes,
        ))?;
    }
    Ok(0)
}

/// `--capacity-gib` in bytes, checked.
fn capacity_gib(g: Option<f64>) -> Result<Option<u64>, (anyhow::Error, i32)> {
    match g {
        None => Ok(None),
        Some(g) if g.is_finite() && g > 0.0 && g < 1e9 => {
            Ok(Some((g * (1u64 << 30) as f64).round() as u64))
        }
        Some(g) => Err(usage(format!(
            "--capacity-gib {g} is not a memory size: give a positive number of GiB"
        ))),
    }
}

/// The model's shape and its digest (the store's model id): from the GGUF header, or from a
/// running Ollama.
fn model_shape(
    a: &PredictArgs,
    backend: ShapeFrom,
) -> Result<(ModelShape, String), (anyhow::Error, i32)> {
    match backend {
        ShapeFrom::LlamaServer => {
            let path = Path::new(&a.model);
            let info = gguf::read(path).map_err(|e| failure(e.to_string()))?;
            let digest = fingerprint::model_digest(path)
                .map_err(|e| failure(format!("cannot read model file {}: {e}", path.display())))?;
            Ok((ModelShape::from_gguf(&info), digest))
        }
        ShapeFrom::Ollama => ollama_shape(&a.url, &a.model),
    }
}

/// The predictor of `records`, with the time model of this host's `spans` when there are any.
fn trained(
    records: &[Record],
    spans: &[crate::timing::Obs],
    shape: &ModelShape,
    host_id: &str,
    place: memory::Place,
) -> Predictor {
    let p = Predictor::train(records, Some(host_id), place);
    if spans.is_empty() {
        return p;
    }
    let mut m = crate::timing::TimeModel::new(crate::timing::Prior::from_size(
        shape.parameters,
        shape.weights_bytes,
    ));
    m.observe(spans);
    p.with_time_model(m)
}

/// The configuration from the flags, checked: one line naming a bad value.
fn config(a: &PredictArgs) -> Result<ProbeConfig, (anyhow::Error, i32)> {
    if a.ctx == 0 {
        return Err(usage(
            "--ctx 0: the context must be at least 1 token".into(),
        ));
    }
    for (flag, v) in [
        ("--batch", a.batch),
        ("--ubatch", a.ubatch),
        ("--parallel", a.parallel),
    ] {
        if v == Some(0) {
            return Err(usage(format!("{flag} 0: give at least 1")));
        }
    }
    if let Some(n) = a.gpu_layers.filter(|&n| n < -1) {
        return Err(usage(format!(
            "--gpu-layers {n}: give a layer count, or -1 for all"
        )));
    }
    for (flag, t) in [
        ("--cache-type-k", &a.cache_type_k),
        ("--cache-type-v", &a.cache_type_v),
    ] {
        if let Some(t) = t
            .as_deref()
            .filter(|t| memory::cache_type_bytes(t).is_none())
        {
            return Err(usage(format!(
                "{flag} {t} is not a KV cache type (known: {})",
                memory::CACHE_TYPES
            )));
        }
    }
    Ok(ProbeConfig {
        ctx: a.ctx,
        batch: a.batch,
        ubatch: a.ubatch,
        parallel: a.parallel,
        gpu_layers: a.gpu_layers,
        flash_attn: a.flash_attn.and_then(FlashAttnChoice::setting),
        cache_type_k: a.cache_type_k.clone(),
        cache_type_v: a.cache_type_v.clone(),
        threads: None,
        server_bin: None,
    })
}

/// The capacity (given, else this machine's), where it comes from, whether GPU layers mean
/// anything, and where peaks are measured: this machine's GPU when it has one, else RAM (also
/// with `--capacity-gib`, which sizes the memory but does not move it).
fn capacity_and_place(
    roots: &Roots,
    given: Option<u64>,
) -> (Option<u64>, String, bool, memory::Place) {
    let machine = machine_capacity(roots);
    let place = if machine.2 {
        memory::Place::Gpu
    } else {
        memory::Place::Ram
    };
    match given {
        Some(c) => (Some(c), "--capacity-gib".to_string(), true, place),
        None => (machine.0, machine.1, machine.2, place),
    }
}

/// This machine's capacity: the GPUs' usable memory (GTT on an APU, VRAM on a discrete card;
/// summed over GPUs), else MemTotal. Returns (bytes, source in words, whether a GPU was found).
fn machine_capacity(roots: &Roots) -> (Option<u64>, String, bool) {
    let (mut gpus, _warnings) = GpuSource::open(GpuOptions {
        select: GpuSelect::Auto,
        sysfs_root: roots.sysfs_root.clone(),
        procfs_root: roots.procfs_root.clone(),
        dev_root: roots.dev_root.clone(),
        sensor_every: Duration::from_secs(3600),
        process_every: Duration::from_secs(3600),
    });
    if !gpus.is_empty() {
        let infos = gpus.infos();
        let mut sample = Sample::default();
        gpus.sample(1, 0, &mut sample, &mut Vec::new());
        let mut total = 0u64;
        let mut names = Vec::new();
        // Samples come in the order of `infos()` (matched by position: two devices can share
        // an index when AMD card numbers do not start at 0 and NVML adds a card).
        for (g, info) in sample.gpus.iter().zip(&infos) {
            if let Some(t) = g.usable_total_bytes {
                total = total.saturating_add(t);
                names.push(format!(
                    "GPU {} ({}: {})",
                    g.index,
                    info.name,
                    if info.apu { "GTT" } else { "VRAM" }
                ));
            }
        }
        if total > 0 {
            return (Some(total), names.join(" + "), true);
        }
    }
    let ram = std::fs::read_to_string(roots.procfs_root.join("meminfo"))
        .ok()
        .and_then(|t| crate::telemetry::procfs::parse_meminfo(&t).ok())
        .map(|m| m.total);
    match ram {
        Some(r) => (Some(r), "system RAM (MemTotal; no GPU found)".into(), false),
        None => (
            None,
            "unknown (no GPU found and no MemTotal; give --capacity-gib)".into(),
            false,
        ),
    }
}

/// How many of the last predictions the running error sums up.
const RUNNING_ERROR_OF: usize = 20;

/// Probes of this host and model whose spans of work the time model is fitted to, at most
/// (the newest), as `o3 optimize` seeds its own.
const TIME_MODEL_PROBES: u32 = 64;

/// What the store holds for a prediction.
#[derive(Default)]
struct Stored {
    /// This model's records (all hosts).
    records: Vec<Record>,
    /// The last predictions runs made for it on this host, against what followed.
    running: Option<RunningError>,
    /// This host's spans of work with this model (the time model's input).
    spans: Vec<crate::timing::Obs>,
}

/// What the store holds for this model and host. A missing store is nothing.
fn store_records(
    db: Option<&Path>,
    model_id: &str,
    host_id: &str,
    notes: &mut Vec<String>,
) -> Result<Stored, (anyhow::Error, i32)> {
    let path = db.map_or_else(store::default_path, Path::to_path_buf);
    if !path.exists() {
        notes.push(format!(
            "no results store at {}: no measurements to learn from yet",
            path.display()
        ));
        return Ok(Stored::default());
    }
    let s = Store::open(&path).map_err(|e| failure(e.to_string()))?;
    let records = s
        .records(None, Some(model_id))
        .map_err(|e| failure(e.to_string()))?;
    let checked = s
        .checked_predictions(Some(host_id), Some(model_id), None, RUNNING_ERROR_OF)
        .map_err(|e| failure(e.to_string()))?;
    let spans = s
        .timing(host_id, model_id, TIME_MODEL_PROBES)
        .map_err(|e| failure(e.to_string()))?;
    Ok(Stored {
        records,
        running: RunningError::of(&checked),
        spans,
    })
}

/// Records from a JSON Lines file; blank lines are skipped.
fn read_records(path: &Path) -> Result<Vec<Record>, (anyhow::Error, i32)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("cannot read --records {}: {e}", path.display())))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str::<Record>(l).map_err(|e| {
                usage(format!(
                    "{} line {}: not a record ({e})",
                    path.display(),
                    i + 1
                ))
            })
        })
        .collect()
}

/// `POST /api/show` and `GET /api/tags` of a running Ollama: the model's shape, and its digest
/// for the store's model id.
fn ollama_shape(url: &str, model: &str) -> Result<(ModelShape, String), (anyhow::Error, i32)> {
    let base = url.trim_end_matches('/');
    let http =
        Blocking::new().map_err(|e| failure(format!("cannot start the HTTP client: {e}")))?;
    let answer = |reply: Result<Reply, HttpError>, what: &str| match reply {
        Ok(r) if r.is_success() => Ok(r.body),
        Ok(r) => Err(format!(
            "Ollama at {base} ({what}) answered {}: {}",
            r.status,
            ollama::error_text(r.status, &r.body)
        )),
        Err(e @ HttpError::Body { .. }) => Err(format!("Ollama at {base} ({what}): {e}")),
        Err(e) => Err(format!("cannot reach Ollama at {base} ({what}): {e}")),
    };
    let wait = Duration::from_secs(10);
    let show = answer(
        http.post_json(
            &format!("{base}/api/show"),
            &serde_json::json!({ "model": model }),
            wait,
        ),
        "/api/show",
    )
    .map_err(failure)?;
    let info = ollama::parse_show(&show).map_err(|e| failure(e.to_string()))?;
    // The weights' size (the model blob's) is not in /api/show.
    let size = answer(http.get(&format!("{base}/api/tags"), wait), "/api/tags")
        .ok()
        .and_then(|body| crate::backend::ollama::tag_size(&body, model));
    let mut shape = ModelShape::from_ollama(&info);
    shape.weights_bytes = size;
    // The model id `o3 optimize` stores Ollama models under.
    Ok((shape, format!("ollama:{model}")))
}

/// `name:latest` for a name without a tag (the tag follows the last `/`).
fn gib(bytes: u64) -> String {
    memory::gib(bytes as f64)
}

fn render(
    model: &str,
    cfg: &ProbeConfig,
    capacity_source: &str,
    p: &Prediction,
    running: Option<&RunningError>,
    notes: &[String],
) -> String {
    let e: &Estimate = &p.estimate;
    let opt = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
    let mut out = format!(
        "{model}: ctx {} batch {} ubatch {} slots {}\n",
        cfg.ctx,
        opt(cfg.batch),
        opt(cfg.ubatch),
        cfg.parallel.unwrap_or(1)
    );
    out += &match (e.capacity_bytes, e.load_ratio, e.fits) {
        (Some(c), Some(r), Some(fits)) => format!(
            "estimate  {} of {} ({capacity_source}): load {r:.3}, {}\n",
            gib(e.total_bytes),
            gib(c),
            if fits { "fits" } else { "does not fit" }
        ),
        _ => format!(
            "estimate  {} (capacity {capacity_source})\n",
            gib(e.total_bytes)
        ),
    };
    out += &format!(
        "  range     {} – {} ({})\n",
        gib(e.low_bytes),
        gib(e.high_bytes),
        if e.fitted_points > 0 {
            format!(
                "what the law fitted to {} measured peak(s) missed on points it did not see",
                e.fitted_points
            )
        } else {
            "the prior's bounds: no law fitted yet".to_string()
        }
    );
    for (name, v) in [
        ("weights", e.weights_bytes),
        ("KV cache", e.kv_bytes),
        ("compute", e.compute_bytes),
        ("overhead", e.overhead_bytes),
    ] {
        out += &format!("  {name:<9} {:>11}\n", gib(v));
    }
    out += &format!("P(success) {:.3}  ({})\n", p.p_success, p.basis);
    let rate = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.1}"));
    out += &format!(
        "rates     prefill {} tok/s, decode {} tok/s at a {}-token prompt{}\n",
        rate(p.prefill_tokens_per_s),
        rate(p.decode_tokens_per_s),
        p.rates_depth_tokens,
        if p.decode_tokens_per_s.is_none() && p.prefill_tokens_per_s.is_none() {
            " (fewer than 3 successful single-stream measurements of this model to learn them from)"
        } else {
            ""
        }
    );
    out += &format!(
        "record    {}\n",
        running.map_or_else(
            || "no earlier prediction of this model on this machine to check".to_string(),
            |r| r.summary.clone()
        )
    );
    out += "why:\n";
    for r in &p.reasons {
        out += &format!("  - {r}\n");
    }
    out += "assumed:\n";
    for n in e.notes.iter().chain(notes) {
        out += &format!("  - {n}\n");
    }
    out
}
