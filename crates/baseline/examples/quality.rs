//! Quality, speed and memory measurements of the baseline on real or
//! realistic data; they read files outside the repository and take minutes,
//! so they are an example, not tests:
//!
//! ```text
//! cargo run --release -p casetag-baseline --example quality -- [banking77|aftersales|speed|memory|all]
//! ```
//!
//! * `banking77`: fit on BANKING77's train split, accuracy on its test split
//!   (`$CASETAG_SHARED_DATA/banking77`, by default `../shared/data/banking77`);
//!   exits 1 below 0.85.
//! * `aftersales`: the same on the bundled `data/aftersales` (full-path classes;
//!   `BL_DATA=DIR` reads `DIR/train.csv` and `DIR/test.csv` instead).
//! * `speed`: inference rate on 100,000 synthetic ~400-character cases.
//! * `memory`: peak memory of a fit on 200,000 synthetic cases
//!   (`BL_ITERS` solver iterations, 3 by default).
//!
//! `BL_K`, `BL_ALPHA`, `BL_ITERS` and `BL_BITS` override the fit's parameters
//! for `banking77` and `aftersales`. Results: benches/README.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use casetag_baseline::{fit, BaselineParams};
use casetag_core::{Classifier, LabelSpace, Transcript};

/// Minimal RFC 4180 reader: quoted fields, doubled quotes, newlines in quotes.
fn read_csv(path: &Path) -> Vec<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut records: Vec<Vec<String>> = Vec::new();
    let (mut rec, mut field) = (Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => rec.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                rec.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut rec));
            }
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !rec.is_empty() {
        rec.push(field);
        records.push(rec);
    }
    let header = records.remove(0);
    records
        .into_iter()
        .filter(|r| r.len() == header.len())
        .map(|r| header.iter().cloned().zip(r).collect())
        .collect()
}

fn shared_data() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::env::var("CASETAG_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("../shared/data"))
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn params_from_env() -> BaselineParams {
    let mut p = BaselineParams::default();
    let var = |k: &str| std::env::var(k).ok();
    if let Some(v) = var("BL_K") {
        p.n_features = v.parse().unwrap();
    }
    if let Some(v) = var("BL_ALPHA") {
        p.alpha = v.parse().unwrap();
    }
    if let Some(v) = var("BL_ITERS") {
        p.max_iterations = v.parse().unwrap();
    }
    if let Some(v) = var("BL_BITS") {
        p.hash_bits = v.parse().unwrap();
    }
    p
}

/// Fit on `train`, report accuracy on `test`. Returns the accuracy.
fn run(name: &str, train: &[(String, usize)], test: &[(String, usize)], n_classes: usize) -> f64 {
    let params = params_from_env();
    let space = LabelSpace {
        n_paths: n_classes,
        oos_class: false,
    };
    let texts: Vec<&str> = train.iter().map(|r| r.0.as_str()).collect();
    let y: Vec<usize> = train.iter().map(|r| r.1).collect();
    let t = Instant::now();
    let model = fit(&params, &texts, &y, &space, name, &|m| eprintln!("{m}")).unwrap();
    let fit_s = t.elapsed().as_secs_f64();
    let cases: Vec<Transcript> = test.iter().map(|r| Transcript::new(r.0.clone())).collect();
    let t = Instant::now();
    let scores = model.predict(&cases).unwrap();
    let pred_s = t.elapsed().as_secs_f64();
    let correct = scores
        .iter()
        .zip(test)
        .filter(|(s, r)| {
            let best = (0..s.logits.len())
                .max_by(|&a, &b| s.logits[a].total_cmp(&s.logits[b]))
                .unwrap();
            best == r.1
        })
        .count();
    let acc = correct as f64 / test.len() as f64;
    // Accuracy on the training rows themselves: far below 1 means underfit.
    let train_cases: Vec<Transcript> = train.iter().map(|r| Transcript::new(r.0.clone())).collect();
    let train_acc = model
        .predict(&train_cases)
        .unwrap()
        .iter()
        .zip(train)
        .filter(|(s, r)| {
            (0..s.logits.len())
                .max_by(|&a, &b| s.logits[a].total_cmp(&s.logits[b]))
                .unwrap()
                == r.1
        })
        .count() as f64
        / train.len().max(1) as f64;
    println!(
        "{name}: params {params:?}\n{name}: train {} test {} classes {n_classes} inputs {} -> \
         accuracy {acc:.4} (training rows {train_acc:.4}), fit {fit_s:.1}s, predict {:.0} cases/s, peak RSS {:.0} MiB",
        train.len(),
        test.len(),
        model.n_inputs(),
        test.len() as f64 / pred_s,
        peak_rss_mib()
    );
    acc
}

fn banking77_accuracy() {
    let dir = shared_data().join("banking77");
    let (train, test) = (
        read_csv(&dir.join("train.csv")),
        read_csv(&dir.join("test.csv")),
    );
    let mut classes: Vec<&str> = train.iter().map(|r| r["category"].as_str()).collect();
    classes.sort_unstable();
    classes.dedup();
    let index = |r: &BTreeMap<String, String>| {
        let c = classes.binary_search(&r["category"].as_str()).unwrap();
        (r["text"].clone(), c)
    };
    let train: Vec<_> = train.iter().map(index).collect();
    let test: Vec<_> = test.iter().map(index).collect();
    assert_eq!(classes.len(), 77);
    let acc = run("banking77", &train, &test, classes.len());
    // scikit-learn reference (word 1-2 + char_wb 2-5 TF-IDF, sublinear,
    // LogisticRegression C=10) scores 0.9140 on this split.
    if acc <= 0.85 {
        eprintln!("banking77: accuracy {acc:.4} is not above the 0.85 floor");
        std::process::exit(1);
    }
}

fn aftersales_accuracy() {
    let dir = std::env::var_os("BL_DATA").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/aftersales"),
        PathBuf::from,
    );
    let train = read_csv(&dir.join("train.csv"));
    let test_path = ["test.csv", "val.csv"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.exists())
        .expect("data/aftersales has no test.csv or val.csv");
    let test = read_csv(&test_path);
    let path = |r: &BTreeMap<String, String>| {
        let g = |k: &str| r.get(k).map(|s| s.trim().to_string()).unwrap_or_default();
        (g("l1"), g("l2"), g("l3"))
    };
    // Leaf paths seen in training (in-scope rows only) are the classes.
    let mut paths: Vec<_> = train.iter().map(path).filter(|p| !p.0.is_empty()).collect();
    paths.sort();
    paths.dedup();
    let rows = |rs: &[BTreeMap<String, String>]| -> Vec<(String, usize)> {
        rs.iter()
            .filter_map(|r| Some((r["text"].clone(), paths.binary_search(&path(r)).ok()?)))
            .collect()
    };
    let (train, test) = (rows(&train), rows(&test));
    run("aftersales", &train, &test, paths.len());
}

/// Deterministic aftersales-like transcripts of roughly `len` characters.
fn synthetic_cases(n: usize, len: usize, n_classes: usize) -> Vec<(String, usize)> {
    const WORDS: &[&str] = &[
        "buyer:",
        "seller:",
        "agent:",
        "order",
        "<ORDER_ID>",
        "refund",
        "return",
        "parcel",
        "tracking",
        "courier",
        "damaged",
        "missing",
        "wrong",
        "size",
        "color",
        "cancel",
        "please",
        "hello",
        "thanks",
        "label",
        "pickup",
        "dispute",
        "appeal",
        "compensation",
        "the",
        "my",
        "is",
        "not",
        "arrived",
        "yet",
        "since",
        "days",
        "item",
        "photo",
        "evidence",
        "address",
        "<PHONE>",
        "review",
        "rating",
        "package",
        "broken",
        "late",
        "store",
        "credit",
        "voucher",
        "exchange",
        "replacement",
        "warranty",
        "charged",
        "twice",
    ];
    // Syllables make a large open vocabulary (names, typos, product words),
    // so the number of distinct n-grams is realistic, not 50 words' worth.
    const SYL: &[&str] = &[
        "ka", "lo", "mi", "sen", "tra", "vo", "pel", "dux", "ri", "an", "zo", "qui", "ber", "nu",
        "sta", "fo", "gli", "mar", "tes", "wy",
    ];
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = move || casetag_core::xorshift64(&mut state);
    (0..n)
        .map(|_| {
            let c = (next() % n_classes as u64) as usize;
            let mut s = String::with_capacity(len + 16);
            while s.len() < len {
                // Class-dependent vocabulary slice plus shared noise.
                match next() % 4 {
                    0 => s.push_str(WORDS[(c * 7 + (next() % 5) as usize) % WORDS.len()]),
                    1 => {
                        for _ in 0..3 {
                            s.push_str(SYL[(next() % SYL.len() as u64) as usize]);
                        }
                    }
                    _ => s.push_str(WORDS[(next() % WORDS.len() as u64) as usize]),
                }
                s.push(' ');
            }
            (s, c)
        })
        .collect()
}

fn inference_speed() {
    let n_classes = 120;
    let train = synthetic_cases(5_000, 400, n_classes);
    let space = LabelSpace {
        n_paths: n_classes,
        oos_class: true,
    };
    let texts: Vec<&str> = train.iter().map(|r| r.0.as_str()).collect();
    let y: Vec<usize> = train.iter().map(|r| r.1).collect();
    let params = BaselineParams {
        max_iterations: 20,
        ..Default::default()
    };
    let model = fit(&params, &texts, &y, &space, "speed", &|_| {}).unwrap();
    let cases: Vec<Transcript> = synthetic_cases(100_000, 400, n_classes)
        .into_iter()
        .map(|r| Transcript::new(r.0))
        .collect();
    let _ = model.predict(&cases[..1000]).unwrap();
    let t = Instant::now();
    let out = model.predict(&cases).unwrap();
    let s = t.elapsed().as_secs_f64();
    assert_eq!(out.len(), cases.len());
    let avg_len = cases.iter().map(|c| c.text.len()).sum::<usize>() / cases.len();
    println!(
        "inference: {} cases of ~{avg_len} chars, {} outputs, {} threads: {:.0} cases/s",
        cases.len(),
        space.n_outputs(),
        rayon::current_num_threads(),
        cases.len() as f64 / s
    );
}

fn memory_200k() {
    let n_classes = 120;
    let train = synthetic_cases(200_000, 400, n_classes);
    let space = LabelSpace {
        n_paths: n_classes,
        oos_class: true,
    };
    let texts: Vec<&str> = train.iter().map(|r| r.0.as_str()).collect();
    let y: Vec<usize> = train.iter().map(|r| r.1).collect();
    let before = peak_rss_mib();
    let params = BaselineParams {
        max_iterations: std::env::var("BL_ITERS").map_or(3, |v| v.parse().unwrap()),
        ..Default::default()
    };
    let t = Instant::now();
    let _model = fit(&params, &texts, &y, &space, "mem", &|m| eprintln!("{m}")).unwrap();
    println!(
        "memory: 200k rows, {} iterations: fit {:.1}s, peak RSS {:.0} MiB (data alone {before:.0} MiB)",
        params.max_iterations,
        t.elapsed().as_secs_f64(),
        peak_rss_mib()
    );
}

fn main() {
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let all = what == "all";
    let mut ran = false;
    for (name, run) in [
        ("banking77", banking77_accuracy as fn()),
        ("aftersales", aftersales_accuracy),
        ("speed", inference_speed),
        ("memory", memory_200k),
    ] {
        if all || what == name {
            run();
            ran = true;
        }
    }
    if !ran {
        eprintln!("quality: unknown measurement '{what}'; use banking77, aftersales, speed, memory or all");
        std::process::exit(2);
    }
}
