//! A lean BERT encoder forward pass written with candle ops.
//!
//! XLM-RoBERTa and RoBERTa checkpoints share the architecture; they number
//! positions from `pad_token_id + 1` ([`BertConfig::position_offset`]),
//! which this forward and the packed one (`fast.rs`) both apply.
//!
//! Why not `candle_transformers::models::bert::BertModel`? Two reasons:
//! * speed: it runs three Q/K/V matmuls and three transposes per layer, builds
//!   the extended attention mask (`(1 - mask) * f32::MIN`) on every call even
//!   without padding, and scales the (b, heads, s, s) score tensor. Here Q/K/V
//!   are one fused matmul, one permute copies them into head-major layout,
//!   the scale is folded into Q (smaller than the scores), and the mask bias is
//!   built once per batch and skipped when the batch has no padding.
//! * training: its `LayerNorm` goes through `candle_nn::ops::layer_norm`, a
//!   fused kernel without a backward pass, so gradients silently stop there.
//!   Layers that train use differentiable composite ops instead; frozen layers
//!   and inference use the fused kernels.
//!
//! The output is checked against `BertModel` on the real all-MiniLM-L6-v2 in
//! `tests/real_encoder.rs` (max abs diff < 1e-4).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TransformerError};
use crate::fast::{FastBert, Int8Layer};

/// The fields of a Hugging Face BERT `config.json` that the forward pass needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    /// The padding token's id. RoBERTa-family models number positions from
    /// `pad_token_id + 1` (see [`BertConfig::position_offset`]).
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

/// `model_type`s whose position ids start after the padding index, as in
/// Hugging Face's `create_position_ids_from_input_ids`.
const ROBERTA_TYPES: &[&str] = &["xlm-roberta", "roberta"];

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_dropout() -> f64 {
    0.1
}

/// Feed-forward activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// Exact GELU (`gelu` in transformers; what BERT and MiniLM use).
    GeluErf,
    /// Tanh approximation (`gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`).
    GeluTanh,
    Relu,
}

impl BertConfig {
    /// Parse and validate a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TransformerError::Encoder(format!("{}: {e}", path.display())))?;
        let cfg: BertConfig = serde_json::from_str(&text).map_err(|e| {
            TransformerError::Encoder(format!("{}: not a BERT config: {e}", path.display()))
        })?;
        cfg.validate()
            .map_err(|m| TransformerError::Encoder(format!("{}: {m}", path.display())))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if let Some(t) = &self.model_type {
            if t != "bert" && !ROBERTA_TYPES.contains(&t.as_str()) {
                return Err(format!(
                    "model_type '{t}' is not supported (only BERT-family encoders such as \
                     all-MiniLM-L6-v2, and XLM-RoBERTa/RoBERTa ones such as \
                     paraphrase-multilingual-MiniLM-L12-v2)"
                ));
            }
        }
        if let Some(p) = &self.position_embedding_type {
            if p != "absolute" {
                return Err(format!(
                    "position_embedding_type '{p}' is not supported (only 'absolute')"
                ));
            }
        }
        if self.hidden_size == 0 || self.num_attention_heads == 0 || self.num_hidden_layers == 0 {
            return Err(
                "hidden_size, num_attention_heads and num_hidden_layers must be > 0".into(),
            );
        }
        // `is_multiple_of` needs Rust 1.87; the workspace MSRV is 1.85.
        #[allow(clippy::manual_is_multiple_of)]
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.max_position_embeddings < 2 || self.type_vocab_size == 0 {
            return Err("max_position_embeddings must be >= 2 and type_vocab_size >= 1".into());
        }
        if self.max_positions() < 2 {
            return Err(format!(
                "max_position_embeddings {} leaves fewer than 2 positions after the position \
                 offset {} (pad_token_id + 1)",
                self.max_position_embeddings,
                self.position_offset()
            ));
        }
        self.act()?;
        Ok(())
    }

    pub fn act(&self) -> std::result::Result<Act, String> {
        match self.hidden_act.as_str() {
            "gelu" => Ok(Act::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Act::GeluTanh),
            "relu" => Ok(Act::Relu),
            a => Err(format!(
                "hidden_act '{a}' is not supported (gelu, gelu_new, relu)"
            )),
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Whether positions follow RoBERTa's numbering (XLM-R, RoBERTa).
    pub fn roberta_positions(&self) -> bool {
        self.model_type
            .as_deref()
            .is_some_and(|t| ROBERTA_TYPES.contains(&t))
    }

    /// The padding token's id: config.json's `pad_token_id`, else the
    /// family's default (0 for BERT's `[PAD]`, 1 for RoBERTa's `<pad>`).
    pub fn pad_id(&self) -> u32 {
        self.pad_token_id
            .unwrap_or(if self.roberta_positions() { 1 } else { 0 })
    }

    /// Row of the position table that the first token reads: 0 for BERT,
    /// `pad_token_id + 1` for RoBERTa-family models (token `i` reads row
    /// `pad_token_id + 1 + i`).
    pub fn position_offset(&self) -> usize {
        if self.roberta_positions() {
            self.pad_id() as usize + 1
        } else {
            0
        }
    }

    /// The longest sequence (special tokens included) the encoder reads:
    /// `max_position_embeddings` less the position offset.
    pub fn max_positions(&self) -> usize {
        self.max_position_embeddings
            .saturating_sub(self.position_offset())
    }

    /// The sequence limit as messages name it: `max_position_embeddings N`
    /// for BERT; the usable count and where it comes from otherwise.
    pub fn positions_limit(&self) -> String {
        match self.position_offset() {
            0 => format!("max_position_embeddings {}", self.max_position_embeddings),
            o => format!(
                "{} positions (max_position_embeddings {} minus the position offset {o})",
                self.max_positions(),
                self.max_position_embeddings
            ),
        }
    }
}

/// One transformer layer. Q, K and V are stored fused as one (3h, h) matrix.
#[derive(Clone)]
pub(crate) struct Layer {
    qkv_w: Tensor,
    qkv_b: Tensor,
    o_w: Tensor,
    o_b: Tensor,
    ln1_w: Tensor,
    ln1_b: Tensor,
    i_w: Tensor,
    i_b: Tensor,
    f_w: Tensor,
    f_b: Tensor,
    ln2_w: Tensor,
    ln2_b: Tensor,
}

impl Layer {
    /// (name in our scheme, tensor) for every parameter, for making them
    /// trainable.
    fn params_mut(&mut self) -> [(&'static str, &mut Tensor); 12] {
        [
            ("qkv.weight", &mut self.qkv_w),
            ("qkv.bias", &mut self.qkv_b),
            ("attn_out.weight", &mut self.o_w),
            ("attn_out.bias", &mut self.o_b),
            ("ln1.weight", &mut self.ln1_w),
            ("ln1.bias", &mut self.ln1_b),
            ("ffn_in.weight", &mut self.i_w),
            ("ffn_in.bias", &mut self.i_b),
            ("ffn_out.weight", &mut self.f_w),
            ("ffn_out.bias", &mut self.f_b),
            ("ln2.weight", &mut self.ln2_w),
            ("ln2.bias", &mut self.ln2_b),
        ]
    }
}

/// Training-time state for the encoder forward pass.
pub(crate) struct TrainCtx<'a> {
    /// Layers with an index >= this run with differentiable ops; the
    /// embeddings too when it is 0. Others run as in inference.
    pub grad_from: usize,
    /// Dropout probability on the outputs of trainable sub-layers.
    pub dropout: f32,
    /// Seeded RNG for the dropout masks (candle's CPU RNG cannot be seeded).
    pub rng: &'a mut StdRng,
}

/// The encoder weights and the forward pass.
#[derive(Clone)]
pub struct Bert {
    pub cfg: BertConfig,
    act: Act,
    word: Tensor,
    pos: Tensor,
    typ: Tensor,
    ln_w: Tensor,
    ln_b: Tensor,
    layers: Vec<Layer>,
    /// Flat-buffer copy of the weights for the inference hot path, built on
    /// first use. Not cached while training (variables change every step).
    fast: OnceLock<Arc<FastBert>>,
    training: bool,
    /// The packed forward's dense-layer arithmetic.
    precision: crate::Precision,
    /// Token ids of the texts the int8 forward is calibrated on.
    calibration: Option<Vec<Vec<u32>>>,
    /// What calibrating these weights on those texts made, when known (a
    /// loaded bundle's): the int8 forward is built from it instead.
    int8_layers: Option<Arc<Vec<Int8Layer>>>,
}

/// Borrowed view of all weights, layer parameters in [`Layer::params_mut`]
/// order.
pub(crate) struct BertTensors<'a> {
    pub word: &'a Tensor,
    pub pos: &'a Tensor,
    pub typ: &'a Tensor,
    pub ln_w: &'a Tensor,
    pub ln_b: &'a Tensor,
    pub layers: Vec<[&'a Tensor; 12]>,
}

/// Dropout with a mask drawn from a seeded RNG, so training runs repeat.
pub(crate) fn dropout(x: &Tensor, p: f32, rng: &mut StdRng) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let n = x.elem_count();
    let keep = 1.0 / (1.0 - p);
    // One u32 per element compared with a threshold: cheaper than floats.
    let thr = (p as f64 * u32::MAX as f64) as u32;
    let mask: Vec<f32> = (0..n)
        .map(|_| if rng.random::<u32>() < thr { 0.0 } else { keep })
        .collect();
    Ok(crate::autograd::mask_mul(x, mask)?)
}

impl Bert {
    /// Load weights from a Hugging Face BERT or (XLM-)RoBERTa safetensors
    /// file (with or without the `bert.`/`roberta.` prefix; pooler and MLM
    /// heads are ignored).
    pub fn load(cfg: &BertConfig, weights: &Path, device: &Device) -> Result<Self> {
        let ts = candle_core::safetensors::load(weights, device).map_err(|e| {
            TransformerError::Encoder(format!(
                "{}: cannot read safetensors: {}",
                weights.display(),
                crate::error::one_line(&e.to_string())
            ))
        })?;
        Self::from_tensors(cfg, ts, &weights.display().to_string())
    }

    pub fn from_tensors(
        cfg: &BertConfig,
        mut ts: HashMap<String, Tensor>,
        file: &str,
    ) -> Result<Self> {
        let act = cfg
            .act()
            .map_err(|m| TransformerError::Encoder(format!("{file}: {m}")))?;
        // Hugging Face heads save the encoder under `bert.` or `roberta.`;
        // bare encoders (sentence-transformers) have no prefix.
        let prefix = ["bert.", "roberta."]
            .into_iter()
            .find(|p| ts.contains_key(&format!("{p}embeddings.word_embeddings.weight")))
            .unwrap_or("");
        let h = cfg.hidden_size;
        let mut take = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let full = format!("{prefix}{name}");
            let t = ts.remove(&full).ok_or_else(|| {
                TransformerError::Encoder(format!(
                    "{file}: missing tensor '{full}' (not a BERT checkpoint, or config.json \
                     does not match the weights)"
                ))
            })?;
            if t.dims() != shape {
                return Err(TransformerError::Encoder(format!(
                    "{file}: tensor '{full}' has shape {:?} but config.json implies {shape:?}",
                    t.dims()
                )));
            }
            Ok(t.to_dtype(DType::F32)?)
        };
        let word = take("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?;
        let pos = take(
            "embeddings.position_embeddings.weight",
            &[cfg.max_position_embeddings, h],
        )?;
        let typ = take(
            "embeddings.token_type_embeddings.weight",
            &[cfg.type_vocab_size, h],
        )?;
        let ln_w = take("embeddings.LayerNorm.weight", &[h])?;
        let ln_b = take("embeddings.LayerNorm.bias", &[h])?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        let im = cfg.intermediate_size;
        for i in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let q_w = take(&format!("{p}.attention.self.query.weight"), &[h, h])?;
            let k_w = take(&format!("{p}.attention.self.key.weight"), &[h, h])?;
            let v_w = take(&format!("{p}.attention.self.value.weight"), &[h, h])?;
            let q_b = take(&format!("{p}.attention.self.query.bias"), &[h])?;
            let k_b = take(&format!("{p}.attention.self.key.bias"), &[h])?;
            let v_b = take(&format!("{p}.attention.self.value.bias"), &[h])?;
            layers.push(Layer {
                qkv_w: Tensor::cat(&[&q_w, &k_w, &v_w], 0)?,
                qkv_b: Tensor::cat(&[&q_b, &k_b, &v_b], 0)?,
                o_w: take(&format!("{p}.attention.output.dense.weight"), &[h, h])?,
                o_b: take(&format!("{p}.attention.output.dense.bias"), &[h])?,
                ln1_w: take(&format!("{p}.attention.output.LayerNorm.weight"), &[h])?,
                ln1_b: take(&format!("{p}.attention.output.LayerNorm.bias"), &[h])?,
                i_w: take(&format!("{p}.intermediate.dense.weight"), &[im, h])?,
                i_b: take(&format!("{p}.intermediate.dense.bias"), &[im])?,
                f_w: take(&format!("{p}.output.dense.weight"), &[h, im])?,
                f_b: take(&format!("{p}.output.dense.bias"), &[h])?,
                ln2_w: take(&format!("{p}.output.LayerNorm.weight"), &[h])?,
                ln2_b: take(&format!("{p}.output.LayerNorm.bias"), &[h])?,
            });
        }
        Ok(Self {
            cfg: cfg.clone(),
            act,
            word,
            pos,
            typ,
            ln_w,
            ln_b,
            layers,
            fast: OnceLock::new(),
            precision: crate::Precision::F32,
            calibration: None,
            int8_layers: None,
            training: false,
        })
    }

    /// Run the packed inference forward at `p` (rebuilt on next use).
    pub(crate) fn set_precision(&mut self, p: crate::Precision) {
        if self.precision != p {
            self.precision = p;
            self.rebuild();
        }
    }

    /// Build the packed forward again on next use, calibrating again: the
    /// weights, precision or calibration changed.
    fn rebuild(&mut self) {
        self.fast = OnceLock::new();
        self.int8_layers = None;
    }

    /// Build the int8 forward from what calibrating the current weights
    /// on the current texts made ([`Self::int8_layers`]), rebuilt on next
    /// use.
    pub(crate) fn set_int8_layers(&mut self, layers: Vec<Int8Layer>) {
        self.fast = OnceLock::new();
        self.int8_layers = Some(Arc::new(layers));
    }

    /// The int8 forward's calibrated layers (`None` at fp32), read back
    /// from the forward, however it was built.
    pub(crate) fn int8_layers(&self) -> Result<Option<Vec<Int8Layer>>> {
        if self.precision != crate::Precision::Int8 {
            return Ok(None);
        }
        Ok(self.fast()?.int8_layers())
    }

    /// The int8 forward's calibration texts (token ids; see
    /// [`FastBert::new`]), rebuilt on next use.
    pub(crate) fn set_calibration(&mut self, ids: Option<Vec<Vec<u32>>>) {
        if self.calibration != ids {
            self.calibration = ids;
            self.rebuild();
        }
    }

    pub(crate) fn calibration(&self) -> Option<&[Vec<u32>]> {
        self.calibration.as_deref()
    }

    /// The packed inference forward (see [`crate::fast`]) over the current
    /// weights.
    pub(crate) fn fast(&self) -> Result<Arc<FastBert>> {
        let build = || -> Result<Arc<FastBert>> {
            let view = BertTensors {
                word: &self.word,
                pos: &self.pos,
                typ: &self.typ,
                ln_w: &self.ln_w,
                ln_b: &self.ln_b,
                layers: self
                    .layers
                    .iter()
                    .map(|l| {
                        [
                            &l.qkv_w, &l.qkv_b, &l.o_w, &l.o_b, &l.ln1_w, &l.ln1_b, &l.i_w, &l.i_b,
                            &l.f_w, &l.f_b, &l.ln2_w, &l.ln2_b,
                        ]
                    })
                    .collect(),
            };
            Ok(Arc::new(FastBert::new(
                &self.cfg,
                self.act,
                &view,
                self.precision,
                self.calibration.as_deref(),
                self.int8_layers.as_deref().map(Vec::as_slice),
            )?))
        };
        if self.training {
            return build();
        }
        if let Some(f) = self.fast.get() {
            return Ok(f.clone());
        }
        let f = build()?;
        let _ = self.fast.set(f.clone());
        Ok(f)
    }

    /// All weights under their Hugging Face names (Q/K/V split again), so a
    /// saved encoder loads in any BERT implementation.
    pub fn named_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let h = self.cfg.hidden_size;
        let mut out = vec![
            (
                "embeddings.word_embeddings.weight".to_string(),
                self.word.clone(),
            ),
            (
                "embeddings.position_embeddings.weight".into(),
                self.pos.clone(),
            ),
            (
                "embeddings.token_type_embeddings.weight".into(),
                self.typ.clone(),
            ),
            ("embeddings.LayerNorm.weight".into(), self.ln_w.clone()),
            ("embeddings.LayerNorm.bias".into(), self.ln_b.clone()),
        ];
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("encoder.layer.{i}");
            for (j, n) in ["query", "key", "value"].iter().enumerate() {
                out.push((
                    format!("{p}.attention.self.{n}.weight"),
                    l.qkv_w.narrow(0, j * h, h)?.contiguous()?,
                ));
                out.push((
                    format!("{p}.attention.self.{n}.bias"),
                    l.qkv_b.narrow(0, j * h, h)?.contiguous()?,
                ));
            }
            let rest = [
                ("attention.output.dense.weight", &l.o_w),
                ("attention.output.dense.bias", &l.o_b),
                ("attention.output.LayerNorm.weight", &l.ln1_w),
                ("attention.output.LayerNorm.bias", &l.ln1_b),
                ("intermediate.dense.weight", &l.i_w),
                ("intermediate.dense.bias", &l.i_b),
                ("output.dense.weight", &l.f_w),
                ("output.dense.bias", &l.f_b),
                ("output.LayerNorm.weight", &l.ln2_w),
                ("output.LayerNorm.bias", &l.ln2_b),
            ];
            for (n, t) in rest {
                out.push((format!("{p}.{n}"), t.detach()));
            }
        }
        Ok(out)
    }

    /// Write the weights as a Hugging Face compatible safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let map: HashMap<String, Tensor> = self
            .named_tensors()?
            .into_iter()
            .map(|(n, t)| (n, t.detach()))
            .collect();
        crate::error::save_safetensors(&map, path)
    }

    /// Turn the weights of layers `grad_from..` (and the position/type
    /// embeddings and embedding LayerNorm when `grad_from == 0`) into
    /// trainable variables. Frozen weights stay plain tensors, so no gradient
    /// is ever computed for them. The word embeddings always stay frozen: they
    /// are half of MiniLM's parameters, their dense AdamW update would cost
    /// more than a layer's backward pass, and a few thousand labelled cases
    /// cannot usefully move a 30k-token vocabulary.
    pub(crate) fn make_trainable(&mut self, grad_from: usize) -> Result<Vec<(String, Var)>> {
        self.training = true;
        self.rebuild();
        let mut vars = Vec::new();
        let mut wrap = |name: String, t: &mut Tensor| -> Result<()> {
            let v = Var::from_tensor(t)?;
            *t = v.as_tensor().clone();
            vars.push((name, v));
            Ok(())
        };
        if grad_from == 0 {
            wrap("emb.pos".into(), &mut self.pos)?;
            wrap("emb.type".into(), &mut self.typ)?;
            wrap("emb.ln.weight".into(), &mut self.ln_w)?;
            wrap("emb.ln.bias".into(), &mut self.ln_b)?;
        }
        for (i, l) in self.layers.iter_mut().enumerate().skip(grad_from) {
            for (n, t) in l.params_mut() {
                wrap(format!("layer{i}.{n}"), t)?;
            }
        }
        Ok(vars)
    }

    /// Detach every weight from its variable (after training), so later
    /// inference never records a graph.
    pub(crate) fn freeze(&mut self) {
        self.training = false;
        self.rebuild();
        for t in [
            &mut self.word,
            &mut self.pos,
            &mut self.typ,
            &mut self.ln_w,
            &mut self.ln_b,
        ] {
            *t = t.detach();
        }
        for l in &mut self.layers {
            for (_, t) in l.params_mut() {
                *t = t.detach();
            }
        }
    }

    /// Snapshot of all weights (copies), for restoring the best epoch.
    pub(crate) fn snapshot(&self) -> Result<Vec<Tensor>> {
        let mut out = vec![
            self.word.copy()?,
            self.pos.copy()?,
            self.typ.copy()?,
            self.ln_w.copy()?,
            self.ln_b.copy()?,
        ];
        for l in &self.layers {
            for t in [
                &l.qkv_w, &l.qkv_b, &l.o_w, &l.o_b, &l.ln1_w, &l.ln1_b, &l.i_w, &l.i_b, &l.f_w,
                &l.f_b, &l.ln2_w, &l.ln2_b,
            ] {
                out.push(t.copy()?);
            }
        }
        Ok(out.into_iter().map(|t| t.detach()).collect())
    }

    /// Replace all weights by a snapshot (as plain tensors).
    pub(crate) fn restore(&mut self, snap: &[Tensor]) {
        self.rebuild();
        let mut it = snap.iter().cloned();
        let mut next = || it.next().expect("snapshot matches the model");
        self.word = next();
        self.pos = next();
        self.typ = next();
        self.ln_w = next();
        self.ln_b = next();
        for l in &mut self.layers {
            for (_, t) in l.params_mut() {
                *t = next();
            }
        }
    }

    pub fn device(&self) -> &Device {
        self.word.device()
    }

    fn layer_norm(&self, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        let eps = self.cfg.layer_norm_eps as f32;
        Ok(crate::autograd::layer_norm(x, w, b, eps)?)
    }

    fn activation(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.act {
            Act::GeluErf => crate::autograd::gelu_erf(x)?,
            Act::GeluTanh => x.gelu()?,
            Act::Relu => x.relu()?,
        })
    }

    /// Encoder forward pass. `ids` is (batch, seq) u32; `mask_bias` is
    /// (batch, 1, 1, seq) with 0 for real tokens and a large negative value
    /// for padding, or `None` when the batch has no padding. Returns the
    /// last hidden states as (batch * seq, hidden).
    pub(crate) fn forward(
        &self,
        ids: &Tensor,
        mask_bias: Option<&Tensor>,
        mut train: Option<&mut TrainCtx<'_>>,
    ) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let h = self.cfg.hidden_size;
        if s > self.cfg.max_positions() {
            return Err(TransformerError::Input(format!(
                "sequence of {s} tokens exceeds {}",
                self.cfg.positions_limit()
            )));
        }
        let grad_from = train.as_ref().map_or(usize::MAX, |t| t.grad_from);
        // Token types are all 0 (single-segment input). Token i reads
        // position row offset + i (RoBERTa numbering; 0 + i for BERT).
        let pos = self
            .pos
            .narrow(0, self.cfg.position_offset(), s)?
            .broadcast_add(&self.typ.get(0)?)?;
        let x = self.word.index_select(&ids.flatten_all()?, 0)?;
        let x = x
            .reshape((b, s, h))?
            .broadcast_add(&pos)?
            .reshape((b * s, h))?;
        let mut x = self.layer_norm(&x, &self.ln_w, &self.ln_b)?;
        if grad_from == 0 {
            if let Some(t) = train.as_deref_mut() {
                x = dropout(&x, t.dropout, t.rng)?;
            }
        }
        for layer in self.layers.iter().take(grad_from) {
            x = self.layer_forward(layer, &x, b, s, mask_bias, None)?;
        }
        match train {
            Some(t) => self.forward_top(x, b, s, mask_bias, t),
            None => Ok(x),
        }
    }

    /// The trained layers only: `x` (batch * seq, hidden) is the input of
    /// layer `train.grad_from` (from the untracked layers of
    /// [`Self::forward`], or what [`FastBert::hidden_below`] gives for
    /// them: they have no dropout and no gradient), padded like
    /// `mask_bias`. Returns the last hidden states as [`Self::forward`]
    /// does.
    pub(crate) fn forward_top(
        &self,
        x: Tensor,
        b: usize,
        s: usize,
        mask_bias: Option<&Tensor>,
        train: &mut TrainCtx<'_>,
    ) -> Result<Tensor> {
        let mut x = x;
        for layer in self.layers.iter().skip(train.grad_from) {
            x = self.layer_forward(layer, &x, b, s, mask_bias, Some(&mut *train))?;
        }
        Ok(x)
    }

    fn layer_forward(
        &self,
        l: &Layer,
        x: &Tensor,
        b: usize,
        s: usize,
        mask_bias: Option<&Tensor>,
        mut train: Option<&mut TrainCtx<'_>>,
    ) -> Result<Tensor> {
        let nh = self.cfg.num_attention_heads;
        let dh = self.cfg.head_dim();
        let qkv = crate::autograd::linear(x, &l.qkv_w, &l.qkv_b)?;
        let ctx = crate::autograd::attention(&qkv, mask_bias, b, s, nh, dh)?;
        let mut a = crate::autograd::linear(&ctx, &l.o_w, &l.o_b)?;
        if let Some(t) = train.as_deref_mut() {
            a = dropout(&a, t.dropout, t.rng)?;
        }
        let x = self.layer_norm(&(a + x)?, &l.ln1_w, &l.ln1_b)?;
        let inter = self.activation(&crate::autograd::linear(&x, &l.i_w, &l.i_b)?)?;
        let mut f = crate::autograd::linear(&inter, &l.f_w, &l.f_b)?;
        if let Some(t) = train {
            f = dropout(&f, t.dropout, t.rng)?;
        }
        self.layer_norm(&(f + &x)?, &l.ln2_w, &l.ln2_b)
    }
}
