"""Using a model made by ``protrna finetune``: load ``DIR/final``, predict, score.

``DIR/final`` holds the task head and says which language model it sits on::

    config.json, model.safetensors   the TaskHead (protrna.heads.task)
    finetune.json                    task, language-model mode and source, input format, metrics
    lm/                              mode "top-k": the fine-tuned language model (ProtRNA directory)
    lora/                            mode "lora": the LoRA adapter in PEFT's format

The language model is

* ``frozen``: the one trained on, loaded from where it was (``lm_source`` in ``finetune.json``) or
  from ``model=``; its weights' SHA-256 must equal the recorded ``lm_fingerprint``;
* ``top-k``: ``lm/``, a whole ProtRNA directory (its top blocks were trained);
* ``lora``: the frozen base as for ``frozen`` (fingerprint checked), with the adapter in ``lora/``
  merged into its weights (``peft``'s ``merge_and_unload``). The adapter also loads in plain
  PEFT: ``PeftModel.from_pretrained(EsmForMaskedLM.from_pretrained(base), DIR/final/lora)``.

Representations come from :class:`~protrna.runtime.WindowedEncoder`, as in ``protrna embed``
(windows of 510 nt for longer RNAs), so prediction sees what frozen-LM training saw.

>>> model = load_finetuned("runs/nrc/final")  # doctest: +SKIP
>>> [p.prediction for p in model.predict(["GGCUACGGCCAUACCACCCUGAAAGCACCGGUUCUCGUCUGAUC"])]  # doctest: +SKIP
['5S_rRNA']
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import logging
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .data.labelled import LabelledRecord
from .heads.task import TaskHead, TaskHeadConfig
from .model import ProtRNA
from .runtime import DEFAULT_OVERLAP, WindowedEncoder, pack_if_owned, prepare_model, token_budget
from .task_metrics import classification_metrics, regression_metrics

logger = logging.getLogger(__name__)

#: What ``DIR/final`` says about the language model and the run.
INFO_FILE = "finetune.json"
LM_MODES = ("frozen", "top-k", "lora")
_CHUNK = 512


@dataclasses.dataclass
class Prediction:
    """The model's answer for one RNA.

    ``prediction`` is a class name (classification), a value (regression) or a tuple of class
    names, one per nucleotide (token-classification); ``probabilities`` are the class
    probabilities, (classes,) or (L, classes), ``None`` for regression.
    """

    index: int
    id: str
    length: int
    prediction: str | float | tuple[str, ...]
    probabilities: np.ndarray | None = None


def decode_outputs(config: TaskHeadConfig, outputs: torch.Tensor) -> tuple[object, np.ndarray | None]:
    """The prediction and probabilities from one RNA's head outputs, (K,) or (L, K).

    >>> config = TaskHeadConfig("regression", input_dim=4, target_mean=10.0, target_std=2.0)
    >>> decode_outputs(config, torch.tensor([0.5]))
    (11.0, None)
    """
    outputs = outputs.float()
    if config.task == "regression":
        return float(outputs.reshape(()) * config.target_std + config.target_mean), None
    probabilities = torch.softmax(outputs, dim=-1)
    best = probabilities.argmax(dim=-1)
    if config.task == "classification":
        return config.labels[int(best)], probabilities.numpy()
    return tuple(config.labels[int(k)] for k in best), probabilities.numpy()


def features_for(config: TaskHeadConfig, per_token: torch.Tensor, bos: torch.Tensor) -> torch.Tensor:
    """What the head reads: per-nucleotide vectors (L, D) or the pooled vector (D,)."""
    if config.per_token:
        return per_token
    return bos if config.pooling == "bos" else per_token.mean(0)


class FinetunedModel:
    """A language model and a fine-tuned :class:`TaskHead`, ready to predict.

    Build it with :func:`load_finetuned`; or directly from modules (``lm`` is used as it is).
    """

    def __init__(self, lm: ProtRNA | None, head: TaskHead, info: dict | None = None, *,
                 max_tokens: int | None = None, window_overlap: int = DEFAULT_OVERLAP):
        self.lm, self.head = lm, head.eval()
        self.info = info or {}
        self.max_tokens = max_tokens
        self.window_overlap = window_overlap

    @property
    def config(self) -> TaskHeadConfig:
        return self.head.config

    @torch.inference_mode()
    def head_prediction(self, index: int, record_id: str, features: torch.Tensor, length: int) -> Prediction:
        """Run the head on one RNA's features (see :func:`features_for`)."""
        parameter = next(self.head.parameters())
        outputs = self.head(features.to(parameter.device, parameter.dtype)).cpu()
        prediction, probabilities = decode_outputs(self.config, outputs)
        return Prediction(index, record_id, length, prediction, probabilities)

    def predict(self, records: Iterable[str] | Iterable[tuple[str, str]], progress: bool = False) -> list[Prediction]:
        """Predict every RNA (strings, or ``(id, sequence)`` pairs); results in input order."""
        if self.lm is None:
            raise ValueError("this FinetunedModel has no language model; load it with load_finetuned")
        from tqdm.auto import tqdm

        records = [(str(i), r) if isinstance(r, str) else (str(r[0]), r[1]) for i, r in enumerate(records)]
        layer = self.lm.num_layers
        max_tokens = token_budget(self.max_tokens, self.lm.device)
        encoder = WindowedEncoder(self.lm, [layer], max_tokens=max_tokens, overlap=self.window_overlap)
        results: list[Prediction | None] = [None] * len(records)
        with tqdm(total=len(records), unit="seq", desc="predict", disable=not progress, dynamic_ncols=True) as bar:
            for start in range(0, len(records), _CHUNK):
                for encoded in encoder.encode(records[start : start + _CHUNK], first_index=start):
                    features = features_for(self.config, encoded.per_token[layer], encoded.bos[layer])
                    results[encoded.index] = self.head_prediction(encoded.index, encoded.id, features, encoded.length)
                    bar.update(1)
        return results


def load_finetuned(
    directory: str | Path,
    model: ProtRNA | str | None = None,
    *,
    device: str | None = None,
    dtype: str | None = None,
    max_tokens: int | None = None,
) -> FinetunedModel:
    """Load ``DIR/final`` of ``protrna finetune`` with its language model (see module docs).

    ``model`` replaces the recorded ``lm_source`` of a frozen or LoRA model (a path or a loaded
    :class:`ProtRNA`); its weights must be the ones trained on.
    """
    from .train.features import lm_fingerprint

    directory = Path(directory)
    info_path = directory / INFO_FILE
    if not info_path.is_file():
        raise FileNotFoundError(f"{directory} has no {INFO_FILE}: not the final directory of protrna finetune")
    info = json.loads(info_path.read_text())
    head = TaskHead.from_pretrained(directory)
    mode = info["lm_mode"]
    owned = not isinstance(model, ProtRNA)
    # The precision the features were trained with, unless asked otherwise.
    dtype = dtype or (info.get("lm_dtype", "float32") if owned else None)
    if mode == "top-k":
        if model is not None:
            raise ValueError(f"{directory} carries its own fine-tuned language model (lm/); do not pass one")
        lm = prepare_model(str(directory / "lm"), dtype, device)
    elif mode in ("frozen", "lora"):
        source = model if model is not None else info["lm_source"]
        if mode == "frozen":
            lm = prepare_model(source, dtype, device)
            fingerprint = lm_fingerprint(lm)
        else:
            # Merged in float32, then cast: the adapter's delta is added at full precision.
            base = prepare_model(source, "float32", "cpu") if owned else source
            fingerprint = lm_fingerprint(base)
            if fingerprint == info["lm_fingerprint"]:
                from peft import PeftModel

                # A caller's model is copied: merging changes the weights it is applied to.
                base_lm = base.lm if owned else copy.deepcopy(base.lm)
                with warnings.catch_warnings():  # peft calls a transformers method deprecated in 5.x
                    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                    merged = PeftModel.from_pretrained(base_lm, str(directory / "lora")).merge_and_unload()
                lm = prepare_model(ProtRNA(lm=merged), dtype or "float32",
                                   device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if fingerprint != info["lm_fingerprint"]:
            raise ValueError(
                f"{directory} was trained on the language model {info['lm_source']!r} (weights "
                f"sha256 {info['lm_fingerprint'][:16]}...), but {getattr(source, 'source', source)!r} "
                f"has {fingerprint[:16]}...: pass the language model it was trained on"
            )
    else:
        raise ValueError(f"{info_path}: unknown lm_mode {mode!r}")
    if lm.embed_dim != head.config.input_dim:
        raise ValueError(f"the head takes {head.config.input_dim}-wide features, the language model gives {lm.embed_dim}")
    head.to(lm.device)
    if owned or mode != "frozen":  # a model built here is ours to pack for good
        pack_if_owned(lm, owned=True, max_tokens=token_budget(max_tokens, lm.device))
    return FinetunedModel(lm, head, info, max_tokens=max_tokens,
                          window_overlap=info.get("window_overlap", DEFAULT_OVERLAP))


# ---- scoring and writing ----------------------------------------------------------------------


def label_indices(config: TaskHeadConfig, records: Sequence[LabelledRecord]) -> list:
    """Class indices of the records' labels (classification tasks); an unknown class is an error
    naming the record."""
    index = {label: k for k, label in enumerate(config.labels)}

    def lookup(label: str, record: LabelledRecord) -> int:
        if label not in index:
            raise ValueError(
                f"{record.source}: label {label!r} is not one of the {len(index)} classes the model "
                f"was trained on ({', '.join(config.labels[:8])}{', ...' if len(index) > 8 else ''})"
            )
        return index[label]

    if config.task == "classification":
        return [lookup(r.label, r) for r in records]
    return [[lookup(label, r) for label in r.label] for r in records]


def score_task(config: TaskHeadConfig, records: Sequence[LabelledRecord], predictions: Sequence[Prediction]) -> dict:
    """Task metrics (:mod:`protrna.task_metrics`) of ``predictions`` against the records' labels."""
    if len(records) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(records)} records")
    if config.task == "regression":
        return regression_metrics([r.label for r in records], [p.prediction for p in predictions])
    truth = label_indices(config, records)
    index = {label: k for k, label in enumerate(config.labels)}
    if config.task == "classification":
        return classification_metrics(truth, [index[p.prediction] for p in predictions], config.labels)
    flat_truth = [k for row in truth for k in row]
    flat_predicted = [index[label] for p in predictions for label in p.prediction]
    return classification_metrics(flat_truth, flat_predicted, config.labels)


def write_predictions(path: str | Path, config: TaskHeadConfig, predictions: Sequence[Prediction],
                      records: Sequence[LabelledRecord] | None = None) -> None:
    """TSV, one row per RNA: ``index id length [label] prediction [p_<class> ...]``.

    Per-nucleotide labels and predictions are written as one string when every class name is a
    single character, else space-separated. ``index`` is the record's position in its file.
    """
    joiner = "" if all(len(label) == 1 for label in config.labels) else " "

    def text(value) -> str:
        if isinstance(value, tuple):
            return joiner.join(value)
        return repr(value) if isinstance(value, float) else str(value)

    with_labels = records is not None and all(r.label is not None for r in records)
    header = ["index", "id", "length"] + (["label"] if with_labels else []) + ["prediction"]
    if config.task == "classification":
        header += [f"p_{label}" for label in config.labels]
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        for k, prediction in enumerate(predictions):
            index = records[k].index if records is not None else prediction.index
            row = [index, prediction.id, prediction.length]
            if with_labels:
                row.append(text(records[k].label))
            row.append(text(prediction.prediction))
            if config.task == "classification":
                row += [f"{p:.6g}" for p in prediction.probabilities]
            writer.writerow(row)
