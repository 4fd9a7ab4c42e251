"""Reading labelled RNAs for fine-tuning: FASTA headers, CSV/TSV columns, per-nucleotide labels."""

import gzip

import pytest

from protrna.data.labelled import InputFormat, read_labelled
from protrna.data.records import InvalidRecordError


def test_fasta_label_is_the_first_header_word_and_ids_may_repeat(tmp_path):
    path = tmp_path / "x.fa.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(">tRNA some text\nGCGGAU\nUUAG\n>tRNA\nGCCGAU\n>miRNA\nugaggu\n")
    records = read_labelled(path, "classification")
    assert [(r.index, r.id, r.sequence, r.label) for r in records] == [
        (0, "tRNA", "GCGGAUUUAG", "tRNA"), (1, "tRNA", "GCCGAU", "tRNA"), (2, "miRNA", "ugaggu", "miRNA")]


def test_label_regex_takes_the_first_group(tmp_path):
    path = tmp_path / "x.fasta"
    path.write_text(">r1 score=0.5 x\nACGU\n>r2 score=-1e-2\nACGU\n")
    records = read_labelled(path, "regression", InputFormat(label_regex=r"score=(\S+)"))
    assert [r.label for r in records] == [0.5, -0.01]
    with pytest.raises(InvalidRecordError, match=r"record 'r1' \(line 1\).*does not match"):
        read_labelled(path, "regression", InputFormat(label_regex=r"family=(\S+)"))


def test_tables_by_column_name_with_format_from_suffix_or_content(tmp_path):
    csv_path = tmp_path / "a.csv"
    csv_path.write_text("name,seq,y\nfirst,ACGT,1.5\nsecond,GG UU,2\n")
    fmt = InputFormat(sequence_column="seq", label_column="y", id_column="name")
    records = read_labelled(csv_path, "regression", fmt)
    assert [(r.id, r.sequence, r.label) for r in records] == [("first", "ACGT", 1.5), ("second", "GGUU", 2.0)]
    tsv_path = tmp_path / "a.txt"  # no telling suffix: a tab in the header says TSV
    tsv_path.write_text("seq\ty\nACGT\tA\n")
    assert read_labelled(tsv_path, "classification", fmt.__class__(sequence_column="seq", label_column="y"))[0].label == "A"


def test_per_nucleotide_labels_as_characters_or_lists(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("sequence\tlabel\nACGU\t..()\nACG\t0 1 2\nAC\tC1;C2\n")
    records = read_labelled(path, "token-classification")
    assert [r.label for r in records] == [(".", ".", "(", ")"), ("0", "1", "2"), ("C1", "C2")]
    separated = tmp_path / "s.tsv"
    separated.write_text("sequence\tlabel\nACG\ta|b|c\n")
    assert read_labelled(separated, "token-classification", InputFormat(label_separator="|"))[0].label == ("a", "b", "c")


def test_prediction_reads_unlabelled_files(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text("sequence\nACGU\nGGCC\n")
    records = read_labelled(path, "classification", labels_required=False)
    assert [r.label for r in records] == [None, None]
    with pytest.raises(InvalidRecordError, match="no column 'label'"):
        read_labelled(path, "classification")


def test_problems_name_file_record_and_line(tmp_path):
    path = tmp_path / "bad.fasta"
    path.write_text(">a\nACGU\n>b\n\n>c\nACXJ\n")
    with pytest.raises(InvalidRecordError, match=r"bad.fasta, record 'b' \(line 3\): empty sequence"):
        read_labelled(path, "classification")
    path.write_text(">a\nACGU\n>c\nACXJ\n")
    with pytest.raises(InvalidRecordError, match=r"record 'c' \(line 3\).*'J' at position 4"):
        read_labelled(path, "classification")
    assert [r.id for r in read_labelled(path, "classification", skip_invalid=True)] == ["a"]
    with pytest.raises(InvalidRecordError, match="cannot come from a FASTA header"):
        read_labelled(path, "token-classification")
