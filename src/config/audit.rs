//! `[audit]`: the audit log (issue 16), one JSON line per request. Raw shape and validation
//! ([`validate_audit`], called once from `validate`) live here; the writer is `crate::audit`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigIssue;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// The log file; absent: no audit log. Relative to the config file.
    pub path: Option<String>,
    /// Prompts and answers in each line (PII redacted); default false.
    pub include_content: Option<bool>,
    /// A file is rotated (`path.1`, `path.2`, ...) before it grows past this; default 100 MiB.
    pub max_file_bytes: Option<u64>,
    /// Rotated files kept besides the current one; default 5.
    pub max_files: Option<u64>,
    /// Lines waiting for the writer; past it lines are dropped (counted); default 10000.
    pub queue: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    pub path: Option<PathBuf>,
    pub include_content: bool,
    pub max_file_bytes: u64,
    pub max_files: u32,
    pub queue: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            path: None,
            include_content: false,
            max_file_bytes: 100 * 1024 * 1024,
            max_files: 5,
            queue: 10_000,
        }
    }
}

/// Validates `[audit]`; problems are appended to `issues` with their paths.
pub fn validate_audit(
    raw: &RawAudit,
    base_dir: &Path,
    issues: &mut Vec<ConfigIssue>,
) -> AuditConfig {
    let d = AuditConfig::default();
    let mut bad = |path: &str, message: String| {
        issues.push(ConfigIssue {
            path: format!("audit.{path}"),
            message,
        })
    };
    let path = match raw.path.as_deref() {
        None => None,
        Some("") => {
            bad(
                "path",
                "must name a file (leave it out for no audit log)".into(),
            );
            None
        }
        Some(p) => Some(base_dir.join(p)),
    };
    let mut range = |name: &str, v: Option<u64>, lo: u64, hi: u64, default: u64| match v {
        None => default,
        Some(v) if (lo..=hi).contains(&v) => v,
        Some(v) => {
            bad(name, format!("{v} is not between {lo} and {hi}"));
            default
        }
    };
    let max_file_bytes = range(
        "max_file_bytes",
        raw.max_file_bytes,
        1024,
        1 << 40,
        d.max_file_bytes,
    );
    let max_files = range("max_files", raw.max_files, 1, 1000, d.max_files as u64) as u32;
    let queue = range("queue", raw.queue, 1, 1_000_000, d.queue as u64) as usize;
    AuditConfig {
        path,
        include_content: raw.include_content.unwrap_or(false),
        max_file_bytes,
        max_files,
        queue,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    fn load(text: &str) -> Result<Config, crate::config::ConfigError> {
        Config::from_toml_str(text, Vec::<(String, String)>::new(), Path::new("/etc/deja"))
    }

    #[test]
    fn audit_defaults_values_and_errors() {
        let c = load("").unwrap();
        assert_eq!(c.audit.path, None);
        assert_eq!((c.audit.max_files, c.audit.queue), (5, 10_000));
        let c = load(
            "[audit]\npath = \"audit.jsonl\"\ninclude_content = true\nmax_file_bytes = 4096\n\
             max_files = 2\nqueue = 8\n",
        )
        .unwrap();
        assert_eq!(
            c.audit.path.as_deref(),
            Some(Path::new("/etc/deja/audit.jsonl"))
        );
        assert!(c.audit.include_content);
        assert_eq!(
            (c.audit.max_file_bytes, c.audit.max_files, c.audit.queue),
            (4096, 2, 8)
        );
        let e = load("[audit]\npath = \"\"\nmax_file_bytes = 10\nmax_files = 0\nqueue = 0\n")
            .unwrap_err();
        let paths: Vec<&str> = e.issues().iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "audit.path",
                "audit.max_file_bytes",
                "audit.max_files",
                "audit.queue"
            ],
            "{e}"
        );
    }
}
