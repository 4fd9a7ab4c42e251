"""Input and output paths checked before any model loads, with one line that names the path and
what to do, the same in every job.

The policy for a missing output folder is the same everywhere: it is created (with its parents)
when the job starts writing, and the log says ``created folder X``. Nothing is created while the
checks run, so a refused run leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)


class PathError(ValueError):
    """A path that cannot serve as the input or output it was given for."""


def check_input_file(path: str | Path, what: str = "input", give: str = "a FASTA file") -> Path:
    """``path`` as a readable file, or :class:`PathError` saying what is wrong with it."""
    path = Path(path)
    if path.is_dir():
        raise PathError(f"{what} {path} is a folder; give {give}")
    if not path.exists():
        raise PathError(f"{what} {path} does not exist; give {give}")
    if not os.access(path, os.R_OK):
        raise PathError(f"{what} {path} is not readable; check its permissions")
    return path


def check_output_file(path: str | Path, what: str = "--output", example: str = "out") -> Path:
    """``path`` can become a file: not a folder, and inside a folder that exists or can be made."""
    path = Path(path)
    if path.is_dir():
        raise PathError(f"{what} {path} is a folder; give a file name, e.g. {path / example}")
    _check_can_create(path.parent, what, path)
    if path.exists() and not os.access(path, os.W_OK):
        raise PathError(f"{what} {path} is not writable; check its permissions or choose another output")
    return path


def check_output_folder(path: str | Path, what: str = "--output-dir") -> Path:
    """``path`` can be a folder for a job's files: not a file, and there or possible to make."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PathError(f"{what} {path} is a file; give a folder (it is created if missing)")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise PathError(f"{what} {path} is not writable; check its permissions or choose another folder")
        return path
    _check_can_create(path.parent, what, path)
    return path


def _check_can_create(folder: Path, what: str, path: Path) -> None:
    """The nearest existing ancestor of ``folder`` is a writable folder (so it can be made)."""
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise PathError(f"{what} {path}: {ancestor} is a file, not a folder; choose another output")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PathError(f"{what} {path}: {ancestor} is not writable; check its permissions or choose another output")


def make_folder(folder: str | Path) -> Path:
    """Create ``folder`` (and its parents) if missing, saying so in the log."""
    folder = Path(folder)
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        log.info("created folder %s", folder)
    return folder


def make_parent(path: str | Path) -> Path:
    """Create the folder ``path`` goes in if missing (see :func:`make_folder`); returns ``path``."""
    make_folder(Path(path).parent)
    return Path(path)


def safe_file_names(ids: list[str]) -> list[str]:
    """File-system-safe, unique names for record ids, for the per-record files a job writes.

    Characters outside ``[A-Za-z0-9._-]`` become ``_``; leading dots become one ``_`` (a name
    starting with ``.`` would be a hidden file); names are cut at 200 characters; clashes, also
    on case-insensitive file systems, get ``-2``, ``-3``... in input order.

    >>> safe_file_names(["a/b", "a_b", "ok.1", "..", "", ".hidden", "A_B"])
    ['a_b', 'a_b-2', 'ok.1', '_', 'record', '_hidden', 'A_B-3']
    """
    names, used = [], set()
    for record_id in ids:
        base = re.sub(r"^\.+", "_", re.sub(r"[^A-Za-z0-9._-]", "_", record_id)[:200]) or "record"
        name, k = base, 1
        while name.lower() in used:  # case-insensitive file systems
            k += 1
            name = f"{base}-{k}"
        used.add(name.lower())
        names.append(name)
    return names
