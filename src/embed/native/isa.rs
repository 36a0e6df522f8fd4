//! Which instruction set the native kernels use, as tokens that only runtime detection makes.
//!
//! A kernel compiled with `#[target_feature]` is undefined behaviour on a CPU without that
//! feature, so the proof that the CPU has it travels as a value: [`Avx2`], [`Avx512`] and
//! [`Amx`] are zero-sized types with a private field, made only by their `try_new`, which runs
//! `is_x86_feature_detected!` (and, for AMX, asks the OS for the tile state). The SIMD kernels
//! are methods on these tokens (in `gemm`, `ops` and `amx`), so safe code reaches one only while
//! holding the proof; [`Isa`] carries a token per variant and is safe to build from outside.
//! Tokens cost nothing at run time: they are zero-sized and their methods `#[inline]`.
//!
//! Detection is process-wide (CPUID, and Linux grants the AMX tile state per process), so a
//! token made on one thread is valid on every other: tokens are `Send + Sync + Copy`.

/// Proof that this CPU runs AVX2 + FMA + F16C (Intel since Haswell, AMD since Zen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Avx2 {
    _proof: (),
}

impl Avx2 {
    /// The token, if the CPU has AVX2, FMA and F16C.
    #[inline]
    pub fn try_new() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            return Some(Avx2 { _proof: () });
        }
        None
    }
}

/// Proof that this CPU runs AVX-512F (Intel since Skylake-SP, AMD since Zen 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Avx512 {
    _proof: (),
}

impl Avx512 {
    /// The token, if the CPU has AVX-512F.
    #[inline]
    pub fn try_new() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Some(Avx512 { _proof: () });
        }
        None
    }
}

/// Proof that this process runs the AMX kernels: the CPU has AMX-TILE, AMX-BF16, AVX-512F/BW
/// and AVX512-BF16, and the OS granted the tile state (see [`super::amx::available`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amx {
    _proof: (),
}

impl Amx {
    /// The token, if this process can run the AMX kernels.
    #[inline]
    pub fn try_new() -> Option<Self> {
        super::amx::available().then_some(Amx { _proof: () })
    }

    /// AMX detection includes AVX-512F, BW and BF16 (the epilogue and conversions use them).
    #[inline]
    pub fn avx512(self) -> Avx512 {
        Avx512 { _proof: () }
    }
}

/// Kernel family, each variant holding the proof that the CPU runs it.
///
/// ```
/// use deja::embed::native::isa::{Avx512, Isa};
/// // The only way to an AVX-512 `Isa` is through detection.
/// let isa = Avx512::try_new().map_or(Isa::Portable, Isa::Avx512);
/// assert!(Isa::available().contains(&isa));
/// ```
///
/// Safe code cannot forge one (issue 12: a public fieldless enum let it run AVX-512 kernels on
/// any CPU):
///
/// ```compile_fail
/// use deja::embed::native::isa::{Avx512, Isa};
/// let forged = Isa::Avx512(Avx512 { _proof: () });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AMX-BF16 tiles for the linear layers (operands rounded to bf16, f32 accumulation), AVX-512
    /// for everything else (Intel since Sapphire Rapids; Linux grants the tile state).
    Amx(Amx),
    /// AVX-512F.
    Avx512(Avx512),
    /// AVX2 + FMA + F16C.
    Avx2(Avx2),
    /// Whatever the compilation target offers (SSE2 on x86-64, NEON on aarch64).
    Portable,
}

impl Isa {
    /// The best family this CPU supports; `DEJA_NATIVE_ISA=avx512|avx2|portable` forces a
    /// lower one (for comparisons; one the CPU lacks is ignored).
    pub fn detect() -> Self {
        let available = Self::available();
        let wanted = std::env::var("DEJA_NATIVE_ISA").ok();
        available
            .iter()
            .copied()
            .find(|isa| Some(isa.name()) == wanted.as_deref())
            .or(available.first().copied())
            .unwrap_or(Isa::Portable)
    }

    /// Every family this CPU can run, best first (tests run each of them).
    pub fn available() -> Vec<Isa> {
        let tokens = [
            Amx::try_new().map(Isa::Amx),
            Avx512::try_new().map(Isa::Avx512),
            Avx2::try_new().map(Isa::Avx2),
            Some(Isa::Portable),
        ];
        tokens.into_iter().flatten().collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Amx(_) => "amx",
            Isa::Avx512(_) => "avx512",
            Isa::Avx2(_) => "avx2",
            Isa::Portable => "portable",
        }
    }

    /// The AVX-512 token, where this family has one (AMX implies AVX-512).
    #[inline]
    pub fn avx512(self) -> Option<Avx512> {
        match self {
            Isa::Amx(amx) => Some(amx.avx512()),
            Isa::Avx512(avx512) => Some(avx512),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_zero_sized() {
        assert_eq!(std::mem::size_of::<Avx2>(), 0);
        assert_eq!(std::mem::size_of::<Avx512>(), 0);
        assert_eq!(std::mem::size_of::<Amx>(), 0);
    }

    /// A token exists exactly when the CPU has the features its kernels are compiled for.
    #[test]
    fn issue12_isa_tokens_only_come_from_detection() {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            assert_eq!(
                Avx2::try_new().is_some(),
                has!("avx2") && has!("fma") && has!("f16c")
            );
            assert_eq!(Avx512::try_new().is_some(), has!("avx512f"));
            if Amx::try_new().is_some() {
                assert!(has!("avx512f") && has!("avx512bw") && has!("avx512bf16"));
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        assert!(Avx2::try_new().is_none() && Avx512::try_new().is_none());
        let available = Isa::available();
        assert_eq!(available.last(), Some(&Isa::Portable));
        assert!(available.contains(&Isa::detect()));
    }
}
