#!/bin/bash
# The original TensorFlow ProtRNA against protrna's float32 path on this machine, alternating in
# rounds so that a machine whose speed drifts slows both alike. Run from the checkout's root:
#   python3.11 -m venv /tmp/tf && /tmp/tf/bin/pip install tensorflow-cpu==2.14.1 numpy==1.26.4
#   git clone https://github.com/roxie-zhang/ProtRNA /tmp/ProtRNA
#   bash benchmarks/vs_original_tf.sh
# Settings (environment): TF_PY (/tmp/tf/bin/python), ORIGINAL (/tmp/ProtRNA), PY (.venv's python),
# LENGTHS ("150 300 500": the head's), LM (1: also the language model, 8 x 150 nt), ROUNDS (2),
# REPEATS (1: timed calls after a warm-up), OUT (/tmp/bench/vs_tf).
# Prints the table (bench_original_tf.py --summarise); one JSON per run stays in $OUT.
set -eu
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}  # TensorFlow's start-up notices only
TF_PY=${TF_PY:-/tmp/tf/bin/python}
ORIGINAL=${ORIGINAL:-/tmp/ProtRNA}
PY=${PY:-$PWD/.venv/bin/python}
LENGTHS=${LENGTHS:-"150 300 500"}
LM=${LM:-1}
ROUNDS=${ROUNDS:-2}
REPEATS=${REPEATS:-1}
OUT=${OUT:-/tmp/bench/vs_tf}; mkdir -p "$OUT"
load() { cut -d' ' -f1 /proc/loadavg; }

for round in $(seq 1 "$ROUNDS"); do
  for L in $LENGTHS; do
    echo "== round $round head L=$L original, load $(load)"
    $TF_PY benchmarks/bench_original_tf.py --original "$ORIGINAL" --lengths "$L" --repeats "$REPEATS" \
      --json "$OUT/original_head_L${L}_r$round.json" > /dev/null
    echo "== round $round head L=$L protrna, load $(load)"
    $PY benchmarks/bench_ss_head.py --lengths "$L" --dtypes fp32 --repeats "$REPEATS" \
      --json "$OUT/protrna_head_L${L}_r$round.json" 2>&1 | grep "^L="
  done
  if [ "$LM" = 1 ]; then
    echo "== round $round language model original, load $(load)"
    $TF_PY benchmarks/bench_original_tf.py --original "$ORIGINAL" --lengths --lm --repeats "$REPEATS" \
      --json "$OUT/original_lm_r$round.json" > /dev/null
    echo "== round $round language model protrna, load $(load)"
    $PY benchmarks/bench_embed.py --variants protrna-fp32 --repeats "$REPEATS" \
      --json "$OUT/protrna_lm_r$round.json" 2>&1 | grep -E "^\|" | tail -1
  fi
done
$PY benchmarks/bench_original_tf.py --summarise "$OUT"
echo "== done $(date)"
