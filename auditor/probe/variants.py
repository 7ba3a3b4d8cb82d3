"""Caption variants probed for each risky caption.

``exact`` (the training caption as stored), ``normalized`` (:func:`auditor.utils.normalize_caption`: NFKC,
casefold, punctuation dropped), ``prefix`` (the first ``fraction`` of the words, e.g. ``prefix50``; memorized
prompts are often triggered by a few key tokens, Wen et al. 2024), and user-supplied variants from a file:
JSON ``{"caption": ["prompt", ...]}`` or CSV with columns ``caption,prompt`` (named ``user1``, ``user2``, ...).
A variant whose prompt equals an earlier variant's prompt is dropped.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Optional, Sequence

from ..utils import normalize_caption


def load_user_variants(path: Optional[str]) -> dict[str, list[str]]:
    if not path:
        return {}
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    out: dict[str, list[str]] = {}
    if p.suffix.lower() == ".json":
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: expected a JSON object {{caption: [prompt, ...]}}")
        for cap, prompts in doc.items():
            if isinstance(prompts, str):
                prompts = [prompts]
            out[str(cap)] = [str(x) for x in prompts]
        return out
    rows = csv.DictReader(text.splitlines())
    if not rows.fieldnames or not {"caption", "prompt"} <= set(rows.fieldnames):
        raise ValueError(f"{path}: expected CSV columns caption,prompt")
    for r in rows:
        out.setdefault(r["caption"], []).append(r["prompt"])
    return out


def prefix(caption: str, fraction: float) -> str:
    words = caption.split()
    n = max(1, math.ceil(len(words) * fraction))
    return " ".join(words[:n])


def make_variants(caption: str, kinds: Sequence[str], prefix_fractions: Sequence[float] = (0.5,),
                  user: Optional[dict[str, list[str]]] = None) -> list[tuple[str, str]]:
    """``[(variant_name, prompt), ...]`` for one caption, without duplicate prompts, in a fixed order."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(name: str, prompt: str) -> None:
        if prompt and prompt not in seen:
            seen.add(prompt)
            out.append((name, prompt))

    for kind in kinds:
        if kind == "exact":
            add("exact", caption)
        elif kind == "normalized":
            add("normalized", normalize_caption(caption))
        elif kind == "prefix":
            for f in prefix_fractions:
                add(f"prefix{int(round(f * 100))}", prefix(caption, f))
        else:
            raise ValueError(f"unknown caption variant {kind!r}")
    for i, prompt in enumerate((user or {}).get(caption, []), start=1):
        add(f"user{i}", prompt)
    return out
