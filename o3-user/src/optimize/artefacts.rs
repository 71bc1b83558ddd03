//! What a user pastes to serve a chosen configuration: an Ollama Modelfile and server
//! environment, or the full shell command line of llama-server or a launch template.
//!
//! The mappings from a [`ProbeConfig`] are those the probes used, taken from the backend
//! modules (never restated here), so the artefact reproduces exactly what was measured.

use std::path::Path;

use serde::Serialize;

use crate::backend::llama_server::{self, Flags};
use crate::backend::ollama;
use crate::backend::openai::Template;
use crate::backend::ProbeConfig;
use crate::util::shell;

/// Ready-to-paste artefacts of one configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Artefacts {
    /// Ollama: a Modelfile (`FROM <model>` then `PARAMETER num_ctx N` etc. for every option
    /// Ollama takes per model: num_ctx, num_batch, num_gpu, num_thread; only the ones set).
    pub modelfile: Option<String>,
    /// Ollama: environment the server needs (OLLAMA_NUM_PARALLEL, OLLAMA_FLASH_ATTENTION,
    /// OLLAMA_KV_CACHE_TYPE), as `KEY=value` lines.
    pub server_env: Vec<String>,
    /// llama-server or a launch template: the full command line, shell-quoted so it pastes
    /// into a shell.
    pub command_line: Option<String>,
}

/// Why a configuration has no artefact.
#[derive(Debug, thiserror::Error)]
pub enum ArtefactError {
    #[error("no model name for the Modelfile's FROM line")]
    NoModel,
    #[error(transparent)]
    Ollama(#[from] ollama::UnsupportedConfig),
    /// The server's command line cannot express the configuration (as the backend says it).
    #[error("{0}")]
    Command(String),
}

/// Per-model options, in Modelfile order. Each is also a Modelfile `PARAMETER` name (Ollama's
/// Modelfile reference lists num_ctx, num_batch, num_gpu and num_thread among valid parameters).
const MODEL_OPTIONS: [&str; 4] = ["num_ctx", "num_batch", "num_gpu", "num_thread"];

/// Server-level variables a user must set on their own `ollama serve`; the rest of
/// [`ollama::server_env`] (context default, keep-alive, host) only serves o3's managed server.
const SERVER_VARS: [&str; 3] = [
    "OLLAMA_NUM_PARALLEL",
    "OLLAMA_FLASH_ATTENTION",
    "OLLAMA_KV_CACHE_TYPE",
];

/// A Modelfile and server environment for Ollama.
///
/// The options are those [`ollama::generate_request`] sends per request, so the Modelfile
/// matches what was probed; `num_ctx` is left out when `cfg.ctx` is 0 (server default). The
/// environment comes from [`ollama::server_env`], whose refusals (K and V cache types that
/// differ, a quantized cache without flash attention, ...) are returned as errors. The
/// micro-batch cannot be set in Ollama and appears in neither.
pub fn ollama(model: &str, cfg: &ProbeConfig) -> Result<Artefacts, ArtefactError> {
    if model.trim().is_empty() {
        return Err(ArtefactError::NoModel);
    }
    let request = ollama::generate_request(model, "", cfg, 0, 0);
    let mut modelfile = format!("FROM {model}\n");
    for name in MODEL_OPTIONS {
        let Some(value) = request["options"].get(name) else {
            continue;
        };
        if name == "num_ctx" && cfg.ctx == 0 {
            continue;
        }
        modelfile.push_str(&format!("PARAMETER {name} {value}\n"));
    }
    // The host is o3's own; it is filtered out with the other managed-server variables.
    let env = ollama::server_env(cfg, "127.0.0.1:11434")?;
    let server_env = env
        .iter()
        .filter(|(k, _)| SERVER_VARS.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={}", shell::quote(v)))
        .collect();
    Ok(Artefacts {
        modelfile: Some(modelfile),
        server_env,
        command_line: None,
    })
}

/// The llama-server command line for `cfg`: `bin` followed by
/// [`llama_server::command_args`] (the build's own flag spellings), every word shell-quoted.
pub fn llama_server(
    bin: &str,
    flags: &Flags,
    model: &Path,
    cfg: &ProbeConfig,
    host: &str,
    port: u16,
) -> Result<Artefacts, ArtefactError> {
    let mut words = vec![bin.to_string()];
    words.extend(
        llama_server::command_args(flags, model, cfg, host, port)
            .map_err(|e| ArtefactError::Command(e.to_string()))?,
    );
    Ok(Artefacts {
        modelfile: None,
        server_env: Vec::new(),
        command_line: Some(shell::join(&words)),
    })
}

/// The command line of a launch template filled with `cfg` ([`Template::fill`]), every word
/// shell-quoted.
pub fn template(
    t: &Template,
    model: &str,
    cfg: &ProbeConfig,
    host: &str,
    port: u16,
) -> Result<Artefacts, ArtefactError> {
    let words = t
        .fill(cfg, model, host, port)
        .map_err(|e| ArtefactError::Command(e.to_string()))?;
    Ok(Artefacts {
        modelfile: None,
        server_env: Vec::new(),
        command_line: Some(shell::join(&words)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELP_RECENT: &str =
        include_str!("../../../tests/fixtures/llama-server/help-recent-fa-value-fit.txt");

    fn full() -> ProbeConfig {
        ProbeConfig {
            ctx: 8192,
            batch: Some(512),
            ubatch: Some(256),
            parallel: Some(2),
            gpu_layers: Some(-1),
            flash_attn: Some(crate::backend::FlashAttn::On),
            cache_type_k: Some("q8_0".into()),
            cache_type_v: Some("q8_0".into()),
            threads: Some(8),
            server_bin: None,
        }
    }

    #[test]
    fn modelfile_and_env_of_a_full_config() {
        let a = ollama("llama3.2:3b", &full()).unwrap();
        assert_eq!(
            a.modelfile.as_deref(),
            Some(
                "FROM llama3.2:3b\n\
                 PARAMETER num_ctx 8192\n\
                 PARAMETER num_batch 512\n\
                 PARAMETER num_gpu -1\n\
                 PARAMETER num_thread 8\n"
            )
        );
        assert_eq!(
            a.server_env,
            [
                "OLLAMA_NUM_PARALLEL=2",
                "OLLAMA_FLASH_ATTENTION=1",
                "OLLAMA_KV_CACHE_TYPE=q8_0"
            ]
        );
        assert_eq!(a.command_line, None);
    }

    #[test]
    fn modelfile_of_a_minimal_config() {
        let cfg = ProbeConfig {
            ctx: 4096,
            ..ProbeConfig::default()
        };
        let a = ollama("qwen2.5:7b", &cfg).unwrap();
        assert_eq!(
            a.modelfile.as_deref(),
            Some("FROM qwen2.5:7b\nPARAMETER num_ctx 4096\n")
        );
        assert!(a.server_env.is_empty(), "{:?}", a.server_env);
        let a = ollama("m", &ProbeConfig::default()).unwrap();
        assert_eq!(a.modelfile.as_deref(), Some("FROM m\n"));
    }

    #[test]
    fn ollama_refusals_are_errors() {
        let cfg = ProbeConfig {
            cache_type_k: Some("q4_0".into()),
            ..full()
        };
        let e = ollama("m", &cfg).unwrap_err();
        assert!(matches!(e, ArtefactError::Ollama(_)), "{e}");
        assert!(e.to_string().contains("K q4_0"), "{e}");
        assert!(matches!(
            ollama(" ", &full()).unwrap_err(),
            ArtefactError::NoModel
        ));
    }

    #[test]
    fn llama_server_command_quotes_a_path_with_a_space() {
        let flags = llama_server::parse_help(HELP_RECENT);
        let cfg = ProbeConfig {
            ctx: 4096,
            gpu_layers: Some(-1),
            flash_attn: Some(crate::backend::FlashAttn::On),
            ..ProbeConfig::default()
        };
        let a = llama_server(
            "/opt/llama.cpp/llama-server",
            &flags,
            Path::new("/models/My Models/m.gguf"),
            &cfg,
            "127.0.0.1",
            8080,
        )
        .unwrap();
        assert_eq!(
            a.command_line.as_deref(),
            Some(
                "/opt/llama.cpp/llama-server --model '/models/My Models/m.gguf' \
                 --host 127.0.0.1 --port 8080 --ctx-size 4096 --parallel 1 --no-kv-unified \
                 --cache-ram 0 --load-mode mmap --ubatch-size 512 --n-gpu-layers all \
                 --flash-attn on --cache-type-k f16 --cache-type-v f16 --fit off --metrics \
                 --no-webui"
            )
        );
        assert_eq!((a.modelfile, a.server_env.len()), (None, 0));
        let bad = ProbeConfig {
            ctx: 0,
            ..cfg.clone()
        };
        assert!(llama_server("llama-server", &flags, Path::new("m"), &bad, "h", 1).is_err());
    }

    #[test]
    fn template_fill_is_quoted() {
        let t =
            Template::parse("srv -m '{model}' -c {ctx_total} -b {batch} --port={port}").unwrap();
        let cfg = ProbeConfig {
            ctx: 4096,
            batch: Some(256),
            parallel: Some(2),
            ..ProbeConfig::default()
        };
        let a = template(&t, "/m/it's here.gguf", &cfg, "127.0.0.1", 8123).unwrap();
        assert_eq!(
            a.command_line.as_deref(),
            Some(r"srv -m '/m/it'\''s here.gguf' -c 8192 -b 256 --port=8123")
        );
        let unset = ProbeConfig { batch: None, ..cfg };
        let e = template(&t, "m", &unset, "h", 1).unwrap_err();
        assert!(e.to_string().contains("{batch}"), "{e}");
    }
}
