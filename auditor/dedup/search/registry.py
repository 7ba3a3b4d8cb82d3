"""The search-method registry and the one place that picks a method.

A strategy is a class registered under its method name (``@SEARCH_METHODS.register("flat")``) with

* ``exact``: whether it returns every pair at or above the threshold;
* ``self_candidates(x, thr, opts, progress)`` -> int64 ``(i, j)``, ``i < j``: candidate pairs of one set;
* ``cross_candidates(q, b, thr, opts, progress)`` -> int64 ``(qi, bj)``: candidate pairs between two sets;
* ``build_index(x, opts)`` -> a faiss inner-product index over the rows (ids = row numbers) for later lookups.

Candidates are pairs with a faiss inner product above ``thr`` (the threshold less
:data:`~auditor.dedup.search.common.MARGIN`), in any order and possibly repeated: the caller sorts, de-duplicates
and re-verifies them exactly (:func:`auditor.dedup.search.embedding.embedding_pairs`). The config's
``dedup.search`` choices are ``auto`` plus :meth:`Registry.names` (a test keeps the two equal).
"""

from __future__ import annotations

from ...registry import Registry

SEARCH_METHODS: Registry = Registry("search method")
AUTO = "auto"
AUTO_FLAT_MAX = 50_000          # rows; at or above this ``auto`` uses the IVF join

__all__ = ["SEARCH_METHODS", "AUTO", "AUTO_FLAT_MAX", "method_names", "resolve_method", "pick_strategy"]


def method_names() -> list[str]:
    """Every value ``dedup.search`` accepts: ``auto`` first, then the registered methods, sorted."""
    return [AUTO, *SEARCH_METHODS.names()]


def resolve_method(n: int, method: str) -> str:
    """The registered method ``method`` stands for over ``n`` base rows: ``auto`` is ``flat`` below
    :data:`AUTO_FLAT_MAX` rows, ``ivf`` from there on.

    Example:
        >>> resolve_method(1_000, "auto"), resolve_method(1_000_000, "auto"), resolve_method(10, "hnsw")
        ('flat', 'ivf', 'hnsw')
    """
    if method != AUTO and method not in SEARCH_METHODS:
        raise ValueError(f"unknown search method {method!r}; use {', '.join(method_names())}")
    if method == AUTO:
        return "flat" if n < AUTO_FLAT_MAX else "ivf"
    return method


def pick_strategy(n: int, method: str):
    """The strategy object for ``method`` over ``n`` base rows (the only place a method is chosen)."""
    return SEARCH_METHODS.get(resolve_method(n, method))()
