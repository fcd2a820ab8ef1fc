#!/usr/bin/env bash
# Issue 15's second prompt set: code prompts held out from the training sources (the split is a
# hash of source and id, so every regen of the same prompts holds out the same ones), 15 per
# source, benched at T=0 over 3 runs beside vanilla and lookup. The pipelines run it after the
# full report; `specblock bench` continues a killed run row by row.
#
#   bash benchmarks/heldout_code.sh TARGET QUESTIONS OUT BUDGET [DRAFTERS]
#
# QUESTIONS is written from the two code prompt files of ../shared/data/train when missing (their
# held-out prompts: no regenerated data needed). DRAFTERS: `specblock=DIR,eagle3=DIR`; left
# out, the target's shipped pair.
set -euo pipefail
cd "$(dirname "$0")/.."
target=$1 questions=$2 out=$3 budget=$4 drafters=${5:-}
if [ ! -s "$questions" ]; then
  train=../shared/data/train
  .venv/bin/specblock data heldout-questions --data "$train/code_alpaca_4535.json" --data "$train/code_alpaca_2k.json" --out "$questions" \
    --sources code_alpaca_4535,code_alpaca_2k --per-source 15
fi
.venv/bin/specblock bench --target "$target" --data "$questions" --per-category 15 --max-new-tokens 256 \
  --methods "vanilla,lookup,eagle3@$budget,specblock@$budget" --temperature 0 --runs 3 \
  ${drafters:+--drafters "$drafters"} --out "$out"
