import csv
import gzip
import json
import logging
import time

import numpy as np
import pytest

from protrna.evaluate import (
    format_table,
    read_predictions,
    score_predictions,
    write_scores_tsv,
    write_summary_json,
)
from protrna.metrics import METRICS, score
from protrna.structure import BasePairs, StructureError, StructureRecord, read_reference, write_dbn


def _record(id_, sequence, dot_bracket, source=""):
    return StructureRecord(id_, sequence, BasePairs.from_dot_bracket(dot_bracket), source)


@pytest.fixture
def references():
    return [
        _record("a", "GGGAAACCC", "(((...)))"),
        _record("b", "GGAAAACCUU", "((.[..))]."),
        _record("c", "ACGUACGU", "........"),
    ]


def test_scores_each_record_by_id(references):
    predictions = {
        "c": BasePairs(8, [(0, 7)]),
        "a": BasePairs.from_dot_bracket("((.....))"),
        "b": references[1].pairs.to_matrix(dtype=bool),
    }
    result = score_predictions(references, predictions, predictor="toy")
    assert [row["id"] for row in result.rows] == ["a", "b", "c"] and result.n == 3
    for row, reference in zip(result.rows, references):
        assert row["length"] == len(reference)
        assert {k: row[k] for k in METRICS} == score(predictions[reference.id], reference.pairs)
    assert result.rows[1]["f1"] == 1.0 and result.rows[2]["f1"] == 0.0
    assert result.means["f1"] == pytest.approx(sum(row["f1"] for row in result.rows) / 3)


def test_missing_and_unmatched_ids_are_reported(references, caplog):
    predictions = {"a": references[0].pairs, "zz": BasePairs(3)}
    with pytest.raises(ValueError, match=r"2 \('b', 'c'\) reference sequences have no prediction"):
        score_predictions(references, predictions)
    with caplog.at_level(logging.WARNING):
        skipped = score_predictions(references, predictions, on_missing="skip")
    assert skipped.n == 1 and skipped.missing == ["b", "c"] and skipped.unmatched == ["zz"]
    assert "'zz'" in caplog.text and "left out" in caplog.text
    empty = score_predictions(references, predictions, on_missing="empty")
    assert empty.n == 3 and empty.rows[1]["f1"] == 0.0 and empty.rows[2]["accuracy"] == 1.0


def test_prediction_sequences_are_checked(references, tmp_path, caplog):
    predicted = [
        _record("a", "GGGAAACCC", "(((...)))"),
        _record("b", "GGAAAACCUU", ".........."),
        _record("c", "acgtacgt", "(......)"),  # case and T/U do not count as differences
    ]
    path = tmp_path / "pred.dbn"
    write_dbn(predicted, path)
    assert score_predictions(references, read_predictions(path)).n == 3

    write_dbn([predicted[0], _record("b", "GGAAAGCCUU", ".........."), predicted[2]], path)
    message = r"pred.dbn, record 'b'.*differs from the reference at position 6 \('G' vs 'A'\)"
    with pytest.raises(StructureError, match=message):
        score_predictions(references, read_predictions(path))
    with caplog.at_level(logging.WARNING):
        assert score_predictions(references, read_predictions(path), on_sequence_mismatch="warn").n == 3
    assert "position 6" in caplog.text

    write_dbn([predicted[0], _record("b", "GGAAAACCU", "........."), predicted[2]], path)
    with pytest.raises(StructureError, match=r"record 'b'.*predicted sequence is 9 nt.*is 10 nt"):
        score_predictions(references, read_predictions(path), on_sequence_mismatch="warn")
    with pytest.raises(StructureError, match=r"record 'a': prediction is for 5 nt, reference is 9 nt"):
        score_predictions(references[:1], {"a": np.zeros((5, 5), dtype=bool)})


def test_duplicate_prediction_ids_are_refused(references):
    with pytest.raises(StructureError, match="'a' appears twice"):
        score_predictions(references, [references[0], references[0]])


def test_tsv_json_and_table(references, tmp_path):
    exact = score_predictions(references, {r.id: r.pairs for r in references}, predictor="exact",
                              settings={"threshold": 0.25})
    empty = {r.id: BasePairs(len(r)) for r in references}
    nothing = score_predictions(references, empty, predictor="nothing")

    write_scores_tsv(nothing, tmp_path / "scores.tsv")
    with open(tmp_path / "scores.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert list(rows[0]) == ["id", "length", *METRICS]
    assert [(row["id"], int(row["length"])) for row in rows] == [("a", 9), ("b", 10), ("c", 8)]
    expected = [r["accuracy"] for r in nothing.rows]
    assert [float(row["accuracy"]) for row in rows] == pytest.approx(expected, abs=1e-6)

    write_summary_json(exact, tmp_path / "summary.json")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n"] == 3 and summary["predictor"] == "exact"
    assert list(summary["means"]) == list(METRICS)
    assert summary["settings"]["threshold"] == 0.25 and "RiNALMo" in summary["settings"]["protocol"]

    table = format_table([exact, nothing]).splitlines()
    assert table[0].split() == ["predictor", "n", *METRICS]
    assert table[1].split()[:3] == ["exact", "3", f"{exact.means['f1']:.4f}"]
    assert table[2].split()[:3] == ["nothing", "3", "0.0000"]
    assert "shift" in table[-1]


@pytest.mark.slow
def test_rnafold_on_ts0_reproduces_the_reference_numbers(data_dir, tmp_path):
    pytest.importorskip("RNA", reason="ViennaRNA is not installed: pip install 'protrna[rnafold]'")
    from protrna.baselines import rnafold_records

    references = read_reference(data_dir / "bprna" / "TS0.dbn")
    assert len(references) == 1305
    start = time.perf_counter()
    write_dbn(rnafold_records(references), tmp_path / "rnafold.dbn")  # as `protrna fold` would
    seconds = time.perf_counter() - start
    result = score_predictions(references, read_predictions(tmp_path / "rnafold.dbn"), predictor="RNAfold",
                               settings={"seconds": seconds})
    print("\n" + format_table([result]), f"\n({seconds:.1f} s folding)")
    means = result.means
    # REFERENCE.md section 7, ViennaRNA 2.8.0 under the original protocol.
    assert means["f1"] == pytest.approx(0.4915, abs=1e-4)
    assert means["f1_shifted"] == pytest.approx(0.5376, abs=1e-4)
    assert means["precision"] == pytest.approx(0.449, abs=1e-3)
    assert means["recall"] == pytest.approx(0.577, abs=1e-3)


# --- the model-driven evaluation and the command line ------------------------------------------


@pytest.fixture
def ts0_head(data_dir):
    """The first 6 TS0 records: real sequences (with IUPAC letters) and reference structures."""
    return read_reference(data_dir / "bprna" / "TS0.dbn")[:6]


@pytest.fixture
def saved_models(tiny_model, tmp_path):
    import torch

    from protrna.heads.ss import RotaFormer, RotaFormerConfig

    torch.manual_seed(3)
    head = RotaFormer(RotaFormerConfig(input_dim=tiny_model.embed_dim, num_blocks=1))
    head.save_pretrained(tmp_path / "head")
    return tiny_model.save_pretrained(tmp_path / "lm"), tmp_path / "head"


def test_model_evaluation_follows_the_original_protocol(ts0_head, tiny_model):
    import torch

    from protrna.evaluate import evaluate_predictor
    from protrna.runtime import StructurePredictor
    from protrna.heads.ss import RotaFormer, RotaFormerConfig

    torch.manual_seed(3)
    head = RotaFormer(RotaFormerConfig(input_dim=tiny_model.embed_dim, num_blocks=1)).eval()
    result = evaluate_predictor(ts0_head, StructurePredictor(tiny_model, head), threshold=0.5, progress=False)
    assert [row["id"] for row in result.rows] == [r.id for r in ts0_head]
    for row, reference in zip(result.rows, ts0_head):
        with torch.no_grad():  # the original: sigmoid(head(LM(tokens)[33])) > threshold, scored as is
            tokens = tiny_model.alphabet.get_batch_converter()([reference.sequence])
            reps = tiny_model(tokens, repr_layers=[2])["representations"][2]
            predicted = (torch.sigmoid(head(reps)) > 0.5).numpy()
        expected = score(predicted, reference.pairs)
        for name in METRICS:
            assert row[name] == pytest.approx(expected[name], abs=1e-9)
    assert result.settings["threshold"] == 0.5


def test_cli_with_a_model_resumes_from_the_per_sequence_file(saved_models, data_dir, tmp_path, capsys, monkeypatch):
    import protrna.evaluate
    from protrna.cli import main

    lm, head = saved_models
    tsv, summary = tmp_path / "out" / "scores.tsv", tmp_path / "out" / "summary.json"  # out/ is created
    args = ["evaluate", "--reference", str(data_dir / "bprna" / "TS0.dbn"), "--model", str(lm),
            "--head", str(head), "--limit", "4", "--per-sequence", str(tsv), "--summary", str(summary), "-q"]
    assert main(args) == 0
    first = tsv.read_text()
    rows = list(csv.reader(first.splitlines(), delimiter="\t"))
    assert rows[0] == ["id", "length", *METRICS] and len(rows) == 5
    saved = json.loads(summary.read_text())
    assert saved["n"] == 4 and set(saved["means"]) == set(METRICS) and saved["settings"]["threshold"] == 0.25
    tsv.unlink()

    scored = []

    def interrupted_after_two(*arguments):
        if len(scored) == 2:
            raise KeyboardInterrupt
        scored.append(arguments)
        return score(*arguments)

    monkeypatch.setattr(protrna.evaluate, "score", interrupted_after_two)
    assert main(args) == 130  # Ctrl-C after two records
    partial = tmp_path / "out" / "scores.tsv.partial"
    assert not tsv.exists() and len(partial.read_text().splitlines()) == 4  # settings, header, 2 rows
    with open(partial, "a") as handle:
        handle.write("bpRNA_CRW_15839\t12")  # a torn line, as a kill mid-write leaves

    # Another threshold: the rows on disk do not apply, and are kept for a rerun that fits them.
    before = partial.read_text()
    assert main(args + ["--threshold", "0.6"]) == 2
    assert "other settings" in capsys.readouterr().err and partial.read_text() == before

    scored.clear()
    monkeypatch.setattr(protrna.evaluate, "score", lambda *arguments: scored.append(arguments) or score(*arguments))
    assert main(args) == 0
    assert len(scored) == 2  # only the two records not in the partial file
    assert tsv.read_text() == first and not partial.exists()
    assert "ProtRNA" in capsys.readouterr().out


def test_cli_scores_a_prediction_file(ts0_head, data_dir, tmp_path, capsys):
    from protrna.cli import main

    reference = tmp_path / "ref.dbn"
    write_dbn(ts0_head, reference)
    predictions = tmp_path / "mine.dbn"
    write_dbn([StructureRecord(r.id, r.sequence, BasePairs(len(r))) for r in ts0_head], predictions)
    assert main(["evaluate", "--reference", str(reference), "--predictions", str(predictions),
                 "--per-sequence", str(tmp_path / "s.tsv")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split()[:3] == ["mine", "6", "0.0000"]
    assert main(["evaluate", "--reference", str(reference), "--predictions", str(tmp_path / "none.dbn")]) == 2


def test_cli_refuses_a_reference_letter_fold_would_refuse(ts0_head, tmp_path, capsys):
    from protrna.cli import main

    first = ts0_head[0]
    odd = StructureRecord(first.id, first.sequence[:4] + "Z" + first.sequence[5:], first.pairs)
    reference = tmp_path / "ref.dbn"
    write_dbn([odd, *ts0_head[1:]], reference)
    predictions = tmp_path / "mine.dbn"
    write_dbn([StructureRecord(r.id, r.sequence, BasePairs(len(r))) for r in [odd, *ts0_head[1:]]], predictions)
    summary = tmp_path / "summary.json"
    assert main(["evaluate", "--reference", str(reference), "--predictions", str(predictions),
                 "--summary", str(summary)]) == 2
    error = capsys.readouterr().err
    assert f"record {first.id!r}" in error and "'Z' at position 5 is not a nucleotide code" in error
    assert len(error.strip().splitlines()) == 1 and not summary.exists()
    # The report path reads its sets the same way.
    assert main(["evaluate", "--reference", str(reference), "--predictions", str(predictions), "--no-model",
                 "--report", str(tmp_path / "report")]) == 2
    assert "'Z' at position 5 is not a nucleotide code" in capsys.readouterr().err


def test_cli_reads_what_other_predictors_write(ts0_head, tmp_path, capsys):
    """RNAfold's output (energy after the structure), ids matched past --limit, folder names."""
    from protrna.cli import main

    reference = tmp_path / "ref.dbn"
    write_dbn(ts0_head, reference)
    folder = tmp_path / "rnafold_run"
    folder.mkdir()
    with open(folder / "rnafold.dbn", "w") as handle:  # as `RNAfold < ref.fa > rnafold.dbn` writes it
        for record in ts0_head:
            handle.write(f">{record.id}\n{record.sequence}\n{record.dot_bracket} ( -1.20)\n")
    args = ["evaluate", "--reference", str(reference), "--summary", str(tmp_path / "s.json")]
    assert main(args + ["--predictions", str(folder / "rnafold.dbn")]) == 0
    line = capsys.readouterr().out.splitlines()[1].split()
    assert line[:2] == ["rnafold", "6"]  # the folder's name is not taken: the file's is
    assert float(line[-1]) == 1.0  # the reference's own structures, read back: shifted F1 1 everywhere

    # With --limit, predictions of the records left out are not "unmatched".
    assert main(args + ["--predictions", str(folder / "rnafold.dbn"), "--limit", "2"]) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["n"] == 2 and summary["unmatched"] == []
    capsys.readouterr()

    with open(folder / "rnafold.dbn", "rb") as src, gzip.open(tmp_path / "mine.dbn.gz", "wb") as dst:
        dst.write(src.read())
    assert main(args + ["--predictions", str(tmp_path / "mine.dbn.gz")]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[0] == "mine"


def test_cli_on_missing_and_on_sequence_mismatch(ts0_head, tmp_path, capsys):
    from protrna.cli import main

    reference = tmp_path / "ref.dbn"
    write_dbn(ts0_head, reference)
    predictions = tmp_path / "mine.dbn"
    # Record 0 missing, record 1 under an id that differs in case only, record 2 one base changed.
    changed = ts0_head[2].sequence[:-1] + ("A" if ts0_head[2].sequence[-1] != "A" else "C")
    write_dbn([StructureRecord(ts0_head[1].id.upper(), ts0_head[1].sequence, ts0_head[1].pairs),
               StructureRecord(ts0_head[2].id, changed, ts0_head[2].pairs)]
              + [StructureRecord(r.id, r.sequence, r.pairs) for r in ts0_head[3:]], predictions)
    args = ["evaluate", "--reference", str(reference), "--predictions", str(predictions)]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "2 (" in error and "have no prediction" in error and "only in case" in error and "--on-missing" in error
    assert main(args + ["--on-missing", "skip"]) == 2
    assert "--on-sequence-mismatch warn" in capsys.readouterr().err
    assert main(args + ["--on-missing", "skip", "--on-sequence-mismatch", "warn"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:2] == ["mine", "4"]
    assert main(args + ["--on-missing", "empty", "--on-sequence-mismatch", "warn"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:2] == ["mine", "6"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--threshold", "0.5"], "--threshold apply to running the model"),
        (["--model", "m", "--dtype", "bfloat16"], "--model, --dtype apply to running the model"),
    ],
)
def test_cli_refuses_options_that_would_be_ignored(ts0_head, tmp_path, capsys, extra, message):
    from protrna.cli import main

    reference = tmp_path / "ref.dbn"
    write_dbn(ts0_head, reference)
    assert main(["evaluate", "--reference", str(reference), "--predictions", str(reference), *extra]) == 2
    assert message in capsys.readouterr().err


def test_cli_without_viennarna_stops_before_any_work(ts0_head, tmp_path, capsys, monkeypatch):
    import sys

    from protrna.cli import main

    monkeypatch.setitem(sys.modules, "RNA", None)  # `import RNA` fails as if not installed
    reference = tmp_path / "ref.dbn"
    write_dbn(ts0_head, reference)
    tsv = tmp_path / "scores.tsv"
    assert main(["evaluate", "--reference", str(reference), "--predictions", str(reference),
                 "--baseline", "rnafold", "--per-sequence", str(tsv)]) == 2
    captured = capsys.readouterr()
    assert 'pip install "protrna[rnafold]"' in captured.err and "Traceback" not in captured.err
    assert captured.out == "" and not tsv.exists()
