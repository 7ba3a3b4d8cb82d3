"""Typed configuration of the report stage and of the serving-time guard (``report.guard``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..guard.config import GuardConfig  # noqa: F401 - lives with the guard; report.guard nests it


class ReportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # reports go to <out_dir>/<run name>/report.html (relative to the working directory) unless --out is given
    out_dir: str = "reports"
    # duplicate clusters shown, largest first, with this many member thumbnails and distinct captions each
    top_clusters: int = Field(20, ge=1)
    members_per_cluster: int = Field(6, ge=1)
    captions_per_cluster: int = Field(5, ge=1)
    # every image (training thumbnail, generation, each half of an evidence pair) is shown with this longest side:
    # larger ones shrunk (LANCZOS, JPEG at thumbnail_quality), smaller ones enlarged without smoothing (PNG)
    thumbnail_px: int = Field(160, ge=16)
    thumbnail_quality: int = Field(80, ge=10, le=100)
    # caption-duplication table: most repeated captions in the index
    top_captions: int = Field(30, ge=1)
    # probe results shown (most severe first) and generations shown per result (closest first)
    max_probe_results: int = Field(50, ge=1)
    generations_per_result: int = Field(4, ge=1)
    # captions longer than this are cut in the HTML and markdown (the full text stays in the run folder)
    max_caption_chars: int = Field(300, ge=20)
    progress: bool = True
    guard: GuardConfig = GuardConfig()
