"""auditor: find the training images a text-to-image model can reproduce, and the dedup manifest that prevents it.

Stages follow the data's path: ``io`` (readers/writers) -> ``index`` -> ``dedup`` -> ``probe`` -> ``report`` / ``gate``.

The Python API (:mod:`auditor.api`), imported lazily (``import auditor`` stays light: no torch, no faiss)::

    from auditor import index, dedup, probe, report, gate, Guard, load_config

    store = index("photos/", "runs/photos")         # -> IndexStore
    summary = dedup("runs/photos")                  # -> dict (dedup/summary.json)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "index": "auditor.index", "dedup": "auditor.dedup", "probe": "auditor.probe", "report": "auditor.report",
    "gate": "auditor.gate", "Guard": "auditor.guard.lookup", "load_config": "auditor.config",
    "AuditorConfig": "auditor.config", "apply_manifest": "auditor.api",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    """The API names, imported on first use (PEP 562)."""
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'auditor' has no attribute {name!r}")
    mod = importlib.import_module(target)
    value = mod if name in ("index", "dedup", "probe", "report", "gate") else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
