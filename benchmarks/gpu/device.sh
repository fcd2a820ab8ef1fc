#!/usr/bin/env bash
# Runs ON the device machine (see benchmarks/gpu/README.md); tested on the CPU with
# DEVICE=cpu PYTHON=.venv/bin/python SMOKE=1.
#   bash benchmarks/gpu/device.sh receive   # after each call that carried a chunk: list what arrived
#   bash benchmarks/gpu/device.sh bench     # join + verify the GGUF, convert, profile, benchmark
# Results land in RESULTS (default .gpu/results: git-ignored, so a warm device keeps them
# and a rerun resumes the bench); where $OUT is set (on the device) they are also packed
# into $OUT/gpu_smollm2-135m.tar.gz on any exit (a call brings back at most 8 files).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
RESULTS=${RESULTS:-.gpu/results}
pack() { if [ -n "${OUT:-}" ] && [ -d "$RESULTS" ]; then tar -czf "$OUT/gpu_smollm2-135m.tar.gz" -C "$RESULTS" . || true; fi; }
export SPECBLOCK_CACHE=${SPECBLOCK_CACHE:-/tmp/specblock-cache}
export PYTHONUNBUFFERED=1

case "${1:-}" in
  receive)
    ls -l .gpu/gguf .gpu/wheels 2>/dev/null || true
    du -cb .gpu/gguf/part-* | tail -1
    exit 0 ;;
  bench) ;;
  *) echo "usage: $0 receive|bench" >&2; exit 2 ;;
esac

mkdir -p "$SPECBLOCK_CACHE/gguf" "$RESULTS"
trap pack EXIT
if ! ls .gpu/gguf/part-* >/dev/null 2>&1 || [ ! -f .gpu/gguf/sha256 ]; then
  echo "no GGUF chunks here: run the 'receive' calls first (benchmarks/gpu/README.md)" >&2; exit 1
fi
target="$SPECBLOCK_CACHE/gguf/smollm2-135m.gguf"
cat .gpu/gguf/part-* > "$target"
echo "$(cat .gpu/gguf/sha256)  $target" | sha256sum -c --quiet || { echo "GGUF chunks missing or corrupt: resend them" >&2; exit 1; }
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/specblock-site .gpu/wheels/*.whl
export PYTHONPATH="$PWD/src:/tmp/specblock-site${PYTHONPATH:+:$PYTHONPATH}"

{
  echo "date: $(date -u +%FT%TZ)"
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
  if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; fi
} | tee "$RESULTS/machine.txt"

if [ -n "${SMOKE:-}" ]; then  # the CPU rehearsal: same steps, a few tokens, CPU-sized time limits
  PER_CATEGORY=1; MAX_NEW=16; BUDGET_BIG=8; PROFILE_LIMIT=900; BENCH_LIMIT=900
fi
PER_CATEGORY=${PER_CATEGORY:-2}
MAX_NEW=${MAX_NEW:-128}
BUDGET_BIG=${BUDGET_BIG:-59}
PROFILE_LIMIT=${PROFILE_LIMIT:-150}
BENCH_LIMIT=${BENCH_LIMIT:-300}

"$PYTHON" -m specblock.cli models fetch smollm2-135m
# verify latency T(n) and both shipped drafters' D(n) on this GPU, then the budget auto picks
timeout "$PROFILE_LIMIT" "$PYTHON" -m specblock.cli profile --target smollm2-135m --device "$DEVICE" --out "$RESULTS" 2>&1 | tee "$RESULTS/profile.log" || echo "profile failed or ran out of time; benchmarking anyway"
timeout "$BENCH_LIMIT" "$PYTHON" -m specblock.cli bench --target smollm2-135m --device "$DEVICE" \
  --methods "vanilla,lookup,eagle3@$BUDGET_BIG,specblock@$BUDGET_BIG,eagle3@auto,specblock@auto" \
  --data .gpu/questions.jsonl --per-category "$PER_CATEGORY" --runs 1 --temperature 0 \
  --max-new-tokens "$MAX_NEW" --out "$RESULTS" > "$RESULTS/bench.log" 2>&1 || echo "bench failed or ran out of time (it resumes: rerun this call)"
tail -40 "$RESULTS/bench.log"
ls -l "$RESULTS"
