//! The machine's processes ranked by resident memory and by GPU memory, for the live view of
//! `o3 monitor --tui`: one scan of `<procfs>/*/stat` and `statm` per refresh, and the GPU
//! readers' per-process memory (DRM fdinfo + KFD, NVML).

use std::path::Path;

use crate::trace::gpu::ProcessGpu;

use super::procfs::{parse_stat, parse_statm, pid_dirs};

/// One process: its command name, resident memory and GPU memory (0 without any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopProcess {
    pub pid: u32,
    pub command: String,
    pub rss_bytes: u64,
    /// VRAM + GTT + KFD VRAM over the process's GPU clients.
    pub gpu_bytes: u64,
}

/// Every process under `procfs` with its command name and RSS; those that vanish or cannot
/// be read while scanning are left out.
pub fn scan(procfs: &Path, page_size: u64) -> Vec<TopProcess> {
    let Ok(dirs) = pid_dirs(procfs) else {
        return Vec::new();
    };
    dirs.filter_map(|(pid, dir)| {
        let stat = parse_stat(&std::fs::read_to_string(dir.join("stat")).ok()?).ok()?;
        let statm = parse_statm(&std::fs::read_to_string(dir.join("statm")).ok()?).ok()?;
        Some(TopProcess {
            pid,
            command: stat.comm,
            rss_bytes: statm.resident_pages.saturating_mul(page_size),
            gpu_bytes: 0,
        })
    })
    .collect()
}

/// Adds each process's GPU memory to `procs`.
pub fn add_gpu(procs: &mut [TopProcess], gpu: &[ProcessGpu]) {
    for p in procs.iter_mut() {
        if let Some(g) = gpu.iter().find(|g| g.pid == p.pid) {
            p.gpu_bytes = g
                .vram_bytes
                .saturating_add(g.gtt_bytes)
                .saturating_add(g.kfd_vram_bytes);
        }
    }
}

/// The `n` processes with the most GPU memory (those with some), and the `n` with the most
/// RSS; ties by pid.
pub fn rank(procs: &[TopProcess], n: usize) -> (Vec<TopProcess>, Vec<TopProcess>) {
    let mut by_gpu: Vec<TopProcess> = procs.iter().filter(|p| p.gpu_bytes > 0).cloned().collect();
    by_gpu.sort_by(|a, b| b.gpu_bytes.cmp(&a.gpu_bytes).then(a.pid.cmp(&b.pid)));
    by_gpu.truncate(n);
    let mut by_rss = procs.to_vec();
    by_rss.sort_by(|a, b| b.rss_bytes.cmp(&a.rss_bytes).then(a.pid.cmp(&b.pid)));
    by_rss.truncate(n);
    (by_gpu, by_rss)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tests/fixtures/procfs: 1234 and 1300, RSS from their statm (resident pages).
    #[test]
    fn scans_and_ranks_the_fixture_processes() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/procfs");
        let mut procs = scan(&root, 4096);
        procs.sort_by_key(|p| p.pid);
        let statm = |pid: &str| {
            let t = std::fs::read_to_string(root.join(pid).join("statm")).unwrap();
            t.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
        };
        assert_eq!(
            procs
                .iter()
                .map(|p| (p.pid, p.rss_bytes))
                .collect::<Vec<_>>(),
            [(1234, statm("1234")), (1300, statm("1300"))]
        );
        add_gpu(
            &mut procs,
            &[ProcessGpu {
                pid: 1300,
                vram_bytes: 1,
                gtt_bytes: 2,
                kfd_vram_bytes: 4,
                engine_ns: 0,
            }],
        );
        let (by_gpu, by_rss) = rank(&procs, 1);
        assert_eq!((by_gpu[0].pid, by_gpu[0].gpu_bytes), (1300, 7));
        assert_eq!(by_rss.len(), 1);
        assert_eq!(by_rss[0].rss_bytes, statm("1234").max(statm("1300")));
    }
}
