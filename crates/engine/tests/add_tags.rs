//! New tags from a few examples (`train --from --add`) end to end on a
//! tiny random BERT built in code: the new bundle knows the new tag and
//! answers its examples with it, keeps the old answers, records its parent
//! and the taxonomy diff, and bad additions are refused in one line.

use std::path::{Path, PathBuf};

mod common;

use casetag_core::bundle::Bundle;
use casetag_core::{TagPath, Taxonomy, Transcript};
use casetag_engine::add::{add_tags, confusion_note, AddConfig};
use casetag_engine::{load_model, Example, TrainConfig};
use casetag_transformer::fixtures::write_tiny_bert;

const TAXONOMY: &str = "nodes: [{id: delivery, children: [{id: late}, {id: lost}]}, \
                        {id: refund, children: [{id: money}, {id: wrong_size}]}]";
const CLASSES: [(&str, &str, &str); 4] = [
    ("delivery", "late", "delivery is late still waiting"),
    ("delivery", "lost", "tracking says parcel lost"),
    ("refund", "money", "refund my money back"),
    ("refund", "wrong_size", "the size was wrong"),
];

fn rows(l1: &str, l2: &str, text: &str, n: usize) -> Vec<Example> {
    (0..n)
        .map(|i| Example {
            text: format!(
                "[buyer] {text}{}{}",
                common::FILLERS[i % 8],
                " ok".repeat(i / 8)
            ),
            label: Some(TagPath::new(l1, Some(l2), None)),
            row: i + 2,
        })
        .collect()
}

/// A transformer parent on a tiny encoder, in a temporary directory (the
/// bundle at `parent`, the encoder beside it).
fn transformer_parent() -> (tempfile::TempDir, PathBuf) {
    let out = tempfile::tempdir().unwrap();
    let enc = out.path().join("enc");
    write_tiny_bert(&enc, 3).unwrap();
    let parent = out.path().join("parent");
    train_parent(&enc, &parent, "transformer");
    (out, parent)
}

fn train_parent(encoder: &Path, dir: &Path, kind: &str) {
    train_parent_with(encoder, dir, kind, Vec::new());
}

fn train_parent_with(encoder: &Path, dir: &Path, kind: &str, extra: Vec<Example>) {
    let mut cfg = TrainConfig {
        kind: kind.into(),
        taxonomy: Some(Taxonomy::from_yaml_str(TAXONOMY).unwrap()),
        encoder: Some(encoder.display().to_string()),
        val_fraction: 0.25,
        ..Default::default()
    };
    cfg.transformer.epochs = 30;
    cfg.baseline.n_features = 256;
    let mut examples: Vec<Example> = CLASSES
        .iter()
        .flat_map(|(a, b, t)| rows(a, b, t, 16))
        .collect();
    examples.extend(extra);
    casetag_engine::train(&cfg, examples, None, dir, &|_| {}).unwrap();
}

fn leaf(m: &casetag_engine::LoadedModel, text: &str) -> TagPath {
    m.decide(&[Transcript::new(text)], 0).unwrap()[0]
        .top_path
        .clone()
}

/// A new tag whose examples read like an old tag's cases is recorded as
/// meeting that tag, with a warning to print.
#[test]
fn a_new_tag_like_an_old_one_is_reported() {
    let (out, parent) = transformer_parent();
    let pb = Bundle::open(&parent).unwrap();
    let old = load_model(&parent).unwrap();
    let new = rows("delivery", "delayed", "delivery is late still waiting", 6);
    assert!(
        new.iter()
            .all(|r| leaf(&old, &r.text) == TagPath::new("delivery", Some("late"), None)),
        "the parent answers the examples with the old tag"
    );
    let m = add_tags(
        &parent,
        new,
        &AddConfig::default(),
        &out.path().join("child"),
        &|_| {},
    )
    .unwrap();
    let p = m.parent.as_ref().unwrap();
    let o = &p.overlap["delivery/delayed"];
    assert_eq!(o.parent_answers["delivery/late"], 6, "{o:?}");
    let warning = confusion_note("delivery/delayed", o, p.examples["delivery/delayed"]);
    assert!(
        warning.is_some_and(|w| w.contains("'delivery/delayed' looks like 'delivery/late'")),
        "{o:?}"
    );
    // The parent's manifest is not touched.
    assert_eq!(Bundle::open(&parent).unwrap().manifest, pb.manifest);
}

#[test]
fn added_tag_is_learned_and_old_answers_stay() {
    let (out, parent) = transformer_parent();
    assert!(parent.join(casetag_transformer::MEMORY_FILE).is_file());

    let child = out.path().join("child");
    let new = rows(
        "delivery",
        "damaged",
        "the package arrived broken damaged",
        6,
    );
    let notes = std::sync::Mutex::new(Vec::new());
    let m = add_tags(&parent, new.clone(), &AddConfig::default(), &child, &|s| {
        notes.lock().unwrap().push(s.to_string())
    })
    .unwrap();
    let p = m.parent.as_ref().expect("the parent is recorded");
    let pb = Bundle::open(&parent).unwrap();
    assert_eq!(p.id, pb.manifest.id);
    assert_eq!(p.added, vec!["delivery/damaged".to_string()]);
    assert_eq!(p.examples["delivery/damaged"], 6);
    assert_eq!(
        p.guard_margin,
        Some(casetag_engine::few_shot::DEFAULT_MARGIN)
    );
    assert!(p.earlier.is_empty(), "the parent was trained in full");
    // The parent's answers on the examples are recorded, one per example,
    // each an old tag.
    let o = &p.overlap["delivery/damaged"];
    assert_eq!(o.parent_answers.values().sum::<usize>(), 6, "{o:?}");
    let old_tags: Vec<String> = (0..4).map(|c| pb.taxonomy.path_of(c).to_string()).collect();
    assert!(
        o.parent_answers.keys().all(|t| old_tags.contains(t)),
        "{o:?}"
    );
    assert_ne!(m.id, pb.manifest.id);
    assert_eq!(m.label_space.n_paths, 5);
    assert_eq!(m.taxonomy_version, Some(2));
    let notes = notes.into_inner().unwrap();
    assert!(notes.iter().any(|s| s.contains("memory of")), "{notes:?}");

    let old = load_model(&parent).unwrap();
    let grown = load_model(&child).unwrap();
    assert!(grown.detector.is_some(), "the detector comes along");
    assert!(
        grown.guard.is_some(),
        "answers with the added tag are checked"
    );
    assert!(old.guard.is_none());
    let new_tag = TagPath::new("delivery", Some("damaged"), None);
    for r in &new {
        assert_eq!(leaf(&grown, &r.text), new_tag, "{}", r.text);
    }
    let mut same = 0;
    let mut total = 0;
    for (a, b, t) in CLASSES {
        for r in rows(a, b, t, 16) {
            total += 1;
            same += usize::from(leaf(&old, &r.text) == leaf(&grown, &r.text));
        }
    }
    assert!(same * 10 >= total * 9, "{same} of {total} old answers kept");

    // Tags can be added to a grown bundle again.
    let again = out.path().join("again");
    let more = rows("refund", "dispute", "cancel dispute with seller system", 5);
    let m2 = add_tags(&child, more.clone(), &AddConfig::default(), &again, &|_| {}).unwrap();
    assert_eq!(m2.parent.as_ref().unwrap().id, m.id);
    // The first add's tag is still one added from a few examples.
    assert_eq!(
        m2.parent.as_ref().unwrap().earlier,
        vec!["delivery/damaged".to_string()]
    );
    assert_eq!(m2.label_space.n_paths, 6);
    let twice = load_model(&again).unwrap();
    let dispute = TagPath::new("refund", Some("dispute"), None);
    let hits = more
        .iter()
        .filter(|r| leaf(&twice, &r.text) == dispute)
        .count();
    assert!(
        hits >= 4,
        "{hits} of 5 examples answered with the second new tag"
    );
    assert_eq!(leaf(&twice, &new[0].text), new_tag);

    // Without the check: the same tag, no guard, another id.
    let plain = out.path().join("plain");
    let cfg = AddConfig {
        guard_margin: None,
        ..AddConfig::default()
    };
    let m3 = add_tags(&parent, new.clone(), &cfg, &plain, &|_| {}).unwrap();
    assert_eq!(m3.parent.as_ref().unwrap().guard_margin, None);
    assert_ne!(m3.id, m.id, "a margin is part of the model");
    assert!(load_model(&plain).unwrap().guard.is_none());
    // A margin below every cosine gap: each answer with the added tag
    // gives way to the best old tag, so the check runs on every answer.
    let always = out.path().join("always");
    let cfg = AddConfig {
        guard_margin: Some(-2.0),
        ..AddConfig::default()
    };
    add_tags(&parent, new.clone(), &cfg, &always, &|_| {}).unwrap();
    let gives_way = load_model(&always).unwrap();
    for r in &new {
        let l = leaf(&gives_way, &r.text);
        assert!(old_tags.contains(&l.to_string()), "{}: {l}", r.text);
    }
}

#[test]
fn bad_additions_are_refused_in_one_line() {
    let (out, parent) = transformer_parent();
    let err = |rows: Vec<Example>| {
        add_tags(
            &parent,
            rows,
            &AddConfig::default(),
            &out.path().join("x"),
            &|_| {},
        )
        .unwrap_err()
        .to_string()
    };
    let cases = [
        (
            rows("delivery", "late", "late again", 6),
            "already in the taxonomy",
        ),
        (rows("delivery", "damaged", "broken", 3), "needs at least 5"),
        (
            rows("refund", "money", "x", 1)
                .into_iter()
                .map(|mut r| {
                    r.label = Some(TagPath::new("refund", Some("money"), Some("cash")));
                    r
                })
                .chain(rows("refund", "money", "y", 5).into_iter().map(|mut r| {
                    r.label = Some(TagPath::new("refund", Some("money"), Some("cash")));
                    r
                }))
                .collect(),
            "leaf tag",
        ),
        (Vec::new(), "no rows"),
    ];
    for (rows, want) in cases {
        let e = err(rows);
        assert!(e.contains(want), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
    assert!(!out.path().join("x").exists(), "nothing written");

    let base = out.path().join("baseline");
    train_parent(&out.path().join("enc"), &base, "baseline");
    let e = add_tags(
        &base,
        rows("delivery", "damaged", "broken", 6),
        &AddConfig::default(),
        &out.path().join("y"),
        &|_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("transformer bundles only"), "{e}");
}

/// A parent trained with out-of-scope rows has an out-of-scope output: it
/// stays the last output, and its answers stay.
#[test]
fn the_out_of_scope_output_stays_last_and_keeps_answering() {
    let enc = tempfile::tempdir().unwrap();
    write_tiny_bert(enc.path(), 3).unwrap();
    let out = tempfile::tempdir().unwrap();
    let parent = out.path().join("parent");
    let oos: Vec<Example> = (0..16)
        .map(|i| Example {
            text: format!("[buyer] hello thanks color{}", " a".repeat(i % 4)),
            label: None,
            row: 100 + i,
        })
        .collect();
    train_parent_with(enc.path(), &parent, "transformer", oos.clone());
    let pm = Bundle::open(&parent).unwrap().manifest;
    assert!(
        pm.label_space.oos_class,
        "trained with an out-of-scope class"
    );
    let child = out.path().join("child");
    let new = rows(
        "delivery",
        "damaged",
        "the package arrived broken damaged",
        6,
    );
    let m = add_tags(&parent, new.clone(), &AddConfig::default(), &child, &|_| {}).unwrap();
    assert!(m.label_space.oos_class);
    assert_eq!(m.label_space.n_paths, pm.label_space.n_paths + 1);
    let (old, grown) = (load_model(&parent).unwrap(), load_model(&child).unwrap());
    let decide = |m: &casetag_engine::LoadedModel, t: &str| {
        m.decide(&[Transcript::new(t)], 0).unwrap().remove(0)
    };
    let (mut kept, mut flagged) = (0, 0);
    for r in &oos {
        let (a, b) = (decide(&old, &r.text), decide(&grown, &r.text));
        flagged += usize::from(a.out_of_scope);
        kept += usize::from(a.out_of_scope == b.out_of_scope);
    }
    assert!(
        flagged * 2 >= oos.len(),
        "the parent flags its out-of-scope rows ({flagged})"
    );
    assert!(
        kept * 10 >= oos.len() * 9,
        "{kept} of {} out-of-scope answers kept",
        oos.len()
    );
    let new_tag = TagPath::new("delivery", Some("damaged"), None);
    let hits = new
        .iter()
        .filter(|r| leaf(&grown, &r.text) == new_tag)
        .count();
    assert!(hits >= 5, "{hits} of 6 examples answered with the new tag");
}
