//! Pre-flight: what `o3 optimize` and `o3 probe` check before anything is stored, a run
//! directory is made or a server is started. A run on a Strix Halo lasts hours; a model that
//! is not there, a server binary that does not run or an Ollama that does not answer must cost
//! one line at once, not seven failed probes and a run stored as if it had measured something.
//!
//! - the model: a GGUF file that exists (llama-server; a template's `.gguf`), or a model the
//!   Ollama at `--url` lists in `/api/tags`;
//! - the server: llama-server's binary runs and says its version (`--version`); the Ollama at
//!   `--url` answers `/api/version`; the program of `--ollama-serve` or of a `--launch`
//!   template is found and executable.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use crate::backend::{http, ollama, version};
use crate::util::{command, spawn};

use super::target::{BackendKind, ServerFlags};

/// How long the Ollama at `--url` may take to answer.
const OLLAMA_WAIT: Duration = Duration::from_secs(5);

/// What the checks found out on the way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Passed {
    /// The server as it names itself (`llama-server 5890 (0c1e570)`, `Ollama 0.12.3`).
    pub server_version: Option<String>,
}

/// Why a run cannot start. Each is one line that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("model file {path} does not exist: give the path of a GGUF file with --model")]
    NoModelFile { path: String },
    #[error("no Ollama answers at {url} ({detail}): start it (`ollama serve`), give its address with --url, or let o3 start one with --ollama-serve \"ollama serve\"")]
    OllamaUnreachable { url: String, detail: String },
    #[error("{model} is a GGUF file, not an Ollama model name: measure it with --backend llama-server (or import it into Ollama with a Modelfile)")]
    GgufToOllama { model: String },
    #[error("the Ollama at {url} has no model `{model}` (it has: {have}): pull it with `ollama pull {model}` or name one of those with --model")]
    OllamaNoModel {
        url: String,
        model: String,
        have: String,
    },
    #[error("the server binary `{bin}` {problem}: give llama-server's path with --server-bin")]
    ServerBin { bin: String, problem: String },
    #[error("{flag}'s program {problem}")]
    Program { flag: &'static str, problem: String },
}

/// Checks what the flags name. Nothing is written and no server is started.
pub fn check(f: &ServerFlags) -> Result<Passed, PreflightError> {
    match f.kind {
        BackendKind::LlamaServer => {
            model_file(f.model)?;
            Ok(Passed {
                server_version: Some(server_version(f.server_bin)?),
            })
        }
        BackendKind::Ollama => match f.ollama_serve {
            Some(cmd) => {
                program(
                    "--ollama-serve",
                    cmd.split_whitespace().next().unwrap_or(""),
                )?;
                gguf_name(f.model)?;
                Ok(Passed::default())
            }
            None => ollama(f.url, f.model),
        },
        BackendKind::Openai => {
            if is_gguf_name(f.model) {
                model_file(f.model)?;
            }
            if let Some(t) = f.launch {
                if let Ok(t) = crate::backend::openai::Template::parse(t) {
                    program("--launch", t.program())?;
                }
            }
            Ok(Passed::default())
        }
    }
}

fn is_gguf_name(model: &str) -> bool {
    Path::new(model)
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

fn model_file(model: &str) -> Result<(), PreflightError> {
    if Path::new(model).exists() {
        Ok(())
    } else {
        Err(PreflightError::NoModelFile {
            path: model.to_string(),
        })
    }
}

fn gguf_name(model: &str) -> Result<(), PreflightError> {
    if is_gguf_name(model) {
        return Err(PreflightError::GgufToOllama {
            model: model.to_string(),
        });
    }
    Ok(())
}

/// A program of a command line is found in PATH (or at its path) and executable.
fn program(flag: &'static str, name: &str) -> Result<(), PreflightError> {
    let path = std::env::var_os("PATH");
    spawn::resolve(OsStr::new(name), path.as_deref())
        .map(|_| ())
        .map_err(|e| PreflightError::Program {
            flag,
            problem: match e {
                spawn::SpawnError::NotFound(_) => {
                    format!("`{name}` is not found (check the name and PATH)")
                }
                spawn::SpawnError::NotExecutable(_) => {
                    format!("`{name}` is not executable (check the file's execute bit)")
                }
                other => other.to_string(),
            },
        })
}

/// `bin --version` runs, exits 0 and names a version.
fn server_version(bin: &str) -> Result<String, PreflightError> {
    let bad = |problem: String| PreflightError::ServerBin {
        bin: bin.to_string(),
        problem,
    };
    let out = command::output_within(bin, &["--version"], version::TIMEOUT).map_err(|e| {
        bad(match e.kind() {
            std::io::ErrorKind::NotFound => "is not found (check the path, or PATH)".into(),
            std::io::ErrorKind::PermissionDenied => "is not executable".into(),
            _ => format!("cannot run `--version`: {e}"),
        })
    })?;
    let text = out.stderr + &out.stdout;
    if !out.status.success() {
        let last = text.lines().rev().find(|l| !l.trim().is_empty());
        return Err(bad(format!(
            "exits with {} on --version ({})",
            out.status,
            last.unwrap_or("it printed nothing").trim()
        )));
    }
    version_line(&text).ok_or_else(|| {
        bad("prints no `version:` line on --version (is it llama.cpp's llama-server?)".into())
    })
}

/// The version in llama-server's `--version` output (`version: 5890 (0c1e570)`), named.
fn version_line(text: &str) -> Option<String> {
    version::parse_llama_server(text).map(|v| format!("llama-server {v}"))
}

/// The Ollama at `url` answers and lists `model`.
fn ollama(url: &str, model: &str) -> Result<Passed, PreflightError> {
    if Path::new(model).is_file() {
        gguf_name(model)?;
    }
    let base = url.trim_end_matches('/');
    let unreachable = |detail: String| PreflightError::OllamaUnreachable {
        url: url.to_string(),
        detail,
    };
    let h = http::Blocking::new().map_err(|e| unreachable(root_cause(&e)))?;
    let v = h
        .get(&format!("{base}/api/version"), OLLAMA_WAIT)
        .map_err(|e| unreachable(root_cause(&e)))?;
    if !v.is_success() {
        return Err(unreachable(format!(
            "GET /api/version answered {}",
            v.status
        )));
    }
    let version = ollama_version(&v.body);
    let tags = h
        .get(&format!("{base}/api/tags"), OLLAMA_WAIT)
        .map_err(|e| unreachable(root_cause(&e)))?;
    let names = ollama::parse_tags(&tags.body).map_err(|e| unreachable(e.to_string()))?;
    let want = ollama::canonical(model);
    if names.iter().any(|n| ollama::canonical(n) == want) {
        return Ok(Passed {
            server_version: version,
        });
    }
    gguf_name(model)?;
    Err(PreflightError::OllamaNoModel {
        url: url.to_string(),
        model: model.to_string(),
        have: if names.is_empty() {
            "no models".into()
        } else {
            names.join(", ")
        },
    })
}

/// The innermost cause of a request's error (`Connection refused (os error 111)`), where the
/// outer ones only repeat the URL.
fn root_cause(e: &http::HttpError) -> String {
    match e {
        http::HttpError::Send(inner) => version::innermost(inner),
        other => other.to_string(),
    }
}

/// `Ollama 0.12.3` from `/api/version`'s `{"version": "0.12.3"}`.
fn ollama_version(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    Some(format!("Ollama {}", v.get("version")?.as_str()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(kind: BackendKind, model: &str) -> ServerFlags<'_> {
        ServerFlags {
            kind,
            model,
            url: "http://127.0.0.1:9",
            server_bin: "/nonexistent/llama-server",
            launch: None,
            ready: "/v1/models",
            tokenize: "none",
            ollama_serve: None,
        }
    }

    #[test]
    fn a_missing_model_file_is_named() {
        let e = check(&flags(BackendKind::LlamaServer, "/nonexistent/m.gguf")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "model file /nonexistent/m.gguf does not exist: give the path of a GGUF file with --model"
        );
    }

    #[test]
    fn a_server_binary_that_does_not_exist_is_named() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("m.gguf");
        std::fs::write(&m, b"GGUF").unwrap();
        let e = check(&flags(BackendKind::LlamaServer, m.to_str().unwrap())).unwrap_err();
        let s = e.to_string();
        assert!(
            s.starts_with("the server binary `/nonexistent/llama-server` "),
            "{s}"
        );
        assert!(
            s.ends_with("give llama-server's path with --server-bin"),
            "{s}"
        );
    }

    #[test]
    fn a_binary_without_a_version_line_is_not_taken_for_llama_server() {
        let e = server_version("true").unwrap_err().to_string();
        assert!(e.contains("prints no `version:` line"), "{e}");
        let e = server_version("false").unwrap_err().to_string();
        assert!(e.contains("exits with exit status: 1"), "{e}");
    }

    #[test]
    fn the_version_line_names_the_server() {
        let text = "ggml_vulkan: found 1 device\nversion: 5890 (0c1e570)\nbuilt with cc\n";
        assert_eq!(
            version_line(text).as_deref(),
            Some("llama-server 5890 (0c1e570)")
        );
        assert_eq!(version_line("usage: llama-server"), None);
        assert_eq!(
            ollama_version(r#"{"version":"0.12.3"}"#).as_deref(),
            Some("Ollama 0.12.3")
        );
    }

    #[test]
    fn nothing_listening_is_an_unreachable_ollama() {
        let e = check(&flags(BackendKind::Ollama, "qwen3:8b")).unwrap_err();
        let s = e.to_string();
        assert!(
            s.starts_with("no Ollama answers at http://127.0.0.1:9 ("),
            "{s}"
        );
        assert!(s.contains("--ollama-serve"), "{s}");
    }

    #[test]
    fn a_managed_ollama_needs_its_program_and_a_model_name() {
        let mut f = flags(BackendKind::Ollama, "qwen3:8b");
        f.ollama_serve = Some("no-such-ollama-binary serve");
        let e = check(&f).unwrap_err().to_string();
        assert_eq!(
            e,
            "--ollama-serve's program `no-such-ollama-binary` is not found (check the name and PATH)"
        );
        f.ollama_serve = Some("sh -c true");
        f.model = "/models/x.gguf";
        let e = check(&f).unwrap_err().to_string();
        assert!(
            e.contains("is a GGUF file, not an Ollama model name"),
            "{e}"
        );
    }

    #[test]
    fn a_template_names_its_program() {
        let mut f = flags(BackendKind::Openai, "tiny");
        f.launch = Some("no-such-server --port {port} --ctx {ctx}");
        let e = check(&f).unwrap_err().to_string();
        assert_eq!(
            e,
            "--launch's program `no-such-server` is not found (check the name and PATH)"
        );
        f.launch = Some("sh -c 'x {port} {ctx}'");
        assert_eq!(check(&f).unwrap(), Passed::default());
    }
}
