#!/usr/bin/env bash
# Everything BENCHMARKS.md's "On a GPU" section is made of, in one run on a CUDA machine:
# the tests with CUDA cases (device-parametrised parity tests; training through accelerate,
# which takes the GPU when there is one), then the head, the whole TS0 evaluation and the
# language model with --device cuda. Each step has its own time limit, so a slow or failing
# step leaves the others' results.
#
#   benchmarks/run_gpu.sh RESULTS_DIR            (PROTRNA_SHARED: the shared/ folder, if not ../shared)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: benchmarks/run_gpu.sh RESULTS_DIR}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
shared=${PROTRNA_SHARED:-$PWD/../shared}
python=${PYTHON:-python3}

step() {  # step NAME SECONDS COMMAND...: run, log to RESULTS_DIR/NAME.log, report its status
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    echo "== $name: exit $? after $((SECONDS - start)) s" | tee -a "$out/steps.txt"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} >"$out/environment.txt" 2>&1

step tests 120 "$python" -m pytest -q -p no:cacheprovider -n 8 -k "not torchrun" \
    tests/test_model.py tests/heads tests/test_fold.py tests/test_embed.py tests/test_evaluate.py tests/train
step ss_head 130 "$python" benchmarks/bench_ss_head.py --device cuda --lengths 150 300 500 1000 2000 \
    --json "$out/ss_head_cuda.json"
step evaluate_bf16 150 "$python" benchmarks/bench_evaluate.py --device cuda --dtype bfloat16 \
    --reference "$shared/data/bprna/TS0.dbn" --json "$out/evaluate_ts0_cuda_bf16.json"
step embed 100 "$python" benchmarks/bench_embed.py --device cuda --variants hf-fp32 protrna-fp32 protrna-bf16 \
    --batch 64 --json "$out/embed_cuda.json"
for length in 500 2000; do  # one chunk: the whole track at once, against the automatic chunks above
    step "ss_head_unchunked_$length" 40 "$python" benchmarks/bench_ss_head.py --device cuda --dtypes bf16 \
        --lengths "$length" --chunk-size "$length" --json "$out/ss_head_cuda_unchunked_$length.json"
done
step evaluate_fp32 100 "$python" benchmarks/bench_evaluate.py --device cuda --dtype float32 \
    --reference "$shared/data/bprna/TS0.dbn" --json "$out/evaluate_ts0_cuda_fp32.json"
