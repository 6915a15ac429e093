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

use rayon::prelude::*;

use casetag_core::dot;

use super::sgemm::{self, PackedW};

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
/// `(H + λI)⁻¹ = UᵀU`. A channel no calibration row
/// reached (zero diagonal) gets a unit diagonal.
pub(crate) fn inverse_factor(h: &[f32], k: usize) -> Vec<f32> {
    assert_eq!(h.len(), k * k, "inverse_factor shapes");
    let mean = (0..k).map(|i| h[i * k + i] as f64).sum::<f64>() / k as f64;
    let damp = (DAMP * mean).max(f64::from(f32::MIN_POSITIVE)) as f32;
    // The reversed matrix G = P H P (P reverses the order), lower
    // Cholesky G = L Lᵀ; then H = R Rᵀ with R = P L P upper.
    let mut l = vec![0f32; k * k];
    for i in 0..k {
        for j in 0..=i {
            let (ri, rj) = (k - 1 - i, k - 1 - j);
            let mut v = h[ri * k + rj];
            if i == j {
                v += damp;
                if h[ri * k + ri] <= 0.0 {
                    v = 1.0;
                }
            }
            l[i * k + j] = v;
        }
    }
    // Left-looking Cholesky, column by column; column j's rows in parallel.
    for j in 0..k {
        let rest = &mut l[j * k..];
        let (row_j, below) = rest.split_at_mut(k);
        let d = (row_j[j] - dot(&row_j[..j], &row_j[..j])).max(1e-30).sqrt();
        row_j[j] = d;
        let lj = &row_j[..j];
        below
            .par_chunks_exact_mut(k)
            .with_min_len(64)
            .for_each(|row_i| {
                row_i[j] = (row_i[j] - dot(&row_i[..j], lj)) / d;
            });
    }
    // R = P L P is upper; U = R⁻¹ is upper. With P L P's inverse being
    // P L⁻¹ P, invert the lower L (column by column, forward substitution)
    // and reverse back.
    let mut linv = vec![0f32; k * k];
    // Column c of L⁻¹: solve L y = e_c (y_i = 0 for i < c). Written as rows
    // of the transpose for contiguous access, then transposed.
    let cols: Vec<Vec<f32>> = (0..k)
        .into_par_iter()
        .map(|c| {
            let mut y = vec![0f32; k];
            for i in c..k {
                let row = &l[i * k..i * k + i];
                let s = if i == c { 1.0 } else { 0.0 } - dot(&row[c..i], &y[c..i]);
                y[i] = s / l[i * k + i];
            }
            y
        })
        .collect();
    for (c, y) in cols.iter().enumerate() {
        for i in c..k {
            linv[i * k + c] = y[i];
        }
    }
    // U[a][b] = L⁻¹[k-1-a][k-1-b].
    let mut u = vec![0f32; k * k];
    for a in 0..k {
        for b in a..k {
            u[a * k + b] = linv[(k - 1 - a) * k + (k - 1 - b)];
        }
    }
    u
}

/// The codes of one weight row at step `scale` (`|code| ≤ max`), rounded
/// column after column with each error spread over the later columns by
/// `u` (from [`inverse_factor`]).
pub(crate) fn round_row(row: &[f32], scale: f32, max: i32, u: &[f32], out: &mut [i8]) {
    let k = row.len();
    let mut w = row.to_vec();
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
        for (wt, ut) in w[j + 1..].iter_mut().zip(&u[j * k + j + 1..(j + 1) * k]) {
            *wt -= err * ut;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random values in [-1, 1).
    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

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
