//! How closely the int8 forward follows the fp32 one on real texts: the
//! cosine between each text's mean-pooled, normalized embedding at fp32
//! and at int8 (mean, 1st percentile, minimum), with the int8 kernel that
//! ran.
//!
//!     cargo run --release -p casetag-transformer --example int8_fidelity -- ENCODER_DIR TEXTS.txt [MAX_TOKENS] [CALIBRATION.txt]
//!
//! TEXTS.txt holds one text per line. With CALIBRATION.txt (one text per
//! line, none of them among TEXTS), the int8 forward is calibrated on
//! `calibration_sample` of those texts, as `casetag train --precision int8`
//! calibrates on training texts; without it, on pseudo-random ids.

use candle_core::Device;
use casetag_transformer::{calibration_sample, Encoder, Precision, Truncation};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(enc), Some(file)) = (args.first(), args.get(1)) else {
        eprintln!("usage: int8_fidelity ENCODER_DIR TEXTS.txt [MAX_TOKENS] [CALIBRATION.txt]");
        std::process::exit(2);
    };
    let max_tokens: usize = args.get(2).map_or(128, |v| v.parse().expect("MAX_TOKENS"));
    let text = std::fs::read_to_string(file).expect("readable texts");
    let texts: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut e = Encoder::load(enc, &Device::Cpu).expect("encoder");
    if let Some(cal) = args.get(3) {
        let cal = std::fs::read_to_string(cal).expect("readable calibration texts");
        let cal: Vec<&str> = cal.lines().filter(|l| !l.trim().is_empty()).collect();
        let ids = e
            .tokenize(&cal, max_tokens, Truncation::Head)
            .expect("tokenized calibration texts");
        let sample = calibration_sample(&ids, max_tokens);
        eprintln!(
            "int8 calibration: {} texts, {} tokens",
            sample.len(),
            sample.iter().map(Vec::len).sum::<usize>()
        );
        e.set_int8_calibration(Some(sample));
    }
    let run = |e: &Encoder| {
        e.embed(&texts, max_tokens, Truncation::Head, 32, true)
            .expect("embeddings")
    };
    e.set_precision(Precision::F32);
    let a = run(&e);
    e.set_precision(Precision::Int8);
    let b = run(&e);
    let mut cos: Vec<f32> = a
        .iter()
        .zip(&b)
        .map(|(x, y)| x.iter().zip(y).map(|(p, q)| p * q).sum())
        .collect();
    cos.sort_by(f32::total_cmp);
    let mean = cos.iter().sum::<f32>() / cos.len() as f32;
    println!(
        "{} texts, {max_tokens} tokens, int8 kernel {}: cosine mean {mean:.5}, p1 {:.5}, min {:.5}",
        cos.len(),
        casetag_transformer::int8_kernel(),
        cos[cos.len() / 100],
        cos[0]
    );
}
