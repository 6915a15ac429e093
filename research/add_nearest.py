#!/usr/bin/env python3
"""New tags from a few examples: check an added tag's answer against the nearest rows.

Offline study behind `train --from --add --guard-margin` (what casetag runs is
`crates/engine/src/few_shot.rs`). For each development hold-out directory D
(`scripts/banking77_oos.py --seed S --add 10 --dev --out D`) it reads:

  D/TP.csv, D/TC.csv   `casetag tag` of D/test_all.csv by the parent D/M and by
                       its child from `--add D/add.csv --guard-margin off`
  D/M/memory.safetensors
                       the parent's memory (unit embeddings of its fit rows)
  D/emb/train_emb.npy  the parent encoder's embeddings of BANKING77's train.csv
                       (`cargo run --release -p casetag-transformer --example
                       banking77 -- --embed-bundle D/M --dump D/emb`)

Where the child answers an added tag N and the parent answers the old tag S,
d = (mean of the k highest cosines to S's memory rows) - (the same to N's
examples); the parent's answer stands where d > margin. Prints new-intent
accuracy / old-intent drop in points (answers lost) per hold-out and margin.

    python3 research/add_nearest.py out/b77_dev1 out/b77_dev2 out/b77_dev3
"""
import argparse
import csv
import json
import os
import struct

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEF_SRC = os.path.join(HERE, "..", "..", "shared", "data", "banking77", "train.csv")


def safetensors(path):
    """The tensors of a safetensors file as numpy arrays."""
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    head = json.loads(b[8:8 + n])
    kinds = {"F32": np.float32, "U32": np.uint32}
    return {k: np.frombuffer(b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]],
                             dtype=kinds[v["dtype"]]).reshape(v["shape"])
            for k, v in head.items() if k != "__metadata__"}


def rows(path):
    return list(csv.DictReader(open(path, newline="")))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--src", default=DEF_SRC, help="BANKING77's train.csv")
    ap.add_argument("--k", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--margins", type=float, nargs="+", default=[0.1, 0.125, 0.15, 0.175, 0.2])
    a = ap.parse_args()
    train = rows(a.src)
    at = {}
    for i, r in enumerate(train):
        at.setdefault(r["text"], i)
    label = [r["category"] for r in train]
    results = {}
    for d in a.dirs:
        emb = np.load(os.path.join(d, "emb", "train_emb.npy"))
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        mem = safetensors(os.path.join(d, "M", "memory.safetensors"))
        # Each memory row is a fit row's embedding: its label is that row's.
        mem_label = np.array([label[i] for i in (mem["x"] @ emb.T).argmax(1)])
        by_old = {t: mem["x"][mem_label == t] for t in set(mem_label)}
        parent, child, add = (rows(os.path.join(d, f)) for f in ("TP.csv", "TC.csv", "add.csv"))
        new_tags = {r["l1"] for r in add}
        by_new = {t: emb[[at[r["text"]] for r in add if r["l1"] == t]] for t in new_tags}
        x = emb[[at[r["text"]] for r in parent]]
        old = [i for i, r in enumerate(parent) if r["set"] == "old"]
        new = [i for i, r in enumerate(parent) if r["set"] == "new"]
        right = lambda pred, idx: sum(pred[i] == parent[i]["l1"] for i in idx)
        base = right([r["guess_l1"] for r in parent], old)
        for k in a.k:
            top = lambda m, v: np.sort(m @ v)[-k:].mean()
            gap = [top(by_old[p["guess_l1"]], x[i]) - top(by_new[c["guess_l1"]], x[i])
                   if c["guess_l1"] in new_tags and p["guess_l1"] in by_old else -9.0
                   for i, (p, c) in enumerate(zip(parent, child))]
            for m in [None] + a.margins:
                pred = [p["guess_l1"] if m is not None and g > m else c["guess_l1"]
                        for p, c, g in zip(parent, child, gap)]
                lost = base - right(pred, old)
                results.setdefault((k, m), []).append(
                    (right(pred, new) / len(new), 100 * lost / len(old), lost))
    print("k, margin: per hold-out new-intent accuracy / old-intent drop in points (answers lost); "
          "mean; * where every hold-out keeps new >= 0.80 and a drop <= 0.5")
    for (k, m), v in results.items():
        ok = all(n >= 0.8 and dr <= 0.5 for n, dr, _ in v)
        print(f"{k} {'none' if m is None else m:>5}: "
              + " | ".join(f"{n:.4f}/{dr:.2f} ({lost})" for n, dr, lost in v)
              + f"  mean {np.mean([n for n, _, _ in v]):.4f}/{np.mean([dr for _, dr, _ in v]):.3f}"
              + (" *" if ok else ""))


if __name__ == "__main__":
    main()
