//! Error-compensating rounding of int8 weights (GPTQ, Frantar et al. 2022).
//!
//! Rounding each weight to its nearest code minimizes the error of every
//! weight alone, not of the layer's output. Given the Gram matrix `H = XᵀX`
//! of a layer's inputs on calibration rows, the columns of a weight row
//! are rounded one after the other and each rounding error is spread over
//! the columns not yet rounded, in the direction that `H` says keeps the
//! output `x · w` closest to the float product (the optimal brain surgeon
//! update). Rows are independent and share one factor of `H⁻¹`.
//!
//! With `H + λI = R Rᵀ` (`R` upper triangular, from a Cholesky factor of
//! the reversed matrix), `U = R⁻¹` is the upper factor of the inverse
//! (`H⁻¹ = UᵀU`), and rounding column `j` updates the later columns by
//! `w_t −= (w_j − ŵ_j) / U_jj · U_jt`.

use casetag_core::dot;

use super::sgemm::{self, PackedW, Path};

simd_builds!(round_row_loop => round_row_avx2: "avx2,fma", round_row_avx512: "avx512f,fma" (
    w: &mut [f32],
    scale: f32,
    max: i32,
    u: &[f32],
    out: &mut [i8]
));

/// Dampening added to the diagonal, as a fraction of its mean: keeps the
/// factorization stable when calibration rows are fewer than inputs.
const DAMP: f64 = 0.01;

/// `XᵀX` (`k × k`, row-major) of `n` rows of `x` (`n × k`).
pub(crate) fn gram(x: &[f32], n: usize, k: usize) -> Vec<f32> {
    assert_eq!(x.len(), n * k, "gram shapes");
    // Xᵀ as a (k × n) matrix, both as the left operand and as the packed
    // weights: out (k, k) = Xᵀ · (Xᵀ)ᵀ.
    let mut xt = vec![0f32; k * n];
    for (r, row) in x.chunks_exact(k).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            xt[j * n + r] = v;
        }
    }
    let mut out = vec![0f32; k * k];
    if PackedW::fits(k) {
        sgemm::matmul_acc(&mut out, &xt, &PackedW::new(&xt, k, n), k);
    } else {
        for i in 0..k {
            for j in 0..k {
                out[i * k + j] = dot(&xt[i * n..(i + 1) * n], &xt[j * n..(j + 1) * n]);
            }
        }
    }
    out
}

/// Scales `H`'s rows and columns by `d` (`diag(d) · H · diag(d)`): the Gram
/// matrix of inputs whose channel `j` was multiplied by `d_j`.
pub(crate) fn scale_gram(h: &mut [f32], d: &[f32]) {
    let k = d.len();
    for (i, row) in h.chunks_exact_mut(k).enumerate() {
        for (v, dj) in row.iter_mut().zip(d) {
            *v *= d[i] * dj;
        }
    }
}

/// The upper factor `U` (`k × k`, row-major, zero below the diagonal) of
/// `(H + λI)⁻¹ = UᵀU`. A channel no calibration row reached (zero
/// diagonal) gets a unit diagonal. Single-threaded: the layers of a model
/// are factored in parallel instead.
pub(crate) fn inverse_factor(h: &[f32], k: usize) -> Vec<f32> {
    assert_eq!(h.len(), k * k, "inverse_factor shapes");
    let mean = (0..k).map(|i| h[i * k + i] as f64).sum::<f64>() / k as f64;
    let damp = (DAMP * mean).max(f64::from(f32::MIN_POSITIVE)) as f32;
    // G = P (H + λI) P, P reversing the order (upper triangle used).
    let mut g = vec![0f32; k * k];
    for i in 0..k {
        for j in i..k {
            let (ri, rj) = (k - 1 - i, k - 1 - j);
            let mut v = h[ri * k + rj];
            if i == j {
                v = if h[ri * k + ri] > 0.0 { v + damp } else { 1.0 };
            }
            g[i * k + j] = v;
        }
    }
    match sgemm::dispatch().path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the f32 path is AVX-512F only on a CPU with AVX-512F.
        Path::Avx512 => unsafe { factor_avx512(&mut g, k) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the f32 path is AVX2+FMA only on a CPU with both.
        Path::Avx2 => unsafe { factor_avx2(&mut g, k) },
        _ => factor_loop(&mut g, k),
    }
}

simd_builds!(factor_loop => factor_avx2: "avx2,fma", factor_avx512: "avx512f,fma" (
    g: &mut [f32],
    k: usize
) -> Vec<f32>);

/// `y += a · x`.
#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// [`inverse_factor`] from `g` (the reversed, dampened matrix; its upper
/// triangle is read and overwritten).
///
/// Cholesky `G = SᵀS` (`S` upper), row by row: row `j` of `S` is row `j` of
/// what is left divided by its pivot's root, and is then taken out of the
/// rows below (`y -= s_ji · s_j`, contiguous). Then `W = S⁻¹` (upper) by
/// back substitution, row by row from the last. Since `G = P H P`, `H =
/// (P Sᵀ P)(P S P)` with `P Sᵀ P` upper, and `U = (P Sᵀ P)⁻¹ = P Wᵀ P`.
#[inline(always)]
fn factor_loop(g: &mut [f32], k: usize) -> Vec<f32> {
    for j in 0..k {
        let (done, rest) = g.split_at_mut((j + 1) * k);
        let row = &mut done[j * k..];
        let d = row[j].max(1e-30).sqrt();
        row[j..].iter_mut().for_each(|v| *v /= d);
        for (i, below) in rest.chunks_exact_mut(k).enumerate() {
            let i = j + 1 + i;
            axpy(&mut below[i..], -row[i], &row[i..]);
        }
    }
    // W = S⁻¹: row i = (e_i − Σ_{t>i} S_it · W_t) / S_ii.
    let mut w = vec![0f32; k * k];
    for i in (0..k).rev() {
        let (upper, lower) = w.split_at_mut((i + 1) * k);
        let row = &mut upper[i * k..];
        row[i] = 1.0;
        for (t, wt) in lower.chunks_exact(k).enumerate() {
            let t = i + 1 + t;
            axpy(&mut row[t..], -g[i * k + t], &wt[t..]);
        }
        let d = g[i * k + i];
        row[i..].iter_mut().for_each(|v| *v /= d);
    }
    // U[a][b] = W[k-1-b][k-1-a].
    let mut u = vec![0f32; k * k];
    for a in 0..k {
        for b in a..k {
            u[a * k + b] = w[(k - 1 - b) * k + (k - 1 - a)];
        }
    }
    u
}

/// The codes of one weight row at step `scale` (`|code| ≤ max`), rounded
/// column after column with each error spread over the later columns by
/// `u` (from [`inverse_factor`]).
pub(crate) fn round_row(row: &[f32], scale: f32, max: i32, u: &[f32], out: &mut [i8]) {
    let mut w = row.to_vec();
    match sgemm::dispatch().path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `inverse_factor`.
        Path::Avx512 => unsafe { round_row_avx512(&mut w, scale, max, u, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `inverse_factor`.
        Path::Avx2 => unsafe { round_row_avx2(&mut w, scale, max, u, out) },
        _ => round_row_loop(&mut w, scale, max, u, out),
    }
}

/// [`round_row`] on a working copy `w` of the row.
#[inline(always)]
fn round_row_loop(w: &mut [f32], scale: f32, max: i32, u: &[f32], out: &mut [i8]) {
    let k = w.len();
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let lim = max as f32;
    for j in 0..k {
        let q = (w[j] * inv).round().clamp(-lim, lim);
        out[j] = q as i8;
        let ujj = u[j * k + j];
        if ujj == 0.0 || scale == 0.0 {
            continue;
        }
        let err = (w[j] - q * scale) / ujj;
        axpy(&mut w[j + 1..], -err, &u[j * k + j + 1..(j + 1) * k]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::values as noise;
    use super::*;

    /// Inputs with correlated channels (a few shared factors plus noise).
    fn inputs(n: usize, k: usize) -> Vec<f32> {
        let f = noise(n * 4, 1);
        let e = noise(n * k, 2);
        let mix = noise(4 * k, 3);
        let mut x = vec![0f32; n * k];
        for r in 0..n {
            for j in 0..k {
                let common: f32 = (0..4).map(|t| f[r * 4 + t] * mix[t * k + j]).sum();
                x[r * k + j] = 2.0 * common + 0.3 * e[r * k + j];
            }
        }
        x
    }

    #[test]
    fn the_inverse_factor_inverts_the_dampened_gram_matrix() {
        let (n, k) = (64, 32);
        let x = inputs(n, k);
        let h = gram(&x, n, k);
        let u = inverse_factor(&h, k);
        let mean = (0..k).map(|i| h[i * k + i] as f64).sum::<f64>() / k as f64;
        // (UᵀU)(H + λI) = I
        for i in 0..k {
            for j in 0..k {
                let mut v = 0f64;
                for t in 0..k {
                    let hinv_it: f64 = (0..k)
                        .map(|m| u[m * k + i] as f64 * u[m * k + t] as f64)
                        .sum();
                    let htj = h[t * k + j] as f64 + if t == j { DAMP * mean } else { 0.0 };
                    v += hinv_it * htj;
                }
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-3, "[{i}][{j}] = {v}");
            }
        }
        for a in 0..k {
            for b in 0..a {
                assert_eq!(u[a * k + b], 0.0);
            }
        }
    }

    #[test]
    fn compensated_codes_keep_the_product_closer_than_nearest_rounding() {
        let (n, k, o) = (256, 64, 8);
        let x = inputs(n, k);
        let w = noise(o * k, 9);
        let u = inverse_factor(&gram(&x, n, k), k);
        let (mut plain, mut comp) = (0f64, 0f64);
        for row in w.chunks_exact(k) {
            let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            // A coarse step (4-bit range) so rounding errors are large.
            let s = amax / 7.0;
            let near: Vec<f32> = row
                .iter()
                .map(|v| (v / s).round().clamp(-7.0, 7.0) * s)
                .collect();
            let mut codes = vec![0i8; k];
            round_row(row, s, 7, &u, &mut codes);
            let gq: Vec<f32> = codes.iter().map(|&q| q as f32 * s).collect();
            for xr in x.chunks_exact(k) {
                let exact: f32 = xr.iter().zip(row).map(|(a, b)| a * b).sum();
                let p: f32 = xr.iter().zip(&near).map(|(a, b)| a * b).sum();
                let g: f32 = xr.iter().zip(&gq).map(|(a, b)| a * b).sum();
                plain += ((p - exact) as f64).powi(2);
                comp += ((g - exact) as f64).powi(2);
            }
        }
        assert!(comp < 0.7 * plain, "compensated {comp} vs nearest {plain}");
    }
}
