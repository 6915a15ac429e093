//! Dense layers in int8: `out (n, o) += x (n, k) · Wᵀ`, the contract of
//! [`super::sgemm::matmul_acc`], with `W` quantized once at load and `x`
//! quantized per call.
//!
//! # Quantization
//! * **Weights**: symmetric int8 per output channel, `scale_c = max_j
//!   |W[c][j]| / 127`, `wq = round(W / scale_c)` in `-127..=127` (0 stays 0;
//!   -128 is never produced; 127 is [`W_MAX`]). Per channel the integer column sum `Σ_j wq[c][j]`
//!   is kept for the zero-point correction.
//! * **Activations**: per row at run time, asymmetric, **8-bit** where the
//!   kernel sums products in int32 (AVX-512 VNNI, the scalar loops) and
//!   **7-bit** on AVX2: the row's range widened to hold 0, `[lo, hi] =
//!   [min(0, min x), max(0, max x)]`, maps onto `0..=T` (`T` = [`A_MAX`] =
//!   255, or [`A_MAX_AVX2`] = 127): `s = (hi - lo) / T`, zero point `z =
//!   round(-lo / s)` (so 0.0 is exact), `q = clamp(round(x / s) + z, 0, T)`.
//! * Then `out[i][c] += (acc[i][c] - z_i · colsum_c) · (s_i · scale_c)` with
//!   `acc[i][c] = Σ_j q[i][j] · wq[c][j]` in exact int32 arithmetic.
//! * The encoder smooths the inputs of its QKV and FFN-in layers before
//!   they get here (per channel, into the weights: `crate::fast`), so that
//!   a LayerNorm's few large channels do not set every row's step.
//!
//! Why AVX2 takes 7 bits: vpdpbusd (AVX-512 VNNI) and vpmaddubsw (AVX2) both
//! multiply u8 by i8, but vpmaddubsw adds each pair of products into a
//! *saturating* i16: `2 · 255 · 127 = 64770` would clip, `2 · 127 · 127 =
//! 32258` never does. Every path computes exactly the scalar reference's
//! int32 accumulators at its own code range (tested), and through one shared
//! epilogue bit-identical outputs; an AVX2 machine and a VNNI one differ by
//! that one bit of activation resolution (MiniLM embeddings: cosine to fp32
//! 0.9989 at 7 bits, 0.9995 at 8 bits on the bundled training texts).
//!
//! An element's rounding noise is `step / √12`: for a Gaussian row of 384
//! (range ≈ 6σ) 0.7 % of σ with 8 bits, 1.4 % with 7; with the weights'
//! ≈ 0.7 % the outputs' relative RMS error is ≈ 1.0 % at 8 bits and 1.5 %
//! at 7 (measured 0.99 % and 1.54 %, 1.13 % and 1.78 % at k = 1536; the
//! tests check the prediction). Splitting the 16 bits the other way for
//! AVX2, 8-bit activations and `|wq| ≤ 63`, measured worse on the real
//! encoder (cosine 0.9980 against 0.9989). Non-finite inputs give
//! meaningless outputs (never a panic or undefined behaviour).
//!
//! # Layout and kernels
//! The weights are packed in panels of [`NR`] = 16 output columns; a panel is
//! `⌈k/4⌉` 64-byte lines (aligned), line `g` holding, for column `l`, the four
//! inputs `4g..4g+4` at bytes `4l..4l+4` (k is padded with zero weights).
//! That is one zmm per line for vpdpbusd (dword lane `l` = column `l`) and
//! two ymm for vpmaddubsw + vpmaddwd. Activation rows are quantized once per
//! call into a row-major u8 matrix padded to the same `4⌈k/4⌉`; the kernels
//! broadcast four bytes of a row per line.
//! * AVX-512 VNNI: 6 rows × 4 panels (64 columns) in 24 zmm accumulators;
//!   per line 4 weight loads, 6 broadcasts, 24 vpdpbusd.
//! * AVX2 (with FMA, as [`super::missing_avx2_fma`] checks): 4 rows × 1 panel in 8 ymm
//!   accumulators; per line and row a broadcast, two vpmaddubsw, two
//!   vpmaddwd (by ones) and two vpaddd.
//! * Portable: the same sums in plain integer loops.
//!
//! Row quantization (min/max, codes) and the dequantizing epilogue have an
//! AVX2 and an AVX-512 build next to the portable one, doing the same IEEE
//! operations (no fused multiply-add, `minps`-exact selects), so they too are
//! bit-identical across paths. The epilogue prefetches the `out` rows two
//! tiles ahead: on layers larger than L2 reading the bias stalled it.
//!
//! Work is split into tasks of [`MC`] rows × one kernel-width column block,
//! run on rayon when the product is large enough. The kernel is chosen once
//! per process: the best the CPU has, or `CASETAG_INT8_PATH=scalar|avx2|
//! avx512vnni`; a requested path the CPU lacks falls back to the best one
//! below it, with the reason (the rule of [`crate::kernels`]).

use std::ops::Range;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::{Dispatch, Epilogue, KernelPath, SendPtr, Start};

/// Output columns per panel (one zmm of int32 sums).
pub(crate) const NR: usize = 16;
/// Inputs per packed group (one vpdpbusd dword).
const KG: usize = 4;
/// Largest activation code where products are summed in int32 (AVX-512
/// VNNI and the scalar loops): 8 bits.
const A_MAX: i32 = 255;
/// Largest activation code on AVX2: 7 bits (see the module docs).
const A_MAX_AVX2: i32 = 127;
/// Largest weight code in magnitude.
const W_MAX: i32 = 127;
// vpmaddubsw's i16 pair sums must never saturate.
const _: () = assert!(2 * A_MAX_AVX2 * W_MAX <= i16::MAX as i32);
/// Largest `k` whose int32 sums (and their zero-point correction) cannot
/// overflow: `|acc|, |z · colsum| ≤ A_MAX · W_MAX · k`.
const MAX_K: usize = (i32::MAX / (2 * A_MAX * W_MAX)) as usize;
/// Rows per parallel task (a multiple of every kernel's row count).
const MC: usize = 96;
/// Largest kernel tile, rows × panels.
const MAX_R: usize = 6;
const MAX_P: usize = 4;

/// One group of 4 inputs for a panel's 16 columns: 64 bytes, aligned to a
/// cache line so every zmm/ymm load is aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([i8; NR * KG]);

/// A `(o, k)` row-major weight matrix, quantized per output channel and
/// packed into `o / NR` panels.
pub(crate) struct QuantW {
    o: usize,
    k: usize,
    /// Lines per panel: `⌈k / 4⌉`.
    groups: usize,
    /// Panel `p`, group `g` is `lines[p * groups + g]`; its byte `4l + t` is
    /// `wq[p * NR + l][4g + t]` (0 past `k`).
    lines: Vec<Line>,
    /// Per output channel: dequantization scale and `Σ_j wq[c][j]`.
    scale: Vec<f32>,
    colsum: Vec<i32>,
}

impl QuantW {
    /// Quantize and pack `w` (`o × k`, row-major). `o` must be a multiple of
    /// [`NR`] (BERT widths are; see [`QuantW::fits`]) and `k` at most
    /// [`MAX_K`] (66576).
    pub fn new(w: &[f32], o: usize, k: usize) -> Self {
        Self::build(w, o, k, None)
    }

    /// [`QuantW::new`] with each row's codes chosen by error-compensating
    /// rounding against the inputs' Gram matrix ([`super::gptq`]; `u` its
    /// inverse factor, `k × k`).
    pub fn new_compensated(w: &[f32], o: usize, k: usize, u: &[f32]) -> Self {
        assert_eq!(u.len(), k * k, "inverse factor shape");
        Self::build(w, o, k, Some(u))
    }

    fn build(w: &[f32], o: usize, k: usize, u: Option<&[f32]>) -> Self {
        assert!(Self::fits(o) && w.len() == o * k, "weight shape {o}×{k}");
        assert!(k <= MAX_K, "k = {k} > {MAX_K} could overflow int32 sums");
        let groups = k.div_ceil(KG);
        // Per channel: the step (an all-zero channel keeps 0 and codes 0)
        // and the codes.
        let rows: Vec<(f32, Vec<i8>)> = w
            .par_chunks_exact(k)
            .map(|row| {
                let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                let (s, inv) = if amax > 0.0 {
                    (amax / W_MAX as f32, W_MAX as f32 / amax)
                } else {
                    (0.0, 0.0)
                };
                let mut codes = vec![0i8; k];
                match u {
                    Some(u) => super::gptq::round_row(row, s, W_MAX, u, &mut codes),
                    None => {
                        for (q, &v) in codes.iter_mut().zip(row) {
                            *q = (v * inv).round().clamp(-W_MAX as f32, W_MAX as f32) as i8;
                        }
                    }
                }
                (s, codes)
            })
            .collect();
        let mut lines = vec![Line([0; NR * KG]); o / NR * groups];
        let mut scale = vec![0f32; o];
        let mut colsum = vec![0i32; o];
        for (c, (s, codes)) in rows.into_iter().enumerate() {
            scale[c] = s;
            let (p, l) = (c / NR, c % NR);
            let panel = &mut lines[p * groups..(p + 1) * groups];
            for (j, &q) in codes.iter().enumerate() {
                panel[j / KG].0[l * KG + j % KG] = q;
                colsum[c] += i32::from(q);
            }
        }
        Self {
            o,
            k,
            groups,
            lines,
            scale,
            colsum,
        }
    }

    /// Whether a layer `o` wide can be packed.
    pub fn fits(o: usize) -> bool {
        o > 0 && o.is_multiple_of(NR)
    }

    /// The lines of panels `p` (inclusive) to `p + np`.
    fn panels(&self, p: usize, np: usize) -> &[Line] {
        &self.lines[p * self.groups..(p + np) * self.groups]
    }
}

/// One row to quantize: its codes, its values, its (scale, zero point).
type RowJob<'a> = ((&'a mut [u8], &'a [f32]), &'a mut (f32, i32));

/// Activation rows quantized for one call.
struct QuantX {
    /// Row-major `n × ld` codes, `ld = 4⌈k/4⌉`, zero-padded.
    q: Vec<u8>,
    ld: usize,
    scale: Vec<f32>,
    zero: Vec<i32>,
}

impl QuantX {
    /// Quantize `x` (`n × k`) to codes `0..=a_max` with `path`'s build of
    /// [`quantize_row`].
    ///
    /// # Safety
    /// The CPU has `path`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn new(
        path: Path,
        a_max: i32,
        x: &[f32],
        n: usize,
        k: usize,
        groups: usize,
        parallel: bool,
    ) -> Self {
        let ld = groups * KG;
        let mut q = vec![0u8; n * ld];
        let mut sz = vec![(0f32, 0i32); n];
        if k > 0 {
            let job = |((qr, xr), sz): RowJob| {
                // SAFETY: the CPU has `path` (caller).
                *sz = unsafe { quantize_row_on(path, xr, qr, a_max) };
            };
            if parallel {
                let rows = q.par_chunks_mut(ld).zip(x.par_chunks(k));
                rows.zip(sz.par_iter_mut()).for_each(job);
            } else {
                let rows = q.chunks_mut(ld).zip(x.chunks(k));
                rows.zip(sz.iter_mut()).for_each(job);
            }
        }
        let (scale, zero) = sz.into_iter().unzip();
        Self { q, ld, scale, zero }
    }
}

/// Lanes of the row min/max (one zmm of f32).
const L: usize = 16;

/// Per-lane minimum and maximum of a row, starting from 0 so 0 is in
/// range: element `j` goes to lane `j % L` while whole chunks of `L` last,
/// the rest to lane 0. Each step is `lo = if v < lo { v } else { lo }` (and
/// `>` for `hi`), exactly `minps(v, lo)` / `maxps(v, hi)`, so the SIMD builds
/// give the same lanes bit for bit, NaN included.
fn row_lanes(x: &[f32]) -> ([f32; L], [f32; L]) {
    let (mut lo, mut hi) = ([0f32; L], [0f32; L]);
    let mut chunks = x.chunks_exact(L);
    for c in &mut chunks {
        for l in 0..L {
            lo[l] = if c[l] < lo[l] { c[l] } else { lo[l] };
            hi[l] = if c[l] > hi[l] { c[l] } else { hi[l] };
        }
    }
    lanes_tail(chunks.remainder(), &mut lo, &mut hi);
    (lo, hi)
}

/// The tail of [`row_lanes`]: into lane 0.
fn lanes_tail(tail: &[f32], lo: &mut [f32; L], hi: &mut [f32; L]) {
    for &v in tail {
        lo[0] = if v < lo[0] { v } else { lo[0] };
        hi[0] = if v > hi[0] { v } else { hi[0] };
    }
}

/// A row's quantization from its lanes: `(s, 1/s, z, z + 0.5)`, or `None`
/// for a row of zeros (or non-finite values): codes 0, scale 0, the row
/// adds nothing.
fn row_params(lo: &[f32; L], hi: &[f32; L], top: f32) -> Option<(f32, f32, f32, f32)> {
    let lo = lo.iter().fold(0f32, |m, &v| if v < m { v } else { m });
    let hi = hi.iter().fold(0f32, |m, &v| if v > m { v } else { m });
    let range = hi - lo;
    if !(range > 0.0 && range.is_finite()) {
        return None;
    }
    let s = range / top;
    let inv = top / range;
    let z = (-lo * inv).round().clamp(0.0, top);
    Some((s, inv, z, z + 0.5))
}

/// One code: `round(v / s) + z` as `floor(v · inv + zh)`, clamped to
/// `0..=A_MAX` (NaN to 0). Multiply, then add (never fused), then
/// `maxps(t, 0)`, `minps(t, A_MAX)` and truncation: the SIMD builds do the
/// same operations.
#[inline(always)]
fn code(v: f32, inv: f32, zh: f32, top: f32) -> u8 {
    let t = v * inv + zh;
    let t = if t > 0.0 { t } else { 0.0 };
    let t = if t < top { t } else { top };
    // SAFETY: `t` is in [0, A_MAX], not NaN, so truncating it to i32 is
    // defined.
    unsafe { t.to_int_unchecked::<i32>() as u8 }
}

/// Quantize one row into `q` (its first `x.len()` bytes); returns the
/// row's scale and zero point. The reference: the SIMD builds
/// ([`quantize_row_on`]) give identical codes, scale and zero point.
fn quantize_row(x: &[f32], q: &mut [u8], a_max: i32) -> (f32, i32) {
    let top = a_max as f32;
    let (lo, hi) = row_lanes(x);
    let Some((s, inv, z, zh)) = row_params(&lo, &hi, top) else {
        q[..x.len()].fill(0);
        return (0.0, 0);
    };
    for (d, &v) in q.iter_mut().zip(x) {
        *d = code(v, inv, zh, top);
    }
    (s, z as i32)
}

/// `out[c] = start[c] + (acc[c] - z · colsum[c]) · (s · scale[c])` for one
/// row of a tile, `start` being `out` itself, the bias or residual + bias
/// (this row's slices); compiled per path like [`quantize_row`], same
/// operations in every build.
#[inline(always)]
fn dequant_row(
    out: &mut [f32],
    acc: &[i32],
    colsum: &[i32],
    scale: &[f32],
    s: f32,
    z: i32,
    start: Start,
) {
    let sums = acc.iter().zip(colsum).zip(scale);
    let value = |((&a, &cs), &ws): ((&i32, &i32), &f32)| (a - z * cs) as f32 * (s * ws);
    match start {
        Start::Out => out.iter_mut().zip(sums).for_each(|(d, v)| *d += value(v)),
        Start::Bias(b) => {
            let rows = out.iter_mut().zip(b).zip(sums);
            rows.for_each(|((d, &b), v)| *d = b + value(v));
        }
        Start::ResidualBias(r, b) => {
            let rows = out.iter_mut().zip(r.iter().zip(b)).zip(sums);
            rows.for_each(|((d, (&r, &b)), v)| *d = (r + b) + value(v));
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd_build {
    use super::{code, lanes_tail, row_params, L};
    use std::arch::x86_64::*;

    /// [`super::quantize_row`] with AVX2: the same lanes (two ymm) and the
    /// same operations per code.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn quantize_row_avx2(x: &[f32], q: &mut [u8], a_max: i32) -> (f32, i32) {
        let top = a_max as f32;
        let n = x.len();
        assert!(q.len() >= n);
        let (xp, qp) = (x.as_ptr(), q.as_mut_ptr());
        let whole = n / L * L;
        let (mut lo0, mut lo1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let (mut hi0, mut hi1) = (lo0, lo0);
        let mut j = 0;
        while j < whole {
            let (v0, v1) = (_mm256_loadu_ps(xp.add(j)), _mm256_loadu_ps(xp.add(j + 8)));
            lo0 = _mm256_min_ps(v0, lo0);
            lo1 = _mm256_min_ps(v1, lo1);
            hi0 = _mm256_max_ps(v0, hi0);
            hi1 = _mm256_max_ps(v1, hi1);
            j += L;
        }
        let (mut lo, mut hi) = ([0f32; L], [0f32; L]);
        _mm256_storeu_ps(lo.as_mut_ptr(), lo0);
        _mm256_storeu_ps(lo.as_mut_ptr().add(8), lo1);
        _mm256_storeu_ps(hi.as_mut_ptr(), hi0);
        _mm256_storeu_ps(hi.as_mut_ptr().add(8), hi1);
        lanes_tail(&x[whole..], &mut lo, &mut hi);
        let Some((s, inv, z, zh)) = row_params(&lo, &hi, top) else {
            q[..n].fill(0);
            return (0.0, 0);
        };
        let (vi, vz) = (_mm256_set1_ps(inv), _mm256_set1_ps(zh));
        let (zero, vtop) = (_mm256_setzero_ps(), _mm256_set1_ps(top));
        let conv = |p: *const f32| {
            let t = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(p), vi), vz);
            _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(t, zero), vtop))
        };
        // 32 codes at a time: i32 → i16 → u8 (values are in 0..=127, the
        // packs are exact), then undo the packs' lane interleave.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let mut j = 0;
        while j + 32 <= n {
            let (a, b) = (conv(xp.add(j)), conv(xp.add(j + 8)));
            let (c, d) = (conv(xp.add(j + 16)), conv(xp.add(j + 24)));
            let ab = _mm256_packs_epi32(a, b);
            let cd = _mm256_packs_epi32(c, d);
            let bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(ab, cd), order);
            _mm256_storeu_si256(qp.add(j).cast(), bytes);
            j += 32;
        }
        for (d, &v) in q[j..n].iter_mut().zip(&x[j..]) {
            *d = code(v, inv, zh, top);
        }
        (s, z as i32)
    }

    /// [`super::quantize_row`] with AVX-512: the same lanes (one zmm) and
    /// the same operations per code.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize_row_avx512(x: &[f32], q: &mut [u8], a_max: i32) -> (f32, i32) {
        let top = a_max as f32;
        let n = x.len();
        assert!(q.len() >= n);
        let (xp, qp) = (x.as_ptr(), q.as_mut_ptr());
        let whole = n / L * L;
        let (mut lo0, mut hi0) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut j = 0;
        while j < whole {
            let v = _mm512_loadu_ps(xp.add(j));
            lo0 = _mm512_min_ps(v, lo0);
            hi0 = _mm512_max_ps(v, hi0);
            j += L;
        }
        let (mut lo, mut hi) = ([0f32; L], [0f32; L]);
        _mm512_storeu_ps(lo.as_mut_ptr(), lo0);
        _mm512_storeu_ps(hi.as_mut_ptr(), hi0);
        lanes_tail(&x[whole..], &mut lo, &mut hi);
        let Some((s, inv, z, zh)) = row_params(&lo, &hi, top) else {
            q[..n].fill(0);
            return (0.0, 0);
        };
        let (vi, vz) = (_mm512_set1_ps(inv), _mm512_set1_ps(zh));
        let (zero, vtop) = (_mm512_setzero_ps(), _mm512_set1_ps(top));
        let mut j = 0;
        while j < whole {
            let t = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(xp.add(j)), vi), vz);
            let t = _mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(t, zero), vtop));
            _mm_storeu_si128(qp.add(j).cast(), _mm512_cvtepi32_epi8(t));
            j += L;
        }
        for (d, &v) in q[whole..n].iter_mut().zip(&x[whole..]) {
            *d = code(v, inv, zh, top);
        }
        (s, z as i32)
    }
}

// The dequantizing epilogue for AVX2 and AVX-512 (the features of the int8
// paths that call them).
simd_builds!(dequant_row =>
    dequant_row_avx2: "avx2,fma",
    dequant_row_avx512: "avx512f,avx512bw" (
    out: &mut [f32],
    acc: &[i32],
    colsum: &[i32],
    scale: &[f32],
    s: f32,
    z: i32,
    start: Start,
));

/// [`quantize_row`] built for `path`.
///
/// # Safety
/// The CPU has `path`.
unsafe fn quantize_row_on(path: Path, x: &[f32], q: &mut [u8], a_max: i32) -> (f32, i32) {
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (caller).
        Path::Avx2 => unsafe { simd_build::quantize_row_avx2(x, q, a_max) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512 F and BW (caller: VNNI implies both).
        Path::Avx512Vnni => unsafe { simd_build::quantize_row_avx512(x, q, a_max) },
        _ => quantize_row(x, q, a_max),
    }
}

/// [`dequant_row`] built for `path`.
///
/// # Safety
/// The CPU has `path`.
#[allow(clippy::too_many_arguments)]
unsafe fn dequant_row_on(
    path: Path,
    out: &mut [f32],
    acc: &[i32],
    colsum: &[i32],
    scale: &[f32],
    s: f32,
    z: i32,
    start: Start,
) {
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (caller).
        Path::Avx2 => unsafe { dequant_row_avx2(out, acc, colsum, scale, s, z, start) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512 F and BW (caller: VNNI implies both).
        Path::Avx512Vnni => unsafe { dequant_row_avx512(out, acc, colsum, scale, s, z, start) },
        _ => dequant_row(out, acc, colsum, scale, s, z, start),
    }
}

/// A kernel implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Path {
    Scalar,
    Avx2,
    Avx512Vnni,
}

impl KernelPath for Path {
    const ALL: &'static [Self] = &[Path::Scalar, Path::Avx2, Path::Avx512Vnni];
    const ENV: &'static str = "CASETAG_INT8_PATH";

    fn name(self) -> &'static str {
        match self {
            Path::Scalar => "scalar",
            Path::Avx2 => "avx2",
            Path::Avx512Vnni => "avx512vnni",
        }
    }

    fn missing(self) -> Option<&'static str> {
        match self {
            Path::Scalar => None,
            Path::Avx2 => super::missing_avx2_fma(),
            Path::Avx512Vnni => super::missing_avx512_vnni(),
        }
    }
}

impl Path {
    /// Largest activation code this path's kernel takes without
    /// saturating; its activations are quantized to it.
    fn a_max(self) -> i32 {
        match self {
            Path::Avx2 => A_MAX_AVX2,
            Path::Scalar | Path::Avx512Vnni => A_MAX,
        }
    }

    /// Kernel tile: rows × panels.
    fn tile(self) -> (usize, usize) {
        match self {
            Path::Scalar => (4, 1),
            Path::Avx2 => (4, 1),
            Path::Avx512Vnni => (6, 4),
        }
    }
}

/// The int8 path this process runs.
pub(crate) fn dispatch() -> &'static Dispatch<Path> {
    static D: OnceLock<Dispatch<Path>> = OnceLock::new();
    super::once(&D)
}

/// `out (n, o) = start + x (n, k) · Wᵀ`, dequantized, then `epi.then` on
/// each finished tile (see [`Epilogue`]). Runs on rayon's threads when
/// there is enough work.
pub(crate) fn matmul_q(out: &mut [f32], x: &[f32], w: &QuantW, n: usize, epi: &Epilogue) {
    matmul_q_on(dispatch().path, out, x, w, n, epi);
}

/// `out (n, o) += x (n, k) · Wᵀ`: [`matmul_q`] starting from `out`.
pub(crate) fn matmul_acc_q(out: &mut [f32], x: &[f32], w: &QuantW, n: usize) {
    matmul_q(out, x, w, n, &Epilogue::ACC);
}

/// [`matmul_acc_q`] on a given path (which the CPU must have), with
/// activation codes `0..=a_max`.
#[cfg(test)]
pub(crate) fn matmul_acc_q_on(
    path: Path,
    a_max: i32,
    out: &mut [f32],
    x: &[f32],
    w: &QuantW,
    n: usize,
) {
    matmul_q_codes(path, a_max, out, x, w, n, &Epilogue::ACC);
}

/// [`matmul_q`] on a given path (which the CPU must have).
pub(crate) fn matmul_q_on(
    path: Path,
    out: &mut [f32],
    x: &[f32],
    w: &QuantW,
    n: usize,
    epi: &Epilogue,
) {
    matmul_q_codes(path, path.a_max(), out, x, w, n, epi)
}

/// [`matmul_q_on`] with activations quantized to `0..=a_max` (at most the
/// path's own [`Path::a_max`]).
fn matmul_q_codes(
    path: Path,
    a_max: i32,
    out: &mut [f32],
    x: &[f32],
    w: &QuantW,
    n: usize,
    epi: &Epilogue,
) {
    assert!(
        a_max > 0 && a_max <= path.a_max(),
        "activation codes 0..={a_max} on {}",
        path.name()
    );
    let (o, k) = (w.o, w.k);
    assert!(out.len() == n * o && x.len() == n * k, "matmul shapes");
    epi.check(n, o);
    if let Some(why) = path.missing() {
        panic!("int8 path {} unavailable: {why}", path.name());
    }
    // Below ~2M multiply-adds a thread hand-off costs more than it saves
    // (int8 runs several times faster than sgemm, whose bar is 1M).
    let parallel = rayon::current_num_threads() > 1 && n * o * k >= 1 << 21;
    // SAFETY: `path` was checked available above.
    let xq = unsafe { QuantX::new(path, a_max, x, n, k, w.groups, parallel && n * k >= 1 << 16) };
    let cols = path.tile().1;
    let col_blocks = (o / NR).div_ceil(cols);
    let row_blocks = n.div_ceil(MC);
    // Each task writes rows `rb*MC..` × its column block of `out`, through
    // one shared pointer.
    let dst = SendPtr(out.as_mut_ptr());
    let run = |t: usize| {
        let (rb, cb) = (t / col_blocks, t % col_blocks);
        let rows = rb * MC..((rb + 1) * MC).min(n);
        let panels = cb * cols..((cb + 1) * cols).min(o / NR);
        let mut emit = |r: usize, c0: usize, nr: usize, ldc: usize, acc: &[i32]| {
            let (colsum, scale) = (&w.colsum[c0..c0 + ldc], &w.scale[c0..c0 + ldc]);
            for i in 0..nr {
                let (s, z) = (xq.scale[r + i], xq.zero[r + i]);
                let at = (r + i) * o + c0;
                let start = match epi.start {
                    Start::Out => Start::Out,
                    Start::Bias(b) => Start::Bias(&b[c0..c0 + ldc]),
                    Start::ResidualBias(res, b) => {
                        Start::ResidualBias(&res[at..at + ldc], &b[c0..c0 + ldc])
                    }
                };
                // SAFETY: `out` is n × o and row r + i < n, columns
                // c0..c0 + ldc ≤ o; this task alone writes these rows of
                // these columns (tasks split rows and columns disjointly),
                // and `out` outlives the tasks.
                let d = unsafe { std::slice::from_raw_parts_mut(dst.get().add(at), ldc) };
                let acc = &acc[i * ldc..(i + 1) * ldc];
                // SAFETY: `path` was checked available above.
                unsafe { dequant_row_on(path, d, acc, colsum, scale, s, z, start) };
                if let Some(f) = epi.then {
                    f(d);
                }
            }
            // The next tile's rows of what the epilogue reads (`out` or the
            // residual) load while its sums are computed: for layers larger
            // than L2 that read otherwise stalls the epilogue.
            let ahead = match epi.start {
                Start::ResidualBias(res, _) => res.as_ptr(),
                Start::Out => dst.get().cast_const(),
                Start::Bias(_) => std::ptr::null(),
            };
            if !ahead.is_null() {
                for row in r + 2 * nr..(r + 3 * nr).min(rows.end) {
                    for line in (0..ldc).step_by(16) {
                        prefetch(ahead.wrapping_add(row * o + c0 + line));
                    }
                }
            }
        };
        // SAFETY: `path` was checked available above.
        unsafe { for_each_tile(path, &xq, w, rows.clone(), panels, &mut emit) };
    };
    let tasks = row_blocks * col_blocks;
    if parallel {
        (0..tasks).into_par_iter().for_each(run);
    } else {
        (0..tasks).for_each(run);
    }
}

/// A hint to load `p`'s cache line (no effect elsewhere than x86_64).
#[inline(always)]
fn prefetch(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and changes no state visible to the
    // program, whatever the address (SSE is part of x86_64).
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Run `path`'s kernel over `rows` × `panels`, one tile at a time (panels
/// outer, so the panel block stays in L1), and hand each tile's int32 sums
/// to `emit(first row, first column, rows, columns, sums)` (row-major, stride
/// = columns).
///
/// # Safety
/// The CPU has `path` (`path.missing()` is `None`).
unsafe fn for_each_tile(
    path: Path,
    xq: &QuantX,
    w: &QuantW,
    rows: Range<usize>,
    panels: Range<usize>,
    emit: &mut impl FnMut(usize, usize, usize, usize, &[i32]),
) {
    let (mr, mp) = path.tile();
    let mut buf = [0i32; MAX_R * MAX_P * NR];
    let mut p = panels.start;
    while p < panels.end {
        let np = (panels.end - p).min(mp);
        let wp = w.panels(p, np);
        let ldc = np * NR;
        let mut r = rows.start;
        while r < rows.end {
            let nr = (rows.end - r).min(mr);
            let x = &xq.q[r * xq.ld..(r + nr) * xq.ld];
            let c = &mut buf[..nr * ldc];
            kernel(path, c, ldc, x, xq.ld, wp, w.groups, nr, np);
            emit(r, p * NR, nr, ldc, c);
            r += nr;
        }
        p += np;
    }
}

/// `c[i][p*NR + l] = Σ_g Σ_t x[i][4g + t] · line(p, g)[4l + t]` for `rows`
/// rows and `np` panels (overwrites `c`).
///
/// # Safety
/// The CPU has `path`.
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(
    path: Path,
    c: &mut [i32],
    ldc: usize,
    x: &[u8],
    ldx: usize,
    w: &[Line],
    groups: usize,
    rows: usize,
    np: usize,
) {
    // The SIMD kernels rely on these bounds.
    let (mr, mp) = path.tile();
    assert!(
        (1..=mr).contains(&rows)
            && (1..=mp).contains(&np)
            && c.len() >= (rows - 1) * ldc + np * NR
            && x.len() >= (rows - 1) * ldx + groups * KG
            && w.len() >= np * groups,
        "int8 kernel bounds"
    );
    match path {
        Path::Scalar => scalar_tile(c, ldc, x, ldx, w, groups, rows, np),
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => {
            let (cp, xp, wp) = (c.as_mut_ptr(), x.as_ptr(), w.as_ptr());
            // SAFETY: the CPU has AVX2 (caller); the bounds were asserted
            // above; lines are 64-byte aligned.
            unsafe {
                match rows {
                    4 => avx2::tile::<4>(cp, ldc, xp, ldx, wp, groups),
                    3 => avx2::tile::<3>(cp, ldc, xp, ldx, wp, groups),
                    2 => avx2::tile::<2>(cp, ldc, xp, ldx, wp, groups),
                    _ => avx2::tile::<1>(cp, ldc, xp, ldx, wp, groups),
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        Path::Avx512Vnni => {
            let (cp, xp, wp) = (c.as_mut_ptr(), x.as_ptr(), w.as_ptr());
            // SAFETY: the CPU has AVX-512 F/BW/VNNI (caller); the bounds
            // were asserted above; lines are 64-byte aligned.
            unsafe {
                match rows {
                    6 => vnni::tiles::<6>(np, cp, ldc, xp, ldx, wp, groups),
                    5 => vnni::tiles::<5>(np, cp, ldc, xp, ldx, wp, groups),
                    4 => vnni::tiles::<4>(np, cp, ldc, xp, ldx, wp, groups),
                    3 => vnni::tiles::<3>(np, cp, ldc, xp, ldx, wp, groups),
                    2 => vnni::tiles::<2>(np, cp, ldc, xp, ldx, wp, groups),
                    _ => vnni::tiles::<1>(np, cp, ldc, xp, ldx, wp, groups),
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("int8 path {} on a non-x86_64 build", path.name()),
    }
}

/// The kernels' sums in plain integer loops (the reference).
#[allow(clippy::too_many_arguments)]
fn scalar_tile(
    c: &mut [i32],
    ldc: usize,
    x: &[u8],
    ldx: usize,
    w: &[Line],
    groups: usize,
    rows: usize,
    np: usize,
) {
    for i in 0..rows {
        let xi = &x[i * ldx..i * ldx + groups * KG];
        for p in 0..np {
            let mut acc = [0i32; NR];
            for (xg, line) in xi.chunks_exact(KG).zip(&w[p * groups..(p + 1) * groups]) {
                for (l, a) in acc.iter_mut().enumerate() {
                    for (t, &xv) in xg.iter().enumerate() {
                        *a += i32::from(xv) * i32::from(line.0[l * KG + t]);
                    }
                }
            }
            c[i * ldc + p * NR..i * ldc + (p + 1) * NR].copy_from_slice(&acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Line, KG, NR};
    use std::arch::x86_64::*;

    /// `R` rows × one panel: per line and row, a broadcast of the row's four
    /// codes, vpmaddubsw against each 32-byte half of the line (pairs of
    /// u8·i8 products in i16, ≤ 2·127·127, no saturation), vpmaddwd by ones
    /// (i16 pairs to i32) and an add.
    ///
    /// # Safety
    /// The CPU has AVX2; `c` has `R` rows of `NR` writable i32 at stride
    /// `ldc`; `x` has `R` rows of `4 · groups` bytes at stride `ldx`; `w` has
    /// `groups` 64-byte aligned lines.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile<const R: usize>(
        c: *mut i32,
        ldc: usize,
        x: *const u8,
        ldx: usize,
        w: *const Line,
        groups: usize,
    ) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_si256(); 2]; R];
        for g in 0..groups {
            let wl = w.add(g).cast::<__m256i>();
            let w0 = _mm256_load_si256(wl);
            let w1 = _mm256_load_si256(wl.add(1));
            for (i, a) in acc.iter_mut().enumerate() {
                let xv = _mm256_set1_epi32(x.add(i * ldx + g * KG).cast::<i32>().read_unaligned());
                let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(xv, w0), ones);
                let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(xv, w1), ones);
                a[0] = _mm256_add_epi32(a[0], p0);
                a[1] = _mm256_add_epi32(a[1], p1);
            }
        }
        for (i, a) in acc.iter().enumerate() {
            let ci = c.add(i * ldc);
            _mm256_storeu_si256(ci.cast(), a[0]);
            _mm256_storeu_si256(ci.add(NR / 2).cast(), a[1]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::{Line, KG, NR};
    use std::arch::x86_64::*;

    /// [`tile`] for `np` (1 to 4) panels.
    ///
    /// # Safety
    /// As for [`tile`] with `P = np`.
    pub(super) unsafe fn tiles<const R: usize>(
        np: usize,
        c: *mut i32,
        ldc: usize,
        x: *const u8,
        ldx: usize,
        w: *const Line,
        groups: usize,
    ) {
        match np {
            4 => tile::<R, 4>(c, ldc, x, ldx, w, groups),
            3 => tile::<R, 3>(c, ldc, x, ldx, w, groups),
            2 => tile::<R, 2>(c, ldc, x, ldx, w, groups),
            _ => tile::<R, 1>(c, ldc, x, ldx, w, groups),
        }
    }

    /// `R` rows × `P` panels in `R · P` zmm accumulators: per line, `P`
    /// weight loads, `R` broadcasts of four codes, `R · P` vpdpbusd.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and VNNI; `c` has `R` rows of `P · NR`
    /// writable i32 at stride `ldc`; `x` has `R` rows of `4 · groups` bytes
    /// at stride `ldx`; `w` has `P` panels of `groups` 64-byte aligned lines,
    /// one after the other.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile<const R: usize, const P: usize>(
        c: *mut i32,
        ldc: usize,
        x: *const u8,
        ldx: usize,
        w: *const Line,
        groups: usize,
    ) {
        let mut acc = [[_mm512_setzero_si512(); P]; R];
        for g in 0..groups {
            let mut wv = [_mm512_setzero_si512(); P];
            for (p, v) in wv.iter_mut().enumerate() {
                *v = _mm512_load_si512(w.add(p * groups + g).cast());
            }
            for (i, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_epi32(x.add(i * ldx + g * KG).cast::<i32>().read_unaligned());
                for (a, &wp) in a.iter_mut().zip(&wv) {
                    *a = _mm512_dpbusd_epi32(*a, xv, wp);
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            for (p, &v) in a.iter().enumerate() {
                _mm512_storeu_si512(c.add(i * ldc + p * NR).cast(), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::values;
    use super::*;

    /// Deterministic standard normal values (Box–Muller).
    fn gaussian(n: usize, seed: u32) -> Vec<f32> {
        let u = values(n + 1, seed);
        (0..n)
            .map(|i| {
                let u1 = (u[i] + 1.0) * 0.5 + 1e-7;
                let u2 = u[i + 1];
                (-2.0 * u1.ln()).sqrt() * (std::f32::consts::PI * u2).cos()
            })
            .collect()
    }

    /// The int32 sums (before zero-point correction) of `path` for all of
    /// `x · Wᵀ`, activations quantized to `0..=a_max`.
    fn accumulators(path: Path, a_max: i32, x: &[f32], w: &QuantW, n: usize) -> Vec<i32> {
        assert!(path.missing().is_none());
        // SAFETY: the path was checked available just above.
        let xq = unsafe { QuantX::new(path, a_max, x, n, w.k, w.groups, false) };
        let o = w.o;
        let mut acc = vec![i32::MIN; n * o];
        let mut emit = |r: usize, c0: usize, nr: usize, ldc: usize, t: &[i32]| {
            for i in 0..nr {
                acc[(r + i) * o + c0..(r + i) * o + c0 + ldc]
                    .copy_from_slice(&t[i * ldc..(i + 1) * ldc]);
            }
        };
        // SAFETY: as above.
        unsafe { for_each_tile(path, &xq, w, 0..n, 0..o / NR, &mut emit) };
        acc
    }

    /// The SIMD paths this CPU has; prints why the others are skipped.
    fn simd_paths() -> Vec<Path> {
        [Path::Avx2, Path::Avx512Vnni]
            .into_iter()
            .filter(|p| match p.missing() {
                None => true,
                Some(why) => {
                    eprintln!("SKIPPED int8 path {}: {why}", p.name());
                    false
                }
            })
            .collect()
    }

    const SHAPES: [(usize, usize, usize); 9] = [
        (1, 1, 16),
        (2, 3, 32),
        (7, 5, 48),
        (5, 64, 64),
        (13, 383, 80),
        (6, 384, 16),
        (97, 384, 112),
        (100, 130, 384),
        (193, 1536, 48),
    ];

    #[test]
    fn simd_accumulators_equal_the_scalar_reference() {
        let paths = simd_paths();
        for &(n, k, o) in &SHAPES {
            let x = values(n * k, 1 + n as u32);
            let wf = values(o * k, 7 + k as u32);
            let w = QuantW::new(&wf, o, k);
            let want = accumulators(Path::Scalar, A_MAX, &x, &w, n);
            // The reference against plain loops on unpacked codes (checks
            // the packing too).
            let mut xq = vec![0u8; k];
            for i in 0..n {
                quantize_row(&x[i * k..(i + 1) * k], &mut xq, A_MAX);
                for c in 0..o {
                    let inv = if w.scale[c] > 0.0 {
                        W_MAX as f32
                            / wf[c * k..(c + 1) * k]
                                .iter()
                                .fold(0f32, |m, v| m.max(v.abs()))
                    } else {
                        0.0
                    };
                    let dot: i32 = (0..k)
                        .map(|j| i32::from(xq[j]) * ((wf[c * k + j] * inv).round() as i32))
                        .sum();
                    assert_eq!(
                        want[i * o + c],
                        dot,
                        "scalar sum [{i}][{c}] at n={n} k={k} o={o}"
                    );
                }
            }
            for &p in &paths {
                // Each path against the reference at its own code range.
                let want = accumulators(Path::Scalar, p.a_max(), &x, &w, n);
                let got = accumulators(p, p.a_max(), &x, &w, n);
                assert!(
                    got == want,
                    "{} vs scalar sums differ at n={n} k={k} o={o}",
                    p.name()
                );
            }
        }
    }

    #[test]
    fn simd_outputs_are_bit_identical_including_threads() {
        let paths = simd_paths();
        for &(n, k, o) in &SHAPES {
            let x = values(n * k, 3 + n as u32);
            let w = QuantW::new(&values(o * k, 5 + k as u32), o, k);
            for &p in &paths {
                let mut want = values(n * o, 11);
                matmul_acc_q_on(Path::Scalar, p.a_max(), &mut want, &x, &w, n);
                let mut got = values(n * o, 11);
                matmul_acc_q_on(p, p.a_max(), &mut got, &x, &w, n);
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{} vs scalar outputs differ at n={n} k={k} o={o}",
                    p.name()
                );
            }
        }
    }

    #[test]
    fn worst_case_inputs_do_not_saturate() {
        // Every activation at the top code and weights ±127 with equal signs
        // in each pair: AVX2's vpmaddubsw would clip 8-bit codes
        // (2·255·127 > 32767), so its codes stop at 127.
        let paths = simd_paths();
        let (n, k, o) = (7, 388, 64);
        for sign_x in [1.0f32, -1.0] {
            let x = vec![3.0 * sign_x; n * k];
            let w: Vec<f32> = (0..o * k)
                .map(|i| if (i / k) % 2 == 0 { 0.5 } else { -0.5 })
                .collect();
            let w = QuantW::new(&w, o, k);
            for &p in [Path::Scalar].iter().chain(&paths) {
                let top = if sign_x > 0.0 { p.a_max() } else { 0 };
                for (i, &a) in accumulators(p, p.a_max(), &x, &w, n).iter().enumerate() {
                    let c = i % o;
                    let sign = if c % 2 == 0 { 1 } else { -1 };
                    let want = sign * top * W_MAX * k as i32;
                    assert_eq!(a, want, "{} sum [{i}] (saturated?)", p.name());
                }
            }
            // And the dequantized product is exact up to float rounding.
            for &p in Path::ALL.iter().filter(|p| p.missing().is_none()) {
                let mut out = vec![0f32; n * o];
                matmul_acc_q_on(p, p.a_max(), &mut out, &x, &w, n);
                for (i, &v) in out.iter().enumerate() {
                    let sign = if (i % o) % 2 == 0 { 1.0 } else { -1.0 };
                    let exact = sign * 1.5 * sign_x * k as f32;
                    assert!(
                        (v - exact).abs() <= 1e-5 * exact.abs(),
                        "{} [{i}]: {v} vs {exact}",
                        p.name()
                    );
                }
            }
        }
    }

    #[test]
    fn simd_quantizers_give_the_reference_codes() {
        let paths = simd_paths();
        let mut rows: Vec<Vec<f32>> = [1, 3, 15, 16, 17, 31, 32, 33, 100, 384, 1537]
            .iter()
            .map(|&k| values(k, k as u32).iter().map(|v| v * 5.0 - 1.0).collect())
            .collect();
        rows.push(vec![0.0; 40]);
        rows.push(vec![-0.0; 40]);
        rows.push(vec![2.5; 37]);
        rows.push(vec![-2.5; 37]);
        let mut odd = values(70, 9);
        odd[3] = f32::NAN;
        odd[40] = -0.0;
        odd[66] = f32::INFINITY;
        rows.push(odd.clone());
        odd[66] = 1.0;
        rows.push(odd);
        for x in &rows {
            // Every build at both code ranges.
            for (&p, a_max) in paths.iter().flat_map(|p| [(p, A_MAX), (p, A_MAX_AVX2)]) {
                let mut want = vec![0u8; x.len()];
                let wp = quantize_row(x, &mut want, a_max);
                let mut got = vec![7u8; x.len()];
                // SAFETY: `simd_paths` lists only paths this CPU has.
                let gp = unsafe { quantize_row_on(p, x, &mut got, a_max) };
                assert!(
                    got == want && gp.0.to_bits() == wp.0.to_bits() && gp.1 == wp.1,
                    "{} quantizes a row of {} differently",
                    p.name(),
                    x.len()
                );
            }
        }
    }

    #[test]
    fn quantization_codes() {
        // Weights: the channel's largest magnitude maps to ±W_MAX, 0 to 0.
        let w = [0.0, -2.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0];
        let mut wm = vec![0f32; 16 * 8];
        wm[..8].copy_from_slice(&w);
        let q = QuantW::new(&wm, 16, 8);
        let codes: Vec<i32> = (0..8).map(|j| i32::from(q.lines[j / 4].0[j % 4])).collect();
        let (half, quarter) = ((W_MAX + 1) / 2, (W_MAX + 2) / 4);
        assert_eq!(codes, [0, -W_MAX, half, quarter, 0, 0, 0, 0]);
        assert_eq!(q.colsum[0], -W_MAX + half + quarter);
        assert_eq!(q.scale[0], 2.0 / W_MAX as f32);
        assert_eq!((q.scale[1], q.colsum[1]), (0.0, 0));
        // Activations: 0 is exact, the range ends map to 0 and the top code.
        for top in [A_MAX, A_MAX_AVX2] {
            let x = [-1.0, 0.0, 3.0, 1.0];
            let mut c = [9u8; 4];
            let (s, z) = quantize_row(&x, &mut c, top);
            let z_want = (top + 2) / 4;
            assert_eq!((s, z), (4.0 / top as f32, z_want));
            let c: Vec<i32> = c.iter().map(|&v| i32::from(v)).collect();
            assert_eq!(c, [0, z_want, top, 2 * z_want]);
            let mut c = [9u8; 4];
            // A zero row adds nothing.
            assert_eq!(quantize_row(&[0.0; 3], &mut c[..3], top), (0.0, 0));
            // Non-finite input: no panic.
            let _ = quantize_row(&[f32::NAN, f32::INFINITY, 1.0], &mut c[..3], top);
        }
    }

    /// Gaussian x and W: relative RMS error of the int8 product against the
    /// f64 product. Rounding errors are uniform and independent: an
    /// activation's has variance `s_i²/12`, a weight's `scale_c²/12`, so
    /// output `(i, c)`'s error has variance `≈ s_i²/12 · Σ_j W[c][j]² +
    /// scale_c²/12 · Σ_j x[i][j]²`. With `s ≈ 6–7σ/T` (the range of a
    /// Gaussian row of 384–1536 over the path's top code) and `scale ≈
    /// 3–3.4σ/W_MAX` that is a relative RMS error of ≈ 1.0–1.15 % at 8 bits,
    /// 1.5–1.85 % at 7. Assert the measured error is within 20 % of
    /// that prediction and < 2 %, and every error < 10 % of the outputs' RMS
    /// (> 5.5 standard deviations of the error).
    #[test]
    fn close_to_the_float_product() {
        for &(n, k, o) in &[(64, 384, 384), (33, 1536, 64), (40, 100, 32)] {
            let x = gaussian(n * k, 21 + k as u32);
            let wf = gaussian(o * k, 41 + o as u32);
            let w = QuantW::new(&wf, o, k);
            let mut got = vec![0f32; n * o];
            matmul_acc_q(&mut got, &x, &w, n);
            let sq = |v: &[f32]| v.iter().map(|&a| f64::from(a) * f64::from(a)).sum::<f64>();
            let (mut se, mut sy, mut emax, mut predicted) = (0f64, 0f64, 0f64, 0f64);
            for i in 0..n {
                let xi = &x[i * k..(i + 1) * k];
                let a_max = dispatch().path.a_max();
                let s_i = f64::from(quantize_row(xi, &mut vec![0; k], a_max).0);
                for c in 0..o {
                    let wc = &wf[c * k..(c + 1) * k];
                    let y: f64 = xi
                        .iter()
                        .zip(wc)
                        .map(|(&a, &b)| f64::from(a) * f64::from(b))
                        .sum();
                    let e = f64::from(got[i * o + c]) - y;
                    se += e * e;
                    sy += y * y;
                    emax = emax.max(e.abs());
                    let sw = f64::from(w.scale[c]);
                    predicted += (s_i * s_i * sq(wc) + sw * sw * sq(xi)) / 12.0;
                }
            }
            let rms_y = (sy / (n * o) as f64).sqrt();
            let (rel, want) = ((se / sy).sqrt(), (predicted / sy).sqrt());
            eprintln!(
                "int8 {} n={n} k={k} o={o}: relative RMS error {:.3} % (predicted {:.3} %), max {:.3} % of RMS",
                dispatch().path.name(),
                rel * 100.0,
                want * 100.0,
                emax / rms_y * 100.0
            );
            assert!(rel < 0.02, "relative RMS error {rel}");
            assert!(
                (rel / want - 1.0).abs() < 0.2,
                "error {rel} vs predicted {want}"
            );
            assert!(emax < 0.10 * rms_y, "max error {emax} vs RMS {rms_y}");
        }
    }

    /// The dispatch rule (tested in general in `kernels`) on this family:
    /// a CPU without VNNI runs AVX2, one without SIMD the scalar loops.
    #[test]
    fn dispatch_falls_back_with_a_reason() {
        use super::super::choose;
        let no_vnni = |p: Path| (p == Path::Avx512Vnni).then_some("no VNNI here");
        let d = choose(Some("avx512vnni"), no_vnni);
        assert_eq!(d.path, Path::Avx2);
        assert!(d.note.unwrap().contains("no VNNI here"));
        assert_eq!(choose(None, no_vnni).path, Path::Avx2);
        let bare = |p: Path| (p != Path::Scalar).then_some("no SIMD here");
        for req in [None, Some("avx2"), Some("avx512vnni")] {
            assert_eq!(choose(req, bare).path, Path::Scalar);
        }
        let d = choose(Some("sse9"), Path::missing);
        assert!(d.note.unwrap().contains("scalar|avx2|avx512vnni"));
    }

    #[test]
    fn only_multiples_of_the_panel_width_pack() {
        assert!(QuantW::fits(384) && QuantW::fits(1536) && QuantW::fits(16));
        assert!(!QuantW::fits(0) && !QuantW::fits(77));
    }
}
