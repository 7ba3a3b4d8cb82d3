"""The index stage. The package is also the stage's API call: ``auditor.index(...)`` is :func:`auditor.api.index`."""

from ..api import make_callable

make_callable(__name__, "index")
