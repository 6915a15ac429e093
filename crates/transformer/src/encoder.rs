//! The pretrained encoder: where it comes from (a local Hugging Face directory
//! or `hf:OWNER/NAME` in the Hugging Face cache), tokenization, and batched
//! mean-pooled embeddings with dynamic padding.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};

use crate::bert::{Bert, BertConfig, TrainCtx};
use crate::error::{Result, TransformerError};
use crate::fast::Int8Layer;
use crate::text::{TextEncoder, Truncation};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// The three files an encoder is made of.
#[derive(Debug, Clone)]
pub struct EncoderFiles {
    pub config: PathBuf,
    pub weights: PathBuf,
    pub tokenizer: PathBuf,
}

impl EncoderFiles {
    /// Resolve an encoder spec: a local directory with `config.json`,
    /// `model.safetensors` and `tokenizer.json`, or `hf:OWNER/NAME[@REV]`
    /// looked up in the Hugging Face cache (offline; download it once with
    /// any Hugging Face client).
    pub fn resolve(spec: &str) -> Result<Self> {
        let dir = match spec.strip_prefix("hf:") {
            Some(repo) => resolve_hf_cache(repo)?,
            None => {
                let dir = PathBuf::from(spec);
                if !dir.is_dir() {
                    return Err(TransformerError::Encoder(format!(
                        "{spec}: not a directory (expected a Hugging Face model directory or \
                         hf:OWNER/NAME; for all-MiniLM-L6-v2 run scripts/fetch_encoder.sh)"
                    )));
                }
                dir
            }
        };
        let files = Self::in_dir(&dir);
        for (p, what) in [
            (&files.config, CONFIG_FILE),
            (&files.weights, WEIGHTS_FILE),
            (&files.tokenizer, TOKENIZER_FILE),
        ] {
            if !p.is_file() {
                let hint = if what == WEIGHTS_FILE && dir.join("pytorch_model.bin").is_file() {
                    " (only safetensors weights are supported; convert pytorch_model.bin)"
                } else {
                    ""
                };
                return Err(TransformerError::Encoder(format!(
                    "{}: missing {what}{hint} (an encoder directory needs {CONFIG_FILE}, \
                     {WEIGHTS_FILE} and {TOKENIZER_FILE})",
                    dir.display()
                )));
            }
        }
        Ok(files)
    }

    pub fn in_dir(dir: &Path) -> Self {
        Self {
            config: dir.join(CONFIG_FILE),
            weights: dir.join(WEIGHTS_FILE),
            tokenizer: dir.join(TOKENIZER_FILE),
        }
    }
}

/// The Hugging Face hub cache directory, resolved like the Python and Rust
/// clients do: `HF_HUB_CACHE`, `HUGGINGFACE_HUB_CACHE`, `HF_HOME/hub`,
/// `XDG_CACHE_HOME/huggingface/hub`, `~/.cache/huggingface/hub`.
///
/// Why by hand: hf-hub 1.x is an async HTTP client (reqwest, tokio, xet);
/// all we need offline is the cache layout, which is stable and documented.
pub fn hf_cache_dir() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(p) = env("HF_HUB_CACHE").or_else(|| env("HUGGINGFACE_HUB_CACHE")) {
        return p;
    }
    if let Some(p) = env("HF_HOME") {
        return p.join("hub");
    }
    if let Some(p) = env("XDG_CACHE_HOME") {
        return p.join("huggingface").join("hub");
    }
    env("HOME")
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join(".cache/huggingface/hub")
}

/// `OWNER/NAME[@REV]` -> `<cache>/models--OWNER--NAME/snapshots/<commit>`.
fn resolve_hf_cache(repo: &str) -> Result<PathBuf> {
    let (name, rev) = match repo.split_once('@') {
        Some((n, r)) => (n, r),
        None => (repo, "main"),
    };
    if name.split('/').count() != 2 || name.split('/').any(str::is_empty) {
        return Err(TransformerError::Encoder(format!(
            "hf:{repo}: expected hf:OWNER/NAME (e.g. hf:sentence-transformers/all-MiniLM-L6-v2)"
        )));
    }
    let cache = hf_cache_dir();
    let root = cache.join(format!("models--{}", name.replace('/', "--")));
    let missing = || {
        TransformerError::Encoder(format!(
            "hf:{name}: not in the Hugging Face cache {} (download it once, e.g. \
             `huggingface-cli download {name}`, or pass a local model directory)",
            cache.display()
        ))
    };
    if !root.is_dir() {
        return Err(missing());
    }
    let is_commit = rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit());
    let commit = if is_commit {
        rev.to_string()
    } else {
        let r = root.join("refs").join(rev);
        std::fs::read_to_string(&r)
            .map_err(|_| missing())?
            .trim()
            .to_string()
    };
    let snap = root.join("snapshots").join(commit);
    if !snap.is_dir() {
        return Err(missing());
    }
    Ok(snap)
}

/// A loaded encoder: BERT (or XLM-RoBERTa) weights and the tokenizer.
#[derive(Clone)]
pub struct Encoder {
    pub(crate) bert: Bert,
    pub(crate) text: TextEncoder,
    pub(crate) files: EncoderFiles,
    /// The spec this encoder was loaded from (directory or `hf:` name).
    pub(crate) source: String,
    /// The id padding slots of a batch hold (never attended to, never
    /// pooled): the tokenizer's padding token, else config.json's.
    pub(crate) pad_id: u32,
}

/// A batch padded to its longest sequence.
pub(crate) struct Padded {
    pub ids: Tensor,
    /// (b, s) f32, 1 for real tokens.
    pub mask: Option<Tensor>,
    /// (b, 1, 1, s) additive attention bias, `None` when nothing is padded.
    pub bias: Option<Tensor>,
    pub b: usize,
    pub s: usize,
}

impl Padded {
    /// Pad `seqs` with `pad_id` to the longest one.
    pub fn new(seqs: &[&[u32]], pad_id: u32, device: &Device) -> Result<Self> {
        let b = seqs.len();
        let s = seqs.iter().map(|x| x.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![pad_id; b * s];
        let mut mask = vec![0f32; b * s];
        let mut padded = false;
        for (i, seq) in seqs.iter().enumerate() {
            ids[i * s..i * s + seq.len()].copy_from_slice(seq);
            mask[i * s..i * s + seq.len()].fill(1.0);
            padded |= seq.len() < s;
        }
        let ids = Tensor::from_vec(ids, (b, s), device)?;
        if !padded {
            return Ok(Self {
                ids,
                mask: None,
                bias: None,
                b,
                s,
            });
        }
        // exp(-1e30 - max) is exactly 0: padding gets no attention at all.
        let bias: Vec<f32> = mask
            .iter()
            .map(|&m| if m > 0.0 { 0.0 } else { -1e30 })
            .collect();
        Ok(Self {
            ids,
            mask: Some(Tensor::from_vec(mask, (b, s), device)?),
            bias: Some(Tensor::from_vec(bias, (b, 1, 1, s), device)?),
            b,
            s,
        })
    }

    /// Mean over real tokens of (b * s, h) hidden states -> (b, h).
    pub fn mean_pool(&self, hidden: &Tensor) -> Result<Tensor> {
        let h = hidden.dim(D::Minus1)?;
        let x = hidden.reshape((self.b, self.s, h))?;
        Ok(match &self.mask {
            None => x.mean(1)?,
            Some(m) => {
                let sum = x.broadcast_mul(&m.unsqueeze(2)?)?.sum(1)?;
                sum.broadcast_div(&m.sum_keepdim(1)?)?
            }
        })
    }
}

/// `seqs` in sub-batches of at most `batch_size` sequences of similar
/// length (sorted by length, so short texts never pay for long ones in a
/// padded batch): each sub-batch's input indices with its token ids.
fn length_batches(seqs: &[Vec<u32>], batch_size: usize) -> Vec<(Vec<usize>, Vec<&[u32]>)> {
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| seqs[i].len());
    order
        .chunks(batch_size.max(1))
        .map(|chunk| {
            let batch = chunk.iter().map(|&i| seqs[i].as_slice()).collect();
            (chunk.to_vec(), batch)
        })
        .collect()
}

/// Hidden states of a set of sequences below the first trained layer
/// ([`Encoder::states_below`]): sequence `i`'s `lens[i]` rows start at row
/// `starts[i]` of `data` (rows of `h`).
pub(crate) struct StatesBelow {
    data: Vec<f32>,
    starts: Vec<usize>,
    lens: Vec<usize>,
    h: usize,
}

impl StatesBelow {
    /// Memory the states take.
    pub(crate) fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<f32>()
    }
}

/// Tokens of real text the int8 forward is calibrated on: 4,096 (32
/// sequences of 128 tokens; a few hundred short queries) brought the int8
/// embeddings as close to fp32 as 13,500 on held-out training texts of both
/// bundled data sets (benches/README.md, "Rounding the int8 weights against
/// real inputs"), and cost about 1.7 s at load.
const CALIBRATION_TOKENS: usize = 4096;

/// A fixed sample of tokenized texts for [`Encoder::set_int8_calibration`]:
/// texts in an order spread over the whole set (a fixed stride, so the
/// sample does not follow the file's order), each cut to `max_tokens`,
/// until [`CALIBRATION_TOKENS`] are taken.
pub fn calibration_sample(ids: &[Vec<u32>], max_tokens: usize) -> Vec<Vec<u32>> {
    let n = ids.len();
    // A stride coprime with n visits every index once.
    let mut stride = ((n as f64 * 0.618_034) as usize).max(1);
    while n > 1 && gcd(stride, n) != 1 {
        stride += 1;
    }
    let mut out = Vec::new();
    let mut tokens = 0;
    for t in 0..n {
        if tokens >= CALIBRATION_TOKENS {
            break;
        }
        let seq = &ids[(t * stride) % n];
        let seq = &seq[..seq.len().min(max_tokens.max(1))];
        if !seq.is_empty() {
            tokens += seq.len();
            out.push(seq.to_vec());
        }
    }
    out
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Rows divided by their L2 norm.
pub(crate) fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let n = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .affine(1.0, 1e-12)?;
    Ok(x.broadcast_div(&n)?)
}

impl Encoder {
    /// Load from a spec (see [`EncoderFiles::resolve`]).
    /// Run the dense layers of every later forward at `p`.
    pub fn set_precision(&mut self, p: crate::Precision) {
        self.bert.set_precision(p);
    }

    /// Calibrate the int8 forward on these token ids (real texts of the
    /// task, e.g. [`calibration_sample`]'s): channel maxima for smoothing
    /// and the inputs that int8 codes are rounded against. `None`: a fixed
    /// batch of pseudo-random ids and rounding to the nearest step.
    pub fn set_int8_calibration(&mut self, ids: Option<Vec<Vec<u32>>>) {
        self.bert.set_calibration(ids);
    }

    /// Build the packed inference forward for the current weights and
    /// precision now rather than on first use.
    pub fn prepare(&self) -> Result<()> {
        self.bert.fast().map(|_| ())
    }

    /// What calibrating the int8 forward made (`None` at fp32), for a
    /// bundle to keep.
    pub(crate) fn int8_layers(&self) -> Result<Option<Vec<Int8Layer>>> {
        self.bert.int8_layers()
    }

    /// Build the int8 forward from [`Self::int8_layers`] of these weights
    /// and calibration texts instead of calibrating again (set after the
    /// precision and the calibration texts, which discard it).
    pub(crate) fn set_int8_layers(&mut self, layers: Vec<Int8Layer>) {
        self.bert.set_int8_layers(layers);
    }

    /// The int8 calibration ids set by [`Self::set_int8_calibration`].
    pub fn int8_calibration(&self) -> Option<&[Vec<u32>]> {
        self.bert.calibration()
    }

    pub fn load(spec: &str, device: &Device) -> Result<Self> {
        let files = EncoderFiles::resolve(spec)?;
        let mut e = Self::from_files(&files, device)?;
        e.source = spec.to_string();
        Ok(e)
    }

    pub fn from_files(files: &EncoderFiles, device: &Device) -> Result<Self> {
        let cfg = BertConfig::from_file(&files.config)?;
        let text = TextEncoder::from_file(&files.tokenizer)?;
        let vocab = text.tokenizer().get_vocab_size(true);
        if vocab > cfg.vocab_size {
            return Err(TransformerError::Encoder(format!(
                "{}: tokenizer has {vocab} tokens but config.json says vocab_size {}",
                files.tokenizer.display(),
                cfg.vocab_size
            )));
        }
        let bert = Bert::load(&cfg, &files.weights, device)?;
        let pad_id = text.pad_id().unwrap_or(cfg.pad_id());
        Ok(Self {
            bert,
            text,
            pad_id,
            files: files.clone(),
            source: files
                .config
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.bert.cfg
    }

    pub fn hidden_size(&self) -> usize {
        self.bert.cfg.hidden_size
    }

    pub fn files(&self) -> &EncoderFiles {
        &self.files
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The largest usable `max_tokens`: `max_position_embeddings`, less
    /// the position offset of RoBERTa-family models (514 - 2 = 512 for XLM-R).
    pub fn max_positions(&self) -> usize {
        self.bert.cfg.max_positions()
    }

    /// The id that pads a batch: the tokenizer's padding token, else
    /// config.json's `pad_token_id`.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The tokenizer with the framing it adds.
    pub fn text_encoder(&self) -> &TextEncoder {
        &self.text
    }

    /// Token ids per text, special tokens included, at most `max_tokens`.
    pub fn tokenize(
        &self,
        texts: &[&str],
        max_tokens: usize,
        truncation: Truncation,
    ) -> Result<Vec<Vec<u32>>> {
        let max_tokens = max_tokens.min(self.max_positions());
        self.text.encode_batch(texts, max_tokens, truncation)
    }

    /// Mean-pooled embeddings (n, hidden) of tokenized sequences, in input
    /// order. Sequences are sorted by length and cut into sub-batches of
    /// `batch_size` padded only to their own longest member, so short texts
    /// never pay for long ones. Sub-batches run one after the other: each
    /// matmul already uses every core (candle's gemm runs on rayon).
    pub fn embed_ids(&self, seqs: &[Vec<u32>], batch_size: usize) -> Result<Tensor> {
        let device = self.bert.device();
        let h = self.hidden_size();
        if seqs.is_empty() {
            return Ok(Tensor::zeros((0, h), DType::F32, device)?);
        }
        let batches = length_batches(seqs, batch_size);
        if device.is_cpu() {
            // Packed hot path: no padding at all (see `fast`).
            let fast = self.bert.fast()?;
            let mut out = vec![0f32; seqs.len() * h];
            for (chunk, batch) in &batches {
                let pooled = fast.pooled(batch);
                for (j, &i) in chunk.iter().enumerate() {
                    out[i * h..(i + 1) * h].copy_from_slice(&pooled[j * h..(j + 1) * h]);
                }
            }
            return Ok(Tensor::from_vec(out, (seqs.len(), h), device)?);
        }
        let mut parts = Vec::with_capacity(batches.len());
        for (_, batch) in &batches {
            let pooled = self.forward_pooled(batch, None)?;
            // Detach: during fine-tuning the weights are variables and the
            // graph would keep every intermediate tensor alive.
            parts.push(pooled.detach());
        }
        let sorted = Tensor::cat(&parts, 0)?;
        // Row j of `sorted` is the j-th input index of the sub-batches in
        // order; invert the permutation.
        let mut inv = vec![0u32; seqs.len()];
        for (j, &i) in batches.iter().flat_map(|(chunk, _)| chunk).enumerate() {
            inv[i] = j as u32;
        }
        let inv = Tensor::from_vec(inv, seqs.len(), device)?;
        Ok(sorted.index_select(&inv, 0)?)
    }

    /// Like [`embed_ids`](Self::embed_ids) for sequences that may be longer
    /// than `max_tokens` (from [`Truncation::Windows`]): each is cut into
    /// framed windows of `max_tokens`, every window is embedded, and a
    /// sequence's embedding is the mean of its windows' weighted by their
    /// token counts (close to a mean over all its tokens). Sequences that
    /// fit are embedded as they are, so with the other truncations this is
    /// `embed_ids` exactly.
    pub fn embed_windowed(
        &self,
        seqs: &[Vec<u32>],
        max_tokens: usize,
        batch_size: usize,
    ) -> Result<Tensor> {
        let max_tokens = max_tokens.min(self.max_positions());
        if seqs.iter().all(|s| s.len() <= max_tokens) {
            return self.embed_ids(seqs, batch_size);
        }
        let (np, ns) = self.text.frame_sizes();
        let (mut flat, mut owner, mut weight) = (Vec::new(), Vec::new(), Vec::new());
        for (i, s) in seqs.iter().enumerate() {
            for w in crate::text::windows(s, np, ns, max_tokens) {
                weight.push(w.len().saturating_sub(np + ns).max(1) as f32);
                owner.push(i);
                flat.push(w);
            }
        }
        let x = self.embed_ids(&flat, batch_size)?.to_vec2::<f32>()?;
        let h = self.hidden_size();
        let mut out = vec![0f32; seqs.len() * h];
        let mut total = vec![0f32; seqs.len()];
        for ((row, &i), &wt) in x.iter().zip(&owner).zip(&weight) {
            for (o, v) in out[i * h..(i + 1) * h].iter_mut().zip(row) {
                *o += wt * v;
            }
            total[i] += wt;
        }
        for (i, t) in total.iter().enumerate() {
            out[i * h..(i + 1) * h]
                .iter_mut()
                .for_each(|v| *v /= t.max(f32::MIN_POSITIVE));
        }
        Ok(Tensor::from_vec(out, (seqs.len(), h), self.bert.device())?)
    }

    /// Tokens the encoder runs for one tokenized sequence: its own length,
    /// or its windows' total when [`embed_windowed`](Self::embed_windowed)
    /// cuts it.
    pub fn run_tokens(&self, seq: &[u32], max_tokens: usize) -> usize {
        let max_tokens = max_tokens.min(self.max_positions());
        if seq.len() <= max_tokens {
            return seq.len();
        }
        let (np, ns) = self.text.frame_sizes();
        crate::text::windows(seq, np, ns, max_tokens)
            .iter()
            .map(Vec::len)
            .sum()
    }

    /// Last hidden states (b, s, hidden) of one batch padded to its longest
    /// sequence (for checks against other implementations).
    pub fn hidden_states(&self, batch: &[&[u32]]) -> Result<Tensor> {
        let p = Padded::new(batch, self.pad_id, self.bert.device())?;
        let h = self.bert.forward(&p.ids, p.bias.as_ref(), None)?;
        Ok(h.reshape((p.b, p.s, self.hidden_size()))?)
    }

    /// Mean-pooled embeddings through the candle-op forward with padding
    /// (the path training uses), for checking the packed hot path.
    pub fn embed_ids_padded(&self, seqs: &[Vec<u32>]) -> Result<Tensor> {
        let batch: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        self.forward_pooled(&batch, None)
    }

    /// Every sequence's hidden states below layer `layers` (the input of
    /// the first trained layer), through the packed forward, once: the
    /// layers below have no gradient and no dropout, so fine-tuning reads
    /// these on every epoch instead of running those layers again.
    /// `None` (nothing computed) when they would take more than
    /// `max_bytes`; `None` as well off the CPU.
    pub(crate) fn states_below(
        &self,
        seqs: &[Vec<u32>],
        layers: usize,
        batch_size: usize,
        max_bytes: usize,
    ) -> Result<Option<StatesBelow>> {
        let h = self.hidden_size();
        let max_pos = self.max_positions();
        let lens: Vec<usize> = seqs.iter().map(|s| s.len().min(max_pos)).collect();
        let total: usize = lens.iter().sum();
        if !self.bert.device().is_cpu() || total.saturating_mul(h * 4) > max_bytes {
            return Ok(None);
        }
        let mut starts = Vec::with_capacity(seqs.len());
        let mut row = 0;
        for &l in &lens {
            starts.push(row);
            row += l;
        }
        let mut data = vec![0f32; total * h];
        let fast = self.bert.fast()?;
        for (chunk, batch) in length_batches(seqs, batch_size) {
            let x = fast.hidden_below(&batch, layers);
            let mut at = 0;
            for i in chunk {
                let n = lens[i] * h;
                data[starts[i] * h..starts[i] * h + n].copy_from_slice(&x[at..at + n]);
                at += n;
            }
        }
        Ok(Some(StatesBelow {
            data,
            starts,
            lens,
            h,
        }))
    }

    /// What [`Self::embed_ids`] gives for the sequences of `below` (the
    /// states [`Self::states_below`] stored below layer `from`), from those
    /// states: the layers from `from` up through the packed forward, at a
    /// fraction of the cost once the model is trained. `None` when that
    /// forward's layer `from` is int8 (its input codes are not stored).
    pub(crate) fn embed_from_states(
        &self,
        below: &StatesBelow,
        from: usize,
        batch_size: usize,
    ) -> Result<Option<Tensor>> {
        let (h, n) = (below.h, below.lens.len());
        let fast = self.bert.fast()?;
        let mut out = vec![0f32; n * h];
        for first in (0..n).step_by(batch_size.max(1)) {
            let rows = first..(first + batch_size.max(1)).min(n);
            let lens = &below.lens[rows.clone()];
            let (start, end) = (
                below.starts[rows.start],
                below.starts[rows.end - 1] + lens[lens.len() - 1],
            );
            let states = below.data[start * h..end * h].to_vec();
            let Some(pooled) = fast.pooled_above(states, lens, from) else {
                return Ok(None);
            };
            out[rows.start * h..rows.end * h].copy_from_slice(&pooled);
        }
        Ok(Some(Tensor::from_vec(out, (n, h), self.bert.device())?))
    }

    /// [`Self::forward_pooled`] from stored states below the trained
    /// layers: rows `idx` of `below`, whose token ids are `batch`.
    pub(crate) fn forward_pooled_above(
        &self,
        batch: &[&[u32]],
        idx: &[usize],
        below: &StatesBelow,
        train: &mut TrainCtx<'_>,
    ) -> Result<Tensor> {
        let p = Padded::new(batch, self.pad_id, self.bert.device())?;
        let h = below.h;
        let mut x = vec![0f32; p.b * p.s * h];
        for (j, &i) in idx.iter().enumerate() {
            let (start, len) = (below.starts[i] * h, below.lens[i] * h);
            x[j * p.s * h..j * p.s * h + len].copy_from_slice(&below.data[start..start + len]);
        }
        let x = Tensor::from_vec(x, (p.b * p.s, h), self.bert.device())?;
        let hidden = self.bert.forward_top(x, p.b, p.s, p.bias.as_ref(), train)?;
        p.mean_pool(&hidden)
    }

    /// Forward one padded batch and mean-pool it: (b, hidden).
    pub(crate) fn forward_pooled(
        &self,
        batch: &[&[u32]],
        train: Option<&mut TrainCtx<'_>>,
    ) -> Result<Tensor> {
        let p = Padded::new(batch, self.pad_id, self.bert.device())?;
        let hidden = self.bert.forward(&p.ids, p.bias.as_ref(), train)?;
        p.mean_pool(&hidden)
    }

    /// Convenience: tokenize, embed, optionally L2-normalize, as rows.
    pub fn embed(
        &self,
        texts: &[&str],
        max_tokens: usize,
        truncation: Truncation,
        batch_size: usize,
        normalize: bool,
    ) -> Result<Vec<Vec<f32>>> {
        let ids = self.tokenize(texts, max_tokens, truncation)?;
        let mut x = self.embed_ids(&ids, batch_size)?;
        if normalize {
            x = l2_normalize(&x)?;
        }
        Ok(x.to_vec2()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_calibration_sample_is_fixed_spread_and_bounded() {
        // 1,000 texts of 10..40 tokens, numbered by their first id.
        let ids: Vec<Vec<u32>> = (0..1000u32)
            .map(|i| (0..10 + i % 31).map(|t| i * 100 + t).collect())
            .collect();
        let a = calibration_sample(&ids, 16);
        assert_eq!(a, calibration_sample(&ids, 16));
        let tokens: usize = a.iter().map(Vec::len).sum();
        assert!((CALIBRATION_TOKENS..CALIBRATION_TOKENS + 16).contains(&tokens));
        assert!(a.iter().all(|s| !s.is_empty() && s.len() <= 16));
        // Spread over the set, not its first rows; no text twice.
        let firsts: std::collections::BTreeSet<u32> = a.iter().map(|s| s[0] / 100).collect();
        assert_eq!(firsts.len(), a.len());
        assert!(firsts.iter().any(|&i| i > 900) && firsts.iter().any(|&i| i < 100));
        // Fewer tokens than the budget: every non-empty text once.
        let few = vec![vec![1, 2], vec![], vec![3]];
        let mut got = calibration_sample(&few, 8);
        got.sort();
        assert_eq!(got, vec![vec![1, 2], vec![3]]);
    }

    #[test]
    fn kept_int8_layers_serve_only_the_weights_and_texts_they_came_from() {
        let d = tempfile::tempdir().unwrap();
        crate::fixtures::write_tiny_bert(d.path(), 5).unwrap();
        let mut e = Encoder::load(d.path().to_str().unwrap(), &Device::Cpu).unwrap();
        assert!(
            e.int8_layers().unwrap().is_none(),
            "fp32 has no int8 layers"
        );
        e.set_precision(crate::Precision::Int8);
        let texts = ["where is my parcel", "refund the broken item please"];
        let ids = e.tokenize(&texts, 32, Truncation::Head).unwrap();
        e.set_int8_calibration(Some(ids.clone()));
        let made = e.int8_layers().unwrap().unwrap();
        let want = e.embed_ids(&ids, 2).unwrap().to_vec2::<f32>().unwrap();
        // Layers of other codes, set by hand, are what the forward runs...
        let mut other = made.clone();
        for c in other.iter_mut().flat_map(|l| l.dense.iter_mut().flatten()) {
            c.codes.iter_mut().for_each(|q| *q /= 2);
        }
        e.set_int8_layers(other.clone());
        assert_eq!(e.int8_layers().unwrap().unwrap(), other);
        assert_ne!(
            e.embed_ids(&ids, 2).unwrap().to_vec2::<f32>().unwrap(),
            want
        );
        // ...until the calibration texts change: then it calibrates again.
        e.set_int8_calibration(Some(ids[..1].to_vec()));
        e.set_int8_calibration(Some(ids.clone()));
        assert_eq!(e.int8_layers().unwrap().unwrap(), made);
        assert_eq!(
            e.embed_ids(&ids, 2).unwrap().to_vec2::<f32>().unwrap(),
            want
        );
        // Weights that may have changed (training) discard them too.
        e.set_int8_layers(other);
        e.bert.freeze();
        assert_eq!(e.int8_layers().unwrap().unwrap(), made);
    }

    #[test]
    fn packed_hot_path_matches_the_padded_candle_forward() {
        let d = tempfile::tempdir().unwrap();
        crate::fixtures::write_tiny_bert(d.path(), 5).unwrap();
        let e = Encoder::load(d.path().to_str().unwrap(), &Device::Cpu).unwrap();
        let texts = [
            "[buyer] where is my parcel, it is late",
            "refund",
            "",
            "the item arrived broken and the seller does not answer",
        ];
        let ids = e.tokenize(&texts, 64, Truncation::Head).unwrap();
        let fast = e.embed_ids(&ids, 3).unwrap().to_vec2::<f32>().unwrap();
        let slow = e.embed_ids_padded(&ids).unwrap().to_vec2::<f32>().unwrap();
        for (a, b) in fast.concat().iter().zip(slow.concat()) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    #[test]
    fn stored_states_below_give_the_same_trained_forward() {
        use rand::SeedableRng;
        let d = tempfile::tempdir().unwrap();
        crate::fixtures::write_tiny_bert(d.path(), 9).unwrap();
        let mut e = Encoder::load(d.path().to_str().unwrap(), &Device::Cpu).unwrap();
        let layers = e.config().num_hidden_layers;
        assert!(
            layers >= 2,
            "the fixture needs a frozen and a trained layer"
        );
        let texts = [
            "the parcel never arrived",
            "refund please",
            "the seller sent the wrong colour and will not answer",
        ];
        let ids = e.tokenize(&texts, 32, Truncation::Head).unwrap();
        let g = layers - 1;
        e.bert.make_trainable(g).unwrap();
        // Rows 2 and 0 in one batch of different lengths (padding).
        let idx = [2usize, 0];
        let batch: Vec<&[u32]> = idx.iter().map(|&i| ids[i].as_slice()).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut ctx = TrainCtx {
            grad_from: g,
            dropout: 0.0,
            rng: &mut rng,
        };
        let want = e.forward_pooled(&batch, Some(&mut ctx)).unwrap();
        let below = e.states_below(&ids, g, 2, usize::MAX).unwrap().unwrap();
        let got = e
            .forward_pooled_above(&batch, &idx, &below, &mut ctx)
            .unwrap();
        let (want, got) = (
            want.to_vec2::<f32>().unwrap(),
            got.to_vec2::<f32>().unwrap(),
        );
        for (w, g) in want.iter().flatten().zip(got.iter().flatten()) {
            assert!((w - g).abs() < 1e-4, "{w} vs {g}");
        }
        // Over the budget nothing is stored.
        assert!(e.states_below(&ids, g, 2, 64).unwrap().is_none());
    }

    #[test]
    fn embeddings_from_stored_states_are_the_inference_embeddings() {
        let d = tempfile::tempdir().unwrap();
        crate::fixtures::write_tiny_bert(d.path(), 11).unwrap();
        let e = Encoder::load(d.path().to_str().unwrap(), &Device::Cpu).unwrap();
        let texts = [
            "the parcel never arrived",
            "refund please",
            "",
            "the seller sent the wrong colour and will not answer",
            "where is my order",
        ];
        let ids = e.tokenize(&texts, 32, Truncation::Head).unwrap();
        let layers = e.config().num_hidden_layers;
        for g in [0, layers - 1, layers] {
            let below = e.states_below(&ids, g, 2, usize::MAX).unwrap().unwrap();
            let want = e.embed_ids(&ids, 3).unwrap().to_vec2::<f32>().unwrap();
            // Batches of 2 over 5 sequences: a short last one.
            let got = e.embed_from_states(&below, g, 2).unwrap().unwrap();
            let got = got.to_vec2::<f32>().unwrap();
            assert_eq!(got.len(), texts.len());
            for (w, v) in want.iter().flatten().zip(got.iter().flatten()) {
                assert!((w - v).abs() < 1e-5, "from layer {g}: {w} vs {v}");
            }
        }
    }

    #[test]
    fn windowed_embeddings_average_the_windows_by_length() {
        let d = tempfile::tempdir().unwrap();
        crate::fixtures::write_tiny_bert(d.path(), 5).unwrap();
        let e = Encoder::load(d.path().to_str().unwrap(), &Device::Cpu).unwrap();
        let long =
            "the parcel never arrived and the tracking has not moved for ten days ".repeat(6);
        let texts = [long.as_str(), "refund"];
        // Sequences that fit: exactly `embed_ids`.
        let head = e.tokenize(&texts, 16, Truncation::Head).unwrap();
        let a = e
            .embed_windowed(&head, 16, 4)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let b = e.embed_ids(&head, 4).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(a, b);
        // The whole text: its windows of 16 tokens, weighted by body length.
        let whole = e.tokenize(&texts, 16, Truncation::Windows).unwrap();
        assert!(whole[0].len() > 16 && whole[1].len() <= 16);
        let got = e
            .embed_windowed(&whole, 16, 4)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let (np, ns) = e.text.frame_sizes();
        let wins = crate::text::windows(&whole[0], np, ns, 16);
        assert!(wins.len() > 2 && wins.iter().all(|w| w.len() <= 16));
        // What a batch costs: every window's tokens, frames included.
        let body = whole[0].len() - np - ns;
        assert_eq!(e.run_tokens(&whole[0], 16), body + wins.len() * (np + ns));
        assert_eq!(e.run_tokens(&whole[1], 16), whole[1].len());
        assert_eq!(e.run_tokens(&head[0], 16), 16);
        let rows = e.embed_ids(&wins, 4).unwrap().to_vec2::<f32>().unwrap();
        let weights: Vec<f32> = wins.iter().map(|w| (w.len() - np - ns) as f32).collect();
        let total: f32 = weights.iter().sum();
        for (k, g) in got[0].iter().enumerate() {
            let want: f32 = rows
                .iter()
                .zip(&weights)
                .map(|(r, w)| r[k] * w)
                .sum::<f32>()
                / total;
            assert!((g - want).abs() < 1e-5, "dim {k}: {g} vs {want}");
        }
        assert_eq!(
            got[1],
            e.embed_ids(&whole[1..], 4)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()[0]
        );
    }
}
