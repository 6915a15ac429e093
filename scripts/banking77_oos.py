#!/usr/bin/env python3
"""Make the BANKING77 out-of-scope hold-out used to measure OOS detection.

Ten intents (chosen with a fixed seed) are removed from training and kept in
the test split with empty labels, so they count as out of scope at test time.

    python3 scripts/banking77_oos.py [--seed 7] [--held-out 10] [--out out/banking77_oos]

Writes OUT/train.csv (67 intents) and OUT/test.csv (all 3,080 test rows; the
held-out intents have an empty l1) with columns text,l1. The data is read from
../shared/data/banking77 and never copied into the repository.
"""
import argparse
import csv
import os
import random

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--src", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "banking77"))
ap.add_argument("--out", default="out/banking77_oos")
ap.add_argument("--seed", type=int, default=7)
ap.add_argument("--held-out", type=int, default=10)
a = ap.parse_args()


def read(name):
    with open(os.path.join(a.src, name), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


train, test = read("train.csv"), read("test.csv")
intents = sorted({r["category"] for r in train})
held = set(random.Random(a.seed).sample(intents, a.held_out))
os.makedirs(a.out, exist_ok=True)
with open(os.path.join(a.out, "train.csv"), "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["text", "l1"])
    for r in train:
        if r["category"] not in held:
            w.writerow([r["text"], r["category"]])
with open(os.path.join(a.out, "test.csv"), "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["text", "l1"])
    for r in test:
        w.writerow([r["text"], "" if r["category"] in held else r["category"]])
print("held out:", ", ".join(sorted(held)))
