//! The presets: which configuration each one chose and why, and how to serve it.

use serde_json::Value;

use super::cells::{describe, f0, f1, str_of};
use super::ReportDoc;

pub(super) fn presets(d: &mut ReportDoc, s: &Value) {
    let Some(ps) = s["presets"].as_array() else {
        return;
    };
    d.h2("Presets");
    d.para("Chosen among the configurations that passed validation; each row says why.");
    d.table(
        &[
            "preset",
            "configuration",
            "streams",
            "decode tok/s",
            "TTFT p95 ms",
            "score",
            "constraint",
            "why",
        ],
        ps.iter().map(preset_row).collect(),
    );
    for (names, text) in serving(ps) {
        let same = if names.len() > 1 {
            " (the same configuration)"
        } else {
            ""
        };
        d.h3(format!("{}{same}: how to serve it", names.join(", ")));
        d.code(text.trim_end());
    }
}

/// Each distinct way to serve, in the presets' order, with the presets that share it (three
/// presets that chose one configuration print one command, not the same one three times).
fn serving(ps: &[Value]) -> Vec<(Vec<String>, String)> {
    let mut out: Vec<(Vec<String>, String)> = Vec::new();
    for p in ps {
        let text = how_to_serve(&p["artefacts"]);
        if text.is_empty() {
            continue;
        }
        match out.iter_mut().find(|(_, t)| *t == text) {
            Some((names, _)) => names.push(str_of(&p["name"])),
            None => out.push((vec![str_of(&p["name"])], text)),
        }
    }
    out
}

fn preset_row(p: &Value) -> Vec<String> {
    vec![
        str_of(&p["name"]),
        if p["config"].is_null() {
            "none".into()
        } else {
            describe(&p["config"])
        },
        str_of(&p["concurrency"]),
        f1(p["output_tokens_per_s"].as_f64()),
        f0(p["ttft_p95_ms"].as_f64()),
        p["score"]
            .as_f64()
            .map_or("–".into(), |x| format!("{x:.3}")),
        str_of(&p["constraint"]),
        str_of(&p["why"]),
    ]
}

/// A preset's artefacts as lines to run: the server's environment, the Modelfile, the command
/// line; empty without artefacts.
fn how_to_serve(a: &Value) -> String {
    let mut text = String::new();
    if a.is_null() {
        return text;
    }
    if let Some(env) = a["server_env"].as_array().filter(|e| !e.is_empty()) {
        for e in env {
            text.push_str(&format!("{}\n", str_of(e)));
        }
    }
    if let Some(m) = a["modelfile"].as_str() {
        text.push_str(m.trim_end());
        text.push('\n');
    }
    if let Some(c) = a["command_line"].as_str() {
        text.push_str(c);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn presets_of_one_configuration_share_one_command() {
        let cmd = |c: u32| json!({"command_line": format!("llama-server -c {c}")});
        let ps = [
            json!({"name": "max_context", "artefacts": cmd(4096)}),
            json!({"name": "balanced", "artefacts": cmd(1536)}),
            json!({"name": "fast_response", "artefacts": cmd(4096)}),
            json!({"name": "none", "artefacts": null}),
        ];
        let mut d = ReportDoc::default();
        presets(&mut d, &json!({"presets": ps}));
        let md = crate::report::doc::markdown(&d, "plots");
        assert!(md.contains("### max_context, fast_response (the same configuration): how to serve it\n\n```\nllama-server -c 4096\n```"), "{md}");
        assert!(
            md.contains("### balanced: how to serve it\n\n```\nllama-server -c 1536\n```"),
            "{md}"
        );
        assert_eq!(md.matches("llama-server -c 4096").count(), 1);
    }

    #[test]
    fn how_to_serve_is_environment_then_modelfile_then_command() {
        assert_eq!(how_to_serve(&Value::Null), "");
        let a = json!({"server_env": ["A=1", "B=2"], "modelfile": "FROM m\n\n",
                       "command_line": "llama-server -c 4096"});
        assert_eq!(how_to_serve(&a), "A=1\nB=2\nFROM m\nllama-server -c 4096\n");
    }
}
