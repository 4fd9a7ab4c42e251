"""Write a random sample of the records of a FASTA or 3-line .dbn file, records copied verbatim.

    python examples/sample_records.py IN OUT --count N [--max-length NT] [--seed S]

Records longer than ``--max-length`` are left out before sampling; the sample keeps file order.
"""

import argparse
import random

from protrna.data.fasta import read_fasta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    records = [r for r in read_fasta(args.input) if args.max_length is None or len(r) <= args.max_length]
    chosen = sorted(random.Random(args.seed).sample(range(len(records)), min(args.count, len(records))))
    with open(args.output, "w") as handle:
        for k in chosen:
            record = records[k]
            header = f"{record.id} {record.description}".strip()
            structure = f"{record.structure}\n" if record.structure is not None else ""
            handle.write(f">{header}\n{record.sequence}\n{structure}")
    print(f"{args.output}: {len(chosen)} of {len(records)} records"
          + (f" of at most {args.max_length} nt" if args.max_length else ""))


if __name__ == "__main__":
    main()
