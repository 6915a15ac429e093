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
//!   ([`crate::kernels::Dense`]; `gemm` for widths it cannot pack) whose
//!   epilogue starts each output tile from the bias (and the residual, for
//!   the two output projections) and applies the activation to FFN-in's
//!   tiles while they are in cache, so bias, residual and GELU cost no pass
//!   over memory of their own;
//! * attention reads Q, K and V in place from the fused QKV output: per
//!   (sequence, head) Kᵀ and V are packed into small aligned panels and both
//!   products run on the dense layers' kernel; the softmax takes the
//!   1/sqrt(d) scale and writes each head's context straight into its
//!   columns of the output;
//! * at int8 the activations go from one product to the next as int8 codes
//!   ([`crate::kernels::int8::Codes`]), quantized by whatever produced them
//!   while each row is in cache: the LayerNorm before QKV and FFN-in, FFN-in
//!   itself (GELU, then the codes of FFN-out's input, in tasks that own
//!   whole rows: no fp32 `n × 4h` matrix in memory), and QKV, which hands
//!   attention its operands (queries per token like an input, keys and
//!   values per token like weights; no fp32 `n × 3h` either). Both
//!   attention products then run on the int8 kernel too: the softmax stays
//!   fp32, its exponentials are quantized per row with each value row's
//!   step folded in. Only the context, before the output projection, is
//!   quantized by a pass of its own;
//! * (sequence, head) attention tasks run on rayon with single-threaded
//!   products inside, the dense layers split their panels over rayon: one
//!   level of parallelism at a time, never nested;
//! * the work buffers of a finished forward are kept for the next one (a
//!   fresh 60 MB allocation paid a page fault per 4 KiB).
//!
//! Numerics match candle's ops to about 1e-6 at fp32 (exact-erf GELU,
//! softmax and LayerNorm from [`crate::kernels::vmath`], vectorized); the
//! test against candle-transformers' `BertModel` covers this path. The int8
//! forward's error is measured against it (`examples/int8_fidelity.rs`).

use candle_core::Tensor;
use std::ops::Range;

use rayon::prelude::*;

use crate::bert::Act;
use crate::error::{Result, TransformerError};
use crate::kernels::int8::{self, Codes, QuantW, SymRows};
use crate::kernels::{gptq, sgemm, vmath, Dense, Epilogue, SendPtr, Start};
use crate::model::INT8_LAYERS_FILE;
use crate::Precision;

struct FastLayer {
    /// int8 only: per input channel, what the QKV and FFN-in inputs are
    /// multiplied by before their product (their weights' columns were
    /// divided by the same at load; see [`SMOOTH_ALPHA`]).
    qkv_in: Option<Vec<f32>>,
    i_in: Option<Vec<f32>>,
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

/// What an int8 forward's calibration made of one layer: the smoothing
/// of the QKV and FFN-in inputs (`1 / s` per channel) and the codes of its
/// dense layers (QKV, output, FFN-in, FFN-out; `None` for one that stays
/// fp32). A bundle keeps them so that a load need not calibrate again.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Int8Layer {
    pub qkv_in: Option<Vec<f32>>,
    pub i_in: Option<Vec<f32>>,
    pub dense: [Option<Int8Codes>; 4],
}

/// A dense layer's int8 codes (`o × k`, row-major) and each output
/// channel's step.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Int8Codes {
    pub o: usize,
    pub k: usize,
    pub codes: Vec<i8>,
    pub steps: Vec<f32>,
}

/// The names of [`Int8Layer::dense`]'s layers, in its order.
pub(crate) const INT8_DENSE: [&str; 4] = ["qkv", "output", "ffn_in", "ffn_out"];

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
    /// Attention's two products in int8 too (an int8 forward).
    int8_attention: bool,
    /// Work buffers of finished forwards, for the next ones: a fresh
    /// allocation of tens of MB costs a page fault per 4 KiB on its first
    /// pass. One set per concurrent forward, up to [`KEEP_BYTES`] each.
    spare: std::sync::Mutex<Vec<Buffers>>,
}

/// A forward's work buffers (every one is fully written before it is read,
/// so stale contents never matter).
#[derive(Default)]
struct Buffers {
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    a: Vec<f32>,
    inter: Vec<f32>,
    /// int8 only: the quantized inputs of the next product (a LayerNorm's
    /// output, or the context and the FFN's inner activations).
    norm_codes: Codes,
    codes: Codes,
    /// int8 only: attention's operands, from the QKV product.
    queries: Codes,
    keys: SymRows,
    values: SymRows,
}

/// The largest set of buffers kept for reuse (32 × 128 tokens of MiniLM
/// need about 60 MB); larger ones are freed.
const KEEP_BYTES: usize = 256 << 20;

impl Buffers {
    fn bytes(&self) -> usize {
        let floats = [&self.qkv, &self.ctx, &self.a, &self.inter];
        let codes = self.norm_codes.bytes() + self.codes.bytes() + self.queries.bytes();
        let codes = codes + self.keys.bytes() + self.values.bytes();
        floats.iter().map(|v| v.capacity()).sum::<usize>() * 4 + codes
    }
}

fn flat(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// Rows per rayon task for element-wise passes: big enough to amortize.
const ROWS_PER_TASK: usize = 32;

/// LayerNorm of every row of `x` (width `w.len()`) in place, and, with
/// `next = (inv, codes)`, the next int8 layer's input in the same pass: `x ·
/// inv` per channel, quantized into `codes` while the row is in cache.
fn layer_norm_next(
    x: &mut [f32],
    w: &[f32],
    b: &[f32],
    eps: f32,
    next: Option<(&[f32], &mut Codes)>,
) {
    let h = w.len();
    let Some((inv, codes)) = next else {
        x.par_chunks_mut(h * ROWS_PER_TASK).for_each(|block| {
            for r in block.chunks_exact_mut(h) {
                vmath::layer_norm(r, w, b, eps, None);
            }
        });
        return;
    };
    codes.reset(x.len() / h, h);
    x.par_chunks_mut(h * ROWS_PER_TASK)
        .zip(codes.blocks_mut(ROWS_PER_TASK))
        .for_each_init(Vec::new, |smooth, (block, mut codes)| {
            for (i, r) in block.chunks_exact_mut(h).enumerate() {
                norm_row(r, (w, b), eps, Some((inv, smooth)));
                codes.set(i, smooth);
            }
        });
}

/// LayerNorm of one row in place (`(w, b)`), and with `smooth = (inv,
/// out)` the next int8 layer's input `row · inv` in `out` (resized); returns
/// whether it wrote that.
fn norm_row(
    r: &mut [f32],
    (w, b): (&[f32], &[f32]),
    eps: f32,
    smooth: Option<(&[f32], &mut Vec<f32>)>,
) -> bool {
    match smooth {
        Some((inv, out)) => {
            out.resize(r.len(), 0.0);
            vmath::layer_norm(r, w, b, eps, Some((inv, out)));
            true
        }
        None => {
            vmath::layer_norm(r, w, b, eps, None);
            false
        }
    }
}

/// The int8 weights of a layer whose input is smoothed (only int8 layers'
/// are: [`smoothed`]).
fn quant(d: &Dense) -> &QuantW {
    d.quant().expect("a smoothed input feeds an int8 layer")
}

/// The activation in place, on any run of values (a tile's row).
fn activate(v: &mut [f32], act: Act) {
    match act {
        Act::GeluErf => vmath::gelu_slice(v),
        Act::GeluTanh => {
            for v in v {
                let x = *v;
                let inner = (2.0f32 / std::f32::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
                *v = 0.5 * x * (1.0 + inner.tanh());
            }
        }
        Act::Relu => {
            for v in v {
                *v = v.max(0.0);
            }
        }
    }
}

/// A dense layer's output starting from its bias.
fn bias(b: &[f32]) -> Epilogue<'_> {
    Epilogue {
        start: Start::Bias(b),
        then: None,
    }
}

/// A dense layer's output starting from `residual + bias`.
fn residual<'a>(r: &'a [f32], b: &'a [f32]) -> Epilogue<'a> {
    Epilogue {
        start: Start::ResidualBias(r, b),
        then: None,
    }
}

/// Per layer, the largest |value| of each input channel of QKV and FFN-in.
type ChannelMax = Vec<(Vec<f32>, Vec<f32>)>;

/// What the calibration forward records: per layer, the input maxima of
/// QKV and FFN-in, and, when `grams` is set, the Gram matrix of each dense
/// layer's input (unsmoothed), [`GRAMS_PER_LAYER`] a layer in the order
/// QKV, output, FFN-in, FFN-out.
#[derive(Default)]
struct Calibration {
    maxima: ChannelMax,
    grams: Option<Vec<Vec<f32>>>,
}

const GRAMS_PER_LAYER: usize = 4;

impl Calibration {
    /// Records the Gram matrix of the next dense layer's input `x` (`n × k`)
    /// when Gram matrices are asked for.
    fn record_gram(&mut self, x: &[f32], n: usize, k: usize) {
        if let Some(g) = self.grams.as_mut() {
            g.push(gptq::gram(x, n, k));
        }
    }

    /// Layer `li`'s Gram matrices, in [`Calibration`]'s order.
    fn layer_grams(&self, li: usize) -> Option<&[Vec<f32>]> {
        let g = self.grams.as_ref()?;
        Some(&g[li * GRAMS_PER_LAYER..(li + 1) * GRAMS_PER_LAYER])
    }
}

/// Where [`FastBert::build`]'s int8 layers come from.
enum Layers<'a> {
    /// A calibration forward on these weights.
    Calibrated(&'a Calibration),
    /// An earlier calibration's result.
    Saved(&'a [Int8Layer]),
}

/// Dense layer `i` of layer `li` (weights `w`, `o × k`) from its saved
/// codes; one saved without codes stays as [`smoothed`] builds it
/// unsmoothed. The codes must be of a matrix of `w`'s shape.
fn saved_dense(
    li: usize,
    i: usize,
    w: &Tensor,
    saved: &Option<Int8Codes>,
    precision: Precision,
) -> Result<Dense> {
    let (o, k) = w.dims2()?;
    match saved {
        None if !QuantW::fits(o) => Ok(Dense::from_rows(flat(w)?, o, k, precision)),
        Some(c)
            if QuantW::fits(o)
                && k > 0
                && (c.o, c.k) == (o, k)
                && c.codes.len() == o * k
                && c.steps.len() == o =>
        {
            Ok(Dense::Quant(QuantW::from_codes(&c.codes, &c.steps, o, k)))
        }
        _ => Err(TransformerError::Model(format!(
            "{INT8_LAYERS_FILE}: layer {li} {}: {} for a {o}×{k} weight",
            INT8_DENSE[i],
            match saved {
                Some(c) => format!("codes of {}×{}", c.o, c.k),
                None => "no codes".to_string(),
            }
        ))),
    }
}

/// Smoothing strength: an int8 layer's input channel `j` is divided by
/// `s_j = max|x_j|^α / max_c |W[c][j]|^(1−α)` and its weights' column
/// multiplied by it (SmoothQuant). 0.6 gave the int8 embeddings closest to
/// fp32 on the training texts of both bundled data sets (0.4–0.8 tried).
const SMOOTH_ALPHA: f32 = 0.6;
/// The calibration batch the channel maxima come from: sequences of
/// pseudo-random vocabulary ids, so no data is needed at load.
const CALIBRATION_SEQS: usize = 8;
const CALIBRATION_LEN: usize = 64;

/// A dense layer for `precision`; with input maxima `xmax`, its input
/// channel `j` is smoothed: the weights' column `j` times `s_j`, and the
/// returned `1 / s` is what the input is multiplied by before the product.
fn smoothed(
    w: &Tensor,
    xmax: Option<&[f32]>,
    gram: Option<&[f32]>,
    precision: Precision,
) -> Result<(Option<Vec<f32>>, Dense)> {
    let (o, k) = w.dims2()?;
    let mut wf = flat(w)?;
    // Only an int8 layer's input is smoothed (the forward quantizes it as
    // it smooths it).
    let int8 = precision == Precision::Int8 && QuantW::fits(o);
    let Some(xmax) = xmax.filter(|_| int8) else {
        return Ok((None, Dense::from_rows_with(wf, o, k, precision, gram)));
    };
    let s = smoothing(&wf, k, xmax, SMOOTH_ALPHA);
    for row in wf.chunks_mut(k) {
        for (v, s) in row.iter_mut().zip(&s) {
            *v *= s;
        }
    }
    let inv: Vec<f32> = s.iter().map(|s| 1.0 / s).collect();
    // The smoothed input is x · diag(1/s): its Gram matrix likewise.
    let gram = gram.map(|g| {
        let mut g = g.to_vec();
        gptq::scale_gram(&mut g, &inv);
        g
    });
    let dense = Dense::from_rows_with(wf, o, k, precision, gram.as_deref());
    Ok((Some(inv), dense))
}

/// The smoothing factors of a weight matrix (`o × k`, row-major) for input
/// maxima `xmax`; 1 for a channel where either side is zero.
fn smoothing(w: &[f32], k: usize, xmax: &[f32], alpha: f32) -> Vec<f32> {
    let wmax = column_max(w, k);
    xmax.iter()
        .zip(&wmax)
        .map(|(&a, &b)| {
            let s = a.powf(alpha) / b.powf(1.0 - alpha);
            if s.is_finite() && s > 0.0 {
                s
            } else {
                1.0
            }
        })
        .collect()
}

/// The largest |value| of each column of a row-major matrix `width` wide.
fn column_max(rows: &[f32], width: usize) -> Vec<f32> {
    let mut m = vec![0f32; width];
    for r in rows.chunks_exact(width) {
        for (a, v) in m.iter_mut().zip(r) {
            *a = a.max(v.abs());
        }
    }
    m
}

/// The calibration batch: fixed pseudo-random ids from the upper part of
/// the vocabulary (past the special and rare byte tokens at its start).
fn calibration_ids(vocab: usize) -> Vec<Vec<u32>> {
    let lo = 1000.min(vocab / 2);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..CALIBRATION_SEQS)
        .map(|_| {
            (0..CALIBRATION_LEN)
                .map(|_| {
                    let r = casetag_core::xorshift64(&mut state);
                    (lo as u64 + r % (vocab - lo).max(1) as u64) as u32
                })
                .collect()
        })
        .collect()
}

impl FastBert {
    /// The forward for `precision`. For int8, the inputs of QKV and FFN-in
    /// (LayerNorm outputs, where a few channels run far larger than the
    /// rest) are smoothed first: their per-channel maxima come from an fp32
    /// forward of a calibration batch at load. That batch is `calibration`
    /// (token ids of real texts, which a bundle trained at int8 keeps),
    /// and then every dense layer's codes are also chosen by
    /// error-compensating rounding against its inputs there
    /// ([`crate::kernels::gptq`]); without it, pseudo-random ids and
    /// rounding to the nearest step. `saved`: what an earlier calibration
    /// of these weights made ([`Self::int8_layers`]), used instead of
    /// calibrating again.
    pub fn new(
        cfg: &crate::bert::BertConfig,
        act: Act,
        t: &crate::bert::BertTensors<'_>,
        precision: Precision,
        calibration: Option<&[Vec<u32>]>,
        saved: Option<&[Int8Layer]>,
    ) -> Result<Self> {
        if precision == Precision::F32 {
            return Self::build(cfg, act, t, precision, None);
        }
        if let Some(saved) = saved {
            return Self::build(cfg, act, t, precision, Some(&Layers::Saved(saved)));
        }
        let reference = Self::build(cfg, act, t, Precision::F32, None)?;
        let texts = calibration.filter(|c| !c.is_empty());
        let ids = match texts {
            Some(c) => c.to_vec(),
            None => calibration_ids(reference.word.len() / reference.h),
        };
        let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        let mut calib = Calibration {
            maxima: Vec::new(),
            grams: texts.map(|_| Vec::new()),
        };
        reference.hidden_impl(&refs, usize::MAX, Some(&mut calib));
        Self::build(cfg, act, t, precision, Some(&Layers::Calibrated(&calib)))
    }

    /// What [`Self::new`] calibrated, to be handed back to it (`None` for
    /// an fp32 forward).
    pub fn int8_layers(&self) -> Option<Vec<Int8Layer>> {
        let codes = |d: &Dense| match d {
            Dense::Quant(q) => {
                let ((o, k), (codes, steps)) = (q.dims(), q.codes());
                Some(Int8Codes { o, k, codes, steps })
            }
            _ => None,
        };
        let layers: Vec<Int8Layer> = self
            .layers
            .iter()
            .map(|l| Int8Layer {
                qkv_in: l.qkv_in.clone(),
                i_in: l.i_in.clone(),
                dense: [&l.qkv_w, &l.o_w, &l.i_w, &l.f_w].map(codes),
            })
            .collect();
        let int8 = layers.iter().any(|l| l.dense.iter().any(Option::is_some));
        int8.then_some(layers)
    }

    fn build(
        cfg: &crate::bert::BertConfig,
        act: Act,
        t: &crate::bert::BertTensors<'_>,
        precision: Precision,
        from: Option<&Layers>,
    ) -> Result<Self> {
        let calib = match from {
            Some(Layers::Calibrated(c)) => Some(*c),
            _ => None,
        };
        if let Some(Layers::Saved(saved)) = from {
            if saved.len() != t.layers.len() {
                return Err(TransformerError::Model(format!(
                    "{INT8_LAYERS_FILE}: {} layers for an encoder of {}",
                    saved.len(),
                    t.layers.len()
                )));
            }
        }
        // Row p of `pos_type` is what token p reads: position row
        // `offset + p` (RoBERTa numbering; `p` for BERT) plus token type 0.
        let pos = t
            .pos
            .narrow(0, cfg.position_offset(), cfg.max_positions())?
            .broadcast_add(&t.typ.get(0)?)?;
        // Layers are built in parallel: an int8 layer calibrated on real
        // texts factors four Gram matrices, single-threaded each.
        let build_layer = |li: usize, l: &[&Tensor; 12]| -> Result<FastLayer> {
            let maxima = calib.map(|c| &c.maxima[li]);
            let grams = calib.and_then(|c| c.layer_grams(li));
            let gram = |i: usize| grams.map(|g| g[i].as_slice());
            let ((qkv_in, qkv_w), (i_in, i_w), o_w, f_w) = match from {
                Some(Layers::Saved(saved)) => {
                    let s = &saved[li];
                    let dense =
                        |i: usize, w: &Tensor| saved_dense(li, i, w, &s.dense[i], precision);
                    // Smoothing goes with the codes (they are of the
                    // smoothed weights): both or neither.
                    let smooth = |v: &Option<Vec<f32>>, i: usize| match (v, &s.dense[i]) {
                        (Some(v), Some(c)) if v.len() == c.k => Ok(Some(v.clone())),
                        (None, None) => Ok(None),
                        _ => Err(TransformerError::Model(format!(
                            "{INT8_LAYERS_FILE}: layer {li} {}: smoothing does not fit its codes",
                            INT8_DENSE[i]
                        ))),
                    };
                    (
                        (smooth(&s.qkv_in, 0)?, dense(0, l[0])?),
                        (smooth(&s.i_in, 2)?, dense(2, l[6])?),
                        dense(1, l[2])?,
                        dense(3, l[8])?,
                    )
                }
                _ => (
                    smoothed(l[0], maxima.map(|m| m.0.as_slice()), gram(0), precision)?,
                    smoothed(l[6], maxima.map(|m| m.1.as_slice()), gram(2), precision)?,
                    smoothed(l[2], None, gram(1), precision)?.1,
                    smoothed(l[8], None, gram(3), precision)?.1,
                ),
            };
            Ok(FastLayer {
                qkv_in,
                i_in,
                qkv_w,
                qkv_b: flat(l[1])?,
                o_w,
                o_b: flat(l[3])?,
                ln1_w: flat(l[4])?,
                ln1_b: flat(l[5])?,
                i_w,
                i_b: flat(l[7])?,
                f_w,
                f_b: flat(l[9])?,
                ln2_w: flat(l[10])?,
                ln2_b: flat(l[11])?,
            })
        };
        let layers = t
            .layers
            .par_iter()
            .enumerate()
            .map(|(li, l)| build_layer(li, l))
            .collect::<Result<Vec<_>>>()?;
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
            // A head a whole number of panels wide (every BERT's).
            int8_attention: precision == Precision::Int8
                && (cfg.hidden_size / cfg.num_attention_heads).is_multiple_of(int8::NR),
            spare: Default::default(),
        })
    }

    /// Last hidden states of packed sequences: (sum of lengths, hidden),
    /// sequence after sequence.
    ///
    /// The forward runs on a worker thread of the compute pool (called from
    /// outside it, the caller waits once for the whole forward): each of
    /// its parallel passes then starts on a worker that works on it too,
    /// instead of being handed to the pool from outside and waited for,
    /// which cost a thread wake-up per pass and a third runnable thread on
    /// a two-core machine (1 × 16 tokens: 1.9 → 1.3 ms fp32, 0.8 → 0.4 ms
    /// int8; benches/README.md).
    pub fn hidden(&self, seqs: &[&[u32]]) -> Vec<f32> {
        rayon::scope(|_| self.hidden_impl(seqs, usize::MAX, None))
    }

    /// The hidden states (tokens, hidden) after the first `layers` layers
    /// (0: the embeddings' LayerNorm): the input of layer `layers`, which
    /// fine-tuning computes once for the layers it does not train.
    pub fn hidden_below(&self, seqs: &[&[u32]], layers: usize) -> Vec<f32> {
        rayon::scope(|_| self.hidden_impl(seqs, layers, None))
    }

    /// [`Self::hidden`] through the first `layers` layers, recording into
    /// `stats` (when given) each layer's input maxima of QKV and FFN-in,
    /// and the Gram matrices it asks for.
    fn hidden_impl(
        &self,
        seqs: &[&[u32]],
        layers: usize,
        stats: Option<&mut Calibration>,
    ) -> Vec<f32> {
        let h = self.h;
        // The tokenizer never exceeds the positions; cut defensively anyway.
        let seqs: Vec<&[u32]> = seqs
            .iter()
            .map(|s| &s[..s.len().min(self.max_pos)])
            .collect();
        let n: usize = seqs.iter().map(|s| s.len()).sum();
        let mut x = vec![0f32; n * h];
        let mut row = 0;
        let vocab = self.word.len() / h;
        for s in &seqs {
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
        let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        let mut bufs = self.spare_buffers();
        let first = self.layers.first().and_then(|l| l.qkv_in.as_deref());
        layer_norm_next(
            &mut x,
            &self.ln_w,
            &self.ln_b,
            self.eps,
            first.map(|inv| (inv, &mut bufs.norm_codes)),
        );
        let x = self.run_layers(x, &lens, 0..layers.min(self.layers.len()), &mut bufs, stats);
        self.keep_buffers(bufs);
        x
    }

    /// Layers `layers` over packed hidden states `x` (sequences of `lens`
    /// rows, one after another): the input of the first of them, already
    /// quantized into `bufs.norm_codes` when that layer is int8.
    fn run_layers(
        &self,
        mut x: Vec<f32>,
        lens: &[usize],
        layers: std::ops::Range<usize>,
        bufs: &mut Buffers,
        mut stats: Option<&mut Calibration>,
    ) -> Vec<f32> {
        let h = self.h;
        let n = x.len() / h;
        let starts: Vec<usize> = lens
            .iter()
            .scan(0, |row, &l| {
                let start = *row;
                *row += l;
                Some(start)
            })
            .collect();
        let Buffers {
            qkv,
            ctx,
            a,
            inter,
            norm_codes,
            codes,
            queries,
            keys,
            values,
        } = bufs;
        ctx.resize(n * h, 0.0);
        a.resize(n * h, 0.0);
        let (ctx, a) = (&mut ctx[..], &mut a[..]);
        let act = |v: &mut [f32]| activate(v, self.act);
        let (from, count) = (layers.start, layers.len());
        for (li, l) in self.layers.iter().enumerate().skip(from).take(count) {
            let qkv_max = stats.as_ref().map(|_| column_max(&x, h));
            if let Some(st) = stats.as_mut() {
                st.record_gram(&x, n, h);
            }
            // An int8 layer's input was quantized by the LayerNorm before it.
            let ops = match (l.qkv_in.is_some(), self.int8_attention) {
                (true, true) => {
                    let heads = (&mut *queries, &mut *keys, &mut *values);
                    int8::matmul_qkv_codes(norm_codes, quant(&l.qkv_w), &l.qkv_b, heads);
                    Operands::Int8(queries, keys, values)
                }
                (codes_in, _) => {
                    qkv.resize(n * 3 * h, 0.0);
                    if codes_in {
                        int8::matmul_codes(qkv, norm_codes, quant(&l.qkv_w), &bias(&l.qkv_b));
                    } else {
                        l.qkv_w.apply(qkv, &x, n, &bias(&l.qkv_b));
                    }
                    Operands::F32(qkv)
                }
            };
            self.attention(ops, ctx, &starts, lens);
            if let Some(st) = stats.as_mut() {
                st.record_gram(ctx, n, h);
            }
            // a = LayerNorm((x + b_o) + ctx @ W_o^T); an int8 FFN-in's
            // input codes from the same pass.
            let eps = self.eps;
            let (ln1, ln2) = ((&l.ln1_w[..], &l.ln1_b[..]), (&l.ln2_w[..], &l.ln2_b[..]));
            match (l.o_w.quant(), l.i_in.as_deref()) {
                (Some(o_w), Some(inv)) if stats.is_none() => {
                    int8::quantize_input(codes, ctx, n, o_w);
                    let start = Start::ResidualBias(&x, &l.o_b);
                    int8::matmul_norm_codes(codes, o_w, start, a, norm_codes, |row, smooth| {
                        norm_row(row, ln1, eps, Some((inv, smooth)))
                    });
                }
                _ => {
                    l.o_w.apply_reusing(a, ctx, n, &residual(&x, &l.o_b), codes);
                    let next = l.i_in.as_deref().map(|inv| (inv, &mut *norm_codes));
                    layer_norm_next(a, ln1.0, ln1.1, eps, next);
                }
            }
            if let (Some(st), Some(q)) = (stats.as_mut(), qkv_max) {
                st.maxima.push((q, column_max(a, h)));
                st.record_gram(a, n, h);
            }
            // x = LayerNorm((a + b_f) + act(b_i + a @ W_i^T) @ W_f^T), and
            // the next layer's input codes when it is int8.
            let next = self.layers.get(li + 1).and_then(|l| l.qkv_in.as_deref());
            match (l.i_in.is_some(), l.f_w.quant()) {
                // int8 to int8: the activated inner rows go straight from
                // FFN-in's output tiles to FFN-out's input codes.
                (true, Some(f_w)) if stats.is_none() => {
                    int8::matmul_act_codes(norm_codes, quant(&l.i_w), &l.i_b, &act, codes);
                    let start = Start::ResidualBias(a, &l.f_b);
                    int8::matmul_norm_codes(
                        codes,
                        f_w,
                        start,
                        &mut x,
                        norm_codes,
                        |row, smooth| norm_row(row, ln2, eps, next.map(|inv| (inv, smooth))),
                    );
                }
                (codes_in, _) => {
                    // inter = act(b_i + a @ W_i^T), the activation on each
                    // tile.
                    inter.resize(n * self.inter, 0.0);
                    let epi = Epilogue {
                        then: Some(&act),
                        ..bias(&l.i_b)
                    };
                    if codes_in {
                        int8::matmul_codes(inter, norm_codes, quant(&l.i_w), &epi);
                    } else {
                        l.i_w.apply(inter, a, n, &epi);
                    }
                    if let Some(st) = stats.as_mut() {
                        st.record_gram(inter, n, self.inter);
                    }
                    l.f_w
                        .apply_reusing(&mut x, inter, n, &residual(a, &l.f_b), codes);
                    let next = next.map(|inv| (inv, &mut *norm_codes));
                    layer_norm_next(&mut x, ln2.0, ln2.1, eps, next);
                }
            }
        }
        x
    }

    /// A finished forward's buffers, or empty ones.
    fn spare_buffers(&self) -> Buffers {
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        spare.pop().unwrap_or_default()
    }

    /// Keep `bufs` for the next forward, unless they are too large.
    fn keep_buffers(&self, bufs: Buffers) {
        if bufs.bytes() <= KEEP_BYTES {
            let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
            spare.push(bufs);
        }
    }

    /// Mean-pooled embeddings (b, hidden) as one flat buffer.
    pub fn pooled(&self, seqs: &[&[u32]]) -> Vec<f32> {
        let x = self.hidden(seqs);
        let lens: Vec<usize> = seqs.iter().map(|s| s.len().min(self.max_pos)).collect();
        self.mean_pool(&x, &lens)
    }

    /// [`Self::pooled`] from hidden states below layer `from` (what
    /// [`Self::hidden_below`] gave for sequences of `lens` tokens, packed):
    /// the layers from `from` up, then the mean. `None` when layer `from`
    /// is int8, whose input codes the states do not carry.
    pub fn pooled_above(&self, states: Vec<f32>, lens: &[usize], from: usize) -> Option<Vec<f32>> {
        if self.layers.get(from).is_some_and(|l| l.qkv_in.is_some()) {
            return None;
        }
        let x = rayon::scope(|_| {
            let mut bufs = self.spare_buffers();
            let x = self.run_layers(states, lens, from..self.layers.len(), &mut bufs, None);
            self.keep_buffers(bufs);
            x
        });
        Some(self.mean_pool(&x, lens))
    }

    /// Each sequence's mean row of packed hidden states (sequences of
    /// `lens` rows), as one flat (b, hidden) buffer.
    fn mean_pool(&self, x: &[f32], lens: &[usize]) -> Vec<f32> {
        let h = self.h;
        let mut out = vec![0f32; lens.len() * h];
        let mut row = 0;
        for (i, &len) in lens.iter().enumerate() {
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
    ///
    /// Each (sequence, head) task packs its Kᵀ and V into aligned panels
    /// and runs both products on the dense layers' kernel
    /// ([`sgemm::Panels`]), single-threaded; a head width that is not a
    /// multiple of the panel width goes through the `gemm` crate instead.
    fn attention(&self, ops: Operands, ctx: &mut [f32], starts: &[usize], lens: &[usize]) {
        attention(self.h, self.nh, ops, ctx, starts, lens);
    }
}

/// [`FastBert::attention`] for `nh` heads of a model `h` wide.
fn attention(
    h: usize,
    nh: usize,
    ops: Operands,
    ctx: &mut [f32],
    starts: &[usize],
    lens: &[usize],
) {
    let dh = h / nh;
    let scale = 1.0 / (dh as f32).sqrt();
    let packed = dh.is_multiple_of(sgemm::NR);
    let out = SendPtr(ctx.as_mut_ptr());
    let tasks: Vec<(usize, usize)> = (0..lens.len())
        .flat_map(|s| (0..nh).map(move |hd| (s, hd)))
        .collect();
    tasks
        .par_iter()
        .for_each_init(AttentionScratch::default, |scratch, &(si, hd)| {
            let (start, len) = (starts[si], lens[si]);
            if len == 0 {
                return;
            }
            let qkv = match ops {
                Operands::F32(qkv) => qkv,
                Operands::Int8(q, k, v) => {
                    let head = (start..start + len, hd * dh..(hd + 1) * dh);
                    // SAFETY: rows start..start + len of ctx, this
                    // head's columns, are this task's alone (tasks
                    // split sequences and heads), inside ctx (n × h).
                    unsafe {
                        let dst = out.get().add(start * h + hd * dh);
                        scratch.int8((q, k, v), head, scale, (dst, h));
                    }
                    return;
                }
            };
            let AttentionScratch {
                scores,
                keys,
                values,
                ..
            } = scratch;
            let base = qkv[start * 3 * h..].as_ptr();
            // SAFETY: all pointers stay inside `qkv`/`ctx` for `len` rows
            // of this sequence; each (sequence, head) task writes a disjoint
            // block of `ctx` (its rows, its head's columns).
            unsafe {
                let q = base.add(hd * dh);
                let k = base.add(h + hd * dh);
                let v = base.add(2 * h + hd * dh);
                let dst = out.get().add(start * h + hd * dh);
                if packed {
                    // scores (len, width) = Q Kᵀ, key columns padded to
                    // the panel width; softmax over the first len.
                    let width = len.div_ceil(sgemm::NR) * sgemm::NR;
                    scores.resize(len * width, 0.0);
                    keys.pack(k, len, dh, 3 * h, 1);
                    keys.product(scores.as_mut_ptr(), width, q, 3 * h, len);
                    vmath::softmax_rows(scores, width, len, scale);
                    // ctx (len, dh) = P V
                    values.pack(v, dh, len, 1, 3 * h);
                    values.product(dst, h, scores.as_ptr(), width, len);
                    return;
                }
                scores.clear();
                scores.resize(len * len, 0.0);
                // scores (len, len) = Q K^T
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
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
                vmath::softmax_rows(scores, len, len, scale);
                // ctx rows of this sequence, this head's columns = P V
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

/// What attention reads: the fp32 QKV output (`n × 3h`), or its int8 codes
/// ([`int8::matmul_qkv_codes`]).
#[derive(Clone, Copy)]
enum Operands<'a> {
    F32(&'a [f32]),
    Int8(&'a Codes, &'a SymRows, &'a SymRows),
}

/// One attention task's buffers, kept per rayon thread between tasks.
#[derive(Default)]
struct AttentionScratch {
    scores: Vec<f32>,
    keys: sgemm::Panels,
    values: sgemm::Panels,
    /// int8: the head's keys and values packed as weights, and the
    /// probabilities quantized per row.
    key_codes: QuantW,
    prob_codes: Codes,
    value_codes: QuantW,
    /// int8: the softmax's sums.
    sums: Vec<f32>,
}

impl AttentionScratch {
    /// One (sequence, head) of attention in int8: the sequence is rows
    /// `rows` of the QKV product's codes ([`int8::matmul_qkv_codes`]), the
    /// head columns `cols` of each; the context goes to `dst`, row `j` at
    /// `dst + j · h`. The queries are an input quantized per token, the keys
    /// weights quantized per key; the softmax is fp32, its exponentials
    /// quantized per row against the values (quantized per token, their
    /// steps folded into the probabilities). Both products run on the dense
    /// layers' int8 kernel, on this thread.
    ///
    /// # Safety
    /// `dst` holds `rows.len()` rows of `cols.len()` floats at stride `h`,
    /// which no one else reads or writes meanwhile.
    unsafe fn int8(
        &mut self,
        (queries, keys, values): (&Codes, &SymRows, &SymRows),
        (rows, cols): (Range<usize>, Range<usize>),
        scale: f32,
        (dst, h): (*mut f32, usize),
    ) {
        let len = rows.len();
        let query = queries.head(rows.clone(), cols.clone());
        self.key_codes
            .pack_rows_of(keys, rows.clone(), cols.clone());
        // scores (len, width) = Q Kᵀ, keys padded to the panel width; the
        // softmax over the first len, its division left to the codes.
        let width = self.key_codes.width();
        self.scores.resize(len * width, 0.0);
        int8::matmul_view(&mut self.scores, query, &self.key_codes, &Epilogue::ZERO);
        self.sums.resize(len, 0.0);
        vmath::exp_rows(&mut self.scores, width, len, scale, &mut self.sums);
        // context (len, dh) = P V, into this head's columns.
        self.prob_codes.reset(len, len);
        let mut prob = self.prob_codes.rows_mut(0..len);
        let steps = values.steps(rows.clone());
        let exps = self.scores.chunks_exact(width).zip(&self.sums);
        for (j, (e, &sum)) in exps.enumerate() {
            prob.set_probabilities(j, &e[..len], sum, steps);
        }
        self.value_codes.pack_columns_of(values, rows, cols);
        // SAFETY: `dst` holds len rows of dh (the values' width) at stride
        // h, this task's alone (caller).
        unsafe { int8::matmul_view_to(dst, h, self.prob_codes.view(), &self.value_codes) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::values;

    fn product(w: &[f32], x: &[f32], o: usize, k: usize, n: usize, p: Precision) -> Vec<f32> {
        let mut out = vec![0f32; n * o];
        Dense::from_rows(w.to_vec(), o, k, p).acc(&mut out, x, n);
        out
    }

    fn rel_err(a: &[f32], b: &[f32]) -> f32 {
        let e: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
        let r: f32 = b.iter().map(|y| y * y).sum();
        (e / r).sqrt()
    }

    /// Inputs where three of 64 channels run twenty times larger (as
    /// LayerNorm outputs do): smoothing leaves the fp32 product as it was
    /// and brings the int8 one closer to it.
    #[test]
    fn smoothing_keeps_the_product_and_tames_outlier_channels() {
        let (o, k, n) = (32, 64, 48);
        let w = values(o * k, 1);
        let mut x = values(n * k, 2);
        for r in x.chunks_mut(k) {
            for j in [5, 17, 40] {
                r[j] *= 20.0;
            }
        }
        let s = smoothing(&w, k, &column_max(&x, k), SMOOTH_ALPHA);
        assert!(s[5] > 3.0 * s[6], "outlier channels get the larger factors");
        let ws: Vec<f32> = w
            .chunks(k)
            .flat_map(|r| r.iter().zip(&s).map(|(v, s)| v * s).collect::<Vec<_>>())
            .collect();
        let xs: Vec<f32> = x
            .chunks(k)
            .flat_map(|r| r.iter().zip(&s).map(|(v, s)| v / s).collect::<Vec<_>>())
            .collect();
        let exact = product(&w, &x, o, k, n, Precision::F32);
        assert!(rel_err(&product(&ws, &xs, o, k, n, Precision::F32), &exact) < 1e-5);
        let plain = rel_err(&product(&w, &x, o, k, n, Precision::Int8), &exact);
        let smooth = rel_err(&product(&ws, &xs, o, k, n, Precision::Int8), &exact);
        assert!(
            smooth < 0.7 * plain,
            "int8 error {smooth} smoothed vs {plain}"
        );
        // A channel that is zero on either side keeps a factor of 1.
        assert_eq!(smoothing(&[0.0, 1.0], 2, &[1.0, 0.0], 0.6), vec![1.0, 1.0]);
    }

    #[test]
    fn calibration_ids_are_fixed_and_inside_the_vocabulary() {
        let a = calibration_ids(30522);
        assert_eq!(a, calibration_ids(30522));
        assert_eq!(a.len(), CALIBRATION_SEQS);
        assert!(a.iter().flatten().all(|&i| (1000..30522).contains(&i)));
        // A tiny vocabulary still gets ids inside it.
        assert!(calibration_ids(40)
            .iter()
            .flatten()
            .all(|&i| (20..40).contains(&i)));
    }

    #[test]
    fn int8_attention_stays_close_to_fp32_attention() {
        // Two heads of 32; sequences of one key panel, a short one, and
        // one longer than 128 keys with a partial last panel.
        let (h, nh) = (64, 2);
        let lens = [37, 5, 130];
        let starts: Vec<usize> = lens
            .iter()
            .scan(0, |at, &l| Some(std::mem::replace(at, *at + l)))
            .collect();
        let n: usize = lens.iter().sum();
        let mut qkv = values(n * 3 * h, 7);
        // Larger queries make the softmax peaked, as trained heads' are.
        for row in qkv.chunks_exact_mut(3 * h) {
            row[..h].iter_mut().for_each(|v| *v *= 4.0);
        }
        let mut want = vec![0f32; n * h];
        attention(h, nh, Operands::F32(&qkv), &mut want, &starts, &lens);
        let (mut q, mut k, mut v) = (Codes::default(), SymRows::default(), SymRows::default());
        int8::qkv_codes(&qkv, h, (&mut q, &mut k, &mut v));
        let mut got = vec![f32::NAN; n * h];
        attention(h, nh, Operands::Int8(&q, &k, &v), &mut got, &starts, &lens);
        let all = rel_err(&got, &want);
        let worst = got
            .chunks_exact(h)
            .zip(want.chunks_exact(h))
            .map(|(g, w)| rel_err(g, w))
            .fold(0f32, f32::max);
        eprintln!("int8 attention: relative error {all}, worst row {worst}");
        assert!(
            all < 0.02 && worst < 0.05,
            "relative error {all}, worst row {worst}"
        );
    }
}
