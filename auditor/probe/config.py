"""Typed configuration of the probe stage."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field


class ProbeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    generator: Literal["diffusers", "http", "python"] = "diffusers"
    model: Optional[str] = None
    top_n: int = Field(20, ge=1)
    seed: int = 0
    screen_generations: int = Field(4, ge=1)
    confirm_generations: int = Field(16, ge=1)
    steps: int = Field(50, ge=1)
    guidance_scale: float = 7.5
    tiled_l2_threshold: float = 0.15
    clique_k: int = Field(10, ge=2)
