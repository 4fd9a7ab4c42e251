import argparse

import pytest
import torch

from protrna.weights.fair_esm import convert_state_dict, load_esm2


def test_names_map_to_transformers():
    w = torch.zeros(1)
    state = {
        "encoder.sentence_encoder.layers.0.self_attn.q_proj.weight": w,
        "encoder.sentence_encoder.layers.0.self_attn.out_proj.bias": w,
        "encoder.sentence_encoder.layers.12.self_attn_layer_norm.weight": w,
        "encoder.sentence_encoder.layers.12.final_layer_norm.bias": w,
        "encoder.sentence_encoder.layers.12.fc2.weight": w,
        "encoder.sentence_encoder.emb_layer_norm_after.bias": w,
        "encoder.lm_head.layer_norm.weight": w,
        "contact_head.regression.weight": w,
    }
    assert sorted(convert_state_dict(state)) == sorted(
        [
            "esm.encoder.layer.0.attention.self.query.weight",
            "esm.encoder.layer.0.attention.output.dense.bias",
            "esm.encoder.layer.12.attention.LayerNorm.weight",
            "esm.encoder.layer.12.LayerNorm.bias",
            "esm.encoder.layer.12.output.dense.weight",
            "esm.encoder.emb_layer_norm_after.bias",
            "lm_head.layer_norm.weight",
            "esm.contact_head.regression.weight",
        ]
    )


def test_unknown_or_inconsistent_names_are_refused():
    with pytest.raises(ValueError, match="unknown names.*layers.0.adapter.weight"):
        convert_state_dict({"layers.0.adapter.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="not a tied"):
        convert_state_dict({"embed_tokens.weight": torch.zeros(2, 2), "lm_head.weight": torch.ones(2, 2)})


def test_esm1b_and_foreign_pickles_are_refused(tmp_path):
    esm1b = tmp_path / "esm1b.pt"
    torch.save(
        {"model": {"encoder.sentence_encoder.embed_positions.weight": torch.zeros(2, 2)}, "args": {}}, esm1b
    )
    with pytest.raises(ValueError, match="ESM-1"):
        load_esm2(esm1b)
    odd = tmp_path / "odd.pt"
    torch.save({"model": {}, "cfg": {"model": _Custom()}}, odd)
    with pytest.raises(ValueError, match="--trust-checkpoint"):
        load_esm2(odd)
    fasta = tmp_path / "rna.fa"
    fasta.write_text(">a\nACGU\n")  # not "holds Python objects": it is not a checkpoint at all
    with pytest.raises(ValueError, match="is not a PyTorch checkpoint"):
        load_esm2(fasta)


class _Custom:
    pass


def test_logits_match_fair_esm(tmp_path):
    """Parity against fair-esm's own ESM2 module (``pip install fair-esm`` to run it)."""
    pytest.importorskip("esm")
    from esm.model.esm2 import ESM2

    torch.manual_seed(0)
    reference = ESM2(num_layers=2, embed_dim=64, attention_heads=4, token_dropout=False).eval()
    with torch.no_grad():
        for param in reference.parameters():
            param.add_(0.1 * torch.randn_like(param))
    # The layout of a released checkpoint: fairseq prefixes, shape in cfg["model"].
    state = {
        ("encoder." if name.startswith(("lm_head", "contact_head")) else "encoder.sentence_encoder.")
        + name: tensor
        for name, tensor in reference.state_dict().items()
    }
    cfg = argparse.Namespace(
        encoder_layers=2, encoder_embed_dim=64, encoder_attention_heads=4, token_dropout=False
    )
    path = tmp_path / "esm2_tiny.pt"
    torch.save({"model": state, "cfg": {"model": cfg}}, path)

    model = load_esm2(path).eval()
    tokens = torch.tensor([[0, 5, 6, 7, 23, 2, 1], [0, 9, 10, 11, 12, 13, 2]])
    with torch.no_grad():
        expected = reference(tokens)["logits"]
        got = model(input_ids=tokens, attention_mask=tokens.ne(1).long()).logits
    real = tokens.ne(1)
    # transformers computes the rotary angles in fp32 whatever the dtype; fair-esm in the
    # buffer's dtype: the two differ by float rounding only.
    assert torch.allclose(got[real], expected[real], rtol=1e-5, atol=5e-5)
