"""``flat``: exact. faiss ``IndexFlatIP`` range search, blocked so that each base block is searched only by the rows
before it (the N^2/2 upper triangle), which bounds memory by the result size plus one block."""

from __future__ import annotations

import numpy as np

from .common import SearchOptions, blocked_range_search, f32, faiss
from .registry import SEARCH_METHODS

FLAT_BLOCK = 16_384             # rows per base block (and per query slice)
ADD_CHUNK = 65_536              # rows converted to float32 at a time when an index is filled


def add_rows(index, x: np.ndarray, chunk: int = ADD_CHUNK):
    """Add ``x`` to ``index`` in float32 chunks (the float32 copy stays one chunk at a time); returns ``index``."""
    for lo in range(0, len(x), chunk):
        index.add(f32(x[lo:lo + chunk]))
    return index


@SEARCH_METHODS.register("flat")
class FlatSearch:
    """Exact inner-product range search over blocks of the base rows."""

    exact = True

    def self_candidates(self, x: np.ndarray, thr: float, opts: SearchOptions, progress: bool):
        d = x.shape[1]
        return blocked_range_search(lambda: faiss().IndexFlatIP(d), x, x, float(thr), block=FLAT_BLOCK,
                                    self_join=True, progress=progress, desc="flat search")

    def cross_candidates(self, q: np.ndarray, b: np.ndarray, thr: float, opts: SearchOptions, progress: bool):
        d = b.shape[1]
        return blocked_range_search(lambda: faiss().IndexFlatIP(d), b, q, float(thr), block=FLAT_BLOCK,
                                    progress=progress, desc="flat search")

    def build_index(self, x: np.ndarray, opts: SearchOptions):
        return add_rows(faiss().IndexFlatIP(x.shape[1]), x)
