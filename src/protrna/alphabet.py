"""The ProtRNA alphabet and batch converter.

ProtRNA keeps the 33 ESM-2 protein tokens untouched and appends five lower-case RNA tokens, so
RNA and protein letters never share an id: upper-case ``A`` is alanine (5), lower-case ``a`` is
adenine (33). The batch converter is where RNA is lower-cased; everything downstream sees ids.

>>> alphabet = Alphabet()
>>> alphabet.get_batch_converter()(["ACGUT", "acgNn-"]).tolist()
[[0, 33, 36, 35, 34, 34, 2, 1], [0, 33, 36, 35, 37, 37, 37, 2]]
"""

from __future__ import annotations

import warnings
from typing import Iterable, Sequence

import torch

# ESM-2's 33 tokens, in ESM-2's order, then the five RNA tokens ProtRNA appended.
ESM2_TOKENS: tuple[str, ...] = (
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y", "M", "H",
    "W", "C", "X", "B", "U", "Z", "O", ".", "-",
    "<null_1>", "<mask>",
)  # fmt: skip
RNA_TOKENS: tuple[str, ...] = ("a", "u", "g", "c", "x")
PROTRNA_TOKENS: tuple[str, ...] = ESM2_TOKENS + RNA_TOKENS

#: Residues per sequence the released model was trained on (512 tokens with BOS and EOS).
MAX_RESIDUES = 510

# Letters of the IUPAC nucleotide code (plus gaps and an explicit unknown) that the original maps
# to the RNA unknown token ``x``. Anything else (E, F, I, L, P, Q, digits, ``*``...) is not a
# nucleotide and is refused: the original silently turned it into ``x`` too, hiding protein or
# corrupted input.
_AMBIGUOUS = "RYSWKMBDHVNX-."
_CANONICAL = {"A": "a", "C": "c", "G": "g", "U": "u", "T": "u"}


def _build_rna_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for upper, token in _CANONICAL.items():
        table[upper] = table[upper.lower()] = token
    for char in _AMBIGUOUS:
        table[char] = table[char.lower()] = "x"
    return table


RNA_LETTER_TO_TOKEN: dict[str, str] = _build_rna_table()


class Alphabet:
    """Token <-> id tables of the 38-token ProtRNA vocabulary.

    Attribute names follow ``esm.data.Alphabet`` so code written for ESM reads the same.

    >>> a = Alphabet()
    >>> len(a), a.padding_idx, a.cls_idx, a.eos_idx, a.mask_idx, a.get_idx("u")
    (38, 1, 0, 2, 32, 34)
    """

    def __init__(self, tokens: Sequence[str] = PROTRNA_TOKENS):
        self.all_toks: list[str] = list(tokens)
        self.tok_to_idx: dict[str, int] = {tok: i for i, tok in enumerate(self.all_toks)}
        self.padding_idx = self.tok_to_idx["<pad>"]
        self.cls_idx = self.tok_to_idx["<cls>"]
        self.eos_idx = self.tok_to_idx["<eos>"]
        self.unk_idx = self.tok_to_idx["<unk>"]
        self.mask_idx = self.tok_to_idx["<mask>"]
        self.prepend_bos = True
        self.append_eos = True
        self.rna_idx: list[int] = [self.tok_to_idx[t] for t in RNA_TOKENS if t in self.tok_to_idx]

    def __len__(self) -> int:
        return len(self.all_toks)

    def get_idx(self, tok: str) -> int:
        return self.tok_to_idx.get(tok, self.unk_idx)

    def get_tok(self, idx: int) -> str:
        return self.all_toks[idx]

    def to_dict(self) -> dict[str, int]:
        return dict(self.tok_to_idx)

    def pad_batch(self, encoded: Sequence[Sequence[int]]) -> torch.Tensor:
        """Add BOS/EOS to each id list and right-pad them into one (B, T) ``LongTensor``.

        >>> Alphabet().pad_batch([[33, 34], [35]]).tolist()
        [[0, 33, 34, 2], [0, 35, 2, 1]]
        """
        width = max(len(ids) for ids in encoded) + 2
        tokens = torch.full((len(encoded), width), self.padding_idx, dtype=torch.long)
        for row, ids in enumerate(encoded):
            tokens[row, 0] = self.cls_idx
            tokens[row, 1 : len(ids) + 1] = torch.as_tensor(ids, dtype=torch.long)
            tokens[row, len(ids) + 1] = self.eos_idx
        return tokens

    def get_batch_converter(self, truncation_seq_length: int | None = None) -> "BatchConverter":
        """A callable turning a list of RNA strings into a padded ``LongTensor`` of ids."""
        return BatchConverter(self, truncation_seq_length)


def encode_rna(sequence: str, name: str | None = None) -> list[int]:
    """Token ids of one RNA sequence, without BOS/EOS; raises ``ValueError`` on non-nucleotides.

    >>> encode_rna("AcTn")
    [33, 36, 34, 37]
    """
    label = f"sequence {name!r}" if name is not None else "sequence"
    if len(sequence) == 0:
        raise ValueError(f"{label} is empty")
    ids = []
    tok_to_idx = _DEFAULT_ALPHABET.tok_to_idx
    for position, char in enumerate(sequence):
        token = RNA_LETTER_TO_TOKEN.get(char)
        if token is None:
            raise ValueError(
                f"{label} has {char!r} at position {position + 1}, which is not a nucleotide code "
                "(allowed: A C G U T, IUPAC codes R Y S W K M B D H V N, X, gaps - and .)"
            )
        ids.append(tok_to_idx[token])
    return ids


class BatchConverter:
    """Turns RNA strings into the token ids the original ProtRNA batch converter produces.

    Accepts plain strings or ``(label, sequence)`` pairs (the ESM convention); labels only serve
    error messages. Differences from the original, all on input the original handled silently:

    * an empty sequence or a letter that is not a nucleotide code raises ``ValueError`` naming
      the sequence and the 1-based position;
    * a sequence longer than ``truncation_seq_length`` (default 510, the model's window) raises,
      unless ``truncate=True`` is passed, which cuts it with a warning.

    >>> convert = Alphabet().get_batch_converter()
    >>> convert([("r1", "GGu"), ("r2", "A")]).tolist()
    [[0, 35, 35, 34, 2], [0, 33, 2, 1, 1]]
    """

    def __init__(self, alphabet: Alphabet, truncation_seq_length: int | None = None):
        self.alphabet = alphabet
        self.truncation_seq_length = truncation_seq_length or MAX_RESIDUES

    def __call__(
        self, sequences: Iterable[str] | Iterable[tuple[str, str]], truncate: bool = False
    ) -> torch.Tensor:
        if isinstance(sequences, str):  # would otherwise be a batch of one-letter sequences
            raise TypeError(f"pass a list of sequences, e.g. [{sequences[:20]!r}], not one string")
        records = [
            (f"#{i}", item) if isinstance(item, str) else (str(item[0]), item[1])
            for i, item in enumerate(sequences)
        ]
        if not records:
            raise ValueError("the batch holds no sequences")
        limit = self.truncation_seq_length
        encoded = []
        for name, sequence in records:
            ids = encode_rna(sequence, name)
            if len(ids) > limit:
                if not truncate:
                    raise ValueError(
                        f"sequence {name!r} has {len(ids)} nt, more than the {limit} the model takes "
                        "at once; pass truncate=True to cut it, or use protrna.embed, which covers "
                        "long RNAs with overlapping windows"
                    )
                warnings.warn(f"sequence {name!r} truncated from {len(ids)} to {limit} nt", stacklevel=2)
                ids = ids[:limit]
            encoded.append(ids)
        return self.alphabet.pad_batch(encoded)


_DEFAULT_ALPHABET = Alphabet()
