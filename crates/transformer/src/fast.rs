//! Inference-only BERT forward on packed sequences: the hot path.
//!
//! The candle-op forward in [`crate::bert`] pads every sub-batch to its
//! longest member and pays per-op overhead (an allocation and a pass over
//! memory for every bias add, residual add, mask add, scale, transpose). Here,
//! on plain `f32` buffers:
//! * sequences are **packed**: the dense layers run on exactly the real
//!   tokens of the batch (no padding at all), attention runs per sequence
//!   over its own length;
//! * every dense layer is one product on weights packed at load
//!   ([`crate::kernels::Dense`]; `gemm` for widths it cannot pack) that accumulates
//!   into a buffer pre-filled with the bias (and the residual, for the two
//!   output projections), so bias and residual adds cost no extra pass;
//! * attention reads Q, K and V in place from the fused QKV output (strided
//!   gemm, no permute copies), folds the 1/sqrt(d) scale into the gemm, and
//!   writes each head's context straight into its columns of the output;
//! * (sequence, head) attention tasks run on rayon with single-threaded gemms
//!   inside, the dense layers split their panels over rayon: one level of
//!   parallelism at a time, never nested.
//!
//! Numerics match candle's ops to about 1e-6 (exact-erf GELU and softmax's
//! exp from [`crate::kernels::vmath`], vectorized); the test against
//! candle-transformers' `BertModel` covers this path.

use candle_core::Tensor;
use rayon::prelude::*;

use crate::bert::Act;
use crate::error::Result;
use crate::kernels::{vmath, Dense, SendPtr};
use crate::Precision;

struct FastLayer {
    qkv_w: Dense,
    qkv_b: Vec<f32>,
    o_w: Dense,
    o_b: Vec<f32>,
    ln1_w: Vec<f32>,
    ln1_b: Vec<f32>,
    i_w: Dense,
    i_b: Vec<f32>,
    f_w: Dense,
    f_b: Vec<f32>,
    ln2_w: Vec<f32>,
    ln2_b: Vec<f32>,
}

/// A snapshot of the encoder weights as flat buffers.
pub(crate) struct FastBert {
    h: usize,
    nh: usize,
    inter: usize,
    eps: f32,
    act: Act,
    word: Vec<f32>,
    /// Position embedding plus the token-type-0 embedding, per position
    /// (already shifted by the position offset: row p is token p's).
    pos_type: Vec<f32>,
    /// The longest sequence read; longer ones are cut.
    max_pos: usize,
    /// Where ids beyond the vocabulary are mapped: the padding token.
    oov_id: usize,
    ln_w: Vec<f32>,
    ln_b: Vec<f32>,
    layers: Vec<FastLayer>,
}

fn flat(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// A dense layer's weight tensor (`o × k`) in the kernels' form for
/// `precision`.
fn dense(t: &Tensor, precision: Precision) -> Result<Dense> {
    let (o, k) = t.dims2()?;
    Ok(Dense::from_rows(flat(t)?, o, k, precision))
}

fn fill_rows(out: &mut [f32], row: &[f32]) {
    for r in out.chunks_exact_mut(row.len()) {
        r.copy_from_slice(row);
    }
}

fn add_rows(out: &mut [f32], row: &[f32]) {
    for r in out.chunks_exact_mut(row.len()) {
        for (a, b) in r.iter_mut().zip(row) {
            *a += b;
        }
    }
}

/// Rows per rayon task for element-wise passes: big enough to amortize.
const ROWS_PER_TASK: usize = 32;

fn layer_norm_rows(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let h = w.len();
    x.par_chunks_mut(h * ROWS_PER_TASK).for_each(|block| {
        for r in block.chunks_exact_mut(h) {
            let mean = r.iter().sum::<f32>() / h as f32;
            let var = r.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / h as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for ((v, g), bb) in r.iter_mut().zip(w).zip(b) {
                *v = (*v - mean) * inv * g + bb;
            }
        }
    });
}

fn activation(x: &mut [f32], act: Act, width: usize) {
    x.par_chunks_mut(width * ROWS_PER_TASK)
        .for_each(|block| match act {
            Act::GeluErf => vmath::gelu_slice(block),
            Act::GeluTanh => {
                for v in block {
                    let x = *v;
                    let inner = (2.0f32 / std::f32::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
                    *v = 0.5 * x * (1.0 + inner.tanh());
                }
            }
            Act::Relu => {
                for v in block {
                    *v = v.max(0.0);
                }
            }
        });
}

impl FastBert {
    pub fn new(
        cfg: &crate::bert::BertConfig,
        act: Act,
        t: &crate::bert::BertTensors<'_>,
        precision: Precision,
    ) -> Result<Self> {
        // Row p of `pos_type` is what token p reads: position row
        // `offset + p` (RoBERTa numbering; `p` for BERT) plus token type 0.
        let pos = t
            .pos
            .narrow(0, cfg.position_offset(), cfg.max_positions())?
            .broadcast_add(&t.typ.get(0)?)?;
        let mut layers = Vec::with_capacity(t.layers.len());
        for l in &t.layers {
            layers.push(FastLayer {
                qkv_w: dense(l[0], precision)?,
                qkv_b: flat(l[1])?,
                o_w: dense(l[2], precision)?,
                o_b: flat(l[3])?,
                ln1_w: flat(l[4])?,
                ln1_b: flat(l[5])?,
                i_w: dense(l[6], precision)?,
                i_b: flat(l[7])?,
                f_w: dense(l[8], precision)?,
                f_b: flat(l[9])?,
                ln2_w: flat(l[10])?,
                ln2_b: flat(l[11])?,
            });
        }
        Ok(Self {
            h: cfg.hidden_size,
            nh: cfg.num_attention_heads,
            inter: cfg.intermediate_size,
            eps: cfg.layer_norm_eps as f32,
            act,
            word: flat(t.word)?,
            pos_type: flat(&pos)?,
            max_pos: cfg.max_positions(),
            oov_id: Some(cfg.pad_id() as usize)
                .filter(|&p| p < cfg.vocab_size)
                .unwrap_or(0),
            ln_w: flat(t.ln_w)?,
            ln_b: flat(t.ln_b)?,
            layers,
        })
    }

    /// Last hidden states of packed sequences: (sum of lengths, hidden),
    /// sequence after sequence.
    pub fn hidden(&self, seqs: &[&[u32]]) -> Vec<f32> {
        let h = self.h;
        // The tokenizer never exceeds the positions; cut defensively anyway.
        let seqs: Vec<&[u32]> = seqs
            .iter()
            .map(|s| &s[..s.len().min(self.max_pos)])
            .collect();
        let n: usize = seqs.iter().map(|s| s.len()).sum();
        let mut starts = Vec::with_capacity(seqs.len());
        let mut x = vec![0f32; n * h];
        let mut row = 0;
        let vocab = self.word.len() / h;
        for s in &seqs {
            starts.push(row);
            for (p, &id) in s.iter().enumerate() {
                // Ids beyond the vocabulary cannot come from our tokenizer; map
                // them to the padding token rather than read out of bounds.
                let id = if (id as usize) < vocab {
                    id as usize
                } else {
                    self.oov_id
                };
                let dst = &mut x[(row + p) * h..(row + p + 1) * h];
                let w = &self.word[id * h..(id + 1) * h];
                let pt = &self.pos_type[p * h..(p + 1) * h];
                for ((d, a), b) in dst.iter_mut().zip(w).zip(pt) {
                    *d = a + b;
                }
            }
            row += s.len();
        }
        layer_norm_rows(&mut x, &self.ln_w, &self.ln_b, self.eps);
        let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        let mut qkv = vec![0f32; n * 3 * h];
        let mut ctx = vec![0f32; n * h];
        let mut a = vec![0f32; n * h];
        let mut inter = vec![0f32; n * self.inter];
        for l in &self.layers {
            fill_rows(&mut qkv, &l.qkv_b);
            l.qkv_w.acc(&mut qkv, &x, n);
            self.attention(&qkv, &mut ctx, &starts, &lens);
            // a = x + b_o + ctx @ W_o^T, then LayerNorm.
            a.copy_from_slice(&x);
            add_rows(&mut a, &l.o_b);
            l.o_w.acc(&mut a, &ctx, n);
            layer_norm_rows(&mut a, &l.ln1_w, &l.ln1_b, self.eps);
            fill_rows(&mut inter, &l.i_b);
            l.i_w.acc(&mut inter, &a, n);
            activation(&mut inter, self.act, self.inter);
            // x = a + b_f + inter @ W_f^T, then LayerNorm.
            x.copy_from_slice(&a);
            add_rows(&mut x, &l.f_b);
            l.f_w.acc(&mut x, &inter, n);
            layer_norm_rows(&mut x, &l.ln2_w, &l.ln2_b, self.eps);
        }
        x
    }

    /// Mean-pooled embeddings (b, hidden) as one flat buffer.
    pub fn pooled(&self, seqs: &[&[u32]]) -> Vec<f32> {
        let h = self.h;
        let x = self.hidden(seqs);
        let mut out = vec![0f32; seqs.len() * h];
        let mut row = 0;
        for (i, s) in seqs.iter().enumerate() {
            let len = s.len().min(self.max_pos);
            let o = &mut out[i * h..(i + 1) * h];
            for r in 0..len {
                for (d, v) in o.iter_mut().zip(&x[(row + r) * h..(row + r + 1) * h]) {
                    *d += v;
                }
            }
            let inv = 1.0 / len.max(1) as f32;
            o.iter_mut().for_each(|v| *v *= inv);
            row += len;
        }
        out
    }

    /// Multi-head self-attention of every sequence, reading Q/K/V in place
    /// from the fused (n, 3h) projection and writing (n, h) context.
    fn attention(&self, qkv: &[f32], ctx: &mut [f32], starts: &[usize], lens: &[usize]) {
        let (h, nh) = (self.h, self.nh);
        let dh = h / nh;
        let scale = 1.0 / (dh as f32).sqrt();
        let out = SendPtr(ctx.as_mut_ptr());
        let tasks: Vec<(usize, usize)> = (0..lens.len())
            .flat_map(|s| (0..nh).map(move |hd| (s, hd)))
            .collect();
        tasks
            .par_iter()
            .for_each_init(Vec::new, |scores, &(si, hd)| {
                let (start, len) = (starts[si], lens[si]);
                if len == 0 {
                    return;
                }
                scores.clear();
                scores.resize(len * len, 0.0);
                let base = qkv[start * 3 * h..].as_ptr();
                // SAFETY: all pointers stay inside `qkv`/`ctx` for `len` rows
                // of this sequence; each (sequence, head) task writes a disjoint
                // block of `ctx` (its rows, its head's columns).
                unsafe {
                    let q = base.add(hd * dh);
                    let k = base.add(h + hd * dh);
                    let v = base.add(2 * h + hd * dh);
                    // scores (len, len) = scale * Q K^T
                    gemm::gemm(
                        len,
                        len,
                        dh,
                        scores.as_mut_ptr(),
                        1,
                        len as isize,
                        false,
                        q,
                        1,
                        3 * h as isize,
                        k,
                        3 * h as isize,
                        1,
                        0.0f32,
                        scale,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                    for r in scores.chunks_exact_mut(len) {
                        let m = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        vmath::exp_sub_slice(r, m);
                        let inv = 1.0 / r.iter().sum::<f32>();
                        r.iter_mut().for_each(|v| *v *= inv);
                    }
                    // ctx rows of this sequence, this head's columns = P V
                    let dst = out.get().add(start * h + hd * dh);
                    gemm::gemm(
                        len,
                        dh,
                        len,
                        dst,
                        1,
                        h as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        len as isize,
                        v,
                        1,
                        3 * h as isize,
                        0.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            });
    }
}
