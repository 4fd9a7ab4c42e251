"""A job killed with SIGKILL and rerun gives what an uninterrupted run gives, bit for bit.

The runs are the real command line in separate processes. Importing protrna takes seconds on a
small CPU, so one launcher process imports it once and forks a fresh child for every run (it
runs nothing itself, so the fork is clean); the test kills a child once its output shows the
wanted progress, then reruns the same command into the same path.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from protrna.heads.ss import RotaFormer, RotaFormerConfig

pytestmark = pytest.mark.slow  # a few seconds per test: every run is a fresh process

LAUNCHER = r"""
import json, os, sys
from protrna.cli import build_parser, main
import protrna.confidence, protrna.embed, protrna.execution, protrna.fold, protrna.model  # imported once, not per run
build_parser()
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:  # the child: the command's own output must not mix with the replies
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        sys.stdout = open(1, "w", closefd=False)
        os._exit(main(json.loads(line)))
    print(pid, flush=True)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class Launcher:
    """Runs ``protrna`` commands in forked children of one warm process."""

    def __init__(self):
        env = dict(os.environ, OMP_NUM_THREADS="1", HDF5_USE_FILE_LOCKING="FALSE")
        self.process = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=env)

    def run(self, argv, kill_when=None, timeout=120) -> int | None:
        """The exit status of ``protrna argv``; with ``kill_when``, the child is SIGKILLed as soon as
        ``kill_when()`` holds (``None`` is returned) and the test fails if it ended first."""
        self.process.stdin.write(json.dumps([str(a) for a in argv]) + "\n")
        self.process.stdin.flush()
        pid = int(self.process.stdout.readline())
        if kill_when is not None:
            deadline = time.time() + timeout
            while not kill_when():
                assert time.time() < deadline, "the run never reached the kill point"
                time.sleep(0.01)
            os.kill(pid, signal.SIGKILL)  # an error here: it ended before the kill, make the input longer
        status = int(self.process.stdout.readline())
        if kill_when is not None:
            assert status == -signal.SIGKILL, f"the run ended ({status}) before it was killed; make the input longer"
            return None
        return status

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def launcher():
    launcher = Launcher()
    yield launcher
    launcher.close()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny language model and head on disk; RNAs of varied lengths, short ones for the head
    (its cost grows with the cube of the length)."""
    from protrna import ProtRNA, ProtRNAConfig

    folder = tmp_path_factory.mktemp("killed")
    torch.manual_seed(0)
    ProtRNA(ProtRNAConfig(num_layers=2, embed_dim=64, attention_heads=2)).save_pretrained(folder / "lm")
    torch.manual_seed(1)
    RotaFormer(RotaFormerConfig(input_dim=64, single_dim=32, pair_dim=16, num_blocks=1, msa_heads=2, pair_heads=2,
                                head_width=8, outer_dim=8, transition_factor=2)).save_pretrained(folder / "head")
    rng = np.random.default_rng(0)
    counts = {}
    for name, (size, longest) in {"embed": (260, 160), "fold": (110, 36)}.items():
        lengths = rng.integers(6, longest, size=size)
        records = [(f"rna{i}", "".join(rng.choice(list("ACGU"), n))) for i, n in enumerate(lengths)]
        (folder / f"{name}.fa").write_text("".join(f">{i}\n{sequence}\n" for i, sequence in records))
        counts[name] = size
    return folder, counts


def embedded(path: Path) -> int:
    try:
        with h5py.File(path, "r", locking=False) as h5:
            return int(h5["done"][:].sum())
    except (OSError, KeyError):  # not created yet, or caught between two writes of its header
        return 0


def datasets(path: Path) -> dict[str, np.ndarray]:
    found = {}
    with h5py.File(path, "r") as h5:
        h5.visititems(lambda name, item: found.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return found


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_killed_embed_resumes_to_the_uninterrupted_file(launcher, saved, tmp_path, dtype):
    folder, counts = saved
    count = counts["embed"]
    common = [folder / "embed.fa", "--model", folder / "lm", "--include", "mean", "per_tok", "bos",
              "--layers", "1", "2", "--dtype", dtype, "--max-tokens", "400", "--quiet"]
    assert launcher.run(["embed", *common, "-o", tmp_path / "clean.h5"]) == 0
    out = tmp_path / "out.h5"
    partial = tmp_path / "out.h5.partial"
    for at_least in (64, 128):  # records are flagged done 64 at a time
        launcher.run(["embed", *common, "-o", out], kill_when=lambda: embedded(partial) >= at_least)
        assert not out.exists() and at_least <= embedded(partial) < count
    assert launcher.run(["embed", *common, "-o", out]) == 0
    clean, resumed = datasets(tmp_path / "clean.h5"), datasets(out)
    assert sorted(resumed) == sorted(clean) and "per_tok/2" in clean
    for name in clean:
        assert np.array_equal(resumed[name], clean[name]), f"{name} differs after the resume"


def folded(partial: Path) -> int:
    try:
        return partial.read_bytes().count(b"\n") // 3
    except OSError:
        return 0


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_killed_fold_resumes_to_the_uninterrupted_files(launcher, saved, tmp_path, dtype):
    folder, counts = saved
    count = counts["fold"]
    common = [folder / "fold.fa", "--model", folder / "lm", "--head", folder / "head", "--probabilities",
              "--format", "bpseq", "--dtype", dtype, "--max-tokens", "400", "--quiet"]
    assert launcher.run(["fold", *common, "-o", tmp_path / "clean"]) == 0
    out = tmp_path / "out"
    partial = out / "predictions.dbn.partial"
    for at_least in (20, 80):  # inside the first and the second chunk of 64 records
        launcher.run(["fold", *common, "-o", out], kill_when=lambda: folded(partial) >= at_least)
        assert not (out / "predictions.dbn").exists() and at_least <= folded(partial) < count
    assert launcher.run(["fold", *common, "-o", out]) == 0
    clean = sorted(p.name for p in (tmp_path / "clean").iterdir())
    assert sorted(p.name for p in out.iterdir()) == clean
    assert len([name for name in clean if name.endswith(".npy")]) == count
    for name in clean:
        if name.endswith(".npy"):
            assert np.array_equal(np.load(out / name), np.load(tmp_path / "clean" / name)), f"{name} differs"
        elif name != "fold_settings.json":
            assert (out / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), f"{name} differs"
