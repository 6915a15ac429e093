//! Element-wise math for the inference hot path, written so the compiler
//! vectorizes it: `exp` by range reduction and a polynomial, exact-erf GELU
//! by Abramowitz & Stegun 7.1.26 (|error of erf| ≤ 1.5e-7). libm's scalar
//! `erff`/`expf` were about a fifth of the encoder's time. On x86-64 the
//! loops are compiled again for AVX2 and for AVX-512F (the same IEEE
//! operations per lane, no fused multiply-add, so every build gives the same
//! floats); the build that runs follows the f32 dense path
//! ([`super::sgemm::dispatch`]).

use super::sgemm::Path;

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two (Cody & Waite): LN2_HI has few mantissa bits, so
/// `n * LN2_HI` is exact for every |n| ≤ 128.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 * 2^23: adding and subtracting it rounds an f32 to the nearest integer.
const ROUND: f32 = 12_582_912.0;

/// e^x with a relative error of a few 1e-7 for x in [-87, 88] (clamped
/// outside: e^-87 ≈ 1.6e-38 stands in for 0).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    // Taylor to degree 7 on |r| ≤ ln2/2: truncation error < 2e-8 relative.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

/// GELU with the exact (erf) definition: 0.5·x·(1 + erf(x/√2)).
#[inline(always)]
pub(crate) fn gelu_erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_7;
    const A4: f32 = -1.453_152;
    const A5: f32 = 1.061_405_4;
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let a = z.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = t * (A1 + t * (A2 + t * (A3 + t * (A4 + t * A5))));
    let erf_abs = 1.0 - poly * exp(-a * a);
    0.5 * x * (1.0 + erf_abs.copysign(z))
}

#[inline(always)]
fn gelu_loop(v: &mut [f32]) {
    for x in v {
        *x = gelu_erf(*x);
    }
}

#[inline(always)]
fn exp_sub_loop(v: &mut [f32], m: f32) {
    for x in v {
        *x = exp(*x - m);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gelu_avx2(v: &mut [f32]) {
    gelu_loop(v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn exp_sub_avx2(v: &mut [f32], m: f32) {
    exp_sub_loop(v, m)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_avx512(v: &mut [f32]) {
    gelu_loop(v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_sub_avx512(v: &mut [f32], m: f32) {
    exp_sub_loop(v, m)
}

/// GELU (erf) in place.
pub(crate) fn gelu_slice(v: &mut [f32]) {
    match super::sgemm::dispatch().path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the f32 path is AVX-512F only on a CPU with AVX-512F
        // (`KernelPath::missing`).
        Path::Avx512 => unsafe { gelu_avx512(v) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the f32 path is AVX2+FMA only on a CPU with AVX2.
        Path::Avx2 => unsafe { gelu_avx2(v) },
        _ => gelu_loop(v),
    }
}

/// `v[i] = e^(v[i] - m)` in place.
pub(crate) fn exp_sub_slice(v: &mut [f32], m: f32) {
    match super::sgemm::dispatch().path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `gelu_slice`.
        Path::Avx512 => unsafe { exp_sub_avx512(v, m) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `gelu_slice`.
        Path::Avx2 => unsafe { exp_sub_avx2(v, m) },
        _ => exp_sub_loop(v, m),
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
    fn vector_and_scalar_paths_agree() {
        let xs: Vec<f32> = grid().step_by(97).collect();
        let gelu_want: Vec<f32> = xs.iter().map(|&x| gelu_erf(x)).collect();
        let exp_want: Vec<f32> = xs.iter().map(|&x| exp(x - 3.0)).collect();
        // The dispatched path.
        let mut a = xs.clone();
        gelu_slice(&mut a);
        assert_eq!(a, gelu_want);
        let mut a = xs.clone();
        exp_sub_slice(&mut a, 3.0);
        assert_eq!(a, exp_want);
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
                        exp_sub_avx2(&mut e, 3.0);
                    }
                    _ => {
                        gelu_avx512(&mut g);
                        exp_sub_avx512(&mut e, 3.0);
                    }
                }
            }
            assert_eq!(g, gelu_want, "{}", path.name());
            assert_eq!(e, exp_want, "{}", path.name());
        }
    }
}
