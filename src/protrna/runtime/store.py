"""HDF5 files that resumable jobs fill row by row (``protrna embed``, the training feature cache)."""

from __future__ import annotations

import h5py
import numpy as np


def allocate_dataset(h5: h5py.File, name: str, shape: tuple[int, ...], dtype=np.float32) -> None:
    """A contiguous dataset whose space is reserved now, so later writes touch no metadata."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    h5.create_dataset(name, shape=shape, dtype=dtype, dcpl=dcpl)
