#![forbid(unsafe_code)]
//! casetag-core: the shared vocabulary of the pipeline.
//!
//! Everything else depends on this crate and it depends on nothing heavy:
//! tag paths, the taxonomy, the [`Classifier`] boundary between models and the
//! decision layer, model bundles on disk, and evaluation metrics.

pub mod bundle;
pub mod hash;
pub mod label_map;
pub mod lang;
pub mod metrics;
pub mod taxonomy;
pub mod text;

use serde::{Deserialize, Serialize};

pub use taxonomy::{ActionMode, Taxonomy};

/// Errors of the core crate. Messages are one line and name what is at
/// fault; they quote user-supplied names (taxonomy ids, YAML values, file
/// names in a manifest), so they are shown through [`printable`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("taxonomy: {}", printable(.0))]
    Taxonomy(String),
    #[error("bundle: {}", printable(.0))]
    Bundle(String),
    #[error("io: {}", printable(.0))]
    Io(String),
    #[error("{}", printable(.0))]
    Invalid(String),
}

/// `s` safe to print on one terminal line: control characters (line breaks,
/// escape sequences, NUL) and the invisible characters that reorder text
/// (bidirectional overrides and isolates) are shown as escapes such as
/// `\u{1b}`, never emitted raw.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    };
    if !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

impl Error {
    /// The message without the kind prefix.
    pub fn message(&self) -> &str {
        match self {
            Error::Taxonomy(m) | Error::Bundle(m) | Error::Io(m) | Error::Invalid(m) => m,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// A tag path of depth 1 to 3. Deeper levels are `None` for a shallower path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TagPath {
    pub l1: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l2: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l3: Option<String>,
}

impl TagPath {
    pub fn new(l1: &str, l2: Option<&str>, l3: Option<&str>) -> Self {
        Self {
            l1: l1.to_string(),
            l2: l2.map(str::to_string),
            l3: l3.map(str::to_string),
        }
    }

    /// Build from up to three ids, root first.
    pub fn from_ids<S: AsRef<str>>(ids: &[S]) -> Self {
        Self {
            l1: ids[0].as_ref().to_string(),
            l2: ids.get(1).map(|s| s.as_ref().to_string()),
            l3: ids.get(2).map(|s| s.as_ref().to_string()),
        }
    }

    /// Parse label columns: empty strings are missing levels; all empty is
    /// out of scope (`Ok(None)`); a gap (l3 without l2) is an error.
    pub fn from_columns(
        l1: Option<&str>,
        l2: Option<&str>,
        l3: Option<&str>,
    ) -> std::result::Result<Option<Self>, String> {
        fn clean(s: Option<&str>) -> Option<&str> {
            s.map(str::trim).filter(|s| !s.is_empty())
        }
        match (clean(l1), clean(l2), clean(l3)) {
            (None, None, None) => Ok(None),
            (Some(_), None, Some(c)) => Err(format!("l3 '{c}' is set but l2 is empty")),
            (Some(a), b, c) => Ok(Some(Self::new(a, b, c))),
            (None, _, _) => Err("l2/l3 are set but l1 is empty".into()),
        }
    }

    pub fn depth(&self) -> usize {
        1 + self.l2.is_some() as usize + self.l3.is_some() as usize
    }

    /// Ids root first.
    pub fn ids(&self) -> Vec<&str> {
        let mut v = vec![self.l1.as_str()];
        v.extend(self.l2.as_deref());
        v.extend(self.l3.as_deref());
        v
    }

    /// Id at level `k` (1-based).
    pub fn level(&self, k: usize) -> Option<&str> {
        match k {
            1 => Some(&self.l1),
            2 => self.l2.as_deref(),
            3 => self.l3.as_deref(),
            _ => None,
        }
    }

    /// The first `k` levels.
    pub fn truncate(&self, k: usize) -> Self {
        let ids = self.ids();
        Self::from_ids(&ids[..k.min(ids.len())])
    }
}

impl std::fmt::Display for TagPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.ids().join("/"))
    }
}

/// One case as the models see it: the whole transcript as text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    #[serde(default)]
    pub id: Option<String>,
    pub text: String,
}

impl Transcript {
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            id: None,
            text: text.into(),
        }
    }
}

/// What a classifier returns for one case: raw scores over the label space
/// (leaf paths, then an optional out-of-scope class). Calibration, decoding
/// into a path, back-off and actions happen once, in the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelScores {
    pub logits: Vec<f32>,
}

/// The label space a model is trained over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelSpace {
    /// Number of leaf paths (taxonomy classes).
    pub n_paths: usize,
    /// Whether the model has an explicit out-of-scope class at index `n_paths`,
    /// learned from out-of-scope training rows.
    pub oos_class: bool,
}

impl LabelSpace {
    pub fn n_outputs(&self) -> usize {
        self.n_paths + self.oos_class as usize
    }

    /// Target index for a training row: its class, or the OOS class.
    pub fn target(&self, class: Option<usize>) -> Option<usize> {
        match class {
            Some(c) => Some(c),
            None if self.oos_class => Some(self.n_paths),
            None => None,
        }
    }
}

/// Errors a backend may return at prediction time.
#[derive(Debug, thiserror::Error)]
pub enum ClassifierError {
    #[error("invalid input: {0}")]
    Input(String),
    #[error("backend failure: {0}")]
    Backend(String),
}

/// Scores and the embedding each was computed from, one row per case.
pub type Embedded = (Vec<LevelScores>, Vec<Vec<f32>>);

/// The boundary between models and the decision layer: batch in, batch out,
/// text in (each backend featurizes itself).
pub trait Classifier: Send + Sync {
    fn id(&self) -> &str;
    /// `baseline` or `transformer`.
    fn kind(&self) -> &str;
    fn label_space(&self) -> &LabelSpace;
    fn predict(
        &self,
        cases: &[Transcript],
    ) -> std::result::Result<Vec<LevelScores>, ClassifierError>;

    /// Scores plus the embedding each row was computed from, for models
    /// that have one (the learned out-of-scope detector works on it);
    /// `Ok(None)` for models that do not embed.
    fn predict_embedded(
        &self,
        _cases: &[Transcript],
    ) -> std::result::Result<Option<Embedded>, ClassifierError> {
        Ok(None)
    }

    /// Tokens the model's encoder runs for each case's text, every window
    /// counted: what a batch of these cases costs. `None` for models
    /// that do not tokenize (the server then bounds batches in characters).
    fn tokens(&self, _cases: &[Transcript]) -> Option<Vec<usize>> {
        None
    }

    /// Each case's whole text in the model's tokens, uncut (special
    /// tokens included): how long the texts are for this model, whatever
    /// part of them it reads. `None` for models that do not tokenize.
    fn text_tokens(&self, _cases: &[Transcript]) -> Option<Vec<usize>> {
        None
    }
}

/// One step of the xorshift64 generator (Marsaglia): advances `state`
/// (nonzero) and returns it. The workspace's one source of reproducible
/// pseudo-random numbers: shuffles, samples and test data.
pub fn xorshift64(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Dot product with eight independent accumulators (vectorizes without a
/// serial dependency on one sum).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Index of the largest value (the first of equals; 0 for an empty slice).
pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |(i, m), (j, &x)| {
                if x > m {
                    (j, x)
                } else {
                    (i, m)
                }
            },
        )
        .0
}

/// Numerically stable softmax with a temperature.
pub fn softmax(logits: &[f32], temperature: f32) -> Vec<f32> {
    let t = temperature.max(1e-3);
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut out: Vec<f32> = logits.iter().map(|&x| ((x - m) / t).exp()).collect();
    let s: f32 = out.iter().sum();
    for v in &mut out {
        *v /= s;
    }
    out
}

/// Whether the CPU running this process has AVX2: hot loops compiled a
/// second time with `#[target_feature(enable = "avx2")]` check this once.
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU has AVX2 and FMA, for kernels compiled with both.
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx2() && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_of_equals() {
        assert_eq!(argmax(&[0.5, 2.0, -1.0, 2.0]), 1);
        assert_eq!(argmax(&[-3.0, -1.0]), 1);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn columns_to_path() {
        assert_eq!(TagPath::from_columns(Some(""), None, Some(" ")), Ok(None));
        let p = TagPath::from_columns(Some("a"), Some("b"), Some(""))
            .unwrap()
            .unwrap();
        assert_eq!(p.depth(), 2);
        assert_eq!(p.to_string(), "a/b");
        assert!(TagPath::from_columns(Some("a"), None, Some("c")).is_err());
        assert!(TagPath::from_columns(None, Some("b"), None).is_err());
    }

    #[test]
    fn softmax_sums_to_one_and_sharpens() {
        let p = softmax(&[1.0, 2.0, 3.0], 1.0);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let q = softmax(&[1.0, 2.0, 3.0], 0.5);
        assert!(q[2] > p[2]);
    }
}
