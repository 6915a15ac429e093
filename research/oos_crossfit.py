#!/usr/bin/env python3
"""Cross-fitted leave-classes-out rounds for a fine-tuned encoder's
out-of-scope detector. Offline research (not part of the product).

The `meta` detector (crates/engine/src/oos_meta.rs, `oos_pseudo.py`) learns
what an unknown intent looks like from rounds that hide some known intents
and treat their rows as stand-in out of scope. With a frozen encoder the
hidden intents are as unknown to the encoder as a real out-of-scope intent.
A fine-tuned encoder has learned them: their rows sit in regions it carved
for them, away from the kept intents, while a real unknown intent lands on
its kept neighbours. The rounds may then teach the detector an easier task
than the one it meets. This script measures that on BANKING77 hold-outs.

For each seed (10 intents out of scope, `oos_pseudo.split`), the recipe of
`casetag train`'s default (a linear probe, then the top 2 layers and the
head, 3 epochs, lr 1e-4 / 2e-3, 10% warm-up and linear decay, dropout 0.1,
mean pooling, unit embeddings, 64 tokens) fine-tunes an encoder E on the
kept intents' fit rows. The detector's base model and features (the
product's 22: `oos_pseudo`'s 20 plus `resid_g` / `resid_c` of
`oos_subspace.py` at 128 / 16 directions and shrink 30) come from E at run
time. The rule is learned three ways:

  A  rounds on E's embeddings, stand-in out of scope = every row of the
     hidden intents (what the product does)
  B  the same, stand-in out of scope = the hidden intents' validation rows
     only (rows E was not trained on; their intents it was)
  C  cross-fitted: round e fine-tunes its own encoder E_e on the fit rows of
     the intents it keeps, and takes the base model, the in-scope
     validation rows and the hidden intents' rows from E_e: the hidden
     intents are unknown to that encoder, as a real out-of-scope intent is
     to E

A round encoder costs a whole fine-tune, so A, B and C learn from the same
first `--rounds` rounds (3); A6 is A on the product's six.

Decision rule, fixed before the run: C (or B) is worth building only if, on
the development seeds 1-3, its mean AUROC beats A's by at least 0.01 and its
mean test-tuned recall at a 2-point drop by at least 0.03, and it loses no
dev seed by more than 0.005 AUROC. Seed 7 is written to its own file
(`seed7.json`, not printed) and read only after that decision.

Only the top two layers train, so the lower layers' output is computed once
and every fine-tune starts from it (about 3.5 minutes each on 2 CPU cores,
seconds on a GPU):

    python3 research/oos_crossfit.py --model DIR --src ../shared/data/banking77 --out OUT

DIR is a MiniLM folder (float16 weights are fine); `--tiny` is a CPU smoke
test on a few hundred rows.
"""
import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import inspect
import json
import math
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oos_pseudo as op  # noqa: E402
import oos_finetune_sweep as ofs  # noqa: E402
import oos_subspace as osub  # noqa: E402

EPISODES, HOLD, BUDGET = 6, 10, 0.02


def use_base():
    """The product's base model: `oos_pseudo`'s with the residual features
    (128 / 16 directions, shrink 30), for every round `op.round_features` runs."""
    osub.SubspaceBase.dg, osub.SubspaceBase.dc, osub.SubspaceBase.shrink = 128, 16, 30.0
    op.Base = osub.SubspaceBase


def seed_split(Ytr, seed):
    """A hold-out seed's kept intents (as `oos_pseudo.split`): their number K,
    the fit rows (indices into the training texts) and their classes, and the
    leave-classes-out rounds' hidden classes (as `oos_pseudo.episodes`)."""
    intents = sorted(set(Ytr))
    held = set(random.Random(seed).sample(intents, 10))
    cid = {c: i for i, c in enumerate(c for c in intents if c not in held)}
    K = len(cid)
    fit_rows = [i for i, c in enumerate(Ytr) if c in cid and i % 10 != 9]
    fit_y = np.array([cid[Ytr[i]] for i in fit_rows])
    rng = np.random.default_rng(100 + seed)
    holds = [rng.choice(K, min(HOLD, K // 3), replace=False) for _ in range(EPISODES)]
    return K, fit_rows, fit_y, holds


def evaluate_seed(job):
    """Runs in a worker: every variant's rule, scored on E's test rows."""
    seed, Ytr_all, Yte_all, etr, ete, holds, crossfit, n_cross = job
    t0 = time.time()
    d = {"ytr": Ytr_all, "yte": Yte_all, "etr": etr.astype(np.float64), "ete": ete.astype(np.float64)}
    s = op.split(d, seed)
    K = s["K"]
    use_base()
    base = op.Base(s["Xf"], s["Yf"], K)
    pv, fv = base.feats(s["Xv"])
    pt, ft = base.feats(s["Xt"])
    cols = sorted(fv)
    use = [c for c in cols if c != "resid_c_cn"]  # the product's 22
    Fv, Ft = op.fmat(fv), op.fmat(ft)
    FA, kA = [], []
    for hold in holds:
        F, kind = op.round_features(s["Xf"], s["Yf"], s["Xv"], s["Yv"], K, hold)
        FA.append(F)
        kA.append(kind)
    # A and B on the rounds C has encoders for; A6 on all of them (the
    # product's six rounds)
    first = np.concatenate([np.full(len(k), i) for i, k in enumerate(kA)])
    FA, kA = np.vstack(FA), np.concatenate(kA)
    few = first < n_cross
    rules = {
        "A6": (FA, kA),
        "A": (FA[few], kA[few]),
        "B": (FA[few & (kA != 2)], kA[few & (kA != 2)]),
    }
    if crossfit:
        FC, kC = [], []
        for hold, (etr_e,) in zip(holds, crossfit):
            de = dict(d, etr=etr_e.astype(np.float64))
            se = op.split(de, seed)
            F, kind = op.round_features(se["Xf"], se["Yf"], se["Xv"], se["Yv"], K, hold)
            FC.append(F)
            kC.append(kind)
        rules["C"] = (np.vstack(FC), np.concatenate(kC))
    out = {"raw": None}
    for name, (F, kind) in rules.items():
        ci, w, b = op.fit_detector(F, kind, use, cols, 0.1)
        r = op.evaluate(s, pv, -(Fv[:, ci] @ w + b), pt, -(Ft[:, ci] @ w + b), [BUDGET])
        out["raw"] = float(r["raw"])
        out[name] = {
            "auroc": float(r["auroc"]),
            "rec@2pt": float(r["oracle_rec@2pt"]),
            "rec": float(r[BUDGET]["rec"]),
            "drop": float(r[BUDGET]["drop"]),
            "n_out": int((kind >= 2).sum()),
        }
    return seed, out, time.time() - t0


def make_tuner(model_dir, Ttr, Tte, log):
    """The default recipe's fine-tune of the top two layers on `Ttr`, and
    embeddings of both text lists: `finetune(rows, labels, K, seed)` gives
    (model, last loss, steps), `embed(model, states)` unit embeddings of
    `st_tr` or `st_te` (the lower layers' output, computed once)."""
    import torch
    import torch.nn.functional as Fn
    from transformers import AutoModel, AutoTokenizer

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    log(f"device {dev}, {len(Ttr)} train / {len(Tte)} test rows")
    tok = AutoTokenizer.from_pretrained(model_dir)
    enc_tr = tok(Ttr, truncation=True, max_length=64)["input_ids"]
    enc_te = tok(Tte, truncation=True, max_length=64)["input_ids"]
    amp = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")

    def collate(ids_list):
        return ofs.pad_ids(ids_list, dev)

    # Only the top two layers train, so every fine-tune starts from the same
    # input to them: the pretrained lower layers' output, computed once.
    pretrained = AutoModel.from_pretrained(model_dir).float().to(dev).eval()
    n_layers = pretrained.config.num_hidden_layers
    first = n_layers - 2

    def lower_states(enc):
        out = [None] * len(enc)
        order = np.argsort([len(x) for x in enc])
        with torch.no_grad():
            for i in range(0, len(enc), 256):
                idx = order[i : i + 256]
                ids, mask = collate([enc[j] for j in idx])
                hs = pretrained(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[first]
                for r, j in enumerate(idx):
                    out[j] = hs[r, : len(enc[j])].float().cpu()
        return out

    t_states = time.time()
    st_tr, st_te = lower_states(enc_tr), lower_states(enc_te)
    log(f"lower layers' states of {len(st_tr) + len(st_te)} rows: {time.time() - t_states:.1f}s")

    def batch_states(states, idx):
        n = max(len(states[j]) for j in idx)
        h = torch.zeros(len(idx), n, states[idx[0]].shape[1])
        mask = torch.zeros(len(idx), n, dtype=torch.long)
        for r, j in enumerate(idx):
            h[r, : len(states[j])] = states[j]
            mask[r, : len(states[j])] = 1
        return h.to(dev), mask.to(dev)

    def top(model, h, mask):
        # the mask the model itself builds, with the arguments this
        # transformers version takes
        make = model._create_attention_masks
        kw = dict(attention_mask=mask, encoder_attention_mask=None, embedding_output=h,
                  encoder_hidden_states=None, cache=None, past_key_values=None,
                  position_ids=None, cache_position=None)
        try:
            am = make(**{k: v for k, v in kw.items() if k in inspect.signature(make).parameters})
            am = am[0] if isinstance(am, tuple) else am
        except TypeError:  # an additive mask (the check in make_tuner compares)
            am = (1.0 - mask[:, None, None, :].to(h.dtype)) * -1e4
        for layer in model.encoder.layer[first:]:
            h = layer(h, attention_mask=am)
            h = h[0] if isinstance(h, tuple) else h
        m = mask.unsqueeze(-1).to(h.dtype)
        return Fn.normalize(((h * m).sum(1) / m.sum(1).clamp(min=1)).float(), dim=-1)

    def embed(model, states):
        model.eval()
        order = np.argsort([len(x) for x in states])
        E = np.zeros((len(states), model.config.hidden_size), np.float32)
        with torch.no_grad():
            for i in range(0, len(states), 512):
                idx = order[i : i + 512]
                E[idx] = top(model, *batch_states(states, idx)).cpu().numpy()
        return E

    # The cached path gives what the whole model gives.
    with torch.no_grad():
        ids, mask = collate(enc_tr[:8])
        h = pretrained(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        full = Fn.normalize((h * m).sum(1) / m.sum(1), dim=-1).cpu().numpy()
    cached = embed(pretrained, st_tr[:8])
    agree = float((full * cached).sum(1).min())
    log(f"cached path against the whole model: min cosine {agree:.6f}")
    if agree < 0.999:
        raise SystemExit("the cached lower layers do not reproduce the whole model")
    frozen_tr = embed(pretrained, st_tr)

    def finetune(rows, labels, K, seed):
        """The default recipe on `rows` (indices into the training texts)."""
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        model = AutoModel.from_pretrained(model_dir).float().to(dev)
        for n, p in model.named_parameters():
            p.requires_grad = any(f"encoder.layer.{i}." in n for i in range(first, n_layers))
        # linear probe on the frozen embeddings (full batch, Adam)
        y = torch.tensor(labels, device=dev)
        X = torch.from_numpy(frozen_tr[rows]).to(dev)
        head = torch.nn.Linear(X.shape[1], K).to(dev)
        popt = torch.optim.Adam(head.parameters(), lr=1e-2)
        for _ in range(300):
            loss = Fn.cross_entropy(head(Fn.dropout(X, 0.1)), y)
            popt.zero_grad()
            loss.backward()
            popt.step()
        decay = [p for n, p in model.named_parameters() if p.requires_grad and not ("bias" in n or "LayerNorm" in n)]
        nodecay = [p for n, p in model.named_parameters() if p.requires_grad and ("bias" in n or "LayerNorm" in n)]
        groups = [
            {"params": decay, "lr": 1e-4, "weight_decay": 0.01},
            {"params": nodecay, "lr": 1e-4, "weight_decay": 0.0},
            {"params": [head.weight], "lr": 2e-3, "weight_decay": 0.01},
            {"params": [head.bias], "lr": 2e-3, "weight_decay": 0.0},
        ]
        for g in groups:
            g["base_lr"] = g["lr"]
        opt = torch.optim.AdamW(groups)
        n = len(rows)
        plan = []
        for _ in range(3):
            p = rng.permutation(n)
            plan += [p[i : i + 32] for i in range(0, n, 32)]
        warm = math.ceil(0.1 * len(plan))
        model.train()
        for step, b in enumerate(plan):
            f = (step + 1) / warm if step < warm else max(0.0, (len(plan) - step) / max(1, len(plan) - warm))
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * f
            with torch.autocast(**amp):
                z = top(model, *batch_states(st_tr, [rows[i] for i in b]))
            loss = Fn.cross_entropy(head(Fn.dropout(z, 0.1, training=True)), y[torch.as_tensor(b, device=dev)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return model, float(loss.item()), len(plan)

    return SimpleNamespace(finetune=finetune, embed=embed, st_tr=st_tr, st_te=st_te)


def open_log(path):
    """A log that prints and appends to `path`, each line stamped with the
    seconds since it was opened; `quiet` lines go to the file only."""
    t_start = time.time()
    f = open(path, "a")

    def log(msg, quiet=False):
        line = f"[{time.time() - t_start:6.1f}s] {msg}"
        if not quiet:
            print(line, flush=True)
        f.write(line + "\n")
        f.flush()

    return log


def read_banking77(src, tiny):
    """BANKING77's train and test texts and intents (`--tiny`: a few hundred
    rows for a smoke test)."""
    Ttr, Ytr = ofs.read(src, "train.csv")
    Tte, Yte = ofs.read(src, "test.csv")
    if tiny:
        return ofs.tiny_subset(Ttr, Ytr, Tte, Yte, 40, 8, 8)
    return Ttr, Ytr, Tte, Yte


def study_args(doc):
    """The arguments every fine-tuning study takes: the encoder, BANKING77,
    the output folder and the hold-out seeds."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--src", default=op.DEF_SRC)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 7])
    return ap


def main():
    ap = study_args(__doc__)
    ap.add_argument("--no-crossfit", action="store_true")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds with their own encoder (C), and the rounds A and B learn from")
    ap.add_argument("--deadline", type=float, default=float("inf"),
                    help="seconds; seeds not started by then are skipped (none by default)")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--tiny", action="store_true")
    a = ap.parse_args()
    t_start = time.time()
    os.makedirs(a.out, exist_ok=True)
    log = open_log(os.path.join(a.out, "crossfit.log"))
    Ttr, Ytr, Tte, Yte = read_banking77(a.src, a.tiny)
    global EPISODES
    if a.tiny:
        EPISODES = 2
        a.rounds = 2
    pool = ProcessPoolExecutor(max_workers=a.workers)  # before torch touches CUDA

    t = make_tuner(a.model, Ttr, Tte, log)
    finetune, embed, st_tr, st_te = t.finetune, t.embed, t.st_tr, t.st_te

    futures = []
    results = {}
    for seed in a.seeds:
        if time.time() - t_start > a.deadline:
            log(f"deadline: seed {seed} skipped")
            continue
        t0 = time.time()
        K, fit_rows, fit_y, holds = seed_split(Ytr, seed)
        model, last, steps = finetune(fit_rows, fit_y, K, seed)
        etr, ete = embed(model, st_tr), embed(model, st_te)
        del model
        log(f"seed {seed}: E fine-tuned, {steps} steps, last loss {last:.3f}, {time.time() - t0:.1f}s",
            quiet=seed == 7)
        crossfit = []
        if not a.no_crossfit:
            for e, hold in enumerate(holds[: a.rounds]):
                keep = [j for j, c in enumerate(fit_y) if c not in set(hold.tolist())]
                remap = -np.ones(K, int)
                remap[np.setdiff1d(np.arange(K), hold)] = np.arange(K - len(hold))
                m_e, _, _ = finetune([fit_rows[j] for j in keep], remap[fit_y[keep]], K - len(hold), 1000 * seed + e)
                crossfit.append((embed(m_e, st_tr),))
                del m_e
            log(f"seed {seed}: {len(crossfit)} round encoders, {time.time() - t0:.1f}s", quiet=seed == 7)
        futures.append(pool.submit(evaluate_seed, (seed, Ytr, Yte, etr, ete, holds, crossfit, a.rounds)))
    for fu in futures:
        seed, out, secs = fu.result()
        results[seed] = out
        dest = "seed7.json" if seed == 7 else "dev.json"
        prev = {}
        if os.path.exists(os.path.join(a.out, dest)):
            prev = json.load(open(os.path.join(a.out, dest)))
        prev[str(seed)] = out
        json.dump(prev, open(os.path.join(a.out, dest), "w"), indent=1)
        line = f"seed {seed} ({secs:.0f}s): raw {out['raw']:.4f} | " + " | ".join(
            f"{v}: auroc {r['auroc']:.3f} rec@2 {r['rec@2pt']:.3f} rec {r['rec']:.3f} drop {r['drop']:.2f} (n_out {r['n_out']})"
            for v, r in out.items() if v != "raw")
        log(line, quiet=seed == 7)
    dev = [s for s in results if s != 7]
    if dev:
        for v in ("A6", "A", "B", "C"):
            if all(v in results[s] for s in dev):
                m = np.mean([[results[s][v]["auroc"], results[s][v]["rec@2pt"]] for s in dev], 0)
                log(f"dev mean {v}: auroc {m[0]:.4f} rec@2 {m[1]:.4f}")
    log("done")


if __name__ == "__main__":
    main()
