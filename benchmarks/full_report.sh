#!/usr/bin/env bash
# A full benchmark report for one target (issue 4 item 5, design §9 sizes; issue 15 item 5):
# 5 questions per category, 256 new tokens; T=0 with 3 runs (vanilla, prompt lookup, EAGLE-3
# and SpecBlock at the same node budget, plus EXTRA_METHODS, plus the reference rows in run 1);
# T=1 with 1 run for vanilla, EAGLE-3 and SpecBlock on the first T1_PER_CATEGORY (2) questions
# per category. Resumable: rerun the same command and each bench continues from its
# results.jsonl. Never next to another CPU job.
#
#   Issue 4's report (shipped drafters, parity budget 59, fp32; about 5 hours on 2 cores):
#   DTYPE=float32 nohup bash benchmarks/full_report.sh > full_report.log 2>&1 &
#
#   Issue 15's smollm2 report (the retrained pair at 16 nodes, the llama.cpp server rows):
#   OUT=benchmarks/results/report15_smollm2-135m BUDGET=16 \
#     DRAFTERS=specblock=/work/runs/smollm2-135m-specblock/drafter,eagle3=/work/runs/smollm2-135m-eagle3/drafter \
#     REFERENCES=llama.cpp-server,llama.cpp-server-ngram,llama.cpp-server-eagle3 bash benchmarks/full_report.sh
#
#   Issue 15's 1.5B report (the shipped pair at `auto`; draft-model is the 0.5B of the same
#   family; begun on plain calls, so it resumes with SPECBLOCK_KERNEL_CHUNKS=off; run through
#   benchmarks/pipeline_qwen.sh):
#   SPECBLOCK_KERNEL_CHUNKS=off TARGET=qwen2.5-coder-1.5b OUT=benchmarks/results/report15_qwen2.5-coder-1.5b \
#     BUDGET=auto EXTRA_METHODS=draft-model@auto DRAFTERS= \
#     REFERENCES=llama.cpp-server,llama.cpp-server-ngram,llama.cpp-server-eagle3 bash benchmarks/full_report.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${TARGET:-smollm2-135m}
OUT=${OUT:-benchmarks/results/report_$TARGET}
DATA=${DATA:-../shared/data/eval/spec_bench_question.jsonl}
BUDGET=${BUDGET:-59}
DTYPE=${DTYPE:-auto}
DRAFTERS=${DRAFTERS:-}                          # empty: the shipped drafters of TARGET
EXTRA_METHODS=${EXTRA_METHODS:-}                # e.g. draft-model@auto (added after SpecBlock)
REFERENCES=${REFERENCES:-hf-generate,llama.cpp}
T1_PER_CATEGORY=${T1_PER_CATEGORY:-2}
COMMON=(--target "$TARGET" --data "$DATA" --dtype "$DTYPE")
[ -n "$DRAFTERS" ] && COMMON+=(--drafters "$DRAFTERS")
methods="vanilla,lookup,eagle3@$BUDGET,specblock@$BUDGET${EXTRA_METHODS:+,$EXTRA_METHODS}"
T0=(--per-category 5 --max-new-tokens 256 --methods "$methods" --temperature 0 --references "$REFERENCES" --out "$OUT/t0")
# run 1 of T=0, then T=1, then runs 2 and 3 of T=0: each step leaves a complete report behind
.venv/bin/specblock bench "${COMMON[@]}" "${T0[@]}" --runs 1
.venv/bin/specblock bench "${COMMON[@]}" --per-category "$T1_PER_CATEGORY" --max-new-tokens 256 \
  --methods "vanilla,eagle3@$BUDGET,specblock@$BUDGET" --runs 1 --temperature 1 --out "$OUT/t1"
.venv/bin/specblock bench "${COMMON[@]}" "${T0[@]}" --runs 3
