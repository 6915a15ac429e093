use std::path::{Path, PathBuf};

use casetag_data::{printable, write_table};
use casetag_engine::review::{argilla, label_studio, queue, Candidate, Item};
use clap::Parser;
use polars::prelude::{Column, DataFrame, DataType};

use super::tagged_file::TaggedFile;
use crate::{CmdResult, Failure};

/// Build a review queue from a tagged file: the cases worth a human's time
/// (declared out of scope, abstained, backed off, low margin, or answered
/// differently by a second model with --compare), ranked by how much a label
/// is expected to help (uncertainty: one minus the margin between the best
/// and the runner-up answer, so tag with `--top-k 2` for exact margins), with
/// near-duplicates grouped so that one label serves the group. Writes
/// queue.csv (with empty l1, l2, l3 columns for the reviewer),
/// label_studio.json (task import with the guess as pre-annotation) and
/// argilla.json (records with the guess as suggestions) into --out. A
/// reviewed queue.csv trains with the original data through `casetag train
/// ... --extra queue.csv`.
#[derive(Parser)]
pub struct Args {
    /// A file written by `casetag tag` (any format).
    #[arg(long)]
    input: PathBuf,
    /// The same rows tagged by a second model (e.g. the baseline next to
    /// the transformer): cases the two answer differently are queued.
    #[arg(long)]
    compare: Option<PathBuf>,
    /// Labels to ask for: items in the queue (a group of near-duplicates is
    /// one item).
    #[arg(long, default_value_t = 200)]
    budget: usize,
    /// Output directory for queue.csv, label_studio.json and argilla.json.
    #[arg(long)]
    out: PathBuf,
    /// Estimated Jaccard similarity of character 5-grams at or above which
    /// two cases are near-duplicates (above 1: no grouping).
    #[arg(long, default_value_t = 0.7)]
    dup_threshold: f64,
    /// The column holding each case's text.
    #[arg(long, default_value = "text", value_name = "NAME")]
    text_column: String,
    /// The column holding each case's id (row numbers when the file has none).
    #[arg(long, default_value = "id", value_name = "NAME")]
    id_column: String,
}

/// The answered rows of a tagged file: each one's place in the file, its
/// candidate, and the id of the model that answered.
struct Answered {
    rows: Vec<usize>,
    cands: Vec<Candidate>,
    model: Option<String>,
}

/// Per row of a tagged file, its best guess's levels (`guess_l1..guess_l3`,
/// down to the first empty one).
fn guesses(f: &TaggedFile) -> Result<Vec<Vec<String>>, Failure> {
    let cols = (1..=3)
        .map(|k| f.strings(f.output(&format!("guess_l{k}"))?))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((0..f.rows())
        .map(|i| {
            cols.iter()
                .map_while(|c| c[i].clone().filter(|s| !s.is_empty()))
                .collect()
        })
        .collect())
}

fn candidates(f: &TaggedFile, a: &Args) -> Result<Answered, Failure> {
    let keep = f.answered()?;
    let text = f.strings(f.input(&a.text_column, "--text-column ")?)?;
    let ids = match f.input(&a.id_column, "") {
        Ok(c) => f.strings(c)?,
        Err(_) => (1..=f.rows()).map(|i| Some(i.to_string())).collect(),
    };
    let mut guess = guesses(f)?;
    let conf: Vec<Vec<Option<f64>>> = (1..=3)
        .map(|k| f.floats(f.output(&format!("conf_l{k}"))?))
        .collect::<Result<_, _>>()?;
    let depth = f.ints(f.output("depth")?)?;
    let oos = f.bools(f.output("out_of_scope")?)?;
    let top: Vec<Option<Vec<Option<f64>>>> = (1..=3)
        .map(|k| {
            let name = format!("top_l{k}");
            if f.has_output(&name) {
                runner_up(f, f.output(&name)?).map(Some)
            } else {
                Ok(None)
            }
        })
        .collect::<Result<_, _>>()?;
    let model = f
        .output("model_id")
        .ok()
        .and_then(|c| f.strings(c).ok())
        .and_then(|v| v.into_iter().flatten().next());
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for i in (0..f.rows()).filter(|&i| keep[i]) {
        let levels = std::mem::take(&mut guess[i]);
        let confidence: Vec<f32> = conf
            .iter()
            .take(levels.len())
            .map(|c| c[i].unwrap_or(0.0) as f32)
            .collect();
        let deepest = levels.len().max(1) - 1;
        out.push(Candidate {
            id: ids[i].clone().unwrap_or_else(|| (i + 1).to_string()),
            text: text[i].clone().unwrap_or_default(),
            second: top[deepest].as_ref().and_then(|t| t[i]).map(|p| p as f32),
            guess: levels,
            confidence,
            depth: depth[i].unwrap_or(0).max(0) as usize,
            out_of_scope: oos[i].unwrap_or(false),
            other_guess: None,
        });
        rows.push(i);
    }
    Ok(Answered {
        rows,
        cands: out,
        model,
    })
}

/// Per row, the probability of the second node of a `top_lK` column: a list
/// of {node, probability} (Parquet, JSONL) or `node:p;node:p` text (CSV).
fn runner_up(f: &TaggedFile, c: &Column) -> Result<Vec<Option<f64>>, Failure> {
    if matches!(c.dtype(), DataType::List(_)) {
        let list = c.list().map_err(Failure::internal)?;
        return Ok(list
            .amortized_iter()
            .map(|row| {
                let row = row?;
                let s = row.as_ref().struct_().ok()?;
                let p = s.field_by_name("probability").ok()?;
                let p = p.cast(&DataType::Float64).ok()?;
                let p = p.f64().ok()?;
                // `get` panics past the end; lists may hold one node or none.
                if p.len() > 1 {
                    p.get(1)
                } else {
                    None
                }
            })
            .collect());
    }
    Ok(f.strings(c)?
        .into_iter()
        .map(|v| {
            let v = v?;
            let second = v.split(';').nth(1)?;
            second.rsplit_once(':')?.1.parse().ok()
        })
        .collect())
}

pub fn run(a: Args) -> CmdResult {
    if a.dup_threshold.is_nan() || a.dup_threshold <= 0.0 {
        return Err(Failure::input(format!(
            "--dup-threshold {}: a similarity above 0 (above 1: no grouping)",
            a.dup_threshold
        )));
    }
    let f = TaggedFile::read(&a.input)?;
    let Answered {
        rows,
        mut cands,
        model,
    } = candidates(&f, &a)?;
    if let Some(other) = &a.compare {
        let g = TaggedFile::read(other)?;
        if g.rows() != f.rows() {
            return Err(Failure::input(format!(
                "--compare {}: {} rows, but --input has {}; tag the same file with both models",
                other.display(),
                g.rows(),
                f.rows()
            )));
        }
        let mut other = guesses(&g)?;
        for (c, &i) in cands.iter_mut().zip(&rows) {
            c.other_guess = Some(std::mem::take(&mut other[i]));
        }
    }
    let items = queue(&cands, a.budget, a.dup_threshold);
    std::fs::create_dir_all(&a.out)
        .map_err(|e| Failure::input(format!("--out {}: {e}", a.out.display())))?;
    let model = model.unwrap_or_default();
    write_queue(&a.out.join("queue.csv"), &items, &cands)?;
    let write_json = |name: &str, v: serde_json::Value| -> Result<(), Failure> {
        let p = a.out.join(name);
        let body = serde_json::to_string_pretty(&v).map_err(Failure::internal)?;
        std::fs::write(&p, body).map_err(|e| Failure::input(format!("{}: {e}", p.display())))
    };
    write_json("label_studio.json", label_studio(&items, &cands, &model))?;
    write_json("argilla.json", argilla(&items, &cands, &model))?;
    let mut by_reason = std::collections::BTreeMap::<&str, usize>::new();
    for it in &items {
        for r in &it.reasons {
            *by_reason.entry(r.name()).or_default() += 1;
        }
    }
    super::say(printable(
        &serde_json::json!({
            "items": items.len(),
            "cases_covered": items.iter().map(|i| i.members.len()).sum::<usize>(),
            "answered_rows": cands.len(),
            "by_reason": by_reason,
            "out": a.out,
        })
        .to_string(),
    ));
    Ok(())
}

/// queue.csv: one row per item, its representative's text and guess, and
/// empty l1, l2, l3 columns for the reviewer (write `out_of_scope` in l1
/// for a case no tag fits; rows left empty are skipped by `--extra`).
fn write_queue(path: &Path, items: &[Item], cands: &[Candidate]) -> Result<(), Failure> {
    let rep = |it: &Item| &cands[it.representative];
    let text_col = |name: &str, f: &dyn Fn(&Item) -> String| {
        Column::new(name.into(), items.iter().map(f).collect::<Vec<String>>())
    };
    let guess = |k: usize| move |it: &Item| rep(it).guess.get(k).cloned().unwrap_or_default();
    let empty = vec![None::<String>; items.len()];
    let mut df = DataFrame::new_infer_height(vec![
        Column::new(
            "rank".into(),
            items.iter().map(|i| i.rank as u32).collect::<Vec<_>>(),
        ),
        text_col("id", &|it| rep(it).id.clone()),
        text_col("text", &|it| rep(it).text.clone()),
        text_col("reasons", &|it| {
            it.reasons
                .iter()
                .map(|r| r.name())
                .collect::<Vec<_>>()
                .join(";")
        }),
        Column::new(
            "value".into(),
            items.iter().map(|i| i.value).collect::<Vec<f64>>(),
        ),
        Column::new(
            "group_size".into(),
            items
                .iter()
                .map(|i| i.members.len() as u32)
                .collect::<Vec<_>>(),
        ),
        text_col("group_ids", &|it| {
            it.members
                .iter()
                .map(|&m| cands[m].id.as_str())
                .collect::<Vec<_>>()
                .join(";")
        }),
        text_col("guess_l1", &guess(0)),
        text_col("guess_l2", &guess(1)),
        text_col("guess_l3", &guess(2)),
        Column::new(
            "confidence".into(),
            items
                .iter()
                .map(|i| rep(i).confidence.last().copied().unwrap_or(0.0))
                .collect::<Vec<f32>>(),
        ),
        Column::new("l1".into(), empty.clone()),
        Column::new("l2".into(), empty.clone()),
        Column::new("l3".into(), empty),
    ])
    .map_err(Failure::internal)?;
    write_table(&mut df, path)?;
    Ok(())
}
