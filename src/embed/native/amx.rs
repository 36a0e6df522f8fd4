//! AMX tiles for the encoder's linear layers: `C = A·B (+ bias) (then GELU)` with `A` and `B`
//! rounded to bf16 and f32 accumulation.
//!
//! Why: on the Xeons deja runs on (Sapphire Rapids and later) one `tdpbf16ps` multiplies a
//! 16 × 32 by a 32 × 16 tile, 16,384 FLOPs, and a core issues one every 16 cycles: ~1.9 TFLOP/s
//! per core measured here, against ~0.13 for AVX-512 FMAs (and ~0.07 for AVX512-BF16's
//! `vdpbf16ps`, which this CPU runs at half the FMA rate, so it is not used). Arithmetic stops
//! being the bound; what is left is moving operands, which bf16 halves.
//!
//! Layouts:
//! - `B` (weights) is packed once at load ([`PackedB::pack_bf16_tiles`]): per [`NR`]-column
//!   panel and per 32-deep chunk of `k`, two 16-column tiles in the pair-interleaved ("VNNI")
//!   order the instruction reads, `tile[p][c][e] = B[2p + e][c]`, 1 KiB each.
//! - `A` (activations) is converted per call into [`Bf16Rows`]: row-major bf16, `ld` a multiple of
//!   32 with zero padding, and [`TILE_ROWS`] spare zero rows so a tile may start at any row.
//! - `C` tiles go through a 32 × 32 f32 scratch, where bias, GELU and the edge masks are applied
//!   on the way to the output.
//!
//! The tile registers are per thread: each call configures them (`ldtilecfg`, every tile
//! 16 rows × 64 bytes) and releases them at the end, so a pool thread holds no tile state (and
//! the kernel saves none) between calls. Linux hands the tile state to a process only on request
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), which [`available`] makes once.

#[cfg(target_arch = "x86_64")]
use super::gemm::PanelEdge;
use super::gemm::{Epilogue, OutPtr, PackedB, NR};
use super::isa::Amx;
use std::ops::Range;

/// Rows of every tile (the hardware maximum).
pub(crate) const TILE_ROWS: usize = 16;
/// bf16 values per tile row (64 bytes): the depth of one `k` chunk.
pub(crate) const TILE_DEPTH: usize = 32;
/// bf16 values in one packed `B` tile.
pub(crate) const TILE_ELEMS: usize = TILE_ROWS * TILE_DEPTH;
/// How many `k` chunks ahead the kernel prefetches `B` into L1. A tile load cannot start before
/// the multiplies that read its register finish, so without prefetching every chunk waits out
/// a full L3 round trip: streaming 19 MB of tiles ran at ~3 GB/s, and at ~13 GB/s with 8–12
/// chunks (16–24 KiB) ahead (one vCPU, microbenchmark).
const PREFETCH_CHUNKS: usize = 8;

/// Whether this process can run the AMX kernels: the CPU has AMX-TILE, AMX-BF16 and AVX512-BF16
/// (for the conversions), and the OS granted the tile state. Checked once; [`Amx::try_new`]
/// turns the answer into the token the kernels require.
pub(crate) fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    if !(std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512bf16"))
    {
        return false;
    }
    // CPUID leaf 7: EDX bit 22 = AMX-BF16, bit 24 = AMX-TILE.
    let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
    if leaf7.edx & (1 << 22) == 0 || leaf7.edx & (1 << 24) == 0 {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes which xsave features this process
    // may use; it touches no memory of ours.
    let granted = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    granted == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// Activations as bf16 for the tiles (see the module docs for the layout).
#[derive(Clone, Copy)]
pub struct Bf16Rows<'a> {
    pub data: &'a [u16],
    pub ld: usize,
}

/// The row stride [`size_rows`] sets for a depth of `k`.
fn bf16_ld(k: usize) -> usize {
    k.div_ceil(TILE_DEPTH) * TILE_DEPTH
}

/// Sizes `dst` for `rows` rows of depth `k` (plus the spare tile of zero rows) and returns the
/// row stride. Every row is then written whole, padding included, by [`Amx::convert_row`], so only
/// the spare rows are zeroed here (a reused buffer is not cleared on every call).
pub fn size_rows(dst: &mut Vec<u16>, rows: usize, k: usize) -> usize {
    let ld = bf16_ld(k);
    dst.resize((rows + TILE_ROWS) * ld, 0);
    dst[rows * ld..].fill(0);
    ld
}

fn convert_row_portable(src: &[f32], dst: &mut [u16]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = half::bf16::from_f32(*s).to_bits();
    }
    dst.iter_mut().skip(src.len()).for_each(|d| *d = 0);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn convert_row_avx512(src: &[f32], dst: &mut [u16]) {
    use std::arch::x86_64::*;
    assert!(dst.len() >= src.len(), "bf16 row too short");
    let whole = src.len() / 16 * 16;
    for i in (0..whole).step_by(16) {
        // SAFETY: `i + 16 <= whole <= src.len() <= dst.len()` (asserted above), so the load
        // and the store of 16 values are inside both slices; `__m256bh` and `__m256i` are
        // both 256 bits of plain data.
        unsafe {
            let v = _mm512_loadu_ps(src.as_ptr().add(i));
            let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
            _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, h);
        }
    }
    convert_row_portable(&src[whole..], &mut dst[whole..]);
}

/// The tile palette every call uses: palette 1, tiles 0–7 of 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

static CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = (TILE_DEPTH * 2) as u8;
        c[48 + t] = TILE_ROWS as u8;
        t += 1;
    }
    TileConfig(c)
};

impl Amx {
    /// `dst[..src.len()] = bf16(src)` (round to nearest even), the rest of `dst` zero.
    #[inline]
    pub fn convert_row(self, src: &[f32], dst: &mut [u16]) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `self` proves AVX-512F/BW/BF16 (`Amx::try_new` requires `available`, which
        // checks them), all that the function needs beyond its safe arguments.
        unsafe {
            convert_row_avx512(src, dst)
        };
        #[cfg(not(target_arch = "x86_64"))]
        convert_row_portable(src, dst);
    }

    /// The whole product `C = A[0..m] · B (+ bias)` on this thread, `B` packed by
    /// [`PackedB::pack_bf16_tiles`], `A` as [`Amx::convert_row`] writes it into a buffer
    /// sized by [`size_rows`].
    ///
    /// Panics (a bug, never input-dependent) if an operand is too short for the stated shapes or
    /// `B` is not tile-packed.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        self,
        a: Bf16Rows<'_>,
        m: usize,
        b: &PackedB,
        bias: Option<&[f32]>,
        epilogue: Epilogue,
        c: &mut [f32],
        ldc: usize,
    ) {
        let panels = 0..b.panels();
        let c = OutPtr::new(c, ldc);
        // SAFETY: `c` borrows the whole output mutably for this call, and this one call writes
        // it.
        unsafe { self.matmul_part(a, 0..m, b, bias, epilogue, c, panels) };
    }

    /// `C[rows, panels] = A[rows] · B[.., panels] (+ bias)`, `B` packed by
    /// [`PackedB::pack_bf16_tiles`]: one task's share of a product, as `gemm::matmul_part`.
    ///
    /// Panics (a bug, never input-dependent) if an operand is too short for the stated shapes or
    /// `B` is not tile-packed.
    ///
    /// # Safety
    /// While this runs, no other thread reads or writes the cells it writes: rows `rows` of `c`,
    /// columns `panels.start * NR .. min(panels.end * NR, b.n())` (the tasks of
    /// `gemm::tasks` write disjoint blocks).
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn matmul_part(
        self,
        a: Bf16Rows<'_>,
        rows: Range<usize>,
        b: &PackedB,
        bias: Option<&[f32]>,
        epilogue: Epilogue,
        c: OutPtr<'_>,
        panels: Range<usize>,
    ) {
        let tiles = b.bf16_tiles().unwrap_or(&[]);
        if rows.is_empty() || b.n() == 0 {
            return;
        }
        let chunks = b.k().div_ceil(TILE_DEPTH);
        assert!(
            a.ld >= chunks * TILE_DEPTH,
            "A stride shorter than B's depth"
        );
        assert!(
            a.data.len() >= (rows.end + TILE_ROWS) * a.ld,
            "A lacks its spare tile rows"
        );
        assert!(c.covers(rows.end - 1, b.n()), "C too short");
        assert!(panels.end <= b.panels(), "panel range");
        assert!(
            tiles.len() >= b.panels() * chunks * 2 * TILE_ELEMS,
            "B tiles"
        );
        if let Some(bias) = bias {
            assert!(bias.len() >= b.n(), "bias too short");
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `self` proves the tile state is granted and AVX-512F/BW present
        // (`Amx::try_new`); the asserts above bound every tile load inside `a` and `tiles`, and
        // every store inside `c`'s rows and columns, which our caller keeps to this task.
        unsafe {
            matmul_part_amx(
                self,
                a,
                rows,
                b.n(),
                tiles,
                chunks,
                bias,
                epilogue,
                c,
                panels,
            )
        };
    }
}

/// Prefetches into L1 the two `B` tiles [`PREFETCH_CHUNKS`] chunks after `tiles` (past the end
/// of the panel, that is the next panel's start, which this task or the next reads next).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn prefetch_ahead(tiles: *const u16) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    // A prefetch never faults, so the address may lie past the allocation; `wrapping_add`
    // keeps computing it defined.
    let ahead = tiles.wrapping_add(PREFETCH_CHUNKS * 2 * TILE_ELEMS) as *const i8;
    for line in 0..(2 * TILE_ELEMS * 2 / 64) {
        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line * 64));
    }
}

#[repr(C, align(64))]
struct Scratch([[f32; 2 * 16]; 2 * TILE_ROWS]);

/// The AMX kernel behind [`Amx::matmul_part`].
///
/// # Safety
/// The tile state is granted and AVX-512F/BW present (`amx` proves it); `a` holds rows
/// `rows.start..rows.end + TILE_ROWS` at stride `a.ld >= chunks * TILE_DEPTH`; `tiles` holds
/// every panel's `chunks × 2` tiles; `c` covers rows `rows` of `n` columns and no other thread
/// touches the cells of `rows × panels` meanwhile; `bias` (when given) holds `n` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
#[allow(clippy::too_many_arguments)]
unsafe fn matmul_part_amx(
    amx: Amx,
    a: Bf16Rows<'_>,
    rows: Range<usize>,
    n: usize,
    tiles: &[u16],
    chunks: usize,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    c: OutPtr<'_>,
    panels: Range<usize>,
) {
    use std::arch::asm;
    use std::arch::x86_64::*;
    // SAFETY: the tile state is granted (our contract); `CONFIG` is a valid 64-byte palette-1
    // configuration (every tile 16 rows × 64 bytes), aligned as `ldtilecfg` requires.
    unsafe { asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly)) };
    let mut scratch = Scratch([[0.0; 32]; 32]);
    let a_stride = a.ld * 2;
    let b_stride = TILE_DEPTH * 2;
    let s_stride: usize = 32 * 4;
    for panel in panels {
        let cols = (n - panel * NR).min(NR);
        // SAFETY: AVX-512F is present (our contract) and `bias`, when given, holds `n` values,
        // so from the panel's first column at least `cols` remain.
        let edge = unsafe { PanelEdge::new(cols, bias.map(|b| &b[panel * NR..])) };
        // SAFETY: `panel < panels.end <= b.panels()`, and `tiles` holds every panel's tiles.
        let panel_tiles = unsafe { tiles.as_ptr().add(panel * chunks * 2 * TILE_ELEMS) };
        let mut row = rows.start;
        while row < rows.end {
            let height = (rows.end - row).min(2 * TILE_ROWS);
            // SAFETY: every `tileloadd` of A reads 16 rows of 64 bytes from
            // row `row` or `row + 16` at chunk offset `chunk * TILE_DEPTH < a.ld`, inside `a`,
            // which holds `TILE_ROWS` spare rows past `rows.end`; every B load reads one 1 KiB
            // tile of this panel, inside `tiles`; the tile stores write the 32 × 32 `scratch`.
            // The tile state was configured above.
            unsafe {
                let a0 = a.data.as_ptr().add(row * a.ld);
                if height > TILE_ROWS {
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        options(nostack, nomem)
                    );
                    let a1 = a0.add(TILE_ROWS * a.ld);
                    for chunk in 0..chunks {
                        let b0 = panel_tiles.add(chunk * 2 * TILE_ELEMS);
                        prefetch_ahead(b0);
                        asm!(
                            "tileloadd tmm4, [{a0} + {sa}*1]",
                            "tileloadd tmm5, [{a1} + {sa}*1]",
                            "tileloadd tmm6, [{b0} + {sb}*1]",
                            "tileloadd tmm7, [{b1} + {sb}*1]",
                            "tdpbf16ps tmm0, tmm4, tmm6",
                            "tdpbf16ps tmm1, tmm4, tmm7",
                            "tdpbf16ps tmm2, tmm5, tmm6",
                            "tdpbf16ps tmm3, tmm5, tmm7",
                            a0 = in(reg) a0.add(chunk * TILE_DEPTH),
                            a1 = in(reg) a1.add(chunk * TILE_DEPTH),
                            b0 = in(reg) b0,
                            b1 = in(reg) b0.add(TILE_ELEMS),
                            sa = in(reg) a_stride,
                            sb = in(reg) b_stride,
                            options(nostack, readonly)
                        );
                    }
                    let s = scratch.0.as_mut_ptr() as *mut f32;
                    asm!(
                        "tilestored [{s0} + {ss}*1], tmm0",
                        "tilestored [{s1} + {ss}*1], tmm1",
                        "tilestored [{s2} + {ss}*1], tmm2",
                        "tilestored [{s3} + {ss}*1], tmm3",
                        s0 = in(reg) s,
                        s1 = in(reg) s.add(16),
                        s2 = in(reg) s.add(TILE_ROWS * 32),
                        s3 = in(reg) s.add(TILE_ROWS * 32 + 16),
                        ss = in(reg) s_stride,
                        options(nostack)
                    );
                } else {
                    asm!("tilezero tmm0", "tilezero tmm1", options(nostack, nomem));
                    for chunk in 0..chunks {
                        let b0 = panel_tiles.add(chunk * 2 * TILE_ELEMS);
                        prefetch_ahead(b0);
                        asm!(
                            "tileloadd tmm4, [{a0} + {sa}*1]",
                            "tileloadd tmm6, [{b0} + {sb}*1]",
                            "tileloadd tmm7, [{b1} + {sb}*1]",
                            "tdpbf16ps tmm0, tmm4, tmm6",
                            "tdpbf16ps tmm1, tmm4, tmm7",
                            a0 = in(reg) a0.add(chunk * TILE_DEPTH),
                            b0 = in(reg) b0,
                            b1 = in(reg) b0.add(TILE_ELEMS),
                            sa = in(reg) a_stride,
                            sb = in(reg) b_stride,
                            options(nostack, readonly)
                        );
                    }
                    let s = scratch.0.as_mut_ptr() as *mut f32;
                    asm!(
                        "tilestored [{s0} + {ss}*1], tmm0",
                        "tilestored [{s1} + {ss}*1], tmm1",
                        s0 = in(reg) s,
                        s1 = in(reg) s.add(16),
                        ss = in(reg) s_stride,
                        options(nostack)
                    );
                }
            }
            for r in 0..height {
                let src = scratch.0[r].as_ptr();
                // SAFETY: row `row + r < rows.end` and columns `panel * NR..+cols` lie inside
                // `c` (asserted by `Amx::matmul_part`), and our caller keeps them to this task;
                // `src` is a 32-float scratch row; AVX-512F is present (our contract).
                unsafe {
                    let dst = c.cell(row + r, panel * NR);
                    edge.store(dst, _mm512_loadu_ps(src), _mm512_loadu_ps(src.add(16)));
                    if epilogue == Epilogue::Gelu {
                        amx.avx512().gelu(std::slice::from_raw_parts_mut(dst, cols));
                    }
                }
            }
            row += height;
        }
    }
    // SAFETY: releases the tile state configured above; nothing reads the tiles after this.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    fn bf16(v: f32) -> f32 {
        half::bf16::from_f32(v).to_f32()
    }

    /// The product of the bf16-rounded operands in f64, plus bias.
    fn naive(a: &[f32], m: usize, k: usize, b: &[f32], n: usize, bias: &[f32]) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = f64::from(bias[j]);
                for p in 0..k {
                    s += f64::from(bf16(a[i * k + p])) * f64::from(bf16(b[p * n + j]));
                }
                c[i * n + j] = s as f32;
            }
        }
        c
    }

    #[test]
    fn conversion_rounds_to_nearest_even_and_zero_pads() {
        let (half_ulp, ulp_and_a_half) = (1.0 / 256.0, 3.0 / 256.0);
        let src = [
            1.0f32,
            1.0 + half_ulp,
            1.0 + ulp_and_a_half,
            -3.5,
            1e-3,
            0.0,
            7.0,
            -0.0,
        ];
        let convert = |src: &[f32], dst: &mut [u16]| match Amx::try_new() {
            Some(amx) => amx.convert_row(src, dst),
            None => convert_row_portable(src, dst),
        };
        let mut dst = vec![0xffffu16; 40];
        convert(&src, &mut dst);
        for (d, s) in dst.iter().zip(&src) {
            assert_eq!(*d, half::bf16::from_f32(*s).to_bits(), "{s}");
        }
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: even rounds down.
        assert_eq!(half::bf16::from_bits(dst[1]).to_f32(), 1.0);
        assert!(dst[src.len()..].iter().all(|&d| d == 0));
        // The vector path (16 at a time) and its scalar tail agree with the portable one.
        let long: Vec<f32> = (0..37).map(|i| i as f32 * 0.3717 - 5.0).collect();
        let (mut fast, mut slow) = (vec![1u16; 64], vec![1u16; 64]);
        convert(&long, &mut fast);
        convert_row_portable(&long, &mut slow);
        assert_eq!(fast, slow);
    }

    /// Ragged shapes, row ranges that start mid-matrix and end mid-tile, GELU, and the cells
    /// outside the range left untouched.
    #[test]
    fn tiles_match_a_naive_bf16_product() {
        let Some(amx) = Amx::try_new() else {
            eprintln!("no AMX on this machine: skipped");
            return;
        };
        let mut seed = 11;
        let shapes = [
            (1, 32, 32),
            (14, 384, 96),
            (16, 64, 16),
            (17, 37, 33),
            (45, 100, 70),
            (70, 1536, 40),
        ];
        for &(m, k, n) in &shapes {
            let a: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
            let b: Vec<f32> = (0..k * n).map(|_| lcg(&mut seed)).collect();
            let bias: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
            let packed = PackedB::pack_bf16_tiles(&b, k, n, n, 1);
            assert!(packed.bf16_tiles().is_some());
            let mut rows_bf16 = Vec::new();
            let ld = size_rows(&mut rows_bf16, m, k);
            for (src, dst) in a.chunks(k).zip(rows_bf16.chunks_mut(ld)) {
                amx.convert_row(src, dst);
            }
            let want = naive(&a, m, k, &b, n, &bias);
            for epilogue in [Epilogue::None, Epilogue::Gelu] {
                let ldc = n + 1;
                let mut c = vec![f32::NAN; m * ldc];
                let out = OutPtr::new(&mut c, ldc);
                let first = m / 3;
                let rows = Bf16Rows {
                    data: &rows_bf16,
                    ld,
                };
                // Two tasks: rows first.. over the panels split in two.
                let split = packed.panels() / 2;
                // SAFETY: the two calls run one after the other and write disjoint panels.
                unsafe {
                    amx.matmul_part(
                        rows,
                        first..m,
                        &packed,
                        Some(&bias),
                        epilogue,
                        out,
                        0..split,
                    );
                    let all = split..packed.panels();
                    amx.matmul_part(rows, first..m, &packed, Some(&bias), epilogue, out, all);
                }
                for i in 0..m {
                    for j in 0..=n {
                        let got = c[i * ldc + j];
                        if i < first || j == n {
                            assert!(got.is_nan(), "{m}x{k}x{n}: wrote ({i},{j})");
                            continue;
                        }
                        let mut w = [want[i * n + j]];
                        if epilogue == Epilogue::Gelu {
                            super::super::ops::gelu(super::super::isa::Isa::Portable, &mut w);
                        }
                        assert!(
                            (got - w[0]).abs() < 1e-4 * (1.0 + w[0].abs()),
                            "{m}x{k}x{n} {epilogue:?} at ({i},{j}): {got} vs {}",
                            w[0]
                        );
                    }
                }
            }
            // The whole product, as the benchmark runs it.
            let mut whole = vec![0.0f32; m * n];
            let rows = Bf16Rows {
                data: &rows_bf16,
                ld,
            };
            amx.matmul(rows, m, &packed, Some(&bias), Epilogue::None, &mut whole, n);
            for (got, w) in whole.iter().zip(&want) {
                assert!(
                    (got - w).abs() < 1e-4 * (1.0 + w.abs()),
                    "{m}x{k}x{n} whole"
                );
            }
        }
    }
}
