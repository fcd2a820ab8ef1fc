#!/usr/bin/env bash
# Build llama.cpp (llama-server, llama-bench, llama-cli) from the sources vendored in the
# pinned llama-cpp-python sdist, for `specblock bench --references llama.cpp*`. Not part of
# setup: it compiles for about 10 minutes on 2 cores. Safe to re-run (it reuses the build).
#
# Why not -DGGML_NATIVE=ON: on the Xeon (Sapphire Rapids) VMs this project runs on, the native
# build uses AMX tiles and dies in batched evaluation (illegal instruction or segfault). So the
# instruction set is named explicitly: AVX-512 (+BF16, VNNI) when the CPU has it, else AVX2.
#
# Usage: bash scripts/build_llama_cpp.sh [OUT_DIR]   (default ~/.cache/specblock/llama.cpp)
set -euo pipefail
VERSION=0.3.36
out=${1:-${SPECBLOCK_CACHE:-$HOME/.cache/specblock}/llama.cpp}
mkdir -p "$out"
cd "$out"
if [ ! -d src ]; then
  python3 -m pip download --quiet --no-deps --no-binary=:all: "llama-cpp-python==$VERSION" -d sdist
  tar -xzf sdist/llama_cpp_python-$VERSION.tar.gz
  mv llama_cpp_python-$VERSION/vendor/llama.cpp src
  rm -rf llama_cpp_python-$VERSION
fi
# EAGLE-3 on a Qwen2 target (qwen2.5-coder): the pinned llama.cpp hands the drafter the inputs
# of the target's layers (`t_layer_inp`) from the Llama and Qwen3 graphs but not from Qwen2's, so
# drafting aborts with "layer input tensor is null". The one line Llama's graph has is added to
# Qwen2's (the same tensor: each layer's input); without drafting it changes nothing.
qwen2=src/src/models/qwen2.cpp
if ! grep -q 't_layer_inp' "$qwen2"; then
  sed -i 's|^\(    for (int il = 0; il < n_layer; ++il) {\)$|\1\n        res->t_layer_inp[il] = inpL;|' "$qwen2"
  grep -q 't_layer_inp' "$qwen2" || { echo "could not add the EAGLE-3 feature capture to $qwen2"; exit 1; }
  echo "patched $qwen2: EAGLE-3 feature capture for Qwen2 targets"
fi
flags=(-DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF -DCMAKE_BUILD_TYPE=Release
       -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON)
cpu_flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
has() { [[ " $cpu_flags " == *" $1 "* ]]; }
if has avx512f && has avx512bw && has avx512vl; then
  flags+=(-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON)
  has avx512_bf16 && flags+=(-DGGML_AVX512_BF16=ON)
  has avx512_vnni && flags+=(-DGGML_AVX512_VNNI=ON)
  has avx512vbmi && flags+=(-DGGML_AVX512_VBMI=ON)
elif has avx2; then
  flags+=(-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON)
fi
echo "cmake ${flags[*]}"
cmake -S src -B build "${flags[@]}" > cmake.log
cmake --build build -j "$(nproc)" --target llama-server llama-bench llama-cli > build.log 2>&1 || {
  tail -30 build.log; echo "llama.cpp build failed (log: $out/build.log)"; exit 1; }
echo "built: $out/build/bin/{llama-server,llama-bench,llama-cli}"
