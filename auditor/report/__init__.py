"""The report stage. The package is also the stage's API call: ``auditor.report(...)`` is :func:`auditor.api.report`."""

from ..api import make_callable

make_callable(__name__, "report")
