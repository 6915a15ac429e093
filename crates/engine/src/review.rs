//! The review queue: from tagged cases, the ones worth a human's time,
//! ranked by how much a label is expected to help, with near-duplicates
//! grouped so that one label serves the group (`casetag review`).
//!
//! **What is worth labelling.** A case the model is unsure of teaches it
//! the most (uncertainty sampling): its uncertainty is one minus the margin
//! between its best and second-best answer at the deepest level it guessed
//! (`1 - (p1 - p2)`; without the runner-up's probability, `p2 = 1 - p1`).
//! Cases declared out of scope and cases on which a second model (the
//! baseline next to the transformer, `--compare`) disagrees count as fully
//! uncertain. The reasons (out of scope, abstained, backed off,
//! disagreement, low margin) are reported with each case.
//!
//! **Near-duplicates.** Cases whose character 5-gram sets overlap by at least
//! `dup_threshold` (Jaccard, estimated with MinHash, 64 hashes in 16 bands
//! of 4) form one group: a group is one item of the queue, shown by its most
//! uncertain member, and its value is that member's uncertainty times
//! `1 + ln(size)` (a label that serves many cases is worth more, with
//! diminishing returns). The budget counts items, i.e. labels asked for.

use std::collections::HashMap;

use casetag_core::metrics::SplitMix;
use serde::Serialize;

/// One tagged case as the queue sees it.
#[derive(Debug, Clone, Default)]
pub struct Candidate {
    pub id: String,
    pub text: String,
    /// The model's best guess per level (`guess_l1..guess_l3`).
    pub guess: Vec<String>,
    /// Its confidence per level (`conf_l1..conf_l3`).
    pub confidence: Vec<f32>,
    /// The runner-up's probability at the deepest guessed level, when known
    /// (`tag --top-k 2` or more).
    pub second: Option<f32>,
    /// Levels the answer kept (0: abstained or out of scope).
    pub depth: usize,
    pub out_of_scope: bool,
    /// A second model's best guess per level, when compared.
    pub other_guess: Option<Vec<String>>,
}

/// Why a case is in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    OutOfScope,
    Abstained,
    BackedOff,
    Disagreement,
    LowMargin,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::OutOfScope => "out_of_scope",
            Reason::Abstained => "abstained",
            Reason::BackedOff => "backed_off",
            Reason::Disagreement => "disagreement",
            Reason::LowMargin => "low_margin",
        }
    }
}

/// Margins below this count as a reason of their own.
pub const LOW_MARGIN: f32 = 0.2;

impl Candidate {
    /// `1 - (p1 - p2)` at the deepest guessed level; 1 for out of scope or
    /// a disagreement with the compared model.
    pub fn uncertainty(&self) -> f64 {
        if self.out_of_scope || self.disagrees() {
            return 1.0;
        }
        f64::from(1.0 - self.margin()).clamp(0.0, 1.0)
    }

    /// `p1 - p2` at the deepest guessed level (0 without a guess).
    fn margin(&self) -> f32 {
        let p1 = self.confidence.last().copied().unwrap_or(0.0);
        p1 - self.second.unwrap_or(1.0 - p1).min(p1)
    }

    fn disagrees(&self) -> bool {
        self.other_guess
            .as_ref()
            .is_some_and(|o| o.iter().zip(&self.guess).any(|(a, b)| a != b))
    }

    /// Every reason that applies, in [`Reason`] order.
    pub fn reasons(&self) -> Vec<Reason> {
        let mut r = Vec::new();
        if self.out_of_scope {
            r.push(Reason::OutOfScope);
        } else if self.depth == 0 {
            r.push(Reason::Abstained);
        } else if self.depth < self.guess.len() {
            r.push(Reason::BackedOff);
        }
        if self.disagrees() {
            r.push(Reason::Disagreement);
        }
        if self.margin() < LOW_MARGIN {
            r.push(Reason::LowMargin);
        }
        r
    }
}

/// One item of the queue: a group of near-duplicate cases, shown by its
/// most uncertain member.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    /// 1 for the first item.
    pub rank: usize,
    /// The shown member (an index into the candidates).
    pub representative: usize,
    /// Every member, the representative first.
    pub members: Vec<usize>,
    pub reasons: Vec<Reason>,
    /// Expected help of a label: the representative's uncertainty times
    /// `1 + ln(members)`.
    pub value: f64,
}

/// The `budget` most valuable items among `candidates` (fewer when there are
/// fewer groups). Candidates without any [`Reason`] are left out unless the
/// budget cannot be filled otherwise.
pub fn queue(candidates: &[Candidate], budget: usize, dup_threshold: f64) -> Vec<Item> {
    let texts: Vec<&str> = candidates.iter().map(|c| c.text.as_str()).collect();
    let group = near_duplicate_groups(&texts, dup_threshold);
    let u: Vec<f64> = candidates.iter().map(Candidate::uncertainty).collect();
    let mut by_group: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, &g) in group.iter().enumerate() {
        by_group.entry(g).or_default().push(i);
    }
    let mut items: Vec<Item> = by_group
        .into_values()
        .map(|mut members| {
            // The most uncertain member first; ties by row.
            members.sort_by(|&a, &b| u[b].total_cmp(&u[a]).then(a.cmp(&b)));
            let rep = members[0];
            Item {
                rank: 0,
                representative: rep,
                reasons: candidates[rep].reasons(),
                value: u[rep] * (1.0 + (members.len() as f64).ln()),
                members,
            }
        })
        .collect();
    // Items with a reason first, then by value; ties by row, so the queue
    // is the same for the same input.
    items.sort_by(|a, b| {
        a.reasons
            .is_empty()
            .cmp(&b.reasons.is_empty())
            .then(b.value.total_cmp(&a.value))
            .then(a.representative.cmp(&b.representative))
    });
    items.truncate(budget);
    for (k, it) in items.iter_mut().enumerate() {
        it.rank = k + 1;
    }
    items
}

const BANDS: usize = 16;
const ROWS: usize = 4;
const HASHES: usize = BANDS * ROWS;
const SHINGLE: usize = 5;

/// FNV-1a over the shingle's characters: stable across runs and platforms.
fn fnv(chars: &[char]) -> u64 {
    use casetag_core::hash::{fnv1a, FNV_OFFSET};
    fnv1a(FNV_OFFSET, chars.iter().map(|&c| u64::from(c)))
}

/// The MinHash signature of a text's character 5-grams (lowercased,
/// letters and digits with single spaces between words).
fn signature(text: &str) -> [u64; HASHES] {
    let mut norm: Vec<char> = Vec::with_capacity(text.len());
    for ch in text.chars().flat_map(char::to_lowercase) {
        if ch.is_alphanumeric() {
            norm.push(ch);
        } else if norm.last().is_some_and(|&c| c != ' ') {
            norm.push(' ');
        }
    }
    while norm.last() == Some(&' ') {
        norm.pop();
    }
    let mut sig = [u64::MAX; HASHES];
    let n = norm.len();
    let k = SHINGLE.min(n.max(1));
    for s in 0..=n.saturating_sub(k) {
        let base = fnv(&norm[s..(s + k).min(n)]);
        for (j, v) in sig.iter_mut().enumerate() {
            let h = SplitMix::mix(base ^ (j as u64).wrapping_mul(0xA24B_AED4_963E_E407));
            if h < *v {
                *v = h;
            }
        }
    }
    sig
}

fn find(parent: &mut [usize], mut x: usize) -> usize {
    while parent[x] != x {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    x
}

/// For each text, the index of its group's first member: texts whose
/// estimated Jaccard similarity of character 5-grams is at least
/// `threshold` end up in one group (transitively). A threshold above 1
/// groups nothing.
pub fn near_duplicate_groups(texts: &[&str], threshold: f64) -> Vec<usize> {
    let n = texts.len();
    let mut parent: Vec<usize> = (0..n).collect();
    if threshold > 1.0 || n < 2 {
        return parent;
    }
    let sigs: Vec<[u64; HASHES]> = {
        use rayon::prelude::*;
        texts.par_iter().map(|t| signature(t)).collect()
    };
    let similar = |a: usize, b: usize| {
        let same = sigs[a].iter().zip(&sigs[b]).filter(|(x, y)| x == y).count();
        same as f64 / HASHES as f64 >= threshold
    };
    for band in 0..BANDS {
        let mut buckets: HashMap<&[u64], usize> = HashMap::with_capacity(n);
        for (i, sig) in sigs.iter().enumerate() {
            let key = &sig[band * ROWS..(band + 1) * ROWS];
            match buckets.get(key) {
                Some(&first) => {
                    let (ra, rb) = (find(&mut parent, first), find(&mut parent, i));
                    if ra != rb && similar(first, i) {
                        let (lo, hi) = (ra.min(rb), ra.max(rb));
                        parent[hi] = lo;
                    }
                }
                None => {
                    buckets.insert(key, i);
                }
            }
        }
    }
    (0..n).map(|i| find(&mut parent, i)).collect()
}

/// Label Studio's task import format: one task per item with the text and
/// the model's guess as a pre-annotation (`predictions`), one `choices`
/// control per level (`l1`, `l2`, `l3`) on the `text` object.
pub fn label_studio(items: &[Item], cands: &[Candidate], model: &str) -> serde_json::Value {
    let tasks: Vec<serde_json::Value> = items
        .iter()
        .map(|it| {
            let c = &cands[it.representative];
            let result: Vec<serde_json::Value> = guesses(c)
                .map(|(k, g, _)| {
                    serde_json::json!({
                        "from_name": format!("l{k}"),
                        "to_name": "text",
                        "type": "choices",
                        "value": {"choices": [g]},
                    })
                })
                .collect();
            serde_json::json!({
                "data": {
                    "id": c.id,
                    "text": c.text,
                    "rank": it.rank,
                    "reasons": reason_names(&it.reasons),
                    "group_size": it.members.len(),
                    "group_ids": group_ids(it, cands),
                },
                "predictions": [{
                    "model_version": model,
                    "score": c.confidence.last().copied().unwrap_or(0.0),
                    "result": result,
                }],
            })
        })
        .collect();
    serde_json::Value::Array(tasks)
}

/// Argilla records (`rg.Record` as JSON): the text as a field, the model's
/// guess per level as suggestions for questions `l1`..`l3` with their
/// confidences, and the queue's facts as metadata.
pub fn argilla(items: &[Item], cands: &[Candidate], model: &str) -> serde_json::Value {
    let records: Vec<serde_json::Value> = items
        .iter()
        .map(|it| {
            let c = &cands[it.representative];
            let suggestions: Vec<serde_json::Value> = guesses(c)
                .map(|(k, g, conf)| {
                    serde_json::json!({
                        "question_name": format!("l{k}"),
                        "value": g,
                        "score": conf,
                        "agent": model,
                    })
                })
                .collect();
            serde_json::json!({
                "id": c.id,
                "fields": {"text": c.text},
                "suggestions": suggestions,
                "metadata": {
                    "rank": it.rank,
                    "value": it.value,
                    "reasons": reason_names(&it.reasons).join(","),
                    "group_size": it.members.len(),
                    "group_ids": group_ids(it, cands).join(","),
                },
            })
        })
        .collect();
    serde_json::Value::Array(records)
}

/// A candidate's guess per level: (level from 1, node, confidence).
fn guesses(c: &Candidate) -> impl Iterator<Item = (usize, &str, f32)> {
    c.guess
        .iter()
        .enumerate()
        .filter(|(_, g)| !g.is_empty())
        .map(|(k, g)| {
            (
                k + 1,
                g.as_str(),
                c.confidence.get(k).copied().unwrap_or(0.0),
            )
        })
}

fn reason_names(r: &[Reason]) -> Vec<&'static str> {
    r.iter().map(|r| r.name()).collect()
}

fn group_ids(it: &Item, cands: &[Candidate]) -> Vec<String> {
    it.members.iter().map(|&m| cands[m].id.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(id: &str, text: &str, conf: f32, second: Option<f32>) -> Candidate {
        Candidate {
            id: id.into(),
            text: text.into(),
            guess: vec!["a".into()],
            confidence: vec![conf],
            second,
            depth: 1,
            ..Candidate::default()
        }
    }

    #[test]
    fn uncertainty_is_one_minus_the_margin_and_reasons_say_why() {
        let c = cand("x", "t", 0.6, Some(0.45));
        assert!((c.uncertainty() - 0.85).abs() < 1e-6);
        assert_eq!(c.reasons(), vec![Reason::LowMargin]);
        // Without the runner-up, p2 = 1 - p1.
        assert!((cand("x", "t", 0.9, None).uncertainty() - 0.2).abs() < 1e-6);
        assert!(cand("x", "t", 0.9, None).reasons().is_empty());
        let mut o = cand("x", "t", 0.99, Some(0.0));
        o.out_of_scope = true;
        o.depth = 0;
        assert_eq!(o.uncertainty(), 1.0);
        assert_eq!(o.reasons(), vec![Reason::OutOfScope]);
        let mut d = cand("x", "t", 0.99, Some(0.0));
        d.guess = vec!["a".into(), "b".into()];
        d.confidence = vec![0.99, 0.99];
        d.other_guess = Some(vec!["a".into(), "c".into()]);
        assert_eq!(d.uncertainty(), 1.0);
        assert_eq!(d.reasons(), vec![Reason::BackedOff, Reason::Disagreement]);
    }

    #[test]
    fn near_duplicates_group_and_others_do_not() {
        let texts = [
            "Where is my parcel? Order 123 has not arrived yet.",
            "where is my parcel?? order 123 has not arrived yet",
            "I want a refund for the broken blender, it arrived cracked.",
            "Where is my parcel? Order 123 has not arrived yet!",
            "The seller never answered my messages about the voucher.",
        ];
        let g = near_duplicate_groups(&texts, 0.7);
        assert_eq!(g[0], 0);
        assert_eq!(g[1], 0);
        assert_eq!(g[3], 0);
        assert_eq!(g[2], 2);
        assert_eq!(g[4], 4);
        // Above 1 nothing groups.
        assert_eq!(near_duplicate_groups(&texts, 1.01), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn the_queue_ranks_by_value_and_one_item_serves_a_group() {
        let cands = vec![
            cand(
                "sure",
                "I love this shop, thanks a lot for everything",
                0.99,
                Some(0.0),
            ),
            cand(
                "g1",
                "my parcel number 55 never arrived at my house",
                0.55,
                Some(0.4),
            ),
            cand(
                "g2",
                "my parcel number 55 never arrived at my house!",
                0.6,
                Some(0.3),
            ),
            cand(
                "alone",
                "the voucher code SAVE10 does not work at checkout",
                0.5,
                Some(0.45),
            ),
            cand(
                "mid",
                "please change the delivery address of my order",
                0.7,
                Some(0.2),
            ),
        ];
        let q = queue(&cands, 3, 0.7);
        assert_eq!(q.len(), 3);
        // The pair is one item shown by its more uncertain member, worth
        // 0.85 * (1 + ln 2) = 1.44; the lone case 0.95; "mid" 0.5.
        assert_eq!(q[0].representative, 1);
        assert_eq!(q[0].members, vec![1, 2]);
        assert!((q[0].value - 0.85 * (1.0 + 2f64.ln())).abs() < 1e-6);
        assert_eq!(q[1].representative, 3);
        assert_eq!(q[2].representative, 4);
        assert_eq!(q.iter().map(|i| i.rank).collect::<Vec<_>>(), vec![1, 2, 3]);
        // The confident case comes last, only when the budget reaches it.
        let all = queue(&cands, 10, 0.7);
        assert_eq!(all.len(), 4);
        assert_eq!(all[3].representative, 0);
        assert!(all[3].reasons.is_empty());
        // Exports carry the guess as a pre-annotation / suggestion.
        let ls = label_studio(&q, &cands, "m1");
        assert_eq!(ls[0]["data"]["id"], "g1");
        assert_eq!(ls[0]["data"]["group_ids"], serde_json::json!(["g1", "g2"]));
        assert_eq!(
            ls[0]["predictions"][0]["result"][0]["value"]["choices"][0],
            "a"
        );
        assert_eq!(ls[0]["predictions"][0]["model_version"], "m1");
        let ar = argilla(&q, &cands, "m1");
        assert_eq!(ar[0]["fields"]["text"], cands[1].text);
        assert_eq!(ar[0]["suggestions"][0]["question_name"], "l1");
        assert_eq!(ar[0]["metadata"]["group_size"], 2);
    }
}
