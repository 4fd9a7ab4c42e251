"""Task heads on top of the ProtRNA language model."""

from .ss import RotaFormer, RotaFormerConfig

__all__ = ["RotaFormer", "RotaFormerConfig"]
