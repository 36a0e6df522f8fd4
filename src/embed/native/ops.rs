//! The element-wise and row-wise parts of the encoder: GELU, softmax, layer norm, with their
//! transcendental functions written as polynomials so the loops vectorize (libm's `erff`/`expf`
//! are scalar calls: a 512-token prompt needs ~19M exponentials in attention alone).
//!
//! Each function takes the [`Isa`] and runs one generic body compiled three times (AVX-512,
//! AVX2+FMA, baseline), the SIMD ones reached through methods on the ISA tokens; reductions use
//! 16 independent partial sums so LLVM can vectorize them without reassociating floating-point
//! math.

use super::isa::Isa;
#[cfg(target_arch = "x86_64")]
use super::isa::{Avx2, Avx512};

/// Exact-form GELU in place: `x · ½(1 + erf(x/√2))`.
pub(crate) fn gelu(isa: Isa, xs: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Amx(amx) => amx.avx512().gelu(xs),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512(avx512) => avx512.gelu(xs),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2(avx2) => avx2.gelu(xs),
        _ => gelu_body(xs),
    }
}

/// `row = softmax(row · scale)`.
pub(crate) fn softmax(isa: Isa, row: &mut [f32], scale: f32) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Amx(amx) => amx.avx512().softmax(row, scale),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512(avx512) => avx512.softmax(row, scale),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2(avx2) => avx2.softmax(row, scale),
        _ => softmax_body(row, scale),
    }
}

/// `x = LayerNorm(x + add) · gamma + beta` over one row.
pub(crate) fn add_layer_norm(
    isa: Isa,
    x: &mut [f32],
    add: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Amx(amx) => amx.avx512().add_layer_norm(x, add, gamma, beta, eps),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512(avx512) => avx512.add_layer_norm(x, add, gamma, beta, eps),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2(avx2) => avx2.add_layer_norm(x, add, gamma, beta, eps),
        _ => add_layer_norm_body(x, add, gamma, beta, eps),
    }
}

/// One safe body compiled for AVX-512 and for AVX2+FMA, each reached only through a method on
/// the token that proves its features.
macro_rules! versions {
    ($name:ident, $body:ident, $avx512:ident, $avx2:ident, ($($arg:ident: $ty:ty),*)) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        fn $avx512($($arg: $ty),*) {
            $body($($arg),*)
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        fn $avx2($($arg: $ty),*) {
            $body($($arg),*)
        }
        #[cfg(target_arch = "x86_64")]
        impl Avx512 {
            #[inline]
            pub(crate) fn $name(self, $($arg: $ty),*) {
                // SAFETY: `self` proves AVX-512F (only `Avx512::try_new` makes one, after
                // detection), all that the function needs beyond its safe arguments.
                unsafe { $avx512($($arg),*) }
            }
        }
        #[cfg(target_arch = "x86_64")]
        impl Avx2 {
            #[inline]
            pub(crate) fn $name(self, $($arg: $ty),*) {
                // SAFETY: `self` proves AVX2 and FMA (only `Avx2::try_new` makes one, after
                // detection), all that the function needs beyond its safe arguments.
                unsafe { $avx2($($arg),*) }
            }
        }
    };
}

versions!(gelu, gelu_body, gelu_avx512, gelu_avx2, (xs: &mut [f32]));
versions!(softmax, softmax_body, softmax_avx512, softmax_avx2, (row: &mut [f32], scale: f32));
versions!(
    add_layer_norm,
    add_layer_norm_body,
    add_layer_norm_avx512,
    add_layer_norm_avx2,
    (x: &mut [f32], add: &[f32], gamma: &[f32], beta: &[f32], eps: f32)
);

#[inline(always)]
fn gelu_body(xs: &mut [f32]) {
    for x in xs.iter_mut() {
        *x = 0.5 * *x * (1.0 + erf(*x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

#[inline(always)]
fn softmax_body(row: &mut [f32], scale: f32) {
    for x in row.iter_mut() {
        *x *= scale;
    }
    let max = reduce(row, f32::NEG_INFINITY, f32::max);
    for x in row.iter_mut() {
        *x = exp(*x - max);
    }
    let inv = 1.0 / reduce(row, 0.0, |a, b| a + b);
    for x in row.iter_mut() {
        *x *= inv;
    }
}

#[inline(always)]
fn add_layer_norm_body(x: &mut [f32], add: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let n = x.len();
    for (x, a) in x.iter_mut().zip(add) {
        *x += *a;
    }
    let mean = reduce(x, 0.0, |a, b| a + b) / n as f32;
    let mut sq = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for i in 0..LANES {
            let d = chunk[i] - mean;
            sq[i] += d * d;
        }
    }
    let var = (sq.iter().sum::<f32>() + tail.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>())
        / n as f32;
    let inv = 1.0 / (var + eps).sqrt();
    for ((x, g), b) in x.iter_mut().zip(gamma).zip(beta) {
        *x = (*x - mean) * inv * g + b;
    }
}

const LANES: usize = 16;

/// A reduction with 16 independent accumulators (vectorizable under strict FP semantics).
#[inline(always)]
pub(super) fn reduce(xs: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for i in 0..LANES {
            acc[i] = f(acc[i], chunk[i]);
        }
    }
    let mut out = init;
    for v in acc.iter().chain(tail) {
        out = f(out, *v);
    }
    out
}

/// erf(x) for f32: the rational approximation used by Eigen and XLA (odd degree-13 numerator,
/// even degree-8 denominator on [-4, 4], where |erf| reaches 1 in f32); absolute error < 5e-7.
#[allow(clippy::excessive_precision)] // the published coefficients
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024_1e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_600e-3;
    p = x2 * p + -1.609_603_3e-2;
    p *= x;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329e-3;
    q = x2 * q + -1.426_474e-2;
    p / q
}

/// e^x for f32 (Cephes `expf`: range reduction by ln 2 in two parts, degree-6 polynomial,
/// exponent bits for 2^n); relative error ~1e-7 on [-87, 88], 0 below (underflow).
///
/// `n = round(x·log₂e)` comes from adding 1.5·2²³ (the sum's low mantissa bits are `n`), so
/// 2ⁿ is built with integer ops only: a float→int `as` cast would be a saturating conversion
/// that LLVM does not vectorize.
#[allow(clippy::excessive_precision)] // the published coefficients
#[inline(always)]
fn exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut y = r * 1.987_569_1e-4 + 1.398_199_9e-3;
    y = y * r + 8.333_452e-3;
    y = y * r + 4.166_579_6e-2;
    y = y * r + 1.666_666_5e-1;
    y = y * r + 5.000_000_1e-1;
    y = y * r * r + r + 1.0;
    let n_bits = t.to_bits().wrapping_sub(MAGIC.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    y * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f64 erf by its Taylor series (|x| ≤ 3) or the asymptotic complement (beyond); plenty for
    /// checking an f32 approximation.
    fn erf64(x: f64) -> f64 {
        if x.abs() > 3.0 {
            let t = 1.0 / (x * x);
            let tail = (-x * x).exp() / (x.abs() * std::f64::consts::PI.sqrt())
                * (1.0 - 0.5 * t + 0.75 * t * t - 1.875 * t * t * t);
            return x.signum() * (1.0 - tail);
        }
        let mut term = x;
        let mut sum = x;
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn erf_and_exp_are_accurate() {
        for i in -800..=800 {
            let x = i as f32 / 100.0;
            let want = erf64(f64::from(x));
            assert!(
                (f64::from(erf(x)) - want).abs() < 5e-7,
                "erf({x}) = {} vs {want}",
                erf(x)
            );
        }
        for i in -870..=880 {
            let x = i as f32 / 10.0;
            let want = f64::from(x).exp();
            let got = f64::from(exp(x));
            assert!(
                ((got - want) / want).abs() < 5e-7,
                "exp({x}) = {got} vs {want}"
            );
        }
    }

    #[test]
    fn every_isa_agrees_on_rows() {
        let base: Vec<f32> = (0..389)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let add: Vec<f32> = base.iter().map(|v| v * 0.3 + 1.0).collect();
        let gamma: Vec<f32> = (0..389).map(|i| 1.0 + i as f32 / 1000.0).collect();
        let beta: Vec<f32> = (0..389).map(|i| i as f32 / 500.0).collect();
        for isa in Isa::available() {
            let mut g = base.clone();
            gelu(isa, &mut g);
            for (x, y) in base.iter().zip(&g) {
                let want = 0.5 * f64::from(*x) * (1.0 + erf64(f64::from(*x) / 2f64.sqrt()));
                assert!((f64::from(*y) - want).abs() < 1e-5, "{isa:?} gelu({x})");
            }

            let mut s = base.clone();
            softmax(isa, &mut s, 0.5);
            let max = base.iter().cloned().fold(f32::MIN, f32::max) as f64 * 0.5;
            let total: f64 = base.iter().map(|v| (f64::from(*v) * 0.5 - max).exp()).sum();
            for (x, y) in base.iter().zip(&s) {
                let want = (f64::from(*x) * 0.5 - max).exp() / total;
                assert!((f64::from(*y) - want).abs() < 1e-6, "{isa:?} softmax");
            }

            let mut l = base.clone();
            add_layer_norm(isa, &mut l, &add, &gamma, &beta, 1e-12);
            let sum: Vec<f64> = base
                .iter()
                .zip(&add)
                .map(|(a, b)| f64::from(*a) + f64::from(*b))
                .collect();
            let mean = sum.iter().sum::<f64>() / sum.len() as f64;
            let var = sum.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / sum.len() as f64;
            for i in 0..sum.len() {
                let want = (sum[i] - mean) / (var + 1e-12).sqrt() * f64::from(gamma[i])
                    + f64::from(beta[i]);
                assert!(
                    (f64::from(l[i]) - want).abs() < 1e-4,
                    "{isa:?} layer norm at {i}"
                );
            }
        }
    }
}
