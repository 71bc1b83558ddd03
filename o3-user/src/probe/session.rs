//! The stages of one probe around its measured rounds: start the server and its telemetry,
//! wait until it is ready, one warm-up request (which also calibrates token counts where the
//! server has no tokenizer), check the configuration really in effect (Ollama), settle, and
//! end (the server stopped, the telemetry finished) on every path.

use std::time::{Duration, Instant};

use crate::backend::http::{self, Blocking, HttpError};
use crate::backend::launch::{Launcher, Server};
use crate::backend::{classify, llama_server, ollama, OutcomeClass};
use crate::telemetry::ebpf::Loaded;
use crate::timing::{Obs, Policy, Prior, Shape, TimeModel};

use super::server::{self, Backend, Driver};
use super::watch::Watch;
use super::{prompt, ProbeResult, ProbeSpec, INTERRUPTED};

/// A stage ended the probe; the result already says why.
pub(super) struct Stop;

pub(super) struct Session<'a> {
    pub spec: &'a ProbeSpec,
    pub http: Blocking,
    pub driver: Driver,
    pub server: Option<Box<dyn Server>>,
    pub watch: Option<Watch>,
    pub result: ProbeResult,
    /// The deadlines' model: the spec's, refined by every answer of this probe.
    pub model: TimeModel,
    pub has_tokenizer: bool,
    /// Without a tokenizer: tokens ≈ fixed + per_word × words.
    pub per_word: f64,
    pub fixed: f64,
    load_started: Instant,
}

fn blank(spec: &ProbeSpec) -> ProbeResult {
    ProbeResult {
        outcome: OutcomeClass::Ok,
        config: spec.config.clone(),
        fixed_by_server: spec.backend.fixed_by_server(&spec.config),
        prompts: spec.prompts,
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
        prefix_reuse: None,
        timing: Vec::new(),
        notes: Vec::new(),
        kinds: Vec::new(),
        timeline: None,
    }
}

fn early(spec: &ProbeSpec, class: OutcomeClass, error: String) -> Box<ProbeResult> {
    let mut r = blank(spec);
    r.outcome = class;
    r.error = Some(error);
    Box::new(r)
}

impl<'a> Session<'a> {
    /// Starts (or finds) the server, through `launcher`, and its telemetry.
    pub fn start(
        spec: &'a ProbeSpec,
        mut ebpf: Option<&mut Loaded>,
        launcher: &mut dyn Launcher,
    ) -> Result<Session<'a>, Box<ProbeResult>> {
        let http =
            Blocking::new().map_err(|e| early(spec, OutcomeClass::HttpError, e.to_string()))?;
        let load_started = Instant::now();
        let (server, driver) =
            server::start(&spec.backend, &spec.config, ebpf.as_deref_mut(), launcher)
                .map_err(|e| early(spec, OutcomeClass::LoadFailed, e.to_string()))?;
        let mut result = blank(spec);
        let pid = match server.as_ref() {
            Some(l) => Some(l.pid()),
            None => reqwest::Url::parse(&driver.base)
                .ok()
                .and_then(|u| u.port_or_known_default())
                .and_then(|port| server::listener_pid(&spec.procfs_root, port)),
        };
        result.server_pid = pid;
        let launched = server.is_some();
        let watch = pid.map(|pid| Watch::start(spec, pid, launched, ebpf));
        result.rss_method = watch.as_ref().map_or("not_measured", |w| w.method);
        let model = spec
            .time_model
            .clone()
            .unwrap_or_else(|| TimeModel::new(Prior::from_size(None, None)));
        Ok(Session {
            spec,
            http,
            driver,
            server,
            watch,
            result,
            model,
            has_tokenizer: false,
            per_word: 1.0,
            fixed: 0.0,
            load_started,
        })
    }

    /// Ends the probe with `class` and `error` (and the server's last lines).
    pub fn fail(&mut self, class: OutcomeClass, error: String) -> Stop {
        self.result.outcome = class;
        self.result.error = Some(error);
        self.result.log_tail = self.tail();
        Stop
    }

    pub fn tail(&self) -> Option<String> {
        self.server.as_ref().map(|l| l.tail())
    }

    pub fn cancelled(&self) -> bool {
        self.spec.cancelled()
    }

    pub fn breach(&self) -> Option<crate::telemetry::watchdog::Breach> {
        self.watch.as_ref().and_then(Watch::breach)
    }

    /// Waits until the server answers its readiness check (llama-server: `/health` 200 once
    /// the model is loaded).
    pub fn ready(&mut self) -> Result<(), Stop> {
        loop {
            self.still_loading()?;
            if self.answers_ready()? {
                return Ok(());
            }
            if self.cancelled() {
                return Err(self.fail(OutcomeClass::LoadFailed, INTERRUPTED.into()));
            }
            if self.load_started.elapsed() > self.spec.load_timeout {
                let why = format!(
                    "not ready after {:.0} s ({})",
                    self.spec.load_timeout.as_secs_f64(),
                    self.driver.ready_url
                );
                return Err(self.fail(OutcomeClass::LoadFailed, why));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Ends the probe if the server o3 started has exited while loading.
    fn still_loading(&mut self) -> Result<(), Stop> {
        let Some(l) = self.server.as_mut() else {
            return Ok(());
        };
        let Some(exit) = l.exited() else {
            return Ok(());
        };
        let t = l.tail();
        self.result.server_exit = Some(format!("{exit:?}"));
        if let Some(b) = self.breach() {
            return Err(self.fail(OutcomeClass::SafetyAbort, b.to_string()));
        }
        let class = classify::classify_exit(exit.code, exit.signal, &t, true);
        Err(self.fail(class, format!("the server exited while loading ({exit:?})")))
    }

    /// One readiness check: whether the server says it is ready. A running Ollama o3 did not
    /// start that cannot be reached ends the probe.
    fn answers_ready(&mut self) -> Result<bool, Stop> {
        let get = self.http.client().get(&self.driver.ready_url);
        let answer = match self.http.block_on(http::send(get, Duration::from_secs(2))) {
            Ok(r) => Some((r.status, r.body)),
            // Answered, with a body that could not be read.
            Err(HttpError::Body { status, .. }) => Some((status, String::new())),
            Err(_) => None,
        };
        Ok(match (&answer, self.driver.backend) {
            (Some((st, body)), Backend::LlamaServer) => matches!(
                llama_server::parse_health(*st, body),
                llama_server::Health::Ready
            ),
            (Some((st, _)), _) => (200..300).contains(st),
            (None, Backend::Ollama) if self.server.is_none() => {
                let why = format!(
                    "cannot reach {} (is the server running? check --url)",
                    self.driver.base
                );
                return Err(self.fail(OutcomeClass::LoadFailed, why));
            }
            (None, _) => false,
        })
    }

    /// Counts `text` with the server's tokenizer.
    pub fn count(&self, text: &str) -> Option<usize> {
        let (url, key) = self.driver.tokenize.as_ref()?;
        let body = serde_json::json!({ *key: text });
        // A stuck server must not hang the probe in its tokenizer.
        let limit = Duration::from_secs_f64(self.spec.limits.stall_s.max(10.0));
        let post = || self.http.client().post(url).json(&body);
        let reply = self
            .http
            .block_on(http::send_retrying(post, limit))
            .ok()
            .filter(|r| r.is_success())?;
        let v: serde_json::Value = serde_json::from_str(&reply.body).ok()?;
        v.get("tokens")?.as_array().map(|a| a.len())
    }

    /// A short request's limits: the server may still be loading the model inside it
    /// (Ollama loads on the first request).
    fn short_policy(&self, words: u64) -> Policy {
        let shape = Shape {
            cached: 0,
            prompt: words * 2 + 16,
            batch: 2048,
            progress_events: self.driver.progress_events(),
            streams: 1,
            load_s: self.spec.load_timeout.as_secs_f64(),
        };
        Policy::new(&self.model, &shape, &self.spec.limits)
    }

    /// The warm-up (not measured): loads the model with this configuration where the server
    /// loads on request, warms caches, and times the load. Its reported prompt count, with one
    /// longer request, calibrates words per token where the server has no tokenizer.
    pub fn warm_up(&mut self) -> Result<(), Stop> {
        self.has_tokenizer = self.count("probe").is_some();
        let spec = self.spec;
        let cfg = &spec.config;
        let warm_words = 64;
        let warm_prompt = prompt::words(&mut prompt::Rng::new(spec.seed), warm_words);
        let body = self
            .driver
            .body(cfg, &warm_prompt, 4, spec.seed as u32, None);
        let policy = self.short_policy(warm_words as u64);
        let stream = http::stream(
            self.http.client(),
            &self.driver.request_url,
            &body,
            self.driver.parse,
            policy,
        );
        let Some(w) = self.cancellable(stream) else {
            return Err(self.fail(OutcomeClass::LoadFailed, INTERRUPTED.into()));
        };
        let load_s = self.load_started.elapsed().as_secs_f64();
        self.result.load_ms = Some(load_s * 1000.0);
        if w.outcome != OutcomeClass::Ok {
            let exited = self
                .server
                .as_mut()
                .and_then(|l| server::settle(l.as_mut()));
            let t = self.tail();
            let mut class = match &exited {
                Some(e) => {
                    classify::classify_exit(e.code, e.signal, t.as_deref().unwrap_or(""), false)
                }
                None => w.outcome,
            };
            self.result.server_exit = exited.map(|e| format!("{e:?}"));
            // A watchdog that stopped the server during the warm-up is the reason, not the
            // broken stream it left (which would read as a transient crash).
            if let Some(b) = self.breach() {
                return Err(self.fail(OutcomeClass::SafetyAbort, b.to_string()));
            }
            let mut error = w.error.clone().unwrap_or_default();
            if self.driver.backend == Backend::Ollama && w.status == Some(404) {
                class = OutcomeClass::LoadFailed;
                error = format!(
                    "{error} (the server has: {})",
                    server::ollama_models(&self.driver.base)
                );
            }
            return Err(self.fail(class, error));
        }
        // The load: until the server could answer, less the warm-up's own work where the
        // server says how long that took.
        let work_s = w.timings.as_ref().map_or(0.0, |t| {
            (t.prompt_ms.unwrap_or(0.0) + t.predicted_ms.unwrap_or(0.0)) / 1000.0
        });
        let load = Obs::Load {
            s: (load_s - work_s).max(0.0),
        };
        self.result.timing.push(load);
        self.model.observe(&[load]);
        if !self.has_tokenizer {
            self.calibrate(&w, warm_words);
        }
        Ok(())
    }

    /// Tokens per word from the warm-up and one longer request (the fixed part is the
    /// server's prompt template).
    fn calibrate(&mut self, warm: &http::Streamed, warm_words: usize) {
        let spec = self.spec;
        let long_words = 512;
        let long_prompt = prompt::words(&mut prompt::Rng::new(spec.seed ^ 0xca1), long_words);
        let body = self
            .driver
            .body(&spec.config, &long_prompt, 1, spec.seed as u32, None);
        let policy = self.short_policy(long_words as u64);
        let c = self.http.block_on(http::stream(
            self.http.client(),
            &self.driver.request_url,
            &body,
            self.driver.parse,
            policy,
        ));
        let short = warm.timings.as_ref().and_then(|t| t.prompt_tokens);
        let long = c.timings.as_ref().and_then(|t| t.prompt_tokens);
        if let (Some(a), Some(b)) = (short, long) {
            if b > a {
                self.per_word = (b - a) as f64 / (long_words - warm_words) as f64;
                self.fixed = a as f64 - self.per_word * warm_words as f64;
            }
        }
    }

    /// Ollama: the configuration really in effect (`/api/ps`): layers spilled to the CPU or a
    /// context clamped below the one asked for end the probe.
    pub fn in_effect(&mut self) -> Result<(), Stop> {
        if self.driver.backend != Backend::Ollama {
            return Ok(());
        }
        let url = format!("{}/api/ps", self.driver.base);
        let get = self.http.client().get(&url);
        let ps = self
            .http
            .block_on(http::send(get, Duration::from_secs(10)))
            .ok()
            .map(|r| r.body);
        let cfg = &self.spec.config;
        if let Some(Ok(Some(m))) = ps.map(|b| ollama::parse_ps(&b, &self.driver.model)) {
            if m.cpu_spill() {
                let why = format!(
                    "{} of {} bytes on the GPU: layers spilled to the CPU",
                    m.size_vram_bytes, m.size_bytes
                );
                return Err(self.fail(OutcomeClass::CpuSpill, why));
            }
            if m.clamped(cfg.ctx) {
                let in_effect = m
                    .context_length
                    .map_or_else(|| "an unknown context".to_string(), |c| c.to_string());
                let why = format!("context {} requested, {in_effect} in effect", cfg.ctx);
                return Err(self.fail(OutcomeClass::Clamped, why));
            }
        }
        Ok(())
    }

    /// Waits `stabilize` (a cancel ends the wait).
    pub fn settle(&mut self) -> Result<(), Stop> {
        let until = Instant::now() + self.spec.stabilize;
        while Instant::now() < until && !self.cancelled() {
            std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
        }
        Ok(())
    }

    /// Runs `fut` unless the probe is cancelled first (`None` then).
    pub fn cancellable<F: std::future::Future>(&self, fut: F) -> Option<F::Output> {
        let spec = self.spec;
        self.http.block_on(async {
            tokio::select! {
                out = fut => Some(out),
                () = async {
                    while !spec.cancelled() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                } => None,
            }
        })
    }

    /// Stops the server o3 started and the telemetry; the result with every sample taken.
    pub fn end(mut self) -> ProbeResult {
        if let Some(mut l) = self.server.take() {
            l.stop(Duration::from_secs(5));
        }
        if let Some(w) = self.watch.take() {
            let (peak, t) = w.finish();
            self.result.rss_peak_bytes = peak;
            self.result.timeline = Some(t);
        }
        self.result.kinds = super::kind_summaries(&self.result.samples);
        self.result
    }
}
