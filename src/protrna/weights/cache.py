"""Official weights in the cache: downloaded once (md5 checked), converted once, then local.

The layout of the cache is described in :mod:`.registry`; downloading in :mod:`.download`;
conversion, and the check of every converted directory, in :mod:`.convert`.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import filelock

from .convert import KIND_NAMES, convert_h5, h5_kind
from .download import (
    ChecksumError,
    DownloadError,
    OfflineError,
    RemoteFile,
    download,
    md5sum,
    zenodo_record_files,
)
from .keras_h5 import KerasFormatError
from .registry import (
    OfficialWeights,
    cache_root,
    downloads_dir,
    get_official,
    locks_dir,
    offline,
    record_json_path,
)

logger = logging.getLogger(__name__)


def official_model_dir(name: str, *, progress: bool = True) -> Path:
    """The converted directory of official weights ``name``, downloading and converting them
    first if the cache does not hold them yet. A structure head's directory stores the
    registry's threshold (``head.config.threshold``).

    >>> official_model_dir("ssHead_RF_bprna")  # doctest: +SKIP
    PosixPath('/home/me/.cache/protrna/models/ssHead_RF_bprna')
    """
    weights = get_official(name)
    final = weights.converted_dir
    if (final / "config.json").is_file():  # directories appear whole, see convert_h5
        return final
    with _cache_lock(name):
        if (final / "config.json").is_file():  # another process finished while we waited
            return final
        for stale in final.parent.glob(f".{final.name}.tmp-*"):  # left by a killed conversion
            shutil.rmtree(stale, ignore_errors=True)
        h5_path, url = _fetch(weights, progress)
        logger.info("converting %s into %s", h5_path, final)
        fix = f"delete {h5_path} and load again to download it afresh, or put the right file there"
        try:
            found = h5_kind(h5_path)
        except KerasFormatError as error:  # e.g. truncated by a full disk, or a file put there by hand
            raise KerasFormatError(f"{error}\nThis file is the cached {name}: {fix}") from None
        if found != weights.kind:
            raise KerasFormatError(
                f"{h5_path} holds a {KIND_NAMES[found]}, not {name} (a {KIND_NAMES[weights.kind]}): {fix}"
            )
        provenance = {"name": name, "source": str(h5_path), "url": url, "kind": weights.kind}
        try:
            convert_h5(h5_path, final, kind=weights.kind, threshold=weights.threshold, provenance=provenance)
        except KerasFormatError as error:  # a file of another layout under the official name
            raise KerasFormatError(f"{error}\nThis file is the cached {name}: {fix}") from None
    return final


def fetch_official(weights: OfficialWeights | str, *, progress: bool = True) -> Path:
    """The original h5 of official weights in ``<cache>/downloads/``, downloaded if missing.

    The records of ``weights.records`` are asked in order; the file comes from the first that
    lists it, checked against the md5 that record publishes. A file put into the downloads by
    hand is used as is (offline, its md5 is checked only if a record JSON listing it is cached).
    """
    if isinstance(weights, str):
        weights = get_official(weights)
    return _fetch(weights, progress)[0]


def _fetch(weights: OfficialWeights, progress: bool) -> tuple[Path, str | None]:
    """:func:`fetch_official`, also giving the URL the file came from (``None``: found in the
    downloads directory without asking any record)."""
    dest = weights.download_path
    if offline():
        if not dest.exists():
            raise OfflineError(_missing_message(weights, "PROTRNA_OFFLINE is set"))
        _verify_by_hand(weights, dest)
        return dest, None
    listings: dict[str, dict[str, RemoteFile]] = {}
    try:
        for record in weights.records:
            files = zenodo_record_files(record)
            if weights.filename not in files:  # the cached record may be out of date
                files = zenodo_record_files(record, refresh=True)
            listings[record] = files
            if weights.filename in files:
                break
    except DownloadError as error:  # no network, or Zenodo is down
        if dest.exists():
            _verify_by_hand(weights, dest)
            return dest, None
        raise DownloadError(_missing_message(weights, str(error))) from error
    if weights.filename not in listings[record]:
        contents = "; ".join(f"{r} has {', '.join(sorted(f)) or 'no files'}" for r, f in listings.items())
        raise DownloadError(
            f"no Zenodo record of {weights.name} ({', '.join(weights.records)}) lists "
            f"{weights.filename}: {contents}"
        )
    remote = listings[record][weights.filename]  # record: the first one that lists the file
    url = weights.url_in(record)
    try:
        try:
            return download(url, dest, md5=remote.md5, size=remote.size, progress=progress), url
        except ChecksumError:
            # The cached record may be older than the file (a new upload, a mirror's own record):
            # ask once more; only a changed checksum is worth downloading again.
            try:
                fresh = zenodo_record_files(record, refresh=True).get(weights.filename)
            except DownloadError:
                fresh = None
            if fresh is None or (fresh.md5, fresh.size) == (remote.md5, remote.size):
                raise
            logger.info("the published checksum of %s has changed; downloading it again", weights.filename)
            return download(url, dest, md5=fresh.md5, size=fresh.size, progress=progress), url
    except ChecksumError:
        raise
    except DownloadError as error:
        raise DownloadError(_missing_message(weights, str(error))) from error


def _cached_listing(weights: OfficialWeights) -> RemoteFile | None:
    """The file's entry in the first cached record JSON that lists it, if any."""
    for record in weights.records:
        if record_json_path(record).exists():
            remote = zenodo_record_files(record).get(weights.filename)
            if remote is not None:
                return remote
    return None


def _verify_by_hand(weights: OfficialWeights, path: Path) -> None:
    """Check a file found in the downloads directory, if the published md5 is known offline."""
    cached = [record_json_path(r) for r in weights.records if record_json_path(r).exists()]
    if not cached:
        warnings.warn(
            f"using {path} without checking its md5: the Zenodo record is not cached "
            f"({record_json_path(weights.record)}). Compare it by hand with the checksum at "
            f"https://zenodo.org/records/{weights.record}.",
            stacklevel=3,
        )
        return
    remote = _cached_listing(weights)
    if remote is None or remote.md5 is None:
        warnings.warn(
            f"using {path} without checking it: the cached record has no md5 for it", stacklevel=3
        )
        return
    actual = md5sum(path)
    if actual != remote.md5:
        raise ChecksumError(
            f"{path}: md5 mismatch: expected {remote.md5}, got {actual}. The file is damaged or "
            f"another file; delete it and download {weights.url} again."
        )


def _missing_message(weights: OfficialWeights, reason: str) -> str:
    where = weights.url + "".join(f" (or {weights.url_in(r)})" for r in weights.other_records)
    return (
        f"{weights.name} is not in the cache and cannot be downloaded ({reason}).\n"
        f"Download {where} (about {weights.approx_size}) on a machine with network and put "
        f"it into {downloads_dir()}/ (as {weights.filename}); or run `protrna download "
        f"{weights.name}` there and copy {cache_root()}/models/{weights.name}/ to this machine."
    )


@contextmanager
def _cache_lock(name: str) -> Iterator[None]:
    """One process at a time downloads and converts ``name``; the others wait, then reuse it."""
    locks_dir().mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(locks_dir() / f"{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        logger.info("another process is fetching %s; waiting for it", name)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
