#!/usr/bin/env bash
# Builds llm-attr with the CUDA backend (cargo feature `cuda`) on a Linux x86_64 machine with no
# GPU and no CUDA install: CUDA 13.0 comes from PyPI wheels (nvcc, headers, CCCL, cuBLAS, cuRAND,
# NVRTC) in a venv, and the linker gets a stub libcuda.so; at run time the NVIDIA driver's real one
# is loaded. Needs python3 (with venv), a C compiler and network access to PyPI and crates.io.
#
#   scripts/build-cuda.sh                        # target/release/llm-attr
#   CUDA_COMPUTE_CAP=80 scripts/build-cuda.sh    # kernels for A100 (default 90: H100/H200)
#   scripts/build-cuda.sh --tests                # also the device-parity test binary, both in
#                                                # $CARGO_TARGET_DIR/gpu-check(.tar.gz) for gpu-check.sh
#   scripts/build-cuda.sh --env                  # only print the environment to export
#
# CUDA_WHEELS_DIR (default ~/.cache/cuda13-wheels) holds the venv and the stub. CARGO_TARGET_DIR
# is honoured. Why 13.0: the binary links libcublas.so.13, libcurand.so.10 and libcuda.so.1, which
# a machine with driver >= 580 and the CUDA 13 runtime libraries finds without a library path.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${CUDA_WHEELS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cuda13-wheels}

toolchain() {
  mkdir -p "$DIR/stub"
  [ -x "$DIR/venv/bin/python" ] || python3 -m venv "$DIR/venv" >&2
  "$DIR/venv/bin/pip" install -q nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 \
    nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85 nvidia-nvvm==13.0.88 nvidia-cublas==13.1.0.3 \
    nvidia-cuda-nvrtc==13.0.88 nvidia-curand==10.4.0.35 >&2
  local cuda lib f bind
  cuda=$("$DIR/venv/bin/python" -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13'))")
  # The linker wants unversioned names; the wheels ship only libX.so.N.
  for lib in cublas cublasLt cudart curand nvrtc; do
    f=$(find "$cuda/lib" -maxdepth 1 -name "lib$lib.so.*" ! -name '*builtins*' | sort | head -1)
    [ -n "$f" ] && ln -sf "$(basename "$f")" "$cuda/lib/lib$lib.so"
  done
  # libcuda.so is the driver, present only where a GPU is. Link against a stub that defines every
  # driver function cudarc binds (soname libcuda.so.1); the real driver is loaded at run time.
  cargo fetch --locked >&2
  bind=$(find "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/ -maxdepth 5 -path '*cudarc-0.19*/src/driver/sys/mod.rs' | sort -V | tail -1)
  [ -n "$bind" ] || { echo "cudarc 0.19's sources are not in the cargo registry" >&2; exit 1; }
  grep -oE "fn cu[A-Za-z0-9_]+\(" "$bind" | sed 's/^fn //; s/($//' | sort -u |
    awk '{print "void " $1 "(void) {}"}' >"$DIR/stub/stub.c"
  cc -shared -o "$DIR/stub/libcuda.so" -Wl,-soname,libcuda.so.1 "$DIR/stub/stub.c"
  cat <<ENV
export PATH="$cuda/bin:\$PATH" CUDA_ROOT="$cuda" CUDA_PATH="$cuda" CUDA_TOOLKIT_ROOT_DIR="$cuda" CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90} LIBRARY_PATH="$cuda/lib:$DIR/stub\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
ENV
}

tests=false
args=()
for a in "$@"; do
  case "$a" in
    --env) toolchain; exit 0 ;;
    --tests) tests=true ;;
    *) args+=("$a") ;;
  esac
done
eval "$(toolchain)"
echo "building with CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP" >&2
cargo build --release --locked --features cuda --bin llm-attr ${args[@]+"${args[@]}"}
if $tests; then
  # What scripts/gpu-check.sh runs, under fixed names: $CARGO_TARGET_DIR/gpu-check/.
  target=${CARGO_TARGET_DIR:-target}
  parity=$(cargo test --release --locked --features cuda --test device_parity --no-run \
    --message-format=json ${args[@]+"${args[@]}"} | sed -n 's/.*"executable":"\([^"]*device_parity[^"]*\)".*/\1/p' | tail -1)
  mkdir -p "$target/gpu-check"
  cp "$target/release/llm-attr" "$target/gpu-check/llm-attr"
  cp "$parity" "$target/gpu-check/device_parity"
  strip "$target/gpu-check/llm-attr" "$target/gpu-check/device_parity" 2>/dev/null || true
  # Both binaries are ~70 MB, over the GPU tool's 64 MiB carry limit; gzipped ~20 MB.
  tar -C "$target" -czf "$target/gpu-check.tar.gz" gpu-check
  ls -la "$target/gpu-check" "$target/gpu-check.tar.gz"
fi
