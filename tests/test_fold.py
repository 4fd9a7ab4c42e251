import json

import numpy as np
import pytest
import torch

from protrna.data.records import InvalidRecordError
from protrna.fold import StructurePredictor, fold_fasta, safe_file_names
from protrna.heads.ss import RotaFormer
from protrna.structure import read_bpseq, read_ct, read_dbn, resolve_conflicts
from tests.original import direct_probabilities


def write_fasta(path, records):
    path.write_text("".join(f">{name}\n{seq}\n" for name, seq in records))
    return path


RECORDS = [("r/1", "GGGAAACUUCGGUUCCC"), ("r2", "acgtnNNAUGCAGG"), ("r3", "GGAUCCUAGC" * 3)]


def test_fold_writes_every_format_consistent_with_the_probabilities(tiny_model, tiny_head, tmp_path):
    fasta = write_fasta(tmp_path / "in.fa", RECORDS)
    out = tmp_path / "out"
    path = fold_fasta(fasta, out, tiny_model, tiny_head, formats=["dbn", "bpseq", "ct"], threshold=0.5,
                      probabilities=True, plot=True, progress=False)
    records = list(read_dbn(path))
    assert [r.id for r in records] == [r[0] for r in RECORDS], "input order"
    names = safe_file_names([r[0] for r in RECORDS])
    assert names[0] == "r_1"
    for record, name, (_, sequence) in zip(records, names, RECORDS):
        probabilities = np.load(out / f"{name}.npy")
        np.testing.assert_allclose(probabilities, direct_probabilities(tiny_model, tiny_head, sequence), atol=1e-5)
        expected = resolve_conflicts(probabilities, 0.5, sequence=sequence)
        assert record.pairs == expected
        assert read_bpseq(out / f"{name}.bpseq").pairs == expected
        assert read_ct(out / f"{name}.ct").pairs == expected
        assert (out / f"{name}.png").stat().st_size > 1000
    settings = json.loads((out / "fold_settings.json").read_text())
    assert settings["threshold"] == 0.5
    assert not (out / "predictions.dbn.partial").exists()


def test_decoding_options_reach_the_structures(tiny_model, tiny_head, tmp_path):
    fasta = write_fasta(tmp_path / "in.fa", RECORDS)
    path = fold_fasta(fasta, tmp_path / "o", tiny_model, tiny_head, threshold=0.0, canonical_only=True,
                      min_hairpin=3, progress=False)
    for record in read_dbn(path):
        sequence = record.sequence.upper().replace("T", "U")
        assert len(record.pairs.to_list()) > 0
        for i, j in record.pairs:
            assert j - i > 3 and sequence[i] + sequence[j] in {"AU", "UA", "GC", "CG", "GU", "UG"}


def test_matching_resolution_keeps_at_least_the_greedy_weight(tiny_model, tiny_head, tmp_path):
    fasta = write_fasta(tmp_path / "in.fa", RECORDS)
    structures = {}
    for method in ("greedy", "matching"):
        out = tmp_path / method
        fold_fasta(fasta, out, tiny_model, tiny_head, threshold=0.0, resolve=method, probabilities=True,
                   progress=False)
        structures[method] = {r.id: r for r in read_dbn(out / "predictions.dbn")}
    for record_id, greedy in structures["greedy"].items():
        probabilities = np.load(tmp_path / "greedy" / f"{safe_file_names([record_id])[0]}.npy")
        matched = structures["matching"][record_id].pairs
        assert len(matched.multi_partner_bases()) == 0
        weight = {name: sum(probabilities[i, j] for i, j in pairs) for name, pairs in
                  (("greedy", greedy.pairs), ("matching", matched))}
        assert weight["matching"] >= weight["greedy"] - 1e-6
    with pytest.raises(ValueError, match="--resolve takes"):
        fold_fasta(fasta, tmp_path / "bad", tiny_model, tiny_head, resolve="best", progress=False)


class InterruptedHead(RotaFormer):
    """A real head that is interrupted (as by Ctrl-C) at its n-th call."""

    def __init__(self, head, fail_at):
        super().__init__(head.config)
        self.load_state_dict(head.state_dict())
        self.calls, self.fail_at = 0, fail_at

    def pair_logits(self, *args, **kwargs):  # what the runtime's predictor calls
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        return super().pair_logits(*args, **kwargs)


def test_interrupted_fold_resumes(tiny_model, tiny_head, tmp_path):
    records = [(f"s{i}", "GGAUCCUAGC" * (1 + i % 4)) for i in range(12)]
    fasta = write_fasta(tmp_path / "in.fa", records)
    reference = list(read_dbn(fold_fasta(fasta, tmp_path / "ref", tiny_model, tiny_head, progress=False)))
    out = tmp_path / "out"
    one_at_a_time = dict(max_pairs=1)  # one head call per record
    with pytest.raises(KeyboardInterrupt):
        fold_fasta(fasta, out, progress=False,
                   predictor=StructurePredictor(tiny_model, InterruptedHead(tiny_head, 5), **one_at_a_time))
    partial = out / "predictions.dbn.partial"
    assert partial.exists() and not (out / "predictions.dbn").exists()
    with open(partial, "a") as handle:  # a record torn by a kill
        handle.write(">s11\nGGAUCC")
    resumed = InterruptedHead(tiny_head, -1)
    path = fold_fasta(fasta, out, progress=False, predictor=StructurePredictor(tiny_model, resumed, **one_at_a_time))
    assert resumed.calls == len(records) - 4, "only the records not yet written are folded again"
    assert [(r.id, r.sequence, r.dot_bracket) for r in read_dbn(path)] == [
        (r.id, r.sequence, r.dot_bracket) for r in reference]


def test_other_settings_in_the_same_directory_are_refused(tiny_model, tiny_head, tmp_path):
    fasta = write_fasta(tmp_path / "in.fa", RECORDS)
    fold_fasta(fasta, tmp_path / "o", tiny_model, tiny_head, progress=False)
    with pytest.raises(FileExistsError, match="other settings") as refused:
        fold_fasta(fasta, tmp_path / "o", tiny_model, tiny_head, threshold=0.9, progress=False)
    # One line that names the change in words, not two digests.
    assert "threshold (then 0.25, now 0.9)" in str(refused.value) and "\n" not in str(refused.value)
    assert "sha256" not in str(refused.value)


def test_another_input_in_the_same_directory_is_refused(tiny_model, tiny_head, tmp_path):
    # 'seq/7' inserted before 'seq:7' would take its file name (seq_7) and overwrite its files.
    first = write_fasta(tmp_path / "c1.fa", [("seq:7", "GGGAAACCCUUU")])
    fold_fasta(first, tmp_path / "o", tiny_model, tiny_head, formats=["bpseq"], progress=False)
    grown = write_fasta(tmp_path / "c2.fa", [("seq/7", "AAAAAAAAAA"), ("seq:7", "GGGAAACCCUUU")])
    with pytest.raises(FileExistsError, match="input_sha256"):
        fold_fasta(grown, tmp_path / "o", tiny_model, tiny_head, formats=["bpseq"], progress=False)
    assert (tmp_path / "o" / "seq_7.bpseq").read_text().startswith("# seq:7")
    # Formats in another order are the same settings: the finished run is found, nothing refused.
    fold_fasta(first, tmp_path / "o", tiny_model, tiny_head, formats=["bpseq", "dbn"], progress=False)
    fold_fasta(first, tmp_path / "o", tiny_model, tiny_head, formats=["dbn", "bpseq"], progress=False)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(min_hairpin=-1), "--min-hairpin must be 0 or more"),
        (dict(threshold=float("nan")), "between 0 and 1, not nan"),
        (dict(threshold=1.5), "between 0 and 1, not 1.5"),
        (dict(max_tokens=0), "--max-tokens must be at least 1"),
        (dict(device="gpu"), "'gpu' is not a device"),
    ],
)
def test_bad_options_stop_before_anything_is_written(tiny_model, tiny_head, tmp_path, options, message):
    fasta = write_fasta(tmp_path / "in.fa", RECORDS)
    with pytest.raises(ValueError, match=message):
        fold_fasta(fasta, tmp_path / "o", tiny_model, tiny_head, progress=False, **options)
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_one_clear_error(tiny_model, tiny_head, tmp_path):
    with pytest.raises(ValueError, match="sees 0 CUDA devices"):
        fold_fasta(write_fasta(tmp_path / "in.fa", RECORDS), tmp_path / "o", tiny_model, tiny_head,
                   device="cuda", progress=False)


def test_bad_records(tiny_model, tiny_head, tmp_path):
    fasta = write_fasta(tmp_path / "bad.fa", [("a", "ACGU"), ("b", "ACGUZ")])
    with pytest.raises(InvalidRecordError, match=r"'b'.*'Z' at position 5"):
        fold_fasta(fasta, tmp_path / "o", tiny_model, tiny_head, progress=False)
    path = fold_fasta(fasta, tmp_path / "o2", tiny_model, tiny_head, skip_invalid=True, progress=False)
    assert [r.id for r in read_dbn(path)] == ["a"]


def test_cli_folds_standard_input_like_a_file(tiny_model, tiny_head, tmp_path, monkeypatch):
    import io

    from protrna.cli import main

    model_dir, head_dir = tiny_model.save_pretrained(tmp_path / "lm"), tmp_path / "head"
    tiny_head.save_pretrained(head_dir)
    fasta = write_fasta(tmp_path / "in.fa", RECORDS)
    assert main(["fold", str(fasta), "-o", str(tmp_path / "from_file"), "--model", str(model_dir),
                 "--head", str(head_dir), "--format", "bpseq", "-q"]) == 0  # fmt: skip
    monkeypatch.setattr("sys.stdin", io.StringIO(fasta.read_text()))
    assert main(["fold", "-", "-o", str(tmp_path / "from_stdin"), "--model", str(model_dir),
                 "--head", str(head_dir), "--format", "bpseq", "-q"]) == 0  # fmt: skip
    from_file, from_stdin = tmp_path / "from_file", tmp_path / "from_stdin"
    assert (from_stdin / "predictions.dbn").read_text() == (from_file / "predictions.dbn").read_text()
    assert sorted(p.name for p in from_stdin.iterdir()) == sorted(p.name for p in from_file.iterdir())


def test_cli_reads_gzip_from_a_pipe_and_names_a_damaged_file(tiny_model, tiny_head, tmp_path, monkeypatch, capsys):
    import gzip
    import io

    from protrna.cli import main

    model_dir, head_dir = tiny_model.save_pretrained(tmp_path / "lm"), tmp_path / "head"
    tiny_head.save_pretrained(head_dir)
    fasta = write_fasta(tmp_path / "in.fa", RECORDS)
    models = ["--model", str(model_dir), "--head", str(head_dir), "-q"]
    assert main(["fold", str(fasta), "-o", str(tmp_path / "plain"), *models]) == 0
    packed = gzip.compress(fasta.read_bytes())

    class Pipe(io.StringIO):  # what `zcat -f | protrna fold -` would not need: gzip bytes on stdin
        buffer = io.BytesIO(packed)

    monkeypatch.setattr("sys.stdin", Pipe())
    assert main(["fold", "-", "-o", str(tmp_path / "piped"), *models]) == 0
    assert (tmp_path / "piped" / "predictions.dbn").read_text() == (tmp_path / "plain" / "predictions.dbn").read_text()

    (tmp_path / "cut.fa.gz").write_bytes(packed[:40])
    (tmp_path / "fake.fa.gz").write_text(">a\nACGU\n")
    capsys.readouterr()
    for name in ("cut.fa.gz", "fake.fa.gz"):
        assert main(["fold", str(tmp_path / name), "-o", str(tmp_path / name[:4]), *models]) == 2
        error = capsys.readouterr().err
        assert name in error and "damaged or not gzip" in error and "Traceback" not in error
    assert main(["fold", str(tmp_path), "-o", str(tmp_path / "dir"), *models]) == 2
    assert "is a folder" in capsys.readouterr().err


# --- long RNAs: --max-span --------------------------------------------------------------------


def random_rna(length, seed):
    return "".join(np.random.default_rng(seed).choice(list("ACGU"), length))


LONG_RECORDS = [("short", "GGGAAACUUCGGUUCCC"), ("long/1", random_rna(130, 1)), ("edge", random_rna(40, 2)),
                ("long2", random_rna(95, 3))]


def test_long_rnas_are_folded_in_windows_and_written_sparse(tiny_model, tiny_head, tmp_path):
    from protrna.confidence import expected_accuracy, read_confidence_table
    from protrna.sparse_pairs import SparsePairProbabilities

    fasta = write_fasta(tmp_path / "in.fa", LONG_RECORDS)
    out = tmp_path / "out"
    fold_fasta(fasta, out, tiny_model, tiny_head, max_span=40, threshold=0.5, probabilities=True, plot=True,
               formats=["bpseq"], progress=False)
    whole = tmp_path / "whole"  # --max-span 0: today's whole-length folding
    fold_fasta(fasta, whole, tiny_model, tiny_head, max_span=0, threshold=0.5, probabilities=True, progress=False)
    settings = json.loads((out / "fold_settings.json").read_text())
    assert settings["max_span"] == 40 and settings["pair_floor"] == 1e-3
    assert json.loads((whole / "fold_settings.json").read_text())["max_span"] == 0
    records = {r.id: r for r in read_dbn(out / "predictions.dbn")}
    confidence = read_confidence_table(out / "confidence.tsv")
    assert list(confidence) == [name for name, _ in LONG_RECORDS]
    predictor = StructurePredictor(tiny_model, tiny_head, max_span=40)
    expected = {p.id: p.probabilities for p in predictor.predict(LONG_RECORDS)}
    for (name, sequence), stem in zip(LONG_RECORDS, safe_file_names([n for n, _ in LONG_RECORDS])):
        if len(sequence) <= 40:  # whole, as with --max-span 0
            assert not (out / f"{stem}.npz").exists()
            np.testing.assert_allclose(np.load(out / f"{stem}.npy"), np.load(whole / f"{stem}.npy"), atol=1e-5)
            continue
        assert not (out / f"{stem}.npy").exists(), "no dense file for a long RNA unless asked"
        pairs = SparsePairProbabilities.load(out / f"{stem}.npz")
        assert pairs.length == len(sequence) and pairs.max_span == 40 and pairs.floor == 1e-3
        assert (pairs.j - pairs.i).max() < 40 and (pairs.p > 1e-3).all()
        np.testing.assert_array_equal(pairs.p, expected[name].p)
        # The structure is the one the dense banded map decodes to, and its bases are < 40 apart.
        structure = records[name].pairs
        assert structure == resolve_conflicts(pairs.to_dense(), 0.5, sequence=sequence)
        assert len(structure.pairs) > 0 and (np.diff(structure.pairs, axis=1) < 40).all()
        assert read_bpseq(out / f"{stem}.bpseq").pairs == structure
        estimate = expected_accuracy(pairs, structure)
        for column, value in estimate.as_dict().items():
            assert confidence[name][column] == pytest.approx(value, abs=1e-6), column
        assert (out / f"{stem}.png").stat().st_size > 1000
        # Whole-length folding is another prediction, not the same one.
        whole_map = np.load(whole / f"{stem}.npy")
        assert np.abs(whole_map[pairs.i, pairs.j] - pairs.p).max() > 1e-3


def test_dense_probabilities_and_a_threshold_below_the_floor(tiny_model, tiny_head, tmp_path):
    from protrna.sparse_pairs import SparsePairProbabilities

    fasta = write_fasta(tmp_path / "in.fa", LONG_RECORDS[1:2])
    fold_fasta(fasta, tmp_path / "dense", tiny_model, tiny_head, max_span=40, threshold=0.5,
               dense_probabilities=True, progress=False)
    dense = np.load(tmp_path / "dense" / "long_1.npy")
    i, j = np.triu_indices(130, k=1)
    assert dense.shape == (130, 130) and not dense[i, j][j - i >= 40].any()
    assert not (tmp_path / "dense" / "long_1.npz").exists()
    # A threshold under the floor still decodes from every pair above it; the file keeps the floor.
    path = fold_fasta(fasta, tmp_path / "low", tiny_model, tiny_head, max_span=40, threshold=0.2, pair_floor=0.45,
                      probabilities=True, progress=False)
    (record,) = read_dbn(path)
    assert record.pairs == resolve_conflicts(dense, 0.2)
    saved = SparsePairProbabilities.load(tmp_path / "low" / "long_1.npz")
    assert saved.floor == 0.45 and (saved.p > 0.45).all() and len(saved) < (dense[i, j] > 0.2).sum()


def test_interrupted_fold_of_long_rnas_resumes(tiny_model, tiny_head, tmp_path):
    from protrna.sparse_pairs import SparsePairProbabilities

    records = [(f"s{k}", random_rna(n, k)) for k, n in enumerate((30, 120, 25, 100, 35))]
    fasta = write_fasta(tmp_path / "in.fa", records)
    one_at_a_time = dict(max_pairs=1, max_span=40)  # one head call per short RNA and per window
    reference = tmp_path / "ref"
    fold_fasta(fasta, reference, probabilities=True, progress=False,
               predictor=StructurePredictor(tiny_model, tiny_head, **one_at_a_time))
    calls = {name: len(StructurePredictor(tiny_model, tiny_head, **one_at_a_time).windows(len(s)))
             for name, s in records}
    assert calls == {"s0": 1, "s1": 5, "s2": 1, "s3": 4, "s4": 1}
    # Completion order: long RNAs as they are embedded (s1, s3), then the head batches, longest first.
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):  # in the second window of s3, after s1 was written
        fold_fasta(fasta, out, probabilities=True, progress=False,
                   predictor=StructurePredictor(tiny_model, InterruptedHead(tiny_head, 7), **one_at_a_time))
    assert [r.id for r in read_dbn(out / "predictions.dbn.partial")] == ["s1"]
    assert (out / "s1.npz").exists() and not (out / "s3.npz").exists()
    resumed = InterruptedHead(tiny_head, -1)
    path = fold_fasta(fasta, out, probabilities=True, progress=False,
                      predictor=StructurePredictor(tiny_model, resumed, **one_at_a_time))
    assert resumed.calls == sum(calls.values()) - calls["s1"], "only the records not yet written are folded"
    assert path.read_text() == (reference / "predictions.dbn").read_text()
    assert (out / "confidence.tsv").read_text() == (reference / "confidence.tsv").read_text()
    for name in ("s1", "s3"):
        again, first = SparsePairProbabilities.load(out / f"{name}.npz"), SparsePairProbabilities.load(
            reference / f"{name}.npz")
        np.testing.assert_array_equal(again.pairs(), first.pairs())
        np.testing.assert_array_equal(again.p, first.p)
    # Another --max-span is another run: refused in the same directory.
    with pytest.raises(FileExistsError, match="max_span"):
        fold_fasta(fasta, out, tiny_model, tiny_head, max_span=60, probabilities=True, progress=False)


@pytest.mark.parametrize("options, message", [
    (dict(max_span=1), "--max-span must be 0"), (dict(max_span=-5), "--max-span must be 0"),
    (dict(pair_floor=1.0), "--pair-floor"), (dict(pair_floor=-0.1), "--pair-floor"),
])
def test_bad_long_rna_options_stop_before_anything_is_written(tiny_model, tiny_head, tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        fold_fasta(write_fasta(tmp_path / "in.fa", RECORDS), tmp_path / "o", tiny_model, tiny_head,
                   progress=False, **options)
    assert not (tmp_path / "o").exists()
    predictor = StructurePredictor(tiny_model, tiny_head, max_span=40)
    with pytest.raises(ValueError, match="predictor given folds with max_span=40"):
        fold_fasta(write_fasta(tmp_path / "in.fa", RECORDS), tmp_path / "o", max_span=50, predictor=predictor,
                   progress=False)


def test_cli_max_span_and_pair_floor(tiny_model, tiny_head, tmp_path):
    from protrna.cli import main
    from protrna.sparse_pairs import SparsePairProbabilities

    model_dir, head_dir = tiny_model.save_pretrained(tmp_path / "lm"), tmp_path / "head"
    tiny_head.save_pretrained(head_dir)
    fasta = write_fasta(tmp_path / "in.fa", LONG_RECORDS[:2])
    assert main(["fold", str(fasta), "-o", str(tmp_path / "o"), "--model", str(model_dir), "--head", str(head_dir),
                 "--max-span", "40", "--pair-floor", "0.3", "--probabilities", "-q"]) == 0  # fmt: skip
    pairs = SparsePairProbabilities.load(tmp_path / "o" / "long_1.npz")
    assert pairs.max_span == 40 and pairs.floor == 0.3 and (pairs.p > 0.3).all()
    assert (tmp_path / "o" / "short.npy").exists()
