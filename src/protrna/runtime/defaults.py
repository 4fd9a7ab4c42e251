"""Names and budgets that every job shares: one place, so that ``embed``, ``fold``, ``evaluate``,
``score`` and the training feature cache never disagree about what "the default" is."""

from __future__ import annotations

#: The official language model and structure head (``protrna.weights.registry`` has their files).
DEFAULT_MODEL = "ProtRNA_pretrained"
DEFAULT_HEAD = "ssHead_RF_bprna"

#: Nucleotides two neighbouring 510-nt language-model windows share (see :mod:`.encoder`).
DEFAULT_OVERLAP = 128

#: Tokens (batch size x padded length, BOS/EOS included) per language-model batch. On CPU,
#: batches of ~1,000-1,500 tokens run fastest (larger ones fall out of the caches;
#: benchmarks/bench_embed.py); GPUs want large batches.
CPU_MAX_TOKENS = 1_536
GPU_MAX_TOKENS = 16_384

#: Pair cells (batch size x L x L) per structure-head batch: batching pays off on GPUs, not CPUs.
CPU_MAX_PAIRS = 2**16
GPU_MAX_PAIRS = 2**22

#: Longest RNA ``protrna fold`` gives the structure head whole, and the length of the head's
#: windows over longer ones (:mod:`.long_rnas`). The released head was trained on bpRNA-1m TR0,
#: whose 10,814 RNAs are 33-498 nt long (VL0 and TS0: at most 497 and 499 nt): 500 covers every
#: length it learnt from and none it did not.
DEFAULT_MAX_SPAN = 500

#: Pairs of long RNAs at or below this probability are left out of the files (``--pair-floor``).
DEFAULT_PAIR_FLOOR = 1e-3
