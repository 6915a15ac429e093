//! The release gate: checks a candidate's evaluation against minimums and
//! against the reference (champion) model, and the verdict that `eval`
//! writes into `report.json` and `report.html`.
//!
//! Gate YAML:
//!
//! ```yaml
//! min:                      # metric path in report.json -> minimum
//!   levels.l3.accuracy: 0.90
//! min_coverage: 0.85
//! max_regression:           # level (l1..l3) or `slice` -> largest drop
//!   l1: 0.01                # a share (0.01 = one point) ...
//!   l3: 1 point             # ... or said in points
//! ```
//!
//! Accuracies, coverage and every other share are numbers from 0 to 1; a
//! value outside that range is refused (a `1` meant as "one point" would
//! otherwise allow a drop of 100 points). Metrics that are not shares
//! (`throughput_cases_per_s`, counts) take any non-negative minimum.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::eval::ModelEval;

/// A share from 0 to 1, written as a number (`0.01`) or in points
/// (`1 point`, `0.5 points`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share(pub f64);

impl<'de> Deserialize<'de> for Share {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(f64),
            Text(String),
        }
        let v = match Raw::deserialize(d)? {
            Raw::Num(v) => v,
            Raw::Text(t) => parse_points(&t).map_err(serde::de::Error::custom)?,
        };
        if !(0.0..=1.0).contains(&v) {
            return Err(serde::de::Error::custom(format!(
                "{v} is not a share from 0 to 1 (write 0.01 or '1 point' for one point)"
            )));
        }
        Ok(Share(v))
    }
}

fn parse_points(t: &str) -> Result<f64, String> {
    let t = t.trim();
    let num = t
        .strip_suffix("points")
        .or_else(|| t.strip_suffix("point"))
        .map(str::trim)
        .ok_or_else(|| format!("'{t}': expected a share (0.01) or points ('1 point')"))?;
    let p: f64 = num
        .parse()
        .map_err(|_| format!("'{t}': '{num}' is not a number"))?;
    Ok(p / 100.0)
}

/// The release gate, read from YAML with [`Gate::from_yaml`].
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    /// Metric path in report.json (e.g. `levels.l1.accuracy`) -> minimum.
    #[serde(default)]
    pub min: BTreeMap<String, f64>,
    /// Level (`l1`..`l3`) or `slice` -> largest allowed accuracy drop
    /// against the reference model.
    #[serde(default)]
    pub max_regression: BTreeMap<String, Share>,
    /// Minimum coverage (full-depth answers at the bundle's target precision).
    #[serde(default)]
    pub min_coverage: Option<Share>,
}

/// Last segments of metric paths that are not shares.
const UNBOUNDED: &[&str] = &[
    "throughput_cases_per_s",
    "n",
    "n_in_scope",
    "n_out_of_scope",
];

impl Gate {
    /// Parse and validate a gate; the error is one line naming the key.
    pub fn from_yaml(text: &str) -> Result<Gate, String> {
        let g: Gate = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        for (k, &v) in &g.min {
            let last = k.rsplit('.').next().unwrap_or(k);
            if !v.is_finite() || v < 0.0 {
                return Err(format!("min.{k}: {v} must be a non-negative number"));
            }
            if !UNBOUNDED.contains(&last) && v > 1.0 {
                return Err(format!(
                    "min.{k}: {v} is not a share from 0 to 1 (0.9 means 90%)"
                ));
            }
        }
        for (k, &Share(v)) in &g.max_regression {
            if !matches!(k.as_str(), "l1" | "l2" | "l3" | "slice") {
                return Err(format!(
                    "max_regression.{k}: unknown key (l1, l2, l3 or slice)"
                ));
            }
            if v >= 1.0 {
                return Err(format!(
                    "max_regression.{k}: {v} would allow a drop of {} points; write 0.01 or '1 point' for one point",
                    100.0 * v
                ));
            }
        }
        Ok(g)
    }

    /// Check the candidates (all but the first model when there are several;
    /// the first is then the reference) against the gate.
    pub fn check(&self, models: &[ModelEval]) -> GateVerdict {
        let mut failed = Vec::new();
        let (reference, candidates) = match models {
            [r, rest @ ..] if !rest.is_empty() => (Some(r), rest),
            all => (None, all),
        };
        for m in candidates {
            let s = serde_json::to_value(&m.summary).unwrap_or_default();
            let id = &m.summary.id;
            for (k, min) in &self.min {
                match lookup(&s, k) {
                    Some(v) if v >= *min => {}
                    Some(v) => {
                        failed.push(format!("{id}: {k} = {v:.4} is below the minimum {min}"))
                    }
                    None => failed.push(format!("{id}: {k} is not in the report")),
                }
            }
            if let Some(Share(min)) = self.min_coverage {
                if m.summary.coverage < min {
                    failed.push(format!(
                        "{id}: coverage = {:.4} is below the minimum {min}",
                        m.summary.coverage
                    ));
                }
            }
            let Some(r) = reference else { continue };
            for (level, &Share(max)) in &self.max_regression {
                if level == "slice" {
                    for cs in &m.slices {
                        let Some(rs) = r
                            .slices
                            .iter()
                            .find(|x| x.column == cs.column && x.value == cs.value)
                        else {
                            continue;
                        };
                        let drop = rs.in_scope_accuracy - cs.in_scope_accuracy;
                        if drop > max {
                            failed.push(format!(
                                "{id}: slice {}={} in-scope accuracy drops {:.2} points against {} (max {:.2})",
                                cs.column, cs.value, 100.0 * drop, r.summary.id, 100.0 * max
                            ));
                        }
                    }
                    continue;
                }
                match (r.summary.levels.get(level), m.summary.levels.get(level)) {
                    (Some(a), Some(b)) => {
                        let drop = a.accuracy - b.accuracy;
                        if drop > max {
                            failed.push(format!(
                                "{id}: {level} accuracy drops {:.2} points against {} (max {:.2})",
                                100.0 * drop,
                                r.summary.id,
                                100.0 * max
                            ));
                        }
                    }
                    _ => failed.push(format!("{id}: level {level} is not in both reports")),
                }
            }
        }
        GateVerdict {
            passed: failed.is_empty(),
            reference: reference.map(|r| r.summary.id.clone()),
            failed,
        }
    }
}

/// What the gate decided, as saved in `report.json` (`gate`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GateVerdict {
    pub passed: bool,
    /// The model the candidates were compared with, when there were several.
    pub reference: Option<String>,
    /// One readable line per failed check.
    pub failed: Vec<String>,
}

fn lookup(v: &serde_json::Value, path: &str) -> Option<f64> {
    path.split('.').try_fold(v, |v, k| v.get(k))?.as_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_and_points_are_read_and_out_of_range_values_refused() {
        let g =
            Gate::from_yaml("max_regression: {l1: 0.01, l3: 1 point, l2: '0.5 points'}").unwrap();
        assert_eq!(g.max_regression["l1"], Share(0.01));
        assert_eq!(g.max_regression["l3"], Share(0.01));
        assert_eq!(g.max_regression["l2"], Share(0.005));
        // One meant as one point would allow a drop of 100 points.
        let e = Gate::from_yaml("max_regression: {l1: 1.5}").unwrap_err();
        assert!(
            e.contains("share from 0 to 1") && e.contains("1 point"),
            "{e}"
        );
        let e = Gate::from_yaml("max_regression: {l1: 1}").unwrap_err();
        assert!(e.contains("100 points"), "{e}");
        let e = Gate::from_yaml("min: {levels.l1.accuracy: 90}").unwrap_err();
        assert!(e.contains("min.levels.l1.accuracy"), "{e}");
        assert!(Gate::from_yaml("min: {throughput_cases_per_s: 500}").is_ok());
        let e = Gate::from_yaml("min_coverage: 85").unwrap_err();
        assert!(e.contains("share"), "{e}");
        let e = Gate::from_yaml("max_regression: {l4: 0.01}").unwrap_err();
        assert!(e.contains("max_regression.l4"), "{e}");
        assert!(Gate::from_yaml("max_regression: {l1: one}").is_err());
    }
}
