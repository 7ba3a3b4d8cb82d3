"""``copy``: the copy-detection descriptor that ships inside the package (no download, no torch).

A small CNN (about 40 M multiply-adds per image, 128-d, GeM pooling, L2-normalised) trained by the project
with an SSCD-style recipe (InfoNCE instance discrimination over copy-style augmentations plus the KoLeo
entropy regulariser) on Tiny-ImageNet-200; see ``weights/MODEL_CARD.md`` for data, licence, metrics and limits
and ``training/copy_descriptor/`` for the reproducible recipe. Run by onnxruntime.

Preprocessing is the model's own and fixed: bilinear squash to 64 x 64, ImageNet mean/std (the training
pipeline's exactly); ``index.embedder.image_size``/``resize_mode``/``mean``/``std`` are ignored.
``index.embedder.checkpoint`` may point to another ONNX export of the same recipe (e.g. one retrained with
``training/copy_descriptor/train.py``); by default the shipped file is used.

Example::

    from auditor.index.config import EmbedderConfig
    from auditor.index.embedders import build_embedder
    emb = build_embedder(EmbedderConfig(name="copy"))
    vecs = emb.embed_images([img_a, img_b])      # float32 [2, 128], unit norm
    same_copy = float(vecs[0] @ vecs[1]) >= COPY_COSINE_THRESHOLD
"""

from __future__ import annotations

import json
from importlib import resources

from ..config import EmbedderConfig
from .base import EMBEDDERS, ResizeNormalize
from .onnxrt import OnnxEmbedder

WEIGHTS = "copy_descriptor.onnx"
INFO = "copy_descriptor.json"
IMAGE_SIZE = 64
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# dedup.cosine_threshold when the index was built with this descriptor (dedup.cosine_threshold: null).
# Evidence (benchmarks/bench_dedup_accuracy.py, BENCHMARKS.md section 2, MODEL_CARD.md; 9,034 held-out real
# images: 300 imagenet-256/Kodak/UKBench photos x 14 copy kinds, 200 32-px CIFAR photos x 4, 3,534 untouched
# distractors, none from the training photos or their classes), the whole default pipeline (index + dedup with
# the chain guard; every pair inside a cluster counts):
#   calibration draw (seed 1): cosine 0.56 -> pair precision 0.989, 0.58 -> 0.991 (recall 0.970), 0.60 -> 0.994
#   evaluation draw (seed 0):  cosine 0.60 -> pair precision 0.996, copy recall 0.970, every target group >= 0.86
# The lowest threshold at precision >= 0.99 on the calibration draw is 0.58; one 0.02 step more keeps headroom
# for false pairs growing with the square of a real crawl.
COPY_COSINE_THRESHOLD = 0.60


def shipped_file(name: str = WEIGHTS) -> str:
    """Path of a file shipped in ``auditor/index/embedders/weights/`` (the package is installed as files)."""
    return str(resources.files(__package__).joinpath("weights", name))


def shipped_info() -> dict:
    """The JSON beside the weights: seed, config, data sha256, training time, calibration."""
    with open(shipped_file(INFO), encoding="utf-8") as f:
        return json.load(f)


def _model_cfg(cfg: EmbedderConfig) -> EmbedderConfig:
    return cfg.model_copy(update={"checkpoint": cfg.checkpoint or shipped_file(), "image_size": IMAGE_SIZE,
                                  "resize_mode": "resize", "mean": MEAN, "std": STD})


@EMBEDDERS.register("copy")
class CopyEmbedder(OnnxEmbedder):
    name = "copy"
    default_cosine = COPY_COSINE_THRESHOLD

    def __init__(self, cfg: EmbedderConfig):
        super().__init__(_model_cfg(cfg))

    @classmethod
    def build_preprocess(cls, cfg: EmbedderConfig):
        return ResizeNormalize(size=IMAGE_SIZE, resize_mode="resize", mean=MEAN, std=STD)

    def describe(self) -> dict:
        d = super().describe()
        d["shipped"] = self.checkpoint == shipped_file()
        return d
