"""The embedder contract, the registry, and picklable preprocessing callables.

An embedder turns preprocessed images into L2-normalised float32 vectors. Preprocessing is split out so the
index runner can do it in worker processes without loading any weights: ``build_preprocess(cfg)`` returns a
small picklable callable ``PIL RGB image -> float16 [C, H, W]`` built from the configuration (and, for
open_clip, the model's config JSON and pretrained-tag metadata), never from the checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from ...registry import Registry
from ...utils import file_sha256
from ..config import EmbedderConfig


class EmbedderWeightsError(RuntimeError):
    """Weights / model files are missing or unusable; the message says what to download or pass."""


# --------------------------------------------------------------------------------------------------------
# preprocessing (picklable, weight-free)
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResizeNormalize:
    """torchvision-equivalent ``Resize -> [CenterCrop] -> ToTensor -> Normalize`` in PIL + numpy (no torch
    import needed in workers).

    ``resize_mode="resize"``: squash to ``size x size`` (``transforms.Resize([size, size])``, SSCD's batchable
    ``skew`` variant); ``"center_crop"``: ``transforms.Resize(size)`` on the short side then
    ``transforms.CenterCrop(size)``. Interpolation is PIL bilinear, torchvision's default for PIL images.
    The result equals torchvision's float32 tensor, then cast to float16 for transport.
    """

    size: int
    resize_mode: str = "resize"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __call__(self, img: Image.Image) -> np.ndarray:
        if img.mode != "RGB":
            from ..decode import to_rgb

            img = to_rgb(img)
        s = self.size
        if self.resize_mode == "resize":
            img = img.resize((s, s), Image.Resampling.BILINEAR)
        elif self.resize_mode == "center_crop":
            w, h = img.size
            if w <= h:
                nw, nh = s, int(s * h / w)
            else:
                nw, nh = int(s * w / h), s
            if (nw, nh) != (w, h):
                img = img.resize((nw, nh), Image.Resampling.BILINEAR)
            top = int(round((nh - s) / 2.0))
            left = int(round((nw - s) / 2.0))
            img = img.crop((left, top, left + s, top + s))
        else:
            raise ValueError(f"unknown resize_mode {self.resize_mode!r} (resize | center_crop)")
        arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)
        arr = (arr - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1)).astype(np.float16)

    def describe(self) -> dict:
        return {"kind": "resize_normalize", "size": self.size, "resize_mode": self.resize_mode,
                "interpolation": "bilinear", "mean": list(self.mean), "std": list(self.std)}


class OpenClipPreprocess:
    """open_clip's own inference transform (``open_clip.transform.image_transform_v2(PreprocessCfg(**cfg),
    is_train=False)``, what ``create_model_and_transforms`` returns as ``preprocess_val``), built lazily from
    a plain dict so it pickles cheaply and needs no weights."""

    def __init__(self, cfg: dict):
        self.cfg = dict(cfg)
        self._t = None

    def __getstate__(self):
        return {"cfg": self.cfg}

    def __setstate__(self, state):
        self.cfg = state["cfg"]
        self._t = None

    @property
    def transform(self):
        if self._t is None:
            from open_clip.transform import PreprocessCfg, image_transform_v2

            self._t = image_transform_v2(PreprocessCfg(**self.cfg), is_train=False)
        return self._t

    def __call__(self, img: Image.Image) -> np.ndarray:
        if img.mode != "RGB":
            from ..decode import to_rgb

            img = to_rgb(img)
        return self.transform(img).numpy().astype(np.float16)

    def describe(self) -> dict:
        d = {"kind": "open_clip"}
        d.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in self.cfg.items()})
        return d


# --------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------
def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, eps)).astype(np.float32)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; explicit ``cuda*`` without a GPU is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"index.embedder.device={device!r} but torch sees no CUDA device (use auto or cpu)")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` -> fp16 on CUDA, fp32 on CPU. fp16 on CPU is refused (slow / unsupported kernels)."""
    if precision == "auto":
        return "fp16" if device.startswith("cuda") else "fp32"
    if precision == "fp16" and not device.startswith("cuda"):
        raise ValueError("index.embedder.precision=fp16 needs a CUDA device; use fp32 or bf16 on CPU")
    return precision


def checkpoint_file(path: Optional[str], what: str, how: str) -> str:
    """Return ``path`` if it is an existing file, else raise one clear :class:`EmbedderWeightsError`."""
    if not path:
        raise EmbedderWeightsError(f"{what}: no checkpoint given. {how}")
    p = os.path.expanduser(path)
    if not os.path.isfile(p):
        raise EmbedderWeightsError(f"{what}: checkpoint file not found: {path}. {how}")
    return p


# --------------------------------------------------------------------------------------------------------
# the contract
# --------------------------------------------------------------------------------------------------------
class Embedder:
    """Base class. Subclasses set ``name`` and ``dim``, implement :meth:`build_preprocess` (classmethod,
    weight-free) and :meth:`_embed` (float array in, raw features out)."""

    name: str = ""
    # the cosine at which two of its embeddings are called copies, calibrated on data (pair precision >= 0.99);
    # None = not calibrated by the project (dedup then uses UNCALIBRATED_COSINE and says so)
    default_cosine: Optional[float] = None

    def __init__(self, cfg: EmbedderConfig):
        self.cfg = cfg
        self.dim: int = 0
        self._preprocess = type(self).build_preprocess(cfg)

    @classmethod
    def build_preprocess(cls, cfg: EmbedderConfig):
        return None

    def preprocess(self, img: Image.Image) -> np.ndarray:
        if self._preprocess is None:
            raise RuntimeError(f"embedder {self.name!r} takes no image input")
        return self._preprocess(img)

    def _embed(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """``[n, C, H, W]`` preprocessed images -> ``float32 [n, dim]`` L2-normalised (in ``batch_size`` chunks)."""
        batch = np.asarray(batch)
        if batch.ndim != 4:
            raise ValueError(f"expected a [n, C, H, W] batch, got shape {batch.shape}")
        n = batch.shape[0]
        out = np.zeros((n, self.dim), dtype=np.float32)
        bs = self.cfg.batch_size
        for i in range(0, n, bs):
            out[i:i + bs] = l2_normalize(self._embed(batch[i:i + bs]))
        return out

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Convenience: preprocess + embed PIL images."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed(np.stack([self.preprocess(im) for im in images]))

    def describe(self) -> dict:
        return {"name": self.name, "dim": self.dim}


class ResizeNormalizeEmbedder(Embedder):
    """Base of the embedders fed by the config's own preprocessing (``image_size``, ``resize_mode``, ``mean``,
    ``std``): SSCD and ONNX models."""

    @classmethod
    def build_preprocess(cls, cfg: EmbedderConfig):
        return ResizeNormalize(size=cfg.image_size, resize_mode=cfg.resize_mode, mean=tuple(cfg.mean), std=tuple(cfg.std))


def describe_common(emb: Embedder, checkpoint: Optional[str], **extra: Any) -> dict:
    d = {
        "name": emb.name,
        "dim": int(emb.dim),
        "model": emb.cfg.model if emb.name == "open_clip" else None,
        "pretrained": emb.cfg.pretrained if emb.name == "open_clip" else None,
        "checkpoint": checkpoint,
        "checkpoint_sha256": file_sha256(checkpoint) if checkpoint and os.path.isfile(checkpoint) else None,
        "preprocess": emb._preprocess.describe() if emb._preprocess is not None else None,
    }
    d.update(extra)
    return d


EMBEDDERS: Registry[type[Embedder]] = Registry("embedder")
