"""auditor: find the training images a text-to-image model can reproduce, and the dedup manifest that prevents it.

Stages follow the data's path: ``io`` (readers/writers) -> ``index`` -> ``dedup`` -> ``probe`` -> ``report`` / ``gate``.
"""

__version__ = "0.1.0"
