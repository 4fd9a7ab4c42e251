"""RotaFormer secondary-structure head: seconds and peak memory per sequence length and dtype.

Times the full 12-block head (released widths, random weights: speed does not depend on the
values) on one sequence of each ``--lengths`` under ``torch.inference_mode()``, best of
``--repeats`` after a warm-up run. Each (length, dtype) runs in a fresh process, so its peak
resident memory (``ru_maxrss``, the whole process: Python, torch and the head) is its own. The
bf16 rows also give the largest logit difference from the fp32 run on the same weights and input.
With ``--device cuda`` the time is taken after ``torch.cuda.synchronize()`` and the peak is the
GPU memory PyTorch allocated (``torch.cuda.max_memory_allocated``).

``--kernels fused pytorch`` runs each case with the compiled CPU kernels (:mod:`protrna.kernels`,
the default) and with ``PROTRNA_NO_EXTENSION=1``, and ``--rounds`` repeats the whole set, cases
alternating, for a machine shared with other work. ``cpu_seconds`` is the process's CPU time over
the best run (all threads), less sensitive than wall time to other processes taking the cores.

The original TensorFlow head was measured at 3.4 / 15.2 / 44.3 s with 0.8 / 2.5 / 6.8 GB peak at
L = 150 / 300 / 500 on the reference 2-core CPU (REFERENCE.md section 7); those are the
``TF s`` column.

    python benchmarks/bench_ss_head.py                         # markdown table on stdout
    python benchmarks/bench_ss_head.py --lengths 150 --dtypes bf16 --repeats 1 --blocks 2
    python benchmarks/bench_ss_head.py --json ss_head.json     # also write the numbers
    python benchmarks/bench_ss_head.py --device cuda --lengths 150 300 500 1000 2000
    python benchmarks/bench_ss_head.py --lengths 300 --dtypes fp32 --kernels fused pytorch --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe  # noqa: E402  (benchmarks/machine.py, beside this script)

#: The original TensorFlow head on the reference CPU: L -> (seconds, peak GB).
ORIGINAL_TF = {150: (3.4, 0.8), 300: (15.2, 2.5), 500: (44.3, 6.8)}


def measure(length: int, dtype_name: str, repeats: int, threads: int, blocks: int, chunk_size: int | None,
            logits_path: str | None, device: str = "cpu", chunk_threads: int | None = None) -> dict:
    """Runs inside the child process."""
    import numpy as np
    import torch

    from protrna import kernels
    from protrna.heads.ss import RotaFormer, RotaFormerConfig

    torch.set_num_threads(threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    torch.manual_seed(0)  # the same weights and input in every process
    head = RotaFormer(RotaFormerConfig(num_blocks=blocks)).eval()
    representations = torch.randn(1, length + 2, head.config.input_dim).to(device)
    head = head.to(device=device, dtype=dtype)
    head.chunk_threads = chunk_threads  # None: the automatic choice (protrna.execution.pair_logits)
    on_gpu = torch.device(device).type == "cuda"
    synchronize = torch.cuda.synchronize if on_gpu else (lambda: None)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    fused = torch.device(device).type == "cpu" and kernels.available()  # built here if need be, not timed
    seconds, cpu_seconds = [], []
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first run warms up oneDNN / cuBLAS and the allocator
            synchronize()
            start, cpu_start = time.perf_counter(), time.process_time()
            logits = head(representations, chunk_size=chunk_size)
            synchronize()
            seconds.append(time.perf_counter() - start)
            cpu_seconds.append(time.process_time() - cpu_start)
    if logits_path:
        np.save(logits_path, logits.float().cpu().numpy())
    gpu = {"peak_gpu_gb": torch.cuda.max_memory_allocated(device) / 1e9} if on_gpu else {}
    return gpu | {
        "device": device,
        "length": length,
        "dtype": dtype_name,
        "threads": threads,
        "blocks": blocks,
        "chunk_size": chunk_size,
        "chunk_threads": chunk_threads,
        "kernels": "fused" if fused else "pytorch",
        "seconds": min(seconds[1:] or seconds),  # --repeats 0: the one, cold, run
        "all_seconds": [round(s, 3) for s in seconds],
        "cpu_seconds": min(cpu_seconds[1:] or cpu_seconds),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,  # KB on Linux
        "rss_before_gb": base_rss,
        "logit_std": float(logits.float().std()),
        "load_average_1min": os.getloadavg()[0],  # other work on the machine while this ran
    }


def run_child(args: argparse.Namespace, length: int, dtype: str, logits_path: str, kernels: str = "fused") -> dict:
    command = [
        sys.executable, __file__, "--child", "--lengths", str(length), "--dtypes", dtype,
        "--repeats", str(args.repeats), "--threads", str(args.threads), "--blocks", str(args.blocks),
        "--save-logits", logits_path, "--device", args.device,
    ]  # fmt: skip
    if args.chunk_size:
        command += ["--chunk-size", str(args.chunk_size)]
    if args.chunk_threads:
        command += ["--chunk-threads", str(args.chunk_threads)]
    env = dict(os.environ, PROTRNA_NO_EXTENSION="1") if kernels == "pytorch" else None
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)  # stderr raised below
    if done.returncode != 0:
        raise RuntimeError(f"benchmark child for L={length} {dtype} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    on_gpu = any("peak_gpu_gb" in r for r in results)
    peak = "peak GPU GB (allocated)" if on_gpu else "peak RSS GB"
    lines = [
        f"| L | dtype | kernels | seconds | CPU seconds | {peak} | TF s (CPU) | speed-up vs TF | TF peak GB | "
        "max abs logit diff vs fp32 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        tf_seconds, tf_peak = ORIGINAL_TF.get(r["length"], (None, None))
        speedup = f"{tf_seconds / r['seconds']:.1f}x" if tf_seconds and r["blocks"] == 12 else "-"
        diff = f"{r['max_abs_diff_vs_fp32']:.3g} (logit std {r['logit_std']:.2f})" if "max_abs_diff_vs_fp32" in r else "-"
        lines.append(
            f"| {r['length']} | {r['dtype']} | {r.get('kernels', '-')} | {r['seconds']:.3g} | {r['cpu_seconds']:.3g} | "
            f"{r.get('peak_gpu_gb', r['peak_rss_gb']):.2f} | "
            f"{tf_seconds or '-'} | {speedup} | {tf_peak or '-'} | {diff} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[150, 300, 500, 1000])
    parser.add_argument("--dtypes", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs after the warm-up, the best is kept (0: one cold run)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    parser.add_argument("--blocks", type=int, default=12, help="Evoformer blocks (12 = the released head)")
    parser.add_argument("--chunk-size", type=int, default=None, help="rows per chunk (default: automatic)")
    parser.add_argument("--chunk-threads", type=int, default=None,
                        help="CPU chunk threads (1: PyTorch's intra-op threads; default: automatic by length)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--kernels", nargs="+", choices=["fused", "pytorch"], default=["fused"],
                        help="CPU non-matrix kernels: compiled (fused, the default) and/or PyTorch's")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=1, help="run the whole set this many times, alternating")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--save-logits", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        result = measure(args.lengths[0], args.dtypes[0], args.repeats, args.threads, args.blocks,
                         args.chunk_size, args.save_logits, args.device, args.chunk_threads)  # fmt: skip
        print(json.dumps(result))
        return

    import numpy as np

    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            for length in args.lengths:
                for kernels in args.kernels:
                    logits = {}
                    for dtype in args.dtypes:
                        path = str(Path(scratch) / f"{length}_{dtype}.npy")
                        result = run_child(args, length, dtype, path, kernels) | {"round": round_}
                        logits[dtype] = np.load(path)
                        if dtype == "bf16" and "fp32" in logits:
                            result["max_abs_diff_vs_fp32"] = float(np.abs(logits["bf16"] - logits["fp32"]).max())
                        results.append(result)
                        print(f"L={length} {dtype} {result['kernels']}: {result['seconds']:.3g} s "
                              f"(CPU {result['cpu_seconds']:.3g} s), peak "
                              f"{result.get('peak_gpu_gb', result['peak_rss_gb']):.2f} GB", file=sys.stderr, flush=True)
    if args.rounds > 1:  # the best round of each case
        best: dict[tuple, dict] = {}
        for r in results:
            key = (r["length"], r["dtype"], r["kernels"])
            best[key] = r if key not in best or r["seconds"] < best[key]["seconds"] else best[key]
        rows = list(best.values())
    else:
        rows = results

    command = "python benchmarks/bench_ss_head.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"Hardware: {describe(args.device)}\n")
    print(f"Command: `{command.strip()}`\n")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"hardware": describe(args.device), "command": command, "results": results}, indent=2))


if __name__ == "__main__":
    main()
