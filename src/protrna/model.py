"""The ProtRNA language model: ESM-2 with a 38-token RNA-extended vocabulary.

The transformer is ``transformers.EsmForMaskedLM``; this module only adds the original's calling
convention (``model(tokens, repr_layers=[...], need_head_weights=...)`` returning a dict), the
alphabet, and saving to a directory that plain ``transformers`` loads too.
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import nn
from transformers import EsmConfig, EsmForMaskedLM, EsmTokenizer

from .alphabet import PROTRNA_TOKENS, Alphabet

#: ESM-2 attention heads are always 64 wide; the Keras files do not store the head count.
HEAD_DIM = 64


@dataclasses.dataclass
class ProtRNAConfig:
    """Shape of a ProtRNA language model; the defaults are the released 650M model.

    Args:
        num_layers: transformer blocks (33 in ESM-2 650M).
        embed_dim: hidden width (1280).
        attention_heads: heads per block (20, i.e. 64 channels each).
        ffn_embed_dim: width of the feed-forward layer; ``None`` means ``4 * embed_dim``.
        token_dropout: ESM-2's rescaling of embeddings by the share of ``<mask>`` tokens. The
            released ProtRNA runs with it off; ``EsmConfig`` defaults it on in some versions.
        vocab_size: 38 = 33 ESM-2 tokens + ``a u g c x``.
    """

    num_layers: int = 33
    embed_dim: int = 1280
    attention_heads: int = 20
    ffn_embed_dim: int | None = None
    token_dropout: bool = False
    vocab_size: int = len(PROTRNA_TOKENS)

    def __post_init__(self) -> None:
        if self.ffn_embed_dim is None:
            self.ffn_embed_dim = 4 * self.embed_dim
        if self.embed_dim % self.attention_heads:
            raise ValueError(
                f"embed_dim {self.embed_dim} is not divisible by attention_heads {self.attention_heads}"
            )

    def to_esm_config(self) -> EsmConfig:
        alphabet = Alphabet()
        return EsmConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.embed_dim,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.attention_heads,
            intermediate_size=self.ffn_embed_dim,
            hidden_act="gelu",
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            position_embedding_type="rotary",
            layer_norm_eps=1e-5,
            emb_layer_norm_before=False,
            token_dropout=self.token_dropout,
            mask_token_id=alphabet.mask_idx,
            pad_token_id=alphabet.padding_idx,
            eos_token_id=alphabet.eos_idx,
            max_position_embeddings=1026,
            tie_word_embeddings=True,
        )

    @classmethod
    def from_esm_config(cls, config: EsmConfig) -> "ProtRNAConfig":
        return cls(
            num_layers=config.num_hidden_layers,
            embed_dim=config.hidden_size,
            attention_heads=config.num_attention_heads,
            ffn_embed_dim=config.intermediate_size,
            token_dropout=bool(config.token_dropout),
            vocab_size=config.vocab_size,
        )


class ProtRNA(nn.Module):
    """ProtRNA language model with the calling convention of the original (and of fair-esm).

    >>> model = ProtRNA(ProtRNAConfig(num_layers=2, embed_dim=64, attention_heads=1))
    >>> tokens = model.alphabet.get_batch_converter()(["ACGU", "GG"])
    >>> out = model(tokens, repr_layers=[0, 2], need_head_weights=True)
    >>> out["logits"].shape, out["representations"][2].shape, out["attentions"].shape
    (torch.Size([2, 6, 38]), torch.Size([2, 6, 64]), torch.Size([2, 2, 1, 6, 6]))

    The underlying Hugging Face model is ``model.lm`` (an ``EsmForMaskedLM``).
    """

    def __init__(self, config: ProtRNAConfig | None = None, lm: EsmForMaskedLM | None = None):
        super().__init__()
        if lm is None:
            config = config or ProtRNAConfig()
            lm = EsmForMaskedLM(config.to_esm_config())
        self.config = ProtRNAConfig.from_esm_config(lm.config)
        self.lm = lm
        self.alphabet = Alphabet()
        if self.config.vocab_size != len(self.alphabet):
            raise ValueError(
                f"model has {self.config.vocab_size} tokens, the ProtRNA alphabet {len(self.alphabet)}"
            )
        self.lm.eval()

    # Names of the original's attributes, so code written for it keeps working.
    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def attention_heads(self) -> int:
        return self.config.attention_heads

    @property
    def device(self) -> torch.device:
        return self.lm.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm.dtype

    def forward(
        self,
        tokens: torch.Tensor,
        repr_layers: Iterable[int] = (),
        need_head_weights: bool = False,
    ) -> dict:
        """Run the model on ``tokens`` (B, T) from the batch converter.

        Returns a dict with ``logits`` (B, T, 38), ``representations`` {layer: (B, T, D)} for each
        requested layer (0 = embeddings, ``num_layers`` = after the final LayerNorm) and, with
        ``need_head_weights``, ``attentions`` (B, layers, heads, T, T), zero at padded positions.
        """
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (batch, length), got shape {tuple(tokens.shape)}")
        repr_layers = sorted(set(repr_layers))
        bad = [k for k in repr_layers if not 0 <= k <= self.num_layers]
        if bad:
            raise ValueError(f"repr_layers {bad} outside 0..{self.num_layers}")
        tokens = tokens.to(self.device)
        attention_mask = tokens.ne(self.alphabet.padding_idx)
        representations: dict[int, torch.Tensor] = {}
        with self._capture_layers(repr_layers, representations):
            with self._eager_attention(need_head_weights):
                out = self.lm.esm(
                    input_ids=tokens,
                    attention_mask=attention_mask.long(),
                    output_attentions=need_head_weights,
                )
        last = out.last_hidden_state
        if self.num_layers in repr_layers:
            representations[self.num_layers] = last
        result = {"logits": self.lm.lm_head(last), "representations": representations}
        if need_head_weights:
            # (layers x (B, H, T, T)) -> (B, layers, H, T, T); ESM zeroes attention to and from pads.
            attentions = torch.stack(out.attentions, dim=1)
            pair_mask = attention_mask[:, None, :] & attention_mask[:, :, None]
            result["attentions"] = attentions * pair_mask[:, None, None].to(attentions.dtype)
        return result

    @contextmanager
    def _capture_layers(self, layers: list[int], store: dict[int, torch.Tensor]) -> Iterator[None]:
        """Keep the outputs of the requested blocks (the last one is taken after its LayerNorm)."""

        def keep(index: int):
            def hook(_module, _inputs, output):
                store[index] = output[0] if isinstance(output, tuple) else output

            return hook

        handles = []
        if 0 in layers:
            handles.append(self.lm.esm.embeddings.register_forward_hook(keep(0)))
        for k in layers:
            if 0 < k < self.num_layers:
                handles.append(self.lm.esm.encoder.layer[k - 1].register_forward_hook(keep(k)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @contextmanager
    def _eager_attention(self, needed: bool) -> Iterator[None]:
        """Attention weights exist only in the eager path; SDPA and flash never form them."""
        previous = self.lm.config._attn_implementation
        if not needed or previous == "eager":
            yield
            return
        self.lm.set_attn_implementation("eager")
        try:
            yield
        finally:
            self.lm.set_attn_implementation(previous)

    # ---- saving and loading -------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``model.safetensors``, ``config.json`` and ``vocab.txt`` to ``directory``.

        The directory loads back with :func:`protrna.load_pretrained_model` and also in plain
        Hugging Face: ``EsmForMaskedLM.from_pretrained(directory)`` and
        ``EsmTokenizer.from_pretrained(directory)`` (give it RNA in lower case).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.lm.save_pretrained(directory, safe_serialization=True)
        save_tokenizer(directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs) -> "ProtRNA":
        """Load a directory written by :meth:`save_pretrained` (or any ESM-2 style HF directory
        with the 38-token vocabulary). ``kwargs`` go to ``EsmForMaskedLM.from_pretrained``."""
        config_path = Path(directory) / "config.json"
        if config_path.is_file():  # transformers' own error for another model is a size mismatch
            model_type = json.loads(config_path.read_text()).get("model_type")
            if model_type != "esm":
                raise ValueError(f"{config_path}: model_type {model_type!r}, not 'esm': not a ProtRNA language model")
        kwargs.setdefault("attn_implementation", "sdpa")
        lm = EsmForMaskedLM.from_pretrained(str(directory), **kwargs)
        return cls(lm=lm)


def save_tokenizer(directory: Path) -> None:
    """Write ``vocab.txt`` + tokenizer config so ``EsmTokenizer.from_pretrained`` works."""
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(PROTRNA_TOKENS) + "\n")
    EsmTokenizer(vocab_file=str(vocab)).save_pretrained(str(directory))


def config_from_directory(directory: str | Path) -> ProtRNAConfig:
    """The :class:`ProtRNAConfig` of a saved model directory, without loading the weights."""
    with open(Path(directory) / "config.json") as handle:
        raw = json.load(handle)
    return ProtRNAConfig.from_esm_config(EsmConfig(**{k: v for k, v in raw.items() if k != "model_type"}))


def zero_contact_head(lm: nn.Module) -> None:
    """Zero the contact regression that transformers' ESM always builds: the original has none,
    and left at its random initial values it would make every conversion of the same file
    different (and ``predict_contacts`` return random contacts)."""
    with torch.no_grad():
        for parameter in lm.esm.contact_head.parameters():
            parameter.zero_()
