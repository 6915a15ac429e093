//! Hashed text features: word n-grams and `char_wb` character n-grams.
//!
//! Every n-gram is hashed straight from `&str` slices of one lowercased copy
//! of the text (FNV-1a, extended byte by byte, then a murmur3 finalizer), so
//! featurizing allocates nothing per n-gram: the buffers live in a
//! [`Scratch`] that a thread reuses across cases. Placeholders such as
//! `<ORDER_ID>` are one token for word n-grams and one unit for character
//! n-grams, so masked values never leak into the features as letter soup.

use casetag_core::hash::{fnv1a, FNV_OFFSET, FNV_PRIME};

/// Namespaces keep a word "ab" and a character bigram "ab" in different buckets.
const NS_WORD: u64 = 0x9e37_79b9_7f4a_7c15;
const NS_CHAR: u64 = 0xc2b2_ae3d_27d4_eb4f;

#[inline]
fn fnv(h: u64, bytes: &[u8]) -> u64 {
    fnv1a(h, bytes.iter().map(|&b| u64::from(b)))
}

/// murmur3 `fmix64`: FNV's low bits are weak, and buckets take the high bits.
#[inline]
fn fmix(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// End (exclusive) of a placeholder `<[a-z0-9_]+>` starting at `i`, if any.
/// The text is lowercased before this runs.
#[inline]
fn placeholder_end(bytes: &[u8], i: usize) -> Option<usize> {
    if bytes.get(i) != Some(&b'<') {
        return None;
    }
    let mut j = i + 1;
    while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
        j += 1;
    }
    (j > i + 1 && bytes.get(j) == Some(&b'>')).then_some(j + 1)
}

#[inline]
fn is_word_char(c: char, unspaced_chars: bool) -> bool {
    if unspaced_chars {
        (c.is_alphanumeric() || c == '_' || combining_mark(c)) && !unspaced(c)
    } else {
        c.is_alphanumeric() || c == '_'
    }
}

/// Scripts written without spaces between words (Thai, Lao, Khmer, Myanmar,
/// Han, kana): a run of them is not one word. Their word "tokens" are single
/// characters, so word unigrams and bigrams are character unigrams and
/// bigrams, the usual units for these scripts; character n-grams cover
/// longer spans.
#[inline]
fn unspaced(c: char) -> bool {
    matches!(c,
        '\u{0E00}'..='\u{0EFF}' | '\u{1000}'..='\u{109F}' | '\u{1780}'..='\u{17FF}' |
        '\u{3040}'..='\u{30FF}' | '\u{3400}'..='\u{4DBF}' | '\u{4E00}'..='\u{9FFF}' |
        '\u{F900}'..='\u{FAFF}')
        && !combining_mark(c)
}

/// Vowel and tone marks that combine with the letter before them in the
/// scripts above (`char::is_alphanumeric` is false for them, which would
/// otherwise cut a Thai word at every vowel sign), and the general combining
/// diacritics of decomposed Latin text.
#[inline]
fn combining_mark(c: char) -> bool {
    matches!(c,
        '\u{0300}'..='\u{036F}' | '\u{0E31}' | '\u{0E34}'..='\u{0E3A}' | '\u{0E47}'..='\u{0E4E}' |
        '\u{0EB1}' | '\u{0EB4}'..='\u{0EBC}' | '\u{0EC8}'..='\u{0ECD}' | '\u{102B}'..='\u{103E}' |
        '\u{17B4}'..='\u{17D3}')
}

/// Per-thread buffers, reused across cases.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    lower: String,
    word_hashes: Vec<u64>,
    units: Vec<usize>,
    /// Every n-gram's bucket, in text order (before counting).
    raw: Vec<u32>,
    /// Dense per-bucket counters (u16 keeps the table small enough for L2).
    counts: Vec<u16>,
    touched: Vec<u32>,
    /// Output of [`Featurizer::featurize`]: distinct buckets with raw counts.
    pub(crate) out: Vec<(u32, u32)>,
    /// The model's selected columns of `out` with their TF-IDF values.
    pub(crate) sel: Vec<(u32, f32)>,
}

/// Stateless hashing featurizer; all settings come from the model params.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Featurizer {
    pub(crate) bits: u32,
    pub(crate) word: (usize, usize),
    pub(crate) chars: (usize, usize),
    /// Word tokens of unspaced scripts are single characters
    /// (`BaselineParams::unspaced_chars`).
    pub(crate) unspaced: bool,
}

impl Featurizer {
    pub(crate) fn n_buckets(&self) -> usize {
        1usize << self.bits
    }

    #[inline]
    fn bucket(&self, h: u64) -> u32 {
        (fmix(h) >> (64 - self.bits)) as u32
    }

    /// Hash `text` into `scratch.out`: one `(bucket, count)` per distinct bucket.
    pub(crate) fn featurize(&self, text: &str, s: &mut Scratch) {
        let nb = self.n_buckets();
        if s.counts.len() != nb {
            s.counts.clear();
            s.counts.resize(nb, 0);
        }
        s.raw.clear();
        s.out.clear();

        s.lower.clear();
        if text.is_ascii() {
            s.lower.push_str(text);
            s.lower.make_ascii_lowercase();
        } else {
            for c in text.chars() {
                if c.is_ascii() {
                    s.lower.push(c.to_ascii_lowercase());
                } else {
                    s.lower.extend(c.to_lowercase());
                }
            }
        }
        let Scratch {
            lower,
            word_hashes,
            units,
            raw,
            counts,
            touched,
            out,
            ..
        } = s;
        let mut emit = |b: u32| raw.push(b);

        if self.word.0 > 0 {
            word_hashes.clear();
            tokenize_words(lower, self.unspaced, |tok| {
                word_hashes.push(fnv(FNV_OFFSET, tok.as_bytes()))
            });
            for n in self.word.0..=self.word.1 {
                if n > word_hashes.len() {
                    break;
                }
                for win in word_hashes.windows(n) {
                    let mut g = NS_WORD ^ (n as u64);
                    for &h in win {
                        g = (g.rotate_left(23) ^ h).wrapping_mul(FNV_PRIME);
                    }
                    emit(self.bucket(g));
                }
            }
        }

        if self.chars.0 > 0 {
            for w in lower.split_whitespace() {
                self.char_ngrams(w, units, true, &mut emit);
            }
        }

        count(raw, counts, touched, out);
    }

    /// `char_wb` n-gram buckets of one whitespace-free word, in order.
    /// `fast` allows the byte path for plain ASCII words; both paths hash the
    /// same units the same way (FNV over each unit's bytes).
    #[inline]
    fn char_ngrams(&self, w: &str, units: &mut Vec<usize>, fast: bool, emit: &mut impl FnMut(u32)) {
        let bytes = w.as_bytes();
        if fast && w.is_ascii() && !bytes.contains(&b'<') {
            // Every unit is one byte; unit 0 and m+1 are the padding spaces.
            let m = bytes.len();
            let unit = |u: usize| {
                if u == 0 || u == m + 1 {
                    b' '
                } else {
                    bytes[u - 1]
                }
            };
            self.unit_ngrams(m + 2, |h, u| fnv1a(h, [u64::from(unit(u))]), emit);
            return;
        }
        // Unit boundaries inside `w`; unit 0 and unit m+1 are the padding
        // spaces of char_wb.
        units.clear();
        let mut i = 0;
        while i < bytes.len() {
            let end = placeholder_end(bytes, i)
                .unwrap_or_else(|| i + w[i..].chars().next().map_or(1, char::len_utf8));
            units.push(i);
            i = end;
        }
        units.push(bytes.len());
        let m = units.len() - 1;
        let unit = |u: usize| -> &[u8] {
            if u == 0 || u == m + 1 {
                b" "
            } else {
                &bytes[units[u - 1]..units[u]]
            }
        };
        self.unit_ngrams(m + 2, |h, u| fnv(h, unit(u)), emit);
    }

    /// The n-grams (`chars.0..=chars.1` units long) of a `total`-unit word,
    /// hashed by `step(hash, unit index)`, in order of start then length.
    /// Like scikit-learn, a word shorter than the smallest n-gram is counted
    /// once, whole.
    #[inline(always)]
    fn unit_ngrams(
        &self,
        total: usize,
        step: impl Fn(u64, usize) -> u64,
        emit: &mut impl FnMut(u32),
    ) {
        let (lo, hi) = self.chars;
        if total < lo {
            let h = (0..total).fold(FNV_OFFSET ^ NS_CHAR, &step);
            emit(self.bucket(h));
            return;
        }
        for start in 0..total {
            let mut h = FNV_OFFSET ^ NS_CHAR;
            for len in 1..=hi.min(total - start) {
                h = step(h, start + len - 1);
                if len >= lo {
                    emit(self.bucket(h));
                }
            }
        }
    }
}

/// Count `raw` buckets into `out` as `(bucket, count)`, first occurrence
/// order. The counter table is far larger than L1 and each n-gram lands on a
/// random line of it, so the line `AHEAD` n-grams on is prefetched while this
/// one is counted, and a first occurrence is recorded without a branch (about
/// two n-grams in three are first occurrences, too many to predict).
/// `counts` is all zeros before and after.
fn count(raw: &[u32], counts: &mut [u16], touched: &mut Vec<u32>, out: &mut Vec<(u32, u32)>) {
    const AHEAD: usize = 12;
    touched.clear();
    touched.resize(raw.len(), 0);
    let mut n = 0;
    for (i, &b) in raw.iter().enumerate() {
        if let Some(&next) = raw.get(i + AHEAD) {
            prefetch(counts, next as usize);
        }
        let c = counts[b as usize];
        touched[n] = b;
        n += usize::from(c == 0);
        counts[b as usize] = c.saturating_add(1);
    }
    out.extend(touched[..n].iter().map(|&b| {
        let c = std::mem::take(&mut counts[b as usize]);
        (b, u32::from(c))
    }));
}

/// Hint that `slice[i]` will be used soon; a no-op off x86-64 or out of range.
#[inline(always)]
pub(crate) fn prefetch<T>(slice: &[T], i: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(x) = slice.get(i) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch never faults, and SSE is part of x86-64.
        #[allow(unused_unsafe)]
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>((x as *const T).cast::<i8>());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (slice, i);
}

/// Word tokens: placeholders `<...>` whole, else runs of alphanumerics and
/// `_`. Like scikit-learn, one-letter ASCII tokens are dropped; a single
/// non-ASCII character (often a CJK word) is kept.
fn tokenize_words(text: &str, unspaced_chars: bool, mut f: impl FnMut(&str)) {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if let Some(end) = placeholder_end(bytes, i) {
            f(&text[i..end]);
            i = end;
            continue;
        }
        let Some(c) = text[i..].chars().next() else {
            break;
        };
        if unspaced_chars && unspaced(c) {
            // One token per character and the marks that sit on it.
            let start = i;
            i += c.len_utf8();
            for m in text[i..].chars().take_while(|&m| combining_mark(m)) {
                i += m.len_utf8();
            }
            f(&text[start..i]);
            continue;
        }
        if !is_word_char(c, unspaced_chars) {
            i += c.len_utf8();
            continue;
        }
        let start = i;
        let mut n_chars = 0;
        for c in text[start..].chars() {
            if !is_word_char(c, unspaced_chars) {
                break;
            }
            i += c.len_utf8();
            n_chars += 1;
        }
        if n_chars >= 2 || !c.is_ascii() {
            f(&text[start..i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feats(f: &Featurizer, text: &str) -> Vec<(u32, u32)> {
        let mut s = Scratch::default();
        f.featurize(text, &mut s);
        let mut v = s.out.clone();
        v.sort_unstable();
        v
    }

    const F: Featurizer = Featurizer {
        bits: 18,
        word: (1, 2),
        chars: (2, 5),
        unspaced: true,
    };

    #[test]
    fn deterministic_and_discriminative() {
        let a = feats(&F, "Where is my refund for order <ORDER_ID>?");
        let mut s = Scratch::default();
        // Same scratch reused across texts gives the same answer.
        F.featurize("something else entirely", &mut s);
        F.featurize("Where is my refund for order <ORDER_ID>?", &mut s);
        let mut b = s.out.clone();
        b.sort_unstable();
        assert_eq!(a, b);
        assert_eq!(a, feats(&F, "WHERE IS MY REFUND FOR ORDER <order_id>?"));
        let c = feats(&F, "The parcel arrived damaged, I want a replacement");
        assert_ne!(a, c);
        assert!(!a.is_empty() && !c.is_empty());
    }

    #[test]
    fn counts_match_ngram_totals() {
        // "ab cd": words ab, cd, bigram "ab cd" = 3; char_wb 2..5 over " ab "
        // (4 units): 3 + 2 + 1 = 6 per word = 12. Total 15 n-grams.
        let total: u32 = feats(&F, "ab cd").iter().map(|x| x.1).sum();
        assert_eq!(total, 15);
        // A placeholder is one unit: " <x_y> " has 3 units -> 2 + 1 char n-grams,
        // plus one word.
        let total: u32 = feats(&F, "<X_Y>").iter().map(|x| x.1).sum();
        assert_eq!(total, 4);
    }

    fn tokens(text: &str, unspaced: bool) -> Vec<String> {
        let mut toks = Vec::new();
        tokenize_words(text, unspaced, |t| toks.push(t.to_string()));
        toks
    }

    #[test]
    fn tokenizer_keeps_placeholders_and_drops_single_letters() {
        let text = "i need <order_id>, a refund! 退款";
        assert_eq!(
            tokens(text, false),
            ["need", "<order_id>", "refund", "退款"]
        );
        assert_eq!(
            tokens(text, true),
            ["need", "<order_id>", "refund", "退", "款"]
        );
    }

    #[test]
    fn unspaced_scripts_give_one_token_per_character_with_its_marks() {
        // Vowel and tone marks stay on their letter. Without the setting a
        // Thai run is one word cut at every tone mark (those are not
        // alphabetic, the vowel signs are).
        assert_eq!(
            tokens("ยังไม่ได้รับ ok", true),
            ["ยั", "ง", "ไ", "ม่", "ไ", "ด้", "รั", "บ", "ok"]
        );
        assert_eq!(tokens("ยังไม่ได้รับ", false), ["ยังไม", "ได", "รับ"]);
        // Latin text with diacritics is one word either way.
        assert_eq!(tokens("chưa nhận được", true), ["chưa", "nhận", "được"]);
        assert_eq!(
            tokens("chưa nhận được", false),
            tokens("chưa nhận được", true)
        );
    }

    #[test]
    fn ascii_fast_path_matches_the_general_path() {
        let mut units = Vec::new();
        for w in [
            "a",
            "ab",
            "refund",
            "parcel-123",
            "x_y",
            "supercalifragilistic",
        ] {
            let (mut fast, mut general) = (Vec::new(), Vec::new());
            F.char_ngrams(w, &mut units, true, &mut |b| fast.push(b));
            F.char_ngrams(w, &mut units, false, &mut |b| general.push(b));
            assert_eq!(fast, general, "{w}");
            assert!(!fast.is_empty());
        }
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        for t in ["", " ", "<", "<>", "<a", "a>", "\u{0130}stanbul", "😀😀 x"] {
            let _ = feats(&F, t);
        }
        assert!(feats(&F, "").is_empty());
    }
}
