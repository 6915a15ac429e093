//! Fuzz properties of the taxonomy YAML loader and the bundle manifest
//! (see `docs/fuzzing.md`; corpus in `fuzz/corpus/taxonomy_yaml` and
//! `fuzz/corpus/bundle_manifest`).
//!
//! - Any bytes as a taxonomy: no panic; an error says something; a
//!   taxonomy that loads is a consistent tree (ids unique and findable,
//!   levels match lineages, every class path resolves back to its class) and
//!   survives a YAML round trip unchanged.
//! - Any bytes as `manifest.json` of an otherwise valid bundle (with the
//!   digest recomputed, stale, absent or garbage): no panic; an error says
//!   something; a bundle that opens has every listed file present
//!   with the listed checksum, its taxonomy listed, and as many leaf paths
//!   as the manifest's label space.

#[path = "../../../fuzz/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::{Component, Path};

use casetag_core::bundle::{
    sha256_file, Bundle, BundleWriter, Calibration, Manifest, FORMAT_VERSION, MANIFEST,
    MANIFEST_DIGEST, TAXONOMY,
};
use casetag_core::{LabelSpace, Taxonomy};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use support::{ensure, Input};

const YAML_TOKENS: &[&[u8]] = &[
    b"\n",
    b"\n  ",
    b"- ",
    b": ",
    b"{",
    b"}",
    b"[",
    b"]",
    b", ",
    b"&a ",
    b"*a",
    b"<<: *a\n",
    b"!!binary ",
    b"!!str ",
    b"!custom ",
    b"? ",
    b"---\n",
    b"...\n",
    b"%YAML 1.1\n",
    b"#",
    b"|\n",
    b">-\n",
    b"id: ",
    b"- id: x\n",
    b"children: ",
    b"children: [{id: z}]",
    b"parent: ",
    b"actions: ",
    b"mode: ",
    b"mode: auto",
    b"min_confidence: ",
    b"nodes: ",
    b".nan",
    b".inf",
    b"~",
    b"null",
    b"true",
    b"\"\\u0001\"",
    b"\"\\x1b[2J\"",
    b"\"\\n\"",
    b"    ",
];

const JSON_TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"true",
    b"0",
    b"-1",
    b"4294967296",
    b"1.5e308",
    b"\"\"",
    b"\"\\u0000\"",
    b"\"\\ud800\"",
    b"\"\\n\"",
    b"\"../outside.bin\"",
    b"\"/etc/hostname\"",
    b"\"taxonomy.yaml\"",
    b"\"weights.bin\"",
    b"\"format\": 1,",
    b"\"files\": {},",
    b"\"n_paths\": 0",
    b"\"temperature\": -1e309",
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
];

/// Default number of mutated cases per target (CI); see `docs/fuzzing.md`.
/// YAML parsing is cheap; a bundle case writes a directory.
const TAXONOMY_CASES: u32 = 3000;
const CASES: u32 = 400;
const MAX_LEN: usize = 32 * 1024;

fn taxonomy_invariants(t: &Taxonomy) -> Result<(), TestCaseError> {
    let depth = t.depth();
    ensure((1..=3).contains(&depth), || format!("depth {depth}"))?;
    ensure(t.n_paths() >= 1, || "no class".into())?;
    let mut per_level = 0;
    for k in 1..=depth {
        per_level += t.level_nodes(k).len();
        for &i in t.level_nodes(k) {
            ensure(t.node(i).level == k, || {
                format!("node {i} listed at level {k}")
            })?;
        }
    }
    ensure(per_level == t.nodes().len(), || {
        format!("levels hold {per_level} of {} nodes", t.nodes().len())
    })?;
    for (i, n) in t.nodes().iter().enumerate() {
        ensure(!n.id.is_empty() && n.id.trim() == n.id, || {
            format!("node id {:?} is empty or padded", n.id)
        })?;
        ensure(t.find(&n.id) == Some(i), || {
            format!("find({:?}) != {i}", n.id)
        })?;
        ensure(t.lineage(i).len() == n.level, || {
            format!(
                "node {:?}: level {} but lineage {:?}",
                n.id,
                n.level,
                t.lineage(i)
            )
        })?;
        if let Some(p) = n.parent {
            ensure(t.node(p).children.contains(&i), || {
                format!("node {:?} is not among its parent's children", n.id)
            })?;
        }
        for a in &n.actions {
            ensure((0.0..=1.0).contains(&a.min_confidence), || {
                format!("action {:?} gate {}", a.id, a.min_confidence)
            })?;
            ensure(t.action_library().contains_key(&a.id), || {
                format!("action {:?} not in the library", a.id)
            })?;
        }
    }
    for c in 0..t.n_paths() {
        let leaf = t.leaf(c);
        ensure(t.node(leaf).children.is_empty(), || {
            format!("class {c} is not a leaf")
        })?;
        let path = t.path_of(c);
        ensure(path.depth() == t.node(leaf).level, || {
            format!("class {c}: path {path} at level {}", t.node(leaf).level)
        })?;
        ensure(t.resolve(&path) == Ok(leaf), || {
            format!("path {path} does not resolve to its leaf")
        })?;
        ensure(t.class_of(&path) == Some(c), || {
            format!("path {path} is not class {c}")
        })?;
    }
    // Stored in bundles as YAML: the round trip must give the same tree.
    let yaml = t.to_yaml();
    let back = Taxonomy::from_yaml_str(&yaml)
        .map_err(|e| TestCaseError::fail(format!("round trip refused: {e}\n{yaml}")))?;
    let ids = |t: &Taxonomy| t.nodes().iter().map(|n| n.id.clone()).collect::<Vec<_>>();
    ensure(ids(&back) == ids(t), || {
        "round trip changed the nodes".into()
    })?;
    let paths = |t: &Taxonomy| (0..t.n_paths()).map(|c| t.path_of(c)).collect::<Vec<_>>();
    ensure(paths(&back) == paths(t), || {
        "round trip changed the classes".into()
    })?;
    ensure(back.to_yaml() == yaml, || "YAML is not stable".into())
}

fn taxonomy_case(
    input: &Input,
    messages: fn(&str) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    match std::str::from_utf8(&input.bytes) {
        Ok(text) => match Taxonomy::from_yaml_str(text) {
            Ok(t) => taxonomy_invariants(&t),
            Err(e) => messages(&e.to_string()),
        },
        // Not UTF-8: only a file can hold it.
        Err(_) => {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("taxonomy.yaml");
            std::fs::write(&p, &input.bytes).unwrap();
            match Taxonomy::load(&p) {
                Ok(t) => Err(TestCaseError::fail(format!(
                    "invalid UTF-8 loaded as a taxonomy of {} nodes",
                    t.nodes().len()
                ))),
                Err(e) => messages(&e.to_string()),
            }
        }
    }
}

#[test]
fn fuzz_taxonomy_yaml() {
    support::fuzz_bytes("taxonomy_yaml", YAML_TOKENS, TAXONOMY_CASES, MAX_LEN, |i| {
        taxonomy_case(i, support::nonempty_message)
    });
}

#[test]
fn fuzz_taxonomy_yaml_messages_have_no_control_characters() {
    support::fuzz_bytes("taxonomy_yaml", YAML_TOKENS, TAXONOMY_CASES, MAX_LEN, |i| {
        taxonomy_case(i, support::clean_message)
    });
}

// ---------------------------------------------------------------- bundles

const TAXONOMY_YAML: &str = "nodes:\n  - id: a\n    children: [{id: a1}, {id: a2}]\n  - id: b\n";

fn manifest() -> Manifest {
    Manifest {
        format: 0,
        id: "fuzz-model".into(),
        kind: "baseline".into(),
        created: "2026-01-01T00:00:00Z".into(),
        taxonomy: String::new(),
        training_data_hash: "0".repeat(64),
        label_space: LabelSpace {
            n_paths: 3,
            oos_class: false,
        },
        hyper_parameters: serde_json::json!({"n_features": 512, "c": 1.0}),
        validation_metrics: serde_json::json!({"l1": {"accuracy": 0.9}}),
        calibration: Calibration::default(),
        thresholds: serde_json::json!({"oos": 0.5, "levels": [0.4, 0.3, 0.2]}),
        files: BTreeMap::new(),
        text: Default::default(),
        build: Some("0.1.0+fuzz".into()),
        taxonomy_version: None,
        taxonomy_sha256: None,
        languages: Default::default(),
        parent: None,
    }
}

/// A valid bundle written by [`BundleWriter`]; the cases copy its files.
struct Fixture {
    _root: tempfile::TempDir,
    dir: std::path::PathBuf,
}

fn fixture() -> Fixture {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("model");
    let tax = Taxonomy::from_yaml_str(TAXONOMY_YAML).unwrap();
    let w = BundleWriter::new(&dir).unwrap();
    std::fs::write(w.dir().join("weights.bin"), b"\x00\x01weights\xff").unwrap();
    w.finish(manifest(), &tax, false).unwrap();
    Bundle::open(&dir).expect("the fixture bundle opens");
    Fixture { _root: root, dir }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// What `manifest.sha256` holds in a case.
#[derive(Clone, Copy, Debug)]
enum DigestFile {
    /// The digest of the mutated manifest (so its content is what is tested).
    Matching,
    /// The fixture's digest (stale for any changed manifest).
    Original,
    Absent,
    Garbage,
}

fn digest_file() -> impl Strategy<Value = DigestFile> {
    prop_oneof![
        6 => Just(DigestFile::Matching),
        1 => Just(DigestFile::Original),
        1 => Just(DigestFile::Absent),
        1 => Just(DigestFile::Garbage),
    ]
}

fn bundle_case(
    fx: &Fixture,
    input: &Input,
    digest: DigestFile,
    messages: fn(&str) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("bundle");
    std::fs::create_dir(&dir).unwrap();
    for name in [TAXONOMY, "weights.bin", MANIFEST_DIGEST] {
        std::fs::copy(fx.dir.join(name), dir.join(name)).unwrap();
    }
    std::fs::write(dir.join(MANIFEST), &input.bytes).unwrap();
    match digest {
        DigestFile::Matching => std::fs::write(
            dir.join(MANIFEST_DIGEST),
            format!("{}\n", sha256_hex(&input.bytes)),
        )
        .unwrap(),
        DigestFile::Original => {}
        DigestFile::Absent => std::fs::remove_file(dir.join(MANIFEST_DIGEST)).unwrap(),
        DigestFile::Garbage => {
            std::fs::write(dir.join(MANIFEST_DIGEST), b"\xff\x00 not hex").unwrap()
        }
    }
    match Bundle::open(&dir) {
        Err(e) => messages(&e.to_string()),
        Ok(b) => {
            let parsed: Manifest = serde_json::from_slice(&input.bytes).map_err(|e| {
                TestCaseError::fail(format!("opened a manifest serde_json refuses: {e}"))
            })?;
            ensure(b.manifest == parsed, || {
                "the manifest differs from the file".into()
            })?;
            ensure(b.manifest.format == FORMAT_VERSION, || {
                format!("format {} accepted", b.manifest.format)
            })?;
            ensure(b.manifest.files.contains_key(&b.manifest.taxonomy), || {
                "taxonomy file not covered by a checksum".into()
            })?;
            for (name, want) in &b.manifest.files {
                let got = sha256_file(&dir.join(name)).map_err(|e| {
                    TestCaseError::fail(format!("listed file {name:?} unreadable: {e}"))
                })?;
                ensure(&got == want, || {
                    format!("listed file {name:?} has another checksum")
                })?;
            }
            ensure(
                b.taxonomy.n_paths() == b.manifest.label_space.n_paths,
                || "taxonomy and label space disagree".into(),
            )?;
            taxonomy_invariants(&b.taxonomy)
        }
    }
}

fn fuzz_bundle(messages: fn(&str) -> Result<(), TestCaseError>) {
    let target = "bundle_manifest";
    let fx = fixture();
    support::replay(target, |i| {
        bundle_case(&fx, i, DigestFile::Matching, messages)
    });
    // The fixture's own manifest is a seed too.
    let mut seeds = support::corpus(target);
    let own = support::Seed {
        name: "fixture manifest.json".into(),
        bytes: std::fs::read(fx.dir.join(MANIFEST)).unwrap(),
    };
    // Unchanged, it opens (so the properties of an opened bundle are checked).
    let input = Input {
        origin: own.name.clone(),
        bytes: own.bytes.clone(),
    };
    bundle_case(&fx, &input, DigestFile::Matching, messages).unwrap();
    assert!(Bundle::open(&fx.dir).is_ok());
    seeds.push(own);
    let strategy = (
        support::mutated(seeds, JSON_TOKENS, 6, MAX_LEN),
        digest_file(),
    );
    support::check(target, CASES, strategy, |(i, d)| {
        bundle_case(&fx, &i, d, messages)
    });
}

#[test]
fn fuzz_bundle_manifest() {
    fuzz_bundle(support::nonempty_message);
}

#[test]
fn fuzz_bundle_manifest_messages_have_no_control_characters() {
    fuzz_bundle(support::clean_message);
}

/// A manifest entry naming a file outside the bundle directory.
#[derive(Clone, Debug)]
enum Escape {
    ParentDir,
    Absolute,
    Nested,
}

fn plain_name(name: &str) -> bool {
    let mut c = Path::new(name).components();
    matches!((c.next(), c.next()), (Some(Component::Normal(_)), None))
}

/// Every file a bundle is opened from lies inside its directory: a manifest
/// that lists `../x`, `/abs/x` or `sub/../../x` (with the right checksum) is
/// refused, whichever file (taxonomy or weights) it redirects.
#[test]
fn fuzz_bundle_files_stay_inside_the_directory() {
    let fx = fixture();
    let strategy = (
        prop_oneof![
            Just(Escape::ParentDir),
            Just(Escape::Absolute),
            Just(Escape::Nested)
        ],
        any::<bool>(),
        "[a-z]{1,8}",
    );
    support::check("bundle_escape", 64, strategy, |(escape, taxonomy, stem)| {
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("bundle");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for name in [TAXONOMY, "weights.bin"] {
            std::fs::copy(fx.dir.join(name), dir.join(name)).unwrap();
        }
        // The outside file is a copy of the one it stands in for.
        let source = if taxonomy { TAXONOMY } else { "weights.bin" };
        let outside = work.path().join(format!("{stem}.out"));
        std::fs::copy(fx.dir.join(source), &outside).unwrap();
        let name = match escape {
            Escape::ParentDir => format!("../{stem}.out"),
            Escape::Absolute => outside.display().to_string(),
            Escape::Nested => format!("sub/../../{stem}.out"),
        };
        let mut m: Manifest =
            serde_json::from_slice(&std::fs::read(fx.dir.join(MANIFEST)).unwrap()).unwrap();
        let hash = m.files.remove(source).unwrap();
        m.files.insert(name.clone(), hash);
        if taxonomy {
            m.taxonomy = name.clone();
        }
        let json = serde_json::to_string_pretty(&m).unwrap();
        std::fs::write(dir.join(MANIFEST), &json).unwrap();
        std::fs::write(
            dir.join(MANIFEST_DIGEST),
            format!("{}\n", sha256_hex(json.as_bytes())),
        )
        .unwrap();
        match Bundle::open(&dir) {
            Err(e) => support::one_line_message(&e.to_string()),
            Ok(b) => ensure(b.manifest.files.keys().all(|n| plain_name(n)), || {
                format!("opened a bundle that reads {name:?} from outside its directory")
            }),
        }
    });
}
