"""The reader contract every dataset layout implements.

A dataset is a list of shards; a shard yields :class:`Sample` records in a stable order. Rows that
img2dataset failed to download (``status != "success"``) are yielded too, with ``data=None``, so the index
can list them without indexing them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from ..registry import Registry


@dataclass
class Sample:
    key: str                      # img2dataset's key, or the relative path for plain folders
    shard: str                    # shard id, e.g. "00000"
    data: Optional[bytes]         # the stored image bytes, None when the row has no image
    caption: Optional[str] = None
    url: Optional[str] = None
    status: str = "success"       # img2dataset's status; anything else is listed, not indexed
    error: Optional[str] = None   # img2dataset's error_message, or why the reader could not get the bytes
    stored_ext: Optional[str] = None  # the extension the bytes were stored under (jpg, png, webp, ...)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ShardRef:
    id: str                 # stable shard id used in the run folder (file names, markers)
    path: str               # the shard's main file or folder (fsspec URL or local path)
    extra: tuple = ()       # layout-specific extras (e.g. sidecar parquet path, member list)


class DatasetReader:
    """Base class: subclasses set ``layout`` and implement ``shards`` and ``read_shard``."""

    layout: str = ""

    def __init__(self, root: str, **options: Any):
        self.root = root
        self.options = options

    def shards(self) -> list[ShardRef]:
        raise NotImplementedError

    def read_shard(self, shard: ShardRef) -> Iterator[Sample]:
        raise NotImplementedError

    def get(self, shard: str, key: str) -> Sample:
        """Fetch one sample by shard id and key (used by probe/report to show training images)."""
        for ref in self.shards():
            if ref.id == shard:
                for s in self.read_shard(ref):
                    if s.key == key:
                        return s
        raise KeyError(f"no sample {key!r} in shard {shard!r} of {self.root}")


READERS: Registry[type[DatasetReader]] = Registry("dataset layout")
