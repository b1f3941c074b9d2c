#!/usr/bin/env bash
# Builds ldviz with the `cuda` feature on a machine WITHOUT a CUDA toolkit or GPU driver
# (a verified recipe): CUDA 13.0 pip wheels as the toolkit, a link-time stub
# libcuda, and CUDA_COMPUTE_CAP instead of nvidia-smi.
#
#   tools/build-cuda.sh [--compute-cap 90] [--out DIR] [--tests] [-- extra cargo args]
#
# --tests also builds tests/device.rs with the feature (GPU vs CPU log-probs, DPO trajectory,
# bf16 tolerance) as DIR/device-tests, which tools/gpu_check.sh runs on the GPU machine.
# --pack also writes DIR.tar.xz (~20 MB for both binaries, against ~135 MB unpacked: the
# embedded PTX compresses well), which gpu_check.sh unpacks when DIR is absent.
#
# With a real CUDA toolkit installed, `cargo build --release --features cuda` is all you need.
#
# The binary goes to target-cuda/release/ldviz (its own target folder, so the CPU build stays
# warm) and is copied to --out (default: gpu-bin/, git-ignored) for carrying to a GPU machine.
# That machine must provide libcuda.so.1 (the driver), libcublas.so.13, libcublasLt.so.13,
# libcurand.so.10 and libcudart.so.13 (a CUDA 13 runtime); its driver must support CUDA 13.0.
# The cold build takes ~20 min on 2 cores (candle-kernels' nvcc objects); rebuilds take seconds
# as long as CUDA_COMPUTE_CAP and the toolkit path do not change.
set -euo pipefail

CAP=90
OUT=gpu-bin
TESTS=0
PACK=0
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --compute-cap) CAP="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --tests) TESTS=1; shift ;;
    --pack) PACK=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n 2,21p "$0"; exit 0 ;;
    *) echo "build-cuda.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
T="${LDVIZ_CUDA_CACHE:-$HOME/.cache/ldviz-cuda}"
C="$T/py/nvidia/cu13"

if [ ! -x "$C/bin/nvcc" ]; then
  echo "== installing the CUDA 13.0 toolkit wheels into $T/py (~1.2 GB)"
  python3 -m pip install --quiet --no-deps --target "$T/py" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-cccl==13.0.85 \
    nvidia-curand==10.4.0.35 nvidia-cublas==13.0.2.14
fi
(cd "$C/lib" && for l in cublas cublasLt cudart curand nvrtc; do
   f="$(ls lib$l.so.* 2>/dev/null | head -1)"
   [ -n "$f" ] || { echo "build-cuda.sh: lib$l.so.* missing in $C/lib" >&2; exit 1; }
   ln -sf "$f" "lib$l.so"
 done)

echo "== fetching crates (cudarc's sources name the driver symbols for the stub)"
cargo fetch --quiet
CUDARC_SRC="$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-0.19.*/src/driver/sys 2>/dev/null | head -1)"
if [ -z "$CUDARC_SRC" ]; then
  echo "build-cuda.sh: cudarc 0.19 sources not found in ~/.cargo/registry after cargo fetch" >&2
  exit 1
fi
if [ ! -f "$C/lib/stubs/libcuda.so" ]; then
  echo "== building the link-time stub libcuda.so (never put it on a GPU machine's library path)"
  mkdir -p "$C/lib/stubs"
  grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\b' "$C/include/cuda.h" "$CUDARC_SRC"/*.rs \
    | sort -u | awk '{print "void "$1"(void){}"}' > "$C/lib/stubs/stub.c"
  gcc -shared -fPIC -o "$C/lib/stubs/libcuda.so" "$C/lib/stubs/stub.c" -Wl,-soname,libcuda.so.1
fi

export CUDA_HOME="$C" CUDA_PATH="$C" PATH="$C/bin:$PATH" CUDA_COMPUTE_CAP="$CAP" \
  LD_LIBRARY_PATH="$C/lib:$C/lib/stubs" CUDARC_CUDA_VERSION=13000 CUDAFORGE_THREADS=2
echo "== cargo build --release --features cuda (compute capability $CAP)"
CARGO_TARGET_DIR="$ROOT/target-cuda" cargo build --release --features cuda --bin ldviz "${EXTRA[@]}"
mkdir -p "$OUT"
cp "$ROOT/target-cuda/release/ldviz" "$OUT/ldviz"
strip "$OUT/ldviz" 2>/dev/null || true
if [ "$TESTS" = 1 ]; then
  echo "== building tests/device.rs with the cuda feature"
  BIN="$(CARGO_TARGET_DIR="$ROOT/target-cuda" cargo test --release --features cuda --test device \
          --no-run --message-format=json 2>/dev/null \
        | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "device":
        print(m["executable"])' | tail -1)"
  [ -n "$BIN" ] || { echo "build-cuda.sh: the device test binary was not built" >&2; exit 1; }
  cp "$BIN" "$OUT/device-tests"
  strip "$OUT/device-tests" 2>/dev/null || true
fi
echo "== built $OUT/ldviz ($(du -h "$OUT/ldviz" | cut -f1)); needs CUDA 13 libraries and a driver on the GPU machine"
if [ "$PACK" = 1 ]; then
  tar -C "$OUT" -cf - . | xz -T0 -6 > "$OUT.tar.xz"
  echo "== packed $OUT.tar.xz ($(du -h "$OUT.tar.xz" | cut -f1))"
fi
