#!/usr/bin/env python3
"""Print one line per model from a casetag report.json (a file, or stdin)."""
import json
import sys

r = json.load(open(sys.argv[1]) if len(sys.argv) > 1 else sys.stdin)
for m in r["models"]:
    lv = m["levels"]
    cells = [f"{m['id']:<28}"]
    cells += [f"{k.upper()} {lv[k]['accuracy']:.3f}" for k in sorted(lv)]
    cells.append(f"in-scope {m['in_scope_accuracy']:.3f}")
    cells.append(f"coverage {m['coverage']:.3f}")
    cells.append(f"selective {m['selective_accuracy']:.3f}")
    if "oos_recall" in m:
        cells.append(f"oos-recall {m['oos_recall']:.3f}")
    cells.append(f"ece {m['ece']:.3f}")
    print("  ".join(cells))
for c in r.get("comparisons", []):
    print(f"{c['b']} vs {c['a']} {c['level']}: delta {100 * c['delta_accuracy']:+.2f} pts, "
          f"95% CI [{100 * c['ci95'][0]:+.2f}, {100 * c['ci95'][1]:+.2f}], McNemar p {c['mcnemar_p']:.3g}")
