//! The learned out-of-scope detector end to end: a transformer (tiny random
//! BERT built in code) trained without out-of-scope rows gets a detector in
//! its bundle, thresholds that use it, and score rows that carry it; `msp`
//! and the baseline keep the confidence cut.

use std::path::Path;

mod common;

use casetag_core::{TagPath, Taxonomy, Transcript};
use casetag_engine::calibrate::OosDetector;
use casetag_engine::decide::Judging;
use casetag_engine::oos_meta::FILE;
use casetag_engine::{load_model, Example, Tagger, Thresholds, TrainConfig};
use casetag_transformer::fixtures::write_tiny_bert;

const CLASSES: [(&str, &str); 5] = [
    ("refund", "refund my money back"),
    ("broken", "the item arrived broken"),
    ("late", "delivery is late"),
    ("lost", "tracking says parcel lost"),
    ("review", "i want to leave a review"),
];

fn examples() -> Vec<Example> {
    let mut rows = Vec::new();
    for (label, text) in CLASSES {
        for (i, f) in common::FILLERS.iter().enumerate() {
            for speaker in ["[buyer] ", "[agent] hello\n[buyer] "] {
                rows.push(Example {
                    text: format!("{speaker}{text}{f}{}", " ok".repeat(i % 3)),
                    label: Some(TagPath::new(label, None, None)),
                    row: rows.len() + 2,
                });
            }
        }
    }
    rows
}

fn config(kind: &str, encoder: &Path, detector: OosDetector) -> TrainConfig {
    let yaml = format!(
        "nodes: [{}]",
        CLASSES
            .iter()
            .map(|(c, _)| format!("{{id: {c}}}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut cfg = TrainConfig {
        kind: kind.into(),
        taxonomy: Some(Taxonomy::from_yaml_str(&yaml).unwrap()),
        encoder: Some(encoder.display().to_string()),
        val_fraction: 0.25,
        ..Default::default()
    };
    cfg.transformer.epochs = 15;
    cfg.baseline.n_features = 256;
    cfg.decision.oos_detector = detector;
    cfg
}

#[test]
fn transformer_bundle_carries_the_detector_and_decisions_use_it() {
    let enc = tempfile::tempdir().unwrap();
    write_tiny_bert(enc.path(), 3).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("meta");
    let cfg = config("transformer", enc.path(), OosDetector::Meta);
    let msgs = std::sync::Mutex::new(Vec::new());
    let m = casetag_engine::train(&cfg, examples(), None, &dir, &|s: &str| {
        msgs.lock().unwrap().push(s.to_string())
    })
    .unwrap();
    assert_eq!(m.validation_metrics["oos_detector"], "meta");
    assert!(
        m.files.contains_key(FILE),
        "the detector is checksummed: {:?}",
        m.files
    );
    let th: Thresholds = serde_json::from_value(m.thresholds.clone()).unwrap();
    let cut = th.oos_detector_cut.expect("a detector cut");
    let msgs = msgs.into_inner().unwrap();
    assert!(msgs.iter().any(|s| s.contains("round 6/6")), "{msgs:?}");

    let loaded = load_model(&dir).unwrap();
    assert!(loaded.detector.is_some());
    let cases = vec![
        Transcript::new("[buyer] refund my money back please"),
        Transcript::new("[buyer] zzz qqq xxx"),
    ];
    let rows = loaded.scores(&cases).unwrap();
    assert!(
        rows.iter()
            .all(|r| r.logits.len() == 5 && r.detector.is_some()),
        "5 logits and the detector's"
    );
    let tagger = Tagger::load(&dir, None).unwrap();
    let tagged = tagger.tag(&cases, 2).unwrap();
    for (t, row) in tagged.iter().zip(&rows) {
        let d = &t.decision;
        let z = row.detector.unwrap();
        assert!((d.oos_score - 1.0 / (1.0 + (-z).exp())).abs() < 1e-6);
        assert_eq!(d.out_of_scope, z > cut);
    }

    // Judged as a whole batch: the batch rule's logit against its own cut.
    let batch_cut = th.oos_batch_cut.expect("a batch cut");
    let mut whole = load_model(&dir).unwrap();
    whole.enable_batch_novelty().unwrap();
    let emb = loaded
        .classifier
        .predict_embedded(&cases)
        .unwrap()
        .unwrap()
        .1;
    let zb = loaded
        .detector
        .as_ref()
        .unwrap()
        .scores_batch(&emb)
        .unwrap();
    let rows_b = whole.scores(&cases).unwrap();
    assert_eq!(rows_b[0].logits, rows[0].logits, "same logits");
    for (row, z) in rows_b.iter().zip(&zb) {
        assert_eq!(row.detector, Some(*z));
    }
    for (d, z) in whole.decide(&cases, 2).unwrap().iter().zip(&zb) {
        assert_eq!(d.out_of_scope, *z > batch_cut);
    }
    // Judged against the stream before each case: the detector's stream
    // scores, in order across calls, against the batch rule's cut.
    let mut streamed = load_model(&dir).unwrap();
    streamed.enable_stream_novelty(16).unwrap();
    assert_eq!(streamed.judging, Judging::Stream);
    let mut window = casetag_engine::oos_meta::StreamWindow::new(16, 0);
    let det = loaded.detector.as_ref().unwrap();
    let zs = det.scores_stream(&mut window, &emb).unwrap();
    let again = det.scores_stream(&mut window, &emb[..1]).unwrap();
    let first = streamed.decide(&cases, 2).unwrap();
    let next = streamed.decide(&cases[..1], 2).unwrap();
    for (d, z) in first.iter().chain(&next).zip(zs.iter().chain(&again)) {
        assert!((d.oos_score - 1.0 / (1.0 + (-z).exp())).abs() < 1e-6);
        assert_eq!(d.out_of_scope, *z > batch_cut);
    }
    // The window outlives the model: saved after one batch and put back
    // into a freshly loaded model, it gives the answers and the window of a
    // model that never stopped.
    let saved = streamed.stream_state().expect("a window");
    let went_on = streamed.decide(&cases, 2).unwrap();
    let mut restarted = load_model(&dir).unwrap();
    restarted.enable_stream_novelty(16).unwrap();
    restarted.restore_stream_state(&saved).unwrap();
    let after = restarted.decide(&cases, 2).unwrap();
    for (a, b) in after.iter().zip(&went_on) {
        assert_eq!(a.oos_score, b.oos_score);
    }
    assert_eq!(restarted.stream_state(), streamed.stream_state());
    // A window of another size, damaged bytes, or a model judging case by
    // case are refused.
    let mut other = load_model(&dir).unwrap();
    other.enable_stream_novelty(8).unwrap();
    let e = other.restore_stream_state(&saved).unwrap_err().to_string();
    assert!(e.contains("16 cases"), "{e}");
    let mut cut = saved.clone();
    cut.pop();
    assert!(restarted.restore_stream_state(&cut).is_err());
    assert!(restarted.restore_stream_state(b"CTSTRM01").is_err());
    assert!(loaded.restore_stream_state(&saved).is_err());
    assert!(loaded.stream_state().is_none());
    let mut tagger = Tagger::load(&dir, None).unwrap();
    tagger.enable_batch_novelty().unwrap();
    assert_eq!(tagger.active().judging, Judging::Batch);
    // The thresholds stay the bundle's: the judging mode picks the cut.
    assert_eq!(tagger.active().decider.thresholds, th);

    // A damaged detector file fails verification like any bundle file.
    let p = dir.join(FILE);
    let mut bytes = std::fs::read(&p).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    std::fs::write(&p, bytes).unwrap();
    let e = load_model(&dir).err().expect("tampered bundle").to_string();
    assert!(e.contains(FILE), "{e}");
}

#[test]
fn fine_tuning_fits_the_detector_on_the_tuned_encoder() {
    let enc = tempfile::tempdir().unwrap();
    write_tiny_bert(enc.path(), 3).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("ft");
    let mut cfg = config("transformer", enc.path(), OosDetector::Meta);
    cfg.transformer = casetag_transformer::TransformerParams {
        epochs: 2,
        ..casetag_transformer::TransformerParams::fine_tune()
    };
    let m = casetag_engine::train(&cfg, examples(), None, &dir, &|_| {}).unwrap();
    assert_eq!(m.validation_metrics["oos_detector"], "meta");
    let loaded = load_model(&dir).unwrap();
    let rows = loaded
        .scores(&[Transcript::new("[buyer] delivery is late")])
        .unwrap();
    assert!(rows[0].logits.len() == 5 && rows[0].detector.is_some());
}

#[test]
fn msp_and_the_baseline_keep_the_confidence_cut() {
    let enc = tempfile::tempdir().unwrap();
    write_tiny_bert(enc.path(), 3).unwrap();
    let out = tempfile::tempdir().unwrap();
    for (name, kind, det) in [
        ("msp", "transformer", OosDetector::Msp),
        ("baseline", "baseline", OosDetector::Meta),
    ] {
        let dir = out.path().join(name);
        let cfg = config(kind, enc.path(), det);
        let m = casetag_engine::train(&cfg, examples(), None, &dir, &|_| {}).unwrap();
        assert_eq!(m.validation_metrics["oos_detector"], "msp", "{name}");
        assert!(!dir.join(FILE).exists(), "{name}");
        let th: Thresholds = serde_json::from_value(m.thresholds.clone()).unwrap();
        assert!(th.oos_detector_cut.is_none(), "{name}");
        let loaded = load_model(&dir).unwrap();
        assert!(loaded.detector.is_none());
        let rows = loaded.scores(&[Transcript::new("[buyer] late")]).unwrap();
        assert!(
            rows[0].logits.len() == 5 && rows[0].detector.is_none(),
            "{name}"
        );
        assert!(th.oos_batch_cut.is_none(), "{name}");
        let mut loaded = loaded;
        let e = loaded.enable_batch_novelty().unwrap_err().to_string();
        assert!(e.contains("--batch-novelty"), "{name}: {e}");
        let e = loaded.enable_stream_novelty(100).unwrap_err().to_string();
        assert!(e.contains("--stream-novelty"), "{name}: {e}");
        assert_eq!(loaded.judging, Judging::PerCase);
    }
}
