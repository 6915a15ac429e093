#!/usr/bin/env python3
"""Batch novelty for out-of-scope detection, BANKING77 hold-out: the Python
prototype of the detector's batch rule (`casetag tag/eval --batch-novelty`,
crates/engine/src/oos_meta.rs). Offline research, not part of the product.

Same data, split and `meta` detector as scripts/oos_pseudo.py, plus one
feature, `nov`: for the rows of a batch predicted as class c, the mean cosine
to the three nearest of an equally sized random sample of c's training rows
minus the mean cosine to the three nearest other batch rows predicted c. Each
leave-classes-out round builds a stand-in batch (the kept validation rows and,
at the same rate per class, rows of the hidden classes); the cut is taken on
the validation rows as one batch and applied to the test set as one batch.
Prints, per seed, the `meta+nov` detector and `nov` alone (whose sign the
evaluation takes as given: AUROC below 0.5 means "reversed").

    python3 scripts/oos_batch.py 1 2 3      # dev seeds (design and settings chosen here)
    python3 scripts/oos_batch.py 1 2 3 --knn 5 --episodes 12   # the settings' neighbours
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oos_pseudo as op  # noqa: E402


def nov_dm(X, pred, Xtr, Ytr, rng, k):
    kb = np.zeros(len(X))
    kt = np.zeros(len(X))
    for c in np.unique(pred):
        R = np.where(pred == c)[0]
        m = len(R)
        if m < 2:
            continue
        S = X[R] @ X[R].T
        np.fill_diagonal(S, -2)
        kk = min(k, m - 1)
        kb[R] = np.sort(S, 1)[:, -kk:].mean(1)
        T = np.where(Ytr == c)[0]
        T = rng.choice(T, min(m - 1, len(T)), replace=False)
        kt[R] = np.sort(X[R] @ Xtr[T].T, 1)[:, -min(kk, len(T)):].mean(1)
    return kt - kb


def run(d, seed, k=3, episodes=6, budgets=(0.0125, 0.02)):
    s = op.split(d, seed)
    rng = np.random.default_rng(100 + seed)
    K, Xf, Yf, Xv, Yv = s["K"], s["Xf"], s["Yf"], s["Xv"], s["Yv"]
    F, kind = [], []
    per = max(1, int(round(len(Xv) / K)))
    for _ in range(episodes):
        hold = rng.choice(K, 10, replace=False)
        mf, mv = ~np.isin(Yf, hold), ~np.isin(Yv, hold)
        remap = -np.ones(K, int)
        remap[np.setdiff1d(np.arange(K), hold)] = np.arange(K - 10)
        b = op.Base(Xf[mf], remap[Yf[mf]], K - 10)
        Xout = np.vstack([Xf[~mf], Xv[~mv]])
        Yout = np.concatenate([Yf[~mf], Yv[~mv]])
        samp = np.concatenate([rng.choice(np.where(Yout == h)[0], per, replace=False) for h in hold])
        batch = np.vstack([Xv[mv], Xout[samp]])
        pb, fb = b.feats(batch)
        fb["nov"] = nov_dm(batch, pb, Xf[mf], remap[Yf[mf]], rng, k)
        nin = mv.sum()
        F.append(op.fmat(fb))
        kind.append(np.concatenate([np.where(pb[:nin] == remap[Yv[mv]], 0, 1), np.full(len(samp), 2)]))
    F, kind = np.vstack(F), np.concatenate(kind)
    base = op.Base(Xf, Yf, K)
    pv, fv = base.feats(Xv)
    pt, ft = base.feats(s["Xt"])
    fv["nov"] = nov_dm(Xv, pv, Xf, Yf, rng, k)
    ft["nov"] = nov_dm(s["Xt"], pt, Xf, Yf, rng, k)
    cols = sorted(fv)
    ci, w, bb = op.fit_detector(F, kind, cols, cols, 0.1)
    return {
        "meta+nov": op.evaluate(s, pv, -(op.fmat(fv)[:, ci] @ w + bb), pt, -(op.fmat(ft)[:, ci] @ w + bb), list(budgets)),
        "nov": op.evaluate(s, pv, -fv["nov"], pt, -ft["nov"], list(budgets)),
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("seeds", type=int, nargs="*", default=[1, 2, 3])
    ap.add_argument("--knn", type=int, default=3, help="nearest neighbours on each side")
    ap.add_argument("--episodes", type=int, default=6, help="leave-classes-out rounds")
    a = ap.parse_args()
    d = op.load(op.DEF_DUMP, op.DEF_SRC)
    for seed in a.seeds:
        for name, r in run(d, seed, a.knn, a.episodes).items():
            print(seed, name, f"raw {r['raw']:.4f} auroc {r['auroc']:.3f} rec@2pt(test-tuned) {r['oracle_rec@2pt']:.3f} | "
                  + " | ".join(f"budget {b}: rec {r[b]['rec']:.3f} drop {r[b]['drop']:.2f}" for b in (0.0125, 0.02)), flush=True)
