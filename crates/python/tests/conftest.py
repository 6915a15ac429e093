"""Fixtures: the casetag binary (built by scripts/test.sh), one small
baseline bundle trained on the bundled corpus for the whole session, and a
small transformer that can judge against recent cases (`--stream-novelty`)
with a few short query files for it."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def pytest_configure(config):
    # Ray Data's context warns in its own __setattr__ when it copies itself
    # (its deprecated fields are set too); the warning is about Ray's code,
    # not casetag's.
    config.addinivalue_line("filterwarnings", r"ignore:.*is deprecated.*:DeprecationWarning:ray\.data\.context")


@pytest.fixture(scope="session")
def casetag_bin() -> Path:
    b = Path(os.environ.get("CASETAG_BIN", ROOT / "target" / "release" / "casetag"))
    if not b.exists():
        pytest.fail(f"{b}: casetag binary not found; build it first (cargo build --release) or set CASETAG_BIN")
    return b


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return ROOT / "data" / "aftersales"


@pytest.fixture(scope="session")
def baseline(tmp_path_factory, casetag_bin, data_dir) -> Path:
    out = tmp_path_factory.mktemp("models") / "baseline"
    subprocess.run(
        [
            str(casetag_bin), "train", "--kind", "baseline",
            "--train", str(data_dir / "train.csv"), "--val", str(data_dir / "val.csv"),
            "--taxonomy", str(ROOT / "data" / "taxonomy.yaml"),
            "--features", "2048", "--out", str(out),
        ],
        check=True, capture_output=True,
    )
    return out


INTENTS = [
    ("refund my money back", "refund"),
    ("the item arrived broken", "broken"),
    ("delivery is late again", "late"),
    ("tracking says parcel lost", "lost"),
    ("i want to leave a review", "review"),
]
WORDS = ["refund", "parcel", "late", "voucher", "broken", "seller", "zzz", "colour"]


@pytest.fixture(scope="session")
def stream_model(tmp_path_factory, casetag_bin) -> Path:
    """A frozen MiniLM transformer on five intents, trained without
    out-of-scope rows, so it has the detector's batch rule."""
    enc = ROOT / "models" / "encoders" / "all-MiniLM-L6-v2"
    if not (enc / "config.json").exists():
        pytest.skip(f"{enc}: encoder not fetched (bash scripts/fetch_encoder.sh)")
    d = tmp_path_factory.mktemp("stream")
    rows = ["text,l1"] + [f"{t} {['please', 'now', 'thanks'][i % 3]} {i // 5},{l}"
                          for i in range(120) for t, l in [INTENTS[i % 5]]]
    (d / "train.csv").write_text("\n".join(rows) + "\n")
    r = run_cli(casetag_bin, "train", "--kind", "transformer", "--mode", "frozen", "--encoder", enc,
                "--train", d / "train.csv", "--out", d / "m")
    assert r.returncode == 0, r.stderr
    return d / "m"


@pytest.fixture(scope="session")
def query_files(tmp_path_factory) -> Path:
    """Three CSV files of 150 short queries each, in a directory."""
    d = tmp_path_factory.mktemp("queries")
    for f in range(3):
        rows = ["text"] + [f"{WORDS[(i + f) % 8]} {WORDS[(i * 7 // 3) % 8]} my order {i % 23} please"
                           for i in range(150)]
        (d / f"q{f}.csv").write_text("\n".join(rows) + "\n")
    return d


def run_cli(casetag_bin, *args):
    return subprocess.run([str(casetag_bin), *map(str, args)], capture_output=True, text=True)
