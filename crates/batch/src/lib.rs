//! Tagging tables: the rows of one chunk in, the columns `casetag tag`
//! writes out. The CLI's `tag` (files, streamed in chunks) and the Python
//! package (Arrow batches) both go through here, so a case gets the same
//! columns, names, types and per-row errors whichever way it is tagged.

use std::collections::BTreeMap;
use std::path::Path;

use casetag_core::{ActionMode, Transcript};
use casetag_engine::{EngineError, Result, Tagged, Tagger};
use polars::prelude::{Column, DataFrame};
use serde::{Deserialize, Serialize};

/// The `error` of a row with no text to tag.
pub const EMPTY_TEXT: &str = "empty or missing text";

/// Load the model chain a batch job tags with: `model`, and `fallback`
/// (a baseline) when it fails to load or fails on a chunk; with
/// `batch_novelty`, each chunk is judged as a whole for out of scope.
pub fn load_tagger(model: &Path, fallback: Option<&Path>, batch_novelty: bool) -> Result<Tagger> {
    let mut tagger = Tagger::load(model, fallback)?;
    if let (Some(p), Some(f)) = (fallback, &tagger.fallback) {
        if f.kind() != "baseline" {
            return Err(EngineError::Input(format!(
                "--fallback {}: model '{}' is a {}; the fallback must be a baseline bundle",
                p.display(),
                f.id(),
                f.kind()
            )));
        }
    }
    if batch_novelty {
        tagger.enable_batch_novelty()?;
    }
    Ok(tagger)
}

/// Row counts of a job so far.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Counts {
    pub rows: usize,
    /// Rows with empty or missing text.
    pub empty_text: usize,
    /// Rows whose input was damaged.
    pub bad_input: usize,
    /// Tagged rows by the kind of model that answered them.
    pub by_model: BTreeMap<String, usize>,
    /// Tagged rows answered by the fallback bundle.
    pub fallback: usize,
}

impl Counts {
    /// Add another job's counts (a shard's files, summed).
    pub fn add(&mut self, o: &Counts) {
        self.rows += o.rows;
        self.empty_text += o.empty_text;
        self.bad_input += o.bad_input;
        self.fallback += o.fallback;
        for (k, v) in &o.by_model {
            *self.by_model.entry(k.clone()).or_default() += v;
        }
    }

    /// Rows kept untagged (damaged input or no text).
    pub fn untagged(&self) -> usize {
        self.empty_text + self.bad_input
    }
}

/// Why a row of a chunk was kept untagged.
pub enum RowIssue<'a> {
    /// The input was damaged (the reader's message, naming file, line and column).
    Damaged(&'a str),
    /// No text.
    Empty,
}

/// One chunk's answers: per row, its error or its place among the tagged.
pub struct TaggedChunk {
    errors: Vec<Option<String>>,
    tagged: Vec<Tagged>,
}

/// Tag one chunk. `texts[i]` is row i's text (`None` when empty or
/// missing, as [`casetag_data::chunk_texts`] gives them) and `faults[i]`
/// its input damage, if any; such rows keep their place untagged, with
/// `error` set, and `on_issue(i, ..)` hears of each. `counts` is updated.
pub fn tag_chunk(
    tagger: &Tagger,
    texts: Vec<Option<String>>,
    faults: Vec<Option<String>>,
    counts: &mut Counts,
    mut on_issue: impl FnMut(usize, RowIssue),
) -> Result<TaggedChunk> {
    if texts.len() != faults.len() {
        return Err(EngineError::Internal(format!(
            "{} texts for {} rows",
            texts.len(),
            faults.len()
        )));
    }
    let mut errors = Vec::with_capacity(texts.len());
    let mut cases = Vec::with_capacity(texts.len());
    for (i, (text, fault)) in texts.into_iter().zip(faults).enumerate() {
        match (fault, text) {
            (Some(f), _) => {
                counts.bad_input += 1;
                on_issue(i, RowIssue::Damaged(&f));
                errors.push(Some(f));
            }
            (None, None) => {
                counts.empty_text += 1;
                on_issue(i, RowIssue::Empty);
                errors.push(Some(EMPTY_TEXT.to_string()));
            }
            (None, Some(t)) => {
                cases.push(Transcript::new(t));
                errors.push(None);
            }
        }
    }
    let tagged = tagger.tag(&cases, 0)?;
    let primary_id = tagger.primary.as_ref().map(|p| p.id());
    for t in &tagged {
        *counts.by_model.entry(t.served_by.clone()).or_default() += 1;
        if primary_id != Some(t.model_id.as_str()) {
            counts.fallback += 1;
        }
    }
    counts.rows += errors.len();
    Ok(TaggedChunk { errors, tagged })
}

/// The names of the output columns, in order, before renaming.
pub const OUTPUT_COLUMNS: [&str; 16] = [
    "l1",
    "l2",
    "l3",
    "depth",
    "conf_l1",
    "conf_l2",
    "conf_l3",
    "guess_l1",
    "guess_l2",
    "guess_l3",
    "out_of_scope",
    "oos_score",
    "actions",
    "served_by",
    "model_id",
    "error",
];

/// An output column's name beside the input's columns: its own, or
/// `pred_NAME` when the input already has a column of that name (an input
/// label column is kept: the predictions replace nothing the user gave).
pub fn output_name(input_columns: &[&str], name: &str) -> String {
    if input_columns.contains(&name) {
        format!("pred_{name}")
    } else {
        name.to_string()
    }
}

/// A decision's actions as `id:auto;id:suggest`.
fn actions_text(t: &Tagged) -> String {
    let mut acts = String::new();
    for a in &t.decision.actions {
        if !acts.is_empty() {
            acts.push(';');
        }
        acts.push_str(&a.id);
        acts.push_str(if a.mode == ActionMode::Auto {
            ":auto"
        } else {
            ":suggest"
        });
    }
    acts
}

impl TaggedChunk {
    /// A chunk of no rows.
    pub fn empty() -> Self {
        Self {
            errors: Vec::new(),
            tagged: Vec::new(),
        }
    }

    /// Rows in the chunk.
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Each row's answer, `None` for an untagged row.
    fn rows(&self) -> impl Iterator<Item = Option<&Tagged>> {
        let mut answers = self.tagged.iter();
        self.errors.iter().map(move |e| match e {
            None => answers.next(),
            Some(_) => None,
        })
    }

    /// The output columns ([`OUTPUT_COLUMNS`], named by [`output_name`]
    /// beside `input_columns`), one value per row of the chunk.
    pub fn columns(&self, input_columns: &[&str]) -> Vec<Column> {
        let n = self.len();
        let mut l: [Vec<Option<&str>>; 3] = std::array::from_fn(|_| Vec::with_capacity(n));
        let mut conf: [Vec<Option<f32>>; 3] = std::array::from_fn(|_| Vec::with_capacity(n));
        let mut guess: [Vec<Option<&str>>; 3] = std::array::from_fn(|_| Vec::with_capacity(n));
        let mut depth = Vec::with_capacity(n);
        let mut oos = Vec::with_capacity(n);
        let mut oos_score = Vec::with_capacity(n);
        let mut actions = Vec::with_capacity(n);
        let mut served_by = Vec::with_capacity(n);
        let mut model_id = Vec::with_capacity(n);
        for t in self.rows() {
            let d = t.map(|t| &t.decision);
            for k in 0..3 {
                l[k].push(d.and_then(|d| d.tag.as_ref().and_then(|p| p.level(k + 1))));
                conf[k].push(d.and_then(|d| d.confidence.get(k).copied()));
                guess[k].push(d.and_then(|d| d.top_path.level(k + 1)));
            }
            depth.push(d.map(|d| d.depth as u32));
            oos.push(d.map(|d| d.out_of_scope));
            oos_score.push(d.map(|d| d.oos_score));
            actions.push(t.map(actions_text));
            served_by.push(t.map(|t| t.served_by.as_str()));
            model_id.push(t.map(|t| t.model_id.as_str()));
        }
        let error: Vec<Option<&str>> = self.errors.iter().map(|e| e.as_deref()).collect();
        let [l1, l2, l3] = l;
        let [c1, c2, c3] = conf;
        let [g1, g2, g3] = guess;
        let name = |i: usize| output_name(input_columns, OUTPUT_COLUMNS[i]).into();
        vec![
            Column::new(name(0), l1),
            Column::new(name(1), l2),
            Column::new(name(2), l3),
            Column::new(name(3), depth),
            Column::new(name(4), c1),
            Column::new(name(5), c2),
            Column::new(name(6), c3),
            Column::new(name(7), g1),
            Column::new(name(8), g2),
            Column::new(name(9), g3),
            Column::new(name(10), oos),
            Column::new(name(11), oos_score),
            Column::new(name(12), actions),
            Column::new(name(13), served_by),
            Column::new(name(14), model_id),
            Column::new(name(15), error),
        ]
    }

    /// Append the output columns to the chunk's own rows.
    pub fn attach(&self, df: &mut DataFrame) -> Result<()> {
        let names: Vec<String> = df
            .get_column_names()
            .iter()
            .map(|n| n.to_string())
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        for c in self.columns(&names) {
            df.with_column(c)
                .map_err(|e| EngineError::Internal(e.to_string()))?;
        }
        Ok(())
    }
}
