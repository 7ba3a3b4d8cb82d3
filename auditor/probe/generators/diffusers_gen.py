"""``diffusers`` generator: any ``DiffusionPipeline`` that takes ``prompt`` and ``generator`` lists.

Device and dtype are automatic (CUDA fp16 when present, else CPU fp32) unless configured. Requests are batched
across captions and seeds, each image with its own ``torch.Generator`` seeded with its seed (on the CPU, so an
image depends only on (prompt, seed, model, settings), not on the batch it ran in or the device). UNet
evaluations are counted exactly with a forward pre-hook (one per latent in the UNet's batch). The safety checker
is disabled by default: a blacked-out image would hide exactly the copies an audit looks for.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from ...utils import file_sha256, package_versions
from .base import GENERATORS, Generation, Generator, error_text

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".onnx", ".msgpack", ".gguf")


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def model_folder(model: str) -> Optional[Path]:
    """The local folder holding the weights: the path itself, or the hub cache snapshot (no download)."""
    if os.path.isdir(model):
        return Path(model)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached / not a hub id: provenance records None
        return None


def weight_hashes(folder: Optional[Path]) -> dict[str, str]:
    if folder is None:
        return {}
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES):
            out[p.relative_to(folder).as_posix()] = file_sha256(p)
    return out


@GENERATORS.register("diffusers")
class DiffusersGenerator(Generator):
    name = "diffusers"

    def __init__(self, cfg, pipe=None):
        super().__init__(cfg)
        import torch
        import diffusers

        dcfg = cfg.diffusers
        self.device = resolve_device(dcfg.device)
        self.dtype = resolve_dtype(dcfg.dtype, self.device)
        if pipe is None:
            if not cfg.model:
                raise ValueError("the diffusers generator needs --model (a pipeline folder or hub id)")
            kwargs: dict[str, Any] = {"torch_dtype": self.dtype}
            if dcfg.variant:
                kwargs["variant"] = dcfg.variant
            if dcfg.disable_safety_checker:
                kwargs.update(safety_checker=None, requires_safety_checker=False)
            pipe = diffusers.DiffusionPipeline.from_pretrained(cfg.model, **kwargs)
        if dcfg.scheduler:
            cls = getattr(diffusers, dcfg.scheduler, None)
            if cls is None or not hasattr(cls, "from_config"):
                raise ValueError(f"unknown diffusers scheduler {dcfg.scheduler!r}")
            pipe.scheduler = cls.from_config(pipe.scheduler.config)
        pipe = pipe.to(self.device)
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        self.torch = torch
        self.unet_evals = 0
        self._hook = None
        unet = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        if unet is not None:
            self._hook = unet.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        x = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        if x is not None and hasattr(x, "shape"):
            self.unet_evals += int(x.shape[0])

    def _call(self, prompts: list[str], seeds: list[int]):
        torch = self.torch
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        kwargs: dict[str, Any] = dict(prompt=prompts, generator=gens, num_inference_steps=self.cfg.steps,
                                      guidance_scale=self.cfg.guidance_scale, output_type="pil")
        if self.cfg.width:
            kwargs["width"] = self.cfg.width
        if self.cfg.height:
            kwargs["height"] = self.cfg.height
        if self.cfg.negative_prompt is not None:
            kwargs["negative_prompt"] = [self.cfg.negative_prompt] * len(prompts)
        with torch.inference_mode():
            return list(self.pipe(**kwargs).images)

    def generate(self, requests: Sequence[tuple[str, int]]) -> list[Generation]:
        out: list[Generation] = []
        bs = self.cfg.diffusers.batch_size
        for start in range(0, len(requests), bs):
            batch = list(requests[start:start + bs])
            before = self.unet_evals
            try:
                images = self._call([p for p, _ in batch], [s for _, s in batch])
                per = (self.unet_evals - before) // max(1, len(batch))
                out.extend(Generation(p, s, im.convert("RGB"), None, per) for (p, s), im in zip(batch, images))
            except Exception as exc:  # noqa: BLE001 - isolate the failing request
                if len(batch) == 1:
                    out.append(Generation(batch[0][0], batch[0][1], None, error_text(exc),
                                          self.unet_evals - before))
                    continue
                log.warning("batch failed (%s); retrying one by one", error_text(exc))
                for p, s in batch:
                    b = self.unet_evals
                    try:
                        im = self._call([p], [s])[0]
                        out.append(Generation(p, s, im.convert("RGB"), None, self.unet_evals - b))
                    except Exception as exc1:  # noqa: BLE001
                        out.append(Generation(p, s, None, error_text(exc1), self.unet_evals - b))
        return out

    def whitebox(self):
        from ..whitebox import WhiteBox

        return WhiteBox.from_pipeline(self.pipe, self.cfg, self.device, counter=self)

    def provenance(self) -> dict[str, Any]:
        model = self.cfg.model or getattr(self.pipe.config, "_name_or_path", None)
        folder = model_folder(model) if model else None
        sched = self.pipe.scheduler
        return {
            "generator": self.name,
            "model": model,
            "model_folder": str(folder) if folder else None,
            "pipeline": type(self.pipe).__name__,
            "weights_sha256": weight_hashes(folder),
            "scheduler": type(sched).__name__,
            "scheduler_config": {k: v for k, v in dict(sched.config).items() if not k.startswith("_")},
            "device": self.device,
            "dtype": str(self.dtype).replace("torch.", ""),
            "safety_checker": getattr(self.pipe, "safety_checker", None) is not None,
            "versions": package_versions(("diffusers", "transformers", "torch", "accelerate", "safetensors")),
        }

    def close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
