"""The benchmark scripts run end to end at toy sizes and write the fields BENCHMARKS.md is made of.

They are tools, not timed tests: nothing here checks a speed, only that each script still runs
against the current package and that what it reports is consistent.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from protrna import kernels

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def test_bench_ss_head_reports_both_dtypes_and_their_difference(tmp_path):
    out = tmp_path / "head.json"
    done = run_script("bench_ss_head.py", "--lengths", "12", "--blocks", "1", "--repeats", "1", "--threads", "1",
                      "--json", str(out), cwd=tmp_path)  # fmt: skip
    results = json.loads(out.read_text())["results"]
    assert [(r["length"], r["dtype"]) for r in results] == [(12, "fp32"), (12, "bf16")]
    for r in results:
        assert r["seconds"] > 0 and len(r["all_seconds"]) == 2 and r["peak_rss_gb"] >= r["rss_before_gb"] > 0
        assert r["cpu_seconds"] > 0 and r["kernels"] in ("fused", "pytorch")
    # bf16 logits stay near the fp32 ones of the same weights and input, and differ from them.
    assert 0 < results[1]["max_abs_diff_vs_fp32"] < results[1]["logit_std"]
    assert "| 12 | bf16 |" in done.stdout


def test_bench_ss_head_compares_the_kernels_alternating(tmp_path):
    out = tmp_path / "head.json"
    run_script("bench_ss_head.py", "--lengths", "12", "--blocks", "1", "--repeats", "0", "--threads", "1",
               "--dtypes", "fp32", "--kernels", "fused", "pytorch", "--rounds", "2", "--json", str(out),
               cwd=tmp_path)  # fmt: skip
    results = json.loads(out.read_text())["results"]
    fused = "fused" if kernels.available() else "pytorch"  # where the kernels cannot be built: PyTorch's twice
    assert [(r["round"], r["kernels"]) for r in results] == [(0, fused), (0, "pytorch"), (1, fused), (1, "pytorch")]


def test_profile_ss_head_times_every_update_and_kind_of_operation(tmp_path):
    out = tmp_path / "profile.json"
    done = run_script("profile_ss_head.py", "--lengths", "16", "--blocks", "1", "--repeats", "1",
                      "--json", str(out), cwd=tmp_path)  # fmt: skip
    (result,) = json.loads(out.read_text())["results"]
    updates = {"row_attention", "single_transition", "outer_product_mean", "triangle_multiplication_outgoing",
               "triangle_multiplication_incoming", "triangle_attention_starting", "triangle_attention_ending",
               "pair_transition"}  # fmt: skip
    modules = result["modules_seconds_per_block"]
    assert set(modules) == updates | {"whole head (all blocks)"}
    assert all(seconds > 0 for seconds in modules.values())
    assert sum(modules[name] for name in updates) < modules["whole head (all blocks)"]  # one block here
    operations = result["operations_seconds_per_block_one_thread"]
    assert {"matrix products", "softmax", "layer norm", "copies and casts"} <= set(operations)
    assert operations["matrix products"] > 0
    # Every device but the CPU takes the fused-attention path: fewer operations, as many blocks.
    counts = result["dispatched_operations_per_block"]
    assert set(counts) == {"cpu", "gpu (meta device)"} and 0 < counts["gpu (meta device)"] < counts["cpu"]
    assert "triangle_attention_starting" in done.stdout


def test_bench_embed_runs_each_variant_in_its_own_process(tmp_path):
    variants = ["hf-fp32", "protrna-bf16"]
    out = tmp_path / "embed.json"
    run_script("bench_embed.py", "--variants", *variants, "--layers", "1", "--batch", "2", "--length", "10",
               "--repeats", "1", "--workdir", str(tmp_path / "work"), "--json", str(out), cwd=tmp_path)  # fmt: skip
    results = json.loads(out.read_text())["results"]
    assert [r["variant"] for r in results] == variants
    for r in results:
        assert r["tokens_per_s"] == pytest.approx(2 * 12 / r["seconds"], rel=1e-6)


def test_bench_long_fold_times_protrna_and_rnaplfold_on_the_same_rnas(tmp_path):
    pytest.importorskip("RNA", reason="RNAplfold is ViennaRNA's (pip install viennarna)")
    out = tmp_path / "long.json"
    done = run_script("bench_long_fold.py", "--lengths", "150", "40", "--max-span", "64", "--lm-layers", "1",
                      "--lm-dim", "64", "--lm-heads", "2", "--head-blocks", "1", "--json", str(out),
                      cwd=tmp_path)  # fmt: skip
    results = json.loads(out.read_text())["results"]
    assert [(r["length"], r["tool"]) for r in results] == [(150, "protrna"), (150, "rnaplfold"), (40, "protrna"),
                                                            (40, "rnaplfold")]  # fmt: skip
    long, plfold, short = results[0], results[1], results[2]
    assert long["windows"] == 4 and short["windows"] == 1  # 150 nt: (0, 64) (32, 96) (64, 128) (86, 150)
    assert 0 < long["head_seconds"] <= long["seconds"] and long["lm_seconds"] > 0
    assert long["peak_rss_gb"] >= long["rss_before_gb"] > 0 and long["listed_pairs"] > 0
    assert long["fold_peak_rss_gb"] is None or 0 < long["fold_peak_rss_gb"] <= long["peak_rss_gb"] + 0.01
    assert plfold["command"] == "RNAplfold -W 64 -L 63 -c 0.001" and 0 < plfold["max_span_listed"] <= 63
    assert "| 150 | protrna |" in done.stdout


def _bench_esm_cpp():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_esm_cpp", BENCHMARKS / "bench_esm_cpp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_esm_cpp_samples_ts0_across_lengths_and_calibrates_outside_the_sample(data_dir):
    bench = _bench_esm_cpp()
    ts0 = data_dir / "bprna" / "TS0.dbn"
    chosen, calibration = bench.ts0_records(ts0, 16, 2)
    everything, _ = bench.ts0_records(ts0, 10**9, 0)
    lengths = sorted(len(s) for _, s in everything)
    assert len(chosen) == 16 and len({name for name, _ in chosen}) == 16
    assert min(len(s) for _, s in chosen) == lengths[0] and max(len(s) for _, s in chosen) == lengths[-1]
    assert len(calibration) == 2 and not {n for n, _ in calibration} & {n for n, _ in chosen}
    padding = bench.protrna_padding(chosen)
    assert padding["tokens"] == sum(len(s) + 2 for _, s in chosen) < padding["tokens_after_padding"]


def test_bench_esm_cpp_copy_of_the_weights_computes_what_protrna_computes(tmp_path):
    """esm.cpp reads only 33-token ESM-2 files and always applies token-dropout scaling: the
    benchmark's copy must still give protrna's representations and logits, RNA for RNA."""
    esm_cpp = pytest.importorskip("esm_cpp")
    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file

    from protrna import ProtRNA, ProtRNAConfig

    bench = _bench_esm_cpp()
    torch.manual_seed(0)
    # esm.cpp takes 64 channels per head; LayerNorms perturbed so that a misread one would show.
    model = ProtRNA(ProtRNAConfig(num_layers=2, embed_dim=128, attention_heads=2)).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    model.save_pretrained(tmp_path / "model")
    copy = bench.esm_cpp_state_dict(load_file(str(tmp_path / "model" / "model.safetensors")), 2, 64)
    save_file(copy, str(tmp_path / "esm.safetensors"))
    engine = esm_cpp.Model.load_from_safetensors(str(tmp_path / "esm.safetensors"))

    sequences = ["GGACUNNCAUGCCA", "ACGUA"]
    with torch.inference_mode():
        out = model(model.alphabet.get_batch_converter()(sequences), repr_layers=[2])
    columns = list(range(33))
    for rna, protein in bench.RNA_TO_PROTEIN_ID.items():
        columns[protein] = rna
    packed = engine.forward_scheduled([bench.esm_cpp_ids(s) for s in sequences])
    for row, sequence in enumerate(sequences):
        n = len(sequence) + 2
        ids = bench.esm_cpp_ids(sequence)
        _, states = engine.forward_with_hidden_states(ids)
        expected = out["representations"][2][row, :n].numpy()
        assert np.abs(states[-1] - expected).max() < 1e-4 * np.abs(expected).max()
        logits = out["logits"][row, :n, columns].numpy()
        assert np.abs(packed[row] * bench.TOKEN_DROPOUT_SCALE - logits).max() < 1e-4 * np.abs(logits).max()


def test_bench_original_tf_sets_protrna_runs_against_the_original_of_the_same_case(tmp_path):
    """The summary pairs each case's rounds by engine; the original's JSON here is written by
    hand in that script's format (its own runs need TensorFlow: see the next test)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for round_ in (1, 2):
        run_script("bench_ss_head.py", "--lengths", "12", "--blocks", "1", "--repeats", "0", "--threads", "1",
                   "--dtypes", "fp32", "--json", str(runs / f"protrna_head_L12_r{round_}.json"), cwd=tmp_path)  # fmt: skip
    original = [{"part": "head", "length": 12, "seconds": s, "peak_rss_gb": 0.5} for s in (40.0, 30.0)]
    (runs / "original_head_L12.json").write_text(json.dumps({"results": original}))
    # A case with no protrna run is left out rather than shown half-empty.
    (runs / "original_head_L99.json").write_text(json.dumps({"results": [original[0] | {"length": 99}]}))
    protrna = [json.loads((runs / f"protrna_head_L12_r{r}.json").read_text())["results"][0] for r in (1, 2)]

    table = run_script("bench_original_tf.py", "--summarise", str(runs), cwd=tmp_path).stdout
    (row,) = [line for line in table.splitlines() if line.startswith("| head")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[0] == "head, L = 12 (s)" and cells[1] == "40 / 30"
    assert cells[2] == " / ".join(f"{r['seconds']:.3g}" for r in protrna)
    assert cells[3] == f"{30.0 / min(r['seconds'] for r in protrna):.2f}x"
    assert cells[4] == f"0.50 / {max(r['peak_rss_gb'] for r in protrna):.2f}"


def test_bench_original_tf_names_what_it_needs(tmp_path):
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_original_tf.py"), "--original", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 2 and "checkout of github.com/roxie-zhang/ProtRNA" in done.stderr


@pytest.mark.skipif(not (os.environ.get("PROTRNA_TF_PYTHON") and os.environ.get("PROTRNA_ORIGINAL")),
                    reason="set PROTRNA_TF_PYTHON (a python with tensorflow 2.14) and PROTRNA_ORIGINAL (a checkout "
                    "of github.com/roxie-zhang/ProtRNA) to run the original TensorFlow code")  # fmt: skip
def test_bench_original_tf_times_the_original_head_and_language_model(tmp_path):
    out = tmp_path / "original.json"
    done = subprocess.run([os.environ["PROTRNA_TF_PYTHON"], str(BENCHMARKS / "bench_original_tf.py"),
                           "--original", os.environ["PROTRNA_ORIGINAL"], "--lengths", "12", "--lm", "--lm-batch", "2",
                           "--lm-length", "10", "--repeats", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    head, lm = json.loads(out.read_text())["results"]
    assert head["part"] == "head" and head["length"] == 12 and len(head["all_seconds"]) == 2
    assert lm["part"] == "lm" and lm["tokens"] == 2 * 12
    assert lm["tokens_per_second"] == pytest.approx(lm["tokens"] / lm["seconds"])
    assert 0 < head["peak_rss_gb"] < lm["peak_rss_gb"]  # the 650M model's weights
