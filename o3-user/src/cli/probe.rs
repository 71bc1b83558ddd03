//! `o3 probe`: measure one configuration of a server and print one result row.

use std::path::Path;
use std::time::Duration;

use crate::backend::{FlashAttnChoice, OutcomeClass, ProbeConfig};
use crate::optimize::target::{
    backend_spec, check_model_file, pin_load_mode, BackendKind, ServerFlags,
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
    /// The server to measure.
    #[arg(long, value_enum, default_value = "ollama")]
    pub backend: BackendKind,
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
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Append the result to a trace file (JSON Lines: a header, then a `probe` record).
    #[arg(long, value_name = "FILE")]
    pub out: Option<std::path::PathBuf>,
}

pub fn run(roots: &Roots, a: ProbeArgs) -> CliResult {
    check_streams(&a)?;
    check_model_file(a.backend, &a.model).map_err(|e| (e.into(), 2))?;
    // Servers an earlier o3 left behind (killed in a way that spared their workers) would
    // share the machine with this probe's server: stopped first, with a notice.
    let swept = crate::util::owner::reap_orphans(Path::new("/proc"));
    if let Some(n) = crate::util::owner::notice(&swept) {
        eprintln!("o3: notice: {n}");
    }
    let spec = spec(roots, &a)?;
    // The output file first: a bad --out fails before a server starts.
    if let Some(p) = &a.out {
        crate::trace::TraceWriter::create(p).map_err(|e| (e.into(), 1))?;
    }
    let mut loaded = load_ebpf(&roots.sysfs_root)?;
    let r = probe::run(&spec, loaded.as_mut());
    if let Some(path) = &a.out {
        let target =
            serde_json::json!({ "probe": { "model": a.model, "backend": a.backend.store_name() } });
        probe::trace::write(path, &r, target, spec.interval).map_err(|e| (e.into(), 1))?;
    }
    if a.json {
        println!("{}", serde_json::to_string(&r).expect("result serialises"));
    } else {
        println!("{}", render(&r));
    }
    Ok(if r.outcome == OutcomeClass::Ok { 0 } else { 3 })
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

/// The probe the flags ask for, llama-server's load mode pinned for this machine.
fn spec(roots: &Roots, a: &ProbeArgs) -> Result<ProbeSpec, (anyhow::Error, i32)> {
    let mut backend = backend_spec(ServerFlags {
        kind: a.backend,
        model: &a.model,
        url: &a.url,
        server_bin: &a.server_bin,
        launch: a.launch.as_deref(),
        ready: &a.ready,
        tokenize: &a.tokenize,
        ollama_serve: a.ollama_serve.as_deref(),
    })
    .map_err(|e| {
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

/// The configuration to measure.
fn config(a: &ProbeArgs) -> ProbeConfig {
    ProbeConfig {
        ctx: a.ctx,
        batch: a.batch,
        ubatch: a.ubatch,
        parallel: a.parallel,
        gpu_layers: a.gpu_layers,
        flash_attn: a.flash_attn.and_then(FlashAttnChoice::setting),
        cache_type_k: a.cache_type_k.clone(),
        cache_type_v: a.cache_type_v.clone(),
        threads: a.threads,
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

fn med(v: &mut [f64]) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| v[v.len() / 2])
}

/// One row like llama-bench's, plus peaks: prefill over the prompts read whole, TTFT of the
/// fill (the whole prompt) and of the cached samples (a reused prefix) apart.
fn render(r: &ProbeResult) -> String {
    use probe::SampleKind;
    let c = &r.config;
    let ok: Vec<_> = r
        .samples
        .iter()
        .filter(|s| s.outcome == OutcomeClass::Ok)
        .collect();
    let pick = |kinds: &[SampleKind], f: &dyn Fn(&probe::SampleResult) -> Option<f64>| {
        let mut v: Vec<f64> = ok
            .iter()
            .filter(|s| kinds.contains(&s.kind))
            .filter_map(|s| f(s))
            .collect();
        med(&mut v).map_or("-".to_string(), |x| format!("{x:.1}"))
    };
    let whole = [SampleKind::Fill, SampleKind::Fresh, SampleKind::Short];
    let all = [
        SampleKind::Fill,
        SampleKind::Fresh,
        SampleKind::Short,
        SampleKind::Cached,
    ];
    let mut out = format!(
        "{:<10} ctx {:>7} batch {:>5} slots {:>2}  prompt {:>6} tok  pp {:>8} tok/s  tg {:>7} tok/s  ttft {:>8} ms  samples {}/{}",
        r.outcome.name(),
        c.ctx,
        c.batch.map_or("-".into(), |b| b.to_string()),
        c.parallel.unwrap_or(1),
        r.prompt_tokens_target,
        pick(&whole, &|s| s.prefill_tokens_per_s),
        pick(&all, &|s| s.decode_tokens_per_s),
        pick(&whole, &|s| s.ttft_ms),
        ok.len(),
        r.samples.len()
    );
    if ok.iter().any(|s| s.kind == SampleKind::Cached) {
        out += &format!(
            "\n  cached prefix: ttft {} ms, reused {}",
            pick(&[SampleKind::Cached], &|s| s.ttft_ms),
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
