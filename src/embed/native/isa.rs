//! Which instruction set the native kernels use, detected once at load.

/// Kernel family. `Avx512` and `Avx2` are only constructed after runtime detection, which is
/// what makes calling their `#[target_feature]` functions sound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AMX-BF16 tiles for the linear layers (operands rounded to bf16, f32 accumulation), AVX-512
    /// for everything else (Intel since Sapphire Rapids; Linux grants the tile state).
    Amx,
    /// AVX-512F (Intel since Skylake-SP, AMD since Zen 4).
    Avx512,
    /// AVX2 + FMA + F16C (Intel since Haswell, AMD since Zen).
    Avx2,
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
            .unwrap_or(available[0])
    }

    /// Every family this CPU can run, best first (tests run each of them).
    pub fn available() -> Vec<Isa> {
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if super::amx::available() {
                out.push(Isa::Amx);
            }
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
            Isa::Amx => "amx",
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }
}
