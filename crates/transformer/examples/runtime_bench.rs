//! The casetag side of `scripts/compare_runtimes.sh`: times the encoder's
//! packed fp32 and int8 forwards on inputs that the Python side prepared, so
//! that PyTorch, ONNX Runtime and casetag see exactly the same token ids,
//! texts and head weights.
//!
//! ```text
//! cargo build --release -p casetag-transformer --example runtime_bench
//! target/release/examples/runtime_bench --encoder DIR --info
//! target/release/examples/runtime_bench --encoder DIR --shapes SHAPES.json
//! target/release/examples/runtime_bench --encoder DIR --embed TEXTS.json
//! target/release/examples/runtime_bench --encoder DIR --e2e E2E.json
//! ```
//!
//! Every mode prints one JSON object on stdout (progress goes to stderr) with
//! a `runtime` member: the fp32 and int8 kernels this process runs and its
//! rayon thread count (set `RAYON_NUM_THREADS` to pin it). Input files:
//!
//! * `--shapes`: `{"cases": [{"name": "1x16", "ids": [[101, ..., 102]],
//!   "warmup": 5, "runs": 50}, ...]}`. Each case's batch goes through
//!   `Encoder::embed_ids` (forward plus mean pooling) `warmup` times untimed
//!   and then `runs` times timed, at fp32 and then at int8 (or only at
//!   `--precision f32|int8`, e.g. to profile one of them). Output: every
//!   run's milliseconds per case and precision (statistics are left to the
//!   caller).
//! * `--embed`: `{"texts": [...], "max_tokens": 128, "batch_size": 32}`.
//!   Output: the token ids (head truncation) and the mean-pooled, not
//!   normalized, embeddings of every text at fp32 and at int8.
//! * `--e2e`: `{"max_tokens": 128, "batch_size": 32, "warmup": 1, "runs": 3,
//!   "datasets": [{"name": "...", "texts": [...], "head": {"weight": [[..];
//!   classes], "bias": [..]}}]}`. One timed run is, over all texts:
//!   tokenize (head truncation), `embed_ids` (sorted by length, sub-batches
//!   of `batch_size`; casetag's packed path pads nothing at all), the linear
//!   head and argmax. Warm-up runs cover the first 4 batches only. Output:
//!   every run's milliseconds, the token count and the predicted class of
//!   every text (last run).

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use candle_core::Device;
use casetag_transformer::{Encoder, Precision, Truncation};
use serde::Deserialize;
use serde_json::{json, Value};

/// What went wrong, as one line for stderr.
type Res<T> = std::result::Result<T, String>;

const USAGE: &str = "usage: runtime_bench --encoder DIR (--info | --shapes FILE [--precision f32|int8] | --embed FILE | --e2e FILE)";

/// One synthetic batch to time (`--shapes`).
#[derive(Deserialize)]
struct ShapeCase {
    name: String,
    /// Token ids per sequence, special tokens included.
    ids: Vec<Vec<u32>>,
    #[serde(default = "default_warmup")]
    warmup: usize,
    runs: usize,
}

fn default_warmup() -> usize {
    3
}

fn default_max_tokens() -> usize {
    128
}

fn default_batch() -> usize {
    32
}

fn default_runs() -> usize {
    3
}

fn default_e2e_warmup() -> usize {
    1
}

#[derive(Deserialize)]
struct ShapesFile {
    cases: Vec<ShapeCase>,
}

#[derive(Deserialize)]
struct EmbedFile {
    texts: Vec<String>,
    #[serde(default = "default_max_tokens")]
    max_tokens: usize,
    #[serde(default = "default_batch")]
    batch_size: usize,
}

/// A linear head: `classes x hidden` weights and one bias per class.
#[derive(Deserialize)]
struct Head {
    weight: Vec<Vec<f32>>,
    bias: Vec<f32>,
}

#[derive(Deserialize)]
struct Dataset {
    name: String,
    texts: Vec<String>,
    head: Head,
}

#[derive(Deserialize)]
struct E2eFile {
    #[serde(default = "default_max_tokens")]
    max_tokens: usize,
    #[serde(default = "default_batch")]
    batch_size: usize,
    #[serde(default = "default_e2e_warmup")]
    warmup: usize,
    #[serde(default = "default_runs")]
    runs: usize,
    datasets: Vec<Dataset>,
}

/// The mode picked on the command line.
enum Mode {
    Help,
    Info,
    /// The shapes file and the precisions to time.
    Shapes(String, Vec<Precision>),
    Embed(String),
    E2e(String),
}

fn parse_args(args: &[String]) -> Res<(String, Mode)> {
    let mut encoder = None;
    let mut mode = None;
    let mut precision = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))
        };
        let m = match a.as_str() {
            "--encoder" => {
                encoder = Some(value("--encoder")?);
                continue;
            }
            "--info" => Mode::Info,
            "--shapes" => Mode::Shapes(value("--shapes")?, PRECISIONS.to_vec()),
            "--precision" => {
                let v = value("--precision")?;
                let p = PRECISIONS.into_iter().find(|p| p.name() == v);
                precision = Some(p.ok_or_else(|| format!("--precision {v}: f32 or int8"))?);
                continue;
            }
            "--embed" => Mode::Embed(value("--embed")?),
            "--e2e" => Mode::E2e(value("--e2e")?),
            "-h" | "--help" => Mode::Help,
            other => return Err(format!("unknown argument '{other}'; {USAGE}")),
        };
        if mode.replace(m).is_some() {
            return Err(format!("give exactly one mode; {USAGE}"));
        }
    }
    let mut mode = mode.ok_or_else(|| format!("no mode given; {USAGE}"))?;
    match (&mut mode, precision) {
        (Mode::Shapes(_, ps), Some(p)) => *ps = vec![p],
        (_, Some(_)) => return Err(format!("--precision goes with --shapes; {USAGE}")),
        _ => {}
    }
    if matches!(mode, Mode::Help) {
        return Ok((String::new(), mode));
    }
    let encoder = encoder.ok_or_else(|| format!("--encoder DIR is required; {USAGE}"))?;
    Ok((encoder, mode))
}

/// Read and parse a JSON input file, naming it in any error.
fn read_json<T: for<'de> Deserialize<'de>>(path: &str) -> Res<T> {
    let text = std::fs::read_to_string(Path::new(path)).map_err(|e| format!("{path}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{path}: not the expected JSON: {e}"))
}

fn load(dir: &str, precision: Precision) -> Res<Encoder> {
    let mut e = Encoder::load(dir, &Device::Cpu).map_err(|e| e.to_string())?;
    e.set_precision(precision);
    Ok(e)
}

/// Mean-pooled embeddings of `seqs` as a flat row-major vector.
fn embed_flat(e: &Encoder, seqs: &[Vec<u32>], batch: usize) -> Res<Vec<f32>> {
    e.embed_ids(seqs, batch)
        .and_then(|t| Ok(t.flatten_all()?.to_vec1::<f32>()?))
        .map_err(|e| e.to_string())
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

const PRECISIONS: [Precision; 2] = [Precision::F32, Precision::Int8];

/// `--e2e` warm-up runs tokenize and embed this many batches (not the whole
/// set): enough to pack the weights and size the buffers.
const WARMUP_BATCHES: usize = 4;

fn shapes(dir: &str, path: &str, precisions: &[Precision]) -> Res<Value> {
    let file: ShapesFile = read_json(path)?;
    let mut out = Vec::new();
    for &p in precisions {
        let e = load(dir, p)?;
        let vocab = e.config().vocab_size as u32;
        let max_len = e.max_positions();
        for case in &file.cases {
            let bad_len = case.ids.iter().any(|s| s.is_empty() || s.len() > max_len);
            if case.ids.is_empty() || bad_len {
                return Err(format!(
                    "{path}: case '{}': needs 1 or more sequences of 1..={max_len} ids",
                    case.name
                ));
            }
            if let Some(id) = case.ids.iter().flatten().find(|&&id| id >= vocab) {
                return Err(format!(
                    "{path}: case '{}': token id {id} is not below vocab_size {vocab}",
                    case.name
                ));
            }
            if case.runs == 0 {
                return Err(format!("{path}: case '{}': runs must be >= 1", case.name));
            }
            let batch = case.ids.len();
            for _ in 0..case.warmup {
                std::hint::black_box(embed_flat(&e, &case.ids, batch)?);
            }
            let mut times = Vec::with_capacity(case.runs);
            for _ in 0..case.runs {
                let t = Instant::now();
                std::hint::black_box(embed_flat(&e, &case.ids, batch)?);
                times.push(ms_since(t));
            }
            eprintln!("runtime_bench: {} {} done", p.name(), case.name);
            out.push(json!({"name": case.name, "precision": p.name(), "times_ms": times}));
        }
    }
    Ok(json!({"runtime": casetag_transformer::runtime_report(), "results": out}))
}

fn embed(dir: &str, path: &str) -> Res<Value> {
    let file: EmbedFile = read_json(path)?;
    let refs: Vec<&str> = file.texts.iter().map(String::as_str).collect();
    let mut out = json!({"runtime": casetag_transformer::runtime_report()});
    for p in PRECISIONS {
        let e = load(dir, p)?;
        let ids = e
            .tokenize(&refs, file.max_tokens, Truncation::Head)
            .map_err(|e| e.to_string())?;
        let flat = embed_flat(&e, &ids, file.batch_size.max(1))?;
        let rows: Vec<&[f32]> = flat.chunks(e.hidden_size()).collect();
        out[p.name()] = json!(rows);
        out["ids"] = json!(ids);
    }
    Ok(out)
}

/// Index of the largest logit of `w x + b` (the first one on ties).
fn argmax_head(head: &Head, x: &[f32]) -> usize {
    let mut best = (0, f32::NEG_INFINITY);
    for (k, (w, b)) in head.weight.iter().zip(&head.bias).enumerate() {
        let z = b + w.iter().zip(x).map(|(a, b)| a * b).sum::<f32>();
        if z > best.1 {
            best = (k, z);
        }
    }
    best.0
}

fn e2e(dir: &str, path: &str) -> Res<Value> {
    let file: E2eFile = read_json(path)?;
    if file.runs == 0 {
        return Err(format!("{path}: runs must be >= 1"));
    }
    let mut out = Vec::new();
    for p in PRECISIONS {
        let e = load(dir, p)?;
        let h = e.hidden_size();
        for d in &file.datasets {
            let head = &d.head;
            if head.weight.is_empty()
                || head.weight.len() != head.bias.len()
                || head.weight.iter().any(|r| r.len() != h)
            {
                return Err(format!(
                    "{path}: dataset '{}': head needs classes x {h} weights and one bias per class",
                    d.name
                ));
            }
            let refs: Vec<&str> = d.texts.iter().map(String::as_str).collect();
            let batch = file.batch_size.max(1);
            let once = |texts: &[&str]| -> Res<(Vec<usize>, usize)> {
                let ids = e
                    .tokenize(texts, file.max_tokens, Truncation::Head)
                    .map_err(|e| e.to_string())?;
                let x = embed_flat(&e, &ids, batch)?;
                let pred = x.chunks(h).map(|r| argmax_head(head, r)).collect();
                Ok((pred, ids.iter().map(Vec::len).sum()))
            };
            // Warm-up runs read the first WARMUP_BATCHES batches only.
            for _ in 0..file.warmup {
                once(&refs[..refs.len().min(WARMUP_BATCHES * batch)])?;
            }
            let mut times = Vec::with_capacity(file.runs);
            let mut last = (Vec::new(), 0);
            for _ in 0..file.runs {
                let t = Instant::now();
                last = once(&refs)?;
                times.push(ms_since(t));
            }
            eprintln!("runtime_bench: {} e2e {} done", p.name(), d.name);
            out.push(json!({
                "name": d.name,
                "precision": p.name(),
                "n": d.texts.len(),
                "tokens": last.1,
                "times_ms": times,
                "pred": last.0,
            }));
        }
    }
    Ok(json!({"runtime": casetag_transformer::runtime_report(), "results": out}))
}

fn run() -> Res<Value> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, mode) = parse_args(&args)?;
    match mode {
        Mode::Help => {
            println!(
                "{USAGE}\n(see the doc comment of crates/transformer/examples/runtime_bench.rs)"
            );
            std::process::exit(0);
        }
        Mode::Info => {
            // Load once so that a bad encoder directory fails here too.
            let e = load(&dir, Precision::F32)?;
            Ok(json!({"runtime": casetag_transformer::runtime_report(), "hidden": e.hidden_size()}))
        }
        Mode::Shapes(f, precisions) => shapes(&dir, &f, &precisions),
        Mode::Embed(f) => embed(&dir, &f),
        Mode::E2e(f) => e2e(&dir, &f),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(msg) => {
            eprintln!("runtime_bench: {msg}");
            ExitCode::from(2)
        }
    }
}
