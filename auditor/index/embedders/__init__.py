"""Image embedders for the index: ``none``, ``copy`` (the shipped copy descriptor), ``open_clip``, ``sscd``
(TorchScript), ``onnx`` (onnxruntime).

``build_embedder(cfg)`` loads the model (main process); ``build_preprocess(cfg)`` gives the weight-free,
picklable ``PIL RGB -> float16 [C, H, W]`` callable the index workers run (None for ``none``).
"""

from __future__ import annotations

from ..config import EmbedderConfig
from .base import EMBEDDERS, Embedder, EmbedderWeightsError, OpenClipPreprocess, ResizeNormalize, l2_normalize
from . import none as _none  # noqa: F401  (registers)
from . import copy as _copy  # noqa: F401
from .copy import COPY_COSINE_THRESHOLD
from . import onnxrt as _onnxrt  # noqa: F401
from . import openclip as _openclip  # noqa: F401
from . import sscd as _sscd  # noqa: F401


def build_embedder(cfg: EmbedderConfig) -> Embedder:
    return EMBEDDERS.get(cfg.name)(cfg)


def calibrated_cosine(name: str):
    """The cosine threshold the project calibrated for embedder ``name`` (pair precision >= 0.99), or None when
    it has none (any open_clip, SSCD or ONNX model of the user's: calibrate it with ``auditor.evaluation``).

    Example:
        >>> calibrated_cosine("copy") == COPY_COSINE_THRESHOLD
        True
        >>> calibrated_cosine("open_clip") is None
        True
    """
    try:
        return EMBEDDERS.get(name).default_cosine
    except KeyError:
        return None


def build_preprocess(cfg: EmbedderConfig):
    """The embedder's preprocessing without loading weights; None when the embedder takes no images."""
    return EMBEDDERS.get(cfg.name).build_preprocess(cfg)


__all__ = ["EMBEDDERS", "Embedder", "EmbedderWeightsError", "OpenClipPreprocess", "ResizeNormalize",
           "COPY_COSINE_THRESHOLD", "build_embedder", "build_preprocess", "calibrated_cosine", "l2_normalize"]
