"""RnaBench's pickled tables: refused without --trust-pickle, converted to .dbn / .tsv with it."""

import pickle
from collections import Counter

import pytest

from protrna.data.rnabench import convert, read_rnabench
from protrna.structure import BasePairs, StructureError, read_reference

pd = pytest.importorskip("pandas", reason="pandas is a test dependency: pip install -e '.[test]'")


def _rnabench_table(rows):
    """A table in RnaBench's layout (lib/data/build_dataset.py): sequence as a list of letters,
    pairs as 0-based [i, j, page] lists, integer Ids, and its flag columns."""
    frame = pd.DataFrame([
        {"sequence": list(sequence), "pairs": [list(p) for p in pairs], "Id": record_id, "origin": "test",
         "is_pdb": False, "has_pk": any(p[2] > 0 for p in pairs), "has_nc": False,
         "has_multiplet": max(Counter(b for p in pairs for b in p[:2]).values(), default=0) > 1,
         "length": len(sequence), "gc_content": 0.5}
        for record_id, sequence, pairs in rows
    ])
    return frame


NESTED_AND_KNOTTED = [
    (7, "GGGAAACCC", [[0, 8, 0], [1, 7, 0], [2, 6, 0]]),
    (12, "GGAAAACCUUAA", [[0, 7, 0], [1, 6, 0], [3, 10, 1], [4, 9, 1]]),  # a pseudoknot, page 1 = []
    (13, "ACGUACGU", []),
]


def test_refuses_to_unpickle_without_trust(tmp_path):
    # A pickle that would write a file if it were ever loaded.
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.plk"
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(PermissionError, match="loading a pickle runs whatever code it contains.*--trust-pickle"):
        read_rnabench(path)
    out = tmp_path / "out.dbn"
    with pytest.raises(PermissionError):
        convert(path, out)
    assert not marker.exists() and not out.exists()


def test_cli_refusal_is_one_line_and_writes_nothing(tmp_path, capsys):
    from protrna.cli import main

    path = tmp_path / "t.plk.gz"
    _rnabench_table(NESTED_AND_KNOTTED).to_pickle(path)
    assert main(["convert-rnabench", str(path), str(tmp_path / "o.dbn")]) == 2
    error = capsys.readouterr().err
    assert "is a Python pickle" in error and "--trust-pickle" in error and "Traceback" not in error
    assert not (tmp_path / "o.dbn").exists()


def test_converts_a_real_pickled_table_to_dbn(tmp_path, capsys):
    from protrna.cli import main

    path = tmp_path / "intra_family_benchmark.plk.gz"  # gzip, as RnaBench's downloads
    _rnabench_table(NESTED_AND_KNOTTED).to_pickle(path)
    out = tmp_path / "intra.dbn"
    assert main(["convert-rnabench", "--trust-pickle", str(path), str(out)]) == 0
    assert "3 records written" in capsys.readouterr().out
    assert out.read_text().splitlines() == [">7", "GGGAAACCC", "(((...)))",
                                            ">12", "GGAAAACCUUAA", "[[.((.]].)).", ">13", "ACGUACGU", "........"]
    back = read_reference(out)
    assert [r.pairs.to_list() for r in back] == [[tuple(p[:2]) for p in pairs] for _, _, pairs in NESTED_AND_KNOTTED]


def test_multi_partner_pairs_need_a_tsv(tmp_path):
    rows = NESTED_AND_KNOTTED + [(20, "GAAACAAAU", [[0, 4, 0], [0, 8, 0], [4, 8, 1]])]  # base 1 pairs 5 and 9
    path = tmp_path / "pdb.plk"  # uncompressed, as the original ProtRNA's copies
    _rnabench_table(rows).to_pickle(path)
    dbn = tmp_path / "pdb.dbn"
    dbn.write_text("previous content\n")
    with pytest.raises(StructureError, match=r"record '20'.*base 1 has several partners.*write a \.tsv"):
        convert(path, dbn, trust_pickle=True)
    assert dbn.read_text() == "previous content\n"  # nothing written over
    tsv = tmp_path / "pdb.tsv"
    convert(path, tsv, trust_pickle=True)
    back = {r.id: r for r in read_reference(tsv)}
    assert back["20"].pairs == BasePairs(9, [(0, 4), (0, 8), (4, 8)])
    assert back["12"].pairs.to_dot_bracket() == "[[.((.]].))." and back["13"].pairs.to_list() == []
    lines = tsv.read_text().splitlines()
    assert lines[0].split("\t") == ["id", "length", "sequence", "dbn", "n_pairs", "pairs_1based"]
    assert lines[-1].split("\t") == ["20", "9", "GAAACAAAU", "NA(multi-partner)", "3", "1,5;1,9;5,9"]


def test_bad_tables_are_named(tmp_path):
    path = tmp_path / "bad.plk"
    pd.DataFrame({"seq": ["ACGU"]}).to_pickle(path)
    with pytest.raises(StructureError, match=r"bad.plk: no column 'sequence', 'pairs'"):
        read_rnabench(path, trust_pickle=True)
    _rnabench_table([(1, "ACGU", [[0, 3, 0]]), (1, "ACGU", [])]).to_pickle(path)
    with pytest.raises(StructureError, match=r"record '1' \(row 2\): id repeats row 1"):
        read_rnabench(path, trust_pickle=True)
    _rnabench_table([(1, "ACGU", [[0, 9, 0]])]).to_pickle(path)
    with pytest.raises(StructureError, match=r"record '1' \(row 1\): pair \(1, 10\) lies outside"):
        read_rnabench(path, trust_pickle=True)
    table = _rnabench_table([(1, "ACGU", [[0, 3, 0]])])
    table["length"] = 5
    table.to_pickle(path)
    with pytest.raises(StructureError, match="length column 5 != sequence length 4"):
        read_rnabench(path, trust_pickle=True)
    pd.Series([1, 2]).to_pickle(path)
    with pytest.raises(StructureError, match="holds a Series, not a RnaBench table"):
        read_rnabench(path, trust_pickle=True)
    with pytest.raises(ValueError, match="must be a .dbn or a .tsv"):
        convert(path, tmp_path / "x.txt", trust_pickle=True)
