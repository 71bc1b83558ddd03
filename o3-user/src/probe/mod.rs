//! One configuration, measured honestly: start (or reach) the server, wait until it is ready,
//! one warm-up request, then N samples with prompts of an exact token count (a fresh random
//! prefix each, so no prompt cache helps), each timed on the client and by the server, with the
//! resource peaks of the server's own process tree during the sample.

pub mod prompt;
pub mod trace;

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backend::http::{self, LineParser, Streamed};
use crate::backend::launch::{free_port, Launched};
use crate::backend::openai::{self, Template};
use crate::backend::{classify, llama_server, ollama, OutcomeClass, ProbeConfig};
use crate::telemetry::ebpf::Loaded;
use crate::telemetry::procfs::{ProcTree, SystemMemory};
use crate::telemetry::sampler::{self, SamplerHandle, Tick};
use crate::telemetry::watchdog::{Breach, Thresholds, Watchdog};
use crate::telemetry::{monotonic_ns, Sample, Source};

/// Which server, and how o3 reaches it.
#[derive(Debug, Clone)]
pub enum BackendSpec {
    /// Any OpenAI-compatible server o3 launches from a template.
    OpenAi {
        template: Template,
        model: String,
        /// Path polled until it answers 200 (e.g. `/v1/models`).
        ready_path: String,
        /// POST path that returns `{"tokens": [...]}` for `{"input": text}`, if the server has
        /// one (llama-cpp-python: `/extras/tokenize`).
        tokenize_path: Option<String>,
    },
    /// llama.cpp's llama-server, launched by o3 with explicit flags for each configuration.
    LlamaServer {
        bin: String,
        model: String,
        /// From the binary's `--help`, read once.
        flags: Box<llama_server::Flags>,
    },
    /// Ollama: a server already running at `url` (per-request options only), or, with
    /// `serve`, one o3 starts for each configuration (e.g. `ollama serve`) on a free loopback
    /// port with the server environment the configuration needs (`OLLAMA_NUM_PARALLEL`,
    /// `OLLAMA_FLASH_ATTENTION`, `OLLAMA_KV_CACHE_TYPE`, ...).
    Ollama {
        url: String,
        model: String,
        serve: Option<Vec<String>>,
    },
}

impl BackendSpec {
    pub fn fixed_by_server(&self, cfg: &ProbeConfig) -> Vec<&'static str> {
        match self {
            BackendSpec::OpenAi { template, .. } => template.fixed_by_server(cfg),
            BackendSpec::LlamaServer { .. } => Vec::new(),
            BackendSpec::Ollama { serve, .. } => ollama::fixed_by_server(cfg, serve.is_some()),
        }
    }
}

/// What differs between backends once the server is reachable.
struct Driver {
    base: String,
    request_url: String,
    parse: LineParser,
    model: String,
    backend: Backend,
    tokenize: Option<(String, &'static str)>,
}

#[derive(Clone, Copy, PartialEq)]
enum Backend {
    OpenAi,
    LlamaServer,
    Ollama,
}

impl Driver {
    fn body(
        &self,
        cfg: &ProbeConfig,
        prompt: &str,
        max_tokens: u32,
        seed: u32,
    ) -> serde_json::Value {
        match self.backend {
            Backend::OpenAi => openai::completion_request(&self.model, prompt, max_tokens, seed),
            Backend::LlamaServer => llama_server::completion_request(prompt, max_tokens, seed),
            Backend::Ollama => ollama::generate_request(&self.model, prompt, cfg, max_tokens, seed),
        }
    }
}

/// The pid listening on a loopback TCP port, from /proc/net/tcp{,6} and the fds of every
/// process (for servers o3 did not start: their process tree is what gets measured).
pub fn listener_pid(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
            else {
                continue;
            };
            let lport = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if lport == Some(port) && *state == "0A" {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for (pid, dir) in crate::telemetry::procfs::pid_dirs(std::path::Path::new("/proc")).ok()? {
        let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| target.as_os_str() == i.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

#[derive(Debug, Clone)]
pub struct ProbeSpec {
    pub backend: BackendSpec,
    pub config: ProbeConfig,
    /// Measured rounds after the warm-up (each of `concurrency` simultaneous requests).
    pub samples: u32,
    /// Simultaneous requests per round (the server needs as many slots).
    pub concurrency: u32,
    pub output_tokens: u32,
    /// Fraction of the context the prompt fills (0.9: the KV cache is really used).
    pub fill: f64,
    /// Exact prompt length instead of `fill` (may exceed the context on purpose).
    pub prompt_tokens: Option<u32>,
    /// Cap on prompt tokens, so huge contexts stay affordable (stated in the result).
    pub max_prompt_tokens: Option<u32>,
    /// For each request; `None`: the adaptive timeout.
    pub timeout: Option<Duration>,
    /// Longest wait for the server to become ready.
    pub load_timeout: Duration,
    pub interval: Duration,
    pub seed: u64,
    /// Watchdog limits: a breach stops the server and the probe is `safety_abort`.
    pub safety: Option<Thresholds>,
    /// Wait after the warm-up before the measured rounds (a server just given more slots
    /// settles first).
    pub stabilize: Duration,
    /// Set from outside (a signal) to abandon the probe: waits and streams end at once, the
    /// server o3 started is stopped, and the result says `interrupted`.
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl ProbeSpec {
    fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// Runs `fut` unless `spec.cancel` is set first (`None` then).
fn cancellable<F: std::future::Future>(
    rt: &tokio::runtime::Runtime,
    spec: &ProbeSpec,
    fut: F,
) -> Option<F::Output> {
    rt.block_on(async {
        tokio::select! {
            out = fut => Some(out),
            _ = async {
                while !spec.cancelled() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            } => None,
        }
    })
}

/// The error text of a probe abandoned through `ProbeSpec::cancel`.
pub const INTERRUPTED: &str = "interrupted";

/// Adaptive timeout: 60 s + 0.5 s per 1k context + 0.2 s per batch unit, within 30–300 s.
pub fn adaptive_timeout(ctx: u32, batch: Option<u32>) -> Duration {
    let s = 60.0 + 0.5 * ctx as f64 / 1000.0 + 0.2 * batch.unwrap_or(0) as f64;
    Duration::from_secs_f64(s.clamp(30.0, 300.0))
}

/// Resource peaks of the server's tree during one sample.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Peaks {
    pub rss_peak_bytes: Option<u64>,
    pub cpu_percent_avg: Option<f64>,
    pub mem_used_peak_bytes: Option<u64>,
    pub gpu_usable_used_peak_bytes: Option<u64>,
    pub gpu_temp_peak_c: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SampleResult {
    pub outcome: OutcomeClass,
    /// Which round of simultaneous requests this one belonged to (0-based).
    pub round: u32,
    pub prompt_tokens: Option<u64>,
    /// How the prompt's token count is known: `server_tokenizer`, `server_reported`, `estimate`.
    pub prompt_tokens_source: &'static str,
    pub output_tokens: Option<u64>,
    pub ttft_ms: Option<f64>,
    pub e2e_ms: f64,
    pub prefill_tokens_per_s: Option<f64>,
    pub decode_tokens_per_s: Option<f64>,
    /// `server` when the server's own timings gave the rates, `client` when token events did.
    pub rates_source: &'static str,
    pub peaks: Peaks,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    pub outcome: OutcomeClass,
    pub config: ProbeConfig,
    /// Configuration fields this backend could not set.
    pub fixed_by_server: Vec<&'static str>,
    pub prompt_tokens_target: u64,
    pub load_ms: Option<f64>,
    pub samples: Vec<SampleResult>,
    /// One entry per round of `concurrency` simultaneous requests.
    pub rounds: Vec<Round>,
    /// Exact peak RSS of the server tree over the whole probe (eBPF), else sampled.
    pub rss_peak_bytes: Option<u64>,
    pub rss_method: &'static str,
    pub server_pid: Option<u32>,
    pub server_exit: Option<String>,
    pub error: Option<String>,
    /// The server's last output lines when something failed.
    pub log_tail: Option<String>,
    /// Every sample of the server tree taken during the probe (for trace files; not in the
    /// JSON result).
    #[serde(skip)]
    pub timeline: Option<Timeline>,
}

/// The samples of one probe, from the server's start (or attach) to the probe's end.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// Wall-clock time of `t_ns = 0`, ns since the Unix epoch.
    pub start_unix_ns: u64,
    pub samples: Vec<Sample>,
}

/// One round of simultaneous requests.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub streams: u32,
    /// From sending the first request to the end of the last stream.
    pub wall_ms: f64,
    /// Output tokens of the successful streams.
    pub output_tokens: u64,
    /// Aggregate decode throughput: output tokens of the round / its wall time.
    pub output_tokens_per_s: f64,
}

/// Telemetry of the server tree for the duration of a probe.
struct Watch {
    /// How the server tree's RSS is measured: `ebpf` or `procfs_polling`.
    method: &'static str,
    /// The first safety breach, if the watchdog saw one.
    breach: std::sync::Arc<std::sync::Mutex<Option<Breach>>>,
    sampler: Option<SamplerHandle>,
    rx: std::sync::mpsc::Receiver<Vec<Tick>>,
    ticks: Vec<Tick>,
    t0: u64,
    t0_unix_ns: u64,
}

impl Watch {
    /// `stop_group`: the server's process group, stopped on a breach (only for servers o3
    /// launched).
    fn start(
        pid: u32,
        ebpf: Option<&mut Loaded>,
        interval: Duration,
        safety: Option<&Thresholds>,
        stop_group: bool,
    ) -> Watch {
        let mut sources: Vec<Box<dyn Source>> = Vec::new();
        // The method is the source actually used, not whether eBPF was loaded: a session whose
        // source was already taken falls back to procfs and must say so.
        let method = match ebpf.and_then(|l| l.take_source()) {
            Some(s) => {
                sources.push(Box::new(s));
                "ebpf"
            }
            None => {
                if let Ok(t) = ProcTree::new(std::path::Path::new("/proc"), pid) {
                    sources.push(Box::new(t));
                }
                "procfs_polling"
            }
        };
        if let Ok(m) = SystemMemory::open(std::path::Path::new("/proc")) {
            sources.push(Box::new(m));
        }
        let breach = std::sync::Arc::new(std::sync::Mutex::new(None));
        if let Some(th) = safety {
            let seen = breach.clone();
            sources.push(Box::new(Watchdog::new(
                th.clone(),
                Box::new(move |b: &Breach| {
                    if stop_group {
                        // SAFETY: SIGTERM to the process group o3 created for this server.
                        unsafe { libc::kill(-(pid as i32), libc::SIGTERM) };
                    }
                    if let Ok(mut s) = seen.lock() {
                        s.get_or_insert_with(|| b.clone());
                    }
                }),
            )));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let t0 = monotonic_ns();
        let t0_unix_ns = crate::record::unix_now_ns();
        let sampler = sampler::spawn(sources, interval, Duration::ZERO, t0, move |b| {
            tx.send(b).is_ok()
        });
        Watch {
            method,
            breach,
            sampler: Some(sampler),
            rx,
            ticks: Vec::new(),
            t0,
            t0_unix_ns,
        }
    }

    fn breach(&self) -> Option<Breach> {
        self.breach.lock().ok()?.clone()
    }

    fn now(&self) -> u64 {
        monotonic_ns() - self.t0
    }

    fn drain(&mut self) {
        while let Ok(b) = self.rx.try_recv() {
            self.ticks.extend(b);
        }
    }

    /// Peaks over the ticks within [from, to] (ns since start).
    fn peaks(&mut self, from: u64, to: u64) -> Peaks {
        self.drain();
        let in_window: Vec<&Tick> = self
            .ticks
            .iter()
            .filter(|t| t.sample.t_ns >= from && t.sample.t_ns <= to)
            .collect();
        let mut p = Peaks::default();
        for t in &in_window {
            let s = &t.sample;
            p.rss_peak_bytes = p.rss_peak_bytes.max(s.rss_bytes);
            p.mem_used_peak_bytes = p.mem_used_peak_bytes.max(s.mem_used_bytes);
            for g in &s.gpus {
                p.gpu_usable_used_peak_bytes =
                    p.gpu_usable_used_peak_bytes.max(g.usable_used_bytes);
                if let Some(t) = g.reading.temp_edge_c {
                    p.gpu_temp_peak_c = Some(p.gpu_temp_peak_c.map_or(t, |x: f64| x.max(t)));
                }
            }
        }
        if let (Some(a), Some(b)) = (in_window.first(), in_window.last()) {
            if let (Some(c0), Some(c1)) = (a.sample.cpu_ns, b.sample.cpu_ns) {
                let at = |s: &Sample| s.cpu_t_ns.unwrap_or(s.t_ns);
                let dt = at(&b.sample).saturating_sub(at(&a.sample));
                if dt > 0 {
                    p.cpu_percent_avg = Some(c1.saturating_sub(c0) as f64 / dt as f64 * 100.0);
                }
            }
        }
        p
    }

    /// Stops sampling; returns the last sample's exact running RSS peak if eBPF measured it,
    /// and every sample.
    fn finish(mut self) -> (Option<u64>, Timeline) {
        if let Some(s) = self.sampler.take() {
            s.finish();
        }
        self.drain();
        let peak = self.ticks.last().and_then(|t| t.sample.rss_peak_bytes);
        let samples = std::mem::take(&mut self.ticks)
            .into_iter()
            .map(|t| t.sample)
            .collect();
        (
            peak,
            Timeline {
                start_unix_ns: self.t0_unix_ns,
                samples,
            },
        )
    }
}

fn post_json(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    url: &str,
    body: serde_json::Value,
) -> Option<serde_json::Value> {
    rt.block_on(async {
        let r = client.post(url).json(&body).send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    })
}

/// Runs one probe to its end. Never fails: every way of failing is an outcome class.
pub fn run(spec: &ProbeSpec, mut ebpf: Option<&mut Loaded>) -> ProbeResult {
    let cfg = &spec.config;
    let mut result = ProbeResult {
        outcome: OutcomeClass::Ok,
        config: cfg.clone(),
        fixed_by_server: spec.backend.fixed_by_server(cfg),
        prompt_tokens_target: 0,
        load_ms: None,
        samples: Vec::new(),
        rounds: Vec::new(),
        rss_peak_bytes: None,
        rss_method: "not_measured",
        server_pid: None,
        server_exit: None,
        error: None,
        log_tail: None,
        timeline: None,
    };
    // Where the watch's samples go when it stops, on every path out of this function.
    let timeline: std::cell::RefCell<Option<Timeline>> = std::cell::RefCell::new(None);
    let fail = |mut r: ProbeResult, class: OutcomeClass, error: String, tail: Option<String>| {
        r.outcome = class;
        r.error = Some(error);
        r.log_tail = tail;
        r.timeline = timeline.take();
        r
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fail(
                result,
                OutcomeClass::HttpError,
                format!("tokio runtime: {e}"),
                None,
            )
        }
    };
    // No idle connection reuse: llama-server closes a connection after a streamed answer
    // while advertising keep-alive, and a POST sent on it fails (reqwest does not retry POSTs).
    let client = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(0)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            return fail(
                result,
                OutcomeClass::HttpError,
                format!("HTTP client: {e}"),
                None,
            )
        }
    };
    let timeout = spec
        .timeout
        .unwrap_or_else(|| adaptive_timeout(cfg.ctx, cfg.batch));

    // Start (or find) the server.
    let load_started = Instant::now();
    let mut server: Option<Launched> = None;
    // Servers o3 launches listen on a free loopback port.
    let port = match (&spec.backend, free_port()) {
        (BackendSpec::Ollama { serve: None, .. }, _) => 0,
        (_, Ok(p)) => p,
        (_, Err(e)) => {
            return fail(
                result,
                OutcomeClass::LoadFailed,
                format!("no free port: {e}"),
                None,
            )
        }
    };
    let (driver, ready_url) = match &spec.backend {
        BackendSpec::OpenAi {
            template,
            model,
            ready_path,
            tokenize_path,
        } => {
            let argv = match template.fill(cfg, model, "127.0.0.1", port) {
                Ok(a) => a,
                Err(e) => return fail(result, OutcomeClass::LoadFailed, e, None),
            };
            match launch(&argv, port, &[], ebpf.as_deref_mut()) {
                Ok(l) => server = Some(l),
                Err(e) => return fail(result, OutcomeClass::LoadFailed, e, None),
            }
            let base = format!("http://127.0.0.1:{port}");
            (
                Driver {
                    request_url: format!("{base}/v1/completions"),
                    tokenize: tokenize_path
                        .clone()
                        .map(|p| (format!("{base}{p}"), "input")),
                    base: base.clone(),
                    parse: openai::parse_sse_line,
                    model: model.clone(),
                    backend: Backend::OpenAi,
                },
                format!("{base}{ready_path}"),
            )
        }
        BackendSpec::LlamaServer { bin, model, flags } => {
            let args = match llama_server::command_args(
                flags,
                std::path::Path::new(model),
                cfg,
                "127.0.0.1",
                port,
            ) {
                Ok(a) => a,
                Err(e) => return fail(result, OutcomeClass::LoadFailed, e, None),
            };
            let mut argv = vec![bin.clone()];
            argv.extend(args);
            match launch(&argv, port, &[], ebpf.as_deref_mut()) {
                Ok(l) => server = Some(l),
                Err(e) => return fail(result, OutcomeClass::LoadFailed, e, None),
            }
            let base = format!("http://127.0.0.1:{port}");
            (
                Driver {
                    request_url: format!("{base}/completion"),
                    tokenize: Some((format!("{base}/tokenize"), "content")),
                    base: base.clone(),
                    parse: llama_server::parse_sse_line,
                    model: model.clone(),
                    backend: Backend::LlamaServer,
                },
                format!("{base}/health"),
            )
        }
        BackendSpec::Ollama { url, model, serve } => {
            let base = match serve {
                None => url.trim_end_matches('/').to_string(),
                Some(argv) => {
                    let host = format!("127.0.0.1:{port}");
                    let env = match ollama::server_env(cfg, &host) {
                        Ok(e) => e,
                        Err(e) => {
                            return fail(result, OutcomeClass::LoadFailed, e.to_string(), None)
                        }
                    };
                    match launch(argv, port, &env, ebpf.as_deref_mut()) {
                        Ok(l) => server = Some(l),
                        Err(e) => return fail(result, OutcomeClass::LoadFailed, e, None),
                    }
                    format!("http://{host}")
                }
            };
            (
                Driver {
                    request_url: format!("{base}/api/generate"),
                    tokenize: None,
                    base: base.clone(),
                    parse: ollama::parse_stream_line,
                    model: model.clone(),
                    backend: Backend::Ollama,
                },
                format!("{base}/api/version"),
            )
        }
    };
    let pid = match server.as_ref() {
        Some(l) => Some(l.pid),
        None => reqwest::Url::parse(&driver.base)
            .ok()
            .and_then(|u| u.port_or_known_default())
            .and_then(listener_pid),
    };
    result.server_pid = pid;
    let mut watch = match pid {
        Some(pid) => {
            if server.is_none() {
                // Not o3's child: track the running tree from now on.
                if let Some(l) = ebpf.as_deref_mut() {
                    let parents =
                        crate::telemetry::procfs::scan_parents(std::path::Path::new("/proc"))
                            .unwrap_or_default();
                    let _ = l.attach_existing(
                        std::path::Path::new("/proc"),
                        &crate::telemetry::procfs::descendants(&parents, pid),
                    );
                }
            }
            Some(Watch::start(
                pid,
                ebpf,
                spec.interval,
                spec.safety.as_ref(),
                server.is_some(),
            ))
        }
        None => None,
    };
    result.rss_method = watch.as_ref().map_or("not_measured", |w| w.method);
    let finish_watch = |w: Option<Watch>| {
        let (peak, t) = w.map(Watch::finish)?;
        *timeline.borrow_mut() = Some(t);
        peak
    };
    let tail = |server: &Option<Launched>| server.as_ref().map(Launched::tail);

    // Readiness.
    loop {
        if let Some(l) = server.as_mut() {
            if let Some(exit) = l.exited() {
                let t = l.tail();
                let mut class = classify::classify_exit(exit.code, exit.signal, &t, true);
                if let Some(b) = watch.as_ref().and_then(Watch::breach) {
                    class = OutcomeClass::SafetyAbort;
                    result.server_exit = Some(format!("{exit:?}"));
                    finish_watch(watch);
                    return fail(result, class, b.to_string(), Some(t));
                }
                result.server_exit = Some(format!("{exit:?}"));
                finish_watch(watch);
                return fail(
                    result,
                    class,
                    format!("the server exited while loading ({exit:?})"),
                    Some(t),
                );
            }
        }
        let status = rt.block_on(async {
            match client
                .get(&ready_url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                Ok(r) => {
                    let st = r.status().as_u16();
                    Some((st, r.text().await.unwrap_or_default()))
                }
                Err(_) => None,
            }
        });
        let ready = match (&status, driver.backend) {
            (Some((st, body)), Backend::LlamaServer) => {
                matches!(
                    llama_server::parse_health(*st, body),
                    llama_server::Health::Ready
                )
            }
            (Some((st, _)), _) => (200..300).contains(st),
            (None, Backend::Ollama) if server.is_none() => {
                finish_watch(watch);
                return fail(
                    result,
                    OutcomeClass::LoadFailed,
                    format!(
                        "cannot reach {} (is the server running? check --url)",
                        driver.base
                    ),
                    None,
                );
            }
            (None, _) => false,
        };
        if ready {
            break;
        }
        if spec.cancelled() {
            finish_watch(watch);
            return fail(result, OutcomeClass::LoadFailed, INTERRUPTED.into(), None);
        }
        if load_started.elapsed() > spec.load_timeout {
            let t = tail(&server);
            finish_watch(watch);
            return fail(
                result,
                OutcomeClass::LoadFailed,
                format!(
                    "not ready after {:.0} s ({ready_url})",
                    spec.load_timeout.as_secs_f64()
                ),
                t,
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // Prompt length: the fill depth of the context, capped.
    let target = match spec.prompt_tokens {
        Some(n) => n.max(1) as u64,
        None => {
            let mut t = (cfg.ctx as f64 * spec.fill) as u64;
            if let Some(cap) = spec.max_prompt_tokens {
                t = t.min(cap as u64);
            }
            t.saturating_sub(spec.output_tokens as u64).max(1)
        }
    };
    result.prompt_tokens_target = target;

    let mut count = |text: &str| -> Option<usize> {
        let (url, key) = driver.tokenize.as_ref()?;
        let v = post_json(&rt, &client, url, serde_json::json!({ *key: text }))?;
        v.get("tokens")?.as_array().map(|a| a.len())
    };
    let has_tokenizer = count("probe").is_some();

    // Warm-up (not measured): loads the model with this configuration, warms caches. Its
    // reported prompt count calibrates words per token where the server has no tokenizer.
    let warm_words = 64;
    let warm_prompt = prompt::words(&mut prompt::Rng::new(spec.seed), warm_words);
    let warm_body = driver.body(cfg, &warm_prompt, 4, spec.seed as u32);
    let Some(w) = cancellable(
        &rt,
        spec,
        http::stream(
            &client,
            &driver.request_url,
            &warm_body,
            driver.parse,
            timeout.max(spec.load_timeout),
        ),
    ) else {
        finish_watch(watch);
        return fail(result, OutcomeClass::LoadFailed, INTERRUPTED.into(), None);
    };
    if result.load_ms.is_none() {
        result.load_ms = Some(load_started.elapsed().as_secs_f64() * 1000.0);
    }
    if w.outcome != OutcomeClass::Ok {
        let exited = server.as_mut().and_then(settle);
        let t = tail(&server);
        let class = match &exited {
            Some(e) => classify::classify_exit(e.code, e.signal, t.as_deref().unwrap_or(""), false),
            None => w.outcome,
        };
        result.server_exit = exited.map(|e| format!("{e:?}"));
        finish_watch(watch);
        let error = match (driver.backend, w.status) {
            (Backend::Ollama, Some(404)) => format!(
                "{} (the server has: {})",
                w.error.clone().unwrap_or_default(),
                ollama_models(&rt, &client, &driver.base)
            ),
            _ => w.error.clone().unwrap_or_default(),
        };
        let class = if driver.backend == Backend::Ollama && w.status == Some(404) {
            OutcomeClass::LoadFailed
        } else {
            class
        };
        return fail(result, class, error, t);
    }
    // Without a tokenizer, tokens = fixed + per_word × words, fitted from the warm-up and one
    // longer calibration request (the fixed part is the server's prompt template).
    let mut per_word = 1.0;
    let mut fixed = 0.0;
    if !has_tokenizer {
        let long_words = 512;
        let long_prompt = prompt::words(&mut prompt::Rng::new(spec.seed ^ 0xca1), long_words);
        let c = rt.block_on(http::stream(
            &client,
            &driver.request_url,
            &driver.body(cfg, &long_prompt, 1, spec.seed as u32),
            driver.parse,
            timeout,
        ));
        let short = w.timings.as_ref().and_then(|t| t.prompt_tokens);
        let long = c.timings.as_ref().and_then(|t| t.prompt_tokens);
        if let (Some(a), Some(b)) = (short, long) {
            if b > a {
                per_word = (b - a) as f64 / (long_words - warm_words) as f64;
                fixed = a as f64 - per_word * warm_words as f64;
            }
        }
    }

    // Ollama: the configuration really in effect.
    if driver.backend == Backend::Ollama {
        let ps = rt.block_on(async {
            client
                .get(format!("{}/api/ps", driver.base))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()
        });
        if let Some(Ok(Some(m))) = ps.map(|b| ollama::parse_ps(&b, &driver.model)) {
            let class = if m.cpu_spill() {
                Some((
                    OutcomeClass::CpuSpill,
                    format!(
                        "{} of {} bytes on the GPU: layers spilled to the CPU",
                        m.size_vram_bytes, m.size_bytes
                    ),
                ))
            } else if m.clamped(cfg.ctx) {
                Some((
                    OutcomeClass::Clamped,
                    format!(
                        "context {} requested, {:?} in effect",
                        cfg.ctx, m.context_length
                    ),
                ))
            } else {
                None
            };
            if let Some((class, why)) = class {
                finish_watch(watch);
                return fail(result, class, why, None);
            }
        }
    }

    // Settle (a cancel ends the wait).
    let settle_until = Instant::now() + spec.stabilize;
    while Instant::now() < settle_until && !spec.cancelled() {
        std::thread::sleep(Duration::from_millis(20).min(settle_until - Instant::now()));
    }
    let streams = spec.concurrency.max(1);
    'rounds: for round in 0..spec.samples {
        // Every stream of a round gets its own prompt (no shared prefix for a cache to reuse).
        let mut prompts = Vec::with_capacity(streams as usize);
        for k in 0..streams {
            let seed = spec
                .seed
                .wrapping_add(round as u64 * streams as u64 + k as u64 + 1);
            let (prompt, tokens, source) = if has_tokenizer {
                match prompt::fit(seed, target as usize, 1.0, &mut count) {
                    Some((p, n)) => (p, Some(n as u64), "server_tokenizer"),
                    None => {
                        // A prompt of a guessed length would measure something else: say so.
                        match server.as_mut().and_then(settle) {
                            Some(exit) => {
                                result.outcome = OutcomeClass::Crashed;
                                result.error = Some(format!("the server exited ({exit:?})"));
                                result.server_exit = Some(format!("{exit:?}"));
                            }
                            None => {
                                result.outcome = OutcomeClass::HttpError;
                                result.error =
                                    Some("the server's tokenizer stopped answering".into());
                            }
                        }
                        result.log_tail = tail(&server);
                        break 'rounds;
                    }
                }
            } else {
                let n = ((target as f64 - fixed) / per_word).max(1.0) as usize;
                (
                    prompt::words(&mut prompt::Rng::new(seed), n),
                    None,
                    "estimate",
                )
            };
            prompts.push((seed, prompt, tokens, source));
        }
        let from = watch.as_ref().map_or(0, Watch::now);
        let round_started = Instant::now();
        let bodies: Vec<serde_json::Value> = prompts
            .iter()
            .map(|(seed, prompt, _, _)| driver.body(cfg, prompt, spec.output_tokens, *seed as u32))
            .collect();
        if spec.cancelled() {
            result.outcome = OutcomeClass::HttpError;
            result.error = Some(INTERRUPTED.into());
            break;
        }
        let all =
            futures_util::future::join_all(bodies.iter().map(|body| {
                http::stream(&client, &driver.request_url, body, driver.parse, timeout)
            }));
        let streamed: Vec<Streamed> = match cancellable(&rt, spec, all) {
            Some(s) => s,
            None => {
                result.outcome = OutcomeClass::HttpError;
                result.error = Some(INTERRUPTED.into());
                break;
            }
        };
        let round_ms = round_started.elapsed().as_secs_f64() * 1000.0;
        let to = watch.as_ref().map_or(0, Watch::now);
        let peaks = watch
            .as_mut()
            .map(|w| w.peaks(from, to))
            .unwrap_or_default();
        let mut round_tokens = 0u64;
        let mut first_failure: Option<(OutcomeClass, Option<String>)> = None;
        for (mut s, (seed, prompt, tokens, source)) in streamed.into_iter().zip(prompts) {
            let alive = server.as_mut().is_none_or(|l| l.exited().is_none());
            if s.outcome == OutcomeClass::Crashed && s.token_events == 0 && alive {
                // Some servers (llama-cpp-python) answer a streamed request they reject with an
                // empty 200 stream; the same request unstreamed says why.
                let mut body = driver.body(cfg, &prompt, 1, seed as u32);
                body["stream"] = serde_json::Value::Bool(false);
                let (status, text) = rt.block_on(async {
                    // The server closed the pooled connection of the broken stream: the first
                    // send may fail on it, the retry opens a new one.
                    let mut last = (0, String::new());
                    for _ in 0..2 {
                        match client
                            .post(&driver.request_url)
                            .json(&body)
                            .timeout(timeout)
                            .send()
                            .await
                        {
                            Ok(r) => {
                                return (r.status().as_u16(), r.text().await.unwrap_or_default())
                            }
                            Err(e) => last = (0, e.to_string()),
                        }
                    }
                    last
                });
                if status >= 400 {
                    s.outcome = classify::classify_http(status, &text);
                    s.status = Some(status);
                    s.error = Some(text);
                }
            }
            let mut outcome = s.outcome;
            if let Some(l) = server.as_mut() {
                let exited = if s.outcome == OutcomeClass::Crashed {
                    settle(l)
                } else {
                    l.exited()
                };
                if let Some(exit) = exited {
                    outcome = classify::classify_exit(exit.code, exit.signal, &l.tail(), false);
                    result.server_exit = Some(format!("{exit:?}"));
                }
            }
            if let Some(b) = watch.as_ref().and_then(Watch::breach) {
                outcome = OutcomeClass::SafetyAbort;
                s.error = Some(b.to_string());
            }
            let t = s.timings.clone().unwrap_or_default();
            let output_tokens = t
                .predicted_tokens
                .or(Some(s.token_events))
                .filter(|_| s.token_events > 0);
            let (prefill, decode, rates) = match (t.prefill_tokens_per_s(), t.decode_tokens_per_s())
            {
                (Some(p), Some(d)) => (Some(p), Some(d), "server"),
                _ => {
                    // Client-side: prefill = prompt / TTFT, decode = (tokens - 1) / time
                    // between the first and the last token.
                    let p = match (tokens.or(t.prompt_tokens), s.ttft_ms) {
                        (Some(n), Some(ms)) if ms > 0.0 => Some(n as f64 / ms * 1000.0),
                        _ => None,
                    };
                    let d = match (s.decode_ms, s.token_events) {
                        (Some(ms), n) if ms > 0.0 && n > 1 => Some((n - 1) as f64 / ms * 1000.0),
                        _ => None,
                    };
                    (p, d, "client")
                }
            };
            if outcome == OutcomeClass::Ok {
                round_tokens += output_tokens.unwrap_or(0);
            } else if first_failure.is_none() {
                first_failure = Some((outcome, s.error.clone()));
            }
            result.samples.push(SampleResult {
                outcome,
                round,
                prompt_tokens: tokens.or(t.prompt_tokens),
                prompt_tokens_source: if tokens.is_some() {
                    source
                } else if t.prompt_tokens.is_some() {
                    "server_reported"
                } else {
                    "estimate"
                },
                output_tokens,
                ttft_ms: s.ttft_ms,
                e2e_ms: s.e2e_ms,
                prefill_tokens_per_s: prefill,
                decode_tokens_per_s: decode,
                rates_source: rates,
                peaks: peaks.clone(),
                error: s.error.clone(),
            });
        }
        result.rounds.push(Round {
            streams,
            wall_ms: round_ms,
            output_tokens: round_tokens,
            output_tokens_per_s: round_tokens as f64 / round_ms.max(1e-9) * 1000.0,
        });
        if let Some((outcome, error)) = first_failure {
            // A timeout among concurrent streams is data for the concurrency stage, not the end
            // of the probe, unless the server is gone.
            let server_gone = server.as_mut().is_some_and(|l| l.exited().is_some());
            if outcome != OutcomeClass::Timeout || streams == 1 || server_gone {
                result.outcome = outcome;
                result.error = error;
                result.log_tail = tail(&server);
                break;
            }
        }
    }
    if let Some(mut l) = server {
        l.stop(Duration::from_secs(5));
    }
    result.rss_peak_bytes = finish_watch(watch);
    result.timeline = timeline.take();
    result
}

/// The server's exit, waiting up to 500 ms for it: a killed server's sockets close (and the
/// client sees the stream break) before the process can be reaped.
fn settle(l: &mut Launched) -> Option<crate::backend::launch::Exit> {
    let t = Instant::now();
    loop {
        if let Some(e) = l.exited() {
            return Some(e);
        }
        if t.elapsed() > Duration::from_millis(500) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts a server with its output captured, tracked by the kernel programs from its exec.
fn launch(
    argv: &[String],
    port: u16,
    env: &[(String, String)],
    ebpf: Option<&mut Loaded>,
) -> Result<Launched, String> {
    Launched::start(argv, port, env, |pid| match ebpf {
        Some(l) => l.track(pid, true).map_err(|e| e.to_string()),
        None => Ok(()),
    })
}

/// The models an Ollama server has, for an unknown-model message.
fn ollama_models(rt: &tokio::runtime::Runtime, client: &reqwest::Client, base: &str) -> String {
    let body = rt.block_on(async {
        client
            .get(format!("{base}/api/tags"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()
    });
    match body.map(|b| ollama::parse_tags(&b)) {
        Some(Ok(names)) if !names.is_empty() => names.join(", "),
        _ => "no models".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_timeout_follows_the_plan() {
        assert_eq!(
            adaptive_timeout(8192, Some(256)),
            Duration::from_secs_f64(60.0 + 4.096 + 51.2)
        );
        assert_eq!(
            adaptive_timeout(1_000_000, Some(256)),
            Duration::from_secs(300)
        );
        assert_eq!(adaptive_timeout(0, None), Duration::from_secs(60));
    }
}
