//! The tag tree: YAML loading with validation, inference from labels, and the
//! mapping between tag paths and class indices that every model shares.
//!
//! Node ids are globally unique, so a label column holds a bare id and a path
//! is checked by walking parents. The class space of a model is the set of
//! *leaf paths* (a depth-2 leaf beside depth-3 leaves is fine); level
//! probabilities are marginals over those paths, which keeps L1/L2/L3
//! consistent by construction.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result, TagPath};

/// Maximum depth of the tree (L1/L2/L3).
pub const MAX_DEPTH: usize = 3;

/// `auto` actions may run without a human; `suggest` ones are shown to an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionMode {
    Auto,
    Suggest,
}

impl ActionMode {
    /// The name serde writes (`auto`, `suggest`), for outputs that are not
    /// serialized through serde (`tag`'s columns).
    pub fn as_str(self) -> &'static str {
        match self {
            ActionMode::Auto => "auto",
            ActionMode::Suggest => "suggest",
        }
    }
}

/// An entry of the action library.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionDef {
    #[serde(default)]
    pub description: String,
    pub mode: ActionMode,
    /// Calibrated confidence the tag must clear for `auto`.
    #[serde(default = "default_gate")]
    pub min_confidence: f32,
}

fn default_gate() -> f32 {
    0.9
}

/// A node's reference to an action: a bare id, or an id with overrides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ActionRefRaw {
    Id(String),
    Full {
        id: String,
        #[serde(default)]
        mode: Option<ActionMode>,
        #[serde(default)]
        min_confidence: Option<f32>,
    },
}

/// A node as written in YAML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRaw {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<NodeRaw>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<ActionRefRaw>,
    /// Optional explicit parent id, for flat node lists (`children` is the usual way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// The YAML document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaxonomyFile {
    #[serde(default)]
    pub version: Option<u32>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub actions: BTreeMap<String, ActionDef>,
    pub nodes: Vec<NodeRaw>,
}

/// An action attached to a node, with its effective mode and gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeAction {
    pub id: String,
    pub mode: ActionMode,
    pub min_confidence: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub id: String,
    pub name: String,
    pub description: String,
    /// 1, 2 or 3.
    pub level: usize,
    pub parent: Option<usize>,
    pub children: Vec<usize>,
    pub actions: Vec<NodeAction>,
}

/// A validated taxonomy.
#[derive(Debug, Clone)]
pub struct Taxonomy {
    pub name: String,
    raw: TaxonomyFile,
    nodes: Vec<Node>,
    index: HashMap<String, usize>,
    /// Leaf node indices in a stable order: the class space of every model.
    leaves: Vec<usize>,
    /// Node indices per level (index 0 = L1).
    levels: Vec<Vec<usize>>,
}

impl Taxonomy {
    /// Load and validate a YAML file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
        Self::from_yaml_str(&text)
            .map_err(|e| Error::Taxonomy(format!("{}: {}", path.display(), e.message())))
    }

    pub fn from_yaml_str(text: &str) -> Result<Self> {
        let raw: TaxonomyFile = serde_yaml::from_str(text)
            .map_err(|e| Error::Taxonomy(format!("invalid YAML: {e}")))?;
        Self::from_raw(raw)
    }

    /// Serialize back to YAML (stored in model bundles).
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(&self.raw).expect("taxonomy serializes")
    }

    pub fn raw(&self) -> &TaxonomyFile {
        &self.raw
    }

    /// Validate a parsed document: unique ids, depth at most 3, parents that
    /// exist, actions that are in the library.
    pub fn from_raw(raw: TaxonomyFile) -> Result<Self> {
        let mut nodes: Vec<Node> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let err = |m: String| Error::Taxonomy(m);

        // Flat nodes with an explicit `parent` are attached after the tree is built.
        let mut pending: Vec<(&NodeRaw, String)> = Vec::new();
        let mut stack: Vec<(&NodeRaw, Option<usize>, usize)> =
            raw.nodes.iter().rev().map(|n| (n, None, 1)).collect();
        loop {
            while let Some((n, parent, level)) = stack.pop() {
                if let (None, Some(p)) = (parent, &n.parent) {
                    pending.push((n, p.clone()));
                    continue;
                }
                let idx = add_node(&raw, &mut nodes, &mut index, n, parent, level)?;
                for c in n.children.iter().rev() {
                    stack.push((c, Some(idx), level + 1));
                }
            }
            // Resolve pending flat nodes whose parent now exists.
            let before = pending.len();
            let mut still = Vec::new();
            for (n, p) in pending.drain(..) {
                match index.get(&p) {
                    Some(&pi) => stack.push((n, Some(pi), nodes[pi].level + 1)),
                    None => still.push((n, p)),
                }
            }
            if stack.is_empty() {
                if let Some((n, p)) = still.first() {
                    return Err(err(format!(
                        "node '{}': parent '{}' does not exist",
                        n.id, p
                    )));
                }
                break;
            }
            pending = still;
            debug_assert!(pending.len() <= before);
        }
        if nodes.is_empty() {
            return Err(err("taxonomy has no nodes".into()));
        }
        let leaves: Vec<usize> = (0..nodes.len())
            .filter(|&i| nodes[i].children.is_empty())
            .collect();
        let mut levels = vec![Vec::new(); MAX_DEPTH];
        for (i, n) in nodes.iter().enumerate() {
            levels[n.level - 1].push(i);
        }
        while levels.last().is_some_and(|l| l.is_empty()) {
            levels.pop();
        }
        Ok(Self {
            name: raw.name.clone(),
            raw,
            nodes,
            index,
            leaves,
            levels,
        })
    }

    /// Infer a taxonomy from label paths (out-of-scope rows are `None` and skipped).
    /// Each distinct path contributes its nodes; a node seen under two parents is an error.
    pub fn infer<'a>(labels: impl IntoIterator<Item = &'a TagPath>) -> Result<Self> {
        let mut roots: Vec<NodeRaw> = Vec::new();
        let mut parent_of: HashMap<String, Option<String>> = HashMap::new();
        for p in labels {
            let ids = p.ids();
            for (k, id) in ids.iter().enumerate() {
                let parent = if k == 0 {
                    None
                } else {
                    Some(ids[k - 1].to_string())
                };
                match parent_of.get(*id) {
                    Some(prev) if *prev != parent => {
                        return Err(Error::Taxonomy(format!(
                            "cannot infer taxonomy: node '{}' appears under '{}' and '{}'",
                            id,
                            prev.as_deref().unwrap_or("<root>"),
                            parent.as_deref().unwrap_or("<root>")
                        )))
                    }
                    Some(_) => continue,
                    None => {}
                }
                parent_of.insert(id.to_string(), parent.clone());
                let node = NodeRaw {
                    id: id.to_string(),
                    name: id.to_string(),
                    description: String::new(),
                    children: vec![],
                    actions: vec![],
                    parent: None,
                };
                match parent {
                    None => roots.push(node),
                    Some(par) => {
                        let chain = p.ids()[..k].to_vec();
                        let mut list = &mut roots;
                        for (d, anc) in chain.iter().enumerate() {
                            let pos = list.iter().position(|n| n.id == *anc).expect("ancestor");
                            list = &mut list[pos].children;
                            if d + 1 == chain.len() {
                                debug_assert_eq!(*anc, par);
                            }
                        }
                        list.push(node);
                    }
                }
            }
        }
        // Stable, readable order.
        fn sort(list: &mut [NodeRaw]) {
            list.sort_by(|a, b| a.id.cmp(&b.id));
            for n in list.iter_mut() {
                sort(&mut n.children);
            }
        }
        sort(&mut roots);
        Self::from_raw(TaxonomyFile {
            version: Some(1),
            name: "inferred".into(),
            actions: BTreeMap::new(),
            nodes: roots,
        })
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    pub fn find(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Deepest level present (1..=3).
    pub fn depth(&self) -> usize {
        self.levels.len()
    }

    /// Node indices at level `k` (1-based).
    pub fn level_nodes(&self, k: usize) -> &[usize] {
        &self.levels[k - 1]
    }

    /// Number of leaf paths: the size of a model's class space.
    pub fn n_paths(&self) -> usize {
        self.leaves.len()
    }

    /// Leaf node index of class `c`.
    pub fn leaf(&self, c: usize) -> usize {
        self.leaves[c]
    }

    /// Ancestors of a node from the root down, including the node itself.
    pub fn lineage(&self, mut i: usize) -> Vec<usize> {
        let mut out = vec![i];
        while let Some(p) = self.nodes[i].parent {
            out.push(p);
            i = p;
        }
        out.reverse();
        out
    }

    /// The path of a node (its lineage as ids).
    pub fn path_of_node(&self, i: usize) -> TagPath {
        let ids: Vec<String> = self
            .lineage(i)
            .into_iter()
            .map(|j| self.nodes[j].id.clone())
            .collect();
        TagPath::from_ids(&ids)
    }

    /// The path of class `c`.
    pub fn path_of(&self, c: usize) -> TagPath {
        self.path_of_node(self.leaves[c])
    }

    /// The class index of a path, when it ends at a leaf.
    pub fn class_of(&self, p: &TagPath) -> Option<usize> {
        let node = self.resolve(p).ok()?;
        self.leaves.binary_search(&node).ok()
    }

    /// Check a label path against the tree and return its deepest node.
    pub fn resolve(&self, p: &TagPath) -> std::result::Result<usize, String> {
        let mut parent: Option<usize> = None;
        let mut last = 0;
        for (k, id) in p.ids().iter().enumerate() {
            let Some(&i) = self.index.get(*id) else {
                return Err(format!("unknown l{} label '{}'", k + 1, id));
            };
            if self.nodes[i].level != k + 1 || self.nodes[i].parent != parent {
                return Err(format!(
                    "l{} label '{}' is not a child of '{}'",
                    k + 1,
                    id,
                    parent
                        .map(|j| self.nodes[j].id.as_str())
                        .unwrap_or("<root>")
                ));
            }
            parent = Some(i);
            last = i;
        }
        Ok(last)
    }

    /// Classes (leaf paths) under node `i`.
    pub fn classes_under(&self, i: usize) -> Vec<usize> {
        (0..self.leaves.len())
            .filter(|&c| self.lineage(self.leaves[c]).contains(&i))
            .collect()
    }

    /// Effective actions of a node.
    pub fn actions(&self, i: usize) -> &[NodeAction] {
        &self.nodes[i].actions
    }

    pub fn action_library(&self) -> &BTreeMap<String, ActionDef> {
        &self.raw.actions
    }

    /// This tree with the nodes of `paths` that it lacks, and those new
    /// nodes' paths (the taxonomy diff), in the order first seen. Every
    /// path must end at a new node, and a new node goes under a node that
    /// is not a leaf of this tree (a leaf is a class some model answers
    /// with; a child would take its place). The version goes up by one.
    pub fn with_added(&self, paths: &[TagPath]) -> Result<(Self, Vec<TagPath>)> {
        let err = |m: String| Err(Error::Taxonomy(m));
        let mut raw = self.raw.clone();
        let mut added: Vec<TagPath> = Vec::new();
        let mut parent_of: HashMap<String, Option<String>> = HashMap::new();
        for p in paths {
            let ids = p.ids();
            if self.resolve(p).is_ok() {
                return err(format!("tag '{p}' is already in the taxonomy"));
            }
            for (k, id) in ids.iter().enumerate() {
                let parent = (k > 0).then(|| ids[k - 1].to_string());
                if let Some(&i) = self.index.get(*id) {
                    let was = self.nodes[i].parent.map(|j| self.nodes[j].id.clone());
                    if was != parent || k + 1 == ids.len() {
                        return err(format!(
                            "tag '{p}': '{id}' is already in the taxonomy under '{}'",
                            was.as_deref().unwrap_or("<root>")
                        ));
                    }
                    continue;
                }
                match parent_of.get(*id) {
                    Some(prev) if *prev != parent => {
                        return err(format!(
                            "tag '{p}': new node '{id}' appears under '{}' and '{}'",
                            prev.as_deref().unwrap_or("<root>"),
                            parent.as_deref().unwrap_or("<root>")
                        ))
                    }
                    Some(_) => continue,
                    None => {}
                }
                if let Some(&pi) = parent.as_ref().and_then(|q| self.index.get(q)) {
                    if self.nodes[pi].children.is_empty() {
                        return err(format!(
                            "tag '{p}': '{}' is a leaf tag the model answers with; a new tag cannot go under it",
                            self.nodes[pi].id
                        ));
                    }
                }
                parent_of.insert(id.to_string(), parent.clone());
                added.push(TagPath::from_ids(&ids[..=k]));
                raw.nodes.push(NodeRaw {
                    id: id.to_string(),
                    name: id.to_string(),
                    description: String::new(),
                    children: vec![],
                    actions: vec![],
                    parent,
                });
            }
        }
        raw.version = Some(raw.version.unwrap_or(1) + 1);
        Ok((Self::from_raw(raw)?, added))
    }
}

fn add_node(
    raw: &TaxonomyFile,
    nodes: &mut Vec<Node>,
    index: &mut HashMap<String, usize>,
    n: &NodeRaw,
    parent: Option<usize>,
    level: usize,
) -> Result<usize> {
    let err = |m: String| Err(Error::Taxonomy(m));
    let id = n.id.trim();
    if id.is_empty() {
        return err(format!(
            "a node under '{}' has an empty id",
            parent.map(|p| nodes[p].id.as_str()).unwrap_or("<root>")
        ));
    }
    if index.contains_key(id) {
        return err(format!("node '{id}': duplicate id"));
    }
    if level > MAX_DEPTH {
        return err(format!(
            "node '{id}': depth {level} exceeds the maximum of {MAX_DEPTH}"
        ));
    }
    let mut actions = Vec::new();
    for a in &n.actions {
        let (aid, mode, gate) = match a {
            ActionRefRaw::Id(s) => (s, None, None),
            ActionRefRaw::Full {
                id,
                mode,
                min_confidence,
            } => (id, *mode, *min_confidence),
        };
        let Some(def) = raw.actions.get(aid) else {
            return err(format!(
                "node '{id}': action '{aid}' is not in the action library"
            ));
        };
        let gate = gate.unwrap_or(def.min_confidence);
        if !(0.0..=1.0).contains(&gate) {
            return err(format!(
                "node '{id}': action '{aid}' min_confidence {gate} is outside 0..1"
            ));
        }
        actions.push(NodeAction {
            id: aid.clone(),
            mode: mode.unwrap_or(def.mode),
            min_confidence: gate,
        });
    }
    let idx = nodes.len();
    nodes.push(Node {
        id: id.to_string(),
        name: if n.name.is_empty() {
            id.to_string()
        } else {
            n.name.clone()
        },
        description: n.description.clone(),
        level,
        parent,
        children: vec![],
        actions,
    });
    if let Some(p) = parent {
        nodes[p].children.push(idx);
    }
    index.insert(id.to_string(), idx);
    Ok(idx)
}

#[cfg(test)]
mod tests {
    #[test]
    fn action_mode_names_are_serdes() {
        for m in [ActionMode::Auto, ActionMode::Suggest] {
            assert_eq!(serde_json::to_value(m).unwrap(), m.as_str());
        }
    }

    use super::*;

    const GOOD: &str = r#"
name: t
actions:
  refund: {description: Refund, mode: auto, min_confidence: 0.9}
  human: {description: Human, mode: suggest}
nodes:
  - id: returns
    name: Returns
    children:
      - id: refund
        children:
          - id: refund_missing
            actions: [refund, {id: human, min_confidence: 0.5}]
          - id: refund_wrong
      - id: return_other
  - id: other
"#;

    #[test]
    fn loads_and_encodes_paths() {
        let t = Taxonomy::from_yaml_str(GOOD).unwrap();
        assert_eq!(t.depth(), 3);
        assert_eq!(t.n_paths(), 4);
        let p = TagPath::new("returns", Some("refund"), Some("refund_wrong"));
        let c = t.class_of(&p).unwrap();
        assert_eq!(t.path_of(c), p);
        // A depth-2 leaf beside depth-3 leaves, and a depth-1 leaf.
        let p2 = TagPath::new("returns", Some("return_other"), None);
        assert_eq!(t.path_of(t.class_of(&p2).unwrap()), p2);
        let p1 = TagPath::new("other", None, None);
        assert_eq!(t.path_of(t.class_of(&p1).unwrap()).depth(), 1);
        // Internal node is not a class.
        assert!(t
            .class_of(&TagPath::new("returns", Some("refund"), None))
            .is_none());
        let i = t.find("refund_missing").unwrap();
        let acts = t.actions(i);
        assert_eq!(acts[0].mode, ActionMode::Auto);
        assert_eq!(acts[1].min_confidence, 0.5);
        assert_eq!(acts[1].mode, ActionMode::Suggest);
        // Round-trip through YAML.
        let t2 = Taxonomy::from_yaml_str(&t.to_yaml()).unwrap();
        assert_eq!(t2.n_paths(), 4);
    }

    fn msg(y: &str) -> String {
        Taxonomy::from_yaml_str(y).unwrap_err().to_string()
    }

    #[test]
    fn duplicate_id_is_named() {
        let m = msg("nodes:\n - id: a\n   children: [{id: b}]\n - id: b\n");
        assert!(m.contains("node 'b': duplicate id"), "{m}");
    }

    #[test]
    fn too_deep_is_named() {
        let m = msg("nodes:\n - id: a\n   children:\n    - id: b\n      children:\n       - id: c\n         children: [{id: d}]\n");
        assert!(m.contains("node 'd': depth 4 exceeds"), "{m}");
    }

    #[test]
    fn missing_parent_is_named() {
        let m = msg("nodes:\n - id: a\n - id: x\n   parent: nope\n");
        assert!(m.contains("node 'x': parent 'nope' does not exist"), "{m}");
        // A flat child whose parent exists is attached.
        let t = Taxonomy::from_yaml_str("nodes:\n - id: a\n - id: x\n   parent: a\n").unwrap();
        assert_eq!(t.node(t.find("x").unwrap()).level, 2);
    }

    #[test]
    fn unknown_action_is_named() {
        let m = msg("nodes:\n - id: a\n   actions: [nope]\n");
        assert!(
            m.contains("node 'a': action 'nope' is not in the action library"),
            "{m}"
        );
    }

    #[test]
    fn errors_are_one_line() {
        for y in ["nodes: [", "nodes:\n - id: a\n - id: a\n"] {
            assert!(!msg(y).trim().contains('\n'), "{}", msg(y));
        }
    }

    #[test]
    fn resolve_checks_parentage() {
        let t = Taxonomy::from_yaml_str(GOOD).unwrap();
        let e = t
            .resolve(&TagPath::new("other", Some("refund"), None))
            .unwrap_err();
        assert!(e.contains("'refund' is not a child of 'other'"), "{e}");
        let e = t.resolve(&TagPath::new("zzz", None, None)).unwrap_err();
        assert!(e.contains("unknown l1 label 'zzz'"), "{e}");
    }

    #[test]
    fn infers_from_labels() {
        let labels = vec![
            TagPath::new("b", Some("b1"), Some("b11")),
            TagPath::new("a", None, None),
            TagPath::new("b", Some("b1"), Some("b12")),
            TagPath::new("b", Some("b2"), None),
        ];
        let t = Taxonomy::infer(&labels).unwrap();
        assert_eq!(t.depth(), 3);
        assert_eq!(t.n_paths(), 4);
        assert_eq!(t.level_nodes(1).len(), 2);
        for l in &labels {
            assert!(t.class_of(l).is_some());
        }
        let bad = vec![
            TagPath::new("a", Some("x"), None),
            TagPath::new("b", Some("x"), None),
        ];
        assert!(Taxonomy::infer(&bad)
            .unwrap_err()
            .to_string()
            .contains("node 'x' appears under"));
    }

    #[test]
    fn added_tags_extend_the_tree_and_keep_the_old_classes() {
        let t = Taxonomy::infer(&[
            TagPath::new("a", Some("a1"), None),
            TagPath::new("a", Some("a2"), None),
            TagPath::new("b", None, None),
        ])
        .unwrap();
        let (u, diff) = t
            .with_added(&[
                TagPath::new("a", Some("a3"), None),
                TagPath::new("c", Some("c1"), None),
                TagPath::new("c", Some("c2"), None),
            ])
            .unwrap();
        let want: Vec<String> = ["a/a3", "c", "c/c1", "c/c2"].map(String::from).to_vec();
        assert_eq!(diff.iter().map(|p| p.to_string()).collect::<Vec<_>>(), want);
        assert_eq!(u.n_paths(), 6);
        assert_eq!(u.raw().version, Some(2));
        for c in 0..t.n_paths() {
            assert!(u.class_of(&t.path_of(c)).is_some());
        }
        let msg = |p: TagPath| t.with_added(&[p]).unwrap_err().to_string();
        assert!(msg(TagPath::new("a", Some("a1"), None)).contains("already in the taxonomy"));
        assert!(msg(TagPath::new("b", Some("b1"), None)).contains("leaf tag"));
        assert!(
            msg(TagPath::new("c", Some("a1"), None)).contains("already in the taxonomy under 'a'")
        );
    }
}
