"""Retrieval copies (Webster 2023): the nearest training images of a generation in the **whole** index, found
with the guard's lookup (pHash through a faiss binary index, then the index's embedder + faiss), so that a copy
of a training image outside the caption's own cluster is compared, judged and named too."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image

log = logging.getLogger(__name__)


class Retriever:
    """``nearest(images)`` -> per image, the (key, shard) of its ``top_k`` nearest training images."""

    def __init__(self, run_dir: str | Path, top_k: int = 4, device: Optional[str] = None):
        from ..guard.config import GuardConfig
        from ..guard.lookup import Guard

        self.top_k = int(top_k)
        self.guard = Guard(run_dir, GuardConfig(top_k=self.top_k), device=device)

    @classmethod
    def maybe(cls, run_dir, store, cfg) -> Optional["Retriever"]:
        """A retriever when the probe has an index and ``probe.retrieval`` is on, else None."""
        if store is None or not cfg.retrieval:
            return None
        try:
            dev = None if cfg.diffusers.device == "auto" else cfg.diffusers.device
            return cls(run_dir, cfg.retrieval_top_k, device=dev)
        except Exception as exc:  # noqa: BLE001 - the probe still runs against the caption's references
            log.warning("probe: retrieval over the whole index disabled: %s", exc)
            return None

    def nearest(self, images: Sequence[Image.Image]) -> list[list[tuple[str, str]]]:
        """One OpenMP thread for faiss: a caption's few generations gain nothing from more (the guard measured
        one query 30x faster on one thread on a loaded host), and a probe forked from a process whose faiss
        already started an OpenMP pool (the crash tests fork the CLI after dedup ran in-process) would hang on
        a multi-threaded region."""
        from threadpoolctl import threadpool_limits

        out: list[list[tuple[str, str]]] = []
        with threadpool_limits(1, user_api="openmp"):
            results = self.guard.check(list(images))
        for res in results:
            out.append([(m.key, m.shard) for m in res.matches[: self.top_k]])
        return out
