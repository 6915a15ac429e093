//! Tokenization with the truncation strategies that suit transcripts.
//!
//! The tokenizer's own truncation and padding (all-MiniLM-L6-v2 ships with
//! fixed padding to 128) are switched off: texts are encoded without special
//! tokens, cut to the budget by the chosen strategy, then wrapped in the
//! special tokens the tokenizer's post-processor would add (`[CLS] .. [SEP]`
//! for BERT's WordPiece, `<s> .. </s>` for XLM-R's SentencePiece). Padding
//! happens later, per sub-batch, to that sub-batch's longest sequence, with
//! the tokenizer's own padding token.

use std::path::Path;

use casetag_core::text::{truncate_chars, Keep};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::error::{Result, TransformerError};

/// Which tokens to keep when a transcript is longer than `max_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    /// The first tokens: the opening usually states the problem.
    #[default]
    Head,
    /// About a third of the budget from the start and two thirds from the
    /// end, where the resolution of a long conversation sits.
    HeadTail,
    /// Buyer lines first (in order), then all other lines, then the head.
    BuyerFirst,
    /// The whole transcript, up to eight windows (`MAX_WINDOWS`): cut into
    /// consecutive windows of `max_tokens`, each encoded on its own, their
    /// embeddings averaged weighted by their token counts. Costs one
    /// forward pass per window; frozen encoders only.
    Windows,
}

/// Windows per text at most with [`Truncation::Windows`]; a longer
/// transcript keeps its head.
pub const MAX_WINDOWS: usize = 8;

/// A tokenizer plus the special tokens that frame a single sequence.
#[derive(Clone)]
pub struct TextEncoder {
    tok: Tokenizer,
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    /// The padding token's id, when the tokenizer names one.
    pad: Option<u32>,
}

/// Framing tokens to fall back on when the tokenizer has no
/// post-processor: (BOS/CLS, EOS/SEP) of BERT and of (XLM-)RoBERTa.
const FRAME_TOKENS: [(&str, &str); 2] = [("[CLS]", "[SEP]"), ("<s>", "</s>")];

/// Padding tokens to look up when the tokenizer has no padding config.
const PAD_TOKENS: [&str; 2] = ["[PAD]", "<pad>"];

/// Reorder a transcript so that buyer lines come first. Lines look like
/// `[speaker] utterance`; text without any buyer line is returned unchanged.
pub fn buyer_first(text: &str) -> std::borrow::Cow<'_, str> {
    let is_buyer = |l: &str| {
        let l = l.trim_start();
        l.len() >= 7 && l.as_bytes()[..7].eq_ignore_ascii_case(b"[buyer]")
    };
    if !text.lines().any(is_buyer) {
        return text.into();
    }
    let (buyer, other): (Vec<&str>, Vec<&str>) = text.lines().partition(|l| is_buyer(l));
    let mut out = buyer.join("\n");
    for l in other {
        out.push('\n');
        out.push_str(l);
    }
    out.into()
}

impl TextEncoder {
    pub fn from_file(path: &Path) -> Result<Self> {
        let tok = Tokenizer::from_file(path).map_err(|e| {
            TransformerError::Tokenizer(format!(
                "{}: cannot load: {}",
                path.display(),
                crate::error::one_line(&e.to_string())
            ))
        })?;
        Self::new(tok).map_err(|e| match e {
            TransformerError::Tokenizer(m) => {
                TransformerError::Tokenizer(format!("{}: {m}", path.display()))
            }
            e => e,
        })
    }

    pub fn new(mut tok: Tokenizer) -> Result<Self> {
        // The padding token: from the padding config (switched off below),
        // else by name.
        let pad = tok
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| PAD_TOKENS.iter().find_map(|t| tok.token_to_id(t)));
        tok.with_padding(None);
        tok.with_truncation(None)
            .map_err(|e| TransformerError::Tokenizer(e.to_string()))?;
        // Learn the framing from the post-processor: encode one word with
        // special tokens and split the special ones off both ends.
        let enc = tok
            .encode("a", true)
            .map_err(|e| TransformerError::Tokenizer(e.to_string()))?;
        let (ids, special) = (enc.get_ids(), enc.get_special_tokens_mask());
        let lead = special.iter().take_while(|&&m| m == 1).count();
        let trail = special.iter().rev().take_while(|&&m| m == 1).count();
        let (mut prefix, mut suffix) = if lead + trail < ids.len() {
            (ids[..lead].to_vec(), ids[ids.len() - trail..].to_vec())
        } else {
            (Vec::new(), Vec::new())
        };
        if prefix.is_empty() && suffix.is_empty() {
            // No post-processor: fall back to BERT's or RoBERTa's tokens,
            // whichever pair the vocabulary has.
            let (b, e) = FRAME_TOKENS
                .iter()
                .map(|(b, e)| (tok.token_to_id(b), tok.token_to_id(e)))
                .find(|(b, e)| b.is_some() || e.is_some())
                .unwrap_or_default();
            prefix.extend(b);
            suffix.extend(e);
        }
        Ok(Self {
            tok,
            prefix,
            suffix,
            pad,
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tok
    }

    /// The padding token's id: the tokenizer's padding config, else the id
    /// of `[PAD]` or `<pad>`; `None` when the tokenizer names none.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }

    /// Special tokens before and after each sequence.
    pub(crate) fn frame_sizes(&self) -> (usize, usize) {
        (self.prefix.len(), self.suffix.len())
    }

    /// Number of special tokens around each sequence.
    pub fn n_special(&self) -> usize {
        self.prefix.len() + self.suffix.len()
    }

    /// Token ids (special tokens included) of each text, at most
    /// `max_tokens` long. Uses the tokenizer's batch encoder (parallel).
    pub fn encode_batch(
        &self,
        texts: &[&str],
        max_tokens: usize,
        truncation: Truncation,
    ) -> Result<Vec<Vec<u32>>> {
        let window = max_tokens.saturating_sub(self.n_special()).max(1);
        // Windows: one sequence holds the whole text; the encoder cuts it.
        let budget = match truncation {
            Truncation::Windows => window * MAX_WINDOWS,
            _ => window,
        };
        let inputs: Vec<String> = texts
            .iter()
            .map(|t| match truncation {
                Truncation::BuyerFirst => buyer_first(t).into_owned(),
                _ => (*t).to_string(),
            })
            .map(|t| cap_chars(t, budget, truncation))
            .collect();
        let encs = self
            .tok
            .encode_batch(inputs, false)
            .map_err(|e| TransformerError::Tokenizer(crate::error::one_line(&e.to_string())))?;
        Ok(encs
            .iter()
            .map(|e| self.frame(e.get_ids(), budget, truncation))
            .collect())
    }

    /// Each text's length in tokens, whole (special tokens included).
    pub fn whole_lengths(&self, texts: &[&str]) -> Result<Vec<usize>> {
        let encs = self
            .tok
            .encode_batch(texts.to_vec(), false)
            .map_err(|e| TransformerError::Tokenizer(crate::error::one_line(&e.to_string())))?;
        Ok(encs.iter().map(|e| e.len() + self.n_special()).collect())
    }

    fn frame(&self, ids: &[u32], budget: usize, truncation: Truncation) -> Vec<u32> {
        let mut out = Vec::with_capacity(budget.min(ids.len()) + self.n_special());
        out.extend_from_slice(&self.prefix);
        if ids.len() <= budget {
            out.extend_from_slice(ids);
        } else {
            match truncation {
                Truncation::Head | Truncation::BuyerFirst | Truncation::Windows => {
                    out.extend_from_slice(&ids[..budget])
                }
                Truncation::HeadTail => {
                    let head = budget / 3;
                    let tail = budget - head;
                    out.extend_from_slice(&ids[..head]);
                    out.extend_from_slice(&ids[ids.len() - tail..]);
                }
            }
        }
        out.extend_from_slice(&self.suffix);
        out
    }
}

/// The windows of one framed sequence (`[CLS] body [SEP]` or
/// `<s> body </s>`) for an encoder that reads at most `max_tokens`: the
/// body cut into consecutive pieces of `max_tokens - n_special` tokens,
/// each framed again. A sequence that fits is its own single window.
pub(crate) fn windows(
    seq: &[u32],
    n_prefix: usize,
    n_suffix: usize,
    max_tokens: usize,
) -> Vec<Vec<u32>> {
    if seq.len() <= max_tokens || seq.len() < n_prefix + n_suffix {
        return vec![seq.to_vec()];
    }
    let (prefix, rest) = seq.split_at(n_prefix);
    let (body, suffix) = rest.split_at(rest.len() - n_suffix);
    let width = max_tokens.saturating_sub(n_prefix + n_suffix).max(1);
    body.chunks(width)
        .map(|piece| [prefix, piece, suffix].concat())
        .collect()
}

/// Very long transcripts are cut (in characters) before tokenizing: a
/// WordPiece or SentencePiece token is never shorter than one character
/// (a lone `▁` stands for a space), so keeping
/// `budget * 16` characters from the relevant end(s) is far more than
/// enough and saves tokenizing megabytes that would be thrown away. The cut
/// is the code base's one truncation, [`truncate_chars`].
fn cap_chars(text: String, budget: usize, truncation: Truncation) -> String {
    let cap = budget.saturating_mul(16).max(256);
    let keep = match truncation {
        Truncation::Head | Truncation::BuyerFirst | Truncation::Windows => Keep::Head,
        Truncation::HeadTail => Keep::HeadTail,
    };
    match truncate_chars(&text, cap, keep) {
        (_, false) => text,
        (cut, true) => cut.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buyer_lines_move_first() {
        let t = "[agent] hello\n[buyer] my parcel is late\n[system] note\n[BUYER] still late";
        assert_eq!(
            buyer_first(t),
            "[buyer] my parcel is late\n[BUYER] still late\n[agent] hello\n[system] note"
        );
        assert_eq!(buyer_first("no markers here"), "no markers here");
    }

    #[test]
    fn windows_cover_the_body_once_each_framed() {
        // [CLS]=101 body 1..=10 [SEP]=102, windows of 5 tokens (3 body).
        let seq: Vec<u32> = std::iter::once(101).chain(1..=10).chain([102]).collect();
        let w = windows(&seq, 1, 1, 5);
        assert_eq!(
            w,
            vec![
                vec![101, 1, 2, 3, 102],
                vec![101, 4, 5, 6, 102],
                vec![101, 7, 8, 9, 102],
                vec![101, 10, 102]
            ]
        );
        assert_eq!(windows(&seq, 1, 1, 12), vec![seq.clone()]);
    }

    #[test]
    fn char_cap_keeps_both_ends() {
        let t = format!("{}{}", "a".repeat(5000), "é".repeat(5000));
        let h = cap_chars(t.clone(), 10, Truncation::Head);
        assert!(h.len() <= 256 && h.chars().all(|c| c == 'a'));
        let ht = cap_chars(t, 10, Truncation::HeadTail);
        assert!(ht.starts_with('a') && ht.ends_with('é'));
    }
}
