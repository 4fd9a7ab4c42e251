import sys

import pytest

from protrna.structure import StructureRecord, is_canonical


def test_missing_viennarna_says_how_to_install(monkeypatch):
    from protrna.baselines import rnafold

    monkeypatch.setitem(sys.modules, "RNA", None)  # makes `import RNA` fail as if not installed
    with pytest.raises(ImportError, match=r'pip install "protrna\[rnafold\]"'):
        rnafold("GGGAAACCC")


def test_rnafold_folds_a_hairpin():
    pytest.importorskip("RNA", reason="ViennaRNA is not installed: pip install 'protrna[rnafold]'")
    from protrna.baselines import rnafold

    sequence = "GGGGCGAAAGCCCCAAAAA"
    pairs = rnafold(sequence)
    assert pairs.length == len(sequence) and len(pairs.to_list()) >= 4
    assert all(is_canonical(sequence[i], sequence[j]) for i, j in pairs)
    assert len(pairs.multi_partner_bases()) == 0 and set(pairs.to_dot_bracket()) <= set("().")
    assert rnafold(sequence.lower().replace("u", "t")) == pairs  # case and T do not matter


def test_rnafold_records_keep_ids_and_sequences(data_dir):
    pytest.importorskip("RNA", reason="ViennaRNA is not installed: pip install 'protrna[rnafold]'")
    from protrna.baselines import rnafold_records
    from protrna.structure import read_dbn

    references = [r for _, r in zip(range(5), read_dbn(data_dir / "bprna" / "TS0.dbn"))]
    predictions = list(rnafold_records(references))
    assert all(isinstance(p, StructureRecord) for p in predictions)
    assert [(p.id, p.sequence) for p in predictions] == [(r.id, r.sequence) for r in references]
