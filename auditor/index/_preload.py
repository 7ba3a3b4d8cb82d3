"""Imported by the local engine's forkserver before it forks pool workers (``set_forkserver_preload``): the
worker side of the pipeline (:mod:`auditor.index.worker`, free of pandas and pyarrow) is imported, the hashing
tables built and the JPEG fast path verified once, not once per worker, and its BLAS/OpenMP pools are capped to one
thread. The forkserver is started with ``PYTHONSAFEPATH=1`` (``auditor.index.workerctx.worker_context``), so
this import never finds a folder named ``auditor`` in the caller's current folder instead of the package.

Only the worker's modules are imported: a worker needs nothing else, and importing the whole pipeline (pandas,
pyarrow) here cost 1.3 s of CPU against 0.4 s, during which the main process waited for the server before its
first chunk (measured, ``auditor index`` on 3,000 photos, 2 cores)."""

from . import decode, decode_fast, dihedral, hashing, worker  # noqa: F401
from .hashing import warm_up
from .threads import cap_native_threads

cap_native_threads(1)  # the server only forks; its children start from one-thread pools and set their own share

warm_up()
decode.fast_jpeg_kinds()
