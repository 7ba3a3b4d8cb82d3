"""Typed configuration of ``auditor guard`` (``report.guard`` in the one config)."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator


class GuardConfig(BaseModel):
    """Thresholds and limits of ``auditor guard``.

    A generated image is a ``copy`` of a training image when its 64-bit pHash is within
    ``copy_phash_distance`` bits of the training image's, or when their embedding cosine similarity is at least
    ``copy_cosine``; ``near`` with the looser pair of thresholds; ``ok`` otherwise. The cosine thresholds depend
    on the embedder the index was built with (SSCD descriptors: ~0.75 is a copy; CLIP image embeddings: ~0.95);
    set them for yours.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    top_k: int = Field(5, ge=1, le=100)
    copy_phash_distance: int = Field(4, ge=0, le=64)
    near_phash_distance: int = Field(10, ge=0, le=64)
    copy_cosine: float = Field(0.9, gt=-1.0, le=1.0)
    near_cosine: float = Field(0.8, gt=-1.0, le=1.0)
    # images whose pixels are (almost) flat hash to (almost) the same pHash as every flat training image:
    # below this pixel standard deviation (0-255 scale) the pHash fast path is not used
    min_pixel_std: float = Field(2.0, ge=0.0)
    # decompression-bomb limit for submitted images; None = the index's decode.max_pixels
    max_pixels: Optional[int] = Field(None, ge=1)
    # --serve: request body limit (413 past it), bind address and port
    max_request_bytes: int = Field(20 * 1024 * 1024, ge=1)
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)
    # --serve (waitress): requests checked at once, open connections accepted, seconds a connection may stay idle
    # (a client that stops sending is closed); memory is bounded by threads x (max_request_bytes + one decode)
    threads: int = Field(4, ge=1, le=256)
    connection_limit: int = Field(100, ge=1, le=100_000)
    request_timeout_s: float = Field(30.0, ge=1, le=3600)

    @model_validator(mode="after")
    def _ordered(self) -> "GuardConfig":
        if self.near_phash_distance < self.copy_phash_distance:
            raise ValueError("near_phash_distance must be >= copy_phash_distance")
        if self.near_cosine > self.copy_cosine:
            raise ValueError("near_cosine must be <= copy_cosine")
        return self
