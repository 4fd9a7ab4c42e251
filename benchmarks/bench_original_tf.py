"""The original TensorFlow ProtRNA, timed on this machine: its structure head per length and its
language model, random weights, called as its own test script calls them.

REFERENCE.md section 7's numbers for the original (head 3.4 / 15.2 / 44.3 s at L = 150 / 300 /
500, language model 262 tokens/s) were taken on one CPU; protrna's benchmarks run wherever they
are run, and speed-ups are only meaningful on one machine. This script measures the original
where protrna is measured. It runs in an environment with the original's requirements (not
protrna's, which it does not import) and a checkout of the original code:

    python3.11 -m venv /tmp/tf && /tmp/tf/bin/pip install tensorflow-cpu==2.14.1 numpy==1.26.4
    git clone https://github.com/roxie-zhang/ProtRNA /tmp/ProtRNA
    /tmp/tf/bin/python benchmarks/bench_original_tf.py --original /tmp/ProtRNA --lengths 150 300 500 --lm

* Head: ``SSPredictionModel()`` (``downstream_ss/model.py``), built on zeros as ``pretrained.py``
  builds it, called eagerly on one (1, L + 2, 1280) input as ``test_downstream_ss.py`` calls it.
* Language model: ``ProtRNA(33, 1280, 20)`` (``protrna/model.py``) on ``--lm-batch`` RNAs of
  ``--lm-length`` nt (the original's batch converter adds BOS and EOS), ``repr_layers=[33]``.

Each case runs in a fresh process, so its peak resident memory is its own; the best of
``--repeats`` timed calls after a warm-up call. TensorFlow keeps its defaults (all cores, oneDNN
on). ``benchmarks/vs_original_tf.sh`` alternates these runs with protrna's, and ``--summarise DIR``
prints the table of such a run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe_cpu  # noqa: E402  (benchmarks/machine.py: no torch needed)

#: RNA letters for the language model's random sequences.
NUCLEOTIDES = "ACGU"


def measure_head(length: int, repeats: int) -> dict:
    """Runs in the child process, with the original's directory on ``sys.path``."""
    import numpy as np
    import tensorflow as tf
    from downstream_ss.model import SSPredictionModel

    tf.random.set_seed(0)
    head = SSPredictionModel()
    head(np.zeros((1, 10, 1280), np.float32))  # builds the weights, as pretrained.py does
    x = np.random.default_rng(0).standard_normal((1, length + 2, 1280)).astype(np.float32)
    seconds = _timed(lambda: head(x).numpy(), repeats)
    return {"part": "head", "length": length, **seconds}


def measure_lm(batch: int, length: int, repeats: int) -> dict:
    import numpy as np
    import tensorflow as tf
    from protrna.model import ProtRNA  # the original's package, not this project's

    tf.random.set_seed(0)
    model = ProtRNA(num_layers=33, embed_dim=1280, attention_heads=20, alphabet="ProtRNA", token_dropout=False)
    model.trainable = False
    model(np.zeros((1, 8), np.int64))  # builds the weights
    rng = np.random.default_rng(0)
    sequences = ["".join(rng.choice(list(NUCLEOTIDES), length)) for _ in range(batch)]
    tokens = model.alphabet.get_batch_converter()(sequences)
    seconds = _timed(lambda: model(tokens, repr_layers=[33])["representations"][33].numpy(), repeats)
    n_tokens = int(np.prod(tokens.shape))
    return {"part": "lm", "batch": batch, "length": length, "tokens": n_tokens,
            "tokens_per_second": n_tokens / seconds["seconds"], **seconds}  # fmt: skip


def _timed(call, repeats: int) -> dict:
    all_seconds, cpu_seconds = [], []
    for _ in range(repeats + 1):  # the first call builds TensorFlow's kernels and buffers
        start, cpu_start = time.perf_counter(), time.process_time()
        call()
        all_seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
    return {
        "seconds": min(all_seconds[1:] or all_seconds),
        "all_seconds": [round(s, 3) for s in all_seconds],
        "cpu_seconds": min(cpu_seconds[1:] or cpu_seconds),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,  # KB on Linux
        "load_average_1min": os.getloadavg()[0],
    }


def run_child(args: argparse.Namespace, case: list[str]) -> dict:
    command = [sys.executable, __file__, "--child", "--original", str(args.original), "--repeats", str(args.repeats),
               *case]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the original's {' '.join(case)} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(folder: Path) -> str:
    """The table of a ``vs_original_tf.sh`` run: every round of each case, original against
    protrna float32 (``bench_ss_head.py`` / ``bench_embed.py`` JSON beside this script's)."""
    rows: dict[tuple, dict[str, list[float]]] = {}
    peaks: dict[tuple, dict[str, float]] = {}
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        for r in data.get("results", []):
            if "part" in r:  # this script's
                key = ("head", r["length"]) if r["part"] == "head" else ("lm", r["batch"], r["length"])
                engine, value = "original", r["seconds"] if r["part"] == "head" else r["tokens_per_second"]
            elif "kernels" in r:  # bench_ss_head.py
                key, engine, value = ("head", r["length"]), "protrna", r["seconds"]
            elif "tokens_per_s" in r:  # bench_embed.py, whose peak is in GiB
                key, engine, value = ("lm", data["args"]["batch"], data["args"]["length"]), "protrna", r["tokens_per_s"]
                r = r | {"peak_rss_gb": r["peak_rss_gb"] * 2**30 / 1e9}
            else:
                continue
            rows.setdefault(key, {}).setdefault(engine, []).append(value)
            peaks.setdefault(key, {})[engine] = max(peaks.get(key, {}).get(engine, 0.0), r["peak_rss_gb"])
    lines = ["| case | original TF (each round) | protrna fp32 (each round) | speed-up (best / best) | peak RSS GB original / protrna |",
             "|---|---|---|---|---|"]  # fmt: skip
    for key in sorted(rows):
        got, peak = rows[key], peaks[key]
        if set(got) != {"original", "protrna"}:
            continue
        if key[0] == "head":
            case = f"head, L = {key[1]} (s)"
            ratio = min(got["original"]) / min(got["protrna"])
        else:
            case = f"language model, {key[1]} x {key[2]} nt (tokens/s)"
            ratio = max(got["protrna"]) / max(got["original"])
        lines.append(f"| {case} | {' / '.join(f'{v:.3g}' for v in got['original'])} | "
                     f"{' / '.join(f'{v:.3g}' for v in got['protrna'])} | {ratio:.2f}x | "
                     f"{peak['original']:.2f} / {peak['protrna']:.2f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original", type=Path, help="a checkout of github.com/roxie-zhang/ProtRNA")
    parser.add_argument("--lengths", type=int, nargs="*", default=[150, 300, 500], help="the head's lengths")
    parser.add_argument("--lm", action="store_true", help="also time the language model")
    parser.add_argument("--lm-batch", type=int, default=8)
    parser.add_argument("--lm-length", type=int, default=150, help="nt per RNA (152 tokens with BOS and EOS)")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls after the warm-up, the best is kept")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--summarise", type=Path, metavar="DIR", help="print the table of a vs_original_tf.sh run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.summarise:
        print(summarise(args.summarise))
        return
    if args.original is None or not (args.original / "downstream_ss" / "model.py").is_file():
        parser.error(f"--original must be a checkout of github.com/roxie-zhang/ProtRNA (got {args.original})")
    if args.child:
        sys.path.insert(0, str(args.original.resolve()))
        os.chdir(args.original)  # the original's modules import each other from its root
        if args.lm:
            result = measure_lm(args.lm_batch, args.lm_length, args.repeats)
        else:
            result = measure_head(args.lengths[0], args.repeats)
        print(json.dumps(result))
        return

    import tensorflow as tf

    hardware = f"{describe_cpu()}, TensorFlow {tf.__version__} (CPU), its default threads and oneDNN setting"
    cases = [["--lengths", str(n)] for n in args.lengths]
    if args.lm:
        cases.append(["--lengths", "--lm", "--lm-batch", str(args.lm_batch), "--lm-length", str(args.lm_length)])
    results = []
    for case in cases:
        result = run_child(args, case)
        results.append(result)
        what = f"L={result['length']}" if result["part"] == "head" else f"LM {result['batch']} x {result['length']}"
        extra = f", {result['tokens_per_second']:.1f} tokens/s" if result["part"] == "lm" else ""
        print(f"original {what}: {result['seconds']:.3g} s{extra}, peak {result['peak_rss_gb']:.2f} GB",
              file=sys.stderr, flush=True)  # fmt: skip
    command = "python benchmarks/bench_original_tf.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(json.dumps({"hardware": hardware, "command": command, "results": results}, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"hardware": hardware, "command": command, "results": results}, indent=2))


if __name__ == "__main__":
    main()
