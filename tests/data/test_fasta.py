import gzip
import io
from pathlib import Path

import pytest

from protrna.data.fasta import FastaFormatError, input_path, read_fasta


def test_multiline_records_descriptions_and_blank_lines(tmp_path):
    path = tmp_path / "x.fa"
    path.write_text(">a first one\nACGU\nGG UU\n\n>b\r\nAAA\r\n>empty\n")
    records = list(read_fasta(path))
    assert [(r.id, r.sequence, r.description) for r in records] == [
        ("a", "ACGUGGUU", "first one"), ("b", "AAA", ""), ("empty", "", "")]
    assert records[1].line == 5


def test_gzip(tmp_path):
    path = tmp_path / "x.fa.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(">r\nAC\nGU\n")
    assert [r.sequence for r in read_fasta(path)] == ["ACGU"]


def test_text_before_header_names_the_line(tmp_path):
    path = tmp_path / "bad.fa"
    path.write_text("\nACGU\n>r\nAC\n")
    with pytest.raises(FastaFormatError, match="line 2"):
        list(read_fasta(path))


def test_binary_file_is_refused(tmp_path):
    path = tmp_path / "bin.fa"
    path.write_bytes(b">r\n\xff\xfe\x00\x01\n")
    with pytest.raises(FastaFormatError, match="not a text file"):
        list(read_fasta(path))


def test_dbn_records_keep_the_structure_apart(data_dir):
    records = list(read_fasta(data_dir / "bprna" / "TS0.dbn"))
    assert len(records) == 1305
    assert all(r.structure is not None and len(r.structure) == len(r.sequence) for r in records)
    assert records[0].id == "bpRNA_CRW_15573"


def test_gapped_sequence_is_not_taken_for_a_structure(tmp_path):
    path = tmp_path / "gap.fa"
    path.write_text(">r\nACGU\n..ACGU\n")
    (record,) = read_fasta(path)
    assert record.sequence == "ACGU..ACGU" and record.structure is None


def test_energies_after_the_structure_are_dropped(tmp_path):
    # As RNAfold, MXfold2, LinearFold and CONTRAfold print them.
    path = tmp_path / "folded.dbn"
    path.write_text(">a\nGGGAAACCC\n(((...))) ( -1.20)\n>b\nGGGAAACCC\n(((...))) (-1.2)\n"
                    ">c\nGGGAAACCC\n......... [0.00]\n>d\nGGGAAACCC\n((.....))\t-3.5\n>e\nACGU 12\n")
    records = list(read_fasta(path))
    assert [r.structure for r in records] == ["(((...)))", "(((...)))", ".........", "((.....))", None]
    assert records[-1].sequence == "ACGU12"  # a number after a sequence stays (and fails the checks later)


def test_byte_order_mark_upper_case_gz_and_aligned_gaps(tmp_path):
    (tmp_path / "bom.fa").write_bytes(b"\xef\xbb\xbf>a\nACGU\n")
    assert [(r.id, r.sequence) for r in read_fasta(tmp_path / "bom.fa")] == [("a", "ACGU")]
    (tmp_path / "X.FA.GZ").write_bytes(gzip.compress(b">b\nGGCC\n"))
    assert [(r.id, r.sequence) for r in read_fasta(tmp_path / "X.FA.GZ")] == [("b", "GGCC")]
    # A line of gaps in a wrapped alignment is sequence: as a "structure" it would have cut the
    # record to its first line.
    (tmp_path / "aln.fa").write_text(">aln\nACGUACGU\n........\nACGUACGU\n")
    (record,) = read_fasta(tmp_path / "aln.fa")
    assert record.sequence == "ACGUACGU........ACGUACGU" and record.structure is None


def test_damaged_gzip_is_named(tmp_path):
    path = tmp_path / "cut.fa.gz"
    import random

    packed = gzip.compress((">a\n" + "".join(random.Random(0).choices("ACGU", k=4000))).encode())
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(FastaFormatError, match=r"cut.fa.gz: damaged or not gzip"):
        list(read_fasta(path))


def test_real_fasta(data_dir):
    records = list(read_fasta(data_dir / "ncrna" / "dataset_nRC_test.fasta"))
    assert len(records) == 2529
    assert all(set(r.sequence) <= set("ACGTN") for r in records)


def test_standard_input_is_spooled_to_a_file_that_is_removed_afterwards(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(">a first\nACGU\nGG\n>b\nUUU\n"))
    with input_path("-") as path:
        # Read twice, as the jobs do (index, then process): a pipe could not be.
        for _ in range(2):
            assert [(r.id, r.sequence) for r in read_fasta(path)] == [("a", "ACGUGG"), ("b", "UUU")]
    assert not path.exists()


def test_a_file_path_is_used_as_it_is(tmp_path):
    with input_path(tmp_path / "x.fa") as path:
        assert path == tmp_path / "x.fa"
    with input_path(str(tmp_path / "y.fa")) as path:
        assert path == Path(tmp_path / "y.fa")


def test_errors_in_standard_input_name_it(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("ACGU\n"))
    with pytest.raises(FastaFormatError, match=r"^<stdin>, line 1: sequence before the first '>'"):
        with input_path("-") as path:
            list(read_fasta(path))
