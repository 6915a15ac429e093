#!/usr/bin/env python3
"""Missing class signatures as extra features of the leave-classes-out detector.

Offline experiment (not part of the product). `oos_lexnovel.py` asks whether a
case carries words the predicted class never uses; it does not help, because
a held-out intent's words are used by its kept neighbours too. This asks the
reverse: does the case lack the words that mark the predicted class? A query
for the unseen `getting_virtual_card` answered `get_disposable_virtual_card`
lacks "disposable"; one for `audio_volume_down` answered `audio_volume_up`
lacks "up" and "louder". Per class, from the fit rows of the kept intents:

  signature   the class's top `--words` words by p_k(w) log(p_k(w) / p(w)),
              p_k the share of the class's rows holding w (at least 2 rows),
              p the share of all rows
  sig_cov     the share of the predicted class's signature weight the case holds
  sig_cov_cn  sig_cov minus the class's median over its own fit rows, each
              scored with itself left out of the counts

They join the detector casetag ships (`oos_pseudo.py`'s 20 score features plus
the subspace residuals of `oos_subspace.py` at 128/16 directions and 30 rows of
pooled covariance), same rounds, same logistic detector. Choose on the dev
seeds only:

    python3 research/oos_lexsig.py --seeds 1 2 3
"""
from collections import Counter

import numpy as np

import oos_lexnovel as lx
import oos_pseudo as op
import oos_subspace as ss


class SigBase(ss.SubspaceBase):
    words = 10

    def __init__(self, X, Y, K, texts, C=10.0):
        super().__init__(X, Y, K, C=C)
        sets = [set(ws) for ws in texts]
        self.n = len(sets)
        self.nk = np.bincount(Y, minlength=K)
        self.df = Counter()
        self.ck = [Counter() for _ in range(K)]
        for u, y in zip(sets, Y):
            self.df.update(u)
            self.ck[y].update(u)
        self.sig = []
        for k in range(K):
            w = {t: self._s(c, self.nk[k], self.df[t], self.n) for t, c in self.ck[k].items() if c >= 2}
            self.sig.append(sorted((t for t in w if w[t] > 0), key=lambda t: -w[t])[: self.words])
        own = np.array([self._cov(u, y, leave=True) for u, y in zip(sets, Y)])
        self.q_sig = np.array([np.median(own[Y == k]) if (Y == k).any() else 0.0 for k in range(K)])

    @staticmethod
    def _s(c, nk, df, n):
        if c <= 0 or nk <= 0:
            return 0.0
        pk, p = c / nk, df / n
        return max(0.0, pk * np.log(pk / p))

    def _cov(self, u, k, leave=False):
        """Share of class k's signature weight in word set u; `leave`: u is one
        of k's fit rows, taken out of the counts first."""
        d = 1 if leave else 0
        tot = got = 0.0
        for t in self.sig[k]:
            inn = t in u
            s = self._s(self.ck[k][t] - d * inn, self.nk[k] - d, self.df[t] - d * inn, self.n - d)
            tot += s
            got += s if inn else 0.0
        return got / tot if tot > 0 else 1.0

    def feats_t(self, x, texts):
        pred, f = self.feats(x)
        cov = np.array([self._cov(set(ws), p) for ws, p in zip(texts, pred)])
        f["sig_cov"] = cov
        f["sig_cov_cn"] = cov - self.q_sig[pred]
        return pred, f


SETS = {
    "shipped": [],
    "+sig_cov": ["sig_cov"],
    "+sig_cov_cn": ["sig_cov_cn"],
    "+both": ["sig_cov", "sig_cov_cn"],
}


def compare(a, d, ttr, tte, make_base, sets, prefix):
    """The study shared with `oos_align.py`, on each of `a.seeds`:
    `make_base` (a `SubspaceBase` with `feats_t(x, texts)`) on the fit rows
    with their `ttr` items, the leave-classes-out rounds, and one detector per
    entry of `sets` (extra feature columns, all starting with `prefix`)."""

    def study(s, seed):
        lx.add_texts(s, d, ttr)
        base = make_base(s["Xf"], s["Yf"], s["K"], s["Tf"])
        pv, fv = base.feats_t(s["Xv"], s["Tv"])
        pt, ft = base.feats_t(s["Xt"], tte)
        F, kind, cols = lx.episodes(s, seed=100 + seed, make_base=make_base)
        Fv, Ft = op.fmat(fv), op.fmat(ft)
        plain = [c for c in cols if not c.startswith(prefix) and c != "resid_c_cn"]
        res = {}
        for name, extra in sets.items():
            ci, w, b = op.fit_detector(F, kind, plain + extra, cols)
            res[name] = op.evaluate(s, pv, -(Fv[:, ci] @ w + b), pt, -(Ft[:, ci] @ w + b), a.budget)
        return res

    ss.per_seed(a, d, study)


def main():
    ap = op.dev_args(__doc__)
    ap.add_argument("--budget", type=float, nargs="+", default=[0.0125, 0.02])
    ap.add_argument("--words", type=int, default=10)
    a = ap.parse_args()
    ss.SubspaceBase.dg, ss.SubspaceBase.dc, ss.SubspaceBase.shrink = 128, 16, 30.0
    SigBase.words = a.words
    d = op.load(a.dump, a.src)
    ttr, tte = lx.read_texts(a.src, "train.csv"), lx.read_texts(a.src, "test.csv")
    assert len(ttr) == len(d["etr"]) and len(tte) == len(d["ete"]), "dump rows != csv rows"
    compare(a, d, ttr, tte, SigBase, SETS, "sig_")


if __name__ == "__main__":
    main()
