//! `casetag prepare`: raw case table -> cleaned, validated, stratified
//! train/val/test Parquet files plus the taxonomy used and `stats.json`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use casetag_core::{TagPath, Taxonomy};
use polars::prelude::*;
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};
use serde::Serialize;

use crate::cases::{load_case_frame, parse_labels, str_values, ID, TEXT};
use crate::error::{one_line, DataError, Result};
use crate::io::write_table;

/// Inputs of [`prepare`].
#[derive(Debug, Clone)]
pub struct PrepareConfig {
    pub input: PathBuf,
    pub out: PathBuf,
    /// Taxonomy YAML; inferred from the labels when `None`.
    pub taxonomy: Option<PathBuf>,
    /// train, val, test ratios; must be non-negative and sum to 1.
    pub split: [f64; 3],
    pub seed: u64,
    /// Drop rows whose labels do not fit the taxonomy instead of failing.
    pub drop_unknown: bool,
    /// Mask PII (e-mails, phones, cards, order ids) in the text.
    pub mask: bool,
    /// Source column -> label column renames applied before anything else,
    /// e.g. `[("category", "l1")]` for BANKING77 (a flat depth-1 taxonomy).
    pub label_columns: Vec<(String, String)>,
}

impl Default for PrepareConfig {
    fn default() -> Self {
        Self {
            input: PathBuf::new(),
            out: PathBuf::new(),
            taxonomy: None,
            split: [0.8, 0.1, 0.1],
            seed: 42,
            drop_unknown: false,
            mask: true,
            label_columns: Vec::new(),
        }
    }
}

/// Character-length quantiles of the output texts (nearest rank).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TextLenQuantiles {
    pub p50: usize,
    pub p90: usize,
    pub p99: usize,
    pub max: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SplitCounts {
    pub train: usize,
    pub val: usize,
    pub test: usize,
}

/// What [`prepare`] did; also written as `stats.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrepareStats {
    /// Rows read (turns, for turn-level input).
    pub rows_in: usize,
    /// Cases after joining turns (equals `rows_in` for case-level input).
    pub cases_in: usize,
    /// Cases written over all splits.
    pub rows_out: usize,
    pub empty_dropped: usize,
    pub duplicates_dropped: usize,
    pub unknown_dropped: usize,
    /// Out-of-scope cases kept (all label columns empty).
    pub out_of_scope: usize,
    /// Label path (`l1/l2/l3`) -> cases kept.
    pub per_class: BTreeMap<String, usize>,
    pub text_len_quantiles: TextLenQuantiles,
    pub splits: SplitCounts,
    pub elapsed_s: f64,
    /// `case` or `turn`.
    pub input_kind: &'static str,
    /// Whether the taxonomy was inferred from the labels.
    pub taxonomy_inferred: bool,
}

const SPLIT_NAMES: [&str; 3] = ["train", "val", "test"];
const OOS_STRATUM: &str = "<out_of_scope>";
const MAX_LISTED: usize = 10;

fn check_split(split: [f64; 3]) -> Result<()> {
    let sum: f64 = split.iter().sum();
    if split.iter().any(|r| !r.is_finite() || *r < 0.0) || (sum - 1.0).abs() > 1e-6 {
        return Err(DataError::Usage(format!(
            "--split {},{},{}: ratios must be non-negative and sum to 1",
            split[0], split[1], split[2]
        )));
    }
    if split[0] <= 0.0 {
        return Err(DataError::Usage(
            "--split: the train ratio must be greater than 0".into(),
        ));
    }
    Ok(())
}

/// FNV-1a: a stable per-stratum seed, so adding a class never reshuffles
/// the others.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Stratified split assignment: 0 = train, 1 = val, 2 = test, one per row.
///
/// Rows are grouped by stratum key; each stratum is shuffled with a seeded RNG
/// (seed mixed with the key) and cut by the ratios, rounding to the nearest
/// row. Every non-empty stratum puts at least one row in train; a split whose
/// ratio is 0 gets no rows. Deterministic for a given seed.
pub fn split_indices<K: AsRef<str>>(strata: &[K], ratios: [f64; 3], seed: u64) -> Vec<u8> {
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, k) in strata.iter().enumerate() {
        groups.entry(k.as_ref()).or_default().push(i);
    }
    let mut out = vec![0u8; strata.len()];
    for (key, mut rows) in groups {
        let mut rng = StdRng::seed_from_u64(seed ^ fnv1a(key));
        rows.shuffle(&mut rng);
        let n = rows.len();
        let mut n_train = ((n as f64) * ratios[0]).round() as usize;
        n_train = n_train.clamp(1, n);
        let rest = n - n_train;
        let n_val = if ratios[2] <= 0.0 {
            if ratios[1] > 0.0 {
                rest
            } else {
                0
            }
        } else if ratios[1] <= 0.0 {
            0
        } else {
            (((n as f64) * ratios[1]).round() as usize).min(rest)
        };
        // With no test share and no val share, everything stays in train.
        let n_train = if ratios[1] <= 0.0 && ratios[2] <= 0.0 {
            n
        } else {
            n_train
        };
        for (j, &r) in rows.iter().enumerate() {
            out[r] = if j < n_train {
                0
            } else if j < n_train + n_val {
                1
            } else {
                2
            };
        }
    }
    out
}

fn quantiles(mut lens: Vec<usize>) -> TextLenQuantiles {
    if lens.is_empty() {
        return TextLenQuantiles::default();
    }
    lens.sort_unstable();
    let q = |p: f64| {
        let rank = ((p * lens.len() as f64).ceil() as usize).clamp(1, lens.len());
        lens[rank - 1]
    };
    TextLenQuantiles {
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        max: *lens.last().unwrap(),
    }
}

fn load_taxonomy(path: &Path) -> Result<Taxonomy> {
    // Core errors already name the file.
    Taxonomy::load(path)
        .map_err(|e| DataError::Taxonomy(format!("taxonomy: {}", one_line(e.message()))))
}

/// Run the whole preparation (see the crate README for the contract).
pub fn prepare(cfg: &PrepareConfig) -> Result<PrepareStats> {
    let start = Instant::now();
    check_split(cfg.split)?;
    let given_taxonomy = cfg.taxonomy.as_deref().map(load_taxonomy).transpose()?;
    let path = cfg.input.as_path();
    let cf = load_case_frame(path, &cfg.label_columns, cfg.mask)?;
    let cases_in = cf.df.height();

    // Drop empty texts, then exact duplicates (first occurrence wins).
    let texts = str_values(&cf.df, TEXT)?;
    let ids = str_values(&cf.df, ID)?;
    let mut empty_dropped = 0;
    let mut duplicates_dropped = 0;
    let mut seen: HashSet<&str> = HashSet::with_capacity(texts.len());
    let mut kept: Vec<usize> = Vec::with_capacity(texts.len());
    for (i, t) in texts.iter().enumerate() {
        if t.is_empty() {
            empty_dropped += 1;
        } else if !seen.insert(t.as_str()) {
            duplicates_dropped += 1;
        } else {
            kept.push(i);
        }
    }

    // Labels: parse, then check against the taxonomy.
    let parsed = parse_labels(&cf.df)?;
    let mut bad: Vec<(usize, String)> = Vec::new();
    let mut labels: Vec<(usize, Option<TagPath>)> = Vec::with_capacity(kept.len());
    for &i in &kept {
        match &parsed[i] {
            Ok(l) => labels.push((i, l.clone())),
            Err(m) => bad.push((i, m.clone())),
        }
    }
    let taxonomy_inferred = given_taxonomy.is_none();
    let taxonomy = match given_taxonomy {
        Some(t) => t,
        None => Taxonomy::infer(labels.iter().filter_map(|(_, l)| l.as_ref())).map_err(|e| {
            DataError::Labels {
                path: path.display().to_string(),
                msg: format!(
                    "{} (give --taxonomy to check labels against a file)",
                    e.message()
                ),
            }
        })?,
    };
    labels.retain(|(i, l)| match l {
        Some(p) => match taxonomy.resolve(p) {
            Ok(_) => true,
            Err(m) => {
                bad.push((*i, m));
                false
            }
        },
        None => true,
    });
    bad.sort_by_key(|(i, _)| *i);
    let unknown_dropped = bad.len();
    if !bad.is_empty() && !cfg.drop_unknown {
        let listed: Vec<String> = bad
            .iter()
            .take(MAX_LISTED)
            .map(|(i, m)| format!("row {} (id {}): {m}", i + 1, ids[*i]))
            .collect();
        let more = if bad.len() > MAX_LISTED {
            format!("; ... and {} more", bad.len() - MAX_LISTED)
        } else {
            String::new()
        };
        let against = match &cfg.taxonomy {
            Some(t) => format!("taxonomy {}", t.display()),
            None => "the inferred taxonomy".into(),
        };
        return Err(DataError::Labels {
            path: path.display().to_string(),
            msg: format!(
                "{} row(s) with labels that do not fit {against}: {}{more} (use --drop-unknown to drop them)",
                bad.len(),
                listed.join("; ")
            ),
        });
    }

    // Strata and split.
    let mut per_class: BTreeMap<String, usize> = BTreeMap::new();
    let mut out_of_scope = 0;
    let strata: Vec<String> = labels
        .iter()
        .map(|(_, l)| match l {
            Some(p) => {
                let k = p.ids().join("/");
                *per_class.entry(k.clone()).or_default() += 1;
                k
            }
            None => {
                out_of_scope += 1;
                OOS_STRATUM.to_string()
            }
        })
        .collect();
    let assign = split_indices(&strata, cfg.split, cfg.seed);
    let rows: Vec<usize> = labels.iter().map(|(i, _)| *i).collect();
    let lens: Vec<usize> = rows.iter().map(|&i| texts[i].chars().count()).collect();

    std::fs::create_dir_all(&cfg.out).map_err(|e| DataError::write(&cfg.out, e))?;
    let mut counts = [0usize; 3];
    for (s, name) in SPLIT_NAMES.iter().enumerate() {
        let dest = cfg.out.join(format!("{name}.parquet"));
        if cfg.split[s] <= 0.0 {
            // A stale file from an earlier run with other ratios would mislead.
            let _ = std::fs::remove_file(&dest);
            continue;
        }
        let idx: Vec<IdxSize> = rows
            .iter()
            .zip(&assign)
            .filter(|(_, a)| **a as usize == s)
            .map(|(&r, _)| r as IdxSize)
            .collect();
        counts[s] = idx.len();
        let mut part = cf
            .df
            .take(&IdxCa::from_vec("idx".into(), idx))
            .map_err(DataError::internal)?;
        write_table(&mut part, &dest)?;
    }
    let tax_path = cfg.out.join("taxonomy.yaml");
    std::fs::write(&tax_path, taxonomy.to_yaml()).map_err(|e| DataError::write(&tax_path, e))?;

    let stats = PrepareStats {
        rows_in: cf.rows_in,
        cases_in,
        rows_out: counts.iter().sum(),
        empty_dropped,
        duplicates_dropped,
        unknown_dropped,
        out_of_scope,
        per_class,
        text_len_quantiles: quantiles(lens),
        splits: SplitCounts {
            train: counts[0],
            val: counts[1],
            test: counts[2],
        },
        elapsed_s: start.elapsed().as_secs_f64(),
        input_kind: cf.kind.as_str(),
        taxonomy_inferred,
    };
    let stats_path = cfg.out.join("stats.json");
    let json = serde_json::to_string_pretty(&stats).map_err(DataError::internal)?;
    std::fs::write(&stats_path, json).map_err(|e| DataError::write(&stats_path, e))?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_nearest_rank() {
        let q = quantiles((1..=100).collect());
        assert_eq!((q.p50, q.p90, q.p99, q.max), (50, 90, 99, 100));
        assert_eq!(quantiles(vec![]), TextLenQuantiles::default());
    }

    #[test]
    fn split_ratios_checked() {
        assert!(check_split([0.8, 0.1, 0.1]).is_ok());
        assert!(check_split([1.0, 0.0, 0.0]).is_ok());
        assert!(check_split([0.8, 0.3, 0.1]).unwrap_err().is_input());
        assert!(check_split([0.0, 0.5, 0.5]).is_err());
        assert!(check_split([1.1, -0.1, 0.0]).is_err());
    }

    #[test]
    fn zero_ratio_split_gets_nothing() {
        let keys: Vec<String> = (0..50).map(|i| format!("c{}", i % 3)).collect();
        let a = split_indices(&keys, [0.9, 0.1, 0.0], 1);
        assert!(!a.contains(&2));
        let a = split_indices(&keys, [1.0, 0.0, 0.0], 1);
        assert!(a.iter().all(|&s| s == 0));
    }
}
