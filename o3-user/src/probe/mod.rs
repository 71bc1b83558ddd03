//! One configuration, measured honestly: start (or reach) the server, wait until it is ready,
//! one warm-up request, then rounds of requests whose prompts are counted by the server's own
//! tokenizer, each timed on the client and by the server, with the resource peaks of the
//! server's own process tree. A prompt at depth is paid for once: the first request of each
//! stream fills the context to the target, the following ones reuse that prefix with a fresh
//! suffix and show whether the server really reused it. A request lives as long as it makes
//! progress (`crate::timing`); every way of failing is an outcome class.
//!
//! Stages: `session` (launch, ready, warm-up, the configuration really in effect, the end),
//! `rounds` (prompts, requests, what they measured), `watch` (telemetry), `server` (backends).

pub mod phase;
pub mod prompt;
mod rounds;
pub mod row;
mod server;
mod session;
pub mod trace;
mod watch;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::launch::{Launcher, Processes};
use crate::backend::openai::Template;
use crate::backend::{llama_server, ollama, OutcomeClass, ProbeConfig};
use crate::telemetry::ebpf::{EbpfError, Loaded};
use crate::telemetry::watchdog::Thresholds;
use crate::telemetry::Sample;
use crate::timing::{Limits, Obs, TimeModel, TimeoutKind};

pub use server::listener_pid;

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

/// How the measured requests' prompts are made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prompts {
    /// A short prompt: whether the configuration loads and answers (llama.cpp and Ollama
    /// allocate the KV cache and compute buffers at load), and rates at depth 0.
    Short,
    /// A fresh prompt of the target length for every request: each reads its whole prompt.
    Fresh,
    /// The first request of each stream reads the whole target (a fill); the following ones
    /// repeat that prefix with a fresh short suffix on the same slot, so depth is paid once.
    #[default]
    ReusePrefix,
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
    /// Cap on prompt tokens (stated in the result: a capped probe is not proven at depth).
    pub max_prompt_tokens: Option<u32>,
    pub prompts: Prompts,
    /// Streams of a round that send a short chat turn beside the others' prompts at depth
    /// (mixed workloads): the last ones, at most `concurrency - 1`; 0: none.
    pub chat_streams: u32,
    /// Stall bound and margin on the time model (`timeouts.*`).
    pub limits: Limits,
    /// What is known of this server's speed (deadlines start from it; the probe refines a copy
    /// with every answer); `None`: a prior from nothing.
    pub time_model: Option<TimeModel>,
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
    /// Where the probe stands (loading, warm-up, sample i/n), for a display; `None`: unseen.
    pub phase: Option<std::sync::Arc<phase::Phase>>,
    /// Where procfs is mounted (`--procfs-root`). The machine's own figures (OOM kills, system
    /// memory) and a server o3 did not start are read under it; a server o3 launched is its
    /// child, read under the real /proc (o3's pid namespace).
    pub procfs_root: PathBuf,
}

/// Tokens of the fresh suffix after a reused prefix (a random tag and a few words) for a
/// prompt of `target` tokens: a thirty-second of it, 24 to 48, so even a short prompt is
/// served about 95 % from the cache. Not less than 24: the tag alone (`[q` + 8 hex digits +
/// `]`) is up to ~14 tokens in common vocabularies, and a suffix budget below the tag, the
/// newline and one word cannot be met.
pub fn suffix_tokens(target: u64) -> u64 {
    (target / 32).clamp(24, 48)
}

/// Whether a prompt of `target` tokens is long enough to split into a reused prefix and a
/// fresh suffix.
pub fn reusable(target: u64) -> bool {
    target >= 4 * suffix_tokens(target)
}

impl ProbeSpec {
    /// Moves the display's phase, where one follows the probe.
    fn at(&self, step: impl FnOnce(&phase::Phase)) {
        if let Some(p) = &self.phase {
            step(p);
        }
    }

    fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Prompt tokens of a measured request: the exact length asked for, else `fill` of the
    /// context minus the output, capped.
    pub fn target_tokens(&self) -> u64 {
        match self.prompt_tokens {
            Some(n) => u64::from(n.max(1)),
            None => {
                let mut t = (f64::from(self.config.ctx) * self.fill) as u64;
                if let Some(cap) = self.max_prompt_tokens {
                    t = t.min(u64::from(cap));
                }
                t.saturating_sub(u64::from(self.output_tokens)).max(1)
            }
        }
    }
}

/// The error text of a probe abandoned through `ProbeSpec::cancel`.
pub const INTERRUPTED: &str = "interrupted";

/// Resource peaks of the server's tree during one sample.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Peaks {
    pub rss_peak_bytes: Option<u64>,
    pub cpu_percent_avg: Option<f64>,
    pub mem_used_peak_bytes: Option<u64>,
    pub gpu_usable_used_peak_bytes: Option<u64>,
    pub gpu_temp_peak_c: Option<f64>,
}

/// What a measured request's prompt was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleKind {
    /// A short prompt (`Prompts::Short`).
    Short,
    /// A fresh prompt of the target length, read whole.
    Fresh,
    /// The first request of a stream: the whole target read, the prefix left in the slot.
    Fill,
    /// The stream's prefix again with a fresh suffix (served from the cache when reused).
    Cached,
    /// A short chat turn sent beside streams at depth (`ProbeSpec::chat_streams`).
    Chat,
}

impl SampleKind {
    pub fn name(self) -> &'static str {
        match self {
            SampleKind::Short => "short",
            SampleKind::Fresh => "fresh",
            SampleKind::Fill => "fill",
            SampleKind::Cached => "cached",
            SampleKind::Chat => "chat",
        }
    }
}

/// Whether stream `k` of `streams` sends short chat turns when `chat` of them are asked to:
/// the last ones, never the first (at least one stream stays at depth), none alone.
pub fn chat_stream(k: u32, streams: u32, chat: u32) -> bool {
    let chat = chat.min(streams.saturating_sub(1));
    k >= streams - chat
}

/// What the streams of one kind measured in a probe with mixed workloads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KindSummary {
    /// `chat` (short turns) or `long` (the streams at depth: fills, cached and fresh reads).
    pub kind: String,
    /// Streams of this kind per round.
    pub streams: u32,
    /// Requests sent, and of them answered.
    pub n: u32,
    pub ok: u32,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p95_ms: Option<f64>,
    pub decode_tokens_per_s_median: Option<f64>,
}

impl KindSummary {
    /// `chat turns (1 stream): TTFT p50 40 / p95 52 ms, decode 31.0 tok/s, 6/6 answered`.
    pub fn line(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.0}"));
        format!(
            "{} ({} stream{}): TTFT p50 {} / p95 {} ms, decode {} tok/s, {}/{} answered",
            if self.kind == "chat" {
                "chat turns"
            } else {
                "streams at depth"
            },
            self.streams,
            if self.streams == 1 { "" } else { "s" },
            ms(self.ttft_p50_ms),
            ms(self.ttft_p95_ms),
            self.decode_tokens_per_s_median
                .map_or("-".to_string(), |x| format!("{x:.1}")),
            self.ok,
            self.n
        )
    }
}

/// Nearest-rank 95th percentile; `None` when there are no values.
fn p95(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| crate::util::order::nearest_rank(&v, 95.0))
}

/// The samples summarized per kind (`chat` and `long`), when the probe mixed them; empty
/// otherwise. TTFT (median, nearest-rank p95) and decode rates over the answered requests.
pub fn kind_summaries(samples: &[SampleResult]) -> Vec<KindSummary> {
    if !samples.iter().any(|s| s.kind == SampleKind::Chat) {
        return Vec::new();
    }
    let summary = |kind: &str, chat: bool| {
        let of: Vec<&SampleResult> = samples
            .iter()
            .filter(|s| (s.kind == SampleKind::Chat) == chat)
            .collect();
        let ok: Vec<&&SampleResult> = of
            .iter()
            .filter(|s| s.outcome == OutcomeClass::Ok)
            .collect();
        let mut streams: Vec<u32> = of.iter().map(|s| s.stream).collect();
        streams.sort_unstable();
        streams.dedup();
        let ttft: Vec<f64> = ok.iter().filter_map(|s| s.ttft_ms).collect();
        let decode: Vec<f64> = ok.iter().filter_map(|s| s.decode_tokens_per_s).collect();
        KindSummary {
            kind: kind.into(),
            streams: streams.len() as u32,
            n: of.len() as u32,
            ok: ok.len() as u32,
            ttft_p50_ms: crate::util::order::median(ttft.clone()),
            ttft_p95_ms: p95(ttft),
            decode_tokens_per_s_median: crate::util::order::median(decode),
        }
    };
    vec![summary("chat", true), summary("long", false)]
}

#[derive(Debug, Clone, Serialize)]
pub struct SampleResult {
    pub outcome: OutcomeClass,
    /// Which round of simultaneous requests this one belonged to (0-based).
    pub round: u32,
    /// Which of the round's simultaneous streams (0-based; the slot it was pinned to).
    pub stream: u32,
    pub kind: SampleKind,
    pub prompt_tokens: Option<u64>,
    /// How the prompt's token count is known: `server_tokenizer`, `server_reported`, `estimate`.
    pub prompt_tokens_source: &'static str,
    /// Prompt tokens served from the server's cache (reported by it, or, for a server that
    /// does not say, the prefix when its timing shows the reuse).
    pub cached_tokens: Option<u64>,
    /// For a `cached` sample: whether the filled prefix was reused.
    pub prefix_hit: Option<bool>,
    pub output_tokens: Option<u64>,
    pub ttft_ms: Option<f64>,
    pub e2e_ms: f64,
    /// Over the prompt tokens actually read (a cached prefix excluded).
    pub prefill_tokens_per_s: Option<f64>,
    pub decode_tokens_per_s: Option<f64>,
    /// `server` when the server's own timings gave the rates, `client` when token events did.
    pub rates_source: &'static str,
    pub peaks: Peaks,
    pub error: Option<String>,
    /// Why the request was abandoned, when it timed out (`stalled` or `beyond_model`).
    pub timeout: Option<TimeoutKind>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    pub outcome: OutcomeClass,
    pub config: ProbeConfig,
    /// Configuration fields this backend could not set.
    pub fixed_by_server: Vec<&'static str>,
    pub prompts: Prompts,
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
    /// `Prompts::ReusePrefix`: whether every cached sample reused its prefix (`None`: none
    /// measured).
    pub prefix_reuse: Option<bool>,
    /// What the server's answers say about its speed (load, prefill spans, decode spans), for
    /// the time model.
    pub timing: Vec<Obs>,
    /// Things the reader must know (e.g. that the prefix was not reused).
    pub notes: Vec<String>,
    /// With mixed workloads (`ProbeSpec::chat_streams`): the chat turns and the streams at
    /// depth measured apart; empty otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<KindSummary>,
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

/// The kernel programs that measure a server's peaks. `Ok(Err(warning))`: they cannot load
/// here and the peaks come from procfs polling (the warning says so); `Err`: they cannot load
/// and `O3_REQUIRE_EBPF=1` requires them.
pub fn ebpf_for_servers(sysfs: &Path) -> Result<Result<Loaded, String>, EbpfError> {
    match Loaded::load(sysfs, 1 << 20) {
        Ok(l) => Ok(Ok(l)),
        Err(e) if crate::telemetry::ebpf::required() => Err(e),
        Err(e) => Ok(Err(format!(
            "eBPF unavailable ({e}); server peaks come from procfs polling"
        ))),
    }
}

/// Runs one probe to its end. Never fails: every way of failing is an outcome class. The
/// server o3 started is stopped and the telemetry finished on every path.
pub fn run(spec: &ProbeSpec, ebpf: Option<&mut Loaded>) -> ProbeResult {
    run_with(spec, ebpf, &mut Processes)
}

/// As [`run`], with the server started (and stopped) through `launcher`.
pub fn run_with(
    spec: &ProbeSpec,
    ebpf: Option<&mut Loaded>,
    launcher: &mut dyn Launcher,
) -> ProbeResult {
    let vmstat = spec.procfs_root.join("vmstat");
    let kills = oom_kills(&vmstat);
    spec.at(phase::Phase::loading);
    let mut s = match session::Session::start(spec, ebpf, launcher) {
        Ok(s) => s,
        Err(r) => {
            spec.at(phase::Phase::idle);
            return *r;
        }
    };
    let _ = s
        .ready()
        .and_then(|()| {
            spec.at(phase::Phase::warm_up);
            s.warm_up()
        })
        .and_then(|()| s.in_effect())
        .and_then(|()| s.settle())
        .and_then(|()| s.rounds());
    let mut r = s.end();
    spec.at(phase::Phase::idle);
    attribute_oom(&mut r, kills, oom_kills(&vmstat));
    r
}

/// The kernel's count of OOM kills since boot (`oom_kill` in /proc/vmstat, Linux 4.13+).
fn oom_kills(vmstat: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(vmstat).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
}

/// A server killed by SIGKILL while the kernel's OOM killer ran (its count went up during the
/// probe) died of memory, not of a stray signal: the OOM killer writes nothing the server
/// could print. Other deaths stay as they are (and may be retried as transient).
fn attribute_oom(r: &mut ProbeResult, before: Option<u64>, after: Option<u64>) {
    if let Some(note) = oom_attribution(r.outcome, r.server_exit.as_deref(), before, after) {
        r.outcome = OutcomeClass::Oom;
        r.notes.push(note);
    }
}

/// Why a failed probe is an OOM kill (see [`attribute_oom`]), or None. `server_exit`: the
/// server's exit as the probe records it (`Exit { code: None, signal: Some(9) }`).
fn oom_attribution(
    outcome: OutcomeClass,
    server_exit: Option<&str>,
    before: Option<u64>,
    after: Option<u64>,
) -> Option<String> {
    let sigkill = nix::sys::signal::Signal::SIGKILL as i32;
    let killed = server_exit.is_some_and(|e| e.contains(&format!("signal: Some({sigkill})")));
    let failed = matches!(
        outcome,
        OutcomeClass::Crashed | OutcomeClass::LoadFailed | OutcomeClass::HttpError
    );
    let n = after?.checked_sub(before?)?;
    (n > 0 && killed && failed).then(|| {
        format!(
            "the server was killed by SIGKILL while the kernel's OOM killer ran ({n} OOM kill{} \
             during the probe, /proc/vmstat oom_kill): counted as out of memory",
            if n == 1 { "" } else { "s" }
        )
    })
}

/// A sample for tests: one request of `stream` in round 0.
#[cfg(test)]
pub(crate) fn sample(
    stream: u32,
    kind: SampleKind,
    ok: bool,
    ttft: f64,
    decode: f64,
) -> SampleResult {
    SampleResult {
        outcome: if ok {
            OutcomeClass::Ok
        } else {
            OutcomeClass::Timeout
        },
        round: 0,
        stream,
        kind,
        prompt_tokens: Some(100),
        prompt_tokens_source: "server_tokenizer",
        cached_tokens: None,
        prefix_hit: None,
        output_tokens: Some(8),
        ttft_ms: Some(ttft),
        e2e_ms: ttft + 100.0,
        prefill_tokens_per_s: Some(1000.0),
        decode_tokens_per_s: Some(decode),
        rates_source: "server",
        peaks: Peaks::default(),
        error: None,
        timeout: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::launch::fake::{FakeLauncher, FakeServer};
    use crate::backend::launch::Exit;
    use std::sync::atomic::Ordering;

    /// A procfs root of this machine's machine-wide files: `vmstat` with `oom_kill 3`, and the
    /// fixture `meminfo` (tests/fixtures/procfs).
    fn procfs_fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let meminfo =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/procfs/meminfo");
        std::fs::copy(meminfo, dir.path().join("meminfo")).unwrap();
        std::fs::write(dir.path().join("vmstat"), "nr_free_pages 1\noom_kill 3\n").unwrap();
        dir
    }

    /// A probe of a server o3 launches from a template, reading the machine under `procfs`.
    fn spec(procfs: &Path, load_timeout: Duration) -> ProbeSpec {
        ProbeSpec {
            backend: BackendSpec::OpenAi {
                template: Template::parse("srv --port {port} --ctx {ctx}").unwrap(),
                model: "m".into(),
                ready_path: "/v1/models".into(),
                tokenize_path: None,
            },
            config: ProbeConfig {
                ctx: 512,
                ..ProbeConfig::default()
            },
            samples: 1,
            concurrency: 1,
            output_tokens: 4,
            fill: 0.9,
            prompt_tokens: None,
            max_prompt_tokens: None,
            prompts: Prompts::Short,
            chat_streams: 0,
            limits: crate::timing::Limits {
                stall_s: 5.0,
                margin: 2.0,
            },
            time_model: None,
            load_timeout,
            interval: Duration::from_millis(10),
            seed: 1,
            safety: None,
            stabilize: Duration::ZERO,
            cancel: None,
            phase: None,
            procfs_root: procfs.to_path_buf(),
        }
    }

    #[test]
    fn a_server_that_exits_while_loading_is_classified_from_its_output_and_stopped() {
        let root = procfs_fixture();
        let mut server = FakeServer::running();
        server.exit = Some(Exit {
            code: Some(1),
            signal: None,
        });
        server.tail =
            "llama_model_load: loading model\nggml_backend_cuda_buffer_type_alloc_buffer: \
                       allocating 4096.00 MiB on device 0: cudaMalloc failed: out of memory"
                .into();
        let stops = server.stops.clone();
        let mut launcher = FakeLauncher::with(server);
        let r = run_with(
            &spec(root.path(), Duration::from_secs(30)),
            None,
            &mut launcher,
        );
        assert_eq!(r.outcome, OutcomeClass::Oom, "{:?}", r.error);
        assert_eq!(
            r.error.as_deref(),
            Some("the server exited while loading (Exit { code: Some(1), signal: None })")
        );
        assert!(r.log_tail.unwrap().contains("cudaMalloc failed"));
        assert_eq!(stops.load(Ordering::SeqCst), 1, "stopped once, at the end");
        // The template was filled with the port o3 chose and the context.
        let argv = launcher.launched.lock().unwrap()[0].clone();
        assert_eq!(argv[..2], ["srv", "--port"]);
        assert!(argv[2].parse::<u16>().is_ok_and(|p| p > 0), "{argv:?}");
        assert_eq!(argv[3..], ["--ctx", "512"]);
        assert!(r.samples.is_empty() && r.load_ms.is_none());
    }

    #[test]
    fn a_server_that_never_answers_is_load_failed_at_the_load_timeout_and_stopped() {
        let root = procfs_fixture();
        let server = FakeServer::running();
        let stops = server.stops.clone();
        let mut launcher = FakeLauncher::with(server);
        let t = std::time::Instant::now();
        // Nothing listens on the port the fake server was given.
        let r = run_with(
            &spec(root.path(), Duration::from_millis(300)),
            None,
            &mut launcher,
        );
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        assert_eq!(r.outcome, OutcomeClass::LoadFailed);
        let e = r.error.unwrap();
        assert!(
            e.starts_with("not ready after 0 s (http://127.0.0.1:"),
            "{e}"
        );
        assert!(e.ends_with("/v1/models)"), "{e}");
        assert_eq!(r.server_pid, Some(std::process::id()));
        assert!(r.server_exit.is_none());
        assert_eq!(stops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_launch_that_fails_is_load_failed_without_a_server() {
        let root = procfs_fixture();
        let r = run_with(
            &spec(root.path(), Duration::from_secs(1)),
            None,
            &mut FakeLauncher::default(),
        );
        assert_eq!(r.outcome, OutcomeClass::LoadFailed);
        assert!(r.error.unwrap().contains("`srv`"));
        assert_eq!(r.server_pid, None);
    }

    #[test]
    fn machine_wide_reads_follow_the_procfs_root() {
        // The server is SIGKILLed while loading, and the fixture's OOM kill count goes up
        // meanwhile: only a probe that reads vmstat under the root sees the OOM killer.
        let root = procfs_fixture();
        let vmstat = root.path().join("vmstat");
        let mut server = FakeServer::running();
        server.exit = Some(Exit {
            code: None,
            signal: Some(nix::sys::signal::Signal::SIGKILL as i32),
        });
        let bump = vmstat.clone();
        server.on_exit = Some(Box::new(move || {
            std::fs::write(bump, "nr_free_pages 1\noom_kill 4\n").unwrap();
        }));
        let mut launcher = FakeLauncher::with(server);
        let r = run_with(
            &spec(root.path(), Duration::from_secs(30)),
            None,
            &mut launcher,
        );
        assert_eq!(r.outcome, OutcomeClass::Oom, "{:?}", r.error);
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("(1 OOM kill during the probe")),
            "{:?}",
            r.notes
        );
        // System memory is the fixture's (MemTotal - MemAvailable), not this machine's.
        let samples = r.timeline.unwrap().samples;
        let used = Some((24_568_964 - 23_102_112) * 1024);
        assert!(!samples.is_empty());
        assert!(
            samples.iter().all(|s| s.mem_used_bytes == used),
            "{samples:?}"
        );
    }

    #[test]
    fn chat_streams_are_the_last_and_never_all() {
        let chat =
            |n: u32, m: u32| -> Vec<u32> { (0..n).filter(|&k| chat_stream(k, n, m)).collect() };
        assert_eq!(chat(4, 0), Vec::<u32>::new(), "off");
        assert_eq!(
            chat(1, 1),
            Vec::<u32>::new(),
            "a lone stream stays at depth"
        );
        assert_eq!(chat(2, 1), [1]);
        assert_eq!(chat(4, 1), [3]);
        assert_eq!(chat(4, 2), [2, 3]);
        assert_eq!(chat(8, 3), [5, 6, 7]);
        // At most n - 1: stream 0 stays at depth, and its slot keeps its prefix.
        assert_eq!(chat(2, 5), [1]);
        assert_eq!(chat(4, 4), [1, 2, 3]);
        assert_eq!(chat(0, 2), Vec::<u32>::new());
    }

    #[test]
    fn kinds_are_summarized_apart_only_when_mixed() {
        use SampleKind::*;
        let long = vec![
            sample(0, Fill, true, 900.0, 40.0),
            sample(0, Cached, true, 30.0, 50.0),
        ];
        assert!(kind_summaries(&long).is_empty(), "nothing mixed");
        let mut mixed = long.clone();
        mixed.extend([
            sample(2, Chat, true, 20.0, 100.0),
            sample(1, Chat, true, 40.0, 120.0),
            sample(1, Chat, true, 60.0, 140.0),
            // Not answered: counted, its TTFT and rate left out.
            sample(2, Chat, false, 9000.0, 1.0),
        ]);
        let k = kind_summaries(&mixed);
        assert_eq!(
            k[0],
            KindSummary {
                kind: "chat".into(),
                streams: 2,
                n: 4,
                ok: 3,
                ttft_p50_ms: Some(40.0),
                ttft_p95_ms: Some(60.0),
                decode_tokens_per_s_median: Some(120.0),
            }
        );
        assert_eq!(
            k[1],
            KindSummary {
                kind: "long".into(),
                streams: 1,
                n: 2,
                ok: 2,
                ttft_p50_ms: Some(465.0),
                ttft_p95_ms: Some(900.0),
                decode_tokens_per_s_median: Some(45.0),
            }
        );
        assert_eq!(
            k[0].line(),
            "chat turns (2 streams): TTFT p50 40 / p95 60 ms, decode 120.0 tok/s, 3/4 answered"
        );
        assert_eq!(
            k[1].line(),
            "streams at depth (1 stream): TTFT p50 465 / p95 900 ms, decode 45.0 tok/s, 2/2 answered"
        );
        // Serialized with snake_case keys and units in their names.
        let v = serde_json::to_value(&k[0]).unwrap();
        assert_eq!(v["ttft_p95_ms"], 60.0);
        assert_eq!(serde_json::to_value(SampleKind::Chat).unwrap(), "chat");
    }

    #[test]
    fn oom_kills_are_read_from_vmstat() {
        // The format of /proc/vmstat on Linux 6.x: one "name value" per line.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vmstat");
        std::fs::write(&p, "nr_free_pages 12345\noom_kill 3\npgfault 99\n").unwrap();
        assert_eq!(oom_kills(&p), Some(3));
        std::fs::write(&p, "nr_free_pages 12345\n").unwrap();
        assert_eq!(oom_kills(&p), None);
        std::fs::write(&p, "oom_kill x\n").unwrap();
        assert_eq!(oom_kills(&p), None);
        assert!(
            oom_kills(Path::new("/proc/vmstat")).is_some(),
            "this kernel counts OOM kills"
        );
    }

    #[test]
    fn a_sigkill_is_an_oom_only_when_the_oom_killer_ran() {
        let k = Some("Exit { code: None, signal: Some(9) }");
        let term = Some("Exit { code: None, signal: Some(15) }");
        let c = OutcomeClass::Crashed;
        assert!(oom_attribution(c, k, Some(2), Some(3)).is_some());
        assert!(
            oom_attribution(OutcomeClass::LoadFailed, k, Some(2), Some(4))
                .unwrap()
                .contains("2 OOM kills")
        );
        assert!(
            oom_attribution(c, k, Some(3), Some(3)).is_none(),
            "no OOM kill"
        );
        assert!(
            oom_attribution(c, term, Some(2), Some(3)).is_none(),
            "not SIGKILL"
        );
        assert!(
            oom_attribution(c, None, Some(2), Some(3)).is_none(),
            "server alive"
        );
        assert!(oom_attribution(c, k, None, Some(3)).is_none(), "no counter");
        assert!(oom_attribution(OutcomeClass::Ok, k, Some(2), Some(3)).is_none());
        assert!(oom_attribution(OutcomeClass::Timeout, k, Some(2), Some(3)).is_none());
    }
}
