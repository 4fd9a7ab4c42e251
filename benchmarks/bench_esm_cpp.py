"""The language model beside esm.cpp: ``protrna embed``'s path and ``esm-cpp`` on the same weights.

`esm-cpp <https://pypi.org/project/esm-cpp/>`_ is a C++ inference engine for ESM-2 (packed
variable-length batches, W8A8 INT8 with SmoothQuant). It is an optional benchmark dependency
(``pip install 'protrna[bench]'``); nothing else in protrna needs it.

Same weights for both engines. One random ProtRNA model of the 650M width (seed 0) per depth is saved
with ``save_pretrained``; esm.cpp reads only 33-token ESM-2 checkpoints ("vocab size mismatch:
expected 33 got 38"), so the script writes a 33-token copy of the same weights for it: the
transformer is unchanged and the five RNA token rows (a u g c x) take the slots of the protein
letters A U G C X, so an RNA written in those letters is the same computation in both engines.
Two more differences of the file format are bridged exactly, not approximated:

* esm.cpp always applies ESM-2's token-dropout scale (x 0.88 with no ``<mask>`` in the input);
  ProtRNA runs without it. The copy stores the embedding rows divided by 0.88.
* esm.cpp ties the output layer to the (now divided) embedding, so its logits are ProtRNA's
  divided by 0.88 (the bias is divided too); the agreement check multiplies them back.

Engines, each in its own process (peak RSS is its own), alternating in ``--rounds`` rounds so
that the load of a shared machine hits all of them:

* ``esm-cpp-fp32``: ``Model.load_from_safetensors`` + ``forward_scheduled`` (packed batches);
* ``esm-cpp-int8``: SmoothQuant (alpha 0.5, calibrated on ``--calibration`` TS0 RNAs outside
  the timed set) + ``quantize_weights``, saved as GGUF once, then ``load_from_gguf``;
* ``protrna-fp32``: what ``protrna embed`` runs: ``prepare_model``, oneDNN packing and
  :class:`~protrna.runtime.WindowedEncoder` with the CPU token budget.

Workloads, at ``--layers`` blocks of the 650M width: a uniform batch (``--batch`` x ``--length``
nt, best of ``--repeats`` after a warm-up) and a variable-length set: ``--records`` TS0 RNAs taken
at evenly spaced ranks of length (a stratified sample of all 1,305, which are 180k tokens), one
pass per round. Tokens/s count BOS/EOS and no padding. esm.cpp 0.2.1 has no AVX2 kernels (its
reference scalar path runs at the same speed), so on an AVX2-only CPU one 650M pass over the
uniform batch takes it ~13 min: there, run the workloads at ``--layers 1`` (every block has the
same shape) and let the probe check full depth. When ``--probe-layers`` differs from
``--layers``, protrna fp32 also runs both workloads at the probe's depth.

The probe (``--probe-layers``, 33 by default): every engine, and ``protrna-bf16``, on one RNA of
``--probe-length`` nt. bf16 is only a note there: on a CPU without AVX512-BF16 oneDNN refuses it
and PyTorch's fallback kernels run it, so one short RNA shows the bound.

Agreement (last round): final representations (after the last LayerNorm) of esm.cpp fp32 and
INT8 against protrna fp32 (esm.cpp returns hidden states only from its one-sequence forward, so
that is used for the first ``--hidden-records`` of each workload), and the logits of the timed
packed forward against protrna's LM head on its representations.

    pip install --no-deps 'esm-cpp>=0.2'     # the bench extra; it declares numpy<2, runs with 2
    python benchmarks/bench_esm_cpp.py --layers 1 --records 16 --rounds 2 --repeats 2 \
        --json benchmarks/results/esm_cpp_cpu.json                         # what BENCHMARKS.md ran
    python benchmarks/bench_esm_cpp.py --layers 1 --probe-layers 0 --records 4 --rounds 1 --repeats 1  # a quick look
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

ENGINES = ("esm-cpp-fp32", "esm-cpp-int8", "protrna-fp32")
TS0 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "bprna" / "TS0.dbn"
TOKEN_DROPOUT_SCALE = 0.88  # ESM-2's (1 - 0.15 * 0.8) / (1 - share of <mask>), with no <mask>
# ProtRNA's RNA tokens -> the ESM-2 protein letters whose slots they take in esm.cpp's copy.
RNA_TO_PROTEIN_ID = {33: 5, 34: 26, 35: 6, 36: 23, 37: 24}  # a->A, u->U, g->G, c->C, x->X
CLS, EOS = 0, 2


# ---- inputs -------------------------------------------------------------------------------------


def uniform_records(batch: int, length: int) -> list[tuple[str, str]]:
    import random

    rng = random.Random(0)
    return [(f"u{i}", "".join(rng.choice("ACGU") for _ in range(length))) for i in range(batch)]


def ts0_records(path: Path, count: int, calibration: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``count`` records at evenly spaced ranks of length, and ``calibration`` others for INT8."""
    from protrna.structure import read_dbn

    records = [(r.id, r.sequence) for r in read_dbn(path)]
    if count >= len(records):
        chosen = list(range(len(records)))
    else:
        by_length = sorted(range(len(records)), key=lambda i: (len(records[i][1]), i))
        chosen = sorted({by_length[round(k * (len(records) - 1) / (count - 1))] for k in range(count)})
    taken = set(chosen)
    # The shortest records outside the set: esm.cpp's calibration forward is as slow as its timing.
    rest = sorted((i for i in range(len(records)) if i not in taken), key=lambda i: (len(records[i][1]), i))
    return [records[i] for i in chosen], [records[i] for i in rest[:calibration]]


def esm_cpp_ids(sequence: str):
    """The token ids esm.cpp's copy of the model gets for an RNA: BOS, protein-slot ids, EOS."""
    import numpy as np

    from protrna.alphabet import encode_rna

    return np.asarray([CLS] + [RNA_TO_PROTEIN_ID[t] for t in encode_rna(sequence)] + [EOS], dtype=np.int32)


def token_count(records) -> int:
    return sum(len(s) + 2 for _, s in records)


# ---- weights ------------------------------------------------------------------------------------


def model_paths(workdir: Path, layers: int) -> tuple[Path, Path]:
    return workdir / f"protrna-{layers}layers-random", workdir / f"esm-cpp-{layers}layers-random.safetensors"


def gguf_path(esm_file: Path, alpha: float) -> Path:
    return esm_file.with_suffix(f".sq{alpha}-q8.gguf")


def build_models(workdir: Path, layers: int) -> tuple[Path, Path]:
    """The random ProtRNA directory and esm.cpp's 33-token safetensors copy of the same weights
    (a seed-0 model of the 650M width with ``layers`` blocks)."""
    import torch
    from safetensors.torch import load_file, save_file

    from protrna import ProtRNA, ProtRNAConfig

    model_dir, esm_file = model_paths(workdir, layers)
    if not (model_dir / "config.json").exists():
        torch.manual_seed(0)
        model = ProtRNA(ProtRNAConfig(num_layers=layers))
        with torch.no_grad():  # LayerNorms start at 1 / 0: perturb them so a misread one shows
            for name, parameter in model.named_parameters():
                if "LayerNorm" in name or "layer_norm" in name:
                    parameter.add_(0.1 * torch.randn_like(parameter))
        model.save_pretrained(model_dir)
    if not esm_file.exists():
        config = json.loads((model_dir / "config.json").read_text())
        head_dim = config["hidden_size"] // config["num_attention_heads"]
        save_file(esm_cpp_state_dict(load_file(str(model_dir / "model.safetensors")), layers, head_dim), str(esm_file))
    return model_dir, esm_file


def esm_cpp_state_dict(state: dict, layers: int, head_dim: int) -> dict:
    """esm.cpp's 33-token copy of a saved ProtRNA state dict (see the module's docstring)."""
    import torch

    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    converted = {}
    for key, value in state.items():
        # transformers 5 writes the blocks' LayerNorms as gamma/beta; esm.cpp reads weight/bias
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        converted[key] = value.contiguous()
    for i in range(layers):  # esm.cpp insists on the rotary buffer that fair-esm checkpoints carry
        converted[f"esm.encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq"] = inv_freq.clone()
    embedding, bias = state["esm.embeddings.word_embeddings.weight"], state["lm_head.bias"]
    rows, logit_bias = embedding[:33].clone(), bias[:33].clone()
    for rna, protein in RNA_TO_PROTEIN_ID.items():
        rows[protein], logit_bias[protein] = embedding[rna], bias[rna]
    converted["esm.embeddings.word_embeddings.weight"] = (rows / TOKEN_DROPOUT_SCALE).contiguous()
    converted["lm_head.decoder.weight"] = converted["esm.embeddings.word_embeddings.weight"].clone()
    converted["lm_head.bias"] = (logit_bias / TOKEN_DROPOUT_SCALE).contiguous()
    return converted


def quantize_for_esm_cpp(esm_file: Path, calibration: list[tuple[str, str]], alpha: float) -> dict:
    """Runs in a child: esm.cpp's INT8 recipe (SmoothQuant then per-channel INT8) -> GGUF."""
    import esm_cpp

    out = gguf_path(esm_file, alpha)
    start = time.perf_counter()
    model = esm_cpp.Model.load_from_safetensors(str(esm_file))
    observer = esm_cpp.ActivationObserver()
    for _, sequence in calibration:
        ids = esm_cpp_ids(sequence)
        model.forward_with_observer(ids, None, observer)
    model.apply_smoothquant(observer.percentile(99.9), alpha)
    model.quantize_weights()
    model.save_to_gguf(str(out))
    return {"gguf": str(out), "seconds": time.perf_counter() - start, "calibration_records": len(calibration),
            "alpha": alpha, "gguf_gb": out.stat().st_size / 2**30}


# ---- one engine, in its own process -------------------------------------------------------------


def run_engine(engine: str, args, workload: str, dump: Path | None) -> dict:
    """Load ``engine`` at ``args.layers`` blocks and time ``workload``: ``main`` (the uniform batch,
    then the variable-length set) or ``probe`` (one short RNA, for full depth)."""
    import numpy as np

    model_dir, esm_file = model_paths(args.workdir, args.layers)
    uniform = uniform_records(args.batch, args.length)
    varlen, _ = ts0_records(args.ts0, args.records, args.calibration)
    probe = uniform_records(1, args.probe_length)
    result: dict = {"engine": engine, "layers": args.layers, "workload": workload}
    start = time.perf_counter()
    if engine.startswith("esm-cpp"):
        import esm_cpp

        if engine == "esm-cpp-int8":
            gguf = gguf_path(esm_file, args.alpha)
            model = esm_cpp.Model.load_from_gguf(str(gguf))
            if not model.config.weights_quantized:
                raise SystemExit(f"{gguf}: the weights are not quantized")
        else:
            model = esm_cpp.Model.load_from_safetensors(str(esm_file))
        result.update(isa=esm_cpp.current_isa(), threads=esm_cpp.Model.num_threads, version=esm_cpp.__version__)

        probe_hidden: list = []

        def run(records):
            if workload == "probe":  # one sequence: the forward that also returns hidden states
                probe_hidden.clear()
                outputs = []
                for _, sequence in records:
                    logits, states = model.forward_with_hidden_states(esm_cpp_ids(sequence))
                    probe_hidden.append(states[-1][:-1])
                    outputs.append(logits)
                return outputs
            return model.forward_scheduled([esm_cpp_ids(s) for _, s in records])

        def warm_up(records):
            # One sequence only: a whole pass costs as much as a timed one here, and the first
            # call's extra work (sizing the scratch arena) is small beside a pass of ~a minute.
            model.forward(esm_cpp_ids(records[0][1]))

        # protrna's outputs are BOS + residues (the embed path drops EOS): compare the same rows.
        def hidden(records):
            if workload == "probe":
                return probe_hidden[: len(records)]
            return [model.forward_with_hidden_states(esm_cpp_ids(s))[1][-1][:-1] for _, s in records]

        def logits_of(outputs):
            return [o[:-1] * TOKEN_DROPOUT_SCALE for o in outputs]  # undo the tied, divided output layer
    else:
        import torch

        from protrna.cpu import pack_for_cpu_inference
        from protrna.runtime import WindowedEncoder, prepare_model
        from protrna.runtime.defaults import CPU_MAX_TOKENS

        torch.set_num_threads(args.threads)
        dtype = "bfloat16" if engine == "protrna-bf16" else "float32"
        model = prepare_model(str(model_dir), dtype=dtype, device="cpu")
        pack_for_cpu_inference(model, rows_hint=CPU_MAX_TOKENS)
        encoder = WindowedEncoder(model, [model.num_layers], max_tokens=CPU_MAX_TOKENS)
        last = model.num_layers
        result.update(threads=torch.get_num_threads(), torch=torch.__version__, max_tokens=CPU_MAX_TOKENS)

        def run(records):
            by_id = {}
            for item in encoder.encode(records):
                by_id[item.id] = torch.cat([item.bos[last][None], item.per_token[last]])
            return [by_id[name] for name, _ in records]

        def warm_up(records):
            run(records if engine == "protrna-fp32" else records[:1])

        def hidden(records):
            return [o.float().numpy() for o in run(records)]

        @torch.inference_mode()
        def logits_of(outputs):
            # Columns in esm.cpp's order: the 33 ESM-2 tokens with the RNA rows in protein slots.
            columns = list(range(33))
            for rna, protein in RNA_TO_PROTEIN_ID.items():
                columns[protein] = rna
            return [model.lm.lm_head(o.to(model.dtype)).float()[:, columns].numpy() for o in outputs]

    result["load_seconds"] = time.perf_counter() - start
    arrays = {}
    workloads = [("uniform", uniform, args.repeats), ("varlen", varlen, 1)] if workload == "main" else [
        ("probe", probe, 1)]
    for name, records, repeats in workloads:
        warm_up(records if name != "probe" else [("w", "ACGU")])
        times = []
        for _ in range(repeats):
            begin = time.perf_counter()
            outputs = run(records)
            times.append(time.perf_counter() - begin)
        tokens = token_count(records)
        result[name] = {"records": len(records), "tokens": tokens, "seconds": min(times), "seconds_all": times,
                        "tokens_per_s": tokens / min(times)}
        if dump is not None:
            for i, logits in enumerate(logits_of(outputs)):
                arrays[f"{name}_logits_{i}"] = np.asarray(logits, dtype=np.float32)
            # esm.cpp gives hidden states only from its one-sequence forward: check a few there.
            checked = records if engine.startswith("protrna") else records[: args.hidden_records]
            for i, rep in enumerate(hidden(checked) if engine.startswith("esm-cpp") else
                                    [o.float().numpy() for o in outputs[: len(checked)]]):
                arrays[f"{name}_repr_{i}"] = np.asarray(rep, dtype=np.float32)
    result["peak_rss_gb"] = peak_rss_gb()
    if engine == "protrna-bf16":
        seconds = result["probe"]["seconds"]
        flops = 2 * result["probe"]["tokens"] * sum(
            p.numel() for n, p in model.named_parameters() if "encoder.layer" in n)
        result["probe"]["linear_gflop_per_s"] = flops / seconds / 1e9
    if dump is not None:
        np.savez(dump, **arrays)
    return result


def peak_rss_gb() -> float:
    """This process's peak resident memory. Not ``getrusage``'s ``ru_maxrss``: Linux carries that
    over a fork and exec, so a child would report at least its parent's peak; ``VmHWM`` starts
    afresh with the new program."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# ---- the parent: rounds, agreement, report ------------------------------------------------------


def load_average() -> list[float]:
    return list(os.getloadavg())


def agreement(reference: Path, other: Path) -> dict:
    """Max abs diff and per-token cosine of ``other`` against ``reference``, per kind of output."""
    import numpy as np

    a, b = np.load(reference), np.load(other)
    out = {}
    for kind in ("repr", "logits"):
        keys = [k for k in b.files if f"_{kind}_" in k and k in a.files]
        if not keys:
            continue
        diffs, cosines, spreads = [], [], []
        for key in keys:
            x, y = a[key].astype(np.float64), b[key].astype(np.float64)
            if x.shape != y.shape:
                raise SystemExit(f"{other}: {key} has shape {y.shape}, the reference {x.shape}")
            diffs.append(np.abs(x - y).max())
            spreads.append(x.std())
            cosines.extend((x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1)))
        out[kind] = {"sequences": len(keys), "max_abs_diff": float(max(diffs)),
                     "reference_std": float(np.mean(spreads)), "cosine_min": float(min(cosines)),
                     "cosine_mean": float(np.mean(cosines))}
    return out


def protrna_padding(varlen) -> dict:
    """Tokens protrna's batches carry after padding, for the same token budget ``embed`` uses
    (a sample spread over all lengths pads more than the whole set, whose neighbours are close)."""
    from protrna.data.batching import same_cost, sorted_batches
    from protrna.runtime.defaults import CPU_MAX_TOKENS

    lengths = [len(s) + 2 for _, s in varlen]
    batches = sorted_batches(lengths, max_cost=CPU_MAX_TOKENS, cost=same_cost, longest_first=True)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return {"batches": len(batches), "tokens": sum(lengths), "tokens_after_padding": padded,
            "padding_share": 1 - sum(lengths) / padded}


def lscpu() -> dict:
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    return {"model": fields.get("Model name", "").strip(), "family": fields.get("CPU family", "").strip(),
            "cores": os.cpu_count(), "avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
            "avx512_bf16": "avx512_bf16" in flags, "avx_vnni": "avx_vnni" in flags,
            "amx": any(f.startswith("amx") for f in flags)}


def child_command(args, layers: int, *extra) -> list[str]:
    command = [sys.executable, __file__, "--layers", str(layers), "--batch", str(args.batch),
               "--length", str(args.length), "--records", str(args.records), "--calibration", str(args.calibration),
               "--alpha", str(args.alpha), "--repeats", str(args.repeats), "--threads", str(args.threads),
               "--workdir", str(args.workdir), "--hidden-records", str(args.hidden_records),
               "--probe-length", str(args.probe_length), "--ts0", str(args.ts0)]
    return command + list(extra)


def run_child(command: list[str], threads: int) -> dict:
    env = dict(os.environ, ESM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"child {' '.join(command[-6:])} failed with status {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--layers", type=int, default=33,
                        help="blocks of the 650M-wide model for the uniform batch and the set (33 = ESM-2 650M)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=150, help="nt per sequence of the uniform batch")
    parser.add_argument("--records", type=int, default=64, help="TS0 RNAs in the variable-length set")
    parser.add_argument("--calibration", type=int, default=2,
                        help="TS0 RNAs (the shortest outside the set) for SmoothQuant's calibration")
    parser.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant alpha (esm.cpp's default)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of the uniform batch (best counts)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--hidden-records", type=int, default=2,
                        help="sequences per workload whose esm.cpp hidden states are checked")
    parser.add_argument("--probe-layers", type=int, default=33,
                        help="depth of the probe: every engine (and protrna bf16) on one short RNA; 0: none")
    parser.add_argument("--probe-length", type=int, default=30, help="nt of the probe's RNA")
    parser.add_argument("--ts0", type=Path, default=TS0)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "protrna-esm-cpp")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workload", default="main", help=argparse.SUPPRESS)
    parser.add_argument("--dump", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "build":  # in a child, so the parent's memory stays small
        build_models(args.workdir, args.layers)
        print(json.dumps({"built": args.layers}))
        return
    if args.child == "quantize":
        _, calibration = ts0_records(args.ts0, args.records, args.calibration)
        print(json.dumps(quantize_for_esm_cpp(model_paths(args.workdir, args.layers)[1], calibration, args.alpha)))
        return
    if args.child:
        print(json.dumps(run_engine(args.child, args, args.workload, args.dump)))
        return

    try:
        import esm_cpp  # noqa: F401
    except ImportError:
        raise SystemExit("esm-cpp is not installed: pip install 'protrna[bench]' (or pip install esm-cpp)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    uniform = uniform_records(args.batch, args.length)
    varlen, calibration = ts0_records(args.ts0, args.records, args.calibration)
    depths = sorted({args.layers, args.probe_layers} - {0})
    for layers in depths:
        run_child(child_command(args, layers, "--child", "build"), args.threads)
    report: dict = {"command": " ".join(sys.argv), "cpu": lscpu(), "threads": args.threads,
                    "uniform": {"batch": args.batch, "length_nt": args.length, "tokens": token_count(uniform)},
                    "varlen": {"source": str(args.ts0), "records": len(varlen), "tokens": token_count(varlen),
                               "lengths_nt": [len(s) for _, s in varlen]},
                    "calibration_lengths_nt": [len(s) for _, s in calibration],
                    "protrna_padding": protrna_padding(varlen),
                    "protrna_padding_whole_ts0": protrna_padding(ts0_records(args.ts0, 10**9, 0)[0]),
                    "load_average": {"start": load_average()},
                    "int8_preparation": {}, "rounds": [], "probe": []}
    if "esm-cpp-int8" in args.engines:
        for layers in depths:
            row = run_child(child_command(args, layers, "--child", "quantize"), args.threads)
            report["int8_preparation"][str(layers)] = row
            print(f"# int8 at {layers} blocks: {row}", file=sys.stderr)

    # The main runs: every engine at --layers; protrna also at the probe's (full) depth when that
    # differs, since it is fast enough to run the whole workloads there.
    runs = [(engine, args.layers) for engine in args.engines]
    if args.probe_layers and args.probe_layers != args.layers and "protrna-fp32" in args.engines:
        runs.append(("protrna-fp32", args.probe_layers))
    dumps: dict = {}
    for round_index in range(args.rounds):
        # Rotate the order each round so no engine always runs first (or right after another).
        shift = round_index % len(runs)
        for engine, layers in runs[shift:] + runs[:shift]:
            extra = ["--child", engine]
            if round_index == args.rounds - 1:
                dumps[("main", engine, layers)] = args.workdir / f"outputs-main-{engine}-{layers}.npz"
                extra += ["--dump", str(dumps[("main", engine, layers)])]
            before = load_average()
            row = run_child(child_command(args, layers, *extra), args.threads)
            row.update(round=round_index, load_average_before=before, load_average_after=load_average())
            report["rounds"].append(row)
            print(f"# round {round_index} {engine} x{layers}: uniform {row['uniform']['tokens_per_s']:.1f} tok/s, "
                  f"set {row['varlen']['tokens_per_s']:.1f} tok/s, {row['peak_rss_gb']:.2f} GB", file=sys.stderr)
    if args.probe_layers:
        for engine in args.engines + ["protrna-bf16"]:
            dumps[("probe", engine, args.probe_layers)] = args.workdir / f"outputs-probe-{engine}.npz"
            before = load_average()
            row = run_child(child_command(args, args.probe_layers, "--child", engine, "--workload", "probe",
                                          "--dump", str(dumps[("probe", engine, args.probe_layers)])), args.threads)
            row.update(load_average_before=before, load_average_after=load_average())
            report["probe"].append(row)
            print(f"# probe {engine} x{args.probe_layers}: {row['probe']['tokens_per_s']:.2f} tok/s, "
                  f"{row['peak_rss_gb']:.2f} GB", file=sys.stderr)
    report["load_average"]["end"] = load_average()
    report["wall_seconds"] = time.time() - started

    checks = {}
    for (workload, engine, layers), path in dumps.items():
        reference = dumps.get((workload, "protrna-fp32", layers))
        if engine != "protrna-fp32" and reference is not None:
            checks[f"{workload} x{layers}: {engine} vs protrna-fp32"] = agreement(reference, path)
        if engine == "esm-cpp-int8" and (workload, "esm-cpp-fp32", layers) in dumps:
            checks[f"{workload} x{layers}: esm-cpp-int8 vs esm-cpp-fp32"] = agreement(
                dumps[(workload, "esm-cpp-fp32", layers)], path)
    report["agreement"] = checks

    summary = {}
    for engine, layers in runs:
        rows = [r for r in report["rounds"] if r["engine"] == engine and r["layers"] == layers]
        summary[f"{engine} x{layers}"] = {
            "uniform_tokens_per_s": max(r["uniform"]["tokens_per_s"] for r in rows),
            "varlen_tokens_per_s": max(r["varlen"]["tokens_per_s"] for r in rows),
            "peak_rss_gb": max(r["peak_rss_gb"] for r in rows)}
    report["best_of_rounds"] = summary
    print(f"CPU: {report['cpu']}, {args.threads} threads, load average {report['load_average']}")
    print(f"uniform {args.batch} x {args.length + 2} tokens; set: {len(varlen)} TS0 RNAs, {token_count(varlen)} "
          f"tokens (protrna's batches pad them to {report['protrna_padding']['tokens_after_padding']})\n")
    base = summary.get(f"protrna-fp32 x{args.layers}")
    print("| engine x blocks | uniform tokens/s | set tokens/s | vs protrna-fp32 (uniform / set) | peak RSS (GB) |")
    print("|---|---|---|---|---|")
    for name, row in summary.items():
        ratio = (f"{row['uniform_tokens_per_s'] / base['uniform_tokens_per_s']:.3f}x / "
                 f"{row['varlen_tokens_per_s'] / base['varlen_tokens_per_s']:.3f}x") if base else ""
        print(f"| {name} | {row['uniform_tokens_per_s']:.1f} | {row['varlen_tokens_per_s']:.1f} | {ratio} | "
              f"{row['peak_rss_gb']:.2f} |")
    for row in report["probe"]:
        print(f"probe x{row['layers']} {row['engine']}: {row['probe']['tokens_per_s']:.2f} tokens/s, "
              f"{row['peak_rss_gb']:.2f} GB")
    print(json.dumps(checks, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
