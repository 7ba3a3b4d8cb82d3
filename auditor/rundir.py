"""The run folder, the contract between the stages: its layout (every folder and file name a stage writes and a
later one reads) and the one resume-fingerprint check the index, dedup and probe share.

Each stage writes only its own folder and reads the earlier ones through the names below; the report, the gate,
the guard and the lab read them the same way. Nothing else in the package spells ``"dedup"`` or
``"manifest.parquet"``.

Layout::

    RUN_DIR/index/    index.json, errors.parquet, not_indexed.parquet, shards/<id>.{parquet,emb.npy,done}
    RUN_DIR/dedup/    manifest, clusters, captions, risk (.parquet), summary.json, keep/drop key lists,
                      embeddings.faiss + search_ids.parquet + phash.npy (later queries: the guard), state/
    RUN_DIR/probe/    results.parquet, generations.parquet, provenance.json, fingerprint.json, evidence/,
                      references/ (the prompts file's fetched reference images), ...

Example:
    >>> run = RunDir("/runs/laion-1m")
    >>> run.manifest.as_posix()
    '/runs/laion-1m/dedup/manifest.parquet'
    >>> fingerprint_changes({"top_n": 20}, {"top_n": 50}, "probe")
    ['probe.top_n: 20 -> 50']
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .errors import ConfigMismatch, differences

# --- the stages' folders -----------------------------------------------------------------------------------
INDEX_DIR = "index"
DEDUP_DIR = "dedup"
PROBE_DIR = "probe"

# --- RUN_DIR/index -----------------------------------------------------------------------------------------
INDEX_JSON = "index.json"
SHARDS_DIR = "shards"
INDEX_ERRORS = "errors.parquet"
NOT_INDEXED = "not_indexed.parquet"

# --- RUN_DIR/dedup -----------------------------------------------------------------------------------------
MANIFEST = "manifest.parquet"
CLUSTERS = "clusters.parquet"
CAPTIONS = "captions.parquet"
RISK = "risk.parquet"
REMOVAL_IDS = "removal_ids.parquet"    # the dropped ids, for a data team's removal job
KEEP_URLS = "keep_urls.parquet"
DEDUP_SUMMARY = "summary.json"
SEARCH_INDEX = "embeddings.faiss"      # one row per pixel group, for later queries (the guard)
SEARCH_IDS = "search_ids.parquet"      # row -> representative key/shard of SEARCH_INDEX
GROUP_PHASH = "phash.npy"              # the pHash of each SEARCH_IDS row
DEDUP_STATE_DIR = "state"

# --- RUN_DIR/probe -----------------------------------------------------------------------------------------
RESULTS = "results.parquet"
GENERATIONS = "generations.parquet"
PROVENANCE = "provenance.json"
PROBE_FINGERPRINT = "fingerprint.json"
EVIDENCE_DIR = "evidence"
PROMPT_REFERENCES_DIR = "references"   # --prompts reference images fetched from URLs, <sha256 of the URL>


class RunDir:
    """The paths of one run folder (nothing is created or checked here)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # the stages' folders
    @property
    def index(self) -> Path:
        return self.root / INDEX_DIR

    @property
    def dedup(self) -> Path:
        return self.root / DEDUP_DIR

    @property
    def probe(self) -> Path:
        return self.root / PROBE_DIR

    # index
    @property
    def index_json(self) -> Path:
        return self.index / INDEX_JSON

    @property
    def shards(self) -> Path:
        return self.index / SHARDS_DIR

    # dedup
    @property
    def manifest(self) -> Path:
        return self.dedup / MANIFEST

    @property
    def risk(self) -> Path:
        return self.dedup / RISK

    @property
    def search_index(self) -> Path:
        return self.dedup / SEARCH_INDEX

    @property
    def search_ids(self) -> Path:
        return self.dedup / SEARCH_IDS

    @property
    def group_phash(self) -> Path:
        return self.dedup / GROUP_PHASH

    # probe
    @property
    def results(self) -> Path:
        return self.probe / RESULTS

    @property
    def generations(self) -> Path:
        return self.probe / GENERATIONS

    @property
    def provenance(self) -> Path:
        return self.probe / PROVENANCE

    @property
    def prompt_references(self) -> Path:
        return self.probe / PROMPT_REFERENCES_DIR

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"


# --- the one resume check ----------------------------------------------------------------------------------

def fingerprint_changes(stored: Optional[dict], current: dict, prefix: str = "",
                        section: Optional[str] = None) -> list[str]:
    """The ``dotted.key: old -> new`` lines where a stored fingerprint differs from the current one (``[]``: the
    same). With ``section``, the keys inside that section are named first (``probe.top_n``, not
    ``probe.config.top_n``); any other difference (a format version) after. A missing or unreadable stored
    fingerprint is a difference."""
    if stored == current:
        return []
    if not isinstance(stored, dict):
        return [f"{prefix or 'fingerprint'}: none stored"]
    out: list[str] = []
    if section is not None and isinstance(current.get(section), dict):
        out = differences(stored.get(section), current[section], prefix)
    return out or differences(stored, current, prefix) or [f"{prefix or 'fingerprint'}: differs"]


def check_resume(stored: Optional[dict], current: dict, message: str, prefix: str = "",
                 section: Optional[str] = None, error: type[Exception] = ConfigMismatch) -> None:
    """Refuse to resume a stage whose stored fingerprint (``None``: nothing stored yet, a fresh run) differs from
    the current config's: raises ``error("<message>; changed: <keys>")``. The index and the probe refuse; the
    dedup searches everything again instead (it calls :func:`fingerprint_changes` itself)."""
    if stored is None:
        return
    changes = fingerprint_changes(stored, current, prefix, section)
    if changes:
        raise error(f"{message}; changed: " + "; ".join(changes))


# --- runtime-only config keys ------------------------------------------------------------------------------

#: ``Field(..., json_schema_extra=RUNTIME)`` marks a config key that does not change what a stage has written
#: (workers, progress, device, batch size, the engine or endpoint address, how far a resumed run goes): a resumed
#: run may change it, so it is left out of the stage's fingerprint (:func:`without_runtime`).
RUNTIME = {"runtime": True}


def is_runtime(field) -> bool:
    """Whether a pydantic ``FieldInfo`` carries the :data:`RUNTIME` marker."""
    extra = getattr(field, "json_schema_extra", None)
    return isinstance(extra, dict) and bool(extra.get("runtime"))


def runtime_keys(model, prefix: str = "") -> list[str]:
    """The dotted keys of ``model`` (a pydantic model class) marked :data:`RUNTIME`, nested sections included.

    Example:
        >>> from auditor.index.config import IndexConfig
        >>> runtime_keys(IndexConfig)[:3]
        ['workers', 'chunk_size', 'progress']
    """
    out: list[str] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        if is_runtime(field):
            out.append(key)
        elif hasattr(field.annotation, "model_fields"):
            out.extend(runtime_keys(field.annotation, key + "."))
    return out


def without_runtime(model, dumped: dict) -> dict:
    """``dumped`` (``model``'s ``model_dump``) without the keys marked :data:`RUNTIME`, nested sections included;
    the other keys keep their order (a fingerprint written as JSON stays byte-identical)."""
    out = {}
    for name, value in dumped.items():
        field = model.model_fields.get(name)
        if field is not None and is_runtime(field):
            continue
        if field is not None and hasattr(field.annotation, "model_fields") and isinstance(value, dict):
            value = without_runtime(field.annotation, value)
        out[name] = value
    return out
