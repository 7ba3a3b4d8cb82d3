"""The keep policy: which members of each duplicate cluster the manifest keeps (``dedup.keep``,
``dedup.protect``, ``dedup.keep_per_cluster``), after NeMo Curator's ``which_to_keep`` / ``RankingStrategy``.

It is separate from the cluster *representative* (:mod:`auditor.dedup.cluster`), which the clustering needs (every
member is linked to it, ``similarity_to_representative`` is measured to it) and which does not move with the policy.

Rules (``dedup.keep``):

* ``largest`` -- the representative: largest pixel area, then most stored bytes, then lowest key (the default);
* ``first`` -- the first member in dataset order (shard order, then position within the shard: index row);
* ``column:NAME[:asc|desc]`` -- by any column of the index (a carried one such as LAION's ``aesthetic``,
  ``similarity``, ``punsafe``, or img2dataset's ``--save_additional_columns``; or a fixed one such as ``nbytes``),
  descending unless ``:asc``; rows without a value come last; ties by the ``largest`` order.

``keep_per_cluster: N`` keeps the best N members by that order; ``protect`` rows are always kept (in addition).

Example:
    >>> parse_keep("column:punsafe:asc")
    KeepRule(kind='column', column='punsafe', ascending=True)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class KeepRule:
    kind: str                      # largest | first | column
    column: Optional[str] = None
    ascending: bool = False


def parse_keep(spec: str) -> KeepRule:
    """``dedup.keep`` -> :class:`KeepRule`; a ValueError names the accepted forms.

    Example:
        >>> parse_keep("first")
        KeepRule(kind='first', column=None, ascending=False)
    """
    if spec in ("largest", "first"):
        return KeepRule(spec)
    parts = spec.split(":")
    if parts[0] == "column" and len(parts) in (2, 3) and parts[1] and (len(parts) == 2 or parts[2] in ("asc", "desc")):
        return KeepRule("column", parts[1], len(parts) == 3 and parts[2] == "asc")
    raise ValueError(f"{spec!r} is not a keep rule: use largest, first or column:NAME[:asc|desc]")


def columns_needed(spec: str, protect: list[str]) -> list[str]:
    """The index columns the policy reads (beyond what dedup always reads)."""
    cols = []
    rule = parse_keep(spec)
    if rule.kind == "column":
        cols.append(rule.column)
    for p in protect:
        if "=" in p and not p.startswith("file:"):
            cols.append(p.split("=", 1)[0])
    return list(dict.fromkeys(cols))


def protected_rows(table: pd.DataFrame, protect: list[str]) -> np.ndarray:
    """bool [N]: the rows ``dedup.protect`` names (see :class:`~auditor.dedup.config.DedupConfig`).

    Example:
        >>> t = pd.DataFrame({"key": ["a", "b"], "shard": ["0", "0"], "source": ["x", "licensed"]})
        >>> protected_rows(t, ["source=licensed"]).tolist()
        [False, True]
    """
    n = len(table)
    out = np.zeros(n, dtype=bool)
    if not protect:
        return out
    keys = table["key"].astype(str)
    sk = table["shard"].astype(str) + "/" + keys
    for p in protect:
        if p.startswith("file:"):
            lines = [ln.strip() for ln in Path(p[5:]).expanduser().read_text(encoding="utf-8").splitlines()]
            wanted = {ln for ln in lines if ln and not ln.startswith("#")}
            out |= sk.isin(wanted).to_numpy() | keys.isin(wanted).to_numpy()
        elif "=" in p:
            name, value = p.split("=", 1)
            if name not in table.columns:
                raise ValueError(f"dedup.protect: {p!r}: the index has no column {name!r}")
            out |= table[name].astype(str).to_numpy() == value
        else:
            out |= (sk == p).to_numpy() | (keys == p).to_numpy()
    return out


def keep_mask(table: pd.DataFrame, cid: np.ndarray, is_rep: np.ndarray, area: np.ndarray, nbytes: np.ndarray,
              spec: str = "largest", per_cluster: int = 1, protect: Optional[np.ndarray] = None) -> np.ndarray:
    """bool [N]: the rows kept. Rows are ranked within their cluster by the rule, then the ``largest`` order
    (representative first, area desc, stored bytes desc, key, shard); the first ``per_cluster`` are kept, and
    every ``protect`` row.

    Example:
        >>> t = pd.DataFrame({"key": ["a", "b", "c"], "shard": ["0"] * 3, "aesthetic": [5.0, 6.5, None]})
        >>> keep_mask(t, np.array([0, 0, 0]), np.array([True, False, False]), np.ones(3), np.ones(3),
        ...           "column:aesthetic").tolist()
        [False, True, False]
    """
    n = len(table)
    rule = parse_keep(spec)
    if rule.kind == "largest" and per_cluster == 1:
        keep = np.asarray(is_rep, dtype=bool).copy()
    else:
        frame = pd.DataFrame({"cid": cid, "rep": ~np.asarray(is_rep, bool), "area": -np.asarray(area, np.int64),
                              "nb": -np.asarray(nbytes, np.int64), "key": table["key"].astype(str).to_numpy(),
                              "shard": table["shard"].astype(str).to_numpy(), "row": np.arange(n)})
        by = ["cid"]
        if rule.kind == "first":
            by.append("row")
        elif rule.kind == "column":
            if rule.column not in table.columns:
                raise ValueError(f"dedup.keep: {spec!r}: the index has no column {rule.column!r} (carry it with "
                                 f"index.carry_columns, or use one of: {', '.join(map(str, table.columns))})")
            v = table[rule.column]
            num = pd.to_numeric(v, errors="coerce") if v.dtype == object else v
            if v.dtype == object and num.notna().sum() < v.notna().sum():
                num = v.astype("string")  # a text column: lexicographic
            frame["null"] = num.isna().to_numpy()
            frame["v"] = num.to_numpy()
            by += ["null", "v"]
        by += ["rep", "area", "nb", "key", "shard"]
        asc = [True] * len(by)
        if rule.kind == "column":
            asc[by.index("v")] = rule.ascending
        ranked = frame.sort_values(by, ascending=asc, kind="mergesort", na_position="last")
        rank = ranked.groupby("cid", sort=False).cumcount().to_numpy()
        keep = np.zeros(n, dtype=bool)
        keep[ranked["row"].to_numpy()] = rank < per_cluster
    if protect is not None:
        keep |= protect
    return keep
