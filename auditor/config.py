"""One typed configuration for every stage.

Defaults live in the models below; ``configs/default.yaml`` spells them out (a test keeps the two equal).
A run loads ``--config FILE`` (YAML, any subset of keys) over the defaults, then ``--set dotted.key=value``
overrides from the command line, parsed as YAML scalars (``--set index.workers=4``,
``--set index.embedder.name=open_clip``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ConfigDict

from .dedup.config import DedupConfig
from .index.config import IndexConfig
from .lab.config import LabConfig
from .probe.config import ProbeConfig
from .report.config import ReportConfig


class AuditorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    index: IndexConfig = IndexConfig()
    dedup: DedupConfig = DedupConfig()
    probe: ProbeConfig = ProbeConfig()
    report: ReportConfig = ReportConfig()
    lab: LabConfig = LabConfig()


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_overrides(items: Iterable[str]) -> dict:
    """``["a.b=1", "c=x"]`` -> ``{"a": {"b": 1}, "c": "x"}`` (values parsed as YAML scalars)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects dotted.key=value, got {item!r}")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> AuditorConfig:
    data: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: a config file must be a YAML mapping")
        data = loaded
    data = _deep_merge(data, parse_overrides(overrides))
    return AuditorConfig.model_validate(data)


def config_to_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
