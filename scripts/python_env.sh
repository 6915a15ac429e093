#!/usr/bin/env bash
# The Python package in a git-ignored venv (.venv): Ray, pyarrow and pytest
# from the package registry (pinned, crates/python/requirements-test.txt),
# then `pip install crates/python`, which builds the abi3 wheel with maturin
# (reusing the workspace's compiled crates in target/) and installs it.
# Re-running only rebuilds the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
stamp="$VENV/.requirements.sha256"
want=$(sha256sum crates/python/requirements-test.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r crates/python/requirements-test.txt
  echo "$want" > "$stamp"
fi
# --no-build-isolation: maturin comes from the venv (pinned above) instead
# of a fresh download per build.
PATH="$PWD/$VENV/bin:$PATH" "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-build-isolation --force-reinstall --no-deps ./crates/python
echo "python package installed in $VENV ($("$VENV/bin/python" -c 'import casetag; print("casetag", casetag.__version__)'))" >&2
