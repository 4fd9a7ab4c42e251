"""The official ProtRNA weights and where this package keeps them on disk.

Cache layout (the root is ``$PROTRNA_HOME``, else ``$XDG_CACHE_HOME/protrna``, else
``~/.cache/protrna``)::

    <root>/downloads/ProtRNA_pretrained.h5      original Keras files, as published
    <root>/downloads/zenodo-13888473.json       the Zenodo record (md5 and size of each file)
    <root>/models/ProtRNA_pretrained/           converted copy, checked by reloading it (``convert_h5``)
    <root>/locks/                               lock files, so parallel jobs download only once

A file in ``downloads/`` is only ever complete (partial downloads are ``<file>.part``), and a
directory in ``models/`` appears in one ``os.replace`` once fully written, so anything found under
those names can be used as is.

Environment variables: ``PROTRNA_HOME`` (cache root), ``PROTRNA_ZENODO_URL`` (Zenodo, or a mirror
with the same URL layout; the tests point it at a server on loopback), ``PROTRNA_OFFLINE=1``
(never touch the network).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal

#: Where the files are published, unless ``PROTRNA_ZENODO_URL`` says otherwise.
ZENODO_URL = "https://zenodo.org"

WeightsKind = Literal["lm", "ss_head"]

#: The published weight files, as data. ``threshold``: the decision threshold the original uses
#: with a structure head (stored in the converted head's config). ``unverified``: the fields taken
#: from the original's code or inferred, and never checked against the Zenodo record itself (this
#: project cannot reach Zenodo); the md5 and exact size always come from the record at download
#: time. ``other_records``: records asked, in order, when ``record`` does not list the file.
#: The RnaBench heads: the original's ``pretrained.py`` builds the URL
#: ``records/13888473/files/<name>.h5`` for every ``ssHead_RF*`` name, while its README says that
#: the downstream head weights are on record 14795554; which one holds them is unknown here, so
#: both are asked, 14795554 first. Their thresholds are the defaults of the original's
#: ``test_downstream_ss_rnabench.py`` (each the best of a 0.10..0.39 sweep on its validation split).
OFFICIAL_TABLE: tuple[dict, ...] = (
    {"name": "ProtRNA_pretrained", "record": "13888473", "filename": "ProtRNA_pretrained.h5",
     "kind": "lm", "approx_size": "2.6 GB",
     "description": "the ProtRNA language model (ESM-2 650M shape, 38 tokens)"},
    {"name": "ssHead_RF_bprna", "record": "13888473", "filename": "ssHead_RF_bprna.h5",
     "kind": "ss_head", "approx_size": "75 MB", "threshold": 0.25,
     "description": "RotaFormer structure head trained on bpRNA-1m TR0 (threshold chosen on VL0)"},
    {"name": "ssHead_RF_rnabench_bprna", "record": "14795554", "other_records": ["13888473"],
     "filename": "ssHead_RF_rnabench_bprna.h5", "kind": "ss_head", "approx_size": "75 MB",
     "threshold": 0.29, "unverified": ["record", "filename", "approx_size"],
     "description": "RotaFormer head for RnaBench's bpRNA task (threshold chosen on bprna_val)"},
    {"name": "ssHead_RF_rnabench_intra", "record": "14795554", "other_records": ["13888473"],
     "filename": "ssHead_RF_rnabench_intra.h5", "kind": "ss_head", "approx_size": "75 MB",
     "threshold": 0.21, "unverified": ["record", "filename", "approx_size"],
     "description": "RotaFormer head for RnaBench's intra-family split (threshold chosen on its validation split)"},
    {"name": "ssHead_RF_rnabench_inter", "record": "14795554", "other_records": ["13888473"],
     "filename": "ssHead_RF_rnabench_inter.h5", "kind": "ss_head", "approx_size": "75 MB",
     "threshold": 0.14, "unverified": ["record", "filename", "approx_size"],
     "description": "RotaFormer head for RnaBench's inter-family split (threshold chosen on its validation split)"},
)


@dataclasses.dataclass(frozen=True)
class OfficialWeights:
    """One published weight file (one row of :data:`OFFICIAL_TABLE`).

    >>> weights = OFFICIAL_WEIGHTS["ssHead_RF_rnabench_inter"]
    >>> weights.kind, weights.filename, weights.threshold, weights.records
    ('ss_head', 'ssHead_RF_rnabench_inter.h5', 0.14, ('14795554', '13888473'))
    >>> "record" in weights.unverified, OFFICIAL_WEIGHTS["ssHead_RF_bprna"].unverified
    (True, ())
    """

    name: str
    record: str  # Zenodo record id
    filename: str
    kind: WeightsKind
    approx_size: str  # for messages only; the exact size comes from the record
    description: str
    threshold: float | None = None  # structure heads: the original's decision threshold
    other_records: tuple[str, ...] = ()
    unverified: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = set(self.unverified) - fields
        if unknown:
            raise ValueError(f"{self.name}: 'unverified' names no field {sorted(unknown)}")
        if (self.threshold is None) != (self.kind != "ss_head"):
            raise ValueError(f"{self.name}: a threshold belongs to every structure head and to nothing else")

    @classmethod
    def from_row(cls, row: dict) -> "OfficialWeights":
        """An entry from one row of :data:`OFFICIAL_TABLE` (lists become tuples)."""
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in row.items()}
        return cls(**values)

    @property
    def records(self) -> tuple[str, ...]:
        """Every record that may hold the file, in the order they are asked."""
        return (self.record, *self.other_records)

    @property
    def url(self) -> str:
        """Download URL of the file in its main record (under ``PROTRNA_ZENODO_URL`` when set)."""
        return self.url_in(self.record)

    def url_in(self, record: str) -> str:
        """Download URL of the file in ``record``."""
        return f"{zenodo_url()}/records/{record}/files/{self.filename}"

    @property
    def download_path(self) -> Path:
        """Where the original file goes (and where a file downloaded by hand is looked for)."""
        return downloads_dir() / self.filename

    @property
    def converted_dir(self) -> Path:
        """Where the converted ``save_pretrained`` directory goes."""
        return models_dir() / self.name


OFFICIAL_WEIGHTS: dict[str, OfficialWeights] = {
    row["name"]: OfficialWeights.from_row(row) for row in OFFICIAL_TABLE
}


def get_official(name: str) -> OfficialWeights:
    """The registry entry called ``name``; the error lists the names there are."""
    try:
        return OFFICIAL_WEIGHTS[name]
    except KeyError:
        raise ValueError(
            f"no official weights called {name!r}; known names: {', '.join(OFFICIAL_WEIGHTS)}"
        ) from None


def cache_root() -> Path:
    """Root of the weight cache: ``$PROTRNA_HOME``, ``$XDG_CACHE_HOME/protrna`` or
    ``~/.cache/protrna``."""
    if os.environ.get("PROTRNA_HOME"):
        return Path(os.environ["PROTRNA_HOME"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "protrna"
    return Path.home() / ".cache" / "protrna"


def downloads_dir() -> Path:
    return cache_root() / "downloads"


def models_dir() -> Path:
    return cache_root() / "models"


def locks_dir() -> Path:
    return cache_root() / "locks"


def zenodo_url() -> str:
    """Base URL of Zenodo, or of the mirror named by ``PROTRNA_ZENODO_URL``."""
    return (os.environ.get("PROTRNA_ZENODO_URL") or ZENODO_URL).rstrip("/")


def record_api_url(record: str) -> str:
    """URL of a record's JSON, which lists each file's ``key``, ``size`` and md5 ``checksum``."""
    return f"{zenodo_url()}/api/records/{record}"


def record_json_path(record: str) -> Path:
    """Cached copy of a record's JSON, kept beside the downloads so later runs need no network."""
    return downloads_dir() / f"zenodo-{record}.json"


def offline() -> bool:
    """True when ``PROTRNA_OFFLINE`` is set to 1 / true / yes / on."""
    return os.environ.get("PROTRNA_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
