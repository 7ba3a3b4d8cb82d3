"""Builders shared by the tests (datasets, corpora, tiny models, stub servers); no tests here.

Tests import them as ``from .helpers import ...`` (``tests/`` is on sys.path: the root conftest's
folder); a test file never imports another test file."""
