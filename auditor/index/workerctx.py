"""The index pool's multiprocessing context, in a module light enough (os, sys, multiprocessing) for the CLI to
start the pool's forkserver first thing, before it imports the index pipeline.

``auditor index`` on 3,000 photos (2 cores) spent its first ~0.85 s importing (argparse choices pull in the reader
registry and pyarrow, the config pydantic) before it could start the forkserver, whose own start-up and preload
then took another ~0.8 s before the first worker forked: :func:`prestart`, called by ``auditor/cli.py`` when the
command is ``index``, starts the server from the arguments alone, so its preload runs on the other core while the
main process imports (BENCHMARKS.md §1).

Example:
    >>> guess_pool(["photos/", "--out", "run", "--workers", "0"]), guess_pool(["photos/", "--out", "run"])
    (False, True)
"""

from __future__ import annotations

import os
import sys
import types
from multiprocessing import context as mpc


class _BareMainProcess:
    """Mixed into the context's Process class: the worker is started without the caller's ``__main__``.

    spawn and forkserver workers normally re-run the parent's main script (as ``__mp_main__``) before they take
    work, so a user script that calls ``run_index`` without ``if __name__ == "__main__":`` would index again in
    every worker and kill the pool. The workers only run ``auditor`` functions, so they are started with a bare
    ``__main__`` instead (custom backends must then live in an importable module, not in the script itself)."""

    def start(self):
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")  # no __file__, no __spec__: nothing to re-run
        try:
            super().start()
        finally:
            if main is not None:
                sys.modules["__main__"] = main


class _SpawnProcess(_BareMainProcess, mpc.SpawnProcess):
    pass


class _SpawnContext(mpc.SpawnContext):
    Process = _SpawnProcess


if hasattr(mpc, "ForkServerContext"):  # POSIX
    class _ForkServerProcess(_BareMainProcess, mpc.ForkServerProcess):
        pass

    class _ForkServerContext(mpc.ForkServerContext):
        Process = _ForkServerProcess


def worker_context():
    """The multiprocessing context of the index pool, kept off the caller's current folder and ``__main__``.

    forkserver on POSIX: workers never inherit the main process's threads (torch/OpenMP, tqdm's monitor) and
    fork from a server that already imported the pipeline (``auditor.index._preload``). The server is started by
    ``python -c``, which puts the current folder first on ``sys.path`` (and CPython's forkserver ignores the
    parent's ``sys.path``): started from a folder holding a directory named ``auditor`` it would import that
    instead of the package. It is therefore started with ``PYTHONSAFEPATH=1`` (Python >= 3.11; on 3.10 nothing
    is preloaded, and the workers import the package after taking the parent's ``sys.path``)."""
    if os.name != "posix":
        return _SpawnContext()
    ctx = _ForkServerContext()
    if sys.version_info >= (3, 11):
        from multiprocessing import forkserver

        ctx.set_forkserver_preload(["auditor.index._preload"])
        saved = os.environ.get("PYTHONSAFEPATH")
        os.environ["PYTHONSAFEPATH"] = "1"
        try:
            forkserver.ensure_running()  # started once per process; later pools reuse it
        finally:
            if saved is None:
                os.environ.pop("PYTHONSAFEPATH", None)
            else:
                os.environ["PYTHONSAFEPATH"] = saved
    return ctx


def start_worker_server(icfg) -> None:
    """Start the pool's forkserver now, if this config will use one, so that its preload (the pipeline's imports,
    ~1 s of CPU) runs on another core while the caller still imports and lists; the pool started later reuses it.
    The ``auditor index`` command calls this first thing (issue 18: the fixed cost of a 1,000-file run)."""
    from .threads import resolve_workers

    if icfg.engine == "local" and resolve_workers(icfg.workers) > 0:
        worker_context()


def guess_pool(argv: list[str]) -> bool:
    """Whether ``auditor index`` with these arguments will likely use the local pool: not when a flag or a
    ``--set`` names ``workers`` 0 or another engine, nor for ``--help``. (A ``--config`` file saying so is not
    read here: the server is then started for nothing and exits with the command.)"""
    if any(a in ("-h", "--help") for a in argv):
        return False
    pairs = list(zip(argv, argv[1:] + [""]))
    values = {"workers": [], "engine": []}
    for a, nxt in pairs:
        for name in values:
            if a == f"--{name}":
                values[name].append(nxt)
            elif a.startswith(f"--{name}="):
                values[name].append(a.split("=", 1)[1])
            elif a.startswith(f"index.{name}="):
                values[name].append(a.split("=", 1)[1])
    workers = values["workers"][-1].strip() if values["workers"] else None
    engine = values["engine"][-1].strip() if values["engine"] else "local"
    return engine == "local" and workers not in ("0", "0.0")


def prestart(argv: list[str]) -> None:
    """Start the pool's forkserver now if :func:`guess_pool` says the command will use it; never fails (the
    command itself then reports whatever is wrong with its arguments)."""
    try:
        if os.name == "posix" and guess_pool(argv):
            worker_context()
    except Exception:  # noqa: BLE001 - an optimisation only: the pool starts its server later as before
        pass
