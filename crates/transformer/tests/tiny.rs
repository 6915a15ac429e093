//! Integration tests on a tiny random BERT built in code (no download).

use std::path::Path;

use casetag_core::{argmax, Classifier, LabelSpace, Transcript};
use casetag_transformer::fixtures::{write_tiny_bert, TINY_HIDDEN};
use casetag_transformer::{
    fit, Encoder, Mode, TrainInputs, TransformerModel, TransformerParams, Truncation,
};

fn tiny_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    write_tiny_bert(d.path(), 7).unwrap();
    d
}

/// Three classes with distinctive words; 2 levels: classes 0 and 1 share an
/// L1 parent, class 2 has its own.
fn data() -> TrainInputs {
    let make = |texts: &[&str], t: usize| -> Vec<(String, usize)> {
        texts.iter().map(|s| (s.to_string(), t)).collect()
    };
    let mut rows = make(
        &[
            "[buyer] i want a refund",
            "[buyer] refund my money please",
            "[buyer] money back refund",
            "[buyer] please refund the order",
            "[agent] hello\n[buyer] i want my money back",
            "[buyer] refund refund",
        ],
        0,
    );
    rows.extend(make(
        &[
            "[buyer] the item arrived broken",
            "[buyer] broken package",
            "[buyer] damaged item broken",
            "[buyer] my parcel was damaged",
            "[agent] hello\n[buyer] the item is broken",
            "[buyer] damaged damaged",
        ],
        1,
    ));
    rows.extend(make(
        &[
            "[buyer] where is my parcel",
            "[buyer] delivery is late",
            "[buyer] still waiting for delivery",
            "[buyer] tracking says lost",
            "[agent] hello\n[buyer] where is my package",
            "[buyer] late late delivery",
        ],
        2,
    ));
    let val = [
        ("[buyer] refund please".to_string(), 0),
        ("[buyer] it arrived damaged".to_string(), 1),
        ("[buyer] where is the delivery".to_string(), 2),
    ];
    TrainInputs {
        texts: rows.iter().map(|r| r.0.clone()).collect(),
        targets: rows.iter().map(|r| r.1).collect(),
        val_texts: val.iter().map(|r| r.0.clone()).collect(),
        val_targets: val.iter().map(|r| r.1).collect(),
        level_maps: vec![vec![0, 0, 1]],
    }
}

fn space() -> LabelSpace {
    LabelSpace {
        n_paths: 3,
        oos_class: false,
    }
}

fn frozen_params() -> TransformerParams {
    TransformerParams {
        epochs: 80,
        batch_size: 4,
        head_lr: 3e-2,
        patience: 0,
        hidden: Some(32),
        dropout: 0.0,
        seed: 11,
        ..Default::default()
    }
}

fn train(dir: &Path, p: &TransformerParams) -> TransformerModel {
    fit(p, dir.to_str().unwrap(), &data(), &space(), "m1", &|_| {}).unwrap()
}

/// [`train`], with the progress lines the fit wrote.
fn train_logged(dir: &Path, p: &TransformerParams) -> (TransformerModel, Vec<String>) {
    let lines = std::cell::RefCell::new(Vec::new());
    let m = fit(p, dir.to_str().unwrap(), &data(), &space(), "m1", &|s| {
        lines.borrow_mut().push(s.to_string())
    })
    .unwrap();
    (m, lines.into_inner())
}

#[test]
fn frozen_fit_learns_training_data_with_right_shapes() {
    let d = tiny_dir();
    let lines = std::cell::RefCell::new(Vec::<String>::new());
    // No validation set: the last epoch is kept (with one, the best
    // validation epoch would be, which may not fit the training set yet).
    let no_val = TrainInputs {
        val_texts: vec![],
        val_targets: vec![],
        ..data()
    };
    let m = fit(
        &frozen_params(),
        d.path().to_str().unwrap(),
        &no_val,
        &space(),
        "m1",
        &|s| lines.borrow_mut().push(s.to_string()),
    )
    .unwrap();
    let lines = lines.into_inner();
    assert!(
        lines.iter().any(|l| l.starts_with("epoch 1/80: loss")),
        "{lines:?}"
    );
    let inputs = data();
    let texts: Vec<&str> = inputs.texts.iter().map(String::as_str).collect();
    let logits = m.logits(&texts).unwrap();
    assert_eq!(logits.len(), texts.len());
    assert!(logits.iter().all(|r| r.len() == 3));
    let correct = logits
        .iter()
        .zip(&inputs.targets)
        .filter(|(l, &t)| argmax(l) == t)
        .count();
    assert_eq!(
        correct,
        texts.len(),
        "train accuracy {correct}/{}",
        texts.len()
    );
    let emb = m.embed(&texts[..2]).unwrap();
    assert_eq!(emb[0].len(), TINY_HIDDEN);
    // Normalized by default.
    let n: f32 = emb[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((n - 1.0).abs() < 1e-4);
    // Trait surface.
    assert_eq!(m.kind(), "transformer");
    assert_eq!(m.id(), "m1");
    assert!(m.predict(&[]).unwrap().is_empty());
    let out = m
        .predict(&[Transcript::new(""), Transcript::new("refund")])
        .unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].logits.len(), 3);
    let s = m.training_summary();
    assert_eq!((s.epochs_run, s.best_epoch), (80, 80));
    assert!(s.val_accuracy.is_none());
}

#[test]
fn same_input_same_logits_and_same_seed_same_model() {
    let d = tiny_dir();
    let p = TransformerParams {
        epochs: 5,
        ..frozen_params()
    };
    let a = train(d.path(), &p);
    let b = train(d.path(), &p);
    let texts = ["[buyer] refund please", "where is my parcel", "x"];
    let la = a.logits(&texts).unwrap();
    assert_eq!(la, a.logits(&texts).unwrap(), "inference is deterministic");
    assert_eq!(la, b.logits(&texts).unwrap(), "training is repeatable");
    let c = train(d.path(), &TransformerParams { seed: 12, ..p });
    assert_ne!(la, c.logits(&texts).unwrap(), "the seed matters");
}

#[test]
fn batch_order_and_padding_do_not_change_results() {
    let d = tiny_dir();
    let m = train(
        d.path(),
        &TransformerParams {
            epochs: 2,
            infer_batch_size: 2,
            ..frozen_params()
        },
    );
    let texts = [
        "a much longer text about a refund for a broken item that arrived late",
        "refund",
        "where is my parcel",
        "hello",
        "damaged",
    ];
    let all = m.logits(&texts).unwrap();
    for (i, t) in texts.iter().enumerate() {
        let one = m.logits(&[t]).unwrap();
        for (x, y) in one[0].iter().zip(&all[i]) {
            assert!((x - y).abs() < 1e-4, "row {i}: {x} vs {y}");
        }
    }
}

#[test]
fn save_load_round_trip_gives_identical_logits() {
    let d = tiny_dir();
    let m = train(
        d.path(),
        &TransformerParams {
            epochs: 3,
            ..frozen_params()
        },
    );
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("model");
    m.save(&dir).unwrap();
    for f in [
        "head.safetensors",
        "encoder.safetensors",
        "tokenizer.json",
        "encoder_config.json",
        "transformer.json",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    // Self-contained: the source encoder can go away.
    drop(d);
    let l = TransformerModel::load(&dir, "renamed").unwrap();
    assert_eq!(l.id(), "renamed");
    // The frozen fit's training embeddings are kept in memory, not saved.
    let rows = [4usize, 0, 9];
    let kept = m
        .training_embeddings(&rows)
        .unwrap()
        .expect("frozen fit keeps them");
    let texts_in = data().texts;
    let picked: Vec<&str> = rows.iter().map(|&r| texts_in[r].as_str()).collect();
    let again = m.embed(&picked).unwrap().concat();
    assert_eq!(kept.len(), again.len());
    assert!(kept.iter().zip(&again).all(|(a, b)| (a - b).abs() < 1e-5));
    assert!(m.training_embeddings(&[10_000]).is_err());
    assert!(l.training_embeddings(&rows).unwrap().is_none());
    let texts = ["[buyer] i want a refund", "late delivery", ""];
    assert_eq!(m.logits(&texts).unwrap(), l.logits(&texts).unwrap());
    assert_eq!(l.info().label_space, space());
    // Saving again into the same directory keeps it intact.
    l.save(&dir).unwrap();
    let l2 = TransformerModel::load(&dir, "again").unwrap();
    assert_eq!(l2.logits(&texts).unwrap(), l.logits(&texts).unwrap());

    // Errors are one line and name the file.
    std::fs::remove_file(dir.join("head.safetensors")).unwrap();
    let e = TransformerModel::load(&dir, "x").err().unwrap().to_string();
    assert!(e.contains("missing head.safetensors"), "{e}");
    assert_eq!(e.lines().count(), 1);
    std::fs::write(dir.join("transformer.json"), "{").unwrap();
    let e = TransformerModel::load(&dir, "x").err().unwrap().to_string();
    assert!(e.contains("transformer.json: corrupt"), "{e}");
}

#[test]
fn fine_tune_top_layer_learns_and_leaves_lower_layers_alone() {
    let d = tiny_dir();
    let p = TransformerParams {
        mode: Mode::FineTune {
            top_layers: Some(1),
        },
        epochs: 30,
        lr: 3e-3,
        head_lr: 3e-2,
        batch_size: 6,
        patience: 0,
        dropout: 0.0,
        ..frozen_params()
    };
    let m = train(d.path(), &p);
    assert!(m.info().fine_tuned);
    let inputs = data();
    let texts: Vec<&str> = inputs.texts.iter().map(String::as_str).collect();
    let logits = m.logits(&texts).unwrap();
    let correct = logits
        .iter()
        .zip(&inputs.targets)
        .filter(|(l, &t)| argmax(l) == t)
        .count();
    assert_eq!(correct, texts.len());
    // It keeps its trained embeddings of the training texts (from the
    // states stored below the trained layer), as its own forward gives them.
    let rows: Vec<usize> = (0..texts.len()).rev().collect();
    let kept = m
        .training_embeddings(&rows)
        .unwrap()
        .expect("a fine-tuned fit at f32 keeps them");
    let picked: Vec<&str> = rows.iter().map(|&r| texts[r]).collect();
    let again = m.embed(&picked).unwrap().concat();
    assert_eq!(kept.len(), again.len());
    assert!(kept.iter().zip(&again).all(|(a, b)| (a - b).abs() < 1e-5));

    let out = tempfile::tempdir().unwrap();
    m.save(out.path()).unwrap();
    let orig = candle_core::safetensors::load(
        d.path().join("model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let tuned = candle_core::safetensors::load(
        out.path().join("encoder.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let diff = |name: &str| {
        let a = orig[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = tuned[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    assert_eq!(diff("encoder.layer.0.attention.self.query.weight"), 0.0);
    assert_eq!(diff("embeddings.position_embeddings.weight"), 0.0);
    assert!(diff("encoder.layer.1.attention.self.query.weight") > 0.0);
    assert!(diff("encoder.layer.1.output.dense.weight") > 0.0);
    // And the fine-tuned bundle loads back with the same outputs.
    let l = TransformerModel::load(out.path(), "m1").unwrap();
    let a = m.logits(&texts[..3]).unwrap();
    let b = l.logits(&texts[..3]).unwrap();
    for (x, y) in a.concat().iter().zip(b.concat()) {
        assert!((x - y).abs() < 1e-5);
    }
    // The fitted model reads the validation embeddings its fit kept, alone
    // or among other texts, in any order: what the loaded bundle (which
    // keeps none) computes.
    let val: Vec<&str> = inputs.val_texts.iter().map(String::as_str).collect();
    let mixed = [
        val[2],
        texts[0],
        val[0],
        "[buyer] a text never seen",
        val[1],
    ];
    for t in [&mixed[..], &val[..]] {
        let (a, b) = (m.logits(t).unwrap(), l.logits(t).unwrap());
        assert_eq!(a.len(), t.len());
        for (x, y) in a.concat().iter().zip(b.concat()) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
    }
}

/// Fine-tuning of the top layer that leaves the weights where they start
/// (learning rates of 1e-12): the model is what its linear probe gives.
fn probe_only_params() -> TransformerParams {
    TransformerParams {
        mode: Mode::FineTune {
            top_layers: Some(1),
        },
        epochs: 1,
        lr: 1e-12,
        head_lr: 1e-12,
        batch_size: 6,
        dropout: 0.0,
        ..frozen_params()
    }
}

/// LP-FT: with learning rates too small to move anything during the
/// fine-tuning epoch, what the model knows comes from the linear probe.
#[test]
fn linear_probe_initializes_the_fine_tuned_head() {
    let d = tiny_dir();
    let base = probe_only_params();
    let accuracy = |m: &TransformerModel| {
        let inputs = data();
        let texts: Vec<&str> = inputs.texts.iter().map(String::as_str).collect();
        let logits = m.logits(&texts).unwrap();
        logits
            .iter()
            .zip(&inputs.targets)
            .filter(|(l, &t)| argmax(l) == t)
            .count() as f64
            / texts.len() as f64
    };
    let probed = train(
        d.path(),
        &TransformerParams {
            linear_probe: true,
            ..base.clone()
        },
    );
    let cold = train(
        d.path(),
        &TransformerParams {
            linear_probe: false,
            ..base
        },
    );
    let (a, b) = (accuracy(&probed), accuracy(&cold));
    assert!(a >= 0.9, "probed head fits the training data: {a}");
    assert!(a > b, "probe {a} vs random head {b}");
}

/// A fine-tuning run stores the states below its trained layers; its
/// linear probe and its validation passes run only the layers above them.
/// Both must see what the full forward gives.
#[test]
fn probe_and_validation_from_stored_states_match_the_full_forward() {
    let d = tiny_dir();
    let cache = tempfile::tempdir().unwrap();
    let p = TransformerParams {
        linear_probe: true,
        ..probe_only_params()
    };
    let run = |p: &TransformerParams| {
        let (m, lines) = train_logged(d.path(), p);
        let from_states = lines
            .iter()
            .any(|l| l.contains("probe: embeddings from the stored states"));
        (m, from_states)
    };
    let (states, used) = run(&p);
    assert!(used, "the probe embeds from the stored states");
    // With a cache the probe embeds every text through the whole encoder.
    let (full, used) = run(&TransformerParams {
        embedding_cache: Some(cache.path().to_path_buf()),
        ..p.clone()
    });
    assert!(!used);
    let t = ["refund please", "where is my parcel", "broken item"];
    let (a, b) = (states.logits(&t).unwrap(), full.logits(&t).unwrap());
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        assert!((x - y).abs() < 1e-4, "{x} vs {y}");
    }
    // The validation loss the fit recorded (from the stored states) is
    // the trained model's own on the validation texts (the saved bundle's,
    // which computes them: the fitted model reads the embeddings it kept).
    let inputs = data();
    let val: Vec<&str> = inputs.val_texts.iter().map(String::as_str).collect();
    let out = tempfile::tempdir().unwrap();
    states.save(out.path()).unwrap();
    let loaded = TransformerModel::load(out.path(), "m1").unwrap();
    let logits = loaded.logits(&val).unwrap();
    let nll = logits
        .iter()
        .zip(&inputs.val_targets)
        .map(|(l, &t)| -(casetag_core::softmax(l, 1.0)[t] as f64).ln())
        .sum::<f64>()
        / val.len() as f64;
    let recorded = states.info().train.val_loss.unwrap();
    assert!((nll - recorded).abs() < 1e-4, "{nll} vs {recorded}");
}

#[test]
fn fine_tune_all_layers_runs_and_is_repeatable() {
    let d = tiny_dir();
    let p = TransformerParams {
        mode: Mode::FineTune { top_layers: None },
        epochs: 2,
        lr: 1e-3,
        batch_size: 5,
        dropout: 0.1,
        ..frozen_params()
    };
    let a = train(d.path(), &p);
    let b = train(d.path(), &p);
    let t = ["refund please", "broken"];
    assert_eq!(a.logits(&t).unwrap(), b.logits(&t).unwrap());
    // The encoder moved: no stale frozen embeddings are offered.
    assert!(a.training_embeddings(&[0]).unwrap().is_none());
}

#[test]
fn truncation_strategies() {
    let d = tiny_dir();
    let e = Encoder::load(d.path().to_str().unwrap(), &candle_core::Device::Cpu).unwrap();
    let tok = |t: &str| -> Vec<u32> {
        e.tokenize(&[t], 64, Truncation::Head).unwrap()[0][1..]
            .split_last()
            .unwrap()
            .1
            .to_vec()
    };
    let long = "refund ".repeat(20) + &"late ".repeat(20);
    let (refund, late) = (tok("refund")[0], tok("late")[0]);
    let cls_sep = |v: &[u32]| (v[0], v[v.len() - 1]);
    let head = &e.tokenize(&[&long], 8, Truncation::Head).unwrap()[0];
    assert_eq!(head.len(), 8);
    assert_eq!(
        cls_sep(head),
        cls_sep(&e.tokenize(&["x"], 8, Truncation::Head).unwrap()[0])
    );
    assert!(head[1..7].iter().all(|&t| t == refund));
    let ht = &e.tokenize(&[&long], 8, Truncation::HeadTail).unwrap()[0];
    assert_eq!(ht.len(), 8);
    // Budget 6: 2 from the head, 4 from the tail.
    assert_eq!(&ht[1..7], &[refund, refund, late, late, late, late]);
    let chat = "[agent] late late late late\n[buyer] refund";
    let bf = &e.tokenize(&[chat], 6, Truncation::BuyerFirst).unwrap()[0];
    assert!(bf.contains(&refund));
    let h = &e.tokenize(&[chat], 6, Truncation::Head).unwrap()[0];
    assert!(!h.contains(&refund));
    // max_tokens is capped at the encoder's positions (64 in the fixture).
    let huge = "refund ".repeat(500);
    assert_eq!(
        e.tokenize(&[&huge], 4096, Truncation::Head).unwrap()[0].len(),
        64
    );
}

#[test]
fn bad_inputs_and_encoders_give_one_line_errors() {
    let d = tiny_dir();
    let spec = d.path().to_str().unwrap();
    let mut bad = data();
    bad.targets[0] = 9;
    let e = fit(&frozen_params(), spec, &bad, &space(), "m", &|_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("outside the label space"), "{e}");
    let mut bad = data();
    bad.level_maps = vec![vec![0, 1]];
    let e = fit(&frozen_params(), spec, &bad, &space(), "m", &|_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("level_maps[0]"), "{e}");
    let p = TransformerParams {
        mode: Mode::FineTune {
            top_layers: Some(5),
        },
        ..frozen_params()
    };
    let e = fit(&p, spec, &data(), &space(), "m", &|_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("top_layers 5 exceeds"), "{e}");

    let dev = candle_core::Device::Cpu;
    let e = Encoder::load("/nonexistent/enc", &dev)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("fetch_encoder.sh"), "{e}");
    std::fs::remove_file(d.path().join("tokenizer.json")).unwrap();
    let e = Encoder::load(spec, &dev).err().unwrap().to_string();
    assert!(e.contains("missing tokenizer.json"), "{e}");
    write_tiny_bert(d.path(), 7).unwrap();
    let cfg = d.path().join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("\"bert\"", "\"deberta-v2\"")).unwrap();
    let e = Encoder::load(spec, &dev).err().unwrap().to_string();
    assert!(
        e.contains("model_type 'deberta-v2' is not supported"),
        "{e}"
    );
    std::fs::write(
        &cfg,
        text.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3"),
    )
    .unwrap();
    let e = Encoder::load(spec, &dev).err().unwrap().to_string();
    assert!(e.contains("missing tensor 'encoder.layer.2"), "{e}");
    std::fs::write(&cfg, "{}").unwrap();
    let e = Encoder::load(spec, &dev).err().unwrap().to_string();
    assert!(e.contains("not a BERT config"), "{e}");
    assert_eq!(e.lines().count(), 1);
}

#[test]
fn embedding_cache_gives_the_same_model() {
    let d = tiny_dir();
    let cache = tempfile::tempdir().unwrap();
    let p = TransformerParams {
        epochs: 3,
        embedding_cache: Some(cache.path().to_path_buf()),
        ..frozen_params()
    };
    let plain = train(
        d.path(),
        &TransformerParams {
            embedding_cache: None,
            ..p.clone()
        },
    );
    let first = train(d.path(), &p);
    let (second, lines) = train_logged(d.path(), &p);
    assert!(
        lines.iter().any(|l| l.contains("18 from the cache")),
        "{lines:?}"
    );
    let t = ["refund", "where is my parcel"];
    assert_eq!(plain.logits(&t).unwrap(), first.logits(&t).unwrap());
    assert_eq!(first.logits(&t).unwrap(), second.logits(&t).unwrap());
}

/// Whether saving `m` writes an int8 calibration or int8 layers file.
fn bundle_has_int8_files(m: &TransformerModel) -> bool {
    let out = tempfile::tempdir().unwrap();
    m.save(out.path()).unwrap();
    [
        casetag_transformer::CALIBRATION_FILE,
        casetag_transformer::INT8_LAYERS_FILE,
    ]
    .iter()
    .any(|f| out.path().join(f).exists())
}

#[test]
fn int8_bundles_record_their_precision_and_stay_close_to_fp32() {
    use casetag_transformer::Precision;
    let d = tiny_dir();
    let p = TransformerParams {
        epochs: 3,
        ..frozen_params()
    };
    let f = train(d.path(), &p);
    let q = train(
        d.path(),
        &TransformerParams {
            precision: Precision::Int8,
            ..p
        },
    );
    assert_eq!(q.params().precision, Precision::Int8);
    let texts = [
        "[buyer] i want a refund for my order",
        "late delivery, where is my parcel",
        "the item arrived broken",
    ];
    let (ef, eq) = (f.embed(&texts).unwrap(), q.embed(&texts).unwrap());
    for (a, b) in ef.iter().zip(&eq) {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cos = dot / (na * nb);
        assert!(cos > 0.99, "int8 embedding cosine {cos} to fp32");
        assert!(
            a != b,
            "int8 gave the fp32 embedding: the int8 path did not run"
        );
    }
    // The precision travels with the bundle: a reload answers as the trained model.
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("model");
    q.save(&dir).unwrap();
    let l = TransformerModel::load(&dir, "q").unwrap();
    assert_eq!(l.params().precision, Precision::Int8);
    assert_eq!(l.logits(&texts).unwrap(), q.logits(&texts).unwrap());
    // It keeps what calibrating made, and a load runs that instead of
    // calibrating again: the same codes as calibrating here...
    let layers = dir.join(casetag_transformer::INT8_LAYERS_FILE);
    let kept = std::fs::read(&layers).unwrap();
    std::fs::remove_file(&layers).unwrap();
    let again = TransformerModel::load(&dir, "again").unwrap();
    assert_eq!(again.logits(&texts).unwrap(), q.logits(&texts).unwrap());
    again.save(&dir).unwrap();
    assert_eq!(std::fs::read(&layers).unwrap(), kept);
    // ...and the file is what runs: other steps answer otherwise, and
    // codes of another shape are refused, naming the file and the layer.
    let dev = candle_core::Device::Cpu;
    let mut ts = candle_core::safetensors::load(&layers, &dev).unwrap();
    let steps = ts["layer.0.ffn_out.steps"].clone();
    ts.insert("layer.0.ffn_out.steps".into(), (steps * 1.5).unwrap());
    candle_core::safetensors::save(&ts, &layers).unwrap();
    let other = TransformerModel::load(&dir, "other").unwrap();
    assert_ne!(other.logits(&texts).unwrap(), q.logits(&texts).unwrap());
    // Each edit of the kept file below is refused in one line that names
    // what does not fit.
    let refused = |edit: &dyn Fn(&mut std::collections::HashMap<String, candle_core::Tensor>)| {
        std::fs::write(&layers, &kept).unwrap();
        let mut ts = candle_core::safetensors::load(&layers, &dev).unwrap();
        edit(&mut ts);
        candle_core::safetensors::save(&ts, &layers).unwrap();
        let e = TransformerModel::load(&dir, "bad")
            .err()
            .unwrap()
            .to_string();
        assert_eq!(e.lines().count(), 1, "{e}");
        e
    };
    let e = refused(&|ts| {
        let codes = ts["layer.1.output.codes"].narrow(1, 0, 8).unwrap();
        ts.insert("layer.1.output.codes".into(), codes);
    });
    assert!(
        e.contains("int8_layers.safetensors: layer 1 output: codes of"),
        "{e}"
    );
    // Codes without the smoothing they were made with.
    let e = refused(&|ts| {
        ts.remove("layer.0.qkv_smooth").unwrap();
    });
    assert!(e.contains("layer 0 qkv: smoothing does not fit"), "{e}");
    // A layer the encoder does not have.
    let e = refused(&|ts| {
        let extra = ts["layer.0.qkv.steps"].clone();
        ts.insert("layer.9.qkv.steps".into(), extra);
    });
    assert!(
        e.contains("unexpected tensor 'layer.9.qkv.steps' for an encoder of"),
        "{e}"
    );
    // The int8 forward is calibrated on training texts the bundle keeps;
    // without them (an older bundle, which has neither file) it calibrates
    // on pseudo-random ids and rounds to the nearest step, which answers
    // differently.
    std::fs::remove_file(&layers).unwrap();
    let cal = dir.join(casetag_transformer::CALIBRATION_FILE);
    let ids: Vec<Vec<u32>> = serde_json::from_str(&std::fs::read_to_string(&cal).unwrap()).unwrap();
    assert!(!ids.is_empty() && ids.iter().all(|s| !s.is_empty()));
    std::fs::remove_file(&cal).unwrap();
    let old = TransformerModel::load(&dir, "old").unwrap();
    assert_ne!(old.logits(&texts).unwrap(), q.logits(&texts).unwrap());
    assert!(!bundle_has_int8_files(&f));
    // Quantized after training: the same head as the fp32 bundle's.
    let fdir = out.path().join("f32");
    f.save(&fdir).unwrap();
    assert_eq!(
        std::fs::read(fdir.join("head.safetensors")).unwrap(),
        std::fs::read(dir.join("head.safetensors")).unwrap()
    );
    assert!(["amx", "avx512vnni", "avx2", "scalar"].contains(&casetag_transformer::int8_kernel()));
}
