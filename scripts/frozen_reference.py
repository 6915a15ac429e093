#!/usr/bin/env python3
"""Frozen-encoder reference for BANKING77: all-MiniLM-L6-v2 mean-pooled,
L2-normalized embeddings + scikit-learn LogisticRegression.

The embeddings are computed independently of the Rust code: the Hugging Face
`tokenizers` package and a plain numpy BERT forward pass over the safetensors
weights (no torch needed). LogisticRegression's C is chosen on the same
validation split the Rust example uses (every 10th training row); like the
Rust head, it is fit on the other 90% of the training rows only.

Usage:
  pip install numpy scipy scikit-learn tokenizers
  python3 scripts/frozen_reference.py [--encoder models/encoders/all-MiniLM-L6-v2]
      [--data ../shared/data/banking77] [--rust-dump DIR]

--rust-dump DIR compares against embeddings written by
`cargo run --release -p casetag-transformer --example banking77 -- --dump DIR`
(max abs difference) and also fits the same LogisticRegression on them.
"""
import argparse
import csv
import json
import os
import struct
import sys
import time

import numpy as np


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        dtype = {"F32": np.float32, "F16": np.float16, "I64": np.int64}[meta["dtype"]]
        out[name] = np.frombuffer(data[a:b], dtype=dtype).reshape(meta["shape"])
    return out


from scipy.special import erf  # noqa: E402  (scipy comes with scikit-learn)


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


class NumpyBert:
    def __init__(self, d):
        cfg = json.load(open(os.path.join(d, "config.json")))
        self.cfg = cfg
        w = load_safetensors(os.path.join(d, "model.safetensors"))
        p = "bert." if "bert.embeddings.word_embeddings.weight" in w else ""
        self.w = {k[len(p):]: v.astype(np.float64) for k, v in w.items() if k.startswith(p)}

    def forward(self, ids, mask):
        c, w = self.cfg, self.w
        b, s = ids.shape
        h, nh = c["hidden_size"], c["num_attention_heads"]
        dh = h // nh
        eps = c.get("layer_norm_eps", 1e-12)
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][:s][None]
             + w["embeddings.token_type_embeddings.weight"][0][None, None])
        x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        bias = np.where(mask[:, None, None, :] > 0, 0.0, -1e30)
        for i in range(c["num_hidden_layers"]):
            p = f"encoder.layer.{i}."
            lin = lambda t, n: t @ w[p + n + ".weight"].T + w[p + n + ".bias"]
            heads = lambda t: t.reshape(b, s, nh, dh).transpose(0, 2, 1, 3)
            q = heads(lin(x, "attention.self.query"))
            k = heads(lin(x, "attention.self.key"))
            v = heads(lin(x, "attention.self.value"))
            att = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh) + bias
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            ctx = (att @ v).transpose(0, 2, 1, 3).reshape(b, s, h)
            x = layer_norm(lin(ctx, "attention.output.dense") + x,
                           w[p + "attention.output.LayerNorm.weight"],
                           w[p + "attention.output.LayerNorm.bias"], eps)
            inter = lin(x, "intermediate.dense")
            inter = 0.5 * inter * (1.0 + erf(inter / np.sqrt(2.0)))
            x = layer_norm(lin(inter, "output.dense") + x,
                           w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
        return x


def embed(model, tok, texts, max_tokens=128, batch=64):
    encs = tok.encode_batch(texts)
    # Head truncation that keeps [SEP], as the Rust side does.
    seqs = [e.ids[: max_tokens - 1] + [e.ids[-1]] if len(e.ids) > max_tokens else e.ids
            for e in encs]
    order = np.argsort([len(s) for s in seqs], kind="stable")
    out = np.zeros((len(texts), model.cfg["hidden_size"]), dtype=np.float64)
    for i in range(0, len(order), batch):
        idx = order[i: i + batch]
        s = max(len(seqs[j]) for j in idx)
        ids = np.zeros((len(idx), s), dtype=np.int64)
        mask = np.zeros((len(idx), s))
        for r, j in enumerate(idx):
            ids[r, : len(seqs[j])] = seqs[j]
            mask[r, : len(seqs[j])] = 1
        hs = model.forward(ids, mask)
        pooled = (hs * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        out[idx] = pooled
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def read(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["category"] for r in rows]


def fit_lr(xtr, ytr, xva, yva, xte, yte, label):
    from sklearn.linear_model import LogisticRegression

    best = None
    for c in [1.0, 10.0, 100.0, 1000.0]:
        t = time.time()
        clf = LogisticRegression(C=c, max_iter=3000)
        clf.fit(xtr, ytr)
        va = (clf.predict(xva) == yva).mean()
        print(f"  [{label}] C={c:g}: val_acc={va:.4f} ({time.time() - t:.1f}s)")
        if best is None or va > best[0]:
            best = (va, c, clf)
    te = (best[2].predict(xte) == yte).mean()
    print(f"RESULT reference={label} C={best[1]:g} val_accuracy={best[0]:.4f} "
          f"test_accuracy={te:.4f}")
    return te


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoder", default=os.path.join(root, "models/encoders/all-MiniLM-L6-v2"))
    ap.add_argument("--data", default=os.path.join(root, "../shared/data/banking77"))
    ap.add_argument("--rust-dump", default=None)
    ap.add_argument("--max-tokens", type=int, default=128)
    a = ap.parse_args()
    if not os.path.isfile(os.path.join(a.encoder, "model.safetensors")):
        sys.exit(f"{a.encoder}: missing; run scripts/fetch_encoder.sh")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(a.encoder, "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    model = NumpyBert(a.encoder)
    train_x, train_y = read(os.path.join(a.data, "train.csv"))
    test_x, test_y = read(os.path.join(a.data, "test.csv"))
    t = time.time()
    etr = embed(model, tok, train_x, a.max_tokens)
    ete = embed(model, tok, test_x, a.max_tokens)
    print(f"numpy embeddings: {len(train_x) + len(test_x)} texts in {time.time() - t:.1f}s")
    ytr, yte = np.array(train_y), np.array(test_y)
    val = np.arange(len(train_x)) % 10 == 9  # same split as the Rust example
    fit_lr(etr[~val], ytr[~val], etr[val], ytr[val], ete, yte, "numpy-minilm")
    if a.rust_dump:
        rtr = np.load(os.path.join(a.rust_dump, "train_emb.npy")).astype(np.float64)
        rte = np.load(os.path.join(a.rust_dump, "test_emb.npy")).astype(np.float64)
        print(f"max |rust - numpy| embedding difference: train {np.abs(rtr - etr).max():.2e}, "
              f"test {np.abs(rte - ete).max():.2e}")
        fit_lr(rtr[~val], ytr[~val], rtr[val], ytr[val], rte, yte, "rust-embeddings")


if __name__ == "__main__":
    main()
