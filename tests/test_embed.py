import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from protrna.data.records import InvalidRecordError
from protrna.embed import embed_fasta
from protrna.model import ProtRNA


def write_fasta(path, records):
    path.write_text("".join(f">{name}\n{seq}\n" for name, seq in records))
    return path


RECORDS = [("r1", "GGGAAACUUCGGUUCCC"), ("r2", "acgtnNNAUGC"), ("r3", "A"), ("r4", "AUGGCUACGUAGCUAGCUAGGCUA")]


def direct(model, sequence, layer):
    """Reference: one sequence through the model, no batching, no windows."""
    with torch.no_grad():
        tokens = model.alphabet.get_batch_converter()([sequence])
        reps = model(tokens, repr_layers=[layer])["representations"][layer][0]
    return reps[1:-1].numpy(), reps[0].numpy()


def test_layout_and_values_match_unbatched_model(tiny_model, tmp_path):
    fasta = write_fasta(tmp_path / "in.fa", RECORDS)
    out = embed_fasta(fasta, tmp_path / "out.h5", tiny_model, layers=[-1, 1],
                      include=["mean", "per_tok", "bos"], max_tokens=40, progress=False)
    assert not (tmp_path / "out.h5.partial").exists()
    with h5py.File(out) as h5:
        assert [i.decode() for i in h5["ids"][:]] == [r[0] for r in RECORDS]
        lengths = [len(s) for _, s in RECORDS]
        np.testing.assert_array_equal(h5["lengths"][:], lengths)
        np.testing.assert_array_equal(h5["offsets"][:], np.concatenate([[0], np.cumsum(lengths)]))
        assert sorted(h5["mean"]) == ["1", "2"] and h5.attrs["complete"]
        assert h5["per_tok/2"].shape == (sum(lengths), 64)
        for i, (_, sequence) in enumerate(RECORDS):
            for layer in (1, 2):
                per_tok, bos = direct(tiny_model, sequence, layer)
                rows = h5[f"per_tok/{layer}"][h5["offsets"][i]: h5["offsets"][i + 1]]
                np.testing.assert_allclose(rows, per_tok, atol=1e-5)
                np.testing.assert_allclose(h5[f"mean/{layer}"][i], per_tok.mean(0), atol=1e-5)
                np.testing.assert_allclose(h5[f"bos/{layer}"][i], bos, atol=1e-5)


def test_long_rna_is_averaged_over_overlapping_windows(tiny_model, tmp_path):
    rng = np.random.default_rng(0)
    sequence = "".join(rng.choice(list("ACGU"), 700))
    fasta = write_fasta(tmp_path / "long.fa", [("long", sequence)])
    out = embed_fasta(fasta, tmp_path / "long.h5", tiny_model, include=["per_tok", "bos"],
                      window_overlap=100, progress=False)
    # Windows (0, 510) and (190, 700); positions 190..509 are the mean of both windows.
    first, bos_a = direct(tiny_model, sequence[:510], 2)
    second, bos_b = direct(tiny_model, sequence[190:], 2)
    expected = np.zeros((700, 64), dtype=np.float32)
    counts = np.zeros((700, 1), dtype=np.float32)
    expected[:510] += first
    counts[:510] += 1
    expected[190:] += second
    counts[190:] += 1
    with h5py.File(out) as h5:
        np.testing.assert_allclose(h5["per_tok/2"][:], expected / counts, atol=1e-5)
        np.testing.assert_allclose(h5["bos/2"][0], (bos_a + bos_b) / 2, atol=1e-5)
        assert h5["per_tok/2"].shape[0] == 700, "never truncated"


@pytest.mark.parametrize("records, problem", [
    ([("a", "ACGU"), ("a", "GGG")], "duplicate id"),
    ([("a", "ACGU"), ("b", "")], "empty sequence"),
    ([("a", "ACGU"), ("b", "ACEFG")], "'E' at position 3"),
])
def test_bad_records_stop_the_run_naming_the_record(tiny_model, tmp_path, records, problem):
    fasta = write_fasta(tmp_path / "bad.fa", records)
    with pytest.raises(InvalidRecordError, match=problem) as error:
        embed_fasta(fasta, tmp_path / "out.h5", tiny_model, progress=False)
    assert "record" in str(error.value) and "bad.fa" in str(error.value)
    assert not (tmp_path / "out.h5").exists() and not (tmp_path / "out.h5.partial").exists()


def test_skip_invalid_leaves_bad_records_out(tiny_model, tmp_path, caplog):
    fasta = write_fasta(tmp_path / "bad.fa", [("a", "ACGU"), ("a", "GG"), ("b", ""), ("c", "AC*"), ("d", "GU")])
    out = embed_fasta(fasta, tmp_path / "out.h5", tiny_model, skip_invalid=True, progress=False)
    with h5py.File(out) as h5:
        assert [i.decode() for i in h5["ids"][:]] == ["a", "d"]
        np.testing.assert_allclose(h5["mean/2"][1], direct(tiny_model, "GU", 2)[0].mean(0), atol=1e-5)
    assert caplog.text.count("skipped") == 3


class FailingModel(ProtRNA):
    """A real model that is interrupted (as by Ctrl-C) at its n-th batch."""

    def __init__(self, model, fail_at):
        super().__init__(lm=model.lm)
        self.calls, self.rows, self.fail_at = 0, 0, fail_at

    def forward(self, tokens, *args, **kwargs):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        self.rows += tokens.shape[0]
        return super().forward(tokens, *args, **kwargs)


def test_interrupted_run_resumes_and_matches_uninterrupted(tiny_model, tmp_path):
    records = [(f"s{i}", "ACGU" * (1 + i % 7)) for i in range(300)]
    fasta = write_fasta(tmp_path / "in.fa", records)
    reference = embed_fasta(fasta, tmp_path / "ref.h5", tiny_model, include=["mean", "per_tok"],
                            max_tokens=64, progress=False)
    out = tmp_path / "out.h5"
    with pytest.raises(KeyboardInterrupt):
        embed_fasta(fasta, out, FailingModel(tiny_model, fail_at=40), include=["mean", "per_tok"],
                    max_tokens=64, progress=False)
    partial = tmp_path / "out.h5.partial"
    assert not out.exists() and partial.exists()
    with h5py.File(partial) as h5:
        done = h5["done"][:].astype(bool)
        assert 0 < done.sum() < len(records) and not h5.attrs["complete"]
    resumed = FailingModel(tiny_model, fail_at=-1)
    embed_fasta(fasta, out, resumed, include=["mean", "per_tok"], max_tokens=64, progress=False)
    with h5py.File(out) as h5, h5py.File(reference) as ref:
        np.testing.assert_allclose(h5["mean/2"][:], ref["mean/2"][:], atol=1e-5)
        np.testing.assert_allclose(h5["per_tok/2"][:], ref["per_tok/2"][:], atol=1e-5)
    assert resumed.rows == len(records) - done.sum(), "the resumed run embeds exactly what was missing"


def test_different_settings_do_not_touch_the_existing_file(tiny_model, tmp_path):
    fasta = write_fasta(tmp_path / "in.fa", RECORDS)
    out = embed_fasta(fasta, tmp_path / "out.h5", tiny_model, progress=False)
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match="other settings"):
        embed_fasta(fasta, out, tiny_model, include=["bos"], progress=False)
    other = write_fasta(tmp_path / "other.fa", RECORDS[:2])
    with pytest.raises(FileExistsError, match="input records"):
        embed_fasta(other, out, tiny_model, progress=False)
    changed = write_fasta(tmp_path / "changed.fa", [(RECORDS[0][0], "C" + RECORDS[0][1][1:])] + RECORDS[1:])
    assert changed.read_text() != fasta.read_text()
    with pytest.raises(FileExistsError, match="input records"):  # one nucleotide differs: not stale rows
        embed_fasta(changed, out, tiny_model, progress=False)
    embed_fasta(fasta, out, tiny_model, progress=False)  # same settings: complete, nothing to do
    embed_fasta(fasta, out, tiny_model, include=("mean",), progress=False)
    assert out.read_bytes() == before


def test_foreign_files_bad_overlap_and_the_callers_model(tiny_model, tmp_path):
    import h5py

    fasta = write_fasta(tmp_path / "in.fa", RECORDS)
    precious = tmp_path / "precious.h5"
    with h5py.File(precious, "w") as h5:
        h5["x"] = np.arange(10)
    before = precious.read_bytes()
    for target in (precious, fasta):  # someone's HDF5 file, or the input given as output
        with pytest.raises(FileExistsError, match="not an HDF5 file from protrna embed|not a protrna embedding"):
            embed_fasta(fasta, target, tiny_model, progress=False)
    assert precious.read_bytes() == before
    with pytest.raises(ValueError, match="overlap must be in"):
        embed_fasta(fasta, tmp_path / "o.h5", tiny_model, window_overlap=510, progress=False)
    assert not list(tmp_path.glob("o.h5*"))  # nothing that would refuse the corrected rerun
    # The caller's model comes back unchanged also when nothing is left to do.
    keys = set(tiny_model.state_dict())
    out = embed_fasta(fasta, tmp_path / "out.h5", tiny_model, include=["per_tok", "mean"], progress=False)
    embed_fasta(fasta, out, tiny_model, include="mean per_tok".split(), progress=False)
    assert set(tiny_model.state_dict()) == keys
    with h5py.File(out) as h5:
        assert h5.attrs["include"] == "mean,per_tok"


KILL_SCRIPT = """
import sys
from protrna.model import ProtRNA
from protrna.embed import embed_fasta
model = ProtRNA.from_pretrained(sys.argv[1])
embed_fasta(sys.argv[2], sys.argv[3], model, include=["mean", "per_tok"], max_tokens=64, progress=False)
"""


def test_killed_process_leaves_a_readable_file_that_resumes(tiny_model, tmp_path):
    records = [(f"s{i}", "GAUC" * (2 + i % 11)) for i in range(3000)]
    fasta = write_fasta(tmp_path / "in.fa", records)
    model_dir = tiny_model.save_pretrained(tmp_path / "model")
    out = tmp_path / "out.h5"
    partial = tmp_path / "out.h5.partial"
    env = dict(os.environ, HDF5_USE_FILE_LOCKING="FALSE")
    process = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(model_dir), str(fasta), str(out)], env=env)
    try:
        deadline = time.time() + 120
        done = 0
        while time.time() < deadline and process.poll() is None:
            time.sleep(0.2)
            if partial.exists():
                try:
                    with h5py.File(partial, "r", locking=False) as h5:
                        done = int(h5["done"][:].sum())
                except (OSError, KeyError):
                    continue
                if done >= 200:
                    break
        assert process.poll() is None, "the run ended before it could be killed; make it longer"
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    with h5py.File(partial, "r") as h5:  # readable after SIGKILL
        done_mask = h5["done"][:].astype(bool)
        assert done_mask.sum() >= done
        kept = h5["mean/2"][:][done_mask]
    embed_fasta(fasta, out, tiny_model, include=["mean", "per_tok"], max_tokens=64, progress=False)
    with h5py.File(out) as h5:
        assert h5.attrs["complete"] and h5["done"][:].all()
        np.testing.assert_allclose(h5["mean/2"][:][done_mask], kept, atol=0)
        for i in (0, 1234, 2999):
            np.testing.assert_allclose(h5["mean/2"][i], direct(tiny_model, records[i][1], 2)[0].mean(0), atol=1e-5)


def test_cli_embeds_real_data(tiny_model, tmp_path, data_dir):
    from protrna.cli import main

    model_dir = tiny_model.save_pretrained(tmp_path / "model")
    records = list(open(data_dir / "bprna" / "TS0.dbn").read().split(">")[1:41])
    fasta = tmp_path / "ts0_40.dbn"
    fasta.write_text("".join(">" + r for r in records))
    assert main(["embed", str(fasta), "-o", str(tmp_path / "o.h5"), "--model", str(model_dir),
                 "--include", "mean", "bos", "--layers", "0", "-1", "--quiet"]) == 0
    with h5py.File(tmp_path / "o.h5") as h5:
        assert h5["mean/0"].shape == (40, 64) and h5["bos/2"].shape == (40, 64)
        assert h5["ids"][0].decode() == "bpRNA_CRW_15573"
        assert np.isfinite(h5["mean/2"][:]).all()
    assert main(["embed", str(tmp_path / "missing.fa"), "-o", str(tmp_path / "x.h5"), "--model", str(model_dir)]) == 2
