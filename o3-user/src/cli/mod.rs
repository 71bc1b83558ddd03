//! Command line: one file per subcommand, thin; the work is in the stages below.

mod accuracy;
mod analyze;
mod config;
mod docs;
mod doctor;
mod export;
mod history;
mod import_legacy;
mod monitor;
mod optimize;
mod predict;
mod probe;
mod profiles;
mod record;
mod report;
mod stdout;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Global flags shared by every subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct Roots {
    /// Where procfs is mounted (run inside a container with the host's /proc mounted elsewhere,
    /// or point at a fixture tree).
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        default_value = "/proc",
        help_heading = "Global options"
    )]
    pub procfs_root: PathBuf,
    /// Where sysfs is mounted (tracefs is expected at <DIR>/kernel/tracing).
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        default_value = "/sys",
        help_heading = "Global options"
    )]
    pub sysfs_root: PathBuf,
    /// Where device nodes are (render nodes are expected at <DIR>/dri/renderD*).
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        default_value = "/dev",
        help_heading = "Global options"
    )]
    pub dev_root: PathBuf,
}

/// GPU selection shared by the commands that read GPUs.
#[derive(Debug, Clone, clap::Args)]
pub struct GpuArg {
    /// Which GPUs to read: auto, amd, nvidia, none, or a device index from `o3 doctor`.
    #[arg(long, value_name = "SEL", default_value = "auto")]
    pub gpu: crate::telemetry::gpu::source::GpuSelect,
}

#[derive(Debug, Parser)]
#[command(
    name = "o3",
    version,
    about = "Find the best serving configuration of a local LLM and measure peak resources exactly"
)]
pub struct Cli {
    #[command(flatten)]
    pub roots: Roots,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command (or attach to a process tree) and report its exact peak memory and CPU.
    Record(record::RecordArgs),
    /// Measure one serving configuration of an LLM server and print one result row.
    Probe(Box<probe::ProbeArgs>),
    /// Find the best configurations of a model on this machine: the largest stable context,
    /// batch, concurrency, and presets (resumable).
    Optimize(Box<optimize::OptimizeArgs>),
    /// Live system and GPU view (one line per refresh, JSON lines, a Prometheus endpoint, or a
    /// full-screen view with --tui).
    Monitor(monitor::MonitorArgs),
    /// Check what this machine offers o3 (root, bpf(), tracefs, BTF, tracepoints, kprobes, GPUs,
    /// llama-server, Ollama); exits 0 only with the exact path (root + eBPF).
    Doctor(doctor::DoctorArgs),
    /// Check a configuration file or print the default one.
    Config(config::ConfigArgs),
    /// Predict one configuration before running it: the memory model's estimate term by
    /// term, P(success), expected rates, and why.
    Predict(predict::PredictArgs),
    /// List the runs in the results store per host and model (imported legacy runs are marked
    /// untrusted).
    History(history::HistoryArgs),
    /// How good the predictions are, per model in the results store: the memory model's error
    /// on measured peaks and on contexts held out, the rates' error and the Brier score of
    /// P(success), each record predicted without it.
    Accuracy(accuracy::AccuracyArgs),
    /// List the hosts in the results store and the best presets learned per model.
    Profiles(profiles::ProfilesArgs),
    /// Import the legacy O3 tool's logs/*.jsonl and defaults/*.yaml into the results store, as
    /// untrusted results.
    ImportLegacy(import_legacy::ImportLegacyArgs),
    /// Export a trace file as CSV (one row per sample), Chrome trace-event JSON for
    /// ui.perfetto.dev, or Parquet for DuckDB, Polars or Spark.
    Export(export::ExportArgs),
    /// Summarise a trace file offline: peaks with their time, percentiles, time above the
    /// safety thresholds, CPU per process, the recording's overhead.
    Analyze(analyze::AnalyzeArgs),
    /// Report on an `o3 optimize` run directory: Markdown with SVG plots, or one
    /// self-contained HTML page.
    Report(report::ReportArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions(docs::CompletionsArgs),
    /// Write the man pages (o3.1 and one o3-<subcommand>.1 per subcommand) into DIR, creating
    /// it (used by `cargo xtask dist-docs`).
    #[command(hide = true)]
    Manpages(docs::ManpagesArgs),
}

/// Parses arguments, runs the subcommand, returns the process exit status.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
                || matches!(
                    e.kind(),
                    ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                )
            {
                let _ = e.print();
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    2
                } else {
                    0
                };
            }
            let args: Vec<String> = std::env::args().skip(1).collect();
            eprintln!("o3: {}", usage_line(&e.render().to_string(), &args));
            return 2;
        }
    };
    let result = match cli.command {
        Command::Record(a) => record::run(&cli.roots, a),
        Command::Monitor(a) => monitor::run(&cli.roots, a),
        Command::Probe(a) => probe::run(&cli.roots, *a),
        Command::Optimize(a) => optimize::run(&cli.roots, *a),
        Command::Doctor(a) => doctor::run(&cli.roots, a),
        Command::Config(a) => config::run(&cli.roots, a),
        Command::Predict(a) => predict::run(&cli.roots, a),
        Command::History(a) => history::run(&cli.roots, a),
        Command::Accuracy(a) => accuracy::run(&cli.roots, a),
        Command::Profiles(a) => profiles::run(&cli.roots, a),
        Command::ImportLegacy(a) => import_legacy::run(&cli.roots, a),
        Command::Export(a) => export::run(&cli.roots, a),
        Command::Analyze(a) => analyze::run(&cli.roots, a),
        Command::Report(a) => report::run(&cli.roots, a),
        Command::Completions(a) => docs::completions(&cli.roots, a),
        Command::Manpages(a) => docs::manpages(&cli.roots, a),
    };
    match result {
        Ok(code) => code,
        Err((e, code)) => {
            eprintln!("o3: {}", one_reason(&e));
            code
        }
    }
}

/// clap's usage error on one line, with all it says: the missing arguments' names, the
/// possible values, its suggestion, and which `--help` says the rest.
fn usage_line(rendered: &str, args: &[String]) -> String {
    let mut parts: Vec<String> = Vec::new();
    // The subcommand named on the command line, where clap's text has no usage line.
    let mut command = {
        use clap::CommandFactory;
        let cli = Cli::command();
        match args
            .iter()
            .find(|a| cli.get_subcommands().any(|s| s.get_name() == a.as_str()))
        {
            Some(sub) => format!("o3 {sub}"),
            None => "o3".to_string(),
        }
    };
    for line in rendered.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(usage) = line.strip_prefix("Usage: ") {
            command = usage
                .split_whitespace()
                .take_while(|w| !w.starts_with(['-', '<', '[']))
                .collect::<Vec<_>>()
                .join(" ");
        } else if !line.starts_with("For more information") {
            parts.push(line.strip_prefix("error: ").unwrap_or(line).to_string());
        }
    }
    let what = match parts.split_first() {
        // A list under a line ending in ':' (the missing arguments) joins that line.
        Some((head, rest)) if head.ends_with(':') => format!("{head} {}", rest.join(", ")),
        Some((head, rest)) if !rest.is_empty() => format!("{head}; {}", rest.join("; ")),
        Some((head, _)) => head.clone(),
        None => "invalid arguments".into(),
    };
    format!("{what} (see `{command} --help`)")
}

/// An error and its causes on one line, each reason once: a message that already quotes its
/// cause (most do, to read well on their own) is not followed by the cause again.
pub fn one_reason(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

/// A subcommand's failure: the message and o3's exit status.
pub type CliResult = Result<i32, (anyhow::Error, i32)>;

#[cfg(test)]
mod tests {
    use super::{one_reason, usage_line, Cli};

    fn usage_error(args: &[&str]) -> String {
        use clap::Parser;
        let e = Cli::try_parse_from(args).expect_err("a usage error");
        let rest: Vec<String> = args[1..].iter().map(|a| (*a).to_string()).collect();
        usage_line(&e.render().to_string(), &rest)
    }

    #[test]
    fn a_usage_error_is_one_line_with_all_clap_says() {
        let missing = usage_error(&["o3", "predict"]);
        assert!(
            missing.starts_with("the following required arguments were not provided: --"),
            "{missing}"
        );
        assert!(missing.ends_with("(see `o3 predict --help`)"), "{missing}");
        let bad = usage_error(&["o3", "record", "--method", "bogus", "--", "true"]);
        assert!(bad.contains("'bogus'"), "{bad}");
        assert!(bad.contains("auto, ebpf, procfs"), "{bad}");
        assert!(bad.ends_with("(see `o3 record --help`)"), "{bad}");
        let typo = usage_error(&["o3", "recrod"]);
        assert!(typo.contains("'record'"), "{typo}");
        assert!(typo.ends_with("(see `o3 --help`)"), "{typo}");
        for e in [missing, bad, typo] {
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot create /x: {source}")]
    struct Quoting {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn each_reason_is_said_once() {
        let io = || std::io::Error::from_raw_os_error(nix::errno::Errno::EEXIST as i32);
        let e = anyhow::Error::new(Quoting { source: io() }).context("writing the run");
        let text = one_reason(&e);
        assert_eq!(text.matches("File exists").count(), 1, "{text}");
        assert!(
            text.starts_with("writing the run: cannot create /x"),
            "{text}"
        );
        // A cause the message does not quote is still shown.
        let e = anyhow::Error::new(io()).context("cannot create /y");
        assert_eq!(one_reason(&e), format!("cannot create /y: {}", io()));
    }
}
