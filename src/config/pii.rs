//! `[pii]`: what deja does with personal data it finds in a prompt or an answer (issue 16; the
//! detectors are `crate::pii`). Its raw shape and its validation ([`validate_pii`], called once
//! from `validate`) live here. An absent section means the default mode, `skip-cache`.

use serde::Deserialize;

use super::{ConfigIssue, ModelGlob};

/// `[pii]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPii {
    pub mode: Option<String>,
    /// `[[pii.routes]]`: per-model overrides, first matching glob wins.
    #[serde(default)]
    pub routes: Vec<RawPiiRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPiiRoute {
    pub model: String,
    pub mode: String,
}

/// What happens to a request whose texts, or an answer whose text, contain personal data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PiiMode {
    /// Served from upstream, never read from or written to the cache (the default).
    SkipCache,
    /// Values are replaced by placeholders before the cache and the upstream see them, and
    /// restored in the answer the client receives.
    Redact,
    /// 400 naming the kinds found; nothing is sent upstream.
    Block,
    /// No detection.
    Off,
}

impl PiiMode {
    fn parse(s: &str) -> Option<PiiMode> {
        match s {
            "skip-cache" => Some(PiiMode::SkipCache),
            "redact" => Some(PiiMode::Redact),
            "block" => Some(PiiMode::Block),
            "off" => Some(PiiMode::Off),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PiiMode::SkipCache => "skip-cache",
            PiiMode::Redact => "redact",
            PiiMode::Block => "block",
            PiiMode::Off => "off",
        }
    }
}

/// The validated `[pii]` section.
#[derive(Debug, Clone)]
pub struct PiiConfig {
    pub mode: PiiMode,
    pub routes: Vec<(ModelGlob, PiiMode)>,
}

impl Default for PiiConfig {
    fn default() -> Self {
        PiiConfig {
            mode: PiiMode::SkipCache,
            routes: Vec::new(),
        }
    }
}

impl PiiConfig {
    /// The mode for a request's model: the first `[[pii.routes]]` glob that matches, else `mode`.
    pub fn mode_for(&self, model: &str) -> PiiMode {
        self.routes
            .iter()
            .find(|(g, _)| g.matches(model))
            .map_or(self.mode, |(_, m)| *m)
    }
}

fn mode(path: String, v: &str, issues: &mut Vec<ConfigIssue>) -> Option<PiiMode> {
    let m = PiiMode::parse(v);
    if m.is_none() {
        issues.push(ConfigIssue {
            path,
            message: format!("'{v}' is not one of skip-cache, redact, block, off"),
        });
    }
    m
}

/// Validates `[pii]`; problems are appended to `issues` with their paths.
pub fn validate_pii(raw: &RawPii, issues: &mut Vec<ConfigIssue>) -> PiiConfig {
    let mut out = PiiConfig::default();
    if let Some(v) = raw.mode.as_deref() {
        out.mode = mode("pii.mode".into(), v, issues).unwrap_or(out.mode);
    }
    for (i, r) in raw.routes.iter().enumerate() {
        let glob = match ModelGlob::new(&r.model) {
            Ok(g) => Some(g),
            Err(e) => {
                issues.push(ConfigIssue {
                    path: format!("pii.routes[{i}].model"),
                    message: format!("invalid glob '{}': {e}", r.model),
                });
                None
            }
        };
        let m = mode(format!("pii.routes[{i}].mode"), &r.mode, issues);
        if let (Some(g), Some(m)) = (glob, m) {
            out.routes.push((g, m));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, PiiMode};
    use std::path::Path;

    fn load(text: &str) -> Result<Config, crate::config::ConfigError> {
        Config::from_toml_str(text, Vec::<(String, String)>::new(), Path::new("/"))
    }

    #[test]
    fn default_is_skip_cache_and_routes_override() {
        let c = load("").unwrap();
        assert_eq!(c.pii.mode_for("gpt-4o"), PiiMode::SkipCache);
        let c = load(
            "[pii]\nmode = \"redact\"\n[[pii.routes]]\nmodel = \"internal-*\"\nmode = \"off\"\n\
             [[pii.routes]]\nmodel = \"*\"\nmode = \"block\"\n",
        )
        .unwrap();
        assert_eq!(c.pii.mode, PiiMode::Redact);
        assert_eq!(c.pii.mode_for("internal-llama"), PiiMode::Off);
        assert_eq!(c.pii.mode_for("gpt-4o"), PiiMode::Block);
    }

    #[test]
    fn bad_modes_and_globs_are_reported_with_their_paths() {
        let e = load("[pii]\nmode = \"hide\"\n[[pii.routes]]\nmodel = \"a[\"\nmode = \"skip\"\n")
            .unwrap_err();
        let paths: Vec<&str> = e.issues().iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            ["pii.mode", "pii.routes[0].model", "pii.routes[0].mode"],
            "{e}"
        );
        assert!(load("[pii]\nkinds = []\n").is_err());
    }
}
