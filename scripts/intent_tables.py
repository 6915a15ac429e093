"""Writing casetag's tables from public intent sets: one piece of code for
scripts/banking77_oos.py, scripts/clinc150.py and scripts/hwu64.py
(imported, not run)."""
import csv
import os
import random
import sys


def fail(msg):
    """One line on stderr naming the script, and exit 2 (bad input), as the CLI does."""
    print(f"{os.path.basename(sys.argv[0])}: {msg}", file=sys.stderr)
    sys.exit(2)


def hold_out_args(ap):
    """The options of a script whose hold-out is optional (scripts/clinc150.py,
    scripts/hwu64.py): --seed, --held-out K and --add N."""
    ap.add_argument("--seed", type=int, default=7,
                    help="the held-out intents, and the arrival order of test_stream.csv")
    ap.add_argument("--held-out", type=int, default=0, metavar="K", help="intents held out of training (default: none)")
    ap.add_argument("--add", type=int, default=0, metavar="N", help="with --held-out: examples per held-out intent for add.csv")


def write(out, name, rows, header=("text", "l1")):
    """OUT/NAME as CSV with HEADER, then ROWS."""
    with open(os.path.join(out, name), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_test(out, rows, seed):
    """OUT/test.csv with ROWS as given, and OUT/test_stream.csv with the same
    rows in a random arrival order drawn from SEED, for `casetag eval
    --stream-novelty` (a split grouped by intent is an order no service sees)."""
    write(out, "test.csv", rows)
    arrival = rows[:]
    random.Random(seed).shuffle(arrival)
    write(out, "test_stream.csv", arrival)


def hold_out(out, train, test, seed, held_out, add=0, add_intents=None, dev=False, oos=(), val=None):
    """Hold HELD_OUT intents of TRAIN ((text, intent) rows; drawn with SEED)
    out of training and write OUT's tables; returns the held intents, sorted.

    OUT/train.csv: the other intents' rows. OUT/test.csv and test_stream.csv:
    TEST, the held intents with an empty l1, then OOS (texts out of scope
    whatever is held out, such as CLINC150's out-of-scope queries), empty l1.
    VAL, if given, goes to OUT/val.csv without the held intents.

    With ADD, OUT/add.csv holds ADD training rows of each held intent (of the
    first ADD_INTENTS by name, if given), OUT/retrain.csv is train.csv plus
    add.csv, and OUT/test_all.csv has every test row with its true intent and
    a column `set`: `old`, `new` (an added intent) or `oos` (empty l1: held
    but not added, or in OOS).

    With DEV the test rows come from TRAIN instead (a stratified 15% of each
    kept intent, and the held intents' rows not in add.csv)."""
    intents = sorted({c for _, c in train})
    if not 0 < held_out < len(intents):
        fail(f"cannot hold out {held_out} of {len(intents)} intents: it takes at least 1 and leaves at least 1")
    held = set(random.Random(seed).sample(intents, held_out))
    rng = random.Random(seed + 1000)
    added = set(sorted(held)[:add_intents]) if add_intents is not None else held
    add_rows = []
    for c in sorted(added):
        rows = [r for r in train if r[1] == c]
        add_rows.extend(rng.sample(rows, min(add, len(rows))))
    old = [r for r in train if r[1] not in held]
    if dev:
        by = {}
        for r in old:
            by.setdefault(r[1], []).append(r)
        picked = []
        for c in sorted(by):
            rows = by[c][:]
            rng.shuffle(rows)
            picked.extend(rows[: round(0.15 * len(rows))])
        picked_ids = set(map(id, picked))
        old = [r for r in old if id(r) not in picked_ids]
        taken = set(add_rows)
        test = picked + [r for r in train if r[1] in held and r not in taken]
    os.makedirs(out, exist_ok=True)
    write(out, "train.csv", old)
    if val is not None:
        write(out, "val.csv", [r for r in val if r[1] not in held])
    oos = list(oos)
    write_test(out, [(t, "" if c in held else c) for t, c in test] + [(t, "") for t in oos], seed + 2000)
    if add:
        write(out, "add.csv", add_rows)
        write(out, "retrain.csv", old + add_rows)
        kind = lambda c: "old" if c not in held else "new" if c in added else "oos"
        rows = [(t, "" if kind(c) == "oos" else c, kind(c)) for t, c in test] + [(t, "", "oos") for t in oos]
        write(out, "test_all.csv", rows, ("text", "l1", "set"))
    return sorted(held)
