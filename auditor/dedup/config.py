"""Typed configuration of the dedup stage."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field


class DedupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # exact: identical stored bytes (sha256) / identical decoded RGB pixels (pixel_blake3)
    exact_bytes: bool = True
    exact_pixels: bool = True
    # perceptual: max Hamming distance between 64-bit pHashes (and dHashes) to call a pair duplicate
    phash: bool = True
    phash_max_distance: int = Field(10, ge=0, le=64)
    dhash_max_distance: int = Field(-1, ge=-1, le=64)  # -1 = dHash not used
    # embedding: min cosine similarity; search method chosen by size unless forced
    embedding: bool = True
    cosine_threshold: float = Field(0.9, gt=-1.0, le=1.0)
    search: Literal["auto", "flat", "ivf", "hnsw"] = "auto"
    nlist: Optional[int] = Field(None, ge=1)   # ivf lists; None = 2 sqrt(N)
    nprobe: Optional[int] = Field(None, ge=1)  # ivf lists probed per row; None = 8 (recall 0.9955 at 1M, BENCHMARKS.md)
    search_threads: Optional[int] = Field(None, ge=1)  # faiss threads; None = faiss's default
    # the on-disk partitioned search for 100M+ rows (auditor.dedup.partitioned): each row is stored in its home
    # k-means partition of ~partition_rows rows and also queries every partition c whose centroid is within
    # partition_margin * sqrt(2 (1 - cosine_threshold)) * |c_home - c| of its home centroid's similarity (at most
    # partition_max_probes partitions in all); margin 1 with no cap is exact. Defaults: recall >= 0.99 at 1M
    # (benchmarks/results/partitioned.md).
    partition_rows: int = Field(5_000, ge=1)
    partition_margin: float = Field(0.05, ge=0.0)
    partition_max_probes: int = Field(16, ge=1)
    # probe rows written as vector copies into the probed partition (self-contained partitions, sequential reads)
    # or as references to their home partition's files (one vector per row on disk, scattered single-row reads)
    partition_probe_store: Literal["copy", "ref"] = "copy"
    # chaining guard: a cluster member must itself be within a threshold of the representative (by at least
    # one enabled signal); members that are not are split off into their own clusters. Off = plain
    # connected components (single linkage, which chains A~B~C into one cluster even when A !~ C).
    chaining_guard: bool = True
    # placeholder clusters ("image not found" GIFs, blank or tiny images served for dead URLs): exact
    # clusters of at least placeholder_min_cluster members whose representative is tiny or near-uniform.
    # They are flagged (is_placeholder) and left out of the risk ranking.
    placeholder_min_cluster: int = Field(50, ge=2)
    placeholder_max_area: int = Field(64 * 64, ge=0)        # width*height at or below which an image is "tiny"
    placeholder_uniform_fraction: float = Field(0.95, gt=0.0, le=1.0)  # share of pixels near the median grey
    placeholder_check_pixels: bool = True                   # decode the representative (needs the dataset)
    drop_placeholders: bool = False                         # also drop the representative of a placeholder cluster
    risk_top_n: int = Field(100, ge=1)                      # clusters listed in summary.json (risk.parquet has all)
    progress: bool = True
