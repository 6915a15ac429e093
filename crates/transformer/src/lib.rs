#![deny(clippy::undocumented_unsafe_blocks)]
//! casetag-transformer: the transformer backend of the tagging pipeline.
//!
//! Place in the pipeline: `core` <- **transformer** <- `engine`. Given texts
//! (whole transcripts) it returns raw logits over the label space (leaf paths
//! of the taxonomy, then an optional out-of-scope class) through the
//! [`casetag_core::Classifier`] trait; calibration, decoding into a path,
//! back-off and actions happen once, in the engine.
//!
//! * [`Encoder`]: a BERT-family encoder (all-MiniLM-L6-v2 by default; also
//!   XLM-RoBERTa ones such as paraphrase-multilingual-MiniLM-L12-v2, with
//!   their SentencePiece tokenizer) from a local Hugging Face directory or
//!   `hf:OWNER/NAME` in the Hugging Face cache, run by our own lean forward
//!   pass ([`bert`]) with mean pooling.
//! * [`fit`]: trains a hierarchical head (leaf-path cross-entropy plus
//!   cross-entropy of the L1/L2 marginals), either on frozen, cached embeddings
//!   ([`Mode::Frozen`], fast) or while fine-tuning all or the top N encoder
//!   layers ([`Mode::FineTune`]).
//! * [`TransformerModel`]: the fitted model; `save`/`load` write and read a
//!   self-contained directory (the engine adds the manifest).
//!
//! Threads: candle's CPU matmul already spreads over all cores (gemm on
//! rayon), and the tokenizer's batch encoder runs on rayon too, one phase
//! after the other. Sub-batches are therefore processed sequentially: do not
//! call `predict` from inside a rayon parallel loop; send larger batches.

mod autograd;
pub mod bert;
mod encoder;
mod error;
mod fast;
pub mod fixtures;
mod head;
mod kernels;
mod memory;
mod model;
mod text;
mod train;

use serde::{Deserialize, Serialize};

use kernels::KernelPath;

pub use encoder::{calibration_sample, hf_cache_dir, Encoder, EncoderFiles};
pub use error::{Result, TransformerError};
pub use memory::{Memory, Output, Overlap, MEMORY_FILE};
pub use model::{ModelInfo, TrainSummary, TransformerModel, CALIBRATION_FILE, INT8_LAYERS_FILE};
pub use text::{buyer_first, TextEncoder, Truncation};
pub use train::fit;

/// The model kind this crate's bundles record (`manifest.kind`).
pub const KIND: &str = "transformer";

/// What trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The encoder is frozen: embeddings are computed once (and optionally
    /// cached on disk), only the head trains. Minutes on a CPU.
    Frozen,
    /// The encoder trains with the head: all layers (`top_layers: None`,
    /// embeddings included) or only the top N transformer layers.
    FineTune { top_layers: Option<usize> },
}

/// The arithmetic of the encoder's dense layers at inference (and for the
/// frozen mode's embeddings). Attention, softmax, LayerNorm and GELU are
/// fp32 either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// fp32 weights and activations: the reference.
    #[default]
    #[cfg_attr(feature = "cli", value(alias = "fp32"))]
    F32,
    /// int8 weights (symmetric, per output channel) and activations
    /// (per row, at run time), int32 sums: see [`int8_kernel`].
    Int8,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
        }
    }
}

/// The int8 kernel this process runs (`avx512vnni`, `avx2` or `scalar`),
/// chosen once from the CPU, or by `CASETAG_INT8_PATH`.
pub fn int8_kernel() -> &'static str {
    kernels::int8::dispatch().path.name()
}

/// The f32 dense-layer kernel this process runs (`avx512f`, `avx2+fma` or
/// `portable`), chosen once from the CPU, or by `CASETAG_F32_PATH`.
pub fn f32_kernel() -> &'static str {
    kernels::sgemm::dispatch().path.name()
}

/// Why [`int8_kernel`] is not the path `CASETAG_INT8_PATH` asked for.
pub fn int8_kernel_note() -> Option<&'static str> {
    kernels::int8::dispatch().note.as_deref()
}

/// Why [`f32_kernel`] is not the path `CASETAG_F32_PATH` asked for.
pub fn f32_kernel_note() -> Option<&'static str> {
    kernels::sgemm::dispatch().note.as_deref()
}

/// The machine paths this process runs on, as `casetag eval` reports them
/// with its throughput and the runtime benchmark with its timings: the f32
/// and int8 kernels (with why, when they are not what the environment
/// asked for) and rayon's threads.
pub fn runtime_report() -> serde_json::Value {
    serde_json::json!({
        "f32_kernel": f32_kernel(),
        "f32_kernel_note": f32_kernel_note(),
        "int8_kernel": int8_kernel(),
        "int8_kernel_note": int8_kernel_note(),
        "threads": rayon::current_num_threads(),
    })
}

/// One dense layer's weights as the encoder holds them: packed for the f32
/// kernel and quantized for the int8 kernel. It runs exactly the kernels
/// the encoder's forward runs ([`f32_kernel`], [`int8_kernel`]), on their
/// own, for the kernel benchmarks (`cargo bench --bench encoder -- dense`).
pub struct DenseLayer {
    f32: kernels::sgemm::PackedW,
    int8: kernels::int8::QuantW,
    /// Output and input widths.
    pub o: usize,
    pub k: usize,
}

impl DenseLayer {
    /// Pack and quantize `w` (`o × k`, row-major). `o` must be a multiple
    /// of 16, as BERT widths are.
    pub fn new(w: &[f32], o: usize, k: usize) -> Self {
        Self {
            f32: kernels::sgemm::PackedW::new(w, o, k),
            int8: kernels::int8::QuantW::new(w, o, k),
            o,
            k,
        }
    }

    /// `out (n × o) += x (n × k) · Wᵀ` on the f32 kernel.
    pub fn f32(&self, out: &mut [f32], x: &[f32], n: usize) {
        kernels::sgemm::matmul_acc(out, x, &self.f32, n);
    }

    /// The same on the int8 kernel (activations quantized per row).
    pub fn int8(&self, out: &mut [f32], x: &[f32], n: usize) {
        kernels::int8::matmul_acc_q(out, x, &self.int8, n);
    }
}

/// Hyper-parameters of [`fit`]. `Default` suits frozen mode; see
/// [`TransformerParams::fine_tune`] for fine-tuning defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TransformerParams {
    pub mode: Mode,
    /// Maximum number of epochs (early stopping may end sooner).
    pub epochs: usize,
    pub batch_size: usize,
    /// Learning rate of the encoder (fine-tuning only).
    pub lr: f64,
    /// Learning rate of the head.
    pub head_lr: f64,
    /// AdamW decoupled weight decay (not applied to biases and LayerNorm).
    pub weight_decay: f64,
    /// Share of all steps with a linear warm-up; then linear decay to 0.
    pub warmup_ratio: f64,
    /// Epochs without a better validation accuracy before stopping.
    pub patience: usize,
    /// Token budget per case, special tokens included (at most the
    /// encoder's `max_position_embeddings`, 512 for BERT; less the position
    /// offset for XLM-RoBERTa, 514 - 2 = 512).
    pub max_tokens: usize,
    /// A bundle written without it read the head (the default before
    /// buyer-first).
    #[serde(default)]
    pub truncation: Truncation,
    /// Optional hidden layer (GELU) in the head.
    pub hidden: Option<usize>,
    /// Dropout in the head (and, when fine-tuning, in the trained encoder
    /// layers' residual branches).
    pub dropout: f32,
    /// λ in loss = CE(leaf path) + λ · Σ_levels CE(marginal of the level).
    pub level_loss_weight: f32,
    pub seed: u64,
    /// L2-normalize pooled embeddings (as the sentence-transformers pipeline
    /// of all-MiniLM-L6-v2 does) before the head.
    pub normalize: bool,
    /// Sequences per forward pass at inference (and when embedding for the
    /// frozen mode).
    pub infer_batch_size: usize,
    /// Fine-tuning: fit the head on frozen embeddings first (a linear probe
    /// with the frozen-mode defaults), then fine-tune encoder and head from
    /// there ("LP-FT", Kumar et al., 2022): the encoder is not pulled around
    /// by a random head in the first steps, and few epochs suffice.
    #[serde(default)]
    pub linear_probe: bool,
    /// Frozen mode: a directory where embeddings are cached on disk, keyed by
    /// the encoder weights, truncation and text hash. Not saved with models.
    #[serde(skip)]
    pub embedding_cache: Option<std::path::PathBuf>,
    /// The dense layers' arithmetic at inference and for frozen embeddings
    /// (bundles written before it was recorded are fp32).
    pub precision: Precision,
}

impl Default for TransformerParams {
    fn default() -> Self {
        Self {
            mode: Mode::Frozen,
            // Frozen epochs take well under a second on 10k cached
            // embeddings; early stopping ends most runs near epoch 25-50.
            epochs: 100,
            batch_size: 32,
            lr: 5e-5,
            // Chosen on BANKING77's validation split (see benches/README.md,
            // "BANKING77 with the transformer").
            head_lr: 1e-2,
            weight_decay: 0.01,
            warmup_ratio: 0.05,
            patience: 20,
            // Every bundled aftersales transcript whole (the longest is
            // 238 tokens; a third are longer than 128): chosen on the
            // development split (benches/README.md, "Whole transcripts:
            // 256 tokens").
            max_tokens: 256,
            // Buyer lines first: the agent's boilerplate no longer fills
            // the budget. Chosen on the aftersales development split
            // (benches/README.md, "Fine-tuning on the transcripts, and
            // buyer lines first"); text without `[buyer]` lines reads as
            // with `Head`.
            truncation: Truncation::BuyerFirst,
            hidden: None,
            dropout: 0.1,
            level_loss_weight: 0.5,
            seed: 42,
            normalize: true,
            infer_batch_size: 32,
            linear_probe: false,
            embedding_cache: None,
            precision: Precision::F32,
        }
    }
}

impl TransformerParams {
    /// The fine-tuning recipe, `casetag train`'s default: a linear probe,
    /// then the encoder's top 2 layers and the head for at most 3 epochs
    /// (chosen on the validation rows of BANKING77 and of the aftersales
    /// transcripts; benches/README.md, "Fine-tuning on the transcripts").
    /// `top_layers: None` trains every layer.
    pub fn fine_tune() -> Self {
        Self {
            mode: Mode::FineTune {
                top_layers: Some(2),
            },
            epochs: 3,
            batch_size: 32,
            lr: 1e-4,
            head_lr: 2e-3,
            warmup_ratio: 0.1,
            patience: 2,
            linear_probe: true,
            ..Self::default()
        }
    }

    /// Reject parameters that cannot work, with a message naming the field.
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(TransformerError::Params(m));
        if self.epochs == 0 {
            return bad("epochs must be >= 1".into());
        }
        if self.batch_size == 0 || self.infer_batch_size == 0 {
            return bad("batch_size and infer_batch_size must be >= 1".into());
        }
        for (name, v) in [("lr", self.lr), ("head_lr", self.head_lr)] {
            if !(v.is_finite() && v > 0.0) {
                return bad(format!("{name} must be a positive number, got {v}"));
            }
        }
        if !(self.weight_decay.is_finite() && (0.0..1.0).contains(&self.weight_decay)) {
            return bad(format!(
                "weight_decay must be in [0, 1), got {}",
                self.weight_decay
            ));
        }
        if !(self.warmup_ratio.is_finite() && (0.0..1.0).contains(&self.warmup_ratio)) {
            return bad(format!(
                "warmup_ratio must be in [0, 1), got {}",
                self.warmup_ratio
            ));
        }
        if !(self.dropout.is_finite() && (0.0..1.0).contains(&self.dropout)) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if !(self.level_loss_weight.is_finite() && self.level_loss_weight >= 0.0) {
            return bad(format!(
                "level_loss_weight must be >= 0, got {}",
                self.level_loss_weight
            ));
        }
        if !(3..=8192).contains(&self.max_tokens) {
            return bad(format!(
                "max_tokens must be in 3..=8192 (special tokens included), got {}",
                self.max_tokens
            ));
        }
        if self.hidden == Some(0) {
            return bad("hidden must be >= 1 when set".into());
        }
        if self.truncation == Truncation::Windows && !matches!(self.mode, Mode::Frozen) {
            return bad(
                "truncation windows needs mode frozen (fine-tuning reads one window)".into(),
            );
        }
        if let Mode::FineTune {
            top_layers: Some(0),
        } = self.mode
        {
            return bad("top_layers must be >= 1 (use mode frozen to train only the head)".into());
        }
        Ok(())
    }
}

/// Training data for [`fit`], already mapped onto the label space.
#[derive(Clone, Debug, Default)]
pub struct TrainInputs {
    pub texts: Vec<String>,
    /// Output index per text (`< label_space.n_outputs()`).
    pub targets: Vec<usize>,
    pub val_texts: Vec<String>,
    pub val_targets: Vec<usize>,
    /// For each level above the deepest: output index -> node index at that
    /// level (the out-of-scope class maps to its own extra index). Empty for
    /// a flat label space.
    pub level_maps: Vec<Vec<usize>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_models_read_buyer_lines_first_old_bundles_keep_the_head() {
        assert_eq!(
            TransformerParams::default().truncation,
            Truncation::BuyerFirst
        );
        assert_eq!(
            TransformerParams::fine_tune().truncation,
            Truncation::BuyerFirst
        );
        let mut v = serde_json::to_value(TransformerParams::default()).unwrap();
        v.as_object_mut().unwrap().remove("truncation");
        let old: TransformerParams = serde_json::from_value(v).unwrap();
        assert_eq!(old.truncation, Truncation::Head);
    }

    #[test]
    fn params_check_names_the_field() {
        assert!(TransformerParams::default().check().is_ok());
        assert!(TransformerParams::fine_tune().check().is_ok());
        let p = TransformerParams {
            dropout: 1.0,
            ..Default::default()
        };
        assert!(p.check().unwrap_err().to_string().contains("dropout"));
        let p = TransformerParams {
            mode: Mode::FineTune {
                top_layers: Some(0),
            },
            ..Default::default()
        };
        assert!(p.check().unwrap_err().to_string().contains("top_layers"));
    }

    #[test]
    fn params_serde_round_trip_and_defaults() {
        let p = TransformerParams::fine_tune();
        let j = serde_json::to_string(&p).unwrap();
        assert!(j.contains("\"fine_tune\":{\"top_layers\":2}"), "{j}");
        let q: TransformerParams = serde_json::from_str(&j).unwrap();
        assert_eq!(p, q);
        let all = TransformerParams {
            mode: Mode::FineTune { top_layers: None },
            ..p
        };
        let j = serde_json::to_string(&all).unwrap();
        assert!(j.contains("\"fine_tune\":{\"top_layers\":null}"), "{j}");
        assert_eq!(serde_json::from_str::<TransformerParams>(&j).unwrap(), all);
        // Missing fields take defaults.
        let r: TransformerParams = serde_json::from_str(r#"{"epochs": 3}"#).unwrap();
        assert_eq!(r.epochs, 3);
        assert_eq!(r.mode, Mode::Frozen);
    }
}
