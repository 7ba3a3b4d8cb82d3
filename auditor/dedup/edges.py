"""The dedup stage's search edges between pixel groups, by the pair rules the main dedup and ``--against`` share:
which hash comparisons are on (:class:`HashRules`), hash pairs as stored or through flips/rotations, the dHash
confirmation of pHash links, and the embedding pairs of the configured search method (all through
:mod:`auditor.dedup.search`). With ``n_old`` > 0 (an incremental run) only pairs involving a new group (index
``>= n_old``) are searched: the new groups among themselves, then against the old ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .config import DedupConfig
from .search import dhash_confirmed, embedding_cross_pairs, embedding_pairs, hash_cross_pairs, hash_pairs

__all__ = ["HashRules", "search_options", "hash_edges", "phash_confirmed", "embedding_edges"]


@dataclass(frozen=True)
class HashRules:
    """The hash pair rules of a :class:`~auditor.dedup.config.DedupConfig` (-1 = off): ``phash`` /
    ``dhash`` distances as stored, ``dihedral`` after the best flip/rotation, ``confirm`` the dHash distance a
    pHash link needs.

    Example:
        >>> r = HashRules.from_config(DedupConfig())
        >>> r.phash, r.dhash, r.dihedral, r.confirm, r.phash_variants, r.dhash_variants
        (10, -1, 6, 20, True, True)
    """

    phash: int
    dhash: int
    dihedral: int
    confirm: int

    @classmethod
    def from_config(cls, dcfg: DedupConfig) -> "HashRules":
        return cls(phash=dcfg.phash_max_distance if dcfg.phash else -1, dhash=dcfg.dhash_max_distance,
                   dihedral=dcfg.hash_dihedral_max_distance,
                   confirm=dcfg.dhash_confirm_max_distance if dcfg.phash else -1)

    @property
    def phash_variants(self) -> bool:
        """Whether the pHash search needs the index's ``phash_dihedral``."""
        return self.phash >= 0 and self.dihedral >= 0

    @property
    def dhash_variants(self) -> bool:
        """Whether the dHash search or the confirmation needs the index's ``dhash_dihedral``."""
        return (self.dhash >= 0 or self.confirm >= 0) and self.dihedral >= 0


def search_options(dcfg: DedupConfig) -> dict:
    """The faiss knobs of the config, as keyword arguments of auditor.dedup.search's functions (the partition
    knobs only for ``search: partitioned``)."""
    out = {"nlist": dcfg.nlist, "nprobe": dcfg.nprobe, "probe_margin": dcfg.probe_margin,
           "probe_min": dcfg.probe_min, "threads": dcfg.search_threads}
    if dcfg.search == "partitioned":
        out.update(partition_rows=dcfg.partition_rows, partition_margin=dcfg.partition_margin,
                   partition_max_probes=dcfg.partition_max_probes, partition_probe_store=dcfg.partition_probe_store)
    return out


def hash_edges(values: np.ndarray, variants: Optional[np.ndarray], n_old: int, max_distance: int,
               transformed_max_distance: int, progress: bool = False, threads: Optional[int] = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (a, b) of pixel groups within ``max_distance`` (or ``transformed_max_distance`` after a flip or
    rotation, when ``variants`` are given)."""
    new = values[n_old:]
    nv = None if variants is None else variants[n_old:]
    i, j, _ = hash_pairs(new, nv, max_distance, transformed_max_distance, progress=progress, threads=threads)
    a, b = [np.asarray(i, np.int64) + n_old], [np.asarray(j, np.int64) + n_old]
    if n_old and len(new):
        qi, bj, _ = hash_cross_pairs(new, nv, values[:n_old], None if variants is None else variants[:n_old],
                                     max_distance, transformed_max_distance, progress=progress, threads=threads)
        a.append(np.asarray(qi, np.int64) + n_old)
        b.append(np.asarray(bj, np.int64))
    return np.concatenate(a), np.concatenate(b)


def phash_confirmed(dhash: np.ndarray, variants: Optional[np.ndarray], a: np.ndarray, b: np.ndarray,
                    max_distance: int) -> np.ndarray:
    """Which pHash pairs (a, b) of one set the dHash does not contradict
    (:func:`auditor.dedup.search.dhash_confirmed` with the same arrays on both sides)."""
    return dhash_confirmed(dhash, variants, dhash, variants, a, b, max_distance)


def embedding_edges(emb: np.ndarray, n_old: int, dcfg: DedupConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (a, b) of pixel groups with embedding cosine ``>= dcfg.cosine_threshold`` (method ``dcfg.search``)."""
    new = emb[n_old:]
    kw = search_options(dcfg)
    i, j, _ = embedding_pairs(new, dcfg.cosine_threshold, method=dcfg.search, seed=seed, progress=dcfg.progress, **kw)
    a, b = [np.asarray(i, np.int64) + n_old], [np.asarray(j, np.int64) + n_old]
    if n_old and len(new):
        qi, bj, _ = embedding_cross_pairs(new, emb[:n_old], dcfg.cosine_threshold, method=dcfg.search, seed=seed,
                                          progress=dcfg.progress, **kw)
        a.append(np.asarray(qi, np.int64) + n_old)
        b.append(np.asarray(bj, np.int64))
    return np.concatenate(a), np.concatenate(b)
