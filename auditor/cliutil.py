"""What every stage's command line shares: the argparse ``type=`` helpers that make each user path absolute once,
the checks a command runs before any work, ``--config`` / ``--set``, and the flag tables.

The stage CLIs (``auditor/*/cli.py``, ``gate.py``) import this module, never ``auditor/cli.py``: the entry point
sits at the top of the import graph and only wires the stages' ``register`` functions.

A command declares its flags as a table of dotted config keys (``FLAGS = {"workers": "index.workers", ...}``);
:func:`flag_values` turns the flags given into the nested mapping :func:`config_from_args` lays over
``--config`` and ``--set`` (explicit flags win).

Example:
    >>> import argparse
    >>> ns = argparse.Namespace(workers=4, engine=None)
    >>> flag_values(ns, {"workers": "index.workers", "engine": "index.engine"})
    {'index': {'workers': 4}}
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Mapping, Optional

from .errors import UserError


# --- argparse type= helpers: every user path is made absolute here, once --------------------------------------

def abs_path(value: str) -> str:
    """A local path as an absolute one (``~`` expanded); nothing is checked yet."""
    if not value:
        raise argparse.ArgumentTypeError("an empty path")
    return str(Path(value).expanduser().absolute())


def dataset_path(value: str) -> str:
    """A dataset root: fsspec URLs (``s3://...``) as given, ``file://`` and local paths made absolute."""
    if "://" in value and not value.startswith("file://"):
        return value
    if value.startswith("file://"):
        return "file://" + abs_path(value[len("file://"):])
    return abs_path(value)


def config_file(value: str) -> str:
    """``--config`` / ``--policy``: an existing YAML file (made absolute) or the name of a shipped one."""
    from .config import resolve_config_file

    try:
        return str(resolve_config_file(value))
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("bad configuration: ", "")) from None


# --- checks the commands run before any work ---------------------------------------------------------------

def require_dir(path: str | os.PathLike, what: str = "RUN_DIR") -> Path:
    """``path`` must be an existing folder (a file or a missing path is a :class:`UserError`)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} {p} does not exist")
    if not p.is_dir():
        raise UserError(f"{what} {p} is a file; give a folder")
    return p


def writable_dir(path: str | os.PathLike, what: str = "--out", empty: bool = False) -> Path:
    """``path`` may be created: it is missing or a folder (and, with ``empty``, an empty one)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} {p} is a file; give a folder")
    if empty and p.is_dir() and any(p.iterdir()):
        raise UserError(f"{what} {p} is not empty: pass a new or empty folder")
    return p


# --- configuration -----------------------------------------------------------------------------------------

def add_config_options(p: argparse.ArgumentParser) -> None:
    """``--config FILE_OR_NAME`` and repeatable ``--set dotted.key=value``."""
    p.add_argument("--config", metavar="FILE", type=config_file,
                   help="YAML config over the defaults: a path, or a shipped name (default, carlini2023)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set index.workers=4 (repeatable)")


def flag_values(args: argparse.Namespace, table: Mapping[str, str]) -> dict:
    """The flags of ``table`` (argparse dest -> dotted config key) the user gave (not None), as a nested mapping.
    A flag whose dest is missing from ``args`` counts as not given."""
    out: dict[str, Any] = {}
    for dest, key in table.items():
        val = getattr(args, dest, None)
        if val is None:
            continue
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = val
    return out


def config_from_args(args: argparse.Namespace, base: Optional[dict] = None, top: Optional[dict] = None,
                     model=None):
    """The config of ``--config`` and ``--set`` (over ``base``, under ``top``: a command's explicit flags),
    validated by ``model`` (default :class:`auditor.config.AuditorConfig`); a mistake is a one-line ConfigError
    (exit 2)."""
    from .config import AuditorConfig, load_config

    return load_config(getattr(args, "config", None), getattr(args, "overrides", []) or [], base=base, top=top,
                       model=model or AuditorConfig)
