#!/usr/bin/env bash
# Render a report.html to PNG in headless Chromium (Debian package `chromium`),
# to look at what the algorithm team sees. Offline: the report has no external assets.
#   bash scripts/render_report.sh out/quickstart/report/report.html [out.png] [width] [height]
set -euo pipefail
html=${1:?usage: render_report.sh REPORT.html [OUT.png] [WIDTH] [HEIGHT]}
png=${2:-${html%.html}.png}
w=${3:-1280}
h=${4:-2400}
if ! command -v chromium >/dev/null; then
  echo "render_report: installing Debian's chromium" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --hide-scrollbars --window-size="$w,$h" \
  --screenshot="$(realpath -m "$png")" "file://$(realpath "$html")" >/dev/null 2>&1
echo "wrote $png"
