#!/usr/bin/env bash
# Stop or continue every process of the running pipelines (benchmarks/pipeline_*.sh and what
# they started), e.g. to lend the 2 cores to a test run:
#
#   bash scripts/pipeline_pause.sh stop && .venv/bin/python -m pytest; bash scripts/pipeline_pause.sh cont
#
# Training and regen just wait. A benchmark row timed across the stop is measured again
# (docs/benchmarking.md, "Pausing"); drafting times measured by a calibration or a profile are
# not protected, so the script refuses to stop those unless FORCE=1. Keep a stop under 10
# minutes during a benchmark's llama.cpp rows (their requests time out after 600 s).
set -euo pipefail
case ${1:-} in
  stop) sig=STOP ;;
  cont) sig=CONT ;;
  *) echo "usage: $0 stop|cont" >&2; exit 2 ;;
esac
descendants() {  # not into this script's own subtree (its subshells, ps, pgrep)
  local p
  for p in $(ps -o pid= --ppid "$1"); do
    [ "$p" = $$ ] && continue
    echo "$p"; descendants "$p"
  done
}
ancestors() { local p=$$; while [ "$p" -gt 1 ]; do echo "$p"; p=$(ps -o ppid= -p "$p" | tr -d ' '); done; }
mine=" $(ancestors | tr '\n' ' ') "  # this script and its callers: never stop those
tree() {  # every process of the running pipelines, but for ours
  local r p
  for r in $(pgrep -f "benchmarks/pipeline_[a-z0-9]*[.]sh"); do
    for p in "$r" $(descendants "$r"); do
      case $mine in *" $p "*) ;; *) echo "$p" ;; esac
    done
  done | sort -un
}
pids=$(tree)
if [ -z "$pids" ]; then echo "no pipeline is running"; exit 0; fi
if [ "$sig" = STOP ] && [ "${FORCE:-0}" != 1 ]; then
  for p in $pids; do
    if { tr '\0' ' ' < "/proc/$p/cmdline"; } 2>/dev/null | grep -q -e "calibrate_drafter[.]py" -e "specblock profile"; then
      echo "a calibration or profile is timing drafters now: a stop would skew it (FORCE=1 stops anyway)" >&2
      exit 1
    fi
  done
fi
# a process that was not stopped yet may start a child meanwhile: signal until the tree stays the same
for _ in 1 2 3 4 5; do
  kill -s "$sig" $pids 2>/dev/null || true  # a process that ended since the listing is no error
  again=$(tree)
  [ "$again" = "$pids" ] && break
  pids=$again
done
echo "$1: $(echo "$pids" | wc -w) processes"
