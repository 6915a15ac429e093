#!/usr/bin/env bash
# The project's test command (README, CI): fetch the encoder once (cached,
# git-ignored), run every test in the workspace with the release profile
# (one build serves tests, quickstart and benches), then build the Python
# wheel into a git-ignored venv and run its tests (pytest, a local Ray
# cluster included) and those of the data scripts (scripts/tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch_encoder.sh
status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --workspace --no-fail-fast "$@" || status=$?
else
  cargo test --release --workspace --no-fail-fast "$@" || status=$?
fi
bash scripts/python_env.sh
CASETAG_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/casetag" .venv/bin/python -m pytest -q -p no:cacheprovider crates/python/tests scripts/tests || status=$?
exit $status
