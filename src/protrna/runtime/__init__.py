"""The inference runtime under the jobs: model preparation, budgets and defaults, the windowed
language-model encoder, the structure predictor (with local windows for long RNAs), and the one
resume mechanism.

Jobs (``embed``, ``fold``, ``evaluate``, ``score``, fine-tuned prediction, the training feature
cache) import from here and never from each other.
"""

from .defaults import DEFAULT_HEAD, DEFAULT_MAX_SPAN, DEFAULT_MODEL, DEFAULT_OVERLAP, DEFAULT_PAIR_FLOOR
from .encoder import EncodedSequence, WindowedEncoder, plan_windows
from .long_rnas import check_max_span, plan_span_windows
from .models import (
    checked_device,
    checked_dtype,
    pack_if_owned,
    pair_budget,
    prepare_head,
    prepare_model,
    token_budget,
)
from .predictor import PairProbabilities, StructurePredictor, load_predictor

__all__ = [
    "DEFAULT_HEAD",
    "DEFAULT_MAX_SPAN",
    "DEFAULT_MODEL",
    "DEFAULT_OVERLAP",
    "DEFAULT_PAIR_FLOOR",
    "EncodedSequence",
    "PairProbabilities",
    "StructurePredictor",
    "WindowedEncoder",
    "check_max_span",
    "checked_device",
    "checked_dtype",
    "load_predictor",
    "pack_if_owned",
    "pair_budget",
    "plan_span_windows",
    "plan_windows",
    "prepare_head",
    "prepare_model",
    "token_budget",
]
