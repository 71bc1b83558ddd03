//! Configuration of `o3 optimize`: the schema and its defaults ([`schema`]), the key table
//! ([`keys`], a leaf), validation with one-line errors that name the file,
//! line and key, and the legacy `o3_ai_config.yaml` layout mapped onto the current one.
//!
//! Flow: text → generic YAML value (syntax errors, layout detection) → typed value (unknown
//! keys and wrong types, located by serde_yaml) → [`validate`] (ranges, then checks that involve
//! two keys, located by [`locate`]) → [`Loaded`].

mod error;
mod keys;
mod legacy;
mod locate;
mod schema;
mod units;
mod validate;

#[cfg(test)]
mod tests;

use std::path::Path;

use serde::Serialize;

pub use error::ConfigError;
pub use keys::Layout;
pub use schema::*;

use locate::Doc;
use validate::Ctx;

/// A configuration read from a file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Loaded {
    pub config: Config,
    pub layout: Layout,
    /// One line each: keys ignored or adjusted (legacy layout), with file and line.
    pub notices: Vec<String>,
}

/// The documented default configuration (config/o3.yaml).
pub fn default_yaml() -> &'static str {
    include_str!("../../../config/o3.yaml")
}

/// Reads and checks a configuration file; messages name the path as given.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: origin.clone(),
        error,
    })?;
    parse(&text, &origin)
}

/// Checks a configuration text; `origin` (a file name) starts every message.
pub fn parse(text: &str, origin: &str) -> Result<Loaded, ConfigError> {
    let value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| error::from_yaml(&e, text, origin))?;
    let doc = Doc::new(text, origin, value);
    if doc.value.is_null() {
        return Ok(Loaded {
            config: Config::default(),
            layout: Layout::Current,
            notices: vec![format!(
                "{origin}: no settings in the file; every default applies"
            )],
        });
    }
    let layout = detect(&doc)?;
    let (config, notices) = match layout {
        Layout::Current => {
            let config: Config = serde_yaml::from_str(text)
                .map_err(|e| error::from_serde(&e, &doc, Layout::Current))?;
            let notices = config
                .timeouts
                .retired_keys()
                .into_iter()
                .map(|k| {
                    let at = doc
                        .line_of(k)
                        .map_or(origin.to_string(), |l| format!("{origin}:{l}"));
                    format!("{at}: {k}: ignored; a request is no longer cut by a fixed formula: only a stall (timeouts.stall_s) or, for a server that shows no progress, timeouts.margin times the time model's estimate ends it (docs/optimizer.md)")
                })
                .collect();
            (config, notices)
        }
        Layout::Legacy => legacy::map(&doc)?,
    };
    validate::validate(&config, &Ctx { doc: &doc, layout })?;
    Ok(Loaded {
        config,
        layout,
        notices,
    })
}

/// Current top-level keys.
const CURRENT_TOP_KEYS: &[&str] = &[
    "search",
    "batch",
    "presets",
    "validation",
    "concurrency",
    "timeouts",
    "plan",
    "safety",
    "prompt",
    "learning",
    "monitoring",
];

/// Legacy when a top-level key is one of the legacy layout's; both kinds is an error.
fn detect(doc: &Doc) -> Result<Layout, ConfigError> {
    let top = doc.top_keys();
    let current = top
        .iter()
        .find(|(k, _)| CURRENT_TOP_KEYS.contains(&k.as_str()));
    let old = top
        .iter()
        .find(|(k, _)| keys::TOP_KEYS.contains(&k.as_str()));
    match (current, old) {
        (Some((ck, cl)), Some((lk, ll))) => {
            let cat = cl.map(|l| format!(" (line {l})")).unwrap_or_default();
            Err(ConfigError::Key {
                origin: doc.origin.to_string(),
                line: *ll,
                key: lk.clone(),
                problem: format!(
                    "legacy key in a file that also has the current key `{ck}`{cat}"
                ),
                fix: "use one layout: move the legacy keys to their current names (docs/config.md maps each one) or drop them".into(),
            })
        }
        (None, Some(_)) => Ok(Layout::Legacy),
        _ => Ok(Layout::Current),
    }
}
