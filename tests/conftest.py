"""Shared test fixtures: paths to ../shared (real data and parity fixtures) and tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PROTRNA_SHARED", REPO.parent / "shared"))
PARITY = SHARED / "fixtures" / "parity"
DATA = SHARED / "data"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is missing: put the project's shared/ folder beside the checkout")
    return path


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    return _require(PARITY)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _require(DATA)


@pytest.fixture(scope="session", autouse=True)
def _compiled_kernels_kept(request, tmp_path_factory):
    """The head's CPU kernels are compiled once and kept between test runs (in pytest's cache
    folder), not once per run in each test's fresh cache; a set PROTRNA_EXTENSIONS_DIR wins."""
    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir("protrna-extensions") if cache is not None else tmp_path_factory.mktemp("extensions")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PROTRNA_EXTENSIONS_DIR", os.environ.get("PROTRNA_EXTENSIONS_DIR") or str(folder))
        yield


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's real weight cache from a test."""
    monkeypatch.setenv("PROTRNA_HOME", str(tmp_path_factory.mktemp("protrna_home")))
    monkeypatch.setenv("PROTRNA_OFFLINE", "1")


@pytest.fixture
def tiny_model():
    """A randomly initialised 2-layer ProtRNA, fast enough for any test."""
    from protrna import ProtRNA, ProtRNAConfig

    torch.manual_seed(0)
    return ProtRNA(ProtRNAConfig(num_layers=2, embed_dim=64, attention_heads=2)).eval()


@pytest.fixture
def tiny_head():
    """A randomly initialised one-block RotaFormer head that fits :func:`tiny_model`."""
    from protrna.heads.ss import RotaFormer, RotaFormerConfig

    torch.manual_seed(1)
    return RotaFormer(RotaFormerConfig(input_dim=64, num_blocks=1)).eval()
