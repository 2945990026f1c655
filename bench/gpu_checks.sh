#!/usr/bin/env bash
# The GPU checks in one command (one CUDA GPU; the sizes are chosen to fill an H100-class chip):
#
#   bash bench/gpu_checks.sh            # writes logs and JSON to $OUT (or bench/results/gpu)
#
# 1. training at bert-base dims, length 128, bfloat16: `joint` and `romebert` against
#    the PyTorch reference step (fp32 and bf16 autocast), samples/s and MFU, batch 256;
# 2. inference: batch-1 latency and batched throughput (batch 64), full depth and early
#    exit at several thresholds, bfloat16, with the XLA attention and with cuDNN's;
# 3. the cuDNN attention test (tests/test_model.py, skipped on CPUs);
# 4. our two steps at batch 512 (does a larger batch fill the chip better?), and
#    early exit at batch 256.
#
# Each part runs under its own `timeout` (the second argument of `part` below) and a
# failure does not stop the rest. Compiling dominates the run time (an early-exit run
# compiles ~130 small programs, 37 s on a 2-core CPU); if every part ran to its limit
# the script would take 13.5 minutes. The parts run most wanted first, and the
# train-step and early-exit JSON are written as each mode / batch 1 ends, so a script
# stopped early keeps the files of the parts done.
# Needs JAX with CUDA, torch and transformers, and SST-2's TSV files under $GLUE_DIR
# (default ../shared/glue, else .gpu_data: `mkdir -p .gpu_data && cp -r
# ../shared/glue/SST-2 .gpu_data/`, ignored by git, for a machine without ../shared).
# Without the pretrained MiniLM installed, the early-exit runs use a random model of
# its shape (see bench_early_exit.py). Files written: log.txt, machine.txt and five
# JSON records. GPU_CHECKS_SMOKE=1 runs every part at toy sizes (on a CPU too) to
# check the script itself; there early_exit_cudnn fails by design (no cuDNN on a CPU:
# "attention_kernel 'cudnn' is unavailable on cpu").
# JAX_PLATFORMS is set (cuda; cpu for the smoke run) so that a JAX that cannot start its
# GPU fails loudly instead of timing on the CPU, and the parts share a compilation cache
# under /tmp (compiling is outside every timed region).
# GPU_CHECKS_PARTS=name,name runs only those parts (names as below: reference_step,
# early_exit_xla, early_exit_cudnn, cudnn_test, train_step_big, early_exit_batch256),
# e.g. to split the checks over two shorter runs.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/results/gpu}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
glue="${GLUE_DIR:-../shared/glue}"
if [ -z "${GLUE_DIR:-}" ] && [ ! -f "$glue/SST-2/dev.tsv" ] && [ -f .gpu_data/SST-2/dev.tsv ]; then
    glue=.gpu_data
fi
py="${PYTHON:-python3}"  # PYTHON=...: another interpreter

if [ "${GPU_CHECKS_SMOKE:-0}" = 1 ]; then
    platform=cpu; preset=minilm; b1=4; b2=8; reps=1; peak=512; ee="--single-examples 2 --batched-examples 16 --batch-size 8 --repeats 1 --batched-repeats 1"; ee_big="$ee"
else
    platform=cuda; preset=bert-base; b1=256; b2=512; reps=5; peak=0; ee=""; ee_big="--batch-size 256 --batched-examples 872 --single-examples 4 --repeats 1"
fi
export JAX_PLATFORMS="${JAX_PLATFORMS:-$platform}"
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/rome_jax_gpu_checks_cache}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0.5}"

part() {  # part NAME SECONDS COMMAND...: run with a limit, append to $out/log.txt, never stop the script
    local name=$1 limit=$2; shift 2
    if [ -n "${GPU_CHECKS_PARTS:-}" ] && [[ ",$GPU_CHECKS_PARTS," != *",$name,"* ]]; then
        echo "== $name: not in GPU_CHECKS_PARTS, skipped" | tee -a "$out/log.txt"
        return
    fi
    local log; log=$(mktemp)
    echo "== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*" | tee -a "$out/log.txt"
    timeout "$limit" "$@" > "$log" 2>&1
    local rc=$?
    cat "$log" >> "$out/log.txt"
    tail -n 25 "$log"
    echo "== $name: exit $rc" | tee -a "$out/log.txt"
    rm -f "$log"
}

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
    $py -c "import jax, torch, transformers; print('jax', jax.__version__, jax.devices()); print('torch', torch.__version__, torch.cuda.is_available(), 'transformers', transformers.__version__)" 2>&1
    [ -f "$glue/SST-2/dev.tsv" ] && echo "SST-2 from $glue" || echo "NO SST-2 under $glue: the early-exit parts will fail (set GLUE_DIR or copy SST-2 into .gpu_data)"
} | tee "$out/machine.txt"

# Most wanted first: a run stopped at its limit still leaves the earlier parts' files.
part reference_step 300 $py bench/bench_reference_step.py --preset "$preset" --batch "$b1" --length 128 \
    --dtype bfloat16 --torch fp32,bf16 --repeats "$reps" --peak_size "$peak" --out "$out/reference_step_gpu.json"
part early_exit_xla 120 $py bench/bench_early_exit.py --glue-dir "$glue" --dtype bfloat16 --attention xla \
    $ee --out "$out/early_exit_gpu_xla.json"
part early_exit_cudnn 120 $py bench/bench_early_exit.py --glue-dir "$glue" --dtype bfloat16 --attention cudnn \
    $ee --out "$out/early_exit_gpu_cudnn.json"
# tests/conftest.py defaults JAX_PLATFORMS to cpu; the export above asks for the GPU
part cudnn_test 60 env JAX_PLATFORMS="$platform" $py -m pytest -q -p no:cacheprovider tests/test_model.py \
    -k "cudnn or attention"
part train_step_big 120 $py bench/bench_train_step.py --preset "$preset" --batch "$b2" --length 128 \
    --dtype bfloat16 --modes joint,romebert --repeats "$reps" --out "$out/train_step_gpu_big.json"
part early_exit_batch256 90 $py bench/bench_early_exit.py --glue-dir "$glue" --dtype bfloat16 --attention xla \
    $ee_big --out "$out/early_exit_gpu_batch256.json"
date -u
