//! Namespace grants: which client keys may name a namespace in `x-deja-namespace`. The config
//! holds only SHA-256 hashes of keys (`sha256:<64 hex>`, as `deja key-hash` prints them), never
//! keys; this module owns that format and the namespace-name rule. The decision itself is made
//! by `cache::policy`.

use sha2::{Digest, Sha256};

const PREFIX: &str = "sha256:";

/// SHA-256 of a client API key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// The hash of a key as the client sends it (bearer token or `x-api-key`).
    pub fn of(key: &str) -> KeyHash {
        KeyHash(Sha256::digest(key.as_bytes()).into())
    }

    /// Parses `sha256:<64 hex digits>` (either case).
    pub fn parse(s: &str) -> Option<KeyHash> {
        let hex = s.strip_prefix(PREFIX)?;
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex, &mut out).ok()?;
        Some(KeyHash(out))
    }
}

impl std::fmt::Display for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}{}", hex::encode(self.0))
    }
}

impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// `[[cache.namespaces]]`: a namespace the operator shares between the listed keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceGrant {
    pub name: String,
    pub keys: Vec<KeyHash>,
}

impl NamespaceGrant {
    pub fn allows(&self, key: &KeyHash) -> bool {
        self.keys.contains(key)
    }
}

/// A namespace name: 1 to 128 printable ASCII characters (no spaces), as in the header.
pub fn valid_namespace(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.chars().all(|c| c.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hashes_round_trip_and_match_sha256sum() {
        // `printf %s sk-test | sha256sum`
        let h = KeyHash::of("sk-test");
        let shown = h.to_string();
        assert_eq!(
            shown,
            "sha256:f3abf2a6cc4f00987743db5f544ba345b4899ae31f326d8ee9c4816de153c9e0"
        );
        assert_eq!(KeyHash::parse(&shown), Some(h));
        assert_eq!(
            KeyHash::parse(&shown.to_ascii_uppercase().replace("SHA256", "sha256")),
            Some(h)
        );
        assert_eq!(KeyHash::parse(shown.trim_start_matches("sha256:")), None);
        assert_eq!(KeyHash::parse("sha256:abc"), None);
        assert_eq!(KeyHash::parse(&format!("sha256:{}", "g".repeat(64))), None);
    }

    #[test]
    fn namespace_names() {
        assert!(valid_namespace("team-a"));
        assert!(!valid_namespace(""));
        assert!(!valid_namespace("has space"));
        assert!(!valid_namespace("cr\r"));
        assert!(!valid_namespace(&"a".repeat(129)));
    }
}
