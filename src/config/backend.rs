//! `[cache] backend` and `[cache.postgres]`: which storage backend the cache runs on (issue
//! 14). Its raw shape, its validation (one function, [`validate_backend`], called once from
//! `validate`) live here. The database URL is never in the config: `url_env` names the
//! environment variable that holds it, read at start-up, and neither it nor its password ever
//! appears in a log line, a metric or an error.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigIssue;

pub const DEFAULT_URL_ENV: &str = "DEJA_POSTGRES_URL";
pub const DEFAULT_POOL_SIZE: usize = 16;
const MAX_POOL_SIZE: usize = 1024;
pub const DEFAULT_SCHEMA: &str = "deja";
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(2);
/// A statement runs on the request path: longer than this is slower than the upstream call the
/// cache is meant to save.
pub const MAX_STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);
/// A replica fetching a miss renews its fleet-wide claim every half second; a claim not renewed
/// for this long (its replica died) no longer holds the other replicas back.
pub const DEFAULT_SINGLEFLIGHT_TIMEOUT: Duration = Duration::from_secs(5);
/// Shorter than this, a replica busy for a moment could lose its claim between two renewals.
pub const MIN_SINGLEFLIGHT_TIMEOUT: Duration = Duration::from_secs(1);
pub const MAX_SINGLEFLIGHT_TIMEOUT: Duration = Duration::from_secs(600);
/// Candidates pgvector's HNSW scan keeps (`hnsw.ef_search`). pgvector's own default is 40;
/// on 1M real MiniLM vectors in one scope 40 gives recall@1 below 0.99 and 100 above it
/// (docs/benchmarks.md §8).
pub const DEFAULT_EF_SEARCH: usize = 100;
/// `hnsw.ef_search` of a lookup's first search: a lookup whose first search finds a neighbour
/// that can be served stops there; one that finds none searches again with `ef_search`
/// (docs/benchmarks.md §8).
pub const DEFAULT_FIRST_EF_SEARCH: usize = 40;
/// pgvector's limit for `hnsw.ef_search`.
pub const MAX_EF_SEARCH: usize = 1000;
/// Longest schema name PostgreSQL keeps (NAMEDATALEN - 1).
const MAX_IDENTIFIER: usize = 63;

/// `[cache.postgres]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPostgres {
    pub url_env: Option<String>,
    pub pool_size: Option<u64>,
    pub schema: Option<String>,
    pub statement_timeout: Option<String>,
    pub singleflight_timeout: Option<String>,
    pub ef_search: Option<u64>,
    pub first_ef_search: Option<u64>,
}

/// Where the cache keeps its entries and searches its vectors.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum BackendConfig {
    /// sled + the in-process index under `cache.dir` (the default, one process).
    #[default]
    Embedded,
    /// PostgreSQL with pgvector, shared by every replica.
    Postgres(PostgresConfig),
}

impl BackendConfig {
    pub fn name(&self) -> &'static str {
        match self {
            BackendConfig::Embedded => "embedded",
            BackendConfig::Postgres(_) => "postgres",
        }
    }
}

/// The validated `[cache.postgres]` block.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresConfig {
    /// The environment variable holding `postgres://user:password@host:port/db`.
    pub url_env: String,
    /// Connections each replica keeps at most.
    pub pool_size: usize,
    /// The schema deja creates and owns (tables, indexes, metadata).
    pub schema: String,
    /// Bound on every statement (and on waiting for a connection); past it the request goes
    /// on uncached.
    pub statement_timeout: Duration,
    /// Fleet-wide singleflight: how long a claim on an identical miss holds other replicas
    /// back once its replica stops renewing it (it died); zero turns it off.
    pub singleflight_timeout: Duration,
    /// `hnsw.ef_search` on every connection: candidates the HNSW scan keeps, the recall/latency
    /// trade-off of a search in a big scope (small scopes are scanned exactly).
    pub ef_search: usize,
    /// `hnsw.ef_search` of a lookup's first, cheaper search; a lookup that finds nothing it
    /// could serve searches again with [`Self::ef_search`]. Zero, or not below `ef_search`:
    /// one search at `ef_search`.
    pub first_ef_search: usize,
}

impl PostgresConfig {
    /// The first search's `hnsw.ef_search`, when a lookup makes two.
    pub fn first_pass(&self) -> Option<usize> {
        (self.first_ef_search > 0 && self.first_ef_search < self.ef_search)
            .then_some(self.first_ef_search)
    }
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url_env: DEFAULT_URL_ENV.into(),
            pool_size: DEFAULT_POOL_SIZE,
            schema: DEFAULT_SCHEMA.into(),
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            singleflight_timeout: DEFAULT_SINGLEFLIGHT_TIMEOUT,
            ef_search: DEFAULT_EF_SEARCH,
            first_ef_search: DEFAULT_FIRST_EF_SEARCH,
        }
    }
}

fn issue(issues: &mut Vec<ConfigIssue>, path: &str, message: impl Into<String>) {
    issues.push(ConfigIssue {
        path: path.into(),
        message: message.into(),
    });
}

/// An unquoted SQL identifier: a lowercase letter or `_`, then lowercase letters, digits or
/// `_`. Anything else would need quoting, and deja interpolates the schema into DDL.
fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= MAX_IDENTIFIER
        && !s.starts_with("pg_")
}

/// A portable environment variable name.
fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Validates `[cache] backend` and `[cache.postgres]`; problems are appended to `issues`.
pub fn validate_backend(
    backend: Option<&str>,
    raw: Option<&RawPostgres>,
    issues: &mut Vec<ConfigIssue>,
) -> BackendConfig {
    let postgres = raw.map(|r| validate_postgres(r, issues));
    match backend.unwrap_or("embedded") {
        "embedded" => {
            if postgres.is_some() {
                issue(
                    issues,
                    "cache.postgres",
                    "set, but cache.backend is \"embedded\": set backend = \"postgres\" to use \
                     it, or remove the block",
                );
            }
            BackendConfig::Embedded
        }
        "postgres" => BackendConfig::Postgres(postgres.unwrap_or_default()),
        other => {
            issue(
                issues,
                "cache.backend",
                format!("unknown backend '{other}' (expected \"embedded\" or \"postgres\")"),
            );
            BackendConfig::Embedded
        }
    }
}

fn validate_postgres(raw: &RawPostgres, issues: &mut Vec<ConfigIssue>) -> PostgresConfig {
    let mut cfg = PostgresConfig::default();
    if let Some(name) = &raw.url_env {
        if is_env_name(name) {
            cfg.url_env = name.clone();
        } else if name.contains("://") {
            // Never echo it: it may be the URL itself, password included.
            issue(
                issues,
                "cache.postgres.url_env",
                "must name an environment variable that holds the URL, not the URL itself",
            );
        } else {
            issue(
                issues,
                "cache.postgres.url_env",
                "is not an environment variable name (letters, digits and _)",
            );
        }
    }
    if let Some(n) = raw.pool_size {
        if (1..=MAX_POOL_SIZE as u64).contains(&n) {
            cfg.pool_size = n as usize;
        } else {
            issue(
                issues,
                "cache.postgres.pool_size",
                format!("{n} is not between 1 and {MAX_POOL_SIZE}"),
            );
        }
    }
    if let Some(s) = &raw.schema {
        if is_identifier(s) {
            cfg.schema = s.clone();
        } else {
            issue(
                issues,
                "cache.postgres.schema",
                format!(
                    "'{s}' is not a plain schema name (lowercase letters, digits and _, not \
                     starting with a digit or pg_, at most {MAX_IDENTIFIER} bytes)"
                ),
            );
        }
    }
    if let Some(s) = &raw.statement_timeout {
        match humantime::parse_duration(s) {
            Ok(d) if !d.is_zero() && d <= MAX_STATEMENT_TIMEOUT && d.as_millis() > 0 => {
                cfg.statement_timeout = d;
            }
            Ok(_) => issue(
                issues,
                "cache.postgres.statement_timeout",
                format!(
                    "'{s}' is not between 1ms and {}s",
                    MAX_STATEMENT_TIMEOUT.as_secs()
                ),
            ),
            Err(e) => issue(
                issues,
                "cache.postgres.statement_timeout",
                format!("invalid duration '{s}': {e} (e.g. \"500ms\", \"2s\")"),
            ),
        }
    }
    if let Some(s) = &raw.singleflight_timeout {
        cfg.singleflight_timeout = singleflight_timeout(s, issues);
    }
    if let Some(n) = raw.ef_search {
        if (1..=MAX_EF_SEARCH as u64).contains(&n) {
            cfg.ef_search = n as usize;
        } else {
            issue(
                issues,
                "cache.postgres.ef_search",
                format!("{n} is not between 1 and {MAX_EF_SEARCH}"),
            );
        }
    }
    if let Some(n) = raw.first_ef_search {
        if n <= MAX_EF_SEARCH as u64 {
            cfg.first_ef_search = n as usize;
        } else {
            issue(
                issues,
                "cache.postgres.first_ef_search",
                format!("{n} is not between 0 (one search) and {MAX_EF_SEARCH}"),
            );
        }
    }
    cfg
}

/// `cache.postgres.singleflight_timeout`: `0s` (off) or 1s to 600s.
fn singleflight_timeout(s: &str, issues: &mut Vec<ConfigIssue>) -> Duration {
    const PATH: &str = "cache.postgres.singleflight_timeout";
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => d,
        Ok(d) if (MIN_SINGLEFLIGHT_TIMEOUT..=MAX_SINGLEFLIGHT_TIMEOUT).contains(&d) => d,
        Ok(_) => {
            issue(
                issues,
                PATH,
                format!(
                    "'{s}' is not \"0s\" (off) or between {}s and {}s",
                    MIN_SINGLEFLIGHT_TIMEOUT.as_secs(),
                    MAX_SINGLEFLIGHT_TIMEOUT.as_secs()
                ),
            );
            DEFAULT_SINGLEFLIGHT_TIMEOUT
        }
        Err(e) => {
            issue(
                issues,
                PATH,
                format!("invalid duration '{s}': {e} (e.g. \"5s\", or \"0s\" for off)"),
            );
            DEFAULT_SINGLEFLIGHT_TIMEOUT
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(backend: Option<&str>, raw: Option<RawPostgres>) -> (BackendConfig, Vec<String>) {
        let mut issues = Vec::new();
        let cfg = validate_backend(backend, raw.as_ref(), &mut issues);
        let text = issues
            .iter()
            .map(|i| format!("{}: {}", i.path, i.message))
            .collect();
        (cfg, text)
    }

    #[test]
    fn issue14_embedded_is_the_default_and_postgres_takes_its_defaults() {
        assert_eq!(check(None, None), (BackendConfig::Embedded, vec![]));
        assert_eq!(
            check(Some("postgres"), None),
            (BackendConfig::Postgres(PostgresConfig::default()), vec![])
        );
        let (cfg, issues) = check(
            Some("postgres"),
            Some(RawPostgres {
                url_env: Some("PG_URL".into()),
                pool_size: Some(4),
                schema: Some("deja_fleet2".into()),
                statement_timeout: Some("250ms".into()),
                singleflight_timeout: Some("30s".into()),
                ef_search: Some(200),
                first_ef_search: Some(0),
            }),
        );
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(
            cfg,
            BackendConfig::Postgres(PostgresConfig {
                url_env: "PG_URL".into(),
                pool_size: 4,
                schema: "deja_fleet2".into(),
                statement_timeout: Duration::from_millis(250),
                singleflight_timeout: Duration::from_secs(30),
                ef_search: 200,
                first_ef_search: 0,
            })
        );
    }

    /// Two searches only when the first is the cheaper one.
    #[test]
    fn issue14_a_first_search_below_ef_search_makes_two() {
        let with = |ef_search, first_ef_search| PostgresConfig {
            ef_search,
            first_ef_search,
            ..PostgresConfig::default()
        };
        assert_eq!(PostgresConfig::default().first_pass(), Some(40));
        assert_eq!(with(100, 0).first_pass(), None);
        assert_eq!(with(100, 100).first_pass(), None);
        assert_eq!(with(30, 40).first_pass(), None);
        assert_eq!(with(200, 60).first_pass(), Some(60));
    }

    #[test]
    fn issue14_every_bad_value_is_reported_with_its_path() {
        let (_, issues) = check(
            Some("postgres"),
            Some(RawPostgres {
                url_env: Some("MY URL".into()),
                pool_size: Some(0),
                schema: Some("Deja; DROP TABLE x".into()),
                statement_timeout: Some("0s".into()),
                singleflight_timeout: Some("500ms".into()),
                ef_search: Some(0),
                first_ef_search: Some(1001),
            }),
        );
        let joined = issues.join("\n");
        for path in [
            "url_env",
            "pool_size",
            "schema",
            "statement_timeout",
            "singleflight_timeout",
            "ef_search",
            "first_ef_search",
        ] {
            assert!(
                joined.contains(&format!("cache.postgres.{path}")),
                "{path}: {joined}"
            );
        }
        let (_, issues) = check(Some("redis"), None);
        assert!(issues[0].starts_with("cache.backend: unknown backend 'redis'"));
        let (_, issues) = check(None, Some(RawPostgres::default()));
        assert!(
            issues[0].starts_with("cache.postgres: set, but"),
            "{issues:?}"
        );
        let (_, issues) = check(
            Some("postgres"),
            Some(RawPostgres {
                ef_search: Some(1001),
                ..RawPostgres::default()
            }),
        );
        assert_eq!(
            issues,
            ["cache.postgres.ef_search: 1001 is not between 1 and 1000"]
        );
        for bad in ["1h", "soon"] {
            let (_, issues) = check(
                Some("postgres"),
                Some(RawPostgres {
                    statement_timeout: Some(bad.into()),
                    ..RawPostgres::default()
                }),
            );
            assert_eq!(issues.len(), 1, "{bad}: {issues:?}");
        }
        for bad in ["pg_catalog", "1abc", ""] {
            let (_, issues) = check(
                Some("postgres"),
                Some(RawPostgres {
                    schema: Some(bad.into()),
                    ..RawPostgres::default()
                }),
            );
            assert_eq!(issues.len(), 1, "{bad}: {issues:?}");
        }
    }

    /// `0s` turns the fleet-wide singleflight off; anything else must leave room for renewals.
    #[test]
    fn issue14_singleflight_timeout_is_off_or_between_bounds() {
        let timeout = |v: &str| {
            check(
                Some("postgres"),
                Some(RawPostgres {
                    singleflight_timeout: Some(v.into()),
                    ..RawPostgres::default()
                }),
            )
        };
        for (v, want) in [("0s", 0), ("1s", 1), ("10m", 600)] {
            let (cfg, issues) = timeout(v);
            assert!(issues.is_empty(), "{v}: {issues:?}");
            let BackendConfig::Postgres(pg) = cfg else {
                panic!("{v}: not postgres")
            };
            assert_eq!(pg.singleflight_timeout, Duration::from_secs(want), "{v}");
        }
        for bad in ["999ms", "11m", "later"] {
            let (_, issues) = timeout(bad);
            assert_eq!(issues.len(), 1, "{bad}: {issues:?}");
            assert!(
                issues[0].starts_with("cache.postgres.singleflight_timeout: "),
                "{issues:?}"
            );
        }
    }

    /// Someone pasting the URL where its variable's name belongs gets an error that does not
    /// repeat it.
    #[test]
    fn issue14_a_url_in_url_env_is_refused_without_echoing_it() {
        let (_, issues) = check(
            Some("postgres"),
            Some(RawPostgres {
                url_env: Some("postgres://deja:s3cret-pw@db.internal:5432/deja".into()),
                ..RawPostgres::default()
            }),
        );
        assert_eq!(issues.len(), 1);
        assert!(!issues[0].contains("s3cret-pw"), "{issues:?}");
        assert!(!issues[0].contains("db.internal"), "{issues:?}");
    }
}
