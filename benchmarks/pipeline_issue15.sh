#!/usr/bin/env bash
# Issue 15's remaining CPU work in order, as one resumable line for each new working session:
#
#   mkdir -p /work/data/logs && nohup bash benchmarks/pipeline_issue15.sh >> /work/data/logs/pipeline-qwen.log 2>&1 &
#
# 1. pipeline_qwen.sh: the 1.5B report and held-out code benches (finished benches pass in
#    seconds: a bench with no row left loads nothing).
# 2. The 1.5B report again on the kernel table's exact kernels (about 5.5 hours). The first one
#    ran on plain calls (SPECBLOCK_KERNEL_CHUNKS=off: it began before the fixed 16-row chunks),
#    where speculative outputs part from plain bf16 decoding at near-ties; this one is lossless
#    on the AMX Xeon, and its `auto` budget is the chunked profile's (up to 15 nodes cost one
#    16-row call). It needs the same CPU as the first for the two to be compared.
#    Both measure the shipped pair (PAIR=shipped), on the exact kernels whatever the caller's
#    environment says (SPECBLOCK_KERNEL_CHUNKS, SPECBLOCK_KERNELS).
# 3. pipeline_smollm2.sh: the smollm2 pair retrained on today's recipe (about 10.5 hours).
#
# On another CPU step 1's benches refuse to resume (their rows were timed on the AMX Xeon), and
# the chain stops there.
# Pause with `bash scripts/pipeline_pause.sh stop|cont`; never benchmark beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "$(date -u +%FT%TZ) $*"; }
PAIR=shipped bash benchmarks/pipeline_qwen.sh
log "the 1.5B report on the exact kernels"
SPECBLOCK_KERNEL_CHUNKS=on SPECBLOCK_KERNELS=exact \
  TARGET=qwen2.5-coder-1.5b OUT=benchmarks/results/report15_qwen2.5-coder-1.5b_exact BUDGET=auto \
  EXTRA_METHODS=draft-model@auto DRAFTERS= \
  REFERENCES=llama.cpp-server,llama.cpp-server-ngram,llama.cpp-server-eagle3 bash benchmarks/full_report.sh
bash benchmarks/pipeline_smollm2.sh
log "done"
