//! Loading bundles into ready-to-use models and the fallback chain.

use std::path::Path;
use std::sync::Mutex;

use casetag_core::bundle::Bundle;
use casetag_core::lang::Coverage;
use casetag_core::text::TextPipeline;
use casetag_core::{Classifier, Transcript};
use serde::Serialize;

use crate::decide::{Decider, Decision, Judging, Scores, Thresholds};
use crate::few_shot::AddedGuard;
use crate::oos_meta::{MetaDetector, StreamWindow};
use crate::{EngineError, Result};

/// A verified bundle with its classifier and decision layer.
pub struct LoadedModel {
    pub bundle: Bundle,
    pub classifier: Box<dyn Classifier>,
    pub decider: Decider,
    /// The learned out-of-scope detector, when the bundle has one.
    pub detector: Option<MetaDetector>,
    /// For a bundle with tags added from a few examples: their answers
    /// checked against the nearest rows ([`crate::few_shot`]).
    pub guard: Option<AddedGuard>,
    /// How out of scope is judged ([`Self::enable_batch_novelty`] for
    /// [`Judging::Batch`], [`Self::enable_stream_novelty`] for
    /// [`Judging::Stream`]); the thresholds are the bundle's either way.
    pub judging: Judging,
    /// The stream's recent cases under [`Judging::Stream`].
    pub stream: Option<Mutex<StreamWindow>>,
    /// The languages the model was trained on (from the manifest).
    pub coverage: Coverage,
}

/// What the engine notes about one case's text on the way in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextMarks {
    /// The text was longer than the bundle's cap and was cut.
    pub truncated: bool,
    /// The case's language ([`casetag_core::lang::detect`]).
    pub lang: &'static str,
}

/// Rows per chunk of a batch job by default (`tag --chunk-rows`); also the
/// batch `eval --batch-novelty` judges as a whole.
pub const CHUNK_ROWS: usize = 50_000;

impl LoadedModel {
    pub fn id(&self) -> &str {
        &self.bundle.manifest.id
    }
    pub fn kind(&self) -> &str {
        &self.bundle.manifest.kind
    }

    /// Judge every batch given to [`Self::scores`] as a whole: the detector's
    /// batch rule adds how much closer each case is to others in the batch
    /// than to the training cases of its class, so a new kind of case that
    /// recurs in the batch is declared out of scope far more often. For
    /// batch jobs over whole files; answers then depend on the batch.
    pub fn enable_batch_novelty(&mut self) -> Result<()> {
        self.check_batch_rule("--batch-novelty", "judge batches as a whole")?;
        self.judging = Judging::Batch;
        Ok(())
    }

    /// Judge each case against the `window` cases scored before it (by
    /// this model, in order): the batch rule of
    /// [`Self::enable_batch_novelty`] without looking ahead, so a new kind
    /// of case that recurs in recent traffic is declared out of scope, one
    /// case at a time. Keeps the window's embeddings (no texts) in memory.
    pub fn enable_stream_novelty(&mut self, window: usize) -> Result<()> {
        self.check_batch_rule("--stream-novelty", "judge cases against recent ones")?;
        // Sized to the embeddings on first use.
        self.stream = Some(Mutex::new(StreamWindow::new(window, 0)));
        self.judging = Judging::Stream;
        Ok(())
    }

    /// The stream's window as bytes under [`Judging::Stream`] (for a batch
    /// job to commit with each chunk), else `None`.
    pub fn stream_state(&self) -> Option<Vec<u8>> {
        let w = self.stream.as_ref()?;
        Some(w.lock().unwrap_or_else(|p| p.into_inner()).to_bytes())
    }

    /// Empty the stream's window: what comes next starts a new stream.
    pub fn reset_stream(&self) {
        if let Some(w) = &self.stream {
            let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
            *w = StreamWindow::new(w.capacity(), 0);
        }
    }

    /// Put back a window saved by [`Self::stream_state`], so the stream
    /// goes on as if it had never stopped.
    pub fn restore_stream_state(&self, bytes: &[u8]) -> Result<()> {
        let (Some(w), Some(d)) = (&self.stream, &self.detector) else {
            return Err(EngineError::Input(format!(
                "model '{}' does not judge cases against recent ones",
                self.id()
            )));
        };
        let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
        *w = d.stream_window_from(bytes, w.capacity())?;
        Ok(())
    }

    fn check_batch_rule(&self, flag: &str, what: &str) -> Result<()> {
        let rule = self
            .detector
            .as_ref()
            .is_some_and(MetaDetector::has_batch_rule);
        match (rule, self.decider.thresholds.oos_batch_cut) {
            (true, Some(_)) => Ok(()),
            _ => Err(EngineError::Input(format!(
                "model '{}' cannot {what}: {flag} needs a transformer trained without \
                 out-of-scope rows by this version (learned detector with a batch rule)",
                self.id()
            ))),
        }
    }

    /// The text this model sees for each raw case, whether the length cap
    /// cut it and its language: the bundle's recorded [`TextPipeline`], the
    /// one text contract every path (tag, eval, serve, the engine API) goes
    /// through.
    pub fn prepare(&self, cases: &[Transcript]) -> (Vec<Transcript>, Vec<TextMarks>) {
        let pipeline: &TextPipeline = &self.bundle.manifest.text;
        let one = |c: &Transcript| {
            let p = pipeline.prepare(&c.text);
            let lang = casetag_core::lang::detect(&p.text);
            (
                Transcript {
                    id: c.id.clone(),
                    text: p.text,
                },
                TextMarks {
                    truncated: p.truncated,
                    lang,
                },
            )
        };
        if cases.len() >= 1024 {
            use rayon::prelude::*;
            cases.par_iter().with_min_len(256).map(one).unzip()
        } else {
            cases.iter().map(one).unzip()
        }
    }

    /// Score raw cases for a batch, as the decision layer takes them: the
    /// logits and, with a detector, its logit (the batch rule's under
    /// [`Judging::Batch`]). Texts are prepared first ([`Self::prepare`]).
    pub fn scores(&self, cases: &[Transcript]) -> Result<Vec<Scores>> {
        self.scores_prepared(&self.prepare(cases).0)
    }

    /// Score a whole table in batches (for evaluation), telling `done` how
    /// many cases each batch held. Per-case judging scores 1,024 cases at a
    /// time; [`Judging::Batch`] judges [`CHUNK_ROWS`] at a time, the chunk a
    /// batch job judges as a whole, so a job is evaluated the way it runs.
    pub fn scores_chunked(
        &self,
        cases: &[Transcript],
        mut done: impl FnMut(usize),
    ) -> Result<Vec<Scores>> {
        let batch = match self.judging {
            Judging::Batch => CHUNK_ROWS,
            Judging::PerCase | Judging::Stream => 1024,
        };
        let mut out = Vec::with_capacity(cases.len());
        for chunk in cases.chunks(batch) {
            out.extend(self.scores(chunk)?);
            done(chunk.len());
        }
        Ok(out)
    }

    fn scores_prepared(&self, cases: &[Transcript]) -> Result<Vec<Scores>> {
        let fail = |e: &dyn std::fmt::Display| {
            EngineError::Internal(format!("model '{}': {e}", self.id()))
        };
        let (mut scores, emb) = if self.detector.is_none() && self.guard.is_none() {
            (self.classifier.predict(cases).map_err(|e| fail(&e))?, None)
        } else {
            let (s, emb) = self
                .classifier
                .predict_embedded(cases)
                .map_err(|e| fail(&e))?
                .ok_or_else(|| {
                    fail(&"the bundle has an out-of-scope detector or added tags but the model gives no embeddings")
                })?;
            (s, Some(emb))
        };
        if let (Some(g), Some(emb)) = (&self.guard, &emb) {
            for (s, e) in scores.iter_mut().zip(emb) {
                g.apply(&mut s.logits, e);
            }
        }
        let det = match (&self.detector, &emb) {
            (Some(d), Some(emb)) => {
                let z = match self.judging {
                    Judging::Batch => d.scores_batch(emb),
                    Judging::PerCase => d.scores(emb),
                    Judging::Stream => match &self.stream {
                        Some(w) => {
                            d.scores_stream(&mut w.lock().unwrap_or_else(|p| p.into_inner()), emb)
                        }
                        None => d.scores(emb),
                    },
                };
                Some(z.map_err(|e| fail(&e))?)
            }
            _ => None,
        };
        let want = self.decider.label_space.n_outputs();
        let rows: Vec<Vec<f32>> = scores
            .into_iter()
            .map(|s| {
                if s.logits.len() != want || s.logits.iter().any(|x| !x.is_finite()) {
                    Err(EngineError::Internal(format!(
                        "model '{}' returned {} scores (expected {want}) or non-finite values",
                        self.id(),
                        s.logits.len()
                    )))
                } else {
                    Ok(s.logits)
                }
            })
            .collect::<Result<_>>()?;
        Ok(match det {
            None => rows.into_iter().map(Scores::from).collect(),
            Some(z) => Scores::with_detector(rows, &z),
        })
    }

    /// Decisions for a batch of raw cases.
    pub fn decide(&self, cases: &[Transcript], top_k: usize) -> Result<Vec<Decision>> {
        Ok(self.decide_marked(cases, top_k)?.0)
    }

    /// Decisions for a batch of raw cases, with what was noted about each
    /// text (cut by the length cap, language).
    pub fn decide_marked(
        &self,
        cases: &[Transcript],
        top_k: usize,
    ) -> Result<(Vec<Decision>, Vec<TextMarks>)> {
        let (prepared, marks) = self.prepare(cases);
        let logits = self.scores_prepared(&prepared)?;
        Ok((self.decide_logits(&logits, top_k), marks))
    }

    fn decide_logits(&self, logits: &[Scores], top_k: usize) -> Vec<Decision> {
        // Decoding is a few microseconds per case; large batch-job chunks
        // spread it over the pool, small server batches stay on this thread.
        if logits.len() >= 1024 {
            use rayon::prelude::*;
            return logits
                .par_iter()
                .with_min_len(256)
                .map(|l| self.decider.decide_judged(l, top_k, self.judging))
                .collect();
        }
        logits
            .iter()
            .map(|l| self.decider.decide_judged(l, top_k, self.judging))
            .collect()
    }
}

/// Load and verify a bundle, then its backend.
pub fn load_model(dir: &Path) -> Result<LoadedModel> {
    let bundle = Bundle::open(dir)?;
    let m = &bundle.manifest;
    let classifier = crate::backend::backend(&m.kind)
        .map_err(|e| EngineError::Input(format!("{}: {e}", dir.display())))?
        .load(dir, &m.id)?;
    if classifier.label_space() != &m.label_space {
        return Err(EngineError::Input(format!(
            "{}: weights do not match the manifest's label space",
            dir.display()
        )));
    }
    let thresholds: Thresholds = serde_json::from_value(m.thresholds.clone()).map_err(|e| {
        EngineError::Input(format!("{}: thresholds in manifest: {e}", dir.display()))
    })?;
    let detector = MetaDetector::load(dir)?;
    let guard = AddedGuard::load(&bundle)?;
    let mut decider = Decider::new(
        bundle.taxonomy.clone(),
        m.label_space.clone(),
        m.calibration.temperature,
        thresholds,
    );
    decider.level_temperatures = m.calibration.level_temperatures.clone();
    let coverage = Coverage::new(&m.languages);
    Ok(LoadedModel {
        bundle,
        classifier,
        decider,
        detector,
        guard,
        judging: Judging::PerCase,
        stream: None,
        coverage,
    })
}

/// One tagged case and who answered it.
#[derive(Debug, Clone, Serialize)]
pub struct Tagged {
    pub decision: Decision,
    /// `transformer` or `baseline`.
    pub served_by: String,
    pub model_id: String,
    /// Whether the text was longer than the bundle's cap and was cut.
    pub truncated: bool,
    /// The case's language (ISO 639-1, or `und`).
    pub lang: &'static str,
    /// Set when the case's language is not one the model was trained on.
    pub note: Option<String>,
}

/// The fallback chain: the primary model first; the fallback when the
/// primary failed to load or fails on a batch. Every switch is logged.
pub struct Tagger {
    pub primary: Option<LoadedModel>,
    pub fallback: Option<LoadedModel>,
}

impl Tagger {
    /// Load the chain. A primary that fails to load is tolerated when a
    /// fallback is given (and logged); otherwise its error is returned.
    pub fn load(primary: &Path, fallback: Option<&Path>) -> Result<Self> {
        let fb = match fallback {
            Some(p) => Some(load_model(p)?),
            None => None,
        };
        let pr = match load_model(primary) {
            Ok(m) => Some(m),
            Err(e) if fb.is_some() => {
                tracing::warn!("primary model failed to load, serving the fallback only: {e}");
                None
            }
            Err(e) => return Err(e),
        };
        Ok(Self {
            primary: pr,
            fallback: fb,
        })
    }

    /// Judge batches as a whole with the primary model
    /// ([`LoadedModel::enable_batch_novelty`]); the fallback stays per case.
    pub fn enable_batch_novelty(&mut self) -> Result<()> {
        self.primary_for("--batch-novelty")?.enable_batch_novelty()
    }

    /// Judge each case against the `window` cases before it with the
    /// primary model ([`LoadedModel::enable_stream_novelty`]); the
    /// fallback stays per case.
    pub fn enable_stream_novelty(&mut self, window: usize) -> Result<()> {
        self.primary_for("--stream-novelty")?
            .enable_stream_novelty(window)
    }

    fn primary_for(&mut self, flag: &str) -> Result<&mut LoadedModel> {
        self.primary
            .as_mut()
            .ok_or_else(|| EngineError::Input(format!("{flag}: the primary model did not load")))
    }

    /// The model answering by default.
    pub fn active(&self) -> &LoadedModel {
        self.primary
            .as_ref()
            .or(self.fallback.as_ref())
            .expect("a tagger always holds a model")
    }

    /// Tag a batch with the chain.
    pub fn tag(&self, cases: &[Transcript], top_k: usize) -> Result<Vec<Tagged>> {
        if let Some(p) = &self.primary {
            match p.decide_marked(cases, top_k) {
                Ok(d) => return Ok(wrap(p, d)),
                Err(e) => match &self.fallback {
                    Some(_) => tracing::warn!("primary model failed on a batch, falling back: {e}"),
                    None => return Err(e),
                },
            }
        }
        let f = self.fallback.as_ref().expect("fallback present");
        Ok(wrap(f, f.decide_marked(cases, top_k)?))
    }

    /// About the tokens the primary model's encoder runs for these raw
    /// cases, every window counted: their raw text is counted, which
    /// differs from the prepared text's count only by what normalisation
    /// and masking change (enough for a batch budget, and a model that does
    /// not tokenize costs nothing). `None` when the primary does not
    /// tokenize or is not loaded.
    pub fn tokens(&self, cases: &[Transcript]) -> Option<usize> {
        let counts = self.primary.as_ref()?.classifier.tokens(cases)?;
        Some(counts.iter().sum())
    }

    /// Tag with the fallback only (used when the primary cannot meet a deadline).
    pub fn tag_fallback(&self, cases: &[Transcript], top_k: usize) -> Option<Result<Vec<Tagged>>> {
        self.fallback
            .as_ref()
            .map(|f| f.decide_marked(cases, top_k).map(|d| wrap(f, d)))
    }
}

fn wrap(m: &LoadedModel, (d, marks): (Vec<Decision>, Vec<TextMarks>)) -> Vec<Tagged> {
    d.into_iter()
        .zip(marks)
        .map(|(decision, k)| Tagged {
            decision,
            served_by: m.kind().to_string(),
            model_id: m.id().to_string(),
            truncated: k.truncated,
            lang: k.lang,
            note: m.coverage.note(k.lang),
        })
        .collect()
}
