//! The decision layer: calibrated scores -> a valid path, per-level
//! confidence, back-off, out-of-scope, alternatives and actions. It serves
//! every backend the same way, since backends only return logits over leaf
//! paths (plus an optional out-of-scope class).

use std::collections::BTreeMap;

use casetag_core::taxonomy::NodeAction;
use casetag_core::{softmax, ActionMode, LabelSpace, TagPath, Taxonomy};
use serde::{Deserialize, Serialize};

/// Thresholds stored in the bundle; derived from validation data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// The precision the level thresholds were derived for.
    pub target_precision: f64,
    /// Minimum calibrated confidence per level (index 0 = L1).
    pub level: Vec<f32>,
    /// Per-node overrides (node id -> minimum confidence), where validation
    /// had enough predictions of that node to estimate its own threshold.
    #[serde(default)]
    pub node: BTreeMap<String, f32>,
    /// A top-1/top-2 margin among siblings below this is not confident.
    pub min_margin: f32,
    /// With an out-of-scope class: declared out of scope when its
    /// probability is at least this.
    pub oos_prob: f32,
    /// From scores: out of scope when the L1 confidence is below this.
    pub oos_min_l1: f32,
    /// With the learned out-of-scope detector (`oos_detector.bin` in the
    /// bundle): out of scope when its logit is above this. Replaces
    /// `oos_min_l1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oos_detector_cut: Option<f32>,
    /// The same cut for the detector's batch rule, used instead of
    /// `oos_detector_cut` when a batch is judged as a whole
    /// (`--batch-novelty`). Fitted on the validation rows taken as one batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oos_batch_cut: Option<f32>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            target_precision: 0.95,
            level: vec![0.5; 3],
            node: BTreeMap::new(),
            min_margin: 0.1,
            oos_prob: 0.5,
            oos_min_l1: 0.0,
            oos_detector_cut: None,
            oos_batch_cut: None,
        }
    }
}

/// An action to run or suggest for a decided tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionOut {
    pub id: String,
    pub mode: ActionMode,
}

/// An alternative full path with its probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alternative {
    pub tag: TagPath,
    pub probability: f32,
}

/// A node of one level with its probability (its marginal: the mass of
/// every path through it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelAlternative {
    pub node: String,
    pub probability: f32,
}

/// The answer for one case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The decided tag (backed off to `depth` levels); `None` when out of
    /// scope or when not even L1 is confident (abstention).
    pub tag: Option<TagPath>,
    /// Levels given: 0 (out of scope / abstain) to the path's depth.
    pub depth: usize,
    /// The most likely full path before back-off.
    pub top_path: TagPath,
    /// Calibrated confidence of `top_path` per level (marginals).
    pub confidence: Vec<f32>,
    pub out_of_scope: bool,
    /// Probability mass the model puts outside the taxonomy (OOS class), the
    /// learned detector's probability when the bundle has one, or
    /// 1 - L1 confidence otherwise.
    pub oos_score: f32,
    pub actions: Vec<ActionOut>,
    pub alternatives: Vec<Alternative>,
    /// Per level (index 0 = L1), the `top_k` most likely nodes of that
    /// level by marginal probability, most likely first; empty for
    /// `top_k` 0.
    #[serde(default)]
    pub level_alternatives: Vec<Vec<LevelAlternative>>,
}

impl Decision {
    /// True when the answer is the full path of a leaf (what automation may act on).
    pub fn full_depth(&self) -> bool {
        !self.out_of_scope && self.depth > 0 && self.depth == self.top_path.depth()
    }
}

/// One case's scores, as every backend's output reaches the decision layer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Scores {
    /// Over the label space: the leaf paths, then the out-of-scope class
    /// when the model has one.
    pub logits: Vec<f32>,
    /// The learned out-of-scope detector's logit ([`crate::oos_meta`]),
    /// when the bundle has a detector: its per-case score, or its batch
    /// rule's when the batch is judged as a whole ([`Judging::Batch`]).
    pub detector: Option<f32>,
}

impl From<Vec<f32>> for Scores {
    fn from(logits: Vec<f32>) -> Self {
        Self {
            logits,
            detector: None,
        }
    }
}

impl Scores {
    /// Rows of logits with the detector's logit for each.
    pub fn with_detector(rows: Vec<Vec<f32>>, z: &[f32]) -> Vec<Scores> {
        rows.into_iter()
            .zip(z)
            .map(|(logits, &z)| Scores {
                logits,
                detector: Some(z),
            })
            .collect()
    }
}

/// How out of scope is judged: each case on its own (serving, and batch
/// jobs by default), each batch as a whole (`--batch-novelty`), where
/// the detector's batch rule scored the case and its own cut applies, or
/// each case against the recent cases before it (`--stream-novelty`): the
/// batch rule over a window of the stream, with the batch rule's cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Judging {
    #[default]
    PerCase,
    Batch,
    Stream,
}

/// Precomputed structure for fast decoding.
#[derive(Debug, Clone)]
pub struct Decider {
    pub taxonomy: Taxonomy,
    pub label_space: LabelSpace,
    pub temperature: f32,
    /// Per level (index 0 = L1), the temperature of the reported
    /// confidences and per-level alternatives, fitted on that level's
    /// marginals ([`crate::calibrate::fit_level_temperatures`]); the path
    /// itself is decoded at `temperature`. Empty: `temperature` for all.
    pub level_temperatures: Vec<f32>,
    pub thresholds: Thresholds,
    /// For each class, its lineage of node indices (root first).
    lineage: Vec<Vec<usize>>,
    /// For each node, the classes below it.
    under: Vec<Vec<usize>>,
}

impl Decider {
    pub fn new(
        taxonomy: Taxonomy,
        label_space: LabelSpace,
        temperature: f32,
        thresholds: Thresholds,
    ) -> Self {
        let lineage: Vec<Vec<usize>> = (0..taxonomy.n_paths())
            .map(|c| taxonomy.lineage(taxonomy.leaf(c)))
            .collect();
        let mut under = vec![Vec::new(); taxonomy.nodes().len()];
        for (c, lin) in lineage.iter().enumerate() {
            for &n in lin {
                under[n].push(c);
            }
        }
        Self {
            taxonomy,
            label_space,
            temperature,
            level_temperatures: Vec::new(),
            thresholds,
            lineage,
            under,
        }
    }

    /// The in-scope probabilities of the leaf paths at temperature `t`
    /// (conditional on the case being in scope when the model has an
    /// out-of-scope class) and the out-of-scope class's probability.
    pub fn in_scope_probabilities(&self, logits: &[f32], t: f32) -> (Vec<f32>, f32) {
        let probs = softmax(logits, t);
        let n_paths = self.label_space.n_paths;
        let p_oos = if self.label_space.oos_class {
            probs[n_paths]
        } else {
            0.0
        };
        // Level confidences are conditional on the case being in scope, so a
        // model with an OOS class does not lose confidence twice.
        let scale = if p_oos < 1.0 {
            1.0 / (1.0 - p_oos)
        } else {
            1.0
        };
        (probs[..n_paths].iter().map(|p| p * scale).collect(), p_oos)
    }

    /// The temperature of level `k`'s (0-based) reported confidences.
    pub fn level_temperature(&self, k: usize) -> f32 {
        self.level_temperatures
            .get(k)
            .copied()
            .unwrap_or(self.temperature)
    }

    /// Marginal probability of every node.
    pub fn node_marginals(&self, probs: &[f32]) -> Vec<f32> {
        let mut m = vec![0.0f32; self.taxonomy.nodes().len()];
        for (c, lin) in self.lineage.iter().enumerate() {
            for &n in lin {
                m[n] += probs[c];
            }
        }
        m
    }

    /// Top-down greedy decoding on the marginals: the most likely L1, then
    /// its most likely child, and so on. Returns the node chain and, per
    /// level, (confidence, margin to the best sibling).
    fn decode(&self, marg: &[f32]) -> (Vec<usize>, Vec<(f32, f32)>) {
        let mut chain = Vec::new();
        let mut stats = Vec::new();
        let mut candidates: Vec<usize> = self.taxonomy.level_nodes(1).to_vec();
        while !candidates.is_empty() {
            let (mut best, mut second) = (usize::MAX, f32::NEG_INFINITY);
            for &n in &candidates {
                if best == usize::MAX || marg[n] > marg[best] {
                    if best != usize::MAX {
                        second = second.max(marg[best]);
                    }
                    best = n;
                } else {
                    second = second.max(marg[n]);
                }
            }
            let second = if second.is_finite() { second } else { 0.0 };
            chain.push(best);
            stats.push((marg[best], marg[best] - second));
            candidates = self.taxonomy.node(best).children.clone();
        }
        (chain, stats)
    }

    fn threshold_for(&self, level: usize, node: usize) -> f32 {
        let id = &self.taxonomy.node(node).id;
        self.thresholds
            .node
            .get(id)
            .copied()
            .unwrap_or_else(|| self.thresholds.level.get(level).copied().unwrap_or(0.5))
    }

    /// Turn one case's scores into a decision, the case judged on its own.
    pub fn decide(&self, scores: &Scores, top_k: usize) -> Decision {
        self.decide_judged(scores, top_k, Judging::PerCase)
    }

    /// A score row's logits over the label space (without anything a
    /// backend may have appended).
    pub fn label_logits<'a>(&self, scores: &'a Scores) -> &'a [f32] {
        let n = self.label_space.n_outputs().min(scores.logits.len());
        &scores.logits[..n]
    }

    /// Turn one case's scores into a decision; `judging` says which
    /// out-of-scope cut the detector's logit is held to.
    pub fn decide_judged(&self, scores: &Scores, top_k: usize, judging: Judging) -> Decision {
        let (logits, det) = (self.label_logits(scores), scores.detector);
        let (in_scope, p_oos) = self.in_scope_probabilities(logits, self.temperature);
        let marg = self.node_marginals(&in_scope);
        let (chain, stats) = self.decode(&marg);
        let leaf = *chain.last().expect("taxonomy has nodes");
        let top_path = self.taxonomy.path_of_node(leaf);
        // Each level reports at its own temperature: the in-scope
        // probabilities and node marginals are computed once per distinct
        // temperature (the decoding one first) and shared by the levels.
        let mut views: Vec<(f32, Vec<f32>, Vec<f32>)> = vec![(self.temperature, in_scope, marg)];
        let view_of: Vec<usize> = (0..self.taxonomy.depth())
            .map(|k| {
                let t = self.level_temperature(k);
                views.iter().position(|v| v.0 == t).unwrap_or_else(|| {
                    let (p, _) = self.in_scope_probabilities(logits, t);
                    let m = self.node_marginals(&p);
                    views.push((t, p, m));
                    views.len() - 1
                })
            })
            .collect();
        let level_marg = |k: usize| views[view_of[k]].2.as_slice();
        let confidence: Vec<f32> = chain
            .iter()
            .enumerate()
            .map(|(k, &n)| level_marg(k)[n])
            .collect();
        let l1 = confidence[0];

        let (out_of_scope, oos_score) = if self.label_space.oos_class {
            (p_oos >= self.thresholds.oos_prob, p_oos)
        } else if let Some(z) = det {
            let cut = match judging {
                Judging::PerCase => self.thresholds.oos_detector_cut,
                Judging::Batch | Judging::Stream => self.thresholds.oos_batch_cut,
            };
            (cut.is_some_and(|c| z > c), 1.0 / (1.0 + (-z).exp()))
        } else {
            (l1 < self.thresholds.oos_min_l1, 1.0 - l1)
        };

        // Back-off: the deepest level such that it and all above are confident.
        let mut depth = 0;
        if !out_of_scope {
            for (k, ((&node, &(_, margin)), &conf)) in
                chain.iter().zip(&stats).zip(&confidence).enumerate()
            {
                if conf < self.threshold_for(k, node) || margin < self.thresholds.min_margin {
                    break;
                }
                depth = k + 1;
            }
        }
        let tag = (depth > 0).then(|| top_path.truncate(depth));
        let actions = if depth > 0 {
            let node = chain[depth - 1];
            let full = depth == chain.len();
            self.resolve_actions(self.taxonomy.actions(node), confidence[depth - 1], full)
        } else {
            Vec::new()
        };

        // Full paths at the deepest level's temperature, so that the best
        // one's probability is the deepest confidence.
        let deepest = &views[view_of[self.taxonomy.depth() - 1]].1;
        let alternatives = self.top_k(deepest, top_k);
        let level_alternatives = self.top_k_per_level(level_marg, top_k);
        Decision {
            tag,
            depth,
            top_path,
            confidence,
            out_of_scope,
            oos_score,
            actions,
            alternatives,
            level_alternatives,
        }
    }

    /// `auto` only on a full-depth tag whose confidence clears the action's
    /// gate; otherwise the action is only suggested.
    fn resolve_actions(&self, actions: &[NodeAction], conf: f32, full: bool) -> Vec<ActionOut> {
        actions
            .iter()
            .map(|a| ActionOut {
                id: a.id.clone(),
                mode: if full && a.mode == ActionMode::Auto && conf >= a.min_confidence {
                    ActionMode::Auto
                } else {
                    ActionMode::Suggest
                },
            })
            .collect()
    }

    /// The `k` most likely full paths.
    pub fn top_k(&self, in_scope: &[f32], k: usize) -> Vec<Alternative> {
        let mut idx: Vec<usize> = (0..in_scope.len()).collect();
        let k = k.min(idx.len());
        if k == 0 {
            return Vec::new();
        }
        idx.select_nth_unstable_by(k - 1, |&a, &b| in_scope[b].total_cmp(&in_scope[a]));
        idx.truncate(k);
        idx.sort_by(|&a, &b| in_scope[b].total_cmp(&in_scope[a]));
        idx.into_iter()
            .map(|c| Alternative {
                tag: self.taxonomy.path_of(c),
                probability: in_scope[c],
            })
            .collect()
    }

    /// Per level, the `k` nodes of that level with the largest marginals
    /// (`level_marg(level - 1)`, the node marginals that level reports).
    fn top_k_per_level<'a>(
        &self,
        level_marg: impl Fn(usize) -> &'a [f32],
        k: usize,
    ) -> Vec<Vec<LevelAlternative>> {
        if k == 0 {
            return Vec::new();
        }
        (1..=self.taxonomy.depth())
            .map(|level| {
                let marg = level_marg(level - 1);
                let mut nodes = self.taxonomy.level_nodes(level).to_vec();
                nodes.sort_by(|&a, &b| marg[b].total_cmp(&marg[a]).then(a.cmp(&b)));
                nodes.truncate(k);
                nodes
                    .into_iter()
                    .map(|n| LevelAlternative {
                        node: self.taxonomy.node(n).id.clone(),
                        probability: marg[n],
                    })
                    .collect()
            })
            .collect()
    }

    /// Classes below a node.
    pub fn classes_under(&self, node: usize) -> &[usize] {
        &self.under[node]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAX: &str = r#"
actions:
  refund: {mode: auto, min_confidence: 0.9}
  photo: {mode: suggest, min_confidence: 0.5}
nodes:
  - id: returns
    children:
      - id: refund
        children:
          - {id: refund_missing, actions: [refund]}
          - {id: refund_wrong, actions: [refund, photo]}
      - id: return_other
  - id: flat
"#;

    fn decider(oos_class: bool, th: Thresholds) -> Decider {
        let t = Taxonomy::from_yaml_str(TAX).unwrap();
        let ls = LabelSpace {
            n_paths: t.n_paths(),
            oos_class,
        };
        Decider::new(t, ls, 1.0, th)
    }

    /// Logits whose softmax is exactly `p` (log-probabilities).
    fn logits(p: &[f32]) -> Scores {
        p.iter()
            .map(|x| x.max(1e-9).ln())
            .collect::<Vec<_>>()
            .into()
    }

    /// The same with the detector's logit `z`.
    fn with_z(p: &[f32], z: f32) -> Scores {
        Scores {
            detector: Some(z),
            ..logits(p)
        }
    }

    fn th(level: f32, margin: f32) -> Thresholds {
        Thresholds {
            level: vec![level; 3],
            min_margin: margin,
            ..Thresholds::default()
        }
    }

    // Classes in leaf order: refund_missing, refund_wrong, return_other, flat.

    #[test]
    fn confident_full_path_gets_auto_action() {
        let d = decider(false, th(0.6, 0.1));
        let r = d.decide(&logits(&[0.95, 0.03, 0.01, 0.01]), 3);
        assert_eq!(r.depth, 3);
        assert!(r.full_depth());
        assert_eq!(
            r.tag.as_ref().unwrap().to_string(),
            "returns/refund/refund_missing"
        );
        assert!((r.confidence[0] - 0.99).abs() < 1e-4);
        assert!((r.confidence[2] - 0.95).abs() < 1e-4);
        assert_eq!(r.actions[0].mode, ActionMode::Auto);
        assert_eq!(r.alternatives.len(), 3);
        assert!(r.alternatives[0].probability >= r.alternatives[1].probability);
    }

    #[test]
    fn unsure_leaf_backs_off_to_l2_and_only_suggests() {
        let d = decider(false, th(0.6, 0.1));
        // refund/* has 0.9 in total but it is split between the siblings.
        let r = d.decide(&logits(&[0.47, 0.43, 0.05, 0.05]), 3);
        assert_eq!(r.depth, 2);
        assert_eq!(r.tag.as_ref().unwrap().to_string(), "returns/refund");
        assert!(!r.full_depth());
        assert!(r.actions.iter().all(|a| a.mode == ActionMode::Suggest));
    }

    #[test]
    fn small_margin_is_not_confident() {
        // Confidence 0.7 clears the level gate but the sibling is close.
        let d = decider(false, th(0.3, 0.5));
        let r = d.decide(&logits(&[0.55, 0.35, 0.05, 0.05]), 3);
        assert_eq!(r.depth, 2);
        let d = decider(false, th(0.3, 0.1));
        assert_eq!(d.decide(&logits(&[0.55, 0.35, 0.05, 0.05]), 3).depth, 3);
    }

    #[test]
    fn gate_keeps_auto_off_below_min_confidence() {
        let d = decider(false, th(0.5, 0.0));
        let r = d.decide(&logits(&[0.85, 0.05, 0.05, 0.05]), 1);
        assert_eq!(r.depth, 3);
        assert_eq!(r.actions[0].id, "refund");
        assert_eq!(r.actions[0].mode, ActionMode::Suggest);
    }

    #[test]
    fn per_node_threshold_overrides_level() {
        let mut t = th(0.5, 0.0);
        t.node.insert("refund_missing".into(), 0.99);
        let d = decider(false, t);
        assert_eq!(d.decide(&logits(&[0.9, 0.05, 0.03, 0.02]), 1).depth, 2);
    }

    #[test]
    fn uneven_depth_leaves() {
        let d = decider(false, th(0.6, 0.1));
        let r = d.decide(&logits(&[0.02, 0.02, 0.02, 0.94]), 2);
        assert_eq!(r.depth, 1);
        assert!(r.full_depth());
        assert_eq!(r.top_path.to_string(), "flat");
        assert_eq!(r.confidence.len(), 1);
        let r = d.decide(&logits(&[0.02, 0.02, 0.94, 0.02]), 2);
        assert_eq!(r.depth, 2);
        assert!(r.full_depth());
        assert_eq!(r.tag.as_ref().unwrap().to_string(), "returns/return_other");
    }

    #[test]
    fn out_of_scope_from_class_and_from_scores() {
        let mut t = th(0.6, 0.1);
        t.oos_prob = 0.5;
        let d = decider(true, t.clone());
        let r = d.decide(&logits(&[0.1, 0.1, 0.1, 0.1, 0.6]), 3);
        assert!(r.out_of_scope);
        assert_eq!(r.depth, 0);
        assert!(r.tag.is_none() && r.actions.is_empty());
        // In-scope confidences are conditional on being in scope.
        let r = d.decide(&logits(&[0.8, 0.0, 0.0, 0.0, 0.2]), 3);
        assert!(!r.out_of_scope);
        assert!((r.confidence[2] - 1.0).abs() < 1e-4);

        t.oos_min_l1 = 0.6;
        let d = decider(false, t);
        let r = d.decide(&logits(&[0.2, 0.2, 0.15, 0.45]), 3);
        assert!(r.out_of_scope);
        assert!(!d.decide(&logits(&[0.9, 0.0, 0.0, 0.1]), 3).out_of_scope);
    }

    #[test]
    fn out_of_scope_from_the_learned_detector() {
        let mut t = th(0.6, 0.1);
        t.oos_min_l1 = 0.99; // ignored once the detector is there
        t.oos_detector_cut = Some(1.5);
        let d = decider(false, t.clone());
        // A confident full path: the detector's logit alone decides.
        let row = with_z(&[0.95, 0.03, 0.01, 0.01], 2.0);
        let r = d.decide(&row, 3);
        assert!(r.out_of_scope && r.depth == 0 && r.tag.is_none() && r.actions.is_empty());
        assert!((r.oos_score - 1.0 / (1.0 + (-2.0f32).exp())).abs() < 1e-6);
        // Below the cut: in scope, full depth, even though L1 < oos_min_l1.
        let r = d.decide(&with_z(&[0.95, 0.03, 0.01, 0.01], 1.0), 3);
        assert!(!r.out_of_scope && r.full_depth() && r.depth == 3);
        assert_eq!(r.top_path.to_string(), "returns/refund/refund_missing");
        // Back-off still applies to in-scope answers.
        let r = d.decide(&with_z(&[0.45, 0.45, 0.05, 0.05], -3.0), 3);
        assert!(!r.out_of_scope);
        assert_eq!(r.depth, 2);
        // No cut fitted: never out of scope from the detector.
        let d2 = decider(
            false,
            Thresholds {
                oos_detector_cut: None,
                ..t.clone()
            },
        );
        assert!(
            !d2.decide(&with_z(&[0.95, 0.03, 0.01, 0.01], 50.0), 0)
                .out_of_scope
        );
        // An explicit out-of-scope class wins over the detector.
        let d3 = decider(true, t.clone());
        let r = d3.decide(&with_z(&[0.9, 0.0, 0.0, 0.0, 0.1], 9.0), 0);
        assert!(!r.out_of_scope);
        assert!((r.oos_score - 0.1).abs() < 1e-4);
        // Judged as a batch, the batch cut applies (none fitted: never).
        let judged = |d: &Decider, z: f32| {
            d.decide_judged(&with_z(&[0.95, 0.03, 0.01, 0.01], z), 0, Judging::Batch)
                .out_of_scope
        };
        assert!(!judged(&d, 2.0));
        let d4 = decider(
            false,
            Thresholds {
                oos_batch_cut: Some(3.0),
                ..t
            },
        );
        assert!(!judged(&d4, 2.0) && judged(&d4, 3.5));
        assert!(
            d4.decide(&with_z(&[0.95, 0.03, 0.01, 0.01], 2.0), 0)
                .out_of_scope
        );
    }

    #[test]
    fn abstains_when_l1_is_unsure_but_in_scope() {
        let d = decider(false, th(0.8, 0.0));
        let r = d.decide(&logits(&[0.3, 0.2, 0.2, 0.3]), 3);
        assert!(!r.out_of_scope);
        assert_eq!(r.depth, 0);
        assert!(r.tag.is_none());
    }

    #[test]
    fn probabilities_are_consistent_across_levels() {
        let d = decider(false, th(0.5, 0.0));
        let r = d.decide(&vec![0.3, -1.0, 2.0, 0.1].into(), 4);
        for w in r.confidence.windows(2) {
            assert!(w[0] >= w[1] - 1e-6);
        }
        let s: f32 = r.alternatives.iter().map(|a| a.probability).sum();
        assert!((s - 1.0).abs() < 1e-5);
    }

    #[test]
    fn per_level_alternatives_rank_each_levels_marginals() {
        let d = decider(false, th(0.5, 0.0));
        // returns 0.6 (refund 0.5: missing 0.1, wrong 0.4; return_other
        // 0.1), flat 0.4.
        let r = d.decide(&logits(&[0.1, 0.4, 0.1, 0.4]), 2);
        let names = |k: usize| -> Vec<(&str, f32)> {
            r.level_alternatives[k]
                .iter()
                .map(|a| (a.node.as_str(), a.probability))
                .collect()
        };
        assert_eq!(r.level_alternatives.len(), 3);
        let l1 = names(0);
        assert_eq!((l1[0].0, l1[1].0), ("returns", "flat"));
        assert!((l1[0].1 - 0.6).abs() < 1e-5 && (l1[1].1 - 0.4).abs() < 1e-5);
        let l2 = names(1);
        assert_eq!((l2[0].0, l2[1].0), ("refund", "return_other"));
        assert!((l2[0].1 - 0.5).abs() < 1e-5);
        let l3 = names(2);
        assert_eq!(l3.len(), 2);
        assert_eq!(l3[0].0, "refund_wrong");
        assert!((l3[0].1 - 0.4).abs() < 1e-5);
        // k larger than a level keeps the level's nodes; 0 gives none.
        assert_eq!(
            d.decide(&logits(&[0.1, 0.4, 0.1, 0.4]), 9)
                .level_alternatives[1]
                .len(),
            2
        );
        assert!(d
            .decide(&logits(&[0.1, 0.4, 0.1, 0.4]), 0)
            .level_alternatives
            .is_empty());
    }
}
