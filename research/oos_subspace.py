#!/usr/bin/env python3
"""Subspace residuals as extra features of the leave-classes-out detector.

Offline experiment (not part of the product), after ViM ("virtual logit
matching", Wang et al. 2022): an embedding's distance from the subspace the
training rows span says how much of it the classifier never had to explain.
Features (higher = in scope, like every `oos_pseudo.py` feature), from the fit
rows of the kept intents only:

  resid_g     minus the norm of the residual off the top `--dg` principal
              directions of all fit rows (after centring)
  resid_c     minus the residual off the predicted class's centre and its top
              `--dc` principal directions
  resid_c_cn  resid_c minus the class's median over its own fit rows

They join the 20 score features of `oos_pseudo.py`'s `meta` detector (same
episodes, same detector). Choose on the dev seeds only:

    python3 research/oos_subspace.py --seeds 1 2 3
"""
import time

import numpy as np

import oos_pseudo as op


class SubspaceBase(op.Base):
    dg, dc = 64, 8
    shrink = None  # resid_c directions: None per class; L: class scatter + L rows of pooled; inf: pooled

    def __init__(self, X, Y, K, C=10.0):
        super().__init__(X, Y, K, C=C)
        self.mu = X.mean(0)
        self.P = np.linalg.svd(X - self.mu, full_matrices=False)[2][: self.dg]
        means = np.stack([X[Y == k].mean(0) for k in range(K)])
        self.cb = list(zip(means, self._class_dirs(X, Y, K, means)))
        own = np.zeros(len(X))
        for k in range(K):
            own[Y == k] = self._rc(X[Y == k], k)
        self.q_rc = np.array([np.median(own[Y == k]) for k in range(K)])

    def _class_dirs(self, X, Y, K, means):
        """Each class's top `dc` directions around its mean: of its own
        scatter, or of that scatter plus `shrink` rows' worth of the pooled
        within-class covariance (which new tags with few rows lean on)."""
        R = X - means[Y]
        if self.shrink is None:
            return [np.linalg.svd(R[Y == k], full_matrices=False)[2][: self.dc] for k in range(K)]
        S = R.T @ R / len(X)
        out = []
        for k in range(K):
            Rk = R[Y == k]
            M = S if np.isinf(self.shrink) else Rk.T @ Rk + self.shrink * S
            out.append(np.linalg.eigh(M)[1][:, ::-1][:, : self.dc].T)
        return out

    def _rc(self, x, k):
        ck, V = self.cb[k]
        r = x - ck
        return np.linalg.norm(r - (r @ V.T) @ V, axis=1)

    def feats(self, x):
        pred, f = super().feats(x)
        r = x - self.mu
        f["resid_g"] = -np.linalg.norm(r - (r @ self.P.T) @ self.P, axis=1)
        rc = np.empty(len(x))
        for k in np.unique(pred):
            rc[pred == k] = self._rc(x[pred == k], k)
        f["resid_c"] = -rc
        f["resid_c_cn"] = -(rc - self.q_rc[pred])
        return pred, f


SETS = {
    "meta": [],
    "meta+resid": ["resid_g", "resid_c", "resid_c_cn"],
    "meta+resid_g": ["resid_g"],
    "meta+resid_c": ["resid_c"],
    "meta+resid_g,c": ["resid_g", "resid_c"],
}


def main():
    ap = op.dev_args(__doc__)
    ap.add_argument("--budget", type=float, nargs="+", default=[0.0125, 0.02])
    ap.add_argument("--dg", type=int, default=64)
    ap.add_argument("--dc", type=int, default=8)
    ap.add_argument("--shrink", type=float, default=None,
                    help="resid_c: add this many rows' worth of the pooled within-class covariance "
                         "to each class's scatter (inf: the pooled directions only)")
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    a = ap.parse_args()
    SubspaceBase.dg, SubspaceBase.dc, SubspaceBase.shrink = a.dg, a.dc, a.shrink
    op.Base = SubspaceBase  # the episodes build their bases through op.Base
    d = op.load(a.dump, a.src)

    def study(s, seed):
        base = SubspaceBase(s["Xf"], s["Yf"], s["K"])
        pv, fv = base.feats(s["Xv"])
        pt, ft = base.feats(s["Xt"])
        cols = sorted(fv)
        plain = [c for c in cols if not c.startswith("resid")]
        F, kind, _ = op.episodes(s["Xf"], s["Yf"], s["Xv"], s["Yv"], s["K"], seed=100 + seed)
        Fv, Ft = op.fmat(fv), op.fmat(ft)
        res = {}
        for name in a.sets:
            ci, w, b = op.fit_detector(F, kind, plain + SETS[name], cols)
            res[name] = op.evaluate(s, pv, -(Fv[:, ci] @ w + b), pt, -(Ft[:, ci] @ w + b), a.budget)
        return res

    per_seed(a, d, study)


def per_seed(a, d, study):
    """The loop of the studies on the development seeds: for each of
    `a.seeds`, `study(split, seed)` gives the results per method, which are
    reported with the seed's held-out intents and time; over several seeds,
    their means follow."""
    agg = {}
    for seed in a.seeds:
        t0 = time.time()
        s = op.split(d, seed)
        res = study(s, seed)
        print(f"\nseed {seed}: held out {s['held']}; {time.time() - t0:.0f}s")
        op.report(res, a.budget)
        collect(agg, res, a.budget)
    if len(a.seeds) > 1:
        report_means(agg, a.seeds, a.budget)


def collect(agg, res, budgets):
    """Add one seed's results to `agg`: per method, AUROC, the test-tuned
    recall at 2 points, then recall and drop at each budget."""
    for m, r in res.items():
        agg.setdefault(m, []).append([r["auroc"], r["oracle_rec@2pt"]] +
                                     [r[b][k] for b in budgets for k in ("rec", "drop")])


def report_means(agg, seeds, budgets):
    print(f"\nmean over seeds {seeds}: auroc, recall at 2 points (test-tuned), "
          + ", ".join(f"recall/drop at {b:g}" for b in budgets))
    for m, v in agg.items():
        print(f"{m:>16} " + " ".join(f"{x:6.3f}" for x in np.mean(v, 0)))


if __name__ == "__main__":
    main()
