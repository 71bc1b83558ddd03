//! The end-of-recording summary: built from the ticks as they arrive plus final readings, and
//! printed as text (like `time -v`, richer) or as one JSON object.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::os::unix::process::ExitStatusExt as _;

use serde::Serialize;

use crate::telemetry::gpu::source::GpuInfo;
use crate::telemetry::watchdog::{Breach, Thresholds};
use crate::telemetry::{Method, ProcessPeak, Sample};
use crate::trace::record::{CounterSource, TreeCounters};
use crate::util::units::{bytes, secs};

/// CPU % peaks are taken over windows at least this long, so one short interval of scheduler
/// noise does not read as a spike.
pub const MIN_CPU_WINDOW_NS: u64 = 100_000_000;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl ExitInfo {
    /// From a wait status (as `wait4` fills it in): the exit code, or the terminating signal.
    pub fn from_status(status: i32) -> ExitInfo {
        // std decodes the status as WIFSIGNALED/WTERMSIG/WEXITSTATUS do, and keeps any signal
        // number (nix's `WaitStatus` refuses real-time signals).
        let st = std::process::ExitStatus::from_raw(status);
        match st.signal() {
            Some(sig) => ExitInfo {
                code: None,
                signal: Some(sig),
            },
            None => ExitInfo {
                code: st.code(),
                signal: None,
            },
        }
    }

    /// Exit status for o3 itself: the command's, or 128 + signal as a shell reports it.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            _ => 1,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RssSummary {
    pub peak_bytes: u64,
    pub peak_t_ns: u64,
    pub final_bytes: u64,
    pub method: Method,
    /// With eBPF: the rss_stat program that measured (`raw` or `classic`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program: Option<&'static str>,
    /// The split of the highest sampled RSS (the exact peak keeps no split).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampled_peak: Option<RssSplit>,
}

/// The tree's RSS by kind in one sample; `None` for a kind the source does not tell apart
/// (procfs polling gives anon and file + shmem together).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RssSplit {
    pub t_ns: u64,
    pub rss_bytes: u64,
    pub anon_bytes: Option<u64>,
    pub file_bytes: Option<u64>,
    pub shmem_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CpuSummary {
    pub total_ns: u64,
    /// `None` where it would exceed what the CPUs can give (a run too short to time).
    pub avg_percent: Option<f64>,
    /// `None` where the recording held no full window.
    pub peak_percent: Option<f64>,
    pub peak_window_ns: u64,
    pub method: Method,
}

#[derive(Debug, Clone, Serialize)]
pub struct SystemMemory {
    pub used_peak_bytes: u64,
    pub used_peak_t_ns: u64,
    pub total_bytes: u64,
    pub method: Method,
}

/// What the kernel reported for the waited-for command and its waited-for descendants.
#[derive(Debug, Clone, Serialize)]
pub struct Rusage {
    pub user_ns: u64,
    pub sys_ns: u64,
    pub cpu_ns: u64,
    pub maxrss_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sampling {
    pub interval_ns: u64,
    /// The tree's samples are taken in the kernel at `interval_ns` (no wake-up of o3 each).
    pub kernel: bool,
    /// How often o3 itself reads its other sources (system memory, GPUs, the watchdog).
    pub sources_every_ns: u64,
    pub samples: u64,
    pub late_ticks: u64,
    pub max_tick_ns: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Overhead {
    /// Wall time to load, verify and attach the kernel programs before the command started, ns.
    pub attach_ns: u64,
    /// CPU time of the o3 process (all its threads), ns.
    pub o3_cpu_ns: u64,
    /// Of which the sampler thread, ns.
    pub sampler_cpu_ns: u64,
    /// Run time of o3's kernel programs, ns: the time per run measured by BPF run-time
    /// statistics in windows (100 ms of every 2 s, from the start), times every run.
    pub bpf_run_ns: u64,
    /// Runs of o3's kernel programs (counted by the programs themselves).
    pub bpf_run_count: u64,
    /// (o3 + kernel programs) / wall time, in % of one core.
    pub percent_of_one_core: f64,
}

/// Peaks of one GPU over the recording (sampled at every tick for memory; sensors at their
/// own cadence).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GpuSummary {
    pub index: u32,
    pub name: String,
    pub vendor: String,
    pub apu: bool,
    /// GPU-usable capacity: GTT bounded by RAM on an APU, VRAM on a discrete GPU.
    pub usable_total_bytes: Option<u64>,
    pub usable_used_peak_bytes: Option<u64>,
    pub usable_used_peak_t_ns: Option<u64>,
    pub vram_used_peak_bytes: Option<u64>,
    pub gtt_used_peak_bytes: Option<u64>,
    /// `sampled` (at the interval) or `ebpf` (exact, kprobes).
    pub memory_method: &'static str,
    pub temp_peak_c: Option<f64>,
    pub power_avg_w: Option<f64>,
    pub power_peak_w: Option<f64>,
    /// From the device's energy counter where it has one, else power integrated over time.
    pub energy_j: Option<f64>,
    pub busy_avg_percent: Option<f64>,
}

/// Peak GPU memory of one process (fdinfo / KFD / NVML, sampled).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GpuProcessSummary {
    pub pid: u32,
    pub vram_peak_bytes: u64,
    pub gtt_peak_bytes: u64,
    pub kfd_vram_peak_bytes: u64,
    /// Engine busy over the readings (sum over engines, so it can exceed 100 %); `None` with
    /// fewer than two readings or no engine time (ROCm compute queues have none).
    pub engine_busy_avg_percent: Option<f64>,
    #[serde(skip)]
    first_engine: Option<(u64, u64)>,
    #[serde(skip)]
    last_engine: Option<(u64, u64)>,
}

impl GpuProcessSummary {
    /// Nothing seen: no memory and no engine time.
    fn is_empty(&self) -> bool {
        self.vram_peak_bytes == 0
            && self.gtt_peak_bytes == 0
            && self.kfd_vram_peak_bytes == 0
            && self.engine_busy_avg_percent.is_none()
    }
}

/// Exact GPU-memory allocation peak of one amdgpu memory manager (kprobes), counted from the
/// start of the recording.
#[derive(Debug, Clone, Serialize)]
pub struct ExactGpuMem {
    /// `vram` or `gtt`.
    pub kind: &'static str,
    pub allocated_peak_bytes: u64,
    pub allocated_peak_t_ns: u64,
    pub allocations: u64,
    pub frees: u64,
}

/// The watchdog's limits and what crossed them.
#[derive(Debug, Clone, Serialize)]
pub struct Safety {
    pub thresholds: Thresholds,
    pub breaches: Vec<Breach>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub schema_version: u32,
    pub o3_version: &'static str,
    pub target: serde_json::Value,
    pub wall_ns: u64,
    pub exit: Option<ExitInfo>,
    pub rss: RssSummary,
    pub processes: Vec<ProcessPeak>,
    pub cpu: CpuSummary,
    pub system_memory: Option<SystemMemory>,
    pub rusage: Option<Rusage>,
    /// Page faults, context switches and block I/O of the tree.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters: Option<TreeCounters>,
    pub sampling: Sampling,
    pub overhead: Overhead,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<GpuSummary>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gpu_processes: Vec<GpuProcessSummary>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gpu_mem_exact: Vec<ExactGpuMem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safety: Option<Safety>,
    pub warnings: Vec<String>,
}

/// Folds ticks into the figures the summary needs, without keeping the series.
#[derive(Debug)]
pub struct Aggregate {
    /// Online CPUs × 100 %: no window's rate can be higher.
    cpu_capacity_percent: f64,
    pub samples: u64,
    pub last: Sample,
    mem_peak: (u64, u64),
    mem_total: u64,
    window_ns: u64,
    cpu_window: VecDeque<(u64, u64)>,
    cpu_peak_percent: Option<f64>,
    /// The sample with the highest RSS, by kind.
    rss_split: Option<RssSplit>,
    gpus: Vec<GpuAgg>,
    gpu_procs: Vec<GpuProcessSummary>,
}

#[derive(Debug, Default)]
struct GpuAgg {
    s: GpuSummary,
    first_energy: Option<f64>,
    last_energy: Option<f64>,
    /// Power integrated over time (J) and the time it covers (ns).
    integrated_j: f64,
    covered_ns: u64,
    last_power: Option<(u64, f64)>,
    first_t: Option<u64>,
    last_t: u64,
    busy_sum: f64,
    busy_n: u64,
}

fn max_opt<T: PartialOrd + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y > x { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

/// CPUs online now, as `sysconf(_SC_NPROCESSORS_ONLN)` counts them: the CPUs listed in
/// `/sys/devices/system/cpu/online`; else the CPUs this process may run on; at least 1.
fn online_cpus() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|l| count_cpu_list(&l))
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1)
        .max(1)
}

/// How many CPUs a kernel CPU list names (`0-3,8,10-11` → 7); `None` where it does not parse.
fn count_cpu_list(list: &str) -> Option<usize> {
    let mut n = 0;
    for part in list.trim().split(',') {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let (lo, hi): (usize, usize) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
        n += hi.checked_sub(lo)? + 1;
    }
    Some(n)
}

impl Aggregate {
    pub fn new(interval_ns: u64) -> Aggregate {
        Aggregate {
            samples: 0,
            last: Sample::default(),
            mem_peak: (0, 0),
            mem_total: 0,
            window_ns: interval_ns.max(MIN_CPU_WINDOW_NS),
            cpu_capacity_percent: online_cpus() as f64 * 100.0,
            cpu_window: VecDeque::new(),
            cpu_peak_percent: None,
            rss_split: None,
            gpus: Vec::new(),
            gpu_procs: Vec::new(),
        }
    }

    fn add_gpus(&mut self, s: &Sample) {
        for g in &s.gpus {
            let i = match self.gpus.iter().position(|a| a.s.index == g.index) {
                Some(i) => i,
                None => {
                    self.gpus.push(GpuAgg {
                        s: GpuSummary {
                            index: g.index,
                            memory_method: "sampled",
                            ..GpuSummary::default()
                        },
                        ..GpuAgg::default()
                    });
                    self.gpus.len() - 1
                }
            };
            let a = &mut self.gpus[i];
            let r = &g.reading;
            a.first_t.get_or_insert(s.t_ns);
            a.last_t = s.t_ns;
            a.s.usable_total_bytes = g.usable_total_bytes.or(a.s.usable_total_bytes);
            if g.usable_used_bytes > a.s.usable_used_peak_bytes {
                a.s.usable_used_peak_bytes = g.usable_used_bytes;
                a.s.usable_used_peak_t_ns = Some(s.t_ns);
            }
            a.s.vram_used_peak_bytes = max_opt(a.s.vram_used_peak_bytes, r.vram_used_bytes);
            a.s.gtt_used_peak_bytes = max_opt(a.s.gtt_used_peak_bytes, r.gtt_used_bytes);
            for t in [r.temp_edge_c, r.temp_junction_c, r.temp_mem_c] {
                a.s.temp_peak_c = max_opt(a.s.temp_peak_c, t);
            }
            a.s.power_peak_w = max_opt(a.s.power_peak_w, r.power_w);
            if let Some(e) = r.energy_j {
                a.first_energy.get_or_insert(e);
                a.last_energy = Some(e);
            }
            if let Some(p) = r.power_w {
                if let Some((t, prev)) = a.last_power {
                    let dt = s.t_ns.saturating_sub(t);
                    a.integrated_j += (prev + p) / 2.0 * dt as f64 / 1e9;
                    a.covered_ns += dt;
                }
                a.last_power = Some((s.t_ns, p));
            }
            if let Some(b) = r.gpu_busy_percent {
                a.busy_sum += b;
                a.busy_n += 1;
            }
        }
        for p in &s.gpu_processes {
            let i = match self.gpu_procs.iter().position(|q| q.pid == p.pid) {
                Some(i) => i,
                None => {
                    self.gpu_procs.push(GpuProcessSummary {
                        pid: p.pid,
                        ..GpuProcessSummary::default()
                    });
                    self.gpu_procs.len() - 1
                }
            };
            let q = &mut self.gpu_procs[i];
            q.vram_peak_bytes = q.vram_peak_bytes.max(p.vram_bytes);
            q.gtt_peak_bytes = q.gtt_peak_bytes.max(p.gtt_bytes);
            q.kfd_vram_peak_bytes = q.kfd_vram_peak_bytes.max(p.kfd_vram_bytes);
            q.first_engine.get_or_insert((s.t_ns, p.engine_ns));
            q.last_engine = Some((s.t_ns, p.engine_ns));
        }
    }

    /// Per-GPU peaks with names from `infos`.
    pub fn gpus(&self, infos: &[GpuInfo]) -> Vec<GpuSummary> {
        self.gpus
            .iter()
            .map(|a| {
                let mut s = a.s.clone();
                if let Some(i) = infos.iter().find(|i| i.index == s.index) {
                    s.name = i.name.clone();
                    s.vendor = i.vendor.to_string();
                    s.apu = i.apu;
                }
                s.energy_j = match (a.first_energy, a.last_energy) {
                    (Some(f), Some(l)) if l >= f && a.last_t > a.first_t.unwrap_or(0) => {
                        Some(l - f)
                    }
                    _ => (a.covered_ns > 0).then_some(a.integrated_j),
                };
                let span = a.last_t.saturating_sub(a.first_t.unwrap_or(0));
                s.power_avg_w = match (s.energy_j, a.first_energy) {
                    (Some(e), Some(_)) if span > 0 => Some(e / (span as f64 / 1e9)),
                    _ => (a.covered_ns > 0).then(|| a.integrated_j / (a.covered_ns as f64 / 1e9)),
                };
                s.busy_avg_percent = (a.busy_n > 0).then(|| a.busy_sum / a.busy_n as f64);
                s
            })
            .collect()
    }

    pub fn gpu_processes(&self) -> Vec<GpuProcessSummary> {
        let mut out = self.gpu_procs.clone();
        for p in &mut out {
            if let (Some((t0, e0)), Some((t1, e1))) = (p.first_engine, p.last_engine) {
                p.engine_busy_avg_percent =
                    crate::telemetry::gpu::fdinfo::busy_percent(e0, e1, t1.saturating_sub(t0))
                        .filter(|_| e1 > 0);
            }
        }
        out
    }

    /// Keeps the split of the sample with the highest RSS.
    fn add_split(&mut self, s: &Sample) {
        let Some(rss) = s.rss_bytes else { return };
        if self.rss_split.as_ref().is_some_and(|b| b.rss_bytes >= rss) || rss == 0 {
            return;
        }
        // procfs polling tells anon alone; file and shmem come together as the rest.
        self.rss_split = Some(RssSplit {
            t_ns: s.t_ns,
            rss_bytes: rss,
            anon_bytes: s.rss_anon_bytes,
            file_bytes: s.rss_file_bytes,
            shmem_bytes: s.rss_shmem_bytes,
        });
    }

    pub fn rss_split(&self) -> Option<RssSplit> {
        self.rss_split.clone()
    }

    /// Online CPUs × 100 %.
    pub fn cpu_capacity_percent(&self) -> f64 {
        self.cpu_capacity_percent
    }

    /// Takes the sample (kept as the last one, without a copy).
    pub fn add(&mut self, s: Sample) {
        self.samples += 1;
        self.add_split(&s);
        if let Some(m) = s.mem_used_bytes {
            if m > self.mem_peak.0 {
                self.mem_peak = (m, s.t_ns);
            }
        }
        if let Some(t) = s.mem_total_bytes {
            self.mem_total = t;
        }
        if let Some(cpu) = s.cpu_ns {
            // The rate is taken at the instant the CPU figure holds, not at the tick.
            let t = s.cpu_t_ns.unwrap_or(s.t_ns);
            self.cpu_window.push_back((t, cpu));
            // Keep the newest point that is at least one window old as the window's start.
            while self.cpu_window.len() > 2
                && t.saturating_sub(self.cpu_window[1].0) >= self.window_ns
            {
                self.cpu_window.pop_front();
            }
            let (t0, c0) = self.cpu_window[0];
            let dt = t.saturating_sub(t0);
            if dt >= self.window_ns {
                let pct = cpu.saturating_sub(c0) as f64 / dt as f64 * 100.0;
                // A slice in flight is now and then seen only when it ends (observed on this
                // project's VM, with every version of the programs): the window after it
                // would show more than the machine has. The rate is capped at the CPUs'
                // capacity; the total is exact either way.
                let pct = pct.min(self.cpu_capacity_percent);
                self.cpu_peak_percent = Some(self.cpu_peak_percent.map_or(pct, |p| p.max(pct)));
            }
        }
        self.add_gpus(&s);
        self.last = s;
    }

    pub fn window_ns(&self) -> u64 {
        self.window_ns
    }

    pub fn cpu_peak_percent(&self) -> Option<f64> {
        self.cpu_peak_percent
    }

    pub fn system_memory(&self) -> Option<SystemMemory> {
        (self.mem_total > 0).then_some(SystemMemory {
            used_peak_bytes: self.mem_peak.0,
            used_peak_t_ns: self.mem_peak.1,
            total_bytes: self.mem_total,
            method: Method::ProcfsPolling,
        })
    }
}

fn method_note(m: Method) -> &'static str {
    match m {
        Method::Ebpf => "exact, kernel programs",
        Method::ProcfsPolling => "procfs polling: peaks between samples are missed",
        Method::Rusage => "kernel rusage",
    }
}

/// Below this length a recording holds fewer than 10 samples or no full CPU window: its CPU %
/// and the monitor's overhead % say nothing.
pub fn short_run_ns(s: &Summary) -> u64 {
    (10 * s.sampling.interval_ns).max(s.cpu.peak_window_ns)
}

/// True when the recording is shorter than [`short_run_ns`].
pub fn is_short(s: &Summary) -> bool {
    s.wall_ns < short_run_ns(s)
}

/// The warning of a recording shorter than [`short_run_ns`]: what is left out, and what to do.
pub fn short_warning(s: &Summary) -> String {
    let ms = |ns: u64| ns as f64 / 1e6;
    let (took, what_to_do) = if s.target.get("command").is_some() {
        (
            "the command took",
            "record a longer run, e.g. the command in a loop: o3 record -- sh -c 'for i in $(seq 100); do CMD; done'",
        )
    } else {
        ("the recording lasted", "record longer (--duration)")
    };
    format!(
        "{took} less than {} ms, the least for 10 samples at {} ms and one full {} ms CPU window: CPU % and the monitor's overhead % are not meaningful at this duration (the text summary leaves them out); CPU time, peak RSS and the counters still hold. For CPU %, {what_to_do}",
        ms(short_run_ns(s)),
        ms(s.sampling.interval_ns),
        ms(s.cpu.peak_window_ns),
    )
}

/// How many processes the text summary lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Processes {
    /// The commands with the largest peaks, grouped by name, at most this many rows.
    Top(usize),
    /// Every process, one row each.
    All,
}

/// The text summary, one fact per line: how the command ended, the tree's memory, CPU and
/// counters, the system's, the sampling and its cost, the GPUs, the safety breaches, the
/// processes, the warnings. Lines that would carry no information are left out.
pub fn render(s: &Summary, what: &str, processes: Processes) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "o3 record: {what} {} after {}",
        ended(s.exit.as_ref()),
        secs(s.wall_ns)
    );
    tree_lines(&mut o, s);
    counter_lines(&mut o, s);
    system_lines(&mut o, s);
    sampling_lines(&mut o, s);
    for g in &s.gpus {
        let _ = writeln!(o, "{}", gpu_line(g));
    }
    for p in s.gpu_processes.iter().filter(|p| !p.is_empty()) {
        let _ = writeln!(o, "{}", gpu_process_line(p));
    }
    for b in s.safety.iter().flat_map(|safety| &safety.breaches) {
        let _ = writeln!(o, "  {b}");
    }
    match processes {
        Processes::Top(n) => super::table::top_commands(&mut o, &s.processes, n),
        Processes::All => super::table::every_process(&mut o, &s.processes),
    }
    for w in &s.warnings {
        let _ = writeln!(o, "  warning: {w}");
    }
    o
}

/// How the recording ended: `exited with status 0`, `was killed by signal 9`.
fn ended(exit: Option<&ExitInfo>) -> String {
    match exit {
        Some(ExitInfo {
            code: Some(c),
            signal: None,
        }) => format!("exited with status {c}"),
        Some(ExitInfo {
            signal: Some(sig), ..
        }) => format!("was killed by signal {sig}"),
        _ => "recording ended".to_string(),
    }
}

/// The CPU rates that can be right: none for a short run, the average where it is within the
/// CPUs' capacity, the peak where a full window was seen.
fn cpu_rates(s: &Summary) -> String {
    if is_short(s) {
        return String::new();
    }
    let mut parts = Vec::new();
    if let Some(a) = s.cpu.avg_percent {
        parts.push(format!("avg {a:.1} %"));
    }
    if let Some(p) = s.cpu.peak_percent {
        parts.push(format!(
            "peak {p:.1} % of one core over {} ms windows",
            s.cpu.peak_window_ns / 1_000_000
        ));
    }
    if parts.is_empty() {
        return String::new();
    }
    format!("  {}", parts.join(", "))
}

/// The split of the highest sample: anon, file, shmem (procfs: anon and the rest).
fn split_line(o: &mut String, p: &RssSplit) {
    let kinds = match (p.anon_bytes, p.file_bytes, p.shmem_bytes) {
        (Some(a), Some(f), Some(sh)) => {
            format!("anon {}, file {}, shmem {}", bytes(a), bytes(f), bytes(sh))
        }
        (Some(a), _, _) => format!(
            "anon {}, file + shmem {}",
            bytes(a),
            bytes(p.rss_bytes.saturating_sub(a))
        ),
        _ => return,
    };
    let _ = writeln!(
        o,
        "  RSS by kind              {kinds}  (sampled at {}, the highest sample: {})",
        secs(p.t_ns),
        bytes(p.rss_bytes)
    );
}

/// The tracked tree's RSS peak and its split, its RSS at the end (when not 0) and its CPU.
fn tree_lines(o: &mut String, s: &Summary) {
    let _ = writeln!(
        o,
        "  peak RSS of the tree     {} at {}  ({})",
        bytes(s.rss.peak_bytes),
        secs(s.rss.peak_t_ns),
        method_note(s.rss.method)
    );
    if let Some(p) = &s.rss.sampled_peak {
        split_line(o, p);
    }
    if s.rss.final_bytes > 0 {
        let _ = writeln!(o, "  RSS at the end           {}", bytes(s.rss.final_bytes));
    }
    let _ = writeln!(
        o,
        "  CPU time of the tree     {}{}  ({})",
        secs(s.cpu.total_ns),
        cpu_rates(s),
        method_note(s.cpu.method)
    );
}

/// Page faults, context switches and block I/O, with where they come from.
fn counter_lines(o: &mut String, s: &Summary) {
    let Some(t) = &s.counters else { return };
    // Said in full once, then named.
    let (note, again) = match t.source {
        CounterSource::Rusage => (
            "kernel rusage of CMD and the children it waited for",
            "rusage",
        ),
        CounterSource::ProcfsSampled => (
            "procfs, read every second: a lower bound, what a process did after its last read is missed",
            "procfs, a lower bound",
        ),
    };
    let c = &t.counts;
    let _ = writeln!(
        o,
        "  page faults              minor {}, major {}  ({note})",
        c.minor_faults, c.major_faults
    );
    let _ = writeln!(
        o,
        "  context switches         voluntary {}, involuntary {}  ({again})",
        c.voluntary_context_switches, c.involuntary_context_switches
    );
    let _ = writeln!(
        o,
        "  block device I/O         read {}, written {}  ({again})",
        bytes(c.read_bytes),
        bytes(c.write_bytes)
    );
}

/// System RAM and the kernel's rusage of the command, where measured.
fn system_lines(o: &mut String, s: &Summary) {
    if let Some(m) = &s.system_memory {
        let _ = writeln!(
            o,
            "  system RAM used, peak    {} of {} at {}  (sampled)",
            bytes(m.used_peak_bytes),
            bytes(m.total_bytes),
            secs(m.used_peak_t_ns)
        );
    }
    if let Some(r) = &s.rusage {
        let _ = writeln!(
            o,
            "  kernel rusage of CMD     cpu {} (user {}, sys {}), maxrss {}",
            secs(r.cpu_ns),
            secs(r.user_ns),
            secs(r.sys_ns),
            bytes(r.maxrss_bytes)
        );
    }
}

/// How often the tree was sampled, and what the monitoring cost (in % of one core only where
/// the run was long enough for that to mean something).
fn sampling_lines(o: &mut String, s: &Summary) {
    let _ = writeln!(
        o,
        "  samples                  {} every {} ms, {} late",
        s.sampling.samples,
        s.sampling.interval_ns as f64 / 1e6,
        s.sampling.late_ticks
    );
    let cost = format!(
        "o3 {}, kernel programs {} in {} runs",
        secs(s.overhead.o3_cpu_ns),
        secs(s.overhead.bpf_run_ns),
        s.overhead.bpf_run_count
    );
    let _ = if is_short(s) {
        writeln!(o, "  monitor overhead         {cost}")
    } else {
        writeln!(
            o,
            "  monitor overhead         {:.3} % of one core ({cost})",
            s.overhead.percent_of_one_core
        )
    };
}

/// One GPU's peaks, all of the whole device (every process on it, not only the tree); `-`
/// for what was not measured.
fn gpu_line(g: &GpuSummary) -> String {
    let size = |b: Option<u64>| b.map_or("-".to_string(), bytes);
    let watts = |w: Option<f64>| w.map_or("-".into(), |w| format!("{w:.1} W"));
    let temp = g
        .temp_peak_c
        .filter(|t| t.is_finite())
        .map_or("temperature no reading".into(), |t| {
            format!("peak {t:.0} °C")
        });
    format!(
        "  GPU {} {}{}, whole device: peak {} {} of {} at {} (sampled), {temp}, power avg {} peak {}, energy {}",
        g.index,
        g.name,
        if g.apu { " (APU)" } else { "" },
        if g.apu { "GTT" } else { "VRAM" },
        size(g.usable_used_peak_bytes),
        size(g.usable_total_bytes),
        g.usable_used_peak_t_ns.map_or("-".into(), secs),
        watts(g.power_avg_w),
        watts(g.power_peak_w),
        g.energy_j.map_or("-".into(), |j| format!("{j:.1} J")),
    )
}

/// One process's GPU-memory peaks and engine use.
fn gpu_process_line(p: &GpuProcessSummary) -> String {
    format!(
        "  GPU memory of pid {}: VRAM peak {}, GTT peak {}, KFD VRAM peak {}, engines busy {}",
        p.pid,
        bytes(p.vram_peak_bytes),
        bytes(p.gtt_peak_bytes),
        bytes(p.kfd_vram_peak_bytes),
        p.engine_busy_avg_percent
            .map_or("-".into(), |b| format!("{b:.1} %"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::watchdog::Breach;

    fn sample(t_ms: u64, cpu_ms: u64, mem: u64) -> Sample {
        Sample {
            t_ns: t_ms * 1_000_000,
            cpu_ns: Some(cpu_ms * 1_000_000),
            mem_used_bytes: Some(mem),
            mem_total_bytes: Some(1000),
            ..Sample::default()
        }
    }

    fn peak(a: &Aggregate) -> f64 {
        a.cpu_peak_percent().expect("a full window")
    }

    #[test]
    fn no_full_window_gives_no_peak_and_the_highest_sample_keeps_its_split() {
        let mut a = Aggregate::new(10_000_000);
        for (t, rss, anon) in [(0, 10, 4), (10, 30, 20), (20, 20, 15)] {
            let mut s = sample(t, t, 10);
            s.rss_bytes = Some(rss);
            s.rss_anon_bytes = Some(anon);
            a.add(s);
        }
        assert_eq!(a.cpu_peak_percent(), None);
        let split = a.rss_split().unwrap();
        assert_eq!(
            (
                split.t_ns,
                split.rss_bytes,
                split.anon_bytes,
                split.file_bytes
            ),
            (10_000_000, 30, Some(20), None)
        );
    }

    #[test]
    fn a_window_never_shows_more_than_the_cpus_have() {
        let mut a = Aggregate::new(10_000_000);
        a.cpu_capacity_percent = 200.0;
        // 2 cores busy, but one core's 70 ms in flight is seen only when its slice ends at
        // 150 ms: the window from 50 to 150 ms would show 270 %.
        for (t, cpu) in [(0, 0), (50, 60), (100, 100), (150, 330), (200, 400)] {
            a.add(sample(t, cpu, 10));
        }
        assert_eq!(peak(&a), 200.0);
    }

    #[test]
    fn cpu_peak_uses_windows_of_at_least_100ms() {
        let mut a = Aggregate::new(10_000_000);
        a.cpu_capacity_percent = 400.0;
        // 0-200 ms idle, then 100 ms at 2 cores, then idle.
        let mut cpu = 0;
        for t in (0..=500).step_by(10) {
            if t > 200 && t <= 300 {
                cpu += 20;
            }
            a.add(sample(t, cpu, 10));
        }
        assert!((peak(&a) - 200.0).abs() < 1e-6, "{}", peak(&a));
        assert_eq!(a.window_ns(), 100_000_000);
    }

    #[test]
    fn single_busy_interval_is_averaged_over_the_window() {
        let mut a = Aggregate::new(10_000_000);
        a.cpu_capacity_percent = 400.0;
        let mut cpu = 0;
        for t in (0..=300).step_by(10) {
            if t == 150 {
                cpu += 10; // one 10 ms interval at 100 %
            }
            a.add(sample(t, cpu, 10));
        }
        assert!((peak(&a) - 10.0).abs() < 1e-6);
    }

    #[test]
    fn cpu_rate_uses_the_instant_the_cpu_figure_was_read() {
        let mut a = Aggregate::new(10_000_000);
        // Two cores busy throughout; the read at the 200 ms tick was delayed by 40 ms, so its
        // figure already holds 80 ms more CPU. Rated at the tick it would read 280 %.
        for t in (0..=300u64).step_by(10) {
            let read_at = if t == 200 { 240 } else { t };
            let mut s = sample(t, 2 * read_at, 10);
            s.cpu_t_ns = Some(read_at * 1_000_000);
            a.add(s);
        }
        assert!((peak(&a) - 200.0).abs() < 1e-6, "{}", peak(&a));
    }

    #[test]
    fn memory_peak_and_time() {
        let mut a = Aggregate::new(10_000_000);
        a.add(sample(0, 0, 10));
        a.add(sample(10, 0, 50));
        a.add(sample(20, 0, 20));
        let m = a.system_memory().unwrap();
        assert_eq!((m.used_peak_bytes, m.used_peak_t_ns), (50, 10_000_000));
        assert_eq!(a.samples, 3);
    }

    #[test]
    fn gpu_peaks_energy_and_process_busy() {
        use crate::telemetry::gpu::fdinfo::ProcessGpu;
        use crate::telemetry::gpu::source::GpuSample;
        use crate::telemetry::gpu::GpuReading;
        let mut a = Aggregate::new(10_000_000);
        for (t, used, w, engine) in [
            (0u64, 1u64, 100.0, 0u64),
            (1, 5, 200.0, 500),
            (2, 3, 100.0, 1000),
        ] {
            a.add(Sample {
                t_ns: t * 1_000_000_000,
                gpus: vec![GpuSample {
                    index: 0,
                    reading: GpuReading {
                        power_w: Some(w),
                        temp_edge_c: Some(40.0 + t as f64),
                        ..GpuReading::default()
                    },
                    usable_used_bytes: Some(used << 30),
                    usable_total_bytes: Some(16 << 30),
                    asleep: false,
                }],
                gpu_processes: vec![ProcessGpu {
                    pid: 7,
                    gtt_bytes: used << 20,
                    engine_ns: engine * 1_000_000,
                    ..ProcessGpu::default()
                }],
                ..Sample::default()
            });
        }
        let g = &a.gpus(&[])[0];
        assert_eq!(g.usable_used_peak_bytes, Some(5 << 30));
        assert_eq!(g.usable_used_peak_t_ns, Some(1_000_000_000));
        // Trapezoids: (100+200)/2 + (200+100)/2 = 300 J over 2 s.
        assert_eq!(g.energy_j, Some(300.0));
        assert_eq!(g.power_avg_w, Some(150.0));
        assert_eq!(g.power_peak_w, Some(200.0));
        assert_eq!(g.temp_peak_c, Some(42.0));
        let p = &a.gpu_processes()[0];
        assert_eq!(p.gtt_peak_bytes, 5 << 20);
        // 1000 ms of engine time over 2 s.
        assert_eq!(p.engine_busy_avg_percent, Some(50.0));
    }

    /// A summary with every optional part present, and one with none.
    #[allow(clippy::too_many_lines)] // a literal: every field of a summary, set
    fn full_summary() -> Summary {
        Summary {
            schema_version: 1,
            o3_version: "test",
            target: serde_json::json!({"command": ["sleep", "1"]}),
            wall_ns: 12_345_678_901,
            exit: Some(ExitInfo {
                code: Some(3),
                signal: None,
            }),
            rss: RssSummary {
                peak_bytes: 3 << 30,
                peak_t_ns: 2_500_000_000,
                final_bytes: 1 << 20,
                method: Method::Ebpf,
                program: Some("raw"),
                sampled_peak: Some(RssSplit {
                    t_ns: 2_490_000_000,
                    rss_bytes: (3 << 30) - (16 << 20),
                    anon_bytes: Some((2 << 30) + (512 << 20)),
                    file_bytes: Some((512 << 20) - (16 << 20)),
                    shmem_bytes: Some(0),
                }),
            },
            processes: vec![
                ProcessPeak {
                    pid: 42,
                    comm: "llama-server".into(),
                    peak_rss_bytes: 3 << 30,
                    peak_t_ns: 2_500_000_000,
                    cpu_ns: Some(7_000_000_000),
                },
                ProcessPeak {
                    pid: 43,
                    comm: "sh".into(),
                    peak_rss_bytes: 4 << 20,
                    peak_t_ns: 1_000_000,
                    cpu_ns: None,
                },
            ],
            cpu: CpuSummary {
                total_ns: 9_000_000_000,
                avg_percent: Some(72.91),
                peak_percent: Some(398.5),
                peak_window_ns: 100_000_000,
                method: Method::Ebpf,
            },
            system_memory: Some(SystemMemory {
                used_peak_bytes: 20 << 30,
                used_peak_t_ns: 3_000_000_000,
                total_bytes: 64 << 30,
                method: Method::ProcfsPolling,
            }),
            rusage: Some(Rusage {
                user_ns: 6_000_000_000,
                sys_ns: 1_500_000_000,
                cpu_ns: 7_500_000_000,
                maxrss_bytes: 3 << 30,
            }),
            counters: Some(TreeCounters {
                source: CounterSource::Rusage,
                counts: crate::trace::record::Counters {
                    minor_faults: 812_345,
                    major_faults: 17,
                    voluntary_context_switches: 4_321,
                    involuntary_context_switches: 765,
                    read_bytes: 5 << 30,
                    write_bytes: 3 << 20,
                },
            }),
            sampling: Sampling {
                interval_ns: 10_000_000,
                kernel: true,
                sources_every_ns: 10_000_000,
                samples: 1234,
                late_ticks: 2,
                max_tick_ns: 15_000_000,
            },
            overhead: Overhead {
                attach_ns: 50_000_000,
                o3_cpu_ns: 40_000_000,
                sampler_cpu_ns: 30_000_000,
                bpf_run_ns: 2_000_000,
                bpf_run_count: 12_000,
                percent_of_one_core: 0.3456,
            },
            gpus: vec![
                GpuSummary {
                    index: 0,
                    name: "Radeon 8060S".into(),
                    vendor: "amd".into(),
                    apu: true,
                    usable_total_bytes: Some(96 << 30),
                    usable_used_peak_bytes: Some(18 << 30),
                    usable_used_peak_t_ns: Some(2_000_000_000),
                    temp_peak_c: Some(61.0),
                    power_avg_w: Some(55.25),
                    power_peak_w: Some(120.0),
                    energy_j: Some(680.5),
                    ..GpuSummary::default()
                },
                GpuSummary {
                    index: 1,
                    name: "dGPU".into(),
                    ..GpuSummary::default()
                },
            ],
            gpu_processes: vec![
                GpuProcessSummary {
                    pid: 42,
                    vram_peak_bytes: 1 << 30,
                    gtt_peak_bytes: 17 << 30,
                    kfd_vram_peak_bytes: 0,
                    engine_busy_avg_percent: Some(87.25),
                    ..GpuProcessSummary::default()
                },
                GpuProcessSummary {
                    pid: 43,
                    ..GpuProcessSummary::default()
                },
            ],
            gpu_mem_exact: Vec::new(),
            safety: Some(Safety {
                thresholds: Thresholds::default(),
                breaches: vec![Breach {
                    metric: "ram_percent",
                    value: 91.25,
                    limit: 85.0,
                    t_ns: 3_000_000_000,
                    gpu: None,
                }],
            }),
            warnings: vec!["one warning".into()],
        }
    }

    #[test]
    fn the_text_summary_of_a_full_recording() {
        let want = concat!(
            "o3 record: sleep 1 exited with status 3 after 12.346 s\n",
            "  peak RSS of the tree     3.0 GiB at 2.500 s  (exact, kernel programs)\n",
            "  RSS by kind              anon 2.5 GiB, file 496.0 MiB, shmem 0 B  (sampled at 2.490 s, the highest sample: 3.0 GiB)\n",
            "  RSS at the end           1.0 MiB\n",
            "  CPU time of the tree     9.000 s  avg 72.9 %, peak 398.5 % of one core over 100 ms windows  (exact, kernel programs)\n",
            "  page faults              minor 812345, major 17  (kernel rusage of CMD and the children it waited for)\n",
            "  context switches         voluntary 4321, involuntary 765  (rusage)\n",
            "  block device I/O         read 5.0 GiB, written 3.0 MiB  (rusage)\n",
            "  system RAM used, peak    20.0 GiB of 64.0 GiB at 3.000 s  (sampled)\n",
            "  kernel rusage of CMD     cpu 7.500 s (user 6.000 s, sys 1.500 s), maxrss 3.0 GiB\n",
            "  samples                  1234 every 10 ms, 2 late\n",
            "  monitor overhead         0.346 % of one core (o3 0.040 s, kernel programs 0.002 s in 12000 runs)\n",
            "  GPU 0 Radeon 8060S (APU), whole device: peak GTT 18.0 GiB of 96.0 GiB at 2.000 s (sampled), peak 61 °C, power avg 55.2 W peak 120.0 W, energy 680.5 J\n",
            "  GPU 1 dGPU, whole device: peak VRAM - of - at - (sampled), temperature no reading, power avg - peak -, energy -\n",
            "  GPU memory of pid 42: VRAM peak 1.0 GiB, GTT peak 17.0 GiB, KFD VRAM peak 0 B, engines busy 87.2 %\n",
            "  safety limit: ram_percent 91.2 over 85.0 at 3.000 s\n",
            "  commands by peak RSS (PROCS: processes of that name; PEAK RSS: the largest one's; CPU: summed over them)\n",
            "     PROCS      PEAK RSS         CPU  COMMAND\n",
            "         1       3.0 GiB     7.000 s  llama-server\n",
            "         1       4.0 MiB           -  sh\n",
            "  warning: one warning\n",
        );
        let s = full_summary();
        assert_eq!(render(&s, "sleep 1", Processes::Top(10)), want);
        // --all-processes: one row per process instead of the commands.
        let all = render(&s, "sleep 1", Processes::All);
        let table = concat!(
            "       PID      PEAK RSS          AT         CPU  COMMAND\n",
            "        42       3.0 GiB     2.500 s     7.000 s  llama-server\n",
            "        43       4.0 MiB     0.001 s           -  sh\n",
        );
        assert!(all.contains(table), "{all}");
        assert!(!all.contains("PROCS"), "{all}");
    }

    #[test]
    fn the_text_summary_without_the_optional_parts() {
        let mut s = full_summary();
        s.exit = Some(ExitInfo {
            code: None,
            signal: Some(9),
        });
        s.processes.clear();
        s.system_memory = None;
        s.rusage = None;
        s.counters = None;
        s.rss.sampled_peak = None;
        s.gpus.clear();
        s.gpu_processes.clear();
        s.safety = None;
        s.warnings.clear();
        s.rss.method = Method::ProcfsPolling;
        s.cpu.method = Method::Rusage;
        let want = concat!(
            "o3 record: pid 7 was killed by signal 9 after 12.346 s\n",
            "  peak RSS of the tree     3.0 GiB at 2.500 s  (procfs polling: peaks between samples are missed)\n",
            "  RSS at the end           1.0 MiB\n",
            "  CPU time of the tree     9.000 s  avg 72.9 %, peak 398.5 % of one core over 100 ms windows  (kernel rusage)\n",
            "  samples                  1234 every 10 ms, 2 late\n",
            "  monitor overhead         0.346 % of one core (o3 0.040 s, kernel programs 0.002 s in 12000 runs)\n",
        );
        assert_eq!(render(&s, "pid 7", Processes::Top(10)), want);
        s.exit = None;
        let text = render(&s, "pid 7", Processes::Top(10));
        assert!(text.starts_with("o3 record: pid 7 recording ended after "));
        // An exited tree holds nothing at the end: no line says so.
        s.rss.final_bytes = 0;
        let text = render(&s, "pid 7", Processes::Top(10));
        assert!(!text.contains("RSS at the end"), "{text}");
    }

    /// An attached tree: counters read from procfs, RSS split without file and shmem apart.
    #[test]
    fn the_text_summary_of_an_attached_tree_names_procfs_as_the_source() {
        let mut s = full_summary();
        s.target = serde_json::json!({"pid": 7});
        s.exit = None;
        s.rusage = None;
        s.gpus.clear();
        s.gpu_processes.clear();
        s.safety = None;
        s.processes.clear();
        s.warnings.clear();
        s.rss.method = Method::ProcfsPolling;
        s.rss.sampled_peak = Some(RssSplit {
            t_ns: 2_500_000_000,
            rss_bytes: 3 << 30,
            anon_bytes: Some(2 << 30),
            file_bytes: None,
            shmem_bytes: None,
        });
        if let Some(c) = s.counters.as_mut() {
            c.source = CounterSource::ProcfsSampled;
        }
        let want = concat!(
            "o3 record: pid 7 recording ended after 12.346 s\n",
            "  peak RSS of the tree     3.0 GiB at 2.500 s  (procfs polling: peaks between samples are missed)\n",
            "  RSS by kind              anon 2.0 GiB, file + shmem 1.0 GiB  (sampled at 2.500 s, the highest sample: 3.0 GiB)\n",
            "  RSS at the end           1.0 MiB\n",
            "  CPU time of the tree     9.000 s  avg 72.9 %, peak 398.5 % of one core over 100 ms windows  (exact, kernel programs)\n",
            "  page faults              minor 812345, major 17  (procfs, read every second: a lower bound, what a process did after its last read is missed)\n",
            "  context switches         voluntary 4321, involuntary 765  (procfs, a lower bound)\n",
            "  block device I/O         read 5.0 GiB, written 3.0 MiB  (procfs, a lower bound)\n",
            "  system RAM used, peak    20.0 GiB of 64.0 GiB at 3.000 s  (sampled)\n",
            "  samples                  1234 every 10 ms, 2 late\n",
            "  monitor overhead         0.346 % of one core (o3 0.040 s, kernel programs 0.002 s in 12000 runs)\n",
        );
        assert_eq!(render(&s, "pid 7", Processes::Top(10)), want);
    }

    /// A 3 ms command (as `o3 record -- true` gives): no CPU % and no overhead %, and a
    /// warning that says why and what to do.
    #[test]
    fn a_command_shorter_than_ten_samples_gets_no_percentages_and_a_warning() {
        let mut s = full_summary();
        s.wall_ns = 3_000_000;
        s.rss.final_bytes = 0;
        s.cpu.total_ns = 2_000_000;
        s.cpu.avg_percent = Some(66.7);
        s.cpu.peak_percent = None;
        s.sampling.samples = 1;
        s.counters = None;
        s.rusage = None;
        s.rss.sampled_peak = None;
        s.system_memory = None;
        s.gpus.clear();
        s.gpu_processes.clear();
        s.safety = None;
        s.processes.clear();
        s.warnings = vec![short_warning(&s)];
        assert!(is_short(&s));
        let want = concat!(
            "o3 record: true exited with status 3 after 0.003 s\n",
            "  peak RSS of the tree     3.0 GiB at 2.500 s  (exact, kernel programs)\n",
            "  CPU time of the tree     0.002 s  (exact, kernel programs)\n",
            "  samples                  1 every 10 ms, 2 late\n",
            "  monitor overhead         o3 0.040 s, kernel programs 0.002 s in 12000 runs\n",
            "  warning: the command took less than 100 ms, the least for 10 samples at 10 ms and one full 100 ms CPU window: CPU % and the monitor's overhead % are not meaningful at this duration (the text summary leaves them out); CPU time, peak RSS and the counters still hold. For CPU %, record a longer run, e.g. the command in a loop: o3 record -- sh -c 'for i in $(seq 100); do CMD; done'\n",
        );
        assert_eq!(render(&s, "true", Processes::Top(10)), want);
        // At 1 s a sample, 10 samples take 10 s.
        s.sampling.interval_ns = 1_000_000_000;
        s.wall_ns = 9_000_000_000;
        assert!(is_short(&s));
        s.wall_ns = 10_000_000_000;
        assert!(!is_short(&s));
        s.target = serde_json::json!({"pid": 7});
        assert!(short_warning(&s).starts_with("the recording lasted less than 10000 ms"));
        assert!(short_warning(&s).ends_with("record longer (--duration)"));
    }

    #[test]
    fn a_long_run_still_omits_the_rates_that_cannot_be_right() {
        let mut s = full_summary();
        s.cpu.avg_percent = None;
        s.cpu.peak_percent = None;
        let text = render(&s, "x", Processes::Top(10));
        assert!(
            text.contains("  CPU time of the tree     9.000 s  (exact, kernel programs)\n"),
            "{text}"
        );
        s.cpu.avg_percent = Some(50.0);
        let text = render(&s, "x", Processes::Top(10));
        assert!(text.contains("9.000 s  avg 50.0 %  (exact"), "{text}");
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(ExitInfo::from_status(7 << 8).shell_code(), 7);
        assert_eq!(ExitInfo::from_status(9).shell_code(), 137);
        // A real-time signal (SIGRTMIN + 3) keeps its number; a core dump its signal.
        assert_eq!(ExitInfo::from_status(37).signal, Some(37));
        assert_eq!(ExitInfo::from_status(0x80 | 11).shell_code(), 139);
        assert_eq!(ExitInfo::from_status(0).code, Some(0));
    }

    #[test]
    fn cpu_lists_are_counted() {
        assert_eq!(count_cpu_list("0-31\n"), Some(32));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("0-3,8,10-11"), Some(7));
        assert_eq!(count_cpu_list(""), None);
        assert_eq!(count_cpu_list("3-1"), None);
        assert!(online_cpus() >= 1);
    }
}
