"""Imported by the local engine's forkserver before it forks pool workers (``set_forkserver_preload``): the
pipeline's modules are imported, the hashing tables built and the JPEG fast path verified once, not once per
worker."""

from . import decode, runner  # noqa: F401
from .hashing import warm_up

warm_up()
decode.fast_jpeg_kinds()
