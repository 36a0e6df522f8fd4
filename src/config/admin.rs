//! `[admin]`: the operator's listener (issue 17): where it listens, which environment variable
//! holds its bearer token, whether `/metrics` moves there, and the bounds of its streams. Its
//! raw shape and its validation ([`validate_admin`], called once from `validate`) live here.
//! An absent `listen` means no admin listener at all. The listener itself is `crate::admin`.

use std::net::SocketAddr;

use serde::Deserialize;

use super::ConfigIssue;

pub const DEFAULT_ADMIN_TOKEN_ENV: &str = "DEJA_ADMIN_TOKEN";
/// Longest JSONL line `POST /admin/import` accepts (an entry with its embedding and answer);
/// a longer one fails the import with 413 at that line.
pub const DEFAULT_ADMIN_MAX_LINE_BYTES: usize = 8 << 20;
const MAX_ADMIN_MAX_LINE_BYTES: usize = 256 << 20;
/// Entries `GET /admin/stats` lists among the busiest.
pub const DEFAULT_ADMIN_TOP_ENTRIES: usize = 10;
const MAX_ADMIN_TOP_ENTRIES: usize = 1000;

/// `[admin]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub token_env: Option<String>,
    pub metrics: Option<bool>,
    pub max_line_bytes: Option<u64>,
    pub top_entries: Option<u64>,
}

/// The validated `[admin]` block.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// Where the admin listener binds; `None`: no admin listener.
    pub listen: Option<SocketAddr>,
    /// The environment variable that holds the bearer token (read once, at start).
    pub token_env: String,
    /// Serve `/metrics` on the admin listener (behind the token) instead of the public one.
    pub metrics: bool,
    /// Longest JSONL line an import accepts.
    pub max_line_bytes: usize,
    /// How many of the most-hit entries the stats and the dashboard list.
    pub top_entries: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: None,
            token_env: DEFAULT_ADMIN_TOKEN_ENV.into(),
            metrics: false,
            max_line_bytes: DEFAULT_ADMIN_MAX_LINE_BYTES,
            top_entries: DEFAULT_ADMIN_TOP_ENTRIES,
        }
    }
}

impl AdminConfig {
    /// Whether `/metrics` is served on the public listener.
    pub fn public_metrics(&self) -> bool {
        !(self.metrics && self.listen.is_some())
    }
}

fn issue(issues: &mut Vec<ConfigIssue>, field: &str, message: impl Into<String>) {
    issues.push(ConfigIssue {
        path: format!("admin.{field}"),
        message: message.into(),
    });
}

/// Validates `[admin]`; problems are appended to `issues` with their paths.
pub fn validate_admin(raw: &RawAdmin, issues: &mut Vec<ConfigIssue>) -> AdminConfig {
    let mut out = AdminConfig::default();
    if let Some(l) = &raw.listen {
        match l.parse::<SocketAddr>() {
            Ok(a) => out.listen = Some(a),
            Err(e) => issue(issues, "listen", format!("'{l}' is not host:port ({e})")),
        }
    }
    if let Some(env) = &raw.token_env {
        let ok = !env.is_empty()
            && env.len() <= 128
            && env.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !env.starts_with(|c: char| c.is_ascii_digit());
        if ok {
            out.token_env = env.clone();
        } else {
            issue(
                issues,
                "token_env",
                "must name an environment variable (A-Z, 0-9, _; the token itself never goes \
                 in the file)",
            );
        }
    }
    if let Some(m) = raw.metrics {
        out.metrics = m;
        if m && out.listen.is_none() {
            issue(
                issues,
                "metrics",
                "moves /metrics to the admin listener, which needs admin.listen",
            );
        }
    }
    if let Some(v) = raw.max_line_bytes {
        if (1024..=MAX_ADMIN_MAX_LINE_BYTES as u64).contains(&v) {
            out.max_line_bytes = v as usize;
        } else {
            issue(
                issues,
                "max_line_bytes",
                format!("{v} is not between 1024 and {MAX_ADMIN_MAX_LINE_BYTES}"),
            );
        }
    }
    if let Some(v) = raw.top_entries {
        if (1..=MAX_ADMIN_TOP_ENTRIES as u64).contains(&v) {
            out.top_entries = v as usize;
        } else {
            issue(
                issues,
                "top_entries",
                format!("{v} is not between 1 and {MAX_ADMIN_TOP_ENTRIES}"),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn load(text: &str) -> Result<Config, crate::config::ConfigError> {
        Config::from_toml_str(text, Vec::<(String, String)>::new(), Path::new("."))
    }

    #[test]
    fn admin_is_off_by_default_and_metrics_stay_public() {
        let c = load("").unwrap();
        assert_eq!(c.admin, AdminConfig::default());
        assert!(c.admin.public_metrics());
    }

    #[test]
    fn a_valid_admin_block() {
        let c = load(
            "[admin]\nlisten = \"127.0.0.1:8081\"\ntoken_env = \"OPS_TOKEN\"\nmetrics = true\n\
             max_line_bytes = 4096\ntop_entries = 5\n",
        )
        .unwrap();
        assert_eq!(c.admin.listen, Some("127.0.0.1:8081".parse().unwrap()));
        assert_eq!(c.admin.token_env, "OPS_TOKEN");
        assert!(c.admin.metrics && !c.admin.public_metrics());
        assert_eq!((c.admin.max_line_bytes, c.admin.top_entries), (4096, 5));
    }

    #[test]
    fn invalid_admin_values_are_all_reported() {
        let e = load(
            "[admin]\nlisten = \"nowhere\"\ntoken_env = \"sk-live-123\"\nmetrics = true\n\
             max_line_bytes = 10\ntop_entries = 0\n",
        )
        .unwrap_err();
        let paths: Vec<&str> = e.issues().iter().map(|i| i.path.as_str()).collect();
        for p in [
            "admin.listen",
            "admin.token_env",
            "admin.metrics",
            "admin.max_line_bytes",
            "admin.top_entries",
        ] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
        // A token pasted where the variable's name goes is not echoed back.
        assert!(!e.to_string().contains("sk-live-123"), "{e}");
    }

    #[test]
    fn an_unknown_admin_key_is_refused() {
        let e = load("[admin]\ntoken = \"secret\"\n").unwrap_err();
        assert!(e.to_string().contains("admin"), "{e}");
    }
}
