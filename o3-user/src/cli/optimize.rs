//! `o3 optimize`: the flags, turned into a run's request ([`crate::optimize::run`] does the
//! run), and what the run says printed: progress and diagnostics on stderr (a bar on a
//! terminal, lines otherwise), the results table on stdout (then the summary as JSON with
//! `--json`), and the report written into the run directory.
//!
//! Exit status: 0 a configuration to serve was found; 1 an error stopped the run; 2 the
//! request was wrong or a pre-flight check failed (nothing stored); 3 the run measured and
//! nothing passed (stored as failed, with why); 130 interrupted (resume it).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::{FlashAttnChoice, ProbeConfig};
use crate::optimize::plan;
use crate::optimize::prober::{ProbeOutcome, ProbeRequest};
use crate::optimize::progress::{revision, Clock, Events};
use crate::optimize::run::{self, BudgetChoice, NewRun, Request, Start, Summary};
use crate::optimize::search::{self, Eta, Observer};
use crate::optimize::target::{choose_backend, BackendKind};
use crate::probe::phase::Phase;
use crate::util::units::span;

use super::{CliResult, Roots};

/// `--budget`: a duration from a minute to a year, `auto` or `none`.
fn parse_budget(s: &str) -> anyhow::Result<BudgetChoice> {
    match s {
        "auto" => Ok(BudgetChoice::Auto),
        "none" => Ok(BudgetChoice::None),
        _ => crate::util::duration::parse_in_range(
            s,
            Duration::from_secs(60),
            Duration::from_secs(365 * 86_400),
        )
        .map(|d| BudgetChoice::Seconds(d.as_secs_f64()))
        .map_err(|e| anyhow::anyhow!("{e} (or `auto`, `none`)")),
    }
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    o3 optimize --backend ollama --model qwen3:30b-a3b\n  \
    o3 optimize --backend llama-server --server-bin ~/llama.cpp/build/bin/llama-server \\\n    \
      --model ~/models/Qwen3-30B-A3B-Q4_K_M.gguf --gpu-layers 999 --flash-attn on\n  \
    o3 optimize --resume ~/.local/share/o3/runs/<run>\n\n\
    Exit status: 0 a configuration to serve was found; 1 an error stopped the run (stored as\n\
    failed); 2 a wrong request or a failed pre-flight check (nothing stored); 3 the run measured\n\
    and nothing passed (stored as failed, with why); 130 interrupted (--resume continues it).")]
pub struct OptimizeArgs {
    /// The server to optimize (default: llama-server for a .gguf --model, openai with
    /// --launch, else ollama).
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
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
    /// The llama-server binary. Given more than once (a Vulkan and a ROCm build, say), the
    /// builds are compared on the same workload as variants (see docs/optimizer.md).
    #[arg(long, value_name = "PATH", default_value = "llama-server", action = clap::ArgAction::Append)]
    pub server_bin: Vec<String>,
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
    /// Flash attention on, off or auto (the server decides; true/false mean on/off; fixed for
    /// the whole search).
    #[arg(long, value_enum, value_name = "on|off|auto")]
    pub flash_attn: Option<FlashAttnChoice>,
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
    pub budget: Option<BudgetChoice>,
    /// Context discovery: o3's binary search, or a baseline the benchmark compares it with.
    #[arg(long, value_enum, default_value = "binary", hide = true)]
    pub strategy: search::Strategy,
}

pub fn run(roots: &Roots, a: OptimizeArgs) -> CliResult {
    let roots = run::Roots {
        procfs: roots.procfs_root.clone(),
        sysfs: roots.sysfs_root.clone(),
        dev: roots.dev_root.clone(),
    };
    let mut progress = Progress::new(a.quiet);
    let (backend, chosen) = choose_backend(a.backend, a.model.as_deref(), a.launch.is_some());
    if let (Some(note), None, false) = (chosen, &a.resume, a.quiet) {
        eprintln!("o3: notice: {note}");
    }
    let done = run::run(&request(&a, backend), &roots, &mut progress).map_err(|e| {
        let code = if e.is_usage() { 2 } else { 1 };
        (e.into(), code)
    })?;
    print_table(&done.summary);
    write_report(&done.dir, a.quiet);
    if a.json {
        println!("{}", done.json);
    }
    let dir = done.dir.display();
    if done.summary.interrupted {
        eprintln!(
            "o3: interrupted; the partial summary is in {dir}; continue with `o3 optimize --resume {dir}`"
        );
        return Ok(130);
    }
    if let Some(why) = &done.summary.failure {
        eprintln!("o3: {why}; the run is stored as failed (its measurements are in {dir})");
        return Ok(3);
    }
    Ok(0)
}

/// The run's report in DIR/report (Markdown, SVG plots, one HTML page), or the command that
/// writes it when it could not be written.
fn write_report(dir: &std::path::Path, quiet: bool) {
    match crate::report::files::write(dir, &dir.join("report"), true) {
        Ok(w) if !quiet => {
            let files: Vec<String> = w.files.iter().map(|f| f.display().to_string()).collect();
            eprintln!("o3: report: {}", files.join(", "));
        }
        Ok(_) => {}
        Err(e) => eprintln!(
            "o3: warning: no report written ({e}); write it with `o3 report {} --html`",
            dir.display()
        ),
    }
}

/// The run the flags ask for.
fn request(a: &OptimizeArgs, backend: BackendKind) -> Request {
    let start = match &a.resume {
        Some(dir) => Start::Resume(dir.clone()),
        None => Start::New(Box::new(NewRun {
            backend,
            model: a.model.clone(),
            url: a.url.clone(),
            server_bin: a.server_bin[0].clone(),
            server_bins: if a.server_bin.len() > 1 {
                a.server_bin.clone()
            } else {
                Vec::new()
            },
            launch: a.launch.clone(),
            ready: a.ready.clone(),
            tokenize: a.tokenize.clone(),
            ollama_serve: a.ollama_serve.clone(),
            base: ProbeConfig {
                gpu_layers: a.gpu_layers,
                flash_attn: a.flash_attn.and_then(FlashAttnChoice::setting),
                cache_type_k: a.cache_type_k.clone(),
                cache_type_v: a.cache_type_v.clone(),
                threads: a.threads,
                ..ProbeConfig::default()
            },
            config: a.config.clone(),
            simulate: a.simulate.clone(),
            out: a.out.clone(),
            db: a.db.clone(),
        })),
    };
    Request {
        start,
        budget: a.budget,
        strategy: a.strategy,
        no_reuse: a.no_reuse,
        quiet: a.quiet,
    }
}

/// The run's progress on stderr: a bar on a terminal (from the search's start), lines
/// otherwise; nothing but what must be said with `--quiet`.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    tty: bool,
    quiet: bool,
    started: Instant,
    clock: Arc<Clock>,
    /// Where the live probe in flight stands.
    phase: Option<Arc<Phase>>,
    /// The predicted total (spent and ahead) that revisions are said against.
    total_s: Option<f64>,
    /// Without a terminal: the probe in flight in words, and the thread that says every
    /// [`HEARTBEAT`] that it still runs (a probe at depth can take an hour).
    current: Arc<std::sync::Mutex<String>>,
    heartbeat: Option<(
        Arc<std::sync::atomic::AtomicBool>,
        std::thread::JoinHandle<()>,
    )>,
}

/// How often a log (no terminal) hears of a probe that is still running.
const HEARTBEAT: Duration = Duration::from_secs(300);

impl Progress {
    fn new(quiet: bool) -> Progress {
        Progress {
            bar: None,
            tty: std::io::stderr().is_terminal(),
            quiet,
            started: Instant::now(),
            clock: Arc::new(Clock::default()),
            phase: None,
            total_s: None,
            current: Arc::default(),
            heartbeat: None,
        }
    }

    /// The thread that says, every [`HEARTBEAT`] of a probe, where it stands.
    fn heartbeat(
        &self,
    ) -> (
        Arc<std::sync::atomic::AtomicBool>,
        std::thread::JoinHandle<()>,
    ) {
        use std::sync::atomic::Ordering;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (stop2, clock, phase, current) = (
            stop.clone(),
            self.clock.clone(),
            self.phase.clone(),
            self.current.clone(),
        );
        let started = self.started;
        let h = std::thread::spawn(move || {
            let mut said = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let (ran, predicted) = clock.probe_time(started.elapsed().as_millis() as u64);
                let beat = (ran / HEARTBEAT.as_secs_f64()) as u64;
                let at = phase.as_ref().and_then(|p| p.describe());
                if beat > said && at.is_some() {
                    said = beat;
                    let what = current.lock().map(|c| c.clone()).unwrap_or_default();
                    eprintln!(
                        "o3: [{:>8}] {what} still running {}",
                        span(started.elapsed().as_secs_f64()),
                        probe_clock(at.as_deref(), ran, predicted)
                    );
                } else if beat < said {
                    said = 0;
                }
            }
        });
        (stop, h)
    }

    /// A bar whose work and ETA come from the clock, redrawn twice a second, and the probe in
    /// flight: its phase and its time against its prediction.
    fn bar(&self) -> indicatif::ProgressBar {
        let b = indicatif::ProgressBar::new(1);
        let (c1, c2, c3) = (self.clock.clone(), self.clock.clone(), self.clock.clone());
        let phase = self.phase.clone();
        let started = self.started;
        let ms = move || started.elapsed().as_millis() as u64;
        let style = indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {work} (ETA {model_eta}) {msg} {probe}",
        )
        .expect("valid template")
        .with_key(
            "work",
            move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let (done, total, _) = c1.read(ms());
                let _ = write!(w, "{}", work_bar(c1.fraction(ms()), done, total));
            },
        )
        .with_key(
            "model_eta",
            move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let (_, _, left) = c2.read(started.elapsed().as_millis() as u64);
                let _ = write!(w, "{}", span(left));
            },
        )
        .with_key(
            "probe",
            move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let (ran, predicted) = c3.probe_time(started.elapsed().as_millis() as u64);
                let at = phase.as_ref().and_then(|p| p.describe());
                let _ = write!(w, "{}", probe_clock(at.as_deref(), ran, predicted));
            },
        );
        b.set_style(style);
        b.enable_steady_tick(Duration::from_millis(500));
        b
    }

    /// A line of the run's own, above the bar if there is one.
    fn line(&self, text: &str) {
        match &self.bar {
            Some(b) => b.println(text),
            None => eprintln!("{text}"),
        }
    }

    /// A line of the search's progress (not with `--quiet`).
    fn progress_line(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None if !self.quiet && !self.tty => eprintln!("o3: {line}"),
            None => {}
        }
    }
}

/// `[sample 2/3 · 42 s of ~2.0 min]`: the probe in flight, its phase and time.
fn probe_clock(phase: Option<&str>, ran_s: f64, predicted_s: f64) -> String {
    let at = phase.map_or(String::new(), |p| format!("{p} · "));
    format!("[{at}{} of ~{}]", span(ran_s), span(predicted_s))
}

/// `████░░░░ 1.0 min/4.0 min`: the share of the work shown done (never less than before),
/// 30 cells wide, and the work done of the work predicted.
fn work_bar(fraction: f64, done: f64, total: f64) -> String {
    let filled = ((fraction.clamp(0.0, 1.0) * 30.0).round() as usize).min(30);
    format!(
        "{}{} {}/{}",
        "█".repeat(filled),
        "░".repeat(30 - filled),
        span(done),
        span(total)
    )
}

/// ` · 4 streams` for simultaneous streams.
fn streams(req: &ProbeRequest) -> String {
    if req.concurrency > 1 {
        format!(" · {} streams", req.concurrency)
    } else {
        String::new()
    }
}

/// The plan before the first probe, one item a line.
fn plan_text(items: &[plan::Item], budget: &str) -> String {
    let total: f64 = items.iter().map(|i| i.cost.expected_s).sum();
    let mut text = format!(
        "plan ({budget}; predicted from what is known before the first probe, re-planned as rates are measured):"
    );
    for i in items {
        text += &format!(
            "\n    {:<58} {:>10}{}",
            i.what,
            span(i.cost.expected_s),
            if i.priority == plan::Priority::Required {
                ""
            } else {
                "  (optional)"
            }
        );
    }
    text += &format!("\n    all of it: {}", span(total));
    text
}

impl Observer for Progress {
    fn plan(&mut self, items: &[plan::Item], budget: &str) {
        if self.quiet {
            return;
        }
        let text = plan_text(items, budget);
        match &self.bar {
            Some(b) => b.println(text),
            None => eprintln!("o3: {text}"),
        }
    }

    fn before(&mut self, req: &ProbeRequest, eta: &Eta) {
        self.clock
            .set(self.started.elapsed().as_millis() as u64, eta);
        self.total_s
            .get_or_insert(eta.spent_s + eta.probe.expected_s + eta.after_s);
        let what = format!("{} · {}{}", req.stage.name(), req.describe(), streams(req));
        if let Some(b) = &self.bar {
            b.set_message(format!("{what} (predicted {})", span(eta.probe.expected_s)));
        }
        if let Ok(mut c) = self.current.lock() {
            *c = what;
        }
    }

    fn after(&mut self, req: &ProbeRequest, out: &ProbeOutcome, eta: &Eta) {
        let ok = out.observations.iter().filter(|o| o.ok).count();
        let line = format!(
            "[{:>8}] {:<11} {:<54} {} ({ok}/{} requests ok, {} where {} was predicted; ETA {})",
            span(self.started.elapsed().as_secs_f64()),
            req.stage.name(),
            req.describe() + &streams(req),
            out.outcome.name(),
            out.observations.len(),
            span(out.wall_ms / 1000.0),
            span(eta.probe.expected_s),
            span(eta.after_s)
        );
        self.progress_line(&line);
        let total = eta.spent_s + eta.after_s;
        let what = format!(
            "{} {} ({})",
            req.stage.name(),
            req.describe(),
            out.outcome.name()
        );
        let said = self.total_s.and_then(|old| {
            revision(
                old,
                total,
                out.wall_ms / 1000.0,
                eta.probe.expected_s,
                &what,
            )
        });
        if let Some(r) = said {
            self.total_s = Some(total);
            self.progress_line(&format!("note: {r}"));
        }
    }

    fn note(&mut self, msg: &str) {
        self.progress_line(&format!("note: {msg}"));
    }
}

impl Events for Progress {
    fn notice(&mut self, msg: &str) {
        self.line(&format!("o3: notice: {msg}"));
    }

    fn warning(&mut self, msg: &str) {
        self.line(&format!("o3: warning: {msg}"));
    }

    fn say(&mut self, msg: &str) {
        self.line(&format!("o3: {msg}"));
    }

    fn start(&mut self) {
        self.started = Instant::now();
        if !self.quiet && self.tty {
            self.bar = Some(self.bar());
        } else if !self.quiet {
            self.heartbeat = Some(self.heartbeat());
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if let Some((stop, h)) = self.heartbeat.take() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = h.join();
        }
    }

    fn follow(&mut self, phase: Arc<Phase>) {
        self.phase = Some(phase);
    }
}

/// The results: one row per preset, then the context search, the time and the peaks.
fn print_table(s: &Summary) {
    println!();
    println!(
        "{:<14} {:>8} {:>6} {:>6} {:>8} {:>10} {:>12}  why",
        "preset", "context", "batch", "slots", "tok/s", "TTFT p95", "success"
    );
    for p in &s.presets {
        println!("{}", preset_row(s, &p.preset));
    }
    println!();
    for line in context_lines(s).into_iter().chain(time_lines(s)) {
        println!("{line}");
    }
    println!(
        "peaks: server RSS {} ({}), system RAM in use {}, GPU memory {}",
        mib(s.peaks.rss_peak_bytes),
        s.peaks.rss_method.as_deref().unwrap_or("not measured"),
        mib(s.peaks.mem_used_peak_bytes),
        mib(s.peaks.gpu_used_peak_bytes)
    );
    println!(
        "{} probe{} ({} now, {} from the journal) in {:.1} s; results in {}",
        s.probes.total,
        if s.probes.total == 1 { "" } else { "s" },
        s.probes.ran_now,
        s.probes.from_journal,
        s.wall_s,
        s.run_dir
    );
}

fn mib(b: Option<u64>) -> String {
    b.map_or("-".to_string(), |b| {
        format!("{:.0} MiB", b as f64 / 1048576.0)
    })
}

/// A preset's row: its configuration and rates, or why there is none.
fn preset_row(s: &Summary, pr: &crate::optimize::presets::Preset) -> String {
    let Some(c) = &pr.config else {
        return format!("{:<14} {:>8}  {}", pr.name, "-", pr.why);
    };
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
    // Where variants were compared, the settings a preset needs beside context and batch.
    let variant = if s.variants.is_empty() {
        String::new()
    } else {
        format!("[{}] ", search::variant_label(c))
    };
    format!(
        "{:<14} {:>8} {:>6} {:>6} {:>8.1} {:>7.0} ms {:>11.0}%  {variant}{}{depth}",
        pr.name,
        c.ctx,
        c.batch.map_or("-".into(), |b| b.to_string()),
        c.parallel.unwrap_or(1),
        pr.output_tokens_per_s.unwrap_or(0.0),
        pr.ttft_p95_ms.unwrap_or(0.0),
        m.map_or(0.0, |m| m.validation.success_rate * 100.0),
        pr.why
    )
}

/// The variants compared, one line each: the largest context that loads, the rates at the
/// ranking depth, and the role (or why it was not measured).
fn variant_lines(s: &Summary) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(r) = s.variants.iter().find(|o| o.rate_ctx.is_some()) {
        v.push(format!(
            "variants: {} compared; rates at ctx {} with fresh {}-token prompts",
            s.variants.len(),
            r.rate_ctx.unwrap_or(0),
            r.rate_tokens.unwrap_or(0)
        ));
    } else if !s.variants.is_empty() {
        v.push(format!(
            "variants: {} compared; none ranked",
            s.variants.len()
        ));
    }
    for o in &s.variants {
        let rates = match (o.prefill_tokens_per_s, o.decode_tokens_per_s) {
            (Some(p), Some(d)) => format!(", prefill {p:.1} tok/s, decode {d:.1} tok/s"),
            _ => String::new(),
        };
        let role = if o.roles.is_empty() {
            o.skipped.clone().unwrap_or_default()
        } else {
            o.roles.join(", ")
        };
        v.push(format!(
            "  {:<34} loads {:>8}{rates}{}",
            o.label,
            o.max_loads.map_or("-".into(), |m| m.to_string()),
            if role.is_empty() {
                String::new()
            } else {
                format!("  [{role}]")
            }
        ));
    }
    v
}

/// The context search in a line, what failed filled, and the prompt cap's warning.
fn context_lines(s: &Summary) -> Vec<String> {
    let c: &search::ContextSearch = &s.context;
    let mut v = vec![format!(
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
    )];
    v.extend(variant_lines(s));
    if let Some(f) = &c.fails_filled {
        v.push(format!(
            "  loads at {} but fails filled: {}",
            f.ctx,
            f.error.as_deref().unwrap_or("no detail")
        ));
    }
    if let Some(cap) = s.max_prompt_tokens {
        v.push(format!(
            "NOT PROVEN AT DEPTH: prompts were capped at {cap} tokens (prompt.max_prompt_tokens); contexts above {} were not filled to {:.0} %",
            (f64::from(cap) / s.fill) as u64,
            s.fill * 100.0
        ));
    }
    v
}

/// The time spent against the floor and the prediction, what the budget cut, the time model.
fn time_lines(s: &Summary) -> Vec<String> {
    let p = &s.plan;
    let mut v = vec![format!(
        "time: {} of probes{}{}; {}; predicted {} at the start",
        span(p.spent_s),
        p.floor_s.map_or(String::new(), |f| format!(
            " = {:.2}× the floor of {} (one load, one fill to the maximum, one decode)",
            p.spent_s / f.max(1e-9),
            span(f)
        )),
        if s.simulated { " (simulated)" } else { "" },
        p.budget,
        p.predicted_at_start_s.map_or("-".into(), span)
    )];
    v.extend(
        p.cut
            .iter()
            .map(|cut| format!("  cut by the budget: {cut}")),
    );
    v.push(format!("time model: {}", p.time_model));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_work_bar_fills_with_the_work_done() {
        assert!(work_bar(0.0, 0.0, 0.0).starts_with(&"░".repeat(30)));
        let half = work_bar(0.5, 30.0, 60.0);
        assert_eq!(half, "█".repeat(15) + &"░".repeat(15) + " 30 s/60 s");
        assert!(work_bar(1.5, 90.0, 60.0).starts_with(&"█".repeat(30)));
    }

    #[test]
    fn the_probe_in_flight_shows_its_phase_and_time() {
        assert_eq!(
            probe_clock(Some("sample 2/3"), 42.0, 120.0),
            "[sample 2/3 · 42 s of ~2.0 min]"
        );
        assert_eq!(probe_clock(None, 3.0, 10.0), "[3 s of ~10 s]");
    }

    #[test]
    fn budgets_are_a_duration_auto_or_none() {
        assert_eq!(parse_budget("auto").unwrap(), BudgetChoice::Auto);
        assert_eq!(parse_budget("none").unwrap(), BudgetChoice::None);
        assert_eq!(parse_budget("90m").unwrap(), BudgetChoice::Seconds(5400.0));
        let e = parse_budget("10s").unwrap_err().to_string();
        assert!(e.ends_with("(or `auto`, `none`)"), "{e}");
    }
}
