//! `o3 doctor`: what this machine offers o3, each check with what is lost without it, then a
//! verdict line. The checks are [`crate::telemetry::doctor`]'s; this prints them.

use crate::telemetry::doctor::{self, Check};

use super::{CliResult, Roots};

const AFTER_HELP: &str = "Exit status: 0 when the exact path is available (o3 runs as root and \
its eBPF programs load and attach), 1 otherwise (o3 still works, with peaks from procfs \
polling); the last line says which.";

#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct DoctorArgs {
    /// Print the checks as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// The llama-server binary to check (a name looked up in PATH, or a path).
    #[arg(long, value_name = "PATH", default_value = "llama-server")]
    pub server_bin: String,
    /// The Ollama server to ask for its version (GET /api/version).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:11434")]
    pub url: String,
}

pub fn run(roots: &Roots, a: DoctorArgs) -> CliResult {
    let mut checks = doctor::checks(doctor::Roots {
        sysfs: &roots.sysfs_root,
        procfs: &roots.procfs_root,
        dev: &roots.dev_root,
    });
    checks.extend(doctor::server_checks(&a.server_bin, &a.url));
    let verdict = doctor::verdict(&checks);
    if a.json {
        let v = serde_json::json!({
            "schema_version": 1,
            "checks": checks,
            "exact": verdict.exact,
            "verdict": verdict.line,
        });
        println!("{v}");
    } else {
        for c in &checks {
            println!("{}", line(c));
        }
        println!("{}", verdict.line);
    }
    Ok(if verdict.exact { 0 } else { 1 })
}

/// `[ok] tracefs     mounted at /sys/kernel/tracing`.
fn line(c: &Check) -> String {
    format!(
        "{} {:<11} {}",
        if c.ok { "[ok]" } else { "[--]" },
        c.name,
        c.detail
    )
}
