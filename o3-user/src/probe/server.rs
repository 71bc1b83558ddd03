//! The server of one probe: launched by o3 with the configuration (llama-server, a command
//! template, a managed Ollama) or reached where it runs (Ollama at `--url`), with what differs
//! between backends once it is reachable (request URL, body, stream parser, tokenizer).

use std::path::Path;
use std::time::Duration;

use crate::backend::http::LineParser;
use crate::backend::launch::{free_port, Exit, LaunchError, Launcher, Server};
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
    /// The driver of a `backend` server at `base` (`http://host:port`), ready when
    /// `ready_path` answers, counting tokens at `tokenize_path` if it has one.
    fn new(
        backend: Backend,
        base: &str,
        model: &str,
        ready_path: &str,
        tokenize_path: Option<&str>,
    ) -> Driver {
        let (request, parse, key): (&str, LineParser, &'static str) = match backend {
            Backend::OpenAi => ("/v1/completions", openai::parse_sse_line, "input"),
            Backend::LlamaServer => ("/completion", llama_server::parse_sse_line, "content"),
            Backend::Ollama => ("/api/generate", ollama::parse_stream_line, ""),
        };
        Driver {
            base: base.to_string(),
            request_url: format!("{base}{request}"),
            ready_url: format!("{base}{ready_path}"),
            parse,
            model: model.to_string(),
            backend,
            tokenize: tokenize_path.map(|p| (format!("{base}{p}"), key)),
        }
    }

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

/// Why the server of a probe could not be started.
#[derive(Debug, thiserror::Error)]
pub(super) enum StartError {
    #[error("no free port: {0}")]
    Port(std::io::Error),
    #[error(transparent)]
    Template(#[from] openai::TemplateError),
    #[error(transparent)]
    Args(#[from] llama_server::ArgsError),
    #[error(transparent)]
    Ollama(#[from] ollama::UnsupportedConfig),
    #[error(transparent)]
    Launch(#[from] LaunchError),
}

/// The server o3 started (`None`: one reached where it runs), and how to talk to it.
pub(super) type Started = (Option<Box<dyn Server>>, Driver);

/// Starts the server for `cfg` through `launcher` (or finds the running Ollama).
pub(super) fn start(
    backend: &BackendSpec,
    cfg: &ProbeConfig,
    ebpf: Option<&mut Loaded>,
    launcher: &mut dyn Launcher,
) -> Result<Started, StartError> {
    // Servers o3 launches listen on a free loopback port.
    let port = match backend {
        BackendSpec::Ollama { serve: None, .. } => 0,
        _ => free_port().map_err(StartError::Port)?,
    };
    let s = Starter {
        launcher,
        ebpf,
        port,
    };
    match backend {
        BackendSpec::OpenAi {
            template,
            model,
            ready_path,
            tokenize_path,
        } => {
            let argv = template.fill(cfg, model, HOST, port)?;
            let driver = s.driver(Backend::OpenAi, model, ready_path, tokenize_path.as_deref());
            Ok((Some(s.launch(&argv, &[])?), driver))
        }
        BackendSpec::LlamaServer { bin, model, flags } => {
            let mut argv = vec![bin.clone()];
            let path = Path::new(model);
            argv.extend(llama_server::command_args(flags, path, cfg, HOST, port)?);
            let driver = s.driver(Backend::LlamaServer, model, "/health", Some("/tokenize"));
            Ok((Some(s.launch(&argv, &[])?), driver))
        }
        BackendSpec::Ollama {
            url,
            model,
            serve: None,
        } => {
            let base = url.trim_end_matches('/');
            Ok((
                None,
                Driver::new(Backend::Ollama, base, model, "/api/version", None),
            ))
        }
        BackendSpec::Ollama {
            model,
            serve: Some(argv),
            ..
        } => {
            let env = ollama::server_env(&ollama::pinned(cfg), &s.host())?;
            let driver = s.driver(Backend::Ollama, model, "/api/version", None);
            Ok((Some(s.launch(argv, &env)?), driver))
        }
    }
}

/// Where servers o3 launches listen.
const HOST: &str = "127.0.0.1";

/// What launching the server needs besides its command line.
struct Starter<'a, 'b> {
    launcher: &'a mut dyn Launcher,
    ebpf: Option<&'b mut Loaded>,
    port: u16,
}

impl Starter<'_, '_> {
    fn host(&self) -> String {
        format!("{HOST}:{}", self.port)
    }

    /// How to talk to the server once it listens on this starter's port.
    fn driver(
        &self,
        backend: Backend,
        model: &str,
        ready_path: &str,
        tokenize_path: Option<&str>,
    ) -> Driver {
        let base = format!("http://{}", self.host());
        Driver::new(backend, &base, model, ready_path, tokenize_path)
    }

    /// Starts the server with its output captured, tracked by the kernel programs from its
    /// exec.
    fn launch(
        self,
        argv: &[String],
        env: &[(String, String)],
    ) -> Result<Box<dyn Server>, StartError> {
        let mut ebpf = self.ebpf;
        let mut track = |pid| match ebpf.as_deref_mut() {
            Some(l) => l.track(pid, true).map_err(|e| e.to_string()),
            None => Ok(()),
        };
        Ok(self.launcher.launch(argv, self.port, env, &mut track)?)
    }
}

/// The server's exit, waiting up to 500 ms for it: a killed server's sockets close (and the
/// client sees the stream break) before the process can be reaped.
pub(super) fn settle(l: &mut dyn Server) -> Option<Exit> {
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

/// The pid listening on a loopback TCP port, from `net/tcp{,6}` and the fds of every process
/// under `procfs` (for servers o3 did not start: their process tree is what gets measured).
pub fn listener_pid(procfs: &Path, port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for f in ["net/tcp", "net/tcp6"] {
        let text = std::fs::read_to_string(procfs.join(f)).unwrap_or_default();
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
    for (pid, dir) in crate::telemetry::procfs::pid_dirs(procfs).ok()? {
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
