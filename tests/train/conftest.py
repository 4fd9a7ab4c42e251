"""Fixtures for training tests: a tiny ESM-2 in Hugging Face format and a small RNA corpus."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import EsmForMaskedLM

from protrna.model import ProtRNAConfig

TINY = dict(num_layers=3, embed_dim=32, attention_heads=2)


def tiny_esm2(token_dropout: bool = True, seed: int = 0) -> EsmForMaskedLM:
    """A random 33-token ESM-2 of 3 blocks x 32 channels; token dropout on, as real ESM-2 has.

    Biases and LayerNorm weights are randomised too, so a test that copies weights wrongly
    cannot pass on their initial zeros and ones.
    """
    torch.manual_seed(seed)
    config = ProtRNAConfig(**TINY, vocab_size=33, token_dropout=token_dropout).to_esm_config()
    model = EsmForMaskedLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model.eval()


@pytest.fixture(scope="session")
def esm2_dir(tmp_path_factory):
    """A local directory in the format of facebook/esm2_* on the Hugging Face Hub."""
    path = tmp_path_factory.mktemp("esm2_tiny")
    tiny_esm2().save_pretrained(path)
    return path


def write_corpus(path, n: int = 240, seed: int = 0, min_len: int = 8, max_len: int = 700) -> list[str]:
    """Random DNA-letter RNAs (as RNAcentral-style FASTA would hold), some longer than 510 nt."""
    rng = random.Random(seed)
    sequences = ["".join(rng.choice("ACGT") for _ in range(rng.randint(min_len, max_len))) for _ in range(n)]
    path.write_text("".join(f">seq{i} random\n{s}\n" for i, s in enumerate(sequences)))
    return sequences


@pytest.fixture(scope="session")
def rna_fasta(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "train.fa"
    write_corpus(path)
    return path


@pytest.fixture(scope="session")
def valid_fasta(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "valid.fa"
    write_corpus(path, n=24, seed=1)
    return path


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each in-process run builds its own Accelerator; accelerate keeps one state per process."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
