#!/usr/bin/env python3
"""Check one language module against the taxonomy: python3 scripts/synth_i18n/check.py LANG"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import synth  # noqa: E402
import synth_i18n  # noqa: E402

tax = synth.load_taxonomy(os.path.join(HERE, "..", "..", "data", "taxonomy.yaml"))
leaf_ids = sorted(tax)
l2_ids = sorted({v[1] for v in tax.values()})
status = 0
for lang in sys.argv[1:] or synth_i18n.LANGS:
    errs = synth_i18n.validate(synth_i18n.load(lang), leaf_ids, l2_ids)
    for e in errs:
        print("{}: {}".format(lang, e))
    print("{}: {}".format(lang, "ok" if not errs else "{} problem(s)".format(len(errs))))
    status |= bool(errs)
sys.exit(status)
