//! Any OpenAI-compatible server o3 launches from a command template (vLLM, llama-cpp-python's
//! server, ...): the template with its placeholders, the `/v1/completions` request, and the
//! server-sent events of its streamed answer.

use serde_json::json;

use super::{ProbeConfig, ProtocolError, StreamEvent, Timings};

/// Placeholders a template may use.
pub const PLACEHOLDERS: &[&str] = &[
    "model",
    "ctx",
    "ctx_total",
    "batch",
    "ubatch",
    "parallel",
    "gpu_layers",
    "flash_attn",
    "cache_type_k",
    "cache_type_v",
    "threads",
    "host",
    "port",
];

/// A launch template that cannot be used, or a value it needs that was not given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("launch template: unterminated {0} quote")]
    Unterminated(char),
    #[error("launch template: trailing backslash")]
    TrailingBackslash,
    #[error("launch template: unclosed `{{` in `{0}`")]
    Unclosed(String),
    #[error("launch template is empty: give the server's command line with {{port}} and {{ctx}}")]
    Empty,
    #[error("launch template: unknown placeholder {{{0}}} (known: {known})", known = known_placeholders())]
    Unknown(String),
    #[error("launch template has no {{{0}}}: o3 must set the server's {what}", what = needed_for(.0))]
    Missing(&'static str),
    #[error("the launch template uses {{{0}}} but no value was given (--{flag})", flag = .0.replace('_', "-"))]
    NoValue(String),
}

fn known_placeholders() -> String {
    PLACEHOLDERS
        .iter()
        .map(|p| format!("{{{p}}}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What o3 sets through a placeholder every template must have.
fn needed_for(placeholder: &str) -> &'static str {
    if placeholder == "port" {
        "port (it picks a free one)"
    } else {
        "context length"
    }
}

/// A parsed launch template: words with `{placeholders}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    words: Vec<String>,
}

/// Splits a command line like a POSIX shell does for words: whitespace separates, single and
/// double quotes group, backslash escapes.
fn split_words(s: &str) -> Result<Vec<String>, TemplateError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => cur.push(x),
                        None => return Err(TemplateError::Unterminated('\'')),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(x) => cur.push(x),
                            None => return Err(TemplateError::TrailingBackslash),
                        },
                        Some(x) => cur.push(x),
                        None => return Err(TemplateError::Unterminated('"')),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(x) => cur.push(x),
                    None => return Err(TemplateError::TrailingBackslash),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

fn placeholders_in(word: &str) -> Result<Vec<String>, TemplateError> {
    let mut out = Vec::new();
    let mut rest = word;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| TemplateError::Unclosed(word.to_string()))?;
        out.push(after[..close].to_string());
        rest = &after[close + 1..];
    }
    Ok(out)
}

impl Template {
    /// Parses and checks a template: known placeholders only, and `{port}` and `{ctx}` (or
    /// `{ctx_total}`) present, since o3 must choose the port and set the context.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let words = split_words(text)?;
        if words.is_empty() {
            return Err(TemplateError::Empty);
        }
        let mut seen = Vec::new();
        for w in &words {
            for p in placeholders_in(w)? {
                if !PLACEHOLDERS.contains(&p.as_str()) {
                    return Err(TemplateError::Unknown(p));
                }
                seen.push(p);
            }
        }
        for need in ["port", "ctx"] {
            let ok = seen
                .iter()
                .any(|p| p == need || (need == "ctx" && p == "ctx_total"));
            if !ok {
                return Err(TemplateError::Missing(need));
            }
        }
        Ok(Template { words })
    }

    /// Placeholders the template uses (a configuration field it does not use is fixed by
    /// the server).
    /// The program the template starts (its first word).
    pub fn program(&self) -> &str {
        self.words.first().map_or("", String::as_str)
    }

    pub fn uses(&self, name: &str) -> bool {
        self.words
            .iter()
            .any(|w| w.contains(&format!("{{{name}}}")))
    }

    /// The command line for one configuration. A placeholder whose value the configuration
    /// does not give is an error naming it.
    pub fn fill(
        &self,
        cfg: &ProbeConfig,
        model: &str,
        host: &str,
        port: u16,
    ) -> Result<Vec<String>, TemplateError> {
        let value = |p: &str| -> Option<String> {
            Some(match p {
                "model" => model.to_string(),
                "ctx" => cfg.ctx.to_string(),
                "ctx_total" => (cfg.ctx * cfg.parallel.unwrap_or(1)).to_string(),
                "batch" => cfg.batch?.to_string(),
                "ubatch" => cfg.ubatch?.to_string(),
                "parallel" => cfg.parallel.unwrap_or(1).to_string(),
                "gpu_layers" => cfg.gpu_layers?.to_string(),
                "flash_attn" => (if cfg.flash_attn?.is_on() {
                    "true"
                } else {
                    "false"
                })
                .to_string(),
                "cache_type_k" => cfg.cache_type_k.clone()?,
                "cache_type_v" => cfg.cache_type_v.clone()?,
                "threads" => cfg.threads?.to_string(),
                "host" => host.to_string(),
                "port" => port.to_string(),
                _ => return None,
            })
        };
        self.words
            .iter()
            .map(|w| {
                let mut out = w.clone();
                for p in placeholders_in(w)? {
                    let v = value(&p).ok_or_else(|| TemplateError::NoValue(p.clone()))?;
                    out = out.replace(&format!("{{{p}}}"), &v);
                }
                Ok(out)
            })
            .collect()
    }

    /// Configuration fields this template cannot set.
    pub fn fixed_by_server(&self, cfg: &ProbeConfig) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut check = |set: bool, names: &[&str], field: &'static str| {
            if set && !names.iter().any(|n| self.uses(n)) {
                out.push(field);
            }
        };
        check(cfg.batch.is_some(), &["batch"], "batch");
        check(cfg.ubatch.is_some(), &["ubatch"], "ubatch");
        check(cfg.parallel.is_some(), &["parallel"], "parallel");
        check(cfg.gpu_layers.is_some(), &["gpu_layers"], "gpu_layers");
        check(cfg.flash_attn.is_some(), &["flash_attn"], "flash_attn");
        check(
            cfg.cache_type_k.is_some(),
            &["cache_type_k"],
            "cache_type_k",
        );
        check(
            cfg.cache_type_v.is_some(),
            &["cache_type_v"],
            "cache_type_v",
        );
        check(cfg.threads.is_some(), &["threads"], "threads");
        out
    }
}

/// Body of `POST /v1/completions`, streamed, greedy, seeded.
pub fn completion_request(
    model: &str,
    prompt: &str,
    max_tokens: u32,
    seed: u32,
) -> serde_json::Value {
    json!({
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "seed": seed,
        "stream": true,
    })
}

/// One line of the server-sent events of `/v1/completions`.
pub fn parse_sse_line(line: &str) -> Result<Option<StreamEvent>, ProtocolError> {
    let line = line.trim_end();
    let Some(data) = line.strip_prefix("data:") else {
        // Blank separators, `event:`/`id:` fields and `:` comments carry no payload.
        return Ok(None);
    };
    let data = data.trim();
    if data == "[DONE]" {
        return Ok(Some(StreamEvent::Done(Timings::default())));
    }
    let v: serde_json::Value = serde_json::from_str(data)
        .map_err(|e| ProtocolError::new(format!("bad JSON in event ({e})"), line))?;
    if let Some(err) = v.get("error") {
        let msg = err
            .get("message")
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| err.to_string());
        return Ok(Some(StreamEvent::Error(msg)));
    }
    let choice = v.get("choices").and_then(|c| c.get(0));
    let text = choice
        .and_then(|c| c.get("text"))
        .and_then(|t| t.as_str())
        .unwrap_or("");
    let finish = choice
        .and_then(|c| c.get("finish_reason"))
        .and_then(|f| f.as_str());
    if let Some(usage) = v.get("usage").filter(|u| u.is_object()) {
        if text.is_empty() {
            return Ok(Some(StreamEvent::Done(Timings {
                prompt_tokens: usage.get("prompt_tokens").and_then(|n| n.as_u64()),
                predicted_tokens: usage.get("completion_tokens").and_then(|n| n.as_u64()),
                stop_reason: finish.map(str::to_string),
                ..Timings::default()
            })));
        }
    }
    if choice.is_none() {
        return Err(ProtocolError::new("event has no choices", line));
    }
    if text.is_empty() {
        return Ok(finish.map(|f| {
            StreamEvent::Done(Timings {
                stop_reason: Some(f.to_string()),
                ..Timings::default()
            })
        }));
    }
    Ok(Some(StreamEvent::Token(text.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA_CPP_PYTHON: &str = "{python} -m llama_cpp.server --model {model} --n_ctx {ctx} --n_batch {batch} --host {host} --port {port}";

    #[test]
    fn template_needs_port_and_ctx_and_known_placeholders() {
        let e = Template::parse("server --model {model} --ctx {ctx}").unwrap_err();
        assert_eq!(
            e.to_string(),
            "launch template has no {port}: o3 must set the server's port (it picks a free one)"
        );
        let e = Template::parse("server --port {port}").unwrap_err();
        assert_eq!(
            e.to_string(),
            "launch template has no {ctx}: o3 must set the server's context length"
        );
        let e = Template::parse("server {port} {ctx} {bogus}").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("launch template: unknown placeholder {bogus} (known: {model} {ctx}"),
            "{e}"
        );
        assert_eq!(Template::parse("").unwrap_err(), TemplateError::Empty);
        assert_eq!(
            Template::parse("server '{port} {ctx}")
                .unwrap_err()
                .to_string(),
            "launch template: unterminated ' quote"
        );
        assert_eq!(
            Template::parse("server {port} {ctx")
                .unwrap_err()
                .to_string(),
            "launch template: unclosed `{` in `{ctx`"
        );
        assert_eq!(
            Template::parse(LLAMA_CPP_PYTHON).unwrap_err(),
            TemplateError::Unknown("python".into())
        );
    }

    #[test]
    fn fills_values_and_names_missing_ones() {
        let t =
            Template::parse("srv -m '{model}' -c {ctx_total} -b {batch} --port={port}").unwrap();
        let cfg = ProbeConfig {
            ctx: 4096,
            batch: Some(256),
            parallel: Some(2),
            ..ProbeConfig::default()
        };
        let argv = t.fill(&cfg, "/m/a b.gguf", "127.0.0.1", 8123).unwrap();
        assert_eq!(
            argv,
            [
                "srv",
                "-m",
                "/m/a b.gguf",
                "-c",
                "8192",
                "-b",
                "256",
                "--port=8123"
            ]
        );
        let e = t
            .fill(
                &ProbeConfig {
                    ctx: 1,
                    ..ProbeConfig::default()
                },
                "m",
                "h",
                1,
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the launch template uses {batch} but no value was given (--batch)"
        );
        // The template sizes the context for two slots but cannot set the slot count.
        assert_eq!(t.fixed_by_server(&cfg), vec!["parallel"]);
        let cfg = ProbeConfig {
            threads: Some(4),
            parallel: None,
            ..cfg
        };
        assert_eq!(t.fixed_by_server(&cfg), vec!["threads"]);
    }

    #[test]
    fn sse_lines() {
        let tok = r#"data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"text":" hi","index":0,"logprobs":null,"finish_reason":null}]}"#;
        assert_eq!(
            parse_sse_line(tok).unwrap(),
            Some(StreamEvent::Token(" hi".into()))
        );
        let fin = r#"data: {"choices":[{"text":"","index":0,"finish_reason":"length"}]}"#;
        assert_eq!(
            parse_sse_line(fin).unwrap(),
            Some(StreamEvent::Done(Timings {
                stop_reason: Some("length".into()),
                ..Timings::default()
            }))
        );
        assert_eq!(
            parse_sse_line("data: [DONE]").unwrap(),
            Some(StreamEvent::Done(Timings::default()))
        );
        assert_eq!(parse_sse_line("").unwrap(), None);
        assert_eq!(parse_sse_line(": ping").unwrap(), None);
        let err = r#"data: {"error":{"message":"out of memory","type":"server_error"}}"#;
        assert_eq!(
            parse_sse_line(err).unwrap(),
            Some(StreamEvent::Error("out of memory".into()))
        );
        let bad = parse_sse_line("data: {not json").unwrap_err();
        assert!(bad.line.contains("{not json"));
        assert!(parse_sse_line(r#"data: {"id":1}"#).is_err());
        let usage = r#"data: {"choices":[],"usage":{"prompt_tokens":100,"completion_tokens":8}}"#;
        let Some(StreamEvent::Done(t)) = parse_sse_line(usage).unwrap() else {
            panic!()
        };
        assert_eq!((t.prompt_tokens, t.predicted_tokens), (Some(100), Some(8)));
    }
}
