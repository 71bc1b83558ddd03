//! `o3 doctor`: what this machine offers o3, each check with what is lost without it. The
//! checks are [`crate::telemetry::doctor`]'s; this prints them.

use crate::telemetry::doctor::{self, Check};

use super::{CliResult, Roots};

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Print the checks as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(roots: &Roots, a: DoctorArgs) -> CliResult {
    let checks = doctor::checks(doctor::Roots {
        sysfs: &roots.sysfs_root,
        procfs: &roots.procfs_root,
        dev: &roots.dev_root,
    });
    if a.json {
        let v = serde_json::json!({ "schema_version": 1, "checks": checks });
        println!("{v}");
    } else {
        for c in &checks {
            println!("{}", line(c));
        }
    }
    Ok(0)
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
