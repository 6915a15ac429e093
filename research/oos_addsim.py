#!/usr/bin/env python3
"""Out-of-scope features for tags added from a few examples.

Offline experiment (not part of the product). `casetag train --from P --add`
keeps the parent's detector weights and recomputes its features over the
parent's memory plus the new examples. A feature whose statistics depend on
how many rows a class has (the class subspace behind `resid_c`) can then make
the new tags' cases look out of scope. This simulates that on the frozen dump:

  * the 10 held-out intents of `oos_pseudo.split(seed)` are out of scope;
  * 10 more kept intents (drawn with `seed + 1000`) play the added tags: the
    parent never sees them, the child gets 10 of their fit rows each;
  * the parent's base and `meta` detector (with the residual features) are
    fitted on the other intents; the cut is the budget quantile of the
    parent's in-scope score on its correctly answered validation rows;
  * the child's base is refitted on the parent's rows plus the examples, the
    new rows weighted like the median old class (as `add` does), and scores
    the test rows with the parent's detector and cut.

Variants of the class subspace (`resid_c`): per-class top `--dc` directions
(what casetag does), the pooled within-class directions shared by all
classes, and the class scatter shrunk towards the pooled one by `--shrink L`
rows' worth. Choose on the dev seeds only:

    python3 research/oos_addsim.py --seeds 1 2 3
"""
import time

import numpy as np
from sklearn.linear_model import LogisticRegression

import oos_pseudo as op
import oos_subspace as osub

ORIG = op.Base  # oos_pseudo's base, before anything replaces op.Base


def weighted(parent):
    """`parent` whose logistic model weighs its rows by `weights` (when
    there is one weight per fit row; the episodes' bases weigh them alike)."""
    class Weighted(parent):
        weights = None

        def __init__(self, X, Y, K, C=10.0):
            w = self.weights if self.weights is not None and len(self.weights) == len(X) else None
            plain = op.fit_lr

            def fit(X, Y, C=10.0):
                return LogisticRegression(C=C, max_iter=2000).fit(X, Y, sample_weight=w)
            op.fit_lr = fit
            try:
                super().__init__(X, Y, K, C=C)
            finally:
                op.fit_lr = plain
    return Weighted


Base = weighted(osub.SubspaceBase)


def run(d, seed, budget, n_ex=10, n_new=10):
    s = op.split(d, seed)
    K = s["K"]
    rng = np.random.default_rng(seed + 1000)
    new = np.sort(rng.choice(K, n_new, replace=False))
    old = np.setdiff1d(np.arange(K), new)
    remap = -np.ones(K, int)
    remap[old] = np.arange(len(old))
    remap[new] = len(old) + np.arange(n_new)
    Yf, Yv, Yt = remap[s["Yf"]], remap[s["Yv"]], np.where(s["Yt"] >= 0, remap[np.maximum(s["Yt"], 0)], -1)
    Ko = len(old)
    po = Yf < Ko
    Xp, Yp = s["Xf"][po], Yf[po]
    vo = Yv < Ko
    Base.weights = None
    parent = Base(Xp, Yp, Ko)
    pv, fv = parent.feats(s["Xv"][vo])
    cols = sorted(fv)
    F, kind, _ = op.episodes(Xp, Yp, s["Xv"][vo], Yv[vo], Ko, seed=100 + seed)
    ci, w, b = op.fit_detector(F, kind, cols, cols)
    score_v = -(op.fmat(fv)[:, ci] @ w + b)
    cut = np.quantile(score_v[pv == Yv[vo]], budget)
    # the child: parent rows plus n_ex fit rows of each new class, weighted
    ex = np.concatenate([np.flatnonzero(Yf == k)[:n_ex] for k in range(Ko, K)])
    Xc, Yc = np.vstack([Xp, s["Xf"][ex]]), np.concatenate([Yp, Yf[ex]])
    med = np.median(np.bincount(Yp))
    Base.weights = np.concatenate([np.ones(len(Yp)), np.full(len(ex), med / n_ex)])
    child = Base(Xc, Yc, K)
    Base.weights = None
    pt, ft = child.feats(s["Xt"])
    st = -(op.fmat(ft)[:, ci] @ w + b)
    rej = st < cut
    oos = Yt < 0
    isnew, isold = Yt >= Ko, (Yt >= 0) & (Yt < Ko)
    ok = pt == Yt
    return {
        "new_top1": ok[isnew].mean(), "new_in": (ok & ~rej)[isnew].mean(),
        "old_top1": ok[isold].mean(), "old_in": (ok & ~rej)[isold].mean(),
        "recall": rej[oos].mean(), "auroc": op.auroc(st[~oos], st[oos]),
        "auroc_new": op.auroc(st[isnew], st[oos]),
    }


def main():
    ap = op.dev_args(__doc__)
    ap.add_argument("--budget", type=float, default=0.02)
    ap.add_argument("--dg", type=int, default=128)
    ap.add_argument("--dc", type=int, default=16)
    ap.add_argument("--shrink", type=float, default=None,
                    help="rows' worth of pooled within-class scatter added to each class's (inf: pooled only)")
    ap.add_argument("--no-resid", action="store_true", help="the 20 features without the residuals")
    a = ap.parse_args()
    Base.dg, Base.dc, Base.shrink = a.dg, a.dc, a.shrink
    if a.no_resid:
        globals()["Base"] = weighted(ORIG)
    op.Base = Base  # the episodes build their bases through op.Base
    d = op.load(a.dump, a.src)
    rows = []
    for seed in a.seeds:
        t0 = time.time()
        r = run(d, seed, a.budget)
        rows.append([r[k] for k in sorted(r)])
        print(f"seed {seed} ({time.time() - t0:.0f}s): " + " ".join(f"{k} {r[k]:.4f}" for k in sorted(r)), flush=True)
    if len(a.seeds) > 1:
        print("mean: " + " ".join(f"{k} {v:.4f}" for k, v in zip(sorted(r), np.mean(rows, 0))))


if __name__ == "__main__":
    main()
