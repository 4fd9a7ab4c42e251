import csv
import dataclasses
import json
import sys

import numpy as np
import pytest

from protrna.metrics import METRICS, mean_scores, score
from protrna.structure import BasePairs, StructureRecord, read_reference, write_dbn

def _vienna():
    return pytest.importorskip("RNA", reason="ViennaRNA is not installed: pip install 'protrna[rnafold]'")


@pytest.fixture(scope="module")
def slices(data_dir, tmp_path_factory):
    """A few short real records of TS0, bpRNA-new, archiveII and PDB TS1, as files of their own."""
    folder = tmp_path_factory.mktemp("slices")
    paths = []
    for name in ("bprna/TS0.dbn", "generalization/bpRNA-new.dbn", "generalization/archiveII.dbn"):
        records = [r for r in read_reference(data_dir / name) if len(r) < 130][:3]
        path = folder / name.split("/")[1]
        write_dbn(records, path)
        paths.append(path)
    lines = (data_dir / "generalization" / "pdb_ts1.tsv").read_text().splitlines()
    pdb = folder / "pdb_ts1.tsv"
    pdb.write_text("\n".join(lines[:4]) + "\n")  # header and three RNAs, multi-partner pairs included
    paths.append(pdb)
    return paths


def _report(folder):
    return json.loads((folder / "report.json").read_text())


def _entry(report, set_name, predictor):
    return next(e for e in report["results"] if e["set"] == set_name and e["predictor"] == predictor)


def test_report_numbers_are_the_metrics_of_the_same_records(slices, tmp_path, capsys):
    RNA = _vienna()
    from protrna.cli import main

    out = tmp_path / "report"
    assert main(["evaluate", "--reference", *map(str, slices), "--baseline", "rnafold", "--no-model",
                 "--report", str(out), "-q"]) == 0
    report = _report(out)
    assert list(report["sets"]) == ["TS0", "bpRNA-new", "archiveII", "pdb_ts1"]
    assert report["predictors"]["RNAfold"]["version"] == RNA.__version__
    assert report["command"] == ("protrna evaluate --report " + str(out) + " --reference " + " ".join(map(str, slices))
                                 + " --baseline rnafold --no-model")
    markdown = (out / "report.md").read_text()
    for path in slices:
        references = read_reference(path)
        # Scored here from scratch: ViennaRNA's MFE structure, the project's metrics.
        rows = [score(BasePairs.from_dot_bracket(RNA.fold(r.sequence.upper())[0]), r.pairs) for r in references]
        expected = mean_scores(rows)
        entry = _entry(report, path.name.split(".")[0], "RNAfold")
        assert entry["n"] == len(references)
        for name in METRICS:
            assert entry["means"][name] == pytest.approx(expected[name], abs=1e-12)
        cells = f"| {entry['set']} | RNAfold | {len(references)} | {expected['f1']:.3f} | {expected['f1_shifted']:.3f} |"
        assert cells in markdown
        with open(out / entry["set"] / "RNAfold.tsv", newline="") as handle:
            table = list(csv.DictReader(handle, delimiter="\t"))
        assert [row["id"] for row in table] == [r.id for r in references]
        assert [float(row["f1"]) for row in table] == pytest.approx([row["f1"] for row in rows], abs=1e-6)
        # The correlation of expected with real F1 is that of the table's columns.
        confidence = entry["confidence"]["f1"]
        assert confidence["n"] == len(references)
        pearson = np.corrcoef([float(r["expected_f1"]) for r in table], [float(r["f1"]) for r in table])[0, 1]
        assert confidence["pearson"] == pytest.approx(pearson, abs=1e-5)
        assert sum(b["cells"] for b in entry["reliability"]["bins"]) == sum(len(r) * (len(r) - 1) // 2 for r in references)
    for picture in ("f1_by_length.png", "reliability.png"):
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "RNAfold" in capsys.readouterr().out


def test_a_rerun_resumes_record_by_record(slices, tmp_path, monkeypatch, capsys):
    _vienna()
    import protrna.baselines as baselines
    from protrna.cli import main

    args = ["evaluate", "--reference", str(slices[0]), str(slices[3]), "--baseline", "rnafold", "--no-model",
            "--report", str(tmp_path / "r"), "-q"]
    folded = []
    original = baselines.BASELINES["rnafold"]
    counting = dataclasses.replace(original, fold=lambda s: folded.append(s) or original.fold(s))
    monkeypatch.setitem(baselines.BASELINES, "rnafold", counting)
    assert main(args) == 0 and len(folded) == 6
    first = _report(tmp_path / "r")
    cache = tmp_path / "r" / "TS0" / "RNAfold.jsonl"
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:25])  # last record torn, as a kill leaves it
    folded.clear()
    assert main(args) == 0
    assert len(folded) == 1  # only the torn record
    again = _report(tmp_path / "r")
    assert sum(e["reused_rows"] for e in again["results"]) == 5
    assert "with 5 of 6 rows reused" in (tmp_path / "r" / "report.md").read_text()
    assert [e["means"] for e in again["results"]] == [e["means"] for e in first["results"]]

    settings = json.loads(lines[0])
    settings["settings"]["version"] = "0.0"
    cache.write_text(json.dumps(settings) + "\n")
    capsys.readouterr()
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "RNAfold.jsonl was started with other settings: version (then '0.0', now " in error
    assert cache.read_text() == json.dumps(settings) + "\n"  # the refusal leaves the file as it was


def test_prediction_files_are_matched_per_set_with_their_confidence(slices, tmp_path):
    from protrna.cli import main

    ts0, pdb = read_reference(slices[0]), read_reference(slices[3])
    folds = tmp_path / "folds"
    folds.mkdir()
    # One file for both sets: TS0's references as they are, the first with no pairs; PDB
    # structures have several partners per base and cannot be a .dbn, so they are left out.
    mine = [StructureRecord(r.id, r.sequence, BasePairs(len(r)) if k == 0 else r.pairs) for k, r in enumerate(ts0)]
    write_dbn(mine, folds / "predictions.dbn")
    expected_f1 = [0.2, 0.7, 0.9]
    with open(folds / "confidence.tsv", "w") as handle:  # as protrna fold writes it
        handle.write("id\tlength\tpredicted_pairs\texpected_precision\texpected_recall\texpected_f1\t"
                     "mean_pairing_probability\n")
        for record, value in zip(mine, expected_f1):
            handle.write(f"{record.id}\t{len(record)}\t{len(record.pairs.to_list())}\t0.5\t0.5\t{value}\t0.3\n")
    out = tmp_path / "r"
    args = ["evaluate", "--reference", str(slices[0]), str(slices[3]), "--no-model", "--report", str(out), "-q",
            "--predictions", f"perfect={folds / 'predictions.dbn'}"]
    assert main(args) == 2  # PDB records have no prediction: an error unless asked otherwise
    assert main(args + ["--on-missing", "empty"]) == 0
    report = _report(out)
    entry = _entry(report, "TS0", "perfect")
    real = [score(p.pairs, r.pairs)["f1"] for p, r in zip(mine, ts0)]
    assert entry["means"]["f1"] == pytest.approx(np.mean(real)) and real[1:] == [1.0, 1.0]
    assert entry["confidence"]["f1"]["pearson"] == pytest.approx(np.corrcoef(expected_f1, real)[0, 1])
    assert _entry(report, "pdb_ts1", "perfect")["means"]["f1"] == 0.0
    assert "reliability" not in entry  # no maps in a file


def test_the_model_scores_as_the_original_protocol(slices, tiny_model, tmp_path):
    import torch

    from protrna.evaluate import evaluate_predictor
    from protrna.fold import StructurePredictor
    from protrna.heads.ss import RotaFormer, RotaFormerConfig
    from protrna.report import ModelPredictor, build_report, read_sets

    torch.manual_seed(3)
    head = RotaFormer(RotaFormerConfig(input_dim=tiny_model.embed_dim, num_blocks=1)).eval()
    predictor = StructurePredictor(tiny_model, head)
    sets = read_sets([slices[0]])
    report = build_report(sets, [ModelPredictor(predictor, threshold=0.5)], tmp_path / "r", progress=False)
    reference = evaluate_predictor(sets[0].records, predictor, threshold=0.5, progress=False)
    entry = _entry(report, "TS0", "ProtRNA")
    for name in METRICS:
        assert entry["means"][name] == pytest.approx(reference.means[name], abs=1e-12)
    assert entry["confidence"]["n"] == 3
    assert "probability > 0.5" in report["predictors"]["ProtRNA"]["method"]


def test_a_missing_baseline_is_one_line_before_any_work(slices, tmp_path, capsys, monkeypatch):
    from protrna.cli import main

    monkeypatch.setitem(sys.modules, "linearpartition", None)  # as if not installed
    out = tmp_path / "r"
    assert main(["evaluate", "--reference", str(slices[0]), "--baseline", "eternafold", "--no-model",
                 "--report", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and 'pip install "protrna[eternafold]"' in error
    assert not out.exists()


def test_a_bad_reference_names_the_file_and_the_record(slices, tmp_path, capsys):
    from protrna.cli import main

    bad = tmp_path / "broken.dbn"
    text = slices[0].read_text().splitlines()
    text[5] = text[5][:-1] + "("  # second record: an opening bracket never closed
    bad.write_text("\n".join(text) + "\n")
    second = read_reference(slices[0])[1].id
    out = tmp_path / "r"
    assert main(["evaluate", "--reference", str(slices[0]), str(bad), "--baseline", "rnafold", "--no-model",
                 "--report", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(bad) in error and repr(second) in error and "never closed" in error
    assert not out.exists()  # read before anything is predicted or written


@pytest.mark.parametrize("extra, message", [
    (["--model", "m"], "--model apply to running the model, which --no-model leaves out"),
    (["--summary", "s.json"], "leave out --per-sequence and --summary"),
    (["--on-missing", "skip"], "--on-missing apply to --predictions"),
])
def test_options_that_do_not_fit_a_report(slices, tmp_path, capsys, extra, message):
    from protrna.cli import main

    assert main(["evaluate", "--reference", str(slices[0]), "--no-model", "--baseline", "rnafold",
                 "--report", str(tmp_path / "r"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_several_references_need_a_report(slices, capsys):
    from protrna.cli import main

    assert main(["evaluate", "--reference", str(slices[0]), str(slices[1]), "--baseline", "rnafold"]) == 2
    assert "need --report DIR" in capsys.readouterr().err
