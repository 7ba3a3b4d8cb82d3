"""Paths as the report shows them: never the absolute local path of the machine the report was made on.

A report is shared (attached to a pull request, a model card, a ticket); the folder layout of whoever ran
``auditor report`` is none of its readers' business and makes two reports of the same run differ. Every path the
report, ``summary.md`` and ``summary.json`` show goes through :class:`PathScrubber`:

- inside the run folder: relative to it (``probe/evidence/...``; the run folder itself is ``.``);
- a known folder outside it (the dataset root, a local model folder, the report's own folder): its name only,
  then the rest of the path below it (``dataset/00000.tar``);
- any other absolute local path found in free text (an error message, a provenance value): ``…/`` plus its last
  component.

Remote URLs (``s3://``, ``https://``) are not local paths and are left as they are.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Optional

# an absolute POSIX path in free text: starts at "/" (or "~/") not preceded by a word character, ":" or "/"
# (so the path part of "s3://bucket/x" or "https://host/x", and dates such as 2024/01/01, are not matched),
# has at least two components ("/tmp/x"; a lone "/b" is more often "</b>" or "and/or" than a path), and runs to
# the next whitespace or quote. Windows drive paths ("C:\\...") likewise.
_C = r"""[^\s"'<>`|,;()\[\]{}/\\]"""  # one character of a path component
_ABS = re.compile(rf"""(?<![\w:/.~\\<-])(?:~?/|[A-Za-z]:[\\/]){_C}+(?:[/\\]{_C}*)+""")
_END = r"""(?=[/\\\s"'<>`|,;:()\[\]{}]|$)"""  # a known folder's prefix ends the path or a component


def _norm(p: str) -> str:
    return p.rstrip("/\\") or p


class PathScrubber:
    """Rewrites local absolute paths for display.

    Example:
        ```python
        s = PathScrubber(run_dir="/tmp/x/run", named=["/tmp/x/dataset"])
        s.path("/tmp/x/run/probe/a.png")     # 'probe/a.png'
        s.path("/tmp/x/dataset")             # 'dataset'
        s.text("cannot read /home/me/data/b.jpg: truncated")  # 'cannot read …/b.jpg: truncated'
        s.obj({"root": "/tmp/x/dataset/00000.tar"})            # {'root': 'dataset/00000.tar'}
        ```
    """

    def __init__(self, run_dir: Optional[str | os.PathLike] = None, named: Iterable[Optional[str]] = ()):
        self.roots: list[tuple[str, str]] = []  # (absolute prefix, what replaces it), longest first
        if run_dir is not None:
            for form in _forms(run_dir):
                self.roots.append((form, "."))
        for n in named:
            if n and _is_local_abs(str(n)):
                for form in _forms(n):
                    self.roots.append((form, PurePosixPath(_norm(str(n)).replace("\\", "/")).name or "."))
        self.roots.sort(key=lambda r: -len(r[0]))

    def path(self, p: Any) -> Any:
        """A path value shown on its own (the whole string is a path)."""
        if not isinstance(p, str) or not _is_local_abs(p):
            return p if not isinstance(p, str) else self.text(p)
        return self._one(p)

    def _one(self, p: str) -> str:
        q = _norm(p)
        for prefix, repl in self.roots:
            if q == prefix:
                return repl
            for sep in ("/", "\\"):
                if q.startswith(prefix + sep):
                    rest = q[len(prefix) + 1:]
                    return rest if repl == "." else f"{repl}/{rest}"
        name = PurePosixPath(q.replace("\\", "/")).name
        return f"\u2026/{name}" if name else "\u2026"

    def text(self, s: Any) -> Any:
        """Free text: every absolute local path in it rewritten (known folders first, so that one whose name
        holds a space is still replaced whole)."""
        if not isinstance(s, str) or ("/" not in s and "\\" not in s):
            return s
        for prefix, repl in self.roots:
            if prefix in s:
                s = re.sub(re.escape(prefix) + _END, repl.replace("\\", "\\\\"), s)
        return _ABS.sub(lambda m: self._one(m.group(0)) if _is_local_abs(m.group(0)) else m.group(0), s)

    def obj(self, o: Any) -> Any:
        """A JSON-like value (dict / list / str / number) with every string rewritten."""
        if isinstance(o, str):
            return self.text(o)
        if isinstance(o, dict):
            return {k: self.obj(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [self.obj(v) for v in o]
        return o


def _is_local_abs(p: str) -> bool:
    if "://" in p:
        return False
    if p.startswith("~/") or p == "~":
        return True
    if re.match(r"^[A-Za-z]:[\\/]", p):
        return True
    return p.startswith("/") and p != "/"


def _forms(p: str | os.PathLike) -> list[str]:
    """The spellings of one folder that may appear in stored text: as given, absolute, and with links resolved."""
    s = str(p)
    out = {_norm(s)}
    try:
        out.add(_norm(str(Path(s).expanduser().absolute())))
        out.add(_norm(str(Path(s).expanduser().resolve())))
    except (OSError, RuntimeError):
        pass
    return sorted(x for x in out if _is_local_abs(x))


def display_name(p: Any) -> Optional[str]:
    """The last component of a local path or URL, for titles ("/data/laion-subset/" -> "laion-subset").
    A hub id such as ``CompVis/stable-diffusion-v1-4`` (not a local path) is returned whole."""
    if p is None:
        return None
    s = _norm(str(p))
    if not s:
        return None
    if "://" in s:
        return s.split("://", 1)[1].rstrip("/").rsplit("/", 1)[-1] or s
    if _is_local_abs(s) or s.startswith((".", "..")) or os.sep in s and Path(s).exists():
        return PurePosixPath(s.replace("\\", "/")).name or s
    return s
