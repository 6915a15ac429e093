//! One module per subcommand.

pub mod eval;
pub mod models;
pub mod monitor;
pub mod prepare;
pub mod review;
pub mod serve;
pub mod tag;
pub mod tagged_file;
pub mod train;

use std::path::Path;

use casetag_engine::Example;

use crate::Failure;

/// `SRC=DST` pairs that rename source columns to label columns (l1/l2/l3),
/// e.g. `category=l1` for BANKING77.
pub fn parse_label_columns(v: &[String]) -> Result<Vec<(String, String)>, Failure> {
    v.iter()
        .map(|s| {
            let (a, b) = s.split_once('=').ok_or_else(|| {
                Failure::input(format!("--label-column '{s}': expected SRC=l1|l2|l3"))
            })?;
            if !matches!(b, "l1" | "l2" | "l3") {
                return Err(Failure::input(format!(
                    "--label-column '{s}': target must be l1, l2 or l3"
                )));
            }
            Ok((a.to_string(), b.to_string()))
        })
        .collect()
}

/// Load a labelled table as engine examples, skipping rows with empty text
/// (reported on stderr with their row numbers).
pub fn load_examples(
    path: &Path,
    label_columns: &[(String, String)],
) -> Result<(Vec<Example>, polars::prelude::DataFrame, Vec<usize>), Failure> {
    let (cases, extra) = casetag_data::load_cases(path, label_columns)?;
    let mut out = Vec::with_capacity(cases.len());
    let mut kept = Vec::with_capacity(cases.len());
    let mut empty = Vec::new();
    for (i, c) in cases.into_iter().enumerate() {
        if c.text.trim().is_empty() {
            empty.push(c.row);
            continue;
        }
        kept.push(i);
        out.push(Example {
            text: c.text,
            label: c.label,
            row: c.row,
        });
    }
    if !empty.is_empty() {
        let shown: Vec<String> = empty.iter().take(10).map(|r| r.to_string()).collect();
        eprintln!(
            "warning: {}: skipped {} row(s) with empty text (rows {}{})",
            path.display(),
            empty.len(),
            shown.join(", "),
            if empty.len() > 10 { ", ..." } else { "" }
        );
    }
    Ok((out, extra, kept))
}

/// Print a line on stdout. A closed pipe (`casetag models list | head -1`)
/// ends the output quietly instead of panicking like `println!`.
pub fn say(line: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}
