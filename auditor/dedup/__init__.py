"""The dedup stage. The package is also the stage's API call: ``auditor.dedup(...)`` is :func:`auditor.api.dedup`."""

from ..api import make_callable

make_callable(__name__, "dedup")
