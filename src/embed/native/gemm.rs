//! Matrix multiply with the right-hand operand packed once: `C = A·B (+ bias) (then GELU)`.
//!
//! Why not candle's matmul on CPU: for the short prompts a cache sees (10–30 tokens), the `gemm`
//! crate spends most of each call re-packing the constant weight matrix into its kernel layout
//! (about half of a forward pass in our profile). Here every weight is packed at load into
//! column panels of [`NR`] floats (`panel[k][0..NR]`), so a call only streams the panels through
//! a register-blocked microkernel: up to [`MR_AVX512`] rows × 32 columns of accumulators in
//! AVX-512 registers, one broadcast of `A` and two loads of `B` per 24 FMAs. `A` (activations)
//! is read in place with its row stride; it is small and stays in L1/L2.
//!
//! Kernels: AVX-512F (runtime-detected) and a portable one that LLVM vectorizes for the
//! baseline target (and for AVX2+FMA when detected). Tests compare every available kernel with a
//! naive product.

use super::isa::Isa;

/// Columns per packed panel: two AVX-512 vectors.
pub const NR: usize = 32;
/// Rows per AVX-512 tile: 14 × 2 accumulators + 2 B vectors + 1 broadcast = 31 of the 32
/// registers, so a 14-token prompt reads each weight panel once.
const MR_AVX512: usize = 14;
/// Rows of `A` one task keeps hot while it sweeps its panels (~128 KiB of `A` for k = 384).
const M_CHUNK_BYTES: usize = 128 * 1024;
/// Rows per portable tile (its accumulators are plain arrays the compiler keeps in registers).
const MR_PORTABLE: usize = 4;
/// Rows per AVX2 tile: it runs a panel as two 16-column halves, 6 × 2 accumulators + 2 B
/// vectors + 1 broadcast = 15 of the 16 registers.
const MR_AVX2: usize = 6;

/// `B` (k × n) in column panels of [`NR`], zero-padded to a whole panel, as f32, as IEEE half
/// floats (weights for the AVX-512 kernel: half the bytes to stream for the same FMAs, which is
/// what a short prompt is bound by; the arithmetic stays f32), or as bf16 tiles for the AMX
/// kernel ([`super::amx`]).
#[derive(Debug, Clone, Default)]
pub struct PackedB {
    k: usize,
    n: usize,
    storage: Storage,
}

#[derive(Debug, Clone)]
enum Storage {
    F32(Vec<f32>),
    F16(Vec<u16>),
    Bf16Tiles(Vec<u16>),
}

impl Default for Storage {
    fn default() -> Self {
        Storage::F32(Vec::new())
    }
}

impl PackedB {
    /// Packs `B[p][j] = src[p * row_stride + j * col_stride]`.
    pub fn pack(src: &[f32], k: usize, n: usize, row_stride: usize, col_stride: usize) -> Self {
        let mut packed = PackedB::default();
        packed.repack(src, k, n, row_stride, col_stride);
        packed
    }

    /// [`PackedB::pack`] into this buffer, reusing its allocation (attention packs K and V per
    /// head on every call).
    pub fn repack(
        &mut self,
        src: &[f32],
        k: usize,
        n: usize,
        row_stride: usize,
        col_stride: usize,
    ) {
        let panels = n.div_ceil(NR);
        self.k = k;
        self.n = n;
        if !matches!(self.storage, Storage::F32(_)) {
            self.storage = Storage::default();
        }
        let Storage::F32(data) = &mut self.storage else {
            unreachable!("storage was just made f32");
        };
        data.clear();
        data.resize(panels * k * NR, 0.0);
        for panel in 0..panels {
            let cols = (n - panel * NR).min(NR);
            let base = panel * k * NR;
            for p in 0..k {
                let out = &mut data[base + p * NR..base + p * NR + cols];
                let first = p * row_stride + panel * NR * col_stride;
                if col_stride == 1 {
                    out.copy_from_slice(&src[first..first + cols]);
                } else {
                    for (j, o) in out.iter_mut().enumerate() {
                        *o = src[first + j * col_stride];
                    }
                }
            }
        }
    }

    /// [`PackedB::pack`], stored as f16 (values round to nearest; weights of a trained model
    /// lose ~3 decimal digits, see the reference-embedding tests).
    pub fn pack_f16(src: &[f32], k: usize, n: usize, row_stride: usize, col_stride: usize) -> Self {
        let f32s = PackedB::pack(src, k, n, row_stride, col_stride);
        PackedB {
            k,
            n,
            storage: Storage::F16(
                f32s.f32_data()
                    .iter()
                    .map(|v| half::f16::from_f32(*v).to_bits())
                    .collect(),
            ),
        }
    }

    /// [`PackedB::pack`], stored as bf16 in the AMX kernel's tiles: per panel and per 32-deep
    /// chunk of `k` (zero-padded), two 16-column tiles with rows pair-interleaved,
    /// `tile[p][c][e] = B[chunk·32 + 2p + e][c]` (see [`super::amx`]).
    pub fn pack_bf16_tiles(
        src: &[f32],
        k: usize,
        n: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Self {
        use super::amx::{TILE_DEPTH, TILE_ELEMS};
        let f32s = PackedB::pack(src, k, n, row_stride, col_stride);
        let data = f32s.f32_data();
        let chunks = k.div_ceil(TILE_DEPTH);
        let panels = n.div_ceil(NR);
        let mut tiles = vec![0u16; panels * chunks * 2 * TILE_ELEMS];
        for panel in 0..panels {
            for chunk in 0..chunks {
                for half in 0..2 {
                    let tile = ((panel * chunks + chunk) * 2 + half) * TILE_ELEMS;
                    for d in 0..TILE_DEPTH {
                        let p = chunk * TILE_DEPTH + d;
                        if p >= k {
                            break;
                        }
                        for c in 0..16 {
                            let value = data[panel * k * NR + p * NR + half * 16 + c];
                            tiles[tile + (d / 2) * 32 + c * 2 + d % 2] =
                                half::bf16::from_f32(value).to_bits();
                        }
                    }
                }
            }
        }
        PackedB {
            k,
            n,
            storage: Storage::Bf16Tiles(tiles),
        }
    }

    fn f32_data(&self) -> &[f32] {
        match &self.storage {
            Storage::F32(data) => data,
            _ => &[],
        }
    }

    pub fn is_f16(&self) -> bool {
        matches!(self.storage, Storage::F16(_))
    }

    /// The AMX tiles, when packed by [`PackedB::pack_bf16_tiles`].
    pub fn bf16_tiles(&self) -> Option<&[u16]> {
        match &self.storage {
            Storage::Bf16Tiles(tiles) => Some(tiles),
            _ => None,
        }
    }

    fn panel(&self, panel: usize) -> Panel<'_> {
        let span = panel * self.k * NR..(panel + 1) * self.k * NR;
        match &self.storage {
            Storage::F32(data) => Panel::F32(&data[span]),
            Storage::F16(half) => Panel::F16(&half[span]),
            Storage::Bf16Tiles(_) => unreachable!("matmul_part refuses bf16 tiles"),
        }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// Heap bytes held.
    pub fn bytes(&self) -> usize {
        match &self.storage {
            Storage::F32(data) => data.len() * std::mem::size_of::<f32>(),
            Storage::F16(half) | Storage::Bf16Tiles(half) => half.len() * 2,
        }
    }
}

/// What happens to each output tile before it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    None,
    /// Exact (erf) GELU, as BERT's `hidden_act = "gelu"`.
    Gelu,
}

/// A borrowed row-major operand: element `(i, p)` is `data[i * ld + p]`.
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    pub data: &'a [f32],
    pub ld: usize,
}

/// A raw output pointer that tasks on several threads write through, each to its own columns.
#[derive(Clone, Copy)]
pub struct OutPtr {
    ptr: *mut f32,
    len: usize,
    ld: usize,
}

// SAFETY: every writer owns a disjoint set of (row, column) cells; see `matmul_panels`.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    pub fn new(c: &mut [f32], ld: usize) -> Self {
        Self {
            ptr: c.as_mut_ptr(),
            len: c.len(),
            ld,
        }
    }

    /// Whether rows `0..=last_row` of `cols` columns lie inside the matrix.
    pub fn covers(&self, last_row: usize, cols: usize) -> bool {
        self.ld >= cols && self.len >= last_row * self.ld + cols
    }

    /// The address of cell (`row`, `col`).
    ///
    /// # Safety
    /// The cell must lie inside the matrix (see [`OutPtr::covers`]).
    pub unsafe fn cell(self, row: usize, col: usize) -> *mut f32 {
        self.ptr.add(row * self.ld + col)
    }

    /// The same matrix starting at cell (`row`, `col`).
    pub fn offset(self, row: usize, col: usize) -> Self {
        let skip = row * self.ld + col;
        assert!(skip <= self.len, "offset past the end");
        Self {
            // SAFETY: `skip` is within the allocation (checked above).
            ptr: unsafe { self.ptr.add(skip) },
            len: self.len - skip,
            ld: self.ld,
        }
    }
}

/// `C[rows, panels] = A[rows, 0..k] · B[.., panels] (+ bias)`: one task's share of a product.
///
/// Panics (a bug, never input-dependent) if a slice is too short for the stated shapes.
#[allow(clippy::too_many_arguments)]
pub fn matmul_part(
    isa: Isa,
    a: Rows<'_>,
    rows: std::ops::Range<usize>,
    b: &PackedB,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    c: OutPtr,
    panels: std::ops::Range<usize>,
) {
    assert!(
        b.bf16_tiles().is_none(),
        "bf16 tiles are read by amx::matmul_part only"
    );
    let k = b.k;
    if rows.is_empty() || b.n == 0 {
        return;
    }
    let last = rows.end - 1;
    assert!(a.ld >= k && a.data.len() >= last * a.ld + k, "A too short");
    assert!(c.ld >= b.n && c.len >= last * c.ld + b.n, "C too short");
    assert!(panels.end <= b.panels(), "panel range");
    if let Some(bias) = bias {
        assert!(bias.len() >= b.n, "bias too short");
    }
    let mr = match isa {
        Isa::Avx512 | Isa::Amx => MR_AVX512,
        Isa::Avx2 => MR_AVX2,
        Isa::Portable => MR_PORTABLE,
    };
    // Rows split into near-equal blocks (16 rows → 8 + 8, not 14 + 2).
    let m = rows.len();
    let blocks = m.div_ceil(mr);
    let (base, extra) = (m / blocks, m % blocks);
    for panel in panels {
        let cols = (b.n - panel * NR).min(NR);
        let bp = b.panel(panel);
        let bias = bias.map(|bias| &bias[panel * NR..panel * NR + cols]);
        let mut row = rows.start;
        for block in 0..blocks {
            let height = base + usize::from(block < extra);
            let tile = Tile {
                k,
                a: &a.data[row * a.ld..],
                lda: a.ld,
                bp,
                cols,
                bias,
            };
            // SAFETY: the asserts above bound every row/column this tile touches inside `c`,
            // and the caller guarantees no other task writes these cells.
            let out = unsafe { c.ptr.add(row * c.ld + panel * NR) };
            tile.run(isa, height, out, c.ld);
            if epilogue == Epilogue::Gelu {
                for r in 0..height {
                    // SAFETY: the same bounds as the store that just happened.
                    let slice = unsafe { std::slice::from_raw_parts_mut(out.add(r * c.ld), cols) };
                    super::ops::gelu(isa, slice);
                }
            }
            row += height;
        }
    }
}

/// How a product of `m` rows splits into tasks: row chunks that keep `A` in cache, times
/// panel groups, at least `4 × threads` tasks where the shape allows (enough to rebalance when a core is busy
/// with something else).
pub fn tasks(
    m: usize,
    b: &PackedB,
    threads: usize,
) -> Vec<(std::ops::Range<usize>, std::ops::Range<usize>)> {
    let np = b.panels();
    let chunk_rows = (M_CHUNK_BYTES / (4 * b.k.max(1))).max(MR_AVX512);
    let m_chunks = m.div_ceil(chunk_rows).max(1);
    let mut chunk_rows = m.div_ceil(m_chunks).max(1);
    if b.bf16_tiles().is_some() {
        // The AMX kernel works in blocks of two 16-row tiles.
        chunk_rows = chunk_rows.div_ceil(32) * 32;
    }
    let m_chunks = m.div_ceil(chunk_rows).max(1);
    let groups = (threads * 4).div_ceil(m_chunks).clamp(1, np.max(1));
    let per_group = np.div_ceil(groups).max(1);
    let mut out = Vec::new();
    for mc in 0..m_chunks {
        let rows = mc * chunk_rows..((mc + 1) * chunk_rows).min(m);
        for g in 0..np.div_ceil(per_group) {
            out.push((rows.clone(), g * per_group..((g + 1) * per_group).min(np)));
        }
    }
    out
}

/// The whole product on this thread.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    isa: Isa,
    a: Rows<'_>,
    m: usize,
    b: &PackedB,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    c: &mut [f32],
    ldc: usize,
) {
    let panels = 0..b.panels();
    matmul_part(isa, a, 0..m, b, bias, epilogue, OutPtr::new(c, ldc), panels);
}

#[derive(Clone, Copy)]
enum Panel<'a> {
    F32(&'a [f32]),
    F16(&'a [u16]),
}

struct Tile<'a> {
    k: usize,
    a: &'a [f32],
    lda: usize,
    bp: Panel<'a>,
    cols: usize,
    bias: Option<&'a [f32]>,
}

macro_rules! by_rows {
    ($rows:expr, $f:ident, $($arg:expr),*) => {
        match $rows {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            6 => $f::<6>($($arg),*),
            7 => $f::<7>($($arg),*),
            8 => $f::<8>($($arg),*),
            9 => $f::<9>($($arg),*),
            10 => $f::<10>($($arg),*),
            11 => $f::<11>($($arg),*),
            12 => $f::<12>($($arg),*),
            13 => $f::<13>($($arg),*),
            _ => $f::<14>($($arg),*),
        }
    };
}

impl Tile<'_> {
    fn run(&self, isa: Isa, rows: usize, out: *mut f32, ldc: usize) {
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx512` (and `Isa::Amx`, which implies it) is only ever produced
            // after runtime detection.
            Isa::Avx512 | Isa::Amx => unsafe {
                match self.bp {
                    Panel::F32(bp) => by_rows!(rows, tile_avx512_f32, self, bp, out, ldc),
                    Panel::F16(bp) => by_rows!(rows, tile_avx512_f16, self, bp, out, ldc),
                }
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx2` is only ever produced after runtime detection.
            Isa::Avx2 => unsafe {
                for half in [0, 16] {
                    if half < self.cols {
                        by_rows!(rows.min(MR_AVX2), tile_avx2, self, half, out, ldc);
                    }
                }
            },
            // SAFETY: `out` covers `rows` rows of `cols` floats (checked by `matmul_panels`).
            _ => unsafe { by_rows!(rows.min(MR_PORTABLE), tile_portable, self, out, ldc) },
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512_f32<const R: usize>(t: &Tile<'_>, bp: &[f32], out: *mut f32, ldc: usize) {
    use std::arch::x86_64::*;
    let bp = bp.as_ptr();
    tile_avx512::<R>(
        t,
        |p| {
            (
                _mm512_loadu_ps(bp.add(p * NR)),
                _mm512_loadu_ps(bp.add(p * NR + 16)),
            )
        },
        |p| bp.wrapping_add(p * NR) as *const i8,
        out,
        ldc,
    );
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512_f16<const R: usize>(t: &Tile<'_>, bp: &[u16], out: *mut f32, ldc: usize) {
    use std::arch::x86_64::*;
    let bp = bp.as_ptr();
    tile_avx512::<R>(
        t,
        |p| {
            let lo = _mm256_loadu_si256(bp.add(p * NR) as *const __m256i);
            let hi = _mm256_loadu_si256(bp.add(p * NR + 16) as *const __m256i);
            (_mm512_cvtph_ps(lo), _mm512_cvtph_ps(hi))
        },
        |p| bp.wrapping_add(p * NR) as *const i8,
        out,
        ldc,
    );
}

/// The AVX-512 tile: `R` rows × 32 columns of accumulators; `load(p)` gives row `p` of the
/// panel as two f32 vectors, `addr(p)` its address (for prefetching ahead).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile_avx512<const R: usize>(
    t: &Tile<'_>,
    load: impl Fn(usize) -> (std::arch::x86_64::__m512, std::arch::x86_64::__m512),
    addr: impl Fn(usize) -> *const i8,
    out: *mut f32,
    ldc: usize,
) {
    use std::arch::x86_64::*;
    /// Panel rows ahead to prefetch: ~1 KiB, about one DRAM latency of work at this tile size.
    const AHEAD: usize = 8;
    let mut lo = [_mm512_setzero_ps(); R];
    let mut hi = [_mm512_setzero_ps(); R];
    let a = t.a.as_ptr();
    for p in 0..t.k {
        _mm_prefetch::<_MM_HINT_T0>(addr(p + AHEAD));
        let (b0, b1) = load(p);
        for r in 0..R {
            let av = _mm512_set1_ps(*a.add(r * t.lda + p));
            lo[r] = _mm512_fmadd_ps(av, b0, lo[r]);
            hi[r] = _mm512_fmadd_ps(av, b1, hi[r]);
        }
    }
    let edge = PanelEdge::new(t.cols, t.bias);
    for r in 0..R {
        edge.store(out.add(r * ldc), lo[r], hi[r]);
    }
}

/// How one row of a [`NR`]-column panel with `cols` valid columns is stored by the AVX-512
/// kernels (this one and the AMX epilogue): bias added, columns past `cols` left untouched.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(super) struct PanelEdge {
    mask_lo: std::arch::x86_64::__mmask16,
    mask_hi: std::arch::x86_64::__mmask16,
    bias_lo: std::arch::x86_64::__m512,
    bias_hi: std::arch::x86_64::__m512,
}

#[cfg(target_arch = "x86_64")]
impl PanelEdge {
    /// `bias`, when given, starts at the panel's first column and holds at least `cols` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn new(cols: usize, bias: Option<&[f32]>) -> Self {
        use std::arch::x86_64::*;
        let mask_lo: __mmask16 = if cols >= 16 {
            0xffff
        } else {
            (1u16 << cols) - 1
        };
        let mask_hi: __mmask16 = match cols {
            32.. => 0xffff,
            17..=31 => (1u16 << (cols - 16)) - 1,
            _ => 0,
        };
        let (bias_lo, bias_hi) = match bias {
            Some(bias) => (
                _mm512_maskz_loadu_ps(mask_lo, bias.as_ptr()),
                _mm512_maskz_loadu_ps(mask_hi, bias.as_ptr().add(16.min(cols))),
            ),
            None => (_mm512_setzero_ps(), _mm512_setzero_ps()),
        };
        Self {
            mask_lo,
            mask_hi,
            bias_lo,
            bias_hi,
        }
    }

    /// Stores `lo | hi` (+ bias) into the row at `dst`.
    ///
    /// # Safety
    /// `dst` must be valid for the panel's `cols` floats.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn store(
        &self,
        dst: *mut f32,
        lo: std::arch::x86_64::__m512,
        hi: std::arch::x86_64::__m512,
    ) {
        use std::arch::x86_64::*;
        _mm512_mask_storeu_ps(dst, self.mask_lo, _mm512_add_ps(lo, self.bias_lo));
        if self.mask_hi != 0 {
            _mm512_mask_storeu_ps(dst.add(16), self.mask_hi, _mm512_add_ps(hi, self.bias_hi));
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // fixed-size index loops keep the accumulators in registers
unsafe fn tile_avx2<const R: usize>(t: &Tile<'_>, half: usize, out: *mut f32, ldc: usize) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    let a = t.a.as_ptr();
    for p in 0..t.k {
        let at = p * NR + half;
        let (b0, b1) = match t.bp {
            Panel::F32(bp) => (
                _mm256_loadu_ps(bp.as_ptr().add(at)),
                _mm256_loadu_ps(bp.as_ptr().add(at + 8)),
            ),
            Panel::F16(bp) => (
                _mm256_cvtph_ps(_mm_loadu_si128(bp.as_ptr().add(at) as *const __m128i)),
                _mm256_cvtph_ps(_mm_loadu_si128(bp.as_ptr().add(at + 8) as *const __m128i)),
            ),
        };
        for r in 0..R {
            let av = _mm256_broadcast_ss(&*a.add(r * t.lda + p));
            acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
        }
    }
    let cols = (t.cols - half).min(16);
    let mut bias = [0.0f32; 16];
    if let Some(b) = t.bias {
        bias[..cols].copy_from_slice(&b[half..half + cols]);
    }
    let (bias0, bias1) = (
        _mm256_loadu_ps(bias.as_ptr()),
        _mm256_loadu_ps(bias.as_ptr().add(8)),
    );
    let mut row = [0.0f32; 16];
    for r in 0..R {
        let dst = out.add(r * ldc + half);
        let (v0, v1) = (
            _mm256_add_ps(acc[r][0], bias0),
            _mm256_add_ps(acc[r][1], bias1),
        );
        if cols == 16 {
            _mm256_storeu_ps(dst, v0);
            _mm256_storeu_ps(dst.add(8), v1);
        } else {
            _mm256_storeu_ps(row.as_mut_ptr(), v0);
            _mm256_storeu_ps(row.as_mut_ptr().add(8), v1);
            std::ptr::copy_nonoverlapping(row.as_ptr(), dst, cols);
        }
    }
}

/// # Safety
/// `out` must be valid for `R` rows of `t.cols` floats at stride `ldc`.
unsafe fn tile_portable<const R: usize>(t: &Tile<'_>, out: *mut f32, ldc: usize) {
    tile_generic::<R>(t, out, ldc);
}

#[allow(clippy::needless_range_loop)] // fixed-size index loops are what vectorizes
#[inline(always)]
unsafe fn tile_generic<const R: usize>(t: &Tile<'_>, out: *mut f32, ldc: usize) {
    let mut local = [[0.0f32; NR]; R];
    let mut converted = [0.0f32; NR];
    for p in 0..t.k {
        let b: &[f32; NR] = match t.bp {
            Panel::F32(bp) => &*(bp.as_ptr().add(p * NR) as *const [f32; NR]),
            Panel::F16(bp) => {
                for (c, h) in converted.iter_mut().zip(&bp[p * NR..(p + 1) * NR]) {
                    *c = half::f16::from_bits(*h).to_f32();
                }
                &converted
            }
        };
        for r in 0..R {
            let av = *t.a.get_unchecked(r * t.lda + p);
            for j in 0..NR {
                local[r][j] += av * b[j];
            }
        }
    }
    for r in 0..R {
        let row = out.add(r * ldc);
        for j in 0..t.cols {
            let bias = t.bias.map_or(0.0, |b| b[j]);
            *row.add(j) = local[r][j] + bias;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], m: usize, k: usize, b: &[f32], n: usize) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for p in 0..k {
                    s += f64::from(a[i * k + p]) * f64::from(b[p * n + j]);
                }
                c[i * n + j] = s as f32;
            }
        }
        c
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    #[test]
    fn every_kernel_matches_a_naive_product_at_ragged_shapes() {
        let mut seed = 7;
        let shapes = [
            (1, 1, 1),
            (14, 384, 96),
            (13, 37, 33),
            (29, 64, 17),
            (3, 5, 64),
            (15, 8, 40),
        ];
        let variants = Isa::available()
            .into_iter()
            .flat_map(|isa| [(isa, false), (isa, true)]);
        for (isa, use_f16) in variants {
            for &(m, k, n) in &shapes {
                let a: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
                let mut b: Vec<f32> = (0..k * n).map(|_| lcg(&mut seed)).collect();
                let bias: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
                let packed = if use_f16 {
                    // Compare against the product with the values f16 can hold.
                    b.iter_mut()
                        .for_each(|v| *v = half::f16::from_f32(*v).to_f32());
                    PackedB::pack_f16(&b, k, n, n, 1)
                } else {
                    PackedB::pack(&b, k, n, n, 1)
                };
                assert_eq!(packed.is_f16(), use_f16);
                // C wider than n: the extra column must stay untouched.
                let ldc = n + 1;
                let mut c = vec![f32::NAN; m * ldc];
                let rows = Rows { data: &a, ld: k };
                let with_bias = Some(bias.as_slice());
                matmul(
                    isa,
                    rows,
                    m,
                    &packed,
                    with_bias,
                    Epilogue::None,
                    &mut c,
                    ldc,
                );
                let want = naive(&a, m, k, &b, n);
                for i in 0..m {
                    for j in 0..n {
                        let (got, want) = (c[i * ldc + j], want[i * n + j] + bias[j]);
                        assert!(
                            (got - want).abs() < 1e-4,
                            "{isa:?} f16={use_f16} {m}x{k}x{n} at ({i},{j}): {got} vs {want}"
                        );
                    }
                    assert!(c[i * ldc + n].is_nan(), "{isa:?} wrote past column {n}");
                }
            }
        }
    }

    #[test]
    fn tasks_cover_every_cell_once() {
        for &(m, k, n, threads) in &[
            (14, 384, 1152, 2),
            (512, 1536, 384, 2),
            (1, 32, 20, 4),
            (300, 384, 1536, 3),
        ] {
            let b = PackedB::pack(&vec![0.0; k * n], k, n, n, 1);
            let mut seen = vec![0u8; m * b.panels()];
            for (rows, panels) in tasks(m, &b, threads) {
                for r in rows {
                    for p in panels.clone() {
                        seen[r * b.panels() + p] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&s| s == 1), "{m}x{k}x{n}");
        }
    }

    #[test]
    fn transposed_packing_reads_columns() {
        // B given as its transpose (n × k row-major), as weights and attention keys are.
        let (k, n) = (3, 40);
        let bt: Vec<f32> = (0..n * k).map(|x| x as f32).collect();
        let packed = PackedB::pack(&bt, k, n, 1, k);
        let a = vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
        let mut c = vec![0.0; 2 * n];
        for isa in Isa::available() {
            matmul(
                isa,
                Rows { data: &a, ld: k },
                2,
                &packed,
                None,
                Epilogue::None,
                &mut c,
                n,
            );
            for j in 0..n {
                assert_eq!(c[j], bt[j * k], "{isa:?}");
                assert_eq!(c[n + j], bt[j * k + 1], "{isa:?}");
            }
        }
    }
}
