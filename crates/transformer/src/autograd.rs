//! The trained layers' element-wise steps as single candle ops with their
//! own backward passes: attention's softmax (with the padding bias), GELU,
//! LayerNorm, a dense layer's bias and dropout's mask.
//!
//! Written with candle's primitives, each of these is a chain of tensor
//! ops (a softmax is five forward and about ten backward, GELU's derivative
//! twelve), and each op reads and writes the whole tensor (attention scores
//! of 32 × 12 × 238² floats are 87 MB); a broadcast bias's gradient is a
//! reduction on one thread. Those chains took about half of a fine-tuning
//! step's CPU time on 2 AVX2 cores, the matrix products the rest (`perf`,
//! 2026-12-03). Here each is one pass over rows split between
//! rayon's threads, with the vectorized math of [`crate::kernels::vmath`]
//! (the inference forward's own softmax, GELU and LayerNorm, so a trained
//! layer computes what it will serve). Gradients flow only to the inputs
//! that take them: the padding bias and dropout's mask get none.
//!
//! Every op wants contiguous f32 inputs on the CPU (the callers make them
//! so) and fails with a message otherwise.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::kernels::vmath;

type CResult<T> = candle_core::Result<T>;

/// Floats a rayon task takes (whole rows, at least one).
const TASK_FLOATS: usize = 1 << 14;

fn rows_per_task(width: usize) -> usize {
    (TASK_FLOATS / width.max(1)).max(1)
}

fn floats<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> CResult<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: f32 input only")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: contiguous input only")
    };
    Ok(&v[a..b])
}

/// Adds the tasks' partial sums to `sums` in task order (the same floats
/// on every run, however rayon scheduled the tasks).
fn add_parts(sums: &mut [f32], parts: &[Vec<f32>]) {
    for part in parts {
        for (s, p) in sums.iter_mut().zip(part) {
            *s += p;
        }
    }
}

/// Softmax over the last axis of attention scores `(b, heads, s, s)` after
/// adding a per-key bias `(b, s)` (0 for a token, -1e30 for padding).
struct KeySoftmax;

impl CustomOp2 for KeySoftmax {
    fn name(&self) -> &'static str {
        "key-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = floats(s1, l1, self.name())?;
        let bias = floats(s2, l2, self.name())?;
        let (b, heads, s, s_k) = l1.shape().dims4()?;
        if s != s_k || bias.len() != b * s {
            candle_core::bail!(
                "key-softmax: scores {:?} and a bias of {} values do not match",
                l1.shape(),
                bias.len()
            );
        }
        let per = rows_per_task(s);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(per * s)
            .zip(x.par_chunks(per * s))
            .enumerate()
            .for_each(|(t, (o, x))| {
                for (r, (o, x)) in o.chunks_exact_mut(s).zip(x.chunks_exact(s)).enumerate() {
                    let batch = (t * per + r) / (heads * s);
                    let bias = &bias[batch * s..(batch + 1) * s];
                    for ((o, &x), &bb) in o.iter_mut().zip(x).zip(bias) {
                        *o = x + bb;
                    }
                }
                vmath::softmax_rows(o, s, s, 1.0);
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _bias: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let dx = y.apply_op2_no_bwd(&dy.contiguous()?, &SoftmaxBack)?;
        Ok((Some(dx), None))
    }
}

/// `(y, dy) → dx` of a softmax over the last axis.
struct SoftmaxBack;

impl CustomOp2 for SoftmaxBack {
    fn name(&self) -> &'static str {
        "softmax-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let y = floats(s1, l1, self.name())?;
        let dy = floats(s2, l2, self.name())?;
        let s = *l1.shape().dims().last().unwrap_or(&1);
        let per = rows_per_task(s) * s;
        let mut dx = vec![0f32; y.len()];
        dx.par_chunks_mut(per)
            .zip(y.par_chunks(per).zip(dy.par_chunks(per)))
            .for_each(|(dx, (y, dy))| vmath::softmax_back(y, dy, dx, s));
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Exact (erf) GELU.
struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let mut out = floats(s, l, self.name())?.to_vec();
        out.par_chunks_mut(TASK_FLOATS).for_each(vmath::gelu_slice);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &GeluBack)?))
    }
}

/// `(x, dy) → dx` of GELU.
struct GeluBack;

impl CustomOp2 for GeluBack {
    fn name(&self) -> &'static str {
        "gelu-erf-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = floats(s1, l1, self.name())?;
        let dy = floats(s2, l2, self.name())?;
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(TASK_FLOATS)
            .zip(x.par_chunks(TASK_FLOATS).zip(dy.par_chunks(TASK_FLOATS)))
            .for_each(|(dx, (x, dy))| vmath::gelu_back(x, dy, dx));
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// LayerNorm over the last axis: `(x, weight, bias)`.
struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = floats(s1, l1, self.name())?;
        let w = floats(s2, l2, self.name())?;
        let b = floats(s3, l3, self.name())?;
        let h = w.len();
        if h == 0 || b.len() != h || x.len() % h != 0 {
            candle_core::bail!("layer-norm: input {:?} against {h} weights", l1.shape());
        }
        let mut out = x.to_vec();
        out.par_chunks_mut(rows_per_task(h) * h).for_each(|rows| {
            for r in rows.chunks_exact_mut(h) {
                vmath::layer_norm(r, w, b, self.eps, None);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let h = w.elem_count();
        let rows = x.elem_count() / h;
        let flat = |t: &Tensor| t.contiguous()?.reshape((rows, h));
        let packed = flat(x)?.apply_op3_no_bwd(w, &flat(dy)?, &LayerNormBack { eps: self.eps })?;
        let dx = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = packed.get(rows)?.reshape(w.shape())?;
        let db = packed.get(rows + 1)?.reshape(w.shape())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// `(x, weight, dy) → (rows + 2, h)`: LayerNorm's `dx`, then the weight's
/// and the bias's gradients as two more rows.
struct LayerNormBack {
    eps: f32,
}

impl CustomOp3 for LayerNormBack {
    fn name(&self) -> &'static str {
        "layer-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = floats(s1, l1, self.name())?;
        let w = floats(s2, l2, self.name())?;
        let dy = floats(s3, l3, self.name())?;
        let h = w.len();
        let rows = x.len() / h;
        let per = rows_per_task(h) * h;
        let mut out = vec![0f32; (rows + 2) * h];
        let (dx, sums) = out.split_at_mut(rows * h);
        // Each task's share of the weight's and bias's gradients.
        let parts: Vec<Vec<f32>> = dx
            .par_chunks_mut(per)
            .zip(x.par_chunks(per).zip(dy.par_chunks(per)))
            .map(|(dx, (x, dy))| {
                let mut part = vec![0f32; 2 * h];
                let (dw, db) = part.split_at_mut(h);
                vmath::layer_norm_back(x, dy, w, self.eps, dx, dw, db);
                part
            })
            .collect();
        add_parts(sums, &parts);
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, h))))
    }
}

/// `x (rows, n) + bias (n)` on every row.
struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "add-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = floats(s1, l1, self.name())?;
        let b = floats(s2, l2, self.name())?;
        let n = b.len();
        if n == 0 || x.len() % n != 0 {
            candle_core::bail!("add-bias: input {:?} against {n} biases", l1.shape());
        }
        let per = rows_per_task(n) * n;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(per)
            .zip(x.par_chunks(per))
            .for_each(|(o, x)| {
                for (o, x) in o.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
                    for ((o, &x), &b) in o.iter_mut().zip(x).zip(b) {
                        *o = x + b;
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let db = dy
            .contiguous()?
            .apply_op1_no_bwd(&ColumnSum(b.elem_count()))?;
        Ok((Some(dy.clone()), Some(db.reshape(b.shape())?)))
    }
}

/// Rows of `n` values → their sum, `(n)`.
struct ColumnSum(usize);

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "column-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = floats(s, l, self.name())?;
        let n = self.0;
        let parts: Vec<Vec<f32>> = x
            .par_chunks(rows_per_task(n) * n)
            .map(|rows| {
                let mut part = vec![0f32; n];
                for r in rows.chunks_exact(n) {
                    for (p, &v) in part.iter_mut().zip(r) {
                        *p += v;
                    }
                }
                part
            })
            .collect();
        let mut sum = vec![0f32; n];
        add_parts(&mut sum, &parts);
        Ok((CpuStorage::F32(sum), Shape::from(n)))
    }
}

/// Multiplication by a fixed mask (dropout's): the gradient is the
/// output's times the same mask.
struct MaskMul(Arc<Vec<f32>>);

impl CustomOp1 for MaskMul {
    fn name(&self) -> &'static str {
        "mask-mul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = floats(s, l, self.name())?;
        if x.len() != self.0.len() {
            candle_core::bail!(
                "mask-mul: {} values against a mask of {}",
                x.len(),
                self.0.len()
            );
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(TASK_FLOATS)
            .zip(
                x.par_chunks(TASK_FLOATS)
                    .zip(self.0.par_chunks(TASK_FLOATS)),
            )
            .for_each(|(o, (x, m))| {
                for ((o, x), m) in o.iter_mut().zip(x).zip(m) {
                    *o = x * m;
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

/// Attention's softmax of `scores` `(b, heads, s, s)` with the padding
/// bias `(b, 1, 1, s)` added first (`None`: nothing padded).
pub(crate) fn key_softmax(scores: &Tensor, bias: Option<&Tensor>) -> CResult<Tensor> {
    let (b, _, s, _) = scores.dims4()?;
    let bias = match bias {
        Some(m) => m.contiguous()?,
        None => Tensor::zeros((b, s), scores.dtype(), scores.device())?,
    };
    scores.contiguous()?.apply_op2(&bias, KeySoftmax)
}

/// Exact (erf) GELU.
pub(crate) fn gelu_erf(x: &Tensor) -> CResult<Tensor> {
    x.contiguous()?.apply_op1(Gelu)
}

/// LayerNorm over the last axis.
pub(crate) fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> CResult<Tensor> {
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, LayerNorm { eps })
}

/// `x (rows, n) + bias (n)` on every row.
pub(crate) fn add_bias(x: &Tensor, bias: &Tensor) -> CResult<Tensor> {
    x.contiguous()?.apply_op2(&bias.contiguous()?, AddBias)
}

/// `x` times `mask` (of as many values), element by element.
pub(crate) fn mask_mul(x: &Tensor, mask: Vec<f32>) -> CResult<Tensor> {
    x.contiguous()?.apply_op1(MaskMul(Arc::new(mask)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    /// Fixed pseudo-random values in [-scale, scale).
    fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(got.len(), want.len(), "{what}");
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= tol * scale,
            "{what}: off by {worst} (scale {scale})"
        );
    }

    /// `Σ out · weights` back to each of `vars`, for our op's output and
    /// candle's composed one.
    fn grads(out: &Tensor, weights: &Tensor, vars: &[&Var]) -> Vec<Tensor> {
        let g = (out * weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        vars.iter().map(|v| g.get(v).unwrap().clone()).collect()
    }

    fn var(shape: &[usize], seed: u64, scale: f32) -> Var {
        let n = shape.iter().product();
        Var::from_vec(values(n, seed, scale), shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn softmax_with_padding_and_its_gradient_match_candle() {
        // 2 × 3 heads × 77 keys: several rayon tasks, a batch boundary
        // inside one, and the second text's last 20 keys padded.
        let (b, heads, s) = (2, 3, 77);
        let x = var(&[b, heads, s, s], 1, 6.0);
        let bias: Vec<f32> = (0..b * s)
            .map(|i| {
                if i >= s && i % s >= s - 20 {
                    -1e30
                } else {
                    0.0
                }
            })
            .collect();
        let bias = Tensor::from_vec(bias, (b, 1, 1, s), &Device::Cpu).unwrap();
        let w = Tensor::from_vec(
            values(b * heads * s * s, 2, 1.0),
            (b, heads, s, s),
            &Device::Cpu,
        )
        .unwrap();
        for bias in [Some(&bias), None] {
            let ours = key_softmax(x.as_tensor(), bias).unwrap();
            let summed = match bias {
                Some(m) => x.as_tensor().broadcast_add(m).unwrap(),
                None => x.as_tensor().clone(),
            };
            let theirs = candle_nn::ops::softmax(&summed, D::Minus1).unwrap();
            assert_close("softmax", &ours, &theirs, 1e-6);
            let (g1, g2) = (grads(&ours, &w, &[&x]), grads(&theirs, &w, &[&x]));
            assert_close("softmax gradient", &g1[0], &g2[0], 1e-5);
        }
        // Padded keys get no attention.
        let y = key_softmax(x.as_tensor(), Some(&bias)).unwrap();
        let padded = y.get(1).unwrap().narrow(2, s - 20, 20).unwrap();
        assert!(padded.max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-30);
    }

    #[test]
    fn layer_norm_and_its_gradients_match_candle() {
        // 100 rows of 389: several tasks, each with its own partial sums.
        let (rows, h) = (100, 389);
        let x = var(&[rows, h], 3, 4.0);
        let g = Var::from_vec(
            values(h, 4, 0.5).iter().map(|v| v + 1.0).collect(),
            h,
            &Device::Cpu,
        )
        .unwrap();
        let b = var(&[h], 5, 0.3);
        let w = Tensor::from_vec(values(rows * h, 6, 1.0), (rows, h), &Device::Cpu).unwrap();
        let ours = layer_norm(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-12).unwrap();
        let theirs =
            candle_nn::ops::layer_norm_slow(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-12)
                .unwrap();
        assert_close("layer norm", &ours, &theirs, 1e-5);
        let (a, c) = (
            grads(&ours, &w, &[&x, &g, &b]),
            grads(&theirs, &w, &[&x, &g, &b]),
        );
        for (name, (a, c)) in ["x", "weight", "bias"].iter().zip(a.iter().zip(&c)) {
            assert_close(&format!("layer norm gradient of {name}"), a, c, 1e-4);
        }
    }

    #[test]
    fn gelu_bias_and_mask_and_their_gradients_match_candle() {
        let x = var(&[40_000], 7, 8.0);
        let w = Tensor::from_vec(values(40_000, 8, 1.0), 40_000, &Device::Cpu).unwrap();
        let ours = gelu_erf(x.as_tensor()).unwrap();
        let theirs = x.as_tensor().gelu_erf().unwrap();
        assert_close("gelu", &ours, &theirs, 1e-6);
        let (a, c) = (grads(&ours, &w, &[&x]), grads(&theirs, &w, &[&x]));
        assert_close("gelu gradient", &a[0], &c[0], 1e-5);

        // A bias on 100 rows of 389 (several tasks).
        let rows = var(&[100, 389], 10, 3.0);
        let bias = var(&[389], 11, 1.0);
        let wr = Tensor::from_vec(values(100 * 389, 12, 1.0), (100, 389), &Device::Cpu).unwrap();
        let ours = add_bias(rows.as_tensor(), bias.as_tensor()).unwrap();
        let theirs = rows.as_tensor().broadcast_add(bias.as_tensor()).unwrap();
        assert_close("bias", &ours, &theirs, 0.0);
        let (a, c) = (
            grads(&ours, &wr, &[&rows, &bias]),
            grads(&theirs, &wr, &[&rows, &bias]),
        );
        assert_close("bias gradient of x", &a[0], &c[0], 0.0);
        assert_close("bias gradient of the bias", &a[1], &c[1], 1e-5);

        let mask: Vec<f32> = values(40_000, 9, 1.0)
            .iter()
            .map(|&v| if v < -0.8 { 0.0 } else { 1.0 / 0.9 })
            .collect();
        let m = Tensor::from_vec(mask.clone(), 40_000, &Device::Cpu).unwrap();
        let ours = mask_mul(x.as_tensor(), mask).unwrap();
        let theirs = x.as_tensor().mul(&m).unwrap();
        assert_close("mask", &ours, &theirs, 0.0);
        let (a, c) = (grads(&ours, &w, &[&x]), grads(&theirs, &w, &[&x]));
        assert_close("mask gradient", &a[0], &c[0], 0.0);
    }
}
