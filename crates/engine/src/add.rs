//! New tags from a few examples (`casetag train --from BUNDLE --add FILE`):
//! a transformer bundle grows new L2/L3 (or L1) nodes without its old
//! training rows being embedded again or its encoder trained.
//!
//! What changes, and what does not:
//! * the taxonomy gains the new nodes ([`Taxonomy::with_added`]); the old
//!   tags keep their place in it;
//! * the head keeps its old rows and learns one row per new tag against the
//!   memory of training embeddings the bundle keeps
//!   ([`casetag_transformer::Memory`], [`TransformerModel::add_outputs`]);
//! * the lexical model (with `--fusion lexical`) stays as it is: it never
//!   saw the new tags, so for them the transformer's log-probability stands
//!   alone ([`FusionInfo::extended`]);
//! * the out-of-scope detector keeps its rules and refits its base model on
//!   its memory plus the new examples, so they count as known;
//! * calibration and thresholds are the parent's (per level and per named
//!   node, so they apply to the new tags as to their siblings);
//! * the manifest records the parent and the taxonomy diff.
//!
//! [`TransformerModel::add_outputs`]: casetag_transformer::TransformerModel::add_outputs

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use casetag_core::bundle::{
    now_rfc3339, Bundle, BundleWriter, DataHasher, Manifest, Parent, TagOverlap, OUT_OF_SCOPE,
};
use casetag_core::{LabelSpace, TagPath, Taxonomy};
use casetag_transformer::{Memory, Output, Overlap};

use crate::fusion::TransformerClassifier;
use crate::oos_meta::MetaDetector;
use crate::train::{Example, BUILD};
use crate::{EngineError, Result};

/// Fewest examples a new tag is learned from.
pub const MIN_EXAMPLES: usize = 5;

/// What `add_tags` needs besides the parent and the rows.
#[derive(Debug, Clone)]
pub struct AddConfig {
    /// Bundle id; defaults to `<kind>-<digest of the parent and the rows>`.
    pub id: Option<String>,
    pub overwrite: bool,
    /// [`Parent::guard_margin`] of the new bundle
    /// ([`crate::few_shot::DEFAULT_MARGIN`] unless the operator says
    /// otherwise; `None` turns the check off).
    pub guard_margin: Option<f32>,
}

impl Default for AddConfig {
    fn default() -> Self {
        Self {
            id: None,
            overwrite: false,
            guard_margin: Some(crate::few_shot::DEFAULT_MARGIN),
        }
    }
}

/// Add the tags of `rows` (every row labelled with a tag the parent does
/// not have) to the bundle at `parent`, writing a new bundle to `out`.
pub fn add_tags(
    parent: &Path,
    rows: Vec<Example>,
    cfg: &AddConfig,
    out: &Path,
    progress: &dyn Fn(&str),
) -> Result<Manifest> {
    let started = Instant::now();
    let bundle = Bundle::open(parent)?;
    let pm = &bundle.manifest;
    let from = |m: String| EngineError::Input(format!("--from {}: {m}", parent.display()));
    if pm.kind != casetag_transformer::KIND {
        return Err(from(format!(
            "tags can be added to transformer bundles only, this one is '{}' (train it again with the new rows)",
            pm.kind
        )));
    }
    let Some(memory) = Memory::load(parent).map_err(|e| EngineError::Transformer(e.to_string()))?
    else {
        return Err(from(format!(
            "keeps no memory of its training rows ({} is missing; bundles trained before it was kept); train it again once",
            casetag_transformer::MEMORY_FILE
        )));
    };
    if rows.is_empty() {
        return Err(EngineError::Input("--add: the file has no rows".into()));
    }
    if let Some(r) = rows.iter().find(|r| r.label.is_none()) {
        return Err(EngineError::Input(format!(
            "--add row {}: no label (every row names the new tag it is an example of)",
            r.row
        )));
    }
    let paths: Vec<TagPath> = rows
        .iter()
        .filter_map(|r| r.label.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let old_tax = &bundle.taxonomy;
    let (taxonomy, added) = old_tax
        .with_added(&paths)
        .map_err(|e| EngineError::Input(format!("--add: {e}")))?;
    let old_ls = &pm.label_space;
    let label_space = LabelSpace {
        n_paths: taxonomy.n_paths(),
        oos_class: old_ls.oos_class,
    };
    // Each output of the new label space: an old output or a new tag.
    let mut outputs: Vec<Option<Output>> = vec![None; label_space.n_outputs()];
    for c in 0..old_ls.n_paths {
        let j = taxonomy.class_of(&old_tax.path_of(c)).ok_or_else(|| {
            EngineError::Internal(format!("old tag {} lost its class", old_tax.path_of(c)))
        })?;
        outputs[j] = Some(Output::Old(c));
    }
    if old_ls.oos_class {
        outputs[label_space.n_paths] = Some(Output::Old(old_ls.n_paths));
    }
    let mut new_tags = Vec::new();
    for (j, o) in outputs.iter_mut().enumerate() {
        if o.is_none() {
            *o = Some(Output::New(new_tags.len()));
            new_tags.push(j);
        }
    }
    let outputs: Vec<Output> = outputs.into_iter().flatten().collect();
    // Every row's new tag, and enough examples of each.
    let pipeline = &pm.text;
    let mut texts = Vec::with_capacity(rows.len());
    let mut new_y = Vec::with_capacity(rows.len());
    let mut examples: BTreeMap<String, usize> = BTreeMap::new();
    for r in &rows {
        let label = r.label.as_ref().expect("checked above");
        let Some(i) = taxonomy
            .class_of(label)
            .and_then(|j| new_tags.iter().position(|&n| n == j))
        else {
            return Err(EngineError::Input(format!(
                "--add row {}: '{label}' is not a new leaf tag (examples go to the deepest new tag)",
                r.row
            )));
        };
        texts.push(pipeline.prepare(&r.text).text);
        new_y.push(i);
        *examples.entry(label.to_string()).or_default() += 1;
    }
    if let Some((tag, n)) = examples.iter().find(|(_, n)| **n < MIN_EXAMPLES) {
        return Err(EngineError::Input(format!(
            "--add: tag '{tag}' has {n} example(s); each new tag needs at least {MIN_EXAMPLES}"
        )));
    }
    let mut h = DataHasher::default();
    h.update(&pm.training_data_hash);
    for (t, &y) in texts.iter().zip(&new_y) {
        h.update(t);
        h.update(&taxonomy.path_of(new_tags[y]).to_string());
    }
    let data_hash = h.finish();
    let parent_sha = std::fs::read_to_string(parent.join(casetag_core::bundle::MANIFEST_DIGEST))
        .map(|s| s.trim().to_string())
        .map_err(|e| from(format!("{}: {e}", casetag_core::bundle::MANIFEST_DIGEST)))?;
    let id = cfg.id.clone().unwrap_or_else(|| {
        let mut h = DataHasher::default();
        h.update(&parent_sha);
        h.update(&data_hash);
        h.update(BUILD);
        // The margin changes the answers, so two margins are two models.
        h.update(&format!("{:?}", cfg.guard_margin));
        format!("{}-{}", pm.kind, &h.finish()[..12])
    });
    progress(&format!(
        "adding {} tag(s) to {} from {} example(s): embedding them",
        new_tags.len(),
        pm.id,
        texts.len()
    ));
    let mut model = TransformerClassifier::load(parent, &id)?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let tf = |e: casetag_transformer::TransformerError| EngineError::Transformer(e.to_string());
    let new_x = model.transformer.embed(&refs).map_err(tf)?.concat();
    progress(&format!(
        "fitting the new tags' head rows against a memory of {} training rows",
        memory.len()
    ));
    let (memory, fitted) = model
        .transformer
        .add_outputs(&outputs, label_space.clone(), &memory, &new_x, &new_y)
        .map_err(tf)?;
    let overlap = tag_overlap(&fitted, &new_tags, &taxonomy, old_tax, old_ls.n_paths);
    let before: Vec<Option<usize>> = outputs
        .iter()
        .map(|o| match o {
            Output::Old(c) => Some(*c),
            Output::New(_) => None,
        })
        .collect();
    if let Some((_, info)) = &mut model.lexical {
        *info = info.extended(&before);
    }
    let detector = match MetaDetector::load(parent)? {
        Some(det) => {
            progress("refitting the out-of-scope detector's base model with the new tags");
            let mut remap = vec![0u32; old_ls.n_paths];
            for (j, o) in before.iter().enumerate() {
                if let Some(c) = o.filter(|&c| c < old_ls.n_paths) {
                    remap[c] = j as u32;
                }
            }
            let y: Vec<u32> = new_y.iter().map(|&i| new_tags[i] as u32).collect();
            Some(det.extended(&remap, &new_x, &y, label_space.n_paths)?)
        }
        None => None,
    };

    let writer = BundleWriter::new(out)?;
    model.save(writer.dir())?;
    memory.save(writer.dir()).map_err(tf)?;
    if let Some(det) = &detector {
        det.save(writer.dir())?;
    }
    let reference = crate::drift::REFERENCE_FILE;
    if parent.join(reference).is_file() {
        // Read and written, not `fs::copy`: the new file's mode follows
        // the umask like every other file of the bundle.
        std::fs::read(parent.join(reference))
            .and_then(|b| std::fs::write(writer.dir().join(reference), b))
            .map_err(|e| EngineError::Internal(format!("{reference}: {e}")))?;
    }
    let mut vm = pm.validation_metrics.clone();
    if let Some(o) = vm.as_object_mut() {
        o.insert(
            "note".into(),
            "the parent's validation metrics; the added tags had no validation rows".into(),
        );
        o.insert(
            "add_seconds".into(),
            serde_json::json!(started.elapsed().as_secs_f64()),
        );
    }
    let manifest = Manifest {
        id,
        created: now_rfc3339(),
        training_data_hash: data_hash,
        label_space,
        validation_metrics: vm,
        build: Some(BUILD.to_string()),
        parent: Some(Parent {
            id: pm.id.clone(),
            manifest_sha256: parent_sha,
            added: added.iter().map(|p| p.to_string()).collect(),
            examples,
            overlap,
            earlier: pm
                .parent
                .as_ref()
                .map(|p| p.few_shot_tags().map(str::to_string).collect())
                .unwrap_or_default(),
            guard_margin: cfg.guard_margin,
        }),
        ..pm.clone()
    };
    crate::train::finish(
        writer,
        manifest,
        &taxonomy,
        cfg.overwrite,
        started,
        progress,
    )
}

/// Share of a new tag's examples the parent answers with one old tag at
/// which `train --from --add` warns that the two will be confused.
pub const CONFUSION_SHARE: f64 = 0.5;

/// The fit's [`Overlap`] by tag name: new tag `i` is class `new_tags[i]`
/// of `taxonomy`; the parent's outputs are classes of `old_tax` (below
/// `n_old_paths`) or its out-of-scope class.
fn tag_overlap(
    fitted: &Overlap,
    new_tags: &[usize],
    taxonomy: &Taxonomy,
    old_tax: &Taxonomy,
    n_old_paths: usize,
) -> BTreeMap<String, TagOverlap> {
    let name = |c: usize| {
        if c < n_old_paths {
            old_tax.path_of(c).to_string()
        } else {
            OUT_OF_SCOPE.to_string()
        }
    };
    let named = |m: &BTreeMap<usize, usize>| m.iter().map(|(&c, &n)| (name(c), n)).collect();
    new_tags
        .iter()
        .enumerate()
        .map(|(i, &j)| {
            let o = TagOverlap {
                parent_answers: fitted.examples_as.get(i).map(named).unwrap_or_default(),
                memory_taken: fitted.memory_taken.get(i).map(named).unwrap_or_default(),
            };
            (taxonomy.path_of(j).to_string(), o)
        })
        .collect()
}

/// A one-line warning for a new tag whose examples the parent mostly
/// answered with one old tag ([`CONFUSION_SHARE`] or more of its `n`
/// examples; `train --from --add` prints it); `None` otherwise.
pub fn confusion_note(tag: &str, o: &TagOverlap, n: usize) -> Option<String> {
    let (old, k) = o.nearest()?;
    if old == OUT_OF_SCOPE || n == 0 || (k as f64) < CONFUSION_SHARE * n as f64 {
        return None;
    }
    let taken = o.memory_taken.get(old).copied().unwrap_or(0);
    Some(format!(
        "new tag '{tag}' looks like '{old}' to the parent ({k} of its {n} examples; \
         the new model gives '{tag}' {taken} of the training rows of '{old}' it keeps): \
         expect the two to be confused; if '{tag}' is a part of '{old}', split '{old}' \
         in a new taxonomy version and retrain"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlap(answers: &[(&str, usize)], taken: &[(&str, usize)]) -> TagOverlap {
        let map = |v: &[(&str, usize)]| v.iter().map(|&(t, n)| (t.to_string(), n)).collect();
        TagOverlap {
            parent_answers: map(answers),
            memory_taken: map(taken),
        }
    }

    #[test]
    fn a_note_only_where_most_examples_look_like_one_old_tag() {
        let o = overlap(&[("a/late", 6), ("a/lost", 4)], &[("a/late", 3)]);
        let note = confusion_note("a/delayed", &o, 10).unwrap();
        assert!(
            note.starts_with("new tag 'a/delayed' looks like 'a/late'"),
            "{note}"
        );
        assert!(
            note.contains("6 of its 10 examples") && note.contains(" 3 of the training rows"),
            "{note}"
        );
        assert!(!note.contains('\n'), "{note}");
        // Spread over old tags, or unknown to the parent: nothing to say.
        let spread = overlap(&[("a/late", 4), ("a/lost", 3), ("b/x", 3)], &[]);
        assert_eq!(confusion_note("a/delayed", &spread, 10), None);
        let unknown = overlap(&[("out_of_scope", 8), ("a/late", 2)], &[]);
        assert_eq!(confusion_note("a/delayed", &unknown, 10), None);
        assert_eq!(confusion_note("a/delayed", &overlap(&[], &[]), 0), None);
    }
}
