"""``hnsw``: faiss ``IndexHNSWFlat`` range search (approximate; optional, mainly for later lookups)."""

from __future__ import annotations

import numpy as np

from .common import SearchOptions, faiss, range_search_rows
from .flat import add_rows
from .registry import SEARCH_METHODS

QUERY_BLOCK = 16_384


@SEARCH_METHODS.register("hnsw")
class HNSWSearch:
    """One HNSW graph over the base rows (``opts.hnsw_m`` links per node), queried in blocks at ``efSearch =
    opts.hnsw_ef_search``."""

    exact = False

    def _candidates(self, q, b, thr, opts: SearchOptions, self_join: bool, progress: bool):
        index = self.build_index(b, opts)
        index.hnsw.efSearch = int(opts.hnsw_ef_search)
        return range_search_rows(index, q, float(thr), block=QUERY_BLOCK, upper_triangle=self_join,
                                 progress=progress, desc="hnsw search")

    def self_candidates(self, x: np.ndarray, thr: float, opts: SearchOptions, progress: bool):
        return self._candidates(x, x, thr, opts, True, progress)

    def cross_candidates(self, q: np.ndarray, b: np.ndarray, thr: float, opts: SearchOptions, progress: bool):
        return self._candidates(q, b, thr, opts, False, progress)

    def build_index(self, x: np.ndarray, opts: SearchOptions):
        f = faiss()
        return add_rows(f.IndexHNSWFlat(x.shape[1], int(opts.hnsw_m), f.METRIC_INNER_PRODUCT), x)
