#!/bin/bash
# The head and the language model before this round's redesign (commit c9f381a) against main,
# alternating in rounds so that a busy machine slows both alike. Run from the checkout's root:
#   git worktree add --detach /tmp/old c9f381a && bash benchmarks/ab_redesign.sh
# Results: one JSON per run in $OUT (collected in benchmarks/results/redesign_ab_cpu_avx2.json).
#
# Settings (environment; the defaults are the first run's):
#   PARTS="head head500 embed"   which parts, in order; "evaluate" adds bench_evaluate.py on the
#                                first $LIMIT TS0 records, old then new, $EVAL_ROUNDS times (default 1)
#   LENGTHS="150 300" ROUNDS=2 REPEATS=1   the head's lengths, rounds and timed runs per process
#   CHUNK2=0                     1 adds "new-fused-chunk2": the fused head with two chunk threads
#                                at every length (bench_ss_head.py --chunk-threads 2)
#   LIMIT=130                    records of TS0 for "evaluate" (the first 130 hold ~10 % of the
#                                head's L^3 work and of the tokens)
# e.g. the short-length check:  PARTS=head LENGTHS=150 ROUNDS=4 REPEATS=3 CHUNK2=1 bash benchmarks/ab_redesign.sh
set -u
PY=${PY:-$PWD/.venv/bin/python}
NEW=$PWD
OUT=${OUT:-/tmp/bench/final}; mkdir -p $OUT
PARTS=${PARTS:-"head head500 embed"}
LENGTHS=${LENGTHS:-"150 300"}
ROUNDS=${ROUNDS:-2}
REPEATS=${REPEATS:-1}
CHUNK2=${CHUNK2:-0}
LIMIT=${LIMIT:-130}
EVAL_ROUNDS=${EVAL_ROUNDS:-1}
variants="old new-pytorch new-fused"
[ "$CHUNK2" = 1 ] && variants="$variants new-fused-chunk2"
load() { cut -d' ' -f1 /proc/loadavg; }
tag=$(echo $LENGTHS | tr ' ' '_')

for part in $PARTS; do
  case $part in
    head)
      for round in $(seq 1 $ROUNDS); do
        for variant in $variants; do
          case $variant in
            old) dir=/tmp/old; extra="" ;;
            new-pytorch) dir=$NEW; extra="--kernels pytorch" ;;
            new-fused) dir=$NEW; extra="--kernels fused" ;;
            new-fused-chunk2) dir=$NEW; extra="--kernels fused --chunk-threads 2" ;;
          esac
          echo "== head round $round $variant load $(load)"
          (cd $dir && PYTHONPATH=$dir/src timeout 900 $PY benchmarks/bench_ss_head.py --lengths $LENGTHS --dtypes fp32 \
             --repeats $REPEATS $extra --json $OUT/head_${tag}_${variant}_r$round.json 2>&1 | grep "^L=")
        done
      done ;;
    head500)
      echo "== head L=500 fused/pytorch load $(load)"
      (cd $NEW && timeout 900 $PY benchmarks/bench_ss_head.py --lengths 500 --dtypes fp32 --repeats 0 \
         --kernels fused pytorch --json $OUT/head_L500.json 2>&1 | grep "^L=") ;;
    embed)
      for variant in old new; do
        dir=/tmp/old; [ $variant = new ] && dir=$NEW
        echo "== embed $variant load $(load)"
        (cd $dir && PYTHONPATH=$dir/src timeout 900 $PY benchmarks/bench_embed.py --variants protrna-fp32 --repeats 2 \
           --json $OUT/embed_$variant.json 2>&1 | grep -E "^\|" | tail -2)
      done ;;
    evaluate)
      for round in $(seq 1 $EVAL_ROUNDS); do
        for variant in old new; do
          dir=/tmp/old; [ $variant = new ] && dir=$NEW
          echo "== evaluate first $LIMIT TS0 records, round $round $variant load $(load)"
          (cd $dir && PYTHONPATH=$dir/src timeout 3000 $PY benchmarks/bench_evaluate.py --dtype float32 --limit $LIMIT \
             --reference $NEW/../shared/data/bprna/TS0.dbn \
             --json $OUT/evaluate_${LIMIT}_${variant}_r$round.json 2>&1 | tail -3)
        done
      done ;;
  esac
done
echo "== done $(date)"
