"""Dedup's row rules shared with the guard (kept apart from the dedup runner so the guard does not import it)."""

from __future__ import annotations

import pandas as pd


def pixel_groups(table: pd.DataFrame) -> pd.Series:
    """The search unit of every row: its pixel hash (or byte hash, or shard/key when both are missing)."""
    pix = table["pixel_blake3"].fillna("").astype(str)
    byt = table["sha256"].fillna("").astype(str)
    own = "r:" + table["shard"].astype(str) + "/" + table["key"].astype(str)
    return pix.where(pix != "", ("b:" + byt).where(byt != "", own))
