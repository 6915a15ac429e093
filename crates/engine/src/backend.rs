//! The backends: every model kind casetag can train and load, behind one
//! trait, and the registry that lists them. [`REGISTRY`] is the only place
//! the engine learns which kinds exist; everything else (training, loading,
//! the fallback rule, `--kind`'s choices) asks it.
//!
//! Adding a backend (an ONNX or a GPU one, say) is one crate that produces
//! logits over the taxonomy's leaf paths (a [`Classifier`]), one `impl
//! Backend` for it, and one line in [`REGISTRY`]. The decision layer,
//! calibration, evaluation, `tag` and `serve` take any backend's scores the
//! same way. `docs/architecture.md` draws the data flow.

use std::path::Path;

use casetag_core::{Classifier, LabelSpace, Taxonomy};

use crate::fusion::TransformerClassifier;
use crate::train::{level_maps, lexical_evidence, lexical_from, TrainConfig};
use crate::{EngineError, Result};

/// What a backend is fitted on: the training rows' texts and targets
/// (leaf-path indices into `label_space`), the labelled validation rows,
/// and the run's identity.
pub struct FitData<'a> {
    pub texts: &'a [&'a str],
    pub targets: &'a [usize],
    pub val: &'a [(&'a str, usize)],
    pub label_space: &'a LabelSpace,
    pub taxonomy: &'a Taxonomy,
    /// Digest of the training rows (recorded in the manifest).
    pub data_hash: &'a str,
    /// The bundle id being written.
    pub id: &'a str,
}

/// An optional capability: a backend that embeds cases gets the learned
/// out-of-scope detector ([`crate::oos_meta`]), fitted on its embeddings.
pub trait Embeds {
    /// The embeddings of training rows `rows` when training kept them
    /// (frozen encoders), concatenated; `None` to embed them again.
    fn training_embeddings(&self, rows: &[usize]) -> Result<Option<Vec<f32>>>;
    /// Embed texts as inference does.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>>;
}

/// A fitted model, before its bundle is written.
pub trait Fitted: Send + Sync {
    /// The model as inference uses it (validation scores come from here).
    fn classifier(&self) -> &dyn Classifier;
    /// Write the backend's own files into the bundle directory.
    fn save(&self, dir: &Path) -> Result<()>;
    /// The settings recorded under `hyper_parameters` in the manifest.
    fn hyper_parameters(&self) -> serde_json::Value;
    /// Extra validation metrics the backend recorded (merged into the
    /// manifest's `validation_metrics`).
    fn validation_notes(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }
    /// [`Embeds`], for backends that embed cases.
    fn embeds(&self) -> Option<&dyn Embeds> {
        None
    }
}

/// One model kind: how to fit it and how to load its bundles.
pub trait Backend: Sync {
    /// The name bundles record as `kind` and `--kind` takes.
    fn kind(&self) -> &'static str;
    /// Whether its bundles may serve as the fallback (fast, no encoder).
    fn is_fallback(&self) -> bool;
    /// Refuse settings that make no sense for this kind, in the words of
    /// the CLI's flags.
    fn check(&self, cfg: &TrainConfig) -> Result<()>;
    /// The settings that make two of its bundles differ, for the default id.
    fn settings(&self, cfg: &TrainConfig) -> String;
    /// Fit on `data`; `progress` hears of each step.
    fn fit(
        &self,
        cfg: &TrainConfig,
        data: &FitData<'_>,
        progress: &dyn Fn(&str),
    ) -> Result<Box<dyn Fitted>>;
    /// Load a verified bundle's model (`dir` holds the files `save` wrote).
    fn load(&self, dir: &Path, id: &str) -> Result<Box<dyn Classifier>>;
}

/// Every backend casetag knows, the fallback kind first.
pub static REGISTRY: &[&dyn Backend] = &[&Baseline, &Transformer];

/// The backend of a kind; an unknown kind is one line naming the known ones.
pub fn backend(kind: &str) -> Result<&'static dyn Backend> {
    REGISTRY
        .iter()
        .copied()
        .find(|b| b.kind() == kind)
        .ok_or_else(|| {
            EngineError::Input(format!(
                "unknown model kind '{kind}' ({})",
                kinds().collect::<Vec<_>>().join("|")
            ))
        })
}

/// The registered kinds, in [`REGISTRY`] order.
pub fn kinds() -> impl Iterator<Item = &'static str> {
    REGISTRY.iter().map(|b| b.kind())
}

/// Refuse a `--fallback` bundle whose kind may not serve as the fallback
/// (it answers when the primary cannot, so it must be quick and must not
/// share the primary's failure modes).
pub fn check_fallback(path: &Path, id: &str, kind: &str) -> Result<()> {
    if backend(kind).is_ok_and(|b| b.is_fallback()) {
        return Ok(());
    }
    let allowed: Vec<&str> = REGISTRY
        .iter()
        .filter(|b| b.is_fallback())
        .map(|b| b.kind())
        .collect();
    Err(EngineError::Input(format!(
        "--fallback {}: model '{id}' is a {kind}; the fallback must be a {} bundle",
        path.display(),
        allowed.join(" or ")
    )))
}

const LEXICAL_FROM_ONLY: &str = "--lexical-from: only for --kind transformer with --fusion lexical";
const ENCODER_REQUIRED: &str = "--encoder is required for --kind transformer";

/// The baseline's parameters, checked before any fitting: the baseline's
/// own and those of a transformer's lexical model.
fn check_baseline_params(cfg: &TrainConfig) -> Result<()> {
    cfg.baseline
        .check()
        .map_err(|e| EngineError::Input(format!("baseline parameters: {e}")))
}

/// The linfa baseline: hashed word and character n-grams, softmax
/// regression. Fast; the fallback.
struct Baseline;

impl Backend for Baseline {
    fn kind(&self) -> &'static str {
        casetag_baseline::KIND
    }

    fn is_fallback(&self) -> bool {
        true
    }

    fn check(&self, cfg: &TrainConfig) -> Result<()> {
        if cfg.lexical_from.is_some() {
            return Err(EngineError::Input(LEXICAL_FROM_ONLY.into()));
        }
        if cfg.transformer.precision != casetag_transformer::Precision::F32 {
            return Err(EngineError::Input(
                "--precision: only for --kind transformer (the baseline is a sparse linear model)"
                    .into(),
            ));
        }
        check_baseline_params(cfg)
    }

    fn settings(&self, cfg: &TrainConfig) -> String {
        format!("{:?}", cfg.baseline)
    }

    fn fit(
        &self,
        cfg: &TrainConfig,
        data: &FitData<'_>,
        progress: &dyn Fn(&str),
    ) -> Result<Box<dyn Fitted>> {
        let m = casetag_baseline::fit(
            &cfg.baseline,
            data.texts,
            data.targets,
            data.label_space,
            data.id,
            progress,
        )
        .map_err(|e| EngineError::Baseline(e.to_string()))?;
        Ok(Box::new(FittedBaseline(m)))
    }

    fn load(&self, dir: &Path, id: &str) -> Result<Box<dyn Classifier>> {
        Ok(Box::new(
            casetag_baseline::BaselineModel::load(dir, id)
                .map_err(|e| EngineError::Baseline(format!("{}: {e}", dir.display())))?,
        ))
    }
}

struct FittedBaseline(casetag_baseline::BaselineModel);

impl Fitted for FittedBaseline {
    fn classifier(&self) -> &dyn Classifier {
        &self.0
    }

    fn save(&self, dir: &Path) -> Result<()> {
        self.0
            .save(dir)
            .map_err(|e| EngineError::Baseline(e.to_string()))
    }

    fn hyper_parameters(&self) -> serde_json::Value {
        serde_json::to_value(self.0.params()).unwrap_or_default()
    }
}

/// The candle encoder with its head, pooled with lexical evidence unless
/// `--fusion none` ([`crate::fusion`]).
struct Transformer;

impl Backend for Transformer {
    fn kind(&self) -> &'static str {
        casetag_transformer::KIND
    }

    fn is_fallback(&self) -> bool {
        false
    }

    fn check(&self, cfg: &TrainConfig) -> Result<()> {
        if cfg.lexical_from.is_some() && cfg.fusion != crate::fusion::Fusion::Lexical {
            return Err(EngineError::Input(LEXICAL_FROM_ONLY.into()));
        }
        if cfg.encoder.is_none() {
            return Err(EngineError::Input(ENCODER_REQUIRED.into()));
        }
        if cfg.fusion == crate::fusion::Fusion::Lexical && cfg.lexical_from.is_none() {
            check_baseline_params(cfg)?;
        }
        cfg.transformer
            .check()
            .map_err(|e| EngineError::Input(format!("transformer parameters: {e}")))
    }

    fn settings(&self, cfg: &TrainConfig) -> String {
        format!(
            "{:?} {:?} {:?} {:?} {:?}",
            cfg.transformer, cfg.encoder, cfg.fusion, cfg.baseline, cfg.lexical_from
        )
    }

    fn fit(
        &self,
        cfg: &TrainConfig,
        data: &FitData<'_>,
        progress: &dyn Fn(&str),
    ) -> Result<Box<dyn Fitted>> {
        let enc = cfg
            .encoder
            .clone()
            .ok_or_else(|| EngineError::Input(ENCODER_REQUIRED.into()))?;
        let given = match (&cfg.lexical_from, cfg.fusion) {
            (Some(dir), crate::fusion::Fusion::Lexical) => Some(lexical_from(dir, data)?),
            _ => None,
        };
        let inputs = casetag_transformer::TrainInputs {
            texts: data.texts.iter().map(|s| s.to_string()).collect(),
            targets: data.targets.to_vec(),
            val_texts: data.val.iter().map(|p| p.0.to_string()).collect(),
            val_targets: data.val.iter().map(|p| p.1).collect(),
            level_maps: level_maps(data.taxonomy, data.label_space),
        };
        let m = casetag_transformer::fit(
            &cfg.transformer,
            &enc,
            &inputs,
            data.label_space,
            data.id,
            progress,
        )
        .map_err(|e| EngineError::Transformer(e.to_string()))?;
        let mut h = serde_json::to_value(&cfg.transformer).unwrap_or_default();
        h["encoder"] = serde_json::Value::String(enc);
        let lexical = match cfg.fusion {
            crate::fusion::Fusion::None => None,
            crate::fusion::Fusion::Lexical => lexical_evidence(cfg, given, &m, data, progress)?,
        };
        h["fusion"] = serde_json::to_value(cfg.fusion).unwrap_or_default();
        if let Some((b, info)) = &lexical {
            h["lexical"] = serde_json::to_value(b.params()).unwrap_or_default();
            h["lexical_weight"] = serde_json::json!(info.weight);
        }
        Ok(Box::new(FittedTransformer {
            model: TransformerClassifier {
                transformer: m,
                lexical,
            },
            hyper: h,
        }))
    }

    fn load(&self, dir: &Path, id: &str) -> Result<Box<dyn Classifier>> {
        Ok(Box::new(TransformerClassifier::load(dir, id)?))
    }
}

struct FittedTransformer {
    model: TransformerClassifier,
    hyper: serde_json::Value,
}

impl Fitted for FittedTransformer {
    fn classifier(&self) -> &dyn Classifier {
        &self.model
    }

    fn save(&self, dir: &Path) -> Result<()> {
        self.model.save(dir)
    }

    fn hyper_parameters(&self) -> serde_json::Value {
        self.hyper.clone()
    }

    fn validation_notes(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        if let Some((_, info)) = &self.model.lexical {
            m.insert(
                "fusion".into(),
                serde_json::to_value(info).unwrap_or_default(),
            );
        }
        m
    }

    fn embeds(&self) -> Option<&dyn Embeds> {
        Some(self)
    }
}

impl Embeds for FittedTransformer {
    fn training_embeddings(&self, rows: &[usize]) -> Result<Option<Vec<f32>>> {
        self.model
            .transformer
            .training_embeddings(rows)
            .map_err(|e| EngineError::Transformer(e.to_string()))
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.model
            .transformer
            .embed(texts)
            .map_err(|e| EngineError::Transformer(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_knows_each_kind_once_and_names_them_when_asked_for_another() {
        let all: Vec<&str> = kinds().collect();
        assert_eq!(all, ["baseline", "transformer"]);
        for k in &all {
            assert_eq!(backend(k).unwrap().kind(), *k);
        }
        // Exactly one fallback kind, and it loads without an encoder.
        let fallbacks: Vec<&str> = REGISTRY
            .iter()
            .filter(|b| b.is_fallback())
            .map(|b| b.kind())
            .collect();
        assert_eq!(fallbacks, ["baseline"]);
        let e = backend("onnx").err().unwrap().to_string();
        assert_eq!(e, "unknown model kind 'onnx' (baseline|transformer)");
    }

    #[test]
    fn each_backend_refuses_the_others_settings() {
        let mut cfg = TrainConfig {
            transformer: casetag_transformer::TransformerParams {
                precision: casetag_transformer::Precision::Int8,
                ..Default::default()
            },
            ..TrainConfig::default()
        };
        let e = backend("baseline").unwrap().check(&cfg).unwrap_err();
        assert!(e.to_string().starts_with("--precision"), "{e}");
        cfg.encoder = Some("enc".into());
        cfg.fusion = crate::fusion::Fusion::None;
        cfg.lexical_from = Some("b".into());
        let e = backend("transformer").unwrap().check(&cfg).unwrap_err();
        assert!(e.to_string().starts_with("--lexical-from"), "{e}");
        cfg.lexical_from = None;
        assert!(backend("transformer").unwrap().check(&cfg).is_ok());
        cfg.encoder = None;
        let e = backend("transformer").unwrap().check(&cfg).unwrap_err();
        assert!(e.to_string().contains("--encoder"), "{e}");
    }
}
