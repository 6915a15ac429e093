"""Writing casetag's tables from public intent sets: one piece of code for
scripts/banking77_oos.py and scripts/clinc150.py (imported, not run)."""
import csv
import os
import random


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
