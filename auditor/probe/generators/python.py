"""``python`` generator: a ``package.module:function`` callable.

Signature: ``fn(prompts: list[str], seeds: list[int], **params) -> list[PIL.Image.Image]`` (one image per
prompt/seed pair, in order). ``params`` holds ``steps``, ``guidance_scale``, ``width``/``height``/
``negative_prompt`` when configured, and ``probe.python.params``. A call that raises, or returns the wrong number
of images, is retried one request at a time; what still fails is recorded as that request's error.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Sequence

from PIL import Image

from .base import GENERATORS, Generation, Generator, error_text


def load_callable(spec: str) -> Callable:
    if not spec or ":" not in spec:
        raise ValueError(f"expected 'package.module:function', got {spec!r}")
    mod_name, attr = spec.split(":", 1)
    obj: Any = importlib.import_module(mod_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec} is not callable")
    return obj


@GENERATORS.register("python")
class PythonGenerator(Generator):
    name = "python"

    def __init__(self, cfg, fn: Callable | None = None):
        super().__init__(cfg)
        self.spec = cfg.python.callable
        self.fn = fn or load_callable(self.spec or "")

    def params(self) -> dict[str, Any]:
        p: dict[str, Any] = {"steps": self.cfg.steps, "guidance_scale": self.cfg.guidance_scale}
        for k in ("width", "height", "negative_prompt"):
            v = getattr(self.cfg, k)
            if v is not None:
                p[k] = v
        p.update(self.cfg.python.params)
        return p

    def _call(self, batch: list[tuple[str, int]]) -> list[Image.Image]:
        images = list(self.fn([p for p, _ in batch], [int(s) for _, s in batch], **self.params()))
        if len(images) != len(batch):
            raise ValueError(f"{self.spec} returned {len(images)} images for {len(batch)} requests")
        for im in images:
            if not isinstance(im, Image.Image):
                raise TypeError(f"{self.spec} returned {type(im).__name__}, expected PIL.Image.Image")
        return [im.convert("RGB") for im in images]

    def generate(self, requests: Sequence[tuple[str, int]]) -> list[Generation]:
        out: list[Generation] = []
        bs = self.cfg.python.batch_size
        nominal = self.nominal_unet_evals()
        for start in range(0, len(requests), bs):
            batch = list(requests[start:start + bs])
            try:
                out.extend(Generation(p, s, im, None, nominal) for (p, s), im in zip(batch, self._call(batch)))
                continue
            except Exception as exc:  # noqa: BLE001
                if len(batch) == 1:
                    out.append(Generation(batch[0][0], batch[0][1], None, error_text(exc), 0))
                    continue
            for p, s in batch:
                try:
                    out.append(Generation(p, s, self._call([(p, s)])[0], None, nominal))
                except Exception as exc:  # noqa: BLE001
                    out.append(Generation(p, s, None, error_text(exc), 0))
        return out

    def provenance(self) -> dict[str, Any]:
        return {"generator": self.name, "callable": self.spec, "model": self.cfg.model,
                "params": self.cfg.python.params}
