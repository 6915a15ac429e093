#![deny(clippy::undocumented_unsafe_blocks)]
//! casetag-baseline: the lexical fallback model (and the transformer's lexical evidence).
//!
//! Place in the pipeline: `engine` trains it (`casetag train --kind baseline`)
//! and serves it behind the transformer as a fallback. Like every backend it
//! takes text in and returns one flat logits vector per case over the label
//! space (leaf paths, then an optional out-of-scope class); the engine
//! marginalizes into L1/L2/L3, so levels are consistent by construction.
//!
//! Model: hashed word 1–2-grams and `char_wb` 2–5-grams, sublinear TF,
//! IDF learned at fit time, L2 normalized — the classic TF-IDF recipe, but
//! with the hashing trick so the vocabulary never has to be stored. The solver
//! fits dense matrices, so the `n_features` most class-informative buckets
//! (chi-squared) are kept and a multinomial logistic regression is fitted
//! on at most `max_fit_rows` rows (a class-stratified subsample) with
//! argmin's L-BFGS, the optimiser linfa-logistic drives, on a per-row
//! stable objective (`softmax.rs` says why not linfa-logistic's own). The fitted
//! weights are copied into plain `Vec<f32>` so inference is a sparse × dense
//! product that never touches ndarray.

mod features;
mod model;
mod softmax;

use serde::{Deserialize, Serialize};

pub use model::{fit, fit_softmax_regression, BaselineModel};

/// The model kind this crate's bundles record (`manifest.kind`).
pub const KIND: &str = "baseline";

/// Errors of the baseline crate; messages are one line.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("invalid baseline params: {0}")]
    Params(String),
    #[error("invalid training data: {0}")]
    Data(String),
    #[error("baseline fit failed: {0}")]
    Fit(String),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{path}: corrupt or mismatched model file: {message}")]
    Format { path: String, message: String },
}

pub type Result<T> = std::result::Result<T, BaselineError>;

/// Hyper-parameters. Validate with [`BaselineParams::check`]; [`fit`] does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BaselineParams {
    /// Hash space is `2^hash_bits` buckets.
    pub hash_bits: u32,
    /// Number of hashed buckets kept as model inputs (dense columns for the solver).
    pub n_features: usize,
    /// At most this many rows are used to fit the logistic model; a larger
    /// training set is subsampled per class. The dense fit matrix is
    /// `max_fit_rows × n_features × 4` bytes (f32).
    pub max_fit_rows: usize,
    /// L2 penalty on the weights (on the summed loss: like scikit-learn's `1/C`).
    pub alpha: f64,
    /// L-BFGS iterations.
    pub max_iterations: u64,
    /// Word n-gram orders, inclusive; `(0, 0)` disables word features.
    pub word_ngrams: (usize, usize),
    /// Character n-gram lengths within words (`char_wb`), inclusive; `(0, 0)` disables.
    pub char_ngrams: (usize, usize),
    /// Seed of the stratified subsample.
    pub seed: u64,
    /// Scripts written without spaces (Thai, Han, kana, Lao, Khmer,
    /// Myanmar) give one word token per character, so word n-grams are
    /// character unigrams and bigrams there. Models saved before this
    /// existed read `false`: they keep the features they were trained on.
    #[serde(default = "old_tokens")]
    pub unspaced_chars: bool,
}

fn old_tokens() -> bool {
    false
}

impl Default for BaselineParams {
    fn default() -> Self {
        Self {
            hash_bits: 18,
            // 8192 columns cost 1.5 points on long aftersales transcripts
            // (0.902 vs 0.917 L3 accuracy); 16384 matches scikit-learn.
            n_features: 16_384,
            // 24k × 16384 × 4 bytes = 1.5 GiB of dense f32.
            max_fit_rows: 24_000,
            alpha: 0.1,
            max_iterations: 100,
            word_ngrams: (1, 2),
            char_ngrams: (2, 5),
            seed: 42,
            unspaced_chars: true,
        }
    }
}

impl BaselineParams {
    /// Validate every field; the message names the first bad one.
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(BaselineError::Params(m));
        if !(8..=24).contains(&self.hash_bits) {
            return bad(format!("hash_bits {} is outside 8..=24", self.hash_bits));
        }
        if self.n_features == 0 || self.n_features > 1usize << self.hash_bits {
            return bad(format!(
                "n_features {} must be in 1..=2^hash_bits ({})",
                self.n_features,
                1usize << self.hash_bits
            ));
        }
        if self.max_fit_rows == 0 {
            return bad("max_fit_rows must be at least 1".into());
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return bad(format!("alpha {} must be finite and > 0", self.alpha));
        }
        if self.max_iterations == 0 {
            return bad("max_iterations must be at least 1".into());
        }
        for (name, (lo, hi), max) in [
            ("word_ngrams", self.word_ngrams, 4),
            ("char_ngrams", self.char_ngrams, 8),
        ] {
            let off = lo == 0 && hi == 0;
            if !off && (lo == 0 || lo > hi || hi > max) {
                return bad(format!(
                    "{name} ({lo}, {hi}) must satisfy 1 <= min <= max <= {max}, or be (0, 0)"
                ));
            }
        }
        if self.word_ngrams == (0, 0) && self.char_ngrams == (0, 0) {
            return bad("word_ngrams and char_ngrams are both disabled".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_check() {
        assert!(BaselineParams::default().check().is_ok());
        let bad = [
            BaselineParams {
                alpha: 0.0,
                ..Default::default()
            },
            BaselineParams {
                hash_bits: 30,
                ..Default::default()
            },
            BaselineParams {
                n_features: 0,
                ..Default::default()
            },
            BaselineParams {
                char_ngrams: (3, 2),
                ..Default::default()
            },
            BaselineParams {
                word_ngrams: (0, 0),
                char_ngrams: (0, 0),
                ..Default::default()
            },
        ];
        for p in bad {
            let e = p.check().unwrap_err().to_string();
            assert!(e.starts_with("invalid baseline params"), "{e}");
            assert!(!e.contains('\n'));
        }
    }
}
