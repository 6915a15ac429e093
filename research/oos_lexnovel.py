#!/usr/bin/env python3
"""Lexical novelty as extra features of the leave-classes-out detector.

Offline experiment (not part of the product). A case of an intent the model
never saw often carries words the predicted class's training rows never use
("blocked" for a case answered `change_pin`). These features measure that, per
case, from the training texts of the kept intents only:

  lex_unseen_pred   share of the case's words (IDF-weighted) absent from the
                    predicted class's training rows
  lex_unseen_all    the same against every kept class's rows
  lex_unseen_pred_cn  lex_unseen_pred minus the predicted class's median of the
                    same figure over its own training rows, each left out of its
                    class's vocabulary (so a training row is scored as a new case)

They join `oos_pseudo.py`'s 20 score features in its `meta` detector (same
episodes, same detector); `meta+lex` is the comparison row. Choose on the dev
seeds only:

    python3 research/oos_lexnovel.py --seeds 1 2 3
"""
import csv
import os
import re
import time
from collections import Counter

import numpy as np

import oos_pseudo as op

WORD = re.compile(r"[a-z0-9']+")


def words(text):
    return WORD.findall(text.lower())


def read_texts(src, name):
    with open(os.path.join(src, name), newline="", encoding="utf-8") as f:
        return [words(r["text"]) for r in csv.DictReader(f)]


class LexBase(op.Base):
    """`op.Base` plus per-class word counts of its fit rows."""

    def __init__(self, X, Y, K, T, C=10.0):
        super().__init__(X, Y, K, C=C)
        self.T_words = T
        self.cls = [Counter() for _ in range(K)]
        df = Counter()
        for ws, y in zip(T, Y):
            u = set(ws)
            self.cls[y].update(u)
            df.update(u)
        n = len(T)
        self.idf = {w: np.log((n + 1) / (c + 1)) + 1.0 for w, c in df.items()}
        self.idf_unseen = np.log(n + 1) + 1.0
        self.all = df
        own = np.array([self._unseen(ws, self.cls[y], leave=set(ws)) for ws, y in zip(T, Y)])
        self.q_lex = np.array([np.median(own[Y == k]) for k in range(K)])

    def _w(self, w):
        return self.idf.get(w, self.idf_unseen)

    def _unseen(self, ws, vocab, leave=()):
        if not ws:
            return 0.0
        tot = sum(self._w(w) for w in ws)
        miss = sum(self._w(w) for w in ws if vocab.get(w, 0) - (w in leave) <= 0)
        return miss / tot

    def lex_feats(self, texts, pred):
        up = np.array([self._unseen(ws, self.cls[p]) for ws, p in zip(texts, pred)])
        ua = np.array([self._unseen(ws, self.all) for ws in texts])
        # higher = in scope, like every other feature
        return {"lex_unseen_pred": -up, "lex_unseen_all": -ua,
                "lex_unseen_pred_cn": -(up - self.q_lex[pred])}

    def feats_t(self, x, texts):
        pred, f = self.feats(x)
        f.update(self.lex_feats(texts, pred))
        return pred, f


def add_texts(s, d, ttr):
    """The fit and validation texts (`Tf`, `Tv`) of split `s`, row for row
    with its `Xf` and `Xv` (`ttr`: the training file's texts)."""
    held = set(s["held"])
    cid = {c: i for i, c in enumerate(c for c in sorted(set(d["ytr"])) if c not in held)}
    ytr = np.array([cid.get(c, -1) for c in d["ytr"]])
    is_val = np.arange(len(ytr)) % 10 == 9
    s["Tf"] = [t for t, y, v in zip(ttr, ytr, is_val) if y >= 0 and not v]
    s["Tv"] = [t for t, y, v in zip(ttr, ytr, is_val) if y >= 0 and v]


def episodes(s, n_ep=6, n_hold=10, seed=0, C=10.0, make_base=LexBase):
    """The leave-classes-out rounds of `oos_pseudo.episodes`, with texts:
    `make_base(X, Y, K, texts, C=C)` builds each round's base."""
    rng = np.random.default_rng(seed)
    Xf, Yf, Xv, Yv, K = s["Xf"], s["Yf"], s["Xv"], s["Yv"], s["K"]
    Tf, Tv = s["Tf"], s["Tv"]
    F, kind = [], []
    cols = None
    for _ in range(n_ep):
        hold = rng.choice(K, n_hold, replace=False)
        mf, mv = ~np.isin(Yf, hold), ~np.isin(Yv, hold)
        remap = -np.ones(K, int)
        remap[np.setdiff1d(np.arange(K), hold)] = np.arange(K - n_hold)
        b = make_base(Xf[mf], remap[Yf[mf]], K - n_hold, [t for t, m in zip(Tf, mf) if m], C=C)
        pin, fin = b.feats_t(Xv[mv], [t for t, m in zip(Tv, mv) if m])
        out_t = [t for t, m in zip(Tf, mf) if not m] + [t for t, m in zip(Tv, mv) if not m]
        _, fout = b.feats_t(np.vstack([Xf[~mf], Xv[~mv]]), out_t)
        cols = sorted(fin)
        F += [op.fmat(fin), op.fmat(fout)]
        kind += [np.where(pin == remap[Yv[mv]], 0, 1), np.full(len(fout["msp"]), 2)]
    return np.vstack(F), np.concatenate(kind), cols


def main():
    ap = op.dev_args(__doc__)
    ap.add_argument("--budget", type=float, nargs="+", default=[0.0125, 0.02])
    a = ap.parse_args()
    d = op.load(a.dump, a.src)
    ttr, tte = read_texts(a.src, "train.csv"), read_texts(a.src, "test.csv")
    assert len(ttr) == len(d["etr"]) and len(tte) == len(d["ete"]), "dump rows != csv rows"
    allres = {}
    for seed in a.seeds:
        t0 = time.time()
        s = op.split(d, seed)
        add_texts(s, d, ttr)
        base = LexBase(s["Xf"], s["Yf"], s["K"], s["Tf"])
        pv, fv = base.feats_t(s["Xv"], s["Tv"])
        pt, ft = base.feats_t(s["Xt"], tte)
        F, kind, cols = episodes(s, seed=100 + seed)
        Fv, Ft = op.fmat(fv), op.fmat(ft)
        plain = [c for c in cols if not c.startswith("lex_")]
        res = {"msp": op.evaluate(s, pv, fv["msp"], pt, ft["msp"], a.budget)}
        for name, use in (("meta", plain), ("meta+lex", cols), ("meta+lexcn", plain + ["lex_unseen_pred_cn"]),
                          ("lex_pred", None)):
            if use is None:
                res[name] = op.evaluate(s, pv, fv["lex_unseen_pred"], pt, ft["lex_unseen_pred"], a.budget)
                continue
            ci, w, b = op.fit_detector(F, kind, use, cols)
            sv, st = -(Fv[:, ci] @ w + b), -(Ft[:, ci] @ w + b)
            res[name] = op.evaluate(s, pv, sv, pt, st, a.budget)
        allres[seed] = res
        print(f"\nseed {seed}: held out {s['held']}; {time.time() - t0:.0f}s")
        op.report(res, a.budget)
    if len(a.seeds) > 1:
        op.report_mean(allres, a.seeds, a.budget)


if __name__ == "__main__":
    main()
