//! The trained layers' element-wise steps as single candle ops with their
//! own backward passes: self-attention (its products and its softmax with
//! the padding bias), GELU, LayerNorm, a dense layer (product and bias) and
//! dropout's mask.
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

/// Self-attention from a dense layer's packed projections `qkv (b·s, 3·h)`
/// (queries, keys and values side by side, each `heads` heads of `dh`) and
/// the padding bias `(b, s)`, to the context `(b·s, h)`: candle's products
/// and [`KeySoftmax`] as one node of the graph. Composed of candle's ops,
/// the split into heads, the scaling, the transposes and the products are a
/// dozen nodes, and the backward pass fills and adds a gradient the size of
/// each (three of the whole `qkv`, two of `b·heads·s²` scores). Here the
/// backward computes the same products (the same floats) from `qkv` and the
/// softmax the forward kept.
struct Attention {
    b: usize,
    s: usize,
    heads: usize,
    dh: usize,
    /// The forward's softmax, `(b, heads, s, s)`.
    probs: std::sync::Mutex<Option<Tensor>>,
}

impl Attention {
    /// Queries (scaled by `1/√dh`), keys and values, each `(b, heads, s, dh)`.
    fn split(&self, qkv: &Tensor) -> CResult<(Tensor, Tensor, Tensor)> {
        let (b, s, heads, dh) = (self.b, self.s, self.heads, self.dh);
        let t = qkv
            .reshape((b, s, 3, heads, dh))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let q = (t.get(0)? * (1.0 / (dh as f64).sqrt()))?;
        Ok((q, t.get(1)?, t.get(2)?))
    }
}

impl CustomOp2 for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let qkv = floats(s1, l1, self.name())?;
        let bias = floats(s2, l2, self.name())?;
        let (b, s, h) = (self.b, self.s, self.heads * self.dh);
        if qkv.len() != b * s * 3 * h || bias.len() != b * s {
            candle_core::bail!(
                "attention: projections {:?} and a bias of {} values for {b} sequences of {s}",
                l1.shape(),
                bias.len()
            );
        }
        let cpu = candle_core::Device::Cpu;
        let (q, k, v) = self.split(&Tensor::from_slice(qkv, (b * s, 3 * h), &cpu)?)?;
        let bias = Tensor::from_slice(bias, (b, s), &cpu)?;
        let probs = q.matmul(&k.t()?)?.apply_op2_no_bwd(&bias, &KeySoftmax)?;
        let ctx = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .flatten_all()?
            .to_vec1::<f32>()?;
        *self.probs.lock().unwrap_or_else(|e| e.into_inner()) = Some(probs);
        Ok((CpuStorage::F32(ctx), Shape::from((b * s, h))))
    }

    fn bwd(
        &self,
        qkv: &Tensor,
        _bias: &Tensor,
        _ctx: &Tensor,
        dctx: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let (b, s, heads, dh) = (self.b, self.s, self.heads, self.dh);
        let Some(probs) = self.probs.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            candle_core::bail!("attention: backward pass without a forward")
        };
        let (q, k, v) = self.split(&qkv.detach())?;
        let d = dctx
            .reshape((b, s, heads, dh))?
            .transpose(1, 2)?
            .contiguous()?;
        // As candle differentiates its products: `probs · v`, then
        // `q · kᵀ` (the view `kᵀ`), then the scaling of `q`.
        let dv = probs.t()?.matmul(&d)?;
        let dprobs = d.matmul(&v.t()?)?;
        let dscores = probs.apply_op2_no_bwd(&dprobs, &SoftmaxBack)?;
        let dq = (dscores.matmul(&k.t()?.t()?)? * (1.0 / (dh as f64).sqrt()))?;
        let dk = q.t()?.matmul(&dscores)?.t()?;
        let dqkv = Tensor::stack(&[dq, dk, dv], 0)?
            .permute((1, 3, 0, 2, 4))?
            .contiguous()?
            .reshape((b * s, 3 * heads * dh))?;
        Ok((Some(dqkv), None))
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

/// A dense layer, `x (rows, k) · wᵀ + b` for `w (o, k)`, `b (o)`: candle's
/// product, then the bias added to each row (the same floats as candle's
/// product and broadcast sum),
/// as one node of the graph. Its backward computes `x`'s gradient only
/// where `x` takes one: the first trained layer's input (states stored from
/// the frozen layers below) does not, and that product is a quarter of the
/// layer's QKV backward.
struct Linear;

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "linear"
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
        let (x, w, b) = (
            floats(s1, l1, self.name())?,
            floats(s2, l2, self.name())?,
            floats(s3, l3, self.name())?,
        );
        let (o, k) = l2.shape().dims2()?;
        if b.len() != o || k == 0 || x.len() % k != 0 {
            candle_core::bail!(
                "linear: input {:?}, weights {:?}, bias {:?}",
                l1.shape(),
                l2.shape(),
                l3.shape()
            );
        }
        let n = x.len() / k;
        // Copies in and out cost k + o floats a row against the product's
        // k · o multiply-adds.
        let cpu = candle_core::Device::Cpu;
        let xt = Tensor::from_slice(x, (n, k), &cpu)?;
        let wt = Tensor::from_slice(w, (o, k), &cpu)?;
        let mut out = xt.matmul(&wt.t()?)?.flatten_all()?.to_vec1::<f32>()?;
        out.par_chunks_mut(rows_per_task(o) * o).for_each(|rows| {
            for row in rows.chunks_exact_mut(o) {
                for (v, &b) in row.iter_mut().zip(b) {
                    *v += b;
                }
            }
        });
        let mut dims = l1.shape().dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = o;
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (o, k) = w.dims2()?;
        let dy = dy.contiguous()?.reshape(((), o))?;
        let x2 = x.reshape(((), k))?;
        // As candle's product of `x` and the view `wᵀ` differentiates.
        let dx = if x.track_op() {
            Some(dy.matmul(&w.t()?.t()?)?.reshape(x.shape())?)
        } else {
            None
        };
        let dw = x2.t()?.matmul(&dy)?.t()?;
        let db = dy.apply_op1_no_bwd(&ColumnSum(o))?;
        Ok((dx, Some(dw), Some(db.reshape(b.shape())?)))
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

/// Self-attention of `b` sequences of `s` tokens: the packed projections
/// `qkv (b·s, 3·heads·dh)` and the padding bias `(b, 1, 1, s)` (`None`:
/// nothing padded) to the context `(b·s, heads·dh)`.
pub(crate) fn attention(
    qkv: &Tensor,
    bias: Option<&Tensor>,
    b: usize,
    s: usize,
    heads: usize,
    dh: usize,
) -> CResult<Tensor> {
    let bias = match bias {
        Some(m) => m.contiguous()?,
        None => Tensor::zeros((b, s), qkv.dtype(), qkv.device())?,
    };
    let op = Attention {
        b,
        s,
        heads,
        dh,
        probs: Default::default(),
    };
    qkv.contiguous()?.apply_op2(&bias, op)
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

/// A dense layer: `x (.., k) · wᵀ + b` for `w (o, k)` and `b (o)`.
pub(crate) fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> CResult<Tensor> {
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, Linear)
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

    /// Attention's softmax of `scores` `(b, heads, s, s)` with the padding
    /// bias `(b, 1, 1, s)` added first (`None`: nothing padded).
    fn key_softmax(scores: &Tensor, bias: Option<&Tensor>) -> CResult<Tensor> {
        let (b, _, s, _) = scores.dims4()?;
        let bias = match bias {
            Some(m) => m.contiguous()?,
            None => Tensor::zeros((b, s), scores.dtype(), scores.device())?,
        };
        scores.contiguous()?.apply_op2(&bias, KeySoftmax)
    }

    #[test]
    fn attention_and_its_gradient_are_candle_s_composed_ops() {
        // 3 texts of 29 tokens (the last one's final 9 padded), 4 heads of 8.
        let (b, s, heads, dh) = (3, 29, 4, 8);
        let h = heads * dh;
        let qkv = var(&[b * s, 3 * h], 14, 2.0);
        let bias: Vec<f32> = (0..b * s)
            .map(|i| if i >= 2 * s + 20 { -1e30 } else { 0.0 })
            .collect();
        let bias = Tensor::from_vec(bias, (b, 1, 1, s), &Device::Cpu).unwrap();
        let w = Tensor::from_vec(values(b * s * h, 15, 1.0), (b * s, h), &Device::Cpu).unwrap();
        let composed = |bias: Option<&Tensor>| {
            let t = qkv
                .as_tensor()
                .reshape((b, s, 3, heads, dh))?
                .permute((2, 0, 3, 1, 4))?
                .contiguous()?;
            let q = (t.get(0)? * (1.0 / (dh as f64).sqrt()))?;
            let probs = key_softmax(&q.matmul(&t.get(1)?.t()?)?, bias)?;
            probs
                .matmul(&t.get(2)?)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b * s, h))
        };
        for bias in [Some(&bias), None] {
            let ours = attention(qkv.as_tensor(), bias, b, s, heads, dh).unwrap();
            let theirs = composed(bias).unwrap();
            assert_close("attention", &ours, &theirs, 0.0);
            let (g1, g2) = (grads(&ours, &w, &[&qkv]), grads(&theirs, &w, &[&qkv]));
            assert_close("attention gradient", &g1[0], &g2[0], 0.0);
            // Every part of the projections gets a gradient.
            let g = g1[0].abs().unwrap().reshape((b * s, 3, h)).unwrap();
            for part in 0..3 {
                let m = g.narrow(1, part, 1).unwrap().max_all().unwrap();
                assert!(m.to_scalar::<f32>().unwrap() > 0.0, "part {part}");
            }
        }
        // A padded key's value reaches the context only through the exp
        // kernel's smallest normal float (its clamp), never in any measure.
        let g = grads(
            &attention(qkv.as_tensor(), Some(&bias), b, s, heads, dh).unwrap(),
            &w,
            &[&qkv],
        );
        let v_padded = g[0]
            .narrow(0, 2 * s + 20, 9)
            .unwrap()
            .narrow(1, 2 * h, h)
            .unwrap();
        let worst = v_padded.abs().unwrap().max_all().unwrap();
        assert!(worst.to_scalar::<f32>().unwrap() < 1e-30);
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
    fn gelu_linear_and_mask_and_their_gradients_match_candle() {
        let x = var(&[40_000], 7, 8.0);
        let w = Tensor::from_vec(values(40_000, 8, 1.0), 40_000, &Device::Cpu).unwrap();
        let ours = gelu_erf(x.as_tensor()).unwrap();
        let theirs = x.as_tensor().gelu_erf().unwrap();
        assert_close("gelu", &ours, &theirs, 1e-6);
        let (a, c) = (grads(&ours, &w, &[&x]), grads(&theirs, &w, &[&x]));
        assert_close("gelu gradient", &a[0], &c[0], 1e-5);

        // A dense layer on 100 rows of 61 to 389 outputs (several tasks).
        let rows = var(&[100, 61], 10, 3.0);
        let weights = var(&[389, 61], 13, 0.5);
        let bias = var(&[389], 11, 1.0);
        let wr = Tensor::from_vec(values(100 * 389, 12, 1.0), (100, 389), &Device::Cpu).unwrap();
        let ours = linear(rows.as_tensor(), weights.as_tensor(), bias.as_tensor()).unwrap();
        let theirs = rows
            .as_tensor()
            .matmul(&weights.as_tensor().t().unwrap())
            .unwrap()
            .broadcast_add(bias.as_tensor())
            .unwrap();
        assert_close("linear", &ours, &theirs, 0.0);
        let vars = [&rows, &weights, &bias];
        let (a, c) = (grads(&ours, &wr, &vars), grads(&theirs, &wr, &vars));
        assert_close("linear gradient of x", &a[0], &c[0], 0.0);
        assert_close("linear gradient of the weights", &a[1], &c[1], 0.0);
        assert_close("linear gradient of the bias", &a[2], &c[2], 1e-5);
        // An input that takes no gradient gets none; the weights' is the same.
        let fixed = rows.as_tensor().detach();
        let ours = linear(&fixed, weights.as_tensor(), bias.as_tensor()).unwrap();
        let g = (&ours * &wr)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(g.get(&fixed).is_none());
        assert_close(
            "weights' gradient",
            g.get(weights.as_tensor()).unwrap(),
            &c[1],
            0.0,
        );

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
