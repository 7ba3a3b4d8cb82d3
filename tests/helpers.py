"""Helpers shared by test modules (the tests folder is on sys.path under pytest's default import mode)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from auditor.config import AuditorConfig


def index_config(**index) -> AuditorConfig:
    """An AuditorConfig with these index keys (progress bars off)."""
    index.setdefault("progress", False)
    return AuditorConfig.model_validate({"index": index})


def is_tmp(p: Path) -> bool:
    """A temporary file of auditor.utils.atomic_path (``.NAME.XXXX.tmp``)."""
    return p.name.startswith(".") and p.name.endswith(".tmp")


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every final output file under ``root`` by relative path (temporary files left out)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file() and not is_tmp(p)}
