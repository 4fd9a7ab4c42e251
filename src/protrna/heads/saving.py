"""Saving and loading the package's own heads, in the Hugging Face directory layout.

A saved head is a directory with ``config.json`` (the head's dataclass config plus a
``model_type`` that says which head it is) and ``model.safetensors``. The heads are plain
``nn.Module`` subclasses rather than ``transformers.PreTrainedModel`` because they are not
language models and carry no tokenizer or generation machinery; this mixin gives them the same
two methods users know from ``transformers``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import ClassVar, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

Head = TypeVar("Head", bound="SavedHead")


class SavedHead(nn.Module):
    """Adds ``save_pretrained`` / ``from_pretrained`` to a head whose ``self.config`` is a dataclass.

    Subclasses set ``model_type`` (written to ``config.json`` and checked on loading),
    ``config_class`` and ``description`` (for error messages).
    """

    model_type: ClassVar[str]
    config_class: ClassVar[type]
    description: ClassVar[str]

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` to ``directory`` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"model_type": self.model_type, **dataclasses.asdict(self.config)}
        (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
        return directory

    @classmethod
    def from_pretrained(cls: type[Head], directory: str | Path, dtype: torch.dtype | None = None) -> Head:
        """Load a directory written by :meth:`save_pretrained`, in eval mode, in the stored dtype
        unless ``dtype`` is given. Config keys this version does not know are ignored, so heads
        saved by a newer release still load."""
        directory = Path(directory)
        config_path = directory / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{directory}: no config.json; not a saved {cls.description}")
        raw = json.loads(config_path.read_text())
        if raw.pop("model_type", None) != cls.model_type:
            raise ValueError(
                f"{config_path}: model_type is not {cls.model_type!r}; not a {cls.description} directory"
            )
        known = {field.name for field in dataclasses.fields(cls.config_class)}
        head = cls(cls.config_class(**{k: v for k, v in raw.items() if k in known}))
        state = load_file(str(directory / "model.safetensors"))
        head.load_state_dict(state)
        stored = next(iter(state.values())).dtype
        return head.to(dtype or stored).eval()
