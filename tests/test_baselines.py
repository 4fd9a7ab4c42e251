import sys

import numpy as np
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


# --- the registry: LinearFold-V, EternaFold, and RNAfold with probabilities ----------------------


@pytest.fixture(scope="module")
def ts0_short(data_dir):
    from protrna.structure import read_dbn

    return [r for _, r in zip(range(4), (r for r in read_dbn(data_dir / "bprna" / "TS0.dbn") if len(r) < 150))]


@pytest.mark.parametrize("key", ["rnafold", "linearfold-v", "eternafold"])
def test_each_baseline_folds_real_records(key, ts0_short):
    from protrna.baselines import BASELINES

    baseline = BASELINES[key]
    pytest.importorskip(baseline.module, reason=f"{baseline.distribution} is not installed: "
                        f"pip install 'protrna[{baseline.extra}]'")
    assert baseline.version and baseline.version[0].isdigit()
    for record in ts0_short:
        folded = baseline.fold(record.sequence)
        assert folded.pairs.length == len(record)
        assert len(folded.pairs.multi_partner_bases()) == 0  # one partner per base, nested
        assert set(folded.pairs.to_dot_bracket()) <= set("().")
        assert all(is_canonical(record.sequence[i], record.sequence[j]) for i, j in folded.pairs)
        if baseline.gives_probabilities:
            P = folded.probabilities
            assert P.shape == (len(record), len(record)) and np.array_equal(P, P.T)
            assert P.min() >= 0 and P.sum(axis=1).max() <= 1 + 1e-4
            # The predicted pairs are likely ones: an MFE / MEA structure is not drawn from the tail.
            if len(folded.pairs.to_list()):
                assert np.mean([P[i, j] for i, j in folded.pairs]) > 0.2
        else:
            assert folded.probabilities is None


def test_linear_tools_read_lower_case_and_iupac_codes():
    pytest.importorskip("pylinearfold", reason="pylinearfold is not installed")
    from protrna.baselines import BASELINES

    upper = BASELINES["linearfold-v"].fold("GGGGCGAAAGCCCCUUUAA").pairs
    assert upper.to_list() and BASELINES["linearfold-v"].fold("ggggcgaaagcccctttaa").pairs == upper
    assert BASELINES["linearfold-v"].fold("GGGGCGARYGCCCCAAAAX").pairs.length == 19


@pytest.mark.parametrize("key, module, extra", [("linearfold-v", "pylinearfold", "linearfold"),
                                                ("eternafold", "linearpartition", "eternafold")])
def test_a_missing_baseline_says_how_to_install(key, module, extra, monkeypatch):
    from protrna.baselines import BASELINES, require_baseline

    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=rf'pip install "protrna\[{extra}\]"') as error:
        require_baseline(key)
    assert "\n" not in str(error.value)
    with pytest.raises(ImportError):
        BASELINES[key].fold("GGGAAACCC")
    with pytest.raises(ValueError, match="unknown baseline 'mxfold2'"):
        require_baseline("mxfold2")
