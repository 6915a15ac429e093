//! Answers with tags added from a few examples, checked against the
//! nearest rows.
//!
//! A tag added by `train --from --add` has a head row fitted to a handful
//! of examples, and it takes some cases of the old tag next to it. Where
//! the model answers such a tag, the case's embedding is compared with the
//! nearest example of that tag and with the nearest training row the
//! memory keeps of the best old tag: when the old tag's row is closer by
//! more than the bundle's margin (cosine; [`DEFAULT_MARGIN`] unless set
//! otherwise when the tags were added), the added tag gives way and the
//! next answer stands. The head's new row is linear and rests on a few
//! examples; the nearest rows say what the case resembles.

use casetag_core::bundle::Bundle;
use casetag_core::{argmax, dot};
use casetag_transformer::Memory;

use crate::{EngineError, Result};

/// How much closer (cosine) the best old tag's nearest memory row must be
/// than the added tag's nearest example for the added tag to give way, by
/// default. Chosen on the BANKING77 development hold-outs
/// (`scripts/banking77_oos.py --seed S --add 10 --dev`, S = 1, 2, 3) with
/// the default recipe: of the grid values that kept both the new intents'
/// accuracy (≥ 0.80) and the old ones' (a drop ≤ 0.5 points) on all
/// three, the one with the most new-intent accuracy
/// (`research/add_nearest.py`, `benches/README.md`).
pub const DEFAULT_MARGIN: f32 = 0.15;

/// What a score below every other becomes when its tag gives way (finite,
/// as the decision layer requires; e^-60 of the others' weight).
const GIVE_WAY: f32 = 60.0;

/// The added tags of a bundle and the rows to check them against.
#[derive(Debug, Clone)]
pub struct AddedGuard {
    d: usize,
    margin: f32,
    /// Per output: added from a few examples.
    added: Vec<bool>,
    /// Per output: its memory rows, unit length, `d` wide, row-major.
    rows: Vec<Vec<f32>>,
}

impl AddedGuard {
    /// The guard of a bundle whose lineage added tags from a few examples
    /// with a margin recorded (`parent` in its manifest); `None` for every
    /// other bundle.
    pub fn load(bundle: &Bundle) -> Result<Option<Self>> {
        let Some((parent, margin)) = bundle
            .manifest
            .parent
            .as_ref()
            .and_then(|p| Some((p, p.guard_margin?)))
        else {
            return Ok(None);
        };
        let tax = &bundle.taxonomy;
        let n = bundle.manifest.label_space.n_outputs();
        let mut added = vec![false; n];
        for tag in parent.few_shot_tags() {
            if let Some(c) = (0..tax.n_paths()).find(|&c| tax.path_of(c).to_string() == tag) {
                added[c] = true;
            }
        }
        if !added.contains(&true) {
            return Ok(None);
        }
        let bad = |m: String| EngineError::Input(format!("{}: {m}", bundle.dir.display()));
        let memory = Memory::load(&bundle.dir)
            .map_err(|e| bad(e.to_string()))?
            .ok_or_else(|| {
                bad(format!(
                    "a bundle with added tags needs its {}",
                    casetag_transformer::MEMORY_FILE
                ))
            })?;
        Self::new(memory, added, margin).map(Some).map_err(bad)
    }

    /// From the memory (rows and their outputs), which outputs were added
    /// and the margin.
    pub fn new(memory: Memory, added: Vec<bool>, margin: f32) -> std::result::Result<Self, String> {
        let d = memory.dim;
        let mut rows = vec![Vec::new(); added.len()];
        for (x, &y) in memory.x.chunks_exact(d.max(1)).zip(&memory.y) {
            let Some(r) = rows.get_mut(y as usize) else {
                return Err(format!("memory row of output {y}, past {}", added.len()));
            };
            let norm = dot(x, x).sqrt();
            r.extend(x.iter().map(|v| if norm > 0.0 { v / norm } else { 0.0 }));
        }
        Ok(Self {
            d,
            margin,
            added,
            rows,
        })
    }

    /// Let an added tag the scores put first give way where the case
    /// (`embedding`) is nearer the best old tag's rows by more than the
    /// margin; then the next answer is checked the same way. Returns
    /// how many tags gave way.
    pub fn apply(&self, scores: &mut [f32], embedding: &[f32]) -> usize {
        if scores.len() != self.added.len() || embedding.len() != self.d {
            return 0;
        }
        let norm = dot(embedding, embedding).sqrt();
        if norm <= 0.0 {
            return 0;
        }
        let nearest = |c: usize| -> Option<f32> {
            self.rows[c]
                .chunks_exact(self.d)
                .map(|r| dot(r, embedding) / norm)
                .reduce(f32::max)
        };
        let mut gave_way = 0;
        loop {
            let top = argmax(scores);
            if !self.added[top] {
                return gave_way;
            }
            let old = (0..scores.len())
                .filter(|&c| !self.added[c] && !self.rows[c].is_empty())
                .max_by(|&a, &b| scores[a].total_cmp(&scores[b]));
            let (Some(old), Some(own)) = (old, nearest(top)) else {
                return gave_way;
            };
            match nearest(old) {
                Some(near_old) if near_old - own > self.margin => {
                    let floor = scores.iter().copied().fold(f32::INFINITY, f32::min);
                    scores[top] = floor - GIVE_WAY;
                    gave_way += 1;
                }
                _ => return gave_way,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Old output 0 along x, old output 1 along y, output 2 added from
    /// examples along z tilted towards x.
    fn guard() -> AddedGuard {
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..5 {
            let e = 0.01 * i as f32;
            x.extend([1.0, e, 0.0]);
            y.push(0);
            x.extend([e, 1.0, 0.0]);
            y.push(1);
            x.extend([0.5, e, 1.0]);
            y.push(2);
        }
        let memory = Memory { dim: 3, x, y };
        AddedGuard::new(memory, vec![false, false, true], DEFAULT_MARGIN).unwrap()
    }

    #[test]
    fn an_added_tag_gives_way_only_where_an_old_tags_rows_are_much_nearer() {
        let g = guard();
        // Like the old tag's rows, scored for the added tag: gives way to
        // the best old tag, which is 0 here.
        let mut s = vec![1.0, 0.5, 2.0];
        assert_eq!(g.apply(&mut s, &[1.0, 0.0, 0.05]), 1);
        assert_eq!(argmax(&s), 0);
        assert!(
            s.iter().all(|v| v.is_finite()) && s[2] < 0.5 - 50.0,
            "{s:?}"
        );
        // Like the added tag's examples: stands.
        let mut s = vec![1.0, 0.5, 2.0];
        assert_eq!(g.apply(&mut s, &[0.5, 0.0, 1.0]), 0);
        assert_eq!(s, vec![1.0, 0.5, 2.0]);
        // Between the two, within the margin: stands.
        let mut s = vec![1.0, 0.5, 2.0];
        assert_eq!(g.apply(&mut s, &[0.9, 0.0, 0.7]), 0);
        // An old tag first: nothing to check.
        let mut s = vec![3.0, 0.5, 2.0];
        assert_eq!(g.apply(&mut s, &[1.0, 0.0, 0.0]), 0);
        // Mismatched shapes change nothing.
        let mut s = vec![1.0, 0.5, 2.0];
        assert_eq!(g.apply(&mut s, &[1.0, 0.0]), 0);
        assert_eq!(s, vec![1.0, 0.5, 2.0]);
    }

    #[test]
    fn memory_rows_past_the_outputs_are_refused() {
        let memory = Memory {
            dim: 2,
            x: vec![1.0, 0.0],
            y: vec![5],
        };
        let e = AddedGuard::new(memory, vec![false, true], DEFAULT_MARGIN).unwrap_err();
        assert!(e.contains("output 5"), "{e}");
    }
}
