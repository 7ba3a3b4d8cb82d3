"""Typed configuration of the dedup stage."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DedupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    exact_bytes: bool = True
    exact_pixels: bool = True
    # perceptual: max Hamming distance between 64-bit pHashes (and dHashes) to call a pair duplicate
    phash_max_distance: int = Field(10, ge=0, le=64)
    dhash_max_distance: int = Field(-1, ge=-1, le=64)  # -1 = dHash not used
    # embedding: min cosine similarity; search method chosen by size unless forced
    embedding: bool = True
    cosine_threshold: float = Field(0.9, gt=-1.0, le=1.0)
    search: Literal["auto", "flat", "ivf", "hnsw"] = "auto"
    placeholder_min_cluster: int = Field(50, ge=2)
    risk_top_n: int = Field(100, ge=1)
