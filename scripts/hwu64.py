#!/usr/bin/env python3
"""Turn HWU64 (Liu et al., 2019: 64 intents of a home assistant in 18
scenarios) into casetag's tables, to check the default recipe on a second
public intent set that no method or setting was chosen on, and on a
two-level taxonomy.

    python3 scripts/hwu64.py --src PATH/KFold_1 [--out out/hwu64]

PATH/KFold_1 is the folder `CrossValidation/autoGeneFromRealAnno/
autoGene_2018_03_22-13_01_25_169/CrossValidation/KFold_1` of the public
repository github.com/xliuhw/NLU-Evaluation-Data (CC BY 4.0), the split that
DialoGLUE and most published HWU64 results use; obtain it yourself, this
script reads it and never copies it into the repository. It holds one CSV per
intent (`;`-separated, columns scenario, intent and answer_from_anno, the
text) under trainset/ and testset/csv/.

Writes, with columns text,l1,l2 (l1 the scenario, l2 the intent named
SCENARIO_INTENT as in the published results, so L2 accuracy is the 64-way
intent accuracy):
  OUT/train.csv   the training queries
  OUT/test.csv    the test queries

With --held-out K, K of the 64 intents (drawn with --seed) are held out of
training as scripts/banking77_oos.py does for BANKING77, in one level (l1 the
intent): train.csv, test.csv and test_stream.csv (the held-out intents' test
queries with an empty l1, the out-of-scope cases), and with --add N also
add.csv, retrain.csv and test_all.csv (see scripts/intent_tables.py).

Rows with an empty text are left out and counted.
"""
import argparse
import csv
import glob
import os

from intent_tables import fail, hold_out, hold_out_args, write


def read_split(folder):
    """(text, scenario, scenario_intent) rows of every CSV in FOLDER, and the
    count of rows without text."""
    files = sorted(glob.glob(os.path.join(folder, "*.csv")))
    if not files:
        fail(f"{folder}: no CSV files; is --src the KFold_1 folder?")
    rows, empty = [], 0
    for path in files:
        with open(path, newline="", encoding="utf-8") as f:
            r = csv.DictReader(f, delimiter=";")
            missing = {"scenario", "intent", "answer_from_anno"} - set(r.fieldnames or [])
            if missing:
                fail(f"{path}: no column(s) {', '.join(sorted(missing))}")
            for line, row in enumerate(r, start=2):
                text = " ".join((row["answer_from_anno"] or "").split())
                scenario, intent = (row["scenario"] or "").strip(), (row["intent"] or "").strip()
                if not scenario or not intent:
                    fail(f"{path}: line {line}: empty scenario or intent")
                if not text:
                    empty += 1
                    continue
                rows.append((text, scenario, f"{scenario}_{intent}"))
    return rows, empty


ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--src", required=True, help="the KFold_1 folder of NLU-Evaluation-Data")
ap.add_argument("--out", default="out/hwu64")
hold_out_args(ap)
a = ap.parse_args()
if a.add and not a.held_out:
    fail("--add needs --held-out: it is about the held-out intents")

train, empty_train = read_split(os.path.join(a.src, "trainset"))
test, empty_test = read_split(os.path.join(a.src, "testset", "csv"))
unseen = sorted({r[2] for r in test} - {r[2] for r in train})
if unseen:
    fail(f"{a.src}: test intent(s) absent from training: {', '.join(unseen)}")
if a.held_out:
    flat = lambda rows: [(t, intent) for t, _, intent in rows]
    held = hold_out(a.out, flat(train), flat(test), a.seed, a.held_out, a.add)
    print(f"{a.out}: held out {len(held)} intents: {', '.join(held)}")
    raise SystemExit(0)
os.makedirs(a.out, exist_ok=True)
header = ("text", "l1", "l2")
write(a.out, "train.csv", train, header)
write(a.out, "test.csv", test, header)
print(
    f"{a.out}: train {len(train)}, test {len(test)}; {len({r[1] for r in train})} scenarios, "
    f"{len({r[2] for r in train})} intents; {empty_train + empty_test} rows without text left out"
)
