//! The fitted model: inference, save and load.
//!
//! A saved directory is self-contained. The encoder weights are ALWAYS
//! copied into it (`encoder.safetensors`, ~90 MB for MiniLM), fine-tuned or
//! not: a model must keep working after the encoder directory it was trained
//! from is moved or changed, and the engine checksums every file. The source
//! spec and the sha256 of the source weights are recorded in
//! `transformer.json` for provenance.
//!
//! Files: `transformer.json` (params, label space, id, pooling, provenance,
//! training summary), `head.safetensors`, `encoder.safetensors` (Hugging Face
//! BERT names), `encoder_config.json` (the encoder's `config.json`),
//! `tokenizer.json`, and for int8 [`CALIBRATION_FILE`] and
//! [`INT8_LAYERS_FILE`]. The engine writes the manifest beside them.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use casetag_core::{Classifier, ClassifierError, LabelSpace, LevelScores, Transcript};
use serde::{Deserialize, Serialize};

use crate::encoder::{l2_normalize, Encoder, EncoderFiles};
use crate::error::{Result, TransformerError};
use crate::fast::{Int8Codes, Int8Layer, INT8_DENSE};
use crate::head::Head;
use crate::TransformerParams;

/// One row of floats per text.
type Rows = Vec<Vec<f32>>;

pub const INFO_FILE: &str = "transformer.json";
pub const HEAD_FILE: &str = "head.safetensors";
pub const ENCODER_FILE: &str = "encoder.safetensors";
pub const ENCODER_CONFIG_FILE: &str = "encoder_config.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Token ids of the training texts the int8 forward is calibrated on
/// (written by a bundle trained with `--precision int8`; a JSON array of
/// arrays). Bundles without it calibrate on pseudo-random ids.
pub const CALIBRATION_FILE: &str = "int8_calibration.json";
/// What calibrating the int8 forward on [`CALIBRATION_FILE`]'s texts made:
/// per layer, the smoothing of the QKV and FFN-in inputs and every dense
/// layer's codes and steps (written by a bundle trained with `--precision
/// int8`). A load builds the int8 forward from it instead of calibrating
/// again (which gives the same codes: every f32 path sums alike).
pub const INT8_LAYERS_FILE: &str = "int8_layers.safetensors";
const FORMAT: u32 = 1;

/// What happened during training (for the manifest's validation metrics).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    pub epochs_run: usize,
    /// 1-based epoch whose weights were kept.
    pub best_epoch: usize,
    /// Leaf-path accuracy on the validation texts at the best epoch.
    pub val_accuracy: Option<f64>,
    pub val_loss: Option<f64>,
    /// Mean training loss of the last epoch run.
    pub train_loss: f64,
    pub n_train: usize,
    pub n_val: usize,
    pub seconds: f64,
}

/// Contents of `transformer.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelInfo {
    pub format: u32,
    pub id: String,
    pub kind: String,
    pub params: TransformerParams,
    pub label_space: LabelSpace,
    /// Always `mean` (over the attention mask), as all-MiniLM-L6-v2 uses.
    pub pooling: String,
    pub normalize: bool,
    /// The encoder spec the model was trained from and the sha256 of its
    /// weights file at that time (provenance; the bundle has its own copy).
    pub encoder_source: String,
    pub encoder_sha256: String,
    /// Whether `encoder.safetensors` differs from the source encoder.
    pub fine_tuned: bool,
    pub hidden_size: usize,
    pub train: TrainSummary,
}

/// A fitted transformer classifier.
pub struct TransformerModel {
    pub(crate) info: ModelInfo,
    pub(crate) encoder: Encoder,
    pub(crate) head: Head,
    /// Frozen-mode training embeddings kept from `fit` (never saved).
    pub(crate) fit_embeddings: Option<Tensor>,
    /// The validation texts' embeddings `fit` computed with the weights it
    /// kept (never saved).
    pub(crate) fit_val: Option<KeptEmbeddings>,
}

/// Embeddings a fit already computed with the model's final weights, by
/// text, as the model's own forward gives them: the engine's fusion weight
/// and calibration predict on the validation texts right after the fit, and
/// read these instead of running the encoder over those texts again.
pub(crate) struct KeptEmbeddings {
    rows: std::collections::HashMap<String, usize>,
    x: Vec<f32>,
}

impl KeptEmbeddings {
    /// `x` (texts, hidden): row `i` is the embedding of `texts[i]`.
    pub(crate) fn new(texts: &[String], x: &Tensor) -> Result<Self> {
        let rows = texts
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i))
            .collect();
        Ok(Self {
            rows,
            x: x.flatten_all()?.to_vec1()?,
        })
    }
}

fn file_in(dir: &Path, name: &str) -> Result<PathBuf> {
    let p = dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(TransformerError::Model(format!(
            "{}: missing {name} (not a complete transformer model directory)",
            dir.display()
        )))
    }
}

/// A JSON file of the bundle, parsed; unreadable or corrupt is one error
/// naming the file.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| TransformerError::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| TransformerError::Model(format!("{}: corrupt: {e}", path.display())))
}

/// Remove a file an earlier save of another model left in the directory.
fn remove_stale(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(TransformerError::io(path, e)),
        _ => Ok(()),
    }
}

/// Tensor names of [`INT8_LAYERS_FILE`]: `layer.{i}.qkv_smooth` and
/// `layer.{i}.ffn_in_smooth` (F32, one per input channel, absent where not
/// smoothed), `layer.{i}.{qkv|output|ffn_in|ffn_out}.codes` (U8 holding
/// the two's-complement i8 codes, `o × k`) and `.steps` (F32, `o`).
fn write_int8_layers(path: &Path, layers: &[Int8Layer]) -> Result<()> {
    let dev = Device::Cpu;
    let mut map = std::collections::HashMap::new();
    for (li, l) in layers.iter().enumerate() {
        for (name, v) in [("qkv_smooth", &l.qkv_in), ("ffn_in_smooth", &l.i_in)] {
            if let Some(v) = v {
                map.insert(
                    format!("layer.{li}.{name}"),
                    Tensor::from_slice(v, v.len(), &dev)?,
                );
            }
        }
        for (name, c) in INT8_DENSE.iter().zip(&l.dense) {
            if let Some(c) = c {
                let bytes: Vec<u8> = c.codes.iter().map(|&q| q as u8).collect();
                let codes = Tensor::from_vec(bytes, (c.o, c.k), &dev)?;
                map.insert(format!("layer.{li}.{name}.codes"), codes);
                let steps = Tensor::from_slice(&c.steps, c.o, &dev)?;
                map.insert(format!("layer.{li}.{name}.steps"), steps);
            }
        }
    }
    crate::error::save_safetensors(&map, path)
}

/// [`write_int8_layers`]' file, for an encoder of `n_layers` layers
/// (whether it fits the weights is checked when the forward is built).
fn read_int8_layers(path: &Path, n_layers: usize) -> Result<Vec<Int8Layer>> {
    // One line naming the file and, where known, the tensor.
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        let e = crate::error::one_line(&e.to_string());
        TransformerError::Model(format!("{}: {what}{e}", path.display()))
    };
    let mut ts = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| bad("", &e))?;
    let mut take = |name: &str| ts.remove(name).map(|t| (format!("{name}: "), t));
    let mut layers = Vec::with_capacity(n_layers);
    for li in 0..n_layers {
        let mut floats = |name: String| -> Result<Option<Vec<f32>>> {
            let Some((at, t)) = take(&name) else {
                return Ok(None);
            };
            Ok(Some(t.to_vec1::<f32>().map_err(|e| bad(&at, &e))?))
        };
        let qkv_in = floats(format!("layer.{li}.qkv_smooth"))?;
        let i_in = floats(format!("layer.{li}.ffn_in_smooth"))?;
        let mut dense: [Option<Int8Codes>; 4] = Default::default();
        for (d, name) in dense.iter_mut().zip(INT8_DENSE) {
            let codes = take(&format!("layer.{li}.{name}.codes"));
            let steps = take(&format!("layer.{li}.{name}.steps"));
            let (Some((at_c, c)), Some((at_s, s))) = (codes, steps) else {
                continue;
            };
            let ((o, k), codes) = c
                .dims2()
                .and_then(|dims| Ok((dims, c.flatten_all()?.to_vec1::<u8>()?)))
                .map_err(|e| bad(&at_c, &e))?;
            let steps = s.to_vec1::<f32>().map_err(|e| bad(&at_s, &e))?;
            let codes = codes.into_iter().map(|q| q as i8).collect();
            *d = Some(Int8Codes { o, k, codes, steps });
        }
        layers.push(Int8Layer {
            qkv_in,
            i_in,
            dense,
        });
    }
    if let Some(name) = ts.keys().min() {
        let why = format!("for an encoder of {n_layers} layers");
        return Err(bad(&format!("unexpected tensor '{name}' "), &why));
    }
    Ok(layers)
}

/// Copy unless source and destination are the same file (saving a model
/// into the directory it was loaded from must not truncate it).
fn copy_file(src: &Path, dst: &Path) -> Result<()> {
    if let (Ok(a), Ok(b)) = (src.canonicalize(), dst.canonicalize()) {
        if a == b {
            return Ok(());
        }
    }
    // Not `fs::copy`, which keeps the source's mode: a bundle file is
    // created like any other, its mode following the umask.
    let mut from = std::fs::File::open(src).map_err(|e| TransformerError::io(src, e))?;
    let mut to = std::fs::File::create(dst).map_err(|e| TransformerError::io(dst, e))?;
    std::io::copy(&mut from, &mut to).map_err(|e| TransformerError::io(dst, e))?;
    Ok(())
}

impl TransformerModel {
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn params(&self) -> &TransformerParams {
        &self.info.params
    }

    pub fn training_summary(&self) -> &TrainSummary {
        &self.info.train
    }

    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// Sequences per forward pass at inference.
    pub fn set_infer_batch_size(&mut self, n: usize) {
        self.info.params.infer_batch_size = n.max(1);
    }

    /// Write the model files into `dir` (created if needed).
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| TransformerError::io(dir, e))?;
        self.head.save(&dir.join(HEAD_FILE))?;
        let files = self.encoder.files();
        if self.info.fine_tuned {
            self.encoder.bert.save(&dir.join(ENCODER_FILE))?;
        } else {
            copy_file(&files.weights, &dir.join(ENCODER_FILE))?;
        }
        copy_file(&files.config, &dir.join(ENCODER_CONFIG_FILE))?;
        copy_file(&files.tokenizer, &dir.join(TOKENIZER_FILE))?;
        let c = dir.join(CALIBRATION_FILE);
        match self.encoder.int8_calibration() {
            Some(ids) => {
                let json = serde_json::to_string(ids)
                    .map_err(|e| TransformerError::Model(format!("{}: {e}", c.display())))?;
                std::fs::write(&c, json).map_err(|e| TransformerError::io(&c, e))?;
            }
            None => remove_stale(&c)?,
        }
        let l = dir.join(INT8_LAYERS_FILE);
        match self.encoder.int8_layers()? {
            Some(layers) => write_int8_layers(&l, &layers)?,
            None => remove_stale(&l)?,
        }
        let p = dir.join(INFO_FILE);
        let json = serde_json::to_string_pretty(&self.info)
            .map_err(|e| TransformerError::Model(format!("{}: {e}", p.display())))?;
        std::fs::write(&p, json).map_err(|e| TransformerError::io(&p, e))
    }

    /// Load a model written by [`save`](Self::save). `id` is the model id the
    /// caller knows it by (the manifest's); it replaces the saved one.
    pub fn load(dir: &Path, id: &str) -> Result<Self> {
        if !dir.is_dir() {
            return Err(TransformerError::Model(format!(
                "{}: not a directory",
                dir.display()
            )));
        }
        let info_path = file_in(dir, INFO_FILE)?;
        let mut info: ModelInfo = read_json(&info_path)?;
        if info.format != FORMAT {
            return Err(TransformerError::Model(format!(
                "{}: format {} is not supported (expected {FORMAT})",
                info_path.display(),
                info.format
            )));
        }
        info.id = id.to_string();
        let files = EncoderFiles {
            config: file_in(dir, ENCODER_CONFIG_FILE)?,
            weights: file_in(dir, ENCODER_FILE)?,
            tokenizer: file_in(dir, TOKENIZER_FILE)?,
        };
        let device = Device::Cpu;
        let mut encoder = Encoder::from_files(&files, &device)?;
        encoder.source = info.encoder_source.clone();
        let c = dir.join(CALIBRATION_FILE);
        if c.is_file() {
            encoder.set_int8_calibration(Some(read_json(&c)?));
        }
        encoder.set_precision(info.params.precision);
        let l = dir.join(INT8_LAYERS_FILE);
        if info.params.precision == crate::Precision::Int8 && l.is_file() {
            let layers = read_int8_layers(&l, encoder.config().num_hidden_layers)?;
            encoder.set_int8_layers(layers);
        }
        let head = Head::load(&file_in(dir, HEAD_FILE)?, info.params.dropout, &device)?;
        if head.input_dim() != encoder.hidden_size() {
            return Err(TransformerError::Model(format!(
                "{}: head expects {}-d embeddings but the encoder gives {}",
                dir.display(),
                head.input_dim(),
                encoder.hidden_size()
            )));
        }
        if head.n_outputs() != info.label_space.n_outputs() {
            return Err(TransformerError::Model(format!(
                "{}: head has {} outputs but the label space has {}",
                dir.display(),
                head.n_outputs(),
                info.label_space.n_outputs()
            )));
        }
        // The packed forward (and, for int8, its calibration) is built now,
        // once the bundle is known to be whole, so the first cases tagged do
        // not pay for it.
        encoder.prepare()?;
        Ok(Self {
            info,
            encoder,
            head,
            fit_embeddings: None,
            fit_val: None,
        })
    }

    /// The embeddings `fit` computed for the given training rows (indices
    /// into `TrainInputs::texts`), row-major; `None` unless this model was
    /// just trained, frozen or fine-tuned at f32 with the states below its
    /// trained layers stored (they are not saved). Saves embedding the
    /// training set a second time.
    pub fn training_embeddings(&self, rows: &[usize]) -> Result<Option<Vec<f32>>> {
        let Some(x) = &self.fit_embeddings else {
            return Ok(None);
        };
        let n = x.dim(0)?;
        if let Some(&bad) = rows.iter().find(|&&r| r >= n) {
            return Err(TransformerError::Input(format!(
                "training row {bad} out of range ({n} rows)"
            )));
        }
        let idx = Tensor::from_vec(
            rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
            rows.len(),
            x.device(),
        )?;
        Ok(Some(x.index_select(&idx, 0)?.flatten_all()?.to_vec1()?))
    }

    /// Pooled embeddings (normalized when the model normalizes), one row per
    /// text. Useful for benches and similarity checks.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        Ok(self.embed_tensor(texts)?.to_vec2()?)
    }

    /// [`Self::run_encoder`], reading what the fit kept for the texts it
    /// has.
    fn embed_tensor(&self, texts: &[&str]) -> Result<Tensor> {
        let Some(kept) = &self.fit_val else {
            return self.run_encoder(texts);
        };
        let hits: Vec<Option<usize>> = texts.iter().map(|t| kept.rows.get(*t).copied()).collect();
        if hits.iter().all(Option::is_none) {
            return self.run_encoder(texts);
        }
        let missing: Vec<&str> = texts
            .iter()
            .zip(&hits)
            .filter(|(_, hit)| hit.is_none())
            .map(|(t, _)| *t)
            .collect();
        let fresh: Vec<f32> = if missing.is_empty() {
            Vec::new()
        } else {
            self.run_encoder(&missing)?.flatten_all()?.to_vec1()?
        };
        let h = self.encoder.hidden_size();
        let mut fresh = fresh.chunks_exact(h);
        let mut out = Vec::with_capacity(texts.len() * h);
        for hit in hits {
            match hit {
                Some(r) => out.extend_from_slice(&kept.x[r * h..(r + 1) * h]),
                None => out.extend_from_slice(fresh.next().ok_or_else(|| {
                    TransformerError::Tensor("fewer embeddings than texts".into())
                })?),
            }
        }
        Ok(Tensor::from_vec(
            out,
            (texts.len(), h),
            self.encoder.bert.device(),
        )?)
    }

    /// Pooled (and, where the model normalizes, normalized) embeddings from
    /// the encoder, one row per text.
    fn run_encoder(&self, texts: &[&str]) -> Result<Tensor> {
        let p = &self.info.params;
        let ids = self.encoder.tokenize(texts, p.max_tokens, p.truncation)?;
        let x = self
            .encoder
            .embed_windowed(&ids, p.max_tokens, p.infer_batch_size)?;
        if self.info.normalize {
            l2_normalize(&x)
        } else {
            Ok(x)
        }
    }

    /// Tokens the encoder runs for each text (tokenized and cut as for
    /// inference, every window counted).
    pub fn token_counts(&self, texts: &[&str]) -> Result<Vec<usize>> {
        let p = &self.info.params;
        let ids = self.encoder.tokenize(texts, p.max_tokens, p.truncation)?;
        Ok(ids
            .iter()
            .map(|s| self.encoder.run_tokens(s, p.max_tokens))
            .collect())
    }

    /// Logits from embeddings as returned by [`embed`](Self::embed): the head
    /// alone (benches, sweeps over cached embeddings).
    pub fn head_logits(&self, embeddings: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        if embeddings.is_empty() {
            return Ok(Vec::new());
        }
        let d = self.encoder.hidden_size();
        if let Some(r) = embeddings.iter().find(|r| r.len() != d) {
            return Err(TransformerError::Input(format!(
                "embedding of length {} where the encoder gives {d}",
                r.len()
            )));
        }
        let x = Tensor::from_vec(embeddings.concat(), (embeddings.len(), d), &Device::Cpu)?;
        Ok(self.head.forward(&x, None)?.to_vec2()?)
    }

    /// Raw logits and pooled embeddings (as [`embed`](Self::embed) gives
    /// them), one row per text, from one encoder pass.
    pub fn logits_and_embeddings(&self, texts: &[&str]) -> Result<(Rows, Rows)> {
        if texts.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let x = self.embed_tensor(texts)?;
        Ok((self.head.forward(&x, None)?.to_vec2()?, x.to_vec2()?))
    }

    /// Raw logits over the label space, one row per text.
    pub fn logits(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let x = self.embed_tensor(texts)?;
        Ok(self.head.forward(&x, None)?.to_vec2()?)
    }
}

impl Classifier for TransformerModel {
    fn id(&self) -> &str {
        &self.info.id
    }

    fn kind(&self) -> &str {
        crate::KIND
    }

    fn label_space(&self) -> &LabelSpace {
        &self.info.label_space
    }

    /// Never panics: errors and (defensively) panics inside candle or the
    /// tokenizer come back as `ClassifierError::Backend`.
    fn predict(
        &self,
        cases: &[Transcript],
    ) -> std::result::Result<Vec<LevelScores>, ClassifierError> {
        let rows = guarded(cases, |texts| self.logits(texts))?;
        Ok(rows
            .into_iter()
            .map(|logits| LevelScores { logits })
            .collect())
    }

    /// Never panics, like [`predict`](Classifier::predict).
    fn predict_embedded(
        &self,
        cases: &[Transcript],
    ) -> std::result::Result<Option<casetag_core::Embedded>, ClassifierError> {
        let (rows, emb) = guarded(cases, |texts| self.logits_and_embeddings(texts))?;
        let scores = rows
            .into_iter()
            .map(|logits| LevelScores { logits })
            .collect();
        Ok(Some((scores, emb)))
    }

    fn tokens(&self, cases: &[Transcript]) -> Option<Vec<usize>> {
        guarded(cases, |texts| self.token_counts(texts)).ok()
    }

    fn text_tokens(&self, cases: &[Transcript]) -> Option<Vec<usize>> {
        guarded(cases, |texts| self.encoder.text.whole_lengths(texts)).ok()
    }
}

/// Run inference on the cases' texts with errors and (defensively) panics
/// inside candle or the tokenizer turned into `ClassifierError::Backend`.
fn guarded<T>(
    cases: &[Transcript],
    f: impl FnOnce(&[&str]) -> Result<T>,
) -> std::result::Result<T, ClassifierError> {
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&texts))) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ClassifierError::Backend(e.to_string())),
        Err(_) => Err(ClassifierError::Backend(
            "transformer inference panicked".into(),
        )),
    }
}
