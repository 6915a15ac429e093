//! Element-wise math of the inference forward and of fine-tuning's
//! forward and backward passes, written so the compiler vectorizes it:
//! `exp` by range reduction and a polynomial, exact-erf GELU by
//! Abramowitz & Stegun 7.1.26 (|error of erf| ≤ 1.5e-7), softmax and
//! LayerNorm with their sums in [`LANES`] partial lanes. libm's scalar
//! `erff`/`expf` were about a fifth of the encoder's time; scalar sums and
//! a float-to-int cast that did not vectorize cost another tenth. On x86-64 the
//! loops are compiled again for AVX2+FMA and for AVX-512F. Polynomials are
//! evaluated with fused multiply-adds (`mul_add`, one rounding per step),
//! which every build has: the SIMD builds as an instruction, the portable
//! one as an exactly rounded library call, so every build gives the same
//! floats. The build that runs follows the f32 dense path
//! ([`super::sgemm::dispatch`]).

use super::sgemm::Path;

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two (Cody & Waite): LN2_HI has few mantissa bits, so
/// `n * LN2_HI` is exact for every |n| ≤ 128.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 * 2^23: adding and subtracting it rounds an f32 to the nearest integer.
pub(crate) const ROUND: f32 = 12_582_912.0;

/// `c[0]·x^(n-1) + … + c[n-1]` by Horner's rule, one fused multiply-add a
/// step (the loop unrolls: `c` is a constant array at every call).
#[inline(always)]
fn horner(x: f32, c: &[f32]) -> f32 {
    c[1..].iter().fold(c[0], |acc, &k| acc.mul_add(x, k))
}

/// e^x with a relative error of a few 1e-7 for x in [-87, 88] (clamped
/// outside: e^-87 ≈ 1.6e-38 stands in for 0).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // t = ROUND + n: its low mantissa bits hold n in two's complement, so n
    // comes out as an integer without a float-to-int cast (Rust's saturating
    // cast does not vectorize: it was one scalar conversion per lane).
    let t = x.mul_add(LOG2E, ROUND);
    let n = t - ROUND;
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    // Taylor to degree 7 on |r| ≤ ln2/2: truncation error < 2e-8 relative.
    let p = horner(
        r,
        &[
            1.0 / 5040.0,
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ],
    );
    // n is in [-126, 127] after the clamp, so n + 127 is a normal exponent.
    let scale = f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    p * scale
}

/// erf(x/√2) and e^(-x²/2): the two parts of GELU and of its derivative.
#[inline(always)]
fn gelu_parts(x: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_7;
    const A4: f32 = -1.453_152;
    const A5: f32 = 1.061_405_4;
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let a = z.abs();
    let t = 1.0 / P.mul_add(a, 1.0);
    let poly = t * horner(t, &[A5, A4, A3, A2, A1]);
    let gauss = exp(-a * a);
    let erf_abs = (-poly).mul_add(gauss, 1.0);
    (erf_abs.copysign(z), gauss)
}

/// GELU with the exact (erf) definition: 0.5·x·(1 + erf(x/√2)).
#[inline(always)]
pub(crate) fn gelu_erf(x: f32) -> f32 {
    let half_x = 0.5 * x;
    half_x.mul_add(gelu_parts(x).0, half_x)
}

/// The derivative of [`gelu_erf`]: Φ(x) + x·φ(x), with Φ and φ the
/// standard normal distribution and density.
#[inline(always)]
pub(crate) fn gelu_erf_grad(x: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let (erf, gauss) = gelu_parts(x);
    0.5f32.mul_add(erf, 0.5) + x * gauss * INV_SQRT_2PI
}

/// GELU's backward: `dx = dy · gelu'(x)`.
#[inline(always)]
fn gelu_back_loop(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    for ((d, &x), &g) in dx.iter_mut().zip(x).zip(dy) {
        *d = g * gelu_erf_grad(x);
    }
}

#[inline(always)]
fn gelu_loop(v: &mut [f32]) {
    for x in v {
        *x = gelu_erf(*x);
    }
}

/// Lanes of the softmax's partial maxima and sums: one `zmm`, two `ymm`s.
const LANES: usize = 16;

/// Softmax of `scale · v` for one row in place (`scale` > 0): the maximum
/// and the sum are kept in [`LANES`] partial lanes (a fixed order, so every
/// build gives the same floats), the exponentials written as they are
/// summed.
#[inline(always)]
fn softmax_loop(v: &mut [f32], scale: f32) {
    let inv = 1.0 / exp_loop(v, scale);
    for x in v {
        *x *= inv;
    }
}

/// The softmax before its division: `v = e^(scale · v - max)` in place,
/// returning the sum (in [`LANES`] partial lanes, a fixed order). The
/// largest value becomes 1 (up to the rounding of its shift).
#[inline(always)]
fn exp_loop(v: &mut [f32], scale: f32) -> f32 {
    let mut lane_max = [f32::NEG_INFINITY; LANES];
    let mut chunks = v.chunks_exact(LANES);
    for c in &mut chunks {
        for (m, &x) in lane_max.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    let m = chunks
        .remainder()
        .iter()
        .chain(&lane_max)
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    let shift = -m * scale;
    let mut lane_sum = [0f32; LANES];
    let mut chunks = v.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (s, x) in lane_sum.iter_mut().zip(c) {
            *x = exp(x.mul_add(scale, shift));
            *s += *x;
        }
    }
    let mut sum = 0f32;
    for x in chunks.into_remainder() {
        *x = exp(x.mul_add(scale, shift));
        sum += *x;
    }
    sum + lane_sum.iter().sum::<f32>()
}

/// Sum of `v` in [`LANES`] partial lanes (the order every build keeps).
#[inline(always)]
fn lane_sum(v: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut chunks = v.chunks_exact(LANES);
    for c in &mut chunks {
        for (s, &x) in lanes.iter_mut().zip(c) {
            *s += f(x);
        }
    }
    chunks.remainder().iter().map(|&x| f(x)).sum::<f32>() + lanes.iter().sum::<f32>()
}

/// Softmax's backward for rows of `len` values: from each row's output `y`
/// and its gradient `dy`, `dx = y · (dy − Σ y·dy)` (the sum in lanes).
#[inline(always)]
fn softmax_back_loop(y: &[f32], dy: &[f32], dx: &mut [f32], len: usize) {
    for ((y, dy), dx) in y
        .chunks_exact(len)
        .zip(dy.chunks_exact(len))
        .zip(dx.chunks_exact_mut(len))
    {
        let mut lanes = [0f32; LANES];
        let mut cy = y.chunks_exact(LANES);
        let mut cg = dy.chunks_exact(LANES);
        for (a, b) in (&mut cy).zip(&mut cg) {
            for ((s, &a), &b) in lanes.iter_mut().zip(a).zip(b) {
                *s = a.mul_add(b, *s);
            }
        }
        let rest = cy.remainder().iter().zip(cg.remainder());
        let dot = rest.map(|(a, b)| a * b).sum::<f32>() + lanes.iter().sum::<f32>();
        for ((d, &y), &g) in dx.iter_mut().zip(y).zip(dy) {
            *d = y * (g - dot);
        }
    }
}

/// LayerNorm's backward for rows of `w.len()` values: from each input row
/// `x` and its output's gradient `dy`, `dx` (overwritten), and the rows'
/// shares of the weight's and bias's gradients added to `dw` and `db`.
#[inline(always)]
fn layer_norm_back_loop(
    x: &[f32],
    dy: &[f32],
    w: &[f32],
    eps: f32,
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
) {
    let h = w.len();
    for ((x, dy), dx) in x
        .chunks_exact(h)
        .zip(dy.chunks_exact(h))
        .zip(dx.chunks_exact_mut(h))
    {
        let n = h as f32;
        let mean = lane_sum(x, |v| v) / n;
        let var = lane_sum(x, |v| (v - mean) * (v - mean)) / n;
        let inv = 1.0 / (var + eps).sqrt();
        // With x̂ = (x − mean)·inv and g = dy·w:
        // dx = inv · (g − mean(g) − x̂ · mean(g·x̂)).
        let (mut s1, mut s2) = ([0f32; LANES], [0f32; LANES]);
        for (j, (((&x, &dy), &w), (dw, db))) in x
            .iter()
            .zip(dy)
            .zip(w)
            .zip(dw.iter_mut().zip(db.iter_mut()))
            .enumerate()
        {
            let xh = (x - mean) * inv;
            let g = dy * w;
            s1[j % LANES] += g;
            s2[j % LANES] = g.mul_add(xh, s2[j % LANES]);
            *dw = dy.mul_add(xh, *dw);
            *db += dy;
        }
        let m1 = s1.iter().sum::<f32>() / n;
        let m2 = s2.iter().sum::<f32>() / n;
        for (((d, &x), &dy), &w) in dx.iter_mut().zip(x).zip(dy).zip(w) {
            let xh = (x - mean) * inv;
            *d = inv * ((-xh).mul_add(m2, dy * w) - m1);
        }
    }
}

/// LayerNorm of one row in place (mean and variance summed in lanes), and,
/// with `smooth = (inv, out)`, `out = row · inv` per channel.
#[inline(always)]
fn layer_norm_loop(
    r: &mut [f32],
    w: &[f32],
    b: &[f32],
    eps: f32,
    smooth: Option<(&[f32], &mut [f32])>,
) {
    let h = r.len() as f32;
    let mean = lane_sum(r, |v| v) / h;
    let var = lane_sum(r, |v| (v - mean) * (v - mean)) / h;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, g), bb) in r.iter_mut().zip(w).zip(b) {
        *v = (*v - mean) * inv * g + bb;
    }
    if let Some((s, out)) = smooth {
        for ((d, v), s) in out.iter_mut().zip(r.iter()).zip(s) {
            *d = v * s;
        }
    }
}

simd_builds!(gelu_loop => gelu_avx2: "avx2,fma", gelu_avx512: "avx512f,fma" (v: &mut [f32]));
simd_builds!(softmax_loop => softmax_avx2: "avx2,fma", softmax_avx512: "avx512f,fma" (v: &mut [f32], scale: f32));
simd_builds!(exp_loop => exp_avx2: "avx2,fma", exp_avx512: "avx512f,fma" (v: &mut [f32], scale: f32) -> f32);
simd_builds!(gelu_back_loop => gelu_back_avx2: "avx2,fma", gelu_back_avx512: "avx512f,fma" (x: &[f32], dy: &[f32], dx: &mut [f32]));
simd_builds!(softmax_back_loop => softmax_back_avx2: "avx2,fma", softmax_back_avx512: "avx512f,fma" (y: &[f32], dy: &[f32], dx: &mut [f32], len: usize));
simd_builds!(layer_norm_back_loop => layer_norm_back_avx2: "avx2,fma", layer_norm_back_avx512: "avx512f,fma" (
    x: &[f32],
    dy: &[f32],
    w: &[f32],
    eps: f32,
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32]
));
simd_builds!(layer_norm_loop => layer_norm_avx2: "avx2,fma", layer_norm_avx512: "avx512f,fma" (
    r: &mut [f32],
    w: &[f32],
    b: &[f32],
    eps: f32,
    smooth: Option<(&[f32], &mut [f32])>
));

/// GELU (erf) in place.
pub(crate) fn gelu_slice(v: &mut [f32]) {
    match super::sgemm::dispatch().path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the f32 path is AVX-512F only on a CPU with AVX-512F
        // (`KernelPath::missing`).
        Path::Avx512 => unsafe { gelu_avx512(v) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the f32 path is AVX2+FMA only on a CPU with both.
        Path::Avx2 => unsafe { gelu_avx2(v) },
        _ => gelu_loop(v),
    }
}

/// GELU's backward (see [`gelu_back_loop`]).
pub(crate) fn gelu_back(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    match super::sgemm::dispatch().path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `gelu_slice`.
        Path::Avx512 => unsafe { gelu_back_avx512(x, dy, dx) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `gelu_slice`.
        Path::Avx2 => unsafe { gelu_back_avx2(x, dy, dx) },
        _ => gelu_back_loop(x, dy, dx),
    }
}

/// Softmax's backward over rows of `len` values (see [`softmax_back_loop`]).
pub(crate) fn softmax_back(y: &[f32], dy: &[f32], dx: &mut [f32], len: usize) {
    match super::sgemm::dispatch().path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `gelu_slice`.
        Path::Avx512 => unsafe { softmax_back_avx512(y, dy, dx, len) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `gelu_slice`.
        Path::Avx2 => unsafe { softmax_back_avx2(y, dy, dx, len) },
        _ => softmax_back_loop(y, dy, dx, len),
    }
}

/// LayerNorm's backward over rows (see [`layer_norm_back_loop`]).
pub(crate) fn layer_norm_back(
    x: &[f32],
    dy: &[f32],
    w: &[f32],
    eps: f32,
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
) {
    match super::sgemm::dispatch().path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `gelu_slice`.
        Path::Avx512 => unsafe { layer_norm_back_avx512(x, dy, w, eps, dx, dw, db) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `gelu_slice`.
        Path::Avx2 => unsafe { layer_norm_back_avx2(x, dy, w, eps, dx, dw, db) },
        _ => layer_norm_back_loop(x, dy, w, eps, dx, dw, db),
    }
}

/// LayerNorm of one row in place (`w`, `b` as long as the row); with
/// `smooth = (inv, out)` also `out = row · inv` per channel, the smoothed
/// input of the int8 layer that reads it.
pub(crate) fn layer_norm(
    r: &mut [f32],
    w: &[f32],
    b: &[f32],
    eps: f32,
    smooth: Option<(&[f32], &mut [f32])>,
) {
    match super::sgemm::dispatch().path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `gelu_slice`.
        Path::Avx512 => unsafe { layer_norm_avx512(r, w, b, eps, smooth) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `gelu_slice`.
        Path::Avx2 => unsafe { layer_norm_avx2(r, w, b, eps, smooth) },
        _ => layer_norm_loop(r, w, b, eps, smooth),
    }
}

/// Softmax of `scale · row` (`scale` > 0) in place, for the first `len`
/// values of each `stride`-long row of `v` (the rest are left alone).
pub(crate) fn softmax_rows(v: &mut [f32], stride: usize, len: usize, scale: f32) {
    let path = super::sgemm::dispatch().path;
    for row in v.chunks_exact_mut(stride) {
        let row = &mut row[..len];
        match path {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in `gelu_slice`.
            Path::Avx512 => unsafe { softmax_avx512(row, scale) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in `gelu_slice`.
            Path::Avx2 => unsafe { softmax_avx2(row, scale) },
            _ => softmax_loop(row, scale),
        }
    }
}

/// [`softmax_rows`] before its division: the first `len` values of each
/// `stride`-long row become `e^(scale · v - max)` (the largest 1), and
/// `sums` (one per row) gets each row's sum.
pub(crate) fn exp_rows(v: &mut [f32], stride: usize, len: usize, scale: f32, sums: &mut [f32]) {
    let path = super::sgemm::dispatch().path;
    for (row, sum) in v.chunks_exact_mut(stride).zip(sums) {
        let row = &mut row[..len];
        *sum = match path {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in `gelu_slice`.
            Path::Avx512 => unsafe { exp_avx512(row, scale) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in `gelu_slice`.
            Path::Avx2 => unsafe { exp_avx2(row, scale) },
            _ => exp_loop(row, scale),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> impl Iterator<Item = f32> {
        (-200_000..=200_000).map(|i| i as f32 * 1e-4)
    }

    #[test]
    fn exp_is_accurate() {
        let mut worst = (0f64, 0f32);
        for x in (-86_999..=87_999).map(|i| i as f32 * 1e-3) {
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            if rel > worst.0 {
                worst = (rel, x);
            }
        }
        assert!(worst.0 < 5e-7, "worst relative error {worst:?}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1e30) < 1e-37 && exp(-1e30) >= 0.0);
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn softmax_matches_a_double_precision_softmax() {
        // Widths below, at and across the lane count; scores as attention
        // gives them (large, negative, equal).
        for width in [1usize, 5, 16, 17, 77, 128] {
            let row: Vec<f32> = (0..width)
                .map(|i| ((i * 37) % 23) as f32 * 1.7 - 20.0 + (i % 3) as f32 * 40.0)
                .collect();
            let scale = 0.3f64;
            let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let e: Vec<f64> = row
                .iter()
                .map(|&x| ((x as f64 - m) * scale).exp())
                .collect();
            let total: f64 = e.iter().sum();
            let mut got = row.clone();
            softmax_rows(&mut got, width, width, scale as f32);
            for (g, w) in got.iter().zip(&e) {
                assert!(
                    (*g as f64 - w / total).abs() < 1e-6,
                    "width {width}: {g} vs {}",
                    w / total
                );
            }
        }
    }

    #[test]
    fn layer_norm_matches_double_precision_and_every_build_agrees() {
        let h = 389; // lane groups and a remainder
        let row: Vec<f32> = (0..h)
            .map(|i| ((i * 31) % 17) as f32 * 0.37 - 2.0)
            .collect();
        let w: Vec<f32> = (0..h).map(|i| 0.5 + (i % 5) as f32 * 0.25).collect();
        let b: Vec<f32> = (0..h).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
        let inv: Vec<f32> = (0..h).map(|i| 1.0 + (i % 3) as f32).collect();
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / h as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / h as f64;
        let mut got = row.clone();
        let mut smoothed = vec![0f32; h];
        layer_norm(&mut got, &w, &b, 1e-12, Some((&inv, &mut smoothed)));
        for i in 0..h {
            let want = (row[i] as f64 - mean) / (var + 1e-12).sqrt() * w[i] as f64 + b[i] as f64;
            assert!(
                (got[i] as f64 - want).abs() < 1e-5,
                "[{i}] {} vs {want}",
                got[i]
            );
            assert_eq!(smoothed[i], got[i] * inv[i]);
        }
        let mut portable = row.clone();
        layer_norm_loop(&mut portable, &w, &b, 1e-12, None);
        assert_eq!(portable, got);
    }

    #[test]
    fn gelu_matches_candle_erf_gelu() {
        let mut worst = 0f32;
        for x in grid() {
            let want = x
                * (candle_core::cpu::erf::erf_f32(x * std::f32::consts::FRAC_1_SQRT_2) + 1.0)
                * 0.5;
            worst = worst.max((gelu_erf(x) - want).abs());
        }
        assert!(worst < 1e-6, "worst absolute error {worst}");
    }

    #[test]
    fn backward_kernels_give_the_dispatched_and_the_portable_build_the_same_floats() {
        let xs: Vec<f32> = grid().step_by(97).collect();
        let dy: Vec<f32> = xs.iter().map(|&x| (x * 7.3).sin()).collect();
        let n = xs.len();
        let (mut want, mut got) = (vec![0f32; n], vec![0f32; n]);
        gelu_back_loop(&xs, &dy, &mut want);
        gelu_back(&xs, &dy, &mut got);
        assert_eq!(got, want, "gelu");
        // Rows of 77 (lane groups and a remainder), `y` a real softmax.
        let m = n / 77 * 77;
        let mut y = xs[..m].to_vec();
        softmax_rows(&mut y, 77, 77, 0.5);
        let (mut want, mut got) = (vec![0f32; m], vec![0f32; m]);
        softmax_back_loop(&y, &dy[..m], &mut want, 77);
        softmax_back(&y, &dy[..m], &mut got, 77);
        assert_eq!(got, want, "softmax");
        // Rows of 389.
        let h = 389;
        let m = n / h * h;
        let w: Vec<f32> = (0..h).map(|i| 0.5 + (i % 5) as f32 * 0.25).collect();
        let mut want = (vec![0f32; m], vec![0f32; h], vec![0f32; h]);
        let mut got = want.clone();
        layer_norm_back_loop(
            &xs[..m],
            &dy[..m],
            &w,
            1e-12,
            &mut want.0,
            &mut want.1,
            &mut want.2,
        );
        layer_norm_back(
            &xs[..m],
            &dy[..m],
            &w,
            1e-12,
            &mut got.0,
            &mut got.1,
            &mut got.2,
        );
        assert_eq!(got, want, "layer norm");
    }

    #[test]
    fn vector_and_scalar_paths_agree() {
        let xs: Vec<f32> = grid().step_by(97).collect();
        let gelu_want: Vec<f32> = xs.iter().map(|&x| gelu_erf(x)).collect();
        // Rows of 77 (four full lane groups and a remainder).
        let mut soft_want = xs.clone();
        soft_want
            .chunks_exact_mut(77)
            .for_each(|r| softmax_loop(&mut r[..70], 0.125));
        // The dispatched path.
        let mut a = xs.clone();
        gelu_slice(&mut a);
        assert_eq!(a, gelu_want);
        let mut a = xs.clone();
        softmax_rows(&mut a, 77, 70, 0.125);
        assert_eq!(a, soft_want);
        // Each SIMD build itself, whatever the dispatch chose.
        #[cfg(target_arch = "x86_64")]
        for path in [Path::Avx2, Path::Avx512] {
            use super::super::KernelPath;
            if let Some(why) = path.missing() {
                eprintln!("SKIPPED vmath {} build: {why}", path.name());
                continue;
            }
            let (mut g, mut e) = (xs.clone(), xs.clone());
            // SAFETY: the CPU has the path's features (checked just above).
            unsafe {
                match path {
                    Path::Avx2 => {
                        gelu_avx2(&mut g);
                        e.chunks_exact_mut(77)
                            .for_each(|r| softmax_avx2(&mut r[..70], 0.125));
                    }
                    _ => {
                        gelu_avx512(&mut g);
                        e.chunks_exact_mut(77)
                            .for_each(|r| softmax_avx512(&mut r[..70], 0.125));
                    }
                }
            }
            assert_eq!(g, gelu_want, "{}", path.name());
            assert_eq!(e, soft_want, "{}", path.name());
        }
    }
}
