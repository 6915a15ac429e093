#!/usr/bin/env python3
"""TF-IDF + logistic regression reference baseline (scikit-learn).

Features: word 1-2 grams + char_wb 2-5 grams, sublinear tf, concatenated.
Classifier: LogisticRegression(C, max_iter=2000). C is 10 unless --val is
given, in which case C is picked from a small grid on the validation set only.

Rows whose label in --label-col is empty (out-of-scope aftersales cases) are
excluded from both training and testing.

Usage:
  python3 scripts/tfidf_reference.py --train data/aftersales/train.csv \
      --test data/aftersales/test.csv --label-col l3
  python3 scripts/tfidf_reference.py --train ../shared/data/banking77/train.csv \
      --test ../shared/data/banking77/test.csv --label-col category

Prints one JSON line: {"accuracy": ..., "n_test": ..., ...}
Requirements: scripts/requirements.txt (scikit-learn, numpy).
"""
import argparse
import csv
import json
import sys

from scipy.sparse import hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

csv.field_size_limit(sys.maxsize)


def load(path, text_col, label_col):
    xs, ys = [], []
    with open(path, encoding="utf-8", newline="") as f:
        r = csv.DictReader(f)
        for c in (text_col, label_col):
            if c not in (r.fieldnames or []):
                sys.exit("{}: no column '{}' (columns: {})".format(path, c, r.fieldnames))
        for row in r:
            y = (row[label_col] or "").strip()
            if y:
                xs.append(row[text_col] or "")
                ys.append(y)
    return xs, ys


def featurize(train_x, *others):
    word = TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True, min_df=1, lowercase=True)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2, lowercase=True)
    xtr = hstack([word.fit_transform(train_x), char.fit_transform(train_x)]).tocsr()
    outs = [hstack([word.transform(o), char.transform(o)]).tocsr() for o in others]
    return xtr, outs


def accuracy(y, p):
    return sum(a == b for a, b in zip(y, p)) / max(1, len(y))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--val", help="optional validation CSV used only to tune C")
    ap.add_argument("--label-col", default=None, help="label column (default: l3 if present, else category)")
    ap.add_argument("--text-col", default="text")
    ap.add_argument("--C", type=float, default=10.0)
    args = ap.parse_args()

    label_col = args.label_col
    if label_col is None:
        with open(args.train, encoding="utf-8", newline="") as f:
            header = next(csv.reader(f))
        label_col = "l3" if "l3" in header else "category"
    trx, try_ = load(args.train, args.text_col, label_col)
    tex, tey = load(args.test, args.text_col, label_col)
    C = args.C
    tuned = None
    if args.val:
        vx, vy = load(args.val, args.text_col, label_col)
        xtr, (xv,) = featurize(trx, vx)
        best = None
        for c in (1.0, 3.0, 10.0, 30.0, 100.0):
            clf = LogisticRegression(C=c, max_iter=2000).fit(xtr, try_)
            a = accuracy(vy, clf.predict(xv))
            if best is None or a > best[0]:
                best = (a, c)
        C, tuned = best[1], {"val_accuracy": round(best[0], 4)}
    xtr, (xte,) = featurize(trx, tex)
    clf = LogisticRegression(C=C, max_iter=2000).fit(xtr, try_)
    acc = accuracy(tey, clf.predict(xte))
    out = {"accuracy": round(acc, 4), "n_test": len(tey), "n_train": len(try_), "label_col": label_col,
           "n_classes": len(set(try_)), "C": C}
    if tuned:
        out.update(tuned)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
