//! Dense layers on weights packed once at load: `out (n, o) += x (n, k) · Wᵀ`.
//!
//! A general gemm packs its right-hand side on every call. For the encoder's
//! dense layers that side is a weight matrix that never changes, and at
//! serving batch sizes (tens to a few hundred tokens) repacking it was about
//! an eighth of the forward's time. Here each weight matrix is laid out once
//! in panels of [`NR`] output columns, `k` rows of `NR` contiguous floats, the
//! order the AVX2 kernel reads them in.
//!
//! The AVX2 kernel computes a 6 × [`NR`] output tile in twelve 8-wide
//! accumulators: per `k`, two weight loads, six broadcasts of the tokens'
//! inputs and twelve FMAs (the register budget of AVX2's sixteen `ymm`s).
//! With AVX-512 a panel line is one `zmm`, and an 8 × 3·`NR` tile over
//! three adjacent panels keeps twenty-four accumulators of the thirty-two
//! registers: per `k`, three weight loads, eight broadcasts and twenty-four
//! FMAs (about 90% of the measured FMA peak on full layers; blocks of one or
//! two panels, at the end of a layer or in attention, take 14 or 12 rows).
//! Blocks of panels, and on large batches blocks of rows, are split across
//! rayon's threads; each task writes its own rows of its panels' columns.
//! Without AVX2 or AVX-512, a portable loop computes the same sums in the
//! same order, so every path gives the same floats. The path is chosen
//! once per process by the rule in [`crate::kernels`]: the best the CPU
//! has, or `CASETAG_F32_PATH=portable|avx2|avx512` where the CPU has it.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::{Base, Dispatch, Epilogue, KernelPath, SendPtr, Then};

/// Output columns per panel (two 8-float vectors).
pub(crate) const NR: usize = 16;
/// The f32 kernels, best last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Path {
    Portable,
    Avx2,
    Avx512,
}

impl KernelPath for Path {
    const ALL: &'static [Self] = &[Path::Portable, Path::Avx2, Path::Avx512];
    const ENV: &'static str = "CASETAG_F32_PATH";

    fn name(self) -> &'static str {
        match self {
            Path::Portable => "portable",
            Path::Avx2 => "avx2+fma",
            Path::Avx512 => "avx512f",
        }
    }

    fn env_name(self) -> &'static str {
        match self {
            Path::Portable => "portable",
            Path::Avx2 => "avx2",
            Path::Avx512 => "avx512",
        }
    }

    fn missing(self) -> Option<&'static str> {
        match self {
            Path::Portable => None,
            Path::Avx2 => super::missing_avx2_fma(),
            Path::Avx512 => super::missing_avx512f(),
        }
    }
}

impl Path {
    /// Output rows (tokens) per kernel call on a block of `panels`.
    fn rows(self, panels: usize) -> usize {
        match (self, panels) {
            (Path::Avx512, 1) => 14,
            (Path::Avx512, 2) => 12,
            (Path::Avx512, _) => 8,
            _ => 6,
        }
    }
}

/// The f32 path this process runs (also [`super::vmath`]'s: AVX2 builds
/// run from [`Path::Avx2`] up).
pub(crate) fn dispatch() -> &'static Dispatch<Path> {
    static D: OnceLock<Dispatch<Path>> = OnceLock::new();
    super::once(&D)
}

/// One input's `NR` weights in a panel: exactly one 64-byte cache line, and
/// aligned to it, so the kernel's two 8-float loads never straddle lines
/// (a plain `Vec<f32>` is only 16-byte aligned, which made speed depend on
/// where the allocator happened to put the weights).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; NR]);

/// A `(o, k)` row-major weight matrix, packed once into `o / NR` panels:
/// panel `p`, input `j`, lane `l` is `W[p * NR + l][j]`.
pub(crate) struct PackedW {
    o: usize,
    panels: Panels,
}

impl PackedW {
    /// Pack `w` (`o × k`, row-major). `o` must be a multiple of [`NR`]
    /// (BERT widths are); see [`PackedW::fits`].
    pub fn new(w: &[f32], o: usize, k: usize) -> Self {
        assert!(Self::fits(o) && w.len() == o * k, "weight shape {o}×{k}");
        let mut panels = Panels::default();
        // SAFETY: output column c, input j is w[c * k + j], inside `w` for
        // every c < o and j < k (checked above).
        unsafe { panels.pack(w.as_ptr(), o, k, k, 1) };
        Self { o, panels }
    }

    /// Whether a layer `o` wide can be packed.
    pub fn fits(o: usize) -> bool {
        o > 0 && o.is_multiple_of(NR)
    }
}

/// A right-hand side in panels of [`NR`] columns, each input's `NR` values
/// one aligned [`Line`]: a weight matrix packed once ([`PackedW`]), or one
/// that changes every call (attention's Kᵀ and V), reused between calls so
/// it is allocated once per thread.
#[derive(Default)]
pub(crate) struct Panels {
    k: usize,
    count: usize,
    lines: Vec<Line>,
}

impl Panels {
    /// Pack a `k × cols` right-hand side whose input `j` of output column
    /// `c` is at `src[c * col_stride + j * k_stride]`; columns past `cols`
    /// (up to a multiple of [`NR`]) are zeros.
    ///
    /// # Safety
    /// Every such element, for `c < cols` and `j < k`, is readable.
    pub(crate) unsafe fn pack(
        &mut self,
        src: *const f32,
        cols: usize,
        k: usize,
        col_stride: usize,
        k_stride: usize,
    ) {
        self.k = k;
        self.count = cols.div_ceil(NR);
        // Every lane is written below, so old contents need no clearing.
        self.lines.resize(self.count * k, Line([0.0; NR]));
        for p in 0..self.count {
            let panel = &mut self.lines[p * k..(p + 1) * k];
            let width = NR.min(cols - p * NR);
            let first = src.add(p * NR * col_stride);
            if width < NR {
                panel.iter_mut().for_each(|line| line.0[width..].fill(0.0));
            }
            if col_stride == 1 {
                // Each input's columns are contiguous: one copy per line.
                for (j, line) in panel.iter_mut().enumerate() {
                    let from = std::slice::from_raw_parts(first.add(j * k_stride), width);
                    line.0[..width].copy_from_slice(from);
                }
            } else {
                for (j, line) in panel.iter_mut().enumerate() {
                    let at = first.add(j * k_stride);
                    for (l, v) in line.0[..width].iter_mut().enumerate() {
                        *v = *at.add(l * col_stride);
                    }
                }
            }
        }
    }

    /// Panel `p` as `k × NR` floats.
    fn panel(&self, p: usize) -> &[f32] {
        let lines = &self.lines[p * self.k..(p + 1) * self.k];
        // SAFETY: `Line` is `repr(C)` over `[f32; NR]` with no padding (its
        // size, 64 bytes, equals its alignment), so `k` lines are `k * NR`
        // contiguous floats.
        unsafe { std::slice::from_raw_parts(lines.as_ptr().cast::<f32>(), lines.len() * NR) }
    }

    /// `c (n, count · NR at stride ldc) = x (n rows of k at stride ldx) ·
    /// panels`, on the calling thread (`c` is only written).
    ///
    /// # Safety
    /// `c` has `n` rows of `count · NR` writable floats at stride `ldc`, `x`
    /// has `n` rows of `k` readable floats at stride `ldx`.
    pub(crate) unsafe fn product(
        &self,
        c: *mut f32,
        ldc: usize,
        x: *const f32,
        ldx: usize,
        n: usize,
    ) {
        let path = dispatch().path;
        for first in (0..self.count).step_by(MAX_P) {
            let count = MAX_P.min(self.count - first);
            let block = Block::new(count, |i| (self.panel(first + i), Base::Zero));
            panel_rows(
                c.add(first * NR),
                ldc,
                x,
                ldx,
                self.k,
                &block,
                n,
                path,
                None,
            );
        }
    }
}

/// `out (n, o) = start + x (n, k) · Wᵀ`, then `epi.then` on each finished
/// tile (see [`Epilogue`]). Runs on rayon's threads when there is enough
/// work.
pub(crate) fn matmul(out: &mut [f32], x: &[f32], w: &PackedW, n: usize, epi: &Epilogue) {
    let (o, k, w) = (w.o, w.panels.k, &w.panels);
    assert!(out.len() == n * o && x.len() == n * k, "matmul shapes");
    epi.check(n, o);
    let panels = o / NR;
    let path = dispatch().path;
    // The tasks write disjoint blocks through one shared pointer.
    let dst = SendPtr(out.as_mut_ptr());
    let (rows, col_blocks) = (row_block(n, k), panels.div_ceil(MAX_P));
    // Task `t`: rows `rows · (t / col_blocks)..` (up to `rows` of them) of
    // panels `MAX_P · (t % col_blocks)..` (up to MAX_P). Consecutive tasks
    // share their rows, so a thread taking a run of tasks keeps one row
    // block's inputs in its L2 while the panels pass over them.
    let run = |t: usize| {
        let (r0, first) = ((t / col_blocks) * rows, (t % col_blocks) * MAX_P);
        let (nr, count) = (rows.min(n - r0), MAX_P.min(panels - first));
        let block = Block::new(count, |i| {
            let base = epi.start.at((first + i) * NR);
            // SAFETY: r0 < n, and a residual is n × o (checked above).
            (w.panel(first + i), unsafe { base.down(r0 * o) })
        });
        // SAFETY: `out` is n × o and `x` n × k, so the block's rows
        // r0..r0 + nr lie inside both, as do its bases' (checked above);
        // this task alone writes these rows of its panels' columns.
        unsafe {
            let c = dst.get().add(r0 * o + first * NR);
            let xr = x.as_ptr().add(r0 * k);
            panel_rows(c, o, xr, k, k, &block, nr, path, epi.then);
        }
    };
    let tasks = n.div_ceil(rows) * col_blocks;
    // Below ~1 MFLOP a thread hand-off costs more than it saves.
    if rayon::current_num_threads() > 1 && n * o * k >= 1 << 20 {
        (0..tasks).into_par_iter().for_each(run);
    } else {
        (0..tasks).for_each(run);
    }
}

/// The most input bytes of one row block of [`matmul`]: three quarters of
/// a 2 MB L2, so the block stays there, next to one block of panels, while
/// every panel of the layer passes over it. (Blocks of 512 KB made the
/// layers faster alone but not the forward; on an AMD EPYC no block size
/// from 28 to 168 rows changed anything, 2026-12-01.)
const ROW_BLOCK_BYTES: usize = 1536 << 10;

/// Rows per task of [`matmul`]: all `n` when their inputs fit in
/// [`ROW_BLOCK_BYTES`] (a serving batch of the default 256 tokens), else
/// equal blocks that fit, in whole 8-row tiles; never 0. With a batch's
/// inputs (6 MB at 32 × 128 tokens) read from L3 by every block of panels
/// instead, the layers with 384 inputs ran 2–8% slower on an Intel Xeon
/// (benches/README.md).
fn row_block(n: usize, k: usize) -> usize {
    let most = (ROW_BLOCK_BYTES / (4 * k.max(1))).max(8);
    n.div_ceil(n.div_ceil(most).max(1))
        .next_multiple_of(8)
        .max(8)
}

/// How many inputs (cache lines of a panel) ahead a kernel tile that
/// streams the weights prefetches them: at 1 × 16 tokens 64 gave the
/// lowest and steadiest latency of 16, 32, 64 and 128 (AMD EPYC,
/// AVX-512, 2026-12-02).
const AHEAD: usize = 64;

/// Most panels one AVX-512 tile covers: 8 rows × 3 panels keep 24 of the 32
/// `zmm` registers accumulating, with 3 weight loads and 8 broadcasts per
/// input for 24 FMAs (one panel of 14 rows took 15 loads for 14 FMAs, and
/// ran 10% slower on full layers, 15–40% at 16 rows; 2026-12-01).
const MAX_P: usize = 3;

/// Up to [`MAX_P`] adjacent panels of one product, each with where its
/// output starts; slots past `count` are unused.
struct Block<'a> {
    panels: [&'a [f32]; MAX_P],
    bases: [Base; MAX_P],
    count: usize,
}

impl<'a> Block<'a> {
    /// Panel `i` and its start from `at(i)`, for `i < count`.
    fn new(count: usize, at: impl Fn(usize) -> (&'a [f32], Base)) -> Self {
        assert!((1..=MAX_P).contains(&count), "block of {count} panels");
        let first = at(0);
        let mut block = Block {
            panels: [first.0; MAX_P],
            bases: [first.1; MAX_P],
            count,
        };
        for i in 1..count {
            (block.panels[i], block.bases[i]) = at(i);
        }
        block
    }
}

/// `out (n, o) += x (n, k) · Wᵀ`: [`matmul`] starting from `out`.
pub(crate) fn matmul_acc(out: &mut [f32], x: &[f32], w: &PackedW, n: usize) {
    matmul(out, x, w, n, &Epilogue::ACC);
}

/// All `n` rows of a block of panels, a kernel tile of rows at a time,
/// then `then` on each tile's rows (the block's columns).
///
/// # Safety
/// `c` points at `n` rows of `block.count · NR` writable floats at stride
/// `ldc`; `x` at `n` rows of `k` readable floats at stride `ldx`; `path` is
/// available on this CPU; the blocks' bases are valid for these `n` rows
/// (residual at stride `ldc`).
#[allow(clippy::too_many_arguments)]
unsafe fn panel_rows(
    c: *mut f32,
    ldc: usize,
    x: *const f32,
    ldx: usize,
    k: usize,
    block: &Block,
    n: usize,
    path: Path,
    then: Option<Then>,
) {
    #[cfg(target_arch = "x86_64")]
    if path == Path::Avx512 {
        return panel_rows_avx512(c, ldc, x, ldx, k, block, n, then);
    }
    panel_rows_on(c, ldc, x, ldx, k, block, n, path, then)
}

/// [`panel_rows`] on the AVX-512 path, the loop itself compiled for
/// AVX-512. Built for plain x86-64, the loop copies the next tile's
/// arguments with legacy SSE instructions, and on an Intel Xeon `perf` put
/// 8.7% of the fp32 forward on one such copy after each tile (the likely
/// cause: the tile leaves `zmm16`–`zmm31` dirty, which `vzeroupper` does
/// not clear, and SSE code then pays for the mixed state). Built for
/// AVX-512, the copies are VEX-encoded, that time is gone, and the forward
/// at 32 × 128 ran 10% faster (benches/README.md).
///
/// # Safety
/// As for [`panel_rows`], with AVX-512F on this CPU.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn panel_rows_avx512(
    c: *mut f32,
    ldc: usize,
    x: *const f32,
    ldx: usize,
    k: usize,
    block: &Block,
    n: usize,
    then: Option<Then>,
) {
    panel_rows_on(c, ldc, x, ldx, k, block, n, Path::Avx512, then)
}

/// [`panel_rows`]' loop, inlined into each caller so that it is built
/// with the caller's target features.
///
/// # Safety
/// As for [`panel_rows`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn panel_rows_on(
    c: *mut f32,
    ldc: usize,
    x: *const f32,
    ldx: usize,
    k: usize,
    block: &Block,
    n: usize,
    path: Path,
    then: Option<Then>,
) {
    let np = block.count;
    let mut r = 0;
    while r < n {
        let rows = (n - r).min(path.rows(np));
        let xr = x.add(r * ldx);
        let cr = c.add(r * ldc);
        let bases = block.bases.map(|b| b.down(r * ldc));
        match path {
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => {
                let ps = block.panels.map(|p| p.as_ptr());
                // One arm per (rows, panels) the kernel is built for.
                macro_rules! tiles {
                    ($p:literal: $($r:literal)*) => {
                        match rows {
                            $($r => avx512::tile::<$r, $p>(
                                cr,
                                ldc,
                                xr,
                                ldx,
                                k,
                                std::array::from_fn(|i| ps[i]),
                                std::array::from_fn(|i| bases[i]),
                                r == 0,
                                r + rows < n,
                            ),)*
                            _ => unreachable!("{rows} rows of {} panels", $p),
                        }
                    };
                }
                match np {
                    1 => tiles!(1: 1 2 3 4 5 6 7 8 9 10 11 12 13 14),
                    2 => tiles!(2: 1 2 3 4 5 6 7 8 9 10 11 12),
                    _ => tiles!(3: 1 2 3 4 5 6 7 8),
                }
            }
            _ => {
                for (i, (&panel, &base)) in block.panels.iter().zip(&bases).take(np).enumerate() {
                    let ci = cr.add(i * NR);
                    match path {
                        #[cfg(target_arch = "x86_64")]
                        Path::Avx2 => match rows {
                            6 => avx::tile::<6>(ci, ldc, xr, ldx, k, panel, base, r == 0),
                            5 => avx::tile::<5>(ci, ldc, xr, ldx, k, panel, base, r == 0),
                            4 => avx::tile::<4>(ci, ldc, xr, ldx, k, panel, base, r == 0),
                            3 => avx::tile::<3>(ci, ldc, xr, ldx, k, panel, base, r == 0),
                            2 => avx::tile::<2>(ci, ldc, xr, ldx, k, panel, base, r == 0),
                            _ => avx::tile::<1>(ci, ldc, xr, ldx, k, panel, base, r == 0),
                        },
                        _ => portable_tile(ci, ldc, xr, ldx, rows, k, panel, base),
                    }
                }
            }
        }
        if let Some(f) = then {
            for i in 0..rows {
                f(std::slice::from_raw_parts_mut(cr.add(i * ldc), np * NR));
            }
        }
        r += rows;
    }
}

/// The kernel's sums without SIMD: per output, inputs in order, fused
/// multiply-add, added to the start value at the end.
#[allow(clippy::too_many_arguments)]
unsafe fn portable_tile(
    c: *mut f32,
    ldc: usize,
    x: *const f32,
    ldx: usize,
    rows: usize,
    k: usize,
    panel: &[f32],
    base: Base,
) {
    for i in 0..rows {
        let mut acc = [0f32; NR];
        let xi = std::slice::from_raw_parts(x.add(i * ldx), k);
        for (j, &xv) in xi.iter().enumerate() {
            let wj = &panel[j * NR..(j + 1) * NR];
            for (a, &wv) in acc.iter_mut().zip(wj) {
                *a = xv.mul_add(wv, *a);
            }
        }
        let ci = c.add(i * ldc);
        for (l, a) in acc.iter().enumerate() {
            let start = match base {
                Base::Zero => 0.0,
                Base::Out => *ci.add(l),
                Base::Bias(b) => *b.add(l),
                Base::ResidualBias(r, b) => *r.add(i * ldc + l) + *b.add(l),
            };
            *ci.add(l) = start + a;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use super::{Base, AHEAD, NR};
    use std::arch::x86_64::*;

    /// One `R × NR` tile: `c[i][0..NR] += Σ_j x[i][j] · panel[j][0..NR]`.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `c` has `R` rows of `NR` writable floats at
    /// stride `ldc`; `x` has `R` rows of `k` floats at stride `ldx`;
    /// `panel` is `k × NR`, 32-byte aligned. `stream` as for the AVX-512
    /// tile.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile<const R: usize>(
        c: *mut f32,
        ldc: usize,
        xp: *const f32,
        ldx: usize,
        k: usize,
        panel: &[f32],
        base: Base,
        stream: bool,
    ) {
        debug_assert!(panel.len() == k * NR);
        debug_assert!(panel.as_ptr().cast::<u8>().align_offset(32) == 0);
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let wp = panel.as_ptr();
        for j in 0..k {
            if stream {
                // SAFETY: as in the AVX-512 tile.
                _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add((j + AHEAD) * NR).cast());
            }
            // Aligned: each input's weights are one cache line.
            let w0 = _mm256_load_ps(wp.add(j * NR));
            let w1 = _mm256_load_ps(wp.add(j * NR + 8));
            for (i, a) in acc.iter_mut().enumerate() {
                let xv = _mm256_broadcast_ss(&*xp.add(i * ldx + j));
                a[0] = _mm256_fmadd_ps(xv, w0, a[0]);
                a[1] = _mm256_fmadd_ps(xv, w1, a[1]);
            }
        }
        for (i, a) in acc.iter().enumerate() {
            let ci = c.add(i * ldc);
            for (h, &v) in a.iter().enumerate() {
                let start = match base {
                    Base::Zero => _mm256_setzero_ps(),
                    Base::Out => _mm256_loadu_ps(ci.add(8 * h)),
                    Base::Bias(b) => _mm256_loadu_ps(b.add(8 * h)),
                    Base::ResidualBias(r, b) => _mm256_add_ps(
                        _mm256_loadu_ps(r.add(i * ldc + 8 * h)),
                        _mm256_loadu_ps(b.add(8 * h)),
                    ),
                };
                _mm256_storeu_ps(ci.add(8 * h), _mm256_add_ps(start, v));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Base, AHEAD, NR};
    use std::arch::x86_64::*;

    /// One `R × P·NR` tile over `P` adjacent panels: `c[i][h·NR + l] =
    /// start + Σ_j x[i][j] · panel_h[j][l]`, one `zmm` accumulator per row
    /// and panel, the inputs in order (so the sums equal the portable
    /// loop's).
    ///
    /// # Safety
    /// The CPU has AVX-512F; `c` has `R` rows of `P · NR` writable floats
    /// at stride `ldc`; `x` has `R` rows of `k` floats at stride `ldx`;
    /// each panel is `k × NR`, 64-byte aligned; the bases are valid for
    /// these rows.
    ///
    /// With `stream` (the first tile of a block of panels, which reads the
    /// weights from memory; the next tiles find them in cache), each
    /// panel's line [`AHEAD`] inputs on is prefetched: for a batch of one
    /// short text the weights (42 MB at fp32, more than L3) stream from
    /// DRAM, and the hardware prefetcher alone left the kernel waiting.
    ///
    /// With `next` (more rows follow this tile's), the next tile's `R` rows
    /// of `x` are prefetched, a cache line of each per 16 inputs, while
    /// this tile runs. A batch's inputs (6 MB at 32 × 128 tokens) outgrow
    /// L2, and a row of 384 inputs is a stream of only 24 lines, too short
    /// for the hardware prefetcher to get ahead of: on an Intel Xeon this
    /// made the 384-input layers 5–10% faster and the fp32 forward at
    /// 32 × 128 about 10% faster (benches/README.md).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile<const R: usize, const P: usize>(
        c: *mut f32,
        ldc: usize,
        xp: *const f32,
        ldx: usize,
        k: usize,
        panels: [*const f32; P],
        bases: [Base; P],
        stream: bool,
        next: bool,
    ) {
        debug_assert!(panels.iter().all(|p| p.cast::<u8>().align_offset(64) == 0));
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        // Without a next tile this re-touches the tile's own rows, which
        // costs less than a branch in the loop.
        let ahead = if next { xp.wrapping_add(R * ldx) } else { xp };
        for j in 0..k {
            if stream {
                for p in panels {
                    // SAFETY: a prefetch never faults, whatever the address
                    // (past the panel's end near its last inputs), and
                    // `wrapping_add` stays defined there.
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add((j + AHEAD) * NR).cast());
                }
            }
            if j % 16 == 0 {
                for i in 0..R {
                    // SAFETY: as above (past the last row of `x` when the
                    // next tile is shorter).
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(i * ldx + j).cast());
                }
            }
            // Aligned: each input's weights are one cache line per panel.
            let w: [__m512; P] = std::array::from_fn(|h| _mm512_load_ps(panels[h].add(j * NR)));
            for (i, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(*xp.add(i * ldx + j));
                for (a, &w) in a.iter_mut().zip(&w) {
                    *a = _mm512_fmadd_ps(xv, w, *a);
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            for (h, (&v, base)) in a.iter().zip(bases).enumerate() {
                let ci = c.add(i * ldc + h * NR);
                let start = match base {
                    Base::Zero => _mm512_setzero_ps(),
                    Base::Out => _mm512_loadu_ps(ci),
                    Base::Bias(b) => _mm512_loadu_ps(b),
                    Base::ResidualBias(r, b) => {
                        _mm512_add_ps(_mm512_loadu_ps(r.add(i * ldc)), _mm512_loadu_ps(b))
                    }
                };
                _mm512_storeu_ps(ci, _mm512_add_ps(start, v));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{reference, values};
    use super::*;

    #[test]
    fn matches_a_plain_product_for_every_row_remainder() {
        // n covers every tile height (1..=6 rows left over), with and
        // without threads (the work threshold), and k = 1.
        for &(n, k, o) in &[
            (1, 1, 16),
            (7, 5, 32),
            (13, 64, 48),
            (6, 384, 16),
            (97, 384, 64),
        ] {
            let x = values(n * k, 1 + n as u32);
            let w = values(o * k, 7 + k as u32);
            let bias = values(o, 3);
            let mut want: Vec<f32> = (0..n).flat_map(|_| bias.iter().copied()).collect();
            let mut got = want.clone();
            reference(&mut want, &x, &w, n, k, o);
            matmul_acc(&mut got, &x, &PackedW::new(&w, o, k), n);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * (k as f32).sqrt(),
                    "n={n} k={k} o={o} [{i}]: {a} vs {b}"
                );
            }
        }
    }

    /// Every kernel path gives exactly the portable loop's floats, over
    /// every tile height's remainder and blocks of 1 to [`MAX_P`] panels.
    #[test]
    fn every_path_gives_the_portable_sums() {
        let (k, o) = (96, 96);
        for n in [1, 5, 6, 8, 11, 12, 14, 15, 29] {
            let x = values(n * k, 5 + n as u32);
            let w = PackedW::new(&values(o * k, 9), o, k);
            let bias = values(o, 2);
            let run = |path: Path, np: usize| {
                let mut c = vec![0.5f32; n * o];
                // SAFETY: `c` is n × o; each call writes the columns of its
                // block's panels in every row, inside the buffer; `path` is
                // available (checked by the caller).
                unsafe {
                    for first in (0..o / NR).step_by(np) {
                        let c = c.as_mut_ptr().add(first * NR);
                        let start = |p: usize| match p % 3 {
                            0 => Base::Out,
                            1 => Base::Bias(bias[p * NR..].as_ptr()),
                            _ => Base::Zero,
                        };
                        let block =
                            Block::new(np, |i| (w.panels.panel(first + i), start(first + i)));
                        panel_rows(c, o, x.as_ptr(), k, k, &block, n, path, None);
                    }
                }
                c
            };
            let want = run(Path::Portable, 1);
            for path in [Path::Portable, Path::Avx2, Path::Avx512] {
                if let Some(why) = path.missing() {
                    eprintln!("SKIPPED f32 path {}: {why}", path.name());
                    continue;
                }
                for np in 1..=MAX_P {
                    assert_eq!(run(path, np), want, "{} n={n} panels={np}", path.name());
                }
            }
        }
    }

    /// A product large enough to be split into row blocks gives exactly the
    /// floats of the same product done a few rows at a time (one block
    /// each), for every start and with an epilogue after it.
    #[test]
    fn row_blocks_give_the_floats_of_one_block() {
        use super::super::{Epilogue, Start};
        let (n, k, o) = (1100, 384, 48);
        assert!(
            row_block(n, k) < n && row_block(40, k) >= 40,
            "the shapes split"
        );
        let x = values(n * k, 21);
        let w = PackedW::new(&values(o * k, 22), o, k);
        // No rows: nothing to do, and no task.
        matmul(&mut [], &[], &w, 0, &Epilogue::ZERO);
        let (res, bias) = (values(n * o, 23), values(o, 24));
        let then = |v: &mut [f32]| v.iter_mut().for_each(|v| *v = v.mul_add(0.5, 1.0));
        for which in 0..4 {
            let start = |rows: std::ops::Range<usize>| match which {
                0 => Start::Zero,
                1 => Start::Out,
                2 => Start::Bias(&bias),
                _ => Start::ResidualBias(&res[rows.start * o..rows.end * o], &bias),
            };
            let init = values(n * o, 25);
            let mut whole = init.clone();
            let epi = Epilogue {
                start: start(0..n),
                then: Some(&then),
            };
            matmul(&mut whole, &x, &w, n, &epi);
            let mut parts = init;
            for r in (0..n).step_by(40) {
                let rows = r..(r + 40).min(n);
                let epi = Epilogue {
                    start: start(rows.clone()),
                    then: Some(&then),
                };
                let out = &mut parts[rows.start * o..rows.end * o];
                matmul(out, &x[rows.start * k..rows.end * k], &w, rows.len(), &epi);
            }
            assert!(whole == parts, "start {which}");
        }
    }

    /// Scratch panels from strided sources give the plain product, with the
    /// padding columns zero, whatever the buffers held before.
    #[test]
    fn scratch_panels_multiply_strided_operands() {
        let (n, k, cols, ld): (usize, usize, usize, usize) = (19, 24, 21, 40);
        // x: n rows of k at stride ld; B[j][c] at b[c * 1 + j * ld].
        let x = values(n * ld, 3);
        let b = values(k * ld, 4);
        let mut panels = Panels::default();
        let width = cols.div_ceil(NR) * NR;
        // Stale contents, in `c` and in the reused panels, must not show.
        let mut c = vec![f32::NAN; n * width];
        // SAFETY: b holds k rows of ld ≥ cols floats; x n rows of ld ≥ k; c
        // is n × width.
        unsafe {
            panels.pack(b.as_ptr(), NR * 2, k, 1, ld);
            panels.pack(b.as_ptr(), cols, k, 1, ld);
            panels.product(c.as_mut_ptr(), width, x.as_ptr(), ld, n);
        }
        for i in 0..n {
            for col in 0..width {
                let want: f32 = if col < cols {
                    (0..k).map(|j| x[i * ld + j] * b[j * ld + col]).sum()
                } else {
                    0.0
                };
                let got = c[i * width + col];
                assert!((got - want).abs() < 1e-5, "[{i}][{col}]: {got} vs {want}");
            }
        }
    }

    #[test]
    fn only_multiples_of_the_panel_width_pack() {
        assert!(PackedW::fits(384) && PackedW::fits(1536) && PackedW::fits(16));
        assert!(!PackedW::fits(0) && !PackedW::fits(77));
    }
}
