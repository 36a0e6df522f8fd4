//! A tiny deterministic embedder for plumbing tests and benchmarks of everything around the
//! model. It hashes lowercase words and character trigrams into `dim` signed buckets and
//! L2-normalizes. It has NO semantics: paraphrases with different words score low, and a negated
//! sentence scores high. Never use it to decide whether two prompts mean the same thing.

use super::{EmbedError, Embedder};

/// Feature-hashing embedder: identical text → identical vector; texts sharing most words →
/// high cosine.
#[derive(Debug, Clone)]
pub struct HashEmbedder {
    dim: usize,
    id: String,
}

const WORD_WEIGHT: f32 = 1.0;
const TRIGRAM_WEIGHT: f32 = 0.5;

impl HashEmbedder {
    /// `dim` is clamped to at least 1.
    pub fn new(dim: usize) -> Self {
        let dim = dim.max(1);
        Self {
            dim,
            id: format!("deja/hashing-{dim}"),
        }
    }

    /// One embedding; the batch method maps over this.
    pub fn embed_one(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0.0f32; self.dim];
        let lower = text.to_lowercase();
        let mut any = false;
        for word in lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            any = true;
            self.add(&mut v, b"w", word.as_bytes(), WORD_WEIGHT);
            let padded: Vec<char> = std::iter::once('^')
                .chain(word.chars())
                .chain(std::iter::once('$'))
                .collect();
            for tri in padded.windows(3) {
                let s: String = tri.iter().collect();
                self.add(&mut v, b"t", s.as_bytes(), TRIGRAM_WEIGHT);
            }
        }
        if !any {
            // Text without words still needs a unit vector; all such texts are identical.
            self.add(&mut v, b"e", b"", 1.0);
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }

    fn add(&self, v: &mut [f32], kind: &[u8], token: &[u8], weight: f32) {
        let h = fnv1a(kind, token);
        let idx = (h % self.dim as u64) as usize;
        let sign = if (h >> 63) == 0 { 1.0 } else { -1.0 };
        v[idx] += sign * weight;
    }
}

/// FNV-1a, 64-bit: stable across platforms and releases, unlike `DefaultHasher`.
fn fnv1a(kind: &[u8], token: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in kind.iter().chain([0u8].iter()).chain(token) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Embedder for HashEmbedder {
    fn model_id(&self) -> &str {
        &self.id
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        Ok(texts.iter().map(|t| self.embed_one(t)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::cosine;

    #[test]
    fn deterministic_and_normalized() {
        let e = HashEmbedder::new(256);
        let a = e.embed_one("How do I reset my password?");
        let b = HashEmbedder::new(256).embed_one("How do I reset my password?");
        assert_eq!(a, b);
        assert_eq!(a.len(), 256);
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        // Pinned (computed independently): stored vectors depend on the hash never changing.
        assert_eq!(fnv1a(b"w", b"password"), 0xffa1_1426_5a64_b26f);
        assert_ne!(fnv1a(b"w", b"password"), fnv1a(b"t", b"password"));
    }

    #[test]
    fn shared_words_score_high_and_unrelated_low() {
        let e = HashEmbedder::new(384);
        let a = e.embed_one("How do I reset my password?");
        let case = e.embed_one("how do i RESET my password");
        let near = e.embed_one("How do I reset my password please?");
        let far = e.embed_one("What is the capital of France?");
        assert!(cosine(&a, &case) > 0.999);
        assert!(cosine(&a, &near) > 0.85, "{}", cosine(&a, &near));
        assert!(cosine(&a, &far) < 0.3, "{}", cosine(&a, &far));
    }

    #[test]
    fn empty_text_still_gets_a_unit_vector() {
        let e = HashEmbedder::new(8);
        let v = e.embed_batch(&["", "  ?! "]).unwrap();
        assert_eq!(v[0], v[1]);
        assert!((v[0].iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(HashEmbedder::new(0).dim(), 1);
    }
}
