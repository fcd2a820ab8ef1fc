#!/usr/bin/env bash
# SpecBlock ablations (design §9, issue 4): a full-SpecBlock control and one drafter per removed
# mechanism, all trained on the same data, vocabulary, steps and batches; then one interleaved
# benchmark of all of them at the same node budget. Resumable: a finished training is skipped
# (train resumes from its checkpoint), and the benchmark resumes from its results.jsonl.
#
#   DATA=/work/runs/data-uc-gsm8k RUNS=/work/runs/ablations STEPS=180 bash benchmarks/ablations.sh
#
# Never run it next to another CPU job: the benchmark's timings would be wrong.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:?prepared data directory (specblock data prepare)}
RUNS=${RUNS:?output directory for the ablation drafters}
STEPS=${STEPS:-180}
EVAL_EVERY=${EVAL_EVERY:-60}
BUDGET=${BUDGET:-8}
PER_CATEGORY=${PER_CATEGORY:-5}
OUT=${OUT:-benchmarks/results/ablations_smollm2-135m}
COMMON=(--method specblock --data "$DATA" --max-steps "$STEPS" --batch-size 8 --micro-batch 2 --window 128
        --lr 8e-4 --warmup-steps 20 --valid-floor 0.1 --eval-every "$EVAL_EVERY" --checkpoint-every 20 --threads 2)
declare -A EXTRA=([control]="" [noshift]="--no-layer-shift" [oneblock]="--blocks 1" [novalidprefix]="--no-valid-prefix")
for name in control noshift oneblock novalidprefix; do
  if [ ! -f "$RUNS/$name/drafter/config.json" ]; then
    # shellcheck disable=SC2086
    .venv/bin/specblock train "${COMMON[@]}" --out "$RUNS/$name" ${EXTRA[$name]}
  fi
done
# fixed top-k: the control's weights, drafted with width 4 at every slot after slot 0
if [ ! -f "$RUNS/fixedtopk/config.json" ]; then
  mkdir -p "$RUNS/fixedtopk"
  cp "$RUNS/control/drafter/model.safetensors" "$RUNS/fixedtopk/"
  .venv/bin/python - "$RUNS/control/drafter/config.json" "$RUNS/fixedtopk/config.json" <<'PY'
import json, sys
config = json.load(open(sys.argv[1]))
config["drafting"] = {"fixed_topk": 4}
json.dump(config, open(sys.argv[2], "w"), indent=2)
PY
fi
.venv/bin/specblock bench --target smollm2-135m \
  --methods "vanilla,specblock:control@$BUDGET,specblock:noshift@$BUDGET,specblock:oneblock@$BUDGET,specblock:fixedtopk@$BUDGET,specblock:novalidprefix@$BUDGET" \
  --drafters "specblock:control=$RUNS/control/drafter,specblock:noshift=$RUNS/noshift/drafter,specblock:oneblock=$RUNS/oneblock/drafter,specblock:fixedtopk=$RUNS/fixedtopk,specblock:novalidprefix=$RUNS/novalidprefix/drafter" \
  --data ../shared/data/eval/spec_bench_question.jsonl --per-category "$PER_CATEGORY" --runs 1 --max-new-tokens 128 \
  --compare "specblock:control@$BUDGET,specblock:noshift@$BUDGET" --out "$OUT"
