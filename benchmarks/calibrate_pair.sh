#!/usr/bin/env bash
# Calibrate a trained pair for `--node-budget auto`: each drafter's tau and drafting time per
# node budget, stored in its config.json (a drafter already calibrated is skipped). The
# pipelines run it between training and the benchmarks:
#
#   bash benchmarks/calibrate_pair.sh TARGET RUNS DATA    # drafters in RUNS/TARGET-{specblock,eagle3}/drafter
set -euo pipefail
cd "$(dirname "$0")/.."
target=$1 runs=$2 data=$3
for method in specblock eagle3; do
  drafter=$runs/$target-$method/drafter
  if ! grep -q '"calibration"' "$drafter/config.json"; then
    echo "$(date -u +%FT%TZ) calibrate $method"
    .venv/bin/python benchmarks/calibrate_drafter.py --method "$method" --drafter "$drafter" --target "$target" \
      --budgets 4,8,12,16,24,32 --data "$data" --skip 96  # held-out prompts past the first 96 (the code bench takes its own from the prompt files)
  fi
done
