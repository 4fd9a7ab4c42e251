import pytest

from protrna.data.records import InvalidRecordError, valid_records


def test_repeated_ids_are_refused_or_numbered(tmp_path):
    path = tmp_path / "x.fa"
    path.write_text(">x\nACGU\n>x-2\nGGCC\n>x\nAAAA\n>x\nUUUU\n>y\nCCCC\n")
    with pytest.raises(InvalidRecordError, match=r"record 'x' \(line 5\): duplicate id.*--unique-ids"):
        list(valid_records(path))
    numbered = [(r.id, r.sequence) for r in valid_records(path, unique_ids=True)]
    # 'x-2' is taken by a record of its own, so the second 'x' becomes 'x-3'.
    assert numbered == [("x", "ACGU"), ("x-2", "GGCC"), ("x-3", "AAAA"), ("x-4", "UUUU"), ("y", "CCCC")]


def test_nrc_files_whose_ids_are_class_names(data_dir, tmp_path):
    chunks = (data_dir / "ncrna" / "dataset_nRC_test.fasta").read_text().split(">")[1:21]  # 20 records
    path = tmp_path / "nrc.fa"
    path.write_text("".join(">" + chunk for chunk in chunks))
    with pytest.raises(InvalidRecordError, match="duplicate id"):
        list(valid_records(path))
    records = list(valid_records(path, unique_ids=True))
    assert len(records) == 20 and len({r.id for r in records}) == 20
    assert [r.id for r in records[:3]] == ["5S_rRNA", "5S_rRNA-2", "5S_rRNA-3"]
