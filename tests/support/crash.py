"""What the crash tests check after a kill: complete files under final names, no temporary file left."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from .helpers import is_tmp, tree_digest

tree = tree_digest  # sha256 of every final output file (temporary files are checked separately)


def leftovers(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and is_tmp(p))


def assert_complete_files(root: Path) -> int:
    """Every file under a final name is complete: parquet reads, JSON parses, .npy loads, PNG decodes."""
    n = 0
    for p in sorted(root.rglob("*")):
        if not p.is_file() or is_tmp(p):
            continue
        n += 1
        if p.suffix == ".parquet":
            pq.read_table(p)
        elif p.suffix in (".json", ".done"):
            json.loads(p.read_text(encoding="utf-8"))
        elif p.suffix == ".npy":
            np.load(p, allow_pickle=False)
        elif p.suffix == ".png":
            with Image.open(p) as im:
                im.load()
    return n
