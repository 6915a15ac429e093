//! Evaluation: the SPEC's report keys, per-class tables, calibration and
//! coverage curves, slices, and paired comparisons between models.

use std::collections::BTreeMap;

use casetag_core::metrics::{
    accuracy, auroc, bootstrap_delta_ci, coverage_curve, ece, ece_floor, hierarchical_f1, macro_f1,
    mcnemar_exact, micro_f1, per_class, reliability, ClassStats, ReliabilityBin,
};
use casetag_core::TagPath;
use serde::Serialize;

use crate::decide::{Decider, Decision, Judging, Scores};

/// Ground truth for one evaluated row, with its slice values.
#[derive(Debug, Clone, Default)]
pub struct EvalRow {
    pub label: Option<TagPath>,
    /// (column, value) pairs for slicing.
    pub slices: Vec<(String, String)>,
}

/// Name of the built-in slice by transcript length.
pub const LENGTH_SLICE: &str = "length";

/// Name of the slice by length in a transformer's tokens (reports that
/// evaluate one).
pub const TOKENS_SLICE: &str = "tokens";

/// Each text's length quartile over `texts`, as a slice value: `q1 ≤ A
/// words`, `q2 A+1-B words`, `q3 B+1-C words`, `q4 > C words`, where A, B
/// and C are the 25th, 50th and 75th percentiles of the word counts
/// (whitespace-separated tokens of the prepared text). Long multi-turn
/// transcripts are what an encoder with a token limit reads only in part,
/// so every report breaks its metrics down this way.
pub fn length_quartiles(texts: &[&str]) -> Vec<String> {
    let counts: Vec<usize> = texts.iter().map(|t| t.split_whitespace().count()).collect();
    quartiles(&counts, "words")
}

/// Each count's quartile over `counts`, as a slice value naming `unit`
/// (see [`length_quartiles`]).
pub fn quartiles(counts: &[usize], unit: &str) -> Vec<String> {
    let mut sorted = counts.to_vec();
    sorted.sort_unstable();
    let pct = |p: usize| {
        sorted
            .get((sorted.len().saturating_sub(1) * p) / 100)
            .copied()
            .unwrap_or(0)
    };
    let (a, b, c) = (pct(25), pct(50), pct(75));
    counts
        .iter()
        .map(|&n| match n {
            n if n <= a => format!("q1 ≤ {a} {unit}"),
            n if n <= b => format!("q2 {}-{b} {unit}", a + 1),
            n if n <= c => format!("q3 {}-{c} {unit}", b + 1),
            _ => format!("q4 > {c} {unit}"),
        })
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct LevelMetrics {
    pub accuracy: f64,
    pub macro_f1: f64,
    pub micro_f1: f64,
    pub n: usize,
    /// Expected calibration error (15 bins) of the top path's calibrated
    /// confidence at this level against its correctness at this level, on
    /// the in-scope rows labelled this deep.
    pub ece: f64,
    /// The ECE a perfectly calibrated model with the same confidences would
    /// show on as many rows (mean over 200 simulated draws of the outcomes):
    /// what the split's size alone gives.
    pub ece_floor: f64,
    /// The 90th percentile of those draws: an `ece` above it is unlikely to
    /// be sampling noise.
    pub ece_floor_p90: f64,
}

/// Simulated draws behind [`LevelMetrics::ece_floor`].
const ECE_FLOOR_DRAWS: usize = 200;

/// The report.json entry for one model (SPEC keys; optional ones omitted).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub id: String,
    pub kind: String,
    pub n: usize,
    pub levels: BTreeMap<String, LevelMetrics>,
    pub path_accuracy: f64,
    pub hierarchical_f1: f64,
    pub ece: f64,
    /// ECE of the same predictions before temperature scaling.
    pub ece_uncalibrated: f64,
    pub in_scope_accuracy: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oos_recall: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oos_precision: Option<f64>,
    /// AUROC of the out-of-scope score (out-of-scope rows against in-scope
    /// ones), independent of where the cut lies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oos_auroc: Option<f64>,
    /// How out of scope was judged: `per_case`, `batch` (`--batch-novelty`)
    /// or `stream` (`--stream-novelty`).
    pub oos_judging: Judging,
    pub coverage: f64,
    pub selective_accuracy: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput_cases_per_s: Option<f64>,
    pub n_in_scope: usize,
    pub n_out_of_scope: usize,
    /// Depth of the decided answer -> share of in-scope rows.
    pub depth_distribution: BTreeMap<String, f64>,
    /// For a model made by adding tags to another: that model and the
    /// taxonomy diff (from its manifest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<casetag_core::bundle::Parent>,
}

/// A confused pair at one level.
#[derive(Debug, Clone, Serialize)]
pub struct Confusion {
    pub truth: String,
    pub predicted: String,
    pub count: usize,
}

/// Metrics for one value of a slice column.
#[derive(Debug, Clone, Serialize)]
pub struct SliceMetrics {
    pub column: String,
    pub value: String,
    pub n: usize,
    pub levels: BTreeMap<String, f64>,
    pub path_accuracy: f64,
    pub in_scope_accuracy: f64,
}

/// Everything computed for one model on one data set.
#[derive(Debug, Clone, Serialize)]
pub struct ModelEval {
    pub summary: Summary,
    pub per_class: Vec<ClassStats>,
    pub reliability: Vec<ReliabilityBin>,
    pub coverage_curve: Vec<(f64, f64)>,
    pub confusions: BTreeMap<String, Vec<Confusion>>,
    pub slices: Vec<SliceMetrics>,
    /// Per level, per row: raw prediction correct? (`None` when the row has
    /// no label at that level). Used for paired comparisons.
    #[serde(skip)]
    pub correct: BTreeMap<String, Vec<Option<bool>>>,
    #[serde(skip)]
    pub decisions: Vec<Decision>,
}

/// A paired comparison of two models at one level.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub a: String,
    pub b: String,
    pub level: String,
    /// accuracy(b) - accuracy(a).
    pub delta_accuracy: f64,
    pub ci95: [f64; 2],
    pub mcnemar_p: f64,
    pub n: usize,
}

fn lname(k: usize) -> String {
    format!("l{k}")
}

/// Evaluate decisions made from `logits` against `rows`.
pub fn evaluate_logits(
    decider: &Decider,
    judging: Judging,
    id: &str,
    kind: &str,
    scores: &[Scores],
    rows: &[EvalRow],
    throughput: Option<f64>,
) -> ModelEval {
    let decisions: Vec<Decision> = scores
        .iter()
        .map(|l| decider.decide_judged(l, 0, judging))
        .collect();
    let mut uncal = decider.clone();
    uncal.temperature = 1.0;
    uncal.level_temperatures.clear();
    let raw_conf: Vec<f64> = scores
        .iter()
        .map(|l| {
            *uncal
                .decide_judged(l, 0, judging)
                .confidence
                .last()
                .unwrap() as f64
        })
        .collect();
    let mut e = evaluate_decisions(
        decider,
        id,
        kind,
        decisions,
        Some(&raw_conf),
        rows,
        throughput,
    );
    e.summary.oos_judging = judging;
    e
}

/// Evaluate already-made decisions.
pub fn evaluate_decisions(
    decider: &Decider,
    id: &str,
    kind: &str,
    decisions: Vec<Decision>,
    uncalibrated_conf: Option<&[f64]>,
    rows: &[EvalRow],
    throughput: Option<f64>,
) -> ModelEval {
    let depth = decider.taxonomy.depth();
    let in_scope: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].label.is_some())
        .collect();
    let oos_rows: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].label.is_none())
        .collect();

    let mut levels = BTreeMap::new();
    let mut confusions = BTreeMap::new();
    let mut correct = BTreeMap::new();
    for k in 1..=depth {
        let mut t = Vec::new();
        let mut p = Vec::new();
        let mut corr = vec![None; rows.len()];
        let (mut level_conf, mut level_ok) = (Vec::new(), Vec::new());
        for &i in &in_scope {
            let truth = rows[i].label.as_ref().unwrap();
            if let Some(tk) = truth.level(k) {
                let pk = decisions[i].top_path.level(k).unwrap_or("-");
                corr[i] = Some(tk == pk);
                level_conf.push(f64::from(
                    decisions[i].confidence.get(k - 1).copied().unwrap_or(0.0),
                ));
                level_ok.push(tk == pk);
                t.push(tk.to_string());
                p.push(pk.to_string());
            }
        }
        if t.is_empty() {
            continue;
        }
        let mut pairs: BTreeMap<(String, String), usize> = BTreeMap::new();
        for (a, b) in t.iter().zip(&p) {
            if a != b {
                *pairs.entry((a.clone(), b.clone())).or_default() += 1;
            }
        }
        let mut conf: Vec<Confusion> = pairs
            .into_iter()
            .map(|((truth, predicted), count)| Confusion {
                truth,
                predicted,
                count,
            })
            .collect();
        conf.sort_by(|a, b| b.count.cmp(&a.count).then(a.truth.cmp(&b.truth)));
        conf.truncate(10);
        confusions.insert(lname(k), conf);
        let (ece_floor, ece_floor_p90) = ece_floor(&level_conf, 15, ECE_FLOOR_DRAWS, k as u64);
        levels.insert(
            lname(k),
            LevelMetrics {
                accuracy: accuracy(&t, &p),
                macro_f1: macro_f1(&t, &p),
                micro_f1: micro_f1(&t, &p),
                n: t.len(),
                ece: ece(&level_conf, &level_ok, 15),
                ece_floor,
                ece_floor_p90,
            },
        );
        correct.insert(lname(k), corr);
    }

    // Full-path views over in-scope rows.
    let mut truth_paths = Vec::new();
    let mut pred_paths = Vec::new();
    let mut h_truth = Vec::new();
    let mut h_pred = Vec::new();
    let mut conf = Vec::new();
    let mut conf_raw = Vec::new();
    let mut ok = Vec::new();
    let mut exact = 0usize;
    let mut covered = 0usize;
    let mut covered_ok = 0usize;
    let mut depth_hist: BTreeMap<String, usize> = BTreeMap::new();
    for &i in &in_scope {
        let truth = rows[i].label.as_ref().unwrap();
        let d = &decisions[i];
        let path_ok = &d.top_path == truth;
        truth_paths.push(truth.to_string());
        pred_paths.push(d.top_path.to_string());
        h_truth.push(
            truth
                .ids()
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        );
        h_pred.push(
            d.tag
                .as_ref()
                .filter(|_| !d.out_of_scope)
                .map(|t| t.ids().iter().map(|s| s.to_string()).collect())
                .unwrap_or_default(),
        );
        conf.push(*d.confidence.last().unwrap() as f64);
        if let Some(u) = uncalibrated_conf {
            conf_raw.push(u[i]);
        }
        ok.push(path_ok);
        if !d.out_of_scope && d.tag.as_ref() == Some(truth) {
            exact += 1;
        }
        if d.full_depth() {
            covered += 1;
            covered_ok += path_ok as usize;
        }
        let key = if d.out_of_scope {
            "out_of_scope".to_string()
        } else {
            d.depth.to_string()
        };
        *depth_hist.entry(key).or_default() += 1;
    }
    let n_in = in_scope.len().max(1) as f64;
    let (oos_recall, oos_precision) = if oos_rows.is_empty() {
        (None, None)
    } else {
        let hit = oos_rows
            .iter()
            .filter(|&&i| decisions[i].out_of_scope)
            .count();
        let declared = decisions.iter().filter(|d| d.out_of_scope).count();
        (
            Some(hit as f64 / oos_rows.len() as f64),
            Some(if declared > 0 {
                hit as f64 / declared as f64
            } else {
                0.0
            }),
        )
    };
    let score = |ix: &[usize]| -> Vec<f64> {
        ix.iter()
            .map(|&i| f64::from(decisions[i].oos_score))
            .collect()
    };
    let oos_auroc = auroc(&score(&oos_rows), &score(&in_scope));
    let summary = Summary {
        id: id.to_string(),
        kind: kind.to_string(),
        n: rows.len(),
        levels,
        path_accuracy: accuracy(&truth_paths, &pred_paths),
        hierarchical_f1: hierarchical_f1(&h_truth, &h_pred),
        ece: ece(&conf, &ok, 15),
        ece_uncalibrated: if conf_raw.is_empty() {
            ece(&conf, &ok, 15)
        } else {
            ece(&conf_raw, &ok, 15)
        },
        in_scope_accuracy: exact as f64 / n_in,
        oos_recall,
        oos_precision,
        oos_auroc,
        oos_judging: Judging::PerCase,
        coverage: covered as f64 / n_in,
        selective_accuracy: if covered > 0 {
            covered_ok as f64 / covered as f64
        } else {
            0.0
        },
        throughput_cases_per_s: throughput,
        n_in_scope: in_scope.len(),
        n_out_of_scope: oos_rows.len(),
        depth_distribution: depth_hist
            .into_iter()
            .map(|(k, v)| (k, v as f64 / n_in))
            .collect(),
        parent: None,
    };

    // Slices.
    let mut groups: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        for (c, v) in &r.slices {
            groups.entry((c.clone(), v.clone())).or_default().push(i);
        }
    }
    let slices = groups
        .into_iter()
        .map(|((column, value), idx)| {
            let ins: Vec<usize> = idx
                .iter()
                .copied()
                .filter(|&i| rows[i].label.is_some())
                .collect();
            let mut lv = BTreeMap::new();
            for (k, corr) in &correct {
                let v: Vec<bool> = ins.iter().filter_map(|&i| corr[i]).collect();
                if !v.is_empty() {
                    lv.insert(
                        k.clone(),
                        v.iter().filter(|b| **b).count() as f64 / v.len() as f64,
                    );
                }
            }
            let m = ins.len().max(1) as f64;
            SliceMetrics {
                column,
                value,
                n: idx.len(),
                levels: lv,
                path_accuracy: ins
                    .iter()
                    .filter(|&&i| Some(&decisions[i].top_path) == rows[i].label.as_ref())
                    .count() as f64
                    / m,
                in_scope_accuracy: ins
                    .iter()
                    .filter(|&&i| !decisions[i].out_of_scope && decisions[i].tag == rows[i].label)
                    .count() as f64
                    / m,
            }
        })
        .collect();

    ModelEval {
        summary,
        per_class: per_class(&truth_paths, &pred_paths),
        reliability: reliability(&conf, &ok, 10),
        coverage_curve: coverage_curve(&conf, &ok),
        confusions,
        slices,
        correct,
        decisions,
    }
}

/// Paired comparisons for every pair of models at every shared level.
pub fn compare(models: &[ModelEval], resamples: usize, seed: u64) -> Vec<Comparison> {
    let mut out = Vec::new();
    for i in 0..models.len() {
        for j in (i + 1)..models.len() {
            let (a, b) = (&models[i], &models[j]);
            for (level, ca) in &a.correct {
                let Some(cb) = b.correct.get(level) else {
                    continue;
                };
                let (va, vb): (Vec<bool>, Vec<bool>) = ca
                    .iter()
                    .zip(cb)
                    .filter_map(|(x, y)| Some(((*x)?, (*y)?)))
                    .unzip();
                if va.is_empty() {
                    continue;
                }
                let acc = |v: &[bool]| v.iter().filter(|x| **x).count() as f64 / v.len() as f64;
                let (lo, hi) = bootstrap_delta_ci(&va, &vb, resamples, seed);
                out.push(Comparison {
                    a: a.summary.id.clone(),
                    b: b.summary.id.clone(),
                    level: level.clone(),
                    delta_accuracy: acc(&vb) - acc(&va),
                    ci95: [lo, hi],
                    mcnemar_p: mcnemar_exact(&va, &vb),
                    n: va.len(),
                });
            }
        }
    }
    out
}

/// report.json as the SPEC describes it, with extra detail alongside.
/// The whole `report.json`; `gate` is the release gate's verdict (`null`
/// when no gate was given).
pub fn report_json(
    models: &[ModelEval],
    comparisons: &[Comparison],
    gate: Option<&crate::gate::GateVerdict>,
) -> serde_json::Value {
    serde_json::json!({
        "models": models.iter().map(|m| serde_json::to_value(&m.summary).unwrap()).collect::<Vec<_>>(),
        "comparisons": comparisons,
        "gate": gate,
        "details": models.iter().map(|m| serde_json::json!({
            "id": m.summary.id,
            "per_class": m.per_class,
            "reliability": m.reliability,
            "coverage_curve": m.coverage_curve,
            "confusions": m.confusions,
            "slices": m.slices,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_quartiles_split_by_word_count() {
        let texts: Vec<String> = (1..=8).map(|n| vec!["w"; n].join(" ")).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let q = length_quartiles(&refs);
        // Percentiles of 1..=8 (nearest rank below): 2, 4, 6.
        assert_eq!(q[0], "q1 ≤ 2 words");
        assert_eq!(q[1], "q1 ≤ 2 words");
        assert_eq!(q[2], "q2 3-4 words");
        assert_eq!(q[5], "q3 5-6 words");
        assert_eq!(q[7], "q4 > 6 words");
        assert!(length_quartiles(&[]).is_empty());
    }
    use crate::decide::Thresholds;
    use casetag_core::{LabelSpace, Taxonomy};

    fn decider() -> Decider {
        let t = Taxonomy::from_yaml_str(
            "nodes: [{id: a, children: [{id: a1, children: [{id: x}, {id: y}]}]}, {id: b}]",
        )
        .unwrap();
        let ls = LabelSpace {
            n_paths: 3,
            oos_class: false,
        };
        Decider::new(
            t,
            ls,
            1.0,
            Thresholds {
                level: vec![0.6; 3],
                min_margin: 0.0,
                oos_min_l1: 0.5,
                ..Thresholds::default()
            },
        )
    }

    fn lg(p: [f32; 3]) -> Scores {
        p.iter().map(|x| x.ln()).collect::<Vec<_>>().into()
    }

    #[test]
    fn report_keys_follow_definitions() {
        let d = decider();
        let x = TagPath::new("a", Some("a1"), Some("x"));
        let y = TagPath::new("a", Some("a1"), Some("y"));
        let b = TagPath::new("b", None, None);
        let rows = vec![
            EvalRow {
                label: Some(x.clone()),
                slices: vec![("region".into(), "EU".into())],
            },
            EvalRow {
                label: Some(x.clone()),
                slices: vec![("region".into(), "US".into())],
            },
            EvalRow {
                label: Some(y.clone()),
                slices: vec![("region".into(), "EU".into())],
            },
            EvalRow {
                label: Some(b.clone()),
                slices: vec![],
            },
            EvalRow {
                label: None,
                slices: vec![],
            },
        ];
        let logits = vec![
            lg([0.9, 0.05, 0.05]), // x, confident, full depth
            lg([0.5, 0.45, 0.05]), // x raw, backs off to a/a1
            lg([0.8, 0.15, 0.05]), // predicts x, truth y: wrong at l3
            lg([0.05, 0.05, 0.9]), // b, full depth (depth 1)
            lg([0.3, 0.25, 0.45]), // OOS row: l1 conf 0.55 -> not declared OOS? 0.55>=0.5
        ];
        let e = evaluate_logits(&d, Judging::PerCase, "m", "baseline", &logits, &rows, None);
        let s = &e.summary;
        assert_eq!(s.n, 5);
        assert_eq!(s.n_in_scope, 4);
        assert!((s.levels["l1"].accuracy - 1.0).abs() < 1e-12);
        // l3 only for rows 0..3: correct 2 of 3.
        assert!((s.levels["l3"].accuracy - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.levels["l3"].n, 3);
        // Per-level ECE: rows 0..3 at L3 fall in three bins, so it is the
        // mean gap between each confidence and its correctness (1, 1, 0).
        let c3: Vec<f64> = (0..3)
            .map(|i| f64::from(e.decisions[i].confidence[2]))
            .collect();
        let want = ((1.0 - c3[0]) + (1.0 - c3[1]) + c3[2]) / 3.0;
        assert!(
            (s.levels["l3"].ece - want).abs() < 1e-6,
            "{} vs {want}",
            s.levels["l3"].ece
        );
        assert!((s.path_accuracy - 0.75).abs() < 1e-12);
        // exact decisions: row0 and row3 -> 2/4.
        assert!((s.in_scope_accuracy - 0.5).abs() < 1e-12);
        // full depth: rows 0, 2, 3 -> coverage 3/4, selective 2/3.
        assert!((s.coverage - 0.75).abs() < 1e-12);
        assert!((s.selective_accuracy - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.oos_recall, Some(0.0));
        assert_eq!(s.oos_precision, Some(0.0));
        let auc = s.oos_auroc.expect("an out-of-scope row gives an AUROC");
        assert!((0.0..=1.0).contains(&auc), "{auc}");
        // Slices: EU has rows 0 and 2 -> l3 accuracy 0.5.
        let eu = e.slices.iter().find(|x| x.value == "EU").unwrap();
        assert!((eu.levels["l3"] - 0.5).abs() < 1e-12);
        let json = report_json(std::slice::from_ref(&e), &[], None);
        assert!(json["models"][0]["levels"]["l2"]["macro_f1"].is_number());

        // Without OOS rows the OOS keys are omitted.
        let e2 = evaluate_logits(
            &d,
            Judging::PerCase,
            "m",
            "baseline",
            &logits[..4],
            &rows[..4],
            None,
        );
        let j = serde_json::to_value(&e2.summary).unwrap();
        assert!(j.get("oos_recall").is_none());
    }

    #[test]
    fn comparison_is_paired() {
        let d = decider();
        let x = TagPath::new("a", Some("a1"), Some("x"));
        let rows: Vec<EvalRow> = (0..40)
            .map(|_| EvalRow {
                label: Some(x.clone()),
                slices: vec![],
            })
            .collect();
        let good: Vec<Scores> = (0..40).map(|_| lg([0.9, 0.05, 0.05])).collect();
        let bad: Vec<Scores> = (0..40)
            .map(|i| {
                if i < 20 {
                    lg([0.05, 0.9, 0.05])
                } else {
                    lg([0.9, 0.05, 0.05])
                }
            })
            .collect();
        let a = evaluate_logits(&d, Judging::PerCase, "a", "baseline", &bad, &rows, None);
        let b = evaluate_logits(&d, Judging::PerCase, "b", "baseline", &good, &rows, None);
        let c = compare(&[a, b], 500, 3);
        let l3 = c.iter().find(|c| c.level == "l3").unwrap();
        assert!((l3.delta_accuracy - 0.5).abs() < 1e-12);
        assert!(l3.ci95[0] > 0.0);
        // 20 discordant pairs all one way: p = 2 * 0.5^20.
        assert!((l3.mcnemar_p - 2.0 * 0.5f64.powi(20)).abs() < 1e-15);
    }
}
