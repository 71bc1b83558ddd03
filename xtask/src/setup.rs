//! Installs what building o3 needs on a fresh machine, idempotently:
//! - rust-src (the kernel programs build `core` for bpfel-unknown-none);
//! - bpf-linker, built from crates.io against the LLVM that ships inside this rustc, with the
//!   LLVM feature derived from `rustc -vV`; cached under ~/.cache/o3 with a stamp, so a second
//!   run is instant and a toolchain change rebuilds it;
//! - a real OpenAI-compatible LLM server for the tests: PyPI llama-cpp-python (which compiles
//!   llama.cpp from source, 5-6 minutes on 2 cores) in a venv at ~/.cache/o3/venv, and a tiny
//!   random-weight llama GGUF model made by tests/server/make_model.py at
//!   ~/.cache/o3/models/o3-tiny-llama.gguf; each keyed by a stamp file (the pins; the script's
//!   sha256), so a second run is instant;
//! - llama.cpp's `llama-server` for the llama-server backend's tests, built with PyPI's cmake
//!   from the llama.cpp vendored in the same llama-cpp-python release's sdist (about 7 minutes
//!   on 2 cores) at ~/.cache/o3/llama-server/bin/llama-server, keyed by a stamp likewise;
//! - the tools the tests read o3's output with (DuckDB, for the Parquet export), a PyPI wheel
//!   in a second venv at ~/.cache/o3/tools-venv, keyed by its own stamp;
//! - a headless browser for the HTML report's test: Debian's chromium package (as root on
//!   Debian; elsewhere install Chromium and set O3_TEST_CHROMIUM to it);
//! - a terminal multiplexer the full-screen `o3 monitor --tui` is driven in by its test:
//!   Debian's tmux package (as root on Debian; elsewhere install tmux in PATH).

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
        llvm_so
            .file_name()
            .expect("found by its file name")
            .to_string_lossy()
            .into_owned(),
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
    nix::unistd::geteuid().is_root()
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
    let jobs = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
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

/// The cmake that builds llama-server, a PyPI wheel installed into the test server's venv
/// (no system cmake needed).
const CMAKE: &str = "cmake==3.31.6";
/// llama-server built from the llama.cpp vendored in llama-cpp-python's sdist, so the two test
/// servers run the same llama.cpp: portable (no -march=native), static libraries, only what
/// the server needs, no HTTPS (no OpenSSL needed) and no web UI (which would be downloaded).
const LLAMA_SERVER_CMAKE_FLAGS: &[&str] = &[
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",
    "-DGGML_CCACHE=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
];

/// The directory (under `dir`) holding llama.cpp's top-level CMakeLists.txt in an extracted
/// llama-cpp-python sdist.
fn vendored_llama_cpp(dir: &Path) -> Result<PathBuf> {
    std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path().join("vendor/llama.cpp"))
        .find(|p| p.join("CMakeLists.txt").is_file())
        .with_context(|| format!("no */vendor/llama.cpp/CMakeLists.txt in {}", dir.display()))
}

/// llama.cpp's `llama-server`, built (once, about 7 minutes on 2 cores) from the llama.cpp
/// sources vendored in the llama-cpp-python sdist pinned for the test server, with cmake from
/// PyPI; cached at ~/.cache/o3/llama-server/bin/llama-server, keyed by a stamp (the sdist and
/// cmake pins, the cmake flags), so a second call is instant.
pub fn llama_server_bin() -> Result<PathBuf> {
    let dir = cache_dir()?.join("llama-server");
    let bin = dir.join("bin/llama-server");
    let stamp_file = dir.join("stamp");
    // The same llama-cpp-python release as the venv's, without the extra.
    let sdist = LLAMA_CPP_PYTHON.replace("[server]", "");
    let stamp = format!("{sdist} {CMAKE} {}\n", LLAMA_SERVER_CMAKE_FLAGS.join(" "));
    if bin.is_file() && std::fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp) {
        return Ok(bin);
    }
    let python = server_venv()?;
    let venv_bin = python
        .parent()
        .context("the venv's python has no directory")?;
    let cmake = venv_bin.join("cmake");
    let jobs = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    eprintln!(
        "xtask: building llama-server from the llama.cpp in {sdist}'s sdist (about 7 minutes on 2 cores, once)"
    );
    let started = std::time::Instant::now();
    run(Command::new(&python)
        .args(["-m", "pip", "install", "--disable-pip-version-check"])
        .args(["--only-binary", "cmake", CMAKE]))
    .context("installing cmake from PyPI into the venv")?;
    // Everything transient lives here, removed first (a run that was interrupted) and last.
    let work = cache_dir()?.join("llama-server-build");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    let download = work.join("sdist");
    let src = work.join("src");
    let build = work.join("build");
    std::fs::create_dir_all(&src)?;
    let archive = download_sdist(&python, venv_bin, &sdist, &download)?;
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(&src))?;
    let llama_cpp = vendored_llama_cpp(&src)?;
    let built = build_llama_server(&cmake, &llama_cpp, &build, jobs)?;
    std::fs::create_dir_all(bin.parent().expect("bin/llama-server has a parent"))?;
    // Copy then rename: a reader never sees half a binary.
    let partial = dir.join("bin/llama-server.partial");
    std::fs::copy(&built, &partial).with_context(|| format!("copying {}", built.display()))?;
    std::fs::rename(&partial, &bin)?;
    std::fs::write(&stamp_file, stamp)?;
    std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    eprintln!(
        "xtask: llama-server built in {:.0} s: {}",
        started.elapsed().as_secs_f64(),
        bin.display()
    );
    Ok(bin)
}

/// Downloads the llama-cpp-python sdist `sdist` into `download` and returns its archive.
fn download_sdist(python: &Path, venv_bin: &Path, sdist: &str, download: &Path) -> Result<PathBuf> {
    // Only llama-cpp-python as an sdist: pip prepares its metadata in an isolated environment,
    // whose build requirements must stay wheels (`:all:` would compile cmake itself). With the
    // venv's cmake first on PATH and Makefiles, scikit-build-core asks for neither cmake nor
    // ninja.
    let path = std::env::join_paths(
        std::iter::once(venv_bin.to_path_buf()).chain(
            std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .unwrap_or_default(),
        ),
    )?;
    run(Command::new(python)
        .args(["-m", "pip", "download", "--disable-pip-version-check"])
        .args(["--no-deps", "--no-binary", "llama-cpp-python", sdist, "-d"])
        .arg(download)
        .env("PATH", &path)
        .env("CMAKE_GENERATOR", "Unix Makefiles"))
    .with_context(|| format!("downloading the {sdist} sdist from PyPI"))?;
    std::fs::read_dir(download)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".tar.gz"))
        .with_context(|| format!("pip downloaded no .tar.gz into {}", download.display()))
}

/// Configures llama.cpp's sources with cmake into `build`, builds its `llama-server` target
/// and returns the binary built.
fn build_llama_server(
    cmake: &Path,
    llama_cpp: &Path,
    build: &Path,
    jobs: usize,
) -> Result<PathBuf> {
    run(Command::new(cmake)
        .arg("-S")
        .arg(llama_cpp)
        .arg("-B")
        .arg(build)
        .args(LLAMA_SERVER_CMAKE_FLAGS))
    .context("configuring llama.cpp (needs gcc and g++)")?;
    run(Command::new(cmake).arg("--build").arg(build).args([
        "--target",
        "llama-server",
        "-j",
        &jobs.to_string(),
    ]))
    .context("building llama-server")?;
    Ok(build.join("bin/llama-server"))
}

/// DuckDB, the independent reader the Parquet export is checked with; a wheel, pinned.
const DUCKDB: &str = "duckdb==2.0.1";

/// The venv at ~/.cache/o3/tools-venv with the pinned tools; returns its python. Separate from
/// the test server's venv, so changing a tool never rebuilds llama-cpp-python.
pub fn tools_python() -> Result<PathBuf> {
    let dir = cache_dir()?.join("tools-venv");
    let python = dir.join("bin/python");
    let stamp_file = dir.join("o3-stamp");
    let stamp = format!("{DUCKDB}\n");
    // is_file follows the symlink: false when the python the venv was made from is gone.
    if python.is_file() && std::fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp) {
        return Ok(python);
    }
    if !python.is_file() {
        make_venv(&dir)?;
    }
    eprintln!("xtask: installing {DUCKDB} into {}", dir.display());
    // Wheels only: building DuckDB from source would take an hour.
    run(Command::new(&python)
        .args(["-m", "pip", "install", "--disable-pip-version-check"])
        .args(["--only-binary", ":all:", DUCKDB]))
    .with_context(|| {
        format!("installing {DUCKDB} from PyPI (needs network and a Python with a DuckDB wheel)")
    })?;
    std::fs::write(&stamp_file, stamp)?;
    Ok(python)
}

/// The browser the HTML report is checked in: $O3_TEST_CHROMIUM, else /usr/bin/chromium,
/// installed from Debian's packages when missing (root on Debian only).
pub fn chromium() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("O3_TEST_CHROMIUM") {
        return Ok(PathBuf::from(p));
    }
    let bin = PathBuf::from("/usr/bin/chromium");
    if bin.is_file() {
        return Ok(bin);
    }
    if !(is_root() && Path::new("/etc/debian_version").exists()) {
        bail!(
            "no /usr/bin/chromium: install Chromium (Debian: apt-get install chromium) or set O3_TEST_CHROMIUM to a Chromium binary"
        );
    }
    eprintln!("xtask: installing Debian's chromium (the HTML report's browser test)");
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "chromium"])
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .context("installing chromium from Debian's packages")?;
    Ok(bin)
}

/// tmux, which the test of `o3 monitor --tui` draws the view in: /usr/bin/tmux, installed from
/// Debian's packages when missing (root on Debian only).
pub fn tmux() -> Result<()> {
    if Path::new("/usr/bin/tmux").is_file() {
        return Ok(());
    }
    if !(is_root() && Path::new("/etc/debian_version").exists()) {
        bail!("no /usr/bin/tmux: install tmux (Debian: apt-get install tmux) so that the test of `o3 monitor --tui` runs");
    }
    eprintln!("xtask: installing Debian's tmux (the test of o3 monitor --tui)");
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "tmux"])
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .context("installing tmux from Debian's packages")
}

pub fn setup() -> Result<()> {
    rust_src()?;
    bpf_linker()?;
    test_server()?;
    tools_python()?;
    chromium()?;
    tmux()?;
    llama_server_bin().map(drop)
}
