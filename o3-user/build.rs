//! Builds the kernel programs (`o3-ebpf`, target bpfel-unknown-none) and leaves the object in
//! OUT_DIR, where `telemetry::ebpf` embeds it. Needs rust-src and bpf-linker: `cargo xtask
//! setup` installs both (bpf-linker into ~/.cache/o3/bpf-linker/bin, which is searched here).

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

fn find_in(path: &OsString, exe: &str) -> Option<PathBuf> {
    env::split_paths(path)
        .map(|d| d.join(exe))
        .find(|p| p.is_file())
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest.parent().expect("workspace root").to_path_buf();
    for p in [
        "o3-ebpf/src",
        "o3-ebpf/Cargo.toml",
        "o3-common/src",
        "o3-common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    println!("cargo:rerun-if-env-changed=O3_BPF_LINKER_DIR");

    let mut dirs = Vec::new();
    if let Some(d) = env::var_os("O3_BPF_LINKER_DIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Some(home) = env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cache/o3/bpf-linker/bin"));
    }
    let mut all = dirs.clone();
    all.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    let path = env::join_paths(&all).expect("PATH entries without ':'");
    assert!(find_in(&path, "bpf-linker").is_some(), 
        "bpf-linker not found (searched {} and PATH): run `cargo xtask setup`, which installs rust-src and bpf-linker",
        dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
    );

    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    let target_dir = root.join("target/ebpf");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root.join("o3-ebpf"))
        .args([
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--bin",
            "o3-ebpf",
            "--target-dir",
        ])
        .arg(&target_dir)
        .env("PATH", &path)
        // build-std on the stable toolchain; the same compiler builds the user side.
        .env("RUSTC_BOOTSTRAP", "1")
        // cpu v3: atomic add/exchange/compare-exchange (Linux >= 5.12).
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!("-Ctarget-cpu=v3\x1f--cfg=bpf_target_arch=\"{arch}\""),
        );
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running cargo for o3-ebpf: {e}"));
    assert!(
        status.success(),
        "building the kernel programs (o3-ebpf) failed: see the errors above"
    );
    let obj = target_dir.join("bpfel-unknown-none/release/o3-ebpf");
    std::fs::copy(&obj, out.join("o3-ebpf"))
        .unwrap_or_else(|e| panic!("copying {}: {e}", obj.display()));
}
