#!/usr/bin/env python3
"""Make the BANKING77 hold-out of ten intents used to measure out-of-scope
detection and adding new tags from a few examples.

Ten intents (chosen with a fixed seed) are removed from training and kept in
the test split with empty labels, so they count as out of scope at test time.

    python3 scripts/banking77_oos.py [--seed 7] [--held-out 10] [--out out/banking77_oos]
                                     [--add 10] [--add-intents K] [--dev]

Writes OUT/train.csv (67 intents) and OUT/test.csv (all 3,080 test rows; the
held-out intents have an empty l1) with columns text,l1, and
OUT/test_stream.csv, the same rows in a random arrival order (seeded), for
`casetag eval --stream-novelty`, which judges each row against the rows
before it.

With --add N it also writes OUT/add.csv, N training rows of each held-out
intent (drawn with the seed; what `casetag train --from M --add` learns the
new tags from), OUT/retrain.csv (train.csv plus add.csv, for the full
retrain to compare with) and OUT/test_all.csv, every test row with its true
intent and a column `set` (`old` or `new`) to slice `casetag eval` by. With
--add-intents K only K of the held-out intents (the first K by name) get
examples; the others stay out of scope: empty l1 in test_all.csv, set `oos`
(what an added tag does to out-of-scope detection).

With --dev the test rows come from the training file instead of the test
split (a stratified 15% of each old intent, and the held-out intents' rows
not in add.csv), so that methods are chosen without touching the test split.

The data is read from ../shared/data/banking77 and never copied into the
repository.
"""
import argparse
import csv
import os

from intent_tables import fail, hold_out

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--src", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "banking77"))
ap.add_argument("--out", default="out/banking77_oos")
ap.add_argument("--seed", type=int, default=7)
ap.add_argument("--held-out", type=int, default=10)
ap.add_argument("--add", type=int, default=0, metavar="N", help="examples per held-out intent for add.csv")
ap.add_argument("--add-intents", type=int, default=None, metavar="K",
                help="how many held-out intents get --add examples (default: all)")
ap.add_argument("--dev", action="store_true", help="test rows from the training file (development)")
a = ap.parse_args()


def read(name):
    path = os.path.join(a.src, name)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = csv.DictReader(f)
            if not {"text", "category"} <= set(rows.fieldnames or ()):
                fail(f"{path} needs the columns text and category (BANKING77's CSV); it has {rows.fieldnames}")
            return [(r["text"], r["category"]) for r in rows]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        fail(f"cannot read {path}: {e}")


train, test = read("train.csv"), read("test.csv")
held = hold_out(a.out, train, test, a.seed, a.held_out, a.add, a.add_intents, a.dev)
print("held out:", ", ".join(held))
