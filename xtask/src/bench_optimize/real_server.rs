//! The real test server: o3 and the earlier probe design interleaved, compared as ratios
//! within one run.

use super::*;

pub(super) fn home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
}

/// The 1-, 5- and 15-minute load averages as /proc/loadavg gives them.
pub(super) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

pub(super) fn real_server(o3: &Path, tmp: &Path, v: &mut Verdicts) -> Result<String> {
    let title = "### Real server: llama-server, tiny test model, `config/short.yaml`\n\n";
    let real = RealServer {
        server: home().join(".cache/o3/llama-server/bin/llama-server"),
        model: home().join(".cache/o3/models/o3-tiny-llama.gguf"),
        short: root().join("config/short.yaml"),
    };
    if let Some(missing) = [&real.server, &real.model]
        .into_iter()
        .find(|p| !p.is_file())
    {
        let why = format!(
            "{} is missing (`cargo xtask setup` installs it)",
            missing.display()
        );
        eprintln!("xtask: bench optimize: real server skipped: {why}");
        return Ok(format!("{title}Skipped: {why}.\n\n"));
    }
    // o3 and the earlier design both without a budget: the same stages, each probe as designed.
    let o3_all = Variant {
        label: "o3, `--budget none`",
        ..NO_BUDGET
    };
    let variants = [o3_all, FILLED, LINEAR];
    let load_before = loadavg();
    let runs = real.rounds(o3, tmp, &variants)?;
    let load_after = loadavg();
    let ratios: Vec<f64> = runs[0]
        .iter()
        .zip(&runs[1])
        .map(|(a, b)| a.time_s / b.time_s)
        .collect();
    let cache = smallest_cache_share(&runs[0]);
    let answers: Vec<Option<u64>> = runs.iter().flatten().map(|r| r.validated).collect();
    let agree = answers.windows(2).all(|w| w[0] == w[1]);
    v.real = Some(RealVerdict {
        median_ratio: median_time(&runs[0]) / median_time(&runs[1]),
        ratios: ratios.clone(),
        cache,
        agree,
    });
    for r in &runs[0] {
        v.bound(r);
    }
    let rows = real_rows(&variants, &runs);
    let cache_line = cache_line(cache);
    Ok(format!(
        "{title}`o3 optimize --backend llama-server --server-bin ~/.cache/o3/llama-server/bin/llama-server --model ~/.cache/o3/models/o3-tiny-llama.gguf --config config/short.yaml --budget none --json --quiet --out <tmp>` \
(the earlier design: `config/short.yaml` followed by `bench/optimize/{EVERY_PROBE_FILLED}`; linear: `--strategy linear`), {REAL_ROUNDS} rounds, each running the three in turn. \
Wall time is o3's own `wall_s` (start of the search to the presets); medians of the runs, % of the earlier design's median in this one run (o3 / earlier design per round: {per_round}). \
The tiny model loads at every context on this machine, so every run's answer is the top of the range (all agree: {agree}). \
Load average (1, 5, 15 min) before these runs: {load_before}; after: {load_after}.\n\n\
| run | runs | probes | search probes | found | wall time (median) | % of the earlier design |\n|---|---|---|---|---|---|---|\n{rows}\n{cache_line}\n\n",
        per_round = ratios
            .iter()
            .map(|r| format!("{:.1} %", r * 100.0))
            .collect::<Vec<_>>()
            .join(", "),
        agree = if agree { "yes" } else { "no" },
    ))
}

/// The real test server, its model and the configuration every run starts from.
pub(super) struct RealServer {
    pub(super) server: PathBuf,
    pub(super) model: PathBuf,
    pub(super) short: PathBuf,
}

impl RealServer {
    /// The arguments of one variant's run; the earlier design's configuration is composed
    /// into `tmp`.
    pub(super) fn args(&self, tmp: &Path, x: Variant) -> Result<Vec<OsString>> {
        let config = if x.every_filled {
            let parts = [
                self.short.clone(),
                root().join("bench/optimize").join(EVERY_PROBE_FILLED),
            ];
            compose(&tmp.join(format!("real-{}.yaml", x.key)), &parts)?.expect("two parts")
        } else {
            self.short.clone()
        };
        let mut a: Vec<OsString> = vec![
            "--backend".into(),
            "llama-server".into(),
            "--server-bin".into(),
            self.server.clone().into(),
            "--model".into(),
            self.model.clone().into(),
            "--config".into(),
            config.into(),
        ];
        if x.no_budget {
            a.push("--budget".into());
            a.push("none".into());
        }
        Ok(a)
    }

    /// [`REAL_ROUNDS`] rounds, each running the variants in turn; runs per variant.
    pub(super) fn rounds(
        &self,
        o3: &Path,
        tmp: &Path,
        variants: &[Variant; 3],
    ) -> Result<[Vec<Run>; 3]> {
        let mut runs: [Vec<Run>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        for round in 0..REAL_ROUNDS {
            for (i, x) in variants.iter().enumerate() {
                let out = tmp.join(format!("real-{}-{}", x.key, round + 1));
                runs[i].push(optimize(o3, &out, &self.args(tmp, *x)?, x.strategy)?);
            }
        }
        Ok(runs)
    }
}

/// The median whole-run time of some runs.
pub(super) fn median_time(rs: &[Run]) -> f64 {
    median(&mut rs.iter().map(|r| r.time_s).collect::<Vec<_>>())
}

/// The smallest share served from the cache over the runs' cached samples, and how many
/// samples those are.
pub(super) fn smallest_cache_share(runs: &[Run]) -> Option<(f64, usize)> {
    runs.iter()
        .filter_map(|r| r.cache_share)
        .fold(None, |acc: Option<(f64, usize)>, (s, n)| match acc {
            None => Some((s, n)),
            Some((a, m)) => Some((a.min(s), m + n)),
        })
}

/// The real server's table rows, one per variant.
pub(super) fn real_rows(variants: &[Variant; 3], runs: &[Vec<Run>; 3]) -> String {
    let mut rows = String::new();
    for (i, x) in variants.iter().enumerate() {
        let rs = &runs[i];
        let found: Vec<String> = rs.iter().map(|r| show_ctx(r.validated)).collect();
        rows += &format!(
            "| {} | {} | {} | {} | {} | {:.1} s | {:.1} % |\n",
            x.label,
            rs.len(),
            rs.iter()
                .map(|r| r.probes.to_string())
                .collect::<Vec<_>>()
                .join(" / "),
            rs.iter()
                .map(|r| r.search_probes.to_string())
                .collect::<Vec<_>>()
                .join(" / "),
            found.join(" / "),
            median_time(rs),
            median_time(rs) / median_time(&runs[1]) * 100.0,
        );
    }
    rows
}

/// The line under the real server's table on how much of the cached samples' prompts the
/// server served from its cache.
pub(super) fn cache_line(cache: Option<(f64, usize)>) -> String {
    match cache {
        Some((s, n)) => format!(
            "Every one of o3's {n} samples that repeated a filled prefix was served at least {:.1} % of its prompt from the server's cache (its own `timings.cache_n`; target ≥ {:.0} %).",
            s * 100.0,
            CACHE_SHARE * 100.0
        ),
        None => "o3's runs had no cached sample with a cache count (unexpected).".into(),
    }
}
