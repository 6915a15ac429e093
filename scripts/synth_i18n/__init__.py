"""Per-language content for scripts/synth.py (`--langs`).

One module per language (`id.py`, `th.py`, ...), each a plain data file with
the same names as the English content in synth.py: buyer/agent lines for every
taxonomy leaf and the shared conversational pieces. `validate(module, leaf_ids,
l2_ids)` checks a module's completeness and placeholders; run
`python3 scripts/synth_i18n/check.py LANG` after editing one.
"""
import importlib
import re
import string

# Placeholders synth.py fills in; a line may use any of them and nothing else.
SLOTS = {"product", "order", "colour", "colour2", "date", "amount", "amount2", "days", "carrier",
         "tracking", "seller", "size", "size2", "voucher", "city", "case", "name", "email", "phone",
         "card", "agent"}

# name -> minimum number of entries (lists of strings).
LISTS = {
    "GENERIC_L2": 4, "VAGUE": 5, "OOS": 15, "OOS_FOLLOW": 4, "OOS_AGENT": 3, "GREET_AGENT": 4,
    "EMAIL_GREET_AGENT": 2, "AGENT_ASK": 6, "AGENT_CLOSE": 6, "BUYER_CLOSE": 6, "NOISE": 6,
    "ANGRY_PRE": 4, "ANGRY_POST": 4, "POLITE_PRE": 4, "POLITE_POST": 4, "ASIDE_PRE": 3,
    "ASIDE_POST": 3, "SELLER_ADD": 2, "SELLER_GENERIC": 2, "PRODUCTS": 20, "COLOURS": 10,
}
LEAF_KEYS = {"o": 4, "d": 2, "a": 1}

LANGS = ["id", "th", "vi", "es", "zh"]


def load(lang):
    return importlib.import_module("synth_i18n." + lang)


def _fields(line):
    return {f for _, f, _, _ in string.Formatter().parse(line) if f is not None}


def validate(mod, leaf_ids, l2_ids):
    """Return a list of problems (empty when the module is complete)."""
    errs = []

    def check_line(where, line, allowed):
        if not isinstance(line, str) or not line.strip():
            errs.append("{}: empty or not a string".format(where))
            return
        try:
            bad = _fields(line) - allowed
        except ValueError as e:
            errs.append("{}: {} in {!r}".format(where, e, line))
            return
        if bad:
            errs.append("{}: unknown placeholder(s) {} in {!r}".format(where, sorted(bad), line))

    for name, n in LISTS.items():
        v = getattr(mod, name, None)
        if not isinstance(v, list) or len(v) < n:
            errs.append("{}: need a list of at least {} strings".format(name, n))
            continue
        allowed = SLOTS | ({"x"} if name == "GENERIC_L2" else set())
        for i, line in enumerate(v):
            if name in ("ANGRY_PRE", "ANGRY_POST", "POLITE_PRE", "POLITE_POST", "ASIDE_POST") and line == "":
                continue
            check_line("{}[{}]".format(name, i), line, allowed)
    if not isinstance(getattr(mod, "AMBIG_PRE", None), str):
        errs.append("AMBIG_PRE: need a string")
    names = getattr(mod, "L2_NAMES", {})
    for l2 in l2_ids:
        if not names.get(l2):
            errs.append("L2_NAMES: missing {}".format(l2))
    leaves = getattr(mod, "LEAVES", {})
    for leaf in leaf_ids:
        c = leaves.get(leaf)
        if c is None:
            errs.append("LEAVES: missing {}".format(leaf))
            continue
        for k, n in LEAF_KEYS.items():
            lines = c.get(k, [])
            if len(lines) < n:
                errs.append("LEAVES[{}][{}]: need at least {} lines".format(leaf, k, n))
            for i, line in enumerate(lines):
                check_line("LEAVES[{}][{}][{}]".format(leaf, k, i), line, SLOTS)
    for leaf in leaves:
        if leaf not in leaf_ids:
            errs.append("LEAVES: unknown leaf id {}".format(leaf))
    return errs
