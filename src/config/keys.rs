//! `server.auth` and `[[keys]]`: deja keys (issue 16). With `auth = "keys"` a client must send
//! a key the config lists (by its SHA-256 hash only, as `deja keys new` prints it), the key
//! decides the tenant it caches in and the models it may use, and the provider keys stay inside
//! deja. Raw shape and validation ([`validate_keys`], called once from `validate`) live here;
//! enforcement is `cache::access`.

use serde::{Deserialize, Serialize};

use super::{grants, ConfigIssue, KeyHash, ModelGlob};

/// Largest `rpm` a key may have: more is no limit at all.
const MAX_RPM: u64 = 10_000_000;
/// Largest `tpm` and `reserve_output_tokens`.
const MAX_TPM: u64 = 1_000_000_000;
/// Largest budget in USD (a day's or a month's).
const MAX_BUDGET_USD: f64 = 1e9;
/// Completion tokens reserved for a request that names no `max_tokens`.
pub const DEFAULT_RESERVE_OUTPUT_TOKENS: u32 = 1024;

/// `[[keys]]` as written (and as `POST /admin/keys` keeps a key it made, in
/// `<cache.dir>/admin-keys.json`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub name: String,
    /// `sha256:<64 hex>` of the key.
    pub hash: String,
    /// The namespace the key's answers are cached in (shared with other keys naming it);
    /// absent: a scope of its own.
    pub namespace: Option<String>,
    /// Globs on the request's model; absent: every model.
    pub models: Option<Vec<String>>,
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Upstream tokens (prompt + completion) per minute.
    pub tpm: Option<u64>,
    /// USD spent upstream per UTC day, priced with `[[prices]]`.
    pub budget_daily_usd: Option<f64>,
    /// USD spent upstream per UTC calendar month.
    pub budget_monthly_usd: Option<f64>,
    /// Completion tokens reserved before the upstream call when the request sets no
    /// `max_tokens` (default 1024).
    pub reserve_output_tokens: Option<u64>,
}

/// Who may call deja.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// The client's key goes upstream unless the provider has its own (the default).
    Passthrough,
    /// Clients must present a `[[keys]]` key; it never goes upstream.
    Keys,
}

/// One validated `[[keys]]` entry.
#[derive(Debug, Clone)]
pub struct KeyConfig {
    /// A label from the config: used in metrics and logs (never the key or its hash).
    pub name: String,
    pub hash: KeyHash,
    pub namespace: Option<String>,
    /// Empty: every model.
    pub models: Vec<ModelGlob>,
    pub rpm: Option<u32>,
    /// Upstream tokens per minute.
    pub tpm: Option<u64>,
    /// Budgets in nano-USD (integers, so reserving and settling add up exactly).
    pub budget_daily_nano: Option<u64>,
    pub budget_monthly_nano: Option<u64>,
    pub reserve_output_tokens: u32,
    /// Made through the admin API (`POST /admin/keys`), not listed in the config file.
    pub admin: bool,
}

/// USD as integer nano-dollars (rounded; negative and non-finite amounts are 0).
pub fn usd_to_nano(usd: f64) -> u64 {
    if usd.is_finite() && usd > 0.0 {
        (usd * 1e9).round() as u64
    } else {
        0
    }
}

impl KeyConfig {
    /// Whether requests of this key reserve tokens or money before going upstream.
    pub fn has_spend_limits(&self) -> bool {
        self.tpm.is_some() || self.budget_daily_nano.is_some() || self.budget_monthly_nano.is_some()
    }

    pub fn allows_model(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|g| g.matches(model))
    }

    /// The tenant this key's requests cache under: its namespace, else a scope of its own.
    pub fn tenant(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("ns:{ns}"),
            None => format!("dkey:{}", self.name),
        }
    }
}

#[derive(Debug, Clone)]
pub struct KeysConfig {
    pub auth: AuthMode,
    pub keys: Vec<KeyConfig>,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            auth: AuthMode::Passthrough,
            keys: Vec::new(),
        }
    }
}

impl KeysConfig {
    pub fn find(&self, hash: &KeyHash) -> Option<&KeyConfig> {
        self.keys.iter().find(|k| k.hash == *hash)
    }
}

/// A fresh deja key: `dk-` and 32 random bytes from the thread's CSPRNG (seeded by the OS), in
/// hex. Shown once by `deja keys new`; only its hash goes in the config.
pub fn new_key() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("dk-{}", hex::encode(bytes))
}

/// The `[[keys]]` block for a key, to paste into the config.
pub fn config_block(name: &str, key: &str) -> String {
    format!(
        "[[keys]]\nname = \"{name}\"\nhash = \"{}\"\n# namespace = \"team-a\"\n\
         # models = [\"gpt-4o*\"]\n# rpm = 60\n# tpm = 100000\n\
         # budget_daily_usd = 5.0\n# budget_monthly_usd = 100.0\n",
        KeyHash::of(key)
    )
}

fn issue(issues: &mut Vec<ConfigIssue>, path: String, message: impl Into<String>) {
    issues.push(ConfigIssue {
        path,
        message: message.into(),
    });
}

/// A key name: 1 to 64 of `[A-Za-z0-9_.-]`, so it is safe as a metric label and in a log line.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Validates `server.auth` and `[[keys]]`; problems are appended to `issues` with their paths.
pub fn validate_keys(
    auth: Option<&str>,
    raw: &[RawKey],
    issues: &mut Vec<ConfigIssue>,
) -> KeysConfig {
    let auth = match auth {
        None | Some("passthrough") => AuthMode::Passthrough,
        Some("keys") => AuthMode::Keys,
        Some(other) => {
            issue(
                issues,
                "server.auth".into(),
                format!("'{other}' is not one of passthrough, keys"),
            );
            AuthMode::Passthrough
        }
    };
    let mut keys: Vec<KeyConfig> = Vec::new();
    for (i, k) in raw.iter().enumerate() {
        let at = |f: &str| format!("keys[{i}].{f}");
        let mut ok = true;
        if !valid_name(&k.name) {
            issue(issues, at("name"), "must be 1 to 64 of A-Z a-z 0-9 _ . -");
            ok = false;
        } else if keys.iter().any(|o| o.name == k.name) {
            issue(issues, at("name"), format!("'{}' is defined twice", k.name));
            ok = false;
        }
        let hash = KeyHash::parse(&k.hash);
        match hash {
            None => {
                issue(
                    issues,
                    at("hash"),
                    "must be sha256:<64 hex digits> (`deja keys new` prints one); never the key",
                );
                ok = false;
            }
            Some(h) if keys.iter().any(|o| o.hash == h) => {
                issue(issues, at("hash"), "the same key is listed twice");
                ok = false;
            }
            Some(_) => {}
        }
        if let Some(ns) = &k.namespace {
            if !grants::valid_namespace(ns) {
                issue(
                    issues,
                    at("namespace"),
                    "must be 1 to 128 printable ASCII characters",
                );
                ok = false;
            }
        }
        let mut models = Vec::new();
        for (j, g) in k.models.iter().flatten().enumerate() {
            match ModelGlob::new(g) {
                Ok(g) => models.push(g),
                Err(e) => {
                    issue(
                        issues,
                        format!("keys[{i}].models[{j}]"),
                        format!("invalid glob '{g}': {e}"),
                    );
                    ok = false;
                }
            }
        }
        let rpm = match k.rpm {
            None => None,
            Some(v) if (1..=MAX_RPM).contains(&v) => u32::try_from(v).ok(),
            Some(v) => {
                issue(
                    issues,
                    at("rpm"),
                    format!("{v} is not between 1 and {MAX_RPM}"),
                );
                ok = false;
                None
            }
        };
        let mut count = |f: &str, v: Option<u64>, max: u64| match v {
            Some(v) if !(1..=max).contains(&v) => {
                issue(issues, at(f), format!("{v} is not between 1 and {max}"));
                ok = false;
                None
            }
            v => v,
        };
        let tpm = count("tpm", k.tpm, MAX_TPM);
        let reserve = count("reserve_output_tokens", k.reserve_output_tokens, MAX_TPM);
        let mut usd = |f: &str, v: Option<f64>| match v {
            Some(v) if !(v.is_finite() && v > 0.0 && v <= MAX_BUDGET_USD) => {
                issue(
                    issues,
                    at(f),
                    format!("{v} is not a number of USD above 0 and at most {MAX_BUDGET_USD}"),
                );
                ok = false;
                None
            }
            v => v.map(usd_to_nano),
        };
        let daily = usd("budget_daily_usd", k.budget_daily_usd);
        let monthly = usd("budget_monthly_usd", k.budget_monthly_usd);
        if let (true, Some(hash)) = (ok, hash) {
            keys.push(KeyConfig {
                name: k.name.clone(),
                hash,
                namespace: k.namespace.clone(),
                models,
                rpm,
                tpm,
                budget_daily_nano: daily,
                budget_monthly_nano: monthly,
                reserve_output_tokens: reserve
                    .and_then(|v| u32::try_from(v).ok())
                    .unwrap_or(DEFAULT_RESERVE_OUTPUT_TOKENS),
                admin: false,
            });
        }
    }
    if auth == AuthMode::Keys && keys.is_empty() && raw.is_empty() {
        issue(
            issues,
            "keys".into(),
            "server.auth = \"keys\" needs at least one [[keys]] entry (`deja keys new` makes one)",
        );
    }
    KeysConfig { auth, keys }
}

/// Validates one key made through the admin API against the keys already in `taken`: the
/// same checks as `[[keys]]` (problems named by field, `rpm`, `models[0]`), and neither its name
/// nor its key may be one `taken` has.
pub fn validate_admin_key(raw: &RawKey, taken: &KeysConfig) -> Result<KeyConfig, Vec<ConfigIssue>> {
    let mut issues = Vec::new();
    let one = validate_keys(None, std::slice::from_ref(raw), &mut issues);
    for i in &mut issues {
        if let Some(field) = i.path.strip_prefix("keys[0].") {
            i.path = field.to_string();
        }
    }
    if taken.keys.iter().any(|k| k.name == raw.name) {
        issue(
            &mut issues,
            "name".into(),
            format!("a key named '{}' exists", raw.name),
        );
    }
    match one.keys.into_iter().next() {
        Some(_) if !issues.is_empty() => Err(issues),
        Some(k) if taken.find(&k.hash).is_some() => {
            issue(&mut issues, "hash".into(), "the same key is listed already");
            Err(issues)
        }
        Some(k) => Ok(KeyConfig { admin: true, ..k }),
        None => Err(issues),
    }
}

impl KeysConfig {
    /// These keys with `admin` (keys the admin API made) in place of the admin keys they had.
    /// A key whose name or hash the config file now has too is left out (the file wins), with
    /// a warning in the log.
    pub fn with_admin_keys(&self, admin: &[RawKey]) -> KeysConfig {
        let mut out = KeysConfig {
            auth: self.auth,
            keys: self.keys.iter().filter(|k| !k.admin).cloned().collect(),
        };
        for raw in admin {
            match validate_admin_key(raw, &out) {
                Ok(k) => out.keys.push(k),
                Err(problems) => {
                    let why: Vec<String> = problems
                        .iter()
                        .map(|p| format!("{}: {}", p.path, p.message))
                        .collect();
                    tracing::warn!(key = %raw.name, "admin key left out: {}", why.join("; "));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{AuthMode, Config, KeyHash};
    use std::path::Path;

    fn load(text: &str) -> Result<Config, crate::config::ConfigError> {
        Config::from_toml_str(text, Vec::<(String, String)>::new(), Path::new("/"))
    }

    #[test]
    fn admin_keys_merge_after_the_files_and_lose_conflicts() {
        use crate::config::keys::{validate_admin_key, RawKey};
        let c = load(&format!(
            "[server]\nauth = \"keys\"\n[[keys]]\nname = \"boot\"\nhash = \"{}\"\n",
            KeyHash::of("dk-boot")
        ))
        .unwrap();
        let raw = |name: &str, key: &str| RawKey {
            name: name.into(),
            hash: KeyHash::of(key).to_string(),
            namespace: None,
            models: None,
            rpm: Some(3),
            tpm: None,
            budget_daily_usd: None,
            budget_monthly_usd: None,
            reserve_output_tokens: None,
        };
        let ok = validate_admin_key(&raw("ops", "dk-ops"), &c.keys).unwrap();
        assert!(ok.admin && ok.rpm == Some(3));
        let taken = validate_admin_key(&raw("boot", "dk-other"), &c.keys).unwrap_err();
        assert_eq!(taken[0].path, "name");
        let same_key = validate_admin_key(&raw("other", "dk-boot"), &c.keys).unwrap_err();
        assert_eq!(same_key[0].path, "hash");
        let mut bad = raw("x", "dk-x");
        bad.rpm = Some(0);
        assert_eq!(
            validate_admin_key(&bad, &c.keys).unwrap_err()[0].path,
            "rpm"
        );

        // Merged after the file's keys; a conflict with the file leaves the admin key out; a
        // second merge replaces the admin keys instead of adding them again.
        let admin = [raw("ops", "dk-ops"), raw("boot", "dk-shadow")];
        let merged = c.keys.with_admin_keys(&admin);
        let names: Vec<_> = merged
            .keys
            .iter()
            .map(|k| (k.name.as_str(), k.admin))
            .collect();
        assert_eq!(names, [("boot", false), ("ops", true)]);
        let again = merged.with_admin_keys(&admin[..1]);
        assert_eq!(again.keys.len(), 2);
        assert!(again.with_admin_keys(&[]).keys.iter().all(|k| !k.admin));
    }

    #[test]
    fn keys_parse_and_default_to_passthrough() {
        let c = load("").unwrap();
        assert_eq!(c.keys.auth, AuthMode::Passthrough);
        let h = KeyHash::of("dk-a");
        let c = load(&format!(
            "[server]\nauth = \"keys\"\n[[keys]]\nname = \"team-a\"\nhash = \"{h}\"\n\
             namespace = \"support\"\nmodels = [\"gpt-4o*\"]\nrpm = 60\n"
        ))
        .unwrap();
        assert_eq!(c.keys.auth, AuthMode::Keys);
        let k = c.keys.find(&h).unwrap();
        assert_eq!((k.name.as_str(), k.rpm), ("team-a", Some(60)));
        assert!(k.allows_model("gpt-4o-mini") && !k.allows_model("claude-3"));
        assert_eq!(k.tenant(), "ns:support");
    }

    #[test]
    fn spend_limits_parse_and_bad_ones_are_reported() {
        let h = KeyHash::of("dk-a");
        let c = load(&format!(
            "[server]\nauth = \"keys\"\n[[keys]]\nname = \"a\"\nhash = \"{h}\"\n\
             tpm = 1000\nbudget_daily_usd = 1.5\nbudget_monthly_usd = 20\n"
        ))
        .unwrap();
        let k = c.keys.find(&h).unwrap();
        assert_eq!(k.tpm, Some(1000));
        assert_eq!(k.budget_daily_nano, Some(1_500_000_000));
        assert_eq!(k.budget_monthly_nano, Some(20_000_000_000));
        assert_eq!(
            k.reserve_output_tokens,
            super::DEFAULT_RESERVE_OUTPUT_TOKENS
        );
        assert!(k.has_spend_limits());
        let e = load(&format!(
            "[server]\nauth = \"keys\"\n[[keys]]\nname = \"a\"\nhash = \"{h}\"\n\
             tpm = 0\nbudget_daily_usd = -1.0\nbudget_monthly_usd = nan\n\
             reserve_output_tokens = 0\n"
        ))
        .unwrap_err();
        let paths: Vec<&str> = e.issues().iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "keys[0].tpm",
                "keys[0].reserve_output_tokens",
                "keys[0].budget_daily_usd",
                "keys[0].budget_monthly_usd"
            ],
            "{e}"
        );
    }

    #[test]
    fn new_keys_are_fresh_and_their_block_loads() {
        let (a, b) = (super::new_key(), super::new_key());
        assert_ne!(a, b);
        assert!(a.starts_with("dk-") && a.len() == 67, "{a}");
        let block = super::config_block("ci", &a);
        assert!(!block.contains(&a));
        let c = load(&format!("[server]\nauth = \"keys\"\n{block}")).unwrap();
        assert_eq!(c.keys.find(&KeyHash::of(&a)).unwrap().name, "ci");
    }

    #[test]
    fn bad_keys_are_reported_with_their_paths() {
        let h = KeyHash::of("dk-a");
        let e = load(&format!(
            "[server]\nauth = \"tokens\"\n[[keys]]\nname = \"a b\"\nhash = \"dk-a\"\nrpm = 0\n\
             models = [\"a[\"]\n[[keys]]\nname = \"x\"\nhash = \"{h}\"\n\
             [[keys]]\nname = \"x\"\nhash = \"{h}\"\n"
        ))
        .unwrap_err();
        let paths: Vec<&str> = e.issues().iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "server.auth",
                "keys[0].name",
                "keys[0].hash",
                "keys[0].models[0]",
                "keys[0].rpm",
                "keys[2].name",
                "keys[2].hash"
            ],
            "{e}"
        );
        assert!(
            !e.to_string().contains("dk-a\""),
            "a key pasted as hash is not echoed"
        );
        let e = load("[server]\nauth = \"keys\"\n").unwrap_err();
        assert_eq!(e.issues()[0].path, "keys");
    }
}
