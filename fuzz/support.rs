//! Shared machinery of the fuzz property tests (`tests/fuzz_*.rs` in the
//! core, data and server crates include this file with `#[path]`).
//!
//! Every target first replays its seed corpus (`fuzz/corpus/<target>/`,
//! each file as it is), then runs a fixed number of proptest cases that take
//! a corpus file and apply a short list of mutations to it: bit flips, byte
//! overwrites, insertions of tokens that parsers get wrong (quotes, NUL,
//! invalid UTF-8, huge numbers, deep nesting, YAML anchors), deletions,
//! truncations, repeated slices and splices from other corpus files. Inputs
//! are capped in size, so every case is bounded.
//!
//! The run is deterministic: the case count comes from `CASETAG_FUZZ_CASES`
//! (default small enough for CI) and the seed from `CASETAG_FUZZ_SEED`
//! (default 0) mixed with the target name. A failure is shrunk and printed
//! with the target, the seed and the smallest failing input; add that input
//! to the target's corpus directory to keep it as a regression case.
#![allow(dead_code)] // each test binary uses a different subset

use std::fmt;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};

/// A whole number from the environment variable `name`, else `default`.
fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, got {v:?}")),
        Err(_) => default,
    }
}

/// Number of mutated cases per target: `CASETAG_FUZZ_CASES`, else `default`.
pub fn cases(default: u32) -> u32 {
    env_number("CASETAG_FUZZ_CASES", default)
}

/// The run's seed: `CASETAG_FUZZ_SEED` (default 0) mixed with the target
/// name, so targets explore different inputs under one seed.
pub fn seed(target: &str) -> u64 {
    let base: u64 = env_number("CASETAG_FUZZ_SEED", 0);
    // FNV-1a over the name.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in target.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^ base.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The corpus directory of a target.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

/// One corpus file.
#[derive(Clone)]
pub struct Seed {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// The files of a target's corpus, sorted by name. An empty or missing
/// corpus is an error: the replay would silently test nothing.
pub fn corpus(target: &str) -> Vec<Seed> {
    let dir = corpus_dir(target);
    let mut seeds: Vec<Seed> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .map(|p| Seed {
            name: p.file_name().unwrap().to_string_lossy().into_owned(),
            bytes: std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
        })
        .collect();
    seeds.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(!seeds.is_empty(), "corpus {} is empty", dir.display());
    seeds
}

/// A generated input: where it came from and its bytes (printed escaped).
#[derive(Clone)]
pub struct Input {
    pub origin: String,
    pub bytes: Vec<u8>,
}

impl fmt::Debug for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Input {{ origin: {}, len: {}, bytes: b\"{}\" }}",
            self.origin,
            self.bytes.len(),
            self.bytes.escape_ascii()
        )
    }
}

/// One edit of an input.
#[derive(Clone, Debug)]
pub enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Truncate(Index),
    /// Repeat the slice at the index (length `.1`) `.2` more times.
    Repeat(Index, usize, usize),
    /// Insert a slice (at `.2`, length `.3`) of corpus file `.1`.
    Splice(Index, Index, Index, usize),
}

/// Tokens every target gets besides its own dictionary.
pub const COMMON_TOKENS: &[&[u8]] = &[
    b"\0",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\xef\xbb\xbf",
    b"\r",
    b"\n",
    b"\r\n",
    b"\t",
    b"\x1b[31m",
    b"\"",
    b"'",
    b"\\",
    b"99999999999999999999999999999999",
    b"-9223372036854775809",
    b"1e99999",
    b"-0.0",
    b"NaN",
    b"\xe9\x80\x80\xe8\xb4\xa7",
    b"\xf0\x9f\x93\xa6",
];

fn mutation(dict: &'static [&'static [u8]]) -> impl Strategy<Value = Mutation> {
    let token = prop_oneof![
        3 => proptest::sample::select(dict).prop_map(|t| t.to_vec()),
        2 => proptest::sample::select(COMMON_TOKENS).prop_map(|t| t.to_vec()),
        1 => proptest::collection::vec(any::<u8>(), 1..8),
    ];
    prop_oneof![
        2 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        4 => (any::<Index>(), token).prop_map(|(i, t)| Mutation::Insert(i, t)),
        2 => (any::<Index>(), 1usize..32).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), 1usize..64, 1usize..200)
            .prop_map(|(i, n, k)| Mutation::Repeat(i, n, k)),
        1 => (any::<Index>(), any::<Index>(), any::<Index>(), 1usize..256)
            .prop_map(|(i, s, j, n)| Mutation::Splice(i, s, j, n)),
    ]
}

fn at(i: &Index, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        i.index(len + 1)
    }
}

/// Apply `muts` to `base`, keeping the result at most `max_len` bytes.
pub fn apply(base: &[u8], muts: &[Mutation], seeds: &[Seed], max_len: usize) -> Vec<u8> {
    let mut b = base.to_vec();
    for m in muts {
        match m {
            Mutation::FlipBit(i, bit) if !b.is_empty() => {
                let k = i.index(b.len());
                b[k] ^= 1 << bit;
            }
            Mutation::SetByte(i, v) if !b.is_empty() => {
                let k = i.index(b.len());
                b[k] = *v;
            }
            Mutation::Insert(i, t) => {
                let k = at(i, b.len());
                b.splice(k..k, t.iter().copied());
            }
            Mutation::Delete(i, n) if !b.is_empty() => {
                let k = i.index(b.len());
                let end = (k + n).min(b.len());
                b.drain(k..end);
            }
            Mutation::Truncate(i) => {
                let k = at(i, b.len());
                b.truncate(k);
            }
            Mutation::Repeat(i, n, times) if !b.is_empty() => {
                let k = i.index(b.len());
                let end = (k + n).min(b.len());
                let piece = b[k..end].to_vec();
                let total = piece.len() * times;
                let extra: Vec<u8> = piece.iter().copied().cycle().take(total).collect();
                b.splice(end..end, extra);
            }
            Mutation::Splice(i, s, j, n) => {
                let other = &seeds[s.index(seeds.len())].bytes;
                if !other.is_empty() {
                    let from = j.index(other.len());
                    let to = (from + n).min(other.len());
                    let k = at(i, b.len());
                    b.splice(k..k, other[from..to].iter().copied());
                }
            }
            _ => {}
        }
        b.truncate(max_len);
    }
    b
}

/// Corpus files with up to `max_muts` mutations each, at most `max_len` bytes.
pub fn mutated(
    seeds: Vec<Seed>,
    dict: &'static [&'static [u8]],
    max_muts: usize,
    max_len: usize,
) -> impl Strategy<Value = Input> {
    let n = seeds.len();
    (
        0..n,
        proptest::collection::vec(mutation(dict), 0..=max_muts),
    )
        .prop_map(move |(k, muts)| {
            let s = &seeds[k];
            Input {
                origin: format!("{} + {} mutation(s)", s.name, muts.len()),
                bytes: apply(&s.bytes, &muts, &seeds, max_len),
            }
        })
}

/// Run `test` on every corpus file as it is, naming the file on failure.
pub fn replay(target: &str, mut test: impl FnMut(&Input) -> Result<(), TestCaseError>) {
    for s in corpus(target) {
        let input = Input {
            origin: format!("corpus {target}/{}", s.name),
            bytes: s.bytes,
        };
        if let Err(e) = test(&input) {
            panic!("{target}: corpus file {} fails: {e}", input.origin);
        }
    }
}

/// Run a property over `strategy` with the target's case count and seed.
pub fn check<S: Strategy>(
    target: &str,
    default_cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: fmt::Debug,
{
    let n = cases(default_cases);
    let seed = seed(target);
    let config = Config {
        cases: n,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        // Shrinking is bounded so a failure reports in reasonable time.
        max_shrink_iters: 2048,
        max_shrink_time: 60_000,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    if let Err(e) = runner.run(&strategy, test) {
        panic!(
            "{target}: property failed (cases {n}, CASETAG_FUZZ_SEED={}): {e}",
            std::env::var("CASETAG_FUZZ_SEED").unwrap_or_else(|_| "0".into())
        );
    }
}

/// Replay the corpus, then fuzz it: the usual shape of a byte-level target.
pub fn fuzz_bytes(
    target: &str,
    dict: &'static [&'static [u8]],
    default_cases: u32,
    max_len: usize,
    test: impl Fn(&Input) -> Result<(), TestCaseError>,
) {
    replay(target, &test);
    let seeds = corpus(target);
    check(
        target,
        default_cases,
        mutated(seeds, dict, 6, max_len),
        |i| test(&i),
    );
}

/// `Err` unless `cond`, with the message built lazily.
pub fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if cond {
        Ok(())
    } else {
        Err(TestCaseError::fail(msg()))
    }
}

/// An error message fit for a terminal or a log line: not empty and one line.
pub fn one_line_message(msg: &str) -> Result<(), TestCaseError> {
    ensure(!msg.trim().is_empty(), || "empty error message".into())?;
    ensure(!msg.contains(['\n', '\r']), || {
        format!("error message spans lines: {msg:?}")
    })
}

/// An error message with no raw control characters (escaped or masked
/// instead), so input cannot forge log lines or terminal escapes.
pub fn clean_message(msg: &str) -> Result<(), TestCaseError> {
    one_line_message(msg)?;
    ensure(!msg.chars().any(char::is_control), || {
        format!("error message holds a raw control character: {msg:?}")
    })
}

/// Number of lines of a text input (a last line without `\n` counts).
pub fn line_count(bytes: &[u8]) -> usize {
    let n = bytes.iter().filter(|&&b| b == b'\n').count();
    n + usize::from(!bytes.is_empty() && !bytes.ends_with(b"\n"))
}

/// An error message that says something.
pub fn nonempty_message(msg: &str) -> Result<(), TestCaseError> {
    ensure(!msg.trim().is_empty(), || "empty error message".into())
}
