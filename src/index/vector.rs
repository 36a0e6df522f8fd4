//! Vector checks and arithmetic shared by every index kind: dimension/finiteness validation, L2
//! normalization and the dot product of the flat scan. It never allocates on the search path
//! unless the query needs normalizing, and never panics on any input.

use super::IndexError;
use std::borrow::Cow;

/// Squared length of the vectors stored in (and sent to) the HNSW graph. hnsw_rs's `DistDot`
/// asserts `dot <= 1` (`1.000002` with simdeez), and a unit vector's dot with itself rounds
/// above 1 often enough to panic on exact repeats, which a cache searches for all the time.
/// Scaling both sides to `1 - 2^-10` keeps every computed dot below 1: the rounding error of a
/// dot is at most `dim * 2^-24` relative, under `2^-11` for `dim <= MAX_DIM`.
pub const GRAPH_SCALE_SQ: f32 = 1.0 - 1.0 / 1024.0;

/// Norms within this of 1 are taken as already normalized (the embedder normalizes).
const UNIT_TOLERANCE: f32 = 1e-4;

/// Checks `v` against `dim` and returns it L2-normalized (borrowed when it already is).
pub fn prepare(v: &[f32], dim: usize) -> Result<Cow<'_, [f32]>, IndexError> {
    if v.len() != dim {
        return Err(IndexError::DimensionMismatch {
            expected: dim,
            got: v.len(),
        });
    }
    if !v.iter().all(|x| x.is_finite()) {
        return Err(IndexError::NonFinite);
    }
    let norm = dot(v, v).sqrt();
    if !norm.is_finite() {
        // Finite components whose squares overflow: rescale before normalizing.
        let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        let scaled: Vec<f32> = v.iter().map(|x| x / max).collect();
        return prepare(&scaled, dim).map(|c| Cow::Owned(c.into_owned()));
    }
    if norm == 0.0 {
        return Err(IndexError::ZeroVector);
    }
    if (norm - 1.0).abs() <= UNIT_TOLERANCE {
        return Ok(Cow::Borrowed(v));
    }
    Ok(Cow::Owned(v.iter().map(|x| x / norm).collect()))
}

/// `v` (already normalized) scaled to the graph's length, see [`GRAPH_SCALE_SQ`].
pub fn to_graph(v: &[f32]) -> Vec<f32> {
    let s = GRAPH_SCALE_SQ.sqrt();
    v.iter().map(|x| x * s).collect()
}

/// Similarity from hnsw_rs's `DistDot` distance (`1 - dot`) between two graph-scaled vectors.
pub fn graph_similarity(distance: f32) -> f32 {
    clamp_similarity((1.0 - distance) / GRAPH_SCALE_SQ)
}

/// Keeps float error from producing similarities outside [-1, 1] (NaN becomes -1).
pub fn clamp_similarity(s: f32) -> f32 {
    if s.is_nan() {
        -1.0
    } else {
        s.clamp(-1.0, 1.0)
    }
}

/// Independent accumulators: enough to hide add latency, and the inner loop is a fixed-width
/// array operation that LLVM turns into SIMD without any `unsafe`.
const LANES: usize = 16;

/// Dot product of two equal-length slices (extra elements of the longer one are ignored).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the features `dot_avx2` is compiled for (checked above).
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_lanes::<false>(a, b)
}

/// The same loop compiled for AVX2+FMA: 8-wide fused multiply-adds instead of the baseline
/// SSE2's 4-wide multiply then add.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes::<true>(a, b)
}

/// `FUSED` uses `mul_add`, which is one instruction with FMA and a slow libm call without.
#[inline(always)]
fn dot_lanes<const FUSED: bool>(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        // Fixed-size arrays: LLVM sees 16 independent lanes and emits full-width SIMD (with
        // plain slices it vectorized only partially). `chunks_exact` makes the else unreachable.
        let (Ok(x), Ok(y)) = (<&[f32; LANES]>::try_from(x), <&[f32; LANES]>::try_from(y)) else {
            continue;
        };
        for i in 0..LANES {
            acc[i] = if FUSED {
                x[i].mul_add(y[i], acc[i])
            } else {
                acc[i] + x[i] * y[i]
            };
        }
    }
    let mut tail = 0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    // A plain indexed sum: fancier (pairwise) reductions made LLVM give up on full-width SIMD
    // for the loop above, costing 2x.
    let mut sum = 0f32;
    #[allow(clippy::needless_range_loop)]
    for i in 0..LANES {
        sum += acc[i];
    }
    sum + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
    }

    #[test]
    fn dot_matches_naive_for_every_tail_length() {
        for n in [0usize, 1, 7, 15, 16, 17, 33, 384, 385] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let got = dot(&a, &b) as f64;
            assert!((got - naive(&a, &b)).abs() < 1e-4, "n={n}");
            assert!(
                (dot_lanes::<false>(&a, &b) as f64 - naive(&a, &b)).abs() < 1e-4,
                "n={n}"
            );
        }
    }

    #[test]
    fn prepare_validates_and_normalizes() {
        assert_eq!(
            prepare(&[1.0, 2.0], 3).unwrap_err(),
            IndexError::DimensionMismatch {
                expected: 3,
                got: 2
            }
        );
        assert_eq!(
            prepare(&[1.0, f32::NAN], 2).unwrap_err(),
            IndexError::NonFinite
        );
        assert_eq!(prepare(&[0.0, 0.0], 2).unwrap_err(), IndexError::ZeroVector);
        let v = prepare(&[3.0, 4.0], 2).unwrap();
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        assert!(matches!(prepare(&[0.6, 0.8], 2).unwrap(), Cow::Borrowed(_)));
        let huge = prepare(&[f32::MAX, f32::MAX], 2).unwrap();
        assert!((dot(&huge, &huge) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn graph_scaled_self_dot_stays_below_one() {
        // The worst case for rounding: many equal components.
        for dim in [1usize, 3, 384, 1024, crate::index::MAX_DIM] {
            let v = vec![1.0 / (dim as f32).sqrt(); dim];
            let g = to_graph(&prepare(&v, dim).unwrap());
            let d = dot(&g, &g);
            assert!(d < 1.0, "dim {dim}: {d}");
            assert!((graph_similarity(1.0 - d) - 1.0).abs() < 1e-3);
        }
        assert_eq!(clamp_similarity(f32::NAN), -1.0);
        assert_eq!(clamp_similarity(1.5), 1.0);
    }
}
