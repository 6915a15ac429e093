#!/usr/bin/env python3
"""Lexical features for out-of-scope detection, BANKING77 hold-out (offline
experiment, not part of the product).

Extends research/oos_pseudo.py with a TF-IDF (word 1-2 + char_wb 2-5) logistic
model fitted on the same fit rows of the kept intents, and adds to the
detector's features its top probability, its probability of the embedding
model's predicted intent, and whether the two models agree ("meta_lex",
"lex4"); "joint" is MSP x the lexical probability of the predicted intent.
The leave-classes-out episodes refit both models. Same protocol as
oos_pseudo.py: dev seeds 1-3, official seed 7.

    python3 research/oos_lexical.py DUMP SEED [SEED ...]
    # DUMP: embeddings from `cargo run --release -p casetag-transformer
    #   --example banking77 -- --embed-bundle BUNDLE --dump DUMP`
"""
import sys, os, csv, random, time
import numpy as np
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oos_pseudo as op
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from scipy.sparse import hstack

src = op.DEF_SRC
def texts(name):
    with open(os.path.join(src, name), newline='', encoding='utf-8') as f:
        return np.array([r['text'] for r in csv.DictReader(f)], dtype=object)
Ttr, Tte = texts('train.csv'), texts('test.csv')

class Lex:
    def __init__(self, T, Y, K):
        self.w = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1)
        self.c = TfidfVectorizer(sublinear_tf=True, analyzer='char_wb', ngram_range=(2, 5), min_df=2)
        X = hstack([self.w.fit_transform(T), self.c.fit_transform(T)]).tocsr()
        self.clf = LogisticRegression(C=10, max_iter=1000).fit(X, Y)
    def proba(self, T):
        X = hstack([self.w.transform(T), self.c.transform(T)]).tocsr()
        return self.clf.predict_proba(X)

def add_lex(f, pred, P):
    f['lex_msp'] = P.max(1)
    f['lex_p_pred'] = P[np.arange(len(pred)), pred]
    f['lex_agree'] = (P.argmax(1) == pred).astype(float)
    f['joint'] = f['msp'] * f['lex_p_pred']
    return f

def run(d, seed, budgets):
    s = op.split(d, seed)
    intents = sorted(set(d['ytr']))
    held = set(random.Random(seed).sample(intents, 10))
    known = [c for c in intents if c not in held]
    cid = {c: i for i, c in enumerate(known)}
    ytr = np.array([cid.get(c, -1) for c in d['ytr']])
    is_val = np.arange(len(ytr)) % 10 == 9
    fit = (ytr >= 0) & ~is_val; val = (ytr >= 0) & is_val
    Tf, Tv = Ttr[fit], Ttr[val]
    base = op.Base(s['Xf'], s['Yf'], s['K'])
    lex = Lex(Tf, s['Yf'], s['K'])
    pv, fv = base.feats(s['Xv']); pt, ft = base.feats(s['Xt'])
    fv = add_lex(fv, pv, lex.proba(Tv)); ft = add_lex(ft, pt, lex.proba(Tte))
    cols = sorted(fv)
    # episodes
    rng = np.random.default_rng(100 + seed)
    Yf, Yv, K = s['Yf'], s['Yv'], s['K']
    F, kind = [], []
    for e in range(6):
        hold = rng.choice(K, 10, replace=False)
        mf, mv = ~np.isin(Yf, hold), ~np.isin(Yv, hold)
        remap = -np.ones(K, int); remap[np.setdiff1d(np.arange(K), hold)] = np.arange(K - 10)
        b = op.Base(s['Xf'][mf], remap[Yf[mf]], K - 10)
        lx = Lex(Tf[mf], remap[Yf[mf]], K - 10)
        pin, fin = b.feats(s['Xv'][mv]); fin = add_lex(fin, pin, lx.proba(Tv[mv]))
        xo = np.vstack([s['Xf'][~mf], s['Xv'][~mv]]); to = np.concatenate([Tf[~mf], Tv[~mv]])
        po, fout = b.feats(xo); fout = add_lex(fout, po, lx.proba(to))
        F += [op.fmat(fin), op.fmat(fout)]
        kind += [np.where(pin == remap[Yv[mv]], 0, 1), np.full(len(po), 2)]
    F, kind = np.vstack(F), np.concatenate(kind)
    Fv, Ft = op.fmat(fv), op.fmat(ft)
    res = {'msp': op.evaluate(s, pv, fv['msp'], pt, ft['msp'], budgets),
           'joint': op.evaluate(s, pv, fv['joint'], pt, ft['joint'], budgets)}
    base_cols = [c for c in cols if not (c.startswith('lex') or c == 'joint')]
    for name, use in (('meta', base_cols), ('meta_lex', cols), ('lex4', ['msp', 'lex_p_pred', 'lex_agree', 'knn1_pred_cn'])):
        ci, w, b0 = op.fit_detector(F, kind, use, cols)
        res[name] = op.evaluate(s, pv, -(Fv[:, ci] @ w + b0), pt, -(Ft[:, ci] @ w + b0), budgets)
    print(f'\nseed {seed} raw {res["msp"]["raw"]:.4f}')
    op.report(res, budgets)
    return res

if len(sys.argv) < 3:
    sys.exit(__doc__)
d = op.load(sys.argv[1], src)
seeds = [int(x) for x in sys.argv[2:]]
for sd in seeds:
    t = time.time(); run(d, sd, [0.0125, 0.02]); print(f'{time.time()-t:.0f}s')
