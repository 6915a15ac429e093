use std::path::PathBuf;

use clap::Parser;

use crate::{progress, CmdResult, Failure};

/// Read a case table (CSV/Parquet/JSONL, case- or turn-level), normalise and
/// mask the text, drop empty and duplicate texts, validate labels and write
/// stratified Parquet splits plus stats.json.
#[derive(Parser)]
pub struct Args {
    /// Input table (.csv, .parquet, .jsonl/.ndjson).
    #[arg(long)]
    input: PathBuf,
    /// Output directory for train/val/test.parquet, taxonomy.yaml, stats.json.
    #[arg(long)]
    out: PathBuf,
    /// Taxonomy YAML; inferred from the labels when omitted.
    #[arg(long)]
    taxonomy: Option<PathBuf>,
    /// Train, validation and test shares.
    #[arg(long, default_value = "0.8,0.1,0.1")]
    split: String,
    /// Seed for the stratified split.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Drop rows with labels not in the taxonomy instead of failing.
    #[arg(long)]
    drop_unknown: bool,
    /// Keep e-mails, phone numbers, card numbers and order ids unmasked.
    #[arg(long)]
    no_mask: bool,
    /// Rename a source column to a label column, e.g. `category=l1` (repeatable).
    #[arg(long = "label-column", value_name = "SRC=l1|l2|l3")]
    label_columns: Vec<String>,
}

pub fn run(a: Args) -> CmdResult {
    let parts: Vec<f64> = a
        .split
        .split(',')
        .map(|s| s.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| {
            Failure::input(format!(
                "--split '{}': expected three numbers like 0.8,0.1,0.1",
                a.split
            ))
        })?;
    if parts.len() != 3
        || parts.iter().any(|x| *x < 0.0)
        || (parts.iter().sum::<f64>() - 1.0).abs() > 1e-6
    {
        return Err(Failure::input(format!(
            "--split '{}': expected three non-negative shares summing to 1",
            a.split
        )));
    }
    let cfg = casetag_data::PrepareConfig {
        input: a.input,
        out: a.out.clone(),
        taxonomy: a.taxonomy,
        split: [parts[0], parts[1], parts[2]],
        seed: a.seed,
        drop_unknown: a.drop_unknown,
        mask: !a.no_mask,
        label_columns: super::parse_label_columns(&a.label_columns)?,
    };
    let stats = casetag_data::prepare(&cfg)?;
    progress::note(&format!(
        "prepared {} -> {} rows ({} empty, {} duplicates, {} unknown dropped) into {}",
        stats.rows_in,
        stats.rows_out,
        stats.empty_dropped,
        stats.duplicates_dropped,
        stats.unknown_dropped,
        a.out.display()
    ));
    super::say(serde_json::to_string_pretty(&stats).unwrap_or_default());
    Ok(())
}
