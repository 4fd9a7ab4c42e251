"""Write a tiny, randomly initialised ESM-2-shaped model for CPU-sized end-to-end runs.

Two directories:

* ``ESM2_DIR``: a 33-token ESM-2 in Hugging Face format (what ``facebook/esm2_*`` look like), the
  starting point of ``protrna pretrain --esm ESM2_DIR``;
* ``RANDOM_LM_DIR``: the same weights with the vocabulary grown to ProtRNA's 38 tokens exactly as
  ``protrna pretrain`` grows it, untrained: the "no pretraining" control of the same pipeline.

    python examples/make_tiny_esm2.py ESM2_DIR RANDOM_LM_DIR [--layers 6 --width 192 --seed 0]
"""

import argparse

import torch
from transformers import EsmForMaskedLM, EsmTokenizer

from protrna.alphabet import ESM2_TOKENS
from protrna.model import ProtRNA, ProtRNAConfig
from protrna.train.transfer import extend_vocabulary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("esm2_dir")
    parser.add_argument("random_lm_dir")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=192, help="hidden size; heads are 64 wide as in ESM-2")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    shape = ProtRNAConfig(num_layers=args.layers, embed_dim=args.width, attention_heads=args.width // 64,
                          vocab_size=len(ESM2_TOKENS), token_dropout=True)  # ESM-2 has token dropout on
    esm2 = EsmForMaskedLM(shape.to_esm_config())  # transformers' own random initialisation
    esm2.save_pretrained(args.esm2_dir)
    vocab = f"{args.esm2_dir}/vocab.txt"
    with open(vocab, "w") as handle:
        handle.write("\n".join(ESM2_TOKENS) + "\n")
    EsmTokenizer(vocab_file=vocab).save_pretrained(args.esm2_dir)

    ProtRNA(lm=extend_vocabulary(esm2)).save_pretrained(args.random_lm_dir)
    parameters = sum(p.numel() for p in esm2.parameters())
    print(f"{args.esm2_dir}: {args.layers} layers x {args.width}, {parameters:,} parameters; "
          f"{args.random_lm_dir}: the same, vocabulary grown to 38 tokens, untrained")


if __name__ == "__main__":
    main()
