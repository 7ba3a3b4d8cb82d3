"""Typed configuration of the dedup stage."""

from __future__ import annotations

import logging
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator


# the threshold used for an embedder without a calibrated one: CLIP-embedding near-duplicate dedup commonly uses
# cosine 0.9-0.95 (e.g. LAION's and SemDeDup's near-duplicate settings); calibrate yours with auditor.evaluation
UNCALIBRATED_COSINE = 0.9


class DedupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # exact: identical stored bytes (sha256) / identical decoded RGB pixels (pixel_blake3)
    exact_bytes: bool = True
    exact_pixels: bool = True
    # perceptual: max Hamming distance between 64-bit pHashes (and dHashes) to call a pair duplicate
    phash: bool = True
    phash_max_distance: int = Field(10, ge=0, le=64)
    dhash_max_distance: int = Field(-1, ge=-1, le=64)  # -1 = dHash not used
    # flips and 90-degree rotations: a pair also links when one image's flipped or rotated hash (the index's
    # phash_dihedral / dhash_dihedral) is within this distance of the other's (-1 = not matched). Stricter than
    # phash_max_distance because 15 comparisons per pair find more chance matches: at <= 10 the transformed
    # matches add 4 false pairs over 1,000 ImageNet photos and 93 over 4,000 32-px CIFAR photos, at <= 6 none
    # (as-stored pHash <= 10: 0 and 17); a mirrored or rotated JPEG re-save sits 0-4 bits away. Cost: 7 more
    # full Hamming searches, 8.6x the pHash search time (30k hashes, 2 shared cores: 9.3 s against 1.1 s).
    hash_dihedral_max_distance: int = Field(6, ge=-1, le=64)
    # a pHash link also needs the two dHashes (after the best flip/rotation) within this distance (-1 = no check):
    # low-contrast images (a near-flat grey 64-px face and a smooth retina crop, reports/example cluster 138)
    # collide on pHash (8 bits) while their dHashes differ by 23-26 bits; pHash-linked copies measured: lab
    # copies <= 13, ImageNet JPEG q30 / 1/4 resize / jitter / text <= 7, 3 % crops <= 12, 1-2 px crops of
    # 32-px photos 99th percentile 18 (max 21; such a copy stays linked through the other copies).
    dhash_confirm_max_distance: int = Field(20, ge=-1, le=64)
    # embedding: min cosine similarity; search method chosen by size unless forced: the names of
    # auditor.dedup.search.SEARCH_METHODS, one strategy file each (a test keeps this Literal equal to them);
    # partitioned = the on-disk partitions below, built in a temporary folder
    embedding: bool = True
    # null = the calibrated threshold of the embedder the index was built with (resolved by resolve_cosine when
    # the stage starts): the shipped `copy` descriptor's COPY_COSINE_THRESHOLD (auditor/index/embedders/copy.py,
    # evidence beside it), or UNCALIBRATED_COSINE for an embedder the project did not calibrate (open_clip,
    # SSCD, your ONNX model; a warning says so). A number overrides it for any embedder.
    cosine_threshold: Optional[float] = Field(None, gt=-1.0, le=1.0)
    search: Literal["auto", "flat", "hnsw", "ivf", "partitioned"] = "auto"
    nlist: Optional[int] = Field(None, ge=1)   # ivf lists; None = 2 sqrt(N)
    # ivf lists probed per row: the fixed rule's count (None = 12), or the margin rule's cap (None = 24)
    nprobe: Optional[int] = Field(None, ge=1)
    # the ivf join's margin rule (auditor/dedup/search/ivf.py): among its nprobe nearest lists, a row probes its
    # probe_min nearest and every list j with x.c_home - x.c_j <= probe_margin * sqrt(2 (1 - cosine_threshold)) *
    # |c_home - c_j| (the partitioned search's rule, doubled in a cross join; 0.5 without a cap finds every pair).
    # None = the fixed rule, the nprobe nearest lists. Defaults (0.15, 4, cap 24): recall >= 0.999 on 1M synthetic
    # rows at tau 0.9 and on 17k real copy descriptors at 0.6, where the fixed 8 lists had 0.9915 / 0.9964
    # (BENCHMARKS.md section 3b).
    probe_margin: Optional[float] = Field(0.15, ge=0.0)
    probe_min: int = Field(4, ge=1)
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
    # ... and a member that is not (a 1-2 px crop of a 32-px photo sits 10-26 pHash bits from another crop) is
    # still admitted when it is linked to at least chain_min_links admitted members AND passes an end-to-end check
    # against the representative: embedding cosine >= cosine_threshold - chain_cosine_margin when the index has
    # embeddings, else pHash (after the best flip/rotation) within chain_max_distance. 0 = the plain star rule.
    # Measured: 200 such crops among 4,000 CIFAR photos are one cluster from 90 % of the possible representatives
    # (187+ of 200 from the others; no unrelated photo for any of 3, 4 or 5 links). On 10 chains of 11 blends
    # between two ImageNet photos (ends 26-36 bits apart) the largest cluster grown from any blend has 6-8
    # members with 5 links, as many as the star rule's, and up to 11 (a whole chain) with 3.
    chain_min_links: int = Field(5, ge=0)
    chain_max_distance: int = Field(26, ge=0, le=64)
    chain_cosine_margin: float = Field(0.1, ge=0.0, le=2.0)
    # placeholder clusters ("image not found" GIFs, blank or tiny images served for dead URLs): exact
    # clusters of at least placeholder_min_cluster members whose representative is tiny or near-uniform.
    # They are flagged (is_placeholder) and left out of the risk ranking.
    placeholder_min_cluster: int = Field(50, ge=2)
    placeholder_max_area: int = Field(64 * 64, ge=0)        # width*height at or below which an image is "tiny"
    placeholder_uniform_fraction: float = Field(0.95, gt=0.0, le=1.0)  # share of pixels near the median grey
    placeholder_check_pixels: bool = True                   # decode the representative (needs the dataset)
    drop_placeholders: bool = False                         # also drop the representative of a placeholder cluster
    risk_top_n: int = Field(100, ge=1)                      # clusters listed in summary.json (risk.parquet has all)
    # which members of a duplicate cluster the manifest keeps (auditor.dedup.keep); the cluster's representative
    # (cluster.py: the members' similarity is measured to it) does not change with it.
    # largest: the representative (largest pixel area, then most stored bytes, then lowest key; today's rule);
    # first: the first member in dataset order (shard, then position in the shard);
    # column:NAME[:asc|desc]: by a carried index column (index.carry_columns: similarity, aesthetic, punsafe,
    # ...) or a fixed one (width, nbytes, url...), desc by default, nulls last, ties by the largest rule
    keep: str = "largest"
    # members never dropped, whatever the policy: "NAME=VALUE" (a carried or fixed column equals VALUE, e.g.
    # "source=licensed", "shard=00003"), "file:PATH" (a text file of keys or shard/key lines), or one key
    # ("shard/key" or a bare key)
    protect: list[str] = []
    keep_per_cluster: int = Field(1, ge=1)                  # members kept per cluster, best first by `keep`
    progress: bool = True

    @field_validator("keep")
    @classmethod
    def _keep_rule(cls, v: str) -> str:
        from .keep import parse_keep

        parse_keep(v)  # raises ValueError with the accepted forms
        return v


def resolve_cosine(dcfg: DedupConfig, embedder_name: Optional[str]) -> DedupConfig:
    """``dcfg`` with ``cosine_threshold`` set: the user's number, else the calibrated threshold of the index's
    embedder, else :data:`UNCALIBRATED_COSINE` (logged as a warning when embeddings are there to compare).

    Example:
        >>> from auditor.index.embedders import COPY_COSINE_THRESHOLD
        >>> resolve_cosine(DedupConfig(), "copy").cosine_threshold == COPY_COSINE_THRESHOLD
        True
        >>> resolve_cosine(DedupConfig(cosine_threshold=0.95), "copy").cosine_threshold
        0.95
    """
    if dcfg.cosine_threshold is not None:
        return dcfg
    from ..index.embedders import calibrated_cosine

    thr = calibrated_cosine(embedder_name) if embedder_name else None
    if thr is None:
        thr = UNCALIBRATED_COSINE
        if embedder_name and embedder_name != "none" and dcfg.embedding:
            logging.getLogger(__name__).warning(
                "dedup.cosine_threshold: the embedder %r has no calibrated threshold; using %.2f (set "
                "dedup.cosine_threshold, calibrated on your data with auditor.evaluation)", embedder_name, thr)
    return dcfg.model_copy(update={"cosine_threshold": float(thr)})
