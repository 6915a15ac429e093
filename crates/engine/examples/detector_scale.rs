//! How the learned out-of-scope detector's training time and per-request
//! cost grow with the taxonomy: synthetic clustered embeddings (384
//! dimensions, MiniLM's width) for K classes with the memory the detector
//! would keep for them (`MetaParams::per_class`), 8 validation rows per class.
//! Also times one batch of 50,000 rows judged as a whole (`scores_batch`:
//! features, batch novelty and the smoothing rule; `tag`'s default chunk)
//! against the same rows judged case by case, and one request judged
//! against a full window of recent cases (`scores_stream`, `serve
//! --stream-novelty`).
//!
//!     cargo run --release -p casetag-engine --example detector_scale -- [K ...]
//!
//! Default K: 67 (BANKING77 hold-out) and 500.

use std::time::Instant;

use casetag_engine::oos_meta::{MetaDetector, MetaInputs, MetaParams, StreamWindow, STREAM_WINDOW};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        casetag_core::xorshift64(&mut self.0);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

fn rows(rng: &mut Rng, centres: &[f32], d: usize, per: usize) -> (Vec<f32>, Vec<u32>) {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for (c, m) in centres.chunks(d).enumerate() {
        for _ in 0..per {
            x.extend(m.iter().map(|v| v + 0.3 * rng.next()));
            y.push(c as u32);
        }
    }
    (x, y)
}

fn main() {
    let ks: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("K must be a number of classes"))
        .collect();
    let ks = if ks.is_empty() { vec![67, 500] } else { ks };
    let d = 384;
    let params = MetaParams::default();
    for k in ks {
        let mut rng = Rng(0x5EED + k as u64);
        let centres: Vec<f32> = (0..k * d).map(|_| rng.next()).collect();
        let per = params.per_class(k);
        let (fit_x, fit_y) = rows(&mut rng, &centres, d, per);
        let (val_x, val_y) = rows(&mut rng, &centres, d, 8);
        let t = Instant::now();
        let inputs = MetaInputs {
            d,
            k,
            fit_x: &fit_x,
            fit_y: &fit_y,
            val_x: &val_x,
            val_y: &val_y,
        };
        let det = MetaDetector::fit(&inputs, &params, &|m| {
            eprintln!("  {:6.1}s {m}", t.elapsed().as_secs_f64())
        })
        .expect("fit");
        let fit_s = t.elapsed().as_secs_f64();
        let one = vec![val_x[..d].to_vec()];
        let t = Instant::now();
        let reps = 200;
        for _ in 0..reps {
            std::hint::black_box(det.scores(&one).expect("score"));
        }
        let per_req = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
        let (bx, _) = rows(&mut rng, &centres, d, 50_000usize.div_ceil(k));
        let batch: Vec<Vec<f32>> = bx.chunks(d).take(50_000).map(<[f32]>::to_vec).collect();
        let t = Instant::now();
        std::hint::black_box(det.scores(&batch).expect("score"));
        let case_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        std::hint::black_box(det.scores_batch(&batch).expect("score"));
        let batch_s = t.elapsed().as_secs_f64();
        let cap = STREAM_WINDOW as usize;
        let mut window = StreamWindow::new(cap, d);
        det.scores_stream(&mut window, &batch[..cap])
            .expect("score");
        let t = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(det.scores_stream(&mut window, &one).expect("score"));
        }
        let per_req_stream = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
        println!(
            "K {k}: {per} rows per class ({} in memory), fit {fit_s:.1} s, one request {per_req:.2} ms \
             ({per_req_stream:.2} ms against {cap} recent cases), {} rows case by case {case_s:.1} s, \
             as one batch {batch_s:.1} s",
            fit_y.len(),
            batch.len()
        );
    }
}
