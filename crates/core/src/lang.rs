//! Which language a case is written in: a small, fast detector for routing
//! and slicing, not a general-purpose identifier.
//!
//! Scripts decide first (Thai, Han, kana, Hangul, Cyrillic, Arabic,
//! Devanagari); Latin-script text is scored by function words and common
//! marketplace words of English, Indonesian, Malay, Tagalog, Vietnamese,
//! Spanish, Portuguese, French, German and Italian, plus the letters only
//! Vietnamese uses. In a transcript with `[buyer]` turns only the buyer's
//! lines count: the case's language is the customer's, whatever language the
//! agent answered in. Code-mixed text ("mau refund dong kak") goes to the
//! non-English language when it carries at least half of English's evidence.
//! Text with too little evidence (a greeting, a number) is [`UNDETERMINED`].

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

/// The code for text whose language could not be told.
pub const UNDETERMINED: &str = "und";

/// At most this many characters of the (buyer) text are read.
const MAX_CHARS: usize = 2_000;

/// The Latin-script languages scored by words, in bit order.
const LATIN: [&str; 10] = ["en", "id", "ms", "tl", "vi", "es", "pt", "fr", "de", "it"];

/// Words (lowercase) and the Latin-script languages they are evidence for.
/// Words shared by two languages count for both; the words only one of them
/// uses decide between them.
const WORDS: &[(&str, &[&str])] = &[
    (
        "the and is are was were to of it my you your this that with for have has not \
         but be been do did does can could would will please thanks thank what when why how \
         there they them i me we our received order item refund return still already",
        &["en"],
    ),
    (
        "yang dan tidak sudah belum ini itu kak dong barang pesanan tolong mau gak nggak \
         udah aku untuk dengan kenapa sampai gan masih juga karena kok ya sih banget \
         saja aja kapan gimana bagaimana uangnya dananya pengembalian kurir paket",
        &["id"],
    ),
    (
        "saya ada bisa apa terima kasih dah barang ke sebab",
        &["id", "ms"],
    ),
    (
        "tak nak boleh bila awak kat wang tempahan bayaran pulangan encik macam mana",
        &["ms"],
    ),
    (
        "ang ng mga po hindi yung lang naman ako ba kasi talaga opo ito wala pero sana \
         nyo ko niyo paano bakit",
        &["tl"],
    ),
    (
        "toi khong duoc hang cua chua tien giao nhan roi minh voi oi em anh chi lam sao \
         nhe ạ",
        &["vi"],
    ),
    (
        "el los las y mi mis por pero muy hola gracias quiero usted hasta cuando dónde \
         pedí llegó todavía aún recibí reembolso devolución también",
        &["es"],
    ),
    (
        "de que en para con pedido una producto ya se lo es",
        &["es", "pt"],
    ),
    (
        "não você meu minha obrigado obrigada ainda já está foi um com recebi devolução \
         reembolso também até quando",
        &["pt"],
    ),
    (
        "le les des est je pas mon ma avec pour commande merci vous",
        &["fr"],
    ),
    (
        "der die das und ist nicht ich mein meine bestellung bitte danke sie mit",
        &["de"],
    ),
    ("il che non per sono mio ordine grazie ciao della", &["it"]),
];

/// Longest listed word in bytes; longer words are not looked up.
const MAX_WORD: usize = 16;

/// FNV-1a over a word's bytes: the table's keys are a few hundred short
/// words, where SipHash's setup would cost more than the lookup.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(crate::hash::FNV_OFFSET)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = crate::hash::fnv1a(self.0, bytes.iter().map(|&b| u64::from(b)));
    }
}

type Table = HashMap<&'static [u8], u16, std::hash::BuildHasherDefault<Fnv>>;

/// Word (lowercase UTF-8 bytes) -> bit set over [`LATIN`]. A word listed for
/// several languages (e.g. `reembolso` for both Spanish and Portuguese)
/// counts for each.
static TABLE: LazyLock<Table> = LazyLock::new(|| {
    let mut m = Table::default();
    for (words, langs) in WORDS {
        let bits = langs
            .iter()
            .map(|l| 1u16 << LATIN.iter().position(|x| x == l).expect("listed language"))
            .fold(0, |a, b| a | b);
        for w in words.split_whitespace() {
            debug_assert!(w.len() <= MAX_WORD, "{w}");
            *m.entry(w.as_bytes()).or_default() |= bits;
        }
    }
    m
});

/// Letters only Vietnamese uses among the Latin-script languages here
/// (ă, đ, ơ, ư and the precomposed vowels with tone marks).
fn vietnamese_letter(c: char) -> bool {
    matches!(
        c,
        'ă' | 'Ă' | 'đ' | 'Đ' | 'ơ' | 'Ơ' | 'ư' | 'Ư' | '\u{1EA0}'..='\u{1EF9}'
    )
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Script {
    Thai,
    Han,
    Kana,
    Hangul,
    Cyrillic,
    Arabic,
    Devanagari,
}

impl Script {
    const ALL: [Script; 7] = [
        Self::Thai,
        Self::Han,
        Self::Kana,
        Self::Hangul,
        Self::Cyrillic,
        Self::Arabic,
        Self::Devanagari,
    ];

    fn of(c: char) -> Option<Self> {
        Some(match c {
            '\u{0E00}'..='\u{0E7F}' => Self::Thai,
            '\u{4E00}'..='\u{9FFF}' | '\u{3400}'..='\u{4DBF}' | '\u{F900}'..='\u{FAFF}' => {
                Self::Han
            }
            '\u{3040}'..='\u{30FF}' => Self::Kana,
            '\u{AC00}'..='\u{D7AF}' | '\u{1100}'..='\u{11FF}' => Self::Hangul,
            '\u{0400}'..='\u{04FF}' => Self::Cyrillic,
            '\u{0600}'..='\u{06FF}' => Self::Arabic,
            '\u{0900}'..='\u{097F}' => Self::Devanagari,
            _ => return None,
        })
    }

    /// About how many characters of the script make one word's worth of
    /// evidence, so that scripts and Latin words weigh alike.
    fn chars_per_word(self) -> usize {
        match self {
            Self::Han | Self::Kana => 2,
            Self::Hangul => 3,
            _ => 5,
        }
    }
}

/// Evidence gathered from a text, one character at a time.
#[derive(Default)]
struct Scan {
    script_chars: [usize; Script::ALL.len()],
    latin: [usize; LATIN.len()],
    vi_letters: usize,
    /// The current word, lowercased; `len > MAX_WORD` means too long to
    /// be listed.
    word: [u8; MAX_WORD],
    len: usize,
    seen: usize,
}

impl Scan {
    fn end_word(&mut self) {
        if (1..=MAX_WORD).contains(&self.len) {
            if let Some(bits) = TABLE.get(&self.word[..self.len]) {
                for (k, n) in self.latin.iter_mut().enumerate() {
                    *n += usize::from(bits >> k & 1 == 1);
                }
            }
        }
        self.len = 0;
    }

    fn push_letter(&mut self, c: char) {
        let mut buf = [0u8; 4];
        for l in c.to_lowercase() {
            let b = l.encode_utf8(&mut buf).as_bytes();
            if self.len + b.len() <= MAX_WORD {
                self.word[self.len..self.len + b.len()].copy_from_slice(b);
            }
            self.len += b.len();
        }
    }

    /// Read `text` until [`MAX_CHARS`] characters have been read in all.
    fn feed(&mut self, text: &str) {
        for c in text.chars() {
            if self.seen == MAX_CHARS {
                break;
            }
            self.seen += 1;
            if c.is_ascii() {
                if c.is_ascii_alphabetic() {
                    if self.len < MAX_WORD {
                        self.word[self.len] = c.to_ascii_lowercase() as u8;
                    }
                    self.len += 1;
                } else {
                    self.end_word();
                }
            } else if let Some(s) = Script::of(c) {
                self.script_chars[s as usize] += 1;
                self.end_word();
            } else if c.is_alphabetic() {
                self.vi_letters += usize::from(vietnamese_letter(c));
                self.push_letter(c);
            } else {
                self.end_word();
            }
        }
        self.end_word();
    }
}

/// The language of one case as an ISO 639-1 code (`en`, `id`, `th`, `zh`,
/// ...) or [`UNDETERMINED`]. In a transcript with `[buyer]` lines only
/// those are read: the case's language is the customer's.
pub fn detect(text: &str) -> &'static str {
    let mut scan = Scan::default();
    if text.contains("[buyer]") {
        for line in text.lines() {
            if let Some(rest) = line.trim_start().strip_prefix("[buyer]") {
                scan.feed(rest);
            }
        }
    } else {
        scan.feed(text);
    }
    let Scan {
        script_chars,
        mut latin,
        vi_letters,
        ..
    } = scan;
    // Vietnamese letters are evidence of their own (a word holds one or two).
    latin[4] += vi_letters.div_ceil(2);

    let scripts = Script::ALL.map(|s| script_chars[s as usize] / s.chars_per_word());
    let en = latin[0];
    // The strongest non-English candidate, scripts and Latin languages alike.
    let mut best: Option<(&'static str, usize)> = None;
    let mut consider = |code: &'static str, n: usize| {
        if n > 0 && best.is_none_or(|(_, b)| n > b) {
            best = Some((code, n));
        }
    };
    // Kana marks Japanese even where Han characters outnumber it.
    let han_or_ja = if scripts[Script::Kana as usize] > 0 {
        (
            "ja",
            scripts[Script::Han as usize] + scripts[Script::Kana as usize],
        )
    } else {
        ("zh", scripts[Script::Han as usize])
    };
    consider(han_or_ja.0, han_or_ja.1);
    consider("th", scripts[Script::Thai as usize]);
    consider("ko", scripts[Script::Hangul as usize]);
    consider("ru", scripts[Script::Cyrillic as usize]);
    consider("ar", scripts[Script::Arabic as usize]);
    consider("hi", scripts[Script::Devanagari as usize]);
    for (k, &code) in LATIN.iter().enumerate().skip(1) {
        consider(code, latin[k]);
    }
    match best {
        Some((code, n)) if n >= 2 && 2 * n >= en => code,
        _ if en >= 2 => "en",
        _ => UNDETERMINED,
    }
}

/// Cases of a language a model must have seen to know it.
pub const MIN_CASES: usize = 20;

/// How many texts of each language (`und` included) there are.
pub fn count<'a>(texts: impl Iterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for t in texts {
        *n.entry(detect(t).to_string()).or_default() += 1;
    }
    n
}

/// The languages a model knows (those of at least [`MIN_CASES`] training
/// cases) and the note a case in another language gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    known: Vec<String>,
}

impl Coverage {
    /// From a manifest's `languages`; empty (a bundle written before they
    /// were recorded) means unknown, and then no case gets a note.
    pub fn new(languages: &BTreeMap<String, usize>) -> Self {
        Self {
            known: languages
                .iter()
                .filter(|(l, &n)| l.as_str() != UNDETERMINED && n >= MIN_CASES)
                .map(|(l, _)| l.clone())
                .collect(),
        }
    }

    pub fn known(&self) -> &[String] {
        &self.known
    }

    /// The per-case note for a case detected as `lang`: `None` when the
    /// model was trained on that language (or its languages are unknown).
    pub fn note(&self, lang: &str) -> Option<String> {
        if self.known.is_empty() || self.known.iter().any(|l| l == lang) {
            return None;
        }
        let known = self.known.join(", ");
        Some(if lang == UNDETERMINED {
            format!("language not recognised (too little text); the model knows {known}")
        } else {
            format!(
                "language '{lang}' is not one the model was trained on ({known}); check the tag"
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_the_marketplace_languages_apart() {
        for (text, want) in [
            (
                "I ordered the air fryer two weeks ago and it still has not arrived.",
                "en",
            ),
            (
                "Kak, barang saya belum sampai padahal sudah 10 hari. Tolong dicek ya",
                "id",
            ),
            (
                "Saya nak pulangan wang, barang tak sampai lagi. Boleh check?",
                "ms",
            ),
            ("Hindi pa po dumating yung order ko, paano po ito?", "tl"),
            (
                "Shop ơi, em chưa nhận được hàng, đơn hàng giao chậm quá",
                "vi",
            ),
            ("shop oi em chua nhan duoc hang, khong biet giao chua", "vi"),
            (
                "Hola, todavía no recibí mi pedido y ya pasaron dos semanas.",
                "es",
            ),
            (
                "Olá, ainda não recebi o meu pedido, você pode verificar?",
                "pt",
            ),
            ("ฉันยังไม่ได้รับสินค้าเลยค่ะ ช่วยตรวจสอบให้หน่อยได้ไหมคะ", "th"),
            ("亲，我的快递还没到，已经十天了，帮我查一下", "zh"),
            ("注文した商品がまだ届きません。確認してください。", "ja"),
            ("주문한 상품이 아직 도착하지 않았어요", "ko"),
            (
                "Je n'ai pas reçu ma commande, merci de vérifier avec le vendeur",
                "fr",
            ),
            (
                "Ich habe meine Bestellung nicht bekommen, bitte prüfen Sie das",
                "de",
            ),
        ] {
            assert_eq!(detect(text), want, "{text}");
        }
    }

    #[test]
    fn the_customer_language_wins_over_the_agent_and_loanwords() {
        let t = "[agent] Hello, thank you for contacting us. How can I help you today?\n\
                 [buyer] kak mau refund dong, barangnya rusak\n\
                 [agent] I'm sorry to hear that. Could you share your order number?\n\
                 [buyer] udah saya kirim fotonya kak";
        assert_eq!(detect(t), "id");
        let t = "[agent] Hi, you're chatting with Mei. How can I help?\n[buyer] 我要 refund 啦, tracking number 查不到";
        assert_eq!(detect(t), "zh");
        // A few Spanish names in English text do not make it Spanish.
        let t = "I sent the parcel to La Paz for my friend Maria and it is still not there, can you check the order?";
        assert_eq!(detect(t), "en");
    }

    #[test]
    fn a_model_knows_the_languages_it_saw_enough_of() {
        let langs = BTreeMap::from([
            ("en".to_string(), 900),
            ("id".to_string(), 40),
            ("th".to_string(), 3),
            ("und".to_string(), 50),
        ]);
        let c = Coverage::new(&langs);
        assert_eq!(c.known(), ["en", "id"]);
        assert_eq!(c.note("en"), None);
        assert_eq!(c.note("id"), None);
        let th = c.note("th").unwrap();
        assert!(th.contains("'th'") && th.contains("en, id"), "{th}");
        assert!(c
            .note(UNDETERMINED)
            .unwrap()
            .starts_with("language not recognised"));
        // A bundle without recorded languages gives no notes.
        assert_eq!(Coverage::new(&BTreeMap::new()).note("th"), None);
        let n = count(
            [
                "hello, my order has not arrived",
                "ok",
                "barang saya belum sampai kak",
            ]
            .into_iter(),
        );
        assert_eq!(
            n,
            BTreeMap::from([("en".into(), 1), ("id".into(), 1), ("und".into(), 1)])
        );
    }

    #[test]
    fn too_little_text_is_undetermined() {
        for t in ["", "ok", "12345 678", "???", "[buyer] hi"] {
            assert_eq!(detect(t), UNDETERMINED, "{t:?}");
        }
    }
}
