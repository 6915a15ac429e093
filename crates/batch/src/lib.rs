//! Tagging tables: the rows of one chunk in, the columns `casetag tag`
//! writes out. The CLI's `tag` (files, streamed in chunks by [`job`]) and
//! the Python package (Arrow batches) both go through here, so a case gets
//! the same columns, names, types and per-row errors whichever way it is
//! tagged.

pub mod files;
pub mod job;

use std::collections::BTreeMap;
use std::path::Path;

use casetag_core::Transcript;
use casetag_data::Format;
use casetag_engine::record::Record;
use casetag_engine::{EngineError, Result, Tagger};
use polars::prelude::{
    Column, DataFrame, IntoColumn, IntoSeries, LargeListArray, NamedFrom, PlSmallStr, Series,
    StructChunked,
};
use polars_arrow::bitmap::Bitmap;
use polars_arrow::offset::OffsetsBuffer;
use serde::{Deserialize, Serialize};

/// The `error` of a row with no text to tag.
pub const EMPTY_TEXT: &str = "empty or missing text";

/// Load the model chain a batch job tags with: `model`, and `fallback`
/// (a baseline) when it fails to load or fails on a chunk; with
/// `batch_novelty`, each chunk is judged as a whole for out of scope; with
/// `stream_window`, each row against that many rows before it (one way at
/// a time, a window of at least one row).
pub fn load_tagger(
    model: &Path,
    fallback: Option<&Path>,
    batch_novelty: bool,
    stream_window: Option<usize>,
) -> Result<Tagger> {
    if batch_novelty && stream_window.is_some() {
        return Err(EngineError::Input(
            "batch_novelty and stream_novelty: judge out of scope one way at a time".into(),
        ));
    }
    if stream_window == Some(0) {
        return Err(EngineError::Input(
            "stream_window must be at least 1".into(),
        ));
    }
    let mut tagger = Tagger::load(model, fallback)?;
    if let (Some(p), Some(f)) = (fallback, &tagger.fallback) {
        casetag_engine::backend::check_fallback(p, f.id(), f.kind())?;
    }
    if batch_novelty {
        tagger.enable_batch_novelty()?;
    }
    if let Some(w) = stream_window {
        tagger.enable_stream_novelty(w)?;
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
    /// The tagged rows' records, the ones `serve` answers with.
    tagged: Vec<Record>,
    /// Per-level alternatives asked for (`top_l1..top_l3` columns when > 0).
    top_k: usize,
}

/// How the list-valued outputs (`actions`, `top_l1..top_l3`) are written:
/// as Arrow lists of structs (Parquet, JSONL and the Python package's Arrow
/// batches), or as one text cell (CSV, which has no lists):
/// `refund:auto;photo:suggest`, `returns:0.9731;logistics:0.0142`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Nested,
    Flat,
}

impl Shape {
    /// The shape an output format holds.
    pub fn of_format(f: Format) -> Self {
        match f {
            Format::Csv => Self::Flat,
            Format::Parquet | Format::Jsonl => Self::Nested,
        }
    }
}

/// The per-level alternative columns `tag --top-k` adds after
/// [`OUTPUT_COLUMNS`].
pub const TOP_COLUMNS: [&str; 3] = ["top_l1", "top_l2", "top_l3"];

/// Tag one chunk. `texts[i]` is row i's text (`None` when empty or
/// missing, as [`casetag_data::chunk_texts`] gives them) and `faults[i]`
/// its input damage, if any; such rows keep their place untagged, with
/// `error` set, and `on_issue(i, ..)` hears of each. `counts` is updated.
pub fn tag_chunk(
    tagger: &Tagger,
    texts: Vec<Option<String>>,
    faults: Vec<Option<String>>,
    counts: &mut Counts,
    top_k: usize,
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
    let tagged = tagger.tag(&cases, top_k)?;
    let primary_id = tagger.primary.as_ref().map(|p| p.id());
    for t in &tagged {
        *counts.by_model.entry(t.served_by.clone()).or_default() += 1;
        if primary_id != Some(t.model_id.as_str()) {
            counts.fallback += 1;
        }
    }
    counts.rows += errors.len();
    Ok(TaggedChunk {
        errors,
        tagged: tagged.into_iter().map(|t| Record::new(None, t)).collect(),
        top_k,
    })
}

/// The names of the output columns, in order, before renaming.
pub const OUTPUT_COLUMNS: [&str; 18] = [
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
    "lang",
    "note",
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

/// A list-valued output: per row (`None` for an untagged row) its items,
/// each a (name, value) pair. `Flat` joins them as `name:value;...`;
/// `Nested` makes a list of structs `{key_name, value_name}`.
struct ListOutput<V> {
    rows: Vec<Option<Vec<(String, V)>>>,
}

/// The value half of a list item: how it is written in CSV text and as a
/// struct field.
trait ListValue: Copy {
    fn text(self) -> String;
    fn series(name: &str, values: Vec<Self>) -> Series;
}

/// An action's mode.
impl ListValue for &'static str {
    fn text(self) -> String {
        self.to_string()
    }
    fn series(name: &str, values: Vec<Self>) -> Series {
        Series::new(name.into(), values)
    }
}

/// A node's probability, four decimals in CSV.
impl ListValue for f32 {
    fn text(self) -> String {
        format!("{self:.4}")
    }
    fn series(name: &str, values: Vec<Self>) -> Series {
        Series::new(name.into(), values)
    }
}

impl<V: ListValue> ListOutput<V> {
    fn column(
        self,
        name: PlSmallStr,
        shape: Shape,
        key_name: &str,
        value_name: &str,
    ) -> Result<Column> {
        if shape == Shape::Flat {
            let cells: Vec<Option<String>> = self
                .rows
                .iter()
                .map(|r| {
                    r.as_ref().map(|items| {
                        let parts: Vec<String> = items
                            .iter()
                            .map(|(k, v)| format!("{k}:{}", v.text()))
                            .collect();
                        parts.join(";")
                    })
                })
                .collect();
            return Ok(Column::new(name, cells));
        }
        // One flat struct array of every row's items, cut into rows by offsets.
        let mut offsets = Vec::with_capacity(self.rows.len() + 1);
        offsets.push(0i64);
        let mut validity = Vec::with_capacity(self.rows.len());
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for r in &self.rows {
            validity.push(r.is_some());
            for (k, v) in r.iter().flatten() {
                keys.push(k.as_str());
                values.push(*v);
            }
            offsets.push(keys.len() as i64);
        }
        let n = keys.len();
        let fields = [
            Series::new(key_name.into(), keys),
            V::series(value_name, values),
        ];
        let label = name.to_string();
        let fail = |e: polars::prelude::PolarsError| {
            EngineError::Internal(format!("output column '{label}': {e}"))
        };
        let items = StructChunked::from_series(name.clone(), n, fields.iter())
            .map_err(fail)?
            .into_series()
            .rechunk()
            .to_arrow(0, polars::prelude::CompatLevel::newest());
        let list = LargeListArray::new(
            LargeListArray::default_datatype(items.dtype().clone()),
            OffsetsBuffer::try_from(offsets).map_err(fail)?,
            items,
            Some(Bitmap::from(validity)),
        );
        Series::from_arrow(name, Box::new(list))
            .map(IntoColumn::into_column)
            .map_err(fail)
    }
}

impl TaggedChunk {
    /// A chunk of no rows (with the columns of `top_k`).
    pub fn empty(top_k: usize) -> Self {
        Self {
            errors: Vec::new(),
            tagged: Vec::new(),
            top_k,
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
    fn rows(&self) -> impl Iterator<Item = Option<&Record>> {
        let mut answers = self.tagged.iter();
        self.errors.iter().map(move |e| match e {
            None => answers.next(),
            Some(_) => None,
        })
    }

    /// The output columns ([`OUTPUT_COLUMNS`], then [`TOP_COLUMNS`] when
    /// per-level alternatives were asked for; named by [`output_name`]
    /// beside `input_columns`), one value per row of the chunk.
    pub fn columns(&self, input_columns: &[&str], shape: Shape) -> Result<Vec<Column>> {
        let n = self.len();
        let mut l: [Vec<Option<&str>>; 3] = std::array::from_fn(|_| Vec::with_capacity(n));
        let mut conf: [Vec<Option<f32>>; 3] = std::array::from_fn(|_| Vec::with_capacity(n));
        let mut guess: [Vec<Option<&str>>; 3] = std::array::from_fn(|_| Vec::with_capacity(n));
        let mut depth = Vec::with_capacity(n);
        let mut oos = Vec::with_capacity(n);
        let mut oos_score = Vec::with_capacity(n);
        let mut actions = ListOutput {
            rows: Vec::with_capacity(n),
        };
        let mut top: [ListOutput<f32>; 3] = std::array::from_fn(|_| ListOutput {
            rows: Vec::with_capacity(if self.top_k > 0 { n } else { 0 }),
        });
        let mut served_by = Vec::with_capacity(n);
        let mut model_id = Vec::with_capacity(n);
        let mut lang = Vec::with_capacity(n);
        let mut note = Vec::with_capacity(n);
        for r in self.rows() {
            for k in 0..3 {
                l[k].push(r.and_then(|r| r.tag.as_ref().and_then(|p| p.level(k + 1))));
                conf[k].push(r.and_then(|r| r.confidence.level(k + 1)));
                guess[k].push(r.and_then(|r| r.guess.level(k + 1)));
            }
            depth.push(r.map(|r| r.depth as u32));
            oos.push(r.map(|r| r.out_of_scope));
            oos_score.push(r.map(|r| r.oos_score));
            actions.rows.push(r.map(|r| {
                r.actions
                    .iter()
                    .map(|a| (a.id.clone(), a.mode.as_str()))
                    .collect()
            }));
            if self.top_k > 0 {
                for (k, col) in top.iter_mut().enumerate() {
                    col.rows.push(r.map(|r| {
                        r.level_alternatives
                            .level(k + 1)
                            .iter()
                            .map(|a| (a.node.clone(), a.probability))
                            .collect()
                    }));
                }
            }
            served_by.push(r.map(|r| r.served_by.as_str()));
            model_id.push(r.map(|r| r.model_id.as_str()));
            lang.push(r.map(|r| r.lang));
            note.push(r.and_then(|r| r.note.as_deref()));
        }
        let error: Vec<Option<&str>> = self.errors.iter().map(|e| e.as_deref()).collect();
        let [l1, l2, l3] = l;
        let [c1, c2, c3] = conf;
        let [g1, g2, g3] = guess;
        let name = |i: usize| output_name(input_columns, OUTPUT_COLUMNS[i]).into();
        let actions = actions.column(name(12), shape, "id", "mode")?;
        let mut columns = vec![
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
            actions,
            Column::new(name(13), served_by),
            Column::new(name(14), model_id),
            Column::new(name(15), lang),
            Column::new(name(16), note),
            Column::new(name(17), error),
        ];
        if self.top_k > 0 {
            for (col, top_name) in top.into_iter().zip(TOP_COLUMNS) {
                columns.push(col.column(
                    output_name(input_columns, top_name).into(),
                    shape,
                    "node",
                    "probability",
                )?);
            }
        }
        Ok(columns)
    }

    /// Append the output columns to the chunk's own rows.
    pub fn attach(&self, df: &mut DataFrame, shape: Shape) -> Result<()> {
        let names: Vec<String> = df
            .get_column_names()
            .iter()
            .map(|n| n.to_string())
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        for c in self.columns(&names, shape)? {
            df.with_column(c)
                .map_err(|e| EngineError::Internal(e.to_string()))?;
        }
        Ok(())
    }
}
