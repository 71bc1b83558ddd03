//! LLM server backends: the configuration a probe applies, how one request streams back, and
//! how every way of failing is classified as data (never an error that ends a run).
//!
//! Protocol modules (`ollama`, `llama_server`, `openai`) parse their server's formats into the
//! types here; `classify` maps error texts and exit statuses to an [`OutcomeClass`].

pub mod classify;
pub mod http;
pub mod launch;
pub mod llama_server;
pub mod ollama;
pub mod openai;
pub mod version;

use serde::{Deserialize, Serialize};

/// A serving configuration. `None` leaves the server's default; a field a backend cannot set
/// is reported as "fixed by the server", never silently dropped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeConfig {
    /// Context length per slot (tokens).
    pub ctx: u32,
    pub batch: Option<u32>,
    pub ubatch: Option<u32>,
    /// Parallel slots.
    pub parallel: Option<u32>,
    /// Layers offloaded to the GPU (-1: all / automatic).
    pub gpu_layers: Option<i32>,
    /// On or off; `None` (`--flash-attn auto`) leaves it to the server.
    pub flash_attn: Option<FlashAttn>,
    /// KV cache types, e.g. `f16`, `q8_0`, `q4_0`.
    pub cache_type_k: Option<String>,
    pub cache_type_v: Option<String>,
    pub threads: Option<u32>,
    /// The llama-server build, where builds are compared (`--server-bin` given more than
    /// once); `None`: the run's one binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_bin: Option<String>,
}

/// Flash attention asked on or off, written `"on"`/`"off"` (llama.cpp's spelling). Files
/// and store rows of earlier versions have `true`/`false`; they read as on/off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", from = "FlashAttnRead")]
pub enum FlashAttn {
    On,
    Off,
}

impl FlashAttn {
    pub fn is_on(self) -> bool {
        self == FlashAttn::On
    }

    /// `on` or `off`.
    pub fn name(self) -> &'static str {
        match self {
            FlashAttn::On => "on",
            FlashAttn::Off => "off",
        }
    }
}

/// What a stored flash-attention setting can be: this version's name or an earlier bool.
#[derive(Deserialize)]
#[serde(untagged)]
enum FlashAttnRead {
    Bool(bool),
    Name(FlashAttnName),
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum FlashAttnName {
    On,
    Off,
}

impl From<FlashAttnRead> for FlashAttn {
    fn from(r: FlashAttnRead) -> FlashAttn {
        match r {
            FlashAttnRead::Bool(true) | FlashAttnRead::Name(FlashAttnName::On) => FlashAttn::On,
            FlashAttnRead::Bool(false) | FlashAttnRead::Name(FlashAttnName::Off) => FlashAttn::Off,
        }
    }
}

/// `--flash-attn on|off|auto` (llama.cpp's words; `true`/`false` are accepted for on/off).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FlashAttnChoice {
    /// Flash attention on.
    #[value(alias = "true")]
    On,
    /// Flash attention off.
    #[value(alias = "false")]
    Off,
    /// The server decides: llama-server gets `--flash-attn auto`, Ollama's
    /// OLLAMA_FLASH_ATTENTION stays unset.
    Auto,
}

impl FlashAttnChoice {
    /// The configuration's setting: `None` for auto.
    pub fn setting(self) -> Option<FlashAttn> {
        match self {
            FlashAttnChoice::On => Some(FlashAttn::On),
            FlashAttnChoice::Off => Some(FlashAttn::Off),
            FlashAttnChoice::Auto => None,
        }
    }
}

/// How a probe (or one sample of it) ended. Serialized snake_case (`load_failed`); the
/// run-together spellings of earlier versions (`loadfailed`) still read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeClass {
    Ok,
    /// Out of memory (host or device), from the server's error text or stderr.
    Oom,
    /// The server or model did not load (bad path, bad flags, never became ready).
    #[serde(alias = "loadfailed")]
    LoadFailed,
    /// The prompt did not fit the context.
    #[serde(alias = "contextexceeded")]
    ContextExceeded,
    /// The server silently used a smaller context than requested.
    Clamped,
    /// Layers spilled to the CPU (a degraded configuration, not a success).
    #[serde(alias = "cpuspill")]
    CpuSpill,
    Timeout,
    /// The server process died (exit status or signal recorded).
    Crashed,
    /// Any other HTTP or protocol failure (malformed JSON/SSE included).
    #[serde(alias = "httperror")]
    HttpError,
    /// The safety watchdog stopped the probe.
    #[serde(alias = "safetyabort")]
    SafetyAbort,
    /// Not run: the predictor gave it a probability of success under the threshold
    /// (`learning.min_p_success`); the error says which probability.
    Skipped,
}

impl OutcomeClass {
    /// The snake_case name, as in JSON (`load_failed`).
    pub fn name(self) -> &'static str {
        match self {
            OutcomeClass::Ok => "ok",
            OutcomeClass::Oom => "oom",
            OutcomeClass::LoadFailed => "load_failed",
            OutcomeClass::ContextExceeded => "context_exceeded",
            OutcomeClass::Clamped => "clamped",
            OutcomeClass::CpuSpill => "cpu_spill",
            OutcomeClass::Timeout => "timeout",
            OutcomeClass::Crashed => "crashed",
            OutcomeClass::HttpError => "http_error",
            OutcomeClass::SafetyAbort => "safety_abort",
            OutcomeClass::Skipped => "skipped",
        }
    }
}

/// Server-side timings of one request, as the server reports them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Prompt tokens actually evaluated (not served from a cache).
    pub prompt_tokens: Option<u64>,
    pub prompt_ms: Option<f64>,
    /// Prompt tokens served from the prompt cache.
    pub cached_tokens: Option<u64>,
    pub predicted_tokens: Option<u64>,
    pub predicted_ms: Option<f64>,
    /// Model load time included in this request (Ollama's `load_duration`), ms.
    pub load_ms: Option<f64>,
    /// Why generation stopped (`stop`, `length`, ...).
    pub stop_reason: Option<String>,
}

impl Timings {
    /// Fills the fields this one lacks from `other` (a stream can end with several final
    /// messages, e.g. a finish reason, then usage, then `[DONE]`).
    pub fn merge(&mut self, other: Timings) {
        macro_rules! m {
            ($($f:ident),*) => { $( if self.$f.is_none() { self.$f = other.$f; } )* };
        }
        m!(
            prompt_tokens,
            prompt_ms,
            cached_tokens,
            predicted_tokens,
            predicted_ms,
            load_ms,
            stop_reason
        );
    }

    pub fn prefill_tokens_per_s(&self) -> Option<f64> {
        rate(self.prompt_tokens?, self.prompt_ms?)
    }

    pub fn decode_tokens_per_s(&self) -> Option<f64> {
        rate(self.predicted_tokens?, self.predicted_ms?)
    }
}

fn rate(tokens: u64, ms: f64) -> Option<f64> {
    (ms > 0.0).then(|| tokens as f64 / ms * 1000.0)
}

/// One parsed item of a streamed response.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// Generated text (one or more tokens).
    Token(String),
    /// The final object, with the server's timings.
    Done(Timings),
    /// An error reported inside the stream after a 200 status.
    Error(String),
    /// Prompt processing progress (llama-server's `return_progress`): one per batch read.
    Progress(PromptProgress),
}

/// How far the server has read a prompt, as llama-server's `prompt_progress` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PromptProgress {
    /// Prompt tokens in all.
    pub total: u64,
    /// Tokens served from the slot's cache.
    pub cache: u64,
    /// Tokens in the slot so far (cached ones included).
    pub processed: u64,
    /// Server time since the prompt started, ms.
    pub time_ms: f64,
}

/// A malformed line or body: names the offending text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: `{line}`")]
pub struct ProtocolError {
    pub what: String,
    /// The offending line (truncated to 200 characters).
    pub line: String,
}

impl ProtocolError {
    pub fn new(what: impl Into<String>, line: &str) -> ProtocolError {
        let line: String = line.chars().take(200).collect();
        ProtocolError {
            what: what.into(),
            line,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_from_timings() {
        let t = Timings {
            prompt_tokens: Some(512),
            prompt_ms: Some(256.0),
            predicted_tokens: Some(64),
            predicted_ms: Some(0.0),
            ..Timings::default()
        };
        assert_eq!(t.prefill_tokens_per_s(), Some(2000.0));
        assert_eq!(t.decode_tokens_per_s(), None);
    }

    #[test]
    fn protocol_errors_truncate_the_line() {
        let e = ProtocolError::new("bad JSON", &"x".repeat(500));
        assert_eq!(e.line.len(), 200);
        assert!(e.to_string().starts_with("bad JSON: `xxx"));
    }

    #[test]
    fn outcome_names_are_their_json_names() {
        use OutcomeClass::*;
        for o in [
            Ok,
            Oom,
            LoadFailed,
            ContextExceeded,
            Clamped,
            CpuSpill,
            Timeout,
            Crashed,
            HttpError,
            SafetyAbort,
            Skipped,
        ] {
            assert_eq!(serde_json::to_value(o).unwrap(), o.name());
        }
    }

    #[test]
    fn flash_attention_is_written_on_off_and_old_bools_still_read() {
        let on: FlashAttn = serde_json::from_str("true").unwrap();
        let off: FlashAttn = serde_json::from_str("false").unwrap();
        assert_eq!((on, off), (FlashAttn::On, FlashAttn::Off));
        assert_eq!(serde_json::to_string(&on).unwrap(), "\"on\"");
        assert_eq!(serde_json::to_string(&off).unwrap(), "\"off\"");
        let back: FlashAttn = serde_json::from_str("\"off\"").unwrap();
        assert_eq!(back, FlashAttn::Off);
        assert!(serde_json::from_str::<FlashAttn>("\"auto\"").is_err());
        // A configuration as an earlier version stored it.
        let old: ProbeConfig =
            serde_json::from_str(r#"{"ctx": 4096, "flash_attn": true}"#).unwrap();
        assert_eq!(old.flash_attn, Some(FlashAttn::On));
    }

    #[test]
    fn the_flash_attn_flag_takes_llama_cpps_words_and_the_old_bools() {
        use clap::ValueEnum;
        let parse = |s: &str| FlashAttnChoice::from_str(s, false).unwrap().setting();
        assert_eq!(parse("on"), Some(FlashAttn::On));
        assert_eq!(parse("true"), Some(FlashAttn::On));
        assert_eq!(parse("off"), Some(FlashAttn::Off));
        assert_eq!(parse("false"), Some(FlashAttn::Off));
        assert_eq!(parse("auto"), None);
        assert!(FlashAttnChoice::from_str("maybe", false).is_err());
    }

    #[test]
    fn run_together_outcome_names_of_earlier_versions_still_read() {
        use OutcomeClass::*;
        for (old, o) in [
            ("loadfailed", LoadFailed),
            ("contextexceeded", ContextExceeded),
            ("cpuspill", CpuSpill),
            ("httperror", HttpError),
            ("safetyabort", SafetyAbort),
        ] {
            let read: OutcomeClass = serde_json::from_value(old.into()).unwrap();
            assert_eq!(read, o);
            // Written back in the one spelling.
            assert_eq!(serde_json::to_value(read).unwrap(), o.name());
        }
    }
}
