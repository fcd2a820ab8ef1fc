#!/usr/bin/env bash
# The engine measurements of issue 14 on this machine, into OUT_DIR: lscpu, the kernel table
# and T(n) in bf16 (with the shipped drafters' D(n) and the auto budget) and fp32, how often
# bf16 speculative output departs from plain bf16 decoding, the Spec-Bench bench, and
# llama.cpp's own llama-bench (if scripts/build_llama_cpp.sh has built it). Not a test; run
# it alone on the machine. RUNS (default 3) sets the bench's runs; a rerun resumes the bench.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: benchmarks/engine_report.sh OUT_DIR}
sb=.venv/bin/specblock
mkdir -p "$out"
lscpu > "$out/lscpu.txt"
date -u +%FT%TZ > "$out/started.txt"
[ -f "$out/profile_bf16/profile.json" ] || $sb profile --target smollm2-135m --dtype bfloat16 --out "$out/profile_bf16"
[ -f "$out/profile_fp32/profile.json" ] || $sb profile --target smollm2-135m --dtype float32 --drafters none --out "$out/profile_fp32"
[ -f "$out/bf16_exactness.json" ] || .venv/bin/python benchmarks/bf16_exactness.py --per-category 2 --max-new-tokens 128 --out "$out"
llama_bench=${SPECBLOCK_CACHE:-$HOME/.cache/specblock}/llama.cpp/build/bin/llama-bench
gguf=$(.venv/bin/python -c "from specblock.models.fetch import gguf_file; print(gguf_file('smollm2-135m'))")
if [ -x "$llama_bench" ] && [ ! -f "$out/llama_bench.md" ]; then
  "$llama_bench" -m "$gguf" -t 2 -p 1,16,64 -n 128 -o md > "$out/llama_bench.md" 2> "$out/llama_bench.log" \
    || echo "llama-bench failed (see $out/llama_bench.log; a crash in batched evaluation means an AMX build: rebuild with scripts/build_llama_cpp.sh)"
fi
$sb bench --target smollm2-135m --data ../shared/data/eval/spec_bench_question.jsonl --per-category 5 \
  --max-new-tokens 256 --methods vanilla,lookup,eagle3@16,specblock@16,eagle3@auto,specblock@auto --temperature 0 \
  --references hf-generate,llama.cpp-server --out "$out/bench" --runs "${RUNS:-3}"
