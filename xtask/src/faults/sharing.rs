//! Scenarios that share: runs on one learning store, recordings at the same time.

use super::*;

/// The stores of the shared-store rounds: three start on a file that does not exist yet (two
/// o3 creating one store at once), two more share the first round's.
pub(super) const SHARED_ROUNDS: &[&str] = &["one.db", "two.db", "three.db", "one.db", "one.db"];

/// Two simulated runs at once on one store, in rounds: both exit 0 each time and each store
/// then holds every run that did.
pub(super) fn shared_store(s: &mut Suite, c: &mut Scn) -> Result<String> {
    // (store, run directory) of each run that exited 0.
    let mut finished: Vec<(PathBuf, PathBuf)> = Vec::new();
    for (round, name) in SHARED_ROUNDS.iter().enumerate() {
        let db = c.dir.join(name);
        let mut running = Vec::new();
        for side in ["a", "b"] {
            let run = c.dir.join(format!("run{}{side}", round + 1));
            running.push((
                run.clone(),
                c.start(s.simulated(c, &run, &db), SHORT_LIMIT)?,
            ));
        }
        for (run, r) in running {
            let out = c.finish(r);
            if out.code() == Some(0) {
                finished.push((db.clone(), run));
            } else {
                c.problem(format!(
                    "round {} ({}): {}",
                    round + 1,
                    if SHARED_ROUNDS[..round].contains(name) {
                        "a store in use"
                    } else {
                        "a new store"
                    },
                    out.brief()
                ));
            }
        }
    }
    let mut stores: Vec<&str> = SHARED_ROUNDS.to_vec();
    stores.sort_unstable();
    stores.dedup();
    let mut missing = Vec::new();
    for name in stores {
        let db = c.dir.join(name);
        let mut history = c.o3();
        history.arg("history").arg("--db").arg(&db).arg("--json");
        let out = c.run(history, SHORT_LIMIT)?;
        let j = out.success().context("o3 history")?;
        let stored: Vec<&str> = j["runs"]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r["run_dir"].as_str()).collect())
            .unwrap_or_default();
        missing.extend(
            finished
                .iter()
                .filter(|(d, _)| *d == db)
                .map(|(_, r)| r.display().to_string())
                .filter(|r| !stored.contains(&r.as_str())),
        );
    }
    if !missing.is_empty() {
        c.lose(
            missing.len() as u64,
            format!("runs that exited 0 missing from their store: {missing:?}"),
        );
    }
    let all = 2 * SHARED_ROUNDS.len();
    Ok(format!(
        "{} rounds of 2 at once: {} of {all} exited 0, {} stored",
        SHARED_ROUNDS.len(),
        finished.len(),
        finished.len() - missing.len(),
    ))
}

/// Three recordings at once, each of a process holding 64 MiB: each reports its peak.
pub(super) fn three_records(s: &mut Suite, c: &mut Scn) -> Result<String> {
    let mut running = Vec::new();
    for _ in 0..3 {
        let mut cmd = c.o3();
        cmd.args(["record", "--json", "--"]).arg(&s.workload).args([
            "spike",
            "--mib",
            "64",
            "--hold-us",
            "1000",
            "--repeat",
            "5",
        ]);
        running.push(c.start(cmd, SHORT_LIMIT)?);
    }
    let mut peaks = Vec::new();
    let mut method = String::new();
    for r in running {
        let out = c.finish(r);
        match out.success() {
            Ok(j) => {
                let peak = count(&j["rss"]["peak_bytes"]);
                method = j["rss"]["method"].as_str().unwrap_or("?").to_string();
                if peak < 64 << 20 {
                    c.problem(format!(
                        "peak RSS {peak} bytes is below 64 MiB: {}",
                        out.what
                    ));
                }
                peaks.push(format!("{:.1}", peak as f64 / f64::from(1 << 20)));
            }
            Err(e) => c.problem(format!("{e:#}")),
        }
    }
    Ok(format!("peaks {} MiB ({method})", peaks.join(", ")))
}
