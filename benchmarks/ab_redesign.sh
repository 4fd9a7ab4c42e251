#!/bin/bash
# The head and the language model before this round's redesign (commit c9f381a) against main,
# alternating in rounds so that a busy machine slows both alike. Run from the checkout's root:
#   git worktree add --detach /tmp/old c9f381a && bash benchmarks/ab_redesign.sh
# Results: one JSON per run in $OUT (collected in benchmarks/results/redesign_ab_cpu_avx2.json).
set -u
PY=${PY:-$PWD/.venv/bin/python}
NEW=$PWD
OUT=${OUT:-/tmp/bench/final}; mkdir -p $OUT
for round in 1 2; do
  for variant in old new-pytorch new-fused; do
    case $variant in
      old) dir=/tmp/old; extra="" ;;
      new-pytorch) dir=$NEW; extra="--kernels pytorch" ;;
      new-fused) dir=$NEW; extra="--kernels fused" ;;
    esac
    echo "== head round $round $variant load $(cut -d' ' -f1 /proc/loadavg)"
    (cd $dir && PYTHONPATH=$dir/src timeout 600 $PY benchmarks/bench_ss_head.py --lengths 150 300 --dtypes fp32 --repeats 1 $extra --json $OUT/head_${variant}_r$round.json 2>&1 | grep "^L=")
  done
done
echo "== head L=500 fused/pytorch load $(cut -d' ' -f1 /proc/loadavg)"
(cd $NEW && timeout 900 $PY benchmarks/bench_ss_head.py --lengths 500 --dtypes fp32 --repeats 0 --kernels fused pytorch --json $OUT/head_L500.json 2>&1 | grep "^L=")
for variant in old new; do
  dir=/tmp/old; [ $variant = new ] && dir=$NEW
  echo "== embed $variant load $(cut -d' ' -f1 /proc/loadavg)"
  (cd $dir && PYTHONPATH=$dir/src timeout 900 $PY benchmarks/bench_embed.py --variants protrna-fp32 --repeats 2 --json $OUT/embed_$variant.json 2>&1 | grep -E "^\|" | tail -2)
done
echo "== done $(date)"
