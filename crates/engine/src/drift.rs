//! Drift monitoring for casetag tagged files: compares a reference tagged table
//! with a current one and produces a serialisable [`DriftReport`] plus a
//! self-contained HTML page ([`render_html`]).
//!
//! The statistics follow Evidently's definitions and default thresholds:
//! * categorical drift (label mix per level, depth distribution): Jensen–Shannon
//!   *distance* (natural log, like `scipy.spatial.distance.jensenshannon`) and
//!   PSI, drift when `value >= threshold`;
//! * numeric drift (confidence, text length): normed Wasserstein-1 distance
//!   `W1 / max(std(reference), 0.001)`, drift when `value >= threshold`.
//!
//! `casetag monitor` reads the files and writes `drift.json` and `drift.html`.

use crate::report_html::esc;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::decide::Decision;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Category name used for a null value (e.g. the model did not answer at that depth).
pub const NONE_CATEGORY: &str = "(none)";
/// Share substituted for an empty bin in PSI (Evidently's convention).
pub const PSI_EMPTY_SHARE: f64 = 0.0001;
/// Floor for the reference standard deviation in the normed Wasserstein distance.
pub const STD_FLOOR: f64 = 0.001;
const LEVELS: [&str; 3] = ["L1", "L2", "L3"];

/// One tagged table's columns (row-aligned). Null = `None`.
///
/// Columns are expected to have the same length; a shorter column reads as
/// null past its end.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tagged {
    /// Labels at L1, L2, L3; `None` where the model did not answer at that depth.
    pub labels: [Vec<Option<String>>; 3],
    /// Confidences at L1, L2, L3.
    pub conf: [Vec<Option<f64>>; 3],
    /// Answer depth 0..=3.
    pub depth: Vec<Option<i64>>,
    /// Out-of-scope flag.
    pub out_of_scope: Vec<Option<bool>>,
    /// Text length in chars, when the text column exists.
    pub text_chars: Option<Vec<Option<f64>>>,
    /// The `--slice` column's values.
    pub slice: Option<Vec<Option<String>>>,
}

/// The file in a bundle holding a sample of its answers on the validation
/// rows ([`Tagged`] as JSON, no texts): the reference `serve` compares its
/// recent answers with.
pub const REFERENCE_FILE: &str = "reference_sample.json";

/// Most validation answers kept in [`REFERENCE_FILE`] (evenly spaced).
pub const REFERENCE_ROWS: usize = 2000;

impl Tagged {
    /// Append one answered case: its tag (as far as it was given), the
    /// confidences of its most likely path, depth and out-of-scope flag,
    /// and its text length in characters.
    pub fn push(&mut self, d: &Decision, text_chars: usize) {
        for k in 0..3 {
            self.labels[k].push(
                d.tag
                    .as_ref()
                    .and_then(|p| p.level(k + 1))
                    .map(str::to_string),
            );
            self.conf[k].push(d.confidence.get(k).map(|&c| c as f64));
        }
        self.depth.push(Some(d.depth as i64));
        self.out_of_scope.push(Some(d.out_of_scope));
        self.text_chars
            .get_or_insert_with(Vec::new)
            .push(Some(text_chars as f64));
    }

    /// Number of rows (the longest column).
    pub fn rows(&self) -> usize {
        let mut n = self.depth.len().max(self.out_of_scope.len());
        for col in &self.labels {
            n = n.max(col.len());
        }
        for col in &self.conf {
            n = n.max(col.len());
        }
        n.max(self.text_chars.as_ref().map_or(0, Vec::len))
            .max(self.slice.as_ref().map_or(0, Vec::len))
    }
}

/// Drift thresholds. A statistic drifts when it is `>=` its threshold.
#[derive(Debug, Clone, Serialize)]
pub struct Thresholds {
    /// Jensen–Shannon distance threshold (Evidently default 0.1).
    pub js: f64,
    /// PSI threshold (Evidently default 0.1).
    pub psi: f64,
    /// Normed Wasserstein threshold (Evidently default 0.1).
    pub wasserstein: f64,
    /// Absolute change of a rate (0..1) counted as drift, e.g. 0.05 = 5 points.
    pub rate_points: f64,
    /// Minimum rows in *both* files for a slice to be judged.
    pub min_rows: usize,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            js: 0.1,
            psi: 0.1,
            wasserstein: 0.1,
            rate_points: 0.05,
            min_rows: 30,
        }
    }
}

/// PSI band: `< 0.1` no change, `0.1..0.25` moderate, `>= 0.25` significant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PsiBand {
    /// PSI < 0.1.
    NoChange,
    /// 0.1 <= PSI < 0.25.
    Moderate,
    /// PSI >= 0.25.
    Significant,
}

impl PsiBand {
    /// Band of a PSI value.
    pub fn of(psi: f64) -> Self {
        if psi >= 0.25 {
            PsiBand::Significant
        } else if psi >= 0.1 {
            PsiBand::Moderate
        } else {
            PsiBand::NoChange
        }
    }
    /// Human-readable name.
    pub fn label(self) -> &'static str {
        match self {
            PsiBand::NoChange => "no change",
            PsiBand::Moderate => "moderate",
            PsiBand::Significant => "significant",
        }
    }
}

/// Counts and shares of one category in both files.
#[derive(Debug, Clone, Serialize)]
pub struct CategoryShare {
    /// Category name (`"(none)"` for null).
    pub category: String,
    /// Rows in the reference file.
    pub reference_count: usize,
    /// Rows in the current file.
    pub current_count: usize,
    /// Share of the reference rows (0..1).
    pub reference_share: f64,
    /// Share of the current rows (0..1).
    pub current_share: f64,
}

/// Categorical distribution comparison (label mix of a level, or depth).
#[derive(Debug, Clone, Serialize)]
pub struct MixDrift {
    /// What is compared: `"L1"`, `"L2"`, `"L3"` or `"depth"`.
    pub name: String,
    /// Union of categories seen in either file, sorted by name.
    pub categories: Vec<CategoryShare>,
    /// Jensen–Shannon distance; `None` when not judged (a side has no rows).
    pub js_distance: Option<f64>,
    /// PSI; `None` when not judged.
    pub psi: Option<f64>,
    /// PSI band; `None` when not judged.
    pub psi_band: Option<PsiBand>,
    /// Drift flagged: JS or PSI at or over its threshold and over its
    /// noise level.
    pub drift: bool,
    /// Which statistics flagged it: subset of `["js", "psi"]`.
    pub drift_by: Vec<String>,
    /// The PSI that sampling noise alone reaches with these row counts and
    /// categories: the largest PSI over [`PERMUTATIONS`] random splits of
    /// the two files' rows pooled (a permutation test, so it holds for
    /// PSI's empty-bin convention too). A PSI over the threshold but not
    /// over this level is noise (many categories, few rows), not drift.
    pub psi_noise: Option<f64>,
    /// The same level for the JS distance.
    pub js_noise: Option<f64>,
}

/// A tag with its row count.
#[derive(Debug, Clone, Serialize)]
pub struct TagCount {
    /// Tag name.
    pub tag: String,
    /// Rows carrying it (in current for appeared, reference for vanished).
    pub count: usize,
}

/// Per-level label report.
#[derive(Debug, Clone, Serialize)]
pub struct LevelReport {
    /// Label-mix comparison (serialised inline: `name`, `categories`, `js_distance`, ...).
    #[serde(flatten)]
    pub mix: MixDrift,
    /// Tags in current but not in reference (count in current).
    pub appeared: Vec<TagCount>,
    /// Tags in reference but not in current (count in reference).
    pub vanished: Vec<TagCount>,
}

/// Numeric distribution comparison via normed Wasserstein-1.
#[derive(Debug, Clone, Serialize)]
pub struct DistanceReport {
    /// `"L1 confidence"`, ..., or `"text length"`.
    pub name: String,
    /// Non-null finite values in reference.
    pub reference_n: usize,
    /// Non-null finite values in current.
    pub current_n: usize,
    /// Raw Wasserstein-1 distance.
    pub wasserstein: Option<f64>,
    /// Population std of the reference values (ddof = 0, as `np.std`).
    pub reference_std: Option<f64>,
    /// `W1 / max(reference_std, 0.001)`.
    pub normed_wasserstein: Option<f64>,
    /// Reference mean.
    pub reference_mean: Option<f64>,
    /// Current mean.
    pub current_mean: Option<f64>,
    /// Reference median.
    pub reference_median: Option<f64>,
    /// Current median.
    pub current_median: Option<f64>,
    /// Drift flagged (normed Wasserstein at/over threshold).
    pub drift: bool,
}

/// A rate in both files and its absolute change.
#[derive(Debug, Clone, Serialize)]
pub struct RateChange {
    /// `"abstention"` (depth 0), `"back_off"` (0 < depth < 3) or `"out_of_scope"`.
    pub name: String,
    /// Rate in reference (0..1) over rows where the column is non-null.
    pub reference: Option<f64>,
    /// Rate in current.
    pub current: Option<f64>,
    /// `current - reference`.
    pub change: Option<f64>,
    /// Denominator in reference.
    pub reference_n: usize,
    /// Denominator in current.
    pub current_n: usize,
    /// Drift flagged (`|change| >= rate_points`).
    pub drift: bool,
}

/// Label-mix comparison for one slice value.
#[derive(Debug, Clone, Serialize)]
pub struct SliceReport {
    /// Slice value (`"(none)"` for null).
    pub value: String,
    /// Rows with this value in reference.
    pub reference_rows: usize,
    /// Rows with this value in current.
    pub current_rows: usize,
    /// Whether both sides had at least `min_rows` rows.
    pub judged: bool,
    /// E.g. `"too few rows"` when not judged.
    pub note: Option<String>,
    /// Per-level label mix (empty when not judged).
    pub levels: Vec<MixDrift>,
    /// Drift at any level of this slice.
    pub drift: bool,
}

/// The full drift report.
#[derive(Debug, Clone, Serialize)]
pub struct DriftReport {
    /// Rows in the reference file.
    pub reference_rows: usize,
    /// Rows in the current file.
    pub current_rows: usize,
    /// False when a file is empty (nothing judged, `drift` false).
    pub judged: bool,
    /// Overall drift: any level, depth, rate, distance or judged slice drifted.
    pub drift: bool,
    /// One line per drifted statistic.
    pub findings: Vec<String>,
    /// Informational lines (appeared/vanished tags, things not judged).
    pub notes: Vec<String>,
    /// Thresholds used.
    pub thresholds: Thresholds,
    /// L1, L2, L3 label reports.
    pub levels: Vec<LevelReport>,
    /// Depth distribution (categories "0".."3", plus "(none)" if depth is null).
    pub depth: MixDrift,
    /// Abstention, back-off and out-of-scope rates.
    pub rates: Vec<RateChange>,
    /// Confidence distance per level.
    pub confidence: Vec<DistanceReport>,
    /// Text length distance, when both files have text.
    pub text_length: Option<DistanceReport>,
    /// Per-slice reports, when both files have the slice column.
    pub slices: Option<Vec<SliceReport>>,
}

/// Jensen–Shannon distance between two (unnormalised) distributions, as
/// `scipy.spatial.distance.jensenshannon(p, q)` with the default natural log:
/// `sqrt((KL(p‖m) + KL(q‖m)) / 2)`, `m = (p + q) / 2`, after normalising `p`, `q`
/// to sum 1. `None` when lengths differ or a side sums to zero.
pub fn js_distance(p: &[f64], q: &[f64]) -> Option<f64> {
    let (sp, sq): (f64, f64) = (p.iter().sum(), q.iter().sum());
    if p.len() != q.len() || sp <= 0.0 || sq <= 0.0 {
        return None;
    }
    let rel_entr = |x: f64, y: f64| if x > 0.0 { x * (x / y).ln() } else { 0.0 };
    let mut div = 0.0;
    for (a, b) in p.iter().zip(q) {
        let (a, b) = (a / sp, b / sq);
        let m = (a + b) / 2.0;
        div += rel_entr(a, m) + rel_entr(b, m);
    }
    Some((div / 2.0).max(0.0).sqrt())
}

/// Population stability index as Evidently computes it:
/// `Σ (cur% − ref%) · ln(cur% / ref%)`, with empty shares replaced by 0.0001
/// (no renormalisation). Inputs are shares (0..1) over the same categories.
pub fn psi(reference: &[f64], current: &[f64]) -> f64 {
    let fill = |x: f64| if x <= 0.0 { PSI_EMPTY_SHARE } else { x };
    reference
        .iter()
        .zip(current)
        .map(|(&r, &c)| {
            let (r, c) = (fill(r), fill(c));
            (c - r) * (c / r).ln()
        })
        .sum()
}

fn finite_sorted(v: &[f64]) -> Vec<f64> {
    let mut out: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    out.sort_by(f64::total_cmp);
    out
}

/// Exact Wasserstein-1 distance between two 1-D empirical samples (as
/// `scipy.stats.wasserstein_distance(u, v)`): `∫ |F_u(x) − F_v(x)| dx`, integrated
/// over the merged sorted values in O((n+m) log(n+m)). Non-finite values are
/// ignored; `None` when a side has no values.
pub fn wasserstein_1(u: &[f64], v: &[f64]) -> Option<f64> {
    let (a, b) = (finite_sorted(u), finite_sorted(v));
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let mut all = [a.as_slice(), b.as_slice()].concat();
    all.sort_by(f64::total_cmp);
    let (n, m) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut acc) = (0usize, 0usize, 0.0);
    for w in all.windows(2) {
        let x = w[0];
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        acc += (i as f64 / n - j as f64 / m).abs() * (w[1] - x);
    }
    Some(acc)
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Population std (ddof = 0).
fn std_pop(v: &[f64]) -> Option<f64> {
    let mu = mean(v)?;
    Some((v.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / v.len() as f64).sqrt())
}

/// Median of sorted values (mean of the two middle ones for even counts).
fn median_sorted(v: &[f64]) -> Option<f64> {
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

fn distance_report(
    name: &str,
    reference: &[f64],
    current: &[f64],
    t: &Thresholds,
) -> DistanceReport {
    let (r, c) = (finite_sorted(reference), finite_sorted(current));
    let w = wasserstein_1(&r, &c);
    let sd = std_pop(&r);
    let normed = w.zip(sd).map(|(w, sd)| w / sd.max(STD_FLOOR));
    DistanceReport {
        name: name.to_string(),
        reference_n: r.len(),
        current_n: c.len(),
        wasserstein: w,
        reference_std: sd,
        normed_wasserstein: normed,
        reference_mean: mean(&r),
        current_mean: mean(&c),
        reference_median: median_sorted(&r),
        current_median: median_sorted(&c),
        drift: normed.is_some_and(|x| x >= t.wasserstein),
    }
}

fn label_at(col: &[Option<String>], i: usize) -> &str {
    col.get(i)
        .and_then(|x| x.as_deref())
        .unwrap_or(NONE_CATEGORY)
}

fn count_labels(col: &[Option<String>], rows: &[usize]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for &i in rows {
        *out.entry(label_at(col, i).to_string()).or_insert(0) += 1;
    }
    out
}

fn mix_drift(
    name: &str,
    r: &BTreeMap<String, usize>,
    c: &BTreeMap<String, usize>,
    t: &Thresholds,
) -> MixDrift {
    let mut keys: Vec<&String> = r.keys().chain(c.keys()).collect();
    keys.sort();
    keys.dedup();
    let (rt, ct) = (r.values().sum::<usize>(), c.values().sum::<usize>());
    let share = |n: usize, tot: usize| if tot == 0 { 0.0 } else { n as f64 / tot as f64 };
    let categories: Vec<CategoryShare> = keys
        .into_iter()
        .map(|k| {
            let (rc, cc) = (
                r.get(k).copied().unwrap_or(0),
                c.get(k).copied().unwrap_or(0),
            );
            CategoryShare {
                category: k.clone(),
                reference_count: rc,
                current_count: cc,
                reference_share: share(rc, rt),
                current_share: share(cc, ct),
            }
        })
        .collect();
    let mut m = MixDrift {
        name: name.to_string(),
        categories,
        js_distance: None,
        psi: None,
        psi_band: None,
        drift: false,
        drift_by: Vec::new(),
        psi_noise: None,
        js_noise: None,
    };
    if rt > 0 && ct > 0 {
        let (js_noise, noise) = permutation_noise(&m.categories);
        m.psi_noise = Some(noise);
        m.js_noise = Some(js_noise);
        let p: Vec<f64> = m.categories.iter().map(|x| x.reference_share).collect();
        let q: Vec<f64> = m.categories.iter().map(|x| x.current_share).collect();
        let (js, ps) = (js_distance(&p, &q).unwrap_or(0.0), psi(&p, &q));
        m.js_distance = Some(js);
        m.psi = Some(ps);
        m.psi_band = Some(PsiBand::of(ps));
        if js >= t.js && js > js_noise {
            m.drift_by.push("js".into());
        }
        if ps >= t.psi && ps > noise {
            m.drift_by.push("psi".into());
        }
        m.drift = !m.drift_by.is_empty();
    }
    m
}

/// "L2 label mix: JS 0.180 ≥ 0.10, PSI 0.310 ≥ 0.10 (significant); largest share changes: a 10.0% → 30.0%"
fn mix_finding(what: &str, m: &MixDrift, t: &Thresholds) -> String {
    let ge = |hit: bool, th: f64| {
        if hit {
            format!(" ≥ {th:.2}")
        } else {
            String::new()
        }
    };
    let mut s = format!(
        "{what}: JS {:.3}{}, PSI {:.3}{} ({})",
        m.js_distance.unwrap_or(0.0),
        ge(m.drift_by.iter().any(|x| x == "js"), t.js),
        m.psi.unwrap_or(0.0),
        ge(m.drift_by.iter().any(|x| x == "psi"), t.psi),
        m.psi_band.map_or("n/a", PsiBand::label)
    );
    let mut movers: Vec<&CategoryShare> = m
        .categories
        .iter()
        .filter(|c| (c.current_share - c.reference_share).abs() >= 0.005)
        .collect();
    movers.sort_by(|a, b| {
        let d = |c: &CategoryShare| (c.current_share - c.reference_share).abs();
        d(b).total_cmp(&d(a))
            .then_with(|| a.category.cmp(&b.category))
    });
    if !movers.is_empty() {
        s.push_str("; largest share changes: ");
        let parts: Vec<String> = movers
            .iter()
            .take(3)
            .map(|c| {
                format!(
                    "{} {:.1}% → {:.1}%",
                    c.category,
                    100.0 * c.reference_share,
                    100.0 * c.current_share
                )
            })
            .collect();
        s.push_str(&parts.join(", "));
    }
    s
}

/// A note when sampling noise alone is expected to reach half a threshold.
/// Random splits in [`permutation_noise`]: the largest of 40 is about the
/// 97.5th percentile of the no-drift distribution.
pub const PERMUTATIONS: usize = 40;

/// Rows pooled at most for [`permutation_noise`]; larger files are
/// subsampled in proportion, which can only overstate the noise, and by
/// then it lies far below the thresholds.
const NOISE_ROWS: usize = 20_000;

/// The JS distance and PSI that sampling noise alone reaches: pool the
/// rows of both files (by their category counts), split them at random
/// into groups of the two files' sizes [`PERMUTATIONS`] times, and take
/// the largest of each statistic. Deterministic (fixed seed).
fn permutation_noise(categories: &[CategoryShare]) -> (f64, f64) {
    let (n, m) = categories.iter().fold((0usize, 0usize), |(a, b), c| {
        (a + c.reference_count, b + c.current_count)
    });
    let total = n + m;
    let scale = (NOISE_ROWS as f64 / total as f64).min(1.0);
    let mut pooled: Vec<usize> = Vec::with_capacity(total.min(NOISE_ROWS + categories.len()));
    for (i, c) in categories.iter().enumerate() {
        let k = ((c.reference_count + c.current_count) as f64 * scale).round() as usize;
        pooled.extend(std::iter::repeat_n(i, k));
    }
    let n = ((n as f64 * scale).round() as usize).clamp(1, pooled.len().saturating_sub(1).max(1));
    if pooled.len() < 2 {
        return (0.0, 0.0);
    }
    let mut rng = StdRng::seed_from_u64(0x5EED);
    let (mut js_max, mut psi_max) = (0.0f64, 0.0f64);
    let mut a = vec![0usize; categories.len()];
    let mut b = vec![0usize; categories.len()];
    for _ in 0..PERMUTATIONS {
        // The first n of a partial Fisher–Yates shuffle are one group.
        for i in 0..n {
            let j = rng.random_range(i..pooled.len());
            pooled.swap(i, j);
        }
        a.iter_mut().for_each(|x| *x = 0);
        b.iter_mut().for_each(|x| *x = 0);
        for &c in &pooled[..n] {
            a[c] += 1;
        }
        for &c in &pooled[n..] {
            b[c] += 1;
        }
        let (na, nb) = (n as f64, (pooled.len() - n) as f64);
        let p: Vec<f64> = a.iter().map(|&x| x as f64 / na).collect();
        let q: Vec<f64> = b.iter().map(|&x| x as f64 / nb).collect();
        js_max = js_max.max(js_distance(&p, &q).unwrap_or(0.0));
        psi_max = psi_max.max(psi(&p, &q));
    }
    (js_max, psi_max)
}

fn noise_note(what: &str, m: &MixDrift, t: &Thresholds) -> Option<String> {
    let (pn, jn) = (m.psi_noise?, m.js_noise?);
    (pn >= t.psi || jn >= t.js).then(|| {
        let n: usize = m.categories.iter().map(|c| c.reference_count).sum();
        let k: usize = m.categories.iter().map(|c| c.current_count).sum();
        format!(
            "{what}: {} categories over {n}/{k} rows; sampling noise alone reaches about JS {jn:.2}, \
             PSI {pn:.2} (thresholds {:.2}/{:.2}), so only a larger change is flagged; more rows \
             make the judgement finer",
            m.categories.len(),
            t.js,
            t.psi
        )
    })
}

fn rate(name: &str, r: (usize, usize), c: (usize, usize), t: &Thresholds) -> RateChange {
    let f = |(hit, n): (usize, usize)| (n > 0).then(|| hit as f64 / n as f64);
    let (rr, cr) = (f(r), f(c));
    let change = rr.zip(cr).map(|(a, b)| b - a);
    RateChange {
        name: name.to_string(),
        reference: rr,
        current: cr,
        change,
        reference_n: r.1,
        current_n: c.1,
        drift: change.is_some_and(|d| d.abs() >= t.rate_points),
    }
}

/// (abstention hits, back-off hits, non-null depth rows, out-of-scope hits, non-null oos rows)
fn rate_counts(x: &Tagged) -> [usize; 5] {
    let d: Vec<i64> = x.depth.iter().flatten().copied().collect();
    let o: Vec<bool> = x.out_of_scope.iter().flatten().copied().collect();
    [
        d.iter().filter(|&&v| v == 0).count(),
        d.iter().filter(|&&v| v > 0 && v < 3).count(),
        d.len(),
        o.iter().filter(|&&v| v).count(),
        o.len(),
    ]
}

fn nonnull(v: &[Option<f64>]) -> Vec<f64> {
    v.iter().flatten().copied().collect()
}

/// Compares a reference tagged table with a current one. See the module docs
/// for the statistics; every statistic drifts when it is `>=` its threshold.
/// If either file has zero rows nothing is judged (`judged = false`, `drift = false`).
pub fn compare(reference: &Tagged, current: &Tagged, t: &Thresholds) -> DriftReport {
    let (rn, cn) = (reference.rows(), current.rows());
    let (rrows, crows): (Vec<usize>, Vec<usize>) = ((0..rn).collect(), (0..cn).collect());
    let judged = rn > 0 && cn > 0;
    let mut findings = Vec::new();
    let mut notes = Vec::new();
    for (n, which) in [(rn, "reference"), (cn, "current")] {
        if n == 0 {
            notes.push(format!("{which} file has zero rows: no drift judged"));
        } else if n < t.min_rows {
            notes.push(format!(
                "{which} file has only {n} rows (< {}): statistics are noisy",
                t.min_rows
            ));
        }
    }

    let mut levels = Vec::new();
    for (k, name) in LEVELS.iter().enumerate() {
        let rc = count_labels(&reference.labels[k], &rrows);
        let cc = count_labels(&current.labels[k], &crows);
        let mix = mix_drift(name, &rc, &cc, t);
        notes.extend(noise_note(&format!("{name} label mix"), &mix, t));
        if mix.drift {
            findings.push(mix_finding(&format!("{name} label mix"), &mix, t));
        }
        let diff = |a: &BTreeMap<String, usize>, b: &BTreeMap<String, usize>| -> Vec<TagCount> {
            a.iter()
                .filter(|(k, _)| k.as_str() != NONE_CATEGORY && !b.contains_key(*k))
                .map(|(k, &n)| TagCount {
                    tag: k.clone(),
                    count: n,
                })
                .collect()
        };
        let (appeared, vanished) = if judged {
            (diff(&cc, &rc), diff(&rc, &cc))
        } else {
            (vec![], vec![])
        };
        for (list, verb) in [(&appeared, "appeared"), (&vanished, "vanished")] {
            if !list.is_empty() {
                let items: Vec<String> = list
                    .iter()
                    .map(|x| format!("{} ({})", x.tag, x.count))
                    .collect();
                notes.push(format!(
                    "{name}: {} tag(s) {verb}: {}",
                    list.len(),
                    items.join(", ")
                ));
            }
        }
        levels.push(LevelReport {
            mix,
            appeared,
            vanished,
        });
    }

    let depth_counts = |x: &Tagged| {
        let mut m: BTreeMap<String, usize> = (0..=3).map(|d| (d.to_string(), 0)).collect();
        for i in 0..x.rows() {
            let d = x.depth.get(i).copied().flatten();
            *m.entry(d.map_or(NONE_CATEGORY.to_string(), |v| v.to_string()))
                .or_insert(0) += 1;
        }
        m
    };
    let depth = mix_drift("depth", &depth_counts(reference), &depth_counts(current), t);
    if depth.drift {
        findings.push(mix_finding("depth distribution", &depth, t));
    }

    let (ra, ca) = (rate_counts(reference), rate_counts(current));
    let rates = vec![
        rate("abstention", (ra[0], ra[2]), (ca[0], ca[2]), t),
        rate("back_off", (ra[1], ra[2]), (ca[1], ca[2]), t),
        rate("out_of_scope", (ra[3], ra[4]), (ca[3], ca[4]), t),
    ];
    for r in rates.iter().filter(|r| r.drift) {
        let (a, b, d) = (
            r.reference.unwrap_or(0.0),
            r.current.unwrap_or(0.0),
            r.change.unwrap_or(0.0),
        );
        findings.push(format!(
            "{} rate: {:.1}% → {:.1}% ({:+.1} points, |change| ≥ {:.1})",
            r.name.replace('_', "-"),
            100.0 * a,
            100.0 * b,
            100.0 * d,
            100.0 * t.rate_points
        ));
    }

    let mut confidence = Vec::new();
    for (k, name) in LEVELS.iter().enumerate() {
        confidence.push(distance_report(
            &format!("{name} confidence"),
            &nonnull(&reference.conf[k]),
            &nonnull(&current.conf[k]),
            t,
        ));
    }
    let text_length = match (&reference.text_chars, &current.text_chars) {
        (Some(r), Some(c)) => Some(distance_report("text length", &nonnull(r), &nonnull(c), t)),
        (None, None) => None,
        _ => {
            notes.push("text length: only one file has a text column; not compared".into());
            None
        }
    };
    for d in confidence.iter().chain(text_length.iter()) {
        if d.drift {
            let (stat, a, b, prec) = if d.name == "text length" {
                ("median chars", d.reference_median, d.current_median, 0)
            } else {
                ("mean", d.reference_mean, d.current_mean, 3)
            };
            findings.push(format!(
                "{}: normed Wasserstein {:.3} ≥ {:.2} ({stat} {} → {})",
                d.name,
                d.normed_wasserstein.unwrap_or(0.0),
                t.wasserstein,
                num(a, prec),
                num(b, prec)
            ));
        } else if judged && d.normed_wasserstein.is_none() && d.reference_n + d.current_n > 0 {
            notes.push(format!("{}: one file has no values; not judged", d.name));
        }
    }

    let slices = match (&reference.slice, &current.slice) {
        (Some(rs), Some(cs)) => Some(slice_reports(
            reference,
            current,
            rs,
            cs,
            t,
            &mut findings,
            &mut notes,
        )),
        (None, None) => None,
        _ => {
            notes.push("slice column present in only one file; slices not compared".into());
            None
        }
    };

    let drift = judged && !findings.is_empty();
    if judged && !drift {
        notes.push("no drift detected".into());
    }
    DriftReport {
        reference_rows: rn,
        current_rows: cn,
        judged,
        drift,
        findings: if judged { findings } else { Vec::new() },
        notes,
        thresholds: t.clone(),
        levels,
        depth,
        rates,
        confidence,
        text_length,
        slices,
    }
}

fn slice_reports(
    reference: &Tagged,
    current: &Tagged,
    rs: &[Option<String>],
    cs: &[Option<String>],
    t: &Thresholds,
    findings: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> Vec<SliceReport> {
    let mut groups: BTreeMap<String, (Vec<usize>, Vec<usize>)> = BTreeMap::new();
    for i in 0..reference.rows() {
        groups
            .entry(label_at(rs, i).to_string())
            .or_default()
            .0
            .push(i);
    }
    for i in 0..current.rows() {
        groups
            .entry(label_at(cs, i).to_string())
            .or_default()
            .1
            .push(i);
    }
    let mut out = Vec::new();
    let mut small = 0;
    for (value, (ri, ci)) in groups {
        let judged = ri.len() >= t.min_rows && ci.len() >= t.min_rows;
        let mut s = SliceReport {
            value: value.clone(),
            reference_rows: ri.len(),
            current_rows: ci.len(),
            judged,
            note: None,
            levels: Vec::new(),
            drift: false,
        };
        if judged {
            for (k, name) in LEVELS.iter().enumerate() {
                let m = mix_drift(
                    name,
                    &count_labels(&reference.labels[k], &ri),
                    &count_labels(&current.labels[k], &ci),
                    t,
                );
                if m.drift {
                    findings.push(mix_finding(
                        &format!("slice '{value}' {name} label mix"),
                        &m,
                        t,
                    ));
                    s.drift = true;
                }
                notes.extend(noise_note(
                    &format!("slice '{value}' {name} label mix"),
                    &m,
                    t,
                ));
                s.levels.push(m);
            }
        } else {
            small += 1;
            s.note = Some(format!("too few rows (need {} in both files)", t.min_rows));
        }
        out.push(s);
    }
    if small > 0 {
        notes.push(format!(
            "{small} slice value(s) with fewer than {} rows in a file: not judged",
            t.min_rows
        ));
    }
    out
}

fn num(x: Option<f64>, prec: usize) -> String {
    x.filter(|v| v.is_finite())
        .map_or("–".to_string(), |v| format!("{v:.prec$}"))
}

fn pct(x: Option<f64>) -> String {
    x.filter(|v| v.is_finite())
        .map_or("–".to_string(), |v| format!("{:.1}%", 100.0 * v))
}

/// A share change in percentage points, without a "-0.0".
fn pts(x: Option<f64>) -> String {
    match x.filter(|v| v.is_finite()).map(|v| 100.0 * v) {
        None => "–".to_string(),
        Some(v) if v.abs() < 0.05 => "0.0 pts".to_string(),
        Some(v) => format!("{v:+.1} pts"),
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "<span class=\"bad\">drift</span>"
    } else {
        "<span class=\"ok\">ok</span>"
    }
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}\
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:middle}\
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.box{padding:1em;border-radius:6px;margin-bottom:1.5em}.box.drift{background:#fdecea;border:1px solid #e57373}\
.box.nodrift{background:#e8f5e9;border:1px solid #81c784}.box.nj{background:#f5f5f5;border:1px solid #bbb}\
.bar{height:8px;margin:1px 0}.ref{background:#4e79a7}.cur{background:#f28e2b}.bars{width:240px}\
.sw{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}\
.bad{color:#c62828;font-weight:bold}.ok{color:#2e7d32}.legend{margin:.5em 0 1em}";

fn mix_table(h: &mut String, m: &MixDrift) {
    let max = m
        .categories
        .iter()
        .map(|c| c.reference_share.max(c.current_share))
        .fold(0.0_f64, f64::max)
        .max(1e-12);
    let _ = write!(
        h,
        "<p>JS distance {} · PSI {} ({}) · {}{}</p>\n<table><tr><th>Category</th><th>Reference</th>\
         <th>Current</th><th>Shares</th><th>Change</th></tr>\n",
        num(m.js_distance, 3),
        num(m.psi, 3),
        m.psi_band.map_or("not judged", PsiBand::label),
        yes_no(m.drift),
        if m.drift_by.is_empty() { String::new() } else { format!(" (by {})", m.drift_by.join(", ")) }
    );
    for c in &m.categories {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"n\">{} ({})</td><td class=\"n\">{} ({})</td><td class=\"bars\">\
             <div class=\"bar ref\" style=\"width:{:.1}%\"></div><div class=\"bar cur\" style=\"width:{:.1}%\"></div>\
             </td><td class=\"n\">{}</td></tr>",
            esc(&c.category),
            pct(Some(c.reference_share)),
            c.reference_count,
            pct(Some(c.current_share)),
            c.current_count,
            100.0 * c.reference_share / max,
            100.0 * c.current_share / max,
            pts(Some(c.current_share - c.reference_share))
        );
    }
    h.push_str("</table>\n");
}

fn tag_list(tags: &[TagCount]) -> String {
    if tags.is_empty() {
        return "none".into();
    }
    let items: Vec<String> = tags
        .iter()
        .map(|t| format!("{} ({})", esc(&t.tag), t.count))
        .collect();
    items.join(", ")
}

/// Renders the report as one self-contained HTML page (inline CSS, no scripts,
/// no external assets). Every string taken from the data is HTML-escaped.
pub fn render_html(r: &DriftReport, title: &str) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>{CSS}</style></head><body>\n<h1>{t}</h1>\n",
        t = esc(title)
    );
    let (class, verdict) = match (r.judged, r.drift) {
        (false, _) => ("nj", "Drift: not judged"),
        (true, true) => ("drift", "Drift detected: yes"),
        (true, false) => ("nodrift", "Drift detected: no"),
    };
    let _ = write!(
        h,
        "<div class=\"box {class}\"><h2>{verdict}</h2><p>Reference rows: {} · current rows: {}</p>",
        r.reference_rows, r.current_rows
    );
    for (name, list) in [("Findings", &r.findings), ("Notes", &r.notes)] {
        if !list.is_empty() {
            let _ = write!(h, "<h3>{name}</h3><ul>");
            for f in list {
                let _ = write!(h, "<li>{}</li>", esc(f));
            }
            h.push_str("</ul>");
        }
    }
    h.push_str(
        "</div>\n<div class=\"legend\">Legend:<span class=\"sw ref\"></span>reference file\
                <span class=\"sw cur\"></span>current file</div>\n",
    );
    for l in &r.levels {
        let _ = writeln!(h, "<h2>{} label mix</h2>", esc(&l.mix.name));
        mix_table(&mut h, &l.mix);
        let _ = writeln!(
            h,
            "<p>Appeared (count in current): {}<br>Vanished (count in reference): {}</p>",
            tag_list(&l.appeared),
            tag_list(&l.vanished)
        );
    }
    h.push_str("<h2>Depth distribution</h2>\n");
    mix_table(&mut h, &r.depth);
    h.push_str("<h2>Rates</h2>\n<table><tr><th>Rate</th><th>Reference</th><th>Current</th><th>Change</th><th></th></tr>\n");
    for x in &r.rates {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            esc(&x.name.replace('_', "-")),
            pct(x.reference),
            pct(x.current),
            pts(x.change),
            yes_no(x.drift)
        );
    }
    h.push_str("</table>\n<h2>Confidence and text length</h2>\n<table><tr><th>Variable</th><th>n ref / cur</th>\
                <th>Mean ref → cur</th><th>Median ref → cur</th><th>Wasserstein</th><th>Normed</th><th></th></tr>\n");
    for d in r.confidence.iter().chain(r.text_length.iter()) {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"n\">{} / {}</td><td class=\"n\">{} → {}</td><td class=\"n\">{} → {}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            esc(&d.name),
            d.reference_n,
            d.current_n,
            num(d.reference_mean, 3),
            num(d.current_mean, 3),
            num(d.reference_median, 3),
            num(d.current_median, 3),
            num(d.wasserstein, 4),
            num(d.normed_wasserstein, 3),
            yes_no(d.drift)
        );
    }
    h.push_str("</table>\n");
    if let Some(slices) = &r.slices {
        h.push_str("<h2>Slices</h2>\n<table><tr><th>Slice</th><th>Rows ref / cur</th>");
        for l in LEVELS {
            let _ = write!(h, "<th>{l} JS / PSI</th>");
        }
        h.push_str("<th></th></tr>\n");
        for s in slices {
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"n\">{} / {}</td>",
                esc(&s.value),
                s.reference_rows,
                s.current_rows
            );
            if s.judged {
                for m in &s.levels {
                    let _ = write!(
                        h,
                        "<td class=\"n\">{} / {}</td>",
                        num(m.js_distance, 3),
                        num(m.psi, 3)
                    );
                }
                let _ = writeln!(h, "<td>{}</td></tr>", yes_no(s.drift));
            } else {
                let _ = writeln!(
                    h,
                    "<td colspan=\"4\">{}</td></tr>",
                    esc(s.note.as_deref().unwrap_or("not judged"))
                );
            }
        }
        h.push_str("</table>\n");
    }
    let t = &r.thresholds;
    let _ = write!(
        h,
        "<p><small>Thresholds (drift when ≥): JS distance {}, PSI {}, normed Wasserstein {}, rate change {} points, \
         min rows per slice {}. PSI bands: &lt; 0.1 no change, 0.1–0.25 moderate, ≥ 0.25 significant.</small></p>\n\
         </body></html>\n",
        t.js,
        t.psi,
        t.wasserstein,
        100.0 * t.rate_points,
        t.min_rows
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn wasserstein_reference_values() {
        assert!(close(
            wasserstein_1(&[0.0, 1.0, 3.0], &[5.0, 6.0, 8.0]).unwrap(),
            5.0
        ));
        assert!(close(wasserstein_1(&[0.0, 1.0], &[0.0, 1.0]).unwrap(), 0.0));
        // F_u = 1 on [0, 2); F_v = 0 on [0,1), 0.5 on [1,2): 1 + 0.5.
        assert!(close(wasserstein_1(&[0.0], &[1.0, 2.0]).unwrap(), 1.5));
        assert!(close(
            wasserstein_1(&[3.0, 1.0, 2.0], &[2.0, 3.0, 4.0]).unwrap(),
            1.0
        ));
        assert!(wasserstein_1(&[], &[1.0]).is_none());
    }

    #[test]
    fn js_reference_values() {
        assert!(close(
            js_distance(&[1.0, 0.0], &[0.0, 1.0]).unwrap(),
            2f64.ln().sqrt()
        ));
        assert!(close(
            js_distance(&[0.2, 0.3, 0.5], &[0.2, 0.3, 0.5]).unwrap(),
            0.0
        ));
        // Unnormalised inputs are normalised like scipy.
        assert!(close(
            js_distance(&[2.0, 0.0], &[0.0, 5.0]).unwrap(),
            0.832_554_611_157_697_8
        ));
        assert!(js_distance(&[0.0], &[1.0]).is_none());
    }

    #[test]
    fn psi_empty_bin_and_bands() {
        let expect = (1.0 - 0.5) * (1.0f64 / 0.5).ln() + (0.0001 - 0.5) * (0.0001f64 / 0.5).ln();
        assert!(close(psi(&[0.5, 0.5], &[1.0, 0.0]), expect));
        assert!(close(psi(&[0.3, 0.7], &[0.3, 0.7]), 0.0));
        assert_eq!(PsiBand::of(0.099), PsiBand::NoChange);
        assert_eq!(PsiBand::of(0.1), PsiBand::Moderate);
        assert_eq!(PsiBand::of(0.25), PsiBand::Significant);
    }

    /// Draws for the synthetic tagged files.
    struct Draw(StdRng);
    impl Draw {
        fn next(&mut self) -> f64 {
            self.0.random::<f64>()
        }
        fn pick<'a>(&mut self, shares: &[(&'a str, f64)]) -> &'a str {
            let mut u = self.next();
            for (name, p) in shares {
                if u < *p {
                    return name;
                }
                u -= p;
            }
            shares[shares.len() - 1].0
        }
    }

    const L1: [(&str, f64); 3] = [("A", 0.5), ("B", 0.3), ("C", 0.2)];
    const L2: [(&str, f64); 5] = [
        ("billing", 0.1),
        ("delivery", 0.25),
        ("refund", 0.25),
        ("account", 0.2),
        ("other", 0.2),
    ];
    const L2_SHIFT: [(&str, f64); 5] = [
        ("billing", 0.3),
        ("delivery", 0.25 * 7.0 / 9.0),
        ("refund", 0.25 * 7.0 / 9.0),
        ("account", 0.2 * 7.0 / 9.0),
        ("other", 0.2 * 7.0 / 9.0),
    ];
    const L3: [(&str, f64); 8] = [
        ("x1", 0.2),
        ("x2", 0.15),
        ("x3", 0.15),
        ("x4", 0.1),
        ("x5", 0.1),
        ("x6", 0.1),
        ("x7", 0.1),
        ("x8", 0.1),
    ];
    const DEPTH: [(&str, f64); 4] = [("0", 0.05), ("1", 0.1), ("2", 0.15), ("3", 0.7)];

    fn gen(seed: u64, n: usize, l2: &[(&str, f64)], conf_shift: f64) -> Tagged {
        let mut rng = Draw(StdRng::seed_from_u64(seed));
        let mut t = Tagged {
            text_chars: Some(vec![]),
            slice: Some(vec![]),
            ..Default::default()
        };
        for _ in 0..n {
            let d: i64 = rng.pick(&DEPTH).parse().unwrap();
            let labs = [rng.pick(&L1), rng.pick(l2), rng.pick(&L3)];
            for (k, lab) in labs.iter().enumerate() {
                let answered = (k as i64) < d;
                t.labels[k].push(answered.then(|| lab.to_string()));
                let c = 0.5 + 0.5 * rng.next() - conf_shift;
                t.conf[k].push(answered.then_some(c));
            }
            t.depth.push(Some(d));
            t.out_of_scope.push(Some(rng.next() < 0.03));
            t.text_chars
                .as_mut()
                .unwrap()
                .push(Some((20.0 + 500.0 * rng.next()).floor()));
            let s = if rng.next() < 0.6 { "web" } else { "phone" };
            t.slice.as_mut().unwrap().push(Some(s.to_string()));
        }
        t
    }

    #[test]
    fn same_distribution_not_flagged() {
        let r = compare(
            &gen(1, 5000, &L2, 0.0),
            &gen(2, 5000, &L2, 0.0),
            &Thresholds::default(),
        );
        assert!(r.judged);
        assert!(!r.drift, "findings: {:?}", r.findings);
        assert!(r.findings.is_empty());
        assert!(
            !r.notes.iter().any(|n| n.contains("noise")),
            "{:?}",
            r.notes
        );
        assert!(r
            .levels
            .iter()
            .all(|l| !l.mix.drift && l.mix.js_distance.unwrap() < 0.05));
        assert!(!r.depth.drift && r.rates.iter().all(|x| !x.drift));
        assert!(r
            .confidence
            .iter()
            .all(|d| !d.drift && d.normed_wasserstein.is_some()));
        assert!(!r.text_length.as_ref().unwrap().drift);
        assert!(r
            .slices
            .as_ref()
            .unwrap()
            .iter()
            .all(|s| s.judged && !s.drift));
        assert_eq!(r.depth.categories.len(), 4);
    }

    /// Many categories over few rows: two samples of one distribution
    /// differ by more than the threshold from noise alone, which the noise
    /// level absorbs; the same shift over enough rows is flagged.
    #[test]
    fn sampling_noise_of_sparse_mixes_is_not_drift() {
        let names: Vec<String> = (0..60).map(|i| format!("t{i:02}")).collect();
        let uniform: Vec<(&str, f64)> = names.iter().map(|n| (n.as_str(), 1.0 / 60.0)).collect();
        let mut shifted = uniform.clone();
        shifted[0].1 = 0.2;
        for x in &mut shifted[1..] {
            x.1 = 0.8 / 59.0;
        }
        let sample = |seed: u64, n: usize, mix: &[(&str, f64)]| {
            let mut rng = Draw(StdRng::seed_from_u64(seed));
            let mut t = Tagged::default();
            for _ in 0..n {
                let l = rng.pick(mix).to_string();
                for k in 0..3 {
                    t.labels[k].push(Some(l.clone()));
                    t.conf[k].push(Some(0.9));
                }
                t.depth.push(Some(3));
                t.out_of_scope.push(Some(false));
            }
            t
        };
        let t = Thresholds::default();
        let r = compare(&sample(1, 200, &uniform), &sample(2, 400, &uniform), &t);
        let l3 = &r.levels[2].mix;
        assert!(
            l3.psi.unwrap() >= t.psi,
            "the raw PSI is over the threshold"
        );
        assert!(!l3.drift, "{:?}", r.findings);
        assert!(r.notes.iter().any(|n| n.contains("noise")), "{:?}", r.notes);
        let r = compare(&sample(1, 5000, &uniform), &sample(2, 5000, &shifted), &t);
        assert!(r.levels[2].mix.drift, "{:?}", r.levels[2].mix);
    }

    #[test]
    fn shifted_l2_mix_flagged_and_named() {
        let r = compare(
            &gen(1, 5000, &L2, 0.0),
            &gen(2, 5000, &L2_SHIFT, 0.0),
            &Thresholds::default(),
        );
        assert!(r.drift);
        assert!(!r.levels[0].mix.drift && !r.levels[2].mix.drift);
        let l2 = &r.levels[1].mix;
        assert!(
            l2.drift && l2.js_distance.unwrap() >= 0.1 && l2.psi.unwrap() >= 0.1,
            "{l2:?}"
        );
        assert_eq!(l2.drift_by, ["js", "psi"]);
        assert_eq!(l2.psi_band, Some(PsiBand::Moderate), "PSI {:?}", l2.psi);
        let f = r
            .findings
            .iter()
            .find(|f| f.starts_with("L2 label mix"))
            .expect("L2 finding");
        assert!(
            f.contains("billing") && f.contains("JS") && f.contains("PSI"),
            "{f}"
        );
        assert!(r
            .findings
            .iter()
            .all(|f| !f.starts_with("L1") && !f.starts_with("L3")));
        // The shift is present in both slices, which are big enough to be judged.
        assert!(r
            .slices
            .as_ref()
            .unwrap()
            .iter()
            .all(|s| s.judged && s.drift));
    }

    #[test]
    fn confidence_shift_flagged() {
        let t = Thresholds::default();
        let r = compare(&gen(3, 5000, &L2, 0.0), &gen(4, 5000, &L2, 0.2), &t);
        assert!(r
            .confidence
            .iter()
            .all(|d| d.drift && d.normed_wasserstein.unwrap() > 1.0));
        assert!(r
            .findings
            .iter()
            .any(|f| f.starts_with("L2 confidence: normed Wasserstein")));
        assert!(r.levels.iter().all(|l| !l.mix.drift));
    }

    fn small(labels: &[&str], slice: &[&str]) -> Tagged {
        let n = labels.len();
        Tagged {
            labels: [
                labels.iter().map(|s| Some(s.to_string())).collect(),
                vec![None; n],
                vec![None; n],
            ],
            conf: [vec![Some(0.9); n], vec![None; n], vec![None; n]],
            depth: vec![Some(1); n],
            out_of_scope: vec![Some(false); n],
            text_chars: None,
            slice: Some(slice.iter().map(|s| Some(s.to_string())).collect()),
        }
    }

    #[test]
    fn appeared_vanished_and_small_slices() {
        let rf = small(
            &["a", "a", "b", "gone", "<script>"],
            &["s", "s", "s", "s", "s"],
        );
        let mut cu = small(&["a", "b", "new", "new"], &["s", "s", "s", "t"]);
        // L2 never answered in reference, always in current: "(none)" is not a vanished tag.
        cu.labels[1] = vec![Some("z".to_string()); 4];
        let t = Thresholds {
            min_rows: 3,
            ..Default::default()
        };
        let r = compare(&rf, &cu, &t);
        let l1 = &r.levels[0];
        let tags = |v: &[TagCount]| {
            v.iter()
                .map(|x| (x.tag.clone(), x.count))
                .collect::<Vec<_>>()
        };
        assert_eq!(tags(&l1.appeared), vec![("new".to_string(), 2)]);
        assert_eq!(
            tags(&l1.vanished),
            vec![("<script>".to_string(), 1), ("gone".to_string(), 1)]
        );
        assert_eq!(tags(&r.levels[1].appeared), vec![("z".to_string(), 4)]);
        assert!(r.levels[1].vanished.is_empty() && r.levels[2].appeared.is_empty());
        // PSI over the union uses 0.0001 for the empty shares.
        let cats: Vec<&str> = l1
            .mix
            .categories
            .iter()
            .map(|c| c.category.as_str())
            .collect();
        assert_eq!(cats, ["<script>", "a", "b", "gone", "new"]);
        let p: Vec<f64> = vec![0.2, 0.4, 0.2, 0.2, 0.0];
        let q: Vec<f64> = vec![0.0, 0.25, 0.25, 0.0, 0.5];
        assert!(close(l1.mix.psi.unwrap(), psi(&p, &q)));
        let slices = r.slices.as_ref().unwrap();
        assert_eq!(slices.len(), 2);
        assert!(slices[0].judged && slices[0].value == "s");
        assert!(!slices[1].judged && slices[1].levels.is_empty() && !slices[1].drift);
        assert!(slices[1].note.as_deref().unwrap().contains("too few rows"));
        assert!(r.findings.iter().all(|f| !f.contains("slice 't'")));
        assert!(r.notes.iter().any(|n| n.contains("vanished")));
    }

    #[test]
    fn html_escapes_and_has_legend() {
        let rf = small(&["<script>alert(1)</script>", "a"], &["x&y", "x&y"]);
        let cu = small(&["a", "b\"q"], &["x&y", "x&y"]);
        let r = compare(&rf, &cu, &Thresholds::default());
        let h = render_html(&r, "casetag <drift>");
        assert!(!h.contains("<script>") && !h.contains("<drift>"));
        assert!(h.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(
            h.contains("b&quot;q") && h.contains("x&amp;y") && h.contains("casetag &lt;drift&gt;")
        );
        assert!(
            h.contains("class=\"legend\"")
                && h.contains("reference file")
                && h.contains("current file")
        );
        assert!(h.contains("class=\"bar ref\"") && h.contains("class=\"bar cur\""));
        assert!(h.starts_with("<!DOCTYPE html>") && h.ends_with("</html>\n"));
        assert!(!h.contains("http") && !h.contains("<script"));
    }

    #[test]
    fn json_has_expected_keys() {
        let r = compare(
            &gen(5, 200, &L2, 0.0),
            &gen(6, 200, &L2, 0.0),
            &Thresholds::default(),
        );
        let v = serde_json::to_value(&r).unwrap();
        for k in [
            "reference_rows",
            "current_rows",
            "judged",
            "drift",
            "findings",
            "notes",
            "thresholds",
            "levels",
            "depth",
            "rates",
            "confidence",
            "text_length",
            "slices",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        let l = &v["levels"][1];
        for k in [
            "name",
            "categories",
            "js_distance",
            "psi",
            "psi_band",
            "drift",
            "drift_by",
            "psi_noise",
            "js_noise",
            "appeared",
            "vanished",
        ] {
            assert!(l.get(k).is_some(), "missing levels[].{k}");
        }
        assert_eq!(l["name"], "L2");
        assert_eq!(v["rates"][0]["name"], "abstention");
        assert!(v["levels"][0]["psi_band"].is_string());
        // Small slices: the report warns that noise alone reaches the thresholds.
        assert!(r
            .notes
            .iter()
            .any(|n| n.starts_with("slice 'phone' L3") && n.contains("noise")));
        let s = serde_json::to_string(&r).unwrap();
        let back: serde_json::Value = serde_json::from_str(&s).unwrap();
        // (floats may differ in the last ulp: serde_json lacks `float_roundtrip` here)
        assert_eq!(back["levels"][2]["categories"][1]["category"], "x1");
        assert_eq!(back["notes"], v["notes"]);
        assert_eq!(back["findings"], v["findings"]);
    }

    #[test]
    fn ragged_columns_do_not_panic() {
        let mut a = small(&["a", "b", "c"], &["s"]);
        a.depth.truncate(1);
        a.conf[0] = vec![Some(f64::NAN), None];
        let r = compare(&a, &small(&["a"], &[]), &Thresholds::default());
        assert_eq!((r.reference_rows, r.current_rows), (3, 1));
        assert_eq!(
            r.depth
                .categories
                .iter()
                .map(|c| c.reference_count)
                .sum::<usize>(),
            3
        );
        assert!(r.confidence[0].normed_wasserstein.is_none());
        assert!(!render_html(&r, "ragged").is_empty());
    }

    #[test]
    fn empty_inputs_not_judged() {
        let t = Thresholds::default();
        let e = Tagged::default();
        for (a, b) in [
            (&e, &e),
            (&e, &gen(7, 100, &L2, 0.0)),
            (&gen(7, 100, &L2, 0.0), &e),
        ] {
            let r = compare(a, b, &t);
            assert!(!r.judged && !r.drift && r.findings.is_empty());
            assert!(r
                .notes
                .iter()
                .any(|n| n.contains("zero rows: no drift judged")));
            assert!(r.levels.iter().all(|l| l.mix.js_distance.is_none()));
            let h = render_html(&r, "empty");
            assert!(h.contains("not judged"));
            assert!(serde_json::to_string(&r).is_ok());
        }
    }
}
