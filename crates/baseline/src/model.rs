//! Fitting, inference and the on-disk format of the baseline model.

use std::cell::RefCell;
use std::path::Path;
use std::sync::LazyLock;

use casetag_core::{has_avx2, Classifier, ClassifierError, LabelSpace, LevelScores, Transcript};
use ndarray::{Array1, Array2};
use rayon::prelude::*;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use crate::features::{prefetch, Featurizer, Scratch};
use crate::{BaselineError, BaselineParams, Result};

/// File names inside a model directory.
pub const WEIGHTS_FILE: &str = "baseline.safetensors";
pub const CONFIG_FILE: &str = "baseline.json";
const FORMAT: &str = "casetag-baseline/1";

/// Logit of a class that had no training rows: its weights are zero and its
/// probability is zero for every input, while the output keeps its length.
const ABSENT_LOGIT: f32 = -1.0e4;
/// Bucket not among the model inputs.
const NO_COL: u32 = u32::MAX;
/// Rows featurized per rayon task (each task reuses one scratch).
const CHUNK: usize = 256;
/// Cap on the class × bucket table used for chi-squared (f32 entries).
const MAX_CHI2_CELLS: usize = 64 << 20;

/// A fitted baseline: hashing featurizer + IDF + selected buckets + weights.
#[derive(Debug, Clone)]
pub struct BaselineModel {
    id: String,
    params: BaselineParams,
    label_space: LabelSpace,
    feat: Featurizer,
    /// IDF per hash bucket (`2^hash_bits`); L2 norms run over all buckets.
    idf: Vec<f32>,
    /// Selected buckets, ascending; column `k` of the weights is `buckets[k]`.
    buckets: Vec<u32>,
    /// Per bucket: IDF and column (or [`NO_COL`]); derived from `idf` and
    /// `buckets`. One table means one cache miss per distinct n-gram.
    meta: Vec<Meta>,
    /// Weights, row-major `buckets.len() × stride`: each row holds the
    /// `n_outputs` weights of one input, zero-padded to `stride` (a multiple
    /// of 8 floats) for whole-vector loads at inference.
    padded: Vec<f32>,
    stride: usize,
    bias: Vec<f32>,
    /// The CPU has AVX2 (checked once, at construction).
    avx2: bool,
}

/// Rows of `weights` (`n_out` wide) padded with zeros to a multiple of 8.
fn pad_rows(weights: &[f32], n_out: usize) -> (Vec<f32>, usize) {
    let stride = n_out.div_ceil(8) * 8;
    let mut padded = vec![0f32; weights.len() / n_out.max(1) * stride];
    for (dst, src) in padded
        .chunks_exact_mut(stride)
        .zip(weights.chunks_exact(n_out))
    {
        dst[..n_out].copy_from_slice(src);
    }
    (padded, stride)
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    idf: f32,
    col: u32,
}

fn meta_table(idf: &[f32], buckets: &[u32]) -> Vec<Meta> {
    let mut meta: Vec<Meta> = idf.iter().map(|&idf| Meta { idf, col: NO_COL }).collect();
    for (k, &b) in buckets.iter().enumerate() {
        meta[b as usize].col = k as u32;
    }
    meta
}

/// `baseline.json`.
#[derive(Debug, Serialize, Deserialize)]
struct ConfigFile {
    format: String,
    id: String,
    params: BaselineParams,
    label_space: LabelSpace,
    n_inputs: usize,
}

fn featurizer(p: &BaselineParams) -> Featurizer {
    Featurizer {
        bits: p.hash_bits,
        word: p.word_ngrams,
        chars: p.char_ngrams,
        unspaced: p.unspaced_chars,
    }
}

/// Sublinear term frequency `1 + ln(count)`. Most n-grams occur once, and
/// nearly all the rest fewer than 64 times: those come from a table holding
/// exactly what the formula gives, so no `ln` is evaluated per n-gram.
#[inline]
fn tf(count: u32) -> f32 {
    static SMALL: LazyLock<[f32; 64]> =
        LazyLock::new(|| std::array::from_fn(|c| tf_exact(c.max(1) as u32)));
    match count {
        0 | 1 => 1.0,
        c if c < 64 => SMALL[c as usize],
        c => tf_exact(c),
    }
}

fn tf_exact(count: u32) -> f32 {
    1.0 + (count as f32).ln()
}

/// Sublinear TF × IDF, L2-normalized over all buckets of the text.
fn tfidf(counts: &[(u32, u32)], idf: &[f32], dst: &mut Vec<(u32, f32)>) {
    dst.clear();
    let mut norm2 = 0.0f32;
    for &(b, c) in counts {
        let v = tf(c) * idf[b as usize];
        norm2 += v * v;
        dst.push((b, v));
    }
    if norm2 > 0.0 {
        let inv = norm2.sqrt().recip();
        for x in dst.iter_mut() {
            x.1 *= inv;
        }
    }
}

/// Row indices to fit on: all rows, or a per-class proportional sample of
/// `max_rows` (every present class keeps at least one row), ascending.
fn stratified_subsample(targets: &[usize], n_out: usize, max_rows: usize, seed: u64) -> Vec<usize> {
    let n = targets.len();
    if n <= max_rows {
        return (0..n).collect();
    }
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); n_out];
    for (i, &t) in targets.iter().enumerate() {
        by_class[t].push(i);
    }
    let mut quota: Vec<usize> = by_class
        .iter()
        .map(|v| {
            if v.is_empty() {
                0
            } else {
                (v.len() * max_rows / n).max(1)
            }
        })
        .collect();
    // Flooring leaves room, the minimum of one may overshoot: fix up on the
    // largest classes so the total is exactly max_rows where possible.
    let mut total: usize = quota.iter().sum();
    let mut order: Vec<usize> = (0..n_out).collect();
    order.sort_by_key(|&c| std::cmp::Reverse(by_class[c].len()));
    while total < max_rows {
        let before = total;
        for &c in &order {
            if total < max_rows && quota[c] < by_class[c].len() {
                quota[c] += 1;
                total += 1;
            }
        }
        if total == before {
            break;
        }
    }
    while total > max_rows {
        let before = total;
        for &c in &order {
            if total > max_rows && quota[c] > 1 {
                quota[c] -= 1;
                total -= 1;
            }
        }
        if total == before {
            break;
        }
    }
    let mut rng = casetag_core::metrics::SplitMix::from_state(seed);
    let mut rows = Vec::with_capacity(total);
    for (c, idx) in by_class.iter_mut().enumerate() {
        // Partial Fisher–Yates: the first quota[c] entries become a uniform sample.
        for i in 0..quota[c] {
            let j = i + (rng.next_u64() % (idx.len() - i) as u64) as usize;
            idx.swap(i, j);
        }
        rows.extend_from_slice(&idx[..quota[c]]);
    }
    rows.sort_unstable();
    rows
}

/// Chi-squared score of each bucket against the classes, computed on the
/// TF-IDF values like scikit-learn's `chi2`. Buckets never seen (or left out
/// of the bounded table) score -1, so that seen ones stay eligible even when
/// none is informative (a single class scores 0 everywhere).
fn chi2_scores(rows: &[Vec<(u32, f32)>], y: &[usize], n_buckets: usize, n_out: usize) -> Vec<f32> {
    let mut df = vec![0u32; n_buckets];
    for r in rows {
        for &(b, _) in r {
            df[b as usize] += 1;
        }
    }
    let mut present: Vec<u32> = (0..n_buckets as u32)
        .filter(|&b| df[b as usize] > 0)
        .collect();
    // Bound the table: with a huge label space keep the most frequent buckets.
    let max_cand = (MAX_CHI2_CELLS / n_out.max(1)).max(1);
    if present.len() > max_cand {
        present.sort_by_key(|&b| (std::cmp::Reverse(df[b as usize]), b));
        present.truncate(max_cand);
    }
    let mut cand = vec![NO_COL; n_buckets];
    for (k, &b) in present.iter().enumerate() {
        cand[b as usize] = k as u32;
    }
    let mut obs = vec![0f32; present.len() * n_out];
    let mut feat_sum = vec![0f64; present.len()];
    let mut class_n = vec![0usize; n_out];
    for (r, &c) in rows.iter().zip(y) {
        class_n[c] += 1;
        for &(b, v) in r {
            let k = cand[b as usize];
            if k != NO_COL {
                obs[k as usize * n_out + c] += v;
                feat_sum[k as usize] += f64::from(v);
            }
        }
    }
    let n = rows.len().max(1) as f64;
    let mut scores = vec![-1f32; n_buckets];
    for (k, &b) in present.iter().enumerate() {
        let mut s = 0f64;
        for (c, &nc) in class_n.iter().enumerate() {
            if nc == 0 {
                continue;
            }
            let e = nc as f64 / n * feat_sum[k];
            if e > 0.0 {
                let d = f64::from(obs[k * n_out + c]) - e;
                s += d * d / e;
            }
        }
        scores[b as usize] = s as f32;
    }
    scores
}

/// Fit the baseline. `targets[i]` indexes `label_space` outputs for `texts[i]`.
pub fn fit(
    params: &BaselineParams,
    texts: &[&str],
    targets: &[usize],
    label_space: &LabelSpace,
    id: &str,
    progress: &dyn Fn(&str),
) -> Result<BaselineModel> {
    params.check()?;
    let n_out = label_space.n_outputs();
    if n_out == 0 {
        return Err(BaselineError::Data("label space has no outputs".into()));
    }
    if texts.len() != targets.len() {
        return Err(BaselineError::Data(format!(
            "{} texts but {} targets",
            texts.len(),
            targets.len()
        )));
    }
    if texts.is_empty() {
        return Err(BaselineError::Data("no training rows".into()));
    }
    if let Some((i, &t)) = targets.iter().enumerate().find(|(_, &t)| t >= n_out) {
        return Err(BaselineError::Data(format!(
            "row {i}: target {t} is outside the label space ({n_out} outputs)"
        )));
    }
    let feat = featurizer(params);
    let nb = feat.n_buckets();

    // 1. IDF over every training row (only a counter per bucket and thread).
    progress(&format!("baseline: hashing {} rows", texts.len()));
    let df = texts
        .par_chunks(CHUNK)
        .fold(
            || (vec![0u32; nb], Scratch::default()),
            |(mut df, mut s), chunk| {
                for t in chunk {
                    feat.featurize(t, &mut s);
                    for &(b, _) in &s.out {
                        df[b as usize] += 1;
                    }
                }
                (df, s)
            },
        )
        .map(|(df, _)| df)
        .reduce(
            || vec![0u32; nb],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        );
    let n_docs = texts.len() as f64;
    let idf: Vec<f32> = df
        .iter()
        .map(|&d| (((1.0 + n_docs) / (1.0 + f64::from(d))).ln() + 1.0) as f32)
        .collect();
    drop(df);

    // 2. Sparse TF-IDF rows of the (sub)sample the model is fitted on.
    let rows = stratified_subsample(targets, n_out, params.max_fit_rows, params.seed);
    let y: Vec<usize> = rows.iter().map(|&i| targets[i]).collect();
    progress(&format!("baseline: featurizing {} fit rows", rows.len()));
    let sparse: Vec<Vec<(u32, f32)>> = rows
        .par_chunks(CHUNK)
        .flat_map_iter(|chunk| {
            let mut s = Scratch::default();
            chunk
                .iter()
                .map(|&i| {
                    feat.featurize(texts[i], &mut s);
                    let mut v = Vec::with_capacity(s.out.len());
                    tfidf(&s.out, &idf, &mut v);
                    v
                })
                .collect::<Vec<_>>()
        })
        .collect();

    // 3. Keep the n_features most class-informative buckets.
    let scores = chi2_scores(&sparse, &y, nb, n_out);
    let mut ranked: Vec<u32> = (0..nb as u32)
        .filter(|&b| scores[b as usize] >= 0.0)
        .collect();
    if ranked.is_empty() {
        return Err(BaselineError::Data(
            "no text features in the training rows (are all texts empty?)".into(),
        ));
    }
    ranked.sort_by(|&a, &b| {
        scores[b as usize]
            .total_cmp(&scores[a as usize])
            .then(a.cmp(&b))
    });
    ranked.truncate(params.n_features);
    ranked.sort_unstable();
    let buckets = ranked;
    let k = buckets.len();
    let col = column_map(&buckets, nb);

    // 4. Dense matrix of the selected columns, then linfa.
    progress(&format!(
        "baseline: fitting logistic regression on {} rows x {} features, {} classes",
        rows.len(),
        k,
        n_out
    ));
    let mut x = Array2::<f32>::zeros((rows.len(), k));
    for (mut xr, r) in x.rows_mut().into_iter().zip(sparse) {
        for (b, v) in r {
            let c = col[b as usize];
            if c != NO_COL {
                xr[c as usize] = v;
            }
        }
    }
    let (weights, bias) = fit_softmax_regression(
        x,
        &y,
        n_out,
        params.alpha as f32,
        params.max_iterations,
        ABSENT_LOGIT,
    )
    .map_err(BaselineError::Fit)?;
    progress("baseline: done");
    Ok(BaselineModel::from_parts(
        id,
        params.clone(),
        label_space.clone(),
        feat,
        idf,
        buckets,
        &weights,
        bias,
    ))
}

/// Multinomial logistic regression (L2 weight `alpha`) of `y` (classes
/// `0..n_out`) on the rows of `x`, by L-BFGS on [`crate::softmax`]'s
/// objective. Returns row-major weights (`x`'s columns x `n_out`) and the
/// biases; a class without rows gets zero weights and `absent_logit` as its
/// bias. With fewer than two classes present nothing is fitted (zero
/// weights). Errors are the solver's, or non-finite weights.
pub fn fit_softmax_regression(
    x: Array2<f32>,
    y: &[usize],
    n_out: usize,
    alpha: f32,
    max_iterations: u64,
    absent_logit: f32,
) -> std::result::Result<(Vec<f32>, Vec<f32>), String> {
    let k = x.ncols();
    let mut present = vec![false; n_out];
    y.iter().for_each(|&c| present[c] = true);
    let mut weights = vec![0f32; k * n_out];
    let mut bias: Vec<f32> = present
        .iter()
        .map(|&p| if p { 0.0 } else { absent_logit })
        .collect();
    // The solver sees the present classes only, as columns 0..c.
    let classes: Vec<usize> = (0..n_out).filter(|&c| present[c]).collect();
    if classes.len() >= 2 {
        let mut col = vec![0usize; n_out];
        for (j, &c) in classes.iter().enumerate() {
            col[c] = j;
        }
        let yc: Vec<usize> = y.iter().map(|&c| col[c]).collect();
        let nc = classes.len();
        let obj = || crate::softmax::Objective {
            x: &x,
            y: &yc,
            n_classes: nc,
            alpha,
        };
        let mut p = Array1::<f32>::zeros((k + 1) * nc);
        let mut last = obj().value(&p);
        for _ in 0..MAX_SOLVER_ROUNDS {
            let next = crate::softmax::minimise(obj(), p.clone(), max_iterations)?;
            let value = obj().value(&next);
            if value < last {
                p = next;
            }
            if last - value <= 1e-5 * value.abs().max(1.0) {
                break;
            }
            last = value;
        }
        for (j, &class) in classes.iter().enumerate() {
            bias[class] = p[k * nc + j];
            for r in 0..k {
                weights[r * n_out + class] = p[r * nc + j];
            }
        }
    }
    if weights.iter().chain(&bias).any(|v| !v.is_finite()) {
        return Err("solver produced non-finite weights".into());
    }
    Ok((weights, bias))
}

/// Rounds of the solver: L-BFGS stops for good when a line search fails
/// (`argmin` reports that as an exit, not an error), which can leave the fit
/// short of the optimum; each round restarts it from the previous solution
/// with fresh curvature memory, until the objective stops improving.
const MAX_SOLVER_ROUNDS: usize = 8;

fn column_map(buckets: &[u32], n_buckets: usize) -> Vec<u32> {
    let mut col = vec![NO_COL; n_buckets];
    for (k, &b) in buckets.iter().enumerate() {
        col[b as usize] = k as u32;
    }
    col
}

thread_local! {
    /// Featurizer buffers of this thread, reused across calls and models.
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

impl BaselineModel {
    /// A model from its fitted or loaded parts; the tables derived from them
    /// (padded weights, the per-bucket table, the CPU's AVX2 support) are
    /// built here, for `fit` and `load` alike.
    #[allow(clippy::too_many_arguments)]
    fn from_parts(
        id: &str,
        params: BaselineParams,
        label_space: LabelSpace,
        feat: Featurizer,
        idf: Vec<f32>,
        buckets: Vec<u32>,
        weights: &[f32],
        bias: Vec<f32>,
    ) -> Self {
        let (padded, stride) = pad_rows(weights, label_space.n_outputs());
        Self {
            id: id.to_string(),
            params,
            label_space,
            feat,
            meta: meta_table(&idf, &buckets),
            idf,
            buckets,
            bias,
            padded,
            stride,
            avx2: has_avx2(),
        }
    }

    pub fn params(&self) -> &BaselineParams {
        &self.params
    }

    /// Number of hashed buckets the model reads (≤ `params.n_features`).
    pub fn n_inputs(&self) -> usize {
        self.buckets.len()
    }

    /// Logits of one text: the same TF-IDF as [`tfidf`] in training, but in
    /// one pass — the product is linear, so the L2 norm is applied at the end.
    fn logits_with(&self, text: &str, s: &mut Scratch) -> Vec<f32> {
        self.feat.featurize(text, s);
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: `avx2` is set only when the CPU reports AVX2.
            return unsafe { self.accumulate_avx2(&s.out, &mut s.sel) };
        }
        self.accumulate(&s.out, &mut s.sel)
    }

    /// The sparse row × weights product over padded rows; inlined into the
    /// AVX2 entry point so the 8-wide loop is compiled for it there. The
    /// arithmetic (multiply, then add, in feature order) is the same on both
    /// paths. Two passes: the bucket table lookups (one random line each,
    /// prefetched `META_AHEAD` buckets on) pick the selected columns into
    /// `sel`, then their weight rows are summed, each prefetched `ROW_AHEAD`
    /// rows before it is needed.
    #[inline(always)]
    fn accumulate(&self, feats: &[(u32, u32)], sel: &mut Vec<(u32, f32)>) -> Vec<f32> {
        const META_AHEAD: usize = 12;
        const ROW_AHEAD: usize = 4;
        let n_out = self.bias.len();
        let stride = self.stride;
        sel.clear();
        sel.resize(feats.len(), (0, 0.0));
        let mut n_sel = 0;
        let mut norm2 = 0.0f32;
        for (i, &(b, c)) in feats.iter().enumerate() {
            if let Some(&(next, _)) = feats.get(i + META_AHEAD) {
                prefetch(&self.meta, next as usize);
            }
            let m = self.meta[b as usize];
            let v = tf(c) * m.idf;
            norm2 += v * v;
            // Branch-free: a bucket is selected about half the time.
            sel[n_sel] = (m.col, v);
            n_sel += usize::from(m.col != NO_COL);
        }
        sel.truncate(n_sel);
        let mut acc = vec![0f32; stride];
        for (j, &(col, v)) in sel.iter().enumerate() {
            if let Some(&(next, _)) = sel.get(j + ROW_AHEAD) {
                let at = next as usize * stride;
                for k in (0..stride).step_by(16).chain([stride.saturating_sub(1)]) {
                    prefetch(&self.padded, at + k);
                }
            }
            let at = col as usize * stride;
            let row = &self.padded[at..at + stride];
            for (o, w) in acc.iter_mut().zip(row) {
                *o += v * w;
            }
        }
        let inv = if norm2 > 0.0 {
            norm2.sqrt().recip()
        } else {
            0.0
        };
        acc.truncate(n_out);
        for (o, b) in acc.iter_mut().zip(&self.bias) {
            *o = *o * inv + b;
        }
        acc
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn accumulate_avx2(&self, feats: &[(u32, u32)], sel: &mut Vec<(u32, f32)>) -> Vec<f32> {
        self.accumulate(feats, sel)
    }

    fn logits(&self, text: &str) -> Vec<f32> {
        SCRATCH.with(|cell| self.logits_with(text, &mut cell.borrow_mut()))
    }

    /// Logits for a batch, in order; rayon chunks for large batches.
    pub fn predict_logits(&self, texts: &[&str]) -> Vec<Vec<f32>> {
        if texts.len() <= 64 {
            return texts.iter().map(|t| self.logits(t)).collect();
        }
        texts
            .par_chunks(64)
            .flat_map_iter(|chunk| chunk.iter().map(|t| self.logits(t)).collect::<Vec<_>>())
            .collect()
    }

    /// Write `baseline.safetensors` and `baseline.json` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let io = |path: &Path, e: &dyn std::fmt::Display| BaselineError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, &e))?;
        let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let (k, c) = (self.buckets.len(), self.bias.len());
        // The file keeps the unpadded `k × c` layout.
        let unpadded: Vec<f32> = self
            .padded
            .chunks_exact(self.stride)
            .flat_map(|row| &row[..c])
            .copied()
            .collect();
        let weights = f32_bytes(&unpadded);
        let bias = f32_bytes(&self.bias);
        let idf = f32_bytes(&self.idf);
        let buckets: Vec<u8> = self.buckets.iter().flat_map(|x| x.to_le_bytes()).collect();
        let path = dir.join(WEIGHTS_FILE);
        fn view(dt: Dtype, shape: Vec<usize>, data: &[u8]) -> Result<TensorView<'_>> {
            TensorView::new(dt, shape, data).map_err(|e| BaselineError::Fit(e.to_string()))
        }
        let tensors = vec![
            ("weights", view(Dtype::F32, vec![k, c], &weights)?),
            ("bias", view(Dtype::F32, vec![c], &bias)?),
            ("idf", view(Dtype::F32, vec![self.idf.len()], &idf)?),
            ("buckets", view(Dtype::U32, vec![k], &buckets)?),
        ];
        // Serialised here and written with `fs::write`, so the file's mode
        // follows the umask (`safetensors`' own writer makes it owner-only).
        let bytes = safetensors::serialize(tensors, None).map_err(|e| io(&path, &e))?;
        std::fs::write(&path, bytes).map_err(|e| io(&path, &e))?;
        let cfg = ConfigFile {
            format: FORMAT.into(),
            id: self.id.clone(),
            params: self.params.clone(),
            label_space: self.label_space.clone(),
            n_inputs: k,
        };
        let path = dir.join(CONFIG_FILE);
        let json = serde_json::to_string_pretty(&cfg).map_err(|e| io(&path, &e))?;
        std::fs::write(&path, json).map_err(|e| io(&path, &e))?;
        Ok(())
    }

    /// Load a model saved by [`BaselineModel::save`]; `id` names it from now on.
    pub fn load(dir: &Path, id: &str) -> Result<Self> {
        let cfg_path = dir.join(CONFIG_FILE);
        let io = |path: &Path, e: &dyn std::fmt::Display| BaselineError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let fmt_err = |path: &Path, m: String| BaselineError::Format {
            path: path.display().to_string(),
            message: m,
        };
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| io(&cfg_path, &e))?;
        let cfg: ConfigFile =
            serde_json::from_str(&text).map_err(|e| fmt_err(&cfg_path, e.to_string()))?;
        if cfg.format != FORMAT {
            return Err(fmt_err(
                &cfg_path,
                format!("format '{}', expected '{FORMAT}'", cfg.format),
            ));
        }
        cfg.params
            .check()
            .map_err(|e| fmt_err(&cfg_path, e.to_string()))?;
        let path = dir.join(WEIGHTS_FILE);
        let bytes = std::fs::read(&path).map_err(|e| io(&path, &e))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| fmt_err(&path, e.to_string()))?;
        let n_out = cfg.label_space.n_outputs();
        let nb = 1usize << cfg.params.hash_bits;
        let k = cfg.n_inputs;
        if k == 0 || k > cfg.params.n_features {
            return Err(fmt_err(
                &cfg_path,
                format!("n_inputs {k} is outside 1..={}", cfg.params.n_features),
            ));
        }
        let get = |name: &str, dtype: Dtype, shape: &[usize]| -> Result<Vec<[u8; 4]>> {
            let t = st
                .tensor(name)
                .map_err(|e| fmt_err(&path, format!("tensor '{name}': {e}")))?;
            if t.dtype() != dtype || t.shape() != shape {
                return Err(fmt_err(
                    &path,
                    format!(
                        "tensor '{name}' is {:?} {:?}, expected {dtype:?} {shape:?} \
                         (label space has {n_out} outputs)",
                        t.dtype(),
                        t.shape()
                    ),
                ));
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|c| [c[0], c[1], c[2], c[3]])
                .collect())
        };
        let floats = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let v: Vec<f32> = get(name, Dtype::F32, shape)?
                .into_iter()
                .map(f32::from_le_bytes)
                .collect();
            if v.iter().any(|x| !x.is_finite()) {
                return Err(fmt_err(
                    &path,
                    format!("tensor '{name}' has non-finite values"),
                ));
            }
            Ok(v)
        };
        let weights = floats("weights", &[k, n_out])?;
        let bias = floats("bias", &[n_out])?;
        let idf = floats("idf", &[nb])?;
        let buckets: Vec<u32> = get("buckets", Dtype::U32, &[k])?
            .into_iter()
            .map(u32::from_le_bytes)
            .collect();
        if buckets.windows(2).any(|w| w[0] >= w[1]) || buckets.iter().any(|&b| b as usize >= nb) {
            return Err(fmt_err(
                &path,
                format!("tensor 'buckets' must be ascending ids below {nb}"),
            ));
        }
        let feat = featurizer(&cfg.params);
        Ok(Self::from_parts(
            id,
            cfg.params,
            cfg.label_space,
            feat,
            idf,
            buckets,
            &weights,
            bias,
        ))
    }
}

impl Classifier for BaselineModel {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> &str {
        crate::KIND
    }

    fn label_space(&self) -> &LabelSpace {
        &self.label_space
    }

    /// Never fails and never panics: every text, empty included, gets logits.
    fn predict(
        &self,
        cases: &[Transcript],
    ) -> std::result::Result<Vec<LevelScores>, ClassifierError> {
        let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
        Ok(self
            .predict_logits(&texts)
            .into_iter()
            .map(|logits| LevelScores { logits })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use casetag_core::{argmax, softmax};

    fn toy() -> (Vec<String>, Vec<usize>) {
        let stems = [
            ("where is my parcel, tracking shows no update", 0),
            ("I want a refund for the broken item", 1),
            ("please cancel my order before it ships", 2),
        ];
        let extras = [
            "today",
            "asap",
            "order <ORDER_ID>",
            "thanks",
            "again",
            "help",
        ];
        let mut texts = Vec::new();
        let mut y = Vec::new();
        for (s, c) in stems {
            for e in extras {
                texts.push(format!("{s} {e}"));
                y.push(c);
            }
        }
        (texts, y)
    }

    fn small() -> BaselineParams {
        BaselineParams {
            hash_bits: 14,
            n_features: 256,
            max_iterations: 50,
            alpha: 0.01,
            ..Default::default()
        }
    }

    fn fit_toy(space: &LabelSpace) -> (BaselineModel, Vec<String>, Vec<usize>) {
        let (texts, y) = toy();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let m = fit(&small(), &refs, &y, space, "toy", &|_| {}).unwrap();
        (m, texts, y)
    }

    #[test]
    fn fits_toy_data_perfectly() {
        let space = LabelSpace {
            n_paths: 3,
            oos_class: false,
        };
        let (m, texts, y) = fit_toy(&space);
        let cases: Vec<Transcript> = texts.iter().map(Transcript::new).collect();
        let scores = m.predict(&cases).unwrap();
        assert_eq!(scores.len(), cases.len());
        for (s, &t) in scores.iter().zip(&y) {
            assert_eq!(s.logits.len(), 3);
            assert_eq!(argmax(&s.logits), t);
            let p = softmax(&s.logits, 1.0);
            assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        assert_eq!(m.kind(), "baseline");
        assert_eq!(m.id(), "toy");
        // Unseen and empty texts still get full-length logits.
        let odd = m
            .predict(&[Transcript::new(""), Transcript::new("完全不同的文本 😀")])
            .unwrap();
        assert!(odd.iter().all(|s| s.logits.len() == 3));
    }

    #[test]
    fn tf_table_matches_the_formula() {
        assert_eq!(tf(0), 1.0);
        for c in 1..300 {
            assert_eq!(tf(c).to_bits(), tf_exact(c).to_bits(), "count {c}");
        }
        assert!(tf(2) > 1.0 && tf(100) > tf(63));
    }

    #[test]
    fn vector_and_portable_paths_agree() {
        let space = LabelSpace {
            n_paths: 3,
            oos_class: false,
        };
        let (mut m, texts, _) = fit_toy(&space);
        let cases: Vec<Transcript> = texts.iter().map(Transcript::new).collect();
        let a = m.predict(&cases).unwrap();
        m.avx2 = !m.avx2 && has_avx2();
        let b = m.predict(&cases).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn absent_classes_keep_their_outputs() {
        // 6 paths + OOS, only classes 0..3 have rows.
        let space = LabelSpace {
            n_paths: 6,
            oos_class: true,
        };
        let (m, texts, y) = fit_toy(&space);
        let s = m.predict(&[Transcript::new(texts[0].clone())]).unwrap();
        assert_eq!(s[0].logits.len(), 7);
        assert_eq!(argmax(&s[0].logits), y[0]);
        let p = softmax(&s[0].logits, 1.0);
        assert!(p[3..].iter().all(|&x| x < 1e-6));
    }

    #[test]
    fn single_class_training_is_fine() {
        let space = LabelSpace {
            n_paths: 2,
            oos_class: false,
        };
        let m = fit(
            &small(),
            &["a refund", "refund again"],
            &[1, 1],
            &space,
            "one",
            &|_| {},
        )
        .unwrap();
        let s = m.predict(&[Transcript::new("refund")]).unwrap();
        assert_eq!(argmax(&s[0].logits), 1);
    }

    #[test]
    fn bad_training_input_is_an_error() {
        let space = LabelSpace {
            n_paths: 2,
            oos_class: false,
        };
        let p = small();
        let e = fit(&p, &["x y"], &[2], &space, "m", &|_| {}).unwrap_err();
        assert!(e.to_string().contains("outside the label space"), "{e}");
        assert!(fit(&p, &["x y"], &[0, 1], &space, "m", &|_| {}).is_err());
        assert!(fit(&p, &[], &[], &space, "m", &|_| {}).is_err());
        assert!(fit(&p, &["", " "], &[0, 1], &space, "m", &|_| {}).is_err());
    }

    #[test]
    fn subsample_is_stratified_and_bounded() {
        let targets: Vec<usize> = (0..1000)
            .map(|i| if i % 10 == 0 { 1 } else { 0 })
            .chain([2])
            .collect();
        let rows = stratified_subsample(&targets, 3, 101, 7);
        assert_eq!(rows.len(), 101);
        let count = |c| rows.iter().filter(|&&i| targets[i] == c).count();
        assert_eq!((count(0), count(1), count(2)), (90, 10, 1));
        assert_eq!(rows, stratified_subsample(&targets, 3, 101, 7));
        assert!(rows.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn save_load_round_trip_and_corruption() {
        let space = LabelSpace {
            n_paths: 4,
            oos_class: true,
        };
        let (m, texts, _) = fit_toy(&space);
        let dir = tempfile::tempdir().unwrap();
        m.save(dir.path()).unwrap();
        let back = BaselineModel::load(dir.path(), "again").unwrap();
        assert_eq!(back.id(), "again");
        assert_eq!(back.params(), m.params());
        assert_eq!(back.label_space(), m.label_space());
        let cases: Vec<Transcript> = texts.iter().map(Transcript::new).collect();
        assert_eq!(m.predict(&cases).unwrap(), back.predict(&cases).unwrap());

        // Truncated weights.
        let wpath = dir.path().join(WEIGHTS_FILE);
        let bytes = std::fs::read(&wpath).unwrap();
        std::fs::write(&wpath, &bytes[..bytes.len() / 2]).unwrap();
        let e = BaselineModel::load(dir.path(), "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains(WEIGHTS_FILE) && e.contains("corrupt"), "{e}");
        assert!(!e.contains('\n'));
        // Garbage header.
        std::fs::write(&wpath, b"not a safetensors file at all").unwrap();
        let e = BaselineModel::load(dir.path(), "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("corrupt"), "{e}");
        // Valid weights, but a label space that does not match them.
        std::fs::write(&wpath, &bytes).unwrap();
        let cpath = dir.path().join(CONFIG_FILE);
        let cfg = std::fs::read_to_string(&cpath).unwrap();
        std::fs::write(&cpath, cfg.replace("\"n_paths\": 4", "\"n_paths\": 9")).unwrap();
        let e = BaselineModel::load(dir.path(), "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("tensor 'weights'"), "{e}");
        // Missing files.
        std::fs::remove_file(&cpath).unwrap();
        let e = BaselineModel::load(dir.path(), "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains(CONFIG_FILE), "{e}");
    }
}
