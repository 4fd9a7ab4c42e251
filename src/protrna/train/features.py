"""Language-model representations computed once and kept on disk, for training heads on a frozen LM.

``train-ss`` and ``finetune`` (with the LM frozen) train only a head, so the language model's
output for a given RNA never changes during a run: it is computed once per distinct sequence,
stored in an HDF5 file and read back every epoch.

The file is found again by its name, ``<cache_dir>/<lm>-<input>.h5``, where

* ``<lm>`` is the start of a SHA-256 over the language model's weights (names, shapes, dtypes and
  bytes; :func:`lm_fingerprint`), so a retrained or different model never reads stale features;
* ``<input>`` is the start of a SHA-256 over the distinct token sequences, in order, and every
  setting that changes the numbers: layer, what is stored, storage dtype, compute dtype, windows.

So the same command run again, resumed, or pointed at another ``--output`` reuses the file; a
change of model, data or settings makes a new one. RNAs are keyed by their tokens, so repeated
sequences (and ``T``/``U`` or case variants) are computed once.

Layout (U distinct sequences, per-token rows of all of them concatenated)::

    /lengths  (U,)       /offsets (U+1,)    /done (U,) 1 once a sequence's rows are written
    /per_tok  (sum of lengths, D)   with "per_tok": last-layer vector of each nucleotide
    /mean     (U, D)                with "mean": mean over nucleotides (BOS/EOS excluded)
    /bos      (U, D)                with "bos": the BOS (<cls>) vector
    attributes: key, lm_fingerprint, lm_source, settings (JSON), protrna_version

As in ``protrna embed``: every dataset is allocated in full before the first write and never
resized, records are flagged done only after their rows are flushed, and the file is written as
``.partial`` and renamed when complete. An interrupted build resumes where it stopped.

Storage dtypes: ``float32`` (exact), ``float16`` (half the disk; values after ESM's final LayerNorm
are well inside its range) or ``bfloat16`` (half the disk, float32's range, 3 significant digits;
HDF5 has no bfloat16, so its bits are stored as ``uint16``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Sequence

import filelock
import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..alphabet import Alphabet, encode_rna
from ..digest import tensors_digest
from ..alphabet import MAX_RESIDUES
from ..cpu import pack_for_cpu_inference
from ..runtime import DEFAULT_OVERLAP, WindowedEncoder, token_budget
from ..runtime.resume import OtherRunError, check_same_run, commit, partial_path, plain
from ..runtime.store import allocate_dataset
from ..model import ProtRNA
from .checkpoint import latest_checkpoint

logger = logging.getLogger(__name__)

KINDS = ("per_tok", "mean", "bos")
STORAGE_DTYPES = ("float32", "float16", "bfloat16")
_NUMPY_STORAGE = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
#: Distinct sequences embedded between two flushes of the done flags.
_CHUNK = 512
#: Seconds between looks for the file, for processes waiting on the one that builds it.
_POLL_SECONDS = 2.0


def lm_fingerprint(lm: ProtRNA) -> str:
    """SHA-256 (hex) over the names, shapes, dtypes and bytes of the language model's weights.

    Computed on the plain model (before :func:`protrna.cpu.pack_for_cpu_inference`).

    >>> from protrna import ProtRNA, ProtRNAConfig
    >>> lm = ProtRNA(ProtRNAConfig(num_layers=1, embed_dim=64, attention_heads=1))
    >>> lm_fingerprint(lm) == lm_fingerprint(lm), len(lm_fingerprint(lm))
    (True, 64)
    """
    if getattr(lm, "packed_for_cpu", False):
        raise ValueError("fingerprint the language model before packing it for CPU inference")
    return tensors_digest(lm.lm.state_dict().items())


def check_resume_fingerprint(output_dir: str | Path, resume: bool, fingerprint: str) -> None:
    """Refuse to resume a run whose newest checkpoint was trained on features of another
    language model. (The training loop checks the frozen weights *inside* the trained module;
    a language model used only through cached features is outside it.)"""
    checkpoint = latest_checkpoint(output_dir) if resume else None
    if checkpoint is None:
        return
    facts = torch.load(checkpoint / "trainer.pt", map_location="cpu", weights_only=True)["facts"]
    saved = facts.get("run_info", {}).get("lm_fingerprint")
    if saved != fingerprint:
        raise ValueError(
            f"{checkpoint} was trained on the language model with weights sha256 {str(saved)[:16]}..., "
            f"this run's has {fingerprint[:16]}...: resume with the same --model"
        )


@dataclasses.dataclass(frozen=True)
class FeatureSettings:
    """Everything besides model and input that changes the cached numbers.

    Args:
        kinds: what to store, any of ``per_tok``, ``mean``, ``bos``.
        storage_dtype: ``float32``, ``float16`` or ``bfloat16`` on disk; reads give float32.
        window_overlap: overlap of the 510-nt windows covering longer RNAs (as ``protrna embed``).
    """

    kinds: tuple[str, ...] = ("per_tok",)
    storage_dtype: str = "float32"
    window_overlap: int = DEFAULT_OVERLAP

    def __post_init__(self) -> None:
        kinds = tuple(k for k in KINDS if k in self.kinds)  # canonical order
        unknown = set(self.kinds) - set(KINDS)
        if unknown or not kinds:
            raise ValueError(f"feature kinds must be among {KINDS}, got {self.kinds}")
        object.__setattr__(self, "kinds", kinds)
        if self.storage_dtype not in STORAGE_DTYPES:
            raise ValueError(f"storage dtype must be one of {STORAGE_DTYPES}, got {self.storage_dtype!r}")


class FeatureCache:
    """Read access to a complete cache file, by *record* (records map to distinct sequences).

    ``per_token(i)`` is (L, D) and ``pooled(kind)`` (records, D), both float32 tensors.
    ``built`` says whether this run computed the file (False: it was found complete).
    """

    def __init__(self, path: Path, rows: np.ndarray, built: bool):
        self.path = Path(path)
        self.rows = rows
        self.built = built
        self.h5 = h5py.File(self.path, "r")
        self.storage_dtype = self.h5.attrs["storage_dtype"]
        self.kinds = tuple(json.loads(self.h5.attrs["settings"])["kinds"])
        self.offsets = self.h5["offsets"][:]
        self.dim = int(self.h5.attrs["dim"])
        self._pooled: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def _tensor(self, values: np.ndarray) -> torch.Tensor:
        if self.storage_dtype == "bfloat16":
            return torch.from_numpy(values.view(np.int16)).view(torch.bfloat16).float()
        return torch.from_numpy(np.ascontiguousarray(values)).float()

    def per_token(self, record: int) -> torch.Tensor:
        """(L, D) last-layer vectors of record ``record``'s nucleotides."""
        if "per_tok" not in self.kinds:
            raise ValueError(f"{self.path} holds no per-token features")
        row = self.rows[record]
        return self._tensor(self.h5["per_tok"][self.offsets[row] : self.offsets[row + 1]])

    def pooled(self, kind: str) -> torch.Tensor:
        """(records, D): the ``mean`` or ``bos`` vector of every record, held in memory."""
        if kind not in self.kinds or kind == "per_tok":
            raise ValueError(f"{self.path} holds no {kind!r} features (it has {self.kinds})")
        if kind not in self._pooled:
            self._pooled[kind] = self._tensor(self.h5[kind][:])[torch.from_numpy(self.rows)]
        return self._pooled[kind]

    def close(self) -> None:
        self.h5.close()


def distinct_sequences(sequences: Sequence[str]) -> tuple[list[list[int]], np.ndarray]:
    """Token ids of the distinct sequences (first-seen order) and each input's row among them.

    >>> ids, rows = distinct_sequences(["ACGT", "acgu", "GG"])
    >>> len(ids), rows.tolist()
    (2, [0, 0, 1])
    """
    first: dict[tuple[int, ...], int] = {}
    rows = np.empty(len(sequences), dtype=np.int64)
    for i, sequence in enumerate(sequences):
        rows[i] = first.setdefault(tuple(encode_rna(sequence)), len(first))
    return [list(key) for key in first], rows


def cache_path(
    cache_dir: str | Path, fingerprint: str, settings: FeatureSettings, layer: int, lm_dtype: str,
    distinct: Sequence[Sequence[int]],
) -> tuple[Path, str]:
    """Where the features of ``distinct`` token sequences live, and the full key."""
    digest = hashlib.sha256()
    described = {
        **dataclasses.asdict(settings), "layer": layer, "lm_dtype": lm_dtype, "window": MAX_RESIDUES,
        "format": 1,
    }
    digest.update(json.dumps(described, sort_keys=True).encode())
    for ids in distinct:
        digest.update(np.asarray(ids, dtype=np.uint8).tobytes() + b"\xff")
    key = f"{fingerprint[:16]}-{digest.hexdigest()[:16]}"
    return Path(cache_dir) / f"{key}.h5", key


def cached_features(
    lm: ProtRNA,
    sequences: Sequence[str],
    cache_dir: str | Path,
    settings: FeatureSettings = FeatureSettings(),
    *,
    fingerprint: str | None = None,
    lm_source: str = "in-memory model",
    max_tokens: int | None = None,
    is_main_process: bool = True,
    progress: bool = True,
    description: str = "features",
) -> FeatureCache:
    """The cache of ``lm``'s last-layer features for ``sequences``, built if missing.

    ``sequences`` must already be valid RNA (callers check records and name the bad ones). With
    several processes only the main one builds; the others wait for the complete file. The
    model is left as it was given (CPU packing is undone).
    """
    layer = lm.num_layers
    lm_dtype = str(lm.dtype).removeprefix("torch.")
    fingerprint = fingerprint or lm_fingerprint(lm)
    distinct, rows = distinct_sequences(sequences)
    path, key = cache_path(cache_dir, fingerprint, settings, layer, lm_dtype, distinct)
    if path.exists():
        logger.info("%s: reusing cached language-model features %s", description, path)
        return FeatureCache(path, rows, built=False)
    if not is_main_process:
        while not path.exists():
            time.sleep(_POLL_SECONDS)
        return FeatureCache(path, rows, built=False)

    path.parent.mkdir(parents=True, exist_ok=True)
    # Two runs sharing a cache directory: one builds, the other waits and then reads.
    with filelock.FileLock(str(path.with_name(path.name + ".lock"))):
        if path.exists():
            return FeatureCache(path, rows, built=False)
        return _build(lm, path, key, fingerprint, lm_source, settings, distinct, rows, max_tokens, progress,
                      description)


def _build(lm: ProtRNA, path: Path, key: str, fingerprint: str, lm_source: str, settings: FeatureSettings,
           distinct: list[list[int]], rows: np.ndarray, max_tokens: int | None, progress: bool,
           description: str) -> FeatureCache:
    layer = lm.num_layers
    partial = partial_path(path)
    lengths = np.array([len(ids) for ids in distinct], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    h5 = _open_partial(partial, key, fingerprint, lm_source, settings, lengths, offsets, lm.embed_dim, layer)
    max_tokens = token_budget(max_tokens, lm.device)
    unpack = pack_for_cpu_inference(lm, rows_hint=max_tokens)
    alphabet = Alphabet()
    try:
        done = h5["done"][:].astype(bool)
        if done.any():
            logger.info("%s: resuming %s, %d of %d sequences done", description, partial, done.sum(), len(done))
        else:
            logger.info(
                "%s: computing language-model features of %d distinct sequences (%d nt) into %s",
                description, len(distinct), offsets[-1], path,
            )
        encoder = WindowedEncoder(lm, [layer], max_tokens=max_tokens, overlap=settings.window_overlap)
        with tqdm(total=len(done), initial=int(done.sum()), unit="seq", desc=description,
                  disable=not progress, dynamic_ncols=True) as bar:
            # Chunks by position, done rows skipped inside them: a resumed build plans the batches
            # of an uninterrupted one, so its features are the same bit for bit.
            for start in range(0, len(done), _CHUNK):
                chunk = np.arange(start, min(start + _CHUNK, len(done)))
                finished = [i for i, row in enumerate(chunk) if done[row]]
                if len(finished) == len(chunk):
                    continue
                records = [(str(row), "".join(alphabet.get_tok(t) for t in distinct[row])) for row in chunk]
                for encoded in encoder.encode(records, skip=finished):
                    _write(h5, settings, int(encoded.id), offsets, encoded.per_token[layer], encoded.bos[layer])
                h5.flush()  # rows first, then their flags
                h5["done"][chunk] = 1
                h5.flush()
                bar.update(len(chunk) - len(finished))
        h5.attrs["complete"] = True
    finally:
        h5.close()
        if unpack is not None:
            unpack()
    commit(partial, path)
    return FeatureCache(path, rows, built=True)


#: The cache key digests the model's weights, the settings and the sequences (see the module doc).
_KEY_WORDS = {"key": "the language model's weights, the feature settings or the sequences"}


def _open_partial(
    partial: Path, key: str, fingerprint: str, lm_source: str, settings: FeatureSettings,
    lengths: np.ndarray, offsets: np.ndarray, dim: int, layer: int,
) -> h5py.File:
    if partial.exists():
        try:
            h5 = h5py.File(partial, "r+")
        except OSError as error:  # torn by a kill before its first flush
            logger.warning("discarding unreadable %s (%s)", partial, error)
            partial.unlink()
        else:
            recorded = {"key": plain(h5.attrs.get("key"))}
            if not np.array_equal(h5["lengths"][:], lengths):
                recorded["key"] = None
            try:
                check_same_run(partial, recorded, {"key": key}, finished=False, words=_KEY_WORDS)
            except OtherRunError:
                h5.close()
                raise
            return h5
    h5 = h5py.File(partial, "w")
    h5.create_dataset("lengths", data=lengths)
    h5.create_dataset("offsets", data=offsets)
    storage = _NUMPY_STORAGE[settings.storage_dtype]
    rows = {"per_tok": int(offsets[-1]), "mean": len(lengths), "bos": len(lengths)}
    for kind in settings.kinds:
        allocate_dataset(h5, kind, (rows[kind], dim), dtype=storage)
    done = h5.create_dataset("done", shape=(len(lengths),), dtype=np.uint8)
    done[:] = 0
    h5.attrs.update({
        "key": key, "lm_fingerprint": fingerprint, "lm_source": lm_source, "dim": dim, "layer": layer,
        "storage_dtype": settings.storage_dtype, "settings": json.dumps(dataclasses.asdict(settings)),
        "protrna_version": __version__, "complete": False,
    })
    h5.flush()
    return h5


def _stored(values: torch.Tensor, storage_dtype: str) -> np.ndarray:
    values = values.cpu()
    if storage_dtype == "bfloat16":
        return values.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return values.numpy().astype(_NUMPY_STORAGE[storage_dtype], copy=False)


def _write(h5: h5py.File, settings: FeatureSettings, row: int, offsets: np.ndarray,
           per_token: torch.Tensor, bos: torch.Tensor) -> None:
    dtype = settings.storage_dtype
    if "per_tok" in settings.kinds:
        h5["per_tok"][offsets[row] : offsets[row + 1]] = _stored(per_token, dtype)
    if "mean" in settings.kinds:
        h5["mean"][row] = _stored(per_token.mean(0), dtype)
    if "bos" in settings.kinds:
        h5["bos"][row] = _stored(bos, dtype)
