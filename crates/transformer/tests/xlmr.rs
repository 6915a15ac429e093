//! Multilingual XLM-RoBERTa encoders: a tiny random XLM-R with a
//! SentencePiece (Unigram) tokenizer, built in code (no download), loaded
//! through the product's loader and checked for RoBERTa's position offset
//! on every forward path.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use casetag_core::LabelSpace;
use casetag_transformer::fixtures::{
    unigram_tokenizer_json, write_tiny_bert, write_tiny_xlmr, xlmr_vocab, TINY_HIDDEN,
    TINY_XLMR_MAX_POS, TINY_XLMR_PAD,
};
use casetag_transformer::{
    fit, Encoder, EncoderFiles, Mode, Precision, TextEncoder, TrainInputs, TransformerModel,
    TransformerParams, Truncation,
};

/// Rows the first token is shifted by: `pad_token_id + 1`.
const OFFSET: usize = TINY_XLMR_PAD as usize + 1;
/// The usable positions of the tiny XLM-R.
const MAX_LEN: usize = TINY_XLMR_MAX_POS - OFFSET;

/// One aftersales text per language of the vocabulary.
const TEXTS: [&str; 6] = [
    "where is my parcel, i want a refund",
    "คืนเงิน พัสดุของฉันอยู่ที่ไหน",
    "我要退款 我的包裹在哪里",
    "saya mau pengembalian dana, di mana paket saya",
    "tôi muốn hoàn tiền, đơn hàng của tôi ở đâu",
    "quiero un reembolso, dónde está mi paquete",
];

fn xlmr_dir(prefix: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    write_tiny_xlmr(d.path(), 3, prefix).unwrap();
    d
}

fn load(dir: &Path) -> Encoder {
    Encoder::load(dir.to_str().unwrap(), &Device::Cpu).unwrap()
}

/// A BERT with the XLM-R's weights whose position table is the XLM-R's
/// shifted up by `pad_token_id + 1` rows: BERT's token i reads row i, which
/// holds the XLM-R's row `pad_token_id + 1 + i`. Its config says
/// `pad_token_id` 0 (as multilingual-e5-small's does, over the same
/// SentencePiece vocabulary): the tokenizer's `<pad>` must win.
fn shifted_bert_dir(xlmr: &Path) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(xlmr.join("tokenizer.json"), d.path().join("tokenizer.json")).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(xlmr.join("config.json")).unwrap()).unwrap();
    cfg["model_type"] = "bert".into();
    cfg["architectures"] = serde_json::json!(["BertModel"]);
    cfg["max_position_embeddings"] = MAX_LEN.into();
    cfg["pad_token_id"] = 0.into();
    std::fs::write(
        d.path().join("config.json"),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )
    .unwrap();
    let ts = candle_core::safetensors::load(xlmr.join("model.safetensors"), &Device::Cpu).unwrap();
    let ts: HashMap<String, Tensor> = ts
        .into_iter()
        .map(|(n, t)| {
            let n = n.strip_prefix("roberta.").unwrap_or(&n).to_string();
            let t = if n == "embeddings.position_embeddings.weight" {
                assert_eq!(t.dims()[0], TINY_XLMR_MAX_POS);
                t.narrow(0, OFFSET, MAX_LEN).unwrap().contiguous().unwrap()
            } else {
                t
            };
            (n, t)
        })
        .collect();
    candle_core::safetensors::save(&ts, d.path().join("model.safetensors")).unwrap();
    d
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

fn rows(t: Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().unwrap()
}

/// Token ids of every text, plus one sequence of exactly `MAX_LEN` tokens
/// (reads the last position row) and a one-word one, so batches pad.
fn sequences(e: &Encoder) -> Vec<Vec<u32>> {
    let long = TEXTS.join(" ").repeat(4);
    let mut texts: Vec<&str> = TEXTS.to_vec();
    texts.push(&long);
    texts.push("refund");
    let ids = e.tokenize(&texts, MAX_LEN, Truncation::Head).unwrap();
    assert_eq!(ids[TEXTS.len()].len(), MAX_LEN);
    ids
}

#[test]
fn loads_through_the_product_loader_with_or_without_the_roberta_prefix() {
    let bare = xlmr_dir("");
    let prefixed = xlmr_dir("roberta.");
    let files = EncoderFiles::resolve(bare.path().to_str().unwrap()).unwrap();
    assert!(files.tokenizer.ends_with("tokenizer.json"));
    let e = Encoder::from_files(&files, &Device::Cpu).unwrap();
    assert_eq!(e.config().model_type.as_deref(), Some("xlm-roberta"));
    assert_eq!(e.config().position_offset(), OFFSET);
    assert_eq!(e.max_positions(), MAX_LEN);
    assert_eq!(e.hidden_size(), TINY_HIDDEN);
    assert_eq!(e.pad_id(), TINY_XLMR_PAD);
    let p = load(prefixed.path());
    let ids = sequences(&e);
    assert_eq!(
        rows(e.embed_ids(&ids, 4).unwrap()),
        rows(p.embed_ids(&ids, 4).unwrap())
    );
    // "roberta" (English RoBERTa) numbers positions the same way.
    let cfg = bare.path().join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("\"xlm-roberta\"", "\"roberta\"")).unwrap();
    let r = load(bare.path());
    assert_eq!(r.max_positions(), MAX_LEN);
    assert_eq!(
        rows(r.embed_ids(&ids, 4).unwrap()),
        rows(e.embed_ids(&ids, 4).unwrap())
    );
}

#[test]
fn multilingual_text_tokenizes_to_known_pieces() {
    let d = xlmr_dir("");
    let e = load(d.path());
    let tok = e.text_encoder().tokenizer();
    let unk = tok.token_to_id("<unk>").unwrap();
    let ids = e.tokenize(&TEXTS, MAX_LEN, Truncation::Head).unwrap();
    let pieces =
        |ids: &[u32]| -> Vec<String> { ids.iter().map(|&i| tok.id_to_token(i).unwrap()).collect() };
    for (t, s) in TEXTS.iter().zip(&ids) {
        // Framed as the post-processor frames it, no unknown pieces.
        assert_eq!(s.first(), Some(&0), "{t}: {:?}", pieces(s));
        assert_eq!(s.last(), Some(&2), "{t}: {:?}", pieces(s));
        assert!(!s.contains(&unk), "{t}: {:?}", pieces(s));
    }
    assert_eq!(
        pieces(&ids[1]),
        [
            "<s>",
            "▁คืน",
            "เงิน",
            "▁พัสดุ",
            "ของ",
            "ฉัน",
            "อยู่",
            "ที่ไหน",
            "</s>"
        ]
    );
    assert_eq!(
        pieces(&ids[2]),
        [
            "<s>",
            "▁我",
            "要",
            "退款",
            "▁我的",
            "包裹",
            "在",
            "哪里",
            "</s>"
        ]
    );
    assert_eq!(
        pieces(&ids[4])[1..6],
        ["▁tôi", "▁muốn", "▁hoàn", "▁tiền", ","]
    );
    assert_eq!(pieces(&ids[5])[1..4], ["▁quiero", "▁un", "▁reembolso"]);
    // Characters outside the vocabulary are <unk>, not dropped.
    let k = e.tokenize(&["안녕"], MAX_LEN, Truncation::Head).unwrap();
    assert!(k[0].contains(&unk), "{:?}", pieces(&k[0]));
}

#[test]
fn pad_and_framing_come_from_the_tokenizer() {
    let vocab = xlmr_vocab();
    let json = unigram_tokenizer_json(&vocab);
    let tok: tokenizers::Tokenizer = serde_json::from_value(json.clone()).unwrap();
    // No padding config: found by name.
    let t = TextEncoder::new(tok.clone()).unwrap();
    assert_eq!(t.pad_id(), Some(TINY_XLMR_PAD));
    assert_eq!(t.n_special(), 2);
    // A padding config names it.
    let mut padded = tok;
    padded.with_padding(Some(tokenizers::PaddingParams {
        pad_id: TINY_XLMR_PAD,
        pad_token: "<pad>".into(),
        ..Default::default()
    }));
    assert_eq!(
        TextEncoder::new(padded).unwrap().pad_id(),
        Some(TINY_XLMR_PAD)
    );
    // Hugging Face's XLM-R files frame with RobertaProcessing: same framing.
    let mut rp = json;
    rp["post_processor"] = serde_json::json!({"type": "RobertaProcessing",
        "sep": ["</s>", 2], "cls": ["<s>", 0], "trim_offsets": true, "add_prefix_space": true});
    let rp = TextEncoder::new(serde_json::from_value(rp).unwrap()).unwrap();
    let a = t.encode_batch(&TEXTS, 64, Truncation::Head).unwrap();
    assert_eq!(rp.encode_batch(&TEXTS, 64, Truncation::Head).unwrap(), a);
    // BERT's WordPiece fixture: [PAD] is 0.
    let b = tempfile::tempdir().unwrap();
    write_tiny_bert(b.path(), 1).unwrap();
    let bt = TextEncoder::from_file(&b.path().join("tokenizer.json")).unwrap();
    assert_eq!(bt.pad_id(), Some(0));
}

#[test]
fn position_offset_matches_a_shifted_bert_on_every_forward_path() {
    for prefix in ["", "roberta."] {
        let x = xlmr_dir(prefix);
        let b = shifted_bert_dir(x.path());
        let mut xe = load(x.path());
        let mut be = load(b.path());
        assert_eq!(be.config().position_offset(), 0);
        assert_eq!(be.max_positions(), MAX_LEN);
        // config.json says 0; the SentencePiece tokenizer's <pad> wins.
        assert_eq!(be.pad_id(), TINY_XLMR_PAD);
        let ids = sequences(&xe);
        assert_eq!(ids, sequences(&be));

        // f32 reference: the candle-op forward on a padded batch (the path
        // fine-tuning runs), pooled and per token.
        let d = max_diff(
            &rows(xe.embed_ids_padded(&ids).unwrap()),
            &rows(be.embed_ids_padded(&ids).unwrap()),
        );
        assert!(
            d < 1e-5,
            "{prefix}: padded candle forward: max abs diff {d}"
        );
        let batch: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        let hx = xe.hidden_states(&batch).unwrap();
        let hb = be.hidden_states(&batch).unwrap();
        for (i, s) in batch.iter().enumerate() {
            let a = rows(hx.get(i).unwrap().narrow(0, 0, s.len()).unwrap());
            let c = rows(hb.get(i).unwrap().narrow(0, 0, s.len()).unwrap());
            let d = max_diff(&a, &c);
            assert!(d < 1e-5, "{prefix}: hidden states of sequence {i}: {d}");
        }

        // The packed f32 hot path.
        let fx = rows(xe.embed_ids(&ids, 3).unwrap());
        let d = max_diff(&fx, &rows(be.embed_ids(&ids, 3).unwrap()));
        assert!(d < 1e-5, "{prefix}: packed f32 path: max abs diff {d}");
        // ... and it agrees with the reference on the XLM-R itself.
        let d = max_diff(&fx, &rows(xe.embed_ids_padded(&ids).unwrap()));
        assert!(d < 1e-4, "{prefix}: packed vs padded XLM-R: {d}");

        // int8: against int8 of the shifted BERT.
        xe.set_precision(Precision::Int8);
        be.set_precision(Precision::Int8);
        let qx = rows(xe.embed_ids(&ids, 3).unwrap());
        let d = max_diff(&qx, &rows(be.embed_ids(&ids, 3).unwrap()));
        assert!(d < 1e-5, "{prefix}: packed int8 path: max abs diff {d}");
        assert_ne!(qx, fx, "the int8 path did not run");
    }
}

/// The XLM-R without the offset would read the wrong rows: the check above
/// is not vacuous.
#[test]
fn an_unshifted_table_gives_different_embeddings() {
    let x = xlmr_dir("");
    let b = shifted_bert_dir(x.path());
    // The BERT reading the XLM-R's rows from 0 (no shift).
    let ts = candle_core::safetensors::load(x.path().join("model.safetensors"), &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(n, t)| {
            let t = if n == "embeddings.position_embeddings.weight" {
                t.narrow(0, 0, MAX_LEN).unwrap().contiguous().unwrap()
            } else {
                t
            };
            (n, t)
        })
        .collect::<HashMap<_, _>>();
    candle_core::safetensors::save(&ts, b.path().join("model.safetensors")).unwrap();
    let (xe, be) = (load(x.path()), load(b.path()));
    let ids = sequences(&xe);
    let d = max_diff(
        &rows(xe.embed_ids(&ids, 4).unwrap()),
        &rows(be.embed_ids(&ids, 4).unwrap()),
    );
    assert!(d > 1e-2, "offset makes no difference: {d}");
}

/// An independent implementation: candle-transformers' `XLMRobertaModel`,
/// which derives position ids from the padding mask as Hugging Face does.
#[test]
fn matches_candle_transformers_xlm_roberta() {
    use candle_transformers::models::xlm_roberta::{Config, XLMRobertaModel};
    let x = xlmr_dir("");
    let e = load(x.path());
    let dev = Device::Cpu;
    let cfg: Config =
        serde_json::from_str(&std::fs::read_to_string(x.path().join("config.json")).unwrap())
            .unwrap();
    // SAFETY: the file is written above and not modified while mapped.
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(
            &[x.path().join("model.safetensors")],
            candle_core::DType::F32,
            &dev,
        )
        .unwrap()
    };
    let reference = XLMRobertaModel::new(&cfg, vb).unwrap();
    let ids = sequences(&e);
    let seqs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let ours = e.hidden_states(&seqs).unwrap();
    let (b, s, _) = ours.dims3().unwrap();
    let mut flat = vec![TINY_XLMR_PAD; b * s];
    let mut mask = vec![0u32; b * s];
    for (i, q) in seqs.iter().enumerate() {
        flat[i * s..i * s + q.len()].copy_from_slice(q);
        mask[i * s..i * s + q.len()].fill(1);
    }
    let ids_t = Tensor::from_vec(flat, (b, s), &dev).unwrap();
    let mask_t = Tensor::from_vec(mask, (b, s), &dev).unwrap();
    let types = ids_t.zeros_like().unwrap();
    let theirs = reference
        .forward(&ids_t, &mask_t, &types, None, None, None)
        .unwrap();
    for (i, q) in seqs.iter().enumerate() {
        let a = rows(ours.get(i).unwrap().narrow(0, 0, q.len()).unwrap());
        let t = rows(theirs.get(i).unwrap().narrow(0, 0, q.len()).unwrap());
        let d = max_diff(&a, &t);
        assert!(d < 1e-4, "sequence {i}: max abs diff {d}");
    }
}

#[test]
fn sequences_beyond_the_usable_positions_are_cut_or_rejected() {
    let x = xlmr_dir("");
    let e = load(x.path());
    let huge = TEXTS.join(" ").repeat(40);
    // Tokenizing caps max_tokens at max_position_embeddings - offset.
    for t in [Truncation::Head, Truncation::HeadTail] {
        let ids = e.tokenize(&[&huge], 4096, t).unwrap();
        assert_eq!(ids[0].len(), MAX_LEN);
    }
    // A sequence built by hand that reads past the table (65 and 66 tokens
    // would fit 66 rows without the offset).
    let mut long = e.tokenize(&[&huge], MAX_LEN, Truncation::Head).unwrap()[0].clone();
    long.splice(1..1, [5, 6]);
    assert_eq!(long.len(), TINY_XLMR_MAX_POS);
    let err = e
        .hidden_states(&[long.as_slice()])
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("sequence of 66 tokens exceeds 64 positions (max_position_embeddings 66 minus the position offset 2)"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
    // The packed path cuts, as it does for BERT.
    let cut = rows(e.embed_ids(&[long.clone()], 1).unwrap());
    let head = rows(e.embed_ids(&[long[..MAX_LEN].to_vec()], 1).unwrap());
    assert_eq!(cut, head);
    // Windows read the whole text, each window within the positions.
    let whole = e.tokenize(&[&huge], 4096, Truncation::Windows).unwrap();
    assert!(whole[0].len() > MAX_LEN);
    let w = rows(e.embed_windowed(&whole, 4096, 4).unwrap());
    assert!(w[0].iter().all(|v| v.is_finite()));
}

#[test]
fn unsupported_model_types_still_fail_in_one_line() {
    let x = xlmr_dir("");
    let spec = x.path().to_str().unwrap();
    let cfg = x.path().join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    for t in ["deberta-v2", "gpt2", "camembert"] {
        std::fs::write(&cfg, text.replace("\"xlm-roberta\"", &format!("\"{t}\""))).unwrap();
        let e = Encoder::load(spec, &Device::Cpu).err().unwrap().to_string();
        assert!(
            e.contains(&format!("model_type '{t}' is not supported")),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
    }
    // A position table too short for the offset.
    std::fs::write(
        &cfg,
        text.replace(
            &format!("\"max_position_embeddings\": {TINY_XLMR_MAX_POS}"),
            "\"max_position_embeddings\": 3",
        ),
    )
    .unwrap();
    let e = Encoder::load(spec, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("leaves fewer than 2 positions"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
}

/// Fine-tuning runs the candle forward with gradients (its own path through
/// the embeddings); it must read the same rows as the shifted BERT, and a
/// saved XLM-R bundle must load back as the same model.
#[test]
fn fine_tuning_and_bundles_work_for_xlmr() {
    let x = xlmr_dir("roberta.");
    let b = shifted_bert_dir(x.path());
    let texts = [
        ("where is my parcel", 0),
        ("พัสดุของฉันอยู่ที่ไหน", 0),
        ("我的包裹在哪里", 0),
        ("di mana paket saya", 0),
        ("i want a refund", 1),
        ("คืนเงิน", 1),
        ("我要退款", 1),
        ("quiero un reembolso", 1),
    ];
    let inputs = TrainInputs {
        texts: texts.iter().map(|t| t.0.to_string()).collect(),
        targets: texts.iter().map(|t| t.1).collect(),
        val_texts: vec![],
        val_targets: vec![],
        level_maps: vec![],
    };
    let space = LabelSpace {
        n_paths: 2,
        oos_class: false,
    };
    let p = TransformerParams {
        mode: Mode::FineTune { top_layers: None },
        epochs: 2,
        batch_size: 4,
        max_tokens: 512,
        dropout: 0.0,
        linear_probe: false,
        seed: 5,
        ..TransformerParams::fine_tune()
    };
    let lines = std::cell::RefCell::new(Vec::<String>::new());
    let mx = fit(&p, x.path().to_str().unwrap(), &inputs, &space, "x", &|s| {
        lines.borrow_mut().push(s.to_string())
    })
    .unwrap();
    assert!(
        lines.borrow().iter().any(|l| l.contains(
            "max_tokens 512 is capped at the encoder's 64 positions (max_position_embeddings 66"
        )),
        "{:?}",
        lines.borrow()
    );
    let mb = fit(
        &p,
        b.path().to_str().unwrap(),
        &inputs,
        &space,
        "b",
        &|_| {},
    )
    .unwrap();
    let probe = ["where is my refund", "包裹在哪里", "tôi muốn hoàn tiền"];
    let (lx, lb) = (mx.logits(&probe).unwrap(), mb.logits(&probe).unwrap());
    let d = max_diff(&lx, &lb);
    assert!(
        d < 1e-4,
        "fine-tuned XLM-R vs shifted BERT: max abs diff {d}"
    );
    // Save and load: the bundle keeps the XLM-R config and tokenizer.
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("model");
    mx.save(&dir).unwrap();
    let l = TransformerModel::load(&dir, "x").unwrap();
    assert_eq!(
        l.encoder().config().model_type.as_deref(),
        Some("xlm-roberta")
    );
    assert_eq!(l.logits(&probe).unwrap(), lx);
}
