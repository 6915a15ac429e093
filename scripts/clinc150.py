#!/usr/bin/env python3
"""Turn CLINC150 (Larson et al., 2019: 150 intents and out-of-scope queries)
into casetag's tables, to check the default recipe on a public intent set that
no method or setting was chosen on.

    python3 scripts/clinc150.py --src PATH/data_full.json [--out out/clinc150] [--seed 7]

PATH/data_full.json is the file `data/data_full.json` of the public
repository github.com/clinc/oos-eval (CC BY 3.0); obtain it yourself, this
script reads it and never copies it into the repository.

Writes, with columns text,l1:
  OUT/train.csv        the 15,000 training queries (150 intents)
  OUT/val.csv          the 3,000 validation queries (for `train --val`)
  OUT/test.csv         the 4,500 in-scope test queries and the 1,000
                       out-of-scope ones, the latter with an empty l1
  OUT/test_stream.csv  the same rows in a random arrival order (seeded), for
                       `casetag eval --stream-novelty`

The out-of-scope training and validation queries are not written: casetag's
detector is fitted without out-of-scope rows.

With --held-out K, K of the 150 intents (drawn with --seed) are also held out
of train.csv and val.csv, as scripts/banking77_oos.py does for BANKING77:
their test queries join the out-of-scope ones with an empty l1. With --add N
as well, OUT/add.csv holds N training queries of each held-out intent (for
`casetag train --from M --add`), OUT/retrain.csv is train.csv plus add.csv,
and OUT/test_all.csv has every test query with its true intent and a column
`set`: `old`, `new` (a held-out intent) or `oos` (CLINC150's out-of-scope
queries, empty l1). With --without-oos the out-of-scope queries are left out
of the test tables, so that the held-out intents are the only out-of-scope
cases, as in scripts/banking77_oos.py.
"""
import argparse
import json
import os

from intent_tables import fail, hold_out, hold_out_args, write, write_test


ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--src", required=True, help="CLINC150's data_full.json")
ap.add_argument("--out", default="out/clinc150")
hold_out_args(ap)
ap.add_argument("--without-oos", action="store_true",
                help="with --held-out: leave the out-of-scope queries out of the test tables")
a = ap.parse_args()
if (a.add or a.without_oos) and not a.held_out:
    fail("--add and --without-oos need --held-out: they are about the held-out intents")

try:
    with open(a.src, encoding="utf-8") as f:
        data = json.load(f)
except (OSError, ValueError) as e:
    fail(f"cannot read {a.src}: {e}")
need = ("train", "val", "test", "oos_test")
missing = [k for k in need if k not in data]
if missing:
    fail(f"{a.src} lacks the split(s) {', '.join(missing)}; is it data_full.json?")
for k in need:
    for i, row in enumerate(data[k]):
        if not (isinstance(row, list) and len(row) == 2 and all(isinstance(x, str) for x in row)):
            fail(f"{a.src}: {k}[{i}] is not a [text, intent] pair: {str(row)[:80]}")

train = [(t, c) for t, c in data["train"]]
val = [(t, c) for t, c in data["val"]]
in_scope = [(t, c) for t, c in data["test"]]
oos = [t for t, _ in data["oos_test"]]
if a.held_out:
    held = hold_out(a.out, train, in_scope, a.seed, a.held_out, a.add, oos=[] if a.without_oos else oos, val=val)
    print(f"{a.out}: held out {len(held)} intents: {', '.join(held)}")
else:
    os.makedirs(a.out, exist_ok=True)
    write(a.out, "train.csv", train)
    write(a.out, "val.csv", val)
    write_test(a.out, in_scope + [(t, "") for t in oos], a.seed)
    print(
        f"{a.out}: train {len(train)} ({len({c for _, c in train})} intents), val {len(val)}, "
        f"test {len(in_scope)} in scope + {len(oos)} out of scope"
    )
