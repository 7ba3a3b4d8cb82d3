"""Index engines: where the index pipeline runs.

* ``local`` (default): this machine; a process pool decodes and hashes, the main process embeds and writes.
* ``ray``: a Ray cluster through Ray Data; CPU tasks decode + hash + preprocess, GPU (or CPU) actors embed, the
  driver writes the shard files (``pip install 'auditor[ray]'``).

An engine is a class registered in :data:`ENGINES` (see :class:`auditor.index.engines.base.IndexEngine`); both engines
run the functions of :mod:`auditor.index.shard` on the same fixed chunks and embedding batches, so their outputs
are byte-identical.
"""

from __future__ import annotations

from .base import ENGINES, IndexEngine
from . import local as _local  # noqa: F401  (registers "local")
from . import ray_engine as _ray  # noqa: F401  (registers "ray"; imports ray lazily)


def build_engine(icfg) -> IndexEngine:
    """The engine named by ``icfg.engine`` for an :class:`auditor.index.config.IndexConfig`."""
    return ENGINES.get(icfg.engine)(icfg)


__all__ = ["ENGINES", "IndexEngine", "build_engine"]
