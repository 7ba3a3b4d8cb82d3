"""Typed configuration of the probe stage.

One UNet evaluation ("unet_evals") is one noise prediction for one latent: a classifier-free-guided sampling
step of one image costs 2, an unguided step 1. Black-box generators (http, python) are charged the same nominal
``steps * (2 if guidance_scale > 1 else 1)`` per image so budgets mean the same thing for every generator.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from ..rundir import RUNTIME, without_runtime  # RUNTIME keys: left out of the resume fingerprint


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DiffusersGeneratorConfig(_Strict):
    device: str = Field("auto", json_schema_extra=RUNTIME)  # auto | cpu | cuda | cuda:N
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"  # auto: fp16 on cuda, fp32 on cpu
    batch_size: int = Field(8, ge=1, json_schema_extra=RUNTIME)  # images per pipeline call (captions x seeds are batched)
    scheduler: Optional[str] = None            # a diffusers scheduler class name, e.g. DDIMScheduler; None = the model's
    variant: Optional[str] = None              # weight variant passed to from_pretrained (e.g. fp16)
    disable_safety_checker: bool = True        # a blacked-out image would hide the very copies being audited


class HttpGeneratorConfig(_Strict):
    url: Optional[str] = Field(None, json_schema_extra=RUNTIME)  # POST endpoint; see auditor/probe/generators/http.py for the schema
    headers: dict[str, str] = {}
    timeout_s: float = Field(120.0, gt=0, json_schema_extra=RUNTIME)  # overall deadline of one attempt: connect, headers and whole body
    retries: int = Field(3, ge=0)              # extra attempts after the first, on timeouts/5xx/connection errors
    backoff_s: float = Field(1.0, ge=0)        # sleep backoff_s * 2**attempt between attempts
    concurrency: int = Field(4, ge=1, json_schema_extra=RUNTIME)
    max_response_bytes: int = Field(64 * 1024 * 1024, ge=1)
    max_pixels: int = Field(64 * 1024 * 1024, ge=1)     # per-image decode budget of a response image
    max_jpeg_scans: int = Field(64, ge=1)                # progressive-JPEG scan cap (each scan costs a full pass)
    cpu_budget_s: float = Field(30.0, gt=0, allow_inf_nan=False)  # CPU seconds to decode one response image
    extra: dict[str, Any] = {}                 # merged into every request body


class PythonGeneratorConfig(_Strict):
    callable: Optional[str] = None             # "package.module:function"
    params: dict[str, Any] = {}                # extra keyword arguments
    batch_size: int = Field(8, ge=1)           # requests per call


class ProbeConfig(_Strict):
    generator: Literal["diffusers", "http", "python"] = "diffusers"
    model: Optional[str] = None                # a local pipeline folder or a hub id (diffusers generator)
    top_n: int = Field(20, ge=1, json_schema_extra=RUNTIME)  # risky captions taken from dedup/risk.parquet, by rank
    include_placeholders: bool = False         # probe clusters dedup flagged as placeholder images
    seed: int = 0                              # generation seeds are seed, seed+1, ... for every caption
    progress: bool = Field(True, json_schema_extra=RUNTIME)

    # sampling
    steps: int = Field(50, ge=1)
    guidance_scale: float = 7.5
    width: Optional[int] = None                # None = the model's default
    height: Optional[int] = None
    negative_prompt: Optional[str] = None

    # two-tier strategy
    screen: Literal["auto", "whitebox", "generations", "none"] = "auto"  # auto: whitebox when the model has a UNet
    screen_generations: int = Field(4, ge=1)   # black-box screen: generations per caption variant
    screen_clique_k: int = Field(2, ge=2)      # black-box screen: flag when this many generations are near-identical
    confirm_generations: int = Field(16, ge=1)  # total generations for a flagged caption variant (screen ones reused)
    budget_unet_evals: Optional[int] = Field(None, ge=0, json_schema_extra=RUNTIME)  # stop probing new captions once spent (None = no limit)

    # white-box first-step screen (Wen et al. 2024)
    whitebox_seeds: int = Field(4, ge=1)
    whitebox_steps: int = Field(1, ge=1)       # first step(s) of the sampling trajectory averaged
    whitebox_threshold: Optional[float] = None  # fixed threshold; None = calibrated at whitebox_fpr
    whitebox_fpr: float = Field(0.05, gt=0, lt=1)
    # False: the white-box screen orders the confirm tier (flagged captions first, then the others by score, all
    # confirmed unless budget_unet_evals runs out); True: captions it does not flag are never confirmed. Measured
    # on a trained memorizing model (benchmarks/bench_probe_recall.py, BENCHMARKS.md section 10): as a gate at
    # whitebox_fpr 0.05 it dropped clearly memorized captions whose scores sat just under the threshold
    whitebox_gate: bool = False
    calibration_captions: int = Field(32, ge=0)  # non-risky captions (singleton clusters) used to calibrate
    calibration_prompts_file: Optional[str] = None  # or: a text file, one non-risky prompt per line
    prompts_file: Optional[str] = None  # --prompts: CSV/JSONL/parquet prompt list instead of dedup/risk.parquet
    # the prompts file's reference images (probe/prompt_refs.py): an index key, an http(s) URL or a local path
    fetch_references: bool = True              # fetch http(s) URLs (index keys and local files are always read)
    reference_timeout_s: float = Field(10.0, gt=0, json_schema_extra=RUNTIME)  # one URL: redirects + body, per attempt
    reference_retries: int = Field(2, ge=0)    # extra attempts on connect errors, read timeouts, 429, 5xx
    reference_concurrency: int = Field(8, ge=1, json_schema_extra=RUNTIME)  # URLs fetched at once
    reference_max_bytes: int = Field(32 * 1024 * 1024, ge=1)  # bytes of one reference (URL or file), before decoding

    # detectors
    tiled_l2_threshold: float = Field(0.15, gt=0)  # delta (Carlini et al. 2023), pixels in [0, 1]
    # chance level of delta: generations for non-risky calibration captions vs their own (non-memorized) training
    # image; delta is tightened to the reference_fpr quantile of those distances when that is lower (a model
    # whose failures are blurry averages sits within 0.15 of dark / low-contrast photos by chance). 0 = off
    reference_calibration_generations: int = Field(2, ge=0)
    reference_fpr: float = Field(0.01, gt=0, lt=1)
    tile_grid: int = Field(4, ge=1)            # grid x grid tiles (Carlini: 4x4 tiles of 128 px on 512 px images)
    template_tile_fraction: float = Field(0.5, gt=0, le=1)  # share of tiles within delta for a template copy
    compare_max_side: int = Field(512, ge=16)  # training image's size, capped to this and the generation's side
    reference_crop: Literal["center", "none"] = "center"  # center-crop training images to the generation's aspect
    max_references: int = Field(16, ge=1)      # training images of a cluster compared against
    copy_similarity: bool = True               # use the index's embedder as a copy descriptor when it has one
    # strong copy-descriptor threshold (alone: template; with verbatim_phash_distance: verbatim). None = the index
    # embedder's calibrated copy threshold (index.embedders.calibrated_cosine; 0.5 for one without), raised to
    # the reference_fpr quantile of the null (non-risky captions' generations) when that is higher
    copy_similarity_threshold: Optional[float] = Field(None, gt=-1, le=1)
    # fused verdict (probe/fusion.py): a tile rule tolerating outliers, pHash, layout, copy descriptor
    fine_grid: int = Field(8, ge=1)            # cells of the outlier-tolerant tile rule (fine_grid x fine_grid)
    outlier_share: float = Field(0.125, ge=0, lt=0.5)  # worst share of the cells ignored (an overlay, a strip)
    verbatim_phash_distance: int = Field(4, ge=0, le=64)  # pHash <= this with a strong copy: a near copy (template)
    # share of the fine cells within template_match_delta for a template (raised by calibration): a 20-40 % paste
    # leaves 60-80 % of the image the training image's own (JPEG-compressed) pixels
    template_match_share: float = Field(0.3, gt=0, le=1)  # measured: pastes >= 0.44, unrelated photos <= 0.19
    template_match_delta: float = Field(0.075, gt=0)
    layout_grid: int = Field(8, ge=2)          # grey box means compared for the layout (template) signal
    layout_threshold: Optional[float] = Field(None, gt=-1, le=1)  # None = calibrated at reference_fpr
    template_phash_distance: Optional[int] = Field(None, ge=0, le=64)  # None = calibrated at reference_fpr
    template_copy_similarity: Optional[float] = Field(None, gt=-1, le=1)  # None = calibrated at reference_fpr
    # a caption is a template copy when this many of its generations are (one generation flagged at the
    # calibrated per-generation rate is chance: 16 generations at 1 % each flag 15 % of non-memorized captions)
    template_min_generations: int = Field(2, ge=1)
    retrieval: bool = True                     # also compare every generation with its nearest images in the index
    retrieval_top_k: int = Field(4, ge=1, le=100)  # nearest images per generation (pHash + embedding, the guard's)
    clique_k: int = Field(10, ge=2)            # consistency: memorized when the largest clique reaches k
    consistency_threshold: Optional[float] = None  # tiled-L2 edge threshold; None = delta, tightened by calibration
    consistency_fpr: float = Field(0.01, gt=0, lt=1)

    # caption variants
    variants: list[Literal["exact", "normalized", "prefix"]] = ["exact"]
    prefix_fractions: list[float] = [0.5]      # "prefix": the first fraction of the words
    variants_file: Optional[str] = None        # user variants: JSON {caption: [prompt, ...]} or CSV caption,prompt

    # outputs
    save_generations: bool = True
    evidence_per_caption: int = Field(3, ge=0)

    diffusers: DiffusersGeneratorConfig = DiffusersGeneratorConfig()
    http: HttpGeneratorConfig = HttpGeneratorConfig()
    python: PythonGeneratorConfig = PythonGeneratorConfig()

    def unet_evals_per_image(self) -> int:
        return int(self.steps) * (2 if self.guidance_scale > 1.0 else 1)


def public_config(p: ProbeConfig) -> dict:
    """The config as written to outputs: http header values dropped (names kept), the URL without query/user."""
    from .http_client import redacted_url

    d = p.model_dump(mode="json")
    d["http"]["headers"] = sorted(d["http"]["headers"])
    d["http"]["url"] = redacted_url(d["http"]["url"])
    return d


def fingerprint(p: ProbeConfig) -> dict:
    """The config keys a resumed run must keep: the public config without the keys marked ``RUNTIME`` on the
    fields (progress, how far the run goes: ``top_n``, ``budget_unet_evals``; device, batch sizes, the endpoint
    URL, its timeout and concurrency: rotating a key or moving the endpoint does not force a re-probe)."""
    return without_runtime(ProbeConfig, public_config(p))
