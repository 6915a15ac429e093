//! End-to-end tagging of 1,000 cases from `data/aftersales/test.csv`: text
//! cleaning (NFKC, PII masking), the model, and the decision layer (back-off,
//! out of scope, actions), exactly what `casetag tag` does per chunk.
//!
//! Models: the quickstart bundles (`bash scripts/quickstart.sh` writes
//! `out/quickstart/models/{baseline,transformer}`), or the directory in
//! `CASETAG_BENCH_MODELS`; a missing bundle is skipped with a note.
//! Run: `cargo bench --bench tagging`. `detect_lang/*`: the language
//! detector alone on 1,000 cases of each bundled split.
//!
//! `oos_detector`: the learned out-of-scope detector's cost on top of the
//! transformer (features over its nearest-neighbour memory plus the linear
//! rule), on the BANKING77 hold-out bundle named by `CASETAG_BENCH_DETECTOR`
//! (default `out/banking77_oos/meta_0.02_p0`, trained as in
//! docs/research/out-of-scope.md), skipped when absent.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use casetag_core::Transcript;
use casetag_data::{chunk_texts, ChunkReader};
use casetag_engine::tagger::load_model;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const N: usize = 1000;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn models_dir() -> PathBuf {
    std::env::var_os("CASETAG_BENCH_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("out/quickstart/models"))
}

/// The first 1,000 cases of the bundled test split, as read by `tag`.
fn chunk() -> polars::prelude::DataFrame {
    let path = root().join("data/aftersales/test.csv");
    let mut r = ChunkReader::open(&path, N).expect("open test split");
    let df = r.next_chunk().expect("read").expect("rows").df;
    assert_eq!(df.height(), N, "the test split has at least {N} rows");
    df
}

fn bench_tagging(c: &mut Criterion) {
    let df = chunk();
    let mut g = c.benchmark_group("tag_1000");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("clean_texts", |b| {
        b.iter(|| black_box(chunk_texts(&df, "text").unwrap()))
    });
    // Language detection, which every tagged case goes through, on the
    // English split and on the multilingual one (Thai and Chinese included).
    for (name, path) in [
        ("detect_lang/english", "data/aftersales/test.csv"),
        (
            "detect_lang/multilingual",
            "data/aftersales_multilingual/test.csv",
        ),
    ] {
        let mut r = ChunkReader::open(&root().join(path), N).expect("open split");
        let texts: Vec<String> =
            chunk_texts(&r.next_chunk().expect("read").expect("rows").df, "text")
                .unwrap()
                .into_iter()
                .map(|t| t.unwrap_or_default())
                .collect();
        g.bench_function(name, |b| {
            b.iter(|| {
                for t in &texts {
                    black_box(casetag_core::lang::detect(t));
                }
            })
        });
    }
    for kind in ["baseline", "transformer"] {
        let dir = models_dir().join(kind);
        if !dir.join("manifest.json").is_file() {
            eprintln!(
                "note: {} is absent; run scripts/quickstart.sh (or set CASETAG_BENCH_MODELS) \
                 to bench {kind} tagging (skipped)",
                dir.display()
            );
            continue;
        }
        let m = load_model(&dir).expect("load bundle");
        if kind == "transformer" {
            // One iteration is tens of seconds on two cores: the minimum sample.
            g.sample_size(10);
            g.measurement_time(Duration::from_secs(30));
        }
        g.bench_function(format!("{kind}/end_to_end"), |b| {
            b.iter(|| {
                let texts = chunk_texts(&df, "text").unwrap();
                let cases: Vec<Transcript> = texts
                    .iter()
                    .flatten()
                    .map(|t| Transcript::new(t.as_str()))
                    .collect();
                black_box(m.decide(&cases, 3).unwrap())
            })
        });
        // The decision layer alone, on precomputed logits.
        let texts = chunk_texts(&df, "text").unwrap();
        let cases: Vec<Transcript> = texts.iter().flatten().map(Transcript::new).collect();
        let logits = m.scores(&cases).unwrap();
        g.bench_function(format!("{kind}/decide_only"), |b| {
            b.iter(|| {
                black_box(
                    logits
                        .iter()
                        .map(|l| m.decider.decide(l, 3))
                        .collect::<Vec<_>>(),
                )
            })
        });
    }
    g.finish();
}

fn bench_detector(c: &mut Criterion) {
    let dir = std::env::var_os("CASETAG_BENCH_DETECTOR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("out/banking77_oos/meta_0.02_p0"));
    let Ok(m) = load_model(&dir) else {
        eprintln!(
            "note: no bundle at {} (see docs/research/out-of-scope.md); oos_detector skipped",
            dir.display()
        );
        return;
    };
    let Some(det) = &m.detector else {
        eprintln!(
            "note: {} has no out-of-scope detector; skipped",
            dir.display()
        );
        return;
    };
    let tm = casetag_transformer::TransformerModel::load(&dir, m.id()).expect("transformer");
    let texts: Vec<String> = (0..32)
        .map(|i| format!("my card has not arrived yet, it has been {i} days"))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let emb = tm.embed(&refs).expect("embed");
    let mut g = c.benchmark_group("oos_detector");
    for n in [1usize, 32] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("scores_b{n}"), |b| {
            b.iter(|| black_box(det.scores(&emb[..n]).unwrap()))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = bench_tagging, bench_detector
}
criterion_main!(benches);
