//! Which server programs this machine has, for `o3 doctor`: llama-server's and Ollama's
//! versions, from `--version` and from Ollama's `GET /api/version`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use super::http::{Blocking, HttpError};

/// How long a `--version` run may take: a ROCm or Vulkan build enumerates its devices before
/// it prints anything, which takes seconds on a Strix Halo, not the milliseconds of a CPU
/// build. `o3 doctor` and the pre-flight of `o3 optimize`/`o3 probe` wait the same.
pub const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Error)]
pub enum VersionError {
    #[error("{0} is not in PATH")]
    NotInPath(String),
    #[error("{0} is not an executable file")]
    NotExecutable(String),
    #[error("{0} does not exist")]
    NoSuchFile(String),
    #[error("running `{0} --version`: {1}")]
    Run(String, std::io::Error),
    #[error("`{0} --version` did not finish within {1:?}")]
    Hung(String, Duration),
    #[error("`{0} --version` printed no version line")]
    NoVersion(String),
    #[error("no answer at {0}: {1}")]
    Api(String, String),
}

/// A found program: where it is and the version it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    pub version: String,
}

/// `version: 4589 (1d1e6a90)` (llama.cpp's `print_build_info`, on stderr) anywhere in the
/// output of `llama-server --version`: `4589 (1d1e6a90)`.
pub fn parse_llama_server(output: &str) -> Option<String> {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix("version:"))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// `ollama version is 0.5.7` (also printed after a warning when no server runs): `0.5.7`.
pub fn parse_ollama(output: &str) -> Option<String> {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix("ollama version is"))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// `program` resolved like execvp: a path as given, a bare name through PATH.
fn resolve(program: &str) -> Result<PathBuf, VersionError> {
    use crate::util::spawn::SpawnError;
    let path = std::env::var_os("PATH");
    crate::util::spawn::resolve(OsStr::new(program), path.as_deref()).map_err(|e| match e {
        SpawnError::NotExecutable(p) => VersionError::NotExecutable(p),
        _ if program.contains('/') => VersionError::NoSuchFile(program.into()),
        _ => VersionError::NotInPath(program.into()),
    })
}

/// Runs `path --version` and returns stdout and stderr together; killed after `TIMEOUT`.
fn run_version(path: &Path) -> Result<String, VersionError> {
    let shown = path.display().to_string();
    let program = path.to_string_lossy();
    match crate::util::command::output_within(&program, &["--version"], TIMEOUT) {
        Ok(o) => Ok(o.stdout + &o.stderr),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            Err(VersionError::Hung(shown, TIMEOUT))
        }
        Err(e) => Err(VersionError::Run(shown, e)),
    }
}

/// A program and the version its `--version` prints, read by `parse`.
fn program(name: &str, parse: fn(&str) -> Option<String>) -> Result<Found, VersionError> {
    let path = resolve(name)?;
    let out = run_version(&path)?;
    let version = parse(&out).ok_or_else(|| VersionError::NoVersion(path.display().to_string()))?;
    Ok(Found { path, version })
}

/// llama-server (`bin`: a name looked up in PATH, or a path) and its version.
pub fn llama_server(bin: &str) -> Result<Found, VersionError> {
    program(bin, parse_llama_server)
}

/// The `ollama` program in PATH and its version.
pub fn ollama_program() -> Result<Found, VersionError> {
    program("ollama", parse_ollama)
}

/// The deepest cause of `e` (`Connection refused (os error 111)`, not reqwest's "error sending
/// request").
pub fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut e = e;
    while let Some(next) = e.source() {
        e = next;
    }
    e.to_string()
}

/// The version an Ollama server at `url` reports on `GET /api/version`.
pub fn ollama_api(url: &str, timeout: Duration) -> Result<String, VersionError> {
    let endpoint = format!("{}/api/version", url.trim_end_matches('/'));
    let api = |e: String| VersionError::Api(url.to_string(), e);
    let client = Blocking::new().map_err(|e| api(e.to_string()))?;
    let reply = client.get(&endpoint, timeout).map_err(|e| {
        api(match &e {
            HttpError::Send(r) => innermost(r),
            other => other.to_string(),
        })
    })?;
    if !reply.is_success() {
        return Err(api(format!("HTTP {}", reply.status)));
    }
    serde_json::from_str::<serde_json::Value>(&reply.body)
        .ok()
        .and_then(|v| v["version"].as_str().map(str::to_string))
        .ok_or_else(|| api(format!("no version in {:?}", reply.body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_version_lines() {
        // llama.cpp's print_build_info (common/common.cpp), on stderr.
        let real = "version: 4589 (1d1e6a90)\nbuilt with cc (GCC) 14.2.1 for x86_64-pc-linux-gnu\n";
        assert_eq!(parse_llama_server(real).as_deref(), Some("4589 (1d1e6a90)"));
        // The llama.cpp vendored by llama-cpp-python, built outside a git checkout.
        let vendored = "version: 0.5.0-dev (build 1, commit 0c1e570)\nbuilt with GNU 12.2.0\n";
        assert_eq!(
            parse_llama_server(vendored).as_deref(),
            Some("0.5.0-dev (build 1, commit 0c1e570)")
        );
        assert_eq!(parse_llama_server("usage: llama-server [options]\n"), None);
        let ollama = "Warning: could not connect to a running Ollama instance\n\
                      Warning: client version is 0.5.7\nollama version is 0.5.7\n";
        assert_eq!(parse_ollama(ollama).as_deref(), Some("0.5.7"));
        assert_eq!(parse_ollama("ollama version is \n"), None);
    }

    #[test]
    fn a_missing_program_says_so() {
        let e = llama_server("o3-no-such-llama-server").unwrap_err();
        assert_eq!(e.to_string(), "o3-no-such-llama-server is not in PATH");
        let e = llama_server("/nonexistent/llama-server").unwrap_err();
        assert_eq!(e.to_string(), "/nonexistent/llama-server does not exist");
    }
}
