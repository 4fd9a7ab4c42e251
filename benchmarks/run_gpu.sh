#!/usr/bin/env bash
# Everything BENCHMARKS.md's "On a GPU" section is made of, in one run on a CUDA machine:
# the tests' CUDA cases (tests/devices.py), the head, the whole TS0 evaluation and the language
# model with --device cuda, then the training tests (accelerate takes the GPU when there is one).
# Each step has its own time limit, so a slow or failing step leaves the others' results. All
# output goes to RESULTS_DIR/log.txt, the numbers to a few JSON files beside it (8 files at most).
#
#   benchmarks/run_gpu.sh RESULTS_DIR            (PROTRNA_SHARED: the shared/ folder, if not ../shared)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: benchmarks/run_gpu.sh RESULTS_DIR}
mkdir -p "$out"
log=$out/log.txt
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
shared=${PROTRNA_SHARED:-$PWD/../shared}
python=${PYTHON:-python3}

step() {  # step NAME SECONDS COMMAND...: run with a time limit, its output into the log
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    echo "==== $name: $*" >>"$log"
    timeout "$limit" "$@" >>"$log" 2>&1
    echo "==== $name: exit $? after $((SECONDS - start)) s" | tee -a "$log"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} >>"$log" 2>&1

step tests_cuda 60 "$python" -m pytest -q -p no:cacheprovider -k cuda -rs \
    tests/test_model.py tests/heads tests/test_fold.py
step ss_head 120 "$python" benchmarks/bench_ss_head.py --device cuda --lengths 150 300 500 1000 2000 \
    --repeats 2 --json "$out/ss_head_cuda.json"
step evaluate_bf16 150 "$python" benchmarks/bench_evaluate.py --device cuda --dtype bfloat16 \
    --reference "$shared/data/bprna/TS0.dbn" --json "$out/evaluate_ts0_cuda_bf16.json"
step embed 90 "$python" benchmarks/bench_embed.py --device cuda --variants hf-fp32 protrna-fp32 protrna-bf16 \
    --batch 64 --json "$out/embed_cuda.json"
step ss_head_unchunked 50 "$python" benchmarks/bench_ss_head.py --device cuda --dtypes bf16 --lengths 1000 \
    --chunk-size 1000 --repeats 2 --json "$out/ss_head_cuda_unchunked.json"
step evaluate_fp32 100 "$python" benchmarks/bench_evaluate.py --device cuda --dtype float32 \
    --reference "$shared/data/bprna/TS0.dbn" --json "$out/evaluate_ts0_cuda_fp32.json"
step tests_training 120 "$python" -m pytest -q -p no:cacheprovider -n 4 -k "not torchrun" tests/train
