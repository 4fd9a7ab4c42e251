"""RNA sequences streamed from FASTA files for training: sharded, shuffled, cropped, resumable.

A corpus such as RNAcentral (millions of sequences, gigabytes of text) is never held in memory:
files are read record by record (:func:`protrna.data.fasta.read_fasta`), and a shuffle buffer of
a few thousand sequences mixes them locally. A buffer only mixes neighbours, so a corpus sorted
by family should be shuffled once on disk (or split into many files: their order is shuffled
every epoch).

The stream's whole position fits in a small ``state_dict()`` (epoch, file, record, the buffer
and the random state) so a training run resumes on exactly the sequence it would have seen next.
Resuming skips whole files and re-reads (without encoding) the records before the position in
the current file.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Iterator, Sequence

from ..alphabet import MAX_RESIDUES, RNA_LETTER_TO_TOKEN, encode_rna
from .fasta import FastaRecord, read_fasta

logger = logging.getLogger(__name__)

#: What to do with a record that holds a letter that is no nucleotide code, or no letter at all.
INVALID_POLICIES = ("skip", "error", "unknown")


class InvalidSequenceError(ValueError):
    """A training record could not be encoded; the message names the file, record and line."""


class FastaStream:
    """Token-id lists of the RNA sequences in ``paths``, for one rank of a distributed run.

    Args:
        paths: FASTA files (plain or ``.gz``), read in turn.
        rank, world_size: this process takes records ``rank, rank + world_size, ...`` of each
            epoch, so ranks see disjoint data without coordinating.
        shuffle_buffer: sequences held for shuffling; 0 keeps file order (and file order is then
            not shuffled either).
        seed: seeds shuffling and cropping; each rank derives its own stream from it.
        loop: start over when the files are exhausted (training) or stop (validation).
        invalid: ``"skip"`` logs and drops a record with a non-nucleotide letter or no letters,
            ``"error"`` raises :class:`InvalidSequenceError`, ``"unknown"`` turns such letters
            into ``x`` like the original batch converter did (empty records are still skipped).
        max_residues: sequences longer than this are cut to a random window of this length
            (a new window each epoch), 510 = the model's 512 tokens less BOS and EOS.

    Items are ``(record_id, token_ids)`` without BOS/EOS. DNA letters become RNA (T -> u).

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "x.fa")
    >>> _ = open(path, "w").write(">r1\\nACGT\\n>r2\\nGG\\n>r3\\nUUU\\n")
    >>> [item for item in FastaStream([path], loop=False)]
    [('r1', [33, 36, 35, 34]), ('r2', [35, 35]), ('r3', [34, 34, 34])]
    >>> [name for name, _ in FastaStream([path], rank=1, world_size=2, loop=False)]
    ['r2']
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 0,
        seed: int = 0,
        loop: bool = True,
        invalid: str = "skip",
        max_residues: int = MAX_RESIDUES,
    ):
        if not paths:
            raise ValueError("no FASTA files given")
        self.paths = [Path(p) for p in paths]
        for path in self.paths:
            if not path.is_file():
                raise FileNotFoundError(f"FASTA file {path} does not exist")
        if invalid not in INVALID_POLICIES:
            raise ValueError(f"invalid must be one of {INVALID_POLICIES}, got {invalid!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.rank, self.world_size = rank, world_size
        self.shuffle_buffer = shuffle_buffer
        self.loop = loop
        self.invalid = invalid
        self.max_residues = max_residues
        # The whole position in the stream; see state_dict().
        self.rng = random.Random(f"{seed}/{rank}")
        self.epoch = 0
        self.file_order = self._new_file_order()
        self.file_cursor = 0  # index into file_order
        self.record_in_file = 0  # records of the current file already consumed
        self.record_in_epoch = 0  # records of the epoch already consumed (all ranks' share)
        # Token ids as bytes (one per nucleotide): a buffer of long RNAs stays small in memory
        # and in checkpoints.
        self.buffer: list[tuple[str, bytes]] = []
        self.skipped = 0
        self._warned: set[tuple[Path, int]] = set()

    # ---- state -----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to continue exactly from here (plain Python values)."""
        return {
            "epoch": self.epoch,
            "file_order": list(self.file_order),
            "file_cursor": self.file_cursor,
            "record_in_file": self.record_in_file,
            "record_in_epoch": self.record_in_epoch,
            "buffer": [(name, ids.decode("latin-1")) for name, ids in self.buffer],
            "rng": _rng_state_to_list(self.rng.getstate()),
            "skipped": self.skipped,
            "paths": [str(p) for p in self.paths],
        }

    def load_state_dict(self, state: dict) -> None:
        if [str(p) for p in self.paths] != state["paths"]:
            raise ValueError(
                f"the saved data position belongs to files {state['paths']}, not "
                f"{[str(p) for p in self.paths]}: resume with the same files in the same order"
            )
        self.epoch = state["epoch"]
        self.file_order = list(state["file_order"])
        self.file_cursor = state["file_cursor"]
        self.record_in_file = state["record_in_file"]
        self.record_in_epoch = state["record_in_epoch"]
        self.buffer = [(name, ids.encode("latin-1")) for name, ids in state["buffer"]]
        self.rng.setstate(_rng_state_from_list(state["rng"]))
        self.skipped = state["skipped"]

    # ---- iteration -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[tuple[str, list[int]]]:
        # The generator keeps every bit of its position in attributes, updated before each
        # yield, so state_dict() taken between two items is exact.
        while True:
            fresh = self.record_in_epoch == 0 and not self.buffer
            produced = False
            for item in self._epoch_items():
                produced = True
                yield self._crop(item)
            if fresh and not produced:  # would loop forever on nothing
                raise ValueError(
                    f"no usable sequence for rank {self.rank} of {self.world_size} in "
                    f"{', '.join(map(str, self.paths))} ({self.skipped} records skipped)"
                )
            self.epoch += 1
            self.file_order = self._new_file_order()
            self.file_cursor = self.record_in_file = self.record_in_epoch = 0
            if not self.loop:
                return

    def _epoch_items(self) -> Iterator[tuple[str, list[int]]]:
        for record in self._records():
            if self.record_in_epoch % self.world_size != self.rank:
                self.record_in_epoch += 1
                continue
            self.record_in_epoch += 1
            item = self._encode(record)
            if item is None:
                continue
            if self.shuffle_buffer <= 1:
                yield item
                continue
            self.buffer.append((item[0], bytes(item[1])))
            if len(self.buffer) >= self.shuffle_buffer:
                yield self._draw()
        while self.buffer:
            yield self._draw()

    def _records(self) -> Iterator[FastaRecord]:
        """Records of the current epoch from the saved position on."""
        while self.file_cursor < len(self.file_order):
            path = self.paths[self.file_order[self.file_cursor]]
            for index, record in enumerate(read_fasta(path)):
                if index < self.record_in_file:
                    continue  # consumed before the checkpoint this stream resumed from
                self.record_in_file = index + 1
                yield record
            self.file_cursor += 1
            self.record_in_file = 0

    def _draw(self) -> tuple[str, list[int]]:
        j = self.rng.randrange(len(self.buffer))
        self.buffer[j], self.buffer[-1] = self.buffer[-1], self.buffer[j]
        name, ids = self.buffer.pop()
        return name, list(ids)

    def _crop(self, item: tuple[str, list[int]]) -> tuple[str, list[int]]:
        name, ids = item
        if len(ids) <= self.max_residues:
            return item
        start = self.rng.randrange(len(ids) - self.max_residues + 1)
        return name, ids[start : start + self.max_residues]

    def _new_file_order(self) -> list[int]:
        order = list(range(len(self.paths)))
        if self.shuffle_buffer > 1:
            self.rng.shuffle(order)
        return order

    def _encode(self, record: FastaRecord) -> tuple[str, list[int]] | None:
        path = self.paths[self.file_order[self.file_cursor]]
        where = f"record {record.id!r} ({path}, line {record.line})"
        sequence = record.sequence
        if self.invalid == "unknown":
            sequence = "".join(c if c in RNA_LETTER_TO_TOKEN else "X" for c in sequence)
        try:
            return record.id, encode_rna(sequence, record.id)
        except ValueError as error:
            reason = str(error).replace(f"sequence {record.id!r} ", "")
            if self.invalid == "error":
                hint = "pass --invalid skip to drop such records"
                if sequence:
                    hint += " or --invalid unknown to read those letters as unknown bases (x)"
                raise InvalidSequenceError(f"{where} {reason}; fix the file, or {hint}") from None
            self.skipped += 1
            if (path, record.line) not in self._warned:  # once, not again every epoch
                self._warned.add((path, record.line))
                logger.warning("skipping %s: %s", where, reason)
            return None


def _rng_state_to_list(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_state_from_list(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
