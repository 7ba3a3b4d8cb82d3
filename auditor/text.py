"""Text helpers shared by the report, the gate and the guard: text from a run (captions, keys, error messages)
made safe for one line of a terminal, XML, a markdown table or an HTML page.

Nothing here knows a stage: the report (``report/markdown.py``, ``report/render.py``), the gate (``gate.py``) and
the guard's CLI import it, and no longer import each other for these helpers.

Example:
    >>> clean_text("evil\\x1b[31m caption\\u202e", 40)
    'evil\\ufffd[31m caption'
    >>> md_cell("a|b\\nc")
    'a\\\\|b c'
"""

from __future__ import annotations

import html
import re
from typing import Any, Optional

# control characters (ANSI escapes, what XML 1.0 forbids), lone surrogates and non-characters; bidi overrides
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f]")
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~])")
# what a terminal, an editor or GitHub would act on instead of showing: C0 and C1 controls (ESC starts ANSI escape
# sequences; tab and newline are whitespace, collapsed by the callers), DEL, lone surrogates, noncharacters, and the
# bidi embeddings, overrides, isolates and marks (U+202E shows text reversed)
_INVISIBLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff"
                        "\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")


def clean_text(s: Any, n: int = 120) -> str:
    """One line, no control characters (ANSI escapes, characters XML 1.0 forbids), no bidi overrides, at most
    ``n`` characters (an ellipsis marks a cut)."""
    s = "" if s is None else str(s)
    s = _BIDI.sub("", _CONTROL.sub("\ufffd", s))
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 1] + "\u2026"


def strip_controls(text: str) -> str:
    r"""``text`` without control characters, bidi controls and lone surrogates.

    Example:
        >>> strip_controls("cat\x1b[31m red\u202egnp.exe")
        'cat[31m redgnp.exe'
    """
    return _INVISIBLE.sub("", text)


def clip(text: Any, n: int) -> str:
    """``text`` cut to ``n`` characters with an ellipsis; ``""`` for None or NaN."""
    if text is None or (isinstance(text, float) and text != text):
        return ""
    text = str(text)
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def pct(x: Optional[float]) -> str:
    """A fraction as a percentage with two decimals; an en dash for None."""
    return "\u2013" if x is None else f"{100.0 * float(x):.2f}%"


def md_cell(text: Any, n: int = 120) -> str:
    """Markdown-table-safe text: HTML escaped (GitHub renders inline HTML), markdown punctuation escaped,
    one line, at most ``n`` characters.

    Example:
        ```python
        md_cell("a|b\\nc")   # 'a\\\\|b c'
        ```
    """
    s = " ".join(strip_controls("" if text is None else str(text)).split())
    s = clip(s, n)
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return html.escape(s, quote=False)
