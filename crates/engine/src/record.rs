//! One tagged case as every output shows it: the record `POST /v1/tag`
//! returns (as JSON) and the one `casetag tag` and the Python package write
//! (as columns, `casetag-batch`). Both are encodings of this type, so the
//! server and the batch outputs cannot drift apart.

use casetag_core::TagPath;
use serde::Serialize;

use crate::decide::{ActionOut, Alternative, LevelAlternative};
use crate::Tagged;

/// Per-level confidence of the most likely path.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LevelConfidence {
    pub l1: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l2: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l3: Option<f32>,
}

impl LevelConfidence {
    /// Level `k` (1-based).
    pub fn level(&self, k: usize) -> Option<f32> {
        match k {
            1 => Some(self.l1),
            2 => self.l2,
            3 => self.l3,
            _ => None,
        }
    }
}

/// Per-level alternatives; a level the taxonomy lacks is left out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LevelAlternatives {
    pub l1: Vec<LevelAlternative>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l2: Option<Vec<LevelAlternative>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l3: Option<Vec<LevelAlternative>>,
}

impl LevelAlternatives {
    /// Level `k` (1-based); empty where the taxonomy or `top_k` gave none.
    pub fn level(&self, k: usize) -> &[LevelAlternative] {
        match k {
            1 => &self.l1,
            2 => self.l2.as_deref().unwrap_or_default(),
            3 => self.l3.as_deref().unwrap_or_default(),
            _ => &[],
        }
    }
}

/// One tagged case.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    pub id: Option<String>,
    /// The decided tag, backed off to `depth` levels; `null` when out of
    /// scope or when not even L1 is confident.
    pub tag: Option<TagPath>,
    pub depth: usize,
    /// The most likely full path before back-off (what a reviewer sees for
    /// an abstained or backed-off case); `confidence` is this path's.
    pub guess: TagPath,
    pub confidence: LevelConfidence,
    pub out_of_scope: bool,
    pub oos_score: f32,
    pub actions: Vec<ActionOut>,
    pub alternatives: Vec<Alternative>,
    /// Per level, the `top_k` most likely nodes of that level (marginal
    /// probabilities), most likely first.
    pub level_alternatives: LevelAlternatives,
    /// `transformer` or `baseline`.
    pub served_by: String,
    pub model_id: String,
    /// The text was longer than the model's text cap (the bundle's
    /// `text.max_chars`) and was cut, head and tail kept.
    pub truncated: bool,
    /// The case's language: ISO 639-1 (`en`, `id`, `th`, `vi`, `es`, `zh`,
    /// ...) or `und` when there is too little text to tell.
    pub lang: &'static str,
    /// Set when the case's language is not one the model was trained on
    /// (or could not be told): a reason to check the tag, never silent.
    pub note: Option<String>,
}

impl Record {
    /// The record of an answer (moved, not copied).
    pub fn new(id: Option<String>, t: Tagged) -> Self {
        let d = t.decision;
        let c = &d.confidence;
        let mut levels = d.level_alternatives.into_iter();
        Self {
            id,
            tag: d.tag,
            depth: d.depth,
            guess: d.top_path,
            confidence: LevelConfidence {
                l1: c.first().copied().unwrap_or(0.0),
                l2: c.get(1).copied(),
                l3: c.get(2).copied(),
            },
            out_of_scope: d.out_of_scope,
            oos_score: d.oos_score,
            actions: d.actions,
            alternatives: d.alternatives,
            level_alternatives: LevelAlternatives {
                l1: levels.next().unwrap_or_default(),
                l2: levels.next(),
                l3: levels.next(),
            },
            served_by: t.served_by,
            model_id: t.model_id,
            truncated: t.truncated,
            lang: t.lang,
            note: t.note,
        }
    }
}
