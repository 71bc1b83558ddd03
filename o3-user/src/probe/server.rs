//! The server of one probe: launched by o3 with the configuration (llama-server, a command
//! template, a managed Ollama) or reached where it runs (Ollama at `--url`), with what differs
//! between backends once it is reachable (request URL, body, stream parser, tokenizer).

use std::time::Duration;

use crate::backend::http::LineParser;
use crate::backend::launch::{free_port, Exit, Launched};
use crate::backend::{llama_server, ollama, openai, ProbeConfig};
use crate::telemetry::ebpf::Loaded;

use super::BackendSpec;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Backend {
    OpenAi,
    LlamaServer,
    Ollama,
}

/// How to talk to the server once it listens.
pub(super) struct Driver {
    pub base: String,
    pub request_url: String,
    pub ready_url: String,
    pub parse: LineParser,
    pub model: String,
    pub backend: Backend,
    /// `(url, key)`: POST `{key: text}` returns `{"tokens": [...]}`.
    pub tokenize: Option<(String, &'static str)>,
}

impl Driver {
    /// A streamed completion request. `slot`: pin it to that slot and let it reuse the prefix
    /// the slot holds (llama-server; Ollama and llama-cpp-python reuse a shared prefix on
    /// their own).
    pub fn body(
        &self,
        cfg: &ProbeConfig,
        prompt: &str,
        max_tokens: u32,
        seed: u32,
        slot: Option<u32>,
    ) -> serde_json::Value {
        match self.backend {
            Backend::OpenAi => openai::completion_request(&self.model, prompt, max_tokens, seed),
            Backend::LlamaServer => {
                llama_server::completion_request(prompt, max_tokens, seed, slot)
            }
            Backend::Ollama => ollama::generate_request(&self.model, prompt, cfg, max_tokens, seed),
        }
    }

    /// The server streams progress while it reads a prompt.
    pub fn progress_events(&self) -> bool {
        self.backend == Backend::LlamaServer
    }
}

/// Starts the server for `cfg` (or finds the running Ollama): the process o3 launched, if any,
/// and the driver. Errors are the reason the server could not be started.
pub(super) fn start(
    backend: &BackendSpec,
    cfg: &ProbeConfig,
    ebpf: Option<&mut Loaded>,
) -> Result<(Option<Launched>, Driver), String> {
    // Servers o3 launches listen on a free loopback port.
    let port = match backend {
        BackendSpec::Ollama { serve: None, .. } => 0,
        _ => free_port().map_err(|e| format!("no free port: {e}"))?,
    };
    match backend {
        BackendSpec::OpenAi {
            template,
            model,
            ready_path,
            tokenize_path,
        } => {
            let argv = template.fill(cfg, model, "127.0.0.1", port)?;
            let server = launch(&argv, port, &[], ebpf)?;
            let base = format!("http://127.0.0.1:{port}");
            Ok((
                Some(server),
                Driver {
                    request_url: format!("{base}/v1/completions"),
                    ready_url: format!("{base}{ready_path}"),
                    tokenize: tokenize_path
                        .clone()
                        .map(|p| (format!("{base}{p}"), "input")),
                    base,
                    parse: openai::parse_sse_line,
                    model: model.clone(),
                    backend: Backend::OpenAi,
                },
            ))
        }
        BackendSpec::LlamaServer { bin, model, flags } => {
            let args = llama_server::command_args(
                flags,
                std::path::Path::new(model),
                cfg,
                "127.0.0.1",
                port,
            )?;
            let mut argv = vec![bin.clone()];
            argv.extend(args);
            let server = launch(&argv, port, &[], ebpf)?;
            let base = format!("http://127.0.0.1:{port}");
            Ok((
                Some(server),
                Driver {
                    request_url: format!("{base}/completion"),
                    ready_url: format!("{base}/health"),
                    tokenize: Some((format!("{base}/tokenize"), "content")),
                    base,
                    parse: llama_server::parse_sse_line,
                    model: model.clone(),
                    backend: Backend::LlamaServer,
                },
            ))
        }
        BackendSpec::Ollama { url, model, serve } => {
            let (server, base) = match serve {
                None => (None, url.trim_end_matches('/').to_string()),
                Some(argv) => {
                    let host = format!("127.0.0.1:{port}");
                    let env = ollama::server_env(&ollama::pinned(cfg), &host)
                        .map_err(|e| e.to_string())?;
                    (
                        Some(launch(argv, port, &env, ebpf)?),
                        format!("http://{host}"),
                    )
                }
            };
            Ok((
                server,
                Driver {
                    request_url: format!("{base}/api/generate"),
                    ready_url: format!("{base}/api/version"),
                    tokenize: None,
                    base,
                    parse: ollama::parse_stream_line,
                    model: model.clone(),
                    backend: Backend::Ollama,
                },
            ))
        }
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

/// The server's exit, waiting up to 500 ms for it: a killed server's sockets close (and the
/// client sees the stream break) before the process can be reaped.
pub(super) fn settle(l: &mut Launched) -> Option<Exit> {
    let t = std::time::Instant::now();
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

/// The models an Ollama server has, for an unknown-model message.
pub(super) fn ollama_models(base: &str) -> String {
    match ollama::models_at(base) {
        Some(names) if !names.is_empty() => names.join(", "),
        _ => "no models".into(),
    }
}
