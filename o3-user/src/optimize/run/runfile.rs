//! run.json: what a run searches and what it decided at its start, written before the first
//! probe so that `--resume DIR` needs nothing else.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::ProbeConfig;
use crate::config::{self, Config};
use crate::learn::fingerprint::Host;
use crate::learn::ModelShape;
use crate::optimize::preflight;
use crate::optimize::search;
use crate::optimize::sim::SimModel;
use crate::optimize::target::{self, BackendKind, ServerFlags};

use super::{facts, learning, NewRun, Request, Roots, RunError};

pub const SCHEMA_VERSION: u32 = 2;

/// What a run searches, kept in run.json so `--resume` needs nothing else.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Target {
    pub backend: BackendKind,
    pub model: String,
    pub url: String,
    pub server_bin: String,
    pub launch: Option<String>,
    pub ready: String,
    pub tokenize: String,
    #[serde(default)]
    pub ollama_serve: Option<String>,
    pub base: ProbeConfig,
    pub simulate: Option<SimModel>,
    /// llama-server builds compared (empty: the one `server_bin`).
    #[serde(default)]
    pub server_bins: Vec<String>,
}

impl Target {
    fn new(n: &NewRun, simulate: Option<SimModel>) -> Target {
        Target {
            backend: n.backend,
            model: n.model.clone().unwrap_or_else(|| "simulated".into()),
            url: n.url.clone(),
            server_bin: n.server_bin.clone(),
            launch: n.launch.clone(),
            ready: n.ready.clone(),
            tokenize: n.tokenize.clone(),
            ollama_serve: n.ollama_serve.clone(),
            base: n.base.clone(),
            simulate,
            server_bins: n.server_bins.clone(),
        }
    }

    /// The flags the backend spec is built from.
    pub fn flags(&self) -> ServerFlags<'_> {
        ServerFlags {
            kind: self.backend,
            model: &self.model,
            url: &self.url,
            server_bin: &self.server_bin,
            launch: self.launch.as_deref(),
            ready: &self.ready,
            tokenize: &self.tokenize,
            ollama_serve: self.ollama_serve.as_deref(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct RunFile {
    pub schema_version: u32,
    pub o3_version: String,
    pub created_unix_ns: u64,
    pub target: Target,
    pub config: Config,
    pub config_notices: Vec<String>,
    pub shape: ModelShape,
    pub model_digest: String,
    pub host: Host,
    pub capacity_bytes: Option<u64>,
    /// What learning decided at the start (kept so a resumed run decides the same).
    pub learned: Option<search::Learned>,
    pub learning_notes: Vec<String>,
    pub start_context: Option<u32>,
    #[serde(default)]
    pub gallop: bool,
    /// Earlier spans of work of this model on this host (the time model's start), kept so a
    /// resumed run plans the same.
    #[serde(default)]
    pub time_seed: Vec<crate::timing::Obs>,
    /// The results database and this run's ids in it (`None`: not stored).
    #[serde(default)]
    pub store: Option<StoreRef>,
    /// What the server binary says of itself (`llama-server --version`), for the run header.
    #[serde(default)]
    pub server_version: Option<String>,
    /// The variants compared (`variants.*`), with the memory model's predictions for each
    /// (empty: none compared).
    #[serde(default)]
    pub variants: Vec<search::VariantIn>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StoreRef {
    pub db: PathBuf,
    pub run_id: i64,
    pub host_id: String,
    pub model_id: String,
}

impl RunFile {
    /// A new run's file: the target, its configuration, and the facts of the model and the
    /// host; learning has decided nothing yet.
    pub(super) fn new(
        target: Target,
        loaded: config::Loaded,
        roots: &Roots,
        server_version: Option<String>,
    ) -> RunFile {
        let (shape, model_digest) = facts::model(&target);
        let (host, capacity_bytes) = facts::host(roots, target.simulate.as_ref());
        let variants = if loaded.config.variants.any() || target.server_bins.len() > 1 {
            search::expand_variants(&loaded.config.variants, &target.base, &target.server_bins)
                .into_iter()
                .map(|base| search::VariantIn {
                    base,
                    predicted: None,
                    pruned: None,
                })
                .collect()
        } else {
            Vec::new()
        };
        RunFile {
            schema_version: SCHEMA_VERSION,
            o3_version: env!("CARGO_PKG_VERSION").into(),
            created_unix_ns: crate::util::system::unix_now_ns(),
            target,
            config: loaded.config,
            config_notices: loaded.notices,
            shape,
            model_digest,
            host,
            capacity_bytes,
            learned: None,
            learning_notes: Vec::new(),
            start_context: None,
            gallop: false,
            time_seed: Vec::new(),
            store: None,
            server_version,
            variants,
        }
    }
}

/// The run in `dir`, as its run.json describes it.
pub(super) fn resume(dir: &Path) -> Result<(PathBuf, RunFile), RunError> {
    let path = dir.join("run.json");
    let text = std::fs::read_to_string(&path).map_err(|source| RunError::NoRunFile {
        path: path.clone(),
        dir: dir.to_path_buf(),
        source,
    })?;
    let rf = serde_json::from_str(&text).map_err(|source| RunError::BadRunFile { path, source })?;
    Ok((dir.to_path_buf(), rf))
}

/// A new run: its inputs checked, the store opened, the facts gathered, learning decided, and
/// run.json written (before any server starts: a bad `--out` fails first).
pub(super) fn create(
    n: &NewRun,
    roots: &Roots,
    req: &Request,
) -> Result<(PathBuf, RunFile), RunError> {
    let loaded = load_config(n.config.as_deref())?;
    let simulate = load_sim(n.simulate.as_deref(), &loaded.config)?;
    let target = Target::new(n, simulate);
    let dir = new_dir(n.out.as_deref(), &target.model)?;
    check_model_file(&target)?;
    let passed = match target.simulate {
        Some(_) => preflight::Passed::default(),
        None => preflight::check(&target.flags())?,
    };
    check_builds(&target, &loaded.config)?;
    let opened = learning::open_store(n.db.as_deref(), &loaded.config)?;
    let mut rf = RunFile::new(target, loaded, roots, passed.server_version);
    std::fs::create_dir_all(&dir).map_err(|e| RunError::io("create", &dir, e))?;
    learning::at_start(&mut rf, &dir, opened, req)?;
    let text = serde_json::to_string_pretty(&rf).expect("run file serialises");
    write_file(&dir.join("run.json"), text.as_bytes())?;
    Ok((dir, rf))
}

/// Builds compared only with llama-server, each one a binary that runs, and no more variants
/// than `variants.max_variants`.
fn check_builds(target: &Target, c: &Config) -> Result<(), RunError> {
    let bins = &target.server_bins;
    if bins.len() < 2 {
        return Ok(());
    }
    if target.simulate.is_none()
        && target.backend != crate::optimize::target::BackendKind::LlamaServer
    {
        return Err(RunError::Variants(format!(
            "--server-bin is given {} times, but only llama-server builds can be compared: give it once, or use --backend llama-server",
            bins.len()
        )));
    }
    let n = c.variants.count() * bins.len();
    if n > c.variants.max_variants as usize {
        return Err(RunError::Variants(format!(
            "{} builds × {} variants of the configuration make {n} variants, more than variants.max_variants ({}): give fewer --server-bin or shorten the variants.* lists",
            bins.len(),
            c.variants.count(),
            c.variants.max_variants
        )));
    }
    if target.simulate.is_none() {
        for b in &bins[1..] {
            let t = Target {
                server_bin: b.clone(),
                ..target.clone()
            };
            preflight::check(&t.flags())?;
        }
    }
    Ok(())
}

/// The configuration file, or the defaults.
fn load_config(path: Option<&Path>) -> Result<config::Loaded, RunError> {
    match path {
        Some(p) => config::load(p).map_err(RunError::Config),
        None => Ok(config::Loaded {
            config: Config::default(),
            layout: config::Layout::Current,
            notices: Vec::new(),
        }),
    }
}

/// The simulated server's description, generating as many tokens as the configuration asks.
fn load_sim(path: Option<&Path>, c: &Config) -> Result<Option<SimModel>, RunError> {
    let Some(p) = path else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(p).map_err(|source| RunError::SimRead {
        path: p.to_path_buf(),
        source,
    })?;
    let mut m: SimModel = serde_json::from_str(&text).map_err(|source| RunError::SimParse {
        path: p.to_path_buf(),
        source,
    })?;
    m.output_tokens = c.prompt.output_tokens;
    Ok(Some(m))
}

/// The new run's directory: `--out`, else one named after the model and the time under the
/// data directory; one that holds a run already is refused.
fn new_dir(out: Option<&Path>, model: &str) -> Result<PathBuf, RunError> {
    let dir = out.map(Path::to_path_buf).unwrap_or_else(|| {
        let secs = crate::util::system::unix_now_ns() / 1_000_000_000;
        data_dir()
            .join("runs")
            .join(format!("{}-{secs}", slug(model)))
    });
    if dir.join("journal.jsonl").exists() {
        return Err(RunError::AlreadyARun { dir });
    }
    Ok(dir)
}

fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("o3");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".local/share/o3")
}

/// A model name or path as a file name: its stem, every character but `[A-Za-z0-9.-]` an `_`.
fn slug(model: &str) -> String {
    let base = Path::new(model)
        .file_stem()
        .map_or(model.to_string(), |s| s.to_string_lossy().into_owned());
    base.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The model file a launched llama-server or template would load must be a complete GGUF
/// file (`o3 probe`'s check), and for llama-server it must exist: a whole run is not spent on
/// load failures that a missing file makes certain.
fn check_model_file(t: &Target) -> Result<(), RunError> {
    if t.simulate.is_some() {
        return Ok(());
    }
    let p = Path::new(&t.model);
    if t.backend == BackendKind::LlamaServer && !p.exists() {
        crate::learn::gguf::read(p)?;
    }
    Ok(target::check_model_file(t.backend, &t.model)?)
}

/// Writes a file atomically (temp file, fsync, rename).
pub(super) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| RunError::io("create", &tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| RunError::io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| RunError::io("rename", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slug_is_the_file_stem_in_safe_characters() {
        assert_eq!(
            slug("/models/Qwen3-30B-A3B-Q4_K_M.gguf"),
            "Qwen3-30B-A3B-Q4_K_M"
        );
        assert_eq!(slug("qwen3:30b-a3b"), "qwen3_30b-a3b");
        assert_eq!(slug("sim llama/8b"), "8b");
    }

    #[test]
    fn a_directory_that_holds_a_journal_is_not_a_new_run() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(new_dir(Some(d.path()), "m").unwrap(), d.path());
        std::fs::write(d.path().join("journal.jsonl"), "").unwrap();
        let e = new_dir(Some(d.path()), "m").unwrap_err();
        assert!(
            e.is_usage() && e.to_string().contains("already holds a run"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_run_file_says_what_a_run_directory_is() {
        let d = tempfile::tempdir().unwrap();
        let e = resume(d.path()).unwrap_err();
        assert!(e.is_usage());
        assert!(
            e.to_string().contains("a run directory of `o3 optimize`"),
            "{e}"
        );
        std::fs::write(d.path().join("run.json"), "{}").unwrap();
        let e = resume(d.path()).unwrap_err();
        assert!(
            e.to_string().contains("is not a run file o3 can resume"),
            "{e}"
        );
    }
}
