#!/usr/bin/env bash
# Issue 15's remaining CPU work in order, as one resumable line for each new working session:
#
#   mkdir -p /work/data/logs && nohup bash benchmarks/pipeline_issue15.sh >> /work/data/logs/pipeline-qwen.log 2>&1 &
#
# 1. pipeline_qwen.sh: the 1.5B report and held-out code benches (finished benches pass in
#    seconds: a bench with no row left loads nothing).
# 2. llama.cpp's three server rows on the held-out code prompts for the 1.5B, beside vanilla and
#    both drafters in one interleaved run (about 75 minutes): the issue's llama.cpp target is
#    stated on both prompt sets, and the held-out bench had no llama.cpp rows.
# 3. The 1.5B report again on the kernel table's exact kernels (about 5.5 hours). The first one
#    ran on plain calls (SPECBLOCK_KERNEL_CHUNKS=off: it began before the fixed 16-row chunks),
#    where speculative outputs part from plain bf16 decoding at near-ties; this one is lossless
#    on the AMX Xeon, and its `auto` budget is the chunked profile's (up to 15 nodes cost one
#    16-row call). It needs the same CPU as the first for the two to be compared.
#    Both measure the shipped pair (PAIR=shipped), on the exact kernels whatever the caller's
#    environment says (SPECBLOCK_KERNEL_CHUNKS, SPECBLOCK_KERNELS).
# 4. pipeline_smollm2.sh: the smollm2 pair retrained on today's recipe (about 10.5 hours).
#
# On another CPU step 1's benches refuse to resume (their rows were timed on the AMX Xeon), and
# the chain stops there.
# Pause with `bash scripts/pipeline_pause.sh stop|cont`; never benchmark beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "$(date -u +%FT%TZ) $*"; }
WORK=${WORK:-/work}
PAIR=shipped bash benchmarks/pipeline_qwen.sh
log "llama.cpp's rows on the 1.5B's held-out code prompts (exact kernels, one run)"
SPECBLOCK_KERNEL_CHUNKS=on SPECBLOCK_KERNELS=exact \
  .venv/bin/specblock bench --target qwen2.5-coder-1.5b --data "$WORK/data/heldout-code.jsonl" --per-category 15 \
  --max-new-tokens 256 --methods vanilla,eagle3@auto,specblock@auto --temperature 0 --runs 1 \
  --references llama.cpp-server,llama.cpp-server-ngram,llama.cpp-server-eagle3 \
  --out benchmarks/results/report15_qwen2.5-coder-1.5b/heldout_code_llama_cpp
log "the 1.5B report on the exact kernels"
SPECBLOCK_KERNEL_CHUNKS=on SPECBLOCK_KERNELS=exact \
  TARGET=qwen2.5-coder-1.5b OUT=benchmarks/results/report15_qwen2.5-coder-1.5b_exact BUDGET=auto \
  EXTRA_METHODS=draft-model@auto DRAFTERS= \
  REFERENCES=llama.cpp-server,llama.cpp-server-ngram,llama.cpp-server-eagle3 bash benchmarks/full_report.sh
bash benchmarks/pipeline_smollm2.sh
log "done"
