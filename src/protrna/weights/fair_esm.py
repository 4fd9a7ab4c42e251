"""Import of fair-esm ESM-2 checkpoints (``esm2_t33_650M_UR50D.pt`` and kin) into transformers.

A fair-esm checkpoint is a pickled dict: ``"model"`` holds the state dict under fairseq names
(``encoder.sentence_encoder.layers.0.self_attn.q_proj.weight``...), ``"cfg"["model"]`` the shape
(``encoder_layers``, ``encoder_embed_dim``, ``encoder_attention_heads``, ``token_dropout``).
The names map one-to-one onto ``transformers.EsmForMaskedLM``; the table below is the whole
mapping, with two tensors that transformers stores once where fair-esm repeats them:
``lm_head.weight`` (the LM decoder, checked equal to the embedding it is tied to and dropped)
and the rotary ``inv_freq`` of each block (checked equal across blocks; kept once as
``esm.rotary_embeddings.inv_freq``, the checkpoint's values rather than recomputed ones, as
transformers' own loader does).

ESM-1 and ESM-1b checkpoints (``"args"``, learned positions, a LayerNorm before the stack) are a
different architecture and are refused.
"""

from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path

import torch
from transformers import EsmForMaskedLM

from ..alphabet import ESM2_TOKENS
from ..model import HEAD_DIM, ProtRNAConfig, zero_contact_head

# Per block: fair-esm name inside ``layers.{i}.`` -> transformers name inside ``esm.encoder.layer.{i}.``
BLOCK_NAMES: dict[str, str] = {
    "self_attn.q_proj": "attention.self.query",
    "self_attn.k_proj": "attention.self.key",
    "self_attn.v_proj": "attention.self.value",
    "self_attn.out_proj": "attention.output.dense",
    "self_attn_layer_norm": "attention.LayerNorm",
    "fc1": "intermediate.dense",
    "fc2": "output.dense",
    "final_layer_norm": "LayerNorm",
}

# Outside the blocks: fair-esm module -> transformers module.
TOP_NAMES: dict[str, str] = {
    "embed_tokens": "esm.embeddings.word_embeddings",
    "emb_layer_norm_after": "esm.encoder.emb_layer_norm_after",
    "lm_head.dense": "lm_head.dense",
    "lm_head.layer_norm": "lm_head.layer_norm",
    "contact_head.regression": "esm.contact_head.regression",
}

_BLOCK = re.compile(r"^layers\.(\d+)\.(.+)\.(weight|bias)$")
_PREFIXES = ("encoder.sentence_encoder.", "encoder.")


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a fair-esm ESM-2 state dict to ``EsmForMaskedLM`` names.

    Raises ``ValueError`` on a name the table does not know, so nothing is silently dropped.

    >>> w = torch.zeros(2, 2)
    >>> sorted(convert_state_dict({"encoder.sentence_encoder.layers.3.fc1.weight": w,
    ...                            "encoder.lm_head.bias": w[0]}))
    ['esm.encoder.layer.3.intermediate.dense.weight', 'lm_head.bias']
    """
    converted: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    stripped = {_strip(name): tensor for name, tensor in state.items()}
    for name, tensor in stripped.items():
        if name == "lm_head.weight":
            embedding = stripped.get("embed_tokens.weight")
            if embedding is not None and not torch.equal(tensor, embedding):
                raise ValueError("lm_head.weight differs from embed_tokens.weight: not a tied ESM-2 LM")
            continue
        if name.endswith("self_attn.rot_emb.inv_freq"):
            shared = converted.setdefault("esm.rotary_embeddings.inv_freq", tensor)
            if not torch.equal(shared, tensor):
                raise ValueError(f"{name} differs from the other blocks' rotary frequencies")
            continue
        if name == "lm_head.bias":
            converted["lm_head.bias"] = tensor
            continue
        block = _BLOCK.match(name)
        if block and block.group(2) in BLOCK_NAMES:
            index, module, kind = block.groups()
            converted[f"esm.encoder.layer.{index}.{BLOCK_NAMES[module]}.{kind}"] = tensor
            continue
        module, _, kind = name.rpartition(".")
        if module in TOP_NAMES and kind in ("weight", "bias"):
            converted[f"{TOP_NAMES[module]}.{kind}"] = tensor
            continue
        unknown.append(name)
    if unknown:
        raise ValueError(f"not ESM-2 weights, unknown names: {unknown[:8]}")
    return converted


def _strip(name: str) -> str:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def _field(cfg, name: str):
    return cfg.get(name) if isinstance(cfg, dict) else getattr(cfg, name, None)


def load_checkpoint_file(path: str | Path, trust: bool = False) -> dict:
    """``torch.load`` a fair-esm checkpoint. Its ``cfg`` is an ``argparse.Namespace``, allowed
    explicitly; anything else pickled in it is refused unless ``trust`` (then plain pickle runs,
    which can execute code: only for files from a source you trust)."""
    with open(path, "rb") as handle:
        start = handle.read(4)
    if start[:2] != b"PK" and start[:1] != b"\x80":  # torch.save's zip archive, or a legacy pickle
        raise ValueError(f"{path} is not a PyTorch checkpoint (a fair-esm .pt file, e.g. esm2_t33_650M_UR50D.pt)")
    if trust:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path} holds Python objects besides tensors and settings ({str(error).splitlines()[0]}). "
            "If it comes from a source you trust, pass --trust-checkpoint to load it with pickle."
        ) from None


def load_esm2(path: str | Path, trust: bool = False) -> EsmForMaskedLM:
    """An ``EsmForMaskedLM`` (33 tokens, ESM-2's vocabulary) with the weights of a fair-esm ``.pt``.

    The shape comes from ``cfg["model"]`` when present and is checked against the tensors;
    without it, it is read off the tensors with ESM's 64-wide heads.
    """
    data = load_checkpoint_file(path, trust)
    if not isinstance(data, dict) or "model" not in data:
        raise ValueError(f"{path} is not a fair-esm checkpoint (no 'model' state dict inside)")
    raw = data["model"]
    names = {_strip(k) for k in raw}
    if "embed_positions.weight" in names or "emb_layer_norm_before.weight" in names:
        raise ValueError(
            f"{path} is an ESM-1/ESM-1b checkpoint (learned positions); ProtRNA starts from ESM-2"
        )
    state = convert_state_dict(raw)

    embedding = state["esm.embeddings.word_embeddings.weight"]
    if embedding.shape[0] != len(ESM2_TOKENS):
        raise ValueError(f"{path} has {embedding.shape[0]} tokens, ESM-2 has {len(ESM2_TOKENS)}")
    embed_dim = embedding.shape[1]
    num_layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("esm.encoder.layer."))
    cfg = (data.get("cfg") or {}).get("model") if isinstance(data.get("cfg"), dict) else None
    heads = _field(cfg, "encoder_attention_heads") if cfg is not None else None
    token_dropout = _field(cfg, "token_dropout") if cfg is not None else None
    if cfg is not None:
        for field, found in (("encoder_layers", num_layers), ("encoder_embed_dim", embed_dim)):
            declared = _field(cfg, field)
            if declared is not None and declared != found:
                raise ValueError(f"{path}: cfg says {field}={declared} but the weights have {found}")
    config = ProtRNAConfig(
        num_layers=num_layers,
        embed_dim=embed_dim,
        attention_heads=heads or embed_dim // HEAD_DIM,
        ffn_embed_dim=state["esm.encoder.layer.0.intermediate.dense.weight"].shape[0],
        token_dropout=bool(token_dropout) if token_dropout is not None else True,
        vocab_size=len(ESM2_TOKENS),
    )
    model = EsmForMaskedLM(config.to_esm_config())
    missing, unexpected = model.load_state_dict(state, strict=False)
    # The LM decoder is tied to the embedding; the contact regression ships in a separate file.
    contact_head_missing = any(k.startswith("esm.contact_head.") for k in missing)
    missing = [k for k in missing if k != "lm_head.decoder.weight" and not k.startswith("esm.contact_head.")]
    if missing or unexpected:
        raise ValueError(f"{path}: missing weights {missing[:8]}, unexpected {unexpected[:8]}")
    if contact_head_missing:
        zero_contact_head(model)
    return model
