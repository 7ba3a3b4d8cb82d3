"""A module that is also a call: ``auditor.index(...)`` runs the stage while ``auditor.index.runner`` still imports.

It imports nothing of the package, so a stage module can make itself callable without importing the API
(``gate.py`` does; the API imports the gate lazily, so neither imports the other back).
"""

from __future__ import annotations

import inspect
import sys
import types
from typing import Callable


class CallableModule(types.ModuleType):
    """A stage's package module that is also its API call (``auditor.index(...)``)."""


def make_module_callable(module_name: str, func: Callable, name: str) -> None:
    """Make ``sys.modules[module_name]`` callable as ``func`` (with its signature and docs)."""

    def call(self, *args, **kwargs):
        return func(*args, **kwargs)

    sig = inspect.signature(func)
    call.__doc__, call.__name__, call.__qualname__ = func.__doc__, name, name
    # inspect drops the first parameter of a bound __call__: give it ``self`` so the stage's own signature shows
    call.__signature__ = sig.replace(parameters=[inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY),
                                                 *sig.parameters.values()])
    sys.modules[module_name].__class__ = type(f"{name}_module", (CallableModule,), {"__call__": call})
