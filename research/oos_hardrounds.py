#!/usr/bin/env python3
"""Leave-classes-out rounds that hide intents next to kept ones.

Offline experiment (not part of the product). The shipped detector learns
from rounds that each hide 10 random kept intents (`oos_pseudo.episodes`).
The unknown intents it misses sit next to a known sibling, and a random round
often hides both of two siblings, so some of its stand-in out-of-scope rows
are far from everything left. Here each round draws its hidden intents so
that none of them is the nearest intent (cosine of the fit rows' centroids)
of another hidden one: every hidden intent keeps its nearest sibling in scope
(`--rounds near`). `--rounds nearest` goes further and draws intents with
probability rising with the cosine to their nearest sibling (softmax at
temperature `--tau`). Features and detector are those of the shipped one
(`oos_subspace.py`'s `meta+resid_g,c` at `--dg 128 --dc 16 --shrink 30`). Choose on the dev seeds only:

    python3 research/oos_hardrounds.py --seeds 1 2 3 --rounds random near nearest
"""

import numpy as np

import oos_pseudo as op
import oos_subspace as osub


def nearest_sibling(X, Y, K):
    """Each intent's nearest other intent and their centroids' cosine."""
    c = op.unit(np.stack([X[Y == k].mean(0) for k in range(K)]))
    G = c @ c.T
    np.fill_diagonal(G, -2)
    return G.argmax(1), G.max(1)


def draw(rng, K, n, kind, nn, cos, tau):
    if kind == "random":
        return rng.choice(K, n, replace=False)
    p = np.exp((cos - cos.max()) / tau) if kind == "nearest" else np.ones(K)
    hold = []
    for c in rng.choice(K, K, replace=False, p=p / p.sum()):
        if nn[c] in hold or any(nn[h] == c for h in hold):
            continue
        hold.append(c)
        if len(hold) == n:
            break
    return np.array(hold)


def episodes(Xf, Yf, Xv, Yv, K, kind, tau, n_ep=6, n_hold=10, seed=0):
    """`oos_pseudo.episodes` with the hidden intents drawn by `draw`."""
    rng = np.random.default_rng(seed)
    nn, cos = nearest_sibling(Xf, Yf, K)
    F, kinds = [], []
    for _ in range(n_ep):
        f, k = op.round_features(Xf, Yf, Xv, Yv, K, draw(rng, K, n_hold, kind, nn, cos, tau))
        F.append(f)
        kinds.append(np.minimum(k, 2))
    return np.vstack(F), np.concatenate(kinds)


def main():
    ap = op.dev_args(__doc__)
    ap.add_argument("--budget", type=float, nargs="+", default=[0.0125, 0.02])
    ap.add_argument("--rounds", nargs="+", default=["random", "near", "nearest"],
                    choices=["random", "near", "nearest"])
    ap.add_argument("--tau", type=float, default=0.05)
    a = ap.parse_args()
    osub.SubspaceBase.dg, osub.SubspaceBase.dc, osub.SubspaceBase.shrink = 128, 16, 30.0
    op.Base = osub.SubspaceBase
    d = op.load(a.dump, a.src)

    def study(s, seed):
        base = osub.SubspaceBase(s["Xf"], s["Yf"], s["K"])
        pv, fv = base.feats(s["Xv"])
        pt, ft = base.feats(s["Xt"])
        cols = sorted(fv)
        use = [c for c in cols if not c.startswith("resid")] + osub.SETS["meta+resid_g,c"]
        Fv, Ft = op.fmat(fv), op.fmat(ft)
        res = {}
        for kind in a.rounds:
            F, k = episodes(s["Xf"], s["Yf"], s["Xv"], s["Yv"], s["K"], kind, a.tau, seed=100 + seed)
            ci, w, b = op.fit_detector(F, k, use, cols)
            res[kind] = op.evaluate(s, pv, -(Fv[:, ci] @ w + b), pt, -(Ft[:, ci] @ w + b), a.budget)
        return res

    osub.per_seed(a, d, study)


if __name__ == "__main__":
    main()
