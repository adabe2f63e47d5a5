#!/usr/bin/env bash
# One prepared check of the CUDA backend on a GPU machine where nothing can be fetched. Run from
# the repository root (tracked files: tests/fixtures, examples, scripts) with the two binaries
# that `scripts/build-cuda.sh --tests` leaves in $CARGO_TARGET_DIR/gpu-check/ (llm-attr and
# device_parity; carry target-cuda/gpu-check.tar.gz, ~20 MB, it is unpacked here), plus python3
# with torch and safetensors on the machine. It:
#   1. prints the GPU;
#   2. checks parity on tiny-gpt2 and every family fixture (f32 1e-3, f16 3e-2, bf16 1e-1 against
#      transformers' f32 references; greedy ids; Captum's t1 and gradient methods in f32):
#      tests/device_parity.rs;
#   3. times every method on t1 (sampled and exact baselines) at SmolLM2-135M's shape in f32;
#   4. times exact t1 at Llama-3.2-1B's and Llama-3.1-8B's shapes in bf16;
#   5. times the gradient methods on examples/t1_grad.json at all three shapes,
# on random weights built there (scripts/random_model.py). It compares exact t1 with the issue's
# H200 numbers for Captum 0.9 and one batched PyTorch pass, and with that pass timed there on the
# same model (scripts/torch_pass.py); the gradient methods with Captum's on the same model and
# GPU where python has captum (scripts/captum_time.py; carry its wheel). Under 8 minutes on an
# H200; a shape that would start after DEADLINE seconds (default 420) is skipped and reported,
# so the check always ends in time.
#
#   scripts/gpu-check.sh [--bin-dir DIR] [--device cuda:N] [--shapes "smollm2-135m llama-1b llama-8b"]
#                        [--only gradients]   # step 5 alone
#   scripts/gpu-check.sh --bin-dir target/debug --device cpu --shapes mini   # the plumbing, on a CPU
#
# PYTHON (default python3) builds the models; WORK (default /dev/shm when it has room, else
# /tmp) holds them. Exit status: 1 when a parity check or a run failed; timings are reported, not
# enforced.
set -uo pipefail
cd "$(dirname "$0")/.."

bin_dir=target-cuda/gpu-check
device=cuda
shapes="smollm2-135m llama-1b llama-8b"
only=all
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin_dir=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --shapes) shapes=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
PYTHON=${PYTHON:-python3}
# What was carried may be the gzipped form (the binaries alone exceed the carry limit).
if [ ! -d "$bin_dir" ] && [ -f "$bin_dir.tar.gz" ]; then
  tar -C "$(dirname "$bin_dir")" -xzf "$bin_dir.tar.gz"
fi
llm_attr=$bin_dir/llm-attr
parity=$(find "$bin_dir" -maxdepth 1 -type f -name 'device_parity*' -perm -u+x 2>/dev/null | head -1)
[ -x "$llm_attr" ] || { echo "no $llm_attr: build it with scripts/build-cuda.sh --tests" >&2; exit 2; }
if [ -z "${WORK:-}" ]; then
  shm_free_gb=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 { print int($4 / 1048576) }')
  if [ "${shm_free_gb:-0}" -ge 24 ]; then WORK=/dev/shm/llm-attr-gpu-check; else WORK=/tmp/llm-attr-gpu-check; fi
fi
mkdir -p "$WORK"
rm -f "$WORK/failed"
# Set from subshells too (command substitutions), hence a file.
fail() { touch "$WORK/failed"; }
started=$SECONDS
step() { printf '\n== %s (%ds)\n' "$1" $((SECONDS - started)); }

step "GPU"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=index,name,driver_version,memory.total,compute_cap --format=csv
else
  echo "no nvidia-smi"
fi
"$llm_attr" --version
# Where each CUDA library resolved (or "not found"), for when the device fails to start.
ldd "$llm_attr" | grep -E 'libcu|libnvrtc|not found' | sed 's/^\s*/  /'

step "parity on the fixtures ($device)"
if [ "$only" = gradients ]; then
  echo "skipped (--only gradients)"
elif [ -n "$parity" ]; then
  LLM_ATTR_TEST_DEVICE=$device LLM_ATTR_FIXTURES=$PWD/tests/fixtures RUST_BACKTRACE=0 \
    timeout 180 "$parity" --test-threads=1 --nocapture >"$WORK/parity.log" 2>&1 || fail
  grep -E "largest|^test |test result|panicked|^thread" "$WORK/parity.log"
else
  echo "no device_parity binary in $bin_dir: skipped (scripts/build-cuda.sh --tests builds it)"
  fail
fi

# shape -> "dtype  Captum fa  Captum sv  Captum svs  PyTorch batched exact pass" (H200, seconds)
reference() {
  case "$1" in
    smollm2-135m) echo "f32 1.38 4.82 16.7 0.081" ;;
    llama-1b) echo "bf16 0.47 2.00 8.5 0.045" ;;
    llama-8b) echo "bf16 1.16 6.06 16.2 0.141" ;;
    *) echo "f32 - - - -" ;;
  esac
}

# bench SHAPE DTYPE REQUEST METHODS [ARGS...]: the bench table on stdout, the load line on stderr.
bench() {
  local dir=$WORK/$1 methods=()
  [ -n "$4" ] && methods=(--methods "$4")
  timeout 300 "$llm_attr" bench --model "$dir" --request "$3" --device "$device" --dtype "$2" \
    --repeats 3 "${methods[@]}" "${@:5}" 2>"$WORK/$1.log"
  local rc=$?
  sed 's/\x1b\[[0-9;]*m//g' "$WORK/$1.log" | grep -o 'model loaded.*' | head -1 | sed 's/^/  /'
  [ $rc = 0 ] || { tail -5 "$WORK/$1.log"; fail; }
}

# median seconds of METHOD in a bench table on stdin
median_of() { awk -v m="$1" '$1 == m { print $6 }'; }

# gradients SHAPE DTYPE TORCH_DTYPE: llm-attr's gradient methods on examples/t1_grad.json, in the
# device's layout and in the CPU's, and Captum's on the same model and GPU where python has
# captum (carry its wheel).
gradients() {
  local table captum m ours theirs
  table=$(bench "$1" "$2" examples/t1_grad.json ig,gxi,gs)
  echo "$table"
  echo "  the same with --gradient-passes per-token (the CPU's layout):"
  bench "$1" "$2" examples/t1_grad.json ig,gxi,gs --gradient-passes per-token
  if ! "$PYTHON" -c "import captum" 2>/dev/null; then
    echo "  no captum for $PYTHON: Captum's gradient methods are not timed here"
    return
  fi
  captum=$(timeout 180 "$PYTHON" scripts/captum_time.py --model "$WORK/$1" --request examples/t1_grad.json \
    --dtype "$3" 2>"$WORK/$1-captum.log")
  [ -n "$captum" ] || { tail -5 "$WORK/$1-captum.log"; fail; return; }
  echo "$captum"
  for m in integrated_gradients gradient_x_input; do
    ours=$(echo "$table" | median_of "$m")
    theirs=$(echo "$captum" | grep "captum $m:" | grep -o 'median [0-9.]*' | cut -d' ' -f2)
    [ -n "$ours" ] && [ -n "$theirs" ] && awk -v n="$m" -v o="$ours" -v c="$theirs" 'BEGIN {
      printf "  %-22s llm-attr %.4fs  Captum here %.4fs  Captum / llm-attr %.2f\n", n, o, c, c / o }'
  done
}

for shape in $shapes; do
  read -r dtype fa sv svs pass <<<"$(reference "$shape")"
  if [ $((SECONDS - started)) -gt "${DEADLINE:-420}" ]; then
    step "$shape: skipped, past the ${DEADLINE:-420}s deadline"
    fail
    continue
  fi
  step "$shape ($dtype): random weights"
  torch_dtype=$(case $dtype in f32) echo float32 ;; bf16) echo bfloat16 ;; *) echo float16 ;; esac)
  if ! timeout 240 "$PYTHON" scripts/random_model.py --shape "$shape" --dtype "$torch_dtype" --out "$WORK/$shape"; then
    fail
    continue
  fi
  if [ "$only" = gradients ]; then
    step "$shape: gradient methods, examples/t1_grad.json"
    gradients "$shape" "$dtype" "$torch_dtype"
    rm -rf "${WORK:?}/$shape"
    continue
  fi
  if [ "$shape" = llama-1b ] || [ "$shape" = llama-8b ]; then
    step "$shape: exact t1"
    table=$(bench "$shape" "$dtype" examples/t1.json shapley_values)
    echo "$table"
    step "$shape: gradient methods, examples/t1_grad.json"
    gradients "$shape" "$dtype" "$torch_dtype"
  else
    step "$shape: every method, t1 with sampled baselines"
    sampled=$(bench "$shape" "$dtype" examples/t1_sample.json "")
    echo "$sampled"
    step "$shape: every method, t1 with exact baselines"
    table=$(bench "$shape" "$dtype" examples/t1.json "")
    echo "$table"
    step "$shape: gradient methods, examples/t1_grad.json (Captum on 2 CPU cores: IG 66.9s, gxi 4.50s)"
    gradients "$shape" "$dtype" "$torch_dtype"
    if [ "$fa" != - ]; then
      for m in "feature_ablation $fa" "shapley_values $sv" "shapley_value_sampling $svs"; do
        read -r name captum <<<"$m"
        ours=$(echo "$sampled" | median_of "$name")
        [ -n "$ours" ] && awk -v n="$name" -v o="$ours" -v c="$captum" 'BEGIN {
          printf "  %-24s sampled %.4fs  Captum %.2fs  %.0fx faster (goal >= 20x)%s\n", n, o, c, c / o,
            (c / o >= 20 ? "" : "  MISSED") }'
      done
    fi
  fi
  step "$shape: the PyTorch batched pass over t1's exact-product prompts, here"
  live=$(timeout 120 "$PYTHON" scripts/torch_pass.py --model "$WORK/$shape" --request examples/t1.json \
    --dtype "$torch_dtype" 2>"$WORK/$shape-torch.log" | tee /dev/stderr | grep -o 'median [0-9.]*' | cut -d' ' -f2)
  [ -n "$live" ] || { tail -5 "$WORK/$shape-torch.log"; fail; }
  ours=$(echo "$table" | median_of shapley_values)
  if [ -n "$ours" ]; then
    for p in "issue $pass" "here ${live:--}"; do
      read -r where seconds <<<"$p"
      [ "$seconds" = - ] && continue
      awk -v o="$ours" -v p="$seconds" -v w="$where" 'BEGIN {
        printf "  exact t1 (shapley_values) %.4fs; PyTorch batched pass (%s) %.4fs; ratio %.2f (goal <= 1.5)%s\n",
          o, w, p, o / p, (o / p <= 1.5 ? "" : "  MISSED") }'
    done
  fi
  rm -rf "${WORK:?}/$shape"
done

step "done"
if [ -e "$WORK/failed" ]; then
  echo "SOME CHECKS FAILED (see above; logs in $WORK)"
  exit 1
fi
echo "all checks passed and every run finished"
