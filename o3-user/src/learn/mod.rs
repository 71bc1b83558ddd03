//! Learning from past runs: model files, results store, memory model, predictor.
//!
//! The types here are what the stages of learning exchange: the store keeps [`Record`]s, the
//! memory model and the predictor read them, the optimizer writes them.

pub mod accuracy;
pub mod fingerprint;
pub mod gguf;
pub mod legacy;
pub mod memory;
pub mod predict;
pub mod running;
pub mod store;

use serde::{Deserialize, Serialize};

use crate::backend::{OutcomeClass, ProbeConfig};

/// The shape of a model as the memory model needs it (from a GGUF header or Ollama's
/// `/api/show`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelShape {
    pub architecture: Option<String>,
    pub parameters: Option<u64>,
    /// Bytes of the weights (tensor data; the file size when nothing better is known).
    pub weights_bytes: Option<u64>,
    pub trained_context: Option<u32>,
    pub block_count: Option<u32>,
    pub embedding_length: Option<u32>,
    pub head_count: Option<u32>,
    pub head_count_kv: Option<u32>,
    pub key_length: Option<u32>,
    pub value_length: Option<u32>,
    pub expert_count: Option<u32>,
    pub quantization: Option<String>,
}

impl ModelShape {
    /// Llama 3.1 8B Q4_K_M (32 blocks, 32 heads, 8 KV heads of 128): the tests' model.
    #[cfg(test)]
    pub(crate) fn llama31_8b() -> ModelShape {
        ModelShape {
            architecture: Some("llama".into()),
            parameters: Some(8_030_261_248),
            weights_bytes: Some(4_920_734_720),
            trained_context: Some(131072),
            block_count: Some(32),
            embedding_length: Some(4096),
            head_count: Some(32),
            head_count_kv: Some(8),
            ..ModelShape::default()
        }
    }

    pub fn from_ollama(i: &crate::backend::ollama::ModelInfo) -> ModelShape {
        ModelShape {
            architecture: i.architecture.clone(),
            parameters: i.parameter_count,
            weights_bytes: None,
            trained_context: i.context_length,
            block_count: i.block_count,
            embedding_length: i.embedding_length,
            head_count: i.head_count,
            head_count_kv: i.head_count_kv,
            key_length: i.key_length,
            value_length: i.value_length,
            expert_count: None,
            quantization: i.quantization.clone(),
        }
    }

    pub fn from_gguf(i: &gguf::ModelInfo) -> ModelShape {
        ModelShape {
            architecture: i.architecture.clone(),
            parameters: Some(i.parameters),
            weights_bytes: Some(if i.tensor_bytes > 0 {
                i.tensor_bytes
            } else {
                i.file_size_bytes
            }),
            trained_context: i.trained_context,
            block_count: i.block_count,
            embedding_length: i.embedding_length,
            head_count: i.head_count,
            head_count_kv: i.head_count_kv,
            key_length: i.key_length,
            value_length: i.value_length,
            expert_count: i.expert_count,
            quantization: i.quantization.clone(),
        }
    }
}

/// One measured configuration as learning sees it: what was asked, what happened, what it
/// cost. Stored per probe; the predictor's training rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Host fingerprint id and model id (see `store`).
    pub host_id: String,
    pub model_id: String,
    pub config: ProbeConfig,
    /// Simultaneous streams.
    pub concurrency: u32,
    pub outcome: OutcomeClass,
    /// Every request of the probe succeeded.
    pub success: bool,
    /// Medians over the probe's successful requests.
    pub prefill_tokens_per_s: Option<f64>,
    pub decode_tokens_per_s: Option<f64>,
    pub ttft_ms: Option<f64>,
    /// Peaks measured during the probe.
    pub rss_peak_bytes: Option<u64>,
    pub gpu_used_peak_bytes: Option<u64>,
    /// Memory the configuration may use on this host (GPU-usable: GTT on an APU, VRAM on a
    /// discrete card; RAM without a GPU).
    pub capacity_bytes: Option<u64>,
    pub model: ModelShape,
    /// False for imported legacy measurements (TTFT was total time, tokens/s from words).
    pub trusted: bool,
    pub unix_s: u64,
    /// Prompt tokens of the probe's requests (its depth).
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
    /// A request filled to `prompt.fill` of the context succeeded; `Some(false)` for a filled
    /// probe whose prompts a cap shortened ("not proven at depth"); `None`: not a filled probe.
    #[serde(default)]
    pub proven_at_depth: Option<bool>,
    /// The server's answers as spans of work (the time model's input), stored so a later run
    /// of the same model on the same host starts from them.
    #[serde(default)]
    pub timing: Vec<crate::timing::Obs>,
}
