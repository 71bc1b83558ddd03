//! `o3 record`.

use crate::telemetry::ebpf::RssProgram;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::record::summary::Processes;
use crate::record::{self, Mode, Options, Target};
use crate::telemetry::sampler::{MAX_INTERVAL, MIN_INTERVAL};
use crate::telemetry::watchdog::Thresholds;
use crate::util::duration;

use super::{CliResult, GpuArg, Roots};

/// Rows of the text summary's process table without --all-processes.
const TOP_COMMANDS: usize = 10;

fn parse_interval(s: &str) -> Result<Duration, duration::DurationError> {
    duration::parse_in_range(s, MIN_INTERVAL, MAX_INTERVAL)
}

fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let d = duration::parse(s)?;
    anyhow::ensure!(!d.is_zero(), "the duration must be longer than 0");
    Ok(d)
}

fn parse_rss_program(s: &str) -> anyhow::Result<RssProgram> {
    RssProgram::parse(s).ok_or_else(|| {
        let all: Vec<&str> = RssProgram::ALL.iter().map(|p| p.name()).collect();
        anyhow::anyhow!("unknown rss program {s:?} (one of: {})", all.join(", "))
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MethodArg {
    /// eBPF when it can load, else procfs polling with a warning (O3_REQUIRE_EBPF=1: eBPF or fail).
    Auto,
    /// eBPF or fail.
    Ebpf,
    /// procfs polling only (peaks between samples are missed).
    Procfs,
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "The summary goes to stderr, like time(1)'s, so the command's own stdout stays clean (--json prints it on stdout instead).\n\nExamples:\n  o3 record -- llama-server -m model.gguf -c 8192\n  o3 record --interval 1ms --out trace.jsonl -- ./bench.sh\n  o3 record --all-processes -- make -j8\n  o3 record --pid 4242 --duration 30s --json"
)]
pub struct RecordArgs {
    /// Sampling interval (1ms to 10s), e.g. 10ms, 500us... peaks are exact with eBPF at any interval.
    #[arg(long, value_name = "D", default_value = "10ms", value_parser = parse_interval)]
    pub interval: Duration,
    /// Write a JSON Lines trace (header, samples, events, summary) to FILE.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print the summary as one JSON object on stdout instead of text on stderr.
    #[arg(long)]
    pub json: bool,
    /// List every process of the tree in the text summary (default: the 10 commands with the
    /// largest peaks, processes grouped by name).
    #[arg(long)]
    pub all_processes: bool,
    /// Attach to a running process and its descendants instead of running a command.
    #[arg(long, value_name = "N", conflicts_with = "command")]
    pub pid: Option<u32>,
    /// With --pid: stop after this long (default: until the process exits or Ctrl-C).
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// How to measure the process tree.
    #[arg(long, value_enum, default_value = "auto")]
    pub method: MethodArg,
    #[command(flatten)]
    pub gpu: GpuArg,
    /// Watch safety limits (VRAM 90 % of GPU-usable memory, RAM 85 %, 85 °C, CPU 90 % for 2 s,
    /// 4 GiB VRAM and RAM reserves): on a breach the command is sent SIGTERM (an attached
    /// recording just ends), and the breach is in the summary and the trace.
    #[arg(long)]
    pub safety: bool,
    /// The kernel program that follows RSS changes: raw (default; classic where the kernel
    /// lacks what raw needs) or classic; the other values are the benchmark's steps and floors
    /// and measure nothing.
    #[arg(long, value_name = "P", default_value = "raw", hide = true, value_parser = parse_rss_program)]
    pub rss_program: RssProgram,
    /// The command to run, after `--`.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<OsString>,
}

pub fn run(roots: &Roots, a: RecordArgs) -> CliResult {
    if a.duration.is_some() && a.pid.is_none() {
        return Err((
            anyhow::anyhow!("--duration goes with --pid N (a command is recorded until it exits)"),
            2,
        ));
    }
    let target = match (a.pid, a.command.is_empty()) {
        (Some(pid), _) => Target::Pid {
            pid,
            duration: a.duration,
        },
        (None, false) => Target::Command(a.command),
        (None, true) => {
            return Err((
                anyhow::anyhow!(
                "nothing to record: give a command after `--` (o3 record -- CMD ARGS) or --pid N"
            ),
                2,
            ))
        }
    };
    let require = crate::telemetry::ebpf::required();
    let mode = match a.method {
        MethodArg::Auto if require => Mode::Ebpf,
        MethodArg::Auto => Mode::Auto,
        MethodArg::Ebpf => Mode::Ebpf,
        MethodArg::Procfs => Mode::Procfs,
    };
    let opts = Options {
        target,
        interval: a.interval,
        out: a.out,
        procfs_root: roots.procfs_root.clone(),
        sysfs_root: roots.sysfs_root.clone(),
        mode,
        peak_event_step: 1 << 20,
        dev_root: roots.dev_root.clone(),
        gpu: a.gpu.gpu,
        safety: a.safety.then(Thresholds::default),
        rss_program: a.rss_program,
    };
    match record::run(&opts) {
        Ok(o) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string(&o.summary).expect("summary serialises")
                );
            } else {
                let processes = if a.all_processes {
                    Processes::All
                } else {
                    Processes::Top(TOP_COMMANDS)
                };
                eprint!(
                    "{}",
                    record::summary::render(&o.summary, &o.what, processes)
                );
            }
            Ok(o.exit_code)
        }
        Err(e) => {
            let code = e.exit_code();
            Err((e.into(), code))
        }
    }
}
