#!/usr/bin/env bash
# SpecBlock ablations (design §9, issues 4 and 15): one drafter per removed mechanism, trained
# on the same data, vocabulary, schedule and batches as the control; then one interleaved
# benchmark of all of them at the same node budget, with paired tests against the control.
# Resumable: a finished training is skipped (train resumes from its checkpoint), and the
# benchmark resumes from its results.jsonl.
#
#   Issue 4 (each variant and the control trained to the end of a short schedule):
#   DATA=/work/runs/data-uc-gsm8k RUNS=/work/runs/ablations STEPS=180 bash benchmarks/ablations.sh
#
#   Issue 15 (budgeted: the variants follow the full run's 3,000-step schedule but stop at
#   STOP_AT; the control is the full run's own snapshot at that step, so it is not trained again):
#   DATA=/work/data/regen-smollm2-135m RUNS=/work/runs/ablations-15 STEPS=3000 STOP_AT=1000 \
#     CONTROL_RUN=/work/runs/smollm2-135m-specblock WARMUP=100 EVAL_EVERY=250 BUDGET=16 \
#     DATA_Q=heldout.jsonl OUT=benchmarks/results/ablations_smollm2-135m_15 bash benchmarks/ablations.sh
#
#   Issue 15 on the 1.5B (its compact width; the control is the main run's snapshot at step 500,
#   trained at valid floor 1.0; floor0_1 is the earlier main run at 0.1, stopped past step 500):
#   TARGET=qwen2.5-coder-1.5b WIDTH=1472 DATA=/work/data/regen-qwen2.5-coder-1.5b \
#     RUNS=/work/runs/ablations-qwen STEPS=1500 STOP_AT=500 CONTROL_RUN=/work/runs/qwen2.5-coder-1.5b-specblock \
#     VALID_FLOOR=1.0 VARIANTS="noshift oneblock novalidprefix floor0_1" \
#     WARMUP=100 EVAL_EVERY=250 BUDGET=8 DATA_Q=heldout.jsonl OUT=benchmarks/results/ablations_qwen2.5-coder-1.5b \
#     bash benchmarks/ablations.sh
#
# Never run it next to another CPU job: the benchmark's timings would be wrong.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:?prepared data directory (specblock data prepare / data regen)}
TARGET=${TARGET:-smollm2-135m}
WIDTH=${WIDTH:-0}              # the drafters' MLP width (0 = the target's); the control's
RUNS=${RUNS:?output directory for the ablation drafters}
STEPS=${STEPS:-180}
STOP_AT=${STOP_AT:-0}          # > 0: stop every variant after this step of the STEPS schedule
CONTROL_RUN=${CONTROL_RUN:-}   # with STOP_AT: the full run whose snapshot at STOP_AT is the control
WARMUP=${WARMUP:-20}
EVAL_EVERY=${EVAL_EVERY:-60}
BUDGET=${BUDGET:-8}
PER_CATEGORY=${PER_CATEGORY:-5}
DATA_Q=${DATA_Q:-../shared/data/eval/spec_bench_question.jsonl}
OUT=${OUT:-benchmarks/results/ablations_smollm2-135m}
VALID_FLOOR=${VALID_FLOOR:-0.1}  # the control's --valid-floor (the 1.5B's: 1.0)
# the variants trained here; floor0_1 is the control with --valid-floor 0.1 (for a control at another floor)
VARIANTS=${VARIANTS:-noshift shiftslot0 oneblock novalidprefix}
COMMON=(--method specblock --target "$TARGET" --intermediate-size "$WIDTH" --data "$DATA" --max-steps "$STEPS"
        --stop-at "$STOP_AT" --batch-size 8 --micro-batch 2
        --window 128 --lr 8e-4 --warmup-steps "$WARMUP" --eval-every "$EVAL_EVERY"
        --checkpoint-every 20 --threads 2)
declare -A EXTRA=([control]="" [noshift]="--no-layer-shift" [shiftslot0]="--shift-slot0" [oneblock]="--blocks 1"
                  [novalidprefix]="--no-valid-prefix" [floor0_1]="")
floor_of() { if [ "$1" = floor0_1 ]; then echo 0.1; else echo "$VALID_FLOOR"; fi; }
# where a variant's drafter lands: the end of the schedule, or its snapshot at STOP_AT
drafter_of() {
  if [ "$STOP_AT" -gt 0 ]; then printf '%s/snapshots/step-%06d' "$1" "$STOP_AT"; else printf '%s/drafter' "$1"; fi
}
read -r -a variants <<< "$VARIANTS"
if [ -n "$CONTROL_RUN" ]; then
  [ "$STOP_AT" -gt 0 ] || { echo "CONTROL_RUN needs STOP_AT" >&2; exit 2; }
  for name in "${variants[@]}"; do
    [ "$name" != control ] || { echo "CONTROL_RUN is the control: leave control out of VARIANTS" >&2; exit 2; }
  done
  control_dir=$(drafter_of "$CONTROL_RUN")
  [ -f "$control_dir/config.json" ] || { echo "no control snapshot $control_dir yet" >&2; exit 2; }
else
  variants=(control "${variants[@]}")
  control_dir=$(drafter_of "$RUNS/control")
fi
for name in "${variants[@]}"; do
  if [ ! -f "$(drafter_of "$RUNS/$name")/config.json" ]; then
    # shellcheck disable=SC2086
    .venv/bin/specblock train "${COMMON[@]}" --valid-floor "$(floor_of "$name")" --out "$RUNS/$name" ${EXTRA[$name]}
  fi
done
# fixed top-k: the control's weights, drafted with width 4 at every slot after slot 0
if [ ! -f "$RUNS/fixedtopk/config.json" ]; then
  mkdir -p "$RUNS/fixedtopk"
  cp "$control_dir/model.safetensors" "$RUNS/fixedtopk/"
  .venv/bin/python - "$control_dir/config.json" "$RUNS/fixedtopk/config.json" <<'PY'
import json, sys
config = json.load(open(sys.argv[1]))
config["drafting"] = {"fixed_topk": 4}
json.dump(config, open(sys.argv[2], "w"), indent=2)
PY
fi
# which drafter each variant is, for ablation_report.py (its held-out chain tau comes from the run's log)
names=(control fixedtopk)
listed=("$control_dir" "$RUNS/fixedtopk")
for name in "${variants[@]}"; do
  [ "$name" = control ] && continue
  names+=("$name")
  listed+=("$(drafter_of "$RUNS/$name")")
done
.venv/bin/python - "$RUNS/drafters.json" "${names[*]}" "${listed[@]}" <<'PY'
import json, sys
names = sys.argv[2].split()
json.dump(dict(zip(names, sys.argv[3:])), open(sys.argv[1], "w"), indent=2)
PY
drafters=""
methods="vanilla"
for name in "${names[@]}"; do
  dir=$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$RUNS/drafters.json" "$name")
  drafters="$drafters${drafters:+,}specblock:$name=$dir"
  methods="$methods,specblock:$name@$BUDGET"
done
.venv/bin/specblock bench --target "$TARGET" --methods "$methods" --drafters "$drafters" \
  --data "$DATA_Q" --per-category "$PER_CATEGORY" --runs 1 --max-new-tokens 128 \
  --compare "specblock:control@$BUDGET,specblock:${names[2]:-fixedtopk}@$BUDGET" --out "$OUT"
.venv/bin/python benchmarks/ablation_report.py --bench "$OUT" --runs "$RUNS"
