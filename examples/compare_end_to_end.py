"""Paired comparison of the pretrained and untrained pipelines of examples/end_to_end_cpu.sh.

    python examples/compare_end_to_end.py OUT [--data ../shared/data] [--json comparison.json]

For TS0: mean per-sequence strict F1 of both heads and of RNAfold, overall and split at the
200-nt training cap, and a paired bootstrap (10,000 resamples of the TS0 sequences, seed 0) of the
difference pretrained - untrained. For nRC: accuracy of both classifiers and a paired bootstrap of
the difference over test RNAs, also split into the test RNAs whose sequence occurs in the training file
and the others. The intervals cover test-set sampling only, not training seeds.
"""

import argparse
import csv
import json
from pathlib import Path

import numpy as np


def read_tsv(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def paired_bootstrap(differences: np.ndarray, resamples: int = 10_000, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    means = [differences[rng.integers(0, len(differences), len(differences))].mean() for _ in range(resamples)]
    return [float(v) for v in np.percentile(means, [2.5, 97.5])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    f1 = {name: {r["id"]: float(r["f1"]) for r in read_tsv(args.out / name / "ts0.tsv")}
          for name in ("pretrained", "untrained")}
    f1["rnafold"] = {r["id"]: float(r["f1"]) for r in read_tsv(args.out / "pretrained" / "ts0.rnafold.tsv")}
    length = {r["id"]: int(r["length"]) for r in read_tsv(args.out / "pretrained" / "ts0.tsv")}
    ids = list(length)
    groups = {"all": ids, "le200": [i for i in ids if length[i] <= 200], "gt200": [i for i in ids if length[i] > 200]}
    ts0 = {}
    for group, members in groups.items():
        row = {"n": len(members)}
        row.update({name: float(np.mean([values[i] for i in members])) for name, values in f1.items()})
        difference = np.array([f1["pretrained"][i] - f1["untrained"][i] for i in members])
        row["pretrained_minus_untrained"] = float(difference.mean())
        row["ci95"] = paired_bootstrap(difference)
        ts0[group] = row

    correct = {}
    for name in ("pretrained", "untrained"):
        rows = read_tsv(args.out / name / "nrc" / "test_predictions.tsv")
        correct[name] = np.array([r["label"] == r["prediction"] for r in rows], dtype=float)
    difference = correct["pretrained"] - correct["untrained"]
    nrc = {
        "n": len(difference),
        "accuracy": {name: float(values.mean()) for name, values in correct.items()},
        "pretrained_minus_untrained": float(difference.mean()),
        "ci95": paired_bootstrap(difference),
    }
    from protrna.data.fasta import read_fasta

    def key(sequence: str) -> str:
        return sequence.upper().replace("T", "U")

    train: dict[str, set[str]] = {}
    for record in read_fasta(args.data / "ncrna" / "dataset_nRC_train.fasta"):
        train.setdefault(key(record.sequence), set()).add(record.id)  # nRC ids are the class names
    test = list(read_fasta(args.data / "ncrna" / "dataset_nRC_test.fasta"))
    seen = np.array([key(r.sequence) in train for r in test])
    nrc["test_sequences_also_in_train"] = int(seen.sum())
    nrc["of_those_with_the_same_class"] = sum(r.id in train.get(key(r.sequence), ()) for r in test)
    nrc["accuracy_on_those"] = {name: float(values[seen].mean()) for name, values in correct.items()}
    nrc["accuracy_on_the_others"] = {name: float(values[~seen].mean()) for name, values in correct.items()}
    result = {"ts0_strict_f1": ts0, "nrc_test": nrc}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
