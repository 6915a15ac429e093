#!/usr/bin/env bash
# The long fuzz run (docs/fuzzing.md): every fuzz property of the table
# readers (CSV, JSONL, Parquet), the /v1/tag request body, the taxonomy YAML
# and the bundle manifest, with many cases per target and a fresh seed each run.
#   CASETAG_FUZZ_CASES  cases per target (default 20000 here; CI uses the small default)
#   CASETAG_FUZZ_SEED   seed (default: the current time; printed, so a failure can be rerun)
# Extra arguments go to nextest, e.g. `-E 'test(=fuzz_taxonomy_yaml)'` for one target.
set -euo pipefail
cd "$(dirname "$0")/.."
export CASETAG_FUZZ_CASES="${CASETAG_FUZZ_CASES:-20000}"
export CASETAG_FUZZ_SEED="${CASETAG_FUZZ_SEED:-$(date +%s)}"
echo "fuzz: CASETAG_FUZZ_CASES=$CASETAG_FUZZ_CASES CASETAG_FUZZ_SEED=$CASETAG_FUZZ_SEED" >&2
# The whole workspace with a filter: building a subset of packages would
# unify features differently and rebuild polars.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --workspace --no-fail-fast -E 'test(/^fuzz_/)' "$@"
else
  cargo test --release --workspace --no-fail-fast --test fuzz_taxonomy_manifest \
    --test fuzz_request --test fuzz_readers "$@"
fi
