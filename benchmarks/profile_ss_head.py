"""Where the RotaFormer head's time goes: seconds per Evoformer module, and per kind of operation.

Two views of one Evoformer block (released widths, random weights) on one RNA of each length:

* **Modules**, run as the head runs (all threads, its own CPU settings): seconds of each of the
  block's eight updates, the average over the timed blocks.
* **Operations**, from ``torch.profiler`` with one thread (so that self times add up to the wall
  time): matrix products (oneDNN linear layers, batched matmuls, the convolution), softmax,
  layer norm, copies and casts (layout changes, dtype conversions), the fused gate and residual
  kernels (:mod:`protrna.kernels`), and the other element-wise work. ``PROTRNA_NO_EXTENSION=1``
  profiles PyTorch's kernels instead of the compiled ones.
* **Dispatched operations** per block, on the CPU path and on the path every other device takes
  (counted on PyTorch's ``meta`` device, which computes shapes only). On a GPU each one is at
  least one kernel launch of a few microseconds, so this count bounds how fast short RNAs run.

The head's benchmark (``bench_ss_head.py``) gives the totals; this script says which part to work
on. Matrix products are the only part that runs near the CPU's peak.

    python benchmarks/profile_ss_head.py                                  # bf16, L = 100 300
    python benchmarks/profile_ss_head.py --lengths 150 --dtype fp32 --blocks 3
    python benchmarks/profile_ss_head.py --json benchmarks/results/ss_head_profile_cpu.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

import torch

from torch.utils._python_dispatch import TorchDispatchMode

from protrna import execution, kernels
from protrna.heads.ss import RotaFormer, RotaFormerConfig

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe as hardware  # noqa: E402 - after the path is set

#: Profiler op names (self time) by kind; anything else is "other element-wise".
KINDS = {
    "matrix products": (
        "mkldnn::_linear_pointwise", "aten::bmm", "aten::baddbmm", "aten::mm", "aten::addmm", "aten::mkldnn_convolution"
    ),
    "softmax": ("aten::_softmax", "protrna::softmax_with_bias"),
    "layer norm": ("aten::native_layer_norm", "protrna::layer_norm", "protrna::layer_norm_channels_first"),
    "copies and casts": ("aten::copy_",),
    "gates and residual adds (fused)": ("protrna::gated_operand", "protrna::add_"),
}

#: The compiled kernels run outside PyTorch's dispatcher: the profile sees them through these
#: labels (with the PyTorch versions, the aten operations inside the label are their own rows).
FUSED = ("layer_norm", "layer_norm_channels_first", "softmax_with_bias", "gated_operand", "add_")


def module_seconds(head: RotaFormer, representations: torch.Tensor, repeats: int) -> dict[str, float]:
    """Seconds per block of each update, averaged over the blocks and ``repeats`` runs."""
    totals: collections.Counter[str] = collections.Counter()
    # Each update is one call of an execution function with the block's module first; the
    # functions that serve two updates (outgoing / incoming, starting / ending) are told apart by
    # the module. The transition function also runs inside each chunk of the pair transition
    # (on worker threads): only the single transition's calls are counted under its name.
    names = {id(module): name for block in head.blocks for name, module in block.named_children()}
    functions = ("row_attention", "transition", "outer_product_mean", "triangle_multiplication",
                 "triangle_attention", "pair_transition")  # fmt: skip
    originals = {name: getattr(execution, name) for name in functions}

    def timed(call):
        def wrapper(module, *args, **kwargs):
            start = time.perf_counter()
            out = call(module, *args, **kwargs)
            name = names.get(id(module))
            if name is not None and not (call is originals["transition"] and name == "pair_transition"):
                totals[name] += time.perf_counter() - start
            return out

        return wrapper

    try:
        for name in functions:
            setattr(execution, name, timed(originals[name]))
        with torch.inference_mode():
            head(representations)  # warm-up
            totals.clear()
            start = time.perf_counter()
            for _ in range(repeats):
                head(representations)
            wall = (time.perf_counter() - start) / repeats
    finally:
        for name, call in originals.items():
            setattr(execution, name, call)
    runs = repeats * len(head.blocks)
    result = {name: seconds / runs for name, seconds in totals.items()}
    result["whole head (all blocks)"] = wall
    return result


def operation_seconds(head: RotaFormer, representations: torch.Tensor) -> dict[str, float]:
    """Self seconds per kind of operation for one forward pass on one thread, per block."""
    previous = torch.get_num_threads(), head.chunk_threads
    torch.set_num_threads(1)
    head.chunk_threads = 1
    originals = {name: getattr(kernels, name) for name in FUSED}

    def labelled(name, call):
        def wrapper(*args, **kwargs):
            with torch.profiler.record_function(f"protrna::{name}"):
                return call(*args, **kwargs)

        return wrapper

    try:
        for name, call in originals.items():
            setattr(kernels, name, labelled(name, call))
        with torch.inference_mode():
            head(representations)  # warm-up
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
                head(representations)
    finally:
        for name, call in originals.items():
            setattr(kernels, name, call)
        torch.set_num_threads(previous[0])
        head.chunk_threads = previous[1]
    kinds: collections.Counter[str] = collections.Counter()
    for event in profile.key_averages():
        kind = next((k for k, names in KINDS.items() if event.key in names), "other element-wise")
        kinds[kind] += event.self_cpu_time_total / 1e6 / len(head.blocks)
    return dict(kinds)


class _CountOperations(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def dispatched_operations(head: RotaFormer, representations: torch.Tensor) -> dict[str, float]:
    """Operations dispatched per block by one forward pass: on the CPU (one thread: dispatch
    modes do not see worker threads) and off it (the ``meta`` device takes the GPU path)."""
    meta = RotaFormer(head.config).to(device="meta", dtype=head.dtype).eval()
    previous, head.chunk_threads = head.chunk_threads, 1
    counts = {}
    try:
        for path, module in (("cpu", head), ("gpu (meta device)", meta)):
            with torch.inference_mode(), _CountOperations() as counter:
                module(representations.to(module.conv.weight.device))
            counts[path] = counter.count / len(head.blocks)
    finally:
        head.chunk_threads = previous
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--blocks", type=int, default=2, help="Evoformer blocks timed (each is the same work)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs for the module view")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads for the module view")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    results = []
    for length in args.lengths:
        torch.manual_seed(0)
        head = RotaFormer(RotaFormerConfig(num_blocks=args.blocks)).eval().to(dtype)
        representations = torch.randn(1, length + 2, head.config.input_dim)
        operations = operation_seconds(head, representations)
        modules = module_seconds(head, representations, args.repeats)
        results.append({"length": length, "modules_seconds_per_block": modules,
                        "operations_seconds_per_block_one_thread": operations,
                        "dispatched_operations_per_block": dispatched_operations(head, representations)})  # fmt: skip
        print(f"L={length} done", file=sys.stderr, flush=True)

    command = "python benchmarks/profile_ss_head.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"Hardware: {hardware()}; {args.dtype}, {args.threads} threads (modules), 1 thread (operations)\n")
    print(f"Command: `{command.strip()}`\n")
    for r in results:
        modules, operations = r["modules_seconds_per_block"], r["operations_seconds_per_block_one_thread"]
        print(f"L = {r['length']}: ms per block, {args.threads} threads\n")
        print("| update | ms |\n|---|---|")
        per_block = {k: v for k, v in modules.items() if k != "whole head (all blocks)"}
        for name, seconds in sorted(per_block.items(), key=lambda item: -item[1]):
            print(f"| {name} | {seconds * 1e3:.1f} |")
        print(f"| sum of the updates | {sum(per_block.values()) * 1e3:.1f} |\n")
        total = sum(operations.values())
        print(f"L = {r['length']}: one thread, ms per block by kind of operation\n")
        print("| kind | ms | share |\n|---|---|---|")
        for kind, seconds in sorted(operations.items(), key=lambda item: -item[1]):
            print(f"| {kind} | {seconds * 1e3:.1f} | {seconds / total:.0%} |")
        counts = r["dispatched_operations_per_block"]
        print(f"\nL = {r['length']}: dispatched operations per block: "
              + ", ".join(f"{path} {count:,.0f}" for path, count in counts.items()))
        print()
    if args.json:
        args.json.write_text(json.dumps({"hardware": hardware(), "dtype": args.dtype, "threads": args.threads,
                                         "command": command, "results": results}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
