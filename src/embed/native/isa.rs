//! Which instruction set the native kernels use, detected once at load.

/// Kernel family. `Avx512` and `Avx2` are only constructed after runtime detection, which is
/// what makes calling their `#[target_feature]` functions sound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F (Intel since Skylake-SP, AMD since Zen 4).
    Avx512,
    /// AVX2 + FMA + F16C (Intel since Haswell, AMD since Zen).
    Avx2,
    /// Whatever the compilation target offers (SSE2 on x86-64, NEON on aarch64).
    Portable,
}

impl Isa {
    /// The best family this CPU supports; `DEJA_NATIVE_ISA=avx2|portable` forces a lower one
    /// (for comparisons; a higher one than the CPU has is ignored).
    pub fn detect() -> Self {
        let available = Self::available();
        match std::env::var("DEJA_NATIVE_ISA").ok().as_deref() {
            Some("portable") => Isa::Portable,
            Some("avx2") if available.contains(&Isa::Avx2) => Isa::Avx2,
            _ => available[0],
        }
    }

    /// Every family this CPU can run, best first (tests run each of them).
    pub fn available() -> Vec<Isa> {
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                out.push(Isa::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                out.push(Isa::Avx2);
            }
        }
        out.push(Isa::Portable);
        out
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }
}
