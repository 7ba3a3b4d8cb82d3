"""Optional extras: which ``pip install 'auditor[EXTRA]'`` a command needs, said in one line when it is missing.

The core install (``pip install auditor``) indexes with hashes and the shipped ONNX descriptor and runs dedup,
apply-manifest, report and gate. Heavier features live in extras (pyproject.toml): ``embed`` (torch, open_clip),
``probe`` (torch, diffusers, transformers), ``lab`` (img2dataset, scikit-image), ``ray``, ``s3``, ``gcs``, ``hf``.
Heavy modules are imported lazily where they are used; :func:`missing_extra` turns the ``ModuleNotFoundError`` such
an import raises into :class:`MissingExtra` (a :class:`~auditor.errors.UserError`, exit 2) naming the extra, and
:func:`require` checks up front.

Example:
    >>> from auditor.extras import extra_for_module
    >>> extra_for_module("diffusers")
    'probe'
"""
from __future__ import annotations

import importlib.util

from .errors import UserError

# top-level module -> the extra that provides it
_MODULE_EXTRA = {
    "open_clip": "embed", "torchvision": "embed",
    "diffusers": "probe", "transformers": "probe", "accelerate": "probe", "networkx": "probe",
    "requests": "probe",
    "img2dataset": "lab", "skimage": "lab",
    "ray": "ray", "s3fs": "s3", "gcsfs": "gcs", "huggingface_hub": "hf",
    "imagededup": "bench",
}
# a module several extras provide (torch): the extra follows the command
_COMMAND_EXTRA = {"probe": "probe", "lab": "demo", "demo": "demo", "index": "embed", "guard": "embed"}


class MissingExtra(UserError):
    """An optional dependency is not installed; the message names the extra to install."""


def extra_for_module(module: str, command: str | None = None) -> str | None:
    """The extra that provides top-level ``module`` (``None`` when it is not an extra's).

    Example:
        >>> extra_for_module("torch", command="probe")
        'probe'
    """
    top = module.split(".")[0]
    if top == "torch":
        return _COMMAND_EXTRA.get(command or "", "embed")
    return _MODULE_EXTRA.get(top)


def message(extra: str, command: str | None = None) -> str:
    """The one line: ``'auditor probe' needs the [probe] extra: pip install 'auditor[probe]'``."""
    who = f"'auditor {command}'" if command else "this feature"
    return f"{who} needs the [{extra}] extra: pip install 'auditor[{extra}]'"


def missing_extra(exc: BaseException, command: str | None = None) -> MissingExtra | None:
    """``exc`` as :class:`MissingExtra` when it is a ``ModuleNotFoundError`` of an extra's module, else ``None``."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    extra = extra_for_module(exc.name, command)
    if extra is None:
        return None
    err = MissingExtra(message(extra, command))
    err.__cause__ = exc
    return err


def require(extra: str, *modules: str, command: str | None = None) -> None:
    """Raise :class:`MissingExtra` unless every one of ``modules`` can be imported.

    Example:
        >>> require("probe", "json")   # a module that is there: nothing happens
    """
    for mod in modules:
        if importlib.util.find_spec(mod) is None:
            raise MissingExtra(message(extra, command))
