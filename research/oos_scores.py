#!/usr/bin/env python3
"""Compare out-of-scope scores on the BANKING77 hold-out, offline.

Reads the frozen MiniLM embeddings written by
`cargo run --release -p casetag-transformer --example banking77 -- --dump DIR`
(official train/test order), holds out the same 10 intents as
scripts/banking77_oos.py (seed 7), fits a multinomial LogisticRegression on
the other intents (validation = every 10th training row, as in Rust) and, for
each score, picks the cut on validation that rejects `--budget` of the
correctly answered in-scope rows. Prints, on test: OOS recall, in-scope
accuracy after rejection, and raw top-1. This guides the score the Rust
decision layer uses; it is an experiment, not part of the product.

    python3 research/oos_scores.py --dump out/b77_dump [--budget 0.02 0.05 0.1]
"""
import argparse
import csv
import os
import random

import numpy as np
from sklearn.linear_model import LogisticRegression

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--dump", required=True)
ap.add_argument("--src", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "banking77"))
ap.add_argument("--seed", type=int, default=7)
ap.add_argument("--held-out", type=int, default=10)
ap.add_argument("--budget", type=float, nargs="+", default=[0.02, 0.05, 0.10])
ap.add_argument("--C", type=float, default=10.0)
a = ap.parse_args()


def read(name):
    with open(os.path.join(a.src, name), newline="", encoding="utf-8") as f:
        return [r["category"] for r in csv.DictReader(f)]


ytr_all, yte_all = read("train.csv"), read("test.csv")
intents = sorted(set(ytr_all))
held = set(random.Random(a.seed).sample(intents, a.held_out))
known = [c for c in intents if c not in held]
cid = {c: i for i, c in enumerate(known)}
etr = np.load(os.path.join(a.dump, "train_emb.npy")).astype(np.float64)
ete = np.load(os.path.join(a.dump, "test_emb.npy")).astype(np.float64)
keep = np.array([c not in held for c in ytr_all])
is_val = np.arange(len(ytr_all)) % 10 == 9
fit_rows = keep & ~is_val
val_rows = keep & is_val
ytr = np.array([cid.get(c, -1) for c in ytr_all])
yte = np.array([cid.get(c, -1) for c in yte_all])
oos_te = yte < 0

clf = LogisticRegression(C=a.C, max_iter=2000)
clf.fit(etr[fit_rows], ytr[fit_rows])


def logits(x):
    return x @ clf.coef_.T + clf.intercept_


def softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


X = etr[fit_rows]
Y = ytr[fit_rows]
cent = np.stack([X[Y == k].mean(0) for k in range(len(known))])
centn = cent / np.linalg.norm(cent, axis=1, keepdims=True)
cov = np.cov((X - cent[Y]).T) + 1e-3 * np.eye(X.shape[1])
prec = np.linalg.inv(cov)


def scores(x):
    """In-scope-ness: higher = more in scope."""
    z = logits(x)
    p = softmax(z)
    sims = x @ X.T
    out = {
        "msp": p.max(1),
        "max_logit": z.max(1),
        "energy": np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1),
        "centroid_cos": (x @ centn.T).max(1),
    }
    for k in (1, 5, 10):
        out[f"knn{k}_cos"] = np.sort(sims, axis=1)[:, -k]
    for t in (0.5, 2.0, 4.0):
        out[f"msp_T{t:g}"] = softmax(z / t).max(1)
    # Margin between the two most likely classes.
    ps = np.sort(p, axis=1)
    out["margin"] = ps[:, -1] - ps[:, -2]
    # Mahalanobis with a shared covariance (Lee et al., 2018).
    d = x[:, None, :] - cent[None, :, :]
    m = np.einsum("nkd,de,nke->nk", d, prec, d)
    out["mahalanobis"] = -m.min(1)
    return out


def add_combos(sv, st):
    """Product of MSP and a shifted kNN-1 similarity (both "higher = in scope")."""
    for k in ("knn1_cos", "centroid_cos"):
        lo = sv[k].min()
        sv[f"msp*{k}"] = sv["msp"] * (sv[k] - lo + 1e-3)
        st[f"msp*{k}"] = st["msp"] * (st[k] - lo + 1e-3)


sv, st = scores(etr[val_rows]), scores(ete)
add_combos(sv, st)
pred_v = logits(etr[val_rows]).argmax(1)
pred_t = logits(ete).argmax(1)
ok_v = pred_v == ytr[val_rows]
ins = ~oos_te
raw = (pred_t[ins] == yte[ins]).mean()
print(f"held out: {sorted(held)}")
print(f"raw top-1 on in-scope test: {raw:.4f}; test OOS rows: {oos_te.sum()} of {len(yte)}")
# z-normalized combination of msp and knn cosine on validation stats
for b in a.budget:
    print(f"\nbudget {b:.2f} of correct validation answers rejected")
    print(f"{'score':>14} {'oos_recall':>10} {'in_scope_acc':>12} {'drop':>6}")
    for name in sv:
        cut = np.quantile(sv[name][ok_v], b)
        rej = st[name] < cut
        rec = rej[oos_te].mean()
        acc = ((pred_t == yte) & ~rej)[ins].mean()
        print(f"{name:>14} {rec:10.3f} {acc:12.4f} {100*(raw-acc):6.2f}")
