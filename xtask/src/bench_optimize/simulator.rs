//! The simulated servers: every variant on each profile, against the simulator's truth.

use super::*;

pub(super) fn simulator(o3: &Path, tmp: &Path, v: &mut Verdicts) -> Result<String> {
    let dir = root().join("bench/optimize");
    let mut md = String::new();
    for p in &PROFILES {
        md += &profile_section(o3, tmp, &dir, p, v)?;
    }
    Ok(md)
}

/// The variants run on every simulated server, in this order; the first five are checked.
pub(super) const SIM_VARIANTS: [Variant; 6] = [O3, STRICT, NO_BUDGET, FILLED, LINEAR, GRID];

/// One simulated server: every variant's run, the verdicts they feed, and its table.
pub(super) fn profile_section(
    o3: &Path,
    tmp: &Path,
    dir: &Path,
    p: &Profile,
    v: &mut Verdicts,
) -> Result<String> {
    let truth_file = dir.join(p.file);
    let source: Value = read_json(&truth_file)?;
    let runs: Vec<Run> = SIM_VARIANTS
        .iter()
        .map(|x| sim_run(o3, tmp, dir, p, &truth_file, *x))
        .collect::<Result<_>>()?;
    let t = truth(&runs[0])?;
    record_sim_verdicts(v, p, &runs, &t);
    let mut md = profile_head(p, &source, &t, &runs);
    for (x, r) in SIM_VARIANTS.iter().zip(&runs) {
        md += &variant_row(x, r, &t, runs[0].granularity);
    }
    md += "\n";
    Ok(md)
}

/// Runs one variant on a simulated server, its configuration composed from the profile's and
/// the variant's fragments.
pub(super) fn sim_run(
    o3: &Path,
    tmp: &Path,
    dir: &Path,
    p: &Profile,
    truth_file: &Path,
    x: Variant,
) -> Result<Run> {
    let name = format!("{}-{}", p.key, x.key);
    let mut parts: Vec<PathBuf> = p.config.iter().map(|c| dir.join(c)).collect();
    if x.every_filled {
        parts.push(dir.join(EVERY_PROBE_FILLED));
    }
    if x.min_budget {
        parts.push(dir.join(MIN_BUDGET));
    }
    let mut args: Vec<OsString> = vec!["--simulate".into(), truth_file.to_path_buf().into()];
    if let Some(c) = compose(&tmp.join(format!("{name}.yaml")), &parts)? {
        args.push("--config".into());
        args.push(c.into());
    }
    if x.no_budget {
        args.push("--budget".into());
        args.push("none".into());
    }
    optimize(o3, &tmp.join(&name), &args, x.strategy)
}

/// A run's whole time in floors.
pub(super) fn units(r: &Run, t: &Truth) -> f64 {
    r.time_s / t.floor_s
}

/// What one simulated server's runs add to the verdicts.
pub(super) fn record_sim_verdicts(v: &mut Verdicts, p: &Profile, runs: &[Run], t: &Truth) {
    for (x, r) in SIM_VARIANTS.iter().zip(runs).take(5) {
        v.check(format!("{}, {}", p.key, x.label), r, t);
        if x.strategy == "binary" {
            v.bound(r);
        }
    }
    v.bound_detail.push(format!(
        "{} {}/{}",
        p.key,
        runs[..4].iter().map(|r| r.search_probes).max().unwrap_or(0),
        log_bound(&runs[0])
    ));
    if p.target {
        v.floors.push((p.key.to_string(), units(&runs[0], t)));
        if let Some(f) = runs[0].o3_floor_s {
            v.own_floors.push((p.key.to_string(), runs[0].time_s / f));
        }
        v.strict.push((p.key.to_string(), units(&runs[1], t)));
        v.before.push((p.key.to_string(), units(&runs[3], t)));
    }
}

/// A simulated server's heading, truth, floor and table head.
pub(super) fn profile_head(p: &Profile, source: &Value, t: &Truth, runs: &[Run]) -> String {
    let g = runs[0].granularity;
    let stable = if t.stable < t.loads {
        format!(", passes filled validation only up to {}", t.stable)
    } else {
        String::new()
    };
    let config = match p.config {
        Some(c) => format!("`--config` with `bench/optimize/{c}`"),
        None => "o3's default configuration".into(),
    };
    format!(
        "### {label}\n\n`bench/optimize/{file}`, {config}. {source}\n\n\
Truth at the search's batch {batch} with one slot: loads up to {loads} tokens{stable}. Expected answer: **{answer}**. \
Floor: **{floor}** (one load, one prompt of 90 % of {answer} less the output, one sample's decode, at the fastest batch of the ladder that loads there). \
Searched {low}..{high} step {g}: ceil(log2({n})) + 1 = {bound} search probes at most.\n\n\
| run | found | error (granules) | search probes | probes | did not pass | whole run | floors | {stage_heads} | cut | predicted at start |\n\
|---|---|---|---|---|---|---|---|{stage_rule}---|---|\n",
        label = p.label,
        file = p.file,
        source = source["source"].as_str().unwrap_or("(no source given)"),
        batch = t.batch,
        loads = t.loads,
        answer = show_ctx(t.answer),
        floor = show_time(t.floor_s),
        low = runs[0].low,
        high = runs[0].high,
        n = (runs[0].high - runs[0].low) / g,
        bound = log_bound(&runs[0]),
        stage_heads = STAGES.join(" | "),
        stage_rule = "---|".repeat(STAGES.len()),
    )
}

/// One variant's row of a simulated server's table.
pub(super) fn variant_row(x: &Variant, r: &Run, t: &Truth, g: u64) -> String {
    let stages: Vec<String> = STAGES
        .iter()
        .map(|s| match r.stages.get(s) {
            Some(secs) => format!("{:.2}", secs / t.floor_s),
            None => "–".into(),
        })
        .collect();
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | **{:.2}** | {} | {} | {} |\n",
        x.label,
        show_ctx(r.validated),
        show_error(error(r.validated, t.answer, g)),
        if x.strategy == "grid" {
            "–".to_string()
        } else {
            r.search_probes.to_string()
        },
        r.probes,
        tally(&r.failed),
        show_time(r.time_s),
        units(r, t),
        stages.join(" | "),
        r.cut,
        r.predicted_s.map_or("–".into(), show_time),
    )
}
