"""``auditor`` command line: one sub-command per stage.

Every sub-command takes ``--config FILE`` (YAML over the defaults in configs/default.yaml) and repeatable
``--set dotted.key=value`` overrides. Stage modules register their own sub-commands through a
``register(subparsers)`` function listed in ``STAGE_CLIS``; a stage that fails to import (an optional
dependency missing) is reported when its command is used, not at start-up.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__

# module path -> the sub-commands it registers (kept here so `auditor --help` lists them without imports)
STAGE_CLIS: dict[str, tuple[str, ...]] = {
    "auditor.index.cli": ("index",),
    "auditor.dedup.cli": ("dedup", "apply-manifest"),
    "auditor.probe.cli": ("probe",),
    "auditor.report.cli": ("report",),
    "auditor.gate": ("gate",),
    "auditor.guard": ("guard",),
    "auditor.lab.cli": ("lab", "demo"),
}


def add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config over the defaults (see configs/default.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set index.workers=4 (repeatable)")


def config_from_args(args: argparse.Namespace):
    from .config import load_config

    return load_config(getattr(args, "config", None), getattr(args, "overrides", []) or [])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="auditor", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"auditor {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module, commands in STAGE_CLIS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("auditor"):
                continue  # stage not built yet
            for c in commands:
                p = sub.add_parser(c, help=f"(unavailable: {exc})")
                p.set_defaults(func=lambda a, e=exc: _unavailable(e))
            continue
        mod.register(sub)
    return parser


def _unavailable(exc: Exception) -> int:
    print(f"auditor: this command needs a package that is not installed: {exc}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except OSError as exc:  # disk full, permission denied, a path that is not a folder, ...: one clear line
        if args.verbose:
            logging.getLogger("auditor").exception("%s failed", args.command)
        print(f"auditor: error: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror and not str(exc).startswith("["):
        text = f"{text} ({exc.strerror})"
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
