#!/usr/bin/env bash
# Side-by-side CPU runtime comparison of all-MiniLM-L6-v2: PyTorch fp32,
# ONNX Runtime fp32 and int8 (dynamic quantization of the same weights,
# exported here), casetag fp32 and int8, all with the same thread count.
#
#   scripts/compare_runtimes.sh [--runs N] [--tp-runs N] [--e2e-runs N] [--rounds N]
#       [--warmup N] [--threads N] [--out DIR] [--skip-build] [--skip-install]
#       [--ort-optimizer bert|none] [--ort-int8-per-tensor] [--no-torch]
#
# Steps: a pinned venv in .venv-compare/ (git-ignored; scripts/
# requirements-compare.txt from PyPI, about 6 GB because PyPI's torch wheel
# is the CUDA build), the encoder (scripts/fetch_encoder.sh), the casetag
# helper (crates/transformer/examples/runtime_bench.rs, built with the
# workspace's release build), then scripts/compare_runtimes.py, which checks
# tokenization and embeddings first and then prints one table and writes
# DIR/results.json (default out/compare_runtimes/).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-compare"
REQ="$ROOT/scripts/requirements-compare.txt"

usage() {
  cat <<'EOF'
usage: scripts/compare_runtimes.sh [options]

Compares PyTorch fp32, ONNX Runtime fp32/int8 and casetag fp32/int8 on
all-MiniLM-L6-v2 (CPU): latency at 1x16 and 1x64 tokens, throughput at 32x64
and 32x128, end-to-end tagging of the aftersales and BANKING77 test sets.

options:
  --runs N             timed runs per latency shape, >= 30 (default 50)
  --tp-runs N          timed runs per throughput shape (default 7)
  --e2e-runs N         timed end-to-end runs per dataset (default 3)
  --rounds N           rounds over all runtimes, the runs split between them
                       and pooled, so a burst of load from other processes
                       falls on every runtime alike (default 3)
  --warmup N           untimed runs before each shape (default 5)
  --threads N          threads for every runtime (default 2)
  --out DIR            output directory (default out/compare_runtimes)
  --ort-optimizer X    bert (default: ORT's BERT graph fusion before the fp32
                       session and before quantizing) or none (plain export)
  --ort-int8-per-tensor  quantize ORT int8 with per-tensor weight scales
                       (quantize_dynamic's default; default here: per output
                       channel, as casetag's int8)
  --no-torch           leave out the PyTorch column
  --skip-build         do not run cargo build (use the built helper as it is)
  --skip-install       do not check/install the venv's packages
  -h, --help           this help

Environment: PYTHON (the interpreter that creates the venv, default python3).
EOF
}

PY_ARGS=()
SKIP_BUILD=0
SKIP_INSTALL=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --skip-build) SKIP_BUILD=1 ;;
    --skip-install) SKIP_INSTALL=1 ;;
    --no-torch|--ort-int8-per-tensor) PY_ARGS+=("$1") ;;
    --runs|--tp-runs|--e2e-runs|--rounds|--warmup|--threads|--out|--ort-optimizer)
      if [[ $# -lt 2 ]]; then
        echo "compare_runtimes: $1 needs a value (see --help)" >&2
        exit 2
      fi
      PY_ARGS+=("$1" "$2")
      shift ;;
    *) echo "compare_runtimes: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

cd "$ROOT"
T0=$(date +%s)

# 1. The pinned venv; reinstalled only when the requirements file changes.
if [[ $SKIP_INSTALL -eq 0 ]]; then
  if [[ ! -x "$VENV/bin/python" ]]; then
    "${PYTHON:-python3}" -m venv "$VENV"
  fi
  stamp="$VENV/.requirements.sha256"
  want=$(sha256sum "$REQ" | cut -d' ' -f1)
  if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]]; then
    echo "compare_runtimes: installing $REQ into $VENV (first time: several GB) ..." >&2
    # --no-cache-dir: the wheels are large and would be stored twice.
    "$VENV/bin/pip" install --quiet --no-cache-dir --disable-pip-version-check -r "$REQ"
    echo "$want" > "$stamp"
  fi
fi
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "compare_runtimes: $VENV has no python (run without --skip-install)" >&2
  exit 1
fi

# 2. The encoder.
bash "$ROOT/scripts/fetch_encoder.sh"

# 3. The casetag helper, from the workspace's release build (the same
#    feature set as every other build here, so nothing is compiled twice).
if [[ $SKIP_BUILD -eq 0 ]]; then
  cargo build --release --workspace --all-targets
fi
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/runtime_bench"
if [[ ! -x "$BIN" ]]; then
  echo "compare_runtimes: $BIN is missing (run without --skip-build)" >&2
  exit 1
fi

# 4. The comparison. Thread pools are sized before any library starts.
THREADS=2
for ((i = 0; i < ${#PY_ARGS[@]}; i++)); do
  [[ "${PY_ARGS[$i]}" == "--threads" ]] && THREADS="${PY_ARGS[$((i + 1))]}"
done
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" \
  OPENBLAS_NUM_THREADS="$THREADS" RAYON_NUM_THREADS="$THREADS" TOKENIZERS_PARALLELISM=true
"$VENV/bin/python" "$ROOT/scripts/compare_runtimes.py" --bench-bin "$BIN" ${PY_ARGS[@]+"${PY_ARGS[@]}"}
echo "compare_runtimes: done in $(( $(date +%s) - T0 )) s" >&2
