//! Per-level calibration of a bundle's reported confidences: the ECE of
//! each level's confidence on two labelled files (a validation split and a
//! held-out one) at the bundle's level temperatures and over a grid of
//! others, and the temperature each fitting rule picks on the first file.
//!
//!     cargo run --release --example level_calibration -- BUNDLE VAL TEST
//!
//! Rules: `nll-node` (the bundle's: NLL of the true node's marginal) and
//! `bce-top` (binary cross-entropy of the reported confidence against
//! whether that level's answer is right).

use std::path::Path;

use casetag_core::metrics::ece;
use casetag_core::{TagPath, Transcript};
use casetag_engine::decide::Scores;
use casetag_engine::{load_model, Decider};

fn load(path: &str) -> (Vec<Transcript>, Vec<Option<TagPath>>) {
    let (cases, _) = casetag_data::load_cases(Path::new(path), &[]).expect("readable file");
    cases
        .into_iter()
        .map(|c| (Transcript::new(c.text), c.label))
        .unzip()
}

/// Level `k`'s (1-based) reported confidence and correctness per in-scope
/// row with a truth at that level.
fn level(
    dec: &Decider,
    scores: &[Scores],
    truth: &[Option<TagPath>],
    k: usize,
) -> (Vec<f64>, Vec<bool>) {
    let (mut conf, mut ok) = (Vec::new(), Vec::new());
    for (s, t) in scores.iter().zip(truth) {
        let Some(tk) = t.as_ref().and_then(|t| t.level(k)) else {
            continue;
        };
        let d = dec.decide(s, 0);
        conf.push(f64::from(d.confidence.get(k - 1).copied().unwrap_or(0.0)));
        ok.push(d.top_path.level(k) == Some(tk));
    }
    (conf, ok)
}

fn bce(conf: &[f64], ok: &[bool]) -> f64 {
    let s: f64 = conf
        .iter()
        .zip(ok)
        .map(|(&c, &o)| {
            let c = c.clamp(1e-9, 1.0 - 1e-9);
            -if o { c.ln() } else { (1.0 - c).ln() }
        })
        .sum();
    s / conf.len().max(1) as f64
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bundle, val, test] = &args[..] else {
        eprintln!("usage: level_calibration BUNDLE VAL TEST");
        std::process::exit(2);
    };
    let m = load_model(Path::new(bundle)).expect("bundle loads");
    let (vx, vt) = load(val);
    let (tx, tt) = load(test);
    let vs = m.scores(&vx).expect("scores");
    let ts = m.scores(&tx).expect("scores");
    let base = m.decider.clone();
    let depth = base.taxonomy.depth();
    let grid: Vec<f32> = (0..=40).map(|i| 0.5 * 1.05f32.powi(i)).collect();
    for k in 1..=depth {
        let at = |t: f32| {
            let mut d = base.clone();
            if d.level_temperatures.len() < depth {
                d.level_temperatures = vec![d.temperature; depth];
            }
            d.level_temperatures[k - 1] = t;
            d
        };
        let cur = base
            .level_temperatures
            .get(k - 1)
            .copied()
            .unwrap_or(base.temperature);
        let (vc, vo) = level(&base, &vs, &vt, k);
        let (tc, to) = level(&base, &ts, &tt, k);
        println!(
            "L{k}: bundle T {cur:.3}: val ECE {:.4} (n {}), test ECE {:.4} (n {})",
            ece(&vc, &vo, 15),
            vc.len(),
            ece(&tc, &to, 15),
            tc.len()
        );
        let mut best_bce = (f64::MAX, 0.0f32);
        for &t in &grid {
            let d = at(t);
            let (vc, vo) = level(&d, &vs, &vt, k);
            let (tc, to) = level(&d, &ts, &tt, k);
            let b = bce(&vc, &vo);
            if b < best_bce.0 {
                best_bce = (b, t);
            }
            println!(
                "   T {t:.3}: val ECE {:.4} BCE {b:.4} | test ECE {:.4} BCE {:.4}",
                ece(&vc, &vo, 15),
                ece(&tc, &to, 15),
                bce(&tc, &to)
            );
        }
        println!("   bce-top picks T {:.3} on val", best_bce.1);
    }
}
