#!/usr/bin/env bash
# The GPU verification, as one script for a GPU machine (run from the repository
# root with the binaries of `tools/build-cuda.sh --tests` in gpu-bin/):
#   1. the GPU and driver;
#   2. tests/device.rs on the GPU: fixture log-probs vs the CPU (1e-3), the 6-step SGD DPO
#      trajectory vs the CPU (1e-3 relative), bf16 within the documented tolerance;
#   3. `ldviz bench --device cuda --preset pythia-410m` in f32 and bf16, each followed by the
#      PyTorch reference on the same GPU (tools/bench_torch_gpu.py) when torch is installed.
# Output: human-readable lines plus the JSON of each benchmark; exit status 1 if a test fails.
set -uo pipefail
BIN=${BIN:-gpu-bin}
REPS=${REPS:-5}
status=0
if [ ! -x "$BIN/ldviz" ] && [ -f "$BIN.tar.xz" ]; then
  mkdir -p "$BIN" && xz -dc "$BIN.tar.xz" | tar -C "$BIN" -xf -
fi
echo "== GPU"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
echo "== correctness (tests/device.rs on the GPU)"
"$BIN/device-tests" --nocapture --test-threads 1 2>&1 | grep -vE "^\s*$" || status=1
for dt in f32 bf16; do
  echo "== ldviz bench --device cuda --preset pythia-410m --dtype $dt"
  "$BIN/ldviz" bench --device cuda --preset pythia-410m --dtype "$dt" --reps "$REPS" --json || status=1
  if python3 -c "import torch, transformers; assert torch.cuda.is_available()" 2>/dev/null; then
    echo "== PyTorch (tools/bench_torch_gpu.py --dtype $dt)"
    python3 tools/bench_torch_gpu.py --dtype "$dt" --reps "$REPS" || status=1
  else
    echo "== PyTorch reference skipped: torch with CUDA is not installed here"
  fi
done
exit $status
