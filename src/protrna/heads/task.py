"""Small task heads for fine-tuning on language-model representations.

One module, :class:`TaskHead`, covers the three tasks of ``protrna finetune``:

* ``classification``: pooled sequence vector -> class logits;
* ``regression``: pooled sequence vector -> one value (trained on standardised targets; the
  config keeps the training mean and standard deviation to undo it);
* ``token-classification``: each nucleotide's vector -> class logits.

Pooling (:func:`pool`) is ``mean`` over the nucleotides (BOS, EOS and padding excluded, as ESM's
``extract`` does) or the ``bos`` (``<cls>``) vector. The head itself is a two-layer perceptron
(dropout, linear, GELU, dropout, linear) or, with ``hidden_dim=0``, a single linear layer (a
linear probe).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .saving import SavedHead

TASKS = ("classification", "regression", "token-classification")
POOLINGS = ("mean", "bos")
#: ``model_type`` in a saved head's ``config.json``.
MODEL_TYPE = "protrna-task-head"


@dataclasses.dataclass
class TaskHeadConfig:
    """Shape and meaning of a task head.

    Args:
        task: ``classification``, ``regression`` or ``token-classification``.
        input_dim: width of the language model's representations.
        labels: class names in output order (classification tasks); empty for regression.
        hidden_dim: width of the hidden layer; 0 makes the head one linear layer.
        dropout: dropout before each linear layer during training.
        pooling: ``mean`` or ``bos``, for the sequence-level tasks.
        target_mean, target_std: regression targets are standardised with these for training;
            predictions are ``output * target_std + target_mean``.
    """

    task: str
    input_dim: int
    labels: list[str] = dataclasses.field(default_factory=list)
    hidden_dim: int = 256
    dropout: float = 0.1
    pooling: str = "mean"
    target_mean: float = 0.0
    target_std: float = 1.0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.task != "regression" and len(self.labels) < 2:
            raise ValueError(f"a {self.task} head needs at least 2 classes, got {self.labels}")
        if self.target_std <= 0:
            raise ValueError(f"target_std must be positive, got {self.target_std}")

    @property
    def num_outputs(self) -> int:
        return 1 if self.task == "regression" else len(self.labels)

    @property
    def per_token(self) -> bool:
        return self.task == "token-classification"


def pool(hidden: torch.Tensor, lengths: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T, D) states with BOS at 0 and nucleotides at 1..L  =>  (B, D).

    >>> hidden = torch.arange(12.0).view(1, 4, 3)  # BOS, 2 nucleotides, EOS
    >>> pool(hidden, torch.tensor([2]), "mean").tolist(), pool(hidden, torch.tensor([2]), "bos").tolist()
    ([[4.5, 5.5, 6.5]], [[0.0, 1.0, 2.0]])
    """
    if pooling == "bos":
        return hidden[:, 0]
    position = torch.arange(hidden.shape[1], device=hidden.device)
    inside = (position[None, :] >= 1) & (position[None, :] <= lengths[:, None])  # (B, T)
    summed = (hidden * inside[..., None].to(hidden.dtype)).sum(dim=1)
    return summed / lengths[:, None].to(hidden.dtype)


class TaskHead(SavedHead):
    """Representations => task outputs; see the module docstring.

    >>> head = TaskHead(TaskHeadConfig("classification", input_dim=8, labels=["a", "b", "c"]))
    >>> head(torch.randn(4, 8)).shape, head(torch.randn(2, 5, 8)).shape
    (torch.Size([4, 3]), torch.Size([2, 5, 3]))
    """

    model_type = MODEL_TYPE
    config_class = TaskHeadConfig
    description = "fine-tuned task head"

    def __init__(self, config: TaskHeadConfig):
        super().__init__()
        self.config = config
        c = config
        if c.hidden_dim:
            self.layers = nn.Sequential(
                nn.Dropout(c.dropout), nn.Linear(c.input_dim, c.hidden_dim), nn.GELU(),
                nn.Dropout(c.dropout), nn.Linear(c.hidden_dim, c.num_outputs),
            )
        else:
            self.layers = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(c.input_dim, c.num_outputs))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(..., input_dim) => (..., num_outputs) logits (or standardised values)."""
        return self.layers(features)
