//! The server a run (or one `o3 probe`) measures, as the user named it: its kind and the flags
//! that describe it, and the [`BackendSpec`] built from them. A run keeps the flags in run.json,
//! so `--resume` rebuilds the same spec.

use std::path::Path;

use crate::backend::llama_server;
use crate::backend::openai::Template;
use crate::learn::gguf::{self, GgufError};
use crate::probe::BackendSpec;

/// Which server (`--backend`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// Any OpenAI-compatible server launched from --launch TEMPLATE.
    Openai,
    /// llama.cpp's llama-server (--server-bin), launched with explicit flags.
    // Earlier versions wrote `llamaserver` into run.json; such files still read.
    #[serde(alias = "llamaserver")]
    #[value(alias = "llamaserver")]
    LlamaServer,
    /// A running Ollama server (--url), per-request options.
    Ollama,
}

impl BackendKind {
    /// The name the results store, trace headers and JSON give it: the `--backend` value
    /// (`llama-server`).
    pub fn store_name(self) -> &'static str {
        match self {
            BackendKind::Openai => "openai",
            BackendKind::LlamaServer => "llama-server",
            BackendKind::Ollama => "ollama",
        }
    }
}

/// `--backend` as given, else the one the other flags imply: a `--launch` template is an
/// OpenAI-compatible server's, a `.gguf` name or any existing file is llama-server's (it loads
/// GGUF files), anything else is an Ollama model name. Returns the notice that says what was chosen when it was not given.
pub fn choose_backend(
    given: Option<BackendKind>,
    model: Option<&str>,
    launch: bool,
) -> (BackendKind, Option<String>) {
    if let Some(k) = given {
        return (k, None);
    }
    let gguf = model.is_some_and(|m| {
        let p = Path::new(m);
        p.is_file()
            || p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    });
    let (kind, why) = if launch {
        (
            BackendKind::Openai,
            "--launch starts an OpenAI-compatible server",
        )
    } else if gguf {
        (BackendKind::LlamaServer, "the model is a GGUF file")
    } else {
        return (BackendKind::Ollama, None);
    };
    let note = format!(
        "--backend {} ({why}; give --backend to choose another)",
        kind.store_name()
    );
    (kind, Some(note))
}

/// The flags `o3 probe` and `o3 optimize` share that describe the server.
pub struct ServerFlags<'a> {
    pub kind: BackendKind,
    pub model: &'a str,
    pub url: &'a str,
    pub server_bin: &'a str,
    pub launch: Option<&'a str>,
    pub ready: &'a str,
    pub tokenize: &'a str,
    pub ollama_serve: Option<&'a str>,
}

/// Why the flags describe no server o3 can use.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("--backend openai needs --launch TEMPLATE (the server's command line with {{port}} and {{ctx}})")]
    NoLaunch,
    /// The launch template's own complaint ([`Template::parse`]).
    #[error("{0}")]
    Template(String),
    #[error("cannot run `{bin} --help`: {source} (give the binary with --server-bin)")]
    ServerHelp {
        bin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--ollama-serve is empty: give the command that starts Ollama, e.g. \"ollama serve\"")]
    EmptyOllamaServe,
}

impl TargetError {
    /// The flags are wrong (as opposed to a server binary that cannot run).
    pub fn is_usage(&self) -> bool {
        !matches!(self, TargetError::ServerHelp { .. })
    }
}

/// The backend the flags describe. llama-server's `--help` is read here, once.
pub fn backend_spec(f: ServerFlags) -> Result<BackendSpec, TargetError> {
    Ok(match f.kind {
        BackendKind::Openai => BackendSpec::OpenAi {
            template: Template::parse(f.launch.ok_or(TargetError::NoLaunch)?)
                .map_err(|e| TargetError::Template(e.to_string()))?,
            model: f.model.to_string(),
            ready_path: f.ready.to_string(),
            tokenize_path: (f.tokenize != "none").then(|| f.tokenize.to_string()),
        },
        BackendKind::LlamaServer => BackendSpec::LlamaServer {
            bin: f.server_bin.to_string(),
            model: f.model.to_string(),
            flags: Box::new(llama_server::parse_help(&server_help(f.server_bin)?)),
        },
        BackendKind::Ollama => BackendSpec::Ollama {
            url: f.url.to_string(),
            model: f.model.to_string(),
            serve: f.ollama_serve.map(ollama_argv).transpose()?,
        },
    })
}

/// What `bin --help` prints (stdout, then stderr).
fn server_help(bin: &str) -> Result<String, TargetError> {
    let help = std::process::Command::new(bin)
        .arg("--help")
        .output()
        .map_err(|source| TargetError::ServerHelp {
            bin: bin.to_string(),
            source,
        })?;
    Ok(String::from_utf8_lossy(&help.stdout).into_owned() + &String::from_utf8_lossy(&help.stderr))
}

/// `--ollama-serve`'s words.
fn ollama_argv(cmd: &str) -> Result<Vec<String>, TargetError> {
    let argv: Vec<String> = cmd.split_whitespace().map(String::from).collect();
    if argv.is_empty() {
        return Err(TargetError::EmptyOllamaServe);
    }
    Ok(argv)
}

/// Reads the model file a server is about to load as the server will ([`gguf::read`]), so a
/// file cut short or corrupt is refused before any server starts: llama-server's model (any
/// file: it loads nothing but GGUF), and an OpenAI-compatible server's model where it is a
/// `.gguf` file. Ollama's model names, other servers' names, and paths that do not exist (left
/// to the server, whose own error then says so in the probe's result) are not read.
pub fn check_model_file(kind: BackendKind, model: &str) -> Result<(), GgufError> {
    let path = Path::new(model);
    let is_gguf_name = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    let read = match kind {
        BackendKind::Ollama => false,
        BackendKind::LlamaServer => path.is_file(),
        BackendKind::Openai => is_gguf_name && path.is_file(),
    };
    if read {
        gguf::read(path)?;
    }
    Ok(())
}

/// Pins llama-server's loading mode for this machine (see
/// [`llama_server::default_load_mode`]); returns what was pinned, for a notice, where the
/// build has the flag.
pub fn pin_load_mode(spec: &mut BackendSpec, integrated_gpu: bool) -> Option<String> {
    let BackendSpec::LlamaServer { flags, .. } = spec else {
        return None;
    };
    let mode = llama_server::default_load_mode(integrated_gpu);
    flags.load_mode_value = Some(mode.to_string());
    let flag = flags.load_mode.as_ref()?;
    Some(format!(
        "llama-server loads the model with `{flag} {mode}` in every probe and artefact ({})",
        if integrated_gpu {
            "an integrated AMD GPU: direct I/O, as Ollama loads there; mmap stalls ROCm on models over ~64 GB"
        } else {
            "mmap, the builds' long-standing default"
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(kind: BackendKind) -> ServerFlags<'static> {
        ServerFlags {
            kind,
            model: "m",
            url: "http://127.0.0.1:11434",
            server_bin: "/nonexistent/llama-server",
            launch: None,
            ready: "/v1/models",
            tokenize: "none",
            ollama_serve: None,
        }
    }

    #[test]
    fn wrong_flags_are_usage_errors_and_a_missing_binary_is_not() {
        let e = backend_spec(flags(BackendKind::Openai)).unwrap_err();
        assert!(matches!(e, TargetError::NoLaunch) && e.is_usage(), "{e}");
        let e = backend_spec(ServerFlags {
            ollama_serve: Some("  "),
            ..flags(BackendKind::Ollama)
        })
        .unwrap_err();
        assert!(matches!(e, TargetError::EmptyOllamaServe) && e.is_usage());
        let e = backend_spec(flags(BackendKind::LlamaServer)).unwrap_err();
        assert!(!e.is_usage());
        assert!(
            e.to_string()
                .starts_with("cannot run `/nonexistent/llama-server --help`: "),
            "{e}"
        );
    }

    #[test]
    fn an_ollama_serve_command_is_split_into_words() {
        let spec = backend_spec(ServerFlags {
            ollama_serve: Some("ollama  serve"),
            ..flags(BackendKind::Ollama)
        })
        .unwrap();
        let BackendSpec::Ollama { serve, .. } = spec else {
            panic!("not ollama")
        };
        assert_eq!(serve, Some(vec!["ollama".to_string(), "serve".to_string()]));
    }

    #[test]
    fn the_store_name_is_the_backend_flags_value() {
        use clap::ValueEnum;
        for k in BackendKind::value_variants() {
            let flag = k.to_possible_value().unwrap();
            assert_eq!(k.store_name(), flag.get_name());
            assert_eq!(serde_json::to_value(k).unwrap(), k.store_name());
        }
        assert_eq!(BackendKind::LlamaServer.store_name(), "llama-server");
    }

    #[test]
    fn the_old_spelling_llamaserver_still_reads() {
        // run.json of earlier versions: `"backend": "llamaserver"`.
        let k: BackendKind = serde_json::from_str("\"llamaserver\"").unwrap();
        assert_eq!(k, BackendKind::LlamaServer);
    }

    #[test]
    fn the_backend_follows_the_model_when_not_given() {
        let ls = choose_backend(None, Some("/m/Qwen3-8B-Q4_K_M.GGUF"), false);
        assert_eq!(ls.0, BackendKind::LlamaServer);
        assert_eq!(
            ls.1.as_deref(),
            Some("--backend llama-server (the model is a GGUF file; give --backend to choose another)")
        );
        assert_eq!(
            choose_backend(None, Some("qwen3:8b"), false),
            (BackendKind::Ollama, None)
        );
        assert_eq!(
            choose_backend(None, Some("m.gguf"), true).0,
            BackendKind::Openai
        );
        // Given, it is kept, even for a GGUF file (the pre-flight then says what is wrong).
        assert_eq!(
            choose_backend(Some(BackendKind::Ollama), Some("m.gguf"), false),
            (BackendKind::Ollama, None)
        );
    }
}
