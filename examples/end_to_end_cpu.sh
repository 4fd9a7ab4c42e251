#!/usr/bin/env bash
# The whole ProtRNA recipe at toy scale on a CPU: a tiny random ESM-2-shaped model
#   -> protrna pretrain (masked LM on the nRC ncRNA corpus)
#   -> protrna train-ss (RotaFormer head on a TR0 slice, threshold chosen on a VL0 slice)
#   -> protrna evaluate (all of TS0, with RNAfold beside it)
#   -> protrna finetune (nRC 13-class classification, frozen LM, scored on the nRC test file)
# and the same pipeline on the *untrained* tiny model, to show what pretraining changed.
#
#   bash examples/end_to_end_cpu.sh            # from the repository root
#   THREADS=2 OUT=runs/e2e bash examples/end_to_end_cpu.sh
#
# Results and timings go to $OUT (summary.json, timings.tsv, and each command's own output).
# docs/results/end_to_end_cpu.md reports one run of this script. The models are tiny on purpose
# (2.7 M parameters, minutes of training): expect low scores; nothing here is tuned on TS0 or on
# the nRC test file.
set -euo pipefail

DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/end_to_end_cpu}
THREADS=${THREADS:-1}            # 1 leaves the second core of a 2-core machine to others
PYTHON=${PYTHON:-python}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
PROTRNA="$PYTHON -m protrna.cli"
CACHE="$OUT/feature_cache"
mkdir -p "$OUT"
: > "$OUT/timings.tsv"

# Run a named stage, recording its wall time (s) and peak memory (MB) in timings.tsv.
stage() {
    local name=$1
    shift
    echo "=== $name: $*" >&2
    /usr/bin/time -f "$name\t%e\t%M" -a -o "$OUT/timings.tsv" "$@"
}

# ---- 0. data slices and the tiny model ----------------------------------------------------------
stage slices bash -c "
$PYTHON examples/sample_records.py $DATA/bprna/TR0.dbn $OUT/TR0_4000_le200.dbn --count 4000 --max-length 200 --seed 0 &&
$PYTHON examples/sample_records.py $DATA/bprna/VL0.dbn $OUT/VL0_300_le200.dbn --count 300 --max-length 200 --seed 0"
stage make_tiny_esm2 $PYTHON examples/make_tiny_esm2.py "$OUT/esm2_tiny" "$OUT/untrained_lm" \
    --layers 6 --width 192 --seed 0

# ---- 1. masked-LM transfer training on nRC (all 6 blocks train: the model starts random) --------
stage pretrain $PROTRNA pretrain --esm "$OUT/esm2_tiny" \
    --train "$DATA/ncrna/dataset_nRC_train.fasta" --valid "$DATA/ncrna/dataset_nRC_test.fasta" \
    --trainable-layers 6 --max-tokens 2048 --max-steps 400 --warmup-steps 40 --lr 1e-3 \
    --log-every 20 --eval-every 200 --save-every 200 --output "$OUT/pretrain"

# ---- 2-4. the same downstream pipeline on the pretrained and on the untrained model -------------
for NAME in pretrained untrained; do
    if [ "$NAME" = pretrained ]; then LM="$OUT/pretrain/final"; BASELINE="--baseline rnafold"; else LM="$OUT/untrained_lm"; BASELINE=""; fi
    RUN="$OUT/$NAME"
    mkdir -p "$RUN"

    # Structure head: 2 blocks, 64/32 wide (220 k parameters; the released head has 12 blocks,
    # 256/128, 18.7 M). Positive weight 10: at weight 1 a 300-step pilot on the VL0 slice stayed
    # at "no pair anywhere" (valid F1 0 at every threshold); 10 was the one other value tried.
    stage "train-ss.$NAME" $PROTRNA train-ss --model "$LM" \
        --train "$OUT/TR0_4000_le200.dbn" --valid "$OUT/VL0_300_le200.dbn" --max-length 200 \
        --num-blocks 2 --single-dim 64 --pair-dim 32 --msa-heads 4 --pair-heads 2 --head-width 16 \
        --outer-dim 16 --batch-size 8 --max-pairs 32768 --pos-weight 10 \
        --max-steps 600 --warmup-steps 30 --lr 1e-3 --log-every 20 --eval-every 200 --save-every 200 \
        --cache-dir "$CACHE" --output "$RUN/ss"

    # All 1,305 TS0 RNAs (up to 499 nt; the head saw at most 200), the original protocol.
    # shellcheck disable=SC2086
    stage "evaluate.$NAME" $PROTRNA evaluate --reference "$DATA/bprna/TS0.dbn" --model "$LM" \
        --head "$RUN/ss/final" $BASELINE --per-sequence "$RUN/ts0.tsv" --summary "$RUN/ts0.json" --quiet

    # nRC: 13 classes, mean-pooled frozen features, a 256-wide MLP; the test file is only scored.
    stage "finetune.$NAME" $PROTRNA finetune --model "$LM" --task classification \
        --train "$DATA/ncrna/dataset_nRC_train.fasta" --test "$DATA/ncrna/dataset_nRC_test.fasta" \
        --pooling mean --hidden-dim 256 --dropout 0.1 --batch-size 64 \
        --max-steps 2000 --warmup-steps 100 --lr 1e-3 --log-every 100 --save-every 1000 \
        --cache-dir "$CACHE" --output "$RUN/nrc"
done

# ---- 5. one summary ----------------------------------------------------------------------------
$PYTHON - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
log = [json.loads(line) for line in (out / "pretrain" / "log.jsonl").read_text().splitlines()]
summary = {"pretrain": {
    "steps": log[-1]["step"], "train_loss_first": log[0]["loss"], "train_loss_last": log[-1]["loss"],
    "valid": [{k: r[k] for k in ("step", "valid_loss", "valid_ppl")} for r in log if "valid_loss" in r],
}}
for name in ("pretrained", "untrained"):
    run = out / name
    ss = json.loads((run / "ss" / "final" / "train_ss.json").read_text())
    ts0 = json.loads((run / "ts0.json").read_text())
    nrc = json.loads((run / "nrc" / "metrics.json").read_text())["test"]
    summary[name] = {
        "train_ss": {k: ss[k] for k in ("threshold", "valid_f1", "valid_loss", "steps")},
        "ts0": {"n": ts0["n"], **ts0["means"]},
        "nrc_test": {k: nrc[k] for k in ("n", "accuracy", "macro_f1")},
    }
    if ts0.get("baselines"):
        summary["rnafold_ts0"] = {"n": ts0["baselines"]["RNAfold"]["n"], **ts0["baselines"]["RNAfold"]["means"]}
summary["timings_s"] = {
    line.split("\t")[0]: float(line.split("\t")[1]) for line in (out / "timings.tsv").read_text().splitlines()
    if "\t" in line
}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
EOF

# ---- 6. paired comparison of the two pipelines (bootstrap intervals, length split) -------------
$PYTHON examples/compare_end_to_end.py "$OUT" --data "$DATA" --json "$OUT/comparison.json"
