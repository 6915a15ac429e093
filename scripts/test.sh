#!/usr/bin/env bash
# The project's test command (README, CI): fetch the encoder once (cached,
# git-ignored), then run every test in the workspace with the release
# profile (one build serves tests, quickstart and benches).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch_encoder.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --workspace --no-fail-fast "$@"
else
  cargo test --release --workspace --no-fail-fast "$@"
fi
