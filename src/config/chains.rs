//! `cache.response_chains` and `cache.response_chain_ttl` (issue 15): how many Responses
//! conversations deja remembers for `previous_response_id` follow-ups, and for how long (see
//! `cache::chains`). OpenAI keeps a stored response for 30 days; so does deja by default.

use std::time::Duration;

use super::ConfigIssue;

/// Records kept at most by default.
pub const DEFAULT_MAX_CHAINS: usize = 100_000;
/// The largest `cache.response_chains` accepted.
pub const MAX_MAX_CHAINS: u64 = 10_000_000;
/// Bytes of records kept at most by default: 1 GiB.
pub const DEFAULT_CHAIN_BYTES: u64 = 1 << 30;
/// How long a record is kept by default: 30 days.
pub const DEFAULT_CHAIN_TTL: Duration = Duration::from_secs(30 * 86_400);

/// The validated settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainsConfig {
    /// Records kept at most (soonest-expiring evicted first); 0 = deja remembers none, and a
    /// follow-up is forwarded as it came.
    pub max: usize,
    pub ttl: Duration,
    /// Bytes of records kept at most (the soonest-expiring go first past it).
    pub max_bytes: u64,
}

impl Default for ChainsConfig {
    fn default() -> Self {
        ChainsConfig {
            max: DEFAULT_MAX_CHAINS,
            ttl: DEFAULT_CHAIN_TTL,
            max_bytes: DEFAULT_CHAIN_BYTES,
        }
    }
}

impl ChainsConfig {
    pub fn enabled(&self) -> bool {
        self.max > 0
    }

    pub fn limits(&self) -> crate::store::chains::ChainLimits {
        crate::store::chains::ChainLimits {
            max: self.max,
            max_bytes: self.max_bytes,
        }
    }
}

/// Validates both keys; problems are appended with their paths.
pub fn validate_chains(
    max: Option<u64>,
    ttl: Option<&str>,
    max_bytes: Option<u64>,
    issues: &mut Vec<ConfigIssue>,
) -> ChainsConfig {
    let d = ChainsConfig::default();
    let max = match max {
        None => d.max,
        Some(n) if n <= MAX_MAX_CHAINS => n as usize,
        Some(n) => {
            issues.push(ConfigIssue {
                path: "cache.response_chains".into(),
                message: format!("{n} is more than {MAX_MAX_CHAINS} (0 turns them off)"),
            });
            d.max
        }
    };
    let ttl = match ttl.map(humantime::parse_duration) {
        None => d.ttl,
        Some(Ok(t)) if !t.is_zero() => t,
        Some(Ok(_)) => {
            issues.push(ConfigIssue {
                path: "cache.response_chain_ttl".into(),
                message: "must be greater than 0".into(),
            });
            d.ttl
        }
        Some(Err(e)) => {
            issues.push(ConfigIssue {
                path: "cache.response_chain_ttl".into(),
                message: format!("invalid duration: {e} (e.g. \"30d\", \"12h\")"),
            });
            d.ttl
        }
    };
    let max_bytes = match max_bytes {
        None => d.max_bytes,
        Some(0) => {
            issues.push(ConfigIssue {
                path: "cache.response_chain_bytes".into(),
                message: "must be greater than 0 (response_chains = 0 turns them off)".into(),
            });
            d.max_bytes
        }
        Some(n) => n,
    };
    ChainsConfig {
        max,
        ttl,
        max_bytes,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;
    use std::time::Duration;

    fn parse(cache: &str) -> Result<Config, String> {
        let text = format!(
            "[[providers]]\nname = \"openai\"\nkind = \"openai\"\n\
             base_url = \"https://api.openai.com/v1/\"\n[cache]\n{cache}\n"
        );
        Config::from_toml_str(&text, Vec::<(String, String)>::new(), Path::new("/base"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn response_chains_have_defaults_and_bounds() {
        let c = parse("").unwrap();
        assert_eq!(c.cache.chains.max, 100_000);
        assert_eq!(c.cache.chains.ttl, Duration::from_secs(30 * 86_400));
        assert_eq!(c.cache.chains.max_bytes, 1 << 30);
        let c =
            parse("response_chains = 0\nresponse_chain_ttl = \"12h\"\nresponse_chain_bytes = 4096")
                .unwrap();
        assert_eq!(c.cache.chains.max_bytes, 4096);
        assert!(!c.cache.chains.enabled());
        assert_eq!(c.cache.chains.ttl, Duration::from_secs(12 * 3600));

        let e = parse("response_chains = 20000000").unwrap_err();
        assert!(e.contains("cache.response_chains"), "{e}");
        let e = parse("response_chain_ttl = \"0s\"").unwrap_err();
        assert!(e.contains("cache.response_chain_ttl"), "{e}");
        let e = parse("response_chain_bytes = 0").unwrap_err();
        assert!(e.contains("cache.response_chain_bytes"), "{e}");
        let e = parse("response_chain_ttl = \"soon\"").unwrap_err();
        assert!(e.contains("cache.response_chain_ttl"), "{e}");
    }
}
