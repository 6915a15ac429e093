use std::path::{Path, PathBuf};
use std::time::Instant;

use casetag_core::label_map::{LabelMap, MapReport};
use casetag_core::{TagPath, Transcript};
use casetag_engine::eval::{
    compare, evaluate_logits, length_quartiles, quartiles, report_json, EvalRow, ModelEval,
    LENGTH_SLICE, TOKENS_SLICE,
};
use casetag_engine::gate::{Gate, GateVerdict};
use casetag_engine::load_model;
use casetag_engine::train::validate_labels;
use clap::Parser;

use casetag_data::printable;

use crate::{progress, CmdResult, Failure};

/// Evaluate one or more models on the same labelled table. Writes
/// REPORT_DIR/report.json (SPEC keys, pairwise comparisons with bootstrap
/// intervals and McNemar p-values) and a self-contained report.html.
/// With several models, the first is the reference (champion) for --gate.
#[derive(Parser)]
pub struct Args {
    /// Model bundle directory, or NAME / NAME/VERSION in the registry
    /// (repeat to compare models side by side).
    #[arg(long = "model", required = true)]
    models: Vec<String>,
    #[command(flatten)]
    registry: super::models::Registry,
    /// Labelled table (any supported format).
    #[arg(long)]
    data: PathBuf,
    /// Output directory for report.json and report.html.
    #[arg(long)]
    out: PathBuf,
    /// Pass-through column to break every metric down by (repeatable). Every
    /// report also breaks metrics down by transcript length (`length`: word-
    /// count quartiles; `tokens`: quartiles of the whole text's length in
    /// the first transformer model's tokens, when one is evaluated).
    #[arg(long = "slice")]
    slices: Vec<String>,
    /// Release gate YAML; exit 3 when any check fails.
    #[arg(long)]
    gate: Option<PathBuf>,
    /// Rename a source column to a label column, e.g. `category=l1` (repeatable).
    #[arg(long = "label-column", value_name = "SRC=l1|l2|l3")]
    label_columns: Vec<String>,
    /// Judge out of scope over the whole table at once (up to 50,000 rows a
    /// batch), as `tag --batch-novelty` does; models without a batch rule
    /// are judged case by case (with a warning).
    #[arg(long)]
    batch_novelty: bool,
    /// Judge out of scope one case at a time against the cases before it
    /// in the file (the last `--stream-window`), as `serve
    /// --stream-novelty` does for its requests: the table's row order is
    /// the arrival order. Models without a batch rule are judged case by
    /// case (with a warning).
    #[arg(long, conflicts_with = "batch_novelty")]
    stream_novelty: bool,
    #[command(flatten)]
    window: super::serve::StreamWindowArg,
    /// Bootstrap resamples for the comparison intervals.
    #[arg(long, default_value_t = 2000)]
    resamples: usize,
    /// Labelled rows whose label a model's taxonomy does not know (a tag
    /// added after that model was trained): `error` stops; `wrong` counts
    /// them as that model's errors; `parent` scores them at their deepest
    /// level the model knows; `drop` leaves them out for every model. The
    /// report says which rows and labels were affected (`unknown_labels`).
    #[arg(long, value_enum, default_value = "error")]
    unknown_labels: UnknownLabels,
    /// Data labelled with another taxonomy version: a YAML map of node ids
    /// to their new ids (`old: new` for a rename or merge, `old: [a, b]`
    /// for a split, which cannot be mapped). Labels are mapped before
    /// scoring; the report lists what was mapped and which split tags were
    /// not (those rows then follow --unknown-labels).
    #[arg(long, value_name = "FILE")]
    label_map: Option<PathBuf>,
}

/// See `--unknown-labels`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownLabels {
    Error,
    Wrong,
    Parent,
    Drop,
}

/// The label cut to its deepest level `tax` knows (`None` when not even
/// its L1 is known).
fn known_prefix(tax: &casetag_core::Taxonomy, l: &TagPath) -> Option<TagPath> {
    let ids = [Some(l.l1.as_str()), l.l2.as_deref(), l.l3.as_deref()];
    (1..=3).rev().find_map(|d| {
        ids[d - 1]?;
        let p = TagPath::new(
            &l.l1,
            if d >= 2 { ids[1] } else { None },
            if d >= 3 { ids[2] } else { None },
        );
        tax.resolve(&p).is_ok().then_some(p)
    })
}

fn slice_values(
    df: &polars::prelude::DataFrame,
    cols: &[String],
    kept: &[usize],
) -> Result<Vec<Vec<(String, String)>>, Failure> {
    use polars::prelude::DataType;
    let mut out = vec![Vec::new(); kept.len()];
    for c in cols {
        let col = df
            .column(c)
            .map_err(|_| Failure::input(format!("--slice '{c}': no such column in the data")))?
            .cast(&DataType::String)
            .map_err(Failure::internal)?;
        let s = col
            .as_materialized_series()
            .str()
            .map_err(Failure::internal)?
            .clone();
        for (j, &i) in kept.iter().enumerate() {
            let v = s.get(i).unwrap_or("").to_string();
            out[j].push((c.clone(), v));
        }
    }
    Ok(out)
}

pub fn run(a: Args) -> CmdResult {
    let labels = super::parse_label_columns(&a.label_columns)?;
    let gate: Option<Gate> = match &a.gate {
        Some(p) => {
            let t = std::fs::read_to_string(p)
                .map_err(|e| Failure::input(format!("{}: {e}", p.display())))?;
            Some(Gate::from_yaml(&t).map_err(|e| Failure::input(format!("{}: {e}", p.display())))?)
        }
        None => None,
    };
    // Without label columns every row would count as out of scope and the
    // report would measure nothing; refuse before loading any model.
    let columns = casetag_data::table_columns(&a.data)?;
    let labelled = |l: &str| columns.iter().any(|c| c == l) || labels.iter().any(|(_, d)| d == l);
    if !labelled("l1") {
        return Err(Failure::input(format!(
            "{}: column 'l1': missing; eval needs label columns (l1, and l2, l3 for deeper levels) \
             or --label-column SRC=l1 (found: {})",
            a.data.display(),
            columns.join(", ")
        )));
    }
    let (mut examples, extra, kept) = super::load_examples(&a.data, &labels)?;
    let mut map_report = None;
    if let Some(p) = &a.label_map {
        let map = LabelMap::load(p).map_err(|e| Failure::input(e.message()))?;
        let mut ls: Vec<Option<TagPath>> = examples.iter().map(|e| e.label.clone()).collect();
        let (r, unmapped) = MapReport::map_all(&map, &mut ls);
        for (e, l) in examples.iter_mut().zip(ls) {
            e.label = l;
        }
        progress::note(&format!(
            "--label-map {}: {} row(s) relabelled, {} with split tags left unmapped",
            p.display(),
            r.mapped.values().sum::<usize>(),
            unmapped.len()
        ));
        if !unmapped.is_empty() && a.unknown_labels == UnknownLabels::Error {
            let split: Vec<String> = r
                .unmapped
                .iter()
                .map(|(id, n)| {
                    format!(
                        "{id} ({n} row(s); split into {})",
                        map.split_targets(id).unwrap_or_default().join(", ")
                    )
                })
                .collect();
            return Err(Failure::input(format!(
                "--label-map {}: tags split into several cannot be mapped: {}; \
                 --unknown-labels wrong|parent|drop scores those rows",
                p.display(),
                split.join("; ")
            )));
        }
        map_report = Some(serde_json::json!({
            "label_map": p,
            "mapped": r.mapped,
            "unmapped_split_tags": r.unmapped,
        }));
    }
    if examples.is_empty() {
        return Err(Failure::input(format!(
            "{}: no rows to evaluate",
            a.data.display()
        )));
    }
    let slices = slice_values(&extra, &a.slices, &kept)?;
    let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
    let lengths = length_quartiles(&texts);
    let mut rows: Vec<EvalRow> = examples
        .iter()
        .zip(slices)
        .zip(lengths)
        .map(|((e, mut s), len)| {
            s.push((LENGTH_SLICE.to_string(), len));
            EvalRow {
                label: e.label.clone(),
                slices: s,
            }
        })
        .collect();
    let mut cases: Vec<Transcript> = examples
        .iter()
        .map(|e| Transcript::new(e.text.clone()))
        .collect();
    // Every model is loaded before any inference: two bundles with one id
    // could not be told apart in the report.
    let mut loaded = Vec::with_capacity(a.models.len());
    let paths = a
        .models
        .iter()
        .map(|m| a.registry.resolve(m))
        .collect::<Result<Vec<PathBuf>, Failure>>()?;
    for mp in &paths {
        let m = load_model(mp)?;
        if let Some((other, _)) = loaded
            .iter()
            .find(|(_, o): &&(&PathBuf, casetag_engine::LoadedModel)| o.id() == m.id())
        {
            return Err(Failure::input(format!(
                "--model {} and --model {} have the same id '{}'; retrain one with --id to tell them apart",
                other.display(),
                mp.display(),
                printable(m.id())
            )));
        }
        loaded.push((mp, m));
    }
    // Lengths in the first transformer's tokens too: what its token limit
    // cuts.
    if let Some(counts) = loaded
        .iter()
        .find_map(|(_, m)| m.classifier.text_tokens(&cases))
    {
        for (row, q) in rows.iter_mut().zip(quartiles(&counts, "tokens")) {
            row.slices.push((TOKENS_SLICE.to_string(), q));
        }
    }
    // Labels a model's taxonomy does not know, checked before any
    // inference; with `error` the first such model stops the run.
    let mut unknown_report = Vec::new();
    let mut unknown_rows: Vec<Vec<usize>> = Vec::new();
    for (_, m) in &loaded {
        let tax = &m.decider.taxonomy;
        if a.unknown_labels == UnknownLabels::Error {
            validate_labels(
                tax,
                &examples,
                &format!("{} (model '{}')", a.data.display(), m.id()),
            )
            .map_err(|e| {
                Failure::input(format!(
                    "{e} (--unknown-labels wrong|parent|drop scores them instead)"
                ))
            })?;
        }
        let bad: Vec<usize> = (0..rows.len())
            .filter(|&i| {
                rows[i]
                    .label
                    .as_ref()
                    .is_some_and(|l| tax.resolve(l).is_err())
            })
            .collect();
        if !bad.is_empty() {
            let mut labels: std::collections::BTreeMap<String, usize> = Default::default();
            for &i in &bad {
                *labels
                    .entry(rows[i].label.as_ref().unwrap().to_string())
                    .or_default() += 1;
            }
            progress::note(&format!(
                "model '{}': {} row(s) with labels its taxonomy does not know ({} label(s)); --unknown-labels {:?}",
                m.id(),
                bad.len(),
                labels.len(),
                a.unknown_labels
            ));
            unknown_report.push(serde_json::json!({
                "model": m.id(),
                "policy": a.unknown_labels,
                "rows": bad.len(),
                "labels": labels,
            }));
        }
        unknown_rows.push(bad);
    }
    if a.unknown_labels == UnknownLabels::Drop {
        let drop: std::collections::BTreeSet<usize> =
            unknown_rows.iter().flatten().copied().collect();
        fn without<T>(v: Vec<T>, drop: &std::collections::BTreeSet<usize>) -> Vec<T> {
            v.into_iter()
                .enumerate()
                .filter(|(i, _)| !drop.contains(i))
                .map(|(_, x)| x)
                .collect()
        }
        rows = without(rows, &drop);
        cases = without(cases, &drop);
        if cases.is_empty() {
            return Err(Failure::input(format!(
                "{}: --unknown-labels drop left no rows to evaluate",
                a.data.display()
            )));
        }
    }
    let mut evals = Vec::new();
    for ((_, mut m), bad) in loaded.into_iter().zip(unknown_rows) {
        // `parent`: this model's truth is each unknown label's deepest
        // level it knows.
        let model_rows = if a.unknown_labels == UnknownLabels::Parent && !bad.is_empty() {
            let mut r = rows.clone();
            for i in bad {
                if let Some(l) = r[i].label.as_ref() {
                    if let Some(p) = known_prefix(&m.decider.taxonomy, l) {
                        r[i].label = Some(p);
                    }
                }
            }
            Some(r)
        } else {
            None
        };
        let rows = model_rows.as_ref().unwrap_or(&rows);
        if a.batch_novelty {
            if let Err(e) = m.enable_batch_novelty() {
                progress::warn(&format!("{e}; judged case by case"));
            }
        }
        if a.stream_novelty {
            if let Err(e) = m.enable_stream_novelty(a.window.stream_window as usize) {
                progress::warn(&format!("{e}; judged case by case"));
            }
        }
        progress::note(&format!("evaluating {} on {} rows", m.id(), cases.len()));
        let pb = crate::progress::bar(Some(cases.len() as u64), m.id());
        let t0 = Instant::now();
        let logits = m.scores_chunked(&cases, |n| pb.inc(n as u64))?;
        pb.finish_and_clear();
        let tput = cases.len() as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        let mut ev = evaluate_logits(
            &m.decider,
            m.judging,
            m.id(),
            m.kind(),
            &logits,
            rows,
            Some(tput),
        );
        ev.summary.parent = m.bundle.manifest.parent.clone();
        evals.push(ev);
    }
    let comparisons = compare(&evals, a.resamples, 42);
    let verdict = gate.as_ref().map(|g| g.check(&evals));
    unknown_report.extend(map_report);
    let unknown = (!unknown_report.is_empty()).then(|| serde_json::json!(unknown_report));
    write_reports(
        &a.out,
        &evals,
        &comparisons,
        verdict.as_ref(),
        &a.data,
        unknown.as_ref(),
    )?;
    let report = report_json(&evals, &comparisons, verdict.as_ref());
    let runtime = casetag_transformer::runtime_report();
    super::say(
        serde_json::to_string_pretty(&serde_json::json!({
            "models": report["models"],
            "comparisons": report["comparisons"],
            "gate": report["gate"],
            "unknown_labels": unknown,
            "runtime": runtime,
        }))
        .unwrap_or_default(),
    );
    match verdict {
        Some(GateVerdict {
            passed: false,
            failed,
            ..
        }) => {
            eprintln!("release gate FAILED ({} check(s)):", failed.len());
            for f in &failed {
                eprintln!("  - {f}");
            }
            Err(Failure {
                code: 3,
                message: format!(
                    "release gate failed: {} check(s) did not pass",
                    failed.len()
                ),
            })
        }
        Some(_) => {
            progress::note("release gate passed");
            Ok(())
        }
        None => Ok(()),
    }
}

fn write_reports(
    out: &Path,
    evals: &[ModelEval],
    comparisons: &[casetag_engine::eval::Comparison],
    verdict: Option<&GateVerdict>,
    data: &Path,
    unknown_labels: Option<&serde_json::Value>,
) -> CmdResult {
    std::fs::create_dir_all(out).map_err(|e| Failure::input(format!("{}: {e}", out.display())))?;
    let mut json = report_json(evals, comparisons, verdict);
    if let Some(u) = unknown_labels {
        json["unknown_labels"] = u.clone();
    }
    json["runtime"] = casetag_transformer::runtime_report();
    let p = out.join("report.json");
    std::fs::write(&p, serde_json::to_string_pretty(&json).unwrap_or_default())
        .map_err(|e| Failure::internal(format!("{}: {e}", p.display())))?;
    let html = casetag_engine::report_html::render(
        evals,
        comparisons,
        verdict,
        &format!("casetag evaluation: {}", data.display()),
    );
    let p = out.join("report.html");
    std::fs::write(&p, html).map_err(|e| Failure::internal(format!("{}: {e}", p.display())))?;
    progress::note(&format!(
        "wrote {}/report.json and report.html",
        out.display()
    ));
    Ok(())
}
