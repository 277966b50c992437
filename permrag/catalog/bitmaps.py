"""Small helpers over pyroaring bitmaps (row IDs are 32-bit)."""

from __future__ import annotations

import numpy as np
from pyroaring import AbstractBitMap, BitMap

MAX_ROW_ID = 2**32 - 2
GONE = 2**32 - 1  # never allocated: stands for a derived row's source that is gone (catalog/index.py)


def as_array(bm: AbstractBitMap) -> np.ndarray:
    """The bitmap's values as a sorted uint32 array (no Python loop)."""
    return np.frombuffer(bm.to_array(), dtype=np.uint32)


def n_runs(bm: AbstractBitMap) -> int:
    """How many maximal runs of consecutive IDs the bitmap holds."""
    arr = as_array(bm)
    if arr.size == 0:
        return 0
    return int(np.count_nonzero(np.diff(arr.astype(np.int64)) != 1)) + 1


def size_bytes(bm: AbstractBitMap) -> int:
    """Serialized size after run optimisation."""
    copy = BitMap(bm)
    copy.run_optimize()
    return len(copy.serialize())
