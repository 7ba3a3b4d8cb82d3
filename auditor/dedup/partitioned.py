"""On-disk sharded IVF partitioning for embedding near-duplicate search at 100M+ rows, runnable per partition
in-process or as Ray tasks: the names of :mod:`auditor.dedup.search.partition_build` (centroids, the
threshold-aware margin rule, the partition files) and :mod:`auditor.dedup.search.partitioned` (the per-partition
search, local or Ray), kept importable from here.

Example:
    >>> import numpy as np, tempfile
    >>> x = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0, 1]]
    >>> with tempfile.TemporaryDirectory() as d:
    ...     i, j, s, stats = partitioned_pairs(build_partitions(x, d, 0.9, nparts=2, seed=0), 0.9)
    >>> list(zip(i.tolist(), j.tolist()))
    [(0, 4), (1, 5)]
"""

from __future__ import annotations

from .search.partition_build import (CDIST_MATRIX_MAX, DEFAULT_MARGIN, DEFAULT_MAX_PROBES, DEFAULT_PROBE_STORE,
                                     DEFAULT_ROWS, FORMAT, MANIFEST, PartitionedIndex, ProbeAssigner,
                                     build_partitions, default_nparts, load_partition, pair_radius,
                                     train_centroids)
from .search.partitioned import partitioned_pairs, search_partition

__all__ = ["CDIST_MATRIX_MAX", "DEFAULT_MARGIN", "DEFAULT_MAX_PROBES", "DEFAULT_PROBE_STORE", "DEFAULT_ROWS",
           "FORMAT", "MANIFEST", "PartitionedIndex", "ProbeAssigner", "build_partitions", "default_nparts",
           "load_partition", "pair_radius", "train_centroids", "partitioned_pairs", "search_partition"]
