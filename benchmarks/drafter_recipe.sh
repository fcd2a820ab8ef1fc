#!/usr/bin/env bash
# The drafter recipe of issue 15, one target at a time: regenerate the training answers with
# the target, measure the draft-vocabulary coverage, train the SpecBlock and EAGLE-3 drafters
# on the same data, steps and tokens per step (with snapshots), and plot the scaling curve.
# Rerun the same command after a kill: regen and training resume from their last flush or
# checkpoint (a trained drafter is skipped), the scaling curve from its last measured drafter;
# a measured coverage is kept (delete its directory to measure again).
# Hours of CPU per target (docs/drafters.md, "The recipe"); never run it next to a benchmark.
#
#   TARGET=smollm2-135m VALID_FLOOR=0.1 bash benchmarks/drafter_recipe.sh
#   (the shipped smollm2 pair: 0.1 was the setting before the 1.5B's slot-weight runs; drop it for today's recipe)
#   TARGET=qwen2.5-coder-1.5b PER_SOURCE=1000 WIDTH=1472 STEPS=1500 SCALING_DTYPE=bfloat16 bash benchmarks/drafter_recipe.sh
#   (the 1.5B's compact pair: 4,096 draft tokens, MLP width 1472, the largest multiple of 64 that
#   keeps the fp16 pair within 160 MB: 100.5 + 57.8 MB; width 1536 would be 160.07 MB.
#   1,500 steps of 8 x 128 positions are about one pass over the ~1.5M kept tokens.)
#
# Stages can be run alone: STAGES="regen vocab" (default: regen vocab specblock eagle3 scaling).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${TARGET:-smollm2-135m}
WORK=${WORK:-/work}
DATA=${DATA:-$WORK/data/regen-$TARGET}
RUNS=${RUNS:-$WORK/runs}
PER_SOURCE=${PER_SOURCE:-2500}     # prompts per source (six sources; ShareGPT has 500)
VOCAB=${VOCAB:-4096}               # draft vocabulary, chosen from the coverage run
WIDTH=${WIDTH:-0}                  # drafter MLP width (0 = the target's)
STEPS=${STEPS:-3000}
SCALING_DTYPE=${SCALING_DTYPE:-float32}  # the target's in the scaling curve's decoding (bf16: exact where verification is batch-invariant)
SCALING_OUT=${SCALING_OUT:-benchmarks/results/scaling_$TARGET}
LR=${LR:-8e-4}
VALID_FLOOR=${VALID_FLOOR:-1.0}    # SpecBlock's --valid-floor (the smollm2 pair shipped in issue 15 was trained at 0.1)
STAGES=${STAGES:-regen vocab specblock eagle3 scaling}
SRC=../shared/data/train
log() { echo "$(date -u +%FT%TZ) $*"; }

for stage in $STAGES; do
  case $stage in
  regen)
    log "regen $TARGET -> $DATA"
    .venv/bin/specblock data regen --target "$TARGET" --prompts "$SRC/ultrachat_small.jsonl" \
      --prompts "$SRC/sharegpt_v3_filtered_500.json" --prompts "$SRC/gsm8k_train.jsonl" \
      --prompts "$SRC/code_alpaca_4535.json" --prompts "$SRC/code_alpaca_2k.json" \
      --prompts "$SRC/gpteacher_roleplay.json" --max-per-source "$PER_SOURCE" --max-new-tokens 256 \
      --batch-size 32 --vocab-size "$VOCAB" --out "$DATA"
    ;;
  vocab)
    coverage=benchmarks/results/draft_vocab_$TARGET
    # measured once: a rerun would rewrite the README, whose size choice is written by hand
    if [ -f "$coverage/coverage.json" ]; then log "$coverage is measured"; continue; fi
    log "Spec-Bench answers and vocabulary coverage"
    .venv/bin/specblock data regen --target "$TARGET" --prompts ../shared/data/eval/spec_bench_question.jsonl \
      --max-new-tokens 128 --batch-size 32 --out "$WORK/data/specbench-$TARGET"
    .venv/bin/python benchmarks/draft_vocab_coverage.py --data "$DATA" --eval "$WORK/data/specbench-$TARGET" \
      --out "$coverage"
    ;;
  specblock | eagle3)
    out=$RUNS/$TARGET-$stage
    if [ -f "$out/drafter/config.json" ]; then log "$out is trained"; continue; fi
    log "train $stage -> $out"
    extra=(--precision auto)
    [ "$stage" = specblock ] && extra+=(--valid-floor "$VALID_FLOOR")
    .venv/bin/specblock train --method "$stage" --target "$TARGET" --data "$DATA" --out "$out" \
      --max-steps "$STEPS" --batch-size 8 --micro-batch 2 --window 128 --lr "$LR" --warmup-steps 100 \
      --intermediate-size "$WIDTH" --eval-every 250 --checkpoint-every 50 --snapshot-every 250 --threads 2 "${extra[@]}"
    ;;
  scaling)
    log "scaling curve"
    .venv/bin/python benchmarks/scaling_curve.py --target "$TARGET" --data "$DATA" \
      --run "$RUNS/$TARGET-specblock" --run "$RUNS/$TARGET-eagle3" --dtype "$SCALING_DTYPE" \
      --out "$SCALING_OUT"
    ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
