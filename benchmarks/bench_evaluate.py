"""Wall time of a whole structure evaluation (the paper's TS0 test): language model plus head.

Runs what ``protrna evaluate --reference TS0.dbn`` runs, with the full-size architectures (ESM-2
650M language model, 12-block RotaFormer head) and random weights, since speed does not depend on
the values and the official weights cannot be downloaded here. Time is split between the
language model and the head. The original TF code needs about 3.4 / 15.2 / 44.3 s for the head
alone at L = 150 / 300 / 500 on the reference 2-core CPU (REFERENCE.md section 7), which summed
over TS0's lengths is well over an hour.

    python benchmarks/bench_evaluate.py --dtype bfloat16             # all 1,305 TS0 RNAs
    python benchmarks/bench_evaluate.py --dtype float32 --limit 100  # a quick look
    python benchmarks/bench_evaluate.py --device cuda                # on a GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_embed import build_model  # noqa: E402
from machine import describe  # noqa: E402

from protrna.evaluate import evaluate_predictor  # noqa: E402
from protrna.runtime import load_predictor  # noqa: E402
from protrna.heads.ss import RotaFormer, RotaFormerConfig  # noqa: E402
from protrna.structure import read_reference  # noqa: E402

DEFAULT_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "bprna" / "TS0.dbn"


class Stopwatch:
    """Wraps a callable and adds up the seconds spent in it."""

    def __init__(self, function):
        self.function, self.seconds = function, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.function(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    parser.add_argument("--limit", type=int, default=None, help="only the first N records")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default=None)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "protrna-bench")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()

    lm_dir = build_model(args.workdir / "esm2-33layers-random", 33)
    head_dir = args.workdir / "rotaformer-12blocks-random"
    if not (head_dir / "config.json").exists():
        torch.manual_seed(0)
        RotaFormer(RotaFormerConfig()).save_pretrained(head_dir)
    references = read_reference(args.reference)[: args.limit]

    start = time.perf_counter()
    predictor = load_predictor(str(lm_dir), str(head_dir), dtype=args.dtype, device=args.device)
    load_seconds = time.perf_counter() - start
    predictor.encoder._run = lm_time = Stopwatch(predictor.encoder._run)
    start = time.perf_counter()
    evaluation = evaluate_predictor(references, predictor, progress=True)
    total = time.perf_counter() - start
    head_seconds = total - lm_time.seconds  # the head, decoding and scoring: all but the LM
    nucleotides = sum(len(r) for r in references)
    result = {
        "reference": str(args.reference), "n": evaluation.n, "nucleotides": nucleotides,
        "dtype": args.dtype, "load_seconds": load_seconds, "lm_seconds": lm_time.seconds,
        "head_and_scoring_seconds": head_seconds, "total_seconds": total,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "hardware": describe(),
    }
    if predictor.lm.device.type == "cuda":
        result["peak_gpu_gb"] = torch.cuda.max_memory_allocated(predictor.lm.device) / 2**30
    print(f"Hardware: {result['hardware']}")
    print(f"{args.reference.name}: {evaluation.n} RNAs, {nucleotides} nt, {args.dtype}\n")
    print("| stage | seconds |")
    print("|---|---|")
    print(f"| loading (language model + head) | {load_seconds:.1f} |")
    print(f"| language model | {lm_time.seconds:.1f} |")
    print(f"| head + scoring | {head_seconds:.1f} |")
    print(f"| **total** | **{total:.0f}** ({total / 60:.1f} min) |")
    print(f"\npeak RSS {result['peak_rss_gb']:.2f} GB")
    if "peak_gpu_gb" in result:
        print(f"peak GPU memory allocated {result['peak_gpu_gb']:.2f} GB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
