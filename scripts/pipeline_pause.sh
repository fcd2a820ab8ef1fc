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
descendants() { local p; for p in $(ps -o pid= --ppid "$1"); do echo "$p"; descendants "$p"; done; }
roots=$(pgrep -f "benchmarks/pipeline_[a-z0-9]*[.]sh" || true)
if [ -z "$roots" ]; then echo "no pipeline is running"; exit 0; fi
pids=$(for r in $roots; do echo "$r"; descendants "$r"; done | sort -un)
if [ "$sig" = STOP ] && [ "${FORCE:-0}" != 1 ]; then
  for p in $pids; do
    if tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -q -e "calibrate_drafter[.]py" -e "specblock profile"; then
      echo "a calibration or profile is timing drafters now: a stop would skew it (FORCE=1 stops anyway)" >&2
      exit 1
    fi
  done
fi
kill -s "$sig" $pids 2>/dev/null || true  # a process that ended since the listing is no error
echo "$1: $(echo "$pids" | wc -w) processes"
