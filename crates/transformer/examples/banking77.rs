//! BANKING77 quality check (77 flat intents, no out-of-scope):
//!
//! ```text
//! cargo run --release -p casetag-transformer --example banking77 -- \
//!     [--mode frozen|finetune] [--top-layers N] [--epochs N] [--lr X] [--head-lr X]
//!     [--batch N] [--train-limit N] [--cache DIR] [--dump DIR] [--encoder DIR] [--no-probe]
//! ```
//!
//! Validation is every 10th training row (rows 9, 19, ...): train.csv is
//! sorted by category, so "the last 10%" would hold 8 of the 77 classes and
//! leave 7 classes out of training. `--dump DIR` writes the pooled (normalized)
//! embeddings as .npy for scripts/frozen_reference.py.

use std::path::{Path, PathBuf};
use std::time::Instant;

use casetag_core::LabelSpace;
use casetag_transformer::{fit, Mode, TrainInputs, TransformerParams};

/// Minimal RFC 4180 reader: returns rows of fields (quotes, doubled quotes,
/// commas and newlines inside quotes).
fn read_csv(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (BANKING77 lives in ../shared/data)",
            path.display()
        )
    });
    let mut rows = Vec::new();
    let (mut row, mut field, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) if field.is_empty() => quoted = true,
            (',', false) => row.push(std::mem::take(&mut field)),
            ('\n', false) => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            ('\r', false) => {}
            (c, _) => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

fn load(path: &Path) -> Vec<(String, String)> {
    let rows = read_csv(path);
    assert_eq!(rows[0], ["text", "category"], "{}", path.display());
    rows[1..]
        .iter()
        .filter(|r| r.len() == 2)
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect()
}

/// A 2-d f32 .npy file (format 1.0).
fn write_npy(path: &Path, rows: &[Vec<f32>]) {
    let (n, d) = (rows.len(), rows.first().map_or(0, Vec::len));
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({n}, {d}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for r in rows {
        for x in r {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    std::fs::write(path, out).unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let data = std::env::var("BANKING77_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("../shared/data/banking77"));
    let encoder = arg("--encoder").unwrap_or_else(|| {
        root.join("models/encoders/all-MiniLM-L6-v2")
            .display()
            .to_string()
    });
    let finetune = arg("--mode").as_deref() == Some("finetune");
    let mut p = if finetune {
        TransformerParams::fine_tune()
    } else {
        TransformerParams::default()
    };
    if let (true, Some(n)) = (finetune, arg("--top-layers")) {
        p.mode = Mode::FineTune {
            top_layers: Some(n.parse().unwrap()),
        };
    }
    if let Some(v) = arg("--epochs") {
        p.epochs = v.parse().unwrap();
    }
    if let Some(v) = arg("--lr") {
        p.lr = v.parse().unwrap();
    }
    if let Some(v) = arg("--head-lr") {
        p.head_lr = v.parse().unwrap();
    }
    if let Some(v) = arg("--batch") {
        p.batch_size = v.parse().unwrap();
    }
    if let Some(v) = arg("--patience") {
        p.patience = v.parse().unwrap();
    }
    if let Some(v) = arg("--hidden") {
        p.hidden = Some(v.parse().unwrap());
    }
    if let Some(v) = arg("--max-tokens") {
        p.max_tokens = v.parse().unwrap();
    }
    if std::env::args().any(|a| a == "--no-probe") {
        p.linear_probe = false;
    }
    p.embedding_cache = arg("--cache").map(PathBuf::from);

    let train = load(&data.join("train.csv"));
    let test = load(&data.join("test.csv"));

    // `--embed-bundle BUNDLE --dump DIR`: the embeddings of a trained bundle's
    // encoder (fine-tuned or not) for every train and test row, then exit.
    if let Some(bundle) = arg("--embed-bundle") {
        let dir = PathBuf::from(arg("--dump").expect("--embed-bundle needs --dump DIR"));
        let model = casetag_transformer::TransformerModel::load(Path::new(&bundle), "bundle")
            .unwrap_or_else(|e| panic!("{bundle}: {e}"));
        dump(&model, &train, &test, &dir);
        return;
    }
    let mut classes: Vec<String> = train.iter().map(|r| r.1.clone()).collect();
    classes.sort();
    classes.dedup();
    let class = |c: &str| classes.binary_search_by(|x| x.as_str().cmp(c)).unwrap();
    let mut inputs = TrainInputs::default();
    for (i, (t, c)) in train.iter().enumerate() {
        if i % 10 == 9 {
            inputs.val_texts.push(t.clone());
            inputs.val_targets.push(class(c));
        } else {
            inputs.texts.push(t.clone());
            inputs.targets.push(class(c));
        }
    }
    if let Some(n) = arg("--train-limit") {
        // A spread-out subset (for time estimates).
        let n: usize = n.parse().unwrap();
        let step = (inputs.texts.len() / n.max(1)).max(1);
        let keep: Vec<usize> = (0..inputs.texts.len()).step_by(step).take(n).collect();
        inputs.texts = keep.iter().map(|&i| inputs.texts[i].clone()).collect();
        inputs.targets = keep.iter().map(|&i| inputs.targets[i]).collect();
    }
    let space = LabelSpace {
        n_paths: classes.len(),
        oos_class: false,
    };
    println!(
        "BANKING77: {} classes, {} train, {} val, {} test; params {}",
        classes.len(),
        inputs.texts.len(),
        inputs.val_texts.len(),
        test.len(),
        serde_json::to_string(&p).unwrap()
    );
    let t0 = Instant::now();
    let progress = |s: &str| println!("[{:7.1}s] {s}", t0.elapsed().as_secs_f64());
    if args.iter().any(|a| a == "--sweep") {
        return sweep(&p, &encoder, &inputs, &space, &test, &class);
    }
    let model = fit(&p, &encoder, &inputs, &space, "banking77", &progress).unwrap();
    let fit_s = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let texts: Vec<&str> = test.iter().map(|r| r.0.as_str()).collect();
    let logits = model.logits(&texts).unwrap();
    let infer_s = t1.elapsed().as_secs_f64();
    let correct = logits
        .iter()
        .zip(&test)
        .filter(|(l, r)| {
            let best = l
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0;
            best == class(&r.1)
        })
        .count();
    let s = model.training_summary();
    println!(
        "RESULT mode={} test_accuracy={:.4} ({correct}/{}) val_accuracy={:.4} best_epoch={} \
         epochs_run={} fit_wall_s={fit_s:.1} test_infer_s={infer_s:.1} ({:.0} texts/s)",
        if finetune { "finetune" } else { "frozen" },
        correct as f64 / test.len() as f64,
        test.len(),
        s.val_accuracy.unwrap_or(f64::NAN),
        s.best_epoch,
        s.epochs_run,
        test.len() as f64 / infer_s
    );

    if let Some(dir) = arg("--dump") {
        dump(&model, &train, &test, &PathBuf::from(dir));
    }
}

/// Write the model's pooled (normalized) embeddings of every train and test
/// row, in file order, as `train_emb.npy` and `test_emb.npy` in `dir`.
fn dump(
    model: &casetag_transformer::TransformerModel,
    train: &[(String, String)],
    test: &[(String, String)],
    dir: &Path,
) {
    std::fs::create_dir_all(dir).unwrap();
    let t = Instant::now();
    for (name, rows) in [("train_emb.npy", train), ("test_emb.npy", test)] {
        let texts: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        write_npy(&dir.join(name), &model.embed(&texts).unwrap());
    }
    println!(
        "dumped normalized embeddings to {} ({:.1}s)",
        dir.display(),
        t.elapsed().as_secs_f64()
    );
}

/// Frozen mode: several head settings over the same cached embeddings, each
/// scored on the test set (test embeddings computed once).
fn sweep(
    base: &TransformerParams,
    encoder: &str,
    inputs: &TrainInputs,
    space: &LabelSpace,
    test: &[(String, String)],
    class: &dyn Fn(&str) -> usize,
) {
    let mut base = base.clone();
    if base.embedding_cache.is_none() {
        base.embedding_cache = Some(std::env::temp_dir().join("casetag-embcache"));
    }
    let texts: Vec<&str> = test.iter().map(|r| r.0.as_str()).collect();
    let mut test_emb = None;
    let grid: Vec<(f32, f64, usize, Option<usize>, f64)> = vec![
        (0.1, 3e-3, 8, None, 0.01),
        (0.0, 3e-3, 20, None, 0.01),
        (0.1, 1e-2, 20, None, 0.01),
        (0.0, 1e-2, 20, None, 0.0),
        (0.2, 3e-3, 20, None, 0.01),
        (0.1, 3e-3, 20, Some(512), 0.01),
    ];
    for (dropout, head_lr, patience, hidden, wd) in grid {
        let p = TransformerParams {
            dropout,
            head_lr,
            patience,
            hidden,
            weight_decay: wd,
            epochs: 100,
            ..base.clone()
        };
        let t = Instant::now();
        let m = fit(&p, encoder, inputs, space, "sweep", &|_| {}).unwrap();
        let emb = test_emb.get_or_insert_with(|| m.embed(&texts).unwrap());
        let logits = m.head_logits(emb).unwrap();
        let correct = logits
            .iter()
            .zip(test)
            .filter(|(l, r)| {
                let best = l
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .unwrap()
                    .0;
                best == class(&r.1)
            })
            .count();
        let s = m.training_summary();
        println!(
            "SWEEP dropout={dropout} head_lr={head_lr} patience={patience} hidden={hidden:?} \
             wd={wd}: test_accuracy={:.4} val_accuracy={:.4} best_epoch={} ({:.1}s)",
            correct as f64 / test.len() as f64,
            s.val_accuracy.unwrap_or(f64::NAN),
            s.best_epoch,
            t.elapsed().as_secs_f64()
        );
    }
}
