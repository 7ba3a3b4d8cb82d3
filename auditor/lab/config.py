"""Typed configuration of the memorisation lab (``auditor lab`` / ``auditor demo``)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..config import AuditorConfig


class LabConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    out_dir: str = "auditor-lab"
    seed: int = 0
    progress: bool = True
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    # --- dataset ---------------------------------------------------------------------------------------
    photos: Literal["skimage", "folder"] = "skimage"
    photos_dir: Optional[str] = None          # for photos=folder
    captions_file: Optional[str] = None       # for photos=folder: caption<TAB>... lines (e.g. CC3M validation TSV)
    # one duplicate group per entry: the number of copies of that source photo
    copy_counts: list[int] = Field(default_factory=lambda: [100, 30, 30, 10, 10, 3, 3, 3])
    singletons: int = Field(150, ge=0)
    variant_caption_rate: float = Field(0.2, ge=0.0, le=1.0)
    # groups split into sub-clusters (indices into copy_counts; [] = none, the demo): heavy_crop_rate of the
    # copies after the first are one heavy crop of the source (50-70 % of each side) with the group's captions,
    # which dedup's chaining guard keeps out of the main cluster (benchmarks/bench_probe_recall.py)
    split_groups: list[int] = []
    heavy_crop_rate: float = Field(0.3, ge=0.0, le=1.0)
    max_side: int = Field(256, ge=32)         # source photos are shrunk to this long side before copying
    # img2dataset: download the dataset from a loopback server (False: train from the planted files directly)
    download: bool = True
    download_processes: int = Field(1, ge=1)

    # --- model -----------------------------------------------------------------------------------------
    resolution: int = Field(32, ge=16)
    # VAE: one block per entry, each after the first halves the resolution (32 px, 3 blocks -> 8x8x16 latents)
    vae_channels: list[int] = Field(default_factory=lambda: [16, 32, 32])
    latent_channels: int = Field(16, ge=1)
    text_width: int = Field(64, ge=32)
    text_layers: int = Field(2, ge=1)
    unet_channels: list[int] = Field(default_factory=lambda: [64, 64])
    unet_layers_per_block: int = Field(1, ge=1)
    unet_head_dim: int = Field(8, ge=1)

    # --- training --------------------------------------------------------------------------------------
    vae_steps: int = Field(400, ge=0)
    vae_batch_size: int = Field(16, ge=1)
    vae_lr: float = 1e-3
    train_steps: int = Field(1000, ge=0)
    batch_size: int = Field(32, ge=1)
    lr: float = 1e-3
    warmup_steps: int = Field(50, ge=0)
    caption_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    threads: int = Field(0, ge=0)  # torch CPU threads; 0 = leave torch's default

    # --- quick extraction eval (the lab's own check, before the auditor stages run) --------------------
    eval_generations: int = Field(4, ge=0)
    eval_steps: int = Field(25, ge=1)
    eval_guidance: float = 3.0
    eval_threshold: float = 0.15

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae_channels) - 1)

    @model_validator(mode="after")
    def _check(self):
        if self.photos == "folder" and not self.photos_dir:
            raise ValueError("photos=folder needs photos_dir")
        if any(c < 1 for c in self.copy_counts):
            raise ValueError("copy_counts must be >= 1")
        if any(not 0 <= g < len(self.copy_counts) for g in self.split_groups):
            raise ValueError("split_groups must index copy_counts")
        if self.resolution % (self.vae_factor * 2 ** (len(self.unet_channels) - 1)):
            raise ValueError("resolution must be divisible by the VAE factor times the UNet downsampling")
        return self


class LabRunConfig(AuditorConfig):
    """The lab's config: the stages' :class:`~auditor.config.AuditorConfig` extended with the ``lab`` section
    (the lab builds on the stages, so it extends their config; ``auditor/config.py`` never imports the lab).

    Example:
        >>> from auditor.config import load_config
        >>> load_config(None, ["lab.seed=3"], model=LabRunConfig).lab.seed
        3
    """

    lab: LabConfig = LabConfig()
