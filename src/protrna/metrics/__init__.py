"""Per-sequence structure scores under two protocols, and how each averages them.

* ``protrna`` (:mod:`protrna.metrics.protrna`, the default): the original ``test_downstream_ss.py``,
  the numbers of the paper's first version: strict F1/MCC/precision/recall/accuracy on the
  strictly lower triangle and RiNALMo's shifted F1.
* ``rnabench`` (:mod:`protrna.metrics.rnabench`): RnaBench 0.1.2's folding benchmark, which the
  original's current ``test_downstream_ss_rnabench.py`` reports (TS0, intra-/inter-family).

The two give different numbers for the same structures (other cells, other epsilons, another
shifted F1, other averaging), so every output names its protocol.

>>> get_protocol("rnabench").metrics[:2], get_protocol("protrna").f1
(('f1_score', 'mcc'), 'f1')
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Mapping

from ..structure import BasePairs
from . import rnabench
from .protrna import METRICS, SHIFTED_F1_EPSILON, Structure, mean_scores, relax, score, shifted_f1, strict_scores

__all__ = [
    "METRICS", "SHIFTED_F1_EPSILON", "Structure", "mean_scores", "relax", "score", "shifted_f1",
    "strict_scores", "Protocol", "PROTOCOLS", "get_protocol", "rnabench",
]


def _every_reference(reference: BasePairs) -> bool:
    return True


def _protrna_f1(pred: Structure, target: Structure) -> float:
    return score(pred, target)["f1"]


@dataclasses.dataclass(frozen=True)
class Protocol:
    """One way of scoring structures: names, per-sequence scorer and averaging.

    Args:
        name: what ``--protocol`` takes and every output records.
        description: what the numbers mean, starting with the name; stored in summaries and settings.
        metrics: the per-sequence metric names, in table and TSV order.
        f1: the metric a threshold sweep maximises.
        f1_only: ``f1_only(pred, target)``, that metric alone (what sweeps call, many times).
        score: ``score(pred, target) -> {metric: value}`` for one sequence.
        mean_scores: the average over sequences that the protocol reports.
        is_scored: whether a reference takes part at all (RnaBench drops references without pairs).
        footnote: printed under tables.
    """

    name: str
    description: str
    metrics: tuple[str, ...]
    f1: str
    f1_only: Callable[..., float]
    score: Callable[..., dict]
    mean_scores: Callable[[Iterable[Mapping[str, float]]], dict]
    is_scored: Callable[[BasePairs], bool]
    footnote: str


PROTOCOLS: dict[str, Protocol] = {
    "protrna": Protocol(
        name="protrna",
        description=(
            "protrna: ProtRNA test_downstream_ss.py: strict f1/mcc/precision/recall/accuracy over the strictly "
            "lower triangle (scikit-learn definitions, 0 where undefined); f1_shifted as RiNALMo "
            "(one-base shift allowed, upper triangle); plain means over sequences"
        ),
        metrics=METRICS,
        f1="f1",
        f1_only=_protrna_f1,
        score=score,
        mean_scores=mean_scores,
        is_scored=_every_reference,
        footnote="protocol protrna: f1 strict; f1_shifted allows a one-base shift (RiNALMo); means over sequences",
    ),
    "rnabench": Protocol(
        name="rnabench",
        description=(
            "rnabench: RnaBench 0.1.2 RnaFoldingBenchmark, as ProtRNA's test_downstream_ss_rnabench.py: counts over "
            "the whole symmetric matrix with 1e-8 in every denominator; f1_shifted as e2efold; "
            "weisfeiler_lehman as grakel WL (n_iter=5, normalized); references without pairs left out; "
            "NaN as 0; plain means over sequences"
        ),
        metrics=rnabench.METRICS,
        f1="f1_score",
        f1_only=rnabench.f1_score,
        score=rnabench.score,
        mean_scores=rnabench.mean_scores,
        is_scored=rnabench.is_scored,
        footnote=(
            "protocol rnabench (RnaBench 0.1.2): f1_score strict over whole matrices; f1_shifted e2efold's; "
            "references without pairs left out; means over sequences"
        ),
    ),
}


def get_protocol(name: str | Protocol) -> Protocol:
    """The protocol called ``name`` (a :class:`Protocol` is returned as is)."""
    if isinstance(name, Protocol):
        return name
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown scoring protocol {name!r}; known: {', '.join(PROTOCOLS)}") from None
