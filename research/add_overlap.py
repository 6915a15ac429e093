#!/usr/bin/env python3
"""Does `parent.overlap` (recorded by `train --from --add`) foretell the test?

Reads the child bundle's manifest and two `casetag tag` outputs of the same
labelled file (a `set` column marks `old` and `new` rows, as
`scripts/banking77_oos.py --add 10` and `scripts/clinc150.py --held-out 10
--add 10` write it): the parent's and the child's. Prints one Markdown row per
new tag: the parent's most frequent answer on its examples (and whether
`train` warned), the memory rows it takes, the old test answers it takes (old
rows the parent got right and the child now answers with this tag), and the
child's top-1 (`guess_l1`) on the tag's test rows; then the totals for warned
and other tags.

    python3 research/add_overlap.py CHILD_BUNDLE PARENT_TAGGED.csv CHILD_TAGGED.csv
"""
import argparse
import collections
import csv
import json
import os

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("child")
ap.add_argument("parent_tagged")
ap.add_argument("child_tagged")
a = ap.parse_args()

manifest = json.load(open(os.path.join(a.child, "manifest.json")))
overlap = manifest["parent"]["overlap"]
examples = manifest["parent"]["examples"]
parent = list(csv.DictReader(open(a.parent_tagged, newline="")))
child = list(csv.DictReader(open(a.child_tagged, newline="")))
assert len(parent) == len(child), "the two files must tag the same rows"

taken = collections.Counter()
right = collections.Counter()
seen = collections.Counter()
old_rows = 0
for p, c in zip(parent, child):
    assert p["text"] == c["text"], "the two files must tag the same rows"
    if p["set"] == "old":
        old_rows += 1
        if p["guess_l1"] == p["l1"] and c["guess_l1"] in overlap:
            taken[c["guess_l1"]] += 1
    elif p["set"] == "new":
        seen[p["l1"]] += 1
        right[p["l1"]] += c["guess_l1"] == p["l1"]


def nearest(answers):
    """The most frequent answer, the first by name among equals (as casetag's)."""
    return min(answers.items(), key=lambda kv: (-kv[1], kv[0]))


print("| new tag | parent's answer on its examples | warned | memory rows taken | old test answers taken | new top-1 |")
print("|---|---|---|---:|---:|---:|")
totals = {True: [0, 0, 0, 0], False: [0, 0, 0, 0]}
for tag in sorted(overlap):
    o = overlap[tag]
    old, k = nearest(o["parent_answers"])
    warned = old != "out_of_scope" and 2 * k >= examples[tag]
    mem = sum(o.get("memory_taken", {}).values())
    t = totals[warned]
    t[0] += 1
    t[1] += mem
    t[2] += taken[tag]
    t[3] += right[tag] / seen[tag]
    print(f"| {tag} | {old} ({k} of {examples[tag]}) | {'yes' if warned else 'no'} "
          f"| {mem} | {taken[tag]} | {right[tag] / seen[tag]:.3f} |")
print()
with open(os.path.join(a.child, "memory.safetensors"), "rb") as f:
    header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
memory_rows = header["y"]["shape"][0] - sum(examples.values())
print(f"the parent's memory rows: {memory_rows}; old test rows: {old_rows}")
for warned, (n, mem, tk, acc) in totals.items():
    if n:
        print(f"{'warned' if warned else 'not warned'}: {n} tags, memory rows taken {mem}, "
              f"old test answers taken {tk}, mean new top-1 {acc / n:.3f}")
