#!/usr/bin/env python3
"""Out-of-scope detection from every layer of frozen MiniLM (offline research,
not part of the product; needs torch and transformers).

Mean-pools each of the encoder's hidden states (embeddings and layers 1-6) for
BANKING77's training and test rows and writes, for research/oos_pseudo.py, one
embedding dump per way of combining them:
  last          layer 6 (what casetag uses; matches the Rust dump to 1e-6)
  avg_all       mean of the L2-normalised layers 1-6 ("Avg-Avg", Chen et al. 2022)
  l4l5l6        mean of the L2-normalised layers 4-6
  cat_last_avg  layer 6 concatenated with avg_all

    python3 research/oos_layers.py --model models/encoders/all-MiniLM-L6-v2 --out out/b77_layers
    python3 research/oos_pseudo.py --dump out/b77_layers/avg_all --seeds 1 2 3
"""
import argparse
import csv
import os
import time

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--model", default=os.path.join(HERE, "..", "models", "encoders", "all-MiniLM-L6-v2"))
ap.add_argument("--src", default=os.path.join(HERE, "..", "..", "shared", "data", "banking77"))
ap.add_argument("--out", default=os.path.join(HERE, "..", "out", "b77_layers"))
a = ap.parse_args()


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


COMBINE = {
    "last": lambda A: A[:, -1],
    "avg_all": lambda A: unit(A[:, 1:]).mean(1),
    "l4l5l6": lambda A: unit(A[:, -3:]).mean(1),
    "cat_last_avg": lambda A: np.hstack([unit(A[:, -1]), unit(unit(A[:, 1:]).mean(1))]),
}

tok = AutoTokenizer.from_pretrained(a.model)
model = AutoModel.from_pretrained(a.model).float().eval()
layers = {}
for name in ("train", "test"):
    with open(os.path.join(a.src, f"{name}.csv"), newline="", encoding="utf-8") as f:
        texts = [r["text"] for r in csv.DictReader(f)]
    order = np.argsort([len(t) for t in texts])
    out, t0 = None, time.time()
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            idx = order[i : i + 64]
            b = tok([texts[j] for j in idx], truncation=True, max_length=128, padding=True, return_tensors="pt")
            hs = model(**b, output_hidden_states=True).hidden_states
            m = b["attention_mask"].unsqueeze(-1).float()
            pooled = torch.stack([(h * m).sum(1) / m.sum(1) for h in hs], 1).numpy()
            if out is None:
                out = np.zeros((len(texts),) + pooled.shape[1:], np.float32)
            out[idx] = pooled
    layers[name] = out
    print(f"{name}: {len(texts)} rows, {time.time() - t0:.0f}s", flush=True)
for k, f in COMBINE.items():
    d = os.path.join(a.out, k)
    os.makedirs(d, exist_ok=True)
    for name in ("train", "test"):
        np.save(os.path.join(d, f"{name}_emb.npy"), unit(f(layers[name])).astype(np.float32))
    print(f"wrote {d}")
