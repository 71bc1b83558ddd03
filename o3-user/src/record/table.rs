//! The text summary's process table: the commands with the largest peaks, grouped by name (a
//! shell loop of 300 `sleep`s is one row), or every process with `--all-processes`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::telemetry::ProcessPeak;
use crate::util::units::{bytes, secs};

/// The processes of one command name.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandRow {
    pub comm: String,
    pub processes: usize,
    /// The largest peak of one of them.
    pub peak_rss_bytes: u64,
    /// Their CPU time summed; `None` where none of them was measured.
    pub cpu_ns: Option<u64>,
}

/// One row per command name, largest peak first (then most CPU, then by name).
pub fn by_command(processes: &[ProcessPeak]) -> Vec<CommandRow> {
    let mut rows: BTreeMap<&str, CommandRow> = BTreeMap::new();
    for p in processes {
        let r = rows.entry(&p.comm).or_insert_with(|| CommandRow {
            comm: p.comm.clone(),
            processes: 0,
            peak_rss_bytes: 0,
            cpu_ns: None,
        });
        r.processes += 1;
        r.peak_rss_bytes = r.peak_rss_bytes.max(p.peak_rss_bytes);
        if let Some(c) = p.cpu_ns {
            r.cpu_ns = Some(r.cpu_ns.unwrap_or(0) + c);
        }
    }
    let mut rows: Vec<CommandRow> = rows.into_values().collect();
    rows.sort_by(|a, b| {
        b.peak_rss_bytes
            .cmp(&a.peak_rss_bytes)
            .then(b.cpu_ns.cmp(&a.cpu_ns))
            .then(a.comm.cmp(&b.comm))
    });
    rows
}

/// At most `n` command rows under a header that says what each column is, and how many
/// commands were left out; nothing without processes.
pub fn top_commands(o: &mut String, processes: &[ProcessPeak], n: usize) {
    if processes.is_empty() {
        return;
    }
    let rows = by_command(processes);
    let _ = writeln!(
        o,
        "  commands by peak RSS (PROCS: processes of that name; PEAK RSS: the largest one's; CPU: summed over them)"
    );
    let _ = writeln!(
        o,
        "  {:>8}  {:>12}  {:>10}  COMMAND",
        "PROCS", "PEAK RSS", "CPU"
    );
    for r in rows.iter().take(n) {
        let cpu = r.cpu_ns.map_or("-".to_string(), secs);
        let _ = writeln!(
            o,
            "  {:>8}  {:>12}  {:>10}  {}",
            r.processes,
            bytes(r.peak_rss_bytes),
            cpu,
            r.comm
        );
    }
    if rows.len() > n {
        let more = rows.len() - n;
        let s = if more == 1 { "" } else { "s" };
        let _ = writeln!(o, "  … {more} more command{s} (use --all-processes)");
    }
}

/// Every process with its RSS peak, when it was reached and its CPU time; nothing without
/// processes.
pub fn every_process(o: &mut String, processes: &[ProcessPeak]) {
    if processes.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "  {:>8}  {:>12}  {:>10}  {:>10}  COMMAND",
        "PID", "PEAK RSS", "AT", "CPU"
    );
    for p in processes {
        let cpu = p.cpu_ns.map_or("-".to_string(), secs);
        let _ = writeln!(
            o,
            "  {:>8}  {:>12}  {:>10}  {:>10}  {}",
            p.pid,
            bytes(p.peak_rss_bytes),
            secs(p.peak_t_ns),
            cpu,
            p.comm
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, comm: &str, mib: u64, cpu_ms: Option<u64>) -> ProcessPeak {
        ProcessPeak {
            pid,
            comm: comm.into(),
            peak_rss_bytes: mib << 20,
            peak_t_ns: u64::from(pid) * 1_000_000,
            cpu_ns: cpu_ms.map(|c| c * 1_000_000),
        }
    }

    /// A shell that started 300 `sleep`s, a python behind a pyenv shim, and 3 small tools.
    fn tree() -> Vec<ProcessPeak> {
        let mut v = vec![
            p(1, "sh", 4, Some(20)),
            p(2, "python3", 900, Some(5000)),
            p(3, "pyenv", 3, None),
        ];
        for i in 0..300 {
            v.push(p(10 + i, "sleep", 1 + u64::from(i % 3 == 0), Some(1)));
        }
        for (i, c) in ["cut", "head", "tr"].iter().enumerate() {
            v.push(p(400 + i as u32, c, 1, Some(0)));
        }
        v
    }

    #[test]
    fn commands_are_grouped_with_count_largest_peak_and_summed_cpu() {
        let rows = by_command(&tree());
        assert_eq!(rows.len(), 7);
        assert_eq!(rows[0].comm, "python3");
        let sleep = rows.iter().find(|r| r.comm == "sleep").unwrap();
        assert_eq!(sleep.processes, 300);
        assert_eq!(sleep.peak_rss_bytes, 2 << 20);
        assert_eq!(sleep.cpu_ns, Some(300_000_000));
        let shim = rows.iter().find(|r| r.comm == "pyenv").unwrap();
        assert_eq!(shim.cpu_ns, None);
    }

    #[test]
    fn the_top_table_is_cut_and_says_how_many_more() {
        let mut o = String::new();
        top_commands(&mut o, &tree(), 4);
        let want = concat!(
            "  commands by peak RSS (PROCS: processes of that name; PEAK RSS: the largest one's; CPU: summed over them)\n",
            "     PROCS      PEAK RSS         CPU  COMMAND\n",
            "         1     900.0 MiB     5.000 s  python3\n",
            "         1       4.0 MiB     0.020 s  sh\n",
            "         1       3.0 MiB           -  pyenv\n",
            "       300       2.0 MiB     0.300 s  sleep\n",
            "  … 3 more commands (use --all-processes)\n",
        );
        assert_eq!(o, want);
        let mut all = String::new();
        top_commands(&mut all, &tree(), 7);
        assert!(!all.contains("more command"), "{all}");
        assert_eq!(all.lines().count(), 9);
    }

    #[test]
    fn every_process_is_one_row_of_its_own() {
        let mut o = String::new();
        every_process(&mut o, &tree()[..2]);
        let want = concat!(
            "       PID      PEAK RSS          AT         CPU  COMMAND\n",
            "         1       4.0 MiB     0.001 s     0.020 s  sh\n",
            "         2     900.0 MiB     0.002 s     5.000 s  python3\n",
        );
        assert_eq!(o, want);
        let mut none = String::new();
        every_process(&mut none, &[]);
        top_commands(&mut none, &[], 10);
        assert_eq!(none, "");
    }
}
