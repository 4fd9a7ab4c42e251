import numpy as np
import pytest
import torch

from protrna.alphabet import MAX_RESIDUES, PROTRNA_TOKENS, Alphabet, encode_rna


def test_vocabulary_is_esm2_then_rna():
    alphabet = Alphabet()
    assert len(alphabet) == 38
    assert alphabet.all_toks[:4] == ["<cls>", "<pad>", "<eos>", "<unk>"]
    assert alphabet.get_idx("<mask>") == 32 and alphabet.get_idx("<null_1>") == 31
    assert [alphabet.get_idx(t) for t in "augcx"] == [33, 34, 35, 36, 37]
    assert alphabet.get_idx("A") == 5  # upper case stays alanine: RNA must be lower-cased first


def test_reference_example():
    tokens = Alphabet().get_batch_converter()(["ACGUT", "acgNn-"])
    assert tokens.dtype == torch.long
    assert tokens.tolist() == [[0, 33, 36, 35, 34, 34, 2, 1], [0, 33, 36, 35, 37, 37, 37, 2]]


def test_matches_original_batch_converter_on_fixture(parity_dir):
    expected = np.load(parity_dir / "lm_tiny_expected.npz")
    tokens = Alphabet().get_batch_converter()(list(expected["sequences"]))
    np.testing.assert_array_equal(tokens.numpy(), expected["tokens"])


@pytest.mark.parametrize("letter", list("RYSWKMBDHVNXrysn.-"))
def test_iupac_and_gaps_become_unknown_rna(letter):
    assert encode_rna("A" + letter) == [33, 37]


@pytest.mark.parametrize("bad, position", [("ACGE", 4), ("AFGU", 2), ("AC1", 3), ("*A", 1), ("AC GU", 3), ("ILPQ", 1)])
def test_non_nucleotides_are_refused_with_position(bad, position):
    with pytest.raises(ValueError, match=rf"position {position}\b"):
        Alphabet().get_batch_converter()([("rec7", bad)])
    with pytest.raises(ValueError, match="rec7"):
        Alphabet().get_batch_converter()([("rec7", bad)])


def test_empty_sequence_and_empty_batch_are_refused():
    convert = Alphabet().get_batch_converter()
    with pytest.raises(ValueError, match="empty"):
        convert(["ACGU", ""])
    with pytest.raises(ValueError, match="no sequences"):
        convert([])
    with pytest.raises(TypeError, match=r"a list of sequences, e.g. \['ACGU'\]"):
        convert("ACGU")  # not four one-letter sequences


def test_long_sequence_is_never_cut_silently():
    convert = Alphabet().get_batch_converter()
    long = "ACGU" * 200
    with pytest.raises(ValueError, match="800 nt"):
        convert([long])
    with pytest.warns(UserWarning, match="truncated"):
        tokens = convert([long, "AC"], truncate=True)
    assert tokens.shape == (2, MAX_RESIDUES + 2)
    assert tokens[0, -1].item() == 2 and tokens[1, 3].item() == 2
    exact = convert(["G" * MAX_RESIDUES])
    assert exact.shape == (1, MAX_RESIDUES + 2)


def test_tokens_table_is_consistent():
    alphabet = Alphabet()
    assert [alphabet.get_tok(i) for i in range(len(alphabet))] == list(PROTRNA_TOKENS)
