#!/usr/bin/env python3
"""Batch novelty for out-of-scope detection, BANKING77 hold-out: the Python
prototype of the detector's batch rule (`casetag tag/eval --batch-novelty`,
crates/engine/src/oos_meta.rs). Offline research, not part of the product.

Same data, split and `meta` detector as research/oos_pseudo.py, plus one
feature, `nov`: for the rows of a batch predicted as class c, the mean cosine
to the three nearest of an equally sized random sample of c's training rows
minus the mean cosine to the three nearest other batch rows predicted c. Each
leave-classes-out round builds a stand-in batch (the kept validation rows and,
at the same rate per class, rows of the hidden classes); the cut is taken on
the validation rows as one batch and applied to the test set as one batch.
Then the smoothing rule (added in commit 2009b1a): a second balanced logistic rule over
(s1, mean s1 of the `--smooth` nearest other batch rows by cosine), where s1
is the `meta+nov` logit, learned on the same stand-in batches.
Prints, per seed, the `meta+nov` detector, `+smooth`, and `nov` alone (whose
sign the evaluation takes as given: AUROC below 0.5 means "reversed").

    python3 research/oos_batch.py 1 2 3      # dev seeds (design and settings chosen here)
    python3 research/oos_batch.py 1 2 3 --knn 5 --episodes 12   # the settings' neighbours
    python3 research/oos_batch.py 1 2 3 --smooth 3   # and the smoothing's (5 as chosen; 10)
    python3 research/oos_batch.py 1 2 3 --oos-per 2  # a rarer newcomer: 2 test rows per held-out intent
"""
import argparse
import os
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression

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


def nbr_mean(X, s1, k):
    """Mean of s1 over each row's k nearest other rows (cosine)."""
    S = X @ X.T
    np.fill_diagonal(S, -2)
    return s1[np.argsort(S, 1)[:, -k:]].mean(1)


class Rules:
    """The batch rule and the smoothing rule, learned on a split's stand-in
    batches: `s1` is the batch rule's logit (higher = more out of scope) of a
    feature dict with `nov`, `smoothed` the smoothing rule's score (higher =
    more in scope) of logits `s1` and their rows' `nbr` (mean s1 of nearest
    batch rows)."""

    def __init__(self, s, k=3, episodes=6, smooth=5, seed=0):
        rng = np.random.default_rng(100 + seed)
        K, Xf, Yf, Xv, Yv = s["K"], s["Xf"], s["Yf"], s["Xv"], s["Yv"]
        F, kind, B = [], [], []
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
            B.append(batch)
            kind.append(np.concatenate([np.where(pb[:nin] == remap[Yv[mv]], 0, 1), np.full(len(samp), 2)]))
        self.rng, self.k, self.smooth = rng, k, smooth
        self.base = op.Base(Xf, Yf, K)
        self.Fe, self.B = F, B
        F, kind = np.vstack(F), np.concatenate(kind)
        _, fv = self.base.feats(Xv[:2])
        fv["nov"] = np.zeros(2)
        self.cols = sorted(fv)
        self.ci, self.w, self.bb = op.fit_detector(F, kind, self.cols, self.cols, 0.1)
        G = np.vstack([np.column_stack([f[:, self.ci] @ self.w + self.bb,
                                        nbr_mean(x, f[:, self.ci] @ self.w + self.bb, smooth)])
                       for f, x in zip(self.Fe, B)])
        self.mu, self.sd = G.mean(0), G.std(0) + 1e-12
        self.det = LogisticRegression(C=0.1, max_iter=3000, class_weight="balanced").fit((G - self.mu) / self.sd, kind >= 1)

    def s1(self, f):
        return op.fmat(f)[:, self.ci] @ self.w + self.bb

    def smoothed(self, s1, nbr):
        A = (np.column_stack([s1, nbr]) - self.mu) / self.sd
        return -(A @ self.det.coef_[0] + self.det.intercept_[0])


def run(d, seed, k=3, episodes=6, budgets=(0.0125, 0.02), smooth=5, oos_per=None):
    s = op.split(d, seed)
    if oos_per is not None:  # keep only `oos_per` test rows of each held-out intent
        r0 = np.random.default_rng(5)
        names, keep = np.array(d["yte"]), s["Yt"] >= 0
        for h in s["held"]:
            keep[r0.choice(np.where(names == h)[0], oos_per, replace=False)] = True
        s["Xt"], s["Yt"] = s["Xt"][keep], s["Yt"][keep]
    r = Rules(s, k, episodes, smooth, seed)
    Xf, Yf, Xv = s["Xf"], s["Yf"], s["Xv"]
    pv, fv = r.base.feats(Xv)
    pt, ft = r.base.feats(s["Xt"])
    fv["nov"] = nov_dm(Xv, pv, Xf, Yf, r.rng, k)
    ft["nov"] = nov_dm(s["Xt"], pt, Xf, Yf, r.rng, k)
    s1v, s1t = r.s1(fv), r.s1(ft)
    return {
        "meta+nov": op.evaluate(s, pv, -s1v, pt, -s1t, list(budgets)),
        "+smooth": op.evaluate(s, pv, r.smoothed(s1v, nbr_mean(Xv, s1v, smooth)), pt,
                               r.smoothed(s1t, nbr_mean(s["Xt"], s1t, smooth)), list(budgets)),
        "nov": op.evaluate(s, pv, -fv["nov"], pt, -ft["nov"], list(budgets)),
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("seeds", type=int, nargs="*", default=[1, 2, 3])
    ap.add_argument("--knn", type=int, default=3, help="nearest neighbours on each side")
    ap.add_argument("--episodes", type=int, default=6, help="leave-classes-out rounds")
    ap.add_argument("--smooth", type=int, default=5, help="batch neighbours the smoothing rule averages")
    ap.add_argument("--oos-per", type=int, default=None, help="test rows kept per held-out intent (all: 40)")
    ap.add_argument("--dump", default=op.DEF_DUMP)
    a = ap.parse_args()
    d = op.load(a.dump, op.DEF_SRC)
    for seed in a.seeds:
        for name, r in run(d, seed, a.knn, a.episodes, smooth=a.smooth, oos_per=a.oos_per).items():
            print(seed, name, f"raw {r['raw']:.4f} auroc {r['auroc']:.3f} rec@2pt(test-tuned) {r['oracle_rec@2pt']:.3f} | "
                  + " | ".join(f"budget {b}: rec {r[b]['rec']:.3f} drop {r[b]['drop']:.2f}" for b in (0.0125, 0.02)), flush=True)
