"""Bad input and output paths: one line through the real command line, naming the path and what
to do, before any model loads, with nothing left behind; and file names from ids."""

import logging
import os

import pytest

from protrna.cli import main
from protrna.runtime.paths import safe_file_names

RECORDS = ">a\nGGGAAACCC\n>b\nACGUACGU\n"


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "in.fa").write_text(RECORDS)
    (tmp_path / "ref.dbn").write_text(">a\nGGGAAACCC\n(((...)))\n")
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file").write_text("precious\n")
    return tmp_path


def listing(root):
    return sorted((str(p.relative_to(root)), p.is_dir() or p.read_bytes()) for p in root.rglob("*"))


# A model that does not exist: had it been loaded before the paths were checked, the error
# would be about the model.
NO_MODEL = ["--model", "/nonexistent/model", "--quiet"]


@pytest.mark.parametrize("argv, message", [
    (["embed", "{}/a_folder", "-o", "{}/x.h5"], "input {}/a_folder is a folder; give a FASTA file"),
    (["embed", "{}/missing.fa", "-o", "{}/x.h5"], "input {}/missing.fa does not exist; give a FASTA file"),
    (["embed", "{}/in.fa", "-o", "{}/a_folder"], "--output {}/a_folder is a folder; give a file name, e.g. "),
    (["embed", "{}/in.fa", "-o", "{}/a_file/x.h5"], "--output {0}/a_file/x.h5: {0}/a_file is a file, not a folder"),
    (["fold", "{}/a_folder", "-o", "{}/out"], "input {}/a_folder is a folder; give a FASTA file"),
    (["fold", "{}/in.fa", "-o", "{}/a_file"], "--output-dir {}/a_file is a file; give a folder"),
    (["fold", "{}/in.fa", "-o", "{}/a_file/out"], "--output-dir {0}/a_file/out: {0}/a_file is a file, not a folder"),
    (["score", "{}/a_folder", "--pppl", "-o", "{}/s.tsv"], "input {}/a_folder is a folder; give a FASTA file"),
    (["score", "{}/in.fa", "--pppl", "-o", "{}/a_folder"], "--output {}/a_folder is a folder; give a file name"),
    (["score", "{}/in.fa", "--variants", "{}/a_folder", "-o", "{}/s.tsv"], "--variants {}/a_folder is a folder"),
    (["evaluate", "--reference", "{}/in.fa", "--per-sequence", "{}/a_folder"], "--per-sequence {}/a_folder is a folder"),
    (["evaluate", "--reference", "{}/ref.dbn", "--report", "{}/a_file"], "--report {}/a_file is a file; give a folder"),
    (["evaluate", "--reference", "{}/in.fa", "--summary", "{}/a_file/s.json"], "--summary {0}/a_file/s.json: {0}/a_file is a file"),
])
def test_a_bad_path_is_one_line_before_any_model_loads_and_leaves_nothing(folder, capsys, argv, message):
    before = listing(folder)
    argv = [a.format(folder) for a in argv]
    assert main(argv + NO_MODEL) == 2
    error = capsys.readouterr().err
    lines = [line for line in error.splitlines() if not line.startswith("INFO")]
    assert len(lines) == 1 and lines[0].startswith(f"protrna {argv[0]}: error: ")
    assert message.format(folder) in lines[0]
    assert "Errno" not in error and "Traceback" not in error and "nonexistent" not in error
    assert listing(folder) == before


def test_missing_output_folders_are_created_and_said_so_and_a_corrected_rerun_works(folder, tiny_model, caplog):
    caplog.set_level(logging.INFO)
    model = ["--model", str(tiny_model.save_pretrained(folder / "lm")), "--quiet"]
    assert main(["embed", str(folder / "in.fa"), "-o", str(folder / "a_folder"), *model]) == 2
    out = folder / "a_folder" / "new" / "deeper" / "x.h5"  # the corrected rerun, into the same folder
    assert main(["embed", str(folder / "in.fa"), "-o", str(out), *model]) == 0
    assert out.is_file() and f"created folder {out.parent}" in caplog.text
    caplog.clear()
    assert main(["embed", str(folder / "in.fa"), "-o", str(out), *model]) == 0  # complete already
    assert "created folder" not in caplog.text


def test_fold_into_an_existing_file_then_into_a_new_folder(folder, tiny_model, capsys, caplog):
    from protrna.heads.ss import RotaFormer, RotaFormerConfig

    caplog.set_level(logging.INFO)
    head = RotaFormer(RotaFormerConfig(input_dim=64, single_dim=32, pair_dim=16, num_blocks=1, msa_heads=2,
                                       pair_heads=2, head_width=8, outer_dim=8, transition_factor=2))
    head.save_pretrained(folder / "head")
    models = ["--model", str(tiny_model.save_pretrained(folder / "lm")), "--head", str(folder / "head"), "--quiet"]
    assert main(["fold", str(folder / "in.fa"), "-o", str(folder / "a_file"), *models]) == 2
    assert "[Errno 17]" not in capsys.readouterr().err and (folder / "a_file").read_text() == "precious\n"
    assert main(["fold", str(folder / "in.fa"), "-o", str(folder / "new" / "folds"), *models]) == 0
    assert (folder / "new" / "folds" / "predictions.dbn").is_file()
    assert f"created folder {folder / 'new' / 'folds'}" in caplog.text


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_a_folder_that_cannot_be_written_is_named(folder, capsys):
    locked = folder / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["embed", str(folder / "in.fa"), "-o", str(locked / "x.h5"), *NO_MODEL]) == 2
        assert f"{locked} is not writable" in capsys.readouterr().err
        assert main(["fold", str(folder / "in.fa"), "-o", str(locked), *NO_MODEL]) == 2
        assert f"--output-dir {locked} is not writable" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_file_names_from_ids_never_start_with_a_dot():
    ids = [".hidden", "..", "...x", ".", "a/../b", "./c", "ok"]
    names = safe_file_names(ids)
    assert not any(name.startswith(".") for name in names)
    assert len({name.lower() for name in names}) == len(ids)  # one file per record
    assert names[-1] == "ok" and all(set(name) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
                                     for name in names)
