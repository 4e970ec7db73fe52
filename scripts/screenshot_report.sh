#!/usr/bin/env bash
# Render a memrope HTML report in headless Chromium and save a PNG screenshot.
#   scripts/screenshot_report.sh REPORT.html OUT.png [WIDTH [HEIGHT]]
# Needs Debian's chromium (apt-get install chromium). The flags keep Chromium off the network.
set -euo pipefail
report=$(realpath "$1"); out=$(realpath -m "$2"); width=${3:-1400}; height=${4:-3000}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$browser" ] || { echo "no chromium found: apt-get install chromium" >&2; exit 2; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --hide-scrollbars --window-size="$width,$height" \
  --screenshot="$out" "file://$report" >/dev/null 2>&1
[ -s "$out" ] && echo "$out"
