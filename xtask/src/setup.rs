//! Installs what building o3 needs on a fresh machine, idempotently:
//! - rust-src (the kernel programs build `core` for bpfel-unknown-none);
//! - bpf-linker, built from crates.io against the LLVM that ships inside this rustc, with the
//!   LLVM feature derived from `rustc -vV`; cached under ~/.cache/o3 with a stamp, so a second
//!   run is instant and a toolchain change rebuilds it.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::run;

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

pub fn setup() -> Result<()> {
    rust_src()?;
    bpf_linker()
}
