"""Near-duplicate search: every pair above a cosine threshold, or within a Hamming distance, without an N x N
matrix in Python. One small strategy per file, after imagededup's ``handlers/search/``:

* :mod:`.common`: input checks, exact re-verification, and the one blocked range-search helper
  (:func:`~.common.blocked_range_search` / :func:`~.common.range_search_rows`) every strategy goes through;
* :mod:`.registry`: ``SEARCH_METHODS`` (the ``dedup.search`` choices are ``auto`` + its names) and
  :func:`~.registry.pick_strategy`, the one place a method is chosen (``auto``: ``flat`` below
  :data:`~.registry.AUTO_FLAT_MAX` rows, ``ivf`` above);
* :mod:`.flat` (exact ``IndexFlatIP`` range search over the upper triangle), :mod:`.ivf` (the IVF join),
  :mod:`.hnsw`, :mod:`.partitioned` (+ :mod:`.partition_build`: on-disk k-means partitions for 100M+ rows, local
  or Ray);
* :mod:`.embedding`: :func:`embedding_pairs` / :func:`embedding_cross_pairs` (candidates from the strategy, then
  sorted, de-duplicated and re-verified with the exact float32 dot) and the saved search index;
* :mod:`.hamming`: 64-bit hash pairs through faiss binary indexes, also through flips/rotations, and the hash pair
  rules (dihedral hashes, the dHash confirmation of pHash links) the dedup stage and ``--against`` share.

Thread count: faiss's OpenMP threads (``faiss.omp_set_num_threads``), taken from ``threads=`` when given, else
left as they are (``OMP_NUM_THREADS`` or the core count).
"""

from __future__ import annotations

from . import flat, hnsw, ivf, partitioned  # noqa: F401 - register the strategies
from .common import SearchOptions, faiss_threads
from .embedding import build_search_index, embedding_cross_pairs, embedding_pairs, load_search_index, \
    query_index, save_search_index
from .hamming import dhash_confirmed, hamming_cross_pairs, hamming_cross_pairs_dihedral, hamming_pairs, \
    hamming_pairs_dihedral, hash_cross_pairs, hash_pairs
from .ivf import default_nlist, default_nprobe
from .registry import AUTO_FLAT_MAX, SEARCH_METHODS, method_names, pick_strategy, resolve_method

__all__ = [
    "AUTO_FLAT_MAX", "SEARCH_METHODS", "SearchOptions", "method_names", "pick_strategy", "resolve_method",
    "embedding_pairs", "embedding_cross_pairs", "hamming_pairs", "hamming_cross_pairs", "hamming_pairs_dihedral",
    "hamming_cross_pairs_dihedral", "hash_pairs", "hash_cross_pairs", "dhash_confirmed",
    "build_search_index", "save_search_index", "load_search_index", "query_index",
    "default_nlist", "default_nprobe", "faiss_threads",
]
