//! What a run leaves: summary.json (the presets, every measurement, the plan, the peaks),
//! presets.yaml, each preset's artefacts (Modelfile, server environment, start script), and
//! the run's end in the results store.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::backend::ProbeConfig;
use crate::learn::running::RunningError;
use crate::learn::store::{Checked, Store};
use crate::optimize::search::{self, Measured, Report};
use crate::optimize::target::BackendKind;
use crate::optimize::{artefacts, plan, presets, prune};
use crate::probe::BackendSpec;

use super::prober::Any;
use super::runfile::{self, write_file, RunFile, StoreRef};
use super::search_loop::Searched;
use super::RunError;

/// A preset with what serves it.
#[derive(Debug, Serialize)]
pub struct PresetOut {
    #[serde(flatten)]
    pub preset: presets::Preset,
    /// Its context was proven by a request filled to `prompt.fill` of it (false: prompts were
    /// capped, "not proven at depth"); `None` for an empty category.
    pub proven_at_depth: Option<bool>,
    pub artefacts: Option<artefacts::Artefacts>,
}

/// summary.json.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub schema_version: u32,
    pub o3_version: &'static str,
    pub run_dir: String,
    pub model: String,
    pub backend: BackendKind,
    pub simulated: bool,
    pub trained_context: Option<u32>,
    pub parameters: Option<u64>,
    pub fill: f64,
    pub max_prompt_tokens: Option<u32>,
    pub output_tokens: u32,
    pub presets: Vec<PresetOut>,
    pub context: search::ContextSearch,
    /// The variants compared (`variants.*`): each one's largest loading context and rates.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<search::VariantOut>,
    pub configurations: Vec<Measured>,
    pub notes: Vec<String>,
    /// Learned configurations verified and reused instead of searched.
    pub reused: Vec<String>,
    /// Why learning reused nothing, and where results are stored.
    pub learning_notes: Vec<String>,
    pub db: Option<String>,
    /// Configurations the predictor skipped in this session, with their probabilities.
    pub skipped: Vec<prune::Skip>,
    /// Would-be skips measured anyway (the exploration budget) and what they did.
    pub explored: Vec<prune::Explored>,
    pub probes: ProbesOut,
    pub peaks: PeaksOut,
    /// Predicted, spent, floor, budget, and what the budget cut.
    pub plan: plan::Report,
    /// Simulated time of all probes (simulator only), s.
    pub simulated_s: Option<f64>,
    pub wall_s: f64,
    pub interrupted: bool,
    /// Why a run that was not interrupted has nothing to serve (no preset has a
    /// configuration): the run is stored as failed and o3 exits with status 3.
    pub failure: Option<String>,
    /// What o3 predicted for this run's probes before each ran, against what they measured
    /// (`None`: results not stored, or nothing run now).
    pub predictions: Option<PredictionsOut>,
    pub finished_unix_ns: u64,
}

/// The run's predictions beside their measurements: the running error and the rows.
#[derive(Debug, Serialize)]
pub struct PredictionsOut {
    #[serde(flatten)]
    pub running: RunningError,
    /// Newest first, at most [`PREDICTION_ROWS`].
    pub rows: Vec<Checked>,
}

/// Predictions a summary lists.
pub const PREDICTION_ROWS: usize = 50;

/// This run's predictions from the store (`None` when there are none or they cannot be read:
/// they are a view of the store, never needed to serve).
pub(super) fn predictions(st: &Store, r: &StoreRef) -> Option<PredictionsOut> {
    let rows = st
        .checked_predictions(None, None, Some(r.run_id), PREDICTION_ROWS)
        .ok()?;
    Some(PredictionsOut {
        running: RunningError::of(&rows)?,
        rows,
    })
}

#[derive(Debug, Serialize)]
pub struct ProbesOut {
    pub total: u32,
    pub ran_now: u32,
    pub from_journal: u32,
    pub context_search: usize,
    pub context_search_bound: u32,
}

#[derive(Debug, Serialize)]
pub struct PeaksOut {
    /// Largest server-tree RSS peak of any probe, bytes.
    pub rss_peak_bytes: Option<u64>,
    pub rss_method: Option<String>,
    pub mem_used_peak_bytes: Option<u64>,
    pub gpu_used_peak_bytes: Option<u64>,
}

/// The run's summary: the presets chosen from what the search measured, with their artefacts.
pub(super) fn summary(
    rf: &RunFile,
    dir: &Path,
    s: Searched,
    prober: &Any,
    backend: Option<&BackendSpec>,
    started: Instant,
) -> Summary {
    let Searched {
        report,
        ran,
        replayed,
        skips,
        explored,
    } = s;
    let cfg = &rf.config;
    let presets = presets_out(&report.configurations, &cfg.presets, backend);
    let peaks = peaks(&report.configurations);
    let probes = ProbesOut {
        total: report.probes,
        ran_now: ran,
        from_journal: replayed,
        context_search: report.context.probes.len(),
        context_search_bound: report.context.probe_bound,
    };
    let Report {
        context,
        configurations,
        notes,
        interrupted,
        reused,
        plan,
        variants,
        ..
    } = report;
    let failure = failure(&presets, &configurations, interrupted);
    Summary {
        schema_version: runfile::SCHEMA_VERSION,
        o3_version: env!("CARGO_PKG_VERSION"),
        run_dir: dir.display().to_string(),
        model: rf.target.model.clone(),
        backend: rf.target.backend,
        simulated: rf.target.simulate.is_some(),
        trained_context: rf.shape.trained_context,
        parameters: rf.shape.parameters,
        fill: cfg.prompt.fill,
        max_prompt_tokens: cfg.prompt.max_prompt_tokens,
        output_tokens: cfg.prompt.output_tokens,
        presets,
        context,
        variants,
        configurations,
        notes,
        reused,
        learning_notes: rf.learning_notes.clone(),
        db: rf.store.as_ref().map(|r| r.db.display().to_string()),
        skipped: skips,
        explored,
        probes,
        peaks,
        plan,
        simulated_s: prober.simulated_s(),
        wall_s: started.elapsed().as_secs_f64(),
        interrupted,
        failure,
        predictions: None,
        finished_unix_ns: crate::util::system::unix_now_ns(),
    }
}

/// Why nothing can be served: no preset found a configuration, said with the outcomes of what
/// was measured and the first error (`None` when a preset has one, or the run was cut short).
fn failure(presets: &[PresetOut], measured: &[Measured], interrupted: bool) -> Option<String> {
    if interrupted || presets.iter().any(|p| p.preset.config.is_some()) {
        return None;
    }
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for m in measured {
        let name = m.outcome.name();
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => *c += 1,
            None => counts.push((name, 1)),
        }
    }
    let outcomes: Vec<String> = counts.iter().map(|(n, c)| format!("{c} {n}")).collect();
    let mut why = format!(
        "no configuration passed: {} configurations measured ({})",
        measured.len(),
        if outcomes.is_empty() {
            "none".into()
        } else {
            outcomes.join(", ")
        }
    );
    if let Some(e) = measured.iter().find_map(|m| m.error.as_deref()) {
        why += &format!("; first error: {}", e.lines().next().unwrap_or(e));
    }
    Some(why)
}

/// The presets chosen among `measured`, each with its artefacts and whether its context was
/// proven at depth.
fn presets_out(
    measured: &[Measured],
    cfg: &crate::config::Presets,
    backend: Option<&BackendSpec>,
) -> Vec<PresetOut> {
    presets::choose(measured, cfg)
        .into_iter()
        .map(|p| {
            let artefacts = p.config.as_ref().and_then(|c| artefacts_for(backend, c));
            let proven_at_depth = p.chosen.as_ref().map(|id| {
                measured
                    .iter()
                    .any(|m| &m.id == id && m.stable && m.proven_at_depth)
            });
            PresetOut {
                preset: p,
                proven_at_depth,
                artefacts,
            }
        })
        .collect()
}

/// What serves `cfg` on the backend the run measured (none for a simulated run).
fn artefacts_for(backend: Option<&BackendSpec>, cfg: &ProbeConfig) -> Option<artefacts::Artefacts> {
    match backend? {
        // A server o3 started ran pinned (one slot, f16 cache unless asked): so do its
        // artefacts. A server o3 reached at --url ran as its owner set it up.
        BackendSpec::Ollama {
            model,
            serve: Some(_),
            ..
        } => artefacts::ollama(model, &crate::backend::ollama::pinned(cfg)).ok(),
        BackendSpec::Ollama { model, .. } => artefacts::ollama(model, cfg).ok(),
        // A build compared (`--server-bin` twice) serves with its own binary; the flags' names
        // are the run's first build's (llama-server builds of one source share them).
        BackendSpec::LlamaServer { bin, model, flags } => {
            let bin = cfg.server_bin.as_deref().unwrap_or(bin);
            artefacts::llama_server(bin, flags, Path::new(model), cfg, "127.0.0.1", 8080).ok()
        }
        BackendSpec::OpenAi {
            template, model, ..
        } => artefacts::template(template, model, cfg, "127.0.0.1", 8080).ok(),
    }
}

/// The largest peaks of any probe, and how RSS was measured.
fn peaks(measured: &[Measured]) -> PeaksOut {
    let max_by = |f: fn(&Measured) -> Option<u64>| measured.iter().filter_map(f).max();
    PeaksOut {
        rss_peak_bytes: max_by(|m| m.rss_peak_bytes),
        rss_method: measured
            .iter()
            .find(|m| m.rss_peak_bytes.is_some())
            .map(|m| m.rss_method.clone()),
        mem_used_peak_bytes: max_by(|m| m.mem_used_peak_bytes),
        gpu_used_peak_bytes: max_by(|m| m.gpu_used_peak_bytes),
    }
}

/// The run's end in the results store: how it ended, the validated maximum and the presets,
/// or why it failed.
pub(super) fn finish_store(st: &Store, r: &StoreRef, s: &Summary) -> Result<(), RunError> {
    if let Some(why) = &s.failure {
        st.fail_run(r.run_id, why)?;
        return Ok(());
    }
    let presets: Vec<(String, serde_json::Value)> = s
        .presets
        .iter()
        .filter(|p| p.preset.config.is_some())
        .map(|p| {
            (
                p.preset.name.to_string(),
                serde_json::to_value(&p.preset).unwrap_or_default(),
            )
        })
        .collect();
    let validated = s.context.validated;
    st.finish_run(
        r.run_id,
        if s.interrupted {
            "interrupted"
        } else {
            "finished"
        },
        validated,
        validated.map(|v| {
            s.configurations
                .iter()
                .any(|m| m.config.ctx == v && m.stable && m.proven_at_depth)
        }),
        &presets,
    )?;
    Ok(())
}

/// Writes summary.json, presets.yaml and the artefacts into `dir`; returns the summary's JSON.
pub(super) fn write(dir: &Path, s: &Summary) -> Result<String, RunError> {
    let json = serde_json::to_string(s).expect("summary serialises");
    write_file(&dir.join("summary.json"), json.as_bytes())?;
    write_file(&dir.join("presets.yaml"), presets_yaml(s).as_bytes())?;
    write_artefacts(&dir.join("artefacts"), &s.presets)?;
    Ok(json)
}

/// Each preset's artefacts: `<name>.Modelfile`, `<name>.env`, `<name>.sh` (executable).
fn write_artefacts(adir: &Path, presets: &[PresetOut]) -> Result<(), RunError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(adir).map_err(|e| RunError::io("create", adir, e))?;
    for p in presets {
        let Some(art) = &p.artefacts else { continue };
        let name = p.preset.name;
        if let Some(m) = &art.modelfile {
            write_file(&adir.join(format!("{name}.Modelfile")), m.as_bytes())?;
        }
        if !art.server_env.is_empty() {
            let env = art.server_env.join("\n") + "\n";
            write_file(&adir.join(format!("{name}.env")), env.as_bytes())?;
        }
        if let Some(c) = &art.command_line {
            let sh = adir.join(format!("{name}.sh"));
            write_file(&sh, preset_script(name, c).as_bytes())?;
            std::fs::set_permissions(&sh, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| RunError::io("make executable", &sh, e))?;
        }
    }
    Ok(())
}

/// A preset's start script: the command measured, with the port (8080 in the command) taken
/// from `$PORT` when set, so a second server can start beside the first.
fn preset_script(name: &str, command: &str) -> String {
    let command = command.replacen(" --port 8080", " --port \"${PORT:-8080}\"", 1);
    format!(
        "#!/bin/sh\n# o3 preset {name}: the server command as measured (every flag that changes \
         memory or speed pinned); PORT overrides the port.\nexec {command}\n"
    )
}

/// presets.yaml: the model, the backend, and each preset as summary.json has it.
fn presets_yaml(s: &Summary) -> String {
    #[derive(Serialize)]
    struct Y<'a> {
        model: &'a str,
        backend: BackendKind,
        presets: std::collections::BTreeMap<&'static str, serde_yaml::Value>,
    }
    let presets = s
        .presets
        .iter()
        .map(|p| {
            let v = serde_yaml::to_value(p).unwrap_or(serde_yaml::Value::Null);
            (p.preset.name, v)
        })
        .collect();
    serde_yaml::to_string(&Y {
        model: &s.model,
        backend: s.backend,
        presets,
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preset_script_takes_its_port_from_the_environment() {
        let s = preset_script("balanced", "llama-server -m m.gguf --port 8080 -c 8192");
        assert!(s.starts_with("#!/bin/sh\n# o3 preset balanced: "), "{s}");
        assert!(
            s.ends_with("\nexec llama-server -m m.gguf --port \"${PORT:-8080}\" -c 8192\n"),
            "{s}"
        );
        // A command without the port is kept as it is.
        assert!(preset_script("x", "serve --listen 1").ends_with("exec serve --listen 1\n"));
    }

    #[test]
    fn no_backend_no_artefacts() {
        assert!(artefacts_for(None, &ProbeConfig::default()).is_none());
    }
}
