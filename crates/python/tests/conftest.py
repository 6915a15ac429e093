"""Fixtures: the casetag binary (built by scripts/test.sh) and one small
baseline bundle trained on the bundled corpus for the whole session."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


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


def run_cli(casetag_bin, *args):
    return subprocess.run([str(casetag_bin), *map(str, args)], capture_output=True, text=True)
