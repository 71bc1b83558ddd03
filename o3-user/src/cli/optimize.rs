//! `o3 optimize`: search a server's configurations, validate them, choose presets, and write
//! the run directory (journal, summary, presets, artefacts). Resumable with `--resume DIR`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::backend::ProbeConfig;
use crate::config::{self, Config};
use crate::learn::fingerprint::Host;
use crate::learn::predict::Predictor;
use crate::learn::store::Store;
use crate::learn::ModelShape;
use crate::optimize::journal::{Journal, Journaled};
use crate::optimize::learned;
use crate::optimize::live::Live;
use crate::optimize::prober::{ProbeOutcome, ProbeRequest, Prober};
use crate::optimize::prune::{self, Chance, Pruned};
use crate::optimize::search::{self, Eta, Inputs, Observer, Report};
use crate::optimize::sim::{Sim, SimModel};
use crate::optimize::{artefacts, heat, plan, presets};
use crate::probe::BackendSpec;

use super::probe::{backend_spec, BackendArg, BackendFlags};
use super::{CliResult, Roots};

pub const SCHEMA_VERSION: u32 = 2;

/// `--budget`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BudgetArg {
    Auto,
    None,
    Seconds(f64),
}

fn parse_budget(s: &str) -> Result<BudgetArg, String> {
    match s {
        "auto" => Ok(BudgetArg::Auto),
        "none" => Ok(BudgetArg::None),
        _ => crate::util::duration::parse_in_range(
            s,
            std::time::Duration::from_secs(60),
            std::time::Duration::from_secs(365 * 86_400),
        )
        .map(|d| BudgetArg::Seconds(d.as_secs_f64()))
        .map_err(|e| format!("{e} (or `auto`, `none`)")),
    }
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    o3 optimize --backend ollama --model qwen3:30b-a3b\n  \
    o3 optimize --backend llama-server --server-bin ~/llama.cpp/build/bin/llama-server \\\n    \
      --model ~/models/Qwen3-30B-A3B-Q4_K_M.gguf --gpu-layers 999 --flash-attn true\n  \
    o3 optimize --resume ~/.local/share/o3/runs/<run>")]
pub struct OptimizeArgs {
    /// The server to optimize.
    #[arg(long, value_enum, default_value = "ollama")]
    pub backend: BackendArg,
    /// Model name (Ollama) or GGUF path (llama-server's -m, a template's {model}).
    #[arg(long, required_unless_present_any = ["resume", "simulate"])]
    pub model: Option<String>,
    /// Ollama's address.
    #[arg(long, default_value = "http://127.0.0.1:11434")]
    pub url: String,
    /// Start Ollama with this command for each configuration (words separated by spaces, e.g.
    /// "ollama serve") on a free port, with the environment the configuration needs
    /// (OLLAMA_NUM_PARALLEL for concurrency levels, flash attention, KV cache type); without
    /// it the server at --url is used and its slots stay as they are.
    #[arg(long, value_name = "CMD")]
    pub ollama_serve: Option<String>,
    /// The llama-server binary.
    #[arg(long, value_name = "PATH", default_value = "llama-server")]
    pub server_bin: String,
    /// Command line that starts an OpenAI-compatible server (see `o3 probe --help`).
    #[arg(long, value_name = "TEMPLATE")]
    pub launch: Option<String>,
    /// Path polled until the server answers 200 (--backend openai).
    #[arg(long, default_value = "/v1/models")]
    pub ready: String,
    /// Tokenizer endpoint (--backend openai); "none" to estimate.
    #[arg(long, default_value = "/extras/tokenize")]
    pub tokenize: String,
    /// Configuration file (`o3 config default` prints the documented default).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Run directory (default: $XDG_DATA_HOME/o3/runs/<model>-<time>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue the run in DIR: finished probes are not repeated.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["out", "config", "model"])]
    pub resume: Option<PathBuf>,
    /// Layers on the GPU (fixed for the whole search).
    #[arg(long, allow_hyphen_values = true)]
    pub gpu_layers: Option<i32>,
    /// Flash attention on or off (true, false; fixed for the whole search).
    #[arg(long)]
    pub flash_attn: Option<bool>,
    /// KV cache type of K (f16, q8_0, q4_0, ...; fixed for the whole search).
    #[arg(long)]
    pub cache_type_k: Option<String>,
    /// KV cache type of V (f16, q8_0, q4_0, ...; fixed for the whole search).
    #[arg(long)]
    pub cache_type_v: Option<String>,
    /// CPU threads the server uses (fixed for the whole search).
    #[arg(long)]
    pub threads: Option<u32>,
    /// The results database (default: learning.db, else $XDG_DATA_HOME/o3/o3.db).
    #[arg(long, value_name = "FILE")]
    pub db: Option<PathBuf>,
    /// Search even when an earlier run of this model on this machine could be verified and
    /// reused.
    #[arg(long)]
    pub no_reuse: bool,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print the final summary as one JSON object on stdout's last line.
    #[arg(long)]
    pub json: bool,
    /// Search an in-process simulated server described by a JSON file (truth known; for
    /// demonstrations and benchmarks) instead of a real one.
    #[arg(long, value_name = "FILE", hide = true)]
    pub simulate: Option<PathBuf>,
    /// How long the whole run may take (e.g. 6h, 90m): optional work predicted not to fit is
    /// cut, and the output says what. `auto`: plan.floor_multiple (default 2) times the floor
    /// (one load, one prompt filled to the validated maximum, one sample's decode); `none`:
    /// everything. The context search and the proof of the maximum are never cut.
    #[arg(long, value_name = "DURATION|auto|none", value_parser = parse_budget)]
    pub budget: Option<BudgetArg>,
    /// Context discovery: o3's binary search, or a baseline the benchmark compares it with.
    #[arg(long, value_enum, default_value = "binary", hide = true)]
    pub strategy: search::Strategy,
}

/// What a run searches, kept in run.json so `--resume` needs nothing else.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Target {
    backend: BackendArg,
    model: String,
    url: String,
    server_bin: String,
    launch: Option<String>,
    ready: String,
    tokenize: String,
    #[serde(default)]
    ollama_serve: Option<String>,
    base: ProbeConfig,
    simulate: Option<SimModel>,
}

#[derive(Debug, Serialize, Deserialize)]
struct RunFile {
    schema_version: u32,
    o3_version: String,
    created_unix_ns: u64,
    target: Target,
    config: Config,
    config_notices: Vec<String>,
    shape: ModelShape,
    model_digest: String,
    host: Host,
    capacity_bytes: Option<u64>,
    /// What learning decided at the start (kept so a resumed run decides the same).
    learned: Option<search::Learned>,
    learning_notes: Vec<String>,
    start_context: Option<u32>,
    #[serde(default)]
    gallop: bool,
    /// Earlier spans of work of this model on this host (the time model's start), kept so a
    /// resumed run plans the same.
    #[serde(default)]
    time_seed: Vec<crate::timing::Obs>,
    /// The results database and this run's ids in it (`None`: not stored).
    #[serde(default)]
    store: Option<StoreRef>,
    /// What the server binary says of itself (`llama-server --version`), for the run header.
    #[serde(default)]
    server_version: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoreRef {
    db: PathBuf,
    run_id: i64,
    host_id: String,
    model_id: String,
}

fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("o3");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".local/share/o3")
}

fn slug(model: &str) -> String {
    let base = Path::new(model)
        .file_stem()
        .map_or(model.to_string(), |s| s.to_string_lossy().into_owned());
    base.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> (anyhow::Error, i32) {
    (anyhow::anyhow!("cannot {what} {}: {e}", path.display()), 1)
}

/// Writes a file atomically (temp file, fsync, rename).
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), (anyhow::Error, i32)> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| io_err("create", &tmp, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| io_err("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err("rename", path, e))
}

/// The model's shape and a digest identifying it: from its GGUF file, the Ollama server, or
/// the simulator's description.
fn model_facts(t: &Target) -> (ModelShape, String) {
    if let Some(m) = &t.simulate {
        // The simulated KV cache as one layer with one f16 K/V head pair of this size:
        // layers × KV heads × (K + V lengths) × 2 bytes is exactly its bytes per token.
        let half = (m.kv_bytes_per_token / 4) as u32;
        let shape = ModelShape {
            architecture: Some("simulated".into()),
            parameters: Some(m.parameters),
            weights_bytes: Some(m.weights_bytes),
            trained_context: Some(m.trained_context),
            block_count: Some(1),
            head_count: Some(1),
            head_count_kv: Some(1),
            key_length: Some(half),
            value_length: Some(half),
            embedding_length: Some(half),
            ..ModelShape::default()
        };
        // The model's identity, not the simulated device's (capacity belongs to the host).
        let digest = format!(
            "sim:{}",
            crate::learn::fingerprint::fnv_hex(&format!(
                "{}|{}|{}|{}",
                m.parameters, m.weights_bytes, m.kv_bytes_per_token, m.trained_context
            ))
        );
        return (shape, digest);
    }
    match t.backend {
        BackendArg::Ollama => {
            let info = match &t.ollama_serve {
                None => crate::backend::ollama::show(&t.url, &t.model),
                Some(cmd) => managed_ollama_show(cmd, &t.model),
            };
            let mut shape = info
                .as_ref()
                .map(ModelShape::from_ollama)
                .unwrap_or_default();
            if t.ollama_serve.is_none() {
                // The weights, as `o3 predict` takes them: the size `/api/tags` lists.
                shape.weights_bytes = crate::backend::ollama::tag_size_at(&t.url, &t.model);
            }
            (shape, format!("ollama:{}", t.model))
        }
        _ => {
            let p = Path::new(&t.model);
            let shape = crate::learn::gguf::read(p)
                .map(|i| ModelShape::from_gguf(&i))
                .unwrap_or_default();
            let digest = crate::learn::fingerprint::model_digest(p)
                .unwrap_or_else(|_| format!("path:{}", t.model));
            (shape, digest)
        }
    }
}

/// `llama-server --version`'s version line (`version: 0.5.0-dev (build 1, commit 0c1e570)`),
/// for llama-server targets.
fn server_version(t: &Target) -> Option<String> {
    if t.simulate.is_some() || t.backend != BackendArg::LlamaServer {
        return None;
    }
    let out = std::process::Command::new(&t.server_bin)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("version:"))
        .map(|v| format!("llama-server {}", v.trim()))
}

/// Starts the managed Ollama once, just to ask it about the model.
fn managed_ollama_show(cmd: &str, model: &str) -> Option<crate::backend::ollama::ModelInfo> {
    let argv: Vec<String> = cmd.split_whitespace().map(String::from).collect();
    let port = crate::backend::launch::free_port().ok()?;
    let host = format!("127.0.0.1:{port}");
    let env = [("OLLAMA_HOST".to_string(), host.clone())];
    let mut l = crate::backend::launch::Launched::start(&argv, port, &env, |_| Ok(())).ok()?;
    let url = format!("http://{host}");
    let t0 = Instant::now();
    let mut info = None;
    while t0.elapsed() < std::time::Duration::from_secs(30) && l.exited().is_none() {
        info = crate::backend::ollama::show(&url, model);
        if info.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    l.stop(std::time::Duration::from_secs(5));
    info
}

/// The machine as learning sees it (a simulated run: the simulated device).
fn host_facts(roots: &Roots, t: &Target) -> (Host, Option<u64>) {
    if let Some(m) = &t.simulate {
        let h = Host {
            cpu_model: "simulated".into(),
            cpu_cores: 1,
            ram_bytes: m.capacity_bytes,
            gpus: vec![crate::learn::fingerprint::Gpu {
                name: "simulated device".into(),
                pci_id: None,
                apu: false,
                vram_bytes: Some(m.capacity_bytes),
                gtt_bytes: None,
                driver_version: None,
                firmware: None,
            }],
            kernel: "simulated".into(),
            rocm_version: None,
            vulkan_driver: None,
            cuda_driver: None,
        };
        return (h, Some(m.capacity_bytes));
    }
    let h = crate::learn::fingerprint::host(&roots.procfs_root, &roots.sysfs_root, &roots.dev_root);
    // What a model may occupy: the GTT on an APU, the VRAM of a discrete card, else RAM.
    let cap = h
        .gpus
        .iter()
        .filter_map(|g| if g.apu { g.gtt_bytes } else { g.vram_bytes })
        .max()
        .or(Some(h.ram_bytes).filter(|&r| r > 0));
    (h, cap)
}

/// What the progress bar shows between redraws: times in ms since the run started (atomics,
/// read by the bar's own redraw tick; the search thread writes them).
#[derive(Default)]
struct Clock {
    /// When the probe in flight started.
    probe_started_ms: AtomicU64,
    /// Its predicted duration.
    probe_ms: AtomicU64,
    /// Predicted work after it.
    after_ms: AtomicU64,
    /// Probe time spent before it.
    spent_ms: AtomicU64,
}

impl Clock {
    /// (done, total, remaining) in s at `now_ms`: within a probe the remaining time falls as
    /// it runs and stops at the work after it (never grows), however long the probe overruns.
    fn read(&self, now_ms: u64) -> (f64, f64, f64) {
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / 1000.0;
        let elapsed = (now_ms as f64 / 1000.0 - ld(&self.probe_started_ms)).max(0.0);
        let probe = ld(&self.probe_ms);
        let left_in_probe = (probe - elapsed).max(0.0);
        let done = ld(&self.spent_ms) + elapsed.min(probe);
        let remaining = left_in_probe + ld(&self.after_ms);
        (done, done + remaining, remaining)
    }
}

struct Progress {
    bar: Option<indicatif::ProgressBar>,
    lines: bool,
    quiet: bool,
    started: Instant,
    probe_started: Instant,
    clock: std::sync::Arc<Clock>,
}

impl Progress {
    fn new(quiet: bool) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let started = Instant::now();
        let clock = std::sync::Arc::new(Clock::default());
        let bar = (!quiet && tty).then(|| {
            let b = indicatif::ProgressBar::new(1);
            let (c1, c2) = (clock.clone(), clock.clone());
            let ms = move || started.elapsed().as_millis() as u64;
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {work} (ETA {model_eta}) {msg}",
                )
                .expect("valid template")
                .with_key(
                    "work",
                    move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let (done, total, _) = c1.read(ms());
                        let filled = if total > 0.0 {
                            ((done / total) * 30.0).round() as usize
                        } else {
                            0
                        };
                        let _ = write!(
                            w,
                            "{}{} {}/{}",
                            "█".repeat(filled.min(30)),
                            "░".repeat(30 - filled.min(30)),
                            crate::util::units::span(done),
                            crate::util::units::span(total)
                        );
                    },
                )
                .with_key(
                    "model_eta",
                    move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let (_, _, left) = c2.read(started.elapsed().as_millis() as u64);
                        let _ = write!(w, "{}", crate::util::units::span(left));
                    },
                ),
            );
            b.enable_steady_tick(std::time::Duration::from_millis(500));
            b
        });
        Progress {
            bar,
            lines: !quiet && !tty,
            quiet,
            started,
            probe_started: started,
            clock,
        }
    }

    fn say(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None if self.lines => eprintln!("o3: {line}"),
            None => {}
        }
    }
}

fn streams(req: &ProbeRequest) -> String {
    if req.concurrency > 1 {
        format!(" · {} streams", req.concurrency)
    } else {
        String::new()
    }
}

impl Observer for Progress {
    fn plan(&mut self, items: &[plan::Item], budget: &str) {
        if self.quiet {
            return;
        }
        let total: f64 = items.iter().map(|i| i.cost.expected_s).sum();
        let mut text = format!(
            "plan ({budget}; predicted from what is known before the first probe, re-planned as rates are measured):"
        );
        for i in items {
            text += &format!(
                "\n    {:<58} {:>10}{}",
                i.what,
                crate::util::units::span(i.cost.expected_s),
                if i.priority == plan::Priority::Required {
                    ""
                } else {
                    "  (optional)"
                }
            );
        }
        text += &format!("\n    all of it: {}", crate::util::units::span(total));
        match &self.bar {
            Some(b) => b.println(text),
            None => eprintln!("o3: {text}"),
        }
    }

    fn before(&mut self, req: &ProbeRequest, eta: &Eta) {
        self.probe_started = Instant::now();
        let now = self.started.elapsed().as_millis() as u64;
        let ms = |s: f64| (s.max(0.0) * 1000.0) as u64;
        self.clock.probe_started_ms.store(now, Ordering::Relaxed);
        self.clock
            .probe_ms
            .store(ms(eta.probe.expected_s), Ordering::Relaxed);
        self.clock
            .after_ms
            .store(ms(eta.after_s), Ordering::Relaxed);
        self.clock
            .spent_ms
            .store(ms(eta.spent_s), Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.set_message(format!(
                "{} · {}{} (predicted {})",
                req.stage.name(),
                req.describe(),
                streams(req),
                crate::util::units::span(eta.probe.expected_s)
            ));
        }
    }

    fn after(&mut self, req: &ProbeRequest, out: &ProbeOutcome, eta: &Eta) {
        let ok = out.observations.iter().filter(|o| o.ok).count();
        let outcome = out.outcome.name();
        let line = format!(
            "[{:>8}] {:<11} {:<54} {} ({ok}/{} requests ok, {} where {} was predicted; ETA {})",
            crate::util::units::span(self.started.elapsed().as_secs_f64()),
            req.stage.name(),
            req.describe() + &streams(req),
            outcome,
            out.observations.len(),
            crate::util::units::span(out.wall_ms / 1000.0),
            crate::util::units::span(eta.probe.expected_s),
            crate::util::units::span(eta.after_s)
        );
        self.say(&line);
    }

    fn note(&mut self, msg: &str) {
        self.say(&format!("note: {msg}"));
    }
}

/// A prober that is either live or simulated.
enum Any {
    Live(Box<Live>),
    Sim(Box<Sim>),
}

impl crate::optimize::journal::Raw for Any {
    fn take_raw(&mut self) -> Option<serde_json::Value> {
        match self {
            Any::Live(l) => l.take_raw(),
            Any::Sim(_) => None,
        }
    }
}

impl Prober for Any {
    fn know(&mut self, model: &crate::timing::TimeModel) {
        if let Any::Live(l) = self {
            l.know(model);
        }
    }

    fn probe(&mut self, req: &ProbeRequest) -> Option<ProbeOutcome> {
        match self {
            Any::Live(l) => l.probe(req),
            Any::Sim(s) => s.probe(req),
        }
    }
    fn fixed_by_server(&self, cfg: &ProbeConfig) -> Vec<&'static str> {
        match self {
            Any::Live(l) => l.fixed_by_server(cfg),
            Any::Sim(s) => s.fixed_by_server(cfg),
        }
    }
}

#[derive(Serialize)]
struct PresetOut {
    #[serde(flatten)]
    preset: presets::Preset,
    /// Its context was proven by a request filled to `prompt.fill` of it (false: prompts were
    /// capped, "not proven at depth"); `None` for an empty category.
    proven_at_depth: Option<bool>,
    artefacts: Option<artefacts::Artefacts>,
}

#[derive(Serialize)]
struct Summary<'a> {
    schema_version: u32,
    o3_version: &'static str,
    run_dir: String,
    model: &'a str,
    backend: BackendArg,
    simulated: bool,
    trained_context: Option<u32>,
    parameters: Option<u64>,
    fill: f64,
    max_prompt_tokens: Option<u32>,
    output_tokens: u32,
    presets: Vec<PresetOut>,
    context: &'a search::ContextSearch,
    configurations: &'a [search::Measured],
    notes: &'a [String],
    /// Learned configurations verified and reused instead of searched.
    reused: &'a [String],
    /// Why learning reused nothing, and where results are stored.
    learning_notes: &'a [String],
    db: Option<String>,
    /// Configurations the predictor skipped in this session, with their probabilities.
    skipped: Vec<prune::Skip>,
    /// Would-be skips measured anyway (the exploration budget) and what they did.
    explored: Vec<prune::Explored>,
    probes: ProbesOut,
    peaks: PeaksOut,
    /// Predicted, spent, floor, budget, and what the budget cut.
    plan: &'a plan::Report,
    /// Simulated time of all probes (simulator only), s.
    simulated_s: Option<f64>,
    wall_s: f64,
    interrupted: bool,
    finished_unix_ns: u64,
}

#[derive(Serialize)]
struct ProbesOut {
    total: u32,
    ran_now: u32,
    from_journal: u32,
    context_search: usize,
    context_search_bound: u32,
}

#[derive(Serialize)]
struct PeaksOut {
    /// Largest server-tree RSS peak of any probe, bytes.
    rss_peak_bytes: Option<u64>,
    rss_method: Option<String>,
    mem_used_peak_bytes: Option<u64>,
    gpu_used_peak_bytes: Option<u64>,
}

fn artefacts_for(backend: Option<&BackendSpec>, cfg: &ProbeConfig) -> Option<artefacts::Artefacts> {
    match backend? {
        // A server o3 started ran pinned (one slot, f16 cache unless asked): so do its
        // artefacts. A server o3 reached at --url ran as its owner set it up.
        BackendSpec::Ollama {
            model,
            serve: Some(_),
            ..
        } => artefacts::ollama(model, &crate::backend::ollama::pinned(cfg)).ok(),
        BackendSpec::Ollama { model, .. } => artefacts::ollama(model, cfg).ok(),
        BackendSpec::LlamaServer { bin, model, flags } => {
            artefacts::llama_server(bin, flags, Path::new(model), cfg, "127.0.0.1", 8080).ok()
        }
        BackendSpec::OpenAi {
            template, model, ..
        } => artefacts::template(template, model, cfg, "127.0.0.1", 8080).ok(),
    }
}

/// No predictor: nothing is skipped.
struct NeverSkip;
impl Chance for NeverSkip {
    fn p_success(&self, _: &ProbeConfig) -> (f64, String) {
        (1.0, "no prediction".into())
    }
}

/// The predictor as the search's [`Chance`].
struct Predicted<'a> {
    predictor: &'a Predictor,
    shape: &'a ModelShape,
    capacity: Option<u64>,
}

impl Chance for Predicted<'_> {
    fn p_success(&self, cfg: &ProbeConfig) -> (f64, String) {
        let p = self.predictor.predict(self.shape, cfg, self.capacity);
        (p.p_success, p.basis)
    }
}

/// The predictor trained from the store's records of this model (all hosts, this one
/// weighted higher).
fn predictor(store: &Store, r: &StoreRef) -> Predictor {
    let records = store.records(None, Some(&r.model_id)).unwrap_or_default();
    Predictor::train(&records, Some(&r.host_id))
}

/// Learning decided once, at a run's start: the store entries, what an earlier run lets this
/// one verify instead of search.
fn learn_at_start(
    a: &OptimizeArgs,
    rf: &mut RunFile,
    dir: &Path,
    opened: Option<(PathBuf, Store)>,
) -> Result<(), (anyhow::Error, i32)> {
    let l = &rf.config.learning;
    let Some((db, store)) = opened else {
        return Ok(());
    };
    let host_id = store.upsert_host(&rf.host).map_err(|e| (e.into(), 1))?;
    let model_id = store
        .upsert_model(&rf.target.model, &rf.model_digest, &rf.shape)
        .map_err(|e| (e.into(), 1))?;
    if l.reuse_learned_configs || l.predict {
        // The time model starts from this model's last probes on this host (at most 4000
        // spans: the newest).
        let mut seed = store.timing(&host_id, &model_id, 64).unwrap_or_default();
        seed.truncate(4000);
        if !seed.is_empty() {
            rf.learning_notes.push(format!(
                "the time model starts from {} spans of work measured by earlier runs",
                seed.len()
            ));
        }
        rf.time_seed = seed;
    }
    if l.reuse_learned_configs && !a.no_reuse && a.strategy == search::Strategy::Binary {
        let now = crate::util::system::unix_now_ns() / 1_000_000_000;
        match learned::to_verify(&store, &rf.host, &host_id, &model_id, l.max_age_days, now) {
            Ok(v) => rf.learned = v,
            Err(why) => rf.learning_notes.push(format!("nothing reused: {why}")),
        }
    }
    if l.predict && rf.learned.is_none() && a.strategy == search::Strategy::Binary {
        let records = store.records(None, Some(&model_id)).unwrap_or_default();
        let p = Predictor::train(&records, Some(&host_id));
        let chance = Predicted {
            predictor: &p,
            shape: &rf.shape,
            capacity: rf.capacity_bytes,
        };
        let c = &rf.config;
        let top = rf
            .shape
            .trained_context
            .map_or(c.search.max_context, |t| t.min(c.search.max_context));
        let base = ProbeConfig {
            batch: Some(c.batch.initial_for(rf.shape.parameters)),
            ..rf.target.base.clone()
        };
        rf.start_context = prune::start_context(
            &chance,
            &base,
            c.search.min_context,
            top,
            c.search.granularity,
        );
        rf.gallop = rf.start_context.is_some() && !p.is_cold();
        if let Some(s) = rf.start_context {
            rf.learning_notes.push(format!(
                "the search starts at ctx {s}, the largest context predicted to work ({})",
                if p.is_cold() {
                    "memory model only"
                } else {
                    "trained on earlier runs"
                }
            ));
        }
    }
    if l.store_results {
        let config_json = serde_json::to_string(&rf.config).unwrap_or_default();
        let run_id = store
            .begin_run(
                &host_id,
                &model_id,
                &format!("{:?}", rf.target.backend).to_lowercase(),
                &dir.display().to_string(),
                &config_json,
            )
            .map_err(|e| (e.into(), 1))?;
        rf.store = Some(StoreRef {
            db,
            run_id,
            host_id,
            model_id,
        });
    }
    Ok(())
}

/// The store learning uses, opened and checked before anything is written anywhere (a damaged
/// store is refused before o3 writes to it or creates the run directory); None when learning
/// is off.
fn open_store(
    a: &OptimizeArgs,
    c: &Config,
) -> Result<Option<(PathBuf, Store)>, (anyhow::Error, i32)> {
    let l = &c.learning;
    if !(l.store_results || l.reuse_learned_configs || l.predict) {
        return Ok(None);
    }
    let db =
        a.db.clone()
            .or_else(|| l.db.as_ref().map(PathBuf::from))
            .unwrap_or_else(crate::learn::store::default_path);
    let store = Store::open(&db).map_err(|e| (e.into(), 1))?;
    Ok(Some((db, store)))
}

/// The model file a launched llama-server or template would load must be a complete GGUF
/// file (`o3 probe`'s check), and for llama-server it must exist: a whole run is not spent on
/// load failures that a missing file makes certain.
fn check_model_file(t: &Target) -> Result<(), (anyhow::Error, i32)> {
    if t.simulate.is_some() {
        return Ok(());
    }
    let p = Path::new(&t.model);
    if t.backend == BackendArg::LlamaServer && !p.exists() {
        if let Err(e) = crate::learn::gguf::read(p) {
            return Err((anyhow::Error::new(e), 2));
        }
    }
    super::probe::check_model_file(t.backend, &t.model)
}

pub fn run(roots: &Roots, a: OptimizeArgs) -> CliResult {
    let usage = |e: String| (anyhow::anyhow!(e), 2);
    // 1. What to search, and where the run lives.
    let (dir, runfile) = match &a.resume {
        Some(dir) => {
            let p = dir.join("run.json");
            let text = std::fs::read_to_string(&p).map_err(|e| {
                usage(format!(
                    "cannot read {}: {e} (is {} a run directory of `o3 optimize`?)",
                    p.display(),
                    dir.display()
                ))
            })?;
            let rf: RunFile = serde_json::from_str(&text).map_err(|e| {
                usage(format!(
                    "{} is not a run file o3 can resume: {e}",
                    p.display()
                ))
            })?;
            (dir.clone(), rf)
        }
        None => {
            let loaded = match &a.config {
                Some(p) => config::load(p).map_err(|e| usage(e.to_string()))?,
                None => config::Loaded {
                    config: Config::default(),
                    layout: config::Layout::Current,
                    notices: Vec::new(),
                },
            };
            let simulate = match &a.simulate {
                Some(p) => {
                    let text = std::fs::read_to_string(p)
                        .map_err(|e| usage(format!("cannot read {}: {e}", p.display())))?;
                    let mut m: SimModel = serde_json::from_str(&text)
                        .map_err(|e| usage(format!("{}: {e}", p.display())))?;
                    m.output_tokens = loaded.config.prompt.output_tokens;
                    Some(m)
                }
                None => None,
            };
            let model = a.model.clone().unwrap_or_else(|| "simulated".into());
            let target = Target {
                backend: a.backend,
                model: model.clone(),
                url: a.url.clone(),
                server_bin: a.server_bin.clone(),
                launch: a.launch.clone(),
                ready: a.ready.clone(),
                tokenize: a.tokenize.clone(),
                ollama_serve: a.ollama_serve.clone(),
                base: ProbeConfig {
                    gpu_layers: a.gpu_layers,
                    flash_attn: a.flash_attn,
                    cache_type_k: a.cache_type_k.clone(),
                    cache_type_v: a.cache_type_v.clone(),
                    threads: a.threads,
                    ..ProbeConfig::default()
                },
                simulate,
            };
            let dir = a.out.clone().unwrap_or_else(|| {
                let secs = crate::util::system::unix_now_ns() / 1_000_000_000;
                data_dir()
                    .join("runs")
                    .join(format!("{}-{secs}", slug(&model)))
            });
            if dir.join("journal.jsonl").exists() {
                return Err(usage(format!(
                    "{} already holds a run: continue it with `o3 optimize --resume {}` or choose another --out",
                    dir.display(),
                    dir.display()
                )));
            }
            check_model_file(&target)?;
            let opened = open_store(&a, &loaded.config)?;
            let (shape, model_digest) = model_facts(&target);
            let server_version = server_version(&target);
            let (host, capacity_bytes) = host_facts(roots, &target);
            let mut rf = RunFile {
                schema_version: SCHEMA_VERSION,
                o3_version: env!("CARGO_PKG_VERSION").into(),
                created_unix_ns: crate::util::system::unix_now_ns(),
                target,
                config: loaded.config,
                config_notices: loaded.notices,
                shape,
                model_digest,
                host,
                capacity_bytes,
                learned: None,
                learning_notes: Vec::new(),
                start_context: None,
                gallop: false,
                time_seed: Vec::new(),
                store: None,
                server_version,
            };
            std::fs::create_dir_all(&dir).map_err(|e| io_err("create", &dir, e))?;
            learn_at_start(&a, &mut rf, &dir, opened)?;
            // The run file first: a bad --out fails before a server starts.
            write_file(
                &dir.join("run.json"),
                serde_json::to_string_pretty(&rf)
                    .expect("run file serialises")
                    .as_bytes(),
            )?;
            (dir, rf)
        }
    };
    if !a.quiet {
        for n in runfile.config_notices.iter().chain(&runfile.learning_notes) {
            eprintln!("o3: notice: {n}");
        }
        if let Some(v) = &runfile.server_version {
            eprintln!("o3: notice: server: {v}");
        }
    }
    let store = match &runfile.store {
        Some(r) => Some(Store::open(&r.db).map_err(|e| (e.into(), 1))?),
        None => None,
    };
    let mut runfile = runfile;
    match a.budget {
        Some(BudgetArg::Seconds(x)) => runfile.config.plan.budget_s = Some(x),
        Some(BudgetArg::None) => {
            runfile.config.plan.budget_s = None;
            runfile.config.plan.floor_multiple = 0.0;
        }
        Some(BudgetArg::Auto) => {
            runfile.config.plan.budget_s = None;
            if runfile.config.plan.floor_multiple == 0.0 {
                runfile.config.plan.floor_multiple = crate::config::Plan::default().floor_multiple;
            }
        }
        None => {}
    }
    let runfile = runfile;
    let t = &runfile.target;
    let cfg = &runfile.config;

    // 2. The prober.
    let (mut prober, backend) = match &t.simulate {
        Some(m) => (Any::Sim(Box::new(Sim::new(m.clone()))), None),
        None => {
            let mut spec = backend_spec(BackendFlags {
                kind: t.backend,
                model: &t.model,
                url: &t.url,
                server_bin: &t.server_bin,
                launch: t.launch.as_deref(),
                ready: &t.ready,
                tokenize: &t.tokenize,
                ollama_serve: t.ollama_serve.as_deref(),
            })?;
            let integrated = runfile.host.gpus.iter().any(|g| g.apu);
            if let Some(n) = super::probe::pin_load_mode(&mut spec, integrated) {
                if !a.quiet {
                    eprintln!("o3: notice: {n}");
                }
            }
            let require = std::env::var("O3_REQUIRE_EBPF").is_ok_and(|v| v == "1");
            let ebpf = match crate::telemetry::ebpf::Loaded::load(&roots.sysfs_root, 1 << 20) {
                Ok(_) => true,
                Err(e) if require => {
                    return Err((anyhow::anyhow!("eBPF is required but unavailable: {e}"), 1))
                }
                Err(e) => {
                    eprintln!(
                        "o3: warning: eBPF unavailable ({e}); server peaks come from procfs polling"
                    );
                    false
                }
            };
            // Servers of earlier runs that outlived their o3 (this run's, on --resume, first:
            // its ledger names them) are stopped before this run starts its own.
            let ledger = dir.join("servers");
            let mut swept = crate::util::owner::stop_recorded(Path::new("/proc"), &ledger);
            swept.extend(crate::util::owner::reap_orphans(Path::new("/proc")));
            if let Some(n) = crate::util::owner::notice(&swept) {
                eprintln!("o3: notice: {n}");
            }
            crate::util::owner::keep_ledger(ledger);
            let traces = dir.join("traces");
            let live = Live::new(spec.clone(), cfg.clone(), roots.sysfs_root.clone(), ebpf)
                .with_procfs_root(roots.procfs_root.clone())
                .with_traces(traces.clone())
                .map_err(|e| io_err("create", &traces, e))?;
            (Any::Live(Box::new(live)), Some(spec))
        }
    };

    // 3. Stop requests: SIGINT/SIGTERM/SIGHUP set the flag the probe watches; the probe stops
    // the server it started.
    if let Any::Live(l) = &prober {
        let stop = l.stop.clone();
        let fd = crate::record::signals::install().map_err(|e| (e.into(), 1))?;
        std::thread::Builder::new()
            .name("o3-signals".into())
            .spawn(move || loop {
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                if unsafe { libc::poll(&mut pfd, 1, -1) } > 0 {
                    let mut b = [0u8; 16];
                    // SAFETY: reading into a local buffer.
                    unsafe { libc::read(fd, b.as_mut_ptr() as *mut libc::c_void, b.len()) };
                    stop.store(true, Ordering::SeqCst);
                }
            })
            .map_err(|e| (e.into(), 1))?;
    }

    // How busy the machine is from outside, before o3 starts measuring.
    if matches!(prober, Any::Live(_)) && !a.quiet {
        let window = std::time::Duration::from_secs(1);
        let share = crate::optimize::noise::measure(Path::new("/proc"), window);
        if let Some(w) = share.and_then(|s| crate::optimize::noise::warning(s, window)) {
            eprintln!("o3: warning: {w}");
        }
    }

    // 4. Search, journaled.
    let jpath = dir.join("journal.jsonl");
    let mut journal = Journal::open(&jpath).map_err(|e| (e.into(), 1))?;
    if a.resume.is_some() && !a.quiet {
        eprintln!(
            "o3: resuming {}: {} probes already in the journal",
            dir.display(),
            journal.loaded
        );
    }
    let started = Instant::now();
    let mut progress = Progress::new(a.quiet);
    let inputs = Inputs {
        config: cfg,
        base: t.base.clone(),
        trained_context: runfile.shape.trained_context,
        parameters: runfile.shape.parameters,
        weights_bytes: runfile.shape.weights_bytes,
        start_context: runfile.start_context,
        gallop: runfile.gallop,
        strategy: a.strategy,
        learned: runfile.learned.clone(),
        time_model: (!runfile.time_seed.is_empty()).then(|| {
            let mut m = crate::timing::TimeModel::new(crate::timing::Prior::from_size(
                runfile.shape.parameters,
                runfile.shape.weights_bytes,
            ));
            m.prior.source = "earlier runs of this model on this machine".into();
            m.observe(&runfile.time_seed);
            m
        }),
    };
    // Skipping needs a trained predictor: the memory model alone is only trusted to pick the
    // first probe (an estimate 10 % high would otherwise skip the optimum).
    let trained = match (&store, &runfile.store) {
        (Some(st), Some(r)) if cfg.learning.predict => {
            Some(predictor(st, r)).filter(|p| !p.is_cold())
        }
        _ => None,
    };
    let chance = trained.as_ref().map(|p| Predicted {
        predictor: p,
        shape: &runfile.shape,
        capacity: runfile.capacity_bytes,
    });
    let never = NeverSkip;
    // A temperature or CPU breach is waited out (a stop request ends the wait) and retried
    // once; a second one stops the run, resumably.
    let stop = match &prober {
        Any::Live(l) => l.stop.clone(),
        Any::Sim(_) => std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    };
    let machine = heat::Machine::new(
        roots.procfs_root.clone(),
        roots.sysfs_root.clone(),
        roots.dev_root.clone(),
        cfg.safety.thresholds(),
    );
    let mut retried = crate::optimize::retry::Retried::new(&mut prober);
    let mut cooled = heat::Cooled::new(&mut retried, machine).with_sleep(heat::sleep_unless(stop));
    let mut pruned = Pruned::new(
        &mut cooled,
        chance
            .as_ref()
            .map_or(&never as &dyn Chance, |c| c as &dyn Chance),
        cfg.learning.min_p_success,
        cfg.learning.exploration_probes,
    );
    let mut jp = Journaled::new(&mut pruned, &mut journal);
    if let (Some(st), Some(r)) = (&store, &runfile.store) {
        let (shape, cap) = (runfile.shape.clone(), runfile.capacity_bytes);
        let prompt = cfg.prompt.clone();
        jp.sink = Some(Box::new(move |req, out, raw| {
            let depth = prompt.depth_tokens(req.config.ctx);
            let rec = learned::record_of(req, out, depth, &r.host_id, &r.model_id, &shape, cap);
            let raw = raw.map(|v| v.to_string());
            st.add_probe(r.run_id, req.stage.name(), &rec, raw.as_deref())
                .map_err(|e| e.to_string())
        }));
    }
    let mut report: Report = search::run(&inputs, &mut jp, &mut progress);
    let (ran, replayed, jerr) = (jp.ran, jp.replayed, jp.error.take());
    drop(jp);
    let (skips, explored) = (
        std::mem::take(&mut pruned.skips),
        std::mem::take(&mut pruned.explored),
    );
    drop(pruned);
    let heat_stop = cooled.stopped.take();
    drop(cooled);
    drop(retried);
    if let Any::Live(l) = &prober {
        if let Some(n) = crate::optimize::noise::note(&l.busy) {
            report.notes.push(n);
        }
    }
    if let (Some(st), Some(r)) = (&store, &runfile.store) {
        for k in &skips {
            st.add_skip(r.run_id, &k.config, k.p_success, &k.basis)
                .map_err(|e| (e.into(), 1))?;
        }
    }
    if let Some(b) = &progress.bar {
        b.finish_and_clear();
    }
    if let Some(e) = jerr {
        return Err((e.into(), 1));
    }
    if let Some(why) = heat_stop {
        eprintln!("o3: {why}");
        report.notes.push(why);
    }
    let interrupted = report.interrupted;

    // 5. Presets and outputs.
    let chosen = presets::choose(&report.configurations, &cfg.presets);
    let presets_out: Vec<PresetOut> = chosen
        .into_iter()
        .map(|p| {
            let art = p
                .config
                .as_ref()
                .and_then(|c| artefacts_for(backend.as_ref(), c));
            let proven = p.chosen.as_ref().map(|id| {
                report
                    .configurations
                    .iter()
                    .any(|m| &m.id == id && m.stable && m.proven_at_depth)
            });
            PresetOut {
                preset: p,
                proven_at_depth: proven,
                artefacts: art,
            }
        })
        .collect();
    let max_by = |f: &dyn Fn(&search::Measured) -> Option<u64>| {
        report.configurations.iter().filter_map(f).max()
    };
    if let Any::Live(l) = &prober {
        if let Some(e) = &l.trace_error {
            eprintln!("o3: warning: probe traces incomplete: {e} (the results are not affected)");
        }
    }
    let summary = Summary {
        schema_version: SCHEMA_VERSION,
        o3_version: env!("CARGO_PKG_VERSION"),
        run_dir: dir.display().to_string(),
        model: &t.model,
        backend: t.backend,
        simulated: t.simulate.is_some(),
        trained_context: runfile.shape.trained_context,
        parameters: runfile.shape.parameters,
        fill: cfg.prompt.fill,
        max_prompt_tokens: cfg.prompt.max_prompt_tokens,
        output_tokens: cfg.prompt.output_tokens,
        presets: presets_out,
        context: &report.context,
        configurations: &report.configurations,
        notes: &report.notes,
        reused: &report.reused,
        learning_notes: &runfile.learning_notes,
        db: runfile.store.as_ref().map(|r| r.db.display().to_string()),
        skipped: skips,
        explored,
        probes: ProbesOut {
            total: report.probes,
            ran_now: ran,
            from_journal: replayed,
            context_search: report.context.probes.len(),
            context_search_bound: report.context.probe_bound,
        },
        peaks: PeaksOut {
            rss_peak_bytes: max_by(&|m| m.rss_peak_bytes),
            rss_method: report
                .configurations
                .iter()
                .find(|m| m.rss_peak_bytes.is_some())
                .map(|m| m.rss_method.clone()),
            mem_used_peak_bytes: max_by(&|m| m.mem_used_peak_bytes),
            gpu_used_peak_bytes: max_by(&|m| m.gpu_used_peak_bytes),
        },
        plan: &report.plan,
        simulated_s: match &prober {
            Any::Sim(s) => Some(s.wall_ms / 1000.0),
            Any::Live(_) => None,
        },
        wall_s: started.elapsed().as_secs_f64(),
        interrupted,
        finished_unix_ns: crate::util::system::unix_now_ns(),
    };
    if let (Some(st), Some(r)) = (&store, &runfile.store) {
        let presets: Vec<(String, serde_json::Value)> = summary
            .presets
            .iter()
            .filter(|p| p.preset.config.is_some())
            .map(|p| {
                (
                    p.preset.name.to_string(),
                    serde_json::to_value(&p.preset).unwrap_or_default(),
                )
            })
            .collect();
        st.finish_run(
            r.run_id,
            if interrupted {
                "interrupted"
            } else {
                "finished"
            },
            report.context.validated,
            report.context.validated.map(|v| {
                report
                    .configurations
                    .iter()
                    .any(|m| m.config.ctx == v && m.stable && m.proven_at_depth)
            }),
            &presets,
        )
        .map_err(|e| (e.into(), 1))?;
    }
    let json = serde_json::to_string(&summary).expect("summary serialises");
    write_file(&dir.join("summary.json"), json.as_bytes())?;
    write_file(&dir.join("presets.yaml"), presets_yaml(&summary).as_bytes())?;
    let adir = dir.join("artefacts");
    std::fs::create_dir_all(&adir).map_err(|e| io_err("create", &adir, e))?;
    for p in &summary.presets {
        let Some(art) = &p.artefacts else { continue };
        if let Some(m) = &art.modelfile {
            write_file(
                &adir.join(format!("{}.Modelfile", p.preset.name)),
                m.as_bytes(),
            )?;
        }
        if !art.server_env.is_empty() {
            write_file(
                &adir.join(format!("{}.env", p.preset.name)),
                (art.server_env.join("\n") + "\n").as_bytes(),
            )?;
        }
        if let Some(c) = &art.command_line {
            let sh = adir.join(format!("{}.sh", p.preset.name));
            write_file(&sh, preset_script(p.preset.name, c).as_bytes())?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&sh, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| io_err("make executable", &sh, e))?;
        }
    }
    print_table(&summary);
    if a.json {
        println!("{json}");
    }
    if interrupted {
        eprintln!(
            "o3: interrupted; the partial summary is in {}; continue with `o3 optimize --resume {}`",
            dir.display(),
            dir.display()
        );
        return Ok(130);
    }
    Ok(0)
}

/// A preset's start script: the command measured, with the port (8080 in the command) taken
/// from `$PORT` when set, so a second server can start beside the first.
fn preset_script(name: &str, command: &str) -> String {
    let command = command.replacen(" --port 8080", " --port \"${PORT:-8080}\"", 1);
    format!(
        "#!/bin/sh\n# o3 preset {name}: the server command as measured (every flag that changes \
         memory or speed pinned); PORT overrides the port.\nexec {command}\n"
    )
}

fn presets_yaml(s: &Summary) -> String {
    #[derive(Serialize)]
    struct Y<'a> {
        model: &'a str,
        backend: BackendArg,
        presets: std::collections::BTreeMap<&'static str, serde_yaml::Value>,
    }
    let mut presets = std::collections::BTreeMap::new();
    for p in &s.presets {
        let v = serde_yaml::to_value(p).unwrap_or(serde_yaml::Value::Null);
        presets.insert(p.preset.name, v);
    }
    serde_yaml::to_string(&Y {
        model: s.model,
        backend: s.backend,
        presets,
    })
    .unwrap_or_default()
}

fn print_table(s: &Summary) {
    let mb = |b: Option<u64>| {
        b.map_or("-".to_string(), |b| {
            format!("{:.0} MiB", b as f64 / 1048576.0)
        })
    };
    eprintln!();
    eprintln!(
        "{:<14} {:>8} {:>6} {:>6} {:>8} {:>10} {:>12}  why",
        "preset", "context", "batch", "slots", "tok/s", "TTFT p95", "success"
    );
    for p in &s.presets {
        let pr = &p.preset;
        match &pr.config {
            Some(c) => {
                let m = s
                    .configurations
                    .iter()
                    .find(|m| Some(&m.id) == pr.chosen.as_ref() && m.stable);
                let depth = match m {
                    Some(m) if !m.proven_at_depth => {
                        " [NOT PROVEN AT DEPTH: prompts capped by prompt.max_prompt_tokens]"
                    }
                    _ => "",
                };
                eprintln!(
                    "{:<14} {:>8} {:>6} {:>6} {:>8.1} {:>7.0} ms {:>11.0}%  {}{depth}",
                    pr.name,
                    c.ctx,
                    c.batch.map_or("-".into(), |b| b.to_string()),
                    c.parallel.unwrap_or(1),
                    pr.output_tokens_per_s.unwrap_or(0.0),
                    pr.ttft_p95_ms.unwrap_or(0.0),
                    m.map_or(0.0, |m| m.validation.success_rate * 100.0),
                    pr.why
                );
            }
            None => eprintln!("{:<14} {:>8}  {}", pr.name, "-", pr.why),
        }
    }
    let c = s.context;
    eprintln!();
    eprintln!(
        "context search: {} probes (bound {}{}) over {}..{} step {}: largest that {} {}, validated filled to depth {}",
        c.probes.len(),
        c.probe_bound,
        if c.load_only { ", each a load and a short request" } else { ", each filled" },
        c.low,
        c.high,
        c.granularity,
        if c.load_only { "loads" } else { "passed" },
        c.max_passing.map_or("none".into(), |x| x.to_string()),
        c.validated.map_or("none".into(), |x| x.to_string())
    );
    if let Some(f) = &c.fails_filled {
        eprintln!(
            "  loads at {} but fails filled: {}",
            f.ctx,
            f.error.as_deref().unwrap_or("no detail")
        );
    }
    if let Some(cap) = s.max_prompt_tokens {
        eprintln!(
            "NOT PROVEN AT DEPTH: prompts were capped at {cap} tokens (prompt.max_prompt_tokens); contexts above {} were not filled to {:.0} %",
            (cap as f64 / s.fill) as u64,
            s.fill * 100.0
        );
    }
    let p = s.plan;
    eprintln!(
        "time: {} of probes{}{}; {}; predicted {} at the start",
        crate::util::units::span(p.spent_s),
        p.floor_s.map_or(String::new(), |f| format!(
            " = {:.2}× the floor of {} (one load, one fill to the maximum, one decode)",
            p.spent_s / f.max(1e-9),
            crate::util::units::span(f)
        )),
        if s.simulated { " (simulated)" } else { "" },
        p.budget,
        p.predicted_at_start_s
            .map_or("-".into(), crate::util::units::span)
    );
    for cut in &p.cut {
        eprintln!("  cut by the budget: {cut}");
    }
    eprintln!("time model: {}", p.time_model);
    eprintln!(
        "peaks: server RSS {} ({}), system RAM in use {}, GPU memory {}",
        mb(s.peaks.rss_peak_bytes),
        s.peaks.rss_method.as_deref().unwrap_or("not measured"),
        mb(s.peaks.mem_used_peak_bytes),
        mb(s.peaks.gpu_used_peak_bytes)
    );
    eprintln!(
        "{} probes ({} now, {} from the journal) in {:.1} s; results in {}",
        s.probes.total, s.probes.ran_now, s.probes.from_journal, s.wall_s, s.run_dir
    );
}
