//! Training orchestration: labels -> label space -> backend fit ->
//! calibration and thresholds on validation -> a verified bundle on disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use casetag_baseline::BaselineParams;
use casetag_core::bundle::{now_rfc3339, Bundle, BundleWriter, Calibration, DataHasher, Manifest};
use casetag_core::text::TextPipeline;
use casetag_core::{Classifier, LabelSpace, TagPath, Taxonomy, Transcript};
use casetag_transformer::TransformerParams;

use crate::backend::{Backend, FitData};
use crate::calibrate::{
    ece_at, fit_level_temperatures, fit_temperature, fit_thresholds, DecisionParams, OosDetector,
};
use crate::decide::{Decider, Judging, Scores};
use crate::eval::{evaluate_logits, EvalRow};
use crate::fusion::{Fusion, FusionInfo};
use crate::oos_meta::{MetaDetector, MetaInputs, MetaParams};
use crate::{EngineError, Result};

/// One labelled case; `row` is its 1-based row in the source file for errors.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub text: String,
    pub label: Option<TagPath>,
    pub row: usize,
}

#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// The backend's kind ([`crate::backend::REGISTRY`]).
    pub kind: String,
    /// Bundle id; defaults to `<kind>-<data hash prefix>`.
    pub id: Option<String>,
    pub taxonomy: Option<Taxonomy>,
    pub baseline: BaselineParams,
    pub transformer: TransformerParams,
    /// Encoder for the transformer: a local directory or `hf:OWNER/NAME`.
    pub encoder: Option<String>,
    pub decision: DecisionParams,
    /// Share of the training rows held out for validation when no
    /// validation file is given.
    pub val_fraction: f64,
    pub seed: u64,
    pub overwrite: bool,
    /// Minimum out-of-scope training rows to learn an explicit OOS class.
    pub min_oos_rows: usize,
    /// Transformer only: pool with a lexical model ([`crate::fusion`]).
    pub fusion: Fusion,
    /// Transformer with lexical fusion: take the lexical model from this
    /// baseline bundle (trained on the same rows) instead of fitting one.
    pub lexical_from: Option<PathBuf>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            kind: casetag_baseline::KIND.to_string(),
            id: None,
            taxonomy: None,
            baseline: BaselineParams::default(),
            transformer: TransformerParams::default(),
            encoder: None,
            decision: DecisionParams::default(),
            val_fraction: 0.1,
            seed: 42,
            overwrite: false,
            min_oos_rows: 10,
            fusion: Fusion::default(),
            lexical_from: None,
        }
    }
}

/// The casetag build (version and git commit) that trains bundles: recorded
/// in each manifest as `build`, and part of the default id.
pub const BUILD: &str = env!("CASETAG_BUILD");

/// Feed each row's text and label to `h` (the training data hash and the
/// default id digest rows the same way).
fn hash_rows(h: &mut DataHasher, rows: &[Example]) {
    for r in rows {
        h.update(&r.text);
        h.update(&r.label.as_ref().map(|l| l.to_string()).unwrap_or_default());
    }
}

/// The id a bundle gets without `--id`: the kind and a digest of everything
/// that makes bundles differ, so two bundles share an id only when they
/// were trained alike: the training and validation rows, every setting of
/// the run (hyper-parameters, seed, encoder, decision targets, taxonomy)
/// and the build ([`BUILD`]: version and git commit).
fn default_id(
    backend: &dyn Backend,
    data_hash: &str,
    val_rows: &[Example],
    cfg: &TrainConfig,
) -> String {
    let mut h = DataHasher::default();
    h.update(data_hash);
    hash_rows(&mut h, val_rows);
    let params = backend.settings(cfg);
    h.update(&format!(
        "{params} {:?} {:?} {} {} {} {}",
        cfg.decision,
        cfg.taxonomy.as_ref().map(|t| t.to_yaml()),
        cfg.val_fraction,
        cfg.seed,
        cfg.min_oos_rows,
        BUILD
    ));
    format!("{}-{}", backend.kind(), &h.finish()[..12])
}

/// Check every label against the taxonomy; one error lists up to 10 rows.
pub fn validate_labels(tax: &Taxonomy, rows: &[Example], what: &str) -> Result<()> {
    let mut bad = Vec::new();
    let mut total = 0;
    for r in rows {
        if let Some(l) = &r.label {
            if let Err(e) = tax.resolve(l) {
                total += 1;
                if bad.len() < 10 {
                    bad.push(format!("row {}: {e}", r.row));
                }
            }
        }
    }
    if total > 0 {
        return Err(EngineError::Input(format!(
            "{what}: {total} row(s) with labels not in the taxonomy: {}{}",
            bad.join("; "),
            if total > bad.len() { "; ..." } else { "" }
        )));
    }
    Ok(())
}

/// Deterministic stratified hold-out: `fraction` of each class (at least one
/// row when a class has three or more) goes to validation.
fn stratified_holdout(
    rows: Vec<Example>,
    fraction: f64,
    seed: u64,
) -> (Vec<Example>, Vec<Example>) {
    let mut by: BTreeMap<Option<TagPath>, Vec<Example>> = BTreeMap::new();
    for r in rows {
        by.entry(r.label.clone()).or_default().push(r);
    }
    let (mut tr, mut va) = (Vec::new(), Vec::new());
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for (_, mut group) in by {
        // Reproducible for a seed.
        crate::shuffle(&mut group, &mut state);
        let mut k = (group.len() as f64 * fraction).round() as usize;
        if k == 0 && group.len() >= 3 {
            k = 1;
        }
        let rest = group.split_off(k);
        va.extend(group);
        tr.extend(rest);
    }
    (tr, va)
}

/// Indices of at most `cap` rows per class, spread evenly over each
/// class's rows, in their original order.
fn cap_per_class(targets: &[usize], cap: usize) -> Vec<usize> {
    let mut by: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &t) in targets.iter().enumerate() {
        by.entry(t).or_default().push(i);
    }
    let mut keep: Vec<usize> = by
        .into_values()
        .flat_map(|rows| {
            let n = rows.len();
            let take = n.min(cap);
            (0..take).map(move |j| rows[j * n / take])
        })
        .collect();
    keep.sort_unstable();
    keep
}

/// For each level above the deepest, map every output to its level node
/// (the OOS class, when present, gets its own extra index).
pub fn level_maps(tax: &Taxonomy, ls: &LabelSpace) -> Vec<Vec<usize>> {
    let mut maps = Vec::new();
    for k in 1..tax.depth() {
        let nodes = tax.level_nodes(k);
        let pos: BTreeMap<usize, usize> = nodes.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let extra_shallow = nodes.len();
        let mut m: Vec<usize> = (0..ls.n_paths)
            .map(|c| {
                let lin = tax.lineage(tax.leaf(c));
                // A path shallower than k keeps its own deepest node's bucket
                // at this level: it gets one shared "not this deep" index.
                lin.get(k - 1).map(|n| pos[n]).unwrap_or(extra_shallow)
            })
            .collect();
        if ls.oos_class {
            m.push(extra_shallow + 1);
        }
        maps.push(m);
    }
    maps
}

/// The baseline bundle `--lexical-from` names, checked to be a baseline
/// trained on the same rows with the same taxonomy, with its id. Loaded
/// before the transformer is fitted, so a wrong bundle is refused at once,
/// not after the fit.
pub(crate) fn lexical_from(
    dir: &std::path::Path,
    fit: &FitData<'_>,
) -> Result<(casetag_baseline::BaselineModel, String)> {
    let bundle = Bundle::open(dir)?;
    let man = &bundle.manifest;
    let refuse =
        |why: String| EngineError::Input(format!("--lexical-from {}: {why}", dir.display()));
    if man.kind != casetag_baseline::KIND {
        return Err(refuse(format!(
            "a baseline bundle is needed, this one is '{}'",
            man.kind
        )));
    }
    if man.training_data_hash != fit.data_hash {
        return Err(refuse(
            "trained on other rows (its training data hash differs); the lexical model must be trained on the same training rows"
                .into(),
        ));
    }
    if &man.label_space != fit.label_space || bundle.taxonomy.raw() != fit.taxonomy.raw() {
        return Err(refuse(
            "its taxonomy or label space differs from this training run's".into(),
        ));
    }
    let b = casetag_baseline::BaselineModel::load(dir, fit.id)
        .map_err(|e| EngineError::Baseline(format!("{}: {e}", dir.display())))?;
    Ok((b, man.id.clone()))
}

/// The lexical model a transformer is pooled with ([`crate::fusion`]):
/// `given` (from [`lexical_from`]) or fitted on the same rows; then the
/// weight chosen on validation. `None` (with a note) when there are no
/// validation rows to choose it on.
pub(crate) fn lexical_evidence(
    cfg: &TrainConfig,
    given: Option<(casetag_baseline::BaselineModel, String)>,
    m: &casetag_transformer::TransformerModel,
    fit: &FitData<'_>,
    progress: &dyn Fn(&str),
) -> Result<Option<(casetag_baseline::BaselineModel, FusionInfo)>> {
    if fit.val.is_empty() {
        progress("lexical fusion skipped: no labelled validation rows to weigh the models on");
        return Ok(None);
    }
    let (b, source) = match given {
        Some(g) => g,
        None => {
            // Its parameters were checked with the transformer's
            // (`Backend::check`), before anything was fitted.
            progress("lexical fusion: training the lexical model on the same rows");
            let b = casetag_baseline::fit(
                &cfg.baseline,
                fit.texts,
                fit.targets,
                fit.label_space,
                fit.id,
                progress,
            )
            .map_err(|e| EngineError::Baseline(e.to_string()))?;
            (b, "trained".to_string())
        }
    };
    let cases: Vec<Transcript> = fit
        .val
        .iter()
        .map(|p| Transcript::new(p.0.to_string()))
        .collect();
    let err = |e: casetag_core::ClassifierError| {
        EngineError::Internal(format!("validation prediction: {e}"))
    };
    let rows = |s: Vec<casetag_core::LevelScores>| -> Vec<Vec<f32>> {
        s.into_iter().map(|s| s.logits).collect()
    };
    let zt = rows(m.predict(&cases).map_err(err)?);
    let zb = rows(b.predict(&cases).map_err(err)?);
    let targets: Vec<usize> = fit.val.iter().map(|p| p.1).collect();
    let Some(info) = FusionInfo::choose(&zt, &zb, &targets, &source) else {
        return Ok(None);
    };
    progress(&format!(
        "lexical fusion: transformer weight {:.2} (validation NLL {:.4}; transformer alone {:.4}, lexical alone {:.4})",
        info.weight, info.val_nll, info.val_nll_transformer, info.val_nll_lexical
    ));
    Ok(Some((b, info)))
}

/// Train a model and write its bundle to `out`. Returns the manifest.
pub fn train(
    cfg: &TrainConfig,
    train_rows: Vec<Example>,
    val_rows: Option<Vec<Example>>,
    out: &Path,
    progress: &dyn Fn(&str),
) -> Result<Manifest> {
    let started = Instant::now();
    let backend = crate::backend::backend(&cfg.kind)?;
    backend.check(cfg)?;
    // The model learns from text prepared exactly as the engine will
    // prepare it at inference (a no-op for text `load_cases` prepared).
    let pipeline = TextPipeline::default();
    let prepare = |mut rows: Vec<Example>| {
        use rayon::prelude::*;
        rows.par_iter_mut()
            .with_min_len(256)
            .for_each(|r| r.text = pipeline.prepare(&r.text).text);
        rows
    };
    let train_rows = prepare(train_rows);
    let val_rows = val_rows.map(prepare);
    if train_rows.is_empty() {
        return Err(EngineError::Input("training data has no rows".into()));
    }
    let languages = casetag_core::lang::count(train_rows.iter().map(|r| r.text.as_str()));
    let taxonomy = match &cfg.taxonomy {
        Some(t) => t.clone(),
        None => {
            let labels: Vec<TagPath> = train_rows
                .iter()
                .chain(val_rows.iter().flatten())
                .filter_map(|r| r.label.clone())
                .collect();
            if labels.is_empty() {
                return Err(EngineError::Input(
                    "training data has no labelled rows (columns l1/l2/l3 are empty)".into(),
                ));
            }
            Taxonomy::infer(&labels)?
        }
    };
    validate_labels(&taxonomy, &train_rows, "training data")?;
    if let Some(v) = &val_rows {
        validate_labels(&taxonomy, v, "validation data")?;
    }
    let mut hasher = DataHasher::default();
    hash_rows(&mut hasher, &train_rows);
    let data_hash = hasher.finish();
    let (train_rows, val_rows) = match val_rows {
        Some(v) => (train_rows, v),
        None => stratified_holdout(train_rows, cfg.val_fraction, cfg.seed),
    };

    let n_oos = train_rows.iter().filter(|r| r.label.is_none()).count();
    let label_space = LabelSpace {
        n_paths: taxonomy.n_paths(),
        oos_class: n_oos >= cfg.min_oos_rows,
    };
    // Rows labelled at an internal node are not a class; they are skipped
    // for fitting (counted) but still evaluated.
    let target_of = |r: &Example| -> Option<usize> {
        match &r.label {
            Some(l) => taxonomy.class_of(l),
            None => label_space.target(None),
        }
    };
    let mut texts = Vec::new();
    let mut targets = Vec::new();
    let mut skipped_partial = 0;
    for r in &train_rows {
        match target_of(r) {
            Some(t) => {
                texts.push(r.text.as_str());
                targets.push(t);
            }
            None if r.label.is_some() => skipped_partial += 1,
            None => {}
        }
    }
    if texts.is_empty() {
        return Err(EngineError::Input(
            "no training row has a trainable label".into(),
        ));
    }
    let val_pairs: Vec<(&str, usize)> = val_rows
        .iter()
        .filter_map(|r| target_of(r).map(|t| (r.text.as_str(), t)))
        .collect();
    progress(&format!(
        "training {} on {} rows ({} classes{}, {} validation rows{})",
        backend.kind(),
        texts.len(),
        label_space.n_paths,
        if label_space.oos_class {
            " + out-of-scope"
        } else {
            ""
        },
        val_rows.len(),
        if skipped_partial > 0 {
            format!(", {skipped_partial} rows labelled above leaf level skipped")
        } else {
            String::new()
        }
    ));
    let kind_name = backend.kind();
    let id = cfg
        .id
        .clone()
        .unwrap_or_else(|| default_id(backend, &data_hash, &val_rows, cfg));
    let fitted = backend.fit(
        cfg,
        &FitData {
            texts: &texts,
            targets: &targets,
            val: &val_pairs,
            label_space: &label_space,
            taxonomy: &taxonomy,
            data_hash: &data_hash,
            id: &id,
        },
        progress,
    )?;
    let hyper = fitted.hyper_parameters();
    let fit_s = started.elapsed().as_secs_f64();

    // Calibration and thresholds on validation.
    progress("calibrating on validation data");
    let val_cases: Vec<Transcript> = val_rows
        .iter()
        .map(|r| Transcript::new(r.text.clone()))
        .collect();
    let want_detector = !label_space.oos_class
        && cfg.decision.oos_detector == OosDetector::Meta
        && MetaDetector::applicable(label_space.n_paths);
    let val_err = |e: casetag_core::ClassifierError| {
        EngineError::Internal(format!("validation prediction: {e}"))
    };
    let (val_logits, val_emb): (Vec<Vec<f32>>, Option<Vec<Vec<f32>>>) = if val_cases.is_empty() {
        (Vec::new(), None)
    } else {
        let embedded = if want_detector {
            fitted
                .classifier()
                .predict_embedded(&val_cases)
                .map_err(val_err)?
        } else {
            None
        };
        match embedded {
            Some((s, e)) => (s.into_iter().map(|s| s.logits).collect(), Some(e)),
            None => (
                fitted
                    .classifier()
                    .predict(&val_cases)
                    .map_err(val_err)?
                    .into_iter()
                    .map(|s| s.logits)
                    .collect(),
                None,
            ),
        }
    };
    // What a model that embeds keeps of its training rows, class-spread:
    // the memory new tags are later learned against (`train --from --add`)
    // and the out-of-scope detector's nearest-neighbour memory.
    let memory = match fitted.embeds() {
        Some(m) => {
            let keep = cap_per_class(
                &targets,
                MetaParams::default().per_class(label_space.n_paths),
            );
            // The fit kept the training embeddings (frozen), or the states
            // below the layers it trained (fine-tuned at f32), and gives
            // them; otherwise (int8, or states too large to keep) the kept
            // rows are embedded again.
            let x = match m.training_embeddings(&keep)? {
                Some(x) => x,
                None => {
                    progress(&format!(
                        "keeping a memory of {} training rows: embedding them",
                        keep.len()
                    ));
                    let fit_texts: Vec<&str> = keep.iter().map(|&i| texts[i]).collect();
                    m.embed(&fit_texts)?.concat()
                }
            };
            Some(casetag_transformer::Memory {
                dim: x.len() / keep.len().max(1),
                x,
                y: keep.iter().map(|&i| targets[i] as u32).collect(),
            })
        }
        None => None,
    };
    // The learned out-of-scope detector, for models that embed and were
    // trained without out-of-scope rows.
    let detector = match (&memory, val_emb) {
        (Some(memory), Some(val_emb)) => {
            let mp = MetaParams::default();
            let (fit_x, fit_y) = (&memory.x, &memory.y);
            let (mut val_x, mut val_y) = (Vec::new(), Vec::new());
            for (r, e) in val_rows.iter().zip(&val_emb) {
                if let Some(t) = target_of(r) {
                    val_x.extend_from_slice(e);
                    val_y.push(t as u32);
                }
            }
            let inputs = MetaInputs {
                d: val_emb.first().map_or(0, Vec::len),
                k: label_space.n_paths,
                fit_x,
                fit_y,
                val_x: &val_x,
                val_y: &val_y,
            };
            // The detector is an improvement, not a requirement: when it
            // cannot be fitted the model keeps the confidence cut.
            match MetaDetector::fit(&inputs, &mp, progress).and_then(|det| {
                let (z, zb) = det.scores_both(&val_emb)?;
                Ok((det, z, zb))
            }) {
                Ok(fitted) => Some(fitted),
                Err(e) => {
                    let msg =
                        format!("out-of-scope detector not fitted ({e}); using the confidence cut");
                    tracing::warn!("{msg}");
                    progress(&msg);
                    None
                }
            }
        }
        _ => None,
    };
    let (cal_logits, cal_targets): (Vec<Vec<f32>>, Vec<usize>) = val_rows
        .iter()
        .zip(&val_logits)
        .filter_map(|(r, l)| target_of(r).map(|t| (l.clone(), t)))
        .unzip();
    let temperature = fit_temperature(&cal_logits, &cal_targets);
    let mut decider = Decider::new(
        taxonomy.clone(),
        label_space.clone(),
        temperature,
        Default::default(),
    );
    let truth: Vec<Option<TagPath>> = val_rows.iter().map(|r| r.label.clone()).collect();
    // The detector's logit beside each row's logits; the batch rule's
    // logits: the validation rows judged as one batch.
    let (val_scores, batch_det) = match &detector {
        None => (val_logits.into_iter().map(Scores::from).collect(), None),
        Some((_, z, zb)) => (Scores::with_detector(val_logits, z), Some(zb.as_slice())),
    };
    decider.level_temperatures = fit_level_temperatures(&decider, &val_scores, &truth);
    let calibration = Calibration {
        temperature,
        ece_before: Some(ece_at(&cal_logits, &cal_targets, 1.0)),
        ece_after: Some(ece_at(&cal_logits, &cal_targets, temperature)),
        level_temperatures: decider.level_temperatures.clone(),
    };
    let thresholds = fit_thresholds(&decider, &val_scores, &truth, batch_det, &cfg.decision);
    decider.thresholds = thresholds.clone();
    let eval_rows: Vec<EvalRow> = val_rows
        .iter()
        .map(|r| EvalRow {
            label: r.label.clone(),
            slices: Vec::new(),
        })
        .collect();
    let val_report = evaluate_logits(
        &decider,
        Judging::PerCase,
        &id,
        kind_name,
        &val_scores,
        &eval_rows,
        None,
    );
    let mut vm = serde_json::to_value(&val_report.summary).unwrap();
    vm["fit_seconds"] = serde_json::json!(fit_s);
    vm["train_rows"] = serde_json::json!(texts.len());
    for (k, v) in fitted.validation_notes() {
        vm[k] = v;
    }
    vm["oos_detector"] = serde_json::json!(match (&detector, label_space.oos_class) {
        (_, true) => "class",
        (Some(_), false) => "meta",
        (None, false) => "msp",
    });

    // A sample of the validation answers: what `serve` compares its recent
    // answers with (drift gauges).
    let mut reference = crate::drift::Tagged::default();
    let step = val_rows.len().div_ceil(crate::drift::REFERENCE_ROWS).max(1);
    for (r, d) in val_rows.iter().zip(&val_report.decisions).step_by(step) {
        reference.push(d, r.text.chars().count());
    }
    let writer = BundleWriter::new(out)?;
    fitted.save(writer.dir())?;
    let sample =
        serde_json::to_vec(&reference).map_err(|e| EngineError::Internal(e.to_string()))?;
    std::fs::write(writer.dir().join(crate::drift::REFERENCE_FILE), sample)
        .map_err(|e| EngineError::Internal(format!("{}: {e}", crate::drift::REFERENCE_FILE)))?;
    if let Some((det, _, _)) = &detector {
        det.save(writer.dir())?;
    }
    if let Some(m) = &memory {
        m.save(writer.dir())
            .map_err(|e| EngineError::Transformer(e.to_string()))?;
    }
    let manifest = Manifest {
        format: 0,
        id,
        kind: kind_name.into(),
        created: now_rfc3339(),
        taxonomy: String::new(),
        training_data_hash: data_hash,
        label_space,
        hyper_parameters: hyper,
        validation_metrics: vm,
        calibration,
        thresholds: serde_json::to_value(&thresholds).unwrap(),
        files: BTreeMap::new(),
        text: pipeline,
        build: Some(BUILD.to_string()),
        taxonomy_version: None,
        taxonomy_sha256: None,
        languages,
        parent: None,
    };
    finish(
        writer,
        manifest,
        &taxonomy,
        cfg.overwrite,
        started,
        progress,
    )
}

/// Seal the bundle `writer` holds and say how long writing it took.
pub(crate) fn finish(
    writer: BundleWriter,
    manifest: Manifest,
    taxonomy: &Taxonomy,
    overwrite: bool,
    started: Instant,
    progress: &dyn Fn(&str),
) -> Result<Manifest> {
    let out = writer.dest().to_path_buf();
    let m = writer.finish(manifest, taxonomy, overwrite)?;
    progress(&format!(
        "wrote {} in {:.1}s",
        out.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdout_is_stratified_and_deterministic() {
        let rows: Vec<Example> = (0..100)
            .map(|i| Example {
                text: format!("t{i}"),
                label: Some(TagPath::new(if i % 4 == 0 { "a" } else { "b" }, None, None)),
                row: i + 1,
            })
            .collect();
        let (tr, va) = stratified_holdout(rows.clone(), 0.2, 7);
        assert_eq!(tr.len() + va.len(), 100);
        assert_eq!(
            va.iter()
                .filter(|r| r.label.as_ref().unwrap().l1 == "a")
                .count(),
            5
        );
        let (_, va2) = stratified_holdout(rows, 0.2, 7);
        assert_eq!(va, va2);
    }

    #[test]
    fn cap_per_class_spreads_and_keeps_order() {
        // Class 0 has 10 rows, class 1 has 3.
        let t: Vec<usize> = (0..13).map(|i| usize::from(i >= 10)).collect();
        let keep = cap_per_class(&t, 4);
        assert_eq!(keep, vec![0, 2, 5, 7, 10, 11, 12]);
        assert_eq!(cap_per_class(&t, 100).len(), 13);
    }

    #[test]
    fn label_errors_list_rows() {
        let tax = Taxonomy::from_yaml_str("nodes: [{id: a, children: [{id: a1}]}]").unwrap();
        let rows: Vec<Example> = (0..15)
            .map(|i| Example {
                text: "x".into(),
                label: Some(TagPath::new(
                    "a",
                    Some(if i < 3 { "a1" } else { "zz" }),
                    None,
                )),
                row: i + 2,
            })
            .collect();
        let e = validate_labels(&tax, &rows, "train.csv")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("train.csv: 12 row(s)"), "{e}");
        assert!(e.contains("row 5: unknown l2 label 'zz'"), "{e}");
        assert!(!e.contains("row 15:"), "only 10 rows listed: {e}");
    }

    #[test]
    fn level_maps_cover_uneven_depth() {
        let tax = Taxonomy::from_yaml_str(
            "nodes: [{id: a, children: [{id: a1, children: [{id: x}, {id: y}]}, {id: a2}]}, {id: b}]",
        )
        .unwrap();
        let ls = LabelSpace {
            n_paths: tax.n_paths(),
            oos_class: true,
        };
        let m = level_maps(&tax, &ls);
        assert_eq!(m.len(), 2);
        // classes: x, y, a2, b, OOS
        assert_eq!(m[0], vec![0, 0, 0, 1, 3]);
        assert_eq!(m[1], vec![0, 0, 1, 2, 3]);
    }
}
