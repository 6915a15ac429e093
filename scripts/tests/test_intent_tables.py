"""Tests of the scripts that turn public intent sets into casetag's tables
(scripts/intent_tables.py, banking77_oos.py, clinc150.py, hwu64.py)."""
import csv
import json
import os
import subprocess
import sys

import pytest

SCRIPTS = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, SCRIPTS)
from intent_tables import hold_out  # noqa: E402

BANKING77 = os.path.join(SCRIPTS, "..", "..", "shared", "data", "banking77")


def rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def toy(intents=6, per=20, prefix="q"):
    return [(f"{prefix} {c} {i}", f"i{c}") for c in range(intents) for i in range(per)]


def test_hold_out_splits_adds_and_labels(tmp_path):
    train, test, val = toy(), toy(per=5, prefix="t"), toy(per=3, prefix="v")
    held = hold_out(str(tmp_path), train, test, 3, 2, add=4, oos=["weather today", "tell a joke"], val=val)
    assert len(held) == 2
    kept = {r["l1"] for r in rows(tmp_path / "train.csv")}
    assert kept == {f"i{c}" for c in range(6)} - set(held)
    assert {r["l1"] for r in rows(tmp_path / "val.csv")} == kept
    add = rows(tmp_path / "add.csv")
    assert sorted(r["l1"] for r in add) == sorted(held * 4)
    assert all((r["text"], r["l1"]) in set(train) for r in add)
    assert len(rows(tmp_path / "retrain.csv")) == len(rows(tmp_path / "train.csv")) + len(add)
    test_rows = rows(tmp_path / "test.csv")
    assert len(test_rows) == len(test) + 2
    assert sum(r["l1"] == "" for r in test_rows) == 2 * 5 + 2
    stream = rows(tmp_path / "test_stream.csv")
    assert sorted(map(str, stream)) == sorted(map(str, test_rows)) and stream != test_rows
    sets = {}
    for r in rows(tmp_path / "test_all.csv"):
        sets.setdefault(r["set"], []).append(r)
    assert {k: len(v) for k, v in sets.items()} == {"old": 20, "new": 10, "oos": 2}
    assert all(r["l1"] in held for r in sets["new"]) and all(r["l1"] == "" for r in sets["oos"])


def test_hold_out_is_deterministic_and_dev_keeps_test_rows_out_of_training(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    hold_out(str(a), toy(), [], 5, 2, add=3, dev=True)
    hold_out(str(b), toy(), [], 5, 2, add=3, dev=True)
    for name in ("train.csv", "test.csv", "test_stream.csv", "add.csv", "test_all.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    trained = {r["text"] for r in rows(a / "train.csv")} | {r["text"] for r in rows(a / "add.csv")}
    tested = {r["text"] for r in rows(a / "test.csv")}
    assert tested and not trained & tested


@pytest.mark.parametrize("k", [0, 6])
def test_hold_out_refuses_impossible_counts(tmp_path, k):
    with pytest.raises(SystemExit) as e:
        hold_out(str(tmp_path), toy(), [], 1, k)
    assert e.value.code == 2


def run(script, *args):
    return subprocess.run([sys.executable, os.path.join(SCRIPTS, script), *args], capture_output=True, text=True)


def test_clinc150_tables_and_one_line_errors(tmp_path):
    data = {
        "train": [[t, c] for t, c in toy()],
        "val": [[t, c] for t, c in toy(per=2, prefix="v")],
        "test": [[t, c] for t, c in toy(per=3, prefix="t")],
        "oos_test": [["play some jazz", "oos"], ["how tall is everest", "oos"]],
    }
    src = tmp_path / "data_full.json"
    src.write_text(json.dumps(data))
    p = run("clinc150.py", "--src", str(src), "--out", str(tmp_path / "all"))
    assert p.returncode == 0, p.stderr
    assert len(rows(tmp_path / "all" / "train.csv")) == 120
    assert sum(r["l1"] == "" for r in rows(tmp_path / "all" / "test.csv")) == 2
    p = run("clinc150.py", "--src", str(src), "--held-out", "2", "--add", "5", "--out", str(tmp_path / "h"))
    assert p.returncode == 0, p.stderr
    sets = [r["set"] for r in rows(tmp_path / "h" / "test_all.csv")]
    assert (sets.count("old"), sets.count("new"), sets.count("oos")) == (12, 6, 2)
    assert len(rows(tmp_path / "h" / "add.csv")) == 10
    p = run("clinc150.py", "--src", str(src), "--held-out", "2", "--without-oos", "--out", str(tmp_path / "w"))
    assert p.returncode == 0, p.stderr
    test = rows(tmp_path / "w" / "test.csv")
    assert len(test) == 18 and sum(r["l1"] == "" for r in test) == 6
    assert rows(tmp_path / "w" / "train.csv") == rows(tmp_path / "h" / "train.csv")
    del data["oos_test"]
    src.write_text(json.dumps(data))
    for args in (["--src", str(src)], ["--src", str(tmp_path / "none.json")], ["--src", str(src), "--add", "3"],
                 ["--src", str(src), "--without-oos"]):
        p = run("clinc150.py", *args, "--out", str(tmp_path / "bad"))
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr


def hwu_folder(root, splits):
    """A KFold_1-like folder: SPLITS maps trainset / testset/csv to
    {(scenario, intent): [texts]}."""
    for split, by in splits.items():
        d = root / split
        d.mkdir(parents=True)
        for (scenario, intent), texts in by.items():
            lines = ["answerid;scenario;intent;answer_annotation;answer_from_anno;answer_from_user"]
            lines += [f'{i};{scenario};{intent};"{t}";"{t}";"{t}"' for i, t in enumerate(texts)]
            (d / f"{scenario}_{intent}.csv").write_text("\n".join(lines) + "\n")


def test_hwu64_tables_are_two_levels_and_errors_one_line(tmp_path):
    train = {("alarm", "set"): ["wake me at six", "set an alarm", ""], ("alarm", "query"): ["which alarms"],
             ("music", "query"): ["what song is this"]}
    test = {("alarm", "set"): ["alarm for  seven"], ("music", "query"): ["who sings this"]}
    hwu_folder(tmp_path / "k", {"trainset": train, "testset/csv": test})
    p = run("hwu64.py", "--src", str(tmp_path / "k"), "--out", str(tmp_path / "o"))
    assert p.returncode == 0, p.stderr
    assert "1 rows without text left out" in p.stdout
    got = rows(tmp_path / "o" / "train.csv")
    assert len(got) == 4 and set(got[0]) == {"text", "l1", "l2"}
    assert {(r["l1"], r["l2"]) for r in got} == {("alarm", "alarm_set"), ("alarm", "alarm_query"),
                                                  ("music", "music_query")}
    assert rows(tmp_path / "o" / "test.csv")[0] == {"text": "alarm for seven", "l1": "alarm", "l2": "alarm_set"}
    # A test intent never trained on, a folder without tables: one line, exit 2.
    hwu_folder(tmp_path / "u", {"trainset": train, "testset/csv": {("iot", "coffee"): ["make coffee"]}})
    for src in ("u", "missing"):
        p = run("hwu64.py", "--src", str(tmp_path / src), "--out", str(tmp_path / "bad"))
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "iot_coffee" in run("hwu64.py", "--src", str(tmp_path / "u"), "--out", str(tmp_path / "bad")).stderr
    # Intents held out, in one level: the held intent's test rows are out of scope.
    p = run("hwu64.py", "--src", str(tmp_path / "k"), "--held-out", "1", "--add", "1", "--out", str(tmp_path / "h"))
    assert p.returncode == 0, p.stderr
    held = p.stdout.split("intents: ")[1].strip()
    assert set(rows(tmp_path / "h" / "train.csv")[0]) == {"text", "l1"}
    assert held not in {r["l1"] for r in rows(tmp_path / "h" / "train.csv")}
    assert [r["l1"] for r in rows(tmp_path / "h" / "add.csv")] == [held]
    p = run("hwu64.py", "--src", str(tmp_path / "k"), "--add", "1", "--out", str(tmp_path / "bad"))
    assert p.returncode == 2 and "--held-out" in p.stderr


def test_banking77_oos_errors_in_one_line(tmp_path):
    (tmp_path / "train.csv").write_text("a,b\n1,2\n")
    for src in (tmp_path, tmp_path / "missing"):
        p = run("banking77_oos.py", "--src", str(src), "--out", str(tmp_path / "o"))
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr


@pytest.mark.skipif(not os.path.isdir(BANKING77), reason="../shared/data/banking77 is not here")
def test_banking77_oos_on_the_shared_data(tmp_path):
    p = run("banking77_oos.py", "--seed", "7", "--add", "10", "--out", str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert len({r["l1"] for r in rows(tmp_path / "train.csv")}) == 67
    test = rows(tmp_path / "test_all.csv")
    assert len(test) == 3080 and sum(r["set"] == "new" for r in test) == 400
    assert len(rows(tmp_path / "add.csv")) == 100
