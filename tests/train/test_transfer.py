import argparse

import pytest
import torch
from transformers import EsmForMaskedLM

from protrna.alphabet import ESM2_TOKENS, PROTRNA_TOKENS
from protrna.model import ProtRNA, ProtRNAConfig
from protrna.train.transfer import (
    DEFAULT_TRAINABLE_LAYERS,
    PartlyFrozenEmbedding,
    count_parameters,
    extend_vocabulary,
    freeze_for_transfer,
    load_source,
    merged_state_dict,
)

from .conftest import tiny_esm2

EMBEDDING = "esm.embeddings.word_embeddings.weight"


def test_protein_rows_kept_and_rna_rows_copied_from_same_letters():
    esm2 = tiny_esm2()
    rna = extend_vocabulary(esm2)
    before, after = esm2.state_dict(), rna.state_dict()
    for name in (EMBEDDING, "lm_head.bias"):
        assert after[name].shape[0] == 38
        assert torch.equal(after[name][:33], before[name])  # bit for bit
        for rna_token, protein_token in zip("augcx", "AUGCX"):
            assert torch.equal(
                after[name][PROTRNA_TOKENS.index(rna_token)], before[name][ESM2_TOKENS.index(protein_token)]
            )
    # Every other tensor is copied unchanged; the decoder stays tied to the embedding.
    for name, tensor in before.items():
        if name not in (EMBEDDING, "lm_head.bias", "lm_head.decoder.weight"):
            assert torch.equal(after[name], tensor), name
    assert rna.lm_head.decoder.weight is rna.esm.embeddings.word_embeddings.weight
    assert rna.config.vocab_size == 38 and rna.config.token_dropout is False


def test_protein_logits_unchanged_by_the_extension():
    esm2 = tiny_esm2(token_dropout=False)
    rna = extend_vocabulary(esm2).eval()
    tokens = torch.tensor([[0, 5, 6, 23, 24, 26, 2]])
    with torch.no_grad():
        old = esm2(input_ids=tokens).logits
        new = rna(input_ids=tokens).logits
    assert torch.allclose(new[..., :33], old, atol=1e-6)
    # a u g c x start with the logits of A U G C X.
    assert torch.allclose(new[..., 33:], old[..., [5, 26, 6, 23, 24]], atol=1e-6)


def test_split_embedding_computes_the_same_model():
    lm = extend_vocabulary(tiny_esm2()).eval()
    reference = EsmForMaskedLM(lm.config).eval()
    reference.load_state_dict(lm.state_dict())
    freeze_for_transfer(lm, 1)
    assert isinstance(lm.esm.embeddings.word_embeddings, PartlyFrozenEmbedding)
    tokens = torch.tensor([[0, 33, 34, 35, 36, 37, 32, 2]])
    with torch.no_grad():
        assert torch.allclose(lm(input_ids=tokens).logits, reference(input_ids=tokens).logits, atol=1e-6)
    merged = merged_state_dict(lm.state_dict())
    for name, tensor in reference.state_dict().items():
        assert torch.equal(merged[name], tensor), name


def test_what_is_frozen():
    lm = extend_vocabulary(tiny_esm2())
    freeze_for_transfer(lm, 1)
    trainable = {name for name, p in lm.named_parameters() if p.requires_grad}
    assert "esm.embeddings.word_embeddings.trainable" in trainable
    assert "esm.embeddings.word_embeddings.frozen" not in trainable
    assert all(name.startswith("esm.encoder.layer.2.") for name in trainable if ".layer." in name)
    assert {
        "esm.encoder.emb_layer_norm_after.weight",
        "lm_head.dense.weight",
        "lm_head.layer_norm.bias",
        "lm_head.bias",
    } <= trainable
    assert not any(
        name.startswith(("esm.encoder.layer.0.", "esm.encoder.layer.1.", "esm.contact_head"))
        for name in trainable
    )
    assert lm.esm.embeddings.word_embeddings.trainable.shape == (5, 32)
    with pytest.raises(ValueError, match="0..3"):
        freeze_for_transfer(extend_vocabulary(tiny_esm2()), 4)


def test_default_trains_an_eighth_of_esm2_650m():
    with torch.device("meta"):  # shapes only, no memory
        lm = EsmForMaskedLM(ProtRNAConfig().to_esm_config())
    freeze_for_transfer(lm, DEFAULT_TRAINABLE_LAYERS)
    trainable, total = count_parameters(lm)
    # 651,048,998 in the released model + 661 in transformers' (unused) contact head.
    assert total == 651_049_659
    assert trainable == 80_360_998  # 4 blocks x 19,677,440 + RNA rows, final LayerNorm, LM head
    assert 7.5 < total / trainable < 8.5


def test_sources_hf_directory_and_protrna_directory(esm2_dir, tmp_path):
    lm = load_source(esm2_dir)
    assert lm.config.vocab_size == 38
    reference = extend_vocabulary(EsmForMaskedLM.from_pretrained(esm2_dir))
    assert torch.equal(
        lm.esm.embeddings.word_embeddings.weight, reference.esm.embeddings.word_embeddings.weight
    )
    # A 38-token ProtRNA directory is taken as it is, to train further.
    ProtRNA(lm=lm).save_pretrained(tmp_path / "protrna")
    again = load_source(tmp_path / "protrna")
    for name, tensor in lm.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


def test_sources_that_are_refused(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_source(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_source(tmp_path / "empty")
    other = tmp_path / "other"
    tiny_esm2().save_pretrained(other)
    (other / "vocab.txt").write_text("\n".join(["<s>", "a", "b"]))
    with pytest.raises(ValueError, match="neither ESM-2"):
        load_source(other)


def test_hub_id_goes_through_transformers(monkeypatch):
    # No network here: the real from_pretrained call runs and fails offline, with our hint.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail fast, no retries
    with pytest.raises(
        OSError, match="(?s)'facebook/esm2_t6_8M_UR50D'.*Hugging Face Hub.*pass the directory"
    ):
        load_source("facebook/esm2_t6_8M_UR50D")


def test_fair_esm_checkpoint_source(tmp_path):
    hf = tiny_esm2()
    state = hf.state_dict()
    # fair-esm names, written out here independently of the converter's table.
    fair = {
        "encoder.sentence_encoder.embed_tokens.weight": state[EMBEDDING],
        "encoder.sentence_encoder.emb_layer_norm_after.weight": state[
            "esm.encoder.emb_layer_norm_after.weight"
        ],
        "encoder.sentence_encoder.emb_layer_norm_after.bias": state["esm.encoder.emb_layer_norm_after.bias"],
        "encoder.lm_head.weight": state[EMBEDDING],
        "encoder.lm_head.bias": state["lm_head.bias"],
        "encoder.lm_head.dense.weight": state["lm_head.dense.weight"],
        "encoder.lm_head.dense.bias": state["lm_head.dense.bias"],
        "encoder.lm_head.layer_norm.weight": state["lm_head.layer_norm.weight"],
        "encoder.lm_head.layer_norm.bias": state["lm_head.layer_norm.bias"],
    }
    for i in range(3):
        ours, theirs = f"esm.encoder.layer.{i}.", f"encoder.sentence_encoder.layers.{i}."
        for a, b in [
            ("self_attn.q_proj", "attention.self.query"),
            ("self_attn.k_proj", "attention.self.key"),
            ("self_attn.v_proj", "attention.self.value"),
            ("self_attn.out_proj", "attention.output.dense"),
            ("self_attn_layer_norm", "attention.LayerNorm"),
            ("fc1", "intermediate.dense"),
            ("fc2", "output.dense"),
            ("final_layer_norm", "LayerNorm"),
        ]:
            for kind in ("weight", "bias"):
                fair[f"{theirs}{a}.{kind}"] = state[f"{ours}{b}.{kind}"]
        fair[f"{theirs}self_attn.rot_emb.inv_freq"] = state["esm.rotary_embeddings.inv_freq"]
    cfg = argparse.Namespace(
        encoder_layers=3, encoder_embed_dim=32, encoder_attention_heads=2, token_dropout=True
    )
    path = tmp_path / "esm2_tiny.pt"
    torch.save({"model": fair, "cfg": {"model": cfg}}, path)

    from_pt = load_source(path)
    from_hf = extend_vocabulary(hf)
    for name, tensor in from_hf.state_dict().items():
        if not name.startswith("esm.contact_head."):  # not in fair-esm's main file
            assert torch.equal(from_pt.state_dict()[name], tensor), name
