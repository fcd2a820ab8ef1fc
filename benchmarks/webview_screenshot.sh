#!/usr/bin/env bash
# Check the web view in a real headless Chromium: start `specblock serve`, load the page with a
# prompt (?prompt= sends it on load), wait for the streamed answer, check the DOM holds text
# coloured by origin and the request's summary, and save a screenshot.
#   bash benchmarks/webview_screenshot.sh [OUT.png]      (default docs/webview.png)
# Needs chromium (Debian: apt-get install chromium). Env: METHOD (specblock), PORT (8765).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/webview.png}
port=${PORT:-8765}
method=${METHOD:-specblock}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$browser" ] || { echo "no chromium found (apt-get install chromium)" >&2; exit 1; }
log=$(mktemp)
.venv/bin/specblock serve --method "$method" --port "$port" >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 300); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  kill -0 $server 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.5
done
url="http://127.0.0.1:$port/?prompt=List%20the%20planets%20of%20the%20solar%20system%20with%20one%20fact%20about%20each."
flags=(--headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1100,1000 --virtual-time-budget=120000)
dom=$("$browser" "${flags[@]}" --dump-dom "$url" 2>/dev/null)
grep -q 'class="target"' <<<"$dom" || { echo "the answer did not stream into the page" >&2; exit 1; }
grep -q 'class="meta"' <<<"$dom" || { echo "the request's summary is missing" >&2; exit 1; }
echo "DOM ok: $(grep -o 'class="draft"' <<<"$dom" | wc -l) draft pieces, $(grep -o 'class="target"' <<<"$dom" | wc -l) target pieces"
"$browser" "${flags[@]}" --screenshot="$out" "$url" 2>/dev/null
echo "saved $out"
