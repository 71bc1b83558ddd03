//! `o3 config`: check a configuration file, or print the documented default one.

use std::path::PathBuf;

use serde::Serialize;

use crate::config::{self, Config, Layout};

use super::{CliResult, Roots};

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Check a file (current or legacy o3_ai_config.yaml layout): `FILE: ok` and any notices,
    /// or one line saying what is wrong and where (exit status 2).
    Check {
        /// The configuration file (YAML).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Print the effective configuration (defaults filled in, legacy keys mapped) as one
        /// JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Print the default configuration, every key documented.
    Default,
}

/// What `o3 config check --json` prints.
#[derive(Debug, Serialize)]
struct Report<'a> {
    schema_version: u32,
    file: String,
    layout: Layout,
    notices: &'a [String],
    config: &'a Config,
}

pub fn run(_roots: &Roots, a: ConfigArgs) -> CliResult {
    match a.action {
        Action::Default => {
            super::stdout::print(config::default_yaml())?;
            Ok(0)
        }
        Action::Check { file, json } => {
            // Bad input, like a bad argument: exit status 2.
            let loaded = config::load(&file).map_err(|e| (anyhow::Error::new(e), 2))?;
            let name = file.display().to_string();
            if json {
                let report = Report {
                    schema_version: 1,
                    file: name,
                    layout: loaded.layout,
                    notices: &loaded.notices,
                    config: &loaded.config,
                };
                super::stdout::line(
                    serde_json::to_string(&report).expect("a configuration serialises"),
                )?;
            } else {
                super::stdout::line(format!("{name}: ok ({} layout)", loaded.layout.as_str()))?;
                for n in &loaded.notices {
                    super::stdout::line(format!("notice: {n}"))?;
                }
            }
            Ok(0)
        }
    }
}
