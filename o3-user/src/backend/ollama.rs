//! The Ollama protocol as pure functions: request bodies, the managed server's environment, and
//! parsers for the bodies Ollama returns; and three questions to a running server (its models,
//! a model's size and shape) asked through `super::http`.
//!
//! Formats are those of the Ollama REST API (0.5 – 0.12): `POST /api/generate` streams
//! newline-delimited JSON objects, durations are nanoseconds, sizes bytes. Facts relied on:
//! - per-request `options` that reload the model when changed: `num_ctx`, `num_batch`,
//!   `num_gpu`, `num_thread`; unknown option keys are silently ignored by the server, so only
//!   real option names are ever sent;
//! - micro-batch, parallel slots, flash attention and KV cache types are server-level settings
//!   (environment at server start), never per request;
//! - `num_ctx` above the trained context is silently clamped: `/api/ps` `context_length` shows
//!   the context in effect; `size_vram < size` means layers spilled to the CPU.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::http::{Blocking, HttpError, Reply};
use super::{ProbeConfig, ProtocolError, StreamEvent, Timings};

/// `keep_alive` sent with every request and given to a managed server: long enough that the
/// model is still loaded when `/api/ps` is read after a probe.
pub const KEEP_ALIVE: &str = "10m";

/// KV cache types Ollama accepts in `OLLAMA_KV_CACHE_TYPE`; anything else is silently replaced
/// by `f16` by the server, so it is refused here instead.
pub const KV_CACHE_TYPES: [&str; 3] = ["f16", "q8_0", "q4_0"];

/// Body of `POST /api/generate` for one probe request: streamed, raw (no template, so the
/// prompt's token count is the caller's), greedy, seeded.
///
/// Only options Ollama honours per request are sent; see [`fixed_by_server`] for the rest.
pub fn generate_request(
    model: &str,
    prompt: &str,
    cfg: &ProbeConfig,
    num_predict: u32,
    seed: u32,
) -> Value {
    let mut options = Map::new();
    options.insert("num_ctx".into(), json!(cfg.ctx));
    if let Some(batch) = cfg.batch {
        options.insert("num_batch".into(), json!(batch));
    }
    if let Some(layers) = cfg.gpu_layers {
        options.insert("num_gpu".into(), json!(layers));
    }
    if let Some(threads) = cfg.threads {
        options.insert("num_thread".into(), json!(threads));
    }
    options.insert("seed".into(), json!(seed));
    options.insert("num_predict".into(), json!(num_predict));
    options.insert("temperature".into(), json!(0));
    json!({
        "model": model,
        "prompt": prompt,
        "stream": true,
        "raw": true,
        "keep_alive": KEEP_ALIVE,
        "options": Value::Object(options),
    })
}

/// The configuration a server o3 starts itself runs with, every setting that changes memory or
/// speed explicit: one slot unless more are asked (Ollama's default is "auto", 1 or 4 by
/// memory), an f16 KV cache unless another is asked (its default, written down).
pub fn pinned(cfg: &ProbeConfig) -> ProbeConfig {
    let mut c = cfg.clone();
    c.parallel.get_or_insert(1);
    if c.cache_type_k.is_none() && c.cache_type_v.is_none() {
        c.cache_type_k = Some("f16".to_string());
    }
    c
}

/// Fields of `cfg` that are set but that Ollama cannot apply per request, by field name.
///
/// With `managed` (o3 starts the server itself) parallel slots, flash attention and the KV
/// cache types are applied through [`server_env`], so only the micro-batch stays fixed. A
/// probe reports these as "fixed by the server" instead of dropping them silently.
pub fn fixed_by_server(cfg: &ProbeConfig, managed: bool) -> Vec<&'static str> {
    let mut fixed = Vec::new();
    if cfg.ubatch.is_some() {
        fixed.push("ubatch");
    }
    if !managed {
        if cfg.parallel.is_some() {
            fixed.push("parallel");
        }
        if cfg.flash_attn.is_some() {
            fixed.push("flash_attn");
        }
        if cfg.cache_type_k.is_some() {
            fixed.push("cache_type_k");
        }
        if cfg.cache_type_v.is_some() {
            fixed.push("cache_type_v");
        }
    }
    fixed
}

/// A configuration a managed Ollama server cannot be started with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Ollama cannot run this configuration: {0}")]
pub struct UnsupportedConfig(pub String);

/// Environment for a managed `ollama serve` applying `cfg`'s server-level settings, listening
/// on `host` (`127.0.0.1:PORT`).
///
/// Ollama has one KV cache type for both K and V (`OLLAMA_KV_CACHE_TYPE`), honoured only with
/// flash attention on; types other than f16/q8_0/q4_0 are silently replaced by f16. Each of
/// these would silently change the configuration, so they are errors: K and V types that
/// differ, an unknown type, or a quantized type without `flash_attn: Some(crate::backend::FlashAttn::On)`. A type given
/// for only one of K and V applies to both. Settings left `None` are not set (server default).
pub fn server_env(
    cfg: &ProbeConfig,
    host: &str,
) -> Result<Vec<(String, String)>, UnsupportedConfig> {
    let mut env = Vec::new();
    if let Some(parallel) = cfg.parallel {
        if parallel == 0 {
            return Err(UnsupportedConfig("parallel must be at least 1".into()));
        }
        env.push(("OLLAMA_NUM_PARALLEL".to_string(), parallel.to_string()));
    }
    if let Some(fa) = cfg.flash_attn {
        env.push((
            "OLLAMA_FLASH_ATTENTION".to_string(),
            if fa.is_on() { "1" } else { "0" }.to_string(),
        ));
    }
    let kv_type = match (cfg.cache_type_k.as_deref(), cfg.cache_type_v.as_deref()) {
        (Some(k), Some(v)) if k != v => {
            return Err(UnsupportedConfig(format!(
                "one KV cache type for K and V (OLLAMA_KV_CACHE_TYPE), asked for K {k} and V {v}"
            )))
        }
        (Some(t), _) | (None, Some(t)) => Some(t),
        (None, None) => None,
    };
    if let Some(kv) = kv_type {
        if !KV_CACHE_TYPES.contains(&kv) {
            return Err(UnsupportedConfig(format!(
                "KV cache type {kv:?} (Ollama accepts {})",
                KV_CACHE_TYPES.join(", ")
            )));
        }
        if kv != "f16" && cfg.flash_attn != Some(super::FlashAttn::On) {
            return Err(UnsupportedConfig(format!(
                "a quantized KV cache ({kv}) needs flash attention (--flash-attn on)"
            )));
        }
        env.push(("OLLAMA_KV_CACHE_TYPE".to_string(), kv.to_string()));
    }
    if cfg.ctx > 0 {
        env.push(("OLLAMA_CONTEXT_LENGTH".to_string(), cfg.ctx.to_string()));
    }
    env.push(("OLLAMA_KEEP_ALIVE".to_string(), KEEP_ALIVE.to_string()));
    // One model in memory: the one measured (another loaded beside it would share the GPU).
    env.push(("OLLAMA_MAX_LOADED_MODELS".to_string(), "1".to_string()));
    env.push(("OLLAMA_HOST".to_string(), host.to_string()));
    Ok(env)
}

fn parse_json(text: &str, what: &str) -> Result<Value, ProtocolError> {
    serde_json::from_str(text)
        .map_err(|e| ProtocolError::new(format!("malformed JSON in {what} ({e})"), text))
}

fn parse_object(text: &str, what: &str) -> Result<Map<String, Value>, ProtocolError> {
    match parse_json(text, what)? {
        Value::Object(map) => Ok(map),
        _ => Err(ProtocolError::new(
            format!("{what} is not a JSON object"),
            text,
        )),
    }
}

/// An optional non-negative integer field; present with another type is an error.
fn opt_u64(
    obj: &Map<String, Value>,
    key: &str,
    line: &str,
    what: &str,
) -> Result<Option<u64>, ProtocolError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            ProtocolError::new(
                format!("{what}: `{key}` is not a non-negative integer"),
                line,
            )
        }),
    }
}

fn opt_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    line: &str,
    what: &str,
) -> Result<Option<&'a str>, ProtocolError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ProtocolError::new(
            format!("{what}: `{key}` is not a string"),
            line,
        )),
    }
}

fn ns_to_ms(ns: Option<u64>) -> Option<f64> {
    ns.map(|ns| ns as f64 / 1e6)
}

fn error_value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One line of a streamed `/api/generate` response.
///
/// `done: false` objects give their `response` text (or `thinking` text when `response` is
/// empty) as a token; the `done: true` object gives the server's timings (nanoseconds
/// converted to milliseconds); `{"error": ...}` is an error reported inside the stream. Blank
/// lines give `None`.
pub fn parse_stream_line(line: &str) -> Result<Option<StreamEvent>, ProtocolError> {
    const WHAT: &str = "Ollama stream line";
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    let obj = parse_object(trimmed, WHAT)?;
    if let Some(err) = obj.get("error") {
        return Ok(Some(StreamEvent::Error(error_value_text(err))));
    }
    let done = match obj.get("done") {
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ProtocolError::new(
                format!("{WHAT}: `done` is not a boolean"),
                trimmed,
            ))
        }
        None => {
            return Err(ProtocolError::new(
                format!("{WHAT}: neither `done` nor `error`"),
                trimmed,
            ))
        }
    };
    let response = opt_str(&obj, "response", trimmed, WHAT)?;
    if !done {
        let text = match response {
            Some(r) if !r.is_empty() => r,
            _ => opt_str(&obj, "thinking", trimmed, WHAT)?.unwrap_or(""),
        };
        if response.is_none() && !obj.contains_key("thinking") {
            return Err(ProtocolError::new(
                format!("{WHAT}: token object without `response`"),
                trimmed,
            ));
        }
        return Ok(Some(StreamEvent::Token(text.to_string())));
    }
    let timings = Timings {
        prompt_tokens: opt_u64(&obj, "prompt_eval_count", trimmed, WHAT)?,
        prompt_ms: ns_to_ms(opt_u64(&obj, "prompt_eval_duration", trimmed, WHAT)?),
        cached_tokens: None,
        predicted_tokens: opt_u64(&obj, "eval_count", trimmed, WHAT)?,
        predicted_ms: ns_to_ms(opt_u64(&obj, "eval_duration", trimmed, WHAT)?),
        load_ms: ns_to_ms(opt_u64(&obj, "load_duration", trimmed, WHAT)?),
        stop_reason: opt_str(&obj, "done_reason", trimmed, WHAT)?.map(str::to_string),
    };
    Ok(Some(StreamEvent::Done(timings)))
}

/// A model as `/api/ps` reports it loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedModel {
    /// Total memory of the loaded model (weights, KV cache, compute buffers), GPU and CPU.
    pub size_bytes: u64,
    /// The part of it in GPU memory.
    pub size_vram_bytes: u64,
    /// Context per slot actually in effect (absent before Ollama 0.11/0.12).
    pub context_length: Option<u32>,
}

impl LoadedModel {
    /// Layers were placed on the CPU: a degraded configuration, not a success.
    pub fn cpu_spill(&self) -> bool {
        self.size_vram_bytes < self.size_bytes
    }

    /// The server runs a context other than the one requested (silently clamped).
    pub fn clamped(&self, requested_ctx: u32) -> bool {
        self.context_length.is_some_and(|c| c != requested_ctx)
    }
}

/// Ollama names without a tag mean `:latest`; the tag is after the last `/`.
fn canonical_name(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

/// The `models` array of a `/api/ps` or `/api/tags` body.
fn models_array<'a>(
    obj: &'a Map<String, Value>,
    body: &str,
    what: &str,
) -> Result<&'a [Value], ProtocolError> {
    match obj.get("models") {
        Some(Value::Array(models)) => Ok(models),
        // Go encodes an empty slice that was never allocated as null.
        Some(Value::Null) => Ok(&[]),
        _ => Err(ProtocolError::new(
            format!("{what}: no `models` array"),
            body,
        )),
    }
}

/// `GET /api/ps`: the entry for `model` (matched on `name` or `model`, `:latest` implied), or
/// `None` when it is not loaded.
pub fn parse_ps(body: &str, model: &str) -> Result<Option<LoadedModel>, ProtocolError> {
    const WHAT: &str = "Ollama /api/ps body";
    let obj = parse_object(body, WHAT)?;
    let wanted = canonical_name(model);
    for entry in models_array(&obj, body, WHAT)? {
        let Value::Object(entry) = entry else {
            return Err(ProtocolError::new(
                format!("{WHAT}: model entry is not an object"),
                body,
            ));
        };
        let names = ["name", "model"]
            .iter()
            .filter_map(|k| entry.get(*k).and_then(Value::as_str));
        if !names.into_iter().any(|n| canonical_name(n) == wanted) {
            continue;
        }
        let size = opt_u64(entry, "size", body, WHAT)?
            .ok_or_else(|| ProtocolError::new(format!("{WHAT}: model without `size`"), body))?;
        let size_vram = opt_u64(entry, "size_vram", body, WHAT)?.ok_or_else(|| {
            ProtocolError::new(format!("{WHAT}: model without `size_vram`"), body)
        })?;
        let context_length = match opt_u64(entry, "context_length", body, WHAT)? {
            None | Some(0) => None,
            Some(c) => Some(u32::try_from(c).map_err(|_| {
                ProtocolError::new(format!("{WHAT}: `context_length` out of range"), body)
            })?),
        };
        return Ok(Some(LoadedModel {
            size_bytes: size,
            size_vram_bytes: size_vram,
            context_length,
        }));
    }
    Ok(None)
}

/// `name` with the `:latest` tag Ollama implies.
pub fn canonical(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

/// The `size` of `model` in a `/api/tags` body.
pub fn tag_size(body: &str, model: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let want = canonical(model);
    v.get("models")?.as_array()?.iter().find_map(|m| {
        let named = ["name", "model"]
            .iter()
            .filter_map(|k| m.get(*k).and_then(serde_json::Value::as_str))
            .any(|n| canonical(n) == want);
        if named {
            m.get("size").and_then(serde_json::Value::as_u64)
        } else {
            None
        }
    })
}

/// The body of a running server's answer to one question, 10 s at most (`None` when nothing
/// answered).
fn ask(question: impl FnOnce(&Blocking, Duration) -> Result<Reply, HttpError>) -> Option<String> {
    let http = Blocking::new().ok()?;
    question(&http, Duration::from_secs(10))
        .ok()
        .map(|r| r.body)
}

fn tags_url(url: &str) -> String {
    format!("{}/api/tags", url.trim_end_matches('/'))
}

/// The models a running server has (`/api/tags`), for an unknown-model message.
pub fn models_at(url: &str) -> Option<Vec<String>> {
    let body = ask(|h, wait| h.get(&tags_url(url), wait))?;
    parse_tags(&body).ok()
}

/// The size of `model` (its weights, bytes) from a running server's `/api/tags`.
pub fn tag_size_at(url: &str, model: &str) -> Option<u64> {
    let body = ask(|h, wait| h.get(&tags_url(url), wait))?;
    tag_size(&body, model)
}

/// What a running Ollama server's `/api/show` says about `model` (`None` when it cannot be
/// reached or does not know the model).
pub fn show(url: &str, model: &str) -> Option<ModelInfo> {
    let url = format!("{}/api/show", url.trim_end_matches('/'));
    let question = serde_json::json!({ "model": model });
    let body = ask(|h, wait| h.post_json(&url, &question, wait))?;
    parse_show(&body).ok()
}

/// What `/api/show` says about a model's architecture (all optional: keys vary by model).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelInfo {
    pub architecture: Option<String>,
    /// Trained context length.
    pub context_length: Option<u32>,
    pub block_count: Option<u32>,
    pub head_count: Option<u32>,
    pub head_count_kv: Option<u32>,
    pub embedding_length: Option<u32>,
    /// Per-head key / value dimensions when the model states them.
    pub key_length: Option<u32>,
    pub value_length: Option<u32>,
    pub parameter_count: Option<u64>,
    /// e.g. `Q4_K_M`.
    pub quantization: Option<String>,
}

impl ModelInfo {
    /// KV cache bytes per token of context per slot at `bytes_per_element` (2 for f16), using
    /// `embedding_length / head_count` as the head dimension when key/value lengths are absent.
    pub fn kv_bytes_per_token(&self, bytes_per_element: f64) -> Option<f64> {
        let blocks = f64::from(self.block_count?);
        let kv_heads = f64::from(self.head_count_kv.or(self.head_count)?);
        let derived = match (self.embedding_length, self.head_count) {
            (Some(e), Some(h)) if h > 0 => Some(e / h),
            _ => None,
        };
        let k = f64::from(self.key_length.or(derived)?);
        let v = f64::from(self.value_length.or(self.key_length).or(derived)?);
        Some(blocks * kv_heads * (k + v) * bytes_per_element)
    }
}

/// A `model_info` integer; per-layer arrays (some architectures) give their maximum.
fn info_u64(info: &Map<String, Value>, key: &str) -> Option<u64> {
    match info.get(key)? {
        Value::Array(items) => items.iter().filter_map(Value::as_u64).max(),
        v => v.as_u64(),
    }
}

fn info_u32(info: &Map<String, Value>, key: &str) -> Option<u32> {
    info_u64(info, key).and_then(|v| u32::try_from(v).ok())
}

/// `"7.6B"`, `"494.03M"`, `"1.24B"` → parameters.
fn parse_parameter_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()?.to_ascii_uppercase() {
        'K' => (&s[..s.len() - 1], 1e3),
        'M' => (&s[..s.len() - 1], 1e6),
        'B' => (&s[..s.len() - 1], 1e9),
        'T' => (&s[..s.len() - 1], 1e12),
        _ => (s, 1.0),
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| (v * mult).round() as u64)
}

/// `POST /api/show`: architecture facts from `model_info` (keys `<arch>.…`, `general.…`) and
/// `details` (quantization; `parameter_size` when `general.parameter_count` is absent).
pub fn parse_show(body: &str) -> Result<ModelInfo, ProtocolError> {
    const WHAT: &str = "Ollama /api/show body";
    let obj = parse_object(body, WHAT)?;
    let empty = Map::new();
    let info = match obj.get("model_info") {
        Some(Value::Object(m)) => m,
        None | Some(Value::Null) => &empty,
        Some(_) => {
            return Err(ProtocolError::new(
                format!("{WHAT}: `model_info` is not an object"),
                body,
            ))
        }
    };
    let details = match obj.get("details") {
        Some(Value::Object(m)) => m,
        None | Some(Value::Null) => &empty,
        Some(_) => {
            return Err(ProtocolError::new(
                format!("{WHAT}: `details` is not an object"),
                body,
            ))
        }
    };
    if info.is_empty() && details.is_empty() {
        return Err(ProtocolError::new(
            format!("{WHAT}: neither `model_info` nor `details`"),
            body,
        ));
    }
    let detail_str = |k: &str| {
        details
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let architecture = info
        .get("general.architecture")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| detail_str("family"));
    let arch_u32 = |suffix: &str| {
        architecture
            .as_deref()
            .and_then(|a| info_u32(info, &format!("{a}.{suffix}")))
    };
    Ok(ModelInfo {
        context_length: arch_u32("context_length"),
        block_count: arch_u32("block_count"),
        head_count: arch_u32("attention.head_count"),
        head_count_kv: arch_u32("attention.head_count_kv"),
        embedding_length: arch_u32("embedding_length"),
        key_length: arch_u32("attention.key_length"),
        value_length: arch_u32("attention.value_length"),
        parameter_count: info_u64(info, "general.parameter_count")
            .or_else(|| detail_str("parameter_size").and_then(|s| parse_parameter_size(&s))),
        quantization: detail_str("quantization_level"),
        architecture,
    })
}

/// `GET /api/tags`: the names of the models the server has.
pub fn parse_tags(body: &str) -> Result<Vec<String>, ProtocolError> {
    const WHAT: &str = "Ollama /api/tags body";
    let obj = parse_object(body, WHAT)?;
    models_array(&obj, body, WHAT)?
        .iter()
        .map(|m| {
            m.get("name")
                .or_else(|| m.get("model"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| ProtocolError::new(format!("{WHAT}: model without a name"), body))
        })
        .collect()
}

/// The message of an error response: its `{"error": ...}` text, else the raw body (trimmed,
/// at most 500 characters), else `HTTP <status>` for an empty body.
pub fn error_text(status: u16, body: &str) -> String {
    if let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(body) {
        if let Some(err) = obj.get("error") {
            return error_value_text(err);
        }
    }
    let raw = body.trim();
    if raw.is_empty() {
        format!("HTTP {status}")
    } else {
        raw.chars().take(500).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tests/fixtures/ollama/",
                $name
            ))
        };
    }

    fn cfg(ctx: u32) -> ProbeConfig {
        ProbeConfig {
            ctx,
            ..ProbeConfig::default()
        }
    }

    #[test]
    fn generate_request_sends_only_real_options() {
        let c = ProbeConfig {
            ctx: 8192,
            batch: Some(256),
            ubatch: Some(128),
            parallel: Some(2),
            gpu_layers: Some(-1),
            flash_attn: Some(crate::backend::FlashAttn::On),
            cache_type_k: Some("q8_0".into()),
            cache_type_v: Some("q8_0".into()),
            threads: Some(8),
            server_bin: None,
        };
        let body = generate_request("llama3.2:3b", "Hello", &c, 64, 7);
        assert_eq!(body["model"], "llama3.2:3b");
        assert_eq!(body["prompt"], "Hello");
        assert_eq!(body["stream"], true);
        assert_eq!(body["raw"], true);
        assert_eq!(body["keep_alive"], KEEP_ALIVE);
        let opts = body["options"].as_object().unwrap();
        assert_eq!(
            opts,
            json!({"num_ctx": 8192, "num_batch": 256, "num_gpu": -1, "num_thread": 8,
                   "seed": 7, "num_predict": 64, "temperature": 0})
            .as_object()
            .unwrap()
        );
        for legacy in ["batch", "f16_kv", "num_ubatch", "flash_attn", "parallel"] {
            assert!(!opts.contains_key(legacy), "{legacy} sent");
        }
    }

    #[test]
    fn generate_request_leaves_unset_options_to_the_server() {
        let body = generate_request("m", "p", &cfg(2048), 1, 0);
        let opts = body["options"].as_object().unwrap();
        let mut keys: Vec<&str> = opts.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["num_ctx", "num_predict", "seed", "temperature"],
            "{opts:?}"
        );
    }

    #[test]
    fn fixed_by_server_lists_what_ollama_cannot_set() {
        assert!(fixed_by_server(&cfg(4096), false).is_empty());
        let c = ProbeConfig {
            ctx: 4096,
            batch: Some(512),
            ubatch: Some(512),
            parallel: Some(4),
            gpu_layers: Some(20),
            flash_attn: Some(crate::backend::FlashAttn::Off),
            cache_type_k: Some("f16".into()),
            cache_type_v: Some("f16".into()),
            threads: Some(4),
            server_bin: None,
        };
        assert_eq!(
            fixed_by_server(&c, false),
            [
                "ubatch",
                "parallel",
                "flash_attn",
                "cache_type_k",
                "cache_type_v"
            ]
        );
        assert_eq!(fixed_by_server(&c, true), ["ubatch"]);
    }

    #[test]
    fn server_env_applies_server_settings() {
        let c = ProbeConfig {
            ctx: 16384,
            parallel: Some(2),
            flash_attn: Some(crate::backend::FlashAttn::On),
            cache_type_k: Some("q8_0".into()),
            cache_type_v: Some("q8_0".into()),
            ..ProbeConfig::default()
        };
        let env = server_env(&c, "127.0.0.1:11500").unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("OLLAMA_NUM_PARALLEL"), Some("2"));
        assert_eq!(get("OLLAMA_FLASH_ATTENTION"), Some("1"));
        assert_eq!(get("OLLAMA_KV_CACHE_TYPE"), Some("q8_0"));
        assert_eq!(get("OLLAMA_CONTEXT_LENGTH"), Some("16384"));
        assert_eq!(get("OLLAMA_KEEP_ALIVE"), Some(KEEP_ALIVE));
        assert_eq!(get("OLLAMA_HOST"), Some("127.0.0.1:11500"));

        let off = ProbeConfig {
            flash_attn: Some(crate::backend::FlashAttn::Off),
            cache_type_k: Some("f16".into()),
            ..cfg(4096)
        };
        let env = server_env(&off, "127.0.0.1:1").unwrap();
        assert!(env.contains(&("OLLAMA_FLASH_ATTENTION".into(), "0".into())));
        assert!(env.contains(&("OLLAMA_KV_CACHE_TYPE".into(), "f16".into())));
        assert!(!env.iter().any(|(k, _)| k == "OLLAMA_NUM_PARALLEL"));
    }

    #[test]
    fn server_env_refuses_what_ollama_would_silently_change() {
        let quant_no_fa = ProbeConfig {
            cache_type_k: Some("q4_0".into()),
            ..cfg(4096)
        };
        let e = server_env(&quant_no_fa, "h").unwrap_err();
        assert!(e.to_string().contains("flash attention"), "{e}");
        let quant_fa_off = ProbeConfig {
            flash_attn: Some(crate::backend::FlashAttn::Off),
            ..quant_no_fa.clone()
        };
        assert!(server_env(&quant_fa_off, "h").is_err());
        let differ = ProbeConfig {
            flash_attn: Some(crate::backend::FlashAttn::On),
            cache_type_k: Some("q8_0".into()),
            cache_type_v: Some("q4_0".into()),
            ..cfg(4096)
        };
        assert!(server_env(&differ, "h").unwrap_err().0.contains("K q8_0"));
        let unknown = ProbeConfig {
            flash_attn: Some(crate::backend::FlashAttn::On),
            cache_type_v: Some("q5_1".into()),
            ..cfg(4096)
        };
        assert!(server_env(&unknown, "h").unwrap_err().0.contains("q5_1"));
        let zero = ProbeConfig {
            parallel: Some(0),
            ..cfg(4096)
        };
        assert!(server_env(&zero, "h").is_err());
    }

    #[test]
    fn stream_parses_tokens_and_final_timings() {
        let events: Vec<StreamEvent> = fixture!("generate_stream.ndjson")
            .lines()
            .filter_map(|l| parse_stream_line(l).unwrap())
            .collect();
        assert_eq!(events.len(), 9);
        let text: String = events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Token(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "The sky appears blue because of Rayleigh scattering");
        let StreamEvent::Done(t) = &events[8] else {
            panic!("last event {:?}", events[8]);
        };
        assert_eq!(t.prompt_tokens, Some(26));
        assert_eq!(t.prompt_ms, Some(151.236));
        assert_eq!(t.predicted_tokens, Some(8));
        assert_eq!(t.predicted_ms, Some(96.471));
        assert_eq!(t.load_ms, Some(2608.731544));
        assert_eq!(t.cached_tokens, None);
        assert_eq!(t.stop_reason.as_deref(), Some("length"));
        let decode = t.decode_tokens_per_s().unwrap();
        assert!((decode - 8.0 / 0.096471).abs() < 1e-6, "{decode}");
    }

    #[test]
    fn stream_reports_an_error_mid_stream() {
        let events: Vec<StreamEvent> = fixture!("generate_stream_error.ndjson")
            .lines()
            .filter_map(|l| parse_stream_line(l).unwrap())
            .collect();
        assert_eq!(events.len(), 4);
        assert!(matches!(&events[0], StreamEvent::Token(t) if t == "Once"));
        assert_eq!(
            events[3],
            StreamEvent::Error("llama runner process has terminated: signal: killed".into())
        );
    }

    #[test]
    fn stream_line_edge_cases() {
        assert_eq!(parse_stream_line("").unwrap(), None);
        assert_eq!(parse_stream_line("  \r").unwrap(), None);
        // CRLF line endings and a thinking token.
        assert_eq!(
            parse_stream_line("{\"response\":\"hi\",\"done\":false}\r").unwrap(),
            Some(StreamEvent::Token("hi".into()))
        );
        assert_eq!(
            parse_stream_line(r#"{"response":"","thinking":"hmm","done":false}"#).unwrap(),
            Some(StreamEvent::Token("hmm".into()))
        );
        // A final object without counts (e.g. `done_reason: "load"`) has no timings.
        assert_eq!(
            parse_stream_line(r#"{"model":"m","response":"","done":true,"done_reason":"load"}"#)
                .unwrap(),
            Some(StreamEvent::Done(Timings {
                stop_reason: Some("load".into()),
                ..Timings::default()
            }))
        );
        assert_eq!(
            parse_stream_line(r#"{"error":{"code":500}}"#).unwrap(),
            Some(StreamEvent::Error(r#"{"code":500}"#.into()))
        );
    }

    #[test]
    fn stream_line_malformed_inputs_name_the_line() {
        for bad in [
            r#"{"response":"The","done":fal"#,
            "data: {\"x\":1}",
            "[1,2]",
            r#"{"response":"x"}"#,
            r#"{"response":"x","done":"no"}"#,
            r#"{"done":false}"#,
            r#"{"response":7,"done":false}"#,
            r#"{"done":true,"eval_count":-3}"#,
            r#"{"done":true,"eval_duration":"1s"}"#,
            r#"{"done":true,"done_reason":5}"#,
        ] {
            let e = parse_stream_line(bad).unwrap_err();
            assert_eq!(e.line, bad, "{e}");
            assert!(e.to_string().contains("Ollama stream line"), "{e}");
        }
    }

    #[test]
    fn ps_fully_on_gpu() {
        let m = parse_ps(fixture!("ps_gpu.json"), "llama3.2:3b")
            .unwrap()
            .unwrap();
        assert_eq!(
            m,
            LoadedModel {
                size_bytes: 3583882240,
                size_vram_bytes: 3583882240,
                context_length: Some(8192),
            }
        );
        assert!(!m.cpu_spill());
        assert!(!m.clamped(8192));
        assert!(m.clamped(4096));
    }

    #[test]
    fn ps_spilled_to_cpu() {
        let m = parse_ps(fixture!("ps_spilled.json"), "qwen2.5:7b")
            .unwrap()
            .unwrap();
        assert_eq!(m.size_bytes, 9680764928);
        assert_eq!(m.size_vram_bytes, 6257917952);
        assert!(m.cpu_spill());
        assert!(!m.clamped(32768));
    }

    #[test]
    fn ps_context_clamped_among_several_models() {
        let body = fixture!("ps_clamped.json");
        let q = parse_ps(body, "qwen2.5:7b").unwrap().unwrap();
        assert_eq!(q.context_length, Some(32768));
        assert!(q.clamped(65536));
        assert!(!q.cpu_spill());
        let l = parse_ps(body, "llama3.2:3b").unwrap().unwrap();
        assert_eq!(l.size_bytes, 4271748096);
        assert!(!l.clamped(131072));
    }

    #[test]
    fn ps_model_not_loaded_and_name_matching() {
        assert_eq!(
            parse_ps(fixture!("ps_empty.json"), "llama3.2:3b").unwrap(),
            None
        );
        assert_eq!(
            parse_ps(fixture!("ps_gpu.json"), "qwen2.5:7b").unwrap(),
            None
        );
        assert_eq!(parse_ps(fixture!("ps_gpu.json"), "llama3.2").unwrap(), None);
        assert_eq!(parse_ps(r#"{"models":null}"#, "m").unwrap(), None);
        let latest = r#"{"models":[{"name":"llama3.2:latest","model":"llama3.2:latest","size":10,"size_vram":5}]}"#;
        let m = parse_ps(latest, "llama3.2").unwrap().unwrap();
        assert!(m.cpu_spill());
        // No context_length (servers before 0.11): never reported as clamped.
        assert_eq!(m.context_length, None);
        assert!(!m.clamped(4096));
    }

    #[test]
    fn ps_malformed_inputs() {
        for bad in [
            "",
            "not json",
            "[]",
            r#"{"model":[]}"#,
            r#"{"models":[1]}"#,
            r#"{"models":[{"name":"m:latest","size_vram":1}]}"#,
            r#"{"models":[{"name":"m:latest","size":1}]}"#,
            r#"{"models":[{"name":"m:latest","size":"1 GB","size_vram":1}]}"#,
            r#"{"models":[{"name":"m:latest","size":1,"size_vram":1,"context_length":99999999999}]}"#,
        ] {
            let e = parse_ps(bad, "m").unwrap_err();
            assert!(e.to_string().contains("/api/ps"), "{bad}: {e}");
        }
    }

    #[test]
    fn show_llama_architecture() {
        let info = parse_show(fixture!("show_llama.json")).unwrap();
        assert_eq!(
            info,
            ModelInfo {
                architecture: Some("llama".into()),
                context_length: Some(131072),
                block_count: Some(28),
                head_count: Some(24),
                head_count_kv: Some(8),
                embedding_length: Some(3072),
                key_length: Some(128),
                value_length: Some(128),
                parameter_count: Some(3212749888),
                quantization: Some("Q4_K_M".into()),
            }
        );
        // 28 layers × 8 KV heads × (128 + 128) × 2 bytes = 112 KiB per token.
        assert_eq!(info.kv_bytes_per_token(2.0), Some(114688.0));
    }

    #[test]
    fn show_qwen2_architecture() {
        let info = parse_show(fixture!("show_qwen2.json")).unwrap();
        assert_eq!(info.architecture.as_deref(), Some("qwen2"));
        assert_eq!(info.context_length, Some(32768));
        assert_eq!(info.block_count, Some(28));
        assert_eq!(info.head_count, Some(28));
        assert_eq!(info.head_count_kv, Some(4));
        assert_eq!(info.embedding_length, Some(3584));
        assert_eq!(info.key_length, None);
        assert_eq!(info.value_length, None);
        assert_eq!(info.parameter_count, Some(7615616512));
        assert_eq!(info.quantization.as_deref(), Some("Q4_K_M"));
        // Head dimension derived as 3584 / 28 = 128: 28 × 4 × 256 × 2 bytes.
        assert_eq!(info.kv_bytes_per_token(2.0), Some(57344.0));
    }

    #[test]
    fn show_partial_bodies() {
        let only_details =
            r#"{"details":{"family":"gemma3","parameter_size":"4.3B","quantization_level":""}}"#;
        let info = parse_show(only_details).unwrap();
        assert_eq!(info.architecture.as_deref(), Some("gemma3"));
        assert_eq!(info.parameter_count, Some(4_300_000_000));
        assert_eq!(info.quantization, None);
        assert_eq!(info.context_length, None);
        assert_eq!(info.kv_bytes_per_token(2.0), None);
        // Per-layer arrays give their maximum.
        let arrays = r#"{"model_info":{"general.architecture":"x","x.attention.head_count_kv":[2,4,4],"x.block_count":3}}"#;
        let info = parse_show(arrays).unwrap();
        assert_eq!(info.head_count_kv, Some(4));
        assert_eq!(info.block_count, Some(3));
        assert_eq!(parse_parameter_size("494.03M"), Some(494_030_000));
        assert_eq!(parse_parameter_size("big"), None);
    }

    #[test]
    fn show_malformed_inputs() {
        for bad in [
            "",
            "{",
            "\"llama\"",
            "{}",
            r#"{"model_info":[]}"#,
            r#"{"details":"Q4"}"#,
        ] {
            let e = parse_show(bad).unwrap_err();
            assert!(e.to_string().contains("/api/show"), "{bad}: {e}");
        }
    }

    #[test]
    fn tags_lists_model_names() {
        assert_eq!(
            parse_tags(fixture!("tags.json")).unwrap(),
            [
                "qwen2.5:7b",
                "llama3.2:3b",
                "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q8_0"
            ]
        );
        assert!(parse_tags(r#"{"models":[]}"#).unwrap().is_empty());
        for bad in [
            "",
            "{\"models\":{}}",
            r#"{"models":[{"size":1}]}"#,
            "<html>",
        ] {
            let e = parse_tags(bad).unwrap_err();
            assert!(e.to_string().contains("/api/tags"), "{bad}: {e}");
        }
    }

    #[test]
    fn error_text_extracts_the_message() {
        assert_eq!(
            error_text(500, fixture!("error_system_memory.json")),
            "model requires more system memory (23.2 GiB) than is available (12.1 GiB)"
        );
        assert_eq!(
            error_text(404, fixture!("error_not_found.json")),
            "model \"x\" not found, try pulling it first"
        );
        assert_eq!(
            error_text(500, fixture!("error_cuda_oom.json")),
            "llama runner process has terminated: cudaMalloc failed: out of memory"
        );
        assert_eq!(
            error_text(502, "  Bad Gateway\n"),
            "Bad Gateway",
            "raw body when not JSON"
        );
        assert_eq!(error_text(503, ""), "HTTP 503");
        assert_eq!(error_text(500, r#"{"detail":"x"}"#), r#"{"detail":"x"}"#);
        assert_eq!(error_text(500, &"e".repeat(900)).len(), 500);
    }

    #[test]
    fn canonical_names_imply_latest() {
        assert_eq!(canonical_name("llama3.2"), "llama3.2:latest");
        assert_eq!(canonical_name("llama3.2:3b"), "llama3.2:3b");
        assert_eq!(
            canonical_name("localhost:5000/lib/m"),
            "localhost:5000/lib/m:latest"
        );
        assert_eq!(canonical_name("hf.co/a/b:Q8_0"), "hf.co/a/b:Q8_0");
    }

    #[test]
    fn tags_size_by_canonical_name() {
        let body = r#"{"models":[{"name":"qwen2.5:7b","size":4683087332,"digest":"845dbda0ea48"},
            {"name":"llama3.1:latest","model":"llama3.1:latest","size":4920753328,"digest":"46e0c10c039e"}]}"#;
        assert_eq!(tag_size(body, "llama3.1"), Some(4920753328));
        assert_eq!(tag_size(body, "qwen2.5:7b"), Some(4683087332));
        assert_eq!(tag_size(body, "mistral"), None);
        assert_eq!(tag_size("not json", "x"), None);
        assert_eq!(canonical("ns/model"), "ns/model:latest");
        assert_eq!(canonical("host:5000/ns/model"), "host:5000/ns/model:latest");
    }

    #[test]
    fn a_managed_server_runs_pinned() {
        let c = ProbeConfig {
            ctx: 8192,
            ..ProbeConfig::default()
        };
        let p = pinned(&c);
        assert_eq!(p.parallel, Some(1));
        assert_eq!(p.cache_type_k.as_deref(), Some("f16"));
        let env = server_env(&p, "127.0.0.1:1").unwrap();
        for want in [
            ("OLLAMA_NUM_PARALLEL", "1"),
            ("OLLAMA_KV_CACHE_TYPE", "f16"),
            ("OLLAMA_CONTEXT_LENGTH", "8192"),
            ("OLLAMA_MAX_LOADED_MODELS", "1"),
        ] {
            assert!(
                env.iter().any(|(k, v)| (k.as_str(), v.as_str()) == want),
                "{want:?} in {env:?}"
            );
        }
        // What is asked stays as asked.
        let asked = ProbeConfig {
            parallel: Some(3),
            flash_attn: Some(crate::backend::FlashAttn::On),
            cache_type_v: Some("q8_0".into()),
            ..c
        };
        let p = pinned(&asked);
        assert_eq!(
            (p.parallel, p.cache_type_k, p.cache_type_v.as_deref()),
            (Some(3), None, Some("q8_0"))
        );
    }
}
