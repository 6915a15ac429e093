#!/usr/bin/env python3
"""Would the parent's out-of-scope score (or its confidence) keep added tags from taking old cases?

Reads two `casetag tag` outputs of the same labelled file (a `set` column marks
`old` and `new` rows, as `scripts/banking77_oos.py --add 10` writes it): the
parent's (trained without the new intents) and the child's (`train --from
--add`). The gate: where the child answers a new tag but the parent's
`oos_score` is below a cut, the parent's answer stands (`--by confidence`:
where the parent's confidence `conf_l1` is above one, that is where its
novelty 1 - `conf_l1` is below the cut). The cut is swept over percentiles of the
parent's novelty on old rows, or, with `--examples`, on the new tags' own
examples as the parent tags them (what an add could know: `casetag tag
--model PARENT --input add.csv`). The cut is swept over
percentiles of the parent's score on old rows; each line prints new-intent and
old-intent accuracy (`guess_l1`) and the old intents' drop against the parent.

    python3 research/add_gate.py PARENT_TAGGED.csv CHILD_TAGGED.csv
"""
import argparse
import csv

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("parent")
ap.add_argument("child")
ap.add_argument("--percentiles", type=float, nargs="+",
                default=[0, 50, 60, 70, 80, 85, 90, 95])
ap.add_argument("--by", choices=["oos_score", "confidence"], default="oos_score",
                help="the parent's novelty: its oos_score, or 1 - its conf_l1")
ap.add_argument("--examples", metavar="PARENT_TAGGED_ADD.csv",
                help="take the percentiles over the parent's novelty on these rows "
                     "(the new tags' examples) instead of the old rows")
a = ap.parse_args()

parent = list(csv.DictReader(open(a.parent, newline="")))
child = list(csv.DictReader(open(a.child, newline="")))
assert len(parent) == len(child), "the two files must tag the same rows"
new_tags = {r["l1"] for r in child if r["set"] == "new"}
old = [i for i, r in enumerate(parent) if r["set"] == "old"]
new = [i for i, r in enumerate(parent) if r["set"] == "new"]


def novelty(rows):
    if a.by == "oos_score":
        return [float(r["oos_score"] or 0) for r in rows]
    return [1 - float(r["conf_l1"] or 0) for r in rows]


score = novelty(parent)


def acc(pred, rows):
    return sum(pred[i] == parent[i]["l1"] for i in rows) / len(rows)


parent_pred = [r["guess_l1"] for r in parent]
child_pred = [r["guess_l1"] for r in child]
base_old = acc(parent_pred, old)
if a.examples:
    examples = list(csv.DictReader(open(a.examples, newline="")))
    cuts_from, where = sorted(novelty(examples)), "new examples'"
else:
    cuts_from, where = sorted(score[i] for i in old), "old rows'"
print(f"parent old {base_old:.4f}; child new {acc(child_pred, new):.4f} "
      f"old {acc(child_pred, old):.4f}")
for q in a.percentiles:
    cut = cuts_from[min(int(q / 100 * len(cuts_from)), len(cuts_from) - 1)] if q else float("-inf")
    pred = [p if (c in new_tags and score[i] < cut) else c
            for i, (p, c) in enumerate(zip(parent_pred, child_pred))]
    print(f"cut at the {where} {q:g}th percentile ({cut:.3f}): new {acc(pred, new):.4f} "
          f"old {acc(pred, old):.4f} drop {100 * (base_old - acc(pred, old)):.2f} points")
