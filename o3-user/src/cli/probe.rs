//! `o3 probe`: measure one configuration of a server and print one result row.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::backend::{FlashAttnChoice, OutcomeClass, ProbeConfig};
use crate::optimize::preflight;
use crate::optimize::target::{
    backend_spec, check_model_file, choose_backend, pin_load_mode, BackendKind, ServerFlags,
};
use crate::probe::{self, ProbeResult, ProbeSpec};
use crate::telemetry::ebpf::Loaded;
use crate::telemetry::watchdog::Thresholds;
use crate::util::{duration, percent};

use super::{CliResult, Roots};

fn parse_timeout(s: &str) -> anyhow::Result<Duration> {
    duration::parse_in_range(s, Duration::from_secs(1), Duration::from_secs(3600))
        .map_err(anyhow::Error::msg)
}

fn parse_margin(s: &str) -> anyhow::Result<f64> {
    let v: f64 = s
        .parse()
        .map_err(|_| anyhow::anyhow!("`{s}` is not a number (1.5 to 100)"))?;
    if !(1.5..=100.0).contains(&v) {
        anyhow::bail!("{v} is out of range: accepted 1.5 to 100");
    }
    Ok(v)
}

fn parse_fill(s: &str) -> Result<f64, percent::ShareError> {
    percent::parse_fraction(s, percent::FractionRange::new(0.05, false, 1.0))
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example (llama-cpp-python's server):\n  o3 probe --backend openai --model model.gguf --ctx 8192 --batch 256 \\\n    --launch 'python3 -m llama_cpp.server --model {model} --n_ctx {ctx} --n_batch {batch} --port {port}'"
)]
pub struct ProbeArgs {
    /// The server to measure (default: llama-server for a .gguf --model, openai with
    /// --launch, else ollama).
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
    /// Model name (Ollama) or path (the {model} placeholder; llama-server's -m).
    #[arg(long)]
    pub model: String,
    /// Ollama's address.
    #[arg(long, default_value = "http://127.0.0.1:11434")]
    pub url: String,
    /// Start Ollama with this command for each configuration (words separated by spaces, e.g.
    /// "ollama serve") on a free port, with the environment the configuration needs; instead
    /// of using the server at --url.
    #[arg(long, value_name = "CMD")]
    pub ollama_serve: Option<String>,
    /// The llama-server binary.
    #[arg(long, value_name = "PATH", default_value = "llama-server")]
    pub server_bin: String,
    /// Command line that starts the server, with placeholders {model} {ctx} {ctx_total}
    /// {batch} {ubatch} {parallel} {gpu_layers} {flash_attn} {cache_type_k} {cache_type_v}
    /// {threads} {host} {port}; {port} and {ctx} are required.
    #[arg(long, value_name = "TEMPLATE")]
    pub launch: Option<String>,
    /// Path polled until it answers 200.
    #[arg(long, default_value = "/v1/models")]
    pub ready: String,
    /// Tokenizer endpoint (`{"input": text}` → `{"tokens": [...]}`); "none" to estimate.
    #[arg(long, default_value = "/extras/tokenize")]
    pub tokenize: String,
    /// Context length per slot (tokens); a list (4096,8192) measures each.
    #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
    pub ctx: Vec<u32>,
    /// Logical batch size (tokens; llama-server's -b, Ollama's num_batch); a list measures
    /// each.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub batch: Vec<u32>,
    /// Physical batch size (tokens; llama-server's -ub); a list measures each.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub ubatch: Vec<u32>,
    /// Parallel slots (each gets --ctx tokens); a list measures each.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub parallel: Vec<u32>,
    /// Layers offloaded to the GPU (-1: all).
    #[arg(long, allow_hyphen_values = true)]
    pub gpu_layers: Option<i32>,
    /// Flash attention on, off or auto (the server decides; true/false mean on/off).
    #[arg(long, value_enum, value_name = "on|off|auto")]
    pub flash_attn: Option<FlashAttnChoice>,
    /// KV cache type of K (f16, q8_0, q4_0, ...).
    #[arg(long)]
    pub cache_type_k: Option<String>,
    /// KV cache type of V (f16, q8_0, q4_0, ...).
    #[arg(long)]
    pub cache_type_v: Option<String>,
    /// CPU threads the server uses.
    #[arg(long)]
    pub threads: Option<u32>,
    /// Measured samples after one warm-up request.
    #[arg(long, default_value_t = 3)]
    pub samples: u32,
    /// Simultaneous requests per sample (the server needs as many slots: --parallel).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,
    /// Of the --concurrency streams, this many send short chat turns beside the others'
    /// prompts at depth (mixed workloads; at most --concurrency minus 1); each kind's TTFT
    /// and decode rate are reported apart.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub chat_streams: u32,
    /// Tokens generated per sample.
    #[arg(long, default_value_t = 32)]
    pub output_tokens: u32,
    /// Fraction of the context the prompt fills: 0.05 to 1, or a percent with its sign (90%).
    #[arg(long, default_value = "0.9", value_name = "FRACTION", value_parser = parse_fill)]
    pub fill: f64,
    /// Exact prompt length in tokens instead of --fill (may exceed the context, to test it).
    #[arg(long, value_name = "N")]
    pub prompt_tokens: Option<u32>,
    /// Cap on prompt tokens (default: none). A capped probe does not prove the context at
    /// depth; the result states the target.
    #[arg(long, value_name = "N")]
    pub max_prompt_tokens: Option<u32>,
    /// Give every sample a fresh prompt read whole, instead of filling once and reusing that
    /// prefix with a fresh suffix for the following samples.
    #[arg(long)]
    pub fresh_prompts: bool,
    /// Longest silence tolerated from a request that has started to show progress (prompt
    /// progress events, tokens); deep batches get more, by the time model. A request that
    /// makes progress is never cut for being slow.
    #[arg(long, default_value = "60s", value_parser = parse_timeout)]
    pub stall: Duration,
    /// A server that shows no progress while reading a prompt is abandoned after this many
    /// times the time model's upper estimate.
    #[arg(long, default_value_t = 3.0, value_parser = parse_margin)]
    pub margin: f64,
    /// Longest wait for the server to become ready.
    #[arg(long, default_value = "300s", value_parser = parse_timeout)]
    pub load_timeout: Duration,
    /// Seed of the generated prompts and of the server's sampling (same seed, same prompts).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Watch safety limits (as `o3 record --safety`): a breach stops the server and the
    /// probe ends as `safety_abort`.
    #[arg(long)]
    pub safety: bool,
    /// With --safety: the RAM limit in % of system RAM, 1 to 100 (default 85).
    #[arg(long, value_name = "PERCENT", requires = "safety", value_parser = percent::parse_percent)]
    pub max_ram_percent: Option<f64>,
    /// Print each result as one JSON object on a line (as `-o jsonl`).
    #[arg(long, conflicts_with = "output")]
    pub json: bool,
    /// Output format: text (one configuration's row and its details; the default for one),
    /// md (a Markdown table, a row per configuration; the default for a sweep), csv, json
    /// (one array of the full results at the end) or jsonl (a full result per line).
    #[arg(long, short = 'o', value_enum)]
    pub output: Option<Format>,
    /// Append the result to a trace file (JSON Lines: a header, then a `probe` record); in a
    /// sweep each configuration gets its own file, FILE's stem plus `-c<ctx>-b<batch>…`.
    #[arg(long, value_name = "FILE")]
    pub out: Option<std::path::PathBuf>,
}

/// `-o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Md,
    Csv,
    Json,
    Jsonl,
}

pub fn run(roots: &Roots, a: ProbeArgs) -> CliResult {
    check_streams(&a)?;
    let (kind, chosen) = choose_backend(a.backend, Some(&a.model), a.launch.is_some());
    if let Some(note) = chosen {
        eprintln!("o3: notice: {note}");
    }
    check_model_file(kind, &a.model).map_err(|e| (e.into(), 2))?;
    // What the flags name is there and runs, before a server starts or a file is written.
    let passed = preflight::check(&server_flags(&a, kind)).map_err(|e| (e.into(), 2))?;
    if let Some(v) = passed.server_version {
        eprintln!("o3: notice: server: {v}");
    }
    // Servers an earlier o3 left behind (killed in a way that spared their workers) would
    // share the machine with this probe's server: stopped first, with a notice.
    let swept = crate::util::owner::reap_orphans(Path::new("/proc"));
    if let Some(n) = crate::util::owner::notice(&swept) {
        eprintln!("o3: notice: {n}");
    }
    let configs = configs(&a);
    let format = a.output.unwrap_or(if a.json {
        Format::Jsonl
    } else if configs.len() > 1 {
        Format::Md
    } else {
        Format::Text
    });
    // The server's flags (llama-server's --help) are read once for the whole sweep.
    let base = spec(roots, &a, kind)?;
    // The output files first: a bad --out fails before a server starts.
    let outs: Vec<Option<PathBuf>> = configs
        .iter()
        .map(|c| trace_path(&a, c, configs.len()))
        .collect();
    for p in outs.iter().flatten() {
        crate::trace::TraceWriter::create(p).map_err(|e| (e.into(), 1))?;
    }
    let mut results = Vec::new();
    for (i, (cfg, out)) in configs.iter().zip(&outs).enumerate() {
        if configs.len() > 1 {
            eprintln!(
                "o3: configuration {}/{}: {}",
                i + 1,
                configs.len(),
                named(cfg)
            );
        }
        let spec = ProbeSpec {
            config: cfg.clone(),
            ..base.clone()
        };
        let mut loaded = load_ebpf(&roots.sysfs_root)?;
        let r = probe::run(&spec, loaded.as_mut());
        drop(loaded);
        if let Some(path) = out {
            let target =
                serde_json::json!({ "probe": { "model": a.model, "backend": kind.store_name() } });
            probe::trace::write(path, &r, target, spec.interval).map_err(|e| (e.into(), 1))?;
        }
        print_result(format, &r, i == 0);
        results.push(r);
    }
    if format == Format::Json {
        println!(
            "{}",
            serde_json::to_string(&results).expect("results serialise")
        );
    }
    let all_ok = results.iter().all(|r| r.outcome == OutcomeClass::Ok);
    Ok(if all_ok { 0 } else { 3 })
}

/// Every configuration the lists ask for: contexts, then batches, ubatches and slots, each
/// list in the order given (an empty list: the server's default).
fn configs(a: &ProbeArgs) -> Vec<ProbeConfig> {
    let or_default = |v: &[u32]| -> Vec<Option<u32>> {
        if v.is_empty() {
            vec![None]
        } else {
            v.iter().copied().map(Some).collect()
        }
    };
    let mut out = Vec::new();
    for &ctx in &a.ctx {
        for batch in or_default(&a.batch) {
            for ubatch in or_default(&a.ubatch) {
                for parallel in or_default(&a.parallel) {
                    out.push(ProbeConfig {
                        ctx,
                        batch,
                        ubatch,
                        parallel,
                        ..config(a)
                    });
                }
            }
        }
    }
    out
}

/// `ctx 8192 · batch 512 · slots 2`: what a sweep's configuration sets.
fn named(c: &ProbeConfig) -> String {
    let mut s = format!("ctx {}", c.ctx);
    for (tag, v) in [
        ("batch", c.batch),
        ("ubatch", c.ubatch),
        ("slots", c.parallel),
    ] {
        if let Some(v) = v {
            s += &format!(" · {tag} {v}");
        }
    }
    s
}

/// `--out` for one configuration: the file itself for a single probe, else its stem with the
/// configuration (`run-c8192-b512.jsonl`).
fn trace_path(a: &ProbeArgs, c: &ProbeConfig, n: usize) -> Option<PathBuf> {
    let p = a.out.as_ref()?;
    if n == 1 {
        return Some(p.clone());
    }
    let stem = p
        .file_stem()
        .map_or("probe".into(), |s| s.to_string_lossy().into_owned());
    let mut name = format!("{stem}-c{}", c.ctx);
    for (tag, v) in [("b", c.batch), ("ub", c.ubatch), ("p", c.parallel)] {
        if let Some(v) = v {
            name += &format!("-{tag}{v}");
        }
    }
    if let Some(ext) = p.extension() {
        name += &format!(".{}", ext.to_string_lossy());
    }
    Some(p.with_file_name(name))
}

/// One configuration's result on stdout, as it finishes (a table's header before the first).
fn print_result(format: Format, r: &ProbeResult, first: bool) {
    let row = probe::row::Row::of(r);
    match format {
        Format::Text => println!("{}", render(r)),
        Format::Md => {
            if first {
                println!("{}", probe::row::md_header());
            }
            println!("{}", probe::row::md_row(&row));
        }
        Format::Csv => {
            if first {
                println!("{}", probe::row::csv_header());
            }
            println!("{}", probe::row::csv_row(&row));
        }
        Format::Jsonl => println!("{}", serde_json::to_string(r).expect("result serialises")),
        Format::Json => {}
    }
}

/// `--chat-streams` must leave a stream at depth.
fn check_streams(a: &ProbeArgs) -> Result<(), (anyhow::Error, i32)> {
    if a.chat_streams > 0 && a.chat_streams >= a.concurrency {
        return Err((
            anyhow::anyhow!(
                "--chat-streams {} leaves no stream at depth among --concurrency {}; give at most {}",
                a.chat_streams,
                a.concurrency,
                a.concurrency - 1
            ),
            2,
        ));
    }
    Ok(())
}

/// The flags that name the server.
fn server_flags(a: &ProbeArgs, kind: BackendKind) -> ServerFlags<'_> {
    ServerFlags {
        kind,
        model: &a.model,
        url: &a.url,
        server_bin: &a.server_bin,
        launch: a.launch.as_deref(),
        ready: &a.ready,
        tokenize: &a.tokenize,
        ollama_serve: a.ollama_serve.as_deref(),
    }
}

/// The probe the flags ask for, llama-server's load mode pinned for this machine.
fn spec(
    roots: &Roots,
    a: &ProbeArgs,
    kind: BackendKind,
) -> Result<ProbeSpec, (anyhow::Error, i32)> {
    let mut backend = backend_spec(server_flags(a, kind)).map_err(|e| {
        let code = if e.is_usage() { 2 } else { 1 };
        (e.into(), code)
    })?;
    let integrated = crate::telemetry::gpu::amd::discover(&roots.sysfs_root, &roots.dev_root)
        .iter()
        .any(|d| d.apu);
    pin_load_mode(&mut backend, integrated);
    Ok(ProbeSpec {
        backend,
        procfs_root: roots.procfs_root.clone(),
        config: config(a),
        samples: a.samples,
        concurrency: a.concurrency,
        chat_streams: a.chat_streams,
        stabilize: Duration::ZERO,
        cancel: None,
        phase: None,
        output_tokens: a.output_tokens,
        fill: a.fill,
        prompt_tokens: a.prompt_tokens,
        max_prompt_tokens: a.max_prompt_tokens,
        prompts: if a.fresh_prompts {
            probe::Prompts::Fresh
        } else {
            probe::Prompts::ReusePrefix
        },
        limits: crate::timing::Limits {
            stall_s: a.stall.as_secs_f64(),
            margin: a.margin,
        },
        time_model: None,
        load_timeout: a.load_timeout,
        interval: Duration::from_millis(10),
        seed: a.seed,
        safety: a.safety.then(|| safety(a.max_ram_percent)),
    })
}

/// The configuration's fixed fields (the first of each list; a sweep sets its own).
fn config(a: &ProbeArgs) -> ProbeConfig {
    ProbeConfig {
        ctx: a.ctx.first().copied().unwrap_or_default(),
        batch: a.batch.first().copied(),
        ubatch: a.ubatch.first().copied(),
        parallel: a.parallel.first().copied(),
        gpu_layers: a.gpu_layers,
        flash_attn: a.flash_attn.and_then(FlashAttnChoice::setting),
        cache_type_k: a.cache_type_k.clone(),
        cache_type_v: a.cache_type_v.clone(),
        threads: a.threads,
        server_bin: None,
    }
}

/// `--safety`'s limits: the defaults, the RAM limit from `--max-ram-percent`.
fn safety(max_ram_percent: Option<f64>) -> Thresholds {
    let mut th = Thresholds::default();
    if let Some(p) = max_ram_percent {
        th.max_ram_percent = p;
    }
    th
}

/// The eBPF programs, where they load; where they do not, procfs polling measures (with a
/// warning), unless `O3_REQUIRE_EBPF=1` makes that an error.
fn load_ebpf(sysfs: &Path) -> Result<Option<Loaded>, (anyhow::Error, i32)> {
    match probe::ebpf_for_servers(sysfs) {
        Ok(Ok(l)) => Ok(Some(l)),
        Ok(Err(warning)) => {
            eprintln!("o3: warning: {warning}");
            Ok(None)
        }
        Err(e) => Err((anyhow::anyhow!("eBPF is required but unavailable: {e}"), 1)),
    }
}

/// One row like llama-bench's, plus peaks: prefill over the prompts read whole, TTFT of the
/// fill (the whole prompt) and of the cached samples (a reused prefix) apart.
fn render(r: &ProbeResult) -> String {
    let row = probe::row::Row::of(r);
    let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.1}"));
    let mut out = format!(
        "{:<10} ctx {:>7} batch {:>5} slots {:>2}  prompt {:>6} tok  pp {:>8} tok/s  tg {:>7} tok/s  ttft {:>8} ms  samples {}/{}",
        row.outcome,
        row.ctx,
        row.batch.map_or("-".into(), |b| b.to_string()),
        row.parallel,
        row.prompt_tokens,
        f(row.prefill_tokens_per_s),
        f(row.decode_tokens_per_s),
        f(row.ttft_ms),
        row.samples_ok,
        row.samples
    );
    if row.cached_ttft_ms.is_some() {
        out += &format!(
            "\n  cached prefix: ttft {} ms, reused {}",
            f(row.cached_ttft_ms),
            match r.prefix_reuse {
                Some(true) => "in every sample",
                Some(false) => "NOT in every sample (see the note)",
                None => "unknown (the server does not say)",
            }
        );
    }
    if let Some(p) = r.rss_peak_bytes {
        out += &format!(
            "  peak RSS {} ({})",
            crate::util::units::bytes(p),
            r.rss_method
        );
    }
    out + &details(r)
}

/// The lines under the row: each kind of request, what the server fixed, notes, the error and
/// (for a failure) the server's last lines.
fn details(r: &ProbeResult) -> String {
    let mut out = String::new();
    for k in &r.kinds {
        out += &format!("\n  {}", k.line());
    }
    if !r.fixed_by_server.is_empty() {
        out += &format!("\n  fixed by the server: {}", r.fixed_by_server.join(", "));
    }
    for n in &r.notes {
        out += &format!("\n  note: {n}");
    }
    if let Some(e) = &r.error {
        out += &format!("\n  error: {e}");
    }
    if let Some(t) = &r.log_tail {
        if r.outcome != OutcomeClass::Ok {
            out += &format!(
                "\n  server output (last lines):\n{}",
                t.lines()
                    .map(|l| format!("    {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    out
}
