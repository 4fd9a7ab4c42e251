"""Cross-modality transfer: ESM-2 (protein) becomes ProtRNA (RNA) by a grown vocabulary and a
mostly frozen transformer.

Three steps, each a function here:

1. :func:`load_source` reads the starting model: a Hugging Face ESM-2 (hub id or directory), a
   fair-esm ``.pt`` checkpoint, or an already-extended ProtRNA directory (to train further).
2. :func:`extend_vocabulary` grows ESM-2's 33 tokens to ProtRNA's 38: the 33 protein rows of the
   embedding (which is also the LM decoder) and of the LM output bias are copied bit for bit,
   and the five RNA rows ``a u g c x`` start as copies of the protein rows ``A U G C X``.
3. :func:`freeze_for_transfer` freezes all but the top ``K`` blocks and splits the embedding so
   that its protein rows are frozen tensors of their own.

Why RNA rows start from the protein letters with the same names: the frozen blocks were trained
on inputs drawn from the protein rows. A fresh random row would be an input they have never
seen, with an arbitrary norm and direction; a copy of an existing row is in-distribution from
step 0, so the first gradients tune the new tokens instead of repairing the network's inputs.
Copying the same *letter* (adenine from alanine, guanine from glycine, cytosine from cysteine,
uracil from selenocysteine ``U``, unknown base from unknown residue ``X``) is a convention that
keeps the mapping obvious and matches how RNA was written to the protein model before transfer;
the letters' biochemistry has nothing in common. ``U`` (selenocysteine) is rare in UniRef, so
its row is among the least trained: expect ``u`` to move most early on. The LM output bias rows
are copied the same way so the new tokens start with the logits of their protein namesakes.

Why a split parameter rather than masked gradients: the input embedding and the LM decoder are
one (38, D) matrix. Zeroing the protein rows' gradient keeps them fixed only as long as nothing
else writes to them: weight decay does, an optimizer with momentum from earlier steps or a
different update rule can, and under FSDP the gradient hook sees a flattened shard, not rows.
A tensor with ``requires_grad=False`` is never handed to the optimizer, so it cannot move under
any optimizer, decay, precision or sharding setting. :class:`PartlyFrozenEmbedding` holds the
protein rows and the RNA rows as two parameters and serves both the embedding lookup and the
decoder; :func:`merged_state_dict` turns them back into the one tied matrix for saving.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import EsmConfig, EsmForMaskedLM

from ..alphabet import ESM2_TOKENS, PROTRNA_TOKENS, RNA_TOKENS
from ..model import ProtRNAConfig

logger = logging.getLogger(__name__)

#: Protein token whose embedding row and LM bias each RNA token starts from (see module docs).
RNA_INIT_FROM: dict[str, str] = {"a": "A", "u": "U", "g": "G", "c": "C", "x": "X"}

EMBEDDING = "esm.embeddings.word_embeddings.weight"
DECODER = "lm_head.decoder.weight"
LM_BIAS = "lm_head.bias"

#: Default ``--trainable-layers``. For ESM-2 650M, 4 of 33 blocks (19.7 M values each) plus the
#: RNA rows, final LayerNorm and LM head train 80.4 M of 651 M values: the paper's "1/8".
DEFAULT_TRAINABLE_LAYERS = 4


# ---- 1. the starting model ---------------------------------------------------------------------


def load_source(source: str | Path, trust_checkpoint: bool = False) -> EsmForMaskedLM:
    """The 38-token ``EsmForMaskedLM`` to train, from any supported ``source``.

    * a fair-esm checkpoint file (``esm2_t33_650M_UR50D.pt``);
    * a directory in Hugging Face format: ESM-2 (33 tokens, extended here) or ProtRNA (38 tokens,
      e.g. the ``final`` directory of an earlier run, trained further as it is);
    * a Hugging Face hub id such as ``facebook/esm2_t33_650M_UR50D`` (needs the hub or its cache).
    """
    text = str(source)
    path = Path(text).expanduser()
    if path.is_file():
        from ..weights.fair_esm import load_esm2

        logger.info("reading fair-esm checkpoint %s", path)
        return extend_vocabulary(load_esm2(path, trust=trust_checkpoint))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model directory")
        _check_vocab_file(path)
        lm = EsmForMaskedLM.from_pretrained(str(path), attn_implementation="sdpa")
    elif text.startswith((".", "/", "~")) or text.endswith((".pt", ".pth")):
        raise FileNotFoundError(f"{text} does not exist")
    else:
        try:
            lm = EsmForMaskedLM.from_pretrained(text, attn_implementation="sdpa")
        except OSError as error:
            raise OSError(
                f"could not load {text!r} from the Hugging Face Hub: {error}\n"
                "Without network access, download it where there is one and pass the directory."
            ) from None
    lm = lm.float()
    if lm.config.vocab_size == len(PROTRNA_TOKENS):
        logger.info("%s already has the 38-token ProtRNA vocabulary: training it further", text)
        _check_esm2_shape(lm.config, text)
        return lm
    return extend_vocabulary(lm, text)


def _check_vocab_file(directory: Path) -> None:
    vocab = directory / "vocab.txt"
    if not vocab.is_file():
        return
    tokens = tuple(vocab.read_text().split())
    if tokens not in (ESM2_TOKENS, PROTRNA_TOKENS):
        raise ValueError(
            f"{vocab} lists {len(tokens)} tokens that are neither ESM-2's 33 nor ProtRNA's 38 "
            f"(starts {list(tokens[:6])}): not an ESM-2 / ProtRNA model"
        )


def _check_esm2_shape(config: EsmConfig, name: str) -> None:
    """Refuse a source that ``ProtRNAConfig`` would silently turn into a different network."""
    expected = {
        "position_embedding_type": "rotary",
        "emb_layer_norm_before": False,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "pad_token_id": 1,
        "mask_token_id": 32,
    }
    wrong = {k: getattr(config, k, None) for k, v in expected.items() if getattr(config, k, None) != v}
    if wrong:
        raise ValueError(f"{name} is not shaped like ESM-2: {wrong} (ESM-2 has {expected})")


# ---- 2. the vocabulary -------------------------------------------------------------------------


def extend_vocabulary(esm2: EsmForMaskedLM, name: str = "the source model") -> EsmForMaskedLM:
    """A 38-token ProtRNA ``EsmForMaskedLM`` made from a 33-token ESM-2 one (not modified).

    Every weight is copied; the embedding (tied LM decoder) and the LM output bias gain the rows
    ``a u g c x``, copied from ``A U G C X``. Token dropout is switched off, as in the released
    ProtRNA.

    >>> from protrna.model import ProtRNAConfig
    >>> esm2 = EsmForMaskedLM(ProtRNAConfig(num_layers=1, embed_dim=64, attention_heads=1,
    ...                                     vocab_size=33).to_esm_config())
    >>> rna = extend_vocabulary(esm2)
    >>> weight = rna.esm.embeddings.word_embeddings.weight
    >>> weight.shape[0], torch.equal(weight[33], weight[5])  # a <- A (alanine)
    (38, True)
    """
    config = esm2.config
    if config.vocab_size != len(ESM2_TOKENS):
        raise ValueError(f"{name} has {config.vocab_size} tokens; ESM-2 has {len(ESM2_TOKENS)}")
    _check_esm2_shape(config, name)
    target = ProtRNAConfig(
        num_layers=config.num_hidden_layers,
        embed_dim=config.hidden_size,
        attention_heads=config.num_attention_heads,
        ffn_embed_dim=config.intermediate_size,
        token_dropout=False,
    )
    rows = torch.tensor([ESM2_TOKENS.index(RNA_INIT_FROM[t]) for t in RNA_TOKENS])
    state = dict(esm2.state_dict())
    embedding = state[EMBEDDING].float()
    state[EMBEDDING] = state[DECODER] = torch.cat([embedding, embedding[rows]])
    bias = state[LM_BIAS].float()
    state[LM_BIAS] = torch.cat([bias, bias[rows]])
    rna = EsmForMaskedLM(target.to_esm_config())
    rna.load_state_dict(state, strict=True)
    rna.set_attn_implementation("sdpa")
    return rna


# ---- 3. freezing -------------------------------------------------------------------------------


class PartlyFrozenEmbedding(nn.Module):
    """The tied (vocab, D) token matrix as frozen leading rows + trainable trailing rows.

    Serves the input lookup (``forward``); :class:`TiedDecoder` uses the same two tensors for the
    LM output projection. ``weight`` is the full matrix, rebuilt at each call.
    """

    def __init__(self, weight: torch.Tensor, frozen_rows: int, padding_idx: int | None = None):
        super().__init__()
        self.frozen = nn.Parameter(weight[:frozen_rows].detach().clone(), requires_grad=False)
        self.trainable = nn.Parameter(weight[frozen_rows:].detach().clone())
        self.padding_idx = padding_idx

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([self.frozen, self.trainable])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight, self.padding_idx)


class TiedDecoder(nn.Module):
    """LM output projection ``hidden @ weight.T`` with the embedding's matrix.

    The embedding is held in a list so that it is not a sub-module here: its two parameters
    belong to the input side once, and appear once in ``named_parameters`` and state dicts.
    """

    def __init__(self, embedding: PartlyFrozenEmbedding):
        super().__init__()
        self._embedding = [embedding]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self._embedding[0].weight)


def freeze_for_transfer(lm: EsmForMaskedLM, trainable_layers: int = DEFAULT_TRAINABLE_LAYERS) -> None:
    """Freeze ``lm`` (in place) for RNA transfer training.

    Trainable: the top ``trainable_layers`` blocks, the five RNA rows of the token matrix,
    ``emb_layer_norm_after`` and the LM head (dense, LayerNorm, output bias). Frozen: the other
    blocks, the 33 protein rows, the (unused) contact head. The whole output bias trains: RNA
    training must push the protein tokens' logits down, and the bias is where that is cheapest.
    """
    blocks = lm.esm.encoder.layer
    if not 0 <= trainable_layers <= len(blocks):
        raise ValueError(
            f"--trainable-layers {trainable_layers}: the model has {len(blocks)} blocks (0..{len(blocks)})"
        )
    lm.requires_grad_(False)
    for block in blocks[len(blocks) - trainable_layers :]:
        block.requires_grad_(True)
    lm.esm.encoder.emb_layer_norm_after.requires_grad_(True)
    lm.lm_head.dense.requires_grad_(True)
    lm.lm_head.layer_norm.requires_grad_(True)
    lm.lm_head.bias.requires_grad_(True)
    old = lm.esm.embeddings.word_embeddings
    if isinstance(old, PartlyFrozenEmbedding):
        raise ValueError("the model is already split for transfer training")
    embedding = PartlyFrozenEmbedding(old.weight, len(ESM2_TOKENS), old.padding_idx)
    lm.esm.embeddings.word_embeddings = embedding
    lm.lm_head.decoder = TiedDecoder(embedding)


def merged_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict of a split model (:func:`freeze_for_transfer`) with the token matrix whole
    again, under the names ``EsmForMaskedLM`` uses (embedding and tied decoder)."""
    state = dict(state)
    frozen = state.pop("esm.embeddings.word_embeddings.frozen")
    trainable = state.pop("esm.embeddings.word_embeddings.trainable")
    state[EMBEDDING] = state[DECODER] = torch.cat([frozen, trainable])
    return state


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` numbers of parameter values (shared tensors counted once)."""
    params = list(model.parameters())  # deduplicated by identity
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
