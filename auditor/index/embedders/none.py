"""``none``: no embeddings (the index holds hashes only; dedup runs on exact and perceptual hashes)."""

from __future__ import annotations

import numpy as np

from .base import EMBEDDERS, Embedder


@EMBEDDERS.register("none")
class NoEmbedder(Embedder):
    name = "none"

    def _embed(self, batch: np.ndarray) -> np.ndarray:
        return np.zeros((len(batch), 0), dtype=np.float32)

    def describe(self) -> dict:
        return {"name": "none", "dim": 0}
