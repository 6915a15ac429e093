//! Training: the hierarchical loss, AdamW with warm-up and linear decay,
//! early stopping on validation accuracy, and the two modes (frozen encoder
//! with cached embeddings, or fine-tuning).
//!
//! Repeatability: candle's CPU RNG cannot be seeded, so nothing here uses it.
//! Shuffling and dropout masks come from a `StdRng` seeded with
//! `params.seed`, and the head is initialised from a stream derived from the
//! same seed; the same inputs and seed give the same model.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use casetag_core::LabelSpace;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use sha2::{Digest, Sha256};

use crate::bert::TrainCtx;
use crate::encoder::{calibration_sample, l2_normalize, Encoder};
use crate::error::{Result, TransformerError};
use crate::head::Head;
use crate::model::{KeptEmbeddings, ModelInfo, TrainSummary, TransformerModel};
use crate::{Mode, Precision, TrainInputs, TransformerParams};

/// 0/1 aggregation matrices (output -> level node) and the maps behind them.
struct Levels {
    mats: Vec<Tensor>,
    maps: Vec<Vec<usize>>,
}

impl Levels {
    fn new(maps: &[Vec<usize>], n_out: usize, dev: &Device) -> Result<Self> {
        let mut mats = Vec::with_capacity(maps.len());
        for (k, map) in maps.iter().enumerate() {
            if map.len() != n_out {
                return Err(TransformerError::Input(format!(
                    "level_maps[{k}] has {} entries but the label space has {n_out} outputs",
                    map.len()
                )));
            }
            let n_k = map.iter().max().map_or(0, |m| m + 1);
            let mut m = vec![0f32; n_out * n_k];
            for (o, &node) in map.iter().enumerate() {
                m[o * n_k + node] = 1.0;
            }
            mats.push(Tensor::from_vec(m, (n_out, n_k), dev)?);
        }
        Ok(Self {
            mats,
            maps: maps.to_vec(),
        })
    }
}

fn u32_tensor(v: impl Iterator<Item = usize>, dev: &Device) -> Result<Tensor> {
    let v: Vec<u32> = v.map(|x| x as u32).collect();
    let n = v.len();
    Ok(Tensor::from_vec(v, n, dev)?)
}

/// CE(leaf path) + λ · Σ_k CE(level-k marginal). Marginals are sums of the
/// leaf-path probabilities under each level node (p @ A_k), so training sees
/// the same consistent hierarchy the engine decodes.
fn hierarchical_loss(
    logits: &Tensor,
    targets: &[usize],
    levels: &Levels,
    lambda: f32,
) -> Result<Tensor> {
    let dev = logits.device();
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let t = u32_tensor(targets.iter().copied(), dev)?;
    let mut loss = candle_nn::loss::nll(&logp, &t)?;
    if lambda > 0.0 && !levels.mats.is_empty() {
        let p = logp.exp()?;
        for (mat, map) in levels.mats.iter().zip(&levels.maps) {
            let logp_k = p.matmul(mat)?.affine(1.0, 1e-12)?.log()?;
            let t_k = u32_tensor(targets.iter().map(|&t| map[t]), dev)?;
            let l_k = candle_nn::loss::nll(&logp_k, &t_k)?;
            loss = (loss + (l_k * lambda as f64)?)?;
        }
    }
    Ok(loss)
}

/// AdamW parameter groups: encoder / head learning rates, no weight decay on
/// biases and LayerNorm.
struct Opt {
    groups: Vec<(AdamW, f64)>,
}

impl Opt {
    fn new(
        encoder: Vec<(String, Var)>,
        head: Vec<(String, Var)>,
        p: &TransformerParams,
    ) -> Result<Self> {
        let no_decay = |n: &str| n.ends_with(".bias") || n.contains("ln");
        let mut groups = Vec::new();
        for (vars, lr) in [(encoder, p.lr), (head, p.head_lr)] {
            let (nd, d): (Vec<_>, Vec<_>) = vars.into_iter().partition(|(n, _)| no_decay(n));
            for (vs, wd) in [(d, p.weight_decay), (nd, 0.0)] {
                if vs.is_empty() {
                    continue;
                }
                let cfg = ParamsAdamW {
                    lr,
                    weight_decay: wd,
                    ..Default::default()
                };
                let vars = vs.into_iter().map(|(_, v)| v).collect();
                groups.push((AdamW::new(vars, cfg)?, lr));
            }
        }
        Ok(Self { groups })
    }

    fn step(&mut self, grads: &GradStore, factor: f64) -> Result<()> {
        for (opt, base) in &mut self.groups {
            opt.set_learning_rate(*base * factor);
            opt.step(grads)?;
        }
        Ok(())
    }
}

/// Linear warm-up over `warm` steps, then linear decay to 0 at `total`.
fn lr_factor(step: usize, warm: usize, total: usize) -> f64 {
    if step < warm {
        (step + 1) as f64 / warm as f64
    } else {
        let rest = total.saturating_sub(warm).max(1);
        (total.saturating_sub(step) as f64 / rest as f64).max(0.0)
    }
}

/// Shuffled mini-batches. With `grouped`, batches hold texts of similar
/// length (sorted within windows of 32 batches, then the batch order is
/// shuffled): far less padding when the encoder runs per batch.
fn make_batches(lens: &[usize], batch: usize, rng: &mut StdRng, grouped: bool) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..lens.len()).collect();
    idx.shuffle(rng);
    if grouped {
        for w in idx.chunks_mut(batch * 32) {
            w.sort_by_key(|&i| lens[i]);
        }
    }
    let mut batches: Vec<Vec<usize>> = idx.chunks(batch).map(<[usize]>::to_vec).collect();
    if grouped {
        batches.shuffle(rng);
    }
    batches
}

fn check_inputs(inputs: &TrainInputs, n_out: usize) -> Result<()> {
    let bad = |m: String| Err(TransformerError::Input(m));
    if inputs.texts.is_empty() {
        return bad("no training texts".into());
    }
    if inputs.texts.len() != inputs.targets.len() {
        return bad(format!(
            "{} training texts but {} targets",
            inputs.texts.len(),
            inputs.targets.len()
        ));
    }
    if inputs.val_texts.len() != inputs.val_targets.len() {
        return bad(format!(
            "{} validation texts but {} targets",
            inputs.val_texts.len(),
            inputs.val_targets.len()
        ));
    }
    for (what, ts) in [
        ("training", &inputs.targets),
        ("validation", &inputs.val_targets),
    ] {
        if let Some((i, t)) = ts.iter().enumerate().find(|(_, &t)| t >= n_out) {
            return bad(format!(
                "{what} target {t} at row {i} is outside the label space ({n_out} outputs)"
            ));
        }
    }
    if n_out < 2 {
        return bad(format!("the label space needs >= 2 outputs, got {n_out}"));
    }
    Ok(())
}

/// While it lives, glibc keeps the memory freed by the process instead of
/// handing it back to the system. Each fine-tuning step allocates and frees
/// tensors of tens of MiB (attention scores, FFN activations), above the
/// size glibc maps separately, so each was mapped afresh and its pages
/// faulted in again: 67 M page faults and 166 s of system time in a
/// 5.5-minute epoch on the bundled transcripts, 20 s without
/// (benches/README.md, "Whole transcripts: 256 tokens"). Dropping it
/// restores glibc's documented defaults and hands the free memory back.
/// A process started with its own settings of these parameters in the
/// environment ([`user_tunes_malloc`]) keeps them: the allocator is then
/// left alone, before, during and after the fit.
struct KeepFreedMemory {
    /// Whether the fit set the parameters (the environment did not).
    changed: bool,
}

impl KeepFreedMemory {
    fn new() -> Self {
        let changed = !user_tunes_malloc(std::env::vars_os());
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        if changed {
            // SAFETY: mallopt only changes allocator parameters; glibc
            // applies them under its own lock.
            unsafe {
                libc::mallopt(libc::M_MMAP_MAX, 0);
                libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
                libc::mallopt(libc::M_TOP_PAD, 256 << 20);
            }
        }
        Self { changed }
    }
}

/// Whether the environment sets one of the glibc malloc parameters the
/// fit changes (mapping, trimming, top padding): the `MALLOC_..._`
/// variables glibc reads at start-up, or their `GLIBC_TUNABLES` names.
fn user_tunes_malloc(
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> bool {
    const PARAMS: [&str; 4] = ["mmap_max", "mmap_threshold", "trim_threshold", "top_pad"];
    vars.into_iter().any(|(k, v)| {
        let (k, v) = (k.to_string_lossy(), v.to_string_lossy());
        PARAMS.iter().any(|p| {
            k == format!("MALLOC_{}_", p.to_uppercase())
                || (k == "GLIBC_TUNABLES" && v.contains(&format!("glibc.malloc.{p}")))
        })
    })
}

impl Drop for KeepFreedMemory {
    fn drop(&mut self) {
        if !self.changed {
            return;
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: as in `new`; malloc_trim releases free memory only.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 65_536);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 10);
            libc::mallopt(libc::M_TOP_PAD, 128 << 10);
            libc::malloc_trim(0);
        }
    }
}

/// Hidden states below the trained layers are kept in memory up to this
/// size, training texts first, then validation texts (about 650 MiB for
/// the 3,790 bundled training transcripts at 256 tokens with MiniLM); a
/// larger training set runs those layers on every step.
const STATES_BELOW_BYTES: usize = 4 << 30;

/// sha256 of a file, hex.
pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| TransformerError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| TransformerError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// On-disk cache of pooled (un-normalized) embeddings for frozen mode. One
/// file per (encoder weights, truncation, max_tokens); records are the
/// sha256 of the text followed by `hidden` little-endian f32.
struct EmbedCache {
    path: PathBuf,
    dim: usize,
    map: HashMap<[u8; 32], Vec<f32>>,
}

impl EmbedCache {
    fn open(dir: &Path, weights_sha: &str, p: &TransformerParams, dim: usize) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| TransformerError::io(dir, e))?;
        let trunc = serde_json::to_string(&p.truncation).unwrap_or_default();
        // Training embeds at fp32 at every precision (see `fit`).
        let name = format!(
            "emb-{}-{}-{}-{dim}.bin",
            &weights_sha[..16],
            trunc.trim_matches('"'),
            p.max_tokens,
        );
        let path = dir.join(name);
        let mut map = HashMap::new();
        if let Ok(bytes) = std::fs::read(&path) {
            let rec = 32 + 4 * dim;
            // A torn last record (interrupted write) is ignored.
            for r in bytes.chunks_exact(rec) {
                let mut k = [0u8; 32];
                k.copy_from_slice(&r[..32]);
                let v = r[32..]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                map.insert(k, v);
            }
        }
        Ok(Self { path, dim, map })
    }

    fn key(text: &str) -> [u8; 32] {
        Sha256::digest(text.as_bytes()).into()
    }

    fn append(&mut self, items: Vec<([u8; 32], Vec<f32>)>) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| TransformerError::io(&self.path, e))?;
        let mut buf = Vec::with_capacity(items.len() * (32 + 4 * self.dim));
        for (k, v) in items {
            buf.extend_from_slice(&k);
            for x in &v {
                buf.extend_from_slice(&x.to_le_bytes());
            }
            self.map.insert(k, v);
        }
        f.write_all(&buf)
            .map_err(|e| TransformerError::io(&self.path, e))
    }
}

/// Pooled embeddings for frozen training, in groups so progress can be shown,
/// through the disk cache when one is configured.
fn embed_all(
    encoder: &Encoder,
    texts: &[&str],
    seqs: &[Vec<u32>],
    p: &TransformerParams,
    cache: &mut Option<EmbedCache>,
    what: &str,
    progress: &dyn Fn(&str),
) -> Result<Tensor> {
    let dev = encoder.bert.device().clone();
    let h = encoder.hidden_size();
    let keys: Vec<[u8; 32]> = match cache {
        Some(_) => texts.iter().map(|t| EmbedCache::key(t)).collect(),
        None => Vec::new(),
    };
    let todo: Vec<usize> = match cache {
        Some(c) => (0..texts.len())
            .filter(|&i| !c.map.contains_key(&keys[i]))
            .collect(),
        None => (0..texts.len()).collect(),
    };
    let mut fresh: HashMap<usize, Vec<f32>> = HashMap::with_capacity(todo.len());
    if !todo.is_empty() {
        // Sort globally by length so each sub-batch pads as little as possible.
        let mut order = todo.clone();
        order.sort_by_key(|&i| seqs[i].len());
        let t0 = Instant::now();
        let group = (p.infer_batch_size * 32).max(256);
        let mut done = 0;
        for g in order.chunks(group) {
            let part: Vec<Vec<u32>> = g.iter().map(|&i| seqs[i].clone()).collect();
            let rows = encoder
                .embed_windowed(&part, p.max_tokens, p.infer_batch_size)?
                .to_vec2::<f32>()?;
            let mut new = Vec::with_capacity(g.len());
            for (&i, row) in g.iter().zip(rows) {
                if cache.is_some() {
                    new.push((keys[i], row.clone()));
                }
                fresh.insert(i, row);
            }
            if let Some(c) = cache.as_mut() {
                c.append(new)?;
            }
            done += g.len();
            let secs = t0.elapsed().as_secs_f64();
            progress(&format!(
                "embedding {what} texts: {done}/{} ({:.0} texts/s)",
                order.len(),
                done as f64 / secs.max(1e-9)
            ));
        }
    }
    let cached = texts.len() - todo.len();
    if cached > 0 {
        progress(&format!("embedding {what} texts: {cached} from the cache"));
    }
    let mut flat = Vec::with_capacity(texts.len() * h);
    for (i, _) in texts.iter().enumerate() {
        match fresh.get(&i) {
            Some(v) => flat.extend_from_slice(v),
            None => {
                let c = cache.as_ref().expect("cached rows imply a cache");
                flat.extend_from_slice(&c.map[&keys[i]]);
            }
        }
    }
    Ok(Tensor::from_vec(flat, (texts.len(), h), &dev)?)
}

fn accuracy_and_loss(logits: &Tensor, targets: &[usize]) -> Result<(f64, f64)> {
    let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let correct = pred
        .iter()
        .zip(targets)
        .filter(|(&p, &t)| p as usize == t)
        .count();
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let t = u32_tensor(targets.iter().copied(), logits.device())?;
    let loss = candle_nn::loss::nll(&logp, &t)?.to_scalar::<f32>()? as f64;
    Ok((correct as f64 / targets.len().max(1) as f64, loss))
}

/// Train a transformer classifier. See [`TransformerParams`] and
/// [`TrainInputs`]; `progress` receives one line per epoch (and a few while
/// embedding or fine-tuning).
pub fn fit(
    params: &TransformerParams,
    encoder_spec: &str,
    inputs: &TrainInputs,
    label_space: &LabelSpace,
    id: &str,
    progress: &dyn Fn(&str),
) -> Result<TransformerModel> {
    fit_given(
        params,
        encoder_spec,
        inputs,
        label_space,
        id,
        progress,
        None,
    )
}

/// [`fit`], where a frozen fit may be given the encoder's embeddings of the
/// training and validation texts (`given`, not normalized): the linear probe
/// of a fine-tuning run has them from the states that run stores.
fn fit_given(
    params: &TransformerParams,
    encoder_spec: &str,
    inputs: &TrainInputs,
    label_space: &LabelSpace,
    id: &str,
    progress: &dyn Fn(&str),
    given: Option<(Tensor, Tensor)>,
) -> Result<TransformerModel> {
    let t_start = Instant::now();
    params.check()?;
    let n_out = label_space.n_outputs();
    check_inputs(inputs, n_out)?;
    let dev = Device::Cpu;
    // Training runs at fp32 whatever the precision: an int8 bundle has the
    // fp32 bundle's weights and head, and only its inference (and so the
    // validation calibration its caller fits on it) runs int8.
    let mut encoder = Encoder::load(encoder_spec, &dev)?;
    let n_layers = encoder.config().num_hidden_layers;
    if params.max_tokens > encoder.max_positions() {
        progress(&format!(
            "max_tokens {} is capped at the encoder's {}",
            params.max_tokens,
            encoder.config().positions_limit()
        ));
    }
    let grad_from = match params.mode {
        Mode::Frozen => None,
        Mode::FineTune { top_layers: None } => Some(0),
        Mode::FineTune {
            top_layers: Some(n),
        } => {
            if n > n_layers {
                return Err(TransformerError::Params(format!(
                    "top_layers {n} exceeds the encoder's {n_layers} layers"
                )));
            }
            Some(n_layers - n)
        }
    };
    let levels = Levels::new(&inputs.level_maps, n_out, &dev)?;
    let weights_sha = sha256_file(&encoder.files().weights)?;

    let texts: Vec<&str> = inputs.texts.iter().map(String::as_str).collect();
    let val_texts: Vec<&str> = inputs.val_texts.iter().map(String::as_str).collect();
    let train_ids = encoder.tokenize(&texts, params.max_tokens, params.truncation)?;
    let val_ids = encoder.tokenize(&val_texts, params.max_tokens, params.truncation)?;
    let lens: Vec<usize> = train_ids.iter().map(Vec::len).collect();
    progress(&format!(
        "tokenized {} training and {} validation texts (mean {:.1} tokens)",
        texts.len(),
        val_texts.len(),
        lens.iter().sum::<usize>() as f64 / lens.len() as f64
    ));
    if params.precision == crate::Precision::Int8 {
        // The int8 forward is calibrated on training texts (kept in the
        // bundle): channel maxima and the inputs its codes are rounded to.
        // It runs from the end of training on.
        let sample = calibration_sample(&train_ids, params.max_tokens);
        progress(&format!(
            "int8: calibrating on {} training texts ({} tokens)",
            sample.len(),
            sample.iter().map(Vec::len).sum::<usize>()
        ));
        encoder.set_int8_calibration(Some(sample));
    }

    let norm = |x: Tensor| -> Result<Tensor> {
        if params.normalize {
            l2_normalize(&x)
        } else {
            Ok(x)
        }
    };
    // Frozen mode: embeddings once, normalized once.
    let frozen = match (grad_from, given) {
        (Some(_), _) => None,
        (None, Some((xt, xv))) => Some((norm(xt)?, norm(xv)?)),
        (None, None) => {
            let mut cache = match &params.embedding_cache {
                Some(d) => Some(EmbedCache::open(
                    d,
                    &weights_sha,
                    params,
                    encoder.hidden_size(),
                )?),
                None => None,
            };
            let xt = embed_all(
                &encoder, &texts, &train_ids, params, &mut cache, "training", progress,
            )?;
            let xv = embed_all(
                &encoder,
                &val_texts,
                &val_ids,
                params,
                &mut cache,
                "validation",
                progress,
            )?;
            Some((norm(xt)?, norm(xv)?))
        }
    };

    let keep_freed = grad_from.map(|_| KeepFreedMemory::new());
    if keep_freed.as_ref().is_some_and(|k| !k.changed) {
        progress("malloc settings come from the environment: the fit leaves the allocator as set");
    }
    // The layers below the trained ones run once, not on every epoch (nor
    // in the linear probe, nor on every validation pass).
    let (below, val_below) = match grad_from {
        Some(g) if g > 0 => {
            let t = Instant::now();
            let bs = params.infer_batch_size;
            let b = encoder.states_below(&train_ids, g, bs, STATES_BELOW_BYTES)?;
            let v = match &b {
                Some(b) => encoder.states_below(
                    &val_ids,
                    g,
                    bs,
                    STATES_BELOW_BYTES.saturating_sub(b.bytes()),
                )?,
                None => None,
            };
            progress(&match (&b, &v) {
                (Some(b), v) => format!(
                    "layers 0..{g}: hidden states of the training{} texts computed once ({} MiB, {:.1}s)",
                    if v.is_some() { " and validation" } else { "" },
                    (b.bytes() + v.as_ref().map_or(0, |v| v.bytes())) >> 20,
                    t.elapsed().as_secs_f64()
                ),
                (None, _) => format!(
                    "layers 0..{g} run on every step: their hidden states would take {} MiB",
                    (lens.iter().sum::<usize>() * encoder.hidden_size() * 4) >> 20
                ),
            });
            (b, v)
        }
        _ => (None, None),
    };

    // LP-FT: the head starts from a linear probe on frozen embeddings.
    let probe = match (grad_from, params.linear_probe) {
        (Some(g), true) => {
            progress("linear probe: fitting the head on frozen embeddings first");
            // From the stored states only the layers above them run, where
            // that is the frozen fit's own embedding: every text fits one
            // window, and no cache would give it for free.
            let one_window = params.max_tokens.min(encoder.max_positions());
            let given = match (&below, &val_below) {
                (Some(b), Some(v))
                    if params.embedding_cache.is_none()
                        && train_ids
                            .iter()
                            .chain(&val_ids)
                            .all(|s| s.len() <= one_window) =>
                {
                    let t = Instant::now();
                    let bs = params.infer_batch_size;
                    let x = encoder
                        .embed_from_states(b, g, bs)?
                        .zip(encoder.embed_from_states(v, g, bs)?);
                    if x.is_some() {
                        progress(&format!(
                            "probe: embeddings from the stored states ({:.1}s)",
                            t.elapsed().as_secs_f64()
                        ));
                    }
                    x
                }
                _ => None,
            };
            let p = TransformerParams {
                mode: Mode::Frozen,
                linear_probe: false,
                precision: params.precision,
                max_tokens: params.max_tokens,
                truncation: params.truncation,
                hidden: params.hidden,
                dropout: params.dropout,
                level_loss_weight: params.level_loss_weight,
                seed: params.seed,
                normalize: params.normalize,
                infer_batch_size: params.infer_batch_size,
                embedding_cache: params.embedding_cache.clone(),
                ..TransformerParams::default()
            };
            let mut m = fit_given(
                &p,
                encoder_spec,
                inputs,
                label_space,
                id,
                &|m: &str| progress(&format!("probe: {m}")),
                given,
            )?;
            Some(m.head.snapshot()?)
        }
        _ => None,
    };
    let mut head = Head::init(
        encoder.hidden_size(),
        params.hidden,
        n_out,
        params.dropout,
        params.seed,
        &dev,
    )?;
    if let Some(s) = &probe {
        head.restore(s);
    }
    let enc_vars = match grad_from {
        Some(g) => encoder.bert.make_trainable(g)?,
        None => Vec::new(),
    };
    let n_enc_params: usize = enc_vars.iter().map(|(_, v)| v.elem_count()).sum();
    let mut opt = Opt::new(enc_vars, head.make_trainable()?, params)?;
    if grad_from.is_some() {
        progress(&format!(
            "fine-tuning {n_enc_params} encoder parameters (layers {}..{n_layers})",
            grad_from.unwrap_or(0)
        ));
    }

    let mut rng = StdRng::seed_from_u64(params.seed);
    let steps_per_epoch = texts.len().div_ceil(params.batch_size);
    let total = steps_per_epoch * params.epochs;
    let warm = (params.warmup_ratio * total as f64).ceil() as usize;
    let mut step = 0usize;
    let has_val = !val_texts.is_empty();
    let mut summary = TrainSummary {
        n_train: texts.len(),
        n_val: val_texts.len(),
        ..Default::default()
    };
    let mut best: Option<(f64, f64)> = None;
    let mut best_head = None;
    let mut best_enc = None;
    // The best epoch's validation embeddings are what the kept model gives
    // those texts (`KeptEmbeddings`) at f32, where each validation text is
    // one window (a fine-tuned pass embeds whole sequences; inference
    // windows longer ones) or the embeddings are the frozen fit's own.
    let one_window = params.max_tokens.min(encoder.max_positions());
    let val_is_forward = params.precision == Precision::F32
        && (frozen.is_some() || val_ids.iter().all(|s| s.len() <= one_window));
    let mut best_val = None;

    for epoch in 1..=params.epochs {
        let t_epoch = Instant::now();
        let batches = make_batches(&lens, params.batch_size, &mut rng, grad_from.is_some());
        let mut loss_sum = 0.0;
        let report_every = (batches.len() / 10).max(1);
        for (bi, idx) in batches.iter().enumerate() {
            let factor = lr_factor(step, warm, total);
            let x = match (&frozen, grad_from) {
                (Some((xt, _)), _) => {
                    xt.index_select(&u32_tensor(idx.iter().copied(), &dev)?, 0)?
                }
                (None, g) => {
                    let seqs: Vec<&[u32]> = idx.iter().map(|&i| train_ids[i].as_slice()).collect();
                    let mut ctx = TrainCtx {
                        grad_from: g.unwrap_or(0),
                        dropout: params.dropout,
                        rng: &mut rng,
                    };
                    norm(match &below {
                        Some(b) => encoder.forward_pooled_above(&seqs, idx, b, &mut ctx)?,
                        None => encoder.forward_pooled(&seqs, Some(&mut ctx))?,
                    })?
                }
            };
            let logits = head.forward(&x, Some(&mut rng))?;
            let targets: Vec<usize> = idx.iter().map(|&i| inputs.targets[i]).collect();
            let loss = hierarchical_loss(&logits, &targets, &levels, params.level_loss_weight)?;
            let grads = loss.backward()?;
            opt.step(&grads, factor)?;
            let l = loss.to_scalar::<f32>()? as f64;
            if !l.is_finite() {
                return Err(TransformerError::Tensor(format!(
                    "training diverged (loss {l}) at epoch {epoch}; lower lr/head_lr"
                )));
            }
            loss_sum += l;
            step += 1;
            if grad_from.is_some() && (bi + 1) % report_every == 0 && bi + 1 < batches.len() {
                let secs = t_epoch.elapsed().as_secs_f64();
                progress(&format!(
                    "epoch {epoch}/{}: step {}/{}, loss {:.4}, {:.1} texts/s",
                    params.epochs,
                    bi + 1,
                    batches.len(),
                    loss_sum / (bi + 1) as f64,
                    batches[..=bi].iter().map(Vec::len).sum::<usize>() as f64 / secs
                ));
            }
        }
        let train_loss = loss_sum / batches.len() as f64;
        summary.epochs_run = epoch;
        summary.train_loss = train_loss;

        let mut line = format!("epoch {epoch}/{}: loss {train_loss:.4}", params.epochs);
        let mut improved = !has_val;
        if has_val {
            let xv = match &frozen {
                Some((_, xv)) => xv.clone(),
                None => {
                    let bs = params.infer_batch_size;
                    let stored = match (&val_below, grad_from) {
                        (Some(v), Some(g)) => encoder.embed_from_states(v, g, bs)?,
                        _ => None,
                    };
                    norm(match stored {
                        Some(x) => x,
                        None => encoder.embed_ids(&val_ids, bs)?,
                    })?
                }
            };
            let logits = head.forward(&xv, None)?.detach();
            let (acc, vloss) = accuracy_and_loss(&logits, &inputs.val_targets)?;
            improved = match best {
                None => true,
                Some((ba, bl)) => acc > ba + 1e-12 || (acc >= ba - 1e-12 && vloss < bl),
            };
            if improved {
                best = Some((acc, vloss));
                if val_is_forward {
                    best_val = Some(xv);
                }
            }
            let (ba, _) = best.unwrap_or((acc, vloss));
            line.push_str(&format!(
                ", val_acc {acc:.4}, val_loss {vloss:.4} (best {ba:.4})"
            ));
        }
        if improved {
            summary.best_epoch = epoch;
            if let Some((a, l)) = best {
                summary.val_accuracy = Some(a);
                summary.val_loss = Some(l);
            }
            if has_val {
                best_head = Some(head.snapshot()?);
                if grad_from.is_some() {
                    best_enc = Some(encoder.bert.snapshot()?);
                }
            }
        }
        line.push_str(&format!(
            ", lr x{:.3}, {:.1}s",
            lr_factor(step.saturating_sub(1), warm, total),
            t_epoch.elapsed().as_secs_f64()
        ));
        progress(&line);
        if has_val && params.patience > 0 && epoch - summary.best_epoch >= params.patience {
            progress(&format!(
                "early stop: no better validation accuracy for {} epochs; keeping epoch {}",
                params.patience, summary.best_epoch
            ));
            break;
        }
    }
    drop(keep_freed);
    if let Some(s) = best_head {
        head.restore(&s);
    }
    if let Some(s) = best_enc {
        encoder.bert.restore(&s);
    }
    head.freeze();
    encoder.bert.freeze();
    encoder.set_precision(params.precision);
    // The trained model's embeddings of the training texts, for whoever
    // keeps them (the bundle's memory): from the stored states, only the
    // trained layers run again. At f32 only, where they are what the
    // model's own forward gives.
    let fit_embeddings = match (frozen, &below, grad_from) {
        (Some((xt, _)), _, _) => Some(xt),
        (None, Some(b), Some(g)) if params.precision == Precision::F32 => {
            let t = Instant::now();
            let x = encoder.embed_from_states(b, g, params.infer_batch_size)?;
            if x.is_some() {
                progress(&format!(
                    "trained embeddings of the training texts from the stored states ({:.1}s)",
                    t.elapsed().as_secs_f64()
                ));
            }
            x.map(norm).transpose()?
        }
        _ => None,
    };
    drop((below, val_below));
    let fit_val = match best_val {
        Some(x) => Some(KeptEmbeddings::new(&inputs.val_texts, &x)?),
        None => None,
    };
    summary.seconds = t_start.elapsed().as_secs_f64();
    let info = ModelInfo {
        format: 1,
        id: id.to_string(),
        kind: crate::KIND.into(),
        params: params.clone(),
        label_space: label_space.clone(),
        pooling: "mean".into(),
        normalize: params.normalize,
        encoder_source: encoder_spec.to_string(),
        encoder_sha256: weights_sha,
        fine_tuned: grad_from.is_some(),
        hidden_size: encoder.hidden_size(),
        train: summary,
    };
    Ok(TransformerModel {
        info,
        encoder,
        head,
        fit_embeddings,
        fit_val,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malloc_settings_from_the_environment_are_recognised() {
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect::<Vec<(std::ffi::OsString, std::ffi::OsString)>>()
        };
        assert!(!user_tunes_malloc(env(&[
            ("PATH", "/bin"),
            ("HOME", "/root")
        ])));
        assert!(user_tunes_malloc(env(&[("MALLOC_MMAP_MAX_", "0")])));
        assert!(user_tunes_malloc(env(&[("MALLOC_TRIM_THRESHOLD_", "1")])));
        assert!(user_tunes_malloc(env(&[(
            "GLIBC_TUNABLES",
            "glibc.malloc.mmap_max=0"
        )])));
        // Not these: jemalloc's configuration, other parameters and tunables.
        assert!(!user_tunes_malloc(env(&[("MALLOC_CONF", "x")])));
        assert!(!user_tunes_malloc(env(&[("MALLOC_ARENA_MAX", "2")])));
        assert!(!user_tunes_malloc(env(&[(
            "GLIBC_TUNABLES",
            "glibc.cpu.hwcaps=-AVX512F"
        )])));
    }

    #[test]
    fn schedule_warms_up_then_decays() {
        assert!((lr_factor(0, 10, 100) - 0.1).abs() < 1e-12);
        assert!((lr_factor(9, 10, 100) - 1.0).abs() < 1e-12);
        assert!((lr_factor(10, 10, 100) - 1.0).abs() < 1e-12);
        assert!((lr_factor(55, 10, 100) - 0.5).abs() < 1e-12);
        assert!(lr_factor(100, 10, 100).abs() < 1e-12);
        assert!((lr_factor(0, 0, 10) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn batches_cover_every_row_once_and_repeat_with_the_seed() {
        let lens: Vec<usize> = (0..103).map(|i| (i * 7) % 31).collect();
        for grouped in [false, true] {
            let a = make_batches(&lens, 8, &mut StdRng::seed_from_u64(1), grouped);
            let b = make_batches(&lens, 8, &mut StdRng::seed_from_u64(1), grouped);
            assert_eq!(a, b);
            let mut all: Vec<usize> = a.concat();
            all.sort();
            assert_eq!(all, (0..103).collect::<Vec<_>>());
        }
    }

    #[test]
    fn level_loss_adds_marginal_terms() {
        let dev = Device::Cpu;
        // 4 leaf paths under 2 L1 nodes: {0,1} -> 0, {2,3} -> 1.
        let levels = Levels::new(&[vec![0, 0, 1, 1]], 4, &dev).unwrap();
        let logits = Tensor::new(&[[2.0f32, 1.0, 0.0, -1.0]], &dev).unwrap();
        let plain = hierarchical_loss(&logits, &[1], &levels, 0.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let hier = hierarchical_loss(&logits, &[1], &levels, 0.5)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // Reference by hand: p = softmax(logits); marginal of node 0 = p0 + p1.
        let p = casetag_core::softmax(&[2.0, 1.0, 0.0, -1.0], 1.0);
        assert!((plain + p[1].ln()).abs() < 1e-5);
        assert!((hier - plain + 0.5 * (p[0] + p[1]).ln()).abs() < 1e-5);
        let bad = Levels::new(&[vec![0, 1]], 4, &dev);
        assert!(bad.is_err());
    }
}
