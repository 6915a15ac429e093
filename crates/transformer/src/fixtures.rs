//! Test fixtures: a tiny, randomly initialised BERT in Hugging Face layout
//! (`config.json`, `model.safetensors`, `tokenizer.json`), built in code from
//! a seed, so tests never download anything. Hidden size 32, 2 layers,
//! 2 heads, and a small WordPiece vocabulary (aftersales words, speaker
//! markers, letters and `##` letters so that any English word tokenizes).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

pub const TINY_HIDDEN: usize = 32;
pub const TINY_LAYERS: usize = 2;

const WORDS: &[&str] = &[
    "refund", "return", "late", "delivery", "package", "parcel", "broken", "damaged", "cancel",
    "order", "where", "is", "my", "the", "a", "i", "want", "to", "was", "item", "buyer", "agent",
    "seller", "system", "money", "back", "arrived", "not", "yet", "still", "waiting", "please",
    "help", "card", "hello", "thanks", "size", "wrong", "color", "tracking", "lost", "dispute",
];

/// The tiny vocabulary: special tokens, words, punctuation, letters and
/// their `##` continuations.
pub fn tiny_vocab() -> Vec<String> {
    let mut v: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(WORDS.iter().map(|s| s.to_string()));
    v.extend("[].,?!'-:0123456789".chars().map(|c| c.to_string()));
    for c in 'a'..='z' {
        v.push(c.to_string());
        v.push(format!("##{c}"));
    }
    for d in '0'..='9' {
        v.push(format!("##{d}"));
    }
    v.sort();
    v.dedup();
    // Special tokens first, at fixed ids 0..5.
    let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    let mut out: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
    out.extend(v.into_iter().filter(|t| !specials.contains(&t.as_str())));
    out
}

/// `tokenizer.json` for a vocabulary, in the layout of BERT's fast tokenizer.
pub fn tokenizer_json(vocab: &[String]) -> serde_json::Value {
    let ids: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let id = |t: &str| vocab.iter().position(|v| v == t).expect("special token");
    let added: Vec<serde_json::Value> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .map(|t| {
            json!({"id": id(t), "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true,
                       "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [id("[CLS]")], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [id("[SEP]")], "tokens": ["[SEP]"]}
            }
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": ids}
    })
}

/// Approximately normal samples (sum of 4 uniforms), cheap and seedable.
fn normal(rng: &mut StdRng, std: f32) -> f32 {
    let s: f32 = (0..4).map(|_| rng.random::<f32>() - 0.5).sum();
    s * std * (3.0f32).sqrt()
}

/// Write a tiny random BERT into `dir`. The same seed writes the same files.
pub fn write_tiny_bert(dir: &Path, seed: u64) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let vocab = tiny_vocab();
    let (h, layers, inter, max_pos) = (TINY_HIDDEN, TINY_LAYERS, 64, 64);
    let config = json!({
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": vocab.len(),
        "hidden_size": h,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "intermediate_size": inter,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": max_pos,
        "type_vocab_size": 2,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "position_embedding_type": "absolute"
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    std::fs::write(
        dir.join("tokenizer.json"),
        serde_json::to_string(&tokenizer_json(&vocab))?,
    )?;

    let mut rng = StdRng::seed_from_u64(seed);
    let dev = Device::Cpu;
    let mut ts: HashMap<String, Tensor> = HashMap::new();
    let mut add = |name: String, shape: &[usize], kind: u8| {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| match kind {
                b'w' => normal(&mut rng, 0.3),
                b'g' => 1.0 + normal(&mut rng, 0.05),
                _ => normal(&mut rng, 0.02),
            })
            .collect();
        let t = Tensor::from_vec(data, shape, &dev).expect("fixture tensor");
        ts.insert(name, t);
    };
    add(
        "embeddings.word_embeddings.weight".into(),
        &[vocab.len(), h],
        b'w',
    );
    add(
        "embeddings.position_embeddings.weight".into(),
        &[max_pos, h],
        b'w',
    );
    add(
        "embeddings.token_type_embeddings.weight".into(),
        &[2, h],
        b'w',
    );
    add("embeddings.LayerNorm.weight".into(), &[h], b'g');
    add("embeddings.LayerNorm.bias".into(), &[h], b'b');
    for i in 0..layers {
        let p = format!("encoder.layer.{i}");
        for n in ["query", "key", "value"] {
            add(format!("{p}.attention.self.{n}.weight"), &[h, h], b'w');
            add(format!("{p}.attention.self.{n}.bias"), &[h], b'b');
        }
        add(format!("{p}.attention.output.dense.weight"), &[h, h], b'w');
        add(format!("{p}.attention.output.dense.bias"), &[h], b'b');
        add(format!("{p}.attention.output.LayerNorm.weight"), &[h], b'g');
        add(format!("{p}.attention.output.LayerNorm.bias"), &[h], b'b');
        add(format!("{p}.intermediate.dense.weight"), &[inter, h], b'w');
        add(format!("{p}.intermediate.dense.bias"), &[inter], b'b');
        add(format!("{p}.output.dense.weight"), &[h, inter], b'w');
        add(format!("{p}.output.dense.bias"), &[h], b'b');
        add(format!("{p}.output.LayerNorm.weight"), &[h], b'g');
        add(format!("{p}.output.LayerNorm.bias"), &[h], b'b');
    }
    candle_core::safetensors::save(&ts, dir.join("model.safetensors"))
        .map_err(|e| std::io::Error::other(e.to_string()))
}
