"""Image generators behind one interface: (prompt, seed) requests -> images + provenance.

Registry names: ``diffusers`` (a local folder or hub id loaded with ``DiffusionPipeline.from_pretrained``),
``http`` (JSON over HTTP, schema in :mod:`auditor.probe.generators.http`), ``python`` (a ``module:function``
callable). Backends import their heavy dependencies lazily.
"""

from __future__ import annotations

from .base import GENERATORS, Generation, Generator, build_generator

# importing the backends registers them
from . import diffusers_gen as _diffusers_gen  # noqa: F401,E402
from . import http as _http  # noqa: F401,E402
from . import python as _python  # noqa: F401,E402

__all__ = ["GENERATORS", "Generation", "Generator", "build_generator"]
