#!/usr/bin/env python3
"""Streaming novelty: the batch rule and the smoothing rule of
research/oos_batch.py applied one case at a time, each case judged against
the cases that arrived before it (a window of recent traffic), never later
ones. The question: how much of the batch rule's gain can a service that
answers one case at a time keep, if it remembers the embeddings of its recent
requests? Offline research, not part of the product.

Test (and validation) rows arrive in a random order (`--orders` seeds). For
each case: its batch novelty is taken against the window's cases with the
same predicted class; its smoothing neighbours are the window's nearest
cases, with the batch-rule logits they got when they arrived (`stored`) or
recomputed against the current window (`fresh`). The cut is the validation
stream's budget quantile, as for the batch rule.

    python3 research/oos_stream.py 1 2 3                 # dev seeds, window of 2,000 cases
    python3 research/oos_stream.py 1 2 3 --window 500
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oos_batch as ob  # noqa: E402
import oos_pseudo as op  # noqa: E402


def stream_scores(r, X, pred, s1_0, wnov, Xf, Yf, order, window, fresh, rng):
    """Per-case smoothed scores (higher = more in scope) of rows X arriving
    in `order`, each judged against the previous `window` arrivals."""
    k, sm = r.k, r.smooth
    by_class = {c: np.where(Yf == c)[0] for c in np.unique(Yf)}
    n = len(X)
    s1 = np.zeros(n)
    score = np.zeros(n)

    def nov(i, win):
        """Batch novelty of row i among the rows `win` (i included)."""
        c = pred[i]
        R = win[(pred[win] == c) & (win != i)]
        m = len(R) + 1
        if m < 2:
            return 0.0
        kk = min(k, m - 1)
        kb = np.sort(X[R] @ X[i])[-kk:].mean()
        T = by_class[c]
        T = rng.choice(T, min(m - 1, len(T)), replace=False)
        kt = np.sort(Xf[T] @ X[i])[-min(kk, len(T)):].mean()
        return kt - kb

    for t, i in enumerate(order):
        past = order[max(0, t - window):t]
        win = np.append(past, i)
        s1[i] = s1_0[i] + wnov * nov(i, win)
        if len(past) == 0:
            nbr = s1[i]
        else:
            sims = X[past] @ X[i]
            nb = past[np.argsort(sims)[-sm:]]
            if fresh:
                nbr = np.mean([s1_0[j] + wnov * nov(j, win) for j in nb])
            else:
                nbr = s1[nb].mean()
        score[i] = r.smoothed(np.array([s1[i]]), np.array([nbr]))[0]
    return score


def run(d, seed, window, orders, fresh, budgets=(0.01, 0.0125, 0.02)):
    s = op.split(d, seed)
    r = ob.Rules(s, seed=seed)
    Xf, Yf, Xv, Xt = s["Xf"], s["Yf"], s["Xv"], s["Xt"]
    pv, fv = r.base.feats(Xv)
    pt, ft = r.base.feats(Xt)
    fv["nov"], ft["nov"] = np.zeros(len(Xv)), np.zeros(len(Xt))
    s1v0, s1t0 = r.s1(fv), r.s1(ft)
    # s1 is linear in the features: the novelty's weight (0 if not selected)
    probe = {c: np.zeros(1) for c in fv}
    probe["nov"] = np.ones(1)
    wnov = r.s1(probe)[0] - r.bb
    # the batch rule's own cut: the validation rows judged as one batch
    s1vb = s1v0 + wnov * ob.nov_dm(Xv, pv, Xf, Yf, r.rng, r.k)
    svb = r.smoothed(s1vb, ob.nbr_mean(Xv, s1vb, r.smooth))
    out = []
    for o in orders:
        rng = np.random.default_rng(1000 + o)
        sv = stream_scores(r, Xv, pv, s1v0, wnov, Xf, Yf, rng.permutation(len(Xv)), window, fresh, rng)
        st = stream_scores(r, Xt, pt, s1t0, wnov, Xf, Yf, rng.permutation(len(Xt)), window, fresh, rng)
        out.append((op.evaluate(s, pv, sv, pt, st, list(budgets)), op.evaluate(s, pv, svb, pt, st, list(budgets))))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("seeds", type=int, nargs="*", default=[1, 2, 3])
    ap.add_argument("--window", type=int, default=2000, help="recent cases a case is judged against")
    ap.add_argument("--orders", type=int, default=2, help="random arrival orders per seed")
    ap.add_argument("--fresh", action="store_true", help="recompute the neighbours' logits against the current window")
    ap.add_argument("--dump", default=op.DEF_DUMP)
    a = ap.parse_args()
    d = op.load(a.dump, op.DEF_SRC)
    for seed in a.seeds:
        for o, (res, resb) in enumerate(run(d, seed, a.window, range(a.orders), a.fresh)):
            print(seed, f"order {o}", f"raw {res['raw']:.4f} auroc {res['auroc']:.3f} "
                  f"rec@2pt(test-tuned) {res['oracle_rec@2pt']:.3f} | stream cut "
                  + " | ".join(f"budget {b}: rec {res[b]['rec']:.3f} drop {res[b]['drop']:.2f}"
                               for b in (0.0125, 0.02))
                  + " | batch cut " + " | ".join(f"budget {b}: rec {resb[b]['rec']:.3f} drop {resb[b]['drop']:.2f}"
                                                for b in (0.01, 0.02)), flush=True)
