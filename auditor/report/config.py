"""Typed configuration of the report stage."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ReportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    out_dir: str = "reports"
    top_clusters: int = Field(20, ge=1)
    thumbnail_px: int = Field(160, ge=16)
