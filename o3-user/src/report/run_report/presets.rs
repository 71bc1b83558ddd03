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
    for p in ps {
        let text = how_to_serve(&p["artefacts"]);
        if !text.is_empty() {
            d.h3(format!("{}: how to serve it", str_of(&p["name"])));
            d.code(text.trim_end());
        }
    }
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
    fn how_to_serve_is_environment_then_modelfile_then_command() {
        assert_eq!(how_to_serve(&Value::Null), "");
        let a = json!({"server_env": ["A=1", "B=2"], "modelfile": "FROM m\n\n",
                       "command_line": "llama-server -c 4096"});
        assert_eq!(how_to_serve(&a), "A=1\nB=2\nFROM m\nllama-server -c 4096\n");
    }
}
