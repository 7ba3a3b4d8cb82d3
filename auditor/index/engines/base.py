"""The index-engine contract and registry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from ..config import IndexConfig
    from ..shard import IndexJob


class IndexEngine:
    """Runs the index pipeline over the pending shards of one run.

    ``start()`` loads the embedder (or finds out where it will run) and returns its ``describe()`` dict, which
    goes into ``index.json``; ``run(job)`` indexes ``job.shards`` and writes every shard through
    :func:`auditor.index.shard.write_shard` (files atomically, ``.done`` marker last), in any shard order;
    ``close()`` releases what ``start`` acquired. Engines must not change outputs: chunks are fixed by position
    in a shard and embedding batches start at each shard's row 0.
    """

    name: str = ""

    def __init__(self, icfg: "IndexConfig"):
        self.icfg = icfg

    def start(self) -> dict:
        raise NotImplementedError

    def run(self, job: "IndexJob") -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


ENGINES: Registry[type[IndexEngine]] = Registry("index engine")
