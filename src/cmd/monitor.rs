use std::path::{Path, PathBuf};

use casetag_data::printable;
use casetag_engine::drift::{compare, render_html, Tagged, Thresholds, REFERENCE_FILE};
use clap::Parser;

use super::tagged_file::{filter, TaggedFile};
use crate::{CmdResult, Failure};
use casetag_core::label_map::{LabelMap, MapReport};
use casetag_core::TagPath;

/// Compare a current tagged file with a reference one and say whether the
/// traffic moved: per level the label mix (Jensen–Shannon distance and PSI),
/// the confidences (normed Wasserstein), the answer depth, abstention,
/// back-off and out-of-scope rates, text length, tags that appeared or
/// vanished, and the same label mix per `--slice` value. Defaults follow
/// Evidently's conventions (JS, PSI and normed Wasserstein thresholds 0.1;
/// PSI bands 0.1 / 0.25).
///
/// Both files are tables written by `casetag tag` (CSV, Parquet, JSONL); the
/// reference can also be a model bundle: its answers on its validation rows
/// (a sample every bundle carries; no texts or slice columns).
/// Rows `tag` could not tag (`error` set) are left out and counted. Writes
/// `drift.json` and a self-contained `drift.html` into --out and prints a
/// one-line JSON summary; with --fail-on-drift, exits 3 when drift is found.
#[derive(Parser)]
pub struct Args {
    /// Reference: a tagged file (what normal looks like), or a model
    /// bundle (a directory or a registry name), whose sample of answers on
    /// its validation rows is used.
    #[arg(long)]
    reference: PathBuf,
    #[command(flatten)]
    registry: super::models::Registry,
    /// The reference was tagged with another taxonomy version: a YAML map
    /// of node ids to their new ids (`old: new` for a rename or merge,
    /// `old: [a, b]` for a split), applied to the reference's tags before
    /// comparing; split tags are compared as they are and named in a note.
    #[arg(long, value_name = "FILE")]
    label_map: Option<PathBuf>,
    /// Current tagged file (the traffic to judge).
    #[arg(long)]
    current: PathBuf,
    /// Output directory for drift.json and drift.html.
    #[arg(long)]
    out: PathBuf,
    /// Also judge the label mix per value of this column (e.g. region).
    #[arg(long, value_name = "COLUMN")]
    slice: Option<String>,
    /// Exit 3 when drift is found (for schedulers).
    #[arg(long)]
    fail_on_drift: bool,
    /// Jensen–Shannon distance at or above which a label mix drifts.
    #[arg(long, default_value_t = 0.1)]
    js: f64,
    /// PSI at or above which a label mix drifts.
    #[arg(long, default_value_t = 0.1)]
    psi: f64,
    /// Normed Wasserstein distance at or above which confidences or text
    /// lengths drift.
    #[arg(long, default_value_t = 0.1)]
    wasserstein: f64,
    /// Change of a rate (abstention, back-off, out of scope), as a share
    /// from 0 to 1, at or above which it drifts.
    #[arg(long, default_value_t = 0.05)]
    rate_change: f64,
    /// Rows a slice needs in both files to be judged.
    #[arg(long, default_value_t = 200)]
    min_slice_rows: usize,
    /// The text column, for text length.
    #[arg(long, default_value = "text", value_name = "NAME")]
    text_column: String,
}

pub fn run(a: Args) -> CmdResult {
    for (flag, v) in [
        ("--js", a.js),
        ("--psi", a.psi),
        ("--wasserstein", a.wasserstein),
    ] {
        if !(v.is_finite() && v > 0.0) {
            return Err(Failure::input(format!(
                "{flag} {v}: a threshold must be a positive number"
            )));
        }
    }
    if !(a.rate_change > 0.0 && a.rate_change < 1.0) {
        return Err(Failure::input(format!(
            "--rate-change {}: a share between 0 and 1 (0.05 = 5 points)",
            a.rate_change
        )));
    }
    let (mut reference, ref_untagged) = if a.reference.is_file() {
        load(&a.reference, &a)?
    } else {
        let spec = a.reference.to_string_lossy();
        (bundle_reference(&a.registry.resolve(&spec)?)?, 0)
    };
    let mut map_notes = Vec::new();
    if let Some(p) = &a.label_map {
        let map = LabelMap::load(p).map_err(|e| Failure::input(e.message()))?;
        map_notes = map_reference(&map, &mut reference, p);
    }
    let (current, cur_untagged) = load(&a.current, &a)?;
    let t = Thresholds {
        js: a.js,
        psi: a.psi,
        wasserstein: a.wasserstein,
        rate_points: a.rate_change,
        min_rows: a.min_slice_rows,
    };
    let mut report = compare(&reference, &current, &t);
    report.notes.extend(map_notes);
    for (path, n) in [(&a.reference, ref_untagged), (&a.current, cur_untagged)] {
        if n > 0 {
            report.notes.push(format!(
                "{}: {n} untagged row(s) (error set) left out",
                path.display()
            ));
        }
    }
    std::fs::create_dir_all(&a.out)
        .map_err(|e| Failure::input(format!("--out {}: {e}", a.out.display())))?;
    let json = serde_json::to_string_pretty(&report).map_err(Failure::internal)?;
    let write = |name: &str, body: &str| {
        let p = a.out.join(name);
        std::fs::write(&p, body).map_err(|e| Failure::input(format!("{}: {e}", p.display())))
    };
    write("drift.json", &json)?;
    let title = format!(
        "casetag drift: {} against {}",
        a.current.display(),
        a.reference.display()
    );
    write("drift.html", &render_html(&report, &title))?;
    super::say(printable(
        &serde_json::json!({
            "drift": report.drift,
            "judged": report.judged,
            "findings": report.findings,
            "reference_rows": report.reference_rows,
            "current_rows": report.current_rows,
            "out": a.out,
        })
        .to_string(),
    ));
    if a.fail_on_drift && report.drift {
        return Err(Failure {
            code: 3,
            message: format!(
                "drift found: {} finding(s); see {}",
                report.findings.len(),
                a.out.join("drift.html").display()
            ),
        });
    }
    Ok(())
}

/// The answers on its validation rows a bundle carries (a sample of up to
/// 2,000, without texts or slice columns).
fn bundle_reference(dir: &Path) -> Result<Tagged, Failure> {
    let path = dir.join(REFERENCE_FILE);
    let bytes = std::fs::read(&path).map_err(|e| {
        Failure::input(format!(
            "--reference {}: no {REFERENCE_FILE} in this bundle ({e}); bundles trained before \
             it was recorded have none: tag the model's validation split and pass that file",
            dir.display()
        ))
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Failure::input(format!("{}: not a reference sample: {e}", path.display())))
}

/// A tagged file's columns for the comparison, and how many untagged rows
/// were left out.
fn load(path: &Path, a: &Args) -> Result<(Tagged, usize), Failure> {
    let f = TaggedFile::read(path)?;
    let keep = f.answered()?;
    let untagged = keep.iter().filter(|k| !**k).count();
    let strings = |n: &str| -> Result<Vec<Option<String>>, Failure> {
        Ok(filter(f.strings(f.output(n)?)?, &keep))
    };
    let labels = [strings("l1")?, strings("l2")?, strings("l3")?];
    let float = |n: &str| -> Result<Vec<Option<f64>>, Failure> {
        Ok(filter(f.floats(f.output(n)?)?, &keep))
    };
    let conf = [float("conf_l1")?, float("conf_l2")?, float("conf_l3")?];
    let depth = filter(f.ints(f.output("depth")?)?, &keep);
    let out_of_scope = filter(f.bools(f.output("out_of_scope")?)?, &keep);
    let text_chars = match f.input(&a.text_column, "") {
        Ok(c) => Some(filter(
            f.strings(c)?
                .iter()
                .map(|t| t.as_ref().map(|t| t.chars().count() as f64))
                .collect(),
            &keep,
        )),
        Err(_) => None,
    };
    let slice = match &a.slice {
        None => None,
        Some(s) => Some(filter(f.strings(f.input(s, "--slice ")?)?, &keep)),
    };
    Ok((
        Tagged {
            labels,
            conf,
            depth,
            out_of_scope,
            text_chars,
            slice,
        },
        untagged,
    ))
}

/// Map the reference's tags to the current taxonomy; the notes say what
/// was mapped and which split tags were compared as they are.
fn map_reference(map: &LabelMap, r: &mut Tagged, path: &Path) -> Vec<String> {
    let n = r.labels[0].len();
    let mut paths: Vec<Option<TagPath>> = (0..n)
        .map(|i| {
            let l1 = r.labels[0][i].clone()?;
            Some(TagPath {
                l1,
                l2: r.labels[1][i].clone(),
                l3: r.labels[2][i].clone(),
            })
        })
        .collect();
    let (rep, _) = MapReport::map_all(map, &mut paths);
    for (i, p) in paths.into_iter().enumerate() {
        if let Some(p) = p {
            r.labels[0][i] = Some(p.l1);
            r.labels[1][i] = p.l2;
            r.labels[2][i] = p.l3;
        }
    }
    let mut notes = vec![format!(
        "--label-map {}: {} reference row(s) relabelled",
        path.display(),
        rep.mapped.values().sum::<usize>()
    )];
    for (id, k) in &rep.unmapped {
        notes.push(format!(
            "--label-map: '{id}' was split into {}; its {k} reference row(s) are compared as they are",
            map.split_targets(id).unwrap_or_default().join(", ")
        ));
    }
    notes
}
