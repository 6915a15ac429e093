use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use casetag_core::Transcript;
use casetag_engine::eval::{compare, evaluate_logits, report_json, EvalRow, ModelEval};
use casetag_engine::load_model;
use casetag_engine::train::validate_labels;
use clap::Parser;
use serde::Deserialize;

use crate::{progress, CmdResult, Failure};

/// Evaluate one or more models on the same labelled table. Writes
/// REPORT_DIR/report.json (SPEC keys, pairwise comparisons with bootstrap
/// intervals and McNemar p-values) and a self-contained report.html.
/// With several models, the first is the reference (champion) for --gate.
#[derive(Parser)]
pub struct Args {
    /// Model bundle directory (repeat to compare models side by side).
    #[arg(long = "model", required = true)]
    models: Vec<PathBuf>,
    /// Labelled table (any supported format).
    #[arg(long)]
    data: PathBuf,
    /// Output directory for report.json and report.html.
    #[arg(long)]
    out: PathBuf,
    /// Pass-through column to break every metric down by (repeatable).
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
    /// are judged case by case (with a note).
    #[arg(long)]
    batch_novelty: bool,
    /// Bootstrap resamples for the comparison intervals.
    #[arg(long, default_value_t = 2000)]
    resamples: usize,
}

/// The release gate.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    /// Metric path in report.json (e.g. `levels.l1.accuracy`) -> minimum.
    #[serde(default)]
    pub min: BTreeMap<String, f64>,
    /// Level (`l1`..`l3`) or `slice` -> largest allowed accuracy drop
    /// against the reference model (0.01 = one point).
    #[serde(default)]
    pub max_regression: BTreeMap<String, f64>,
    /// Minimum coverage (full-depth answers at the bundle's target precision).
    #[serde(default)]
    pub min_coverage: Option<f64>,
}

fn lookup(v: &serde_json::Value, path: &str) -> Option<f64> {
    path.split('.').try_fold(v, |v, k| v.get(k))?.as_f64()
}

/// Check candidates (all but the first model when there are several) against
/// the gate. Returns the failed checks as readable lines.
pub fn check_gate(gate: &Gate, models: &[ModelEval]) -> Vec<String> {
    let mut failed = Vec::new();
    let reference = if models.len() > 1 {
        Some(&models[0])
    } else {
        None
    };
    let candidates = if models.len() > 1 {
        &models[1..]
    } else {
        models
    };
    for m in candidates {
        let s = serde_json::to_value(&m.summary).unwrap_or_default();
        let id = &m.summary.id;
        for (k, min) in &gate.min {
            match lookup(&s, k) {
                Some(v) if v >= *min => {}
                Some(v) => failed.push(format!("{id}: {k} = {v:.4} is below the minimum {min}")),
                None => failed.push(format!("{id}: {k} is not in the report")),
            }
        }
        if let Some(min) = gate.min_coverage {
            if m.summary.coverage < min {
                failed.push(format!(
                    "{id}: coverage = {:.4} is below the minimum {min}",
                    m.summary.coverage
                ));
            }
        }
        let Some(r) = reference else { continue };
        for (level, max) in &gate.max_regression {
            if level == "slice" {
                for cs in &m.slices {
                    if let Some(rs) = r
                        .slices
                        .iter()
                        .find(|x| x.column == cs.column && x.value == cs.value)
                    {
                        let drop = rs.in_scope_accuracy - cs.in_scope_accuracy;
                        if drop > *max {
                            failed.push(format!(
                                "{id}: slice {}={} in-scope accuracy drops {:.2} points against {} (max {:.2})",
                                cs.column, cs.value, 100.0 * drop, r.summary.id, 100.0 * max
                            ));
                        }
                    }
                }
                continue;
            }
            match (r.summary.levels.get(level), m.summary.levels.get(level)) {
                (Some(a), Some(b)) => {
                    let drop = a.accuracy - b.accuracy;
                    if drop > *max {
                        failed.push(format!(
                            "{id}: {level} accuracy drops {:.2} points against {} (max {:.2})",
                            100.0 * drop,
                            r.summary.id,
                            100.0 * max
                        ));
                    }
                }
                _ => failed.push(format!("{id}: level {level} is not in both reports")),
            }
        }
    }
    failed
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
            Some(parse_gate(&t).map_err(|e| Failure::input(format!("{}: {e}", p.display())))?)
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
    let (examples, extra, kept) = super::load_examples(&a.data, &labels)?;
    if examples.is_empty() {
        return Err(Failure::input(format!(
            "{}: no rows to evaluate",
            a.data.display()
        )));
    }
    let slices = slice_values(&extra, &a.slices, &kept)?;
    let rows: Vec<EvalRow> = examples
        .iter()
        .zip(slices)
        .map(|(e, s)| EvalRow {
            label: e.label.clone(),
            slices: s,
        })
        .collect();
    let cases: Vec<Transcript> = examples
        .iter()
        .map(|e| Transcript::new(e.text.clone()))
        .collect();
    let mut evals = Vec::new();
    for mp in &a.models {
        let mut m = load_model(mp)?;
        if a.batch_novelty {
            if let Err(e) = m.enable_batch_novelty() {
                progress::note(&format!("{e}; judged case by case"));
            }
        }
        // Reject labels the model's taxonomy does not know before spending
        // time on inference.
        validate_labels(
            &m.decider.taxonomy,
            &examples,
            &format!("{} (model '{}')", a.data.display(), m.id()),
        )?;
        progress::note(&format!("evaluating {} on {} rows", m.id(), cases.len()));
        let pb = crate::progress::bar(Some(cases.len() as u64), m.id());
        let t0 = Instant::now();
        let mut logits = Vec::with_capacity(cases.len());
        let batch = if m.batch_novelty {
            super::tag::CHUNK_ROWS
        } else {
            1024
        };
        for chunk in cases.chunks(batch) {
            logits.extend(m.scores(chunk)?);
            pb.inc(chunk.len() as u64);
        }
        pb.finish_and_clear();
        let tput = cases.len() as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        evals.push(evaluate_logits(
            &m.decider,
            m.id(),
            m.kind(),
            &logits,
            &rows,
            Some(tput),
        ));
    }
    let comparisons = compare(&evals, a.resamples, 42);
    write_reports(&a.out, &evals, &comparisons, &a.data)?;
    let report = report_json(&evals, &comparisons);
    super::say(
        serde_json::to_string_pretty(
            &serde_json::json!({"models": report["models"], "comparisons": report["comparisons"]}),
        )
        .unwrap_or_default(),
    );
    if let Some(g) = gate {
        let failed = check_gate(&g, &evals);
        if !failed.is_empty() {
            eprintln!("release gate FAILED ({} check(s)):", failed.len());
            for f in &failed {
                eprintln!("  - {f}");
            }
            return Err(Failure {
                code: 3,
                message: format!(
                    "release gate failed: {} check(s) did not pass",
                    failed.len()
                ),
            });
        }
        progress::note("release gate passed");
    }
    Ok(())
}

fn parse_gate(t: &str) -> Result<Gate, String> {
    serde_yaml::from_str(t).map_err(|e| e.to_string())
}

fn write_reports(
    out: &Path,
    evals: &[ModelEval],
    comparisons: &[casetag_engine::eval::Comparison],
    data: &Path,
) -> CmdResult {
    std::fs::create_dir_all(out).map_err(|e| Failure::input(format!("{}: {e}", out.display())))?;
    let json = report_json(evals, comparisons);
    let p = out.join("report.json");
    std::fs::write(&p, serde_json::to_string_pretty(&json).unwrap_or_default())
        .map_err(|e| Failure::internal(format!("{}: {e}", p.display())))?;
    let html = casetag_engine::report_html::render(
        evals,
        comparisons,
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
