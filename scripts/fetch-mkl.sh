#!/usr/bin/env bash
# Fetches Intel MKL's runtime libraries from PyPI (the `mkl` wheel) into llm-attr's cache, where
# `--dtype bf16` on the CPU finds them: llm-attr loads libmkl_rt at run time (never links it) and
# calls cblas_gemm_bf16bf16f32 (AMX or AVX512-BF16, f32 accumulation). Linux x86_64 only.
#
#   scripts/fetch-mkl.sh            # ~/.cache/llm-attr/mkl/mkl-<version>.data/data/lib/libmkl_rt.so.3
#   MKL_VERSION=2026.2.1 scripts/fetch-mkl.sh
#
# LLM_ATTR_CACHE moves the cache (default ${XDG_CACHE_HOME:-~/.cache}/llm-attr); LLM_ATTR_MKL
# points llm-attr at any other directory holding libmkl_rt.so.3 (or at the file itself).
# Needs python3 with pip and network access to PyPI. About 690 MB unpacked (a 230 MB wheel).
set -euo pipefail
VERSION=${MKL_VERSION:-2026.2.1}
CACHE=${LLM_ATTR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llm-attr}
WHEELS="$CACHE/wheels/mkl"
LIB="$CACHE/mkl/mkl-$VERSION.data/data/lib"
if [ -f "$LIB/libmkl_rt.so.3" ]; then
  echo "$LIB/libmkl_rt.so.3"
  exit 0
fi
mkdir -p "$WHEELS" "$CACHE/mkl"
python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
  --python-version 3 --implementation py -d "$WHEELS" "mkl==$VERSION" >&2
wheel=$(find "$WHEELS" -maxdepth 1 -name "mkl-$VERSION-*.whl" | sort | tail -1)
[ -n "$wheel" ] || { echo "no mkl $VERSION wheel was downloaded into $WHEELS" >&2; exit 1; }
python3 -m zipfile -e "$wheel" "$CACHE/mkl"
[ -f "$LIB/libmkl_rt.so.3" ] || { echo "$wheel has no data/lib/libmkl_rt.so.3" >&2; exit 1; }
echo "$LIB/libmkl_rt.so.3"
