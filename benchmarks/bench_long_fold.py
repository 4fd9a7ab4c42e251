"""Long RNAs: ``protrna fold --max-span`` beside RNAplfold on the same random RNAs, same span.

For each ``--lengths`` RNA (uniform random ACGU, seeded by its length) two fresh processes, so
that each peak resident memory (``ru_maxrss``: the whole process) is its own:

* ``protrna``: :func:`protrna.fold.fold_fasta` with a :class:`protrna.runtime.StructurePredictor`
  of the language model and head shapes given (defaults: ESM-2 650M, 33 layers x 1280, and the
  released 12-block RotaFormer head), random weights (speed does not depend on the values),
  ``--max-span`` windows, ``--probabilities`` (the pair list is written as ``.npz``). Timed: the
  whole fold (LM, head windows, decoding, confidence, files); inside it the seconds spent in the
  language model's forward passes and in the head's calls. Model building is not timed;
  ``rss_before_gb`` is the resident memory once the models are built.
* ``rnaplfold``: ViennaRNA's ``RNA.pfl_fold(sequence, W, L, cutoff)``, the Python API of
  ``RNAplfold -W W -L L -c cutoff`` (default model, 37 C), with ``W = --max-span`` and
  ``L = --max-span - 1``: windows of the same length and pairs at most ``max_span - 1`` apart,
  exactly the pairs ``fold --max-span`` can predict; the cutoff is the fold's ``--pair-floor``.

Random weights give pair probabilities near 0.5 everywhere: every pair in a window is listed (the
largest pair list, so the most output memory, a trained head would give), and at the head's 0.25
the decoded structure is a random matching whose crossings no dot-bracket can write. The fold is
therefore decoded at ``--threshold 1`` (no pair) by default; decoding real structures costs
little beside the head.

    python benchmarks/bench_long_fold.py --json benchmarks/results/long_fold_cpu.json  # 2,000 / 5,000 / 10,000 nt
    python benchmarks/bench_long_fold.py --lengths 500 --dtype bfloat16 --no-rnaplfold  # one window in bf16

CPUs without AVX-512 BF16 emulate bfloat16 matrix products (about 1 GFLOP/s against ~140 in
float32 on the 2-core AVX2 machine of this project): there, benchmark float32, and bf16 on one
window only to show the bound.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe  # noqa: E402  (benchmarks/machine.py, beside this script)


def random_rna(length: int) -> str:
    rng = random.Random(length)
    return "".join(rng.choice("ACGU") for _ in range(length))


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KB on Linux


def reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS count (VmHWM) here, so that building the random models (which
    peaks above the fold) is not the peak measured; False where Linux does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_since_reset_gb() -> float | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1e6  # kB
    except OSError:
        pass
    return None


def measure_protrna(args: argparse.Namespace, length: int) -> dict:
    """Runs inside the child process."""
    import numpy as np
    import torch

    from protrna import ProtRNA, ProtRNAConfig
    from protrna.fold import fold_fasta
    from protrna.heads.ss import RotaFormer, RotaFormerConfig
    from protrna.runtime import StructurePredictor, pack_if_owned, plan_span_windows, prepare_head, prepare_model
    from protrna.sparse_pairs import SparsePairProbabilities

    torch.manual_seed(0)
    lm = ProtRNA(ProtRNAConfig(num_layers=args.lm_layers, embed_dim=args.lm_dim, attention_heads=args.lm_heads))
    lm = prepare_model(lm, args.dtype, args.device)
    # Counted before packing: the packed linear layers keep their weights outside parameters().
    lm_parameters = sum(p.numel() for p in lm.parameters())
    head = prepare_head(RotaFormer(RotaFormerConfig(input_dim=args.lm_dim, num_blocks=args.head_blocks)), like=lm)
    pack_if_owned(lm, owned=True, max_tokens=1536)  # as `protrna fold` packs the model it loads
    predictor = StructurePredictor(lm, head, max_span=args.max_span)

    timings = {"lm_seconds": 0.0, "head_seconds": 0.0, "head_calls": 0}
    started: list[float] = []
    lm.register_forward_pre_hook(lambda *_: started.append(time.perf_counter()))
    lm.register_forward_hook(lambda *_: timings.__setitem__("lm_seconds", timings["lm_seconds"] + time.perf_counter()
                                                            - started.pop()))
    pair_logits = head.pair_logits

    def timed_pair_logits(*a, **k):
        start = time.perf_counter()
        out = pair_logits(*a, **k)
        timings["head_seconds"] += time.perf_counter() - start
        timings["head_calls"] += 1
        return out

    head.pair_logits = timed_pair_logits
    rss_before = peak_rss_gb()
    reset = reset_peak_rss()
    with tempfile.TemporaryDirectory() as folder:
        fasta = Path(folder) / "rna.fa"
        fasta.write_text(f">rna{length}\n{random_rna(length)}\n")
        start, cpu_start = time.perf_counter(), time.process_time()
        fold_fasta(fasta, Path(folder) / "out", predictor=predictor, probabilities=True, pair_floor=args.pair_floor,
                   threshold=args.threshold, progress=False)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        out = Path(folder) / "out"
        npz = out / f"rna{length}.npz"
        if npz.exists():
            pairs = SparsePairProbabilities.load(npz)
            listed, file_bytes = len(pairs), npz.stat().st_size
        else:  # folded whole (length <= max_span)
            dense = np.load(out / f"rna{length}.npy")
            listed, file_bytes = int((np.triu(dense, 1) > args.pair_floor).sum()), (out / f"rna{length}.npy").stat().st_size
        structure = (out / "predictions.dbn").read_text().split("\n")[2]
    return {
        "tool": "protrna",
        "length": length,
        "dtype": args.dtype,
        "device": args.device,
        "lm": f"{args.lm_layers} layers x {args.lm_dim}, {lm_parameters / 1e6:.0f}M parameters",
        "head_blocks": args.head_blocks,
        "max_span": args.max_span,
        "threshold": args.threshold,
        "windows": len(predictor.windows(length)),
        "window_plan": plan_span_windows(length, args.max_span)[:3] if length > args.max_span else [(0, length)],
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        **timings,
        "peak_rss_gb": peak_rss_gb(),
        "rss_before_gb": rss_before,  # the peak while the models were built
        "fold_peak_rss_gb": peak_rss_since_reset_gb() if reset else None,  # the peak of the fold alone
        "listed_pairs": listed,
        "pair_file_bytes": file_bytes,
        "predicted_pairs": (len(structure) - structure.count(".")) // 2,
        "threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
    }


def measure_rnaplfold(args: argparse.Namespace, length: int) -> dict:
    """Runs inside the child process."""
    import RNA

    sequence = random_rna(length)
    window, span = args.max_span, args.max_span - 1
    rss_before = peak_rss_gb()
    start, cpu_start = time.perf_counter(), time.process_time()
    pairs = RNA.pfl_fold(sequence, window, span, args.pair_floor)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    listed = sum(1 for p in pairs if p.i > 0 and p.j > 0)
    return {
        "tool": "rnaplfold",
        "version": RNA.__version__,
        "length": length,
        "command": f"RNAplfold -W {window} -L {span} -c {args.pair_floor}",
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_rss_gb": peak_rss_gb(),
        "rss_before_gb": rss_before,
        "listed_pairs": listed,
        "max_span_listed": max((p.j - p.i for p in pairs if p.i > 0), default=0),
        "load_average_1min": os.getloadavg()[0],
    }


def run_child(args: argparse.Namespace, tool: str, length: int) -> dict:
    command = [sys.executable, __file__, "--child", tool, "--lengths", str(length)] + [
        item for name in ("max_span", "pair_floor", "threshold", "dtype", "device", "lm_layers", "lm_dim", "lm_heads",
                          "head_blocks") for item in (f"--{name.replace('_', '-')}", str(getattr(args, name)))]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{tool} at {length} nt failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    lines = ["| L (nt) | tool | seconds | LM s | head s (windows) | peak RSS GB | fold's own peak GB | listed pairs |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r["tool"] == "protrna":
            lm, head = f"{r['lm_seconds']:.1f}", f"{r['head_seconds']:.1f} ({r['windows']})"
        else:
            lm, head = "-", "-"
        own = r.get("fold_peak_rss_gb")
        lines.append(f"| {r['length']} | {r['tool']} | {r['seconds']:.1f} | {lm} | {head} | {r['peak_rss_gb']:.2f} | "
                     f"{'-' if own is None else f'{own:.2f}'} | {r['listed_pairs']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2000, 5000, 10000])
    parser.add_argument("--max-span", type=int, default=500)
    parser.add_argument("--pair-floor", type=float, default=1e-3)
    parser.add_argument("--threshold", type=float, default=1.0, help="decoding threshold (see above; default 1)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lm-layers", type=int, default=33)
    parser.add_argument("--lm-dim", type=int, default=1280)
    parser.add_argument("--lm-heads", type=int, default=20)
    parser.add_argument("--head-blocks", type=int, default=12)
    parser.add_argument("--no-rnaplfold", action="store_true", help="time protrna only")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--child", choices=["protrna", "rnaplfold"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure = measure_protrna if args.child == "protrna" else measure_rnaplfold
        print(json.dumps(measure(args, args.lengths[0])))
        return
    command = "python benchmarks/bench_long_fold.py " + " ".join(sys.argv[1:])
    results = []
    for length in args.lengths:
        for tool in ("protrna",) + (() if args.no_rnaplfold else ("rnaplfold",)):
            results.append(run_child(args, tool, length))
            print(f"{tool} {length} nt: {results[-1]['seconds']:.1f} s, {results[-1]['peak_rss_gb']:.2f} GB",
                  file=sys.stderr, flush=True)
            if args.json:  # written as it goes: a long run keeps what it measured
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps({"hardware": describe(), "command": command, "results": results},
                                                indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
