//! Tests on the real all-MiniLM-L6-v2 in models/encoders/all-MiniLM-L6-v2
//! (fetched by scripts/fetch_encoder.sh). Without it, or with
//! CASETAG_SKIP_REAL_ENCODER=1, the crate's build script leaves
//! `cfg(has_encoder)` unset and they are reported as skipped (ignored).

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use casetag_transformer::{Encoder, Truncation};

fn encoder_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/encoders/all-MiniLM-L6-v2")
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

#[test]
#[cfg_attr(
    not(has_encoder),
    ignore = "encoder not fetched: bash scripts/fetch_encoder.sh"
)]
fn paraphrases_are_closer_than_unrelated_texts() {
    let dir = encoder_dir();
    let e = Encoder::load(dir.to_str().unwrap(), &Device::Cpu).unwrap();
    assert_eq!(e.hidden_size(), 384);
    let texts = [
        "My package never arrived and I want my money back.",
        "I did not receive my parcel, please refund me.",
        "How do I change the color of my profile picture?",
        "The item came broken, the screen is cracked.",
        "It arrived damaged: the display has a crack.",
    ];
    let v = e.embed(&texts, 128, Truncation::Head, 32, true).unwrap();
    assert!(v.iter().all(|r| r.len() == 384));
    let n: f32 = v[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((n - 1.0).abs() < 1e-4);
    assert!(
        cos(&v[0], &v[1]) > cos(&v[0], &v[2]) + 0.2,
        "{} vs {}",
        cos(&v[0], &v[1]),
        cos(&v[0], &v[2])
    );
    assert!(cos(&v[3], &v[4]) > cos(&v[3], &v[2]) + 0.2);
    assert!(cos(&v[3], &v[4]) > cos(&v[3], &v[0]));
}

#[test]
#[cfg_attr(
    not(has_encoder),
    ignore = "encoder not fetched: bash scripts/fetch_encoder.sh"
)]
fn lean_forward_matches_candle_transformers_bert() {
    use candle_transformers::models::bert::{BertModel, Config};
    let dir = encoder_dir();
    let dev = Device::Cpu;
    let e = Encoder::load(dir.to_str().unwrap(), &dev).unwrap();
    let cfg: Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            candle_core::DType::F32,
            &dev,
        )
        .unwrap()
    };
    let reference = BertModel::load(vb, &cfg).unwrap();
    let texts = [
        "[buyer] where is my refund?\n[agent] it was sent yesterday",
        "short",
        "The seller refuses to accept the return even though the item is defective.",
    ];
    let ids = e.tokenize(&texts, 128, Truncation::Head).unwrap();
    // Padded batch (exercises the mask) and an unpadded single sequence.
    for batch in [ids.clone(), vec![ids[0].clone()]] {
        let seqs: Vec<&[u32]> = batch.iter().map(Vec::as_slice).collect();
        let ours = e.hidden_states(&seqs).unwrap();
        let (b, s, _) = ours.dims3().unwrap();
        let mut flat = vec![0u32; b * s];
        let mut mask = vec![0u32; b * s];
        for (i, q) in seqs.iter().enumerate() {
            flat[i * s..i * s + q.len()].copy_from_slice(q);
            mask[i * s..i * s + q.len()].fill(1);
        }
        let ids_t = Tensor::from_vec(flat, (b, s), &dev).unwrap();
        let mask_t = Tensor::from_vec(mask, (b, s), &dev).unwrap();
        let types = ids_t.zeros_like().unwrap();
        let theirs = reference.forward(&ids_t, &types, Some(&mask_t)).unwrap();
        // The packed hot path (used for all inference): mean-pooled output
        // against the reference's masked mean.
        let pooled = e.embed_ids(&batch, 32).unwrap();
        let m = mask_t.to_dtype(candle_core::DType::F32).unwrap();
        let ref_pooled = theirs
            .broadcast_mul(&m.unsqueeze(2).unwrap())
            .unwrap()
            .sum(1)
            .unwrap()
            .broadcast_div(&m.sum_keepdim(1).unwrap())
            .unwrap();
        let d = (pooled - ref_pooled)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-4, "packed path: max abs diff {d}");
        // Compare real tokens only (padding rows are never used downstream).
        for (i, q) in seqs.iter().enumerate() {
            let a = ours.get(i).unwrap().narrow(0, 0, q.len()).unwrap();
            let t = theirs.get(i).unwrap().narrow(0, 0, q.len()).unwrap();
            let diff = (a - t)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-4, "row {i}: max abs diff {diff}");
        }
    }
}

#[test]
#[cfg_attr(
    not(has_encoder),
    ignore = "encoder not fetched: bash scripts/fetch_encoder.sh"
)]
fn padding_does_not_change_pooled_embeddings() {
    let dir = encoder_dir();
    let e = Encoder::load(dir.to_str().unwrap(), &Device::Cpu).unwrap();
    let texts = [
        "a",
        "a much longer sentence about a broken phone that arrived late",
        "refund",
    ];
    let together = e.embed(&texts, 128, Truncation::Head, 32, false).unwrap();
    for (i, t) in texts.iter().enumerate() {
        let alone = e.embed(&[t], 128, Truncation::Head, 32, false).unwrap();
        let d = alone[0]
            .iter()
            .zip(&together[i])
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-4, "text {i}: {d}");
    }
}
