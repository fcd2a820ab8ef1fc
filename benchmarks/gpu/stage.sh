#!/usr/bin/env bash
# Stage what the GPU benchmark needs in .gpu/ (git-ignored), on this machine, before any
# device call: the default target's GGUF in chunks small enough to travel beside the
# working tree (the shipped drafters alone are ~40 MB of the 64 MiB a call may carry),
# the `gguf` wheel the device image lacks, and the Spec-Bench question file.
#
#   bash benchmarks/gpu/stage.sh            # then follow benchmarks/gpu/README.md
set -euo pipefail
cd "$(dirname "$0")/../.."
CHUNK_MB=${CHUNK_MB:-20}
GGUF=${GGUF:-${SPECBLOCK_CACHE:-$HOME/.cache/specblock}/gguf/smollm2-135m.gguf}
QUESTIONS=${QUESTIONS:-../shared/data/eval/spec_bench_question.jsonl}
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
[ -f "$GGUF" ] || .venv/bin/specblock models fetch smollm2-135m
echo "$SHA  $GGUF" | sha256sum -c --quiet
rm -rf .gpu && mkdir -p .gpu/gguf .gpu/wheels
split -b "${CHUNK_MB}M" -d -a 2 "$GGUF" .gpu/gguf/part-
echo "$SHA" > .gpu/gguf/sha256
# the device runs Python 3.12; gguf is pure Python (its needs, numpy/pyyaml/tqdm, are there)
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: -d .gpu/wheels "gguf==$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("gguf"))')"
cp "$QUESTIONS" .gpu/questions.jsonl
echo "staged:"; ls -l .gpu/gguf .gpu/wheels .gpu/questions.jsonl
echo "device calls: one 'receive' per chunk (carry .gpu/gguf/part-NN; the first also carries .gpu/wheels and .gpu/questions.jsonl), then 'bench'"
