//! The learned out-of-scope detector for models trained without
//! out-of-scope rows (`meta`, leave-classes-out).
//!
//! A model that never saw out-of-scope cases only has its scores to go on,
//! and max softmax probability alone misses most near-topic queries. This
//! detector learns what "an intent I was not trained on" looks like from the
//! training data itself: `episodes` times it hides a random set of the known
//! classes, fits a small base model (multinomial logistic regression on the
//! encoder's embeddings plus a nearest-neighbour memory) on the rest, and
//! computes [`FEATURES`] for the rest's validation rows (in scope) and for
//! the hidden classes' rows (stand-in out of scope). A class-balanced
//! logistic regression then separates "hidden class or wrong answer" from
//! "right answer" (rejecting a wrong answer costs nothing). At run time the
//! same features come from a base model fitted on every known class, and the
//! detector's logit is the out-of-scope score; the decision layer cuts it on
//! validation so that at most `--oos-budget` of the correct answers are lost.
//!
//! For batch jobs the detector also learns a *batch rule*: the same
//! features plus [`batch_novelty`], how much closer a case is to other cases
//! of the batch than to the training cases of its predicted class. Each
//! round builds a stand-in batch (the kept validation rows and, at the same
//! rate per class, hidden-class rows) to learn it from. A second, two-input
//! *smoothing rule* then weighs each case's batch-rule logit against the
//! mean logit of its [`SMOOTH_K`] nearest cases in the batch: a new kind of
//! case that recurs forms its own neighbourhood, whose members' evidence
//! adds up. It is learned on the same stand-in batches.
//!
//! Method and settings (features, 6 episodes hiding 10 of 67 intents,
//! detector C = 0.1) were chosen on BANKING77 hold-outs other than the
//! reported one; `research/oos_pseudo.py` is the Python reference
//! (`research/oos_subspace.py` for the two residual features).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use casetag_core::dot;
use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{EngineError, Result};

/// File name inside a bundle.
pub const FILE: &str = "oos_detector.bin";
const MAGIC: &[u8; 8] = b"CTOOSD1\n";

/// Detector inputs, in the order of the stored weights (sorted by name).
pub const FEATURES: [&str; 22] = [
    "cent_pred",
    "cent_pred_cn",
    "energy",
    "knn1",
    "knn1_lof",
    "knn1_other",
    "knn1_pred",
    "knn1_pred_cn",
    "knn3_pred_cn",
    "knn5mean",
    "knn_agree",
    "knn_gap",
    "logit_gap",
    "margin",
    "max_logit",
    "msp",
    "negent",
    "p2",
    "p3",
    "p_top3",
    "resid_c",
    "resid_g",
];
const NF: usize = FEATURES.len();
/// The batch rule's inputs: [`FEATURES`] and then the batch novelty.
const NB: usize = NF + 1;
/// Batch neighbours whose batch-rule logits the smoothing rule averages.
const SMOOTH_K: usize = 5;
/// Recent cases a stream judges each case against by default
/// ([`MetaDetector::scores_stream`]).
pub const STREAM_WINDOW: u32 = 2000;
/// Principal directions the residual features project out, as a share of
/// the embedding width: all memory rows (`resid_g`: 128 of 384) and each
/// class's rows (`resid_c`: 16 of 384). Chosen on the BANKING77
/// development hold-outs (`research/oos_subspace.py`).
const GLOBAL_DIRS_PER_WIDTH: usize = 3;
const CLASS_DIRS_PER_WIDTH: usize = 24;
/// [`MetaParams::class_shrink`] of newly trained detectors: chosen on the
/// BANKING77 development hold-outs, with tags added from ten examples
/// (`research/oos_addsim.py`) and without (`research/oos_subspace.py`).
const CLASS_SHRINK: f32 = 30.0;
/// Block power iterations for the principal directions.
const POWER_STEPS: usize = 30;
/// Batches larger than this take their neighbours from a fixed random
/// sample of this many rows (bounds the cost at n x 4096 dot products).
const SMOOTH_POOL: usize = 4096;

/// Settings of the detector's training. Fields missing from a stored
/// header (bundles written before they existed) take their defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetaParams {
    /// Leave-classes-out rounds.
    pub episodes: usize,
    /// Largest number of known classes hidden per round (at most 15% of them).
    pub hold: usize,
    /// Inverse L2 strength of the base logistic regression (scikit-learn's C).
    pub base_c: f64,
    /// Inverse L2 strength of the detector's logistic regression.
    pub det_c: f64,
    pub seed: u64,
    /// Training rows per class the detector keeps (and stores in the
    /// bundle as its nearest-neighbour memory).
    pub max_per_class: usize,
    /// Bound on the memory over all classes: large taxonomies keep fewer
    /// rows per class (never under 20), so training (a Gram matrix over the
    /// memory in every round) and per-request latency stay bounded.
    pub max_rows: usize,
    /// Rows' worth of the memory's pooled within-class covariance added to
    /// each class's own scatter before its principal directions (`resid_c`)
    /// are found, so a tag added from a few examples gets directions as
    /// well founded as its siblings'. 0 is each class's scatter alone (what
    /// detector files without the field were trained with).
    #[serde(default)]
    pub class_shrink: f32,
}

impl MetaParams {
    /// Rows per class to keep for `k` classes.
    pub fn per_class(&self, k: usize) -> usize {
        self.max_per_class.min((self.max_rows / k.max(1)).max(20))
    }
}

impl Default for MetaParams {
    fn default() -> Self {
        Self {
            episodes: 6,
            hold: 10,
            base_c: 10.0,
            det_c: 0.1,
            seed: 107,
            max_per_class: 300,
            max_rows: 20_000,
            class_shrink: CLASS_SHRINK,
        }
    }
}

/// Unit-length copy of a row-major matrix's rows (zero rows stay zero).
fn unit_rows(x: &[f32], d: usize) -> Vec<f32> {
    let mut out = x.to_vec();
    for r in out.chunks_mut(d) {
        let n = r.iter().map(|v| v * v).sum::<f32>().sqrt();
        if n > 0.0 {
            r.iter_mut().for_each(|v| *v /= n);
        }
    }
    out
}

fn median(v: &mut [f32]) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f32::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Keep the three largest values seen in `t` (ascending; start it at -2,
/// "no neighbour", as the reference pads).
fn push_top3(t: &mut [f32; 3], x: f32) {
    if x > t[0] {
        t[0] = x;
        t.sort_by(f32::total_cmp);
    }
}

/// The base model features are computed from: a multinomial logistic
/// regression on unit embeddings and a memory of the training rows.
#[derive(Debug, Clone, PartialEq)]
struct Base {
    d: usize,
    k: usize,
    /// d x k, row-major: logits = x W + b.
    w: Vec<f32>,
    b: Vec<f32>,
    /// n x d unit rows, and their classes.
    mem: Vec<f32>,
    mem_y: Vec<u32>,
    /// Each memory row's cosine to its nearest other memory row.
    nn_loo: Vec<f32>,
    /// k x d unit class centroids.
    cent: Vec<f32>,
    q_nn: Vec<f32>,
    q_nn3: Vec<f32>,
    q_cent: Vec<f32>,
    s_cent: Vec<f32>,
    /// Where the memory's rows lie (derived from the memory when fitted,
    /// stored with it so that loading need not derive them again).
    sub: Subspaces,
}

/// The mean of the memory's rows and its top principal directions, and the
/// same for each class's rows: a case's distance from these subspaces is
/// what the classifier never had to explain (after ViM, Wang et al. 2022).
#[derive(Debug, Clone, PartialEq)]
struct Subspaces {
    mean: Vec<f32>,
    /// Orthonormal rows, `d` wide.
    global: Vec<f32>,
    /// k x d class means.
    centre: Vec<f32>,
    /// Each class's orthonormal rows (fewer for classes with few rows when
    /// no pooled covariance is mixed in).
    class: Vec<Vec<f32>>,
}

impl Subspaces {
    /// Its arrays in the order the detector file stores them.
    fn parts(&self) -> impl Iterator<Item = &Vec<f32>> {
        [&self.mean, &self.global, &self.centre]
            .into_iter()
            .chain(&self.class)
    }

    /// `sums`: [`class_sums`] of the memory; `shrink`:
    /// [`MetaParams::class_shrink`].
    fn fit(mem: &[f32], y: &[u32], k: usize, d: usize, sums: &[f32], shrink: f32) -> Self {
        let n = y.len();
        let mean_of = |sum: &[f32], count: usize| -> Vec<f32> {
            sum.iter().map(|a| a / count.max(1) as f32).collect()
        };
        let all: Vec<usize> = (0..n).collect();
        // All rows as one class.
        let mean = mean_of(&class_sums(mem, &vec![0; n], 1, d), n);
        let global = principal_rows(mem, &all, &mean, d, d / GLOBAL_DIRS_PER_WIDTH);
        let by_class = rows_by_class(y, k);
        let centre: Vec<Vec<f32>> = by_class
            .iter()
            .zip(sums.chunks(d))
            .map(|(idx, sum)| mean_of(sum, idx.len()))
            .collect();
        let l = (d / CLASS_DIRS_PER_WIDTH).max(1);
        let class: Vec<Vec<f32>> = if shrink > 0.0 && n > 0 {
            // The pooled within-class covariance: every row around its
            // class's mean.
            let mut pooled = Array2::<f32>::zeros((d, d));
            for (idx, c) in by_class.iter().zip(&centre) {
                let a = centred(mem, idx, c, d);
                pooled += &a.t().dot(&a);
            }
            pooled *= shrink / n as f32;
            by_class
                .par_iter()
                .zip(&centre)
                .map(|(idx, c)| {
                    let a = centred(mem, idx, c, d);
                    nonzero_rows(top_rows(&(a.t().dot(&a) + &pooled), l))
                })
                .collect()
        } else {
            by_class
                .par_iter()
                .zip(&centre)
                .map(|(idx, c)| principal_rows(mem, idx, c, d, l))
                .collect()
        };
        Self {
            mean,
            global,
            centre: centre.concat(),
            class,
        }
    }

    /// (distance of `x` from its class's subspace, from the global one).
    fn residuals(&self, x: &[f32], class: usize, d: usize) -> (f32, f32) {
        let c = &self.centre[class * d..(class + 1) * d];
        (
            residual(x, c, &self.class[class], d),
            residual(x, &self.mean, &self.global, d),
        )
    }
}

/// k x d: the sum of each class's rows of `x` (`y` in `0..k`), in row order.
fn class_sums(x: &[f32], y: &[u32], k: usize, d: usize) -> Vec<f32> {
    let mut sums = vec![0f32; k * d];
    for (row, &c) in x.chunks(d).zip(y) {
        for (a, v) in sums[c as usize * d..(c as usize + 1) * d]
            .iter_mut()
            .zip(row)
        {
            *a += v;
        }
    }
    sums
}

/// The indices of each class's rows (`y` in `0..k`).
fn rows_by_class(y: &[u32], k: usize) -> Vec<Vec<usize>> {
    let mut by_class = vec![Vec::new(); k];
    for (i, &c) in y.iter().enumerate() {
        by_class[c as usize].push(i);
    }
    by_class
}

/// Length of `x - centre` once its components along the orthonormal rows
/// `basis` are removed.
fn residual(x: &[f32], centre: &[f32], basis: &[f32], d: usize) -> f32 {
    let r: Vec<f32> = x.iter().zip(centre).map(|(a, b)| a - b).collect();
    let along: f32 = basis.chunks(d).map(|b| dot(b, &r).powi(2)).sum();
    (dot(&r, &r) - along).max(0.0).sqrt()
}

/// Up to `l` orthonormal rows (`d` wide) spanning the top principal
/// directions of the rows `idx` of `x` around `centre`, by block power
/// iteration on the smaller of the covariance and the Gram matrix from a
/// fixed start, so the same rows always give the same directions. A class
/// of n rows has at most n - 1.
fn principal_rows(x: &[f32], idx: &[usize], centre: &[f32], d: usize, l: usize) -> Vec<f32> {
    let n = idx.len();
    let l = l.min(n.saturating_sub(1)).min(d);
    if l == 0 {
        return Vec::new();
    }
    let a = centred(x, idx, centre, d);
    let gram = n < d;
    let s = if gram { a.dot(&a.t()) } else { a.t().dot(&a) };
    let mut q = top_rows(&s, l);
    if gram {
        q = q.dot(&a);
        orthonormalise(&mut q);
    }
    nonzero_rows(q)
}

/// The rows `idx` of `x` (`d` wide) less `centre`, as an n x d matrix.
fn centred(x: &[f32], idx: &[usize], centre: &[f32], d: usize) -> Array2<f32> {
    let mut a = Array2::<f32>::zeros((idx.len(), d));
    for (mut row, &i) in a.outer_iter_mut().zip(idx) {
        for ((o, v), c) in row.iter_mut().zip(&x[i * d..(i + 1) * d]).zip(centre) {
            *o = v - c;
        }
    }
    a
}

/// `l` orthonormal rows spanning the top eigenvectors of the symmetric
/// positive semi-definite `s`, by block power iteration from a fixed start
/// (so the same matrix always gives the same rows).
fn top_rows(s: &Array2<f32>, l: usize) -> Array2<f32> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut q = Array2::from_shape_fn((l.min(s.nrows()), s.nrows()), |_| {
        (casetag_core::xorshift64(&mut state) >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    });
    orthonormalise(&mut q);
    for _ in 0..POWER_STEPS {
        q = q.dot(s);
        orthonormalise(&mut q);
    }
    q
}

/// The rows of `q` that are not zero, concatenated.
fn nonzero_rows(q: Array2<f32>) -> Vec<f32> {
    q.outer_iter()
        .filter(|r| r.iter().any(|&v| v != 0.0))
        .flat_map(|r| r.to_vec())
        .collect()
}

/// Gram-Schmidt (twice) over the rows; a row with nothing left of its own
/// becomes zero.
fn orthonormalise(q: &mut Array2<f32>) {
    for i in 0..q.nrows() {
        let start = q.row(i).dot(&q.row(i)).sqrt();
        for _ in 0..2 {
            for j in 0..i {
                let p = q.row(j).dot(&q.row(i));
                let qj = q.row(j).to_owned();
                q.row_mut(i).scaled_add(-p, &qj);
            }
        }
        let norm = q.row(i).dot(&q.row(i)).sqrt();
        if norm > 1e-4 * start && norm > 0.0 {
            q.row_mut(i).mapv_inplace(|v| v / norm);
        } else {
            q.row_mut(i).fill(0.0);
        }
    }
}

/// For every row `i` of `a` (n x d): `f(i, sims)` where `sims` are its dot
/// products with the rows of `b` (m x d). Computed in row blocks, in parallel.
fn map_gram<T: Send>(
    a: &[f32],
    b: &[f32],
    d: usize,
    f: impl Fn(usize, &[f32]) -> T + Sync,
) -> Vec<T> {
    let n = a.len() / d;
    let bt = ArrayView2::from_shape((b.len() / d, d), b)
        .expect("shape")
        .reversed_axes();
    let block = 128;
    let parts: Vec<Vec<T>> = (0..n.div_ceil(block))
        .into_par_iter()
        .map(|bi| {
            let lo = bi * block;
            let hi = (lo + block).min(n);
            let ab = ArrayView2::from_shape((hi - lo, d), &a[lo * d..hi * d]).expect("shape");
            let g = ab.dot(&bt);
            g.outer_iter()
                .enumerate()
                .map(|(r, row)| f(lo + r, row.as_slice().expect("standard layout")))
                .collect()
        })
        .collect();
    parts.into_iter().flatten().collect()
}

/// How often each row enters the base model's fit when tags are added:
/// the memory's rows (classes `mem_y`) once, each new tag's examples
/// (classes `new_y`) as often as makes them weigh what the median old
/// class's rows weigh. A new tag has a few examples where an old one has its
/// share of the memory; fitted once each, its cases would be judged unknown
/// for being rare.
fn fit_copies(mem_y: &[u32], new_y: &[u32]) -> Vec<usize> {
    let count = |ys: &[u32]| {
        let mut n: BTreeMap<u32, usize> = BTreeMap::new();
        for &c in ys {
            *n.entry(c).or_default() += 1;
        }
        n
    };
    let mut sizes: Vec<usize> = count(mem_y).into_values().collect();
    sizes.sort_unstable();
    let typical = sizes.get(sizes.len() / 2).copied().unwrap_or(1) as f64;
    let per_new = count(new_y);
    let mut copies = vec![1usize; mem_y.len()];
    copies.extend(
        new_y
            .iter()
            .map(|c| (typical / per_new[c] as f64).round().max(1.0) as usize),
    );
    copies
}

impl Base {
    fn fit(x: &[f32], y: &[u32], k: usize, d: usize, p: &MetaParams) -> Result<Self> {
        Self::fit_with(x, y, k, d, p, &[])
    }

    /// [`Self::fit`] where row `i` enters the multinomial fit `copies[i]`
    /// times (rows past the end of `copies` once); the neighbour statistics
    /// see every row once.
    fn fit_with(
        x: &[f32],
        y: &[u32],
        k: usize,
        d: usize,
        p: &MetaParams,
        copies: &[usize],
    ) -> Result<Self> {
        let c = p.base_c;
        let mem = unit_rows(x, d);
        let (w, b) = if copies.iter().all(|&n| n == 1) {
            fit_multinomial(&mem, y, k, d, c)?
        } else {
            let (mut fx, mut fy) = (Vec::new(), Vec::new());
            for (i, (row, &cls)) in mem.chunks(d).zip(y).enumerate() {
                for _ in 0..copies.get(i).copied().unwrap_or(1) {
                    fx.extend_from_slice(row);
                    fy.push(cls);
                }
            }
            fit_multinomial(&fx, &fy, k, d, c)?
        };
        // Leave-one-out neighbour statistics over the memory.
        // (nearest other row, nearest other row of the same class, mean of
        // the three nearest of the same class)
        let stats: Vec<(f32, f32, f32)> = map_gram(&mem, &mem, d, |i, row| {
            let (mut any, mut inn) = (-2.0f32, -2.0f32);
            let mut top = [-2.0f32; 3];
            for (j, &s) in row.iter().enumerate() {
                if j == i {
                    continue;
                }
                any = any.max(s);
                if y[j] == y[i] {
                    inn = inn.max(s);
                    push_top3(&mut top, s);
                }
            }
            (any, inn, (top[0] + top[1] + top[2]) / 3.0)
        });
        let nn_loo = stats.iter().map(|s| s.0).collect();
        let sums = class_sums(&mem, y, k, d);
        let cent = unit_rows(&sums, d);
        let (mut q_nn, mut q_nn3, mut q_cent, mut s_cent) = (
            vec![0f32; k],
            vec![0f32; k],
            vec![0f32; k],
            vec![1e-6f32; k],
        );
        for (c, rows) in rows_by_class(y, k).iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            q_nn[c] = median(&mut rows.iter().map(|&i| stats[i].1).collect::<Vec<_>>());
            q_nn3[c] = median(&mut rows.iter().map(|&i| stats[i].2).collect::<Vec<_>>());
            let cc: Vec<f32> = rows
                .iter()
                .map(|&i| dot(&mem[i * d..(i + 1) * d], &cent[c * d..(c + 1) * d]))
                .collect();
            let mean = cc.iter().sum::<f32>() / cc.len() as f32;
            let var = cc.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / cc.len() as f32;
            s_cent[c] = var.sqrt() + 1e-6;
            q_cent[c] = median(&mut cc.clone());
        }
        let sub = Subspaces::fit(&mem, y, k, d, &sums, p.class_shrink);
        Ok(Self {
            d,
            k,
            w,
            b,
            mem,
            mem_y: y.to_vec(),
            nn_loo,
            cent,
            q_nn,
            q_nn3,
            q_cent,
            s_cent,
            sub,
        })
    }

    /// The base model's prediction and [`FEATURES`] for a batch of
    /// embeddings (n x d), one row each.
    fn features(&self, x: &[f32]) -> Vec<(usize, [f32; NF])> {
        self.features_unit(&unit_rows(x, self.d))
    }

    /// [`Self::features`] of rows already of unit length.
    fn features_unit(&self, xu: &[f32]) -> Vec<(usize, [f32; NF])> {
        let d = self.d;
        if xu.len() < 4 * d {
            // A few rows (a server request): plain dot products against the
            // memory beat a matrix product's packing.
            return xu
                .chunks(d)
                .map(|r| {
                    let sims: Vec<f32> = self.mem.chunks(d).map(|m| dot(r, m)).collect();
                    self.row_features(r, &sims)
                })
                .collect();
        }
        map_gram(xu, &self.mem, d, |i, sims| {
            self.row_features(&xu[i * d..(i + 1) * d], sims)
        })
    }

    fn row_features(&self, x: &[f32], sims: &[f32]) -> (usize, [f32; NF]) {
        let (d, k) = (self.d, self.k);
        let mut z = self.b.clone();
        for (xi, wrow) in x.iter().zip(self.w.chunks(k)) {
            for (zc, w) in z.iter_mut().zip(wrow) {
                *zc += xi * w;
            }
        }
        let zmax = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let pred = z.iter().position(|&v| v == zmax).unwrap_or(0);
        let sum: f32 = z.iter().map(|v| (v - zmax).exp()).sum();
        let p: Vec<f32> = z.iter().map(|v| (v - zmax).exp() / sum).collect();
        let mut ps = p.clone();
        ps.sort_by(|a, b| b.total_cmp(a));
        let mut zs = z.clone();
        zs.sort_by(|a, b| b.total_cmp(a));
        let at = |v: &[f32], i: usize| v.get(i).copied().unwrap_or(0.0);
        let negent: f32 = p.iter().map(|&q| q * (q + 1e-12).ln()).sum();

        let (mut knn1, mut arg) = (-2.0f32, 0usize);
        let (mut pred_best, mut other_best) = (-2.0f32, -2.0f32);
        let mut pred_top3 = [-2.0f32; 3];
        let mut top5 = [f32::NEG_INFINITY; 5];
        for (j, &s) in sims.iter().enumerate() {
            if s > knn1 {
                knn1 = s;
                arg = j;
            }
            if self.mem_y[j] as usize == pred {
                pred_best = pred_best.max(s);
                push_top3(&mut pred_top3, s);
            } else {
                other_best = other_best.max(s);
            }
            if s > top5[0] {
                top5[0] = s;
                top5.sort_by(f32::total_cmp);
            }
        }
        let finite: Vec<f32> = top5.iter().cloned().filter(|v| v.is_finite()).collect();
        let knn5 = finite.iter().sum::<f32>() / finite.len().max(1) as f32;
        let cent_pred = dot(x, &self.cent[pred * d..(pred + 1) * d]);
        let lof = if sims.is_empty() {
            0.0
        } else {
            knn1 - self.nn_loo[arg]
        };
        let agree = (!sims.is_empty() && self.mem_y[arg] as usize == pred) as u8 as f32;
        let (resid_c, resid_g) = self.sub.residuals(x, pred, d);
        let f = [
            cent_pred,
            (cent_pred - self.q_cent[pred]) / self.s_cent[pred],
            (sum.ln()) + zmax,
            knn1,
            lof,
            other_best,
            pred_best,
            pred_best - self.q_nn[pred],
            (pred_top3[0] + pred_top3[1] + pred_top3[2]) / 3.0 - self.q_nn3[pred],
            knn5,
            agree,
            pred_best - other_best,
            at(&zs, 0) - at(&zs, 1),
            at(&ps, 0) - at(&ps, 1),
            at(&zs, 0),
            at(&ps, 0),
            negent,
            at(&ps, 1),
            at(&ps, 2),
            at(&ps, 0) + at(&ps, 1) + at(&ps, 2),
            -resid_c,
            -resid_g,
        ];
        (pred, f)
    }
}

/// Multinomial logistic regression on the unit rows (the baseline's softmax
/// fit, L2 weight alpha = 1 / C). Returns (d x k weights, k biases); a class
/// with no rows gets a large negative bias.
fn fit_multinomial(
    x: &[f32],
    y: &[u32],
    k: usize,
    d: usize,
    c: f64,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let xa = Array2::from_shape_vec((y.len(), d), x.to_vec())
        .map_err(|e| EngineError::Internal(format!("detector base: {e}")))?;
    let y: Vec<usize> = y.iter().map(|&v| v as usize).collect();
    casetag_baseline::fit_softmax_regression(xa, &y, k, (1.0 / c) as f32, 300, -30.0)
        .map_err(|e| EngineError::Internal(format!("detector base fit: {e}")))
}

/// Binary logistic regression by Newton's method, with scikit-learn's
/// objective: 0.5 |w|² + C Σ s_i log-loss_i (intercept not penalised) and
/// class-balanced sample weights s_i. `x` rows are standardised features.
fn fit_binary_balanced<const P: usize>(x: &[[f32; P]], y: &[bool], c: f64) -> (Vec<f64>, f64) {
    let n = y.len();
    let npos = y.iter().filter(|&&v| v).count().max(1);
    let nneg = (n - y.iter().filter(|&&v| v).count()).max(1);
    let sw = |pos: bool| n as f64 / (2.0 * if pos { npos } else { nneg } as f64);
    let p = P + 1; // last = intercept
    let mut beta = vec![0f64; p];
    let mut row = vec![0f64; p];
    for _ in 0..100 {
        let mut g = vec![0f64; p];
        let mut h = vec![0f64; p * p];
        for (xi, &yi) in x.iter().zip(y) {
            for (r, &v) in row.iter_mut().zip(xi.iter()) {
                *r = v as f64;
            }
            row[P] = 1.0;
            let z: f64 = row.iter().zip(&beta).map(|(a, b)| a * b).sum();
            let s = 1.0 / (1.0 + (-z).exp());
            let wgt = c * sw(yi);
            let r = wgt * (s - yi as u8 as f64);
            let hw = wgt * s * (1.0 - s);
            for a in 0..p {
                g[a] += r * row[a];
                for b in a..p {
                    h[a * p + b] += hw * row[a] * row[b];
                }
            }
        }
        for a in 0..p {
            for b in 0..a {
                h[a * p + b] = h[b * p + a];
            }
        }
        for a in 0..P {
            g[a] += beta[a];
            h[a * p + a] += 1.0;
        }
        h[P * p + P] += 1e-9;
        let step = solve(h, g, p);
        let mut change = 0f64;
        for (b, s) in beta.iter_mut().zip(&step) {
            *b -= s;
            change = change.max(s.abs());
        }
        if change < 1e-8 {
            break;
        }
    }
    (beta[..P].to_vec(), beta[P])
}

/// Standardise the features, fit the balanced logistic rule and fold the
/// standardisation into its weights (so it applies to raw features).
fn fit_rule<const P: usize>(feats: &[[f32; P]], label: &[bool], c: f64) -> Rule {
    let n = feats.len() as f64;
    let mut mu = [0f64; P];
    let mut sd = [0f64; P];
    for f in feats {
        for j in 0..P {
            mu[j] += f[j] as f64 / n;
        }
    }
    for f in feats {
        for j in 0..P {
            sd[j] += (f[j] as f64 - mu[j]).powi(2) / n;
        }
    }
    sd.iter_mut().for_each(|s| *s = s.sqrt() + 1e-12);
    let z: Vec<[f32; P]> = feats
        .iter()
        .map(|f| std::array::from_fn(|j| ((f[j] as f64 - mu[j]) / sd[j]) as f32))
        .collect();
    let (ws, b) = fit_binary_balanced(&z, label, c);
    Rule {
        w: (0..P).map(|j| (ws[j] / sd[j]) as f32).collect(),
        bias: (b - (0..P).map(|j| ws[j] / sd[j] * mu[j]).sum::<f64>()) as f32,
    }
}

/// A linear rule over raw features: logit = w . f + bias.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Rule {
    w: Vec<f32>,
    bias: f32,
}

impl Rule {
    fn logit(&self, f: &[f32]) -> f32 {
        self.bias + f.iter().zip(&self.w).map(|(a, b)| a * b).sum::<f32>()
    }
}

/// The batch rule's inputs for one case: its features, then its novelty.
fn with_novelty(f: &[f32; NF], nov: f32) -> [f32; NB] {
    std::array::from_fn(|j| if j < NF { f[j] } else { nov })
}

/// Batch novelty, one value per row of a batch (unit rows `xu`, the base
/// model's predictions `pred`): for the rows predicted as class c, the mean
/// cosine of each to its three nearest other batch rows of c, subtracted
/// from the same against as many of c's training rows (the memory). Both
/// sides hold the same number of rows (at most the memory's count for c),
/// so a batch that is just more of the known cases scores about 0 whatever
/// its size, while a new kind of case that recurs in the batch has closer
/// neighbours in the batch than in training: negative. Repeats of a row
/// ([`SAME_CASE_COS`]) are not its neighbours; a row with no other row of
/// its class gives 0 (no evidence).
fn batch_novelty(base: &Base, xu: &[f32], pred: &[usize], seed: u64) -> Vec<f32> {
    let d = base.d;
    let mem_of = rows_by_class(&base.mem_y, base.k);
    let mut rows_of: Vec<Vec<usize>> = vec![Vec::new(); base.k];
    for (i, &c) in pred.iter().enumerate() {
        rows_of[c].push(i);
    }
    // Rows of a class are listed in batch order.
    let per_class: Vec<Vec<(usize, f32)>> = rows_of
        .into_par_iter()
        .enumerate()
        .map(|(c, rows)| {
            let m = rows.len();
            let s = (m.saturating_sub(1)).min(mem_of[c].len());
            if s == 0 {
                return rows.iter().map(|&r| (r, 0.0)).collect();
            }
            let mut rng = (seed ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
            let mut train = mem_of[c].clone();
            crate::shuffle(&mut train, &mut rng);
            train.truncate(s);
            // The batch side: s + 1 of the class's rows (all when few).
            let mut side = rows.clone();
            crate::shuffle(&mut side, &mut rng);
            side.truncate(s + 1);
            rows.iter()
                .map(|&r| {
                    let x = &xu[r * d..(r + 1) * d];
                    // The same text again counts once (`SAME_CASE_COS`).
                    let near: Vec<&[f32]> = side
                        .iter()
                        .filter(|&&o| o != r)
                        .map(|&o| &xu[o * d..(o + 1) * d])
                        .filter(|o| dot(x, o) < SAME_CASE_COS)
                        .take(s)
                        .collect();
                    (r, novelty(base, x, &near, &train))
                })
                .collect()
        })
        .collect();
    let mut nov = vec![0f32; pred.len()];
    for v in per_class {
        for (r, x) in v {
            nov[r] = x;
        }
    }
    nov
}

/// The novelty of unit row `x` among its batch (or window) neighbours
/// `near` of its predicted class: the mean cosine to its three nearest of
/// as many of the class's memory rows (the first `near.len()` of `train`,
/// drawn at random), minus the same against `near`; 0 without neighbours.
fn novelty(base: &Base, x: &[f32], near: &[&[f32]], train: &[usize]) -> f32 {
    if near.is_empty() {
        return 0.0;
    }
    let d = base.d;
    let kb = top3_mean(x, near.iter().copied());
    let kt = top3_mean(
        x,
        train[..near.len()]
            .iter()
            .map(|&o| &base.mem[o * d..(o + 1) * d]),
    );
    kt - kb
}

/// The mean cosine of unit row `x` to its three nearest of `others` (to
/// all of them when fewer; 0 when none).
fn top3_mean<'a>(x: &[f32], others: impl Iterator<Item = &'a [f32]>) -> f32 {
    let mut t = [-2.0f32; 3];
    let mut n = 0;
    for o in others {
        push_top3(&mut t, dot(x, o));
        n += 1;
    }
    let k = n.min(3);
    t[3 - k..].iter().sum::<f32>() / k.max(1) as f32
}

/// For each row of a batch (unit rows `xu`, `d` wide): the mean of `s` over
/// its `k` nearest other rows by cosine, drawn from the whole batch or,
/// past `pool` rows, from a random sample of that many (fixed by `seed`).
/// A row with no other row keeps its own value.
fn neighbour_mean(xu: &[f32], d: usize, s: &[f32], k: usize, pool: usize, seed: u64) -> Vec<f32> {
    let n = s.len();
    let mut idx: Vec<usize> = (0..n).collect();
    if n > pool {
        let mut rng = seed | 1;
        crate::shuffle(&mut idx, &mut rng);
        idx.truncate(pool);
        idx.sort_unstable();
    }
    let px: Vec<f32> = idx
        .iter()
        .flat_map(|&i| xu[i * d..(i + 1) * d].iter().copied())
        .collect();
    map_gram(xu, &px, d, |i, sims| {
        let others = sims
            .iter()
            .zip(&idx)
            .filter(|&(&sim, &j)| j != i && sim < SAME_CASE_COS);
        mean_of_nearest(others.map(|(&sim, &j)| (sim, j)), k, |j| s[j]).unwrap_or(s[i])
    })
}

/// The mean of `s` over the `k` candidates (cosine, row) of highest
/// cosine; `None` when there is no candidate.
fn mean_of_nearest(
    candidates: impl Iterator<Item = (f32, usize)>,
    k: usize,
    s: impl Fn(usize) -> f32,
) -> Option<f32> {
    // (cosine, row), ascending; the first entry is the one to replace.
    let mut top: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
    for (sim, j) in candidates {
        if top.len() < k {
            top.push((sim, j));
            top.sort_by(|a, b| a.0.total_cmp(&b.0));
        } else if sim > top[0].0 {
            top[0] = (sim, j);
            top.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
    }
    (!top.is_empty()).then(|| top.iter().map(|&(_, j)| s(j)).sum::<f32>() / top.len() as f32)
}

/// Solve h x = g (h symmetric positive definite) by Gaussian elimination
/// with partial pivoting.
fn solve(mut h: Vec<f64>, mut g: Vec<f64>, p: usize) -> Vec<f64> {
    for col in 0..p {
        let piv = (col..p)
            .max_by(|&a, &b| h[a * p + col].abs().total_cmp(&h[b * p + col].abs()))
            .unwrap_or(col);
        if piv != col {
            for j in 0..p {
                h.swap(col * p + j, piv * p + j);
            }
            g.swap(col, piv);
        }
        let d = h[col * p + col];
        if d.abs() < 1e-300 {
            continue;
        }
        for r in col + 1..p {
            let f = h[r * p + col] / d;
            if f != 0.0 {
                for j in col..p {
                    h[r * p + j] -= f * h[col * p + j];
                }
                g[r] -= f * g[col];
            }
        }
    }
    let mut x = vec![0f64; p];
    for r in (0..p).rev() {
        let s: f64 = (r + 1..p).map(|j| h[r * p + j] * x[j]).sum();
        let d = h[r * p + r];
        x[r] = if d.abs() < 1e-300 {
            0.0
        } else {
            (g[r] - s) / d
        };
    }
    x
}

/// Training data for the detector: embeddings (row-major, `d` wide) and
/// class indices `0..k` of the fit and validation rows.
pub struct MetaInputs<'a> {
    pub d: usize,
    pub k: usize,
    pub fit_x: &'a [f32],
    pub fit_y: &'a [u32],
    pub val_x: &'a [f32],
    pub val_y: &'a [u32],
}

/// A case at least this close (cosine) to another is the same text again,
/// a client's retry or a template sent many times: it is one case, not a
/// recurring new kind of case, so neither the batch rule, the smoothing
/// rule nor the stream counts it as the other's neighbour.
const SAME_CASE_COS: f32 = 0.9999;

/// The recent cases of a stream ([`MetaDetector::scores_stream`]): the
/// unit embedding, predicted class and batch-rule logit of each of the
/// last `cap` cases, oldest dropped first. Embeddings only, no texts.
#[derive(Debug, Clone)]
pub struct StreamWindow {
    cap: usize,
    d: usize,
    /// `cap` x `d`, a ring: slot `seen % cap` is written next.
    xu: Vec<f32>,
    pred: Vec<usize>,
    s1: Vec<f32>,
    /// Cases pushed so far.
    seen: u64,
}

impl StreamWindow {
    /// An empty window of `cap` cases (at least 1) of width `d`.
    pub fn new(cap: usize, d: usize) -> Self {
        let cap = cap.max(1);
        Self {
            cap,
            d,
            xu: vec![0.0; cap * d],
            pred: vec![0; cap],
            s1: vec![0.0; cap],
            seen: 0,
        }
    }

    /// Cases held now.
    pub fn len(&self) -> usize {
        (self.seen as usize).min(self.cap)
    }

    /// Cases the window holds at most.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn is_empty(&self) -> bool {
        self.seen == 0
    }

    fn row(&self, slot: usize) -> &[f32] {
        &self.xu[slot * self.d..(slot + 1) * self.d]
    }

    fn push(&mut self, x: &[f32], pred: usize, s1: f32) {
        let slot = (self.seen % self.cap as u64) as usize;
        self.xu[slot * self.d..(slot + 1) * self.d].copy_from_slice(x);
        self.pred[slot] = pred;
        self.s1[slot] = s1;
        self.seen += 1;
    }

    /// Slots of the window's cases, newest first.
    fn newest_first(&self) -> impl Iterator<Item = usize> + '_ {
        let (cap, seen) = (self.cap as u64, self.seen);
        (1..=self.len() as u64).map(move |back| ((seen - back) % cap) as usize)
    }

    /// The slots of the newest `at_most` cases predicted as `c`, but for
    /// repeats of unit row `x` ([`SAME_CASE_COS`]).
    fn recent_of(&self, c: usize, at_most: usize, x: &[f32]) -> Vec<usize> {
        self.newest_first()
            .filter(|&j| self.pred[j] == c && dot(x, self.row(j)) < SAME_CASE_COS)
            .take(at_most)
            .collect()
    }

    /// The mean stored logit of the `k` cases nearest to unit row `x` by
    /// cosine, repeats of `x` left out; `None` when there is none.
    fn neighbour_mean(&self, x: &[f32], k: usize) -> Option<f32> {
        let sims = (0..self.len()).map(|j| (dot(x, self.row(j)), j));
        let others = sims.filter(|&(sim, _)| sim < SAME_CASE_COS);
        mean_of_nearest(others, k, |j| self.s1[j])
    }

    /// The window as bytes (little-endian: a magic, `cap`, `d` and `seen`
    /// as u64, then the embeddings, predicted classes and logits), so a
    /// batch job can carry its stream across `--resume`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + 4 * (self.xu.len() + 2 * self.cap));
        out.extend_from_slice(STREAM_MAGIC);
        for v in [self.cap as u64, self.d as u64, self.seen] {
            out.extend(v.to_le_bytes());
        }
        out.extend(self.xu.iter().flat_map(|v| v.to_le_bytes()));
        out.extend(self.pred.iter().flat_map(|&c| (c as u32).to_le_bytes()));
        out.extend(self.s1.iter().flat_map(|v| v.to_le_bytes()));
        out
    }

    /// A window written by [`Self::to_bytes`], checked to be one of `cap`
    /// cases for a detector of width `d` and `k` classes (an empty window
    /// may still have width 0).
    pub fn from_bytes(bytes: &[u8], cap: usize, d: usize, k: usize) -> Result<Self> {
        let bad = |m: &str| EngineError::Input(format!("stream window: {m}"));
        if bytes.len() < 32 || &bytes[..8] != STREAM_MAGIC {
            return Err(bad("not a stream window"));
        }
        let word = |i: usize| u64::from_le_bytes(bytes[8 + 8 * i..16 + 8 * i].try_into().unwrap());
        let (got_cap, got_d, seen) = (word(0) as usize, word(1) as usize, word(2));
        if got_cap != cap || (got_d != d && !(got_d == 0 && seen == 0)) {
            return Err(bad(&format!(
                "holds {got_cap} cases {got_d} wide where {cap} cases {d} wide are expected"
            )));
        }
        if bytes.len() != 32 + 4 * (got_cap * got_d + 2 * got_cap) {
            return Err(bad("truncated or corrupt"));
        }
        let words = |from: usize, n: usize| {
            bytes[from..from + 4 * n]
                .chunks_exact(4)
                .map(|c| <[u8; 4]>::try_from(c).unwrap())
                .collect::<Vec<_>>()
        };
        let nx = got_cap * got_d;
        let xu: Vec<f32> = words(32, nx).into_iter().map(f32::from_le_bytes).collect();
        let pred: Vec<usize> = words(32 + 4 * nx, cap)
            .into_iter()
            .map(|b| u32::from_le_bytes(b) as usize)
            .collect();
        let s1: Vec<f32> = words(32 + 4 * (nx + cap), cap)
            .into_iter()
            .map(f32::from_le_bytes)
            .collect();
        if pred.iter().any(|&c| c >= k.max(1)) || xu.iter().chain(&s1).any(|v| !v.is_finite()) {
            return Err(bad("truncated or corrupt"));
        }
        Ok(Self {
            cap,
            d: got_d,
            xu,
            pred,
            s1,
            seen,
        })
    }
}

const STREAM_MAGIC: &[u8; 8] = b"CTSTRM01";

/// A fitted detector: the base model on every known class plus a linear
/// rule over standardised features.
#[derive(Debug, Clone, PartialEq)]
pub struct MetaDetector {
    base: Base,
    /// Detector weights on raw features (standardisation folded in) and bias;
    /// the logit is "out of scope or wrong".
    rule: Rule,
    /// The rule for whole batches (`casetag tag/eval --batch-novelty`): the
    /// same features plus [`batch_novelty`]. Absent in detectors written
    /// before it existed.
    batch: Option<Rule>,
    /// The smoothing rule over (batch-rule logit, mean batch-rule logit of
    /// the [`SMOOTH_K`] nearest batch cases), applied after the batch rule.
    /// Absent in detectors written before it existed.
    smooth: Option<Rule>,
    params: MetaParams,
}

#[derive(Serialize, Deserialize)]
struct Header {
    d: usize,
    k: usize,
    n: usize,
    features: Vec<String>,
    bias: f32,
    params: MetaParams,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    batch: Option<Rule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    smooth: Option<Rule>,
    /// The shape of the stored [`Subspaces`]. Detectors written before they
    /// were stored lack it and derive them from the memory when loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subspaces: Option<SubspaceShape>,
}

/// How many `d`-wide directions the stored [`Subspaces`] hold.
#[derive(Serialize, Deserialize)]
struct SubspaceShape {
    global: usize,
    /// One count per class.
    class: Vec<usize>,
}

impl MetaDetector {
    /// Whether there are enough classes to hide some in each round.
    pub fn applicable(k: usize) -> bool {
        k >= 4
    }

    /// Run the episodes and fit the detector.
    pub fn fit(inp: &MetaInputs, params: &MetaParams, progress: &dyn Fn(&str)) -> Result<Self> {
        let (d, k) = (inp.d, inp.k);
        if !Self::applicable(k) {
            return Err(EngineError::Input(format!(
                "the out-of-scope detector needs at least 4 classes, got {k}"
            )));
        }
        if inp.fit_x.len() != inp.fit_y.len() * d || inp.val_x.len() != inp.val_y.len() * d {
            return Err(EngineError::Internal(
                "detector inputs: shape mismatch".into(),
            ));
        }
        let hold = params.hold.min((k as f64 * 0.15).round().max(1.0) as usize);
        let mut rng = params.seed | 1;
        let mut feats: Vec<[f32; NF]> = Vec::new();
        let mut label: Vec<bool> = Vec::new();
        // The stand-in batches draw from their own stream, so the rounds'
        // hidden classes (and the per-case rule) stay as before.
        let mut brng = (params.seed ^ 0x6261_7463_6821) | 1;
        let mut bfeats: Vec<[f32; NB]> = Vec::new();
        let mut blabel: Vec<bool> = Vec::new();
        // Each stand-in batch's unit rows, for the smoothing rule (its rows
        // are consecutive in `bfeats`).
        let mut bunits: Vec<Vec<f32>> = Vec::new();
        let rows = |x: &[f32], idx: &[usize]| -> Vec<f32> {
            idx.iter()
                .flat_map(|&i| x[i * d..(i + 1) * d].iter().copied())
                .collect()
        };
        for e in 0..params.episodes {
            progress(&format!(
                "out-of-scope detector: round {}/{} (hiding {hold} of {k} classes)",
                e + 1,
                params.episodes
            ));
            let mut classes: Vec<usize> = (0..k).collect();
            crate::shuffle(&mut classes, &mut rng);
            let mut remap = vec![u32::MAX; k];
            for (new, &c) in classes[hold..].iter().enumerate() {
                remap[c] = new as u32;
            }
            let known = |y: u32| remap[y as usize] != u32::MAX;
            let (keep_fit, hidden_fit): (Vec<usize>, Vec<usize>) =
                (0..inp.fit_y.len()).partition(|&i| known(inp.fit_y[i]));
            let (keep_val, hidden_val): (Vec<usize>, Vec<usize>) =
                (0..inp.val_y.len()).partition(|&i| known(inp.val_y[i]));
            let fy: Vec<u32> = keep_fit
                .iter()
                .map(|&i| remap[inp.fit_y[i] as usize])
                .collect();
            let base = Base::fit(&rows(inp.fit_x, &keep_fit), &fy, k - hold, d, params)?;
            let vx = rows(inp.val_x, &keep_val);
            let fin = base.features(&vx);
            let wrong: Vec<bool> = fin
                .iter()
                .zip(&keep_val)
                .map(|((pred, _), &i)| *pred != remap[inp.val_y[i] as usize] as usize)
                .collect();
            feats.extend(fin.iter().map(|(_, f)| *f));
            label.extend(&wrong);
            let mut hx = rows(inp.fit_x, &hidden_fit);
            hx.extend(rows(inp.val_x, &hidden_val));
            let hy: Vec<u32> = hidden_fit
                .iter()
                .map(|&i| inp.fit_y[i])
                .chain(hidden_val.iter().map(|&i| inp.val_y[i]))
                .collect();
            let fout = base.features(&hx);
            feats.extend(fout.iter().map(|(_, f)| *f));
            label.extend(std::iter::repeat_n(true, fout.len()));
            // A stand-in batch: the kept validation rows and, at the same
            // rate per class, rows of each hidden class.
            let per = ((keep_val.len() as f64 / (k - hold) as f64).round() as usize).max(2);
            let mut sample = Vec::new();
            for &c in &classes[..hold] {
                let mut of_c: Vec<usize> = (0..hy.len()).filter(|&i| hy[i] as usize == c).collect();
                crate::shuffle(&mut of_c, &mut brng);
                sample.extend(of_c.into_iter().take(per));
            }
            let mut bx = vx;
            bx.extend(rows(&hx, &sample));
            let bpred: Vec<usize> = fin
                .iter()
                .map(|(p, _)| *p)
                .chain(sample.iter().map(|&i| fout[i].0))
                .collect();
            let bu = unit_rows(&bx, d);
            let nov = batch_novelty(&base, &bu, &bpred, params.seed + e as u64);
            bunits.push(bu);
            let bf = fin.iter().chain(sample.iter().map(|&i| &fout[i]));
            for (((_, f), nv), wrong) in bf
                .zip(nov)
                .zip(wrong.iter().chain(std::iter::repeat(&true)))
            {
                bfeats.push(with_novelty(f, nv));
                blabel.push(*wrong);
            }
        }
        progress("out-of-scope detector: fitting the detector and the full base model");
        let rule = fit_rule(&feats, &label, params.det_c);
        let batch = fit_rule(&bfeats, &blabel, params.det_c);
        let mut sfeats: Vec<[f32; 2]> = Vec::with_capacity(bfeats.len());
        for bu in &bunits {
            let at = sfeats.len();
            let s1: Vec<f32> = bfeats[at..at + bu.len() / d]
                .iter()
                .map(|f| batch.logit(f))
                .collect();
            let nb = neighbour_mean(bu, d, &s1, SMOOTH_K, SMOOTH_POOL, params.seed);
            sfeats.extend(s1.into_iter().zip(nb).map(|(a, b)| [a, b]));
        }
        let smooth = Some(fit_rule(&sfeats, &blabel, params.det_c));
        let base = Base::fit(inp.fit_x, inp.fit_y, k, d, params)?;
        Ok(Self {
            base,
            rule,
            batch: Some(batch),
            smooth,
            params: params.clone(),
        })
    }

    /// The same detector after tags were added (`train --from --add`): its
    /// rules stay, its base model is fitted again on its memory (classes
    /// renumbered by `remap`) and the new tags' examples (`new_x`,
    /// row-major, classes `new_y`, weighted as [`fit_copies`] says), over
    /// `k` classes in all.
    pub fn extended(&self, remap: &[u32], new_x: &[f32], new_y: &[u32], k: usize) -> Result<Self> {
        let d = self.base.d;
        if remap.len() != self.base.k || new_x.len() != new_y.len() * d {
            return Err(EngineError::Internal(
                "detector extension: shape mismatch".into(),
            ));
        }
        let mut x = self.base.mem.clone();
        x.extend_from_slice(new_x);
        let y: Vec<u32> = self
            .base
            .mem_y
            .iter()
            .map(|&c| remap[c as usize])
            .chain(new_y.iter().copied())
            .collect();
        let copies = fit_copies(&self.base.mem_y, new_y);
        Ok(Self {
            base: Base::fit_with(&x, &y, k, d, &self.params, &copies)?,
            ..self.clone()
        })
    }

    /// Whether this detector can judge a whole batch (`scores_batch`).
    pub fn has_batch_rule(&self) -> bool {
        self.batch.is_some()
    }

    /// Detector logits for a batch judged as a whole: the features of
    /// [`Self::scores`] plus each case's [`batch_novelty`] among the others,
    /// through the batch rule, then (when the detector has one) the
    /// smoothing rule over each logit and its nearest batch cases' logits.
    /// Falls back to [`Self::scores`] for detectors without a batch rule.
    /// Deterministic for a given batch.
    pub fn scores_batch(&self, embeddings: &[Vec<f32>]) -> Result<Vec<f32>> {
        Ok(self.scores_both(embeddings)?.1)
    }

    /// [`Self::scores`] and [`Self::scores_batch`] for the same rows, from one
    /// pass over the memory (training cuts both on the validation rows).
    pub fn scores_both(&self, embeddings: &[Vec<f32>]) -> Result<(Vec<f32>, Vec<f32>)> {
        let xu = unit_rows(&self.flatten(embeddings)?, self.base.d);
        let feats = self.base.features_unit(&xu);
        let per_case: Vec<f32> = feats.iter().map(|(_, f)| self.rule.logit(f)).collect();
        let Some(rule) = &self.batch else {
            return Ok((per_case.clone(), per_case));
        };
        let pred: Vec<usize> = feats.iter().map(|(p, _)| *p).collect();
        let nov = batch_novelty(&self.base, &xu, &pred, self.params.seed);
        let s1: Vec<f32> = feats
            .iter()
            .zip(nov)
            .map(|((_, f), nv)| rule.logit(&with_novelty(f, nv)))
            .collect();
        let Some(smooth) = &self.smooth else {
            return Ok((per_case, s1));
        };
        let d = self.base.d;
        let nb = neighbour_mean(&xu, d, &s1, SMOOTH_K, SMOOTH_POOL, self.params.seed);
        let whole = s1
            .iter()
            .zip(nb)
            .map(|(&a, b)| smooth.logit(&[a, b]))
            .collect();
        Ok((per_case, whole))
    }

    /// Detector logits for cases judged one at a time against the cases
    /// that came before them (`window`, the stream's recent cases; each
    /// scored case joins it, in order): the batch rule with the case's
    /// novelty among the window's cases of its predicted class, then the
    /// smoothing rule over the logits the window's nearest cases got when
    /// they came. No case's score depends on a later case. Falls back to
    /// [`Self::scores`] for detectors without a batch rule.
    pub fn scores_stream(
        &self,
        window: &mut StreamWindow,
        embeddings: &[Vec<f32>],
    ) -> Result<Vec<f32>> {
        let Some(rule) = &self.batch else {
            return self.scores(embeddings);
        };
        let d = self.base.d;
        let xu = unit_rows(&self.flatten(embeddings)?, d);
        let feats = self.base.features_unit(&xu);
        if window.d != d {
            *window = StreamWindow::new(window.cap, d);
        }
        let mem_of = rows_by_class(&self.base.mem_y, self.base.k);
        let mut out = Vec::with_capacity(feats.len());
        for (x, (c, f)) in xu.chunks(d).zip(&feats) {
            let nov = self.stream_novelty(window, x, *c, &mem_of[*c]);
            let s1 = rule.logit(&with_novelty(f, nov));
            let z = match &self.smooth {
                None => s1,
                Some(smooth) => {
                    smooth.logit(&[s1, window.neighbour_mean(x, SMOOTH_K).unwrap_or(s1)])
                }
            };
            window.push(x, *c, s1);
            out.push(z);
        }
        Ok(out)
    }

    /// A window of `cap` cases written by [`StreamWindow::to_bytes`] for
    /// this detector, checked against its width and classes.
    pub fn stream_window_from(&self, bytes: &[u8], cap: usize) -> Result<StreamWindow> {
        StreamWindow::from_bytes(bytes, cap, self.base.d, self.base.k)
    }

    /// [`batch_novelty`] of one case (unit row `x`, predicted class `c`)
    /// among the window's cases of class c: the mean cosine to its three
    /// nearest of the window's most recent `s` cases of c, subtracted from
    /// the same against `s` of c's memory rows drawn at random, `s` being
    /// as many as the window has (at most the memory's count for c; `mem`
    /// lists c's memory rows).
    fn stream_novelty(&self, window: &StreamWindow, x: &[f32], c: usize, mem: &[usize]) -> f32 {
        let near: Vec<&[f32]> = window
            .recent_of(c, mem.len(), x)
            .into_iter()
            .map(|j| window.row(j))
            .collect();
        let mut rng = (self.params.seed ^ window.seen.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
        let mut train = mem.to_vec();
        crate::shuffle(&mut train, &mut rng);
        novelty(&self.base, x, &near, &train)
    }

    fn flatten(&self, embeddings: &[Vec<f32>]) -> Result<Vec<f32>> {
        let d = self.base.d;
        if let Some(r) = embeddings.iter().find(|r| r.len() != d) {
            return Err(EngineError::Internal(format!(
                "out-of-scope detector: embedding of length {} where {d} is expected",
                r.len()
            )));
        }
        Ok(embeddings.concat())
    }

    /// Detector logits ("out of scope or wrong"; higher = less in scope)
    /// for a batch of embeddings, one per row.
    pub fn scores(&self, embeddings: &[Vec<f32>]) -> Result<Vec<f32>> {
        let flat = self.flatten(embeddings)?;
        Ok(self
            .base
            .features(&flat)
            .iter()
            .map(|(_, f)| self.rule.logit(f))
            .collect())
    }

    /// Write into a bundle directory.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let io = |e: std::io::Error| EngineError::Internal(format!("writing {FILE}: {e}"));
        let b = &self.base;
        let header = Header {
            d: b.d,
            k: b.k,
            n: b.mem_y.len(),
            features: FEATURES.iter().map(|s| s.to_string()).collect(),
            bias: self.rule.bias,
            params: self.params.clone(),
            batch: self.batch.clone(),
            smooth: self.smooth.clone(),
            subspaces: Some(SubspaceShape {
                global: b.sub.global.len() / b.d,
                class: b.sub.class.iter().map(|c| c.len() / b.d).collect(),
            }),
        };
        let h = serde_json::to_vec(&header).expect("header serializes");
        let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join(FILE)).map_err(io)?);
        f.write_all(MAGIC).map_err(io)?;
        f.write_all(&(h.len() as u32).to_le_bytes()).map_err(io)?;
        f.write_all(&h).map_err(io)?;
        let ys: Vec<f32> = b.mem_y.iter().map(|&y| y as f32).collect();
        for arr in [
            &self.rule.w,
            &b.w,
            &b.b,
            &b.mem,
            &ys,
            &b.nn_loo,
            &b.cent,
            &b.q_nn,
            &b.q_nn3,
            &b.q_cent,
            &b.s_cent,
        ]
        .into_iter()
        .chain(b.sub.parts())
        {
            for v in arr.iter() {
                f.write_all(&v.to_le_bytes()).map_err(io)?;
            }
        }
        f.flush().map_err(io)
    }

    /// Read from a bundle directory; `Ok(None)` when the bundle has none.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(FILE);
        if !path.exists() {
            return Ok(None);
        }
        let bad = |m: String| EngineError::Input(format!("{}: {m}", path.display()));
        let mut bytes = Vec::new();
        std::fs::File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| bad(e.to_string()))?;
        if bytes.len() < 12 || &bytes[..8] != MAGIC {
            return Err(bad("not an out-of-scope detector file".into()));
        }
        let hl = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        let header: Header = bytes
            .get(12..12 + hl)
            .ok_or_else(|| bad("truncated header".into()))
            .and_then(|h| serde_json::from_slice(h).map_err(|e| bad(format!("header: {e}"))))?;
        // Detectors written before a feature existed load with a zero
        // weight on it: they score as they did.
        let at: Vec<Option<usize>> = FEATURES
            .iter()
            .map(|f| header.features.iter().position(|h| h == f))
            .collect();
        if header
            .features
            .iter()
            .any(|h| !FEATURES.contains(&h.as_str()))
        {
            return Err(bad("written for a different feature set".into()));
        }
        let widen = |w: &[f32]| -> Vec<f32> {
            at.iter()
                .map(|i| i.and_then(|i| w.get(i)).copied().unwrap_or(0.0))
                .collect()
        };
        let nf = header.features.len();
        let (d, k, n) = (header.d, header.k, header.n);
        let mut sizes = vec![nf, d * k, k, n * d, n, n, k * d, k, k, k, k];
        if let Some(shape) = &header.subspaces {
            if shape.class.len() != k || shape.class.iter().chain([&shape.global]).any(|&l| l > d) {
                return Err(bad("subspace shape does not fit the detector".into()));
            }
            sizes.extend([d, shape.global * d, k * d]);
            sizes.extend(shape.class.iter().map(|l| l * d));
        }
        let body = &bytes[12 + hl..];
        let needed = sizes.iter().sum::<usize>() * 4;
        if body.len() != needed {
            // A later version may store more than this one reads.
            let newer = if body.len() > needed {
                " (written by a newer casetag?)"
            } else {
                ""
            };
            return Err(bad(format!(
                "{} bytes of weights where {d} x {k} x {n} needs {needed}{newer}",
                body.len()
            )));
        }
        let mut arrays = Vec::with_capacity(sizes.len());
        let mut at = 0;
        for s in sizes {
            let v: Vec<f32> = body[at..at + 4 * s]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            at += 4 * s;
            arrays.push(v);
        }
        let mut it = arrays.into_iter();
        let mut take = || it.next().expect("sized above");
        let w = take();
        let (bw, bb, mem) = (take(), take(), take());
        let mem_y: Vec<u32> = take().into_iter().map(|v| v as u32).collect();
        let misfit = |r: &Option<Rule>, p: usize| {
            r.as_ref()
                .is_some_and(|r| r.w.len() != p || r.w.iter().any(|v| !v.is_finite()))
        };
        let bad_rule = misfit(&header.batch, nf + 1) || misfit(&header.smooth, 2);
        if mem_y.iter().any(|&y| y as usize >= k) || w.iter().any(|v| !v.is_finite()) || bad_rule {
            return Err(bad("corrupt weights".into()));
        }
        let (nn_loo, cent, q_nn, q_nn3, q_cent, s_cent) =
            (take(), take(), take(), take(), take(), take());
        let sub = match &header.subspaces {
            Some(_) => {
                let (mean, global, centre) = (take(), take(), take());
                let class: Vec<Vec<f32>> = (0..k).map(|_| take()).collect();
                let sub = Subspaces {
                    mean,
                    global,
                    centre,
                    class,
                };
                if sub.parts().flatten().any(|v| !v.is_finite()) {
                    return Err(bad("corrupt subspaces".into()));
                }
                sub
            }
            None => {
                let sums = class_sums(&mem, &mem_y, k, d);
                Subspaces::fit(&mem, &mem_y, k, d, &sums, header.params.class_shrink)
            }
        };
        let base = Base {
            d,
            k,
            w: bw,
            b: bb,
            mem,
            mem_y,
            nn_loo,
            cent,
            q_nn,
            q_nn3,
            q_cent,
            s_cent,
            sub,
        };
        // The batch rule's last weight is the novelty's.
        let batch = header.batch.map(|r| {
            let mut w = widen(&r.w[..nf]);
            w.push(r.w[nf]);
            Rule { w, bias: r.bias }
        });
        Ok(Some(Self {
            base,
            rule: Rule {
                w: widen(&w),
                bias: header.bias,
            },
            batch,
            smooth: header.smooth,
            params: header.params,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn u(&mut self) -> f32 {
            casetag_core::xorshift64(&mut self.0);
            ((self.0 >> 40) as f32 + 0.5) / (1u64 << 24) as f32
        }
        fn gauss(&mut self) -> f32 {
            let (a, b) = (self.u(), self.u());
            (-2.0 * a.ln()).sqrt() * (std::f32::consts::TAU * b).cos()
        }
    }

    /// `n` random unit class centres in `d` dimensions.
    fn random_centres(rng: &mut Rng, n: usize, d: usize) -> Vec<Vec<f32>> {
        (0..n)
            .map(|_| unit_rows(&(0..d).map(|_| rng.gauss()).collect::<Vec<_>>(), d))
            .collect()
    }

    /// A detector (4 rounds) on 40 training and 15 validation rows per centre.
    fn fit_on_blobs(rng: &mut Rng, centres: &[Vec<f32>], noise: f32) -> MetaDetector {
        let (fit_x, fit_y) = blobs(rng, centres, 40, noise);
        let (val_x, val_y) = blobs(rng, centres, 15, noise);
        let inp = MetaInputs {
            d: centres[0].len(),
            k: centres.len(),
            fit_x: &fit_x,
            fit_y: &fit_y,
            val_x: &val_x,
            val_y: &val_y,
        };
        let params = MetaParams {
            episodes: 4,
            ..MetaParams::default()
        };
        MetaDetector::fit(&inp, &params, &|_| {}).unwrap()
    }

    /// `per` rows around each of `centres`, unit length.
    fn blobs(rng: &mut Rng, centres: &[Vec<f32>], per: usize, noise: f32) -> (Vec<f32>, Vec<u32>) {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for (c, m) in centres.iter().enumerate() {
            for _ in 0..per {
                let r: Vec<f32> = m.iter().map(|v| v + noise * rng.gauss()).collect();
                x.extend(unit_rows(&r, r.len()));
                y.push(c as u32);
            }
        }
        (x, y)
    }

    /// Largest minus smallest of `v`.
    fn in_range(v: &[f32]) -> f32 {
        let (lo, hi) = v
            .iter()
            .fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
        hi - lo
    }

    fn auroc(pos: &[f32], neg: &[f32]) -> f64 {
        let f = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
        casetag_core::metrics::auroc(&f(pos), &f(neg)).unwrap()
    }

    #[test]
    fn detects_classes_it_never_saw_and_survives_a_round_trip() {
        let d = 24;
        let mut rng = Rng(0x5EED);
        let centres = random_centres(&mut rng, 12, d);
        let (known, hidden) = centres.split_at(10);
        let det = fit_on_blobs(&mut rng, known, 0.12);
        let rows = |x: &[f32]| x.chunks(d).map(<[f32]>::to_vec).collect::<Vec<_>>();
        let (in_x, _) = blobs(&mut rng, known, 10, 0.12);
        let (out_x, _) = blobs(&mut rng, hidden, 30, 0.12);
        let s_in = det.scores(&rows(&in_x)).unwrap();
        let s_out = det.scores(&rows(&out_x)).unwrap();
        let a = auroc(&s_out, &s_in);
        assert!(a > 0.95, "AUROC {a}");
        // Small batches (dot products) and large ones (matrix product) agree.
        for (i, r) in rows(&in_x).iter().enumerate().take(5) {
            let one = det.scores(std::slice::from_ref(r)).unwrap()[0];
            assert!((one - s_in[i]).abs() < 1e-4, "{one} vs {}", s_in[i]);
        }

        let dir = tempfile::tempdir().unwrap();
        det.save(dir.path()).unwrap();
        let back = MetaDetector::load(dir.path())
            .unwrap()
            .expect("file written");
        assert_eq!(back, det);
        assert_eq!(back.scores(&rows(&in_x)).unwrap(), s_in);
        // Wrong width and damaged files are errors that say what is wrong.
        let e = det.scores(&[vec![0.0; d + 1]]).unwrap_err().to_string();
        assert!(e.contains("length 25") && e.contains("24"), "{e}");
        let bytes = std::fs::read(dir.path().join(FILE)).unwrap();
        std::fs::write(dir.path().join(FILE), &bytes[..bytes.len() - 4]).unwrap();
        let e = MetaDetector::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("bytes of weights") && !e.contains("newer"),
            "{e}"
        );
        std::fs::write(dir.path().join(FILE), [&bytes[..], &[0; 4]].concat()).unwrap();
        let e = MetaDetector::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("bytes of weights") && e.contains("newer"), "{e}");
        assert!(MetaDetector::load(&dir.path().join("none"))
            .unwrap()
            .is_none());
    }

    /// A detector on 10 known classes (24 dimensions) and 30 cases of each
    /// known class and of 3 near-topic newcomers, each hidden centre
    /// beside a known one: (detector, known cases, new cases).
    fn newcomers(seed: u64) -> (MetaDetector, Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let d = 24;
        let mut rng = Rng(seed);
        let known = random_centres(&mut rng, 10, d);
        let hidden: Vec<Vec<f32>> = known[..3]
            .iter()
            .map(|c| {
                let v: Vec<f32> = c
                    .iter()
                    .map(|x| x + 0.8 * rng.gauss() / (d as f32).sqrt())
                    .collect();
                unit_rows(&v, d)
            })
            .collect();
        let det = fit_on_blobs(&mut rng, &known, 0.1);
        let rows = |x: &[f32]| x.chunks(d).map(<[f32]>::to_vec).collect::<Vec<_>>();
        let (in_x, _) = blobs(&mut rng, &known, 30, 0.1);
        let (out_x, _) = blobs(&mut rng, &hidden, 30, 0.1);
        (det, rows(&in_x), rows(&out_x))
    }

    #[test]
    fn batch_rule_finds_a_new_kind_of_case_that_recurs() {
        let d = 24;
        let (det, in_rows, out_rows) = newcomers(0xBA7C);
        assert!(det.has_batch_rule());
        let n_in = in_rows.len();
        let mut batch = in_rows;
        batch.extend(out_rows);
        let per_case = det.scores(&batch).unwrap();
        let whole = det.scores_batch(&batch).unwrap();
        let a_case = auroc(&per_case[n_in..], &per_case[..n_in]);
        let a_batch = auroc(&whole[n_in..], &whole[..n_in]);
        assert!(
            a_batch > 0.95 && a_batch >= a_case,
            "batch AUROC {a_batch} vs per case {a_case}"
        );
        // The rule learned that closer-in-the-batch-than-in-training
        // (negative novelty) means out of scope.
        let w_nov = det.batch.as_ref().unwrap().w[NF];
        assert!(w_nov < 0.0, "novelty weight {w_nov}");
        // The smoothing rule trusts both a case's own batch logit and its
        // neighbours', and does not undo what the batch rule found.
        let sm = det.smooth.as_ref().expect("smoothing rule");
        assert!(
            sm.w[0] > 0.0 && sm.w[1] > 0.0,
            "smoothing weights {:?}",
            sm.w
        );
        let mut unsmoothed = det.clone();
        unsmoothed.smooth = None;
        let s1 = unsmoothed.scores_batch(&batch).unwrap();
        let a_s1 = auroc(&s1[n_in..], &s1[..n_in]);
        assert!(a_batch > a_s1, "smoothed {a_batch} vs {a_s1}");
        // The novelty itself: about 0 for known cases, clearly below for
        // the newcomers, and deterministic.
        let xu = unit_rows(&batch.concat(), d);
        let pred: Vec<usize> = det.base.features(&xu).iter().map(|(p, _)| *p).collect();
        let nov = batch_novelty(&det.base, &xu, &pred, 1);
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
        let (m_in, m_out) = (mean(&nov[..n_in]), mean(&nov[n_in..]));
        assert!(m_in.abs() < 0.05 && m_out < m_in - 0.05, "{m_in} {m_out}");
        assert_eq!(det.scores_batch(&batch).unwrap(), whole);
        // Training's single pass gives both at once.
        assert_eq!(
            det.scores_both(&batch).unwrap(),
            (per_case.clone(), whole.clone())
        );
        // A batch of one case has no batch evidence.
        assert_eq!(batch_novelty(&det.base, &xu[..d], &pred[..1], 1), vec![0.0]);
        // A known case sent many times (a template, retries) is one case, not
        // a new kind of case recurring: its copies score as it does once,
        // within what the batch's other draws move.
        let mut many = batch.clone();
        many.extend(std::iter::repeat_n(batch[0].clone(), 30));
        let z_many = det.scores_batch(&many).unwrap();
        let copies = &z_many[batch.len()..];
        assert!(copies.iter().all(|&z| z == copies[0]), "{copies:?}");
        let spread = in_range(&whole[..n_in]);
        assert!(
            (copies[0] - whole[0]).abs() < 0.1 * spread,
            "copies {} against once {} (known cases span {spread})",
            copies[0],
            whole[0]
        );

        let dir = tempfile::tempdir().unwrap();
        det.save(dir.path()).unwrap();
        let back = MetaDetector::load(dir.path()).unwrap().unwrap();
        assert_eq!(back, det);
        assert_eq!(back.scores_batch(&batch).unwrap(), whole);
        // Detectors written before the smoothing rule keep their batch rule.
        unsmoothed.save(dir.path()).unwrap();
        let back = MetaDetector::load(dir.path()).unwrap().unwrap();
        assert_eq!(back.scores_batch(&batch).unwrap(), s1);
        // Detectors written before the batch rule load without it and
        // judge batches case by case.
        let mut old = det.clone();
        old.batch = None;
        old.smooth = None;
        old.save(dir.path()).unwrap();
        let old = MetaDetector::load(dir.path()).unwrap().unwrap();
        assert!(!old.has_batch_rule());
        assert_eq!(old.scores_batch(&batch).unwrap(), per_case);
    }

    #[test]
    fn a_stream_finds_recurring_newcomers_without_looking_ahead() {
        let d = 24;
        let (det, in_rows, out_rows) = newcomers(0x57EA);
        // Arrival order: known and new cases interleaved at random.
        let mut arrivals: Vec<(bool, Vec<f32>)> = in_rows
            .into_iter()
            .map(|r| (false, r))
            .chain(out_rows.into_iter().map(|r| (true, r)))
            .collect();
        let mut st = 0x0DE7u64;
        crate::shuffle(&mut arrivals, &mut st);
        let stream: Vec<Vec<f32>> = arrivals.iter().map(|(_, r)| r.clone()).collect();
        let is_new: Vec<bool> = arrivals.iter().map(|(n, _)| *n).collect();
        let split = |z: &[f32]| {
            let (mut o, mut i) = (Vec::new(), Vec::new());
            for (&v, &n) in z.iter().zip(&is_new) {
                if n {
                    o.push(v)
                } else {
                    i.push(v)
                }
            }
            (o, i)
        };
        let per_case = det.scores(&stream).unwrap();
        let mut w = StreamWindow::new(1000, d);
        let z = det.scores_stream(&mut w, &stream).unwrap();
        assert_eq!(w.len(), stream.len());
        let (o, i) = split(&per_case);
        let a_case = auroc(&o, &i);
        let (o, i) = split(&z);
        let a_stream = auroc(&o, &i);
        assert!(
            a_stream > 0.95 && a_stream > a_case,
            "stream AUROC {a_stream} vs per case {a_case}"
        );
        // The novelty: about 0 for known cases, clearly below for the
        // newcomers once some of their kind came before them.
        let xu = unit_rows(&stream.concat(), d);
        let pred: Vec<usize> = det.base.features(&xu).iter().map(|(p, _)| *p).collect();
        let mut wn = StreamWindow::new(1000, d);
        let mem_of = rows_by_class(&det.base.mem_y, det.base.k);
        let nov: Vec<f32> = xu
            .chunks(d)
            .zip(&pred)
            .map(|(x, &c)| {
                let v = det.stream_novelty(&wn, x, c, &mem_of[c]);
                wn.push(x, c, 0.0);
                v
            })
            .collect();
        let (o, i) = split(&nov[..]);
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
        let (m_out, m_in) = (mean(&o[o.len() / 2..]), mean(&i[i.len() / 2..]));
        assert!(m_in.abs() < 0.05 && m_out < m_in - 0.05, "{m_in} {m_out}");
        // No case's score depends on a later one, nor on how the stream
        // was cut into requests.
        let mut w2 = StreamWindow::new(1000, d);
        let head = det.scores_stream(&mut w2, &stream[..50]).unwrap();
        assert_eq!(head, z[..50]);
        let tail = det.scores_stream(&mut w2, &stream[50..]).unwrap();
        assert_eq!(tail, z[50..]);
        // The first case has nothing before it: no novelty, and its own
        // logit stands in for its neighbours'.
        let batch = det.batch.as_ref().unwrap();
        let f = det.base.features_unit(&unit_rows(&stream[0], d))[0].1;
        let s1 = batch.logit(&with_novelty(&f, 0.0));
        let first = det.smooth.as_ref().unwrap().logit(&[s1, s1]);
        assert!((z[0] - first).abs() < 1e-5, "{} vs {first}", z[0]);
        // The same text again is one case: a repeat scores as if the
        // window did not hold it.
        let mut wr = StreamWindow::new(1000, d);
        det.scores_stream(&mut wr, &stream[..40]).unwrap();
        let mut twice = wr.clone();
        let once = det.scores_stream(&mut wr, &stream[40..41]).unwrap();
        let again: Vec<Vec<f32>> = vec![stream[40].clone(), stream[40].clone()];
        let z2 = det.scores_stream(&mut twice, &again).unwrap();
        assert_eq!(z2, [once[0], once[0]]);
        // A window keeps its newest cases only.
        let mut small = StreamWindow::new(7, d);
        det.scores_stream(&mut small, &stream[..20]).unwrap();
        assert_eq!(small.len(), 7);
        let kept: Vec<usize> = small.newest_first().collect();
        assert_eq!(kept, [5, 4, 3, 2, 1, 0, 6], "slots, newest first");
        // Detectors without a batch rule judge each case alone.
        let mut old = det.clone();
        old.batch = None;
        old.smooth = None;
        let mut w3 = StreamWindow::new(10, d);
        assert_eq!(old.scores_stream(&mut w3, &stream).unwrap(), per_case);
        assert!(w3.is_empty());
    }

    #[test]
    fn added_tags_weigh_like_the_median_old_class() {
        let mem_y: Vec<u32> = [(0, 60), (1, 60), (2, 30)]
            .iter()
            .flat_map(|&(c, n)| std::iter::repeat_n(c, n))
            .collect();
        let new_y = [3, 3, 3, 3, 4, 4, 4, 4, 4, 4];
        let copies = fit_copies(&mem_y, &new_y);
        assert_eq!(copies.len(), mem_y.len() + new_y.len());
        assert!(copies[..mem_y.len()].iter().all(|&n| n == 1));
        assert_eq!(
            &copies[mem_y.len()..],
            &[15, 15, 15, 15, 10, 10, 10, 10, 10, 10]
        );
        // A tag with more examples than the median class keeps them once.
        assert_eq!(fit_copies(&[0, 0, 1, 1], &[2, 2, 2, 2, 2])[4..], [1; 5]);
    }

    /// A class of four rows beside two of sixty: fitted once each, the
    /// base model gives its fresh cases less probability than when its
    /// rows weigh like the others'; the neighbour statistics are the same.
    #[test]
    fn copies_weigh_a_small_class_in_the_base_fit() {
        let d = 24;
        let mut rng = Rng(0xADD5);
        let centres = random_centres(&mut rng, 3, d);
        let (mut x, mut y) = blobs(&mut rng, &centres[..2], 60, 0.35);
        let (sx, sy) = blobs(&mut rng, &centres[2..], 4, 0.35);
        x.extend_from_slice(&sx);
        y.extend(sy.iter().map(|_| 2u32));
        let (fresh, _) = blobs(&mut rng, &centres[2..], 50, 0.35);
        let once = Base::fit(&x, &y, 3, d, &MetaParams::default()).unwrap();
        let mut copies = vec![1; 120];
        copies.extend([15; 4]);
        let weighed = Base::fit_with(&x, &y, 3, d, &MetaParams::default(), &copies).unwrap();
        let p_small = |b: &Base| {
            let p: f32 = fresh
                .chunks(d)
                .map(|r| {
                    let z: Vec<f32> = (0..3)
                        .map(|c| {
                            b.b[c]
                                + r.iter()
                                    .enumerate()
                                    .map(|(i, v)| v * b.w[i * 3 + c])
                                    .sum::<f32>()
                        })
                        .collect();
                    let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = z.iter().map(|v| (v - m).exp()).collect();
                    e[2] / e.iter().sum::<f32>()
                })
                .sum();
            p / 50.0
        };
        let (a, b) = (p_small(&once), p_small(&weighed));
        assert!(b > a + 0.05, "copies {b} vs once {a}");
        assert_eq!(once.nn_loo, weighed.nn_loo);
        assert_eq!(once.q_nn, weighed.q_nn);
        // All ones is the plain fit.
        let ones = Base::fit_with(&x, &y, 3, d, &MetaParams::default(), &[1; 124]).unwrap();
        assert_eq!((ones.w, ones.b), (once.w.clone(), once.b.clone()));
    }

    #[test]
    fn neighbour_mean_averages_the_nearest_other_rows() {
        // Two tight groups: three rows near the x axis, two near the y axis.
        let rows: [[f32; 2]; 5] = [
            [1.0, 0.0],
            [0.99, 0.14],
            [0.98, -0.2],
            [0.0, 1.0],
            [0.1, 0.99],
        ];
        let xu = unit_rows(&rows.concat(), 2);
        let s = [1.0, 2.0, 3.0, 10.0, 20.0];
        // k = 1: each row takes its nearest other row's value.
        assert_eq!(
            neighbour_mean(&xu, 2, &s, 1, 100, 1),
            vec![2.0, 1.0, 1.0, 20.0, 10.0]
        );
        // k = 2 within the first group: the other two of its rows.
        let m = neighbour_mean(&xu, 2, &s, 2, 100, 1);
        assert_eq!(&m[..3], &[2.5, 2.0, 1.5]);
        // A lone row keeps its own value; the pool bounds the candidates
        // and a fixed seed fixes the sample.
        assert_eq!(neighbour_mean(&xu[..2], 2, &s[..1], 5, 100, 1), vec![1.0]);
        let a = neighbour_mean(&xu, 2, &s, 1, 2, 9);
        assert_eq!(a, neighbour_mean(&xu, 2, &s, 1, 2, 9));
        assert!(a.iter().all(|v| s.contains(v)), "{a:?}");
    }

    #[test]
    fn memory_per_class_shrinks_for_large_taxonomies() {
        let p = MetaParams::default();
        assert_eq!(p.per_class(67), 298);
        assert_eq!(p.per_class(10), 300);
        assert_eq!(p.per_class(500), 40);
        assert_eq!(p.per_class(5000), 20);
    }

    /// Rows in a planted plane: the two directions found span it, so a
    /// point of the plane has no residual and an orthogonal one keeps its
    /// whole length.
    #[test]
    fn principal_rows_find_a_planted_plane() {
        let d = 12;
        let mut rng = Rng(0x9CA);
        let (u, v) = (unit_rows(&[1.0; 12], d), {
            let mut v = vec![0.0f32; d];
            (v[0], v[1]) = (1.0, -1.0);
            unit_rows(&v, d)
        });
        let x: Vec<f32> = (0..50)
            .flat_map(|_| {
                let (a, b) = (3.0 * rng.gauss(), rng.gauss());
                let row: Vec<f32> = (0..d)
                    .map(|j| a * u[j] + b * v[j] + 1e-3 * rng.gauss())
                    .collect();
                row
            })
            .collect();
        let idx: Vec<usize> = (0..50).collect();
        let zero = vec![0.0f32; d];
        let basis = principal_rows(&x, &idx, &zero, d, 2);
        assert_eq!(basis.len(), 2 * d);
        let in_plane: Vec<f32> = (0..d).map(|j| 2.0 * u[j] - v[j]).collect();
        assert!(residual(&in_plane, &zero, &basis, d) < 0.01);
        let mut off = vec![0.0f32; d];
        (off[2], off[3]) = (1.0, -1.0);
        let r = residual(&off, &zero, &basis, d);
        assert!((r - 2f32.sqrt()).abs() < 0.01, "{r}");
        // Three rows span at most two directions around their mean.
        assert_eq!(principal_rows(&x, &idx[..3], &zero, d, 5).len(), 2 * d);
        assert!(principal_rows(&x, &idx[..1], &zero, d, 5).is_empty());
    }

    /// A class of three rows learns its direction from its siblings' when
    /// the pooled covariance is mixed in: its own rows vary along one axis,
    /// the other class's (and so the pooled) along another, which then wins.
    #[test]
    fn a_small_class_borrows_the_pooled_directions() {
        let d = 12;
        let mut rng = Rng(0x5A1);
        let (mut mem, mut y) = (Vec::new(), Vec::new());
        for i in 0..53 {
            let mut row = vec![0.0f32; d];
            let (axis, scale, class) = if i < 50 { (0, 3.0, 0) } else { (5, 1.0, 1) };
            row[axis] = scale * rng.gauss();
            row[9] = if class == 1 { 4.0 } else { 0.0 };
            row.iter_mut().for_each(|v| *v += 1e-3 * rng.gauss());
            mem.extend(row);
            y.push(class);
        }
        let along_pooled = |sub: &Subspaces| {
            let mut x = sub.centre[d..2 * d].to_vec();
            x[0] += 2.0;
            sub.residuals(&x, 1, d).0
        };
        let sums = class_sums(&mem, &y, 2, d);
        let own = along_pooled(&Subspaces::fit(&mem, &y, 2, d, &sums, 0.0));
        assert!((own - 2.0).abs() < 0.05, "{own}");
        let shrunk = Subspaces::fit(&mem, &y, 2, d, &sums, 30.0);
        assert_eq!(shrunk.class[1].len(), d);
        let borrowed = along_pooled(&shrunk);
        assert!(borrowed < 0.05, "{borrowed}");
    }

    /// A detector file from before the residual features loads with zero
    /// weights on them and scores as it did.
    #[test]
    fn detectors_without_the_residual_features_still_load() {
        let d = 24;
        let mut rng = Rng(0x01D);
        let centres = random_centres(&mut rng, 8, d);
        let mut det = fit_on_blobs(&mut rng, &centres, 0.12);
        let old: Vec<usize> = (0..NF)
            .filter(|&j| !FEATURES[j].starts_with("resid_"))
            .collect();
        for j in 0..NF {
            if !old.contains(&j) {
                det.rule.w[j] = 0.0;
                det.batch.as_mut().unwrap().w[j] = 0.0;
            }
        }
        let dir = tempfile::tempdir().unwrap();
        det.save(dir.path()).unwrap();
        // Rewrite the file as it was written before: 20 features.
        let path = dir.path().join(FILE);
        let (mut h, body) = read_parts(&path);
        h["features"] = old.iter().map(|&j| FEATURES[j]).collect::<Vec<_>>().into();
        let bw: Vec<f32> = old
            .iter()
            .map(|&j| det.batch.as_ref().unwrap().w[j])
            .chain([det.batch.as_ref().unwrap().w[NF]])
            .collect();
        h["batch"]["w"] = bw.into();
        let mut out = Vec::new();
        for &j in &old {
            out.extend(&body[4 * j..4 * j + 4]);
        }
        out.extend(&body[4 * NF..]);
        write_parts(&path, &h, &out);
        let back = MetaDetector::load(dir.path()).unwrap().unwrap();
        assert_eq!(back, det);
        assert_eq!(
            back.scores(&centres).unwrap(),
            det.scores(&centres).unwrap()
        );
    }

    /// A detector file's header and body.
    fn read_parts(path: &Path) -> (serde_json::Value, Vec<u8>) {
        let bytes = std::fs::read(path).unwrap();
        let hl = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        let h = serde_json::from_slice(&bytes[12..12 + hl]).unwrap();
        (h, bytes[12 + hl..].to_vec())
    }

    fn write_parts(path: &Path, h: &serde_json::Value, body: &[u8]) {
        let h = serde_json::to_vec(h).unwrap();
        let mut out = MAGIC.to_vec();
        out.extend((h.len() as u32).to_le_bytes());
        out.extend(&h);
        out.extend(body);
        std::fs::write(path, out).unwrap();
    }

    /// Loading reads the stored subspaces; a file written before they were
    /// stored derives the same ones from its memory.
    #[test]
    fn subspaces_are_read_and_older_files_derive_them() {
        let d = 24;
        let mut rng = Rng(0x5B5);
        let centres = random_centres(&mut rng, 8, d);
        let det = fit_on_blobs(&mut rng, &centres, 0.12);
        let sub = &det.base.sub;
        assert!(!sub.global.is_empty() && sub.class.iter().all(|c| !c.is_empty()));
        let dir = tempfile::tempdir().unwrap();
        det.save(dir.path()).unwrap();
        let path = dir.path().join(FILE);
        let (mut h, body) = read_parts(&path);
        let stored = sub.parts().map(Vec::len).sum::<usize>();
        let start = body.len() - 4 * stored;
        // Zeroed global directions in the file are what loads.
        let mut zeroed = body.clone();
        let g = start + 4 * d;
        zeroed[g..g + 4 * sub.global.len()].fill(0);
        write_parts(&path, &h, &zeroed);
        let back = MetaDetector::load(dir.path()).unwrap().unwrap();
        assert!(back.base.sub.global.iter().all(|&v| v == 0.0));
        assert_eq!(back.base.sub.class, sub.class);
        // Without them (an older file) they are fitted again, alike.
        h.as_object_mut().unwrap().remove("subspaces");
        write_parts(&path, &h, &body[..start]);
        let back = MetaDetector::load(dir.path()).unwrap().unwrap();
        assert_eq!(back, det);
        // A shape that does not fit the detector is an error that says so.
        h["subspaces"] = serde_json::json!({"global": d + 1, "class": []});
        write_parts(&path, &h, &body);
        let e = MetaDetector::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("subspace shape"), "{e}");
    }

    /// Headers written before `max_rows` and `class_shrink` load with the
    /// default bound, and with each class's own scatter, which those
    /// detectors were trained with (new ones take [`CLASS_SHRINK`]).
    #[test]
    fn headers_from_before_max_rows_still_load() {
        let old =
            r#"{"episodes":6,"hold":10,"base_c":10.0,"det_c":0.1,"seed":107,"max_per_class":300}"#;
        let p: MetaParams = serde_json::from_str(old).unwrap();
        let new = MetaParams::default();
        assert_eq!(new.class_shrink, CLASS_SHRINK);
        assert_eq!(
            p,
            MetaParams {
                class_shrink: 0.0,
                ..new
            }
        );
    }

    #[test]
    fn too_few_classes_is_an_input_error() {
        let inp = MetaInputs {
            d: 2,
            k: 3,
            fit_x: &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0],
            fit_y: &[0, 1, 2],
            val_x: &[],
            val_y: &[],
        };
        let e = MetaDetector::fit(&inp, &MetaParams::default(), &|_| {}).unwrap_err();
        assert!(
            e.is_input() && e.to_string().contains("at least 4 classes"),
            "{e}"
        );
    }

    #[test]
    fn detector_regression_reaches_its_optimum() {
        // Stationarity of 0.5|w|² + C Σ s_i loss_i: the gradient vanishes.
        let mut rng = Rng(99);
        let x: Vec<[f32; NF]> = (0..400)
            .map(|_| std::array::from_fn(|_| rng.gauss()))
            .collect();
        let y: Vec<bool> = x
            .iter()
            .map(|r| r[0] + 0.5 * r[3] + 0.3 * rng.gauss() > 0.8)
            .collect();
        let c = 0.1;
        let (w, b) = fit_binary_balanced(&x, &y, c);
        let npos = y.iter().filter(|&&v| v).count() as f64;
        let nneg = 400.0 - npos;
        let mut g = w.clone();
        let mut gb = 0.0;
        for (r, &t) in x.iter().zip(&y) {
            let z: f64 = b + r.iter().zip(&w).map(|(a, b)| *a as f64 * b).sum::<f64>();
            let s = 1.0 / (1.0 + (-z).exp());
            let wt = c * 400.0 / (2.0 * if t { npos } else { nneg });
            let e = wt * (s - t as u8 as f64);
            for j in 0..NF {
                g[j] += e * r[j] as f64;
            }
            gb += e;
        }
        let worst = g.iter().chain([&gb]).fold(0f64, |m, v| m.max(v.abs()));
        assert!(worst < 1e-6, "gradient {worst}");
        assert!(w[0] > 0.0 && w[3] > 0.0 && w[0] > w[3], "{w:?}");
    }
}
