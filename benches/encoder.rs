//! Encoder benches on the real all-MiniLM-L6-v2 (models/encoders/, fetched by
//! scripts/fetch_encoder.sh; skipped with a note when absent):
//! tokenization, the encoder forward pass at batch 1/8/32 x 16/64/128 tokens
//! (ours and candle-transformers' `BertModel` for comparison), and the head
//! plus decoding. Run: `cargo bench --bench encoder`.
//! Filter: `cargo bench --bench encoder -- forward/lean`.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use candle_core::{Device, Tensor};
use casetag_core::{Classifier, LabelSpace, Transcript};
use casetag_transformer::{fit, Encoder, TrainInputs, TransformerParams, Truncation};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn encoder_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/encoders/all-MiniLM-L6-v2");
    if dir.join("model.safetensors").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "note: {} is absent; run scripts/fetch_encoder.sh to bench the encoder (skipped)",
            dir.display()
        );
        None
    }
}

const SHAPES: [(usize, usize); 9] = [
    (1, 16),
    (1, 64),
    (1, 128),
    (8, 16),
    (8, 64),
    (8, 128),
    (32, 16),
    (32, 64),
    (32, 128),
];

/// `b` sequences of exactly `s` tokens: [CLS] random word pieces [SEP].
fn synthetic(b: usize, s: usize) -> Vec<Vec<u32>> {
    let mut rng = StdRng::seed_from_u64(1);
    (0..b)
        .map(|_| {
            let mut v = vec![101u32];
            v.extend((0..s - 2).map(|_| rng.random_range(1000..29000u32)));
            v.push(102);
            v
        })
        .collect()
}

fn transcripts(n: usize) -> Vec<String> {
    let lines = [
        "[buyer] hi, my order arrived yesterday but the screen is cracked",
        "[agent] sorry to hear that, could you send a photo of the damage?",
        "[buyer] sure, attached. i want a refund or a replacement",
        "[seller] we can offer a partial refund of 20 dollars",
        "[buyer] no, i want to return it",
        "[system] return label generated",
    ];
    (0..n)
        .map(|i| lines[..1 + i % lines.len()].join("\n"))
        .collect()
}

fn bench_tokenize(c: &mut Criterion) {
    let Some(dir) = encoder_dir() else { return };
    let e = Encoder::load(dir.to_str().unwrap(), &Device::Cpu).unwrap();
    let texts = transcripts(32);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut g = c.benchmark_group("tokenize");
    g.throughput(Throughput::Elements(refs.len() as u64));
    for t in [
        Truncation::Head,
        Truncation::HeadTail,
        Truncation::BuyerFirst,
    ] {
        g.bench_function(format!("{t:?}/32_transcripts"), |b| {
            b.iter(|| black_box(e.tokenize(&refs, 128, t).unwrap()))
        });
    }
    g.finish();
}

fn bench_forward(c: &mut Criterion) {
    use candle_transformers::models::bert::{BertModel, Config};
    let Some(dir) = encoder_dir() else { return };
    let dev = Device::Cpu;
    let e = Encoder::load(dir.to_str().unwrap(), &dev).unwrap();
    let cfg: Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    // Safety: the file is not modified while mapped.
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            candle_core::DType::F32,
            &dev,
        )
        .unwrap()
    };
    let stock = BertModel::load(vb, &cfg).unwrap();
    let mut q = Encoder::load(dir.to_str().unwrap(), &dev).unwrap();
    q.set_precision(casetag_transformer::Precision::Int8);
    eprintln!("int8 kernel: {}", casetag_transformer::int8_kernel());
    let mut g = c.benchmark_group("forward");
    for (bsz, s) in SHAPES {
        let seqs = synthetic(bsz, s);
        g.throughput(Throughput::Elements(bsz as u64));
        let id = format!("{bsz}x{s}");
        g.bench_with_input(BenchmarkId::new("lean", &id), &seqs, |b, seqs| {
            b.iter(|| black_box(e.embed_ids(seqs, 32).unwrap()))
        });
        g.bench_with_input(BenchmarkId::new("lean_int8", &id), &seqs, |b, seqs| {
            b.iter(|| black_box(q.embed_ids(seqs, 32).unwrap()))
        });
        let flat: Vec<u32> = seqs.concat();
        let ids = Tensor::from_vec(flat, (bsz, s), &dev).unwrap();
        let types = ids.zeros_like().unwrap();
        let mask = ids.ones_like().unwrap();
        g.bench_with_input(BenchmarkId::new("stock", &id), &ids, |b, ids| {
            b.iter(|| {
                // Same work as ours: forward plus mean pooling.
                let h = stock.forward(ids, &types, Some(&mask)).unwrap();
                black_box(h.mean(1).unwrap())
            })
        });
    }
    g.finish();
}

/// The dense-layer kernels alone, f32 next to int8, on the three shapes of
/// a MiniLM layer (attention projections 384→384, FFN up 384→1536, FFN
/// down 1536→384) at 16 rows (one short request), 2,048 rows (32 × 64
/// tokens) and 4,096 (32 × 128). Throughput is in multiply-adds.
fn bench_dense(c: &mut Criterion) {
    use casetag_transformer::DenseLayer;
    eprintln!(
        "dense kernels: f32 {}, int8 {}",
        casetag_transformer::f32_kernel(),
        casetag_transformer::int8_kernel()
    );
    let mut g = c.benchmark_group("dense");
    for (o, k) in [(384, 384), (1536, 384), (384, 1536)] {
        let w: Vec<f32> = (0..o * k)
            .map(|i| ((i * 7919) % 2003) as f32 / 2003.0 - 0.5)
            .collect();
        let layer = DenseLayer::new(&w, o, k);
        for n in [16usize, 2048, 4096] {
            let x: Vec<f32> = (0..n * k)
                .map(|i| ((i * 104729) % 997) as f32 / 997.0 - 0.5)
                .collect();
            let mut out = vec![0f32; n * o];
            g.throughput(Throughput::Elements((n * o * k) as u64));
            let id = format!("{n}x{k}->{o}");
            g.bench_function(BenchmarkId::new("f32", &id), |b| {
                b.iter(|| layer.f32(black_box(&mut out), black_box(&x), n))
            });
            g.bench_function(BenchmarkId::new("int8", &id), |b| {
                b.iter(|| layer.int8(black_box(&mut out), black_box(&x), n))
            });
            // Fine-tuning's product: candle's `gemm`, repacking both sides.
            let (wt, xt) = (
                Tensor::from_slice(&w, (o, k), &Device::Cpu).unwrap(),
                Tensor::from_slice(&x, (n, k), &Device::Cpu).unwrap(),
            );
            g.bench_function(BenchmarkId::new("candle_f32", &id), |b| {
                b.iter(|| black_box(xt.matmul(&wt.t().unwrap()).unwrap()))
            });
        }
    }
    g.finish();
}

fn bench_head(c: &mut Criterion) {
    let Some(dir) = encoder_dir() else { return };
    // A 77-class head (BANKING77-sized) trained for one epoch on dummy data.
    let n_paths = 77;
    let texts = transcripts(n_paths);
    let inputs = TrainInputs {
        texts: texts.clone(),
        targets: (0..n_paths).collect(),
        ..Default::default()
    };
    let params = TransformerParams {
        epochs: 1,
        ..Default::default()
    };
    let space = LabelSpace {
        n_paths,
        oos_class: false,
    };
    let m = fit(
        &params,
        dir.to_str().unwrap(),
        &inputs,
        &space,
        "bench",
        &|_| {},
    )
    .unwrap();
    let cases: Vec<Transcript> = texts[..32].iter().map(Transcript::new).collect();
    let logits: Vec<Vec<f32>> = m
        .predict(&cases)
        .unwrap()
        .into_iter()
        .map(|s| s.logits)
        .collect();
    let mut g = c.benchmark_group("head");
    g.throughput(Throughput::Elements(32));
    g.bench_function("softmax_decode_32x77", |b| {
        b.iter(|| {
            let best: Vec<usize> = logits
                .iter()
                .map(|l| {
                    let p = casetag_core::softmax(l, 1.0);
                    p.iter()
                        .enumerate()
                        .max_by(|a, b| a.1.total_cmp(b.1))
                        .map(|x| x.0)
                        .unwrap()
                })
                .collect();
            black_box(best)
        })
    });
    g.bench_function("predict_end_to_end_32_transcripts", |b| {
        b.iter(|| black_box(m.predict(&cases).unwrap()))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = bench_tokenize, bench_dense, bench_forward, bench_head
}
criterion_main!(benches);
