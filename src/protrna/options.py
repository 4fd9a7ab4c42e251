"""The command line's shared vocabulary: the flags several commands take, defined once.

Every command that takes ``--model``, ``--head``, ``--device``, ``--dtype``, ``--max-tokens``,
``--quiet``, ``--invalid`` (with its older spelling ``--skip-invalid``) or ``--unique-ids`` adds
it from here with :func:`add_options`, so the flag is spelled, documented and checked the same
way everywhere. A job module imports this module, never another job's parser.

Defaults that depend on the command (the model a fine-tuned head records, the head's own
threshold) stay ``None`` on the command line and are resolved by the job, so that ``None``
always means "not given" (``evaluate`` refuses model flags next to ``--predictions``).

>>> import argparse
>>> parser = argparse.ArgumentParser()
>>> add_options(parser, "model", "dtype", "invalid")
>>> args = parser.parse_args(["--dtype", "bfloat16", "--skip-invalid"])
>>> args.model, args.dtype, args.invalid
(None, 'bfloat16', 'skip')
"""

from __future__ import annotations

import argparse
from typing import Callable

from .runtime.defaults import CPU_MAX_TOKENS, DEFAULT_HEAD, DEFAULT_MODEL, GPU_MAX_TOKENS

#: Precisions a model can compute in (float16 only on GPUs); the first is the default.
DTYPE_CHOICES = ("float32", "bfloat16", "float16")
DEFAULT_DTYPE = DTYPE_CHOICES[0]
#: What inference and fine-tuning commands do with a record they cannot read.
INVALID_CHOICES = ("error", "skip")
#: ``pretrain`` reads raw FASTA streams: it can also read odd letters as the unknown base ``x``.
STREAM_INVALID_CHOICES = ("skip", "error", "unknown")


def at_least(minimum: float, kind: type = int) -> Callable[[str], float]:
    """An argparse ``type``: a number of ``kind`` not below ``minimum``. argparse's error then
    names the flag: ``argument --batch-size: must be at least 1, got 0``."""

    def parse(text: str):
        value = kind(text)  # a ValueError here is argparse's "invalid int value"
        if not value >= minimum:  # NaN fails too
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def positive(text: str) -> float:
    """An argparse ``type``: a float above 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


#: The one check of every token budget (inference batches and training micro-batches alike):
#: a batch holds at least one RNA however small the budget, so any positive count works.
token_count = at_least(1)


def invalid_help(choices: tuple[str, ...], default: str) -> str:
    """The help of ``--invalid``: one wording for every command, listing what it offers."""
    meaning = {
        "error": "stop with the file, record and problem named",
        "skip": "leave the record out with a log line",
        "unknown": "read letters that are no nucleotide code as the unknown base x",
    }
    listed = "; ".join(f"{choice}: {meaning[choice]}" for choice in choices)
    return f"bad records (empty, a repeated id, letters that are no nucleotide code): {listed} (default: {default})"


SKIP_INVALID_HELP = "the same as --invalid skip (its older spelling, kept working)"

#: flag(s) and ``add_argument`` keywords of each shared option, by name.
SHARED: dict[str, tuple[tuple[str, ...], dict]] = {
    "model": (("--model",), dict(
        default=None, metavar="MODEL",
        help=f"language model: official name, original .h5, or saved directory (default: {DEFAULT_MODEL})")),
    "head": (("--head",), dict(
        default=None, metavar="HEAD",
        help=f"structure head: official name, original .h5, or a train-ss directory (default: {DEFAULT_HEAD})")),
    "device": (("--device",), dict(
        default=None, metavar="DEVICE", help="cpu, cuda, cuda:1, mps ... (default: CUDA when present)")),
    "dtype": (("--dtype",), dict(
        default=None, choices=DTYPE_CHOICES,
        help="compute precision (default: float32, the closest to the original; bfloat16 is ~1.5-1.9x as fast "
        "on CPUs with AVX-512 BF16; float16 is for GPUs); what is written is float32 either way")),
    "max-tokens": (("--max-tokens",), dict(
        type=token_count, default=None, metavar="N",
        help=f"language-model token budget per batch, BOS/EOS and padding included "
        f"(default: {CPU_MAX_TOKENS} on CPU, {GPU_MAX_TOKENS} on GPU)")),
    "quiet": (("--quiet", "-q"), dict(action="store_true", help="no progress bar")),
    "unique-ids": (("--unique-ids",), dict(
        action="store_true",
        help="number repeated ids (x, x-2, x-3 ...) instead of refusing them, e.g. for nRC files whose ids "
        "are class names")),
    # The frozen language model under training commands: the same checks under the lm- prefix.
    "lm-dtype": (("--lm-dtype",), dict(
        default="float32", choices=DTYPE_CHOICES,
        help="precision the frozen language model runs in (default: %(default)s)")),
    "lm-max-tokens": (("--lm-max-tokens",), dict(
        type=token_count, default=None, metavar="N",
        help=f"language-model token budget per batch (default: {CPU_MAX_TOKENS} on CPU, {GPU_MAX_TOKENS} on GPU)")),
}


def add_options(container, *names: str) -> None:
    """Add the shared options ``names`` (keys of :data:`SHARED`, or ``"invalid"``) to a parser or
    an argument group, in that order."""
    for name in names:
        if name == "invalid":
            add_invalid_option(container)
            continue
        flags, keywords = SHARED[name]
        container.add_argument(*flags, **keywords)


def add_invalid_option(container, choices: tuple[str, ...] = INVALID_CHOICES, default: str = "error") -> None:
    """``--invalid CHOICE`` and its alias ``--skip-invalid`` (= ``--invalid skip``), one destination
    ``invalid``. Commands other than ``pretrain`` stop at a bad record unless told otherwise."""
    container.add_argument("--invalid", choices=choices, default=default, help=invalid_help(choices, default))
    container.add_argument("--skip-invalid", dest="invalid", action="store_const", const="skip",
                           help=SKIP_INVALID_HELP)
