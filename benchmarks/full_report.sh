#!/usr/bin/env bash
# The full smollm2-135m report (issue 4 item 5, design §9 sizes): 5 questions per category,
# 256 new tokens; T=0 with 3 runs (vanilla, prompt lookup, EAGLE-3 and SpecBlock at the
# parity budget 59, plus the Hugging Face generate and llama.cpp reference rows in run 1);
# T=1 with 1 run for vanilla, EAGLE-3 and SpecBlock on the first T1_PER_CATEGORY (2)
# questions per category. Shipped drafters. Resumable: rerun the same command and each
# bench continues from its results.jsonl (the committed report was made in pieces across
# sessions that way: settings.json lists each resume). About 5 hours on the project's
# 2-core CPU (one T=0 run: 75 minutes, plus 15 for the reference rows); never next to
# another CPU job.
#
#   nohup bash benchmarks/full_report.sh > full_report.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/report_smollm2-135m}
DATA=${DATA:-../shared/data/eval/spec_bench_question.jsonl}
BUDGET=${BUDGET:-59}
T1_PER_CATEGORY=${T1_PER_CATEGORY:-2}
COMMON=(--target smollm2-135m --data "$DATA")
T0=(--per-category 5 --max-new-tokens 256 --methods "vanilla,lookup,eagle3@$BUDGET,specblock@$BUDGET" --temperature 0 --references hf-generate,llama.cpp --out "$OUT/t0")
# run 1 of T=0, then T=1, then runs 2 and 3 of T=0: each step leaves a complete report behind
.venv/bin/specblock bench "${COMMON[@]}" "${T0[@]}" --runs 1
.venv/bin/specblock bench "${COMMON[@]}" --per-category "$T1_PER_CATEGORY" --max-new-tokens 256 \
  --methods "vanilla,eagle3@$BUDGET,specblock@$BUDGET" --runs 1 --temperature 1 --out "$OUT/t1"
.venv/bin/specblock bench "${COMMON[@]}" "${T0[@]}" --runs 3
