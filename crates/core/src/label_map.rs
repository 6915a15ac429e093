//! Label maps between taxonomy versions: data labelled with an older (or
//! newer) taxonomy than a model's, mapped before it is compared.
//!
//! A map is a YAML mapping from a node id to what it became:
//!
//! ```yaml
//! refund_delay: refund_not_received      # renamed
//! voucher_missing: voucher_not_applied   # merged into an existing tag
//! goodwill: [voucher_not_applied, compensation_cash]   # split: cannot be mapped
//! ```
//!
//! A renamed or merged id maps to its new id; a split id names several new
//! ids, so a case labelled with it cannot be mapped without reading it
//! again, and is reported as unmapped instead of being counted wrong. Ids
//! not in the map stay as they are. Each level's id is mapped on its own:
//! when a tag moves under another parent, map the parent's id too.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::{Error, Result, TagPath};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum Target {
    One(String),
    Split(Vec<String>),
}

/// A loaded label map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelMap {
    map: BTreeMap<String, Target>,
}

impl LabelMap {
    /// Parse a map; every value must be an id or a list of at least two.
    pub fn from_yaml_str(s: &str) -> Result<Self> {
        let map: BTreeMap<String, Target> = serde_yaml::from_str(s).map_err(|e| {
            Error::Invalid(format!(
                "label map: {e} (expected `old_id: new_id` or `old_id: [new_a, new_b]` per line)"
            ))
        })?;
        for (k, v) in &map {
            let bad = match v {
                Target::One(t) => t.trim().is_empty(),
                Target::Split(ts) => ts.len() < 2 || ts.iter().any(|t| t.trim().is_empty()),
            };
            if bad || k.trim().is_empty() {
                return Err(Error::Invalid(format!(
                    "label map: '{k}': map an id to one new id, or to a list of two or more for a split"
                )));
            }
        }
        Ok(Self { map })
    }

    pub fn load(path: &Path) -> Result<Self> {
        let s = std::fs::read_to_string(path)
            .map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
        Self::from_yaml_str(&s)
            .map_err(|e| Error::Invalid(format!("{}: {}", path.display(), e.message())))
    }

    /// The label with every mapped id replaced; `Err(id)` names the first
    /// split id, which cannot be mapped.
    pub fn apply(&self, label: &TagPath) -> std::result::Result<TagPath, String> {
        let one = |id: &str| -> std::result::Result<String, String> {
            match self.map.get(id) {
                None => Ok(id.to_string()),
                Some(Target::One(t)) => Ok(t.clone()),
                Some(Target::Split(_)) => Err(id.to_string()),
            }
        };
        Ok(TagPath {
            l1: one(&label.l1)?,
            l2: label.l2.as_deref().map(one).transpose()?,
            l3: label.l3.as_deref().map(one).transpose()?,
        })
    }

    /// What a split id became (for reports).
    pub fn split_targets(&self, id: &str) -> Option<&[String]> {
        match self.map.get(id) {
            Some(Target::Split(t)) => Some(t),
            _ => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// What mapping a set of labels did: rows relabelled per `old -> new` path
/// and rows left unmapped per split id.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MapReport {
    pub mapped: BTreeMap<String, usize>,
    pub unmapped: BTreeMap<String, usize>,
}

impl MapReport {
    /// Map `labels` in place: a mapped label is replaced, an unmappable one
    /// is left as it was (and counted). Returns which rows were unmappable.
    pub fn map_all(map: &LabelMap, labels: &mut [Option<TagPath>]) -> (Self, Vec<usize>) {
        let mut r = Self::default();
        let mut bad = Vec::new();
        for (i, slot) in labels.iter_mut().enumerate() {
            let Some(l) = slot.as_ref() else { continue };
            match map.apply(l) {
                Ok(m) if &m != l => {
                    *r.mapped.entry(format!("{l} -> {m}")).or_default() += 1;
                    *slot = Some(m);
                }
                Ok(_) => {}
                Err(id) => {
                    *r.unmapped.entry(id).or_default() += 1;
                    bad.push(i);
                }
            }
        }
        (r, bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str =
        "refund_delay: refund_not_received\nold_l1: returns\ngoodwill: [voucher, cash]\n";

    #[test]
    fn renames_merges_and_names_the_splits() {
        let m = LabelMap::from_yaml_str(MAP).unwrap();
        let p = TagPath::new("old_l1", Some("refund"), Some("refund_delay"));
        assert_eq!(
            m.apply(&p).unwrap(),
            TagPath::new("returns", Some("refund"), Some("refund_not_received"))
        );
        let s = TagPath::new("compensation", Some("goodwill"), None);
        assert_eq!(m.apply(&s).unwrap_err(), "goodwill");
        assert_eq!(m.split_targets("goodwill").unwrap(), ["voucher", "cash"]);
        let mut labels = vec![
            Some(p),
            Some(s),
            None,
            Some(TagPath::new("returns", None, None)),
        ];
        let (r, bad) = MapReport::map_all(&m, &mut labels);
        assert_eq!(bad, vec![1]);
        assert_eq!(r.unmapped["goodwill"], 1);
        assert_eq!(r.mapped.len(), 1);
        assert_eq!(labels[0].as_ref().unwrap().l1, "returns");
        assert_eq!(labels[3], Some(TagPath::new("returns", None, None)));
    }

    #[test]
    fn a_bad_map_is_one_line_naming_the_entry() {
        for bad in ["a: []\n", "a: [b]\n", "a: ''\n", "- a\n", "a: {b: c}\n"] {
            let e = LabelMap::from_yaml_str(bad).unwrap_err().to_string();
            assert!(e.starts_with("label map"), "{bad:?}: {e}");
            assert!(!e.trim().contains('\n'), "{bad:?}: {e}");
        }
    }
}
