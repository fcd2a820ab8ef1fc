#!/usr/bin/env bash
# Issue 15's second prompt set: code prompts held out from the training sources (the split is a
# hash of source and id, so every regen of the same prompts holds out the same ones), 15 per
# source, benched at T=0 over 3 runs beside vanilla and lookup. The pipelines run it after the
# full report; `specblock bench` continues a killed run row by row.
#
#   bash benchmarks/heldout_code.sh TARGET DATA QUESTIONS OUT BUDGET [DRAFTERS]
#
# DATA: a regen directory, read only to write QUESTIONS when that file is missing. DRAFTERS:
# `specblock=DIR,eagle3=DIR`; left out, the target's shipped pair.
set -euo pipefail
cd "$(dirname "$0")/.."
target=$1 data=$2 questions=$3 out=$4 budget=$5 drafters=${6:-}
if [ ! -s "$questions" ]; then
  .venv/bin/specblock data heldout-questions --data "$data" --out "$questions" \
    --sources code_alpaca_4535,code_alpaca_2k --per-source 15
fi
.venv/bin/specblock bench --target "$target" --data "$questions" --per-category 15 --max-new-tokens 256 \
  --methods "vanilla,lookup,eagle3@$budget,specblock@$budget" --temperature 0 --runs 3 \
  ${drafters:+--drafters "$drafters"} --out "$out"
