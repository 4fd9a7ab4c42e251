"""Language-model throughput: ``protrna embed``'s path against plain ``transformers``.

Builds the full ESM-2 650M architecture with the ProtRNA vocabulary and random weights (speed
does not depend on the values), saves it once, then measures each variant in a fresh process so
peak memory is its own:

* ``hf-fp32``: ``EsmForMaskedLM.from_pretrained`` as a Hugging Face user would run it (fp32, SDPA);
* ``protrna-fp32`` / ``protrna-bf16``: the embed path (``WindowedEncoder``, oneDNN-packed linears
  on CPU, bf16 weights for the latter);
* ``load``: seconds to load the saved model with ``protrna.load_pretrained_model``, from disk
  (the file evicted from the page cache first) and cached.

Throughput is tokens per second (BOS/EOS included, padding excluded) over ``--batch`` sequences
of ``--length`` nt, best of ``--repeats`` after a warm-up. The original TF code was measured at
262 tokens/s for batch 8 x 152 tokens on the reference 2-core CPU (REFERENCE.md section 7).

    python benchmarks/bench_embed.py                      # markdown table on stdout
    python benchmarks/bench_embed.py --variants protrna-bf16 --layers 4   # quick look
    python benchmarks/bench_embed.py --device cuda --batch 64               # on a GPU

With ``--device cuda`` each timed step ends with ``torch.cuda.synchronize()`` and the peak is the
GPU memory PyTorch allocated.
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

VARIANTS = ("load", "hf-fp32", "protrna-fp32", "protrna-bf16")


def random_sequences(batch: int, length: int, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    return ["".join(rng.choice("ACGU") for _ in range(length)) for _ in range(batch)]


def build_model(directory: Path, layers: int) -> Path:
    import torch

    from protrna import ProtRNA, ProtRNAConfig

    marker = directory / "config.json"
    if not marker.exists():
        torch.manual_seed(0)
        ProtRNA(ProtRNAConfig(num_layers=layers)).save_pretrained(directory)
    return directory


def measure(variant: str, model_dir: Path, batch: int, length: int, repeats: int, device: str = "cpu") -> dict:
    """Runs inside the child process."""
    import torch

    on_gpu = torch.device(device).type == "cuda"

    sequences = random_sequences(batch, length)
    tokens_per_batch = batch * (length + 2)
    result: dict = {"variant": variant}
    if variant == "load":
        from protrna import load_pretrained_model

        # Cold: the weights evicted from the page cache first (as after a reboot or a fresh
        # download), then warm: the same load again, the file now cached by the OS.
        for cache in ("cold", "warm"):
            if cache == "cold":
                evict_from_page_cache(model_dir)
            start = time.perf_counter()
            model = load_pretrained_model(str(model_dir), device=device)
            loaded = time.perf_counter() - start
            # Weights may be memory-mapped and read on first use: time a first forward pass too.
            with torch.inference_mode():
                model(model.alphabet.get_batch_converter()(["ACGU"]).to(device))
            if on_gpu:
                torch.cuda.synchronize()
            suffix = "" if cache == "warm" else "_cold"
            result["seconds" + suffix] = loaded
            result["seconds_to_first_output" + suffix] = time.perf_counter() - start
            del model
    elif variant == "hf-fp32":
        from transformers import EsmForMaskedLM

        from protrna.alphabet import Alphabet

        model = EsmForMaskedLM.from_pretrained(str(model_dir)).to(device).eval()
        tokens = Alphabet().get_batch_converter()(sequences).to(device)

        def step():
            with torch.inference_mode():
                model(input_ids=tokens, attention_mask=tokens.ne(1).long(), output_hidden_states=False)

        result.update(_time(step, repeats, tokens_per_batch))
    else:
        from protrna.cpu import pack_for_cpu_inference
        from protrna.runtime import WindowedEncoder, prepare_model

        dtype = variant.split("-")[1].replace("bf16", "bfloat16").replace("fp32", "float32")
        model = prepare_model(str(model_dir), dtype=dtype, device=device)
        pack_for_cpu_inference(model, rows_hint=tokens_per_batch)
        encoder = WindowedEncoder(model, [model.num_layers], max_tokens=tokens_per_batch)
        records = [(f"s{i}", s) for i, s in enumerate(sequences)]

        def step():
            for _ in encoder.encode(records):
                pass

        result.update(_time(step, repeats, tokens_per_batch))
    if on_gpu:
        result["peak_gpu_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


def evict_from_page_cache(directory: Path) -> None:
    """Ask the kernel to drop the cached pages of every file in ``directory`` (no root needed;
    Linux honours it for files not being written)."""
    for path in directory.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _time(step, repeats: int, tokens: int) -> dict:
    import torch

    synchronize = torch.cuda.synchronize if torch.cuda.is_initialized() else (lambda: None)
    step()  # warm-up: allocations, oneDNN / cuBLAS kernel selection
    best = float("inf")
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        step()
        synchronize()
        best = min(best, time.perf_counter() - start)
    return {"seconds": best, "tokens_per_s": tokens / best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--layers", type=int, default=33, help="transformer blocks (33 = ProtRNA 650M)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=150, help="nucleotides per sequence")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "protrna-bench")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", nargs=1, help=argparse.SUPPRESS)
    args = parser.parse_args()

    model_dir = args.workdir / f"esm2-{args.layers}layers-random"
    if args.child:
        print(json.dumps(measure(args.child[0], model_dir, args.batch, args.length, args.repeats, args.device)))
        return

    build_model(model_dir, args.layers)
    rows = []
    for variant in args.variants:
        command = [sys.executable, __file__, "--child", variant, "--layers", str(args.layers),
                   "--batch", str(args.batch), "--length", str(args.length),
                   "--repeats", str(args.repeats), "--workdir", str(args.workdir), "--device", args.device]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
        print(f"# {variant}: {rows[-1]}", file=sys.stderr)

    base = next((r["tokens_per_s"] for r in rows if r["variant"] == "hf-fp32"), None)
    print(f"Hardware: {describe()}")
    print(f"Model: {args.layers} blocks x 1280 (ESM-2 650M shape), batch {args.batch} x {args.length + 2} tokens\n")
    for r in rows:
        if r["variant"] == "load":
            print(f"Loading the saved model: {r['seconds_cold']:.1f} s from disk (page cache evicted), "
                  f"{r['seconds']:.1f} s cached; to the first output: {r['seconds_to_first_output_cold']:.1f} s / "
                  f"{r['seconds_to_first_output']:.1f} s\n")
    throughput = [r for r in rows if r["variant"] != "load"]
    peak = "peak GPU GB (allocated)" if args.device.startswith("cuda") else "peak RSS (GB)"
    print(f"| variant | tokens/s | vs hf-fp32 | seconds | {peak} |")
    print("|---|---|---|---|---|")
    for r in throughput:
        speed = r.get("tokens_per_s")
        ratio = f"{speed / base:.2f}x" if speed and base else ""
        print(f"| {r['variant']} | {speed:.0f} | {ratio} | {r['seconds']:.3g} | {r.get('peak_gpu_gb', r['peak_rss_gb']):.2f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"hardware": describe(), "args": vars(args) | {"workdir": str(args.workdir),
                                         "json": str(args.json)}, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
