"""The user's mistakes, as exceptions the command line turns into one ``auditor: error: ...`` line.

Code that validates what a user gave (a path, a config key, a model folder) raises :class:`UserError` or
:class:`ConfigError`; ``auditor.cli.main`` prints the message on one line and exits with
:attr:`UserError.exit_code` (2). Every other exception is a runtime failure: one line, exit 1, and the traceback
only with ``auditor -v``. Library callers get ordinary exceptions (``ConfigError`` is a ``ValueError``).

Example:
    >>> from auditor.errors import ConfigError
    >>> str(ConfigError("index.wrokers: unknown key (did you mean index.workers?)"))
    'bad configuration: index.wrokers: unknown key (did you mean index.workers?)'
"""

from __future__ import annotations


class UserError(Exception):
    """A bad argument or input the user can fix: one line, exit 2, no traceback."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A bad ``--config`` file or ``--set`` override, or a config that does not validate."""

    def __str__(self) -> str:
        text = super().__str__()
        return text if text.startswith("bad configuration") else f"bad configuration: {text}"


class ConfigMismatch(UserError, ValueError):
    """A run folder was made with another config than the one given now (resume needs the same config)."""


def differences(old, new, prefix: str = "", limit: int = 12) -> list[str]:
    """The keys where two nested config dicts differ, as ``dotted.key: old -> new`` lines (at most ``limit``,
    then ``... and N more``).

    Example:
        >>> differences({"probe": {"top_n": 20, "steps": 50}}, {"probe": {"top_n": 50, "steps": 50}})
        ['probe.top_n: 20 -> 50']
    """
    out: list[str] = []

    def walk(a, b, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in list(a) + [k for k in b if k not in a]:
                walk(a.get(k, _MISSING), b.get(k, _MISSING), f"{path}.{k}" if path else str(k))
        elif a != b:
            out.append(f"{path or '(value)'}: {_short(a)} -> {_short(b)}")

    walk(old, new, prefix)
    if len(out) > limit:
        out = out[:limit] + [f"... and {len(out) - limit} more"]
    return out


class _Missing:
    def __repr__(self) -> str:
        return "(absent)"


_MISSING = _Missing()


def _short(v, width: int = 80) -> str:
    text = repr(v) if isinstance(v, (str, _Missing)) else str(v)
    return text if len(text) <= width else text[: width - 3] + "..."
