"""The original's calling path, as a reference that the runtime's batched paths must match."""

import torch


def direct_probabilities(lm, head, sequence):
    """Reference: the original's path for one sequence (LM, representations[last], head)."""
    with torch.no_grad():
        tokens = lm.alphabet.get_batch_converter()([sequence])
        reps = lm(tokens, repr_layers=[lm.num_layers])["representations"][lm.num_layers]
        return torch.sigmoid(head(reps)).numpy()


def direct_representations(lm, sequence, layers):
    """Reference: one sequence through the model alone, BOS/EOS included: ``{layer: (L + 2, D)}``."""
    with torch.no_grad():
        tokens = lm.alphabet.get_batch_converter()([sequence])
        out = lm(tokens, repr_layers=list(layers))["representations"]
        return {layer: out[layer][0].float() for layer in layers}
