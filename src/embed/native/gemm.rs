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
#[cfg(target_arch = "x86_64")]
use super::isa::{Avx2, Avx512};
use std::marker::PhantomData;

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

/// The output matrix of a product that tasks on several threads write at once, each to its
/// own cells. It borrows the buffer mutably for `'a`, so nothing else can touch the buffer while
/// a copy is alive; writing through it is `unsafe` ([`matmul_part`], [`OutPtr::cell`]), and
/// those functions state the rule that makes it sound: no two writers share a cell.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr<'a> {
    ptr: *mut f32,
    len: usize,
    ld: usize,
    _buffer: PhantomData<&'a mut [f32]>,
}

// SAFETY: an `OutPtr` only hands out addresses inside the buffer it borrows; every write through
// them is in an `unsafe fn` (`matmul_part`, `amx::Amx::matmul_part`, `OutPtr::cell`) whose
// contract requires that no other thread reads or writes the same cells meanwhile.
unsafe impl Send for OutPtr<'_> {}
// SAFETY: as for `Send`: sharing the handle shares no cell, the writers' contracts split them.
unsafe impl Sync for OutPtr<'_> {}

impl<'a> OutPtr<'a> {
    pub(crate) fn new(c: &'a mut [f32], ld: usize) -> Self {
        Self {
            ptr: c.as_mut_ptr(),
            len: c.len(),
            ld,
            _buffer: PhantomData,
        }
    }

    /// Whether rows `0..=last_row` of `cols` columns lie inside the matrix.
    pub(crate) fn covers(&self, last_row: usize, cols: usize) -> bool {
        self.ld >= cols
            && last_row
                .checked_mul(self.ld)
                .and_then(|n| n.checked_add(cols))
                .is_some_and(|end| end <= self.len)
    }

    /// The address of cell (`row`, `col`).
    ///
    /// # Safety
    /// The cell must lie inside the matrix (see [`OutPtr::covers`]); writing through the
    /// address is the caller's to make exclusive.
    pub(crate) unsafe fn cell(self, row: usize, col: usize) -> *mut f32 {
        // SAFETY: the caller keeps (`row`, `col`) inside the buffer, so the offset stays in the
        // allocation `new` borrowed.
        unsafe { self.ptr.add(row * self.ld + col) }
    }

    /// The same matrix starting at cell (`row`, `col`).
    pub(crate) fn offset(self, row: usize, col: usize) -> Self {
        let skip = row * self.ld + col;
        assert!(skip <= self.len, "offset past the end");
        Self {
            // SAFETY: `skip <= len` (asserted above), so the pointer stays inside the buffer
            // `new` borrowed, or one past its end.
            ptr: unsafe { self.ptr.add(skip) },
            len: self.len - skip,
            ld: self.ld,
            _buffer: PhantomData,
        }
    }
}

/// `C[rows, panels] = A[rows, 0..k] · B[.., panels] (+ bias)`: one task's share of a product.
///
/// Panics (a bug, never input-dependent) if a slice is too short for the stated shapes.
///
/// # Safety
/// While this runs, no other thread reads or writes the cells it writes: rows `rows` of `c`,
/// columns `panels.start * NR .. min(panels.end * NR, b.n())`. The tasks of one product from
/// [`tasks`] write disjoint blocks (its test `tasks_cover_every_cell_once`), as do attention's
/// (text, head) blocks.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul_part(
    isa: Isa,
    a: Rows<'_>,
    rows: std::ops::Range<usize>,
    b: &PackedB,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    c: OutPtr<'_>,
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
    assert!(c.covers(last, b.n), "C too short");
    assert!(panels.end <= b.panels(), "panel range");
    if let Some(bias) = bias {
        assert!(bias.len() >= b.n, "bias too short");
    }
    let mr = match isa {
        Isa::Avx512(_) | Isa::Amx(_) => MR_AVX512,
        Isa::Avx2(_) => MR_AVX2,
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
            // SAFETY: `c.covers(last, b.n)` (asserted above) bounds every cell of this tile,
            // rows `row..row + height` ⊆ `rows` and columns `panel * NR..+cols` ⊆ `0..b.n`;
            // `a` holds `height` rows of `k` from `row` (asserted above); our caller guarantees
            // that no other thread touches these cells.
            unsafe {
                let out = c.cell(row, panel * NR);
                tile.run(isa, height, out, c.ld);
                if epilogue == Epilogue::Gelu {
                    for r in 0..height {
                        let slice = std::slice::from_raw_parts_mut(out.add(r * c.ld), cols);
                        super::ops::gelu(isa, slice);
                    }
                }
            }
            row += height;
        }
    }
}

/// How a product of `m` rows splits into tasks: row chunks that keep `A` in cache, times
/// panel groups, at least `4 × threads` tasks where the shape allows (enough to rebalance when a core is busy
/// with something else). Every (row, panel) cell belongs to exactly one task.
pub(crate) fn tasks(
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
    let c = OutPtr::new(c, ldc);
    // SAFETY: `c` borrows the whole output mutably for this call, and this one call writes it.
    unsafe { matmul_part(isa, a, 0..m, b, bias, epilogue, c, panels) };
}

#[derive(Clone, Copy)]
enum Panel<'a> {
    F32(&'a [f32]),
    F16(&'a [u16]),
}

/// One register tile's operands: `a` holds the tile's rows (`a[r * lda + p]`, `p < k`), `bp`
/// the panel (`k × NR` values), `bias` (when given) its `cols` columns.
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
    /// Stores the tile's `rows` rows (at most [`MR_AVX512`]) at `out`, stride `ldc`.
    ///
    /// # Safety
    /// `out` is valid for writes of `rows` rows of `self.cols` floats at stride `ldc`, no other
    /// thread touches them meanwhile, and `self.a` holds `rows` rows.
    unsafe fn run(&self, isa: Isa, rows: usize, out: *mut f32, ldc: usize) {
        // The token in `isa` proves the CPU feature; the memory contract of every arm is ours,
        // forwarded unchanged.
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: memory contract forwarded (see above); the AMX token implies AVX-512F.
            Isa::Amx(amx) => unsafe { amx.avx512().tile(self, rows, out, ldc) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: memory contract forwarded (see above).
            Isa::Avx512(avx512) => unsafe { avx512.tile(self, rows, out, ldc) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: memory contract forwarded (see above).
            Isa::Avx2(avx2) => unsafe { avx2.tile(self, rows, out, ldc) },
            // SAFETY: memory contract forwarded (see above); no CPU feature needed.
            _ => unsafe { by_rows!(rows.min(MR_PORTABLE), tile_portable, self, out, ldc) },
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Avx512 {
    /// [`Tile::run`] on AVX-512.
    ///
    /// # Safety
    /// As [`Tile::run`] (the token covers the CPU feature).
    #[inline]
    unsafe fn tile(self, t: &Tile<'_>, rows: usize, out: *mut f32, ldc: usize) {
        // SAFETY: `self` proves AVX-512F (only `Avx512::try_new` makes one, after detection);
        // the memory contract is our caller's.
        unsafe {
            match t.bp {
                Panel::F32(bp) => by_rows!(rows, tile_avx512_f32, t, bp, out, ldc),
                Panel::F16(bp) => by_rows!(rows, tile_avx512_f16, t, bp, out, ldc),
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Avx2 {
    /// [`Tile::run`] on AVX2, as two 16-column halves of at most [`MR_AVX2`] rows.
    ///
    /// # Safety
    /// As [`Tile::run`] (the token covers the CPU features).
    #[inline]
    unsafe fn tile(self, t: &Tile<'_>, rows: usize, out: *mut f32, ldc: usize) {
        for half in [0, 16] {
            if half < t.cols {
                // SAFETY: `self` proves AVX2 + FMA + F16C (only `Avx2::try_new` makes one,
                // after detection); the memory contract is our caller's.
                unsafe { by_rows!(rows.min(MR_AVX2), tile_avx2, t, half, out, ldc) };
            }
        }
    }
}

/// # Safety
/// AVX-512F is available, and the memory contract of [`Tile::run`] holds for `R` rows; `bp` is
/// `t.bp`'s slice (`t.k × NR` floats).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512_f32<const R: usize>(t: &Tile<'_>, bp: &[f32], out: *mut f32, ldc: usize) {
    use std::arch::x86_64::*;
    let bp = bp.as_ptr();
    // SAFETY: `tile_avx512` calls `load(p)` for `p < t.k` only, and the panel holds
    // `t.k × NR` floats, so both 16-float loads of row `p` are inside it; the memory contract
    // for `out` is our caller's.
    unsafe {
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
        )
    }
}

/// # Safety
/// As [`tile_avx512_f32`], with `bp` as f16 bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512_f16<const R: usize>(t: &Tile<'_>, bp: &[u16], out: *mut f32, ldc: usize) {
    use std::arch::x86_64::*;
    let bp = bp.as_ptr();
    // SAFETY: as in `tile_avx512_f32`: `p < t.k`, and the panel holds `t.k × NR` halves.
    unsafe {
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
        )
    }
}

/// The AVX-512 tile: `R` rows × 32 columns of accumulators; `load(p)` gives row `p` of the
/// panel as two f32 vectors, `addr(p)` its address (for prefetching ahead).
///
/// # Safety
/// AVX-512F is available; `load(p)` is sound for every `p < t.k`; the memory contract of
/// [`Tile::run`] holds for `R` rows.
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
        // SAFETY: a prefetch never faults, whatever the address; `load(p)` is sound for
        // `p < t.k` (our contract); `t.a` holds `R` rows of `t.k` at stride `t.lda` (the
        // contract of `Tile::run`), so `a[r * lda + p]` is inside it.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(addr(p + AHEAD));
            let (b0, b1) = load(p);
            for r in 0..R {
                let av = _mm512_set1_ps(*a.add(r * t.lda + p));
                lo[r] = _mm512_fmadd_ps(av, b0, lo[r]);
                hi[r] = _mm512_fmadd_ps(av, b1, hi[r]);
            }
        }
    }
    // SAFETY: `t.bias` holds `t.cols` values (see `Tile`); each row at `out + r * ldc` is
    // valid for `t.cols` floats (the contract of `Tile::run`), which is what `store` writes.
    unsafe {
        let edge = PanelEdge::new(t.cols, t.bias);
        for r in 0..R {
            edge.store(out.add(r * ldc), lo[r], hi[r]);
        }
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
    /// # Safety
    /// AVX-512F is available; `bias`, when given, starts at the panel's first column and holds
    /// at least `min(cols, NR)` values.
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
            // SAFETY: the masks select the first `min(cols, NR)` values, which `bias` holds
            // (our contract); masked-off lanes are not read.
            Some(bias) => unsafe {
                (
                    _mm512_maskz_loadu_ps(mask_lo, bias.as_ptr()),
                    _mm512_maskz_loadu_ps(mask_hi, bias.as_ptr().add(16.min(cols))),
                )
            },
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
    /// AVX-512F is available; `dst` is valid for writes of the panel's `cols` floats.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn store(
        &self,
        dst: *mut f32,
        lo: std::arch::x86_64::__m512,
        hi: std::arch::x86_64::__m512,
    ) {
        use std::arch::x86_64::*;
        // SAFETY: the masks cover the first `cols` floats only, which `dst` is valid for.
        unsafe {
            _mm512_mask_storeu_ps(dst, self.mask_lo, _mm512_add_ps(lo, self.bias_lo));
            if self.mask_hi != 0 {
                _mm512_mask_storeu_ps(dst.add(16), self.mask_hi, _mm512_add_ps(hi, self.bias_hi));
            }
        }
    }
}

/// # Safety
/// AVX2 + FMA + F16C are available; the memory contract of [`Tile::run`] holds for `R` rows;
/// `half` is 0 or 16 and below `t.cols`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // fixed-size index loops keep the accumulators in registers
unsafe fn tile_avx2<const R: usize>(t: &Tile<'_>, half: usize, out: *mut f32, ldc: usize) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    let a = t.a.as_ptr();
    for p in 0..t.k {
        let at = p * NR + half;
        // SAFETY: `p < t.k` and `half + 16 <= NR`, so the 16 values at `at` lie in the panel's
        // `t.k × NR`; `t.a` holds `R` rows of `t.k` at stride `t.lda` (`Tile::run`).
        unsafe {
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
    }
    let cols = (t.cols - half).min(16);
    let mut bias = [0.0f32; 16];
    if let Some(b) = t.bias {
        bias[..cols].copy_from_slice(&b[half..half + cols]);
    }
    // SAFETY: `bias` is a local array of 16 floats: both 8-float loads are inside it.
    let (bias0, bias1) = unsafe {
        (
            _mm256_loadu_ps(bias.as_ptr()),
            _mm256_loadu_ps(bias.as_ptr().add(8)),
        )
    };
    let mut row = [0.0f32; 16];
    for r in 0..R {
        // SAFETY: row `r` at `out + r * ldc` is valid for `t.cols` floats (`Tile::run`), and
        // `half + cols <= t.cols`, so the stores (16 floats, or `cols` through `row`) stay in it.
        unsafe {
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
}

/// # Safety
/// The memory contract of [`Tile::run`] holds for `R` rows.
unsafe fn tile_portable<const R: usize>(t: &Tile<'_>, out: *mut f32, ldc: usize) {
    // SAFETY: forwarded unchanged from our caller.
    unsafe { tile_generic::<R>(t, out, ldc) }
}

/// # Safety
/// As [`tile_portable`].
#[allow(clippy::needless_range_loop)] // fixed-size index loops are what vectorizes
#[inline(always)]
unsafe fn tile_generic<const R: usize>(t: &Tile<'_>, out: *mut f32, ldc: usize) {
    let mut local = [[0.0f32; NR]; R];
    let mut converted = [0.0f32; NR];
    for p in 0..t.k {
        let b: &[f32; NR] = match t.bp {
            // SAFETY: `p < t.k` and the panel holds `t.k × NR` floats, so row `p` is inside it.
            Panel::F32(bp) => unsafe { &*(bp.as_ptr().add(p * NR) as *const [f32; NR]) },
            Panel::F16(bp) => {
                for (c, h) in converted.iter_mut().zip(&bp[p * NR..(p + 1) * NR]) {
                    *c = half::f16::from_bits(*h).to_f32();
                }
                &converted
            }
        };
        for r in 0..R {
            // SAFETY: `t.a` holds `R` rows of `t.k` at stride `t.lda` (`Tile::run`).
            let av = unsafe { *t.a.get_unchecked(r * t.lda + p) };
            for j in 0..NR {
                local[r][j] += av * b[j];
            }
        }
    }
    for r in 0..R {
        // SAFETY: row `r` at `out + r * ldc` is valid for `t.cols` floats (`Tile::run`).
        let row = unsafe { out.add(r * ldc) };
        for j in 0..t.cols {
            let bias = t.bias.map_or(0.0, |b| b[j]);
            // SAFETY: `j < t.cols`, inside the row (above).
            unsafe { *row.add(j) = local[r][j] + bias };
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
