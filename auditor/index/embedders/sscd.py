"""``sscd``: Meta's SSCD copy-detection descriptors from the released TorchScript files
(https://github.com/facebookresearch/sscd-copy-detection: ``sscd_disc_mixup.torchscript.pt`` (512-d),
``sscd_disc_large.torchscript.pt`` (1024-d), ...).

Loaded with ``torch.jit.load`` (TorchScript archive, not a pickle of arbitrary Python objects). Preprocessing
follows SSCD's README: ``Resize`` + ``ToTensor`` + ``Normalize(ImageNet mean/std)``. SSCD's ``small_288``
resizes the short side to 288 keeping the aspect ratio, which cannot be batched; here ``resize_mode="resize"``
(default) is the README's square ``skew`` variant at ``image_size`` and ``"center_crop"`` is short-side
resize + centre crop. Descriptors are L2-normalised (the README's similarity is the inner product of
normalised descriptors).
"""

from __future__ import annotations

import warnings

import numpy as np

from ..config import EmbedderConfig
from .base import EMBEDDERS, ResizeNormalizeEmbedder, checkpoint_file, describe_common, resolve_device, resolve_precision

HOW = ("Download a TorchScript file from https://github.com/facebookresearch/sscd-copy-detection "
       "(e.g. https://dl.fbaipublicfiles.com/sscd-copy-detection/sscd_disc_mixup.torchscript.pt) and pass "
       "--set index.embedder.checkpoint=PATH")


@EMBEDDERS.register("sscd")
class SSCDEmbedder(ResizeNormalizeEmbedder):
    name = "sscd"

    def __init__(self, cfg: EmbedderConfig):
        super().__init__(cfg)
        import torch

        self.checkpoint = checkpoint_file(cfg.checkpoint, "sscd embedder", HOW)
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        try:
            with warnings.catch_warnings():  # SSCD ships TorchScript only; torch's deprecation notice is noise
                warnings.simplefilter("ignore", FutureWarning)
                self.model = torch.jit.load(self.checkpoint, map_location=self.device).eval()
        except Exception as e:  # not a TorchScript archive (e.g. a state dict or a pickle)
            raise RuntimeError(f"sscd embedder: {self.checkpoint} is not a TorchScript file "
                               f"({type(e).__name__}: {e}). {HOW}") from e
        probe = self._embed(np.zeros((1, 3, cfg.image_size, cfg.image_size), dtype=np.float16))
        if probe.ndim != 2:
            raise RuntimeError(f"sscd embedder: {self.checkpoint} returns shape {probe.shape}, expected [n, dim]")
        self.dim = int(probe.shape[1])

    def _embed(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        with torch.inference_mode():
            if self.precision in ("fp16", "bf16") and self.device.startswith("cuda"):
                dt = torch.float16 if self.precision == "fp16" else torch.bfloat16
                with torch.autocast("cuda", dtype=dt):
                    y = self.model(x)
            elif self.precision == "bf16":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    y = self.model(x)
            else:
                y = self.model(x)
        return y.float().cpu().numpy()

    def describe(self) -> dict:
        return describe_common(self, self.checkpoint, device=self.device, precision=self.precision)
