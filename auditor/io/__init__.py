"""Dataset readers and writers. ``open_dataset(path)`` detects the layout and returns a reader.

``detect`` (which imports every reader, so registers them in ``READERS``) and ``writers`` are imported on first
use (PEP 562): the index's pool workers unpickle :class:`~auditor.io.base.Sample`, which imports this package, and
they need neither pyarrow nor pandas (auditor/index/worker.py). ``READERS`` is taken from ``detect`` too, so
that ``from auditor.io import READERS`` always lists every reader.
"""

from __future__ import annotations

import importlib

from .base import DatasetReader, Sample, ShardRef  # noqa: F401

_LAZY = {"READERS": "detect", "detect_layout": "detect", "open_dataset": "detect", "WebDatasetWriter": "writers"}
__all__ = ["DatasetReader", "Sample", "ShardRef", *_LAZY]


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'auditor.io' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value
