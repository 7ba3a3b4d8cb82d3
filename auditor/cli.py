"""auditor command line: one sub-command per stage.

Every stage command (index, dedup, apply-manifest, probe, report, guard, lab, demo) takes ``--config FILE`` (YAML
over the defaults in auditor/configs/default.yaml, or a shipped name such as carlini2023) and repeatable
``--set dotted.key=value`` overrides; ``gate`` takes ``--policy FILE_OR_NAME``. Stage modules register their own
sub-commands through a ``register(subparsers)`` function listed in ``STAGE_CLIS``; a stage that fails to import
(an optional dependency missing) is reported when its command is used, not at start-up.

Paths given on the command line are made absolute once, as they are read (the argparse ``type=`` helpers of ``auditor/cliutil.py``),
so nothing later depends on the current folder. A mistake prints one ``auditor: error: ...`` line: exit 2 for a
bad argument or configuration (:class:`auditor.errors.UserError`), exit 1 for a runtime failure; ``-v`` adds the
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .errors import UserError

# module path -> the sub-commands it registers (kept here so `auditor --help` lists them without imports)
STAGE_CLIS: dict[str, tuple[str, ...]] = {
    "auditor.index.cli": ("index",),
    "auditor.dedup.cli": ("dedup", "apply-manifest"),
    "auditor.probe.cli": ("probe",),
    "auditor.report.cli": ("report",),
    "auditor.gate": ("gate",),
    "auditor.guard.cli": ("guard",),
    "auditor.lab.cli": ("lab", "demo"),
}

log = logging.getLogger("auditor")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``auditor: error: index: the following arguments are required: --out``,
    exit 2 (sub-command parsers inherit it)."""

    def error(self, message: str):
        sub = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        where = f"{sub}: " if sub else ""
        self.exit(2, f"auditor: error: {where}{' '.join(message.split())} (see '{self.prog} --help')\n")


# the helpers the stage CLIs share live in auditor/cliutil.py (stage CLIs never import this module); re-exported
# for older callers
from .cliutil import (abs_path, add_config_options, config_file, config_from_args, dataset_path,  # noqa: E402,F401
                      require_dir, writable_dir)


def command_of(argv: list[str]) -> str | None:
    """The sub-command ``argv`` names when it is one of :data:`STAGE_CLIS`' (the first argument that is not
    ``-v``), else None.

    Example:
        >>> command_of(["-v", "index", "photos/"]), command_of(["--help"]), command_of(["indx"])
        ('index', None, None)
    """
    for a in argv:
        if a in ("-v", "--verbose"):
            continue
        return a if any(a in cmds for cmds in STAGE_CLIS.values()) else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole CLI; ``only``: just that sub-command's stage module is imported (``main`` passes the command the
    arguments name: importing every stage's CLI -- dedup, probe, report, guard, lab -- cost ~0.7 s of a 3,000-photo
    ``auditor index``, measured on the 2-core CI machine). ``--help``, no command or an unknown one build it all."""
    parser = ArgumentParser(prog="auditor", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"auditor {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module, commands in STAGE_CLIS.items():
        if only is not None and only not in commands:
            continue
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("auditor"):
                continue  # stage not built yet
            for c in commands:
                p = sub.add_parser(c, help=f"(unavailable: {exc})")
                p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)  # any arguments: one line
                p.set_defaults(func=lambda a, e=exc, c=c: _unavailable(e, c))
            continue
        mod.register(sub)
    return parser


def _unavailable(exc: Exception, command: str | None = None) -> int:
    from .extras import missing_extra

    raise missing_extra(exc, command) or UserError(f"this command needs a package that is not installed: {exc}")


def main(argv: list[str] | None = None) -> int:
    """The ``auditor`` command (``argv``: the arguments after the program name; None: ``sys.argv[1:]``)."""
    try:
        return _main(argv)
    finally:
        if argv is None:  # the command itself, which exits next (not a caller's in-process call):
            # the interpreter's final collections walk every object the stages imported (numpy, pyarrow, pandas,
            # pydantic); frozen, they are skipped -- 0.2 s of a 3,000-photo ``auditor index`` (BENCHMARKS.md §1)
            import gc

            gc.freeze()


def _main(argv: list[str] | None) -> int:
    argv_list = sys.argv[1:] if argv is None else list(argv)
    command = command_of(argv_list)
    if command == "index":  # the pool's forkserver preloads on the other core while this process imports
        from .index.workerctx import prestart

        prestart(argv_list[argv_list.index("index") + 1:])
    parser = build_parser(only=command)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("auditor: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure is one line; -v adds the traceback
        from .extras import missing_extra  # a missing optional extra is one line naming it, exit 2

        exc = missing_extra(exc, args.command) or exc
        code = exit_code(exc)
        if args.verbose:
            log.exception("%s failed", args.command)
        hint = "" if code == 2 or args.verbose else " (auditor -v ... shows the traceback)"
        print(f"auditor: error: {error_line(exc)}{hint}", file=sys.stderr)
        return code


def exit_code(exc: BaseException) -> int:
    """2 for the user's mistakes (bad arguments, configuration, missing inputs or weights), 1 for the rest."""
    from pydantic import ValidationError

    if isinstance(exc, UserError):
        return exc.exit_code
    if isinstance(exc, (ValidationError, FileNotFoundError)):  # a missing input: run the stage before it
        return 2
    try:
        from .index.embedders.base import EmbedderWeightsError
    except ImportError:  # pragma: no cover - the index stage not importable
        return 1
    return 2 if isinstance(exc, EmbedderWeightsError) else 1


def error_line(exc: BaseException, width: int = 1500) -> str:
    """The exception as one line: user errors and OSErrors as their message, other failures with their type."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        from .config import validation_message

        text = f"bad configuration: {validation_message(exc)}"
    else:
        text = str(exc) or type(exc).__name__
        if isinstance(exc, OSError) and exc.errno is not None and exc.strerror and not text.startswith("["):
            text = f"{text} ({exc.strerror})"
        elif not isinstance(exc, (UserError, OSError)) and exit_code(exc) == 1:
            text = f"{type(exc).__name__}: {text}"
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


if __name__ == "__main__":
    sys.exit(main())
