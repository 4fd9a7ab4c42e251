"""ProtRNA in PyTorch: the ESM-2-derived RNA language model, its structure head and tools."""

__version__ = "0.1.0"

from .alphabet import Alphabet, BatchConverter  # noqa: E402
from .model import ProtRNA, ProtRNAConfig  # noqa: E402
from .pretrained import load_pretrained_model  # noqa: E402

__all__ = ["Alphabet", "BatchConverter", "ProtRNA", "ProtRNAConfig", "load_pretrained_model", "__version__"]
