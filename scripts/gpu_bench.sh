#!/usr/bin/env bash
# The real-shape table of README "Performance" on one GPU (issue 19): Wan2.1-1.3B at 832x480, bf16 and FP8,
# eager / compiled / compiled + CUDA graphs, Wan VAE and TAEHV (random weights: time does not depend on
# their values), transformer-only and end-to-end FPS with the decode overlapped as `memrope generate` runs
# it. Then the GPU tests (CUDA graphs, FP8, the memory plan against the allocator, two-GPU split if two).
#
#   scripts/gpu_bench.sh [OUT_DIR]        # about 20-30 minutes on an H100 (compilation included)
#
# Needs: a CUDA build of PyTorch, `pip install -e '.[test,fp8]'`, diffusers (the Wan VAE architecture).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench-gpu}"
mkdir -p "$out"
common=(--config wan-1.3b --latent 60x104 --chunks 24 --warmup 8 --policies memrope,sliding_window --order sequential)
for decoder in wan taehv; do
  for fp8 in none dynamic; do
    for fast in eager compile graphs; do
      args=("${common[@]}" --decoder "$decoder" --overlap-decode)
      [ "$fp8" != none ] && args+=(--fp8 "$fp8")
      [ "$fast" = compile ] && args+=(--compile)
      [ "$fast" = graphs ] && args+=(--compile --cuda-graphs)
      name="$out/${decoder}_${fp8}_${fast}"
      echo "== $name" >&2
      memrope bench "${args[@]}" --out "$name.json" 2> "$name.txt" || echo "failed: $name (see $name.txt)" >&2
      grep -A6 '^hardware' "$name.txt" >&2 || true
    done
  done
done
# the memory plan of the same run against a 24 GB card, and the GPU tests
memrope plan --model self-forcing --height 480 --width 832 --device cuda --dtype bfloat16 --memory-budget 24GiB \
  > "$out/plan_24GiB_vae.txt"
memrope plan --model self-forcing --height 480 --width 832 --device cuda --dtype bfloat16 --memory-budget 24GiB \
  --decoder taehv > "$out/plan_24GiB_taehv.txt"
python -m pytest -q -m gpu -s tests/ | tee "$out/gpu_tests.txt"
