"""SHA-256 digests that jobs record to recognise their inputs and weights again: one scheme for
records, one for tensors, used by every resume check, cache key and fingerprint."""

from __future__ import annotations

import hashlib
from typing import Iterable

import torch


def records_digest(records: Iterable[tuple[str, str]]) -> str:
    """SHA-256 of ``(id, sequence)`` pairs in order: what jobs compare before resuming a run.

    >>> records_digest([("a", "ACGU")]) == records_digest([("a", "ACGU")]) != records_digest([("a", "ACGA")])
    True
    """
    digest = hashlib.sha256()
    for record_id, sequence in records:
        digest.update(f"{record_id}\n{sequence}\n".encode())
    return digest.hexdigest()


def tensors_digest(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 (hex) over the names, shapes, dtypes and bytes of tensors, taken in name order
    (so the order a module lists them in does not matter).

    >>> from torch import nn
    >>> layer = nn.Linear(2, 2)
    >>> tensors_digest(layer.state_dict().items()) == tensors_digest(reversed(layer.state_dict().items()))
    True
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(named_tensors, key=lambda item: item[0]):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().data)
    return digest.hexdigest()
