//! Evaluation metrics. Definitions follow SPEC.md; values are checked against
//! scikit-learn on fixed predictions in the tests below.

use std::collections::{BTreeMap, BTreeSet};

/// Top-1 accuracy over paired labels.
pub fn accuracy<T: PartialEq>(truth: &[T], pred: &[T]) -> f64 {
    if truth.is_empty() {
        return 0.0;
    }
    truth.iter().zip(pred).filter(|(a, b)| a == b).count() as f64 / truth.len() as f64
}

/// Per-class precision, recall, F1 and support, as scikit-learn's
/// `precision_recall_fscore_support` with `zero_division=0`, over the union
/// of labels present in truth or prediction.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClassStats {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

pub fn per_class<T: Ord + Clone + ToString>(truth: &[T], pred: &[T]) -> Vec<ClassStats> {
    let mut tp: BTreeMap<T, usize> = BTreeMap::new();
    let mut npred: BTreeMap<T, usize> = BTreeMap::new();
    let mut ntrue: BTreeMap<T, usize> = BTreeMap::new();
    for (t, p) in truth.iter().zip(pred) {
        *ntrue.entry(t.clone()).or_default() += 1;
        *npred.entry(p.clone()).or_default() += 1;
        if t == p {
            *tp.entry(t.clone()).or_default() += 1;
        }
    }
    let labels: BTreeSet<T> = ntrue.keys().chain(npred.keys()).cloned().collect();
    labels
        .into_iter()
        .map(|l| {
            let tp = *tp.get(&l).unwrap_or(&0) as f64;
            let np = *npred.get(&l).unwrap_or(&0) as f64;
            let nt = *ntrue.get(&l).unwrap_or(&0);
            let precision = if np > 0.0 { tp / np } else { 0.0 };
            let recall = if nt > 0 { tp / nt as f64 } else { 0.0 };
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            ClassStats {
                label: l.to_string(),
                precision,
                recall,
                f1,
                support: nt,
            }
        })
        .collect()
}

/// Macro-averaged F1 (unweighted mean over the union of labels).
pub fn macro_f1<T: Ord + Clone + ToString>(truth: &[T], pred: &[T]) -> f64 {
    let s = per_class(truth, pred);
    if s.is_empty() {
        return 0.0;
    }
    s.iter().map(|c| c.f1).sum::<f64>() / s.len() as f64
}

/// Micro-averaged F1. For single-label multiclass over all rows this equals
/// accuracy; it is computed from the pooled counts so the identity is checked.
pub fn micro_f1<T: Ord + Clone + ToString>(truth: &[T], pred: &[T]) -> f64 {
    let tp = truth.iter().zip(pred).filter(|(a, b)| a == b).count() as f64;
    let n = truth.len() as f64;
    if n == 0.0 {
        return 0.0;
    }
    // pooled precision = tp / n_pred, pooled recall = tp / n_true; both n here.
    let (p, r) = (tp / n, tp / n);
    if p + r == 0.0 {
        0.0
    } else {
        2.0 * p * r / (p + r)
    }
}

/// Kiritchenko hierarchical F1, micro-averaged: each side is the set of the
/// path's nodes (ancestors included); an empty prediction (out of scope or
/// abstention) contributes nothing to the predicted side.
pub fn hierarchical_f1(truth: &[Vec<String>], pred: &[Vec<String>]) -> f64 {
    let (mut inter, mut np, mut nt) = (0usize, 0usize, 0usize);
    for (t, p) in truth.iter().zip(pred) {
        let ts: BTreeSet<&String> = t.iter().collect();
        let ps: BTreeSet<&String> = p.iter().collect();
        inter += ts.intersection(&ps).count();
        np += ps.len();
        nt += ts.len();
    }
    let hp = if np > 0 {
        inter as f64 / np as f64
    } else {
        0.0
    };
    let hr = if nt > 0 {
        inter as f64 / nt as f64
    } else {
        0.0
    };
    if hp + hr == 0.0 {
        0.0
    } else {
        2.0 * hp * hr / (hp + hr)
    }
}

/// One bin of a reliability diagram.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReliabilityBin {
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    pub mean_confidence: f64,
    pub accuracy: f64,
}

/// Equal-width reliability bins over the confidence of the top prediction.
pub fn reliability(conf: &[f64], correct: &[bool], n_bins: usize) -> Vec<ReliabilityBin> {
    let mut sums = vec![(0usize, 0.0f64, 0usize); n_bins];
    for (&c, &ok) in conf.iter().zip(correct) {
        let b = ((c * n_bins as f64) as usize).min(n_bins - 1);
        sums[b].0 += 1;
        sums[b].1 += c;
        sums[b].2 += ok as usize;
    }
    sums.into_iter()
        .enumerate()
        .map(|(i, (n, s, k))| ReliabilityBin {
            lo: i as f64 / n_bins as f64,
            hi: (i + 1) as f64 / n_bins as f64,
            count: n,
            mean_confidence: if n > 0 { s / n as f64 } else { 0.0 },
            accuracy: if n > 0 { k as f64 / n as f64 } else { 0.0 },
        })
        .collect()
}

/// Area under the ROC curve of a score that should be higher on `pos`
/// than on `neg`: the chance that a random positive outscores a random
/// negative, ties counting half (the Mann–Whitney statistic, from ranks in
/// O(n log n)). `None` when either side is empty.
pub fn auroc(pos: &[f64], neg: &[f64]) -> Option<f64> {
    if pos.is_empty() || neg.is_empty() {
        return None;
    }
    let mut all: Vec<(f64, bool)> = pos
        .iter()
        .map(|&s| (s, true))
        .chain(neg.iter().map(|&s| (s, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Sum of the positives' (1-based, tie-averaged) ranks.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        let mid = (i + 1 + j) as f64 / 2.0;
        rank_sum += mid * all[i..j].iter().filter(|x| x.1).count() as f64;
        i = j;
    }
    let (np, nn) = (pos.len() as f64, neg.len() as f64);
    Some((rank_sum - np * (np + 1.0) / 2.0) / (np * nn))
}

/// Expected calibration error with equal-width bins (15 is customary).
pub fn ece(conf: &[f64], correct: &[bool], n_bins: usize) -> f64 {
    let n = conf.len();
    if n == 0 {
        return 0.0;
    }
    reliability(conf, correct, n_bins)
        .iter()
        .map(|b| b.count as f64 / n as f64 * (b.mean_confidence - b.accuracy).abs())
        .sum()
}

/// The ECE (`n_bins` equal-width bins) that a perfectly calibrated model
/// with these confidences would show on as many rows: each row's outcome is
/// drawn as correct with probability equal to its confidence, `draws`
/// times. Returns the mean and the 90th percentile over the draws. An ECE
/// near the mean is what sampling alone gives on a split of this size; one
/// above the 90th percentile is unlikely to be noise.
pub fn ece_floor(conf: &[f64], n_bins: usize, draws: usize, seed: u64) -> (f64, f64) {
    if conf.is_empty() || draws == 0 {
        return (0.0, 0.0);
    }
    let mut rng = SplitMix::new(seed);
    let mut ok = vec![false; conf.len()];
    let mut eces: Vec<f64> = (0..draws)
        .map(|_| {
            for (o, &c) in ok.iter_mut().zip(conf) {
                *o = rng.unit() < c;
            }
            ece(conf, &ok, n_bins)
        })
        .collect();
    eces.sort_by(f64::total_cmp);
    let mean = eces.iter().sum::<f64>() / draws as f64;
    (mean, quantile_sorted(&eces, 0.9))
}

/// The `p` quantile (0 to 1) of ascending, non-empty `sorted`: the value at
/// the nearest index to `p · (len − 1)`.
fn quantile_sorted(sorted: &[f64], p: f64) -> f64 {
    let last = sorted.len() - 1;
    sorted[((p * last as f64).round() as usize).min(last)]
}

/// splitmix64: small, seedable, good enough for resampling and simulation.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// A generator whose state is `state` as given (its first output is
    /// [`SplitMix::mix`] of `state`).
    pub fn from_state(state: u64) -> Self {
        Self(state)
    }

    /// One splitmix64 step of `x` as a stateless 64-bit hash.
    pub fn mix(x: u64) -> u64 {
        Self::from_state(x).next_u64()
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 53 bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Coverage–accuracy curve: answer only the most confident share of cases.
/// Returns `(coverage, accuracy)` points at every distinct confidence.
pub fn coverage_curve(conf: &[f64], correct: &[bool]) -> Vec<(f64, f64)> {
    let mut idx: Vec<usize> = (0..conf.len()).collect();
    idx.sort_by(|&a, &b| conf[b].total_cmp(&conf[a]));
    let n = conf.len() as f64;
    let mut out = Vec::new();
    let mut ok = 0usize;
    for (k, &i) in idx.iter().enumerate() {
        ok += correct[i] as usize;
        let last = k + 1 == idx.len() || conf[idx[k + 1]] != conf[i];
        if last {
            out.push(((k + 1) as f64 / n, ok as f64 / (k + 1) as f64));
        }
    }
    out
}

/// Exact two-sided McNemar test on paired correctness: a binomial test on
/// the discordant pairs (as statsmodels' `mcnemar(exact=True)`).
pub fn mcnemar_exact(a_correct: &[bool], b_correct: &[bool]) -> f64 {
    let b = a_correct
        .iter()
        .zip(b_correct)
        .filter(|(a, b)| **a && !**b)
        .count();
    let c = a_correct
        .iter()
        .zip(b_correct)
        .filter(|(a, b)| !**a && **b)
        .count();
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // P(X <= k) for X ~ Bin(n, 1/2), in log space for large n.
    let ln_half_n = -(n as f64) * std::f64::consts::LN_2;
    let mut ln_choose = 0.0f64; // ln C(n, 0)
    let mut tail = 0.0f64;
    for i in 0..=k {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        tail += (ln_choose + ln_half_n).exp();
    }
    (2.0 * tail).min(1.0)
}

/// Paired bootstrap 95% interval for accuracy(b) - accuracy(a).
pub fn bootstrap_delta_ci(
    a_correct: &[bool],
    b_correct: &[bool],
    resamples: usize,
    seed: u64,
) -> (f64, f64) {
    let n = a_correct.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let d: Vec<i32> = a_correct
        .iter()
        .zip(b_correct)
        .map(|(&a, &b)| b as i32 - a as i32)
        .collect();
    let mut rng = SplitMix::new(seed);
    let mut deltas: Vec<f64> = (0..resamples)
        .map(|_| {
            let s: i64 = (0..n)
                .map(|_| d[(rng.next_u64() % n as u64) as usize] as i64)
                .sum();
            s as f64 / n as f64
        })
        .collect();
    deltas.sort_by(f64::total_cmp);
    (
        quantile_sorted(&deltas, 0.025),
        quantile_sorted(&deltas, 0.975),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_counts_pairs_and_ties() {
        assert_eq!(auroc(&[0.9, 0.8], &[0.1, 0.2]), Some(1.0));
        assert_eq!(auroc(&[0.1], &[0.9]), Some(0.0));
        assert_eq!(auroc(&[0.5], &[0.5]), Some(0.5));
        // Pairs: (0.9>0.5) (0.9>0.3) (0.4<0.5) (0.4>0.3) -> 3 of 4.
        assert_eq!(auroc(&[0.9, 0.4], &[0.5, 0.3]), Some(0.75));
        assert_eq!(auroc(&[], &[0.5]), None);
    }

    // Reference values computed with scikit-learn 1.9.1:
    //   from sklearn.metrics import f1_score
    //   t = ["a","a","b","c","c","c"]; p = ["a","b","b","c","d","a"]
    //   f1_score(t, p, average="macro", zero_division=0) -> 0.41666666666666663
    //   (labels a,b,c,d; d is absent from the truth and scores 0)
    //   f1_score(t, p, average="micro") -> 0.5
    #[test]
    fn macro_f1_with_absent_class_matches_sklearn() {
        let t = ["a", "a", "b", "c", "c", "c"];
        let p = ["a", "b", "b", "c", "d", "a"];
        assert!((macro_f1(&t, &p) - 0.416_666_666_666_666_63).abs() < 1e-12);
        assert!((micro_f1(&t, &p) - 0.5).abs() < 1e-12);
        assert!((accuracy(&t, &p) - 0.5).abs() < 1e-12);
        let pc = per_class(&t, &p);
        assert_eq!(pc.len(), 4);
        assert_eq!(pc[3].label, "d");
        assert_eq!(pc[3].support, 0);
    }

    #[test]
    fn hierarchical_f1_on_uneven_depth() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        // truth a/b/c vs pred a/b (backed off): inter 2, |P| 2, |T| 3
        // truth x (depth 1) vs pred x/y: inter 1, |P| 2, |T| 1
        // truth q/r vs pred [] (out of scope): inter 0, |P| 0, |T| 2
        // hP = 3/4, hR = 3/6, hF = 2*.75*.5/1.25 = 0.6
        let t = vec![s(&["a", "b", "c"]), s(&["x"]), s(&["q", "r"])];
        let p = vec![s(&["a", "b"]), s(&["x", "y"]), vec![]];
        assert!((hierarchical_f1(&t, &p) - 0.6).abs() < 1e-12);
    }

    // scikit-learn: Kiritchenko hF is micro-F1 over ancestor-augmented label
    // sets, so with every path expanded to its prefixes ("a", "a/b", ...):
    //   m = MultiLabelBinarizer().fit(T + P)
    //   f1_score(m.transform(T), m.transform(P), average="micro") -> 0.6875
    // (depth-1 and depth-3 leaves side by side, a back-off, an abstention and
    // an out-of-scope answer among the predictions).
    #[test]
    fn hierarchical_f1_matches_sklearn_on_uneven_depth() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let truth = vec![
            s(&["returns", "refund", "refund_missing"]),
            s(&["flat"]),
            s(&["returns", "refund", "refund_wrong"]),
            s(&["delivery", "late"]),
            s(&["returns", "return_other"]),
            s(&["delivery", "lost", "lost_courier"]),
            s(&["flat"]),
            s(&["delivery", "late"]),
        ];
        let pred = vec![
            s(&["returns", "refund"]),
            s(&["flat"]),
            s(&["returns", "refund", "refund_missing"]),
            vec![],
            s(&["returns", "return_other"]),
            s(&["delivery", "lost", "lost_courier"]),
            s(&["returns"]),
            s(&["delivery", "lost", "lost_seller"]),
        ];
        assert!((hierarchical_f1(&truth, &pred) - 0.6875).abs() < 1e-12);
    }

    #[test]
    fn ece_and_curve() {
        let conf = [0.9, 0.9, 0.6, 0.6];
        let ok = [true, false, true, true];
        // bin .9: acc .5 conf .9 -> .4 * .5; bin .6: acc 1 conf .6 -> .4 * .5
        assert!((ece(&conf, &ok, 10) - 0.4).abs() < 1e-12);
        let c = coverage_curve(&conf, &ok);
        assert_eq!(c, vec![(0.5, 0.5), (1.0, 0.75)]);
    }

    // statsmodels: mcnemar([[10, 9], [1, 5]], exact=True).pvalue -> 0.021484375
    #[test]
    fn mcnemar_matches_statsmodels() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        for (x, y, n) in [
            (true, true, 10),
            (true, false, 9),
            (false, true, 1),
            (false, false, 5),
        ] {
            for _ in 0..n {
                a.push(x);
                b.push(y);
            }
        }
        assert!((mcnemar_exact(&a, &b) - 0.021484375).abs() < 1e-12);
        assert_eq!(mcnemar_exact(&a, &a), 1.0);
    }

    #[test]
    fn ece_floor_is_what_calibrated_outcomes_give() {
        // Confidences spread over the middle bins: a calibrated model's ECE
        // on 300 rows is clearly above zero, and the floor says so.
        let conf: Vec<f64> = (0..300)
            .map(|i| 0.55 + 0.4 * (i % 10) as f64 / 10.0)
            .collect();
        let (mean, p90) = ece_floor(&conf, 15, 200, 7);
        assert!(mean > 0.01 && mean < 0.08, "{mean}");
        assert!(p90 >= mean);
        // Same seed, same answer; more rows, a lower floor.
        assert_eq!(ece_floor(&conf, 15, 200, 7), (mean, p90));
        let many: Vec<f64> = conf.iter().cycle().take(30_000).copied().collect();
        assert!(ece_floor(&many, 15, 50, 7).0 < mean / 4.0);
        // Confidences of 1 are always right: no noise at all.
        assert_eq!(ece_floor(&[1.0; 50], 15, 20, 1), (0.0, 0.0));
        assert_eq!(ece_floor(&[], 15, 20, 1), (0.0, 0.0));
    }

    #[test]
    fn bootstrap_interval_brackets_delta() {
        let a: Vec<bool> = (0..200).map(|i| i % 2 == 0).collect();
        let b: Vec<bool> = (0..200).map(|i| i % 4 != 3).collect();
        let (lo, hi) = bootstrap_delta_ci(&a, &b, 1000, 1);
        let delta = accuracy(&b, &[true; 200]) - accuracy(&a, &[true; 200]);
        assert!(lo < delta && delta < hi, "{lo} {delta} {hi}");
        assert!(lo > 0.0);
    }
}
