"""Two processes under torchrun, gloo on CPU: the multi-GPU code path, on a machine without GPU."""

import json
import os
import shutil
import subprocess
import sys

import pytest

LAUNCHER = """
import sys
from protrna import cli
cli.COMMAND_MODULES = ("protrna.train.pretrain",)  # only the command under test
sys.exit(cli.main())
"""


def torchrun(tmp_path, *args):
    script = tmp_path / "launch.py"
    script.write_text(LAUNCHER)
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        *args,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def read_log(path):
    return [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_torchrun_two_processes_train_save_and_resume(tmp_path, esm2_dir, rna_fasta, valid_fasta):
    out = tmp_path / "run"
    args = [
        "pretrain",
        "--esm",
        str(esm2_dir),
        "--train",
        str(rna_fasta),
        "--valid",
        str(valid_fasta),
        "--output",
        str(out),
        "--trainable-layers",
        "1",
        "--max-tokens",
        "1024",
        "--shuffle-buffer",
        "16",
        "--max-steps",
        "4",
        "--warmup-steps",
        "1",
        "--lr",
        "2e-3",
        "--log-every",
        "1",
        "--save-every",
        "2",
        "--eval-every",
        "2",
        "--keep-checkpoints",
        "0",
    ]
    done = torchrun(tmp_path, *args)
    assert "2 process(es)" in done.stderr
    records = read_log(out)
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # one writer: rank 0
    assert sorted(p.name for p in (out / "checkpoints" / "step_00000002").iterdir()) == [
        "rank_0.pt",
        "rank_1.pt",
        "trainer.pt",
    ]
    assert (out / "final" / "model.safetensors").exists()

    # Resume both processes from step 2, as after a kill: the same losses follow.
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_00000004")
    shutil.rmtree(resumed / "final")
    torchrun(tmp_path, *[str(resumed) if a == str(out) else a for a in args], "--resume")
    again = read_log(resumed)
    assert [r["step"] for r in again] == [1, 2, 3, 4]
    for a, b in zip(records, again):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6, abs=1e-7)
        if "valid_loss" in a:
            assert b["valid_loss"] == pytest.approx(a["valid_loss"], rel=1e-6)
