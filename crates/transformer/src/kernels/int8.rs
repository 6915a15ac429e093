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
//! * AMX (Intel's tile unit, with AMX-INT8): 16 rows × 4 panels in four
//!   int32 tiles of 16 × 16; per 16 lines (64 inputs) one load of the
//!   rows' codes, 4 of weights and 4 `tdpbusd` ([`amx`]); two row blocks ×
//!   two panels (each load feeding two products) measured 5–10% slower.
//!   Products of fewer than [`AMX_MIN_ROWS`] rows, or whose `k` is not a
//!   multiple of 64 (attention's keys, 32 wide in MiniLM), run on the
//!   AVX-512 VNNI tiles instead ([`Path::for_product`]).
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
//! bit-identical across paths. On AVX-512 VNNI the epilogue runs on the
//! kernel's accumulators in registers (no int32 tile in memory); elsewhere
//! (AMX included, with the AVX-512 build) on the tile the kernel stored. It
//! prefetches the rows it reads two tiles ahead: on layers larger than L2
//! reading the residual stalled it.
//!
//! # Activations between products
//! [`Codes`] are a product's quantized input rows, kept by the caller and
//! written by whatever produces them: [`Codes::quantize`] from an fp32
//! matrix, a LayerNorm row by row ([`Codes::blocks_mut`]), or another
//! product: [`matmul_act_codes`] (FFN-in: GELU, then FFN-out's codes) and
//! [`matmul_qkv_codes`] (QKV: attention's operands) run tasks that own
//! whole rows, whose fp32 outputs stay in an L2-sized scratch block.
//!
//! # Attention
//! Its products take one operand as weights, packed per call: keys per key
//! ([`QuantW::pack_rows_of`]) and values per head dimension
//! ([`QuantW::pack_columns_of`]), from rows quantized symmetrically per token
//! ([`SymRows`]). A value row's step cannot be factored out of a sum over
//! tokens, so it goes into the probabilities instead: row `i`'s codes
//! quantize `e_ij · step_j` (the softmax's exponentials), and its scale
//! carries `1 / Σ_j e_ij` ([`CodeRows::set_probabilities`]).
//!
//! Work is split into tasks of [`MC`] rows × one kernel-width column block,
//! run on rayon when the product is large enough. The kernel is chosen once
//! per process: the best the CPU has, or `CASETAG_INT8_PATH=scalar|avx2|
//! avx512vnni|amx`; a requested path the CPU lacks falls back to the best
//! one below it, with the reason (the rule of [`crate::kernels`]).

use std::ops::Range;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::vmath::ROUND;
use super::{Dispatch, Epilogue, KernelPath, SendPtr, Start, Then};

#[cfg(target_arch = "x86_64")]
mod amx;

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
/// The AMX kernel's tile: one tile of rows × four accumulator tiles.
const AMX_ROWS: usize = 16;
const AMX_PANELS: usize = 4;
const _: () = assert!(MC.is_multiple_of(AMX_ROWS));
/// Largest kernel tile, rows × panels.
const MAX_R: usize = AMX_ROWS;
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
        // Per channel: the step (an all-zero channel keeps 0 and codes 0)
        // and the codes.
        let rows: Vec<(f32, Vec<i8>)> = w
            .par_chunks_exact(k)
            .map(|row| {
                let (s, inv) = step(row.iter().fold(0f32, |m, v| m.max(v.abs())));
                let mut codes = vec![0i8; k];
                match u {
                    Some(u) => super::gptq::round_row(row, s, W_MAX, u, &mut codes),
                    None => {
                        for (q, &v) in codes.iter_mut().zip(row) {
                            *q = nearest(v, inv);
                        }
                    }
                }
                (s, codes)
            })
            .collect();
        let (scale, codes): (Vec<f32>, Vec<Vec<i8>>) = rows.into_iter().unzip();
        Self::from_codes(&codes.concat(), &scale, o, k)
    }

    /// A matrix from its codes (`o × k`, row-major) and each output
    /// channel's step, as [`QuantW::codes`] gives them back.
    pub fn from_codes(codes: &[i8], scale: &[f32], o: usize, k: usize) -> Self {
        assert!(
            Self::fits(o) && k > 0 && codes.len() == o * k && scale.len() == o,
            "int8 codes shape {o}×{k}"
        );
        let mut w = Self::default();
        w.reset(o, k);
        for (c, (row, &s)) in codes.chunks_exact(k).zip(scale).enumerate() {
            w.put_channel(c, s, row);
        }
        w
    }

    /// The codes (`o × k`, row-major) and each output channel's step.
    pub fn codes(&self) -> (Vec<i8>, Vec<f32>) {
        let mut codes = vec![0i8; self.o * self.k];
        for (c, row) in codes.chunks_exact_mut(self.k).enumerate() {
            let (p, l) = (c / NR, c % NR);
            let panel = &self.lines[p * self.groups..(p + 1) * self.groups];
            for (j, q) in row.iter_mut().enumerate() {
                *q = panel[j / KG].0[l * KG + j % KG];
            }
        }
        (codes, self.scale.clone())
    }

    /// Output channels and inputs.
    pub fn dims(&self) -> (usize, usize) {
        (self.o, self.k)
    }

    /// Empty, `o` channels of `k` inputs (all codes and scales 0; `o` a
    /// multiple of [`NR`]), reusing the allocations.
    fn reset(&mut self, o: usize, k: usize) {
        assert!(k <= MAX_K, "k = {k} > {MAX_K} could overflow int32 sums");
        self.o = o;
        self.k = k;
        self.groups = k.div_ceil(KG);
        self.lines.clear();
        self.lines.resize(o / NR * self.groups, Line([0; NR * KG]));
        self.scale.clear();
        self.scale.resize(o, 0.0);
        self.colsum.clear();
        self.colsum.resize(o, 0);
    }

    /// Channel `c`'s step and codes, packed.
    fn put_channel(&mut self, c: usize, step: f32, codes: &[i8]) {
        self.scale[c] = step;
        let (p, l) = (c / NR, c % NR);
        let panel = &mut self.lines[p * self.groups..(p + 1) * self.groups];
        let lanes = l * KG..(l + 1) * KG;
        let mut fours = codes.chunks_exact(KG);
        for (line, four) in panel.iter_mut().zip(&mut fours) {
            line.0[lanes.clone()].copy_from_slice(four);
        }
        let tail = fours.remainder();
        if let Some(line) = panel.get_mut(codes.len() / KG) {
            line.0[l * KG..l * KG + tail.len()].copy_from_slice(tail);
        }
        self.colsum[c] = codes.iter().map(|&q| i32::from(q)).sum();
    }

    /// Attention's keys as weights, packed again in place (the
    /// allocations are kept for the next call): channel `c` is row
    /// `rows.start + c` of `codes`, its inputs the columns `cols` (one
    /// head's), its step the row's. Channels are padded with zeros up to a
    /// multiple of [`NR`] (their outputs are 0).
    pub(crate) fn pack_rows_of(&mut self, codes: &SymRows, rows: Range<usize>, cols: Range<usize>) {
        let k = cols.len();
        self.reset(rows.len().div_ceil(NR) * NR, k);
        for (c, r) in rows.enumerate() {
            let at = r * codes.k + cols.start;
            self.put_channel(c, codes.scale[r], &codes.q[at..at + k]);
        }
    }

    /// Attention's values as weights, packed again in place: channel `c` is
    /// column `cols.start + c` of `codes`, its inputs the rows `rows` (the
    /// tokens), every step 1: the rows' own steps are left to the other
    /// operand ([`CodeRows::set_probabilities`] takes them).
    pub(crate) fn pack_columns_of(
        &mut self,
        codes: &SymRows,
        rows: Range<usize>,
        cols: Range<usize>,
    ) {
        let (o, k, groups) = (cols.len(), rows.len(), rows.len().div_ceil(KG));
        self.reset(o.div_ceil(NR) * NR, k);
        self.scale[..o].fill(1.0);
        let row = |j: usize| {
            let at = (rows.start + j) * codes.k + cols.start;
            &codes.q[at..at + o]
        };
        for j in 0..k {
            for (sum, &q) in self.colsum.iter_mut().zip(row(j)) {
                *sum += i32::from(q);
            }
        }
        let whole = o / NR * NR;
        for g in 0..groups {
            // Four inputs' codes, interleaved into the panels' line `g`
            // (past `k`, zeros).
            let four: [&[i8]; KG] = std::array::from_fn(|t| match g * KG + t {
                j if j < k => row(j),
                _ => &[0; 64][..o.min(64)],
            });
            if o <= 64 {
                for p in 0..whole / NR {
                    let line = &mut self.lines[p * groups + g];
                    interleave(&four.map(|r| &r[p * NR..(p + 1) * NR]), line);
                }
            }
            let from = if o <= 64 { whole } else { 0 };
            for c in from..o {
                let bytes = four.map(|r| r.get(c).copied().unwrap_or(0));
                let (p, l) = (c / NR, c % NR);
                self.lines[p * groups + g].0[l * KG..(l + 1) * KG].copy_from_slice(&bytes);
            }
        }
    }

    /// Output channels (a multiple of [`NR`]).
    pub(crate) fn width(&self) -> usize {
        self.o
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

impl Default for QuantW {
    /// No channels.
    fn default() -> Self {
        Self {
            o: 0,
            k: 0,
            groups: 0,
            lines: Vec::new(),
            scale: Vec::new(),
            colsum: Vec::new(),
        }
    }
}

/// A channel's step and its inverse for its largest |value| (an all-zero
/// channel keeps 0 and codes 0).
fn step(amax: f32) -> (f32, f32) {
    if amax > 0.0 {
        (amax / W_MAX as f32, W_MAX as f32 / amax)
    } else {
        (0.0, 0.0)
    }
}

/// A weight's code: the nearest step, in `-W_MAX..=W_MAX`.
fn nearest(v: f32, inv: f32) -> i8 {
    (v * inv).round().clamp(-W_MAX as f32, W_MAX as f32) as i8
}

/// `round(t)` (ties to even) for `t` already clamped to `[-2^22, 2^22]`,
/// through [`ROUND`]'s bits (a float-to-int cast did not vectorize).
#[inline(always)]
fn round_small(t: f32) -> i32 {
    (t + ROUND).to_bits() as i32 - ROUND.to_bits() as i32
}

/// A weight's code for operands quantized at run time: `v · inv` to the
/// nearest integer (ties to even) in `-W_MAX..=W_MAX` (NaN to `-W_MAX`).
#[inline(always)]
fn run_time_code(v: f32, inv: f32) -> i8 {
    let top = W_MAX as f32;
    let t = v * inv;
    let t = if t > -top { t } else { -top };
    let t = if t < top { t } else { top };
    round_small(t) as i8
}

/// The largest |value| of `v` (0 for none; NaN is skipped), in [`L`]
/// lanes.
#[inline(always)]
fn abs_max(v: &[f32]) -> f32 {
    let mut lanes = [0f32; L];
    let mut chunks = v.chunks_exact(L);
    for c in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            let a = x.abs();
            *m = if a > *m { a } else { *m };
        }
    }
    let tail = chunks.remainder().iter().map(|x| x.abs());
    tail.chain(lanes)
        .fold(0f32, |m, a| if a > m { a } else { m })
}

/// One line from four inputs' codes for a panel's [`NR`] columns: byte `4l
/// + t` is `rows[t][l]`.
#[inline]
fn interleave(rows: &[&[i8]; KG], line: &mut Line) {
    let rows = rows.map(|r| &r[..NR]);
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        // SAFETY: SSE2 is part of x86_64; every row holds NR = 16 bytes
        // (sliced above) and the line 64.
        unsafe {
            let [a, b, c, d] = rows.map(|r| _mm_loadu_si128(r.as_ptr().cast()));
            let (ab_lo, ab_hi) = (_mm_unpacklo_epi8(a, b), _mm_unpackhi_epi8(a, b));
            let (cd_lo, cd_hi) = (_mm_unpacklo_epi8(c, d), _mm_unpackhi_epi8(c, d));
            let out = line.0.as_mut_ptr().cast::<__m128i>();
            _mm_storeu_si128(out, _mm_unpacklo_epi16(ab_lo, cd_lo));
            _mm_storeu_si128(out.add(1), _mm_unpackhi_epi16(ab_lo, cd_lo));
            _mm_storeu_si128(out.add(2), _mm_unpacklo_epi16(ab_hi, cd_hi));
            _mm_storeu_si128(out.add(3), _mm_unpackhi_epi16(ab_hi, cd_hi));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (l, bytes) in line.0.chunks_exact_mut(KG).enumerate() {
        for (t, b) in bytes.iter_mut().enumerate() {
            *b = rows[t][l];
        }
    }
}

/// One row quantized symmetrically: codes `round(x / s)` in
/// `-W_MAX..=W_MAX` (ties to even) for `s = max |x| / W_MAX`; returns `s`
/// (0 for a row of zeros).
#[inline(always)]
fn symmetric_row(x: &[f32], q: &mut [i8]) -> f32 {
    let (s, inv) = step(abs_max(x));
    for (d, &v) in q.iter_mut().zip(x) {
        *d = run_time_code(v, inv);
    }
    s
}

/// Probability codes against weighted values: `x_j = e_j · w_j` (the
/// softmax's exponentials times each value row's step), `q_j = round(x_j ·
/// top / max x)` (zero point 0; clamped, NaN to 0); returns `max x`.
#[inline(always)]
fn probability_codes(e: &[f32], w: &[f32], q: &mut [u8], top: f32) -> f32 {
    let mut lanes = [0f32; L];
    let mut chunks = e.chunks_exact(L).zip(w.chunks_exact(L));
    for (e, w) in &mut chunks {
        for ((m, &e), &w) in lanes.iter_mut().zip(e).zip(w) {
            let x = e * w;
            *m = if x > *m { x } else { *m };
        }
    }
    let whole = e.len() / L * L;
    let tail = e[whole..].iter().zip(&w[whole..]).map(|(&e, &w)| e * w);
    let max = tail
        .chain(lanes)
        .fold(0f32, |m, x| if x > m { x } else { m });
    let inv = if max > 0.0 { top / max } else { 0.0 };
    for ((d, &e), &w) in q.iter_mut().zip(e).zip(w) {
        let t = e * w * inv;
        let t = if t > 0.0 { t } else { 0.0 };
        let t = if t < top { t } else { top };
        *d = round_small(t) as u8;
    }
    max
}

/// Rows quantized symmetrically, one step per row (codes in
/// `-W_MAX..=W_MAX`): attention's keys and values, which its products take
/// as weights. Row `i` is `q[i · k..(i + 1) · k]`, its step `scale[i]`.
#[derive(Default)]
pub(crate) struct SymRows {
    k: usize,
    q: Vec<i8>,
    scale: Vec<f32>,
}

impl SymRows {
    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.q.capacity() + self.scale.capacity() * 4
    }

    /// Room for `n` rows of `k` (contents unspecified until written).
    fn reset(&mut self, n: usize, k: usize) {
        self.k = k;
        self.q.resize(n * k, 0);
        self.scale.resize(n, 0.0);
    }

    /// The rows in blocks of `rows`, each written by [`SymBlock::set`].
    fn blocks_mut(&mut self, rows: usize) -> impl IndexedParallelIterator<Item = SymBlock<'_>> {
        let (k, path) = (self.k, dispatch().path);
        self.q
            .par_chunks_mut(rows * k)
            .zip(self.scale.par_chunks_mut(rows))
            .map(move |(q, scale)| SymBlock { path, k, q, scale })
    }

    /// Rows `rows` as one block.
    #[cfg(test)]
    fn block(&mut self, rows: Range<usize>) -> SymBlock<'_> {
        SymBlock {
            path: dispatch().path,
            k: self.k,
            q: &mut self.q[rows.start * self.k..rows.end * self.k],
            scale: &mut self.scale[rows],
        }
    }

    /// Row steps `rows`.
    pub(crate) fn steps(&self, rows: Range<usize>) -> &[f32] {
        &self.scale[rows]
    }
}

/// A block of [`SymRows`], writable on its own thread.
pub(crate) struct SymBlock<'a> {
    path: Path,
    k: usize,
    q: &'a mut [i8],
    scale: &'a mut [f32],
}

impl SymBlock<'_> {
    /// Quantize `x` (one row of `k`) into row `i`.
    fn set(&mut self, i: usize, x: &[f32]) {
        assert_eq!(x.len(), self.k, "a row of {} values", self.k);
        let q = &mut self.q[i * self.k..(i + 1) * self.k];
        // SAFETY: `path` is the process's int8 path, which the CPU has.
        self.scale[i] = unsafe { symmetric_row_on(self.path, x, q) };
    }
}

/// Activation rows quantized for a product, on one path: row `i`'s codes
/// are `q[i * ld..i * ld + k]` (`ld = 4⌈k/4⌉`; the bytes past `k` meet zero
/// weights, so their value never matters), with its scale and zero point.
///
/// A forward keeps its `Codes` between products and calls: the producer of
/// a layer's input (a LayerNorm, the FFN-in product) writes the codes
/// directly, row by row while the row is in cache, instead of an fp32
/// matrix that a separate pass reads again ([`Codes::blocks_mut`],
/// [`matmul_act_codes`]).
pub(crate) struct Codes {
    /// The path whose kernel reads these codes; the CPU has it (every
    /// constructor checks).
    path: Path,
    a_max: i32,
    n: usize,
    k: usize,
    ld: usize,
    q: Vec<u8>,
    scale: Vec<f32>,
    zero: Vec<i32>,
}

impl Default for Codes {
    /// No rows, for the path this process runs.
    fn default() -> Self {
        let path = dispatch().path;
        Self::on(path, path.a_max())
    }
}

impl Codes {
    /// No rows, for `path` with codes `0..=a_max`.
    ///
    /// # Panics
    /// If the CPU lacks `path`, or `a_max` is not in `1..=path.a_max()`.
    fn on(path: Path, a_max: i32) -> Self {
        if let Some(why) = path.missing() {
            panic!("int8 path {} unavailable: {why}", path.name());
        }
        assert!(
            a_max > 0 && a_max <= path.a_max(),
            "activation codes 0..={a_max} on {}",
            path.name()
        );
        Self {
            path,
            a_max,
            n: 0,
            k: 0,
            ld: 0,
            q: Vec::new(),
            scale: Vec::new(),
            zero: Vec::new(),
        }
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.q.capacity() + (self.scale.capacity() + self.zero.capacity()) * 4
    }

    /// Room for `n` rows of `k` inputs (contents unspecified until written).
    pub(crate) fn reset(&mut self, n: usize, k: usize) {
        assert!(k <= MAX_K, "int8 inputs of width {k} (at most {MAX_K})");
        self.n = n;
        self.k = k;
        self.ld = k.div_ceil(KG) * KG;
        self.q.resize(n * self.ld, 0);
        self.scale.resize(n, 0.0);
        self.zero.resize(n, 0);
    }

    /// Quantize `x` (`n × k`), on rayon's threads when `parallel`.
    pub(crate) fn quantize(&mut self, x: &[f32], n: usize, k: usize, parallel: bool) {
        assert_eq!(x.len(), n * k, "quantize shapes");
        self.reset(n, k);
        if k == 0 {
            return;
        }
        let job = |(mut b, xs): (CodeRows, &[f32])| {
            for (i, xr) in xs.chunks_exact(k).enumerate() {
                b.set(i, xr);
            }
        };
        if parallel {
            let rows = ROWS_PER_BLOCK;
            self.blocks_mut(rows)
                .zip(x.par_chunks(rows * k))
                .for_each(job);
        } else {
            job((self.rows_mut(0..n), x));
        }
    }

    /// The rows in blocks of `rows` (the last one shorter), to be written in
    /// parallel: each block's [`CodeRows::set`] quantizes its rows.
    pub(crate) fn blocks_mut(
        &mut self,
        rows: usize,
    ) -> impl IndexedParallelIterator<Item = CodeRows<'_>> {
        let (path, a_max, k, ld) = (self.path, self.a_max, self.k, self.ld);
        self.q
            .par_chunks_mut(rows * ld)
            .zip(self.scale.par_chunks_mut(rows))
            .zip(self.zero.par_chunks_mut(rows))
            .map(move |((q, scale), zero)| CodeRows {
                path,
                a_max,
                k,
                ld,
                q,
                scale,
                zero,
            })
    }

    /// Rows `rows` as one block.
    pub(crate) fn rows_mut(&mut self, rows: Range<usize>) -> CodeRows<'_> {
        let ld = self.ld;
        CodeRows {
            path: self.path,
            a_max: self.a_max,
            k: self.k,
            ld,
            q: &mut self.q[rows.start * ld..rows.end * ld],
            scale: &mut self.scale[rows.clone()],
            zero: &mut self.zero[rows],
        }
    }
}

/// Rows of [`Codes`] as a product reads them: all of them, or a block of
/// rows and columns (one attention head's queries) in place.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    path: Path,
    n: usize,
    k: usize,
    ld: usize,
    /// Row `i`'s codes start at `q[i · ld]`.
    q: &'a [u8],
    scale: &'a [f32],
    zero: &'a [i32],
}

impl Codes {
    /// Every row.
    pub(crate) fn view(&self) -> View<'_> {
        self.head(0..self.n, 0..self.k)
    }

    /// Rows `rows`, columns `cols` (a multiple of 4 wide, at a multiple of 4,
    /// or ending at `k`).
    pub(crate) fn head(&self, rows: Range<usize>, cols: Range<usize>) -> View<'_> {
        assert!(
            rows.end <= self.n && cols.end <= self.k,
            "rows and columns of the codes"
        );
        assert!(
            cols.start.is_multiple_of(KG),
            "a view starts at a group of {KG} codes"
        );
        View {
            path: self.path,
            n: rows.len(),
            k: cols.len(),
            ld: self.ld,
            q: &self.q[rows.start * self.ld + cols.start..],
            scale: &self.scale[rows.clone()],
            zero: &self.zero[rows],
        }
    }
}

/// Rows per block when [`Codes::quantize`] runs in parallel.
const ROWS_PER_BLOCK: usize = 32;

/// A block of [`Codes`] rows, writable on its own thread.
pub(crate) struct CodeRows<'a> {
    path: Path,
    a_max: i32,
    k: usize,
    ld: usize,
    q: &'a mut [u8],
    scale: &'a mut [f32],
    zero: &'a mut [i32],
}

impl CodeRows<'_> {
    /// Row `i` from a softmax before its division
    /// ([`super::vmath::exp_rows`]): `e` (`k` values in `[0, 1]`) with its
    /// sum, against values whose rows have the steps `steps` (a
    /// [`SymRows`]' packed with [`QuantW::pack_columns_of`], steps 1). The
    /// codes quantize `e_j · steps_j` (zero point 0), and the row's scale
    /// carries the division: the product with them is the product of the
    /// probabilities `e / sum` with the values.
    pub(crate) fn set_probabilities(&mut self, i: usize, e: &[f32], sum: f32, steps: &[f32]) {
        assert!(
            e.len() == self.k && steps.len() == self.k,
            "a row of {} values",
            self.k
        );
        let top = self.a_max as f32;
        let q = &mut self.q[i * self.ld..(i + 1) * self.ld];
        // SAFETY: `path` is available: every `Codes` constructor checks.
        let max = unsafe { probability_codes_on(self.path, e, steps, q, top) };
        self.scale[i] = max / (top * sum);
        self.zero[i] = 0;
    }

    /// Quantize `x` (one row of `k` values) into this block's row `i`.
    pub(crate) fn set(&mut self, i: usize, x: &[f32]) {
        assert_eq!(x.len(), self.k, "a row of {} values", self.k);
        let q = &mut self.q[i * self.ld..(i + 1) * self.ld];
        // SAFETY: `path` is available: every `Codes` constructor checks.
        let (s, z) = unsafe { quantize_row_on(self.path, x, q, self.a_max) };
        self.scale[i] = s;
        self.zero[i] = z;
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
#[inline(always)]
fn row_params(lo: &[f32; L], hi: &[f32; L], top: f32) -> Option<(f32, f32, f32, f32)> {
    // The lanes hold no NaN (their selects skip it) and both hold 0, so a
    // tree of selects gives the row's extremes (a chain of sixteen
    // dependent selects cost more than the rest of a short row).
    let lo = fold_lanes(*lo, |a, b| if b < a { b } else { a });
    let hi = fold_lanes(*hi, |a, b| if b > a { b } else { a });
    let range = hi - lo;
    if !(range > 0.0 && range.is_finite()) {
        return None;
    }
    let s = range / top;
    let inv = top / range;
    let z = (-lo * inv).round().clamp(0.0, top);
    Some((s, inv, z, z + 0.5))
}

/// `pick` over the lanes by halves: lane `i` against lane `i + L/2`, and so
/// on down to one.
#[inline(always)]
fn fold_lanes(mut v: [f32; L], pick: impl Fn(f32, f32) -> f32) -> f32 {
    let mut half = L / 2;
    while half > 0 {
        for i in 0..half {
            v[i] = pick(v[i], v[i + half]);
        }
        half /= 2;
    }
    v[0]
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
        Start::Zero => out.iter_mut().zip(sums).for_each(|(d, v)| *d = value(v)),
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

/// [`dequant_row`] for each row of a tile: `out[i]` from sums `acc[i · ldc..]`
/// (`ldc = colsum.len()`), with that row's scale `s[i]`, zero point `z[i]`
/// and start `start[i]`. One call a tile, so the per-path build is entered
/// once for up to [`MAX_R`] rows.
#[inline(always)]
fn dequant_tile(
    out: &mut [&mut [f32]],
    acc: &[i32],
    colsum: &[i32],
    scale: &[f32],
    s: &[f32],
    z: &[i32],
    start: &[Start],
) {
    let ldc = colsum.len();
    for (i, d) in out.iter_mut().enumerate() {
        let acc = &acc[i * ldc..(i + 1) * ldc];
        dequant_row(d, acc, colsum, scale, s[i], z[i], start[i]);
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
        // Two chains of extremes, every other chunk: a min or max of
        // values (never NaN: each step keeps its second operand then) is
        // the same in any order, so the lanes are those of `row_lanes`.
        let (mut lo0, mut hi0) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let (mut lo1, mut hi1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut j = 0;
        while j + 2 * L <= whole {
            let (v0, v1) = (_mm512_loadu_ps(xp.add(j)), _mm512_loadu_ps(xp.add(j + L)));
            lo0 = _mm512_min_ps(v0, lo0);
            hi0 = _mm512_max_ps(v0, hi0);
            lo1 = _mm512_min_ps(v1, lo1);
            hi1 = _mm512_max_ps(v1, hi1);
            j += 2 * L;
        }
        if j < whole {
            let v = _mm512_loadu_ps(xp.add(j));
            lo0 = _mm512_min_ps(v, lo0);
            hi0 = _mm512_max_ps(v, hi0);
        }
        let (lo0, hi0) = (_mm512_min_ps(lo1, lo0), _mm512_max_ps(hi1, hi0));
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
simd_builds!(dequant_tile =>
    dequant_tile_avx2: "avx2,fma",
    dequant_tile_avx512: "avx512f,avx512bw" (
    out: &mut [&mut [f32]],
    acc: &[i32],
    colsum: &[i32],
    scale: &[f32],
    s: &[f32],
    z: &[i32],
    start: &[Start],
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
        // SAFETY: the CPU has AVX-512 F and BW (caller: VNNI implies both,
        // and AMX's path needs VNNI).
        Path::Avx512Vnni | Path::Amx => unsafe { simd_build::quantize_row_avx512(x, q, a_max) },
        _ => quantize_row(x, q, a_max),
    }
}

/// [`dequant_tile`] built for `path`.
///
/// # Safety
/// The CPU has `path`.
#[allow(clippy::too_many_arguments)]
unsafe fn dequant_tile_on(
    path: Path,
    out: &mut [&mut [f32]],
    acc: &[i32],
    colsum: &[i32],
    scale: &[f32],
    s: &[f32],
    z: &[i32],
    start: &[Start],
) {
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (caller).
        Path::Avx2 => unsafe { dequant_tile_avx2(out, acc, colsum, scale, s, z, start) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512 F and BW (caller: VNNI implies both,
        // and AMX's path needs VNNI).
        Path::Avx512Vnni | Path::Amx => unsafe {
            dequant_tile_avx512(out, acc, colsum, scale, s, z, start)
        },
        _ => dequant_tile(out, acc, colsum, scale, s, z, start),
    }
}

simd_builds!(symmetric_row =>
    symmetric_row_avx2: "avx2,fma",
    symmetric_row_avx512: "avx512f,avx512bw" (x: &[f32], q: &mut [i8]) -> f32);
simd_builds!(probability_codes =>
    probability_codes_avx2: "avx2,fma",
    probability_codes_avx512: "avx512f,avx512bw" (e: &[f32], w: &[f32], q: &mut [u8], top: f32) -> f32);

/// [`symmetric_row`] built for `path`.
///
/// # Safety
/// The CPU has `path`.
unsafe fn symmetric_row_on(path: Path, x: &[f32], q: &mut [i8]) -> f32 {
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (caller).
        Path::Avx2 => unsafe { symmetric_row_avx2(x, q) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512 F and BW (caller: VNNI implies both,
        // and AMX's path needs VNNI).
        Path::Avx512Vnni | Path::Amx => unsafe { symmetric_row_avx512(x, q) },
        _ => symmetric_row(x, q),
    }
}

/// [`probability_codes`] built for `path`.
///
/// # Safety
/// The CPU has `path`.
unsafe fn probability_codes_on(path: Path, e: &[f32], w: &[f32], q: &mut [u8], top: f32) -> f32 {
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (caller).
        Path::Avx2 => unsafe { probability_codes_avx2(e, w, q, top) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512 F and BW (caller: VNNI implies both,
        // and AMX's path needs VNNI).
        Path::Avx512Vnni | Path::Amx => unsafe { probability_codes_avx512(e, w, q, top) },
        _ => probability_codes(e, w, q, top),
    }
}

/// A kernel implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Path {
    Scalar,
    Avx2,
    Avx512Vnni,
    Amx,
}

impl KernelPath for Path {
    const ALL: &'static [Self] = &[Path::Scalar, Path::Avx2, Path::Avx512Vnni, Path::Amx];
    const ENV: &'static str = "CASETAG_INT8_PATH";

    fn name(self) -> &'static str {
        match self {
            Path::Scalar => "scalar",
            Path::Avx2 => "avx2",
            Path::Avx512Vnni => "avx512vnni",
            Path::Amx => "amx",
        }
    }

    fn missing(self) -> Option<&'static str> {
        match self {
            Path::Scalar => None,
            Path::Avx2 => super::missing_avx2_fma(),
            Path::Avx512Vnni => super::missing_avx512_vnni(),
            Path::Amx => super::missing_amx(),
        }
    }
}

impl Path {
    /// Largest activation code this path's kernel takes without
    /// saturating; its activations are quantized to it.
    fn a_max(self) -> i32 {
        match self {
            Path::Avx2 => A_MAX_AVX2,
            Path::Scalar | Path::Avx512Vnni | Path::Amx => A_MAX,
        }
    }

    /// Kernel tile: rows × panels.
    fn tile(self) -> (usize, usize) {
        match self {
            Path::Scalar => (4, 1),
            Path::Avx2 => (4, 1),
            Path::Avx512Vnni => (6, 4),
            Path::Amx => (AMX_ROWS, AMX_PANELS),
        }
    }

    /// The path a product of `n` rows and `groups` lines a panel runs:
    /// AMX's for large enough products whose inputs fill whole tiles,
    /// AVX-512 VNNI's for the others (the same sums: AMX's codes are
    /// VNNI's). Small products are faster on VNNI: the tile unit wakes up
    /// slowly from idle (about 2,000 cycles) and its stored tiles go
    /// through memory, where VNNI dequantizes in registers.
    fn for_product(self, n: usize, groups: usize) -> Path {
        #[cfg(target_arch = "x86_64")]
        if self == Path::Amx && (n < AMX_MIN_ROWS || !groups.is_multiple_of(amx::GROUPS_PER_TILE)) {
            return Path::Avx512Vnni;
        }
        let _ = (n, groups);
        self
    }
}

/// Fewest rows of a product that runs on AMX: two tiles. Chosen on the
/// runtime benchmark (Intel Xeon, 2 threads; benches/README.md): with 16
/// a 16-token text ran 1.07 ms against VNNI's 0.77, with 64 a 32-token one
/// gained nothing (1.25–1.30 ms against 1.22–1.29), with 32 both gained or
/// held (0.82, 1.03–1.09).
const AMX_MIN_ROWS: usize = 32;

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
    matmul_q_into(out, x, w, n, epi, &mut Codes::on(path, a_max));
}

/// [`matmul_q`] quantizing `x` into `xq` (kept by the caller for the next
/// call: no allocation), on `xq`'s path.
pub(crate) fn matmul_q_into(
    out: &mut [f32],
    x: &[f32],
    w: &QuantW,
    n: usize,
    epi: &Epilogue,
    xq: &mut Codes,
) {
    quantize_input(xq, x, n, w);
    matmul_codes(out, xq, w, epi);
}

/// Quantize `x` (`n` rows) into `xq` as the input of a product with `w`
/// (on rayon's threads when that product is).
pub(crate) fn quantize_input(xq: &mut Codes, x: &[f32], n: usize, w: &QuantW) {
    assert!(x.len() == n * w.k, "matmul shapes");
    let parallel = parallel_product(n, w) && n * w.k >= 1 << 16;
    xq.quantize(x, n, w.k, parallel);
}

/// Whether a product of `n` rows with `w` is worth rayon's threads: below
/// ~2M multiply-adds a thread hand-off costs more than it saves (int8 runs
/// several times faster than sgemm, whose bar is 1M).
fn parallel_product(n: usize, w: &QuantW) -> bool {
    rayon::current_num_threads() > 1 && n * w.o * w.k >= 1 << 21
}

/// `out (n, o) = start + x · Wᵀ` from the quantized rows `xq` (`n × k`),
/// dequantized, then `epi.then` on each finished tile (see [`Epilogue`]).
/// Runs on rayon's threads when there is enough work.
pub(crate) fn matmul_codes(out: &mut [f32], xq: &Codes, w: &QuantW, epi: &Epilogue) {
    product(out, xq.view(), w, epi, parallel_product(xq.n, w));
}

/// [`matmul_codes`] for a view of the rows, on the calling thread only
/// (inside a parallel task).
pub(crate) fn matmul_view(out: &mut [f32], xq: View, w: &QuantW, epi: &Epilogue) {
    product(out, xq, w, epi, false);
}

/// [`matmul_view`] into rows `ldo` apart from `dst` (`xq.n` rows of `w`'s
/// width), starting from zero: attention's context, written into its
/// head's columns.
///
/// # Safety
/// `dst` holds those rows, which no one else reads or writes meanwhile.
pub(crate) unsafe fn matmul_view_to(dst: *mut f32, ldo: usize, xq: View, w: &QuantW) {
    // SAFETY: the caller's.
    unsafe { product_to(SendPtr(dst), ldo, xq, w, &Epilogue::ZERO, false) };
}

fn product(out: &mut [f32], xq: View, w: &QuantW, epi: &Epilogue, parallel: bool) {
    assert_eq!(out.len(), xq.n * w.o, "matmul shapes");
    // SAFETY: `out` holds the n × o outputs and is borrowed mutably here.
    unsafe { product_to(SendPtr(out.as_mut_ptr()), w.o, xq, w, epi, parallel) };
}

/// `out = start + x · Wᵀ` into `dst`, output rows `ldo` apart.
///
/// # Safety
/// `dst` holds `xq.n` rows of `w.o` floats `ldo` apart, which no one
/// else reads or writes meanwhile.
unsafe fn product_to(
    dst: SendPtr,
    ldo: usize,
    xq: View,
    w: &QuantW,
    epi: &Epilogue,
    parallel: bool,
) {
    let (path, n, o) = (xq.path.for_product(xq.n, w.groups), xq.n, w.o);
    let residual = matches!(epi.start, Start::ResidualBias(..));
    assert!(
        xq.k == w.k && ldo >= o && !(residual && ldo != o),
        "matmul shapes"
    );
    epi.check(n, o);
    let cols = path.tile().1;
    let col_blocks = (o / NR).div_ceil(cols);
    let row_blocks = n.div_ceil(MC);
    // Each task writes rows `rb*MC..` × its column block of `out`, through
    // one shared pointer.
    let mr = path.tile().0;
    let run = |t: usize| {
        let (rb, cb) = (t / col_blocks, t % col_blocks);
        let rows = rb * MC..((rb + 1) * MC).min(n);
        let panels = cb * cols..((cb + 1) * cols).min(o / NR);
        // What the epilogue reads (`out` or the residual, `ldo` apart: a
        // residual needs ldo = o), at row 0.
        let ahead = epilogue_source(epi.start, dst.get().cast_const());
        let cols_end = panels.end * NR;
        let mut emit = |r: usize, c0: usize, nr: usize, ldc: usize, acc: &[i32]| {
            let mut d: [&mut [f32]; MAX_R] = Default::default();
            let mut starts = [Start::Out; MAX_R];
            for (i, (d, start)) in d.iter_mut().zip(&mut starts).take(nr).enumerate() {
                *start = epi.start.row(r + i, o, c0..c0 + ldc);
                // SAFETY: `dst` holds n rows of o, ldo apart, and row r + i
                // < n, columns c0..c0 + ldc ≤ o; this task alone writes
                // these rows of these columns (tasks split rows and columns
                // disjointly), and `dst` outlives the tasks (caller).
                *d = unsafe {
                    std::slice::from_raw_parts_mut(dst.get().add((r + i) * ldo + c0), ldc)
                };
            }
            dequant(xq, w, (r, c0, ldc), &mut d[..nr], acc, &starts[..nr]);
            if let Some(f) = epi.then {
                d[..nr].iter_mut().for_each(|d| f(d));
            }
            // For layers larger than L2 that read otherwise stalls the
            // epilogue.
            prefetch_ahead(ahead, ldo, (r, mr), &rows, (c0, ldc, cols_end));
        };
        if epi.then.is_none() {
            let into = (dst, 0, ldo);
            // SAFETY: `dst` holds these rows, this task's columns of them
            // its alone (caller; tasks split rows and columns).
            let done = unsafe { tiles_into(xq, w, rows.clone(), panels.clone(), into, epi.start) };
            if done {
                return;
            }
        }
        for_each_tile(xq, w, rows.clone(), panels, &mut emit);
    };
    let tasks = row_blocks * col_blocks;
    if parallel {
        (0..tasks).into_par_iter().for_each(run);
    } else {
        (0..tasks).for_each(run);
    }
}

/// A tile of the product dequantized into `out` (one slice per row):
/// rows `r..` of `xq`, columns `c0..c0 + ldc` of `w`, from their int32 sums
/// `acc` (row-major, `ldc` wide), each row starting from its `start`.
fn dequant(
    xq: View,
    w: &QuantW,
    (r, c0, ldc): (usize, usize, usize),
    out: &mut [&mut [f32]],
    acc: &[i32],
    start: &[Start],
) {
    let (colsum, scale) = (&w.colsum[c0..c0 + ldc], &w.scale[c0..c0 + ldc]);
    let rows = r..r + out.len();
    let (s, z) = (&xq.scale[rows.clone()], &xq.zero[rows]);
    // SAFETY: `xq.path` is available: every `Codes` constructor checks
    // (a view's too).
    unsafe { dequant_tile_on(xq.path, out, acc, colsum, scale, s, z, start) };
}

/// The next product's input straight from this one: `act(bias + x · Wᵀ)`
/// for the quantized rows `xq`, quantized again into `next` (`n × o`),
/// without an fp32 `n × o` matrix in memory (see [`matmul_rows`]; `act`,
/// the FFN's GELU, runs on each full row). `next` gets the same codes as
/// [`Codes::quantize`] of the fp32 outputs that [`matmul_codes`] and `act`
/// would give.
pub(crate) fn matmul_act_codes(xq: &Codes, w: &QuantW, bias: &[f32], act: Then, next: &mut Codes) {
    assert!(next.path == xq.path, "codes for another int8 path");
    next.reset(xq.n, w.o);
    let rows = row_block(xq, w);
    let start = Start::Bias(bias);
    matmul_rows(
        xq,
        w,
        start,
        rows,
        next.blocks_mut(rows),
        |codes, i, row, _| {
            act(row);
            codes.set(i, row);
        },
    );
}

/// Attention's operands straight from the QKV product: of each output row
/// `bias + x · Wᵀ` (`3h` wide: query, key, value), the query quantized
/// into `q` like an input ([`Codes`]), the key and the value into `k` and
/// `v` like weights, one step per row ([`SymRows`]). Nothing fp32 `n × 3h`
/// goes to memory (see [`matmul_rows`]).
pub(crate) fn matmul_qkv_codes(
    xq: &Codes,
    w: &QuantW,
    bias: &[f32],
    (q, k, v): (&mut Codes, &mut SymRows, &mut SymRows),
) {
    let (n, h) = (xq.n, w.o / 3);
    assert!(w.o == 3 * h && q.path == xq.path, "a QKV product");
    q.reset(n, h);
    k.reset(n, h);
    v.reset(n, h);
    let rows = row_block(xq, w);
    let blocks = q
        .blocks_mut(rows)
        .zip(k.blocks_mut(rows))
        .zip(v.blocks_mut(rows));
    let start = Start::Bias(bias);
    matmul_rows(xq, w, start, rows, blocks, |qkv, i, row, _| {
        split_qkv(qkv, i, row)
    });
}

/// Row `i` of attention's operands from one QKV output row (`3h`).
fn split_qkv(((q, k), v): &mut ((CodeRows, SymBlock), SymBlock), i: usize, row: &[f32]) {
    let h = row.len() / 3;
    q.set(i, &row[..h]);
    k.set(i, &row[h..2 * h]);
    v.set(i, &row[2 * h..]);
}

/// [`matmul_qkv_codes`]' operands from an fp32 QKV output (`n × 3h`).
#[cfg(test)]
pub(crate) fn qkv_codes(
    qkv: &[f32],
    h: usize,
    (q, k, v): (&mut Codes, &mut SymRows, &mut SymRows),
) {
    let n = qkv.len() / (3 * h);
    q.reset(n, h);
    k.reset(n, h);
    v.reset(n, h);
    let mut rows = ((q.rows_mut(0..n), k.block(0..n)), v.block(0..n));
    for (i, row) in qkv.chunks_exact(3 * h).enumerate() {
        split_qkv(&mut rows, i, row);
    }
}

/// An output projection and what follows it, row by row: `out = norm(start
/// + x · Wᵀ)` (`start` the residual and bias), where `norm(row, aux)`
/// normalizes the row in place and may leave the next product's input in
/// `aux` (the smoothed row), then quantized into `next` unless `norm`
/// returns `false` (the last layer). Nothing fp32 goes through memory
/// between the product and the LayerNorm (see [`matmul_rows`]).
pub(crate) fn matmul_norm_codes(
    xq: &Codes,
    w: &QuantW,
    start: Start,
    out: &mut [f32],
    next: &mut Codes,
    norm: impl Fn(&mut [f32], &mut Vec<f32>) -> bool + Sync,
) {
    let (n, o) = (xq.n, w.o);
    assert_eq!(out.len(), n * o, "matmul shapes");
    next.reset(n, o);
    let rows = row_block(xq, w);
    let blocks = out.par_chunks_mut(rows * o).zip(next.blocks_mut(rows));
    matmul_rows(xq, w, start, rows, blocks, |(out, codes), i, row, aux| {
        let quantize = norm(row, aux);
        out[i * o..(i + 1) * o].copy_from_slice(row);
        if quantize {
            codes.set(i, aux);
        }
    });
}

/// Rows per task of [`matmul_rows`], at most [`MC`]. A product shared out
/// gets a multiple of the thread count of blocks: equal shares when there
/// is one block a thread (a batch of one short text is a few dozen rows;
/// blocks rounded up to whole tiles left one thread 12 of 16 rows), whole
/// tiles when there are more. No block is smaller than a tile.
fn row_block(xq: &Codes, w: &QuantW) -> usize {
    if !parallel_product(xq.n, w) {
        return MC;
    }
    let (n, mr) = (xq.n, xq.path.for_product(xq.n, w.groups).tile().0);
    let threads = rayon::current_num_threads();
    let blocks = if n < threads * mr {
        n.div_ceil(mr)
    } else {
        threads * n.div_ceil(threads * MC)
    };
    let rows = n.div_ceil(blocks);
    if blocks > threads {
        (rows.div_ceil(mr) * mr).min(MC)
    } else {
        rows
    }
}

/// `bias + x · Wᵀ` for the quantized rows `xq`, by tasks that own whole
/// rows: a block of `rows` output rows (all columns) goes to a scratch
/// block that stays in L2, then `finish(out, i, row)` takes each of its
/// rows in turn (`i` counted from the block's first), `out` being the
/// block's item of `blocks` (the consumer's rows, one item per block, in
/// order). Runs on rayon's threads when the product is large enough.
fn matmul_rows<B: Send>(
    xq: &Codes,
    w: &QuantW,
    start: Start,
    rows: usize,
    blocks: impl IndexedParallelIterator<Item = B>,
    finish: impl Fn(&mut B, usize, &mut [f32], &mut Vec<f32>) + Sync,
) {
    let (n, o) = (xq.n, w.o);
    let epi = Epilogue { start, then: None };
    assert!(xq.k == w.k && !matches!(start, Start::Out), "matmul shapes");
    epi.check(n, o);
    assert_eq!(
        blocks.len(),
        n.div_ceil(rows),
        "one consumer block per row block"
    );
    let xq = xq.view();
    let job = |(b, mut out): (usize, B)| {
        let block = b * rows..((b + 1) * rows).min(n);
        // Taken, not borrowed: a task that found them taken would start
        // empty ones.
        let mut buffers = ROW_SCRATCH.with(|s| s.take());
        let (scratch, aux) = &mut buffers;
        // The tiles write every value of the block: no need to clear it.
        if scratch.len() < block.len() * o {
            scratch.resize(block.len() * o, 0.0);
        }
        let scratch = &mut scratch[..block.len() * o];
        let into = (SendPtr(scratch.as_mut_ptr()), block.start, o);
        // SAFETY: `scratch` holds the block's rows, o apart, and is this
        // task's.
        let done = unsafe { tiles_into(xq, w, block.clone(), 0..o / NR, into, start) };
        if !done {
            let mut emit = |r: usize, c0: usize, nr: usize, ldc: usize, acc: &[i32]| {
                let mut d: [&mut [f32]; MAX_R] = Default::default();
                let mut starts = [Start::Zero; MAX_R];
                let rows = scratch[(r - block.start) * o..].chunks_mut(o);
                for (i, ((d, row), st)) in
                    d.iter_mut().zip(rows).zip(&mut starts).take(nr).enumerate()
                {
                    *d = &mut row[c0..c0 + ldc];
                    *st = start.row(r + i, o, c0..c0 + ldc);
                }
                dequant(xq, w, (r, c0, ldc), &mut d[..nr], acc, &starts[..nr]);
            };
            for_each_tile(xq, w, block.clone(), 0..o / NR, &mut emit);
        }
        for (i, row) in scratch.chunks_exact_mut(o).enumerate() {
            finish(&mut out, i, row, aux);
        }
        ROW_SCRATCH.with(|s| s.set(buffers));
    };
    // Small products stay on this thread: one piece, no split.
    let min_len = if parallel_product(n, w) {
        1
    } else {
        usize::MAX
    };
    blocks.enumerate().with_min_len(min_len).for_each(job);
}

thread_local! {
    /// [`matmul_rows`]' scratch block and its consumer's row buffer, kept
    /// by each thread from one product to the next (a block of FFN-in
    /// outputs is over half a megabyte: allocating and clearing it per
    /// block cost page faults and a `memset` of every output).
    static ROW_SCRATCH: std::cell::Cell<(Vec<f32>, Vec<f32>)> = Default::default();
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

/// What an epilogue from `start` reads besides the sums, at row 0: the
/// residual, the output itself (`out_row0`, its row 0), or nothing (null).
fn epilogue_source(start: Start, out_row0: *const f32) -> *const f32 {
    match start {
        Start::ResidualBias(res, _) => res.as_ptr(),
        Start::Out => out_row0,
        Start::Zero | Start::Bias(_) => std::ptr::null(),
    }
}

/// Load what the epilogue of the tile two ahead of the tile at row `r`,
/// column `c0` reads from `ahead` (row 0 of rows `ld` apart; null: nothing),
/// while this tile's sums are computed. Tiles run `mr` rows at a time over
/// `rows` within each block of columns `ldc` wide, blocks up to column
/// `cols_end`: two ahead may be in the next block's columns.
#[inline(always)]
fn prefetch_ahead(
    ahead: *const f32,
    ld: usize,
    (r, mr): (usize, usize),
    rows: &Range<usize>,
    (c0, ldc, cols_end): (usize, usize, usize),
) {
    if ahead.is_null() {
        return;
    }
    let (mut ar, mut ac) = (r + 2 * mr, c0);
    if ar >= rows.end {
        (ar, ac) = (rows.start + (ar - rows.end), c0 + ldc);
    }
    let cols = ac..(ac + ldc).min(cols_end);
    for row in ar..(ar + mr).min(rows.end) {
        for line in cols.clone().step_by(16) {
            prefetch(ahead.wrapping_add(row * ld + line));
        }
    }
}

/// Run `path`'s kernel over `rows` × `panels`, one tile at a time (panels
/// outer, so the panel block stays in L1), and hand each tile's int32 sums
/// to `emit(first row, first column, rows, columns, sums)` (row-major, stride
/// = columns).
///
/// The path is `xq`'s (which the CPU has: every `Codes` constructor checks).
fn for_each_tile(
    xq: View,
    w: &QuantW,
    rows: Range<usize>,
    panels: Range<usize>,
    emit: &mut impl FnMut(usize, usize, usize, usize, &[i32]),
) {
    let path = xq.path.for_product(xq.n, w.groups);
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
            let x = &xq.q[r * xq.ld..(r + nr - 1) * xq.ld + w.groups * KG];
            let c = &mut buf[..nr * ldc];
            // SAFETY: the CPU has `path` (above).
            unsafe { kernel(path, c, ldc, x, xq.ld, wp, w.groups, nr, np) };
            emit(r, p * NR, nr, ldc, c);
            r += nr;
        }
        p += np;
    }
    #[cfg(target_arch = "x86_64")]
    if path == Path::Amx {
        // SAFETY: the CPU has AMX with the OS's permission (`path` is
        // available).
        unsafe { amx::release() };
    }
}

/// [`for_each_tile`] with each tile dequantized straight from the
/// kernel's registers into `dst` (row `r` at `dst + (r - row0) · ldo`; the
/// residual, if any, `n × ldo`) from `start` (at row 0, column 0), when `xq`'s path has such a
/// kernel (AVX-512 VNNI): `false` (and nothing done) otherwise. The same
/// floats as [`dequant`] on the tiles of [`for_each_tile`].
///
/// # Safety
/// `dst` holds rows `rows` of the `w.o` outputs, `ldo` apart, which no one
/// else writes meanwhile (nor reads: these rows × `panels`' columns).
unsafe fn tiles_into(
    xq: View,
    w: &QuantW,
    rows: Range<usize>,
    panels: Range<usize>,
    (dst, row0, ldo): (SendPtr, usize, usize),
    start: Start,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if xq.path.for_product(xq.n, w.groups) == Path::Avx512Vnni {
        let (mr, mp) = Path::Avx512Vnni.tile();
        let mut p = panels.start;
        while p < panels.end {
            let np = (panels.end - p).min(mp);
            let (c0, ldc) = (p * NR, np * NR);
            let base = start.at(c0);
            // What the epilogue reads, at row 0 (the residual has every row,
            // `dst` from `row0` on).
            let ahead = epilogue_source(start, dst.get().cast_const().wrapping_sub(row0 * ldo));
            let mut r = rows.start;
            while r < rows.end {
                let nr = (rows.end - r).min(mr);
                prefetch_ahead(ahead, ldo, (r, mr), &rows, (c0, ldc, panels.end * NR));
                let x = &xq.q[r * xq.ld..(r + nr - 1) * xq.ld + w.groups * KG];
                let into = vnni::Into {
                    // SAFETY: row r < n, column c0 < o of `dst` (caller); the
                    // residual is n × o at the same stride.
                    out: unsafe { dst.get().add((r - row0) * ldo + c0) },
                    ldo,
                    colsum: w.colsum[c0..c0 + ldc].as_ptr(),
                    scale: w.scale[c0..c0 + ldc].as_ptr(),
                    s: xq.scale[r..r + nr].as_ptr(),
                    z: xq.zero[r..r + nr].as_ptr(),
                    // SAFETY: as above.
                    base: unsafe { base.down(r * ldo) },
                };
                let wp = w.panels(p, np);
                // SAFETY: the CPU has AVX-512 VNNI (a view's path is
                // available); `x` holds nr rows of the groups' codes, `wp`
                // np panels, `into` the tile's outputs and factors.
                unsafe { vnni::tiles_into(nr, np, x.as_ptr(), xq.ld, wp.as_ptr(), w.groups, into) };
                r += nr;
            }
            p += np;
        }
        return true;
    }
    let _ = (xq, w, rows, panels, dst, row0, ldo, start);
    false
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
        #[cfg(target_arch = "x86_64")]
        Path::Amx => {
            assert!(
                groups.is_multiple_of(amx::GROUPS_PER_TILE),
                "AMX takes whole tiles of inputs (see Path::for_product)"
            );
            // SAFETY: the CPU has AMX-TILE/INT8 and the OS's permission
            // (caller); the bounds were asserted above (rows ≤ 16, np ≤
            // 4), and `groups` is a multiple of a tile's lines.
            unsafe {
                amx::tiles(
                    rows,
                    np,
                    c.as_mut_ptr(),
                    ldc,
                    x.as_ptr(),
                    ldx,
                    w.as_ptr(),
                    groups,
                )
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
    use super::super::Base;
    use super::{Line, KG, NR};
    use std::arch::x86_64::*;

    /// Where a tile's dequantization reads its per-column and per-row
    /// factors and writes its outputs (see [`tile_into`]).
    #[derive(Clone, Copy)]
    pub(super) struct Into {
        /// The tile's first output, rows `ldo` apart (the residual too).
        pub out: *mut f32,
        pub ldo: usize,
        /// The tile's first column's `Σ wq` and weight step.
        pub colsum: *const i32,
        pub scale: *const f32,
        /// The tile's first row's step and zero point.
        pub s: *const f32,
        pub z: *const i32,
        /// What the outputs start from, at the tile's first row and column.
        pub base: Base,
    }

    /// [`tile_into`] for `rows` (1 to 6) rows and `np` (1 to 4) panels.
    ///
    /// # Safety
    /// As for [`tile_into`].
    pub(super) unsafe fn tiles_into(
        rows: usize,
        np: usize,
        x: *const u8,
        ldx: usize,
        w: *const Line,
        groups: usize,
        into: Into,
    ) {
        macro_rules! by_panels {
            ($r:literal) => {
                match np {
                    4 => tile_into::<$r, 4>(x, ldx, w, groups, into),
                    3 => tile_into::<$r, 3>(x, ldx, w, groups, into),
                    2 => tile_into::<$r, 2>(x, ldx, w, groups, into),
                    _ => tile_into::<$r, 1>(x, ldx, w, groups, into),
                }
            };
        }
        match rows {
            6 => by_panels!(6),
            5 => by_panels!(5),
            4 => by_panels!(4),
            3 => by_panels!(3),
            2 => by_panels!(2),
            _ => by_panels!(1),
        }
    }

    /// [`tile`], then each sum dequantized in its register and written:
    /// `out = start + (acc - z · colsum) · (s · scale)`, the operations and
    /// their order of [`super::dequant_row`] (bit-identical outputs), with
    /// no int32 tile in memory in between.
    ///
    /// # Safety
    /// As for [`tile`], and `into`'s pointers hold `R` rows (`ldo` apart) of
    /// `P · NR` outputs (and residuals), `P · NR` column factors and `R`
    /// row factors.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile_into<const R: usize, const P: usize>(
        x: *const u8,
        ldx: usize,
        w: *const Line,
        groups: usize,
        into: Into,
    ) {
        // One body per start, so that no output vector branches on it.
        match into.base {
            Base::Zero => finish::<R, P, ZERO>(x, ldx, w, groups, into),
            Base::Out => finish::<R, P, OUT>(x, ldx, w, groups, into),
            Base::Bias(_) => finish::<R, P, BIAS>(x, ldx, w, groups, into),
            Base::ResidualBias(..) => finish::<R, P, RESIDUAL_BIAS>(x, ldx, w, groups, into),
        }
    }

    /// [`Base`]'s variants, as a const parameter of [`finish`].
    const ZERO: u8 = 0;
    const OUT: u8 = 1;
    const BIAS: u8 = 2;
    const RESIDUAL_BIAS: u8 = 3;

    /// [`tile_into`]'s body for the start `B` (`into.base`'s variant).
    #[inline(always)]
    unsafe fn finish<const R: usize, const P: usize, const B: u8>(
        x: *const u8,
        ldx: usize,
        w: *const Line,
        groups: usize,
        into: Into,
    ) {
        let (bias, residual) = match into.base {
            Base::Bias(b) => (b, std::ptr::null()),
            Base::ResidualBias(r, b) => (b, r),
            Base::Zero | Base::Out => (std::ptr::null(), std::ptr::null()),
        };
        let acc = sums::<R, P>(x, ldx, w, groups);
        for p in 0..P {
            let colsum = _mm512_loadu_si512(into.colsum.add(p * NR).cast());
            let scale = _mm512_loadu_ps(into.scale.add(p * NR));
            let b = if B >= BIAS {
                _mm512_loadu_ps(bias.add(p * NR))
            } else {
                _mm512_setzero_ps()
            };
            for (i, a) in acc.iter().enumerate() {
                let z = _mm512_set1_epi32(*into.z.add(i));
                let s = _mm512_set1_ps(*into.s.add(i));
                let v = _mm512_sub_epi32(a[p], _mm512_mullo_epi32(z, colsum));
                let v = _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_mul_ps(s, scale));
                let out = into.out.add(i * into.ldo + p * NR);
                let v = match B {
                    ZERO => v,
                    OUT => _mm512_add_ps(_mm512_loadu_ps(out), v),
                    BIAS => _mm512_add_ps(b, v),
                    _ => {
                        let r = _mm512_loadu_ps(residual.add(i * into.ldo + p * NR));
                        _mm512_add_ps(_mm512_add_ps(r, b), v)
                    }
                };
                _mm512_storeu_ps(out, v);
            }
        }
    }

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
        let acc = sums::<R, P>(x, ldx, w, groups);
        for (i, a) in acc.iter().enumerate() {
            for (p, &v) in a.iter().enumerate() {
                _mm512_storeu_si512(c.add(i * ldc + p * NR).cast(), v);
            }
        }
    }

    /// The int32 sums of `R` rows × `P` panels, in registers: per line,
    /// `P` weight loads, `R` broadcasts of four codes, `R · P` vpdpbusd.
    ///
    /// # Safety
    /// As for [`tile`].
    #[inline(always)]
    unsafe fn sums<const R: usize, const P: usize>(
        x: *const u8,
        ldx: usize,
        w: *const Line,
        groups: usize,
    ) -> [[__m512i; P]; R] {
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
        acc
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
        let mut xq = Codes::on(path, a_max);
        xq.quantize(x, n, w.k, false);
        let o = w.o;
        let mut acc = vec![i32::MIN; n * o];
        let mut emit = |r: usize, c0: usize, nr: usize, ldc: usize, t: &[i32]| {
            for i in 0..nr {
                acc[(r + i) * o + c0..(r + i) * o + c0 + ldc]
                    .copy_from_slice(&t[i * ldc..(i + 1) * ldc]);
            }
        };
        for_each_tile(xq.view(), w, 0..n, 0..o / NR, &mut emit);
        acc
    }

    /// The SIMD paths this CPU has; prints why the others are skipped.
    fn simd_paths() -> Vec<Path> {
        [Path::Avx2, Path::Avx512Vnni, Path::Amx]
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
    fn codes_given_back_rebuild_the_same_matrix() {
        for &(_, k, o) in &SHAPES {
            let wf = values(o * k, 11 + k as u32);
            let w = QuantW::new(&wf, o, k);
            let (codes, scale) = w.codes();
            assert_eq!((w.dims(), codes.len(), scale.len()), ((o, k), o * k, o));
            // Each channel's codes are its weights at its step.
            for (c, row) in codes.chunks_exact(k).enumerate() {
                let (_, inv) = step(
                    wf[c * k..(c + 1) * k]
                        .iter()
                        .fold(0f32, |m, v| m.max(v.abs())),
                );
                let want: Vec<i8> = wf[c * k..(c + 1) * k]
                    .iter()
                    .map(|&v| nearest(v, inv))
                    .collect();
                assert_eq!(row, want.as_slice(), "channel {c} at k={k} o={o}");
            }
            let back = QuantW::from_codes(&codes, &scale, o, k);
            let same = back.lines.iter().zip(&w.lines).all(|(a, b)| a.0 == b.0);
            assert!(
                same && back.lines.len() == w.lines.len(),
                "packed codes at k={k} o={o}"
            );
            assert_eq!(
                (back.scale, back.colsum),
                (w.scale.clone(), w.colsum.clone())
            );
        }
    }

    #[test]
    fn simd_outputs_are_bit_identical_for_every_start_including_threads() {
        // The AVX-512 VNNI path dequantizes in the kernel's registers, the
        // others from an int32 tile: the same floats either way.
        let paths = simd_paths();
        for &(n, k, o) in &SHAPES {
            let x = values(n * k, 3 + n as u32);
            let w = QuantW::new(&values(o * k, 5 + k as u32), o, k);
            let (bias, res) = (values(o, 17), values(n * o, 19));
            let starts = [
                Start::Zero,
                Start::Out,
                Start::Bias(&bias),
                Start::ResidualBias(&res, &bias),
            ];
            for (start, &p) in starts
                .into_iter()
                .flat_map(|s| paths.iter().map(move |p| (s, p)))
            {
                let epi = Epilogue { start, then: None };
                let out = |path: Path| {
                    let mut out = values(n * o, 11);
                    let mut codes = Codes::on(path, p.a_max());
                    matmul_q_into(&mut out, &x, &w, n, &epi, &mut codes);
                    out
                };
                let same = out(p)
                    .iter()
                    .zip(out(Path::Scalar))
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{} vs scalar outputs differ at n={n} k={k} o={o}",
                    p.name()
                );
            }
        }
    }

    /// ReLU, an activation with a simple reference.
    fn relu(v: &mut [f32]) {
        v.iter_mut().for_each(|x| *x = x.max(0.0));
    }

    #[test]
    fn fused_codes_are_the_codes_of_the_product() {
        for (n, k, h) in [(1, 32, 16), (37, 96, 32), (200, 384, 128)] {
            let o = 3 * h;
            let x = values(n * k, 23 + n as u32);
            let w = QuantW::new(&values(o * k, 29), o, k);
            let bias = values(o, 31);
            let mut xq = Codes::default();
            xq.quantize(&x, n, k, false);
            // The fp32 product, then its codes, against the fused product.
            let mut out = vec![0f32; n * o];
            matmul_codes(
                &mut out,
                &xq,
                &w,
                &Epilogue {
                    start: Start::Bias(&bias),
                    then: None,
                },
            );
            let mut relu_out = out.clone();
            relu_out.chunks_exact_mut(o).for_each(relu);
            let mut want = Codes::default();
            want.quantize(&relu_out, n, o, false);
            let mut got = Codes::default();
            matmul_act_codes(&xq, &w, &bias, &relu, &mut got);
            let codes = |c: &Codes| (c.q[..n * c.ld].to_vec(), c.scale.clone(), c.zero.clone());
            assert!(
                codes(&got) == codes(&want),
                "activated codes at n={n} k={k}"
            );
            let (mut q, mut kk, mut v) = (Codes::default(), SymRows::default(), SymRows::default());
            qkv_codes(&out, h, (&mut q, &mut kk, &mut v));
            let (mut q2, mut k2, mut v2) =
                (Codes::default(), SymRows::default(), SymRows::default());
            matmul_qkv_codes(&xq, &w, &bias, (&mut q2, &mut k2, &mut v2));
            assert!(codes(&q) == codes(&q2), "query codes at n={n} k={k}");
            assert!(
                kk.q == k2.q && kk.scale == k2.scale,
                "key codes at n={n} k={k}"
            );
            assert!(
                v.q == v2.q && v.scale == v2.scale,
                "value codes at n={n} k={k}"
            );
            // Symmetric rows: the largest |value| at ±127, 0 exact.
            let row = &out[h..2 * h];
            let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_eq!(kk.scale[0], amax / W_MAX as f32);
            assert!(kk.q[..h].iter().any(|&c| c.unsigned_abs() as i32 == W_MAX));
        }
    }

    /// The AMX kernel at every tile shape it takes (1 to 16 rows, 1 to 4
    /// panels, one and three tiles of inputs), rows apart by more than
    /// they hold, against the scalar sums; and which products it gets.
    #[test]
    fn amx_tiles_equal_the_scalar_sums_at_every_shape() {
        let (n, o) = (Path::Amx.tile().0, 4 * NR);
        assert_eq!(Path::Amx.for_product(AMX_MIN_ROWS, 16), Path::Amx);
        assert_eq!(
            Path::Amx.for_product(AMX_MIN_ROWS - 1, 16),
            Path::Avx512Vnni
        );
        assert_eq!(Path::Amx.for_product(4096, 8), Path::Avx512Vnni);
        assert_eq!(Path::Avx2.for_product(4096, 16), Path::Avx2);
        if let Some(why) = Path::Amx.missing() {
            eprintln!("SKIPPED int8 path amx: {why}");
            return;
        }
        for k in [64, 192] {
            let w = QuantW::new(&values(o * k, 3 + k as u32), o, k);
            let ldx = k + 24;
            let x: Vec<u8> = (0..n * ldx).map(|i| (i * 37 % 256) as u8).collect();
            for rows in 1..=n {
                for np in 1..=Path::Amx.tile().1 {
                    let ldc = np * NR + 3;
                    let mut want = vec![0i32; rows * ldc];
                    let mut got = vec![i32::MIN; rows * ldc];
                    let wp = w.panels(0, np);
                    scalar_tile(&mut want, ldc, &x, ldx, wp, w.groups, rows, np);
                    // SAFETY: the CPU has AMX (checked above); the kernel
                    // asserts the bounds.
                    unsafe { kernel(Path::Amx, &mut got, ldc, &x, ldx, wp, w.groups, rows, np) };
                    for i in 0..rows {
                        let cols = i * ldc..i * ldc + np * NR;
                        assert_eq!(
                            got[cols.clone()],
                            want[cols],
                            "k={k} rows={rows} np={np} row {i}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn interleaved_lines_hold_four_inputs_per_column() {
        let rows: Vec<Vec<i8>> = (0..KG)
            .map(|t| (0..NR).map(|l| (t * 16 + l) as i8 - 30).collect())
            .collect();
        let mut line = Line([0; NR * KG]);
        interleave(&std::array::from_fn(|t| rows[t].as_slice()), &mut line);
        for (l, bytes) in line.0.chunks_exact(KG).enumerate() {
            for (t, &b) in bytes.iter().enumerate() {
                assert_eq!(b, rows[t][l]);
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
        // AMX's path needs VNNI too.
        let no_vnni = |p: Path| (p >= Path::Avx512Vnni).then_some("no VNNI here");
        let d = choose(Some("avx512vnni"), no_vnni);
        assert_eq!(d.path, Path::Avx2);
        assert!(d.note.unwrap().contains("no VNNI here"));
        assert_eq!(choose(None, no_vnni).path, Path::Avx2);
        let no_amx = |p: Path| (p == Path::Amx).then_some("no AMX here");
        let d = choose(Some("amx"), no_amx);
        assert_eq!(d.path, Path::Avx512Vnni);
        assert!(d.note.unwrap().contains("no AMX here"));
        assert_eq!(choose(None, no_amx).path, Path::Avx512Vnni);
        let bare = |p: Path| (p != Path::Scalar).then_some("no SIMD here");
        for req in [None, Some("avx2"), Some("avx512vnni"), Some("amx")] {
            assert_eq!(choose(req, bare).path, Path::Scalar);
        }
        let d = choose(Some("sse9"), Path::missing);
        assert!(d.note.unwrap().contains("scalar|avx2|avx512vnni|amx"));
    }

    #[test]
    fn only_multiples_of_the_panel_width_pack() {
        assert!(QuantW::fits(384) && QuantW::fits(1536) && QuantW::fits(16));
        assert!(!QuantW::fits(0) && !QuantW::fits(77));
    }
}
