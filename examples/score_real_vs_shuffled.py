"""Does a language model tell real RNAs from the same RNAs shuffled? Pseudo-perplexity of a random
subset of a FASTA file and of dinucleotide-shuffled copies of the same RNAs, for several models.

    python examples/score_real_vs_shuffled.py ../shared/data/ncrna/dataset_nRC_test.fasta runs/score_nrc/check \\
        --model pretrained=runs/score_nrc/pretrain/final --model untrained=runs/score_nrc/untrained_lm \\
        --count 200 --max-length 200 --seed 0

Writes into the output folder ``real.fa`` and ``shuffled.fa`` (ids ``<k>|<original id>``; each
shuffle keeps its RNA's dinucleotide counts exactly: ``protrna.score.dinucleotide_shuffle``), one
``protrna score --pppl`` table per model and file (run through the command line, so an interrupted
run resumes), and ``summary.json``: per model the mean and median PPPL of each file, the share of
RNAs whose real sequence has the lower PPPL (paired), and the AUROC of "lower PPPL = real" (0.5 is
chance), with 95 % bootstrap intervals over RNAs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np

from protrna.data.records import valid_records
from protrna.score import dinucleotide_shuffle


def auroc(real: np.ndarray, shuffled: np.ndarray) -> float:
    """Probability that a real RNA has a lower PPPL than a shuffled one (ties count half)."""
    lower = (real[:, None] < shuffled[None, :]).mean()
    ties = (real[:, None] == shuffled[None, :]).mean()
    return float(lower + ties / 2)


def summarise(real: np.ndarray, shuffled: np.ndarray, seed: int, rounds: int = 2000) -> dict:
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(real), size=(rounds, len(real)))
    paired = [float((real[p] < shuffled[p]).mean()) for p in picks]
    areas = [auroc(real[p], shuffled[p]) for p in picks[:400]]  # O(n^2) each: fewer rounds

    def interval(values) -> list[float]:
        return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]

    return {
        "n": len(real),
        "pppl_real_mean": float(real.mean()), "pppl_shuffled_mean": float(shuffled.mean()),
        "pppl_real_median": float(np.median(real)), "pppl_shuffled_median": float(np.median(shuffled)),
        "real_lower_share": float((real < shuffled).mean()), "real_lower_share_95ci": interval(paired),
        "auroc": auroc(real, shuffled), "auroc_95ci": interval(areas),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fasta", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    eligible = [(r.id, r.sequence.upper().replace("T", "U")) for r in valid_records(args.fasta, unique_ids=True)
                if len(r.sequence) <= args.max_length]
    chosen = rng.sample(eligible, min(args.count, len(eligible)))
    real, shuffled = args.out / "real.fa", args.out / "shuffled.fa"
    real.write_text("".join(f">{k}|{name}\n{seq}\n" for k, (name, seq) in enumerate(chosen)))
    shuffled.write_text("".join(f">{k}|{name}\n{dinucleotide_shuffle(seq, rng)}\n" for k, (name, seq) in enumerate(chosen)))

    summary = {"fasta": str(args.fasta), "eligible": len(eligible), "count": len(chosen),
               "max_length": args.max_length, "seed": args.seed, "dtype": args.dtype,
               "nucleotides": sum(len(s) for _, s in chosen), "models": {}}
    for spec in args.model:
        name, path = spec.split("=", 1)
        pppl = {}
        for kind, fasta in (("real", real), ("shuffled", shuffled)):
            table = args.out / f"{name}_{kind}.tsv"
            command = [sys.executable, "-m", "protrna.cli", "score", str(fasta), "--pppl", "-o", str(table),
                       "--model", path, "--dtype", args.dtype, "--quiet"]
            print("$", " ".join(command), file=sys.stderr, flush=True)
            subprocess.run(command, check=True, env=os.environ)
            with open(table, newline="") as handle:
                pppl[kind] = np.array([float(row["pppl"]) for row in csv.DictReader(handle, delimiter="\t")])
        summary["models"][name] = {"path": path, **summarise(pppl["real"], pppl["shuffled"], args.seed)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
