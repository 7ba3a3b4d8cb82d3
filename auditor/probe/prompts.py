"""``auditor probe --prompts FILE``: a published or red-team prompt list as the probe's input.

Reads CSV/TSV (any delimiter, sniffed by :class:`csv.Sniffer`), JSONL or parquet. Columns, matched
case-insensitively by name:

- the caption: ``caption``, ``prompt``, ``text`` or ``Caption`` (required);
- a reference image (optional): ``reference``, ``url``, ``path``, ``image`` or ``key`` — a path, a URL the user can
  reach, or an index key;
- a label (optional): ``label`` or ``type`` with values VM (verbatim memorized), TM (template memorized) or none.

The shipped ``memorized_laion_prompts.csv`` (``;``-separated, columns ``Caption;URL;type;...``) loads as it is.
Blank captions are dropped; the file order is kept; duplicates are kept once (first row).

The runner probes the list in file order as risk rows of their own (cluster ids -1, -2, ...; no cluster
members): with an index, the non-risky captions of the index calibrate. A row's reference (an index key, an
http(s) URL or a local path, :mod:`auditor.probe.prompt_refs`) is resolved for the rows probed only, and compared
first, ahead of the index's own images of the same caption (``reference_source = prompt_file:key|url|path``); one
that cannot be had is recorded in ``probe/errors.parquet`` and the caption is probed with its other references,
or with the reference-free signals (consistency, white-box) when it has none.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pandas as pd

CAPTION_NAMES = ("caption", "prompt", "text")
REFERENCE_NAMES = ("reference", "url", "path", "image", "key")
LABEL_NAMES = ("label", "type")
LABELS = {"vm": "VM", "tm": "TM", "none": "none", "n": "none", "": "none", "nan": "none"}


def _pick(columns, names) -> str | None:
    low = {str(c).strip().lower(): c for c in columns}
    return next((low[n] for n in names if n in low), None)


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if suffix in (".jsonl", ".ndjson"):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return pd.DataFrame([r if isinstance(r, dict) else {"caption": r} for r in rows])
    text = path.read_text(encoding="utf-8-sig")
    try:
        dialect = csv.Sniffer().sniff(text[:65536], delimiters=",;\t|")
        sep = dialect.delimiter
    except csv.Error:
        sep = ","
    return pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False)


def load_prompts(path: str | Path) -> pd.DataFrame:
    """DataFrame with columns caption, reference (str or None), label (VM/TM/none)."""
    from ..errors import UserError

    p = Path(path)
    if not p.is_file():
        raise UserError(f"probe: --prompts {path}: no such file")
    try:
        df = _read_table(p)
    except (ValueError, OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"probe: --prompts {path}: cannot read: {type(exc).__name__}: {exc}") from exc
    cap = _pick(df.columns, CAPTION_NAMES)
    if cap is None:
        raise UserError(f"probe: --prompts {path}: no caption column (one of {', '.join(CAPTION_NAMES)}); "
                        f"columns: {', '.join(map(str, df.columns))}")
    ref = _pick(df.columns, REFERENCE_NAMES)
    lab = _pick(df.columns, LABEL_NAMES)
    out = pd.DataFrame({"caption": df[cap].astype(str).str.strip()})
    out["reference"] = df[ref].astype(str).str.strip().replace("", None) if ref is not None else None
    if lab is not None:
        raw = df[lab].astype(str).str.strip()
        bad = sorted(set(raw[~raw.str.lower().isin(LABELS)]))
        if bad:
            raise UserError(f"probe: --prompts {path}: label values must be VM, TM or none; got {bad[:5]}")
        out["label"] = raw.str.lower().map(LABELS)
    else:
        out["label"] = "none"
    out = out[out["caption"] != ""].drop_duplicates("caption").reset_index(drop=True)
    return out


def prompts_as_risk(prompts: pd.DataFrame) -> pd.DataFrame:
    """The prompt list as risk rows (rank = file order), the shape the runner selects from."""
    from ..utils import caption_hash

    n = len(prompts)
    return pd.DataFrame({
        "rank": range(1, n + 1), "cluster_id": [-(i + 1) for i in range(n)], "cluster_size": 1,
        "caption": prompts["caption"].tolist(), "caption_hash": [caption_hash(c) for c in prompts["caption"]],
        "representative_key": None, "representative_shard": None, "is_placeholder": False,
        "label": prompts["label"].tolist(), "reference": prompts["reference"].tolist(),
    })
