//! llama.cpp's `llama-server` as pure functions: which flags a build has (from `--help`), the
//! command line for a [`ProbeConfig`], the `/completion` request, and parsers for its streamed
//! response, `/health` and `/props`. No networking, no processes.
//!
//! Formats (see `tests/fixtures/llama-server/README.md`):
//! - `--help`: one entry per option, aliases comma-separated at column 0, an optional value
//!   hint after one space, help text from column 40 (or on the next line), continuation lines
//!   indented by 40 spaces. Builds differ: `-fa` is a switch in older builds and takes
//!   `on|off|auto` in newer ones; `--fit` (default on, silently shrinking `-c`/`-ngl`) exists
//!   only in recent ones.
//! - `POST /completion` with `"stream": true`: server-sent events `data: {...}`; the last has
//!   `"stop": true`, `stop_type` and `timings`. Errors after the 200: `data: {"error": {...}}`
//!   in current builds, an SSE field `error: {...}` in 2024–2025 builds. Comment lines
//!   (`: ping`) keep long prompt processing alive.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{json, Map, Value};

use super::{ProbeConfig, PromptProgress, ProtocolError, StreamEvent, Timings};

/// One entry of `llama-server --help`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelpOption {
    /// Every spelling, in the order printed (`-c`, `--ctx-size`).
    pub names: Vec<String>,
    /// The value placeholder (`N`, `[on|off|auto]`), absent for a switch.
    pub value_hint: Option<String>,
    /// The help text, continuation lines joined with spaces.
    pub help: String,
}

/// The flags O3 uses, as spelled by one build (`None`: the build lacks it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    pub model: Option<String>,
    pub ctx_size: Option<String>,
    pub batch_size: Option<String>,
    pub ubatch_size: Option<String>,
    pub parallel: Option<String>,
    pub gpu_layers: Option<String>,
    /// `-ngl` also accepts `all` (recent builds); otherwise "all layers" is a large number.
    pub gpu_layers_accepts_all: bool,
    pub flash_attn: Option<String>,
    /// `--flash-attn on|off|auto` (recent builds) rather than a plain switch.
    pub flash_attn_takes_value: bool,
    pub cache_type_k: Option<String>,
    pub cache_type_v: Option<String>,
    pub threads: Option<String>,
    /// `--fit on|off`: present in recent builds, where it defaults to on.
    pub fit: Option<String>,
    pub metrics: Option<String>,
    pub no_webui: Option<String>,
    /// `--no-kv-unified`: each slot gets its own `c / np` of the cache, as o3 measures it.
    pub no_kv_unified: Option<String>,
    /// `--cache-ram N` (MiB): host-RAM prompt cache, 8 GiB by default in recent builds.
    pub cache_ram: Option<String>,
    /// `--load-mode MODE` (auto, none, mmap, mlock, mmap+mlock, dio in recent builds).
    pub load_mode: Option<String>,
    /// The loading mode o3 pins where the build has `--load-mode` (not read from the help:
    /// chosen per platform by the caller; unset: [`default_load_mode`] without an integrated
    /// GPU).
    pub load_mode_value: Option<String>,
    pub host: Option<String>,
    pub port: Option<String>,
    /// Every option spelling the help lists.
    pub known: BTreeSet<String>,
}

impl Flags {
    /// Whether the help looked like llama-server's at all (model, context, host and port).
    pub fn is_llama_server(&self) -> bool {
        self.model.is_some()
            && self.ctx_size.is_some()
            && self.host.is_some()
            && self.port.is_some()
    }
}

/// A spelling can start an option: `-x`, `-abc`, `--long-name`, not `-1` or `- item`.
fn is_option_name(token: &str) -> bool {
    let rest = token.strip_prefix("--").or_else(|| token.strip_prefix('-'));
    let Some(rest) = rest else { return false };
    let mut chars = rest.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Parse the first line of an entry: `-c,    --ctx-size N                     size of ...`.
fn parse_option_line(body: &str) -> Option<HelpOption> {
    let mut names = Vec::new();
    let mut rest = body;
    loop {
        let end = rest
            .find(|c: char| c.is_whitespace() || c == ',')
            .unwrap_or(rest.len());
        let token = &rest[..end];
        if !is_option_name(token) {
            break;
        }
        names.push(token.to_string());
        rest = &rest[end..];
        match rest.strip_prefix(',') {
            Some(after) => rest = after.trim_start(),
            None => break,
        }
    }
    if names.is_empty() {
        return None;
    }
    // The value hint follows the last name after exactly one space; the help text is separated
    // by padding of at least three spaces (the layout puts it at column 40).
    let (value_hint, help) = match rest.strip_prefix(' ') {
        Some(after) if after.starts_with(|c: char| !c.is_whitespace()) => match after.find("  ") {
            Some(i) => (Some(after[..i].to_string()), after[i..].trim()),
            None => (Some(after.trim_end().to_string()), ""),
        },
        _ => (None, rest.trim()),
    };
    Some(HelpOption {
        names,
        value_hint,
        help: help.to_string(),
    })
}

/// Every option entry of a `--help` text. Section banners (`----- common params -----`),
/// blank lines and anything before the first entry (device banners) are skipped.
pub fn parse_help_options(text: &str) -> Vec<HelpOption> {
    let mut options: Vec<HelpOption> = Vec::new();
    let mut in_entry = false;
    for raw in text.lines() {
        let line = raw.trim_end_matches('\r');
        let body = line.trim_start();
        let indent = line.len() - body.len();
        if body.is_empty() {
            continue;
        }
        if body.starts_with("-----") {
            in_entry = false;
            continue;
        }
        // Entries start at column 0 (2 in pre-2024-09 builds); help continues at column 40.
        if indent <= 4 && body.starts_with('-') {
            if let Some(option) = parse_option_line(body) {
                options.push(option);
                in_entry = true;
                continue;
            }
        }
        if in_entry && indent >= 8 {
            if let Some(last) = options.last_mut() {
                if !last.help.is_empty() {
                    last.help.push(' ');
                }
                last.help.push_str(body);
            }
        } else {
            in_entry = false;
        }
    }
    options
}

/// Detect the flags O3 needs from `llama-server --help`. Long spellings are preferred (they
/// have been stable across builds); short ones are used when a build has only those.
pub fn parse_help(text: &str) -> Flags {
    let options = parse_help_options(text);
    let known: BTreeSet<String> = options.iter().flat_map(|o| o.names.clone()).collect();
    let find = |candidates: &[&str]| -> Option<(String, &HelpOption)> {
        candidates.iter().find_map(|c| {
            options
                .iter()
                .find(|o| o.names.iter().any(|n| n == c))
                .map(|o| (c.to_string(), o))
        })
    };
    let spelling = |candidates: &[&str]| find(candidates).map(|(name, _)| name);

    let gpu_layers = find(&["--n-gpu-layers", "--gpu-layers", "-ngl"]);
    let flash_attn = find(&["--flash-attn", "-fa"]);
    // `--fit` is useful only with a value (`--fit off`); a bare switch could only turn it on.
    let fit = find(&["--fit", "-fit"]).filter(|(_, o)| o.value_hint.is_some());
    Flags {
        model: spelling(&["--model", "-m"]),
        ctx_size: spelling(&["--ctx-size", "-c"]),
        batch_size: spelling(&["--batch-size", "-b"]),
        ubatch_size: spelling(&["--ubatch-size", "-ub"]),
        parallel: spelling(&["--parallel", "-np"]),
        gpu_layers_accepts_all: gpu_layers
            .as_ref()
            .is_some_and(|(_, o)| o.help.contains("'all'")),
        gpu_layers: gpu_layers.map(|(name, _)| name),
        flash_attn_takes_value: flash_attn
            .as_ref()
            .is_some_and(|(_, o)| o.value_hint.is_some()),
        flash_attn: flash_attn.map(|(name, _)| name),
        cache_type_k: spelling(&["--cache-type-k", "-ctk"]),
        cache_type_v: spelling(&["--cache-type-v", "-ctv"]),
        threads: spelling(&["--threads", "-t"]),
        fit: fit.map(|(name, _)| name),
        metrics: spelling(&["--metrics"]),
        no_webui: spelling(&["--no-webui", "--no-ui"]),
        no_kv_unified: spelling(&["--no-kv-unified", "-no-kvu"]),
        cache_ram: spelling(&["--cache-ram", "-cram"]),
        load_mode: spelling(&["--load-mode", "-lm"]),
        load_mode_value: None,
        host: spelling(&["--host"]),
        port: spelling(&["--port"]),
        known,
    }
}

/// The loading mode o3 pins: `dio` (direct I/O) on a machine with an integrated AMD GPU, as
/// Ollama passes it there (ROCm stalls loading models over ~64 GB through mmap, and on unified
/// memory the page cache would hold a second copy of the weights); `mmap` elsewhere, the
/// builds' own default before `auto`.
pub fn default_load_mode(integrated_gpu: bool) -> &'static str {
    if integrated_gpu {
        "dio"
    } else {
        "mmap"
    }
}

/// llama.cpp's default logical batch (`-b`) and physical batch (`-ub`), tokens.
const DEFAULT_BATCH: u32 = 2048;
const DEFAULT_UBATCH: u32 = 512;

/// What `-ngl` gets for "all layers" on a build without `all`: more layers than any model has.
const ALL_LAYERS: &str = "999";

/// A configuration this llama-server build cannot be started with, or a value llama.cpp would
/// change silently.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    #[error("this llama-server build has no {flag} flag ({asked} requested)")]
    NoFlag { flag: &'static str, asked: String },
    #[error("model path {0} is not valid UTF-8")]
    NotUtf8(String),
    #[error("ctx must be at least 1 token per slot")]
    NoContext,
    #[error("parallel must be at least 1")]
    NoSlots,
    #[error("ctx {ctx} x parallel {slots} overflows")]
    Overflow { ctx: u32, slots: u32 },
    #[error("ubatch {ubatch} > batch {batch}: llama.cpp would silently use ubatch = batch")]
    UbatchOverBatch { ubatch: u32, batch: u32 },
    #[error("gpu_layers {0}: only -1 (all) or a layer count")]
    GpuLayers(i32),
}

fn require<'a>(
    flag: &'a Option<String>,
    what: &'static str,
    asked: &str,
) -> Result<&'a str, ArgsError> {
    flag.as_deref().ok_or_else(|| ArgsError::NoFlag {
        flag: what,
        asked: asked.to_string(),
    })
}

/// A command line, flag by flag.
#[derive(Default)]
struct Words(Vec<String>);

impl Words {
    fn push(&mut self, flag: &str, value: Option<String>) {
        self.0.push(flag.to_string());
        if let Some(v) = value {
            self.0.push(v);
        }
    }
}

/// The command line (after the program name) that starts llama-server with `cfg`, every value
/// explicit: `-c` is the total across slots (`cfg.ctx` × parallel, since each slot gets
/// `c / np`), `--fit off` where the build would otherwise shrink `-c`/`-ngl` silently,
/// `--metrics` and `--no-webui` where available.
///
/// With `cfg.parallel` unset the build's default slot count applies: 1 in older builds, "auto"
/// in recent ones, where the slots share one unified KV cache so each may use all of `-c`;
/// either way `-c cfg.ctx` gives each request `cfg.ctx` tokens.
///
/// Errors name the flag when `cfg` asks for something the build lacks, and reject values
/// llama.cpp would change silently (`ubatch > batch` is clamped to `batch`).
pub fn command_args(
    flags: &Flags,
    model: &Path,
    cfg: &ProbeConfig,
    host: &str,
    port: u16,
) -> Result<Vec<String>, ArgsError> {
    let mut w = Words::default();
    endpoint_args(&mut w, flags, model, host, port)?;
    context_args(&mut w, flags, cfg)?;
    pinned_args(&mut w, flags);
    batch_args(&mut w, flags, cfg)?;
    gpu_args(&mut w, flags, cfg)?;
    kv_cache_args(&mut w, flags, cfg)?;
    if let Some(t) = cfg.threads {
        let asked = format!("threads = {t}");
        w.push(
            require(&flags.threads, "-t/--threads", &asked)?,
            Some(t.to_string()),
        );
    }
    server_args(&mut w, flags);
    Ok(w.0)
}

/// The model, and where the server listens.
fn endpoint_args(
    w: &mut Words,
    flags: &Flags,
    model: &Path,
    host: &str,
    port: u16,
) -> Result<(), ArgsError> {
    let model_path = model
        .to_str()
        .ok_or_else(|| ArgsError::NotUtf8(model.display().to_string()))?;
    w.push(
        require(&flags.model, "-m/--model", "a model")?,
        Some(model_path.to_string()),
    );
    w.push(
        require(&flags.host, "--host", "a host")?,
        Some(host.to_string()),
    );
    w.push(
        require(&flags.port, "--port", "a port")?,
        Some(port.to_string()),
    );
    Ok(())
}

/// The context across slots, and the slot count.
fn context_args(w: &mut Words, flags: &Flags, cfg: &ProbeConfig) -> Result<(), ArgsError> {
    if cfg.ctx == 0 {
        return Err(ArgsError::NoContext);
    }
    let slots = cfg.parallel.unwrap_or(1);
    if slots == 0 {
        return Err(ArgsError::NoSlots);
    }
    let total_ctx = cfg.ctx.checked_mul(slots).ok_or(ArgsError::Overflow {
        ctx: cfg.ctx,
        slots,
    })?;
    w.push(
        require(&flags.ctx_size, "-c/--ctx-size", "a context size")?,
        Some(total_ctx.to_string()),
    );
    // Every flag that changes memory or speed is written, searched or not, so the command
    // is the configuration measured whatever the build's defaults: the slot count (recent
    // builds default to "auto", 4 slots), and (`pinned_args`) each slot's own share of the
    // cache, no host-RAM prompt cache (up to 8 GiB a probe would not see grow), the loading
    // mode.
    match (&flags.parallel, cfg.parallel) {
        (Some(flag), _) => w.push(flag, Some(slots.to_string())),
        (None, Some(p)) => {
            require(
                &flags.parallel,
                "-np/--parallel",
                &format!("parallel = {p}"),
            )?;
        }
        (None, None) => {}
    }
    Ok(())
}

/// Settings o3 pins wherever the build has them, never searched.
fn pinned_args(w: &mut Words, flags: &Flags) {
    if let Some(flag) = &flags.no_kv_unified {
        w.push(flag, None);
    }
    if let Some(flag) = &flags.cache_ram {
        w.push(flag, Some("0".to_string()));
    }
    if let Some(flag) = &flags.load_mode {
        let mode = flags
            .load_mode_value
            .clone()
            .unwrap_or_else(|| default_load_mode(false).to_string());
        w.push(flag, Some(mode));
    }
}

/// The logical and physical batch.
fn batch_args(w: &mut Words, flags: &Flags, cfg: &ProbeConfig) -> Result<(), ArgsError> {
    if let (Some(batch), Some(ubatch)) = (cfg.batch, cfg.ubatch) {
        if ubatch > batch {
            return Err(ArgsError::UbatchOverBatch { ubatch, batch });
        }
    }
    if let Some(b) = cfg.batch {
        let asked = format!("batch = {b}");
        w.push(
            require(&flags.batch_size, "-b/--batch-size", &asked)?,
            Some(b.to_string()),
        );
    }
    match (cfg.ubatch, &flags.ubatch_size) {
        (Some(ub), _) => {
            let asked = format!("ubatch = {ub}");
            w.push(
                require(&flags.ubatch_size, "-ub/--ubatch-size", &asked)?,
                Some(ub.to_string()),
            );
        }
        // Unset: what llama.cpp uses, written down (its default 512, never above the batch,
        // whose own default is 2048).
        (None, Some(flag)) => w.push(
            flag,
            Some(
                cfg.batch
                    .unwrap_or(DEFAULT_BATCH)
                    .min(DEFAULT_UBATCH)
                    .to_string(),
            ),
        ),
        (None, None) => {}
    }
    Ok(())
}

/// Layers on the GPU, and flash attention.
fn gpu_args(w: &mut Words, flags: &Flags, cfg: &ProbeConfig) -> Result<(), ArgsError> {
    if let Some(n) = cfg.gpu_layers {
        let asked = format!("gpu_layers = {n}");
        let flag = require(&flags.gpu_layers, "-ngl/--n-gpu-layers", &asked)?;
        let value = match n {
            n if n >= 0 => n.to_string(),
            -1 if flags.gpu_layers_accepts_all => "all".to_string(),
            -1 => ALL_LAYERS.to_string(),
            n => return Err(ArgsError::GpuLayers(n)),
        };
        w.push(flag, Some(value));
    }
    match cfg.flash_attn {
        Some(fa) => {
            let asked = format!("flash_attn = {}", fa.name());
            let flag = require(&flags.flash_attn, "-fa/--flash-attn", &asked)?;
            if flags.flash_attn_takes_value {
                w.push(flag, Some(fa.name().to_string()));
            } else if fa.is_on() {
                // A plain switch: off is that build's default, there is nothing to pass.
                w.push(flag, None);
            }
        }
        // Unset: the build decides ("auto" where it takes a value), and the command says so.
        None => {
            if let (Some(flag), true) = (&flags.flash_attn, flags.flash_attn_takes_value) {
                w.push(flag, Some("auto".to_string()));
            }
        }
    }
    Ok(())
}

/// The KV cache types; unset ones are llama.cpp's f16, written down.
fn kv_cache_args(w: &mut Words, flags: &Flags, cfg: &ProbeConfig) -> Result<(), ArgsError> {
    for (asked, flag, name) in [
        (
            &cfg.cache_type_k,
            &flags.cache_type_k,
            "-ctk/--cache-type-k",
        ),
        (
            &cfg.cache_type_v,
            &flags.cache_type_v,
            "-ctv/--cache-type-v",
        ),
    ] {
        match (asked, flag) {
            (Some(t), _) => w.push(
                require(flag, name, &format!("{name} = {t}"))?,
                Some(t.clone()),
            ),
            (None, Some(f)) => w.push(f, Some("f16".to_string())),
            (None, None) => {}
        }
    }
    Ok(())
}

/// No silent fitting, the metrics endpoint, no web UI: wherever the build has them.
fn server_args(w: &mut Words, flags: &Flags) {
    if let Some(fit) = &flags.fit {
        w.push(fit, Some("off".to_string()));
    }
    if let Some(metrics) = &flags.metrics {
        w.push(metrics, None);
    }
    if let Some(no_webui) = &flags.no_webui {
        w.push(no_webui, None);
    }
}

/// The body of `POST /completion`: streamed with prompt-progress events (one per batch read,
/// so a long prefill shows life), greedy, seeded. With `slot`, the request is pinned to that
/// slot and may reuse the prefix the slot holds (`cache_prompt`); without, every request
/// evaluates its whole prompt.
pub fn completion_request(prompt: &str, n_predict: u32, seed: u32, slot: Option<u32>) -> Value {
    let mut v = json!({
        "prompt": prompt,
        "n_predict": n_predict,
        "stream": true,
        "return_progress": true,
        "cache_prompt": slot.is_some(),
        "temperature": 0.0,
        "seed": seed,
    });
    if let Some(s) = slot {
        v["id_slot"] = json!(s);
    }
    v
}

/// Readiness as `GET /health` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// 503 "Loading model": keep waiting.
    Loading,
    /// 200: the model is loaded.
    Ready,
    /// Anything else, with the server's message.
    Error(String),
}

/// The human part of an error body: `error.message` (with its type and code), `error` as a
/// string, or the body itself, cut to 200 characters.
fn error_message(body: &str) -> String {
    let text = match serde_json::from_str::<Value>(body.trim()) {
        Ok(v) => match v.get("error") {
            Some(e) => error_text(e),
            None => v
                .get("status")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| body.trim().to_string()),
        },
        Err(_) => body.trim().to_string(),
    };
    text.chars().take(200).collect()
}

/// `{"code":500,"message":"Compute error.","type":"server_error"}` → `Compute error.
/// (server_error, code 500)`; a string error as is.
fn error_text(error: &Value) -> String {
    match error {
        Value::String(s) => s.clone(),
        Value::Object(o) => {
            let message = o.get("message").and_then(Value::as_str);
            let kind = o.get("type").and_then(Value::as_str);
            let code = o.get("code").filter(|c| !c.is_null()).map(|c| match c {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
            let mut detail: Vec<String> = Vec::new();
            if let Some(k) = kind {
                detail.push(k.to_string());
            }
            if let Some(c) = code {
                detail.push(format!("code {c}"));
            }
            match (message, detail.is_empty()) {
                (Some(m), true) => m.to_string(),
                (Some(m), false) => format!("{m} ({})", detail.join(", ")),
                (None, _) => error.to_string(),
            }
        }
        other => other.to_string(),
    }
}

/// Interpret `GET /health`: 200 is ready, 503 mentioning loading is loading (current builds:
/// `{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}`, 2024 builds:
/// `{"status":"loading model"}`), anything else an error.
pub fn parse_health(status: u16, body: &str) -> Health {
    if (200..300).contains(&status) {
        return Health::Ready;
    }
    let message = error_message(body);
    if status == 503 && message.to_lowercase().contains("loading") {
        return Health::Loading;
    }
    if message.is_empty() {
        Health::Error(format!("HTTP {status}"))
    } else {
        Health::Error(format!("HTTP {status}: {message}"))
    }
}

/// What `GET /props` says about the server's actual configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Props {
    /// Slots (`--parallel`).
    pub total_slots: u32,
    /// Context per slot (`default_generation_settings.n_ctx`).
    pub n_ctx: u32,
    pub model_path: Option<String>,
    /// `b<build number>-<commit>`.
    pub build_info: Option<String>,
}

impl Props {
    /// Whether the server runs a smaller configuration than `cfg` asked for: fewer tokens per
    /// slot, or fewer slots. (llama.cpp pads the context up to a multiple of 256, so a larger
    /// `n_ctx` is normal.)
    pub fn clamped(&self, cfg: &ProbeConfig) -> bool {
        self.n_ctx < cfg.ctx || cfg.parallel.is_some_and(|p| self.total_slots < p)
    }
}

fn u32_field(value: Option<&Value>, name: &str, body: &str) -> Result<u32, ProtocolError> {
    let v = value.ok_or_else(|| ProtocolError::new(format!("/props lacks {name}"), body))?;
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| ProtocolError::new(format!("/props {name} is not a count"), body))
}

/// Parse `GET /props`.
pub fn parse_props(body: &str) -> Result<Props, ProtocolError> {
    let v: Value = serde_json::from_str(body.trim())
        .map_err(|e| ProtocolError::new(format!("/props is not JSON ({e})"), body))?;
    if !v.is_object() {
        return Err(ProtocolError::new("/props is not a JSON object", body));
    }
    let n_ctx = u32_field(
        v.get("default_generation_settings")
            .and_then(|d| d.get("n_ctx")),
        "default_generation_settings.n_ctx",
        body,
    )?;
    let total_slots = u32_field(v.get("total_slots"), "total_slots", body)?;
    let text = |key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    Ok(Props {
        total_slots,
        n_ctx,
        model_path: text("model_path"),
        build_info: text("build_info"),
    })
}

/// A count in `timings` (`-1` means "not measured" in llama.cpp's defaults).
fn count(
    timings: &Map<String, Value>,
    key: &str,
    line: &str,
) -> Result<Option<u64>, ProtocolError> {
    match timings.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(n) if n < 0.0 => Ok(None),
            Some(n) if n.fract() == 0.0 => Ok(Some(n as u64)),
            _ => Err(ProtocolError::new(
                format!("timings.{key} is not a count"),
                line,
            )),
        },
    }
}

fn millis(
    timings: &Map<String, Value>,
    key: &str,
    line: &str,
) -> Result<Option<f64>, ProtocolError> {
    match timings.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(ms) if ms >= 0.0 => Ok(Some(ms)),
            Some(_) => Ok(None),
            None => Err(ProtocolError::new(
                format!("timings.{key} is not a number"),
                line,
            )),
        },
    }
}

/// The final object's timings and stop reason.
fn final_timings(obj: &Map<String, Value>, line: &str) -> Result<Timings, ProtocolError> {
    let stop_reason = match obj.get("stop_type").and_then(Value::as_str) {
        Some(s) => Some(s.to_string()),
        // Builds before late 2024: three booleans instead of `stop_type`.
        None => [
            ("stopped_eos", "eos"),
            ("stopped_word", "word"),
            ("stopped_limit", "limit"),
        ]
        .iter()
        .find(|(key, _)| obj.get(*key).and_then(Value::as_bool) == Some(true))
        .map(|(_, reason)| reason.to_string()),
    };
    let mut timings = Timings {
        stop_reason,
        ..Timings::default()
    };
    match obj.get("timings") {
        None | Some(Value::Null) => {}
        Some(Value::Object(t)) => {
            timings.prompt_tokens = count(t, "prompt_n", line)?;
            timings.prompt_ms = millis(t, "prompt_ms", line)?;
            timings.cached_tokens = count(t, "cache_n", line)?;
            timings.predicted_tokens = count(t, "predicted_n", line)?;
            timings.predicted_ms = millis(t, "predicted_ms", line)?;
        }
        Some(_) => return Err(ProtocolError::new("timings is not an object", line)),
    }
    Ok(timings)
}

/// `prompt_progress`: `{total, cache, processed, time_ms}`.
fn progress(v: &Value, line: &str) -> Result<PromptProgress, ProtocolError> {
    let Value::Object(o) = v else {
        return Err(ProtocolError::new("prompt_progress is not an object", line));
    };
    let n = |k: &str| -> Result<u64, ProtocolError> {
        o.get(k).and_then(Value::as_u64).ok_or_else(|| {
            ProtocolError::new(format!("prompt_progress.{k} is not a whole number"), line)
        })
    };
    Ok(PromptProgress {
        total: n("total")?,
        cache: n("cache")?,
        processed: n("processed")?,
        time_ms: o
            .get("time_ms")
            .and_then(Value::as_f64)
            .ok_or_else(|| ProtocolError::new("prompt_progress.time_ms is not a number", line))?,
    })
}

/// One JSON payload of the `/completion` stream.
fn parse_payload(payload: &str, line: &str) -> Result<Option<StreamEvent>, ProtocolError> {
    let v: Value = serde_json::from_str(payload)
        .map_err(|e| ProtocolError::new(format!("stream event is not JSON ({e})"), line))?;
    let Value::Object(obj) = v else {
        return Err(ProtocolError::new(
            "stream event is not a JSON object",
            line,
        ));
    };
    if let Some(error) = obj.get("error").filter(|e| !e.is_null()) {
        return Ok(Some(StreamEvent::Error(error_text(error))));
    }
    match obj.get("stop") {
        Some(Value::Bool(true)) => return Ok(Some(StreamEvent::Done(final_timings(&obj, line)?))),
        Some(Value::Bool(false)) | None => {}
        Some(_) => {
            return Err(ProtocolError::new(
                "stream event's stop is not a boolean",
                line,
            ))
        }
    }
    // Progress reports (`return_progress`) carry an empty content beside `prompt_progress`.
    if let Some(p) = obj.get("prompt_progress") {
        return progress(p, line).map(|p| Some(StreamEvent::Progress(p)));
    }
    match obj.get("content") {
        Some(Value::String(s)) => Ok(Some(StreamEvent::Token(s.clone()))),
        Some(_) => Err(ProtocolError::new(
            "stream event's content is not a string",
            line,
        )),
        None => Err(ProtocolError::new(
            "stream event has neither content, stop nor error",
            line,
        )),
    }
}

/// Parse one line of the `/completion` event stream (with or without its line ending).
/// `data: {...}` gives a token, the final timings or an error; `data: [DONE]`, comments
/// (`: ping`), blank lines and `event:`/`id:`/`retry:` fields give `None`; the `error: {...}`
/// field of older builds gives an error. Anything else is a [`ProtocolError`] naming the line.
pub fn parse_sse_line(line: &str) -> Result<Option<StreamEvent>, ProtocolError> {
    let line = line.trim_end_matches(['\n', '\r']);
    if line.trim().is_empty() || line.starts_with(':') {
        return Ok(None);
    }
    let Some((field, value)) = line.split_once(':') else {
        return Err(ProtocolError::new("not a server-sent event line", line));
    };
    // SSE: one space after the colon belongs to the syntax, not to the value.
    let value = value.strip_prefix(' ').unwrap_or(value).trim_end();
    match field {
        "data" if value == "[DONE]" => Ok(None),
        "data" => parse_payload(value, line),
        "error" => {
            let error =
                serde_json::from_str::<Value>(value).unwrap_or(Value::String(value.to_string()));
            let error = error.get("error").cloned().unwrap_or(error);
            Ok(Some(StreamEvent::Error(error_text(&error))))
        }
        "event" | "id" | "retry" => Ok(None),
        _ => Err(ProtocolError::new("not a server-sent event line", line)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::classify;
    use crate::backend::OutcomeClass;

    const HELP_OLD: &str =
        include_str!("../../../tests/fixtures/llama-server/help-2025-02-switch-fa.txt");
    const HELP_RECENT: &str =
        include_str!("../../../tests/fixtures/llama-server/help-recent-fa-value-fit.txt");
    const STREAM_NORMAL: &str =
        include_str!("../../../tests/fixtures/llama-server/stream-normal.sse");
    const STREAM_ERROR: &str =
        include_str!("../../../tests/fixtures/llama-server/stream-error-midstream.sse");
    const STREAM_ERROR_OLDER: &str =
        include_str!("../../../tests/fixtures/llama-server/stream-error-sse-field-older.sse");
    const CONTEXT_EXCEEDED: &str =
        include_str!("../../../tests/fixtures/llama-server/context-exceeded-400.json");
    const HEALTH_LOADING: &str =
        include_str!("../../../tests/fixtures/llama-server/health-loading-503.json");
    const HEALTH_OK: &str = include_str!("../../../tests/fixtures/llama-server/health-ok-200.json");
    const PROPS: &str = include_str!("../../../tests/fixtures/llama-server/props.json");

    fn events(body: &str) -> Vec<StreamEvent> {
        body.lines()
            .filter_map(|l| parse_sse_line(l).unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    fn cfg(ctx: u32) -> ProbeConfig {
        ProbeConfig {
            ctx,
            ..ProbeConfig::default()
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn help_entries_are_parsed_in_the_console_layout() {
        let options = parse_help_options(HELP_RECENT);
        let by_name = |n: &str| {
            options
                .iter()
                .find(|o| o.names.iter().any(|x| x == n))
                .unwrap()
        };
        let fa = by_name("-fa");
        assert_eq!(fa.names, s(&["-fa", "--flash-attn"]));
        assert_eq!(fa.value_hint.as_deref(), Some("[on|off|auto]"));
        assert!(fa.help.ends_with("(env: LLAMA_ARG_FLASH_ATTN)"));
        let ngl = by_name("-ngl");
        assert_eq!(ngl.names, s(&["-ngl", "--gpu-layers", "--n-gpu-layers"]));
        assert_eq!(ngl.value_hint.as_deref(), Some("N"));
        // a name list longer than 37 characters puts the help on the next line
        let draft = by_name("--spec-draft-ngl");
        assert_eq!(draft.names.len(), 4);
        assert!(draft.help.starts_with("max. number of draft model layers"));
        let ui = by_name("--no-webui");
        assert_eq!(ui.names, s(&["--ui", "--webui", "--no-ui", "--no-webui"]));
        assert_eq!(ui.value_hint, None);
        let split = by_name("-sm");
        assert_eq!(split.value_hint.as_deref(), Some("{none,layer,row,tensor}"));
        // continuation lines starting with "- " are help, not options
        assert!(split.help.contains("- none: use one GPU only"));
        assert!(!options.iter().any(|o| o.names.iter().any(|n| n == "-")));
        let old = parse_help_options(HELP_OLD);
        let scaled = old
            .iter()
            .find(|o| o.names == s(&["--lora-scaled"]))
            .unwrap();
        assert_eq!(scaled.value_hint.as_deref(), Some("FNAME SCALE"));
        let old_fa = old.iter().find(|o| o.names[0] == "-fa").unwrap();
        assert_eq!(old_fa.value_hint, None);
        assert!(old_fa
            .help
            .starts_with("enable Flash Attention (default: disabled)"));
    }

    #[test]
    fn flags_of_an_older_build() {
        let f = parse_help(HELP_OLD);
        assert!(f.is_llama_server());
        assert_eq!(f.model.as_deref(), Some("--model"));
        assert_eq!(f.ctx_size.as_deref(), Some("--ctx-size"));
        assert_eq!(f.batch_size.as_deref(), Some("--batch-size"));
        assert_eq!(f.ubatch_size.as_deref(), Some("--ubatch-size"));
        assert_eq!(f.parallel.as_deref(), Some("--parallel"));
        assert_eq!(f.gpu_layers.as_deref(), Some("--n-gpu-layers"));
        assert!(!f.gpu_layers_accepts_all);
        assert_eq!(f.flash_attn.as_deref(), Some("--flash-attn"));
        assert!(!f.flash_attn_takes_value);
        assert_eq!(f.cache_type_k.as_deref(), Some("--cache-type-k"));
        assert_eq!(f.cache_type_v.as_deref(), Some("--cache-type-v"));
        assert_eq!(f.threads.as_deref(), Some("--threads"));
        assert_eq!(f.fit, None);
        assert_eq!(f.metrics.as_deref(), Some("--metrics"));
        assert_eq!(f.no_webui.as_deref(), Some("--no-webui"));
        assert_eq!(f.host.as_deref(), Some("--host"));
        assert_eq!(f.port.as_deref(), Some("--port"));
        assert!(f.known.contains("-ngld") && f.known.contains("-np"));
    }

    #[test]
    fn flags_of_a_recent_build() {
        let f = parse_help(HELP_RECENT);
        assert!(f.is_llama_server());
        assert_eq!(f.flash_attn.as_deref(), Some("--flash-attn"));
        assert!(f.flash_attn_takes_value);
        assert_eq!(f.fit.as_deref(), Some("--fit"));
        assert!(f.gpu_layers_accepts_all);
        assert_eq!(f.gpu_layers.as_deref(), Some("--n-gpu-layers"));
        assert_eq!(f.cache_type_k.as_deref(), Some("--cache-type-k"));
        assert_eq!(f.no_webui.as_deref(), Some("--no-webui"));
        assert_eq!(f.parallel.as_deref(), Some("--parallel"));
        // look-alikes are separate options
        for n in [
            "-fitt",
            "-fitc",
            "-ctkd",
            "--cache-type-k-draft",
            "--no-webui-mcp-proxy",
        ] {
            assert!(f.known.contains(n), "{n}");
        }
    }

    #[test]
    fn short_only_and_partial_helps() {
        let help = "ggml_cuda_init: found 1 CUDA devices:\n  Device 0: NVIDIA GeForce RTX 3090, compute capability 8.6, VMM: yes\n\
                    ----- common params -----\n\n\
                    -c N                                    size of the prompt context\n\
                    -fa                                     enable Flash Attention\n\
                    -fitt N                                 not --fit\n\
                    -ctkd TYPE                              not -ctk\n\
                    -m FNAME                                model path\n";
        let f = parse_help(help);
        assert_eq!(f.ctx_size.as_deref(), Some("-c"));
        assert_eq!(f.model.as_deref(), Some("-m"));
        assert_eq!(f.flash_attn.as_deref(), Some("-fa"));
        assert!(!f.flash_attn_takes_value);
        assert_eq!(f.fit, None);
        assert_eq!(f.cache_type_k, None);
        assert_eq!(f.ubatch_size, None);
        assert!(!f.is_llama_server());
        assert_eq!(parse_help(""), Flags::default());
        assert!(parse_help_options("usage: something else\nerror: unknown\n").is_empty());
    }

    #[test]
    fn a_bare_fit_switch_is_not_used() {
        let f = parse_help("--fit                                   fit to memory\n");
        assert_eq!(f.fit, None);
    }

    #[test]
    fn command_line_of_a_recent_build() {
        let f = parse_help(HELP_RECENT);
        let cfg = ProbeConfig {
            ctx: 4096,
            batch: Some(1024),
            ubatch: Some(256),
            parallel: Some(2),
            gpu_layers: Some(-1),
            flash_attn: Some(crate::backend::FlashAttn::Off),
            cache_type_k: Some("q8_0".into()),
            cache_type_v: Some("q8_0".into()),
            threads: Some(8),
            server_bin: None,
        };
        let args = command_args(&f, Path::new("/models/m.gguf"), &cfg, "127.0.0.1", 8089).unwrap();
        assert_eq!(
            args,
            s(&[
                "--model",
                "/models/m.gguf",
                "--host",
                "127.0.0.1",
                "--port",
                "8089",
                "--ctx-size",
                "8192",
                "--parallel",
                "2",
                "--no-kv-unified",
                "--cache-ram",
                "0",
                "--load-mode",
                "mmap",
                "--batch-size",
                "1024",
                "--ubatch-size",
                "256",
                "--n-gpu-layers",
                "all",
                "--flash-attn",
                "off",
                "--cache-type-k",
                "q8_0",
                "--cache-type-v",
                "q8_0",
                "--threads",
                "8",
                "--fit",
                "off",
                "--metrics",
                "--no-webui",
            ])
        );
    }

    #[test]
    fn command_line_of_an_older_build() {
        let f = parse_help(HELP_OLD);
        let mut c = cfg(2048);
        c.gpu_layers = Some(-1);
        c.flash_attn = Some(crate::backend::FlashAttn::On);
        let args = command_args(&f, Path::new("m.gguf"), &c, "127.0.0.1", 8080).unwrap();
        assert_eq!(
            args,
            s(&[
                "--model",
                "m.gguf",
                "--host",
                "127.0.0.1",
                "--port",
                "8080",
                "--ctx-size",
                "2048",
                "--parallel",
                "1",
                "--ubatch-size",
                "512",
                "--n-gpu-layers",
                "999",
                "--flash-attn",
                "--cache-type-k",
                "f16",
                "--cache-type-v",
                "f16",
                "--metrics",
                "--no-webui",
            ])
        );
        // off is the switch build's default: nothing to pass
        c.flash_attn = Some(crate::backend::FlashAttn::Off);
        c.gpu_layers = Some(20);
        let args = command_args(&f, Path::new("m.gguf"), &c, "127.0.0.1", 8080).unwrap();
        assert!(!args.iter().any(|a| a.contains("flash")));
        assert!(!args.iter().any(|a| a == "--fit"));
        assert!(args.windows(2).any(|w| w == ["--n-gpu-layers", "20"]));
    }

    #[test]
    fn missing_flags_are_named() {
        let help = "-m,    --model FNAME                    model path\n\
                    -c,    --ctx-size N                     size of the prompt context\n\
                    --host HOST                             ip address to listen\n\
                    --port PORT                             port to listen\n";
        let f = parse_help(help);
        let model = Path::new("m.gguf");
        assert_eq!(
            command_args(&f, model, &cfg(512), "h", 1).unwrap(),
            s(&[
                "--model",
                "m.gguf",
                "--host",
                "h",
                "--port",
                "1",
                "--ctx-size",
                "512"
            ])
        );
        let mut c = cfg(512);
        c.ubatch = Some(128);
        let e = command_args(&f, model, &c, "h", 1).unwrap_err();
        assert_eq!(
            e,
            ArgsError::NoFlag {
                flag: "-ub/--ubatch-size",
                asked: "ubatch = 128".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "this llama-server build has no -ub/--ubatch-size flag (ubatch = 128 requested)"
        );
        let mut c = cfg(512);
        c.flash_attn = Some(crate::backend::FlashAttn::Off);
        assert!(command_args(&f, model, &c, "h", 1)
            .unwrap_err()
            .to_string()
            .contains("-fa/--flash-attn"));
        let mut c = cfg(512);
        c.parallel = Some(4);
        assert!(command_args(&f, model, &c, "h", 1)
            .unwrap_err()
            .to_string()
            .contains("-np/--parallel"));
        let mut c = cfg(512);
        c.cache_type_v = Some("q4_0".into());
        assert!(command_args(&f, model, &c, "h", 1)
            .unwrap_err()
            .to_string()
            .contains("-ctv"));
        let e = command_args(&Flags::default(), model, &cfg(512), "h", 1).unwrap_err();
        assert!(e.to_string().contains("-m/--model"), "{e}");
    }

    #[test]
    fn values_llama_cpp_would_change_are_refused() {
        let f = parse_help(HELP_RECENT);
        let model = Path::new("m.gguf");
        let mut c = cfg(512);
        c.batch = Some(256);
        c.ubatch = Some(512);
        assert!(command_args(&f, model, &c, "h", 1)
            .unwrap_err()
            .to_string()
            .contains("ubatch 512 > batch 256"));
        assert!(command_args(&f, model, &cfg(0), "h", 1).is_err());
        let mut c = cfg(512);
        c.parallel = Some(0);
        assert!(command_args(&f, model, &c, "h", 1).is_err());
        let mut c = cfg(u32::MAX);
        c.parallel = Some(2);
        assert!(command_args(&f, model, &c, "h", 1)
            .unwrap_err()
            .to_string()
            .contains("overflows"));
        let mut c = cfg(512);
        c.gpu_layers = Some(-2);
        assert!(command_args(&f, model, &c, "h", 1).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let bad = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(b"/m\xff.gguf"));
            assert!(command_args(&f, &bad, &cfg(512), "h", 1)
                .unwrap_err()
                .to_string()
                .contains("UTF-8"));
        }
    }

    #[test]
    fn the_completion_request() {
        let r = completion_request("Hello", 64, 42, None);
        assert_eq!(
            r,
            json!({"prompt": "Hello", "n_predict": 64, "stream": true, "return_progress": true,
                   "cache_prompt": false, "temperature": 0.0, "seed": 42})
        );
        // Pinned to a slot, the prefix that slot holds may be reused.
        let r = completion_request("Hello", 64, 42, Some(1));
        assert_eq!(r["cache_prompt"], json!(true));
        assert_eq!(r["id_slot"], json!(1));
    }

    #[test]
    fn a_normal_stream() {
        let ev = events(STREAM_NORMAL);
        assert_eq!(
            &ev[..4],
            &[
                StreamEvent::Token(" Paris".into()),
                StreamEvent::Token(".".into()),
                StreamEvent::Token(" It".into()),
                StreamEvent::Token(" is".into()),
            ]
        );
        let StreamEvent::Done(t) = &ev[4] else {
            panic!("{:?}", ev[4])
        };
        assert_eq!(t.prompt_tokens, Some(7));
        assert_eq!(t.prompt_ms, Some(21.338));
        assert_eq!(t.cached_tokens, Some(0));
        assert_eq!(t.predicted_tokens, Some(4));
        assert_eq!(t.predicted_ms, Some(38.412));
        assert_eq!(t.load_ms, None);
        assert_eq!(t.stop_reason.as_deref(), Some("limit"));
        let decode = t.decode_tokens_per_s().unwrap();
        assert!((decode - 104.134).abs() < 0.01, "{decode}");
        assert_eq!(ev.len(), 5);
    }

    #[test]
    fn errors_inside_a_stream() {
        let ev = events(STREAM_ERROR);
        assert_eq!(ev.len(), 3);
        assert_eq!(
            ev[2],
            StreamEvent::Error("Compute error. (server_error, code 500)".into())
        );
        let ev = events(STREAM_ERROR_OLDER);
        assert_eq!(ev.len(), 1);
        let StreamEvent::Error(msg) = &ev[0] else {
            panic!()
        };
        assert!(msg.starts_with("the request exceeds the available context size"));
        assert!(msg.contains("exceed_context_size_error"));
        assert_eq!(
            classify::classify_error_text(msg),
            OutcomeClass::ContextExceeded
        );
        assert_eq!(
            parse_sse_line(r#"data: {"error":"out of memory"}"#).unwrap(),
            Some(StreamEvent::Error("out of memory".into()))
        );
        assert_eq!(
            parse_sse_line("error: plain text").unwrap(),
            Some(StreamEvent::Error("plain text".into()))
        );
    }

    #[test]
    fn lines_that_carry_nothing() {
        for line in [
            "",
            "\r\n",
            ": ping",
            ":",
            "event: message",
            "id: 3",
            "retry: 1000",
            "data: [DONE]",
            "data:[DONE]\r\n",
        ] {
            assert_eq!(parse_sse_line(line), Ok(None), "{line:?}");
        }
    }

    #[test]
    fn progress_events_and_a_reused_prefix() {
        // Captured from the test server (see the fixtures' README).
        let fill = events(include_str!(
            "../../../tests/fixtures/llama-server/stream-progress-fill.sse"
        ));
        let progress: Vec<&PromptProgress> = fill
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Progress(p) => Some(p),
                _ => None,
            })
            .collect();
        assert_eq!(progress.len(), 8, "one at the start, one per batch of 256");
        assert_eq!((progress[0].processed, progress[0].cache), (0, 0));
        let last = progress[progress.len() - 1];
        assert_eq!(last.processed, last.total);
        // No empty token comes out of a progress event.
        assert!(fill
            .iter()
            .all(|e| !matches!(e, StreamEvent::Token(t) if t.is_empty())));
        let cached = events(include_str!(
            "../../../tests/fixtures/llama-server/stream-progress-cached.sse"
        ));
        let Some(StreamEvent::Progress(first)) = cached.first() else {
            panic!("{cached:?}")
        };
        assert_eq!(first.cache, first.processed);
        let Some(StreamEvent::Done(t)) = cached.last() else {
            panic!("{cached:?}")
        };
        assert_eq!(t.cached_tokens, Some(first.cache));
        assert_eq!(t.prompt_tokens, Some(15), "only the suffix is read");
        assert_eq!(
            parse_sse_line(
                r#"data: {"prompt_progress":{"total":1,"cache":0,"processed":"x","time_ms":0}}"#
            )
            .unwrap_err()
            .what,
            "prompt_progress.processed is not a whole number"
        );
    }

    #[test]
    fn token_lines_in_their_variants() {
        // no space after the colon, CRLF, an empty piece (held back partial UTF-8), older fields
        assert_eq!(
            parse_sse_line("data:{\"content\":\"a\",\"stop\":false}\r\n").unwrap(),
            Some(StreamEvent::Token("a".into()))
        );
        assert_eq!(
            parse_sse_line(r#"data: {"content":"","stop":false}"#).unwrap(),
            Some(StreamEvent::Token(String::new()))
        );
        assert_eq!(
            parse_sse_line(
                r#"data: {"content":" x","stop":false,"id_slot":0,"multimodal":false,"index":0}"#
            )
            .unwrap(),
            Some(StreamEvent::Token(" x".into()))
        );
        // timings_per_token: timings on a partial do not end the stream
        let partial = r#"data: {"content":"b","stop":false,"timings":{"prompt_n":3,"prompt_ms":1.0,"predicted_n":1,"predicted_ms":2.0}}"#;
        assert_eq!(
            parse_sse_line(partial).unwrap(),
            Some(StreamEvent::Token("b".into()))
        );
    }

    #[test]
    fn final_objects_of_older_builds() {
        let line = r#"data: {"content":"","stop":true,"stopped_eos":true,"stopped_limit":false,"stopped_word":false,"timings":{"prompt_n":-1,"prompt_ms":-1,"predicted_n":12,"predicted_ms":240.5}}"#;
        let Some(StreamEvent::Done(t)) = parse_sse_line(line).unwrap() else {
            panic!()
        };
        assert_eq!(t.stop_reason.as_deref(), Some("eos"));
        assert_eq!(t.prompt_tokens, None);
        assert_eq!(t.prompt_ms, None);
        assert_eq!(t.cached_tokens, None);
        assert_eq!(t.predicted_tokens, Some(12));
        let Some(StreamEvent::Done(t)) = parse_sse_line(r#"data: {"stop":true}"#).unwrap() else {
            panic!()
        };
        assert_eq!(t, Timings::default());
    }

    #[test]
    fn malformed_lines_are_protocol_errors() {
        for (line, what) in [
            ("data: {\"content\": \"a\"", "not JSON"),
            ("data: [1,2]", "not a JSON object"),
            ("data: {\"content\": 5}", "content is not a string"),
            ("data: {\"stop\": \"yes\"}", "stop is not a boolean"),
            ("data: {\"choices\": []}", "neither content"),
            (
                "data: {\"stop\":true,\"timings\":{\"prompt_n\":\"7\"}}",
                "timings.prompt_n",
            ),
            (
                "data: {\"stop\":true,\"timings\":{\"prompt_n\":7.5}}",
                "timings.prompt_n",
            ),
            (
                "data: {\"stop\":true,\"timings\":{\"prompt_ms\":\"fast\"}}",
                "timings.prompt_ms",
            ),
            (
                "data: {\"stop\":true,\"timings\":[]}",
                "timings is not an object",
            ),
            (
                "<html><body>502 Bad Gateway</body></html>",
                "not a server-sent event",
            ),
            ("{\"content\":\"a\"}", "not a server-sent event"),
            ("garbage", "not a server-sent event"),
        ] {
            let e = parse_sse_line(line).unwrap_err();
            assert!(e.what.contains(what), "{line}: {e}");
            assert_eq!(e.line, line);
        }
        let long = format!("data: {{\"content\": \"{}", "x".repeat(500));
        assert_eq!(parse_sse_line(&long).unwrap_err().line.chars().count(), 200);
    }

    #[test]
    fn the_context_exceeded_response() {
        assert!(classify::is_context_exceeded(400, CONTEXT_EXCEEDED));
        assert_eq!(
            classify::classify_http(400, CONTEXT_EXCEEDED),
            OutcomeClass::ContextExceeded
        );
        let v: Value = serde_json::from_str(CONTEXT_EXCEEDED).unwrap();
        assert_eq!(v["error"]["n_prompt_tokens"], 9412);
        assert_eq!(v["error"]["n_ctx"], 8192);
        assert!(error_message(CONTEXT_EXCEEDED)
            .starts_with("request (9412 tokens) exceeds the available context size (8192 tokens)"));
    }

    #[test]
    fn health() {
        assert_eq!(parse_health(503, HEALTH_LOADING), Health::Loading);
        assert_eq!(parse_health(200, HEALTH_OK), Health::Ready);
        assert_eq!(
            parse_health(503, r#"{"status": "loading model"}"#),
            Health::Loading
        );
        assert_eq!(
            parse_health(
                500,
                r#"{"status": "error", "error": "Model failed to load"}"#
            ),
            Health::Error("HTTP 500: Model failed to load".into())
        );
        assert_eq!(
            parse_health(
                503,
                r#"{"status": "no slot available", "slots_idle": 0, "slots_processing": 1}"#
            ),
            Health::Error("HTTP 503: no slot available".into())
        );
        assert_eq!(parse_health(404, ""), Health::Error("HTTP 404".into()));
        assert_eq!(
            parse_health(502, "<html>Bad Gateway</html>"),
            Health::Error("HTTP 502: <html>Bad Gateway</html>".into())
        );
    }

    #[test]
    fn props_and_clamping() {
        let p = parse_props(PROPS).unwrap();
        assert_eq!(p.total_slots, 2);
        assert_eq!(p.n_ctx, 4096);
        assert_eq!(
            p.model_path.as_deref(),
            Some("/models/Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf")
        );
        assert_eq!(p.build_info.as_deref(), Some("b5172-eb1776b1"));
        let mut c = cfg(4096);
        c.parallel = Some(2);
        assert!(!p.clamped(&c));
        c.ctx = 4000; // padded up by the server: not a clamp
        assert!(!p.clamped(&c));
        c.ctx = 8192; // --fit or n_ctx_train shrank it
        assert!(p.clamped(&c));
        c.ctx = 4096;
        c.parallel = Some(4);
        assert!(p.clamped(&c));
    }

    #[test]
    fn malformed_props() {
        for (body, what) in [
            ("not json", "not JSON"),
            ("[]", "not a JSON object"),
            (
                r#"{"total_slots": 1}"#,
                "lacks default_generation_settings.n_ctx",
            ),
            (
                r#"{"default_generation_settings": {"n_ctx": 512}}"#,
                "lacks total_slots",
            ),
            (
                r#"{"default_generation_settings": {"n_ctx": -1}, "total_slots": 1}"#,
                "n_ctx is not a count",
            ),
            (
                r#"{"default_generation_settings": {"n_ctx": 512}, "total_slots": "1"}"#,
                "total_slots is not a count",
            ),
        ] {
            let e = parse_props(body).unwrap_err();
            assert!(e.what.contains(what), "{body}: {e}");
        }
    }

    #[test]
    fn stderr_fixtures_classify() {
        let kv = include_str!("../../../tests/fixtures/llama-server/stderr-kv-oom-at-load.log");
        let compute =
            include_str!("../../../tests/fixtures/llama-server/stderr-compute-oom-mid-request.log");
        assert_eq!(
            classify::classify_exit(Some(1), None, kv, true),
            OutcomeClass::Oom
        );
        assert_eq!(
            classify::classify_exit(
                None,
                Some(nix::sys::signal::Signal::SIGABRT as i32),
                compute,
                false
            ),
            OutcomeClass::Oom
        );
    }
}
