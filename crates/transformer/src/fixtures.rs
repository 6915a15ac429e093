//! Test fixtures: tiny, randomly initialised encoders in Hugging Face layout
//! (`config.json`, `model.safetensors`, `tokenizer.json`), built in code from
//! a seed, so tests never download anything.
//!
//! * [`write_tiny_bert`]: hidden size 32, 2 layers, 2 heads, and a small
//!   WordPiece vocabulary (aftersales words, speaker markers, letters and
//!   `##` letters so that any English word tokenizes).
//! * [`write_tiny_xlmr`]: an XLM-RoBERTa of the same size with 4 heads,
//!   RoBERTa position numbering (`pad_token_id` 1, so 66 position rows for
//!   64 usable positions), one token type, and a SentencePiece (Unigram)
//!   tokenizer over a small multilingual vocabulary (English, Thai,
//!   Chinese, Indonesian, Vietnamese, Spanish).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

pub const TINY_HIDDEN: usize = 32;
pub const TINY_LAYERS: usize = 2;
/// Rows of the tiny XLM-R's position table (64 usable positions).
pub const TINY_XLMR_MAX_POS: usize = 66;
/// The tiny XLM-R's `<pad>` id, hence its position offset is this + 1.
pub const TINY_XLMR_PAD: u32 = 1;

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

/// XLM-R's special tokens at its fixed ids 0..=3 (`<mask>` comes last).
const XLMR_SPECIALS: [&str; 4] = ["<s>", "<pad>", "</s>", "<unk>"];

/// Whole words (each becomes a `▁word` piece), aftersales phrasing, per
/// language.
const XLMR_WORDS: [(&str, &str); 4] = [
    (
        "en",
        "refund return where is my the parcel package late order item broken money back i want \
         a please hello delivery",
    ),
    (
        "es",
        "quiero un reembolso dónde está mi paquete pedido roto",
    ),
    ("id", "saya mau pengembalian dana di mana paket rusak"),
    ("vi", "tôi muốn hoàn tiền đơn hàng của ở đâu"),
];

/// Pieces of text without spaces (Thai, Chinese) and of speaker markers,
/// as SentencePiece learns them: word-initial ones carry `▁`. Thai:
/// "คืนเงิน" (refund), "พัสดุของฉันอยู่ที่ไหน" (where is my parcel); Chinese:
/// "我要退款" (I want a refund), "我的包裹在哪里" (where is my parcel).
const XLMR_PIECES: [(&str, &str); 3] = [
    ("th", "▁คืน เงิน ▁พัสดุ พัสดุ ของ ฉัน อยู่ ที่ไหน ▁ขอ"),
    ("zh", "▁退款 退款 ▁我的 我的 包裹 在 哪里 ▁我 要"),
    ("markers", "▁[ ] buyer agent"),
];

/// The tiny multilingual SentencePiece vocabulary with Unigram scores:
/// the specials, whole words, pieces, then single characters (`x` and
/// `▁x`, with low scores) so that any ASCII text tokenizes, and `<mask>`.
pub fn xlmr_vocab() -> Vec<(String, f64)> {
    let mut v: Vec<(String, f64)> = XLMR_SPECIALS.iter().map(|t| (t.to_string(), 0.0)).collect();
    let mut seen = std::collections::HashSet::new();
    let mut push = |v: &mut Vec<(String, f64)>, t: String, score: f64| {
        if seen.insert(t.clone()) {
            v.push((t, score));
        }
    };
    push(&mut v, "▁".into(), -3.0);
    let words = XLMR_WORDS.iter().flat_map(|(_, ws)| ws.split_whitespace());
    for (i, w) in words.enumerate() {
        push(&mut v, format!("▁{w}"), -4.0 - i as f64 * 0.01);
    }
    let pieces = XLMR_PIECES.iter().flat_map(|(_, ps)| ps.split_whitespace());
    for (i, p) in pieces.enumerate() {
        push(&mut v, p.to_string(), -5.0 - i as f64 * 0.01);
    }
    for c in ('a'..='z').chain('0'..='9').chain(".,?!'-:[]".chars()) {
        push(&mut v, format!("▁{c}"), -9.0);
        push(&mut v, c.to_string(), -10.0);
    }
    push(&mut v, "<mask>".into(), 0.0);
    v
}

/// `tokenizer.json` for a Unigram vocabulary, in the layout of XLM-R's fast
/// tokenizer: NFKC, Metaspace pre-tokenizer, `<s> $A </s>` template.
pub fn unigram_tokenizer_json(vocab: &[(String, f64)]) -> serde_json::Value {
    let id = |t: &str| {
        vocab
            .iter()
            .position(|(v, _)| v == t)
            .expect("special token")
    };
    let added: Vec<serde_json::Value> = XLMR_SPECIALS
        .iter()
        .chain(&["<mask>"])
        .map(|t| {
            json!({"id": id(t), "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let metaspace =
        json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true});
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "NFKC"},
        "pre_tokenizer": metaspace,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "</s>", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "</s>", "type_id": 0}},
                     {"SpecialToken": {"id": "</s>", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 0}},
                     {"SpecialToken": {"id": "</s>", "type_id": 0}}],
            "special_tokens": {
                "<s>": {"id": "<s>", "ids": [id("<s>")], "tokens": ["<s>"]},
                "</s>": {"id": "</s>", "ids": [id("</s>")], "tokens": ["</s>"]}
            }
        },
        "decoder": metaspace,
        "model": {"type": "Unigram", "unk_id": id("<unk>"), "vocab": vocab,
                  "byte_fallback": false}
    })
}

/// Write a tiny random XLM-RoBERTa into `dir`, its weights under `prefix`
/// (`""` as sentence-transformers saves them, or `"roberta."`). The same
/// seed writes the same files.
pub fn write_tiny_xlmr(dir: &Path, seed: u64, prefix: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let vocab = xlmr_vocab();
    let (h, layers, inter, max_pos) = (TINY_HIDDEN, TINY_LAYERS, 64, TINY_XLMR_MAX_POS);
    let config = json!({
        "architectures": ["XLMRobertaModel"],
        "model_type": "xlm-roberta",
        "vocab_size": vocab.len(),
        "hidden_size": h,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "intermediate_size": inter,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": max_pos,
        "type_vocab_size": 1,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-5,
        "bos_token_id": 0,
        "pad_token_id": TINY_XLMR_PAD,
        "eos_token_id": 2,
        "position_embedding_type": "absolute"
    });
    let dims = Dims {
        vocab: vocab.len(),
        h,
        layers,
        inter,
        max_pos,
        type_vocab: 1,
    };
    write_model_dir(
        dir,
        &config,
        &unigram_tokenizer_json(&vocab),
        seed,
        &dims,
        prefix,
    )
}

/// `config.json`, `tokenizer.json` and random weights of the given shapes
/// into `dir`.
fn write_model_dir(
    dir: &Path,
    config: &serde_json::Value,
    tokenizer: &serde_json::Value,
    seed: u64,
    dims: &Dims,
    prefix: &str,
) -> std::io::Result<()> {
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(config)?,
    )?;
    std::fs::write(
        dir.join("tokenizer.json"),
        serde_json::to_string(tokenizer)?,
    )?;
    write_weights(dir, seed, dims, prefix)
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
    let dims = Dims {
        vocab: vocab.len(),
        h,
        layers,
        inter,
        max_pos,
        type_vocab: 2,
    };
    write_model_dir(dir, &config, &tokenizer_json(&vocab), seed, &dims, "")
}

/// Shapes of a tiny encoder's weights.
#[derive(Clone, Copy)]
struct Dims {
    vocab: usize,
    h: usize,
    layers: usize,
    inter: usize,
    max_pos: usize,
    type_vocab: usize,
}

/// Random weights under Hugging Face BERT/RoBERTa names (each led by
/// `prefix`, e.g. `roberta.`) into `dir/model.safetensors`. The same seed
/// and shapes write the same file.
fn write_weights(dir: &Path, seed: u64, d: &Dims, prefix: &str) -> std::io::Result<()> {
    let Dims {
        vocab,
        h,
        layers,
        inter,
        max_pos,
        type_vocab,
    } = *d;
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
        ts.insert(format!("{prefix}{name}"), t);
    };
    add(
        "embeddings.word_embeddings.weight".into(),
        &[vocab, h],
        b'w',
    );
    add(
        "embeddings.position_embeddings.weight".into(),
        &[max_pos, h],
        b'w',
    );
    add(
        "embeddings.token_type_embeddings.weight".into(),
        &[type_vocab, h],
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
