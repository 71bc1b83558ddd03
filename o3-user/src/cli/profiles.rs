//! `o3 profiles`: the hosts in the results store and, per model, the best presets learned there.

use std::path::PathBuf;

use crate::backend::ProbeConfig;
use crate::learn::store::{PresetRow, Profile};

use super::history::{no_history_yet, open_existing, table};
use super::{stdout, CliResult, Roots};
use crate::util::units::utc;

#[derive(Debug, clap::Args)]
pub struct ProfilesArgs {
    /// The results store (default: $XDG_DATA_HOME/o3/o3.db or ~/.local/share/o3/o3.db).
    #[arg(long, value_name = "FILE")]
    pub db: Option<PathBuf>,
    /// Print the hosts and presets as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `ctx 32768 · batch 512 · 4 slots · flash-attn on · KV q8_0/q8_0 · 16 threads`.
pub fn config_text(c: &ProbeConfig) -> String {
    let mut s = vec![format!("ctx {}", c.ctx)];
    if let Some(b) = c.batch {
        s.push(format!("batch {b}"));
    }
    if let Some(u) = c.ubatch {
        s.push(format!("ubatch {u}"));
    }
    if let Some(p) = c.parallel {
        s.push(format!("{p} slot{}", if p == 1 { "" } else { "s" }));
    }
    if let Some(l) = c.gpu_layers {
        s.push(if l < 0 {
            "all layers on GPU".into()
        } else {
            format!("{l} GPU layers")
        });
    }
    if let Some(fa) = c.flash_attn {
        s.push(format!("flash-attn {}", fa.name()));
    }
    match (&c.cache_type_k, &c.cache_type_v) {
        (None, None) => {}
        (k, v) => s.push(format!(
            "KV {}/{}",
            k.as_deref().unwrap_or("default"),
            v.as_deref().unwrap_or("default")
        )),
    }
    if let Some(t) = c.threads {
        s.push(format!("{t} threads"));
    }
    s.join(" · ")
}

/// A preset's numbers in words; legacy numbers are labelled for what they were.
fn metrics_text(p: &PresetRow) -> String {
    let m = &p.metrics;
    let num = |v: &serde_json::Value| v.as_f64();
    if let Some(perf) = m.get("performance") {
        let mut parts = Vec::new();
        if let Some(t) = perf.get("tokens_per_sec").and_then(num) {
            parts.push(format!("{t:.1} words/s"));
        }
        if let Some(t) = perf.get("ttft_ms").and_then(num) {
            parts.push(format!("total time {t:.0} ms"));
        }
        return format!("legacy, untrusted: {}", parts.join(", "));
    }
    let mut parts = Vec::new();
    if let Some(c) = m.get("concurrency").and_then(serde_json::Value::as_u64) {
        parts.push(format!("concurrency {c}"));
    }
    if let Some(t) = m.get("output_tokens_per_s").and_then(num) {
        parts.push(format!("{t:.1} tok/s"));
    }
    if let Some(t) = m.get("ttft_p95_ms").and_then(num) {
        parts.push(format!("TTFT p95 {t:.0} ms"));
    }
    if p.config.is_none() {
        if let Some(w) = m.get("why").and_then(serde_json::Value::as_str) {
            parts.push(w.to_string());
        }
    }
    parts.join(", ")
}

pub fn render(profiles: &[Profile]) -> String {
    let mut out = String::new();
    for p in profiles {
        if !out.is_empty() {
            out.push('\n');
        }
        out += &format!("host {}: {}\n", p.host_id, p.summary);
        if !p.host.is_legacy_placeholder() {
            out += &format!(
                "  first seen {}, last seen {} (UTC)\n",
                utc(p.first_seen_unix_s),
                utc(p.last_seen_unix_s)
            );
        }
        if p.models.is_empty() {
            out += "  no finished run yet\n";
        }
        for m in &p.models {
            let when = m.finished_unix_s.map(utc).unwrap_or_else(|| "-".into());
            let basis = if m.imported {
                "imported (untrusted)".to_string()
            } else {
                match m.max_context {
                    Some(c) => format!("validated max context {c}"),
                    None => "no validated max context".into(),
                }
            };
            out += &format!("  {} (run {}, {when}, {basis})\n", m.model, m.run_id);
            if m.presets.is_empty() {
                out += "    no presets\n";
                continue;
            }
            let rows: Vec<Vec<String>> = m
                .presets
                .iter()
                .map(|p| {
                    vec![
                        p.name.clone(),
                        p.config
                            .as_ref()
                            .map(config_text)
                            .unwrap_or_else(|| "none qualified".into()),
                        metrics_text(p),
                    ]
                })
                .collect();
            out += &table(&rows, "    ");
        }
    }
    out
}

pub fn run(_roots: &Roots, a: ProfilesArgs) -> CliResult {
    let (path, store) = open_existing(a.db)?;
    let Some(store) = store else {
        no_history_yet(&path, a.json, "hosts")?;
        return Ok(0);
    };
    let profiles = store.profiles().map_err(|e| (anyhow::Error::new(e), 1))?;
    if a.json {
        let v = serde_json::json!({
            "schema_version": 1,
            "generated_unix_s": crate::util::system::unix_now_ns() / 1_000_000_000,
            "db": path.display().to_string(),
            "exists": true,
            "hosts": profiles,
        });
        stdout::line(v)?;
    } else if profiles.is_empty() {
        stdout::line(format!("no hosts in {} yet", path.display()))?;
    } else {
        stdout::print(&render(&profiles))?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_in_words() {
        let c = ProbeConfig {
            ctx: 32768,
            batch: Some(512),
            parallel: Some(4),
            flash_attn: Some(crate::backend::FlashAttn::On),
            cache_type_k: Some("q8_0".into()),
            cache_type_v: Some("q8_0".into()),
            threads: Some(16),
            ..ProbeConfig::default()
        };
        assert_eq!(
            config_text(&c),
            "ctx 32768 · batch 512 · 4 slots · flash-attn on · KV q8_0/q8_0 · 16 threads"
        );
    }

    #[test]
    fn legacy_metrics_say_what_they_were() {
        let p = PresetRow {
            name: "balanced".into(),
            config: Some(ProbeConfig::default()),
            metrics: serde_json::json!({"performance": {"tokens_per_sec": 43.8, "ttft_ms": 4388.1}}),
        };
        assert_eq!(
            metrics_text(&p),
            "legacy, untrusted: 43.8 words/s, total time 4388 ms"
        );
    }
}
