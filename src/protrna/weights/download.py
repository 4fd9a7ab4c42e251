"""Downloading weight files: resumable, checked against an md5, moved into place atomically.

Only the standard library speaks HTTP here (``urllib``); tqdm draws the progress bar on stderr.

* Bytes arrive in ``<dest>.part``. A later call asks the server for the rest (``Range``); a server
  that ignores ``Range`` sends the whole file, and the part is then restarted from zero.
* The md5 is computed while the bytes are written (after hashing what the part already held), so
  a 2.6 GB file is not read twice.
* ``<dest>`` appears, by ``os.replace``, only once the md5 matches. On a mismatch the part is
  deleted and the error names the file and both checksums.
* Timeouts, dropped connections and HTTP 5xx / 429 are retried with exponential backoff (the count
  starts again whenever an attempt made progress); 404 / 403 and an unreachable host fail at once.

``zenodo_record_files`` reads the md5 and size of each file from the Zenodo record API, and keeps
the JSON beside the downloads so a later run needs no network.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import http.client
import json
import logging
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO

from tqdm import tqdm

from .. import __version__
from .registry import offline, record_api_url, record_json_path

logger = logging.getLogger(__name__)

USER_AGENT = f"protrna/{__version__} (Python urllib)"
CHUNK_SIZE = 1 << 20

# Answers worth asking again: request timeout, too early, rate limited, and any 5xx.
_RETRY_STATUS = {408, 425, 429}
# Socket errors meaning "no route to the server at all": retrying in a few seconds will not help.
_UNREACHABLE_ERRNOS = {errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN}


class DownloadError(OSError):
    """A download failed: the server refused, the host is unreachable, or retries ran out."""


class ChecksumError(DownloadError):
    """A file's md5 differs from the published one."""


class OfflineError(DownloadError):
    """A file is needed from the network, but ``PROTRNA_OFFLINE`` forbids it."""


class _Transient(Exception):
    """An error worth retrying (timeout, dropped connection, 5xx)."""


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """A file listed in a Zenodo record. ``md5`` is lower-case hex, ``None`` if not published."""

    key: str
    size: int | None
    md5: str | None


def md5sum(path: str | Path, chunk_size: int = CHUNK_SIZE) -> str:
    """md5 of a file as lower-case hex, read in chunks.

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile() as handle:
    ...     _ = handle.write(b"acgu"); handle.flush()
    ...     md5sum(handle.name)
    'e4a30fc06f0dca4e3c786eb3dab4926b'
    """
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


class _PartFile:
    """``<dest>.part`` and the md5 of the bytes in it, kept up to date as bytes are appended."""

    def __init__(self, path: Path):
        self.path = path
        self.size = 0
        self._digest = hashlib.md5()
        if path.exists():
            with open(path, "rb") as handle:
                while chunk := handle.read(CHUNK_SIZE):
                    self._digest.update(chunk)
                    self.size += len(chunk)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()

    def restart(self) -> None:
        self.path.write_bytes(b"")
        self.size = 0
        self._digest = hashlib.md5()

    def append_from(self, response: BinaryIO, bar: tqdm, chunk_size: int) -> None:
        with open(self.path, "ab") as out:
            try:
                while chunk := response.read(chunk_size):
                    out.write(chunk)
                    self._digest.update(chunk)
                    self.size += len(chunk)
                    bar.update(len(chunk))
            finally:
                # What was written stays valid for the next attempt, so make it durable.
                out.flush()
                os.fsync(out.fileno())


def download(
    url: str,
    dest: str | Path,
    *,
    md5: str | None = None,
    size: int | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    retries: int = 4,
    backoff: float = 2.0,
    chunk_size: int = CHUNK_SIZE,
) -> Path:
    """Download ``url`` to ``dest``, resuming ``<dest>.part`` if an earlier attempt left one.

    Args:
        md5: expected checksum (hex, or Zenodo's ``"md5:<hex>"``). ``dest`` only appears when it
            matches; on a mismatch the partial file is deleted and :class:`ChecksumError` raised.
            An existing ``dest`` is returned as is when it matches (or no md5 is given), and
            downloaded again when it does not.
        size: expected size in bytes, if known (progress total, and no request at all when the
            part is already complete).
        progress: draw a tqdm bar on stderr.
        timeout: seconds a connection may stay silent before the attempt counts as failed.
        retries: how many failed attempts in a row are retried, waiting ``backoff * 2**k`` s.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    >>> download("https://zenodo.org/records/13888473/files/ssHead_RF_bprna.h5",
    ...          "ssHead_RF_bprna.h5", md5="...")  # doctest: +SKIP
    """
    dest = Path(dest)
    expected = normalize_md5(md5)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        if expected is None or md5sum(dest) == expected:
            return dest
        logger.warning("%s does not have the md5 %s; downloading it again", dest, expected)
        dest.unlink()

    part = _PartFile(dest.with_name(dest.name + ".part"))
    if size is not None and part.size > size:
        part.restart()  # longer than the file: not a prefix of it
    failures = 0
    with tqdm(
        total=size, initial=part.size, unit="B", unit_scale=True, unit_divisor=1024,
        desc=dest.name, file=sys.stderr, disable=not progress, dynamic_ncols=True,
    ) as bar:  # fmt: skip
        while size is None or part.size < size:
            before = part.size
            try:
                _attempt(url, part, size, bar, timeout, chunk_size)
                break
            except _Transient as error:
                failures = 1 if part.size > before else failures + 1
                if failures > retries:
                    raise DownloadError(
                        f"downloading {url} failed after {failures} attempt(s) in a row: {error}. "
                        f"The {part.size} bytes received are kept in {part.path}; run again to "
                        "resume."
                    ) from error
                delay = backoff * 2 ** (failures - 1)
                logger.warning(
                    "%s: %s; retrying in %.1f s (%d/%d)", dest.name, error, delay, failures, retries
                )
                time.sleep(delay)

    actual = part.hexdigest()
    if expected is not None and actual != expected:
        part.path.unlink(missing_ok=True)
        raise ChecksumError(
            f"{dest.name}: md5 mismatch after downloading {url}: expected {expected}, got "
            f"{actual} ({part.size} bytes). The download was deleted; run again to fetch it afresh."
        )
    if size is not None and part.size != size:
        part.path.unlink(missing_ok=True)
        raise DownloadError(
            f"{dest.name}: got {part.size} bytes from {url}, expected {size}. The download was "
            "deleted; run again to fetch it afresh."
        )
    os.replace(part.path, dest)
    return dest


def _attempt(
    url: str, part: _PartFile, size: int | None, bar: tqdm, timeout: float, chunk_size: int
) -> None:
    """One request: append the rest of the file to ``part``; raise :class:`_Transient` if the
    connection ends early."""
    start = part.size
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        response = _open(urllib.request.Request(url, headers=headers), timeout)
    except urllib.error.HTTPError as error:
        if not start:
            raise DownloadError(f"{url}: HTTP 416 for a request without Range") from error
        # Range Not Satisfiable: the part is at least as long as the file.
        with error:
            total = _content_range(error.headers.get("Content-Range"))[2]
        total = total if total is not None else size
        if total is None or total == start:
            return  # complete; the checksum will tell
        logger.warning("%s is longer than the file on the server; starting again", part.path)
        part.restart()
        return _attempt(url, part, size, bar, timeout, chunk_size)

    with response:
        if response.status == 206:
            first, _, total = _content_range(response.headers.get("Content-Range"))
            if first != start:
                part.restart()
                raise _Transient(f"asked for bytes from {start}, the server sent from {first}")
        else:
            if start:
                logger.info("%s: the server ignored the Range request; starting again", url)
                part.restart()
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        total = total if total is not None else size
        bar.reset(total=total)
        bar.update(part.size)
        try:
            part.append_from(response, bar, chunk_size)
        except (TimeoutError, ConnectionError, http.client.HTTPException) as error:
            raise _Transient(f"connection lost after {part.size} bytes ({error!r})") from error
    if total is not None and part.size < total:
        raise _Transient(f"connection closed after {part.size} of {total} bytes")


def _open(request: urllib.request.Request, timeout: float) -> http.client.HTTPResponse:
    """``urlopen`` with failures sorted: :class:`_Transient` to retry, :class:`DownloadError` for
    the ones no retry fixes. A 416 is passed through as ``HTTPError`` for the caller."""
    url = request.full_url
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416:
            raise
        error.close()
        if error.code in _RETRY_STATUS or error.code >= 500:
            raise _Transient(f"HTTP {error.code} {error.reason}") from error
        if error.code in (404, 410):
            raise DownloadError(
                f"{url}: HTTP {error.code} {error.reason}: there is no such file on the server. "
                "Check the name (and PROTRNA_ZENODO_URL if you set it)."
            ) from error
        if error.code in (401, 403):
            raise DownloadError(
                f"{url}: HTTP {error.code} {error.reason}: the server refuses access. The file may "
                "be restricted, or this network may block the host; download it in a browser."
            ) from error
        raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from error
    except urllib.error.URLError as error:
        reason = error.reason
        unreachable = getattr(reason, "errno", None) in _UNREACHABLE_ERRNOS
        if isinstance(reason, socket.gaierror) or unreachable:
            raise DownloadError(
                f"{url}: cannot reach the server ({reason}); is there a network?"
            ) from error
        raise _Transient(f"{reason!r}") from error
    except (TimeoutError, ConnectionError, http.client.HTTPException) as error:
        raise _Transient(f"{error!r}") from error


def _content_range(header: str | None) -> tuple[int | None, int | None, int | None]:
    """``(first, last, total)`` of ``bytes 100-199/1000`` or ``bytes */1000``; ``None`` if absent."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*", header or "")
    if not match:
        return None, None, None
    first, last, total = (int(g) if g and g != "*" else None for g in match.groups())
    return first, last, total


def normalize_md5(checksum: str | None) -> str | None:
    """Lower-case hex from ``"<hex>"`` or Zenodo's ``"md5:<hex>"``; ``None`` stays ``None``.

    >>> normalize_md5("md5:D41D8CD98F00B204E9800998ECF8427E")
    'd41d8cd98f00b204e9800998ecf8427e'
    """
    if checksum is None:
        return None
    algorithm, _, value = checksum.strip().rpartition(":")
    if algorithm.lower() not in ("", "md5") or not re.fullmatch(r"[0-9a-fA-F]{32}", value):
        raise ValueError(f"not an md5 checksum: {checksum!r}")
    return value.lower()


# ---- the Zenodo record ------------------------------------------------------------------


def parse_record(record: dict[str, Any]) -> dict[str, RemoteFile]:
    """The files of a Zenodo record JSON, by name.

    Reads both layouts Zenodo serves: ``"files": [{"key", "size", "checksum": "md5:..."}]`` and
    InvenioRDM's ``"files": {"entries": {...}}``; checksums other than md5 are left out.

    >>> parse_record({"files": [{"key": "w.h5", "size": 3, "checksum": "md5:" + "0" * 32}]})
    {'w.h5': RemoteFile(key='w.h5', size=3, md5='00000000000000000000000000000000')}
    """
    files = record.get("files")
    if isinstance(files, dict):
        files = files.get("entries", files)
    if isinstance(files, dict):
        files = list(files.values())
    if not isinstance(files, list):
        raise ValueError("the record JSON has no list of files")
    result: dict[str, RemoteFile] = {}
    for entry in files:
        key = entry.get("key") or entry.get("filename")
        if not key:
            continue
        size = entry.get("size", entry.get("filesize"))
        checksum = entry.get("checksum")
        try:
            md5 = normalize_md5(checksum) if isinstance(checksum, str) else None
        except ValueError:
            md5 = None  # another algorithm
        result[key] = RemoteFile(key=key, size=int(size) if size is not None else None, md5=md5)
    return result


def zenodo_record_files(
    record: str,
    *,
    refresh: bool = False,
    timeout: float = 15.0,
    retries: int = 2,
    backoff: float = 2.0,
) -> dict[str, RemoteFile]:
    """Files of Zenodo record ``record`` with their md5 and size, by name.

    The record is a few KB, so it gets a short timeout and few retries: on a network that drops
    packets silently (a firewalled compute node) loading fails, or falls back to a file put into
    the cache by hand, within about a minute instead of the several minutes a download may wait.

    Read from ``<root>/downloads/zenodo-<record>.json`` when present (unless ``refresh``);
    otherwise fetched from the record API and saved there. Raises :class:`OfflineError` when the
    JSON is not cached and ``PROTRNA_OFFLINE`` is set.

    >>> zenodo_record_files("13888473")["ssHead_RF_bprna.h5"].md5  # doctest: +SKIP
    """
    cache = record_json_path(record)
    if cache.exists() and not refresh:
        try:
            return parse_record(json.loads(cache.read_text()))
        except (ValueError, AttributeError, TypeError) as error:
            if offline():
                raise DownloadError(f"{cache} is unreadable ({error}); delete it") from error
            logger.warning("ignoring the unreadable %s (%s)", cache, error)
    url = record_api_url(record)
    if offline():
        raise OfflineError(
            f"the Zenodo record {record} is not cached ({cache}) and PROTRNA_OFFLINE is set; "
            f"it is at {url}"
        )
    request = urllib.request.Request(
        url, headers={"User-Agent": USER_AGENT, "Accept": "application/json"}
    )
    for failures in range(retries + 1):
        try:
            with _open(request, timeout) as response:
                raw = response.read()
            break
        except (_Transient, TimeoutError, ConnectionError, http.client.HTTPException) as error:
            if failures == retries:
                raise DownloadError(f"{url}: {error} (after {retries + 1} attempts)") from error
            time.sleep(backoff * 2**failures)
    try:
        files = parse_record(json.loads(raw))
    except (ValueError, AttributeError, TypeError) as error:
        raise DownloadError(f"{url} did not answer with a Zenodo record ({error})") from error
    cache.parent.mkdir(parents=True, exist_ok=True)
    temporary = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    temporary.write_bytes(raw)
    os.replace(temporary, cache)
    return files
