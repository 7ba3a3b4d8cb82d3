"""Read whatever a run folder holds (index, dedup, probe) into one object, and reduce it to the numbers the
report, ``summary.json`` and ``auditor gate`` share.

Every stage folder may be missing or partly unreadable: :func:`load_run` never raises for that, it records
what it could not read in ``RunData.missing`` / ``RunData.problems`` and leaves the field ``None``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from ..rundir import (CAPTIONS, CLUSTERS, DEDUP_DIR, DEDUP_SUMMARY, GENERATIONS, INDEX_DIR, INDEX_JSON, MANIFEST,
                      PROBE_DIR, PROVENANCE, RESULTS, RISK, RunDir)
from ..text import clip
from .paths import PathScrubber, display_name

EXTRACTED_VERDICTS = ("verbatim", "template")
VERDICT_ORDER = {"verbatim": 0, "template": 1, "none": 2, "error": 3}

RESULT_COLUMNS = ["caption", "variant", "cluster_id", "cluster_size", "n_generations", "verbatim_count",
                  "template_count", "verdict"]
MANIFEST_COLUMNS = ["key", "shard", "cluster_id", "cluster_size", "is_representative", "keep"]
CLUSTER_COLUMNS = ["cluster_id", "size"]
RISK_COLUMNS = ["rank", "cluster_id", "caption"]


@dataclass
class RunData:
    run_dir: Path
    name: str
    index: Any = None                       # auditor.index.store.IndexStore
    index_table: Optional[pd.DataFrame] = None
    manifest: Optional[pd.DataFrame] = None
    clusters: Optional[pd.DataFrame] = None
    risk: Optional[pd.DataFrame] = None
    captions: Optional[pd.DataFrame] = None  # dedup/captions.parquet (optional: computed from the index if absent)
    dedup_summary: Optional[dict] = None
    results: Optional[pd.DataFrame] = None
    generations: Optional[pd.DataFrame] = None
    provenance: Optional[dict] = None
    missing: list[str] = field(default_factory=list)    # stage outputs that do not exist
    problems: list[str] = field(default_factory=list)   # outputs that exist but could not be read

    @property
    def probe_dir(self) -> Path:
        return self.run_dir / PROBE_DIR


def run_name(run_dir: str | Path) -> str:
    return Path(run_dir).resolve().name or "run"


def dataset_root(data: RunData) -> Optional[str]:
    if data.index is None:
        return None
    root = (data.index.info.get("dataset") or {}).get("root")
    return str(root) if root else None


def model_ref(data: RunData) -> tuple[Optional[str], Optional[str]]:
    """(the probed model as recorded in probe/provenance.json, its local folder when it is one)."""
    prov = data.provenance or {}
    g = prov.get("generator")
    if not isinstance(g, dict):  # a hand-written provenance: {"model": ...}
        g = {"model": prov.get("model")}
    folder = g.get("model_folder")
    model = g.get("model") or g.get("callable") or g.get("url")
    return (str(model) if model else None), (str(folder) if folder else None)


def _label(path: Optional[str], run_dir: Path, local: bool) -> Optional[str]:
    """A short name for a dataset or model: the folder's name, with its parent's when it sits beside the run
    folder (``auditor-demo/dataset`` for the demo's ``auditor-demo/{dataset,run}``); a hub id as it is."""
    if not path:
        return None
    name = display_name(path)
    if local:
        try:
            p, r = Path(path).resolve(), run_dir.resolve()
            if p.parent == r.parent and p.parent.name:
                return f"{p.parent.name}/{p.name}"
        except (OSError, RuntimeError):
            pass
    return name


def labels(data: RunData) -> dict:
    """``dataset``, ``model`` (short names, no local path) and the report ``title`` naming both."""
    root = dataset_root(data)
    model, folder = model_ref(data)
    ds = _label(root, data.run_dir, root is not None and "://" not in root)
    md = _label(folder, data.run_dir, True) if folder else (display_name(model) if model else None)
    parts = ([f"dataset {ds}"] if ds else []) + ([f"model {md}"] if md else [])
    return {"dataset": ds, "model": md, "title": ", ".join(parts) if parts else f"run {data.name}"}


def scrubber(data: RunData) -> PathScrubber:
    """Rewrites the run's local paths for display (see :mod:`auditor.report.paths`)."""
    model, folder = model_ref(data)
    return PathScrubber(data.run_dir, [dataset_root(data), folder, model])


def _read_parquet(data: RunData, path: Path, required: list[str]) -> Optional[pd.DataFrame]:
    rel = path.relative_to(data.run_dir).as_posix()
    if not path.exists():
        data.missing.append(rel)
        return None
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # a truncated/corrupt file must not kill the report
        data.problems.append(f"{rel}: unreadable ({type(exc).__name__}: {exc})")
        return None
    absent = [c for c in required if c not in df.columns]
    if absent:
        data.problems.append(f"{rel}: missing columns {absent}")
        return None
    return df


def _read_json(data: RunData, path: Path) -> Optional[dict]:
    rel = path.relative_to(data.run_dir).as_posix()
    if not path.exists():
        data.missing.append(rel)
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except Exception as exc:
        data.problems.append(f"{rel}: unreadable ({type(exc).__name__}: {exc})")
        return None
    if not isinstance(obj, dict):
        data.problems.append(f"{rel}: not a JSON object")
        return None
    return obj


def load_run(run_dir: str | Path) -> RunData:
    """Load every stage output that exists. Raises ``FileNotFoundError`` only when ``run_dir`` itself is absent."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    data = RunData(run_dir=run_dir, name=run_name(run_dir))

    # index
    run = RunDir(run_dir)
    if run.index_json.exists():
        try:
            from ..index.store import IndexStore

            data.index = IndexStore(run_dir)
            _ = data.index.info
            data.index_table = data.index.table(columns=["key", "shard", "caption", "caption_hash"])
        except Exception as exc:
            data.problems.append(f"index: unreadable ({type(exc).__name__}: {exc})")
            data.index = None
            data.index_table = None
    else:
        data.missing.append(f"{INDEX_DIR}/{INDEX_JSON}")

    # dedup
    d = run.dedup
    if d.is_dir():
        data.manifest = _read_parquet(data, d / MANIFEST, MANIFEST_COLUMNS)
        data.clusters = _read_parquet(data, d / CLUSTERS, CLUSTER_COLUMNS)
        data.risk = _read_parquet(data, d / RISK, RISK_COLUMNS)
        data.dedup_summary = _read_json(data, d / DEDUP_SUMMARY)
        if (d / CAPTIONS).exists():  # optional output; not listed as missing
            data.captions = _read_parquet(data, d / CAPTIONS, ["caption", "count", "n_clusters"])
    else:
        data.missing.append(f"{DEDUP_DIR}/")

    # probe
    p = run.probe
    if p.is_dir():
        data.results = _read_parquet(data, p / RESULTS, RESULT_COLUMNS)
        data.generations = _read_parquet(data, p / GENERATIONS, ["caption", "variant", "path"])
        data.provenance = _read_json(data, p / PROVENANCE)
    else:
        data.missing.append(f"{PROBE_DIR}/")
    return data


# ------------------------------------------------------------------------------------------------------------
# numbers


def _num(x: Any) -> Any:
    """JSON-friendly scalar (numpy -> python, NaN -> None)."""
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return None if math.isnan(x) else x
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def cluster_sizes(data: RunData) -> Optional[pd.DataFrame]:
    """One row per cluster (cluster_id, size, is_placeholder); singletons included when the manifest lists them."""
    if data.manifest is not None and len(data.manifest):
        sizes = data.manifest.groupby("cluster_id", sort=True).size().rename("size").reset_index()
    elif data.clusters is not None:
        sizes = data.clusters[["cluster_id", "size"]].copy()
    else:
        return None
    placeholder = set()
    if data.clusters is not None and "is_placeholder" in data.clusters.columns:
        placeholder = set(data.clusters.loc[data.clusters["is_placeholder"].fillna(False).astype(bool), "cluster_id"])
    sizes["is_placeholder"] = sizes["cluster_id"].isin(placeholder)
    return sizes


def size_histogram(sizes: pd.Series) -> list[dict]:
    """Cluster counts in power-of-two bins: 1, 2, 3-4, 5-8, 9-16, ..."""
    out: list[dict] = []
    if sizes is None or len(sizes) == 0:
        return out
    s = np.asarray(sizes, dtype=np.int64)
    hi_all = int(s.max())
    lo = 1
    while lo <= hi_all:
        hi = 1 if lo == 1 else (lo - 1) * 2
        n = int(((s >= lo) & (s <= hi)).sum())
        label = str(lo) if lo == hi else f"{lo}-{hi}"
        out.append({"bin": label, "min": lo, "max": hi, "clusters": n, "samples": int(s[(s >= lo) & (s <= hi)].sum())})
        lo = hi + 1
    return out


def duplicate_rate(data: RunData) -> Optional[float]:
    """Fraction of indexed samples that are a non-representative member of a duplicate cluster
    (``1 - clusters / samples``). Taken from dedup/summary.json when it states it, else from the manifest."""
    s = data.dedup_summary or {}
    for k in ("duplicate_rate", "dup_rate"):
        v = s.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    m = data.manifest
    if m is None:
        return None
    if len(m) == 0:
        return 0.0
    n_clusters = m["cluster_id"].nunique()
    return float(1.0 - n_clusters / len(m))


def probe_rows(data: RunData) -> Optional[pd.DataFrame]:
    r = data.results
    if r is None:
        return None
    r = r.copy()
    r["verdict"] = r["verdict"].fillna("error").astype(str)
    r["_order"] = r["verdict"].map(VERDICT_ORDER).fillna(9)
    sort_cols, asc = ["_order"], [True]
    for col, a in (("max_copy_similarity", False), ("min_tiled_l2", True), ("cluster_size", False),
                   ("caption", True), ("variant", True)):
        if col in r.columns:
            sort_cols.append(col)
            asc.append(a)
    return r.sort_values(sort_cols, ascending=asc, kind="mergesort", na_position="last").drop(columns="_order")


def extracted_captions(results: pd.DataFrame, verdicts=EXTRACTED_VERDICTS) -> list[str]:
    """Distinct captions with at least one probe result (any variant) whose verdict is in ``verdicts``."""
    hit = results[results["verdict"].isin(list(verdicts))]
    return sorted(set(hit["caption"].astype(str)))


def summarize(data: RunData, max_caption_chars: int = 300) -> dict:
    """The numbers every consumer shares (written as summary.json next to the report)."""
    scrub = scrubber(data)
    names = labels(data)
    out: dict[str, Any] = {"run": data.name, "title": names["title"], "missing": sorted(data.missing),
                           "problems": [scrub.text(p) for p in data.problems]}
    stages = {}
    stages["index"] = "ok" if data.index is not None else ("unreadable" if any(p.startswith("index") for p in data.problems) else "missing")
    dedup_ok = data.manifest is not None or data.clusters is not None
    stages["dedup"] = "ok" if dedup_ok else ("unreadable" if any(p.startswith("dedup") for p in data.problems) else "missing")
    stages["probe"] = "ok" if data.results is not None else ("unreadable" if any(p.startswith("probe") for p in data.problems) else "missing")
    out["stages"] = stages

    if data.index is not None:
        info = data.index.info
        ds = info.get("dataset") or {}
        out["index"] = {
            "dataset": names["dataset"],
            "dataset_root": scrub.path(ds.get("root")),
            "layout": ds.get("layout"),
            "n_shards": len(data.index.shard_ids()),
            "n_indexed": int(len(data.index_table)) if data.index_table is not None else None,
            "n_errors": int(len(data.index.errors())),
            "n_not_indexed": int(len(data.index.not_indexed())),
            "embedder": scrub.obj(data.index.embedder),
        }
        if data.index_table is not None:
            ch = data.index_table["caption_hash"].fillna("").astype(str)
            counts = ch[ch != ""].value_counts()
            out["index"]["n_distinct_captions"] = int(len(counts))
            out["index"]["max_caption_repeats"] = int(counts.max()) if len(counts) else 0

    sizes = cluster_sizes(data)
    if sizes is not None:
        dup = sizes[sizes["size"] > 1]
        real = sizes[~sizes["is_placeholder"]]
        out["dedup"] = {
            "n_samples": int(sizes["size"].sum()),
            "n_clusters": int(len(sizes)),
            "n_duplicate_clusters": int(len(dup)),
            "n_samples_in_duplicate_clusters": int(dup["size"].sum()),
            "duplicate_rate": _num(duplicate_rate(data)),
            "max_cluster_size": int(sizes["size"].max()) if len(sizes) else 0,
            "max_cluster_size_excluding_placeholders": int(real["size"].max()) if len(real) else 0,
            "n_placeholder_clusters": int(sizes["is_placeholder"].sum()),
            "n_removed_by_manifest": (int((~data.manifest["keep"].astype(bool)).sum())
                                      if data.manifest is not None else None),
            "cluster_size_histogram": size_histogram(sizes["size"]),
        }
    if data.risk is not None:
        out.setdefault("dedup", {})["n_risky"] = int(len(data.risk))

    rows = probe_rows(data)
    if rows is not None:
        vc = rows["verdict"].value_counts()
        n_gen = rows["n_generations"].fillna(0).astype(int).sum() if "n_generations" in rows else 0
        extracted = rows[rows["verdict"].isin(EXTRACTED_VERDICTS)]
        out["probe"] = {
            "model": names["model"],
            "n_results": int(len(rows)),
            "n_captions": int(rows["caption"].nunique()),
            "n_generations": int(n_gen),
            "verdicts": {k: int(vc.get(k, 0)) for k in ("verbatim", "template", "none", "error")},
            "n_extracted_captions": len(extracted_captions(rows)),
            "n_verbatim_captions": len(extracted_captions(rows, ("verbatim",))),
            "n_verbatim_copies": int(rows["verbatim_count"].fillna(0).astype(int).sum()),
            "n_template_copies": int(rows["template_count"].fillna(0).astype(int).sum()),
            "extracted": [
                {
                    "caption": clip(str(r["caption"]), max_caption_chars),
                    "variant": str(r["variant"]),
                    "verdict": str(r["verdict"]),
                    "cluster_size": _num(r.get("cluster_size")),
                    "verbatim_count": _num(r.get("verbatim_count")),
                    "n_generations": _num(r.get("n_generations")),
                    "best_key": None if pd.isna(r.get("best_key")) else str(r.get("best_key")),
                    "best_distance": _num(r.get("best_distance")),
                }
                for _, r in extracted.iterrows()
            ],
        }
    return out
