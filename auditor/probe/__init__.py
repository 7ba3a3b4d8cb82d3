"""The probe stage. The package is also the stage's API call: ``auditor.probe(...)`` is :func:`auditor.api.probe`."""

from ..api import make_callable

make_callable(__name__, "probe")
