//! Fitting what the decision layer needs on validation data: the softmax
//! temperature (calibration) and the per-level / per-node thresholds that
//! reach a precision target, plus the out-of-scope cut.

use std::collections::BTreeMap;

use casetag_core::metrics::ece;
use casetag_core::{softmax, TagPath};
use serde::{Deserialize, Serialize};

use crate::decide::{Decider, Scores, Thresholds};

/// How a model trained without out-of-scope rows detects them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum OosDetector {
    /// The learned leave-classes-out detector ([`crate::oos_meta`]) for
    /// models with embeddings (the transformer); `msp` for the others.
    #[default]
    Meta,
    /// A cut on the calibrated L1 confidence.
    Msp,
}

/// Knobs for deriving thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionParams {
    /// Precision each level's answers must reach on validation.
    pub target_precision: f64,
    /// Minimum top-1/top-2 margin among siblings.
    pub min_margin: f32,
    /// Without an OOS class: share of correctly answered validation cases we
    /// accept to lose to the score-based out-of-scope cut.
    pub oos_budget: f64,
    /// The same for the cut of the detector's batch judgement (`tag`/`eval
    /// --batch-novelty`). Lower than `oos_budget` by default: the validation
    /// batch holds no new kind of case, so on a real batch this cut costs
    /// more than its budget (on the BANKING77 dev hold-outs 0.01 cost
    /// 1.0-1.7 points of accuracy, 0.02 up to 2.3).
    #[serde(default = "default_batch_budget")]
    pub oos_batch_budget: f64,
    /// Predictions of a node needed on validation for a node-specific threshold.
    pub min_node_support: usize,
    /// Without an OOS class: the learned detector or the confidence cut.
    #[serde(default)]
    pub oos_detector: OosDetector,
}

fn default_batch_budget() -> f64 {
    0.01
}

impl Default for DecisionParams {
    fn default() -> Self {
        Self {
            target_precision: 0.95,
            min_margin: 0.05,
            oos_budget: 0.02,
            oos_batch_budget: default_batch_budget(),
            min_node_support: 30,
            oos_detector: OosDetector::Meta,
        }
    }
}

/// Mean negative log-likelihood of the targets under temperature `t`.
pub(crate) fn nll(logits: &[Vec<f32>], targets: &[usize], t: f32) -> f64 {
    let mut s = 0.0f64;
    for (l, &y) in logits.iter().zip(targets) {
        let p = softmax(l, t);
        s -= (p[y].max(1e-12) as f64).ln();
    }
    s / logits.len().max(1) as f64
}

/// Expected calibration error of the top prediction at temperature `t`.
pub fn ece_at(logits: &[Vec<f32>], targets: &[usize], t: f32) -> f64 {
    let mut conf = Vec::with_capacity(logits.len());
    let mut ok = Vec::with_capacity(logits.len());
    for (l, &y) in logits.iter().zip(targets) {
        let p = softmax(l, t);
        let (arg, max) = p
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a });
        conf.push(max as f64);
        ok.push(arg == y);
    }
    ece(&conf, &ok, 15)
}

/// Temperature scaling: minimise validation NLL over log-temperature with a
/// golden-section search (NLL is unimodal in T for fixed logits).
pub fn fit_temperature(logits: &[Vec<f32>], targets: &[usize]) -> f32 {
    if logits.is_empty() {
        return 1.0;
    }
    minimise_temperature(|t| nll(logits, targets, t))
}

/// The temperature in [0.05, 20] minimising `f`, by golden-section search
/// over log-temperature.
fn minimise_temperature(f: impl Fn(f32) -> f64) -> f32 {
    let f = |lt: f64| f(lt.exp() as f32);
    let (mut a, mut b) = ((0.05f64).ln(), (20.0f64).ln());
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let mut c = b - g * (b - a);
    let mut d = a + g * (b - a);
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..40 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - g * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + g * (b - a);
            fd = f(d);
        }
    }
    (((a + b) / 2.0).exp()) as f32
}

/// Per level, the temperature whose marginals fit that level best: the
/// one minimising the validation NLL of each in-scope row's true node at
/// that level (its marginal: the mass of every path through it). A single
/// temperature fits the full paths; the coarser levels' marginals sum many
/// paths and are over- or under-confident at it. The path is still decoded
/// at the decider's own temperature; these only set the confidences it
/// reports per level. A level with fewer than `MIN_LEVEL_ROWS` rows keeps
/// the decider's temperature.
pub fn fit_level_temperatures(
    decider: &Decider,
    scores: &[Scores],
    truth: &[Option<TagPath>],
) -> Vec<f32> {
    const MIN_LEVEL_ROWS: usize = 30;
    let tax = &decider.taxonomy;
    (1..=tax.depth())
        .map(|level| {
            let rows: Vec<(&[f32], usize)> = scores
                .iter()
                .zip(truth)
                .filter_map(|(s, t)| {
                    let node = tax.find(t.as_ref()?.level(level)?)?;
                    Some((decider.label_logits(s), node))
                })
                .collect();
            if rows.len() < MIN_LEVEL_ROWS {
                return decider.temperature;
            }
            minimise_temperature(|t| {
                let s: f64 = rows
                    .iter()
                    .map(|(l, node)| {
                        let (p, _) = decider.in_scope_probabilities(l, t);
                        let m: f32 = decider.classes_under(*node).iter().map(|&c| p[c]).sum();
                        -f64::from(m.max(1e-12)).ln()
                    })
                    .sum();
                s / rows.len() as f64
            })
        })
        .collect()
}

/// Smallest confidence `t` such that answers with confidence >= t reach the
/// target precision; 1.01 (never) when no such cut exists.
pub fn precision_threshold(conf: &[f32], correct: &[bool], target: f64) -> f32 {
    let mut idx: Vec<usize> = (0..conf.len()).collect();
    idx.sort_by(|&a, &b| conf[b].total_cmp(&conf[a]));
    let mut best = 1.01f32;
    let mut ok = 0usize;
    for (k, &i) in idx.iter().enumerate() {
        ok += correct[i] as usize;
        let tie_follows = k + 1 < idx.len() && conf[idx[k + 1]] == conf[i];
        if !tie_follows && ok as f64 / (k + 1) as f64 >= target {
            best = conf[i];
        }
    }
    best
}

/// Derive thresholds from validation logits and true paths (`None` = out of
/// scope). `decider` carries the taxonomy, label space and temperatures;
/// scores with a detector logit get the detector's cut.
/// `batch_det`, with the learned detector, is its batch judgement's logit for
/// the same rows (judged as one batch): it gets its own cut, `oos_batch_cut`,
/// at `oos_batch_budget` over the same correct answers.
pub fn fit_thresholds(
    decider: &Decider,
    scores: &[Scores],
    truth: &[Option<TagPath>],
    batch_det: Option<&[f32]>,
    params: &DecisionParams,
) -> Thresholds {
    let detector = scores.iter().any(|s| s.detector.is_some());
    let tax = &decider.taxonomy;
    let depth = tax.depth();
    // Decode with no thresholds at all to see raw confidences.
    let mut raw = Decider::new(
        tax.clone(),
        decider.label_space.clone(),
        decider.temperature,
        Thresholds {
            level: vec![0.0; depth],
            node: BTreeMap::new(),
            min_margin: 0.0,
            oos_prob: 2.0,
            oos_min_l1: -1.0,
            oos_detector_cut: None,
            oos_batch_cut: None,
            target_precision: params.target_precision,
        },
    );
    raw.level_temperatures = decider.level_temperatures.clone();
    let mut per_level: Vec<(Vec<f32>, Vec<bool>)> = vec![(Vec::new(), Vec::new()); depth];
    let mut per_node: BTreeMap<String, (Vec<f32>, Vec<bool>)> = BTreeMap::new();
    let mut l1_correct_conf: Vec<f32> = Vec::new();
    let mut l1_correct_det: Vec<f32> = Vec::new();
    let mut l1_correct_batch: Vec<f32> = Vec::new();
    for (i, (l, t)) in scores.iter().zip(truth).enumerate() {
        let Some(t) = t else { continue };
        let d = raw.decide(l, 0);
        let shared = d.top_path.depth().min(t.depth());
        for (k, level) in per_level.iter_mut().enumerate().take(shared) {
            let ok = d.top_path.truncate(k + 1) == t.truncate(k + 1);
            let conf = d.confidence[k];
            level.0.push(conf);
            level.1.push(ok);
            let node = d.top_path.level(k + 1).unwrap_or_default().to_string();
            let e = per_node.entry(node).or_default();
            e.0.push(conf);
            e.1.push(ok);
        }
        if d.top_path.l1 == t.l1 {
            l1_correct_conf.push(d.confidence[0]);
            if let Some(z) = l.detector {
                l1_correct_det.push(z);
            }
            if let Some(b) = batch_det.and_then(|b| b.get(i)) {
                l1_correct_batch.push(*b);
            }
        }
    }
    let level: Vec<f32> = per_level
        .iter()
        .map(|(c, ok)| precision_threshold(c, ok, params.target_precision))
        .collect();
    let node = per_node
        .into_iter()
        .filter(|(_, (c, _))| c.len() >= params.min_node_support)
        .map(|(id, (c, ok))| {
            let t = precision_threshold(&c, &ok, params.target_precision);
            (id, t)
        })
        .collect();
    // Score-based OOS: lose at most `oos_budget` of the correct L1 answers,
    // on the learned detector's logit when there is one (out of scope above
    // the cut), otherwise on the L1 confidence (out of scope below it).
    let budget = params.oos_budget;
    let highest_first = |a: &f32, b: &f32| b.total_cmp(a);
    let (oos_min_l1, oos_detector_cut, oos_batch_cut) = if decider.label_space.oos_class {
        (0.0, None, None)
    } else if detector {
        (
            0.0,
            budget_cut(&mut l1_correct_det, budget, highest_first),
            batch_det.and_then(|_| {
                budget_cut(
                    &mut l1_correct_batch,
                    params.oos_batch_budget,
                    highest_first,
                )
            }),
        )
    } else {
        let cut = budget_cut(&mut l1_correct_conf, budget, f32::total_cmp);
        (cut.unwrap_or(0.0), None, None)
    };
    Thresholds {
        target_precision: params.target_precision,
        level,
        node,
        min_margin: params.min_margin,
        oos_prob: 0.5,
        oos_min_l1,
        oos_detector_cut,
        oos_batch_cut,
    }
}

/// The cut that rejects at most `budget` of `v` when the values that sort
/// first under `worst_first` are rejected: the `floor(n * budget)`-th value
/// in that order (the last one when the budget covers everything); `None`
/// for no values.
fn budget_cut(
    v: &mut [f32],
    budget: f64,
    worst_first: impl Fn(&f32, &f32) -> std::cmp::Ordering,
) -> Option<f32> {
    v.sort_by(worst_first);
    let k = ((v.len() as f64) * budget).floor() as usize;
    v.get(k.min(v.len().saturating_sub(1))).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_recovers_overconfidence() {
        // Logits that are 3x too sharp for how often they are right.
        let mut logits = Vec::new();
        let mut targets = Vec::new();
        for i in 0..400 {
            logits.push(vec![3.0 * 2.0, 0.0, 0.0]);
            // With T=3, p(top) = e^2/(e^2+2) = 0.787: right ~79% of the time.
            targets.push(if i % 100 < 79 { 0 } else { 1 + i % 2 });
        }
        let t = fit_temperature(&logits, &targets);
        assert!((t - 3.0).abs() < 0.2, "{t}");
        assert!(ece_at(&logits, &targets, t) < ece_at(&logits, &targets, 1.0));
    }

    #[test]
    fn each_level_gets_the_temperature_its_marginals_need() {
        use casetag_core::{LabelSpace, Taxonomy};
        let tax = Taxonomy::from_yaml_str(
            "nodes: [{id: a, children: [{id: a1}, {id: a2}, {id: a3}, {id: a4}]},\n\
             {id: b, children: [{id: b1}, {id: b2}, {id: b3}, {id: b4}]}]",
        )
        .unwrap();
        let ls = LabelSpace {
            n_paths: 8,
            oos_class: false,
        };
        // The leaf a1 is right 51% of the time (its probability at T = 1 is
        // 0.513), but the L1 node a 95% of the time: the wrong leaves are
        // a1's siblings. At T = 1 the L1 marginal says 0.72, far too low.
        let (mut logits, mut truth, mut targets) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..400 {
            logits.push(vec![2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
            let (l1, leaf, c) = match i % 100 {
                0..=50 => ("a", "a1", 0),
                51..=94 => ("a", ["a2", "a3", "a4"][i % 3], 1 + i % 3),
                _ => ("b", "b1", 4),
            };
            truth.push(Some(TagPath::new(l1, Some(leaf), None)));
            targets.push(c);
        }
        let t = fit_temperature(&logits, &targets);
        assert!((t - 1.0).abs() < 0.1, "{t}");
        let mut dec = Decider::new(tax, ls, t, Thresholds::default());
        let scores: Vec<Scores> = logits.iter().cloned().map(Scores::from).collect();
        let temps = fit_level_temperatures(&dec, &scores, &truth);
        assert_eq!(temps.len(), 2);
        // e^(2/T) = 73 puts the L1 marginal at 0.95: T = 0.466.
        assert!((temps[0] - 0.466).abs() < 0.03, "{temps:?}");
        assert!((temps[1] - t).abs() < 0.05, "{temps:?}");
        dec.level_temperatures = temps;
        let d = dec.decide(&scores[0], 2);
        assert_eq!(d.top_path.to_string(), "a/a1");
        assert!((d.confidence[0] - 0.95).abs() < 0.01, "{:?}", d.confidence);
        assert!((d.confidence[1] - 0.513).abs() < 0.03, "{:?}", d.confidence);
        // The per-level alternatives report the same calibrated marginals,
        // and the best full path's probability is the deepest confidence.
        assert!((d.level_alternatives[0][0].probability - d.confidence[0]).abs() < 1e-6);
        assert!((d.alternatives[0].probability - d.confidence[1]).abs() < 1e-6);
    }

    #[test]
    fn detector_cut_spends_the_budget_on_correct_answers_only() {
        use casetag_core::{LabelSpace, Taxonomy};
        let tax = Taxonomy::from_yaml_str("nodes: [{id: a}, {id: b}, {id: c}, {id: d}]").unwrap();
        let ls = LabelSpace {
            n_paths: 4,
            oos_class: false,
        };
        let mut dec = Decider::new(tax, ls, 1.0, Thresholds::default());
        let (mut rows, mut truth) = (Vec::new(), Vec::new());
        let row = |z: f32| Scores {
            logits: vec![3.0, 0.0, 0.0, 0.0],
            detector: Some(z),
        };
        // 200 correct answers (class a) with detector logits 0.0 .. 19.9.
        for i in 0..200 {
            rows.push(row(i as f32 / 10.0));
            truth.push(Some(TagPath::new("a", None, None)));
        }
        // 50 wrong answers with very high logits: rejecting them is free,
        // so they must not move the cut.
        for _ in 0..50 {
            rows.push(row(100.0));
            truth.push(Some(TagPath::new("b", None, None)));
        }
        let p = DecisionParams {
            oos_budget: 0.05,
            oos_batch_budget: 0.05,
            ..DecisionParams::default()
        };
        let th = fit_thresholds(&dec, &rows, &truth, None, &p);
        let cut = th.oos_detector_cut.expect("a cut with the detector");
        assert!((cut - 18.9).abs() < 1e-4, "{cut}");
        assert_eq!(th.oos_min_l1, 0.0);
        assert!(th.oos_batch_cut.is_none());
        // A batch judgement's logits get their own cut over the same correct
        // answers, at their own budget.
        let batch: Vec<f32> = rows.iter().map(|r| r.detector.unwrap() - 5.0).collect();
        let thb = fit_thresholds(&dec, &rows, &truth, Some(&batch), &p);
        assert_eq!(thb.oos_detector_cut, th.oos_detector_cut);
        let bcut = thb.oos_batch_cut.expect("a batch cut");
        assert!((bcut - 13.9).abs() < 1e-4, "{bcut}");
        let p1 = DecisionParams {
            oos_batch_budget: 0.01,
            ..p.clone()
        };
        let th1 = fit_thresholds(&dec, &rows, &truth, Some(&batch), &p1);
        assert_eq!(th1.oos_detector_cut, th.oos_detector_cut);
        let bcut = th1.oos_batch_cut.expect("a batch cut");
        assert!((bcut - 14.7).abs() < 1e-4, "2 of 200 rejected: {bcut}");
        dec.thresholds = th;
        let rejected_ok = rows[..200]
            .iter()
            .filter(|r| dec.decide(r, 0).out_of_scope)
            .count();
        assert_eq!(rejected_ok, 10); // 5% of 200
        assert!(rows[200..].iter().all(|r| dec.decide(r, 0).out_of_scope));
        // Without the detector the same rows give a confidence cut instead.
        let plain: Vec<Scores> = rows.iter().map(|r| r.logits.clone().into()).collect();
        let th = fit_thresholds(&dec, &plain, &truth, Some(&batch), &p);
        assert!(th.oos_detector_cut.is_none() && th.oos_batch_cut.is_none());
    }

    #[test]
    fn precision_cut() {
        let conf = [0.99, 0.95, 0.9, 0.8, 0.7, 0.6];
        let ok = [true, true, true, false, true, false];
        assert_eq!(precision_threshold(&conf, &ok, 1.0), 0.9);
        assert_eq!(precision_threshold(&conf, &ok, 0.8), 0.7);
        assert_eq!(precision_threshold(&conf, &[false; 6], 0.5), 1.01);
    }
}
