//! Where keys are in the text. serde_yaml gives a location for type errors and unknown keys;
//! range and cross-field checks run on the typed value, so this module finds the line of a
//! dotted key with an indentation-aware walk of the YAML block mappings.

use serde_yaml::Value;

/// A mapping key written on its own line (block style).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyLine {
    /// Dotted path from the top: `search.granularity`.
    pub path: String,
    /// 1-based line number.
    pub line: usize,
}

/// Every block-mapping key of the text with its dotted path and line, in document order.
/// Sequence items, flow collections and block-scalar contents are skipped; a key inside them is
/// not listed (its nearest listed ancestor stands for it, see [`Doc::line_of`]).
pub(crate) fn key_lines(text: &str) -> Vec<KeyLine> {
    let mut out = Vec::new();
    // (indent, key) of the mappings enclosing the current line.
    let mut stack: Vec<(usize, String)> = Vec::new();
    // Indentation of the key that opened a block scalar (`key: |`): deeper lines are its text.
    let mut block_scalar: Option<usize> = None;
    for (i, raw) in text.lines().enumerate() {
        // A byte-order mark before the first key is not part of it.
        let raw = if i == 0 {
            raw.trim_start_matches('\u{feff}')
        } else {
            raw
        };
        let content = raw.trim_start_matches(' ');
        let indent = raw.len() - content.len();
        if content.trim().is_empty() {
            continue;
        }
        if let Some(b) = block_scalar {
            if indent > b {
                continue;
            }
            block_scalar = None;
        }
        if content.starts_with('#') {
            continue;
        }
        if content.starts_with("---") || content.starts_with("...") {
            stack.clear();
            continue;
        }
        let Some((key, rest)) = split_key(content) else {
            continue;
        };
        while stack.last().is_some_and(|(d, _)| *d >= indent) {
            stack.pop();
        }
        stack.push((indent, key));
        let path = stack
            .iter()
            .map(|(_, k)| k.as_str())
            .collect::<Vec<_>>()
            .join(".");
        out.push(KeyLine { path, line: i + 1 });
        let value = strip_comment(rest).trim();
        if value.starts_with('|') || value.starts_with('>') {
            block_scalar = Some(indent);
        }
    }
    out
}

/// `key: rest` → (key, rest); None when the line does not start with a mapping key.
fn split_key(content: &str) -> Option<(String, &str)> {
    let first = content.chars().next()?;
    let (key, rest) = if first == '"' || first == '\'' {
        let end = content[1..].find(first)? + 1;
        let after = content[end + 1..].trim_start_matches([' ', '\t']);
        (content[1..end].to_string(), after.strip_prefix(':')?)
    } else {
        if "-[]{}#&*!|>%@`,?".contains(first) {
            return None;
        }
        let bytes = content.as_bytes();
        let mut colon = None;
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'#' && i > 0 && bytes[i - 1] == b' ' {
                return None;
            }
            if b == b':' && bytes.get(i + 1).is_none_or(|n| *n == b' ' || *n == b'\t') {
                colon = Some(i);
                break;
            }
        }
        let i = colon?;
        (content[..i].trim_end().to_string(), &content[i + 1..])
    };
    if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
        return None;
    }
    Some((key, rest))
}

/// The text before a ` #` comment (quotes are not tracked: only used to spot `|` and `>`).
fn strip_comment(s: &str) -> &str {
    match s.find(" #") {
        Some(i) => &s[..i],
        None => s,
    }
}

/// `concurrency.levels[2]` → `concurrency.levels`.
pub(crate) fn strip_indices(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut depth = 0;
    for c in path.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// A parsed document: its text, origin, generic value and key lines.
pub(crate) struct Doc<'a> {
    pub text: &'a str,
    pub origin: &'a str,
    pub value: Value,
    pub keys: Vec<KeyLine>,
}

impl<'a> Doc<'a> {
    pub fn new(text: &'a str, origin: &'a str, value: Value) -> Doc<'a> {
        Doc {
            text,
            origin,
            value,
            keys: key_lines(text),
        }
    }

    /// The value at a dotted path (indices ignored), if the document has it.
    pub fn get(&self, path: &str) -> Option<&Value> {
        let path = strip_indices(path);
        let mut v = &self.value;
        for seg in path.split('.') {
            v = v.as_mapping()?.get(seg)?;
        }
        Some(v)
    }

    /// Line of a key. A key written inside a flow collection (`search: {granularity: 0}`) is
    /// given its nearest ancestor's line; a key the document does not have has no line.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let path = strip_indices(path);
        if let Some(k) = self.keys.iter().find(|k| k.path == path) {
            return Some(k.line);
        }
        self.get(&path)?;
        let mut p = path.as_str();
        while let Some(i) = p.rfind('.') {
            p = &p[..i];
            if let Some(k) = self.keys.iter().find(|k| k.path == p) {
                return Some(k.line);
            }
        }
        None
    }

    /// The first key written twice directly under `parent` ("" for the top level):
    /// (path, first line, second line).
    pub fn duplicate_under(&self, parent: &str) -> Option<(String, usize, usize)> {
        let parent = strip_indices(parent);
        let child_of = |p: &str| match parent.as_str() {
            "" => !p.contains('.'),
            _ => p
                .strip_prefix(parent.as_str())
                .and_then(|r| r.strip_prefix('.'))
                .is_some_and(|r| !r.contains('.')),
        };
        for (i, a) in self.keys.iter().enumerate() {
            if !child_of(&a.path) {
                continue;
            }
            if let Some(b) = self.keys[i + 1..].iter().find(|b| b.path == a.path) {
                return Some((a.path.clone(), a.line, b.line));
            }
        }
        None
    }

    /// The top-level keys in document order with their lines.
    pub fn top_keys(&self) -> Vec<(String, Option<usize>)> {
        match self.value.as_mapping() {
            Some(m) => m
                .keys()
                .map(|k| {
                    let name = match k {
                        Value::String(s) => s.clone(),
                        other => serde_yaml::to_string(other)
                            .unwrap_or_default()
                            .trim()
                            .to_string(),
                    };
                    let line = self.keys.iter().find(|l| l.path == name).map(|l| l.line);
                    (name, line)
                })
                .collect(),
            None => Vec::new(),
        }
    }
}
