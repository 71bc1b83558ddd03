//! Installs what building o3 needs on a fresh machine, idempotently:
//! - rust-src (the kernel programs build `core` for bpfel-unknown-none);
//! - bpf-linker, built from crates.io against the LLVM that ships inside this rustc, with the
//!   LLVM feature derived from `rustc -vV`; cached under ~/.cache/o3 with a stamp, so a second
//!   run is instant and a toolchain change rebuilds it;
//! - a real OpenAI-compatible LLM server for the tests: PyPI llama-cpp-python (which compiles
//!   llama.cpp from source, 5-6 minutes on 2 cores) in a venv at ~/.cache/o3/venv, and a tiny
//!   random-weight llama GGUF model made by tests/server/make_model.py at
//!   ~/.cache/o3/models/o3-tiny-llama.gguf; each keyed by a stamp file (the pins; the script's
//!   sha256), so a second run is instant.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{root, run};

const BPF_LINKER_VERSION: &str = "0.13.0";

fn cache_dir() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/o3"))
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// (LLVM major, commit hash) of the active rustc.
fn rustc_llvm() -> Result<(u32, String)> {
    let v = output(Command::new("rustc").arg("-vV"))?;
    let field = |k: &str| {
        v.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|s| s.trim().to_string())
    };
    let llvm = field("LLVM version:").context("`rustc -vV` has no LLVM version line")?;
    let major = llvm
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("unexpected LLVM version `{llvm}`"))?;
    Ok((major, field("commit-hash:").unwrap_or_default()))
}

fn sysroot() -> Result<PathBuf> {
    Ok(PathBuf::from(
        output(Command::new("rustc").args(["--print", "sysroot"]))?.trim(),
    ))
}

fn rust_src() -> Result<()> {
    let core = sysroot()?.join("lib/rustlib/src/rust/library/core");
    if core.is_dir() {
        return Ok(());
    }
    run(Command::new("rustup").args(["component", "add", "rust-src"]))
}

/// The directory holding the installed bpf-linker binary.
pub fn bpf_linker_bin() -> Result<PathBuf> {
    Ok(cache_dir()?.join("bpf-linker/bin"))
}

fn bpf_linker() -> Result<()> {
    let (major, commit) = rustc_llvm()?;
    let dir = cache_dir()?.join("bpf-linker");
    let stamp_file = dir.join("stamp");
    let stamp = format!("bpf-linker {BPF_LINKER_VERSION} llvm-{major} rustc {commit}\n");
    if bpf_linker_bin()?.join("bpf-linker").is_file()
        && std::fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp)
    {
        return Ok(());
    }
    // bpf-linker links against libLLVM; use the one inside the toolchain so both agree.
    let lib = sysroot()?.join("lib");
    let llvm_so = std::fs::read_dir(&lib)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        })
        .with_context(|| format!("no libLLVM.so.*-rust-* in {}", lib.display()))?;
    let prefix = cache_dir()?.join("llvm-prefix");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in [
        "libLLVM.so".to_string(),
        llvm_so.file_name().unwrap().to_string_lossy().into_owned(),
    ] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm_so, &link)?;
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM {major} (about a minute, once)");
    run(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args([
                "install",
                "--force",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .arg("--root")
            .arg(&dir)
            .env("LLVM_PREFIX", &prefix),
    )?;
    std::fs::write(&stamp_file, stamp)?;
    Ok(())
}

/// The Python packages of the test server's venv, pinned. Changing one reinstalls them.
const LLAMA_CPP_PYTHON: &str = "llama-cpp-python[server]==0.3.36";
const GGUF: &str = "gguf==0.19.0";
const NUMPY: &str = "numpy==2.2.6";
/// Portable llama.cpp build: no -march=native, so the cached venv survives a change of CPU.
const CMAKE_ARGS: &str = "-DGGML_NATIVE=OFF";
const MODEL_NAME: &str = "o3-tiny-llama";

/// A real OpenAI-compatible LLM server for tests: start it as
/// `<python> -m llama_cpp.server --model <model> --n_ctx N --host 127.0.0.1 --port P`.
pub struct TestServer {
    /// The venv's python, with llama-cpp-python[server], gguf and numpy installed.
    pub python: PathBuf,
    /// A tiny random-weight llama GGUF model (trained context 131072), made by
    /// tests/server/make_model.py.
    pub model: PathBuf,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `python3 -m venv DIR`; where the venv module or ensurepip is missing, installs Debian's
/// python3-venv when root, else says what to install.
fn make_venv(dir: &Path) -> Result<()> {
    let create = || -> Result<()> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("removing the broken venv {}", dir.display()))?;
        }
        eprintln!("xtask: creating a Python venv at {}", dir.display());
        output(Command::new("python3").args(["-m", "venv"]).arg(dir)).map(drop)
    };
    let Err(e) = create() else {
        return Ok(());
    };
    if !(is_root() && Path::new("/etc/debian_version").exists()) {
        bail!(
            "`python3 -m venv` failed: install python3 with its venv module and ensurepip (Debian: apt-get install python3-venv) ({})",
            format!("{e:#}").lines().last().unwrap_or_default()
        );
    }
    eprintln!(
        "xtask: `python3 -m venv` failed ({}); installing Debian's python3-venv",
        format!("{e:#}").trim()
    );
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get").args(["install", "-y", "python3", "python3-venv"]))?;
    create()
}

/// The venv at ~/.cache/o3/venv with the pinned packages; returns its python.
fn server_venv() -> Result<PathBuf> {
    let dir = cache_dir()?.join("venv");
    let python = dir.join("bin/python");
    let stamp_file = dir.join("o3-stamp");
    let stamp = format!("{LLAMA_CPP_PYTHON} {GGUF} {NUMPY} CMAKE_ARGS={CMAKE_ARGS}\n");
    // is_file follows the symlink: false when the python the venv was made from is gone.
    if python.is_file() && std::fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp) {
        return Ok(python);
    }
    if !python.is_file() {
        make_venv(&dir)?;
    }
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    eprintln!("xtask: building llama-cpp-python (about 6 minutes on 2 cores, once)");
    let started = std::time::Instant::now();
    run(Command::new(&python)
        .args(["-m", "pip", "install", "--disable-pip-version-check"])
        .args([LLAMA_CPP_PYTHON, GGUF, NUMPY])
        .env("CMAKE_ARGS", CMAKE_ARGS)
        .env("CMAKE_BUILD_PARALLEL_LEVEL", jobs.to_string()))
    .context("installing llama-cpp-python (it compiles llama.cpp: needs gcc and g++)")?;
    eprintln!(
        "xtask: llama-cpp-python installed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    std::fs::write(&stamp_file, stamp)?;
    Ok(python)
}

/// The test model, regenerated when tests/server/make_model.py or the pins change.
fn test_model(python: &Path) -> Result<PathBuf> {
    let script = root().join("tests/server/make_model.py");
    let dir = cache_dir()?.join("models");
    let model = dir.join(format!("{MODEL_NAME}.gguf"));
    let stamp_file = dir.join(format!("{MODEL_NAME}.stamp"));
    let sha = output(
        Command::new(python)
            .args([
                "-c",
                "import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], 'rb').read()).hexdigest())",
            ])
            .arg(&script),
    )?;
    let stamp = format!("make_model.py sha256 {} {GGUF} {NUMPY}\n", sha.trim());
    if model.is_file() && std::fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp) {
        return Ok(model);
    }
    std::fs::create_dir_all(&dir)?;
    eprintln!("xtask: generating the test model {}", model.display());
    run(Command::new(python).arg(&script).arg(&model))?;
    std::fs::write(&stamp_file, stamp)?;
    Ok(model)
}

/// Installs (once) and returns the real LLM server the tests run against.
pub fn test_server() -> Result<TestServer> {
    let python = server_venv()?;
    let model = test_model(&python)?;
    Ok(TestServer { python, model })
}

pub fn setup() -> Result<()> {
    rust_src()?;
    bpf_linker()?;
    test_server().map(drop)
}
