#!/usr/bin/env python3
"""Token alignment with the predicted class's nearest rows as extra features
of the leave-classes-out detector.

Offline experiment (not part of the product). The unknown intents the
per-case detector misses sit next to a known sibling and differ from it by a
word or two (`getting_virtual_card` answered `get_disposable_virtual_card`).
`oos_lexsig.py` tested that with exact words and found nothing: in-scope
cases say the same thing in other words. This asks it with the encoder's
contextual token vectors instead of words, as BERTScore does: a case of the
class should cover the tokens of its nearest rows of that class, and those
rows should cover its tokens. For a case answered k, over its `--m` nearest
fit rows of k (pooled cosine):

  al_r     max over the rows of the mean, over the row's tokens, of the best
           cosine to a token of the case (does the case say what the row says)
  al_p     the same the other way (does the row say what the case says)
  al_r_cn, al_p_cn   minus the class's median over its own fit rows, each
           aligned with its `--m` nearest other rows of the class

Token vectors: the frozen encoder's last layer, [CLS] and [SEP] left out,
from the NumPy forward of `scripts/frozen_reference.py` (its mean-pooled
output is checked against the dump's embeddings before use) and cached in
`out/b77_tok`. They join the detector casetag ships (`oos_pseudo.py`'s 20
score features plus the subspace residuals at 128/16 directions and 30 rows
of pooled covariance), same rounds, same logistic detector. Choose on the dev
seeds only:

    python3 research/oos_align.py --seeds 1 2 3
"""
import csv
import os
import sys
import time

import numpy as np

import oos_lexsig as ls
import oos_pseudo as op
import oos_subspace as ss

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "scripts"))
import frozen_reference as fr  # noqa: E402  (the NumPy forward of the encoder)

DEF_ENC = os.path.join(HERE, "..", "models", "encoders", "all-MiniLM-L6-v2")
DEF_TOK = os.path.join(HERE, "..", "out", "b77_tok")


# ----------------------------------------------------------------------------
# token vectors of the frozen encoder
# ----------------------------------------------------------------------------
def encode_tokens(enc_dir, texts):
    """Per text: (unit mean-pooled vector, unit token vectors without
    [CLS]/[SEP]). Texts of one length run together, so nothing is padded."""
    from tokenizers import Tokenizer

    model = fr.NumpyBert(enc_dir)
    tok = Tokenizer.from_file(os.path.join(enc_dir, "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    enc = [np.array(e.ids) for e in tok.encode_batch(texts)]
    pooled = np.zeros((len(texts), model.cfg["hidden_size"]), np.float32)
    toks = [None] * len(texts)
    by_len = {}
    for i, e in enumerate(enc):
        by_len.setdefault(len(e), []).append(i)
    for L, idx in by_len.items():
        for s in range(0, len(idx), 256):
            part = idx[s:s + 256]
            h = model.forward(np.stack([enc[i] for i in part]), np.ones((len(part), L)))
            for j, i in enumerate(part):
                m = h[j].mean(0)
                pooled[i] = m / np.linalg.norm(m)
                t = h[j][1:-1] if L > 2 else h[j]
                toks[i] = (t / np.linalg.norm(t, axis=1, keepdims=True)).astype(np.float32)
    return pooled, toks


def read_raw(src, name):
    with open(os.path.join(src, name), newline="", encoding="utf-8") as f:
        return [r["text"] for r in csv.DictReader(f)]


def token_dump(enc_dir, src, out):
    """Token vectors of train.csv and test.csv, cached in `out`."""
    res = {}
    for name in ("train", "test"):
        path = os.path.join(out, name + ".npz")
        if not os.path.exists(path):
            t0 = time.time()
            pooled, toks = encode_tokens(enc_dir, read_raw(src, name + ".csv"))
            os.makedirs(out, exist_ok=True)
            off = np.cumsum([0] + [len(t) for t in toks])
            np.savez(path, pooled=pooled, tok=np.vstack(toks), off=off)
            print(f"encoded {name}: {len(toks)} texts, {off[-1]} tokens, {time.time() - t0:.0f}s", flush=True)
        z = np.load(path)
        off, tok = z["off"], z["tok"]
        res[name] = (z["pooled"], [tok[off[i]:off[i + 1]] for i in range(len(off) - 1)])
    return res


# ----------------------------------------------------------------------------
# the features
# ----------------------------------------------------------------------------
def align(a, b):
    """(recall, precision) of token sets a (the case) and b (a row): mean
    best cosine of b's tokens in a, and of a's tokens in b."""
    s = a @ b.T
    return s.max(0).mean(), s.max(1).mean()


class AlignBase(ss.SubspaceBase):
    m = 3

    def __init__(self, X, Y, K, toks, C=10.0):
        super().__init__(X, Y, K, C=C)
        self.Xu = X / np.linalg.norm(X, axis=1, keepdims=True)
        self.toks = toks
        self.rows = [np.where(Y == k)[0] for k in range(K)]
        own = np.array([self._al(self.Xu[i], toks[i], y, leave=i) for i, y in enumerate(Y)])
        self.q = np.array([np.median(own[Y == k], axis=0) if (Y == k).any() else np.zeros(2) for k in range(K)])

    def _al(self, xu, t, k, leave=-1):
        r = self.rows[k]
        if leave >= 0:
            r = r[r != leave]
        if len(r) == 0:
            return np.zeros(2)
        near = r[np.argsort(self.Xu[r] @ xu)[-self.m:]]
        return np.array([align(t, self.toks[j]) for j in near]).max(0)

    def feats_t(self, x, toks):
        pred, f = self.feats(x)
        xu = x / np.linalg.norm(x, axis=1, keepdims=True)
        a = np.array([self._al(xu[i], toks[i], p) for i, p in enumerate(pred)])
        f["al_r"], f["al_p"] = a[:, 0], a[:, 1]
        f["al_r_cn"], f["al_p_cn"] = a[:, 0] - self.q[pred, 0], a[:, 1] - self.q[pred, 1]
        return pred, f


SETS = {
    "shipped": [],
    "+al_r": ["al_r", "al_r_cn"],
    "+al_p": ["al_p", "al_p_cn"],
    "+all": ["al_r", "al_r_cn", "al_p", "al_p_cn"],
}


def main():
    ap = op.dev_args(__doc__)
    ap.add_argument("--budget", type=float, nargs="+", default=[0.0125, 0.02])
    ap.add_argument("--m", type=int, default=3, help="nearest rows of the predicted class to align with")
    ap.add_argument("--encoder", default=DEF_ENC)
    ap.add_argument("--tok", default=DEF_TOK, help="cache of the token vectors")
    a = ap.parse_args()
    ss.SubspaceBase.dg, ss.SubspaceBase.dc, ss.SubspaceBase.shrink = 128, 16, 30.0
    AlignBase.m = a.m
    d = op.load(a.dump, a.src)
    tk = token_dump(a.encoder, a.src, a.tok)
    for name, key in (("train", "etr"), ("test", "ete")):
        pooled = tk[name][0]
        e = d[key] / np.linalg.norm(d[key], axis=1, keepdims=True)
        cos = (pooled * e).sum(1)
        assert len(pooled) == len(e) and cos.min() > 0.999, f"{name}: NumPy encoder != dump (min cosine {cos.min()})"
    ls.compare(a, d, tk["train"][1], tk["test"][1], AlignBase, SETS, "al_")


if __name__ == "__main__":
    main()
