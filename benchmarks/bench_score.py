"""Pseudo-perplexity throughput of ``protrna score --pppl`` on the ESM-2 650M shape.

A PLL costs one forward pass per nucleotide: an RNA of L nt is L masked copies of L + 2 tokens,
batched under the token budget as the job batches them (every copy of one RNA has the same
length, so batches are full and the rate per pass is the same all along the RNA). For each
``--lengths`` value this times the masked copies of a random RNA of that length through
:meth:`protrna.score.MaskedScorer.masked_log_probs` (the job's path: oneDNN-packed linears where the
CPU supports the dtype, weights in ``--dtype``), after one warm-up pass, and reports:

* ``passes_per_s``: masked copies (nucleotides scored) per second;
* ``nt_forward_per_s``: nucleotides through the model per second (passes x L);
* ``seconds_per_rna`` and ``rnas_per_s``: for a whole RNA of that length (L passes).

``--positions K`` times only the first K masked copies (rounded up to whole batches) and scales
to L: on a 2-core CPU a 300-nt RNA on the 650M model takes many minutes. The JSON says which
(``passes_timed``). Weights are random: speed does not depend on their values.

    python benchmarks/bench_score.py --lengths 100 300 --positions 20 --json benchmarks/results/score_cpu_bf16.json
    python benchmarks/bench_score.py --layers 2 --lengths 50       # quick look
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import time

from machine import describe  # noqa: E402  (benchmarks/machine.py, beside this script)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--positions", type=int, default=None,
                        help="time only this many masked copies per length (whole batches), scaled to L")
    parser.add_argument("--layers", type=int, default=33, help="transformer blocks (33 = the 650M model)")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--max-tokens", type=int, default=None, help="token budget (default: the job's)")
    parser.add_argument("--json", default=None, help="write the results here too")
    args = parser.parse_args()

    import torch

    from protrna import ProtRNA, ProtRNAConfig
    from protrna.cpu import onednn_supports, pack_for_cpu_inference
    from protrna.score import MaskedScorer

    torch.manual_seed(0)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model = ProtRNA(ProtRNAConfig(num_layers=args.layers)).to(dtype).eval()
    scorer = MaskedScorer(model, max_tokens=args.max_tokens)
    packed = pack_for_cpu_inference(model, rows_hint=scorer.max_tokens) is not None
    rng = random.Random(0)
    results = []
    for length in args.lengths:
        sequence = "".join(rng.choice("ACGU") for _ in range(length))
        per_batch = max(1, scorer.max_tokens // (length + 2))
        timed = length if args.positions is None else min(length, math.ceil(args.positions / per_batch) * per_batch)
        scorer.masked_log_probs(sequence, range(1))  # warm-up: one pass
        start = time.perf_counter()
        scorer.masked_log_probs(sequence, range(timed))
        seconds = time.perf_counter() - start
        passes_per_s = timed / seconds
        result = {
            "length": length, "passes_timed": timed, "batch": per_batch, "seconds": seconds,
            "passes_per_s": passes_per_s, "nt_forward_per_s": passes_per_s * length,
            "seconds_per_rna": length / passes_per_s, "rnas_per_s": passes_per_s / length,
        }
        results.append(result)
        print(json.dumps(result), flush=True)
    report = {
        "hardware": describe(), "args": vars(args), "packed_onednn": packed,
        "onednn_bf16": onednn_supports(torch.bfloat16), "max_tokens": scorer.max_tokens,
        "parameters": sum(p.numel() for p in model.parameters()),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "results": results,
    }
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
            handle.write("\n")
    print("| L | passes timed | batch | passes/s | nt-forward/s | s per RNA | RNAs/s |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['length']} | {r['passes_timed']} | {r['batch']} | {r['passes_per_s']:.2f} | "
              f"{r['nt_forward_per_s']:.0f} | {r['seconds_per_rna']:.1f} | {r['rnas_per_s']:.4f} |")


if __name__ == "__main__":
    main()
