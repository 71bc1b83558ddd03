//! The one-line errors: `<origin>:<line>: <dotted.key>: <problem>; <what to do>`, and the
//! translation of serde_yaml's messages into that form.

use super::keys::{current_name, rule_for, Layout, Rule};
use super::locate::{strip_indices, Doc};

/// A configuration that cannot be used. `Display` is one line that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read the configuration ({error}); check the path, or write the default one with `o3 config default > {path}`")]
    Read { path: String, error: std::io::Error },
    /// The text is not YAML, or not a mapping of sections.
    #[error("{}: {problem}; {fix}", at(.origin, *.line))]
    Syntax {
        origin: String,
        line: Option<usize>,
        problem: String,
        fix: String,
    },
    /// A key is unknown, has the wrong type, is out of range, or disagrees with another key.
    #[error("{}: {key}: {problem}; {fix}", at(.origin, *.line))]
    Key {
        origin: String,
        line: Option<usize>,
        /// Dotted, as written in the file (legacy names in a legacy file).
        key: String,
        problem: String,
        fix: String,
    },
}

fn at(origin: &str, line: Option<usize>) -> String {
    match line {
        Some(l) => format!("{origin}:{l}"),
        None => origin.to_string(),
    }
}

impl ConfigError {
    /// The line the error is about, when known.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { line, .. } | ConfigError::Key { line, .. } => *line,
        }
    }

    /// The dotted key the error is about, when it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Key { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// Keeps a message on one line.
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `message at line 3 column 7, while parsing x` → (`message, while parsing x`, Some(3), Some(7)).
fn split_location(msg: &str) -> (String, Option<usize>, Option<usize>) {
    if let Some(i) = msg.rfind(" at line ") {
        let tail = &msg[i + " at line ".len()..];
        let digits = |s: &str| -> String { s.chars().take_while(char::is_ascii_digit).collect() };
        let line = digits(tail);
        if let Ok(l) = line.parse() {
            let rest = &tail[line.len()..];
            let (col, after) = match rest.strip_prefix(" column ") {
                Some(r) => {
                    let c = digits(r);
                    (c.parse().ok(), &r[c.len()..])
                }
                None => (None, rest),
            };
            return (format!("{}{after}", &msg[..i]), Some(l), col);
        }
    }
    (msg.to_string(), None, None)
}

/// `search.granularity: invalid type: ...` → (`search.granularity`, `invalid type: ...`).
fn split_path(msg: &str) -> (&str, &str) {
    if let Some((p, rest)) = msg.split_once(": ") {
        if !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.[]".contains(c))
        {
            return (p, rest);
        }
    }
    ("", msg)
}

/// The names between backticks: "unknown field `a`, expected `b` or `c`" → [a, b, c].
fn backticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// serde's "expected u32" in words, when the key has no rule of its own.
fn expected_words(serde_expected: &str) -> String {
    let e = serde_expected.trim();
    match e {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number".into(),
        "i8" | "i16" | "i32" | "i64" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "a boolean" => "true or false".into(),
        "a sequence" => "a list".into(),
        _ if e.starts_with("struct ") || e == "a map" => {
            "a mapping of `key: value` lines indented under it".into()
        }
        _ if e.starts_with("an array of length ") => {
            format!("a list of {} values", &e["an array of length ".len()..])
        }
        _ => e.to_string(),
    }
}

/// `integer \`-1\`` → `-1`; `unit value` → `null`.
fn got_words(got: &str) -> String {
    let g = got.trim();
    if g == "unit value" {
        return "null".into();
    }
    if g == "map" {
        return "a mapping".into();
    }
    if g == "sequence" {
        return "a list".into();
    }
    g.replace('`', "")
}

/// The current-layout key a path names (a legacy path is translated).
fn current_key(path: &str, layout: Layout) -> String {
    let path = strip_indices(path);
    match layout {
        Layout::Current => path,
        Layout::Legacy => current_name(&path).map(str::to_string).unwrap_or(path),
    }
}

/// A serde_yaml error of the typed pass, as a one-line error naming the key.
pub(crate) fn from_serde(e: &serde_yaml::Error, doc: &Doc, layout: Layout) -> ConfigError {
    let text = one_line(&e.to_string());
    let (body, line_in_msg, _) = split_location(&text);
    let (path, rest) = split_path(&body);
    let at = KeyAt {
        origin: doc.origin,
        line: e.location().map(|l| l.line()).or(line_in_msg),
        path,
        rule: rule_for(&current_key(path, layout)),
    };
    let tail = |prefix: &str| rest.strip_prefix(prefix);
    let found = (tail("unknown field ").map(|t| at.unknown_field(t)))
        .or_else(|| tail("invalid type: ").map(|t| at.invalid_type(t)))
        .or_else(|| tail("invalid value: ").map(|t| at.invalid_value(t)))
        .or_else(|| tail("invalid length ").map(|t| at.invalid_length(t)));
    if let Some(err) = found {
        return err;
    }
    if let Some(tail) = rest.strip_prefix("duplicate field ") {
        return at.duplicate_field(tail, doc);
    }
    if !path.is_empty() {
        // A value with a unit that does not read (config::units) says `<problem>; <fix>`.
        let (problem, fix) = rest
            .split_once("; ")
            .unwrap_or((rest, "see docs/config.md for this key"));
        return at.key(path.into(), problem.into(), fix.into());
    }
    syntax(
        doc.origin,
        &text,
        e.location().map(|l| (l.line(), l.column())),
    )
}

/// Where a typed-pass error is: the file, line and key path, and the key's rule if it has one.
struct KeyAt<'a> {
    origin: &'a str,
    line: Option<usize>,
    path: &'a str,
    rule: Option<Rule>,
}

impl KeyAt<'_> {
    fn key(&self, key: String, problem: String, fix: String) -> ConfigError {
        ConfigError::Key {
            origin: self.origin.to_string(),
            line: self.line,
            key,
            problem,
            fix,
        }
    }

    /// "unknown field `x`, expected one of `a`, `b`": the key and the known ones beside it.
    fn unknown_field(&self, tail: &str) -> ConfigError {
        let names = backticked(tail);
        let unknown = names.first().copied().unwrap_or("?");
        let known = if names.len() > 1 {
            names[1..].join(", ")
        } else {
            "none".into()
        };
        let fix = if self.path.is_empty() {
            format!("known top-level keys: {known}")
        } else {
            format!("known keys here: {known}")
        };
        self.key(join(self.path, unknown), "unknown key".into(), fix)
    }

    /// A key written twice, with the line of its first writing where the document has it.
    fn duplicate_field(&self, tail: &str, doc: &Doc) -> ConfigError {
        let dup = backticked(tail).first().copied().unwrap_or("?").to_string();
        let full = join(self.path, &dup);
        let (line, first) = match doc.duplicate_under(self.path) {
            Some((p, first, second)) if p == full => (Some(second), Some(first)),
            _ => (self.line, None),
        };
        let problem = match first {
            Some(f) => format!("written twice (first at line {f})"),
            None => "written twice".into(),
        };
        KeyAt { line, ..*self }.key(full, problem, "keep one of them".into())
    }

    /// "invalid type: string \"x\", expected u32"; a negative number for an unsigned key is a
    /// range problem, and a document that is not a mapping a syntax one.
    fn invalid_type(&self, tail: &str) -> ConfigError {
        let (got, expected) = tail.split_once(", expected ").unwrap_or((tail, ""));
        let got = got_words(got);
        let unsigned = matches!(expected.trim(), "u32" | "u64");
        if unsigned && got.starts_with("integer ") {
            let fix = self
                .rule
                .map(|r| r.allowed())
                .unwrap_or_else(|| "allowed 0 or more".into());
            let n = got.trim_start_matches("integer ");
            return self.key(self.path.into(), format!("{n} is out of range"), fix);
        }
        if self.path.is_empty() {
            return ConfigError::Syntax {
                origin: self.origin.to_string(),
                line: self.line,
                problem: format!("the file holds {got}, not a mapping of sections"),
                fix: "write sections such as `search:` at the top level (`o3 config default` prints them all)".into(),
            };
        }
        let expected = self.expected(expected);
        self.key(
            self.path.into(),
            format!("wrong type ({got})"),
            format!("expected {expected}"),
        )
    }

    fn invalid_value(&self, tail: &str) -> ConfigError {
        let (got, expected) = tail.split_once(", expected ").unwrap_or((tail, ""));
        let got = got_words(got);
        let n = got.trim_start_matches("integer ");
        let fix = match self.rule {
            Some(r) => r.allowed(),
            None => format!("expected {}", expected_words(expected)),
        };
        self.key(self.path.into(), format!("{n} is out of range"), fix)
    }

    fn invalid_length(&self, tail: &str) -> ConfigError {
        let (n, expected) = tail.split_once(", expected ").unwrap_or((tail, ""));
        self.key(
            self.path.into(),
            format!("wrong length ({n} items)"),
            format!("expected {}", self.expected(expected)),
        )
    }

    /// What the key takes: its rule's words, else serde's translated.
    fn expected(&self, serde_expected: &str) -> String {
        match self.rule {
            Some(r) => r.expected(),
            None => expected_words(serde_expected),
        }
    }
}

/// An error of the generic YAML pass (syntax, duplicate keys, several documents).
pub(crate) fn from_yaml(e: &serde_yaml::Error, text: &str, origin: &str) -> ConfigError {
    let msg = one_line(&e.to_string());
    let line = e.location().map(|l| l.line());
    if msg.contains("duplicate entry with key") {
        let doc = Doc::new(text, origin, serde_yaml::Value::Null);
        // The first key written twice under the same parent.
        for (i, a) in doc.keys.iter().enumerate() {
            if let Some(b) = doc.keys[i + 1..].iter().find(|b| b.path == a.path) {
                return ConfigError::Key {
                    origin: origin.to_string(),
                    line: Some(b.line),
                    key: a.path.clone(),
                    problem: format!("written twice (first at line {})", a.line),
                    fix: "keep one of them".into(),
                };
            }
        }
    }
    if msg.contains("more than one document") {
        return ConfigError::Syntax {
            origin: origin.to_string(),
            line,
            problem: "the file holds more than one YAML document".into(),
            fix: "keep one (remove the extra `---` separators)".into(),
        };
    }
    syntax(origin, &msg, e.location().map(|l| (l.line(), l.column())))
}

fn syntax(origin: &str, msg: &str, at: Option<(usize, usize)>) -> ConfigError {
    // libyaml messages hold the problem's location and, for some, the location of the
    // construct being parsed: "did not find expected ',' or ']' at line 5 column 6, while
    // parsing a flow sequence at line 4 column 11".
    let mut body = String::new();
    let mut first: Option<(usize, usize)> = None;
    let mut rest = msg;
    while let Some(i) = rest.find(" at line ") {
        body += &rest[..i];
        let tail = &rest[i + " at line ".len()..];
        let digits = |s: &str| -> String { s.chars().take_while(char::is_ascii_digit).collect() };
        let l = digits(tail);
        let after_line = &tail[l.len()..];
        let (c, after) = match after_line.strip_prefix(" column ") {
            Some(r) => {
                let c = digits(r);
                (c.parse().unwrap_or(0), &r[c.len()..])
            }
            None => (0, after_line),
        };
        let l: usize = l.parse().unwrap_or(0);
        if first.is_none() {
            first = Some((l, c));
        } else {
            body += &format!(" that starts at line {l}");
        }
        rest = after;
    }
    body += rest;
    let body = body.trim_end_matches('.');
    let (line, col) = match at.or(first) {
        Some((l, c)) => (Some(l), Some(c)),
        None => (None, None),
    };
    let near = match col {
        Some(c) if c > 0 => format!(" near column {c}"),
        _ => String::new(),
    };
    ConfigError::Syntax {
        origin: origin.to_string(),
        line,
        problem: format!("invalid YAML: {body}"),
        fix: format!("check indentation (spaces, not tabs), quotes and brackets{near}"),
    }
}
