#!/usr/bin/env python3
"""Ensembles of fine-tuned top layers for the out-of-scope detector, judged
one case at a time. Offline research (not part of the product).

casetag's default fine-tunes the top two of MiniLM's six layers; the lower
four stay frozen. Several fine-tunes of the top two layers from different
seeds share those lower layers, so an ensemble of M members costs 4 + 2M
layers per case instead of 6 (M = 3: 1.67 times the encoder's work). Deep
ensembles are a standard way to sharpen uncertainty: members agree on what
they were trained on and drift apart elsewhere. This script measures whether
that helps the per-case detector on the BANKING77 hold-outs.

For each seed (10 intents out of scope, `oos_pseudo.split`), M members are
fine-tuned with the recipe of `oos_crossfit.py` (member 0 with the seed
itself, so it is that script's encoder E); each gets the product's detector
(the 22 features of `oos_crossfit.evaluate_seed`, six leave-classes-out
rounds). Variants, each with M = 2 (members 0 and 1) and M = 3:

  one      member 0 alone (the product; `oos_crossfit.py`'s A6)
  avgM     top-1 from the members' mean probabilities, in-scope score the
           mean of the members' own detector scores
  featM    top-1 of member 0; one detector on the members' mean features
           plus the share of members whose top-1 agrees with member 0's,
           learned from the same rounds

Members differ by seed (head initialisation, batch order, dropout); with
`--bag F` every member after the first also fine-tunes on its own random
share F of the fit rows, for more diversity. The log gives the members'
diversity: how their test scores correlate and how often their top-1 differs.

Decision rule, fixed before the run: an ensemble is worth building only if,
on the development seeds 1-3, its mean AUROC beats `one` by at least 0.01 and
its mean test-tuned recall at a 2-point drop by at least 0.03, and it loses no
dev seed by more than 0.005 AUROC (the same rule for `--bag 0.8`, run
second, after the first run gained nothing). Seed 7 is written to its own file
(`seed7.json`, not printed) and read only after that decision.

    python3 research/oos_ensemble.py --model DIR --src ../shared/data/banking77 --out OUT

DIR is a MiniLM folder (float16 weights are fine). A fine-tune takes seconds
on a GPU and about 3.5 minutes on 2 CPU cores; `--tiny` is a CPU smoke test.
"""
import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oos_crossfit as oc  # noqa: E402
import oos_pseudo as op  # noqa: E402

BUDGET = oc.BUDGET


def member_eval(job):
    """Runs in a worker: one member's base model, rounds and detector."""
    seed, Ytr, Yte, etr, ete, holds = job
    t0 = time.time()
    d = {"ytr": Ytr, "yte": Yte, "etr": etr.astype(np.float64), "ete": ete.astype(np.float64)}
    s = op.split(d, seed)
    K = s["K"]
    oc.use_base()
    base = op.Base(s["Xf"], s["Yf"], K)
    pv, fv = base.feats(s["Xv"])
    pt, ft = base.feats(s["Xt"])
    cols = sorted(fv)
    use = [c for c in cols if c != "resid_c_cn"]  # the product's 22
    F, kind, rpred = [], [], []
    for hold in holds:
        f, k, p = op.round_features(s["Xf"], s["Yf"], s["Xv"], s["Yv"], K, hold, with_pred=True)
        F.append(f)
        kind.append(k)
        rpred.append(p)
    F, kind, rpred = np.vstack(F), np.concatenate(kind), np.concatenate(rpred)
    ci, w, b = op.fit_detector(F, kind, use, cols, 0.1)
    Fv, Ft = op.fmat(fv)[:, ci], op.fmat(ft)[:, ci]
    return {
        "pv": pv, "pt": pt,
        "Pv": op.softmax(op.logits(base.clf, s["Xv"])), "Pt": op.softmax(op.logits(base.clf, s["Xt"])),
        "Fv": Fv, "Ft": Ft, "F": F[:, ci], "kind": kind, "rpred": rpred,
        "sv": -(Fv @ w + b), "st": -(Ft @ w + b), "secs": time.time() - t0,
    }


def combine(seed, Ytr, Yte, members):
    """Every variant's test figures from the members' detectors."""
    d = {"ytr": Ytr, "yte": Yte, "etr": np.zeros((len(Ytr), 1)), "ete": np.zeros((len(Yte), 1))}
    s = op.split(d, seed)

    def fig(pv, sv, pt, st):
        r = op.evaluate(s, pv, sv, pt, st, [BUDGET])
        return {"raw": float(r["raw"]), "auroc": float(r["auroc"]), "rec@2pt": float(r["oracle_rec@2pt"]),
                "rec": float(r[BUDGET]["rec"]), "drop": float(r[BUDGET]["drop"])}

    m0 = members[0]
    out = {"one": fig(m0["pv"], m0["sv"], m0["pt"], m0["st"])}
    for k in range(2, len(members) + 1):
        ms = members[:k]
        out[f"avg{k}"] = fig(
            np.mean([m["Pv"] for m in ms], 0).argmax(1), np.mean([m["sv"] for m in ms], 0),
            np.mean([m["Pt"] for m in ms], 0).argmax(1), np.mean([m["st"] for m in ms], 0))

        def feats(key, pred):
            agree = np.mean([m[pred] == m0[pred] for m in ms], 0)
            return np.column_stack([np.mean([m[key] for m in ms], 0), agree])

        F, Fv, Ft = feats("F", "rpred"), feats("Fv", "pv"), feats("Ft", "pt")
        names = list(range(F.shape[1]))
        ci, w, b = op.fit_detector(F, m0["kind"], names, names, 0.1)
        out[f"feat{k}"] = fig(m0["pv"], -(Fv[:, ci] @ w + b), m0["pt"], -(Ft[:, ci] @ w + b))
    return out


def diversity(members):
    """Mean over member pairs of the correlation of their test scores, and of
    the share of test cases where their top-1 differs."""
    pairs = [(a, b) for i, a in enumerate(members) for b in members[i + 1:]]
    return (float(np.mean([np.corrcoef(a["st"], b["st"])[0, 1] for a, b in pairs])),
            float(np.mean([(a["pt"] != b["pt"]).mean() for a, b in pairs])))


def main():
    ap = oc.study_args(__doc__)
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--bag", type=float, default=1.0,
                    help="members after the first fine-tune on this share of the fit rows, "
                         "each its own random draw (1: all rows, members differ by seed only)")
    ap.add_argument("--tiny", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    log = oc.open_log(os.path.join(a.out, "ensemble.log"))
    Ttr, Ytr, Tte, Yte = oc.read_banking77(a.src, a.tiny)
    if a.tiny:
        oc.EPISODES = 2
    pool = ProcessPoolExecutor(max_workers=a.workers)
    list(pool.map(abs, range(a.workers)))  # the workers start before torch touches CUDA

    t = oc.make_tuner(a.model, Ttr, Tte, log)
    jobs = {}
    for seed in a.seeds:
        K, fit_rows, fit_y, holds = oc.seed_split(Ytr, seed)
        for m in range(a.members):
            t0 = time.time()
            mseed = seed if m == 0 else 7919 * seed + m
            rows, ys = fit_rows, fit_y
            if m > 0 and a.bag < 1:
                pick = np.sort(np.random.default_rng(mseed).choice(
                    len(fit_rows), int(a.bag * len(fit_rows)), replace=False))
                rows, ys = [fit_rows[i] for i in pick], fit_y[pick]
            model, last, steps = t.finetune(rows, ys, K, mseed)
            etr, ete = t.embed(model, t.st_tr), t.embed(model, t.st_te)
            del model
            log(f"seed {seed} member {m}: {steps} steps, last loss {last:.3f}, {time.time() - t0:.1f}s",
                quiet=seed == 7)
            jobs[(seed, m)] = pool.submit(member_eval, (seed, Ytr, Yte, etr, ete, holds))
    results = {}
    for seed in a.seeds:
        members = [jobs[(seed, m)].result() for m in range(a.members)]
        out = combine(seed, Ytr, Yte, members)
        corr, differ = diversity(members)
        log(f"seed {seed}: members' test scores correlate at {corr:.4f}, top-1 differs on {differ:.4f}",
            quiet=seed == 7)
        results[seed] = out
        dest = os.path.join(a.out, "seed7.json" if seed == 7 else "dev.json")
        prev = json.load(open(dest)) if os.path.exists(dest) else {}
        prev[str(seed)] = out
        json.dump(prev, open(dest, "w"), indent=1)
        log(f"seed {seed} (detectors {max(m['secs'] for m in members):.0f}s): " + " | ".join(
            f"{v}: raw {r['raw']:.4f} auroc {r['auroc']:.3f} rec@2 {r['rec@2pt']:.3f} "
            f"rec {r['rec']:.3f} drop {r['drop']:.2f}" for v, r in out.items()), quiet=seed == 7)
    dev = [s for s in results if s != 7]
    if dev:
        ref = results[dev[0]]
        for v in ref:
            m = np.mean([[results[s][v]["auroc"], results[s][v]["rec@2pt"]] for s in dev], 0)
            worst = min(results[s][v]["auroc"] - results[s]["one"]["auroc"] for s in dev)
            log(f"dev mean {v}: auroc {m[0]:.4f} rec@2 {m[1]:.4f} (worst seed's auroc against one {worst:+.4f})")
    log("done")


if __name__ == "__main__":
    main()
