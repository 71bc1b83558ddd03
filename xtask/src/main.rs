//! o3's build automation. `cargo xtask <task>`:
//!
//!   setup          install what building and testing need: rust-src, bpf-linker (matching
//!                  rustc's LLVM), and real LLM servers for the tests (llama-cpp-python in
//!                  ~/.cache/o3/venv, llama.cpp's llama-server, a tiny GGUF model; see
//!                  tests/server/README.md), DuckDB and Chromium to check exports and reports
//!   run            setup, build, and run the main job end to end on this machine
//!   test           setup, then the whole test suite (eBPF tests need root; CI requires them)
//!   lint           clippy with warnings as errors over the user side (all targets) and over
//!                  the kernel programs (o3-ebpf, built for bpfel-unknown-none on its own)
//!   faults         setup, then the fault suite: the real o3 binary killed, interrupted, given a
//!                  crashed or stopped server, a full disk, a damaged store or journal, fuzzed
//!                  inputs, a shared store and recordings at once; one row per scenario and a
//!                  closing `N scenarios, M survived: L lost, O orphans, H hangs, P panics`,
//!                  failing on any of them (root for the full disk; docs/faults.md);
//!                  `faults NAME...` runs the scenarios whose names contain a NAME
//!   bench record   measure o3 record's overhead and peak accuracy -> docs/benchmarks.md
//!   bench learn    probes learning saves and prediction accuracy on simulated machines
//!                  -> docs/benchmarks.md
//!   server         setup, then serve the test model in the foreground (OpenAI-compatible, at
//!                  http://127.0.0.1:8000/v1) for manual use
//!   dist-docs      build the release binary and write its shell completions and man pages
//!                  into target/dist/completions and target/dist/man
//!
//! Nothing here depends on o3 itself, so it builds on a fresh machine before anything else.

mod bench;
mod bench_learn;
mod bench_optimize;
mod bench_variants;
mod faults;
mod setup;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

/// The workspace root (xtask's parent directory).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs a command, echoing it, and fails with its exit status.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} failed with {status}", cmd.get_program());
    }
    Ok(())
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    c
}

/// Builds the release binaries and returns their directory.
pub fn build_release() -> Result<PathBuf> {
    run(cargo().args(["build", "--release", "-p", "o3-user", "--bins"]))?;
    Ok(root().join("target/release"))
}

fn main_job() -> Result<()> {
    setup::setup()?;
    let bin = build_release()?;
    let o3 = bin.join("o3");
    // Exits 1 without the exact path (root + eBPF), which the recording below needs.
    run(Command::new(&o3).arg("doctor"))?;
    let out_dir = root().join("target/o3-run");
    std::fs::create_dir_all(&out_dir)?;
    let trace = out_dir.join("record.jsonl");
    let workload = bin.join("o3-workload");
    // A real process tree: a shell that starts two children holding 64 MiB each at the same
    // time, then a process that allocates and frees 128 MiB in 1 ms spikes, then a CPU burner
    // on two threads.
    let script = format!(
        "{w} tree --children 2 --mib 64 --hold-ms 200 && {w} spike --mib 128 --hold-us 1000 --repeat 20 && {w} cpu --threads 2 --ms 500",
        w = workload.display()
    );
    run(Command::new(&o3)
        .args(["record", "--interval", "10ms", "--out"])
        .arg(&trace)
        .args(["--", "sh", "-c", &script]))?;
    eprintln!("xtask: trace written to {}", trace.display());
    // A real optimization: llama.cpp's llama-server serving the tiny test model, doing real
    // inference; the context search, validation, batch and concurrency stages of a short
    // configuration, then presets and the peak resources of the server, measured.
    let server = setup::test_server()?;
    let llama_server = setup::llama_server_bin()?;
    // A results store of its own, emptied first, so the search runs in full; the second run
    // shows learning: it verifies what the first found instead of searching.
    let db = out_dir.join("o3.db");
    for f in ["o3.db", "o3.db-wal", "o3.db-shm"] {
        let _ = std::fs::remove_file(out_dir.join(f));
    }
    for (name, what) in [("optimize", "search"), ("optimize-again", "reuse")] {
        let run_dir = out_dir.join(name);
        let _ = std::fs::remove_dir_all(&run_dir);
        eprintln!("xtask: o3 optimize ({what})");
        run(Command::new(&o3)
            .args(["optimize", "--backend", "llama-server", "--server-bin"])
            .arg(&llama_server)
            .arg("--model")
            .arg(&server.model)
            .arg("--config")
            .arg(root().join("config/short.yaml"))
            .arg("--db")
            .arg(&db)
            .arg("--out")
            .arg(&run_dir))?;
        // `o3 optimize` wrote its report: Markdown with SVG plots and one HTML page.
        eprintln!(
            "xtask: presets in {}, the artefacts to paste in {}, the report in {}",
            run_dir.join("presets.yaml").display(),
            run_dir.join("artefacts").display(),
            run_dir.join("report/report.html").display()
        );
    }
    Ok(())
}

fn test() -> Result<()> {
    setup::setup()?;
    let root_user = nix::unistd::geteuid().is_root();
    if !root_user {
        eprintln!(
            "xtask: not root: the eBPF integration tests will be skipped (each says why); run as root for the full suite"
        );
    }
    let server = setup::test_server()?;
    let llama_server = setup::llama_server_bin()?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--exclude", "o3-ebpf"])
        .env("O3_TEST_PYTHON", &server.python)
        .env("O3_TEST_TOOLS_PYTHON", setup::tools_python()?)
        .env("O3_TEST_CHROMIUM", setup::chromium()?)
        .env("O3_TEST_MODEL", &server.model)
        .env("O3_TEST_LLAMA_SERVER", &llama_server);
    eprintln!("xtask: {cmd:?}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    let stdout = child.stdout.take().expect("piped");
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line?;
        println!("{line}");
        // "test result: ok. 34 passed; 0 failed; 1 ignored; 0 measured; ..."
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(';') {
                let mut w = part.split_whitespace().rev();
                let (Some(kind), Some(n)) = (w.next(), w.next()) else {
                    continue;
                };
                let n: u64 = n.parse().unwrap_or(0);
                match kind {
                    "passed" => passed += n,
                    "failed" => failed += n,
                    "ignored" => ignored += n,
                    _ => {}
                }
            }
        }
    }
    let status = child.wait()?;
    // The Ollama simulator's own self-test (its truth underlies the optimizer's tests).
    let sim = Command::new("python3")
        .args(["-m", "unittest", "tests/sim/test_ollama_sim.py"])
        .current_dir(root())
        .output()
        .context("running python3 for the simulator's self-test")?;
    let sim_err = String::from_utf8_lossy(&sim.stderr);
    eprint!("{sim_err}");
    let sim_ran: u64 = sim_err
        .lines()
        .find_map(|l| {
            l.strip_prefix("Ran ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    if sim.status.success() {
        passed += sim_ran;
    } else {
        failed += sim_ran.max(1);
    }
    println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("cargo test failed with {status}");
    }
    if !sim.status.success() {
        bail!("the simulator's self-test failed");
    }
    Ok(())
}

/// Shell completions and man pages, written by the release binary itself (xtask does not link
/// o3, whose build needs what `setup` installs).
fn dist_docs() -> Result<()> {
    let o3 = build_release()?.join("o3");
    let dist = root().join("target/dist");
    let completions = dist.join("completions");
    std::fs::create_dir_all(&completions)
        .with_context(|| format!("creating {}", completions.display()))?;
    for (shell, file) in [("bash", "o3.bash"), ("zsh", "_o3"), ("fish", "o3.fish")] {
        let mut cmd = Command::new(&o3);
        cmd.args(["completions", shell]);
        eprintln!("xtask: {cmd:?}");
        let out = cmd
            .output()
            .with_context(|| format!("starting {}", o3.display()))?;
        if !out.status.success() {
            bail!(
                "o3 completions {shell} failed with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let path = completions.join(file);
        std::fs::write(&path, &out.stdout)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    // Prints the path of each page it writes.
    run(Command::new(&o3).arg("manpages").arg(dist.join("man")))
}

/// Clippy, warnings as errors: the user side with every target, then the kernel programs on
/// their own (their no_std crate in the same clippy run as the user side would bring two panic
/// handlers). Both honour the workspace lints.
fn lint() -> Result<()> {
    run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    let mut path = vec![setup::bpf_linker_bin()?];
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let mut c = cargo();
    c.current_dir(root().join("o3-ebpf"))
        .args([
            "clippy",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(root().join("target/ebpf"))
        .args(["--", "-D", "warnings"])
        .env("PATH", std::env::join_paths(path)?)
        // build-std on the stable toolchain, as o3-user's build script builds them.
        .env("RUSTC_BOOTSTRAP", "1")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!(
                "-Ctarget-cpu=v3\x1f--cfg=bpf_target_arch=\"{}\"",
                std::env::consts::ARCH
            ),
        );
    for var in [
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        c.env_remove(var);
    }
    run(&mut c)
}

/// Serves the test model in the foreground: this process becomes the server.
fn server() -> Result<()> {
    setup::setup()?;
    let s = setup::test_server()?;
    let mut cmd = Command::new(&s.python);
    cmd.args(["-m", "llama_cpp.server", "--model"])
        .arg(&s.model)
        .args(["--n_ctx", "4096", "--host", "127.0.0.1", "--port", "8000"]);
    eprintln!("xtask: {cmd:?}");
    eprintln!(
        "xtask: serving {} at http://127.0.0.1:8000/v1 (Ctrl-C stops it)",
        s.model.display()
    );
    let err = std::os::unix::process::CommandExt::exec(&mut cmd);
    Err(err).context("starting llama_cpp.server")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["setup"] => setup::setup(),
        ["run"] => main_job(),
        ["test"] => test(),
        ["lint"] => lint(),
        ["faults", only @ ..] => faults::faults(only),
        ["bench", "record"] => bench::record(),
        ["bench", "optimize"] => bench_optimize::optimize_bench(),
        ["bench", "learn"] => bench_learn::learn_bench(),
        ["bench", "variants"] => bench_variants::variants_bench(),
        ["server"] => server(),
        ["dist-docs"] => dist_docs(),
        _ => {
            eprintln!(
                "usage: cargo xtask setup | run | test | lint | faults [SCENARIO]... | bench record|optimize|learn|variants | server | dist-docs"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
