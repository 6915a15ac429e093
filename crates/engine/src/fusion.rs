//! The transformer with lexical evidence: its leaf-path distribution pooled
//! with the lexical baseline's (hashed word and character n-grams, softmax
//! regression), trained on the same rows.
//!
//! The two models err differently: the encoder reads meaning but only the
//! first tokens of a long transcript (or an average of windows), the
//! lexical model reads every word of it but no meaning. Their
//! log-probabilities are pooled log-linearly,
//!
//! ```text
//! fused = w · log_softmax(z_t / T_t) + (1 − w) · log_softmax(z_b / T_b)
//! ```
//!
//! with each model's temperature fitted on the validation rows first and
//! the weight `w` chosen on the same rows as the value on a grid of 21 that
//! minimises the validation negative log-likelihood (after the fused rows'
//! own temperature, which the bundle's calibration then fits as for any
//! model). `w = 1` is the transformer alone and `w = 0` the lexical model
//! alone, so the choice can fall back to either when the other adds
//! nothing. The bundle keeps both models' files and `fusion.json`.

use std::path::Path;

use casetag_baseline::BaselineModel;
use casetag_core::{Classifier, ClassifierError, Embedded, LabelSpace, LevelScores, Transcript};
use casetag_transformer::TransformerModel;
use serde::{Deserialize, Serialize};

use crate::calibrate::{fit_temperature, nll};
use crate::{EngineError, Result};

/// The fusion settings a bundle keeps beside the two models.
pub const FILE: &str = "fusion.json";
const FORMAT: u32 = 1;
/// Weights tried: 0, 0.05, ..., 1.
const GRID: usize = 20;
/// NLL differences below this are ties.
const TIE: f64 = 1e-5;

/// How a transformer is trained: alone, or pooled with the lexical model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Fusion {
    /// Pool with a lexical model trained on the same rows (the default).
    #[default]
    Lexical,
    /// The transformer alone.
    None,
}

/// Contents of `fusion.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FusionInfo {
    pub format: u32,
    /// Weight of the transformer's log-probabilities; the lexical model's
    /// is `1 - weight`.
    pub weight: f32,
    pub transformer_temperature: f32,
    pub lexical_temperature: f32,
    /// Validation negative log-likelihood (each at its best temperature)
    /// of the fused rows, of the transformer alone and of the lexical
    /// model alone.
    pub val_nll: f64,
    pub val_nll_transformer: f64,
    pub val_nll_lexical: f64,
    /// Validation rows the weight was chosen on.
    pub n_val: usize,
    /// `trained` (fitted with the transformer) or the id of the baseline
    /// bundle the lexical model was taken from.
    pub lexical_source: String,
    /// For a model with added tags (`train --from --add`): per output, the
    /// lexical model's output it pools with, or `None` for a tag the
    /// lexical model never learned, where the transformer's own
    /// log-probability stands alone. Absent: the outputs are the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lexical_outputs: Option<Vec<Option<usize>>>,
}

fn log_softmax(z: &[f32], t: f32) -> Vec<f32> {
    let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b / t));
    let lse = z.iter().map(|&x| (x / t - m).exp()).sum::<f32>().ln() + m;
    z.iter().map(|&x| x / t - lse).collect()
}

/// Pool the two rows; with `map`, output `j` pools with the lexical
/// output `map[j]`, or takes the transformer's alone where that is `None`.
fn pool(
    zt: &[f32],
    zb: &[f32],
    w: f32,
    tt: f32,
    tb: f32,
    map: Option<&[Option<usize>]>,
) -> Vec<f32> {
    let lb = log_softmax(zb, tb);
    log_softmax(zt, tt)
        .into_iter()
        .enumerate()
        .map(|(j, a)| match map.map_or(Some(j), |m| m[j]) {
            Some(i) => w * a + (1.0 - w) * lb[i],
            None => a,
        })
        .collect()
}

impl FusionInfo {
    /// The fused score row for one case.
    pub fn fuse(&self, transformer: &[f32], lexical: &[f32]) -> Vec<f32> {
        pool(
            transformer,
            lexical,
            self.weight,
            self.transformer_temperature,
            self.lexical_temperature,
            self.lexical_outputs.as_deref(),
        )
    }

    /// The same fusion after the transformer's outputs became `outputs`
    /// (each the index of an output before, or `None` for a new tag).
    pub fn extended(&self, outputs: &[Option<usize>]) -> Self {
        let before = |c: usize| match &self.lexical_outputs {
            Some(map) => map[c],
            None => Some(c),
        };
        Self {
            lexical_outputs: Some(outputs.iter().map(|o| o.and_then(before)).collect()),
            ..self.clone()
        }
    }

    /// Choose the weight on validation rows (score rows of both models and
    /// their targets); `None` without validation rows.
    pub fn choose(
        transformer: &[Vec<f32>],
        lexical: &[Vec<f32>],
        targets: &[usize],
        lexical_source: &str,
    ) -> Option<Self> {
        if targets.is_empty()
            || transformer.len() != targets.len()
            || lexical.len() != targets.len()
        {
            return None;
        }
        let tt = fit_temperature(transformer, targets);
        let tb = fit_temperature(lexical, targets);
        let score = |w: f32| {
            let rows: Vec<Vec<f32>> = transformer
                .iter()
                .zip(lexical)
                .map(|(a, b)| pool(a, b, w, tt, tb, None))
                .collect();
            nll(&rows, targets, fit_temperature(&rows, targets))
        };
        let scored: Vec<(f32, f64)> = (0..=GRID)
            .map(|i| {
                let w = i as f32 / GRID as f32;
                (w, score(w))
            })
            .collect();
        // The largest transformer weight whose NLL is within rounding of
        // the lowest: where the lexical model adds nothing, the transformer
        // answers alone.
        let best = scored.iter().map(|s| s.1).fold(f64::INFINITY, f64::min);
        let &(weight, val_nll) = scored.iter().rev().find(|s| s.1 <= best + TIE)?;
        Some(Self {
            format: FORMAT,
            weight,
            transformer_temperature: tt,
            lexical_temperature: tb,
            val_nll,
            val_nll_transformer: scored[GRID].1,
            val_nll_lexical: scored[0].1,
            n_val: targets.len(),
            lexical_source: lexical_source.to_string(),
            lexical_outputs: None,
        })
    }
}

/// The transformer classifier a bundle of kind `transformer` loads: the
/// encoder and head, and, when the bundle has `fusion.json`, the lexical
/// model its scores are pooled with.
pub struct TransformerClassifier {
    pub transformer: TransformerModel,
    pub lexical: Option<(BaselineModel, FusionInfo)>,
}

impl TransformerClassifier {
    /// Load from a bundle directory (files already verified by the bundle).
    pub fn load(dir: &Path, id: &str) -> Result<Self> {
        let transformer = TransformerModel::load(dir, id)
            .map_err(|e| EngineError::Transformer(format!("{}: {e}", dir.display())))?;
        let path = dir.join(FILE);
        let lexical = if path.is_file() {
            let bad = |m: String| EngineError::Input(format!("{}: {m}", path.display()));
            let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
            let info: FusionInfo = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
            if info.format != FORMAT {
                return Err(bad(format!("format {}, expected {FORMAT}", info.format)));
            }
            let ok = |x: f32| x.is_finite() && x > 0.0;
            if !(0.0..=1.0).contains(&info.weight)
                || !ok(info.transformer_temperature)
                || !ok(info.lexical_temperature)
            {
                return Err(bad(
                    "weight must lie in 0..=1 and temperatures be positive".into()
                ));
            }
            let b = BaselineModel::load(dir, id)
                .map_err(|e| EngineError::Baseline(format!("{}: {e}", dir.display())))?;
            let fits = match &info.lexical_outputs {
                None => b.label_space() == transformer.label_space(),
                Some(map) => {
                    let n = b.label_space().n_outputs();
                    map.len() == transformer.label_space().n_outputs()
                        && map.iter().flatten().all(|&i| i < n)
                }
            };
            if !fits {
                return Err(bad(
                    "the lexical model's label space differs from the transformer's".into(),
                ));
            }
            Some((b, info))
        } else {
            None
        };
        Ok(Self {
            transformer,
            lexical,
        })
    }

    /// Write the models (and `fusion.json`) into a bundle directory.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.transformer
            .save(dir)
            .map_err(|e| EngineError::Transformer(e.to_string()))?;
        if let Some((b, info)) = &self.lexical {
            b.save(dir)
                .map_err(|e| EngineError::Baseline(e.to_string()))?;
            let path = dir.join(FILE);
            std::fs::write(&path, serde_json::to_vec_pretty(info).unwrap())
                .map_err(|e| EngineError::Internal(format!("{}: {e}", path.display())))?;
        }
        Ok(())
    }

    fn fused(
        &self,
        cases: &[Transcript],
        rows: Vec<LevelScores>,
    ) -> std::result::Result<Vec<LevelScores>, ClassifierError> {
        let Some((b, info)) = &self.lexical else {
            return Ok(rows);
        };
        let lex = b.predict(cases)?;
        Ok(rows
            .into_iter()
            .zip(lex)
            .map(|(t, l)| LevelScores {
                logits: info.fuse(&t.logits, &l.logits),
            })
            .collect())
    }
}

impl Classifier for TransformerClassifier {
    fn id(&self) -> &str {
        self.transformer.id()
    }

    fn kind(&self) -> &str {
        casetag_transformer::KIND
    }

    fn label_space(&self) -> &LabelSpace {
        self.transformer.label_space()
    }

    fn predict(
        &self,
        cases: &[Transcript],
    ) -> std::result::Result<Vec<LevelScores>, ClassifierError> {
        let rows = self.transformer.predict(cases)?;
        self.fused(cases, rows)
    }

    fn predict_embedded(
        &self,
        cases: &[Transcript],
    ) -> std::result::Result<Option<Embedded>, ClassifierError> {
        match self.transformer.predict_embedded(cases)? {
            Some((rows, emb)) => Ok(Some((self.fused(cases, rows)?, emb))),
            None => Ok(None),
        }
    }

    fn tokens(&self, cases: &[Transcript]) -> Option<Vec<usize>> {
        self.transformer.tokens(cases)
    }

    fn text_tokens(&self, cases: &[Transcript]) -> Option<Vec<usize>> {
        self.transformer.text_tokens(cases)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_rows_are_log_probabilities_between_the_two() {
        let (a, b) = (vec![2.0, 0.0, -1.0], vec![-1.0, 3.0, 0.0]);
        let p = pool(&a, &b, 0.5, 1.0, 1.0, None);
        // Both ends are the models alone.
        assert_eq!(pool(&a, &b, 1.0, 1.0, 1.0, None), log_softmax(&a, 1.0));
        assert_eq!(pool(&a, &b, 0.0, 1.0, 1.0, None), log_softmax(&b, 1.0));
        assert!(p.iter().all(|x| x.is_finite() && *x <= 0.0));
        assert_eq!(
            p.iter()
                .enumerate()
                .max_by(|x, y| x.1.total_cmp(y.1))
                .unwrap()
                .0,
            1,
            "b's confident class wins the average"
        );
    }

    /// Validation rows where the transformer is right on one half and the
    /// lexical model on the other: pooling beats either alone, and a
    /// lexical model that is pure noise gets (almost) no weight.
    #[test]
    fn weight_is_chosen_by_validation_likelihood() {
        let n = 200;
        let targets: Vec<usize> = (0..n).map(|i| i % 4).collect();
        let row = |hot: usize, cold: usize| {
            let mut z = vec![0.0f32; 4];
            z[hot] = 2.0;
            z[cold] = 1.5;
            z
        };
        let t: Vec<Vec<f32>> = (0..n)
            .map(|i| {
                let y = targets[i];
                if i % 2 == 0 {
                    row(y, (y + 1) % 4)
                } else {
                    row((y + 1) % 4, y)
                }
            })
            .collect();
        let l: Vec<Vec<f32>> = (0..n)
            .map(|i| {
                let y = targets[i];
                if i % 2 == 1 {
                    row(y, (y + 1) % 4)
                } else {
                    row((y + 1) % 4, y)
                }
            })
            .collect();
        let info = FusionInfo::choose(&t, &l, &targets, "trained").unwrap();
        assert!(info.val_nll < info.val_nll_transformer);
        assert!(info.val_nll < info.val_nll_lexical);
        assert!((0.3..=0.7).contains(&info.weight), "{}", info.weight);
        // A constant lexical model carries no evidence.
        let flat = vec![vec![0.0f32; 4]; n];
        let info = FusionInfo::choose(&t, &flat, &targets, "trained").unwrap();
        assert_eq!(info.weight, 1.0);
        assert!(FusionInfo::choose(&t, &l, &[], "trained").is_none());
    }
}
