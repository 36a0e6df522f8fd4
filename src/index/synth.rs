//! Seeded synthetic embeddings for tests and benches (hidden from docs): unit vectors drawn
//! around a fixed set of cluster centres, which is closer to real sentence embeddings (topics,
//! paraphrases) than uniform noise. Never used on the serving path.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Deterministic generator: the same seed gives the same vectors on every machine.
pub struct Synth {
    rng: StdRng,
    dim: usize,
    centres: Vec<Vec<f32>>,
    /// Per-component spread around a centre; two members of a cluster have cosine ≈ 0.6.
    spread: f32,
}

impl Synth {
    pub fn new(seed: u64, dim: usize, clusters: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let centres = (0..clusters.max(1))
            .map(|_| {
                let mut c: Vec<f32> = (0..dim).map(|_| gaussian(&mut rng)).collect();
                normalize(&mut c);
                c
            })
            .collect();
        Synth {
            rng,
            dim,
            centres,
            spread: (0.67 / dim.max(1) as f32).sqrt(),
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// A unit vector near a random centre.
    pub fn vector(&mut self) -> Vec<f32> {
        let c = self.rng.random_range(0..self.centres.len());
        let mut v: Vec<f32> = (0..self.dim)
            .map(|i| self.centres[c][i] + self.spread * gaussian(&mut self.rng))
            .collect();
        normalize(&mut v);
        v
    }

    /// `n` vectors from [`Synth::vector`].
    pub fn vectors(&mut self, n: usize) -> Vec<Vec<f32>> {
        (0..n).map(|_| self.vector()).collect()
    }

    /// A paraphrase-like copy of `v`: cosine to it ≈ `1 / sqrt(1 + noise² · dim)`.
    pub fn perturb(&mut self, v: &[f32], noise: f32) -> Vec<f32> {
        let mut out: Vec<f32> = v
            .iter()
            .map(|x| x + noise * gaussian(&mut self.rng))
            .collect();
        normalize(&mut out);
        out
    }

    /// Uniform index in `0..n` (for picking which stored vector to query).
    pub fn pick(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n.max(1))
    }
}

/// Standard normal by Box-Muller (rand_distr is not a dependency).
fn gaussian(rng: &mut StdRng) -> f32 {
    let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
    let u2: f32 = rng.random::<f32>();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}
