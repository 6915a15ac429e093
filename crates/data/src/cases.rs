//! From a raw table to one cleaned row per case: label-column mapping,
//! case- vs turn-level detection, turn joining, id resolution and the shared
//! text pipeline (normalize, then mask).

use std::path::Path;

use casetag_core::TagPath;
use polars::prelude::*;
use rayon::prelude::*;
use serde::Serialize;

use crate::error::{printable, DataError, Result};
use crate::io::{collect, scan};
use casetag_core::text::TextPipeline;

pub(crate) const ID: &str = "id";
pub(crate) const CASE_ID: &str = "case_id";
pub(crate) const TEXT: &str = "text";
pub(crate) const TURN: &str = "turn";
pub(crate) const SPEAKER: &str = "speaker";
pub(crate) const LABELS: [&str; 3] = ["l1", "l2", "l3"];

/// Whether the input had one row per case or one row per turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    Case,
    Turn,
}

impl InputKind {
    /// Turn-level when the columns `case_id`, `turn`, `speaker` and `text` all exist.
    pub fn detect(schema: &Schema) -> InputKind {
        let names: Vec<&str> = schema.iter_names().map(|n| n.as_str()).collect();
        InputKind::of_columns(&names)
    }

    /// [`InputKind::detect`] from column names.
    pub fn of_columns(names: &[&str]) -> InputKind {
        if [CASE_ID, TURN, SPEAKER, TEXT]
            .iter()
            .all(|c| names.contains(c))
        {
            InputKind::Turn
        } else {
            InputKind::Case
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            InputKind::Case => "case",
            InputKind::Turn => "turn",
        }
    }
}

/// One case for training, evaluation or tagging.
#[derive(Debug, Clone, PartialEq)]
pub struct LabeledCase {
    pub id: String,
    /// Normalized and masked transcript; empty when the input had none.
    pub text: String,
    /// `None` for an out-of-scope row (all label columns empty or absent).
    pub label: Option<TagPath>,
    /// 1-based row number in the input table (for turn-level input, the
    /// 1-based position of the case in first-appearance order).
    pub row: usize,
}

/// A cleaned case frame: `id`, `text`, `l1`, `l2`, `l3` (String, null when
/// empty), then pass-through columns.
pub(crate) struct CaseFrame {
    pub df: DataFrame,
    pub rows_in: usize,
    pub kind: InputKind,
}

impl CaseFrame {
    pub fn passthrough(&self) -> Vec<PlSmallStr> {
        self.df
            .get_column_names()
            .into_iter()
            .filter(|n| !is_core_column(n))
            .cloned()
            .collect()
    }
}

fn is_core_column(n: &str) -> bool {
    n == ID || n == TEXT || LABELS.contains(&n)
}

fn column_list(schema: &Schema) -> String {
    schema
        .iter_names()
        .map(|n| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Apply `source -> target` renames (e.g. BANKING77's `category -> l1`).
fn apply_label_map(
    lf: LazyFrame,
    schema: &Schema,
    map: &[(String, String)],
    path: &Path,
) -> Result<LazyFrame> {
    if map.is_empty() {
        return Ok(lf);
    }
    let mut from = Vec::new();
    let mut to = Vec::new();
    for (src, dst) in map {
        if !schema.contains(src) {
            return Err(DataError::column(
                path,
                src,
                format!(
                    "not found for label mapping {src}={dst} (columns: {})",
                    column_list(schema)
                ),
            ));
        }
        if src != dst && schema.contains(dst) {
            return Err(DataError::column(
                path,
                dst,
                format!("already exists; cannot map '{src}' onto it"),
            ));
        }
        if src != dst {
            from.push(src.as_str());
            to.push(dst.as_str());
        }
    }
    Ok(lf.rename(from, to, true))
}

/// Read, map label columns, detect the kind and produce a cleaned case frame.
pub(crate) fn load_case_frame(
    path: &Path,
    label_columns: &[(String, String)],
    mask: bool,
) -> Result<CaseFrame> {
    let (lf, fmt) = scan(path)?;
    let mut lf = lf;
    let schema = lf
        .collect_schema()
        .map_err(|e| DataError::parse(path, fmt.name(), e))?;
    let lf = apply_label_map(lf, &schema, label_columns, path)?;
    let mut lf = lf;
    let schema = lf
        .collect_schema()
        .map_err(|e| DataError::parse(path, fmt.name(), e))?;
    if !schema.contains(TEXT) {
        return Err(DataError::column(
            path,
            TEXT,
            format!(
                "missing (a case table needs a 'text' column; found: {})",
                column_list(&schema)
            ),
        ));
    }
    let kind = InputKind::detect(&schema);
    let df = collect(lf, path, fmt)?;
    let rows_in = df.height();
    let df = match kind {
        InputKind::Turn => join_turns_at(df, Some(path))?,
        InputKind::Case => case_columns(df, path)?,
    };
    let df = clean_text_column(df, mask)?;
    Ok(CaseFrame { df, rows_in, kind })
}

fn string_col(df: &DataFrame, name: &str, path: Option<&Path>) -> Result<Column> {
    let c = df.column(name).map_err(DataError::internal)?;
    c.cast(&DataType::String).map_err(|e| match path {
        Some(p) => DataError::column(p, name, format!("cannot read as text: {e}")),
        None => DataError::Usage(format!("column '{name}': cannot read as text: {e}")),
    })
}

/// Case-level input: resolve the id, cast text and labels to strings, keep
/// every other column as pass-through.
fn case_columns(df: DataFrame, path: &Path) -> Result<DataFrame> {
    let n = df.height();
    let id_src = [ID, CASE_ID]
        .into_iter()
        .find(|c| df.get_column_index(c).is_some());
    let id = match id_src {
        Some(c) => {
            let mut col = string_col(&df, c, Some(path))?;
            col.rename(ID.into());
            col
        }
        None => Column::new(
            ID.into(),
            (1..=n).map(|i| format!("row-{i}")).collect::<Vec<_>>(),
        ),
    };
    let mut cols = vec![id, string_col(&df, TEXT, Some(path))?];
    for l in LABELS {
        cols.push(if df.get_column_index(l).is_some() {
            string_col(&df, l, Some(path))?
        } else {
            Column::full_null(l.into(), n, &DataType::String)
        });
    }
    for c in df.columns() {
        let name = c.name().as_str();
        if !is_core_column(name) && Some(name) != id_src {
            cols.push(c.clone());
        }
    }
    DataFrame::new(n, cols).map_err(DataError::internal)
}

/// Prepare the `text` column in parallel with the one text contract
/// ([`TextPipeline`]: normalise, mask when asked, cap); missing text becomes
/// the empty string.
fn clean_text_column(mut df: DataFrame, mask: bool) -> Result<DataFrame> {
    let pipeline = TextPipeline {
        mask_pii: mask,
        ..TextPipeline::default()
    };
    let texts: Vec<Option<&str>> = df
        .column(TEXT)
        .and_then(|c| c.str())
        .map_err(DataError::internal)?
        .iter()
        .collect();
    let cleaned: Vec<String> = texts
        .par_iter()
        .with_min_len(256)
        .map(|t| t.map(|t| pipeline.prepare(t).text).unwrap_or_default())
        .collect();
    df.with_column(Column::new(TEXT.into(), cleaned))
        .map_err(DataError::internal)?;
    Ok(df)
}

/// Per row of a turn-level frame, why it cannot be joined into its case:
/// an empty `case_id` or a `turn` that is not an integer.
fn turn_row_problems(df: &DataFrame, path: Option<&Path>) -> Result<Vec<Option<String>>> {
    let turn_raw = df.column(TURN).map_err(DataError::internal)?;
    let turn = turn_raw.cast(&DataType::Int64).map_err(|e| match path {
        Some(p) => DataError::column(p, TURN, format!("not an integer column: {e}")),
        None => DataError::Usage(format!("column '{TURN}': not an integer column: {e}")),
    })?;
    let turn = turn.i64().map_err(DataError::internal)?;
    let raw = turn_raw.cast(&DataType::String).ok();
    let raw = raw.as_ref().and_then(|c| c.str().ok());
    let case_id = string_col(df, CASE_ID, path)?;
    let case_id = case_id.str().map_err(DataError::internal)?;
    Ok(turn
        .iter()
        .zip(case_id.iter())
        .enumerate()
        .map(|(i, (t, c))| {
            if c.is_none_or(|s| s.trim().is_empty()) {
                Some("column 'case_id' is empty".to_string())
            } else if t.is_none() {
                Some(match raw.and_then(|r| r.get(i)) {
                    Some(s) => format!("column 'turn': '{}' is not an integer", printable(s)),
                    None => "column 'turn' is empty".to_string(),
                })
            } else {
                None
            }
        })
        .collect())
}

/// Turn-level rows -> one row per case, for tagging: like [`join_turns`],
/// but a row that cannot be joined (damaged input, per `faults`, an empty
/// `case_id`, a `turn` that is not an integer) does not stop the table: it
/// is kept as its own row after the cases, with its `case_id` as `id`, its
/// turn's text, and its fault naming the file and row. Label columns the
/// input lacks are left out. Returns the rows and their faults.
pub(crate) fn join_turns_keeping(
    df: DataFrame,
    faults: Vec<Option<String>>,
    path: &Path,
) -> Result<(DataFrame, Vec<Option<String>>)> {
    let problems = turn_row_problems(&df, Some(path))?;
    let bad: Vec<Option<String>> = faults
        .into_iter()
        .zip(problems)
        .enumerate()
        .map(|(i, (f, p))| f.or_else(|| p.map(|m| DataError::row(path, i + 1, m).to_string())))
        .collect();
    let keep = BooleanChunked::from_iter_values("keep".into(), bad.iter().map(Option::is_none));
    let absent: Vec<&str> = LABELS
        .into_iter()
        .filter(|l| df.get_column_index(l).is_none())
        .collect();
    let good = df.filter(&keep).map_err(DataError::internal)?;
    let mut joined = join_turns_at(good, Some(path))?;
    for l in &absent {
        joined.drop_in_place(l).map_err(DataError::internal)?;
    }
    let rest = df.filter(&!&keep).map_err(DataError::internal)?;
    let n = joined.height();
    let mut faults = vec![None; n];
    faults.extend(bad.into_iter().flatten().map(Some));
    if rest.height() == 0 {
        return Ok((joined, faults));
    }
    // The unjoinable rows, in the joined frame's columns and types.
    let cols = joined
        .columns()
        .iter()
        .map(|c| {
            let src = match c.name().as_str() {
                ID => CASE_ID,
                other => other,
            };
            rest.column(src)
                .and_then(|r| r.cast(c.dtype()))
                .map(|r| r.with_name(c.name().clone()))
                .map_err(DataError::internal)
        })
        .collect::<Result<Vec<_>>>()?;
    let rest = DataFrame::new(rest.height(), cols).map_err(DataError::internal)?;
    joined.vstack_mut(&rest).map_err(DataError::internal)?;
    Ok((joined, faults))
}

/// Turn-level -> case-level. Groups by `case_id` (cases keep their order of
/// first appearance), sorts each case's turns by the integer `turn` column and
/// joins them as one `[speaker] text` line per turn. Label columns take the
/// first non-empty value in turn order, other columns the first value.
/// Output columns: `id`, `text`, `l1`, `l2`, `l3`, then pass-through columns
/// (a per-turn `id` column, if any, is dropped: `case_id` is the case's id).
pub fn join_turns(df: DataFrame) -> Result<DataFrame> {
    join_turns_at(df, None)
}

fn join_turns_at(df: DataFrame, path: Option<&Path>) -> Result<DataFrame> {
    let err_col = |c: &str, m: String| match path {
        Some(p) => DataError::column(p, c, m),
        None => DataError::Usage(format!("column '{c}': {m}")),
    };
    let err_row = |row: usize, m: String| match path {
        Some(p) => DataError::row(p, row, m),
        None => DataError::Usage(format!("row {row}: {m}")),
    };
    for c in [CASE_ID, TURN, SPEAKER, TEXT] {
        if df.get_column_index(c).is_none() {
            return Err(err_col(c, "missing (needed for turn-level input)".into()));
        }
    }
    // Validate `turn` and `case_id` row by row so the error names the row.
    if let Some((i, m)) = turn_row_problems(&df, path)?
        .into_iter()
        .enumerate()
        .find_map(|(i, p)| p.map(|m| (i, m)))
    {
        return Err(err_row(i + 1, m));
    }
    let turn = df
        .column(TURN)
        .map_err(DataError::internal)?
        .cast(&DataType::Int64)
        .map_err(|e| err_col(TURN, format!("not an integer column: {e}")))?;
    let case_id = string_col(&df, CASE_ID, path)?;

    // polars groups and orders the turns; the lines are assembled below
    // (`str().join` needs polars' `concat_str` feature, which the shared
    // build does not enable).
    let by_turn = || SortMultipleOptions::default().with_maintain_order(true);
    let mut aggs = vec![
        col(SPEAKER)
            .cast(DataType::String)
            .sort_by([col(TURN)], by_turn())
            .alias("__speakers"),
        col(TEXT)
            .cast(DataType::String)
            .sort_by([col(TURN)], by_turn())
            .alias("__texts"),
    ];
    let mut labels_present = Vec::new();
    for l in LABELS {
        if df.get_column_index(l).is_some() {
            aggs.push(
                col(l)
                    .cast(DataType::String)
                    .sort_by([col(TURN)], by_turn())
                    .drop_nulls()
                    .first()
                    .alias(l),
            );
            labels_present.push(l);
        }
    }
    let mut passthrough = Vec::new();
    for c in df.get_column_names() {
        let name = c.as_str();
        if [CASE_ID, TURN, SPEAKER, TEXT, ID].contains(&name) || LABELS.contains(&name) {
            continue;
        }
        aggs.push(col(name).sort_by([col(TURN)], by_turn()).first());
        passthrough.push(name.to_string());
    }
    let mut df = df;
    df.with_column(turn.with_name(TURN.into()))
        .map_err(DataError::internal)?;
    df.with_column(case_id.with_name(CASE_ID.into()))
        .map_err(DataError::internal)?;
    let g = df
        .lazy()
        .group_by_stable([col(CASE_ID)])
        .agg(aggs)
        .collect()
        .map_err(|e| match path {
            Some(p) => DataError::parse(p, "turns", e),
            None => DataError::internal(e),
        })?;
    let n = g.height();
    let list = |name: &str| -> Result<Vec<Option<Series>>> {
        Ok(g.column(name)
            .and_then(|c| c.list())
            .map_err(DataError::internal)?
            .series_iter()
            .collect())
    };
    let speakers = list("__speakers")?;
    let texts = list("__texts")?;
    let mut joined = Vec::with_capacity(n);
    for (sp, tx) in speakers.iter().zip(&texts) {
        let mut out = String::new();
        if let (Some(sp), Some(tx)) = (sp, tx) {
            let sp = sp.str().map_err(DataError::internal)?;
            let tx = tx.str().map_err(DataError::internal)?;
            for (s, t) in sp.iter().zip(tx.iter()) {
                let Some(t) = t.map(str::trim).filter(|t| !t.is_empty()) else {
                    continue;
                };
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push('[');
                out.push_str(
                    s.map(str::trim)
                        .filter(|s| !s.is_empty())
                        .unwrap_or("unknown"),
                );
                out.push_str("] ");
                out.push_str(t);
            }
        }
        joined.push(out);
    }
    let mut cols = vec![
        g.column(CASE_ID)
            .map_err(DataError::internal)?
            .clone()
            .with_name(ID.into()),
        Column::new(TEXT.into(), joined),
    ];
    for l in LABELS {
        cols.push(if labels_present.contains(&l) {
            g.column(l).map_err(DataError::internal)?.clone()
        } else {
            Column::full_null(l.into(), n, &DataType::String)
        });
    }
    for p in &passthrough {
        cols.push(g.column(p).map_err(DataError::internal)?.clone());
    }
    DataFrame::new(n, cols).map_err(DataError::internal)
}

/// Parse the label columns of a case frame, one `Option<TagPath>` per row, or
/// the per-row parse errors (1-based row, reason).
pub(crate) fn parse_labels(
    df: &DataFrame,
) -> Result<Vec<std::result::Result<Option<TagPath>, String>>> {
    let cols: Vec<&StringChunked> = LABELS
        .iter()
        .map(|l| df.column(l).and_then(|c| c.str()))
        .collect::<PolarsResult<_>>()
        .map_err(DataError::internal)?;
    Ok((0..df.height())
        .map(|i| TagPath::from_columns(cols[0].get(i), cols[1].get(i), cols[2].get(i)))
        .collect())
}

pub(crate) fn str_values(df: &DataFrame, name: &str) -> Result<Vec<String>> {
    Ok(df
        .column(name)
        .and_then(|c| c.str())
        .map_err(DataError::internal)?
        .iter()
        .map(|v| v.unwrap_or_default().to_string())
        .collect())
}

/// Load a case table for training, evaluation or tagging: any format, case-
/// or turn-level; turns are joined and text normalized and masked exactly as
/// in `prepare`, but nothing is deduplicated, dropped or split. Returns the
/// cases and, row-aligned with them, a frame of the pass-through columns
/// (region, channel, ...) for evaluation slices. `label_columns` renames
/// source columns to `l1`/`l2`/`l3` first (e.g. `[("category", "l1")]`).
pub fn load_cases(
    path: &Path,
    label_columns: &[(String, String)],
) -> Result<(Vec<LabeledCase>, DataFrame)> {
    let cf = load_case_frame(path, label_columns, true)?;
    let ids = str_values(&cf.df, ID)?;
    let texts = str_values(&cf.df, TEXT)?;
    let labels = parse_labels(&cf.df)?;
    let mut cases = Vec::with_capacity(ids.len());
    for (i, ((id, text), label)) in ids.into_iter().zip(texts).zip(labels).enumerate() {
        let label = label.map_err(|m| DataError::row(path, i + 1, format!("(id {id}): {m}")))?;
        cases.push(LabeledCase {
            id,
            text,
            label,
            row: i + 1,
        });
    }
    let extra = cf
        .df
        .select(cf.passthrough())
        .map_err(DataError::internal)?;
    Ok((cases, extra))
}
