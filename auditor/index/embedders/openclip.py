"""``open_clip``: CLIP image (and optional caption) embeddings with open_clip.

``index.embedder.model`` is one of

* a built-in architecture name (``ViT-B-32``, ``ViT-L-14``, ...) with ``pretrained`` = a tag
  (``laion2b_s34b_b79k``; resolved from the local Hugging Face cache, so it works offline once fetched) or a
  local checkpoint (``pretrained=/path/file`` or ``checkpoint=/path/file``);
* a path to an open_clip model-config JSON (``{"embed_dim", "vision_cfg", "text_cfg"}``), registered with
  ``open_clip.add_model_config`` under the file's stem -- custom or tiny architectures; without a checkpoint
  such a model is randomly initialised (with a warning: useful for smoke tests only);
* ``local-dir:/folder`` (``open_clip_config.json`` + weights) or ``hf-hub:org/repo`` (from the local cache).

Preprocessing is open_clip's own inference transform, from the same sources ``create_model_and_transforms``
uses (architecture image size, the tag's or folder's mean/std/interpolation/resize mode), built without
loading weights. ``auto`` device is cuda when available; ``auto`` precision is fp16 on cuda, fp32 on CPU.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..config import EmbedderConfig
from .base import (
    EMBEDDERS, Embedder, EmbedderWeightsError, OpenClipPreprocess, describe_common, l2_normalize, resolve_device,
    resolve_precision,
)

_REGISTERED_JSON: set[str] = set()


def _source(model: str) -> tuple[str, dict, str, Optional[dict]]:
    """-> (name for open_clip, model config, kind, preprocess overlay of a local-dir/hf-hub config)."""
    import open_clip

    if model.endswith(".json"):
        path = Path(model).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"open_clip model config not found: {model}")
        cfg = json.loads(path.read_text(encoding="utf-8"))
        if not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
            raise ValueError(f"{model}: an open_clip model config needs embed_dim, vision_cfg and text_cfg "
                             f"(for an open_clip_config.json with model_cfg, use model=local-dir:FOLDER)")
        return path.stem, cfg, "json", None
    if model.startswith("local-dir:"):
        p = Path(model[len("local-dir:"):]).expanduser() / "open_clip_config.json"
        if not p.is_file():
            raise FileNotFoundError(f"{model}: no open_clip_config.json in that folder")
        full = json.loads(p.read_text(encoding="utf-8"))
        return model, full.get("model_cfg", full), "local-dir", full.get("preprocess_cfg", {})
    if model.startswith("hf-hub:"):
        from open_clip.factory import _get_hf_config

        try:
            full = _get_hf_config(model[len("hf-hub:"):])
        except Exception as e:
            raise EmbedderWeightsError(
                f"open_clip model {model}: open_clip_config.json is not in the local Hugging Face cache "
                f"({type(e).__name__}). Fetch it on a machine with network access "
                f"(python -c \"import open_clip; open_clip.create_model('{model}')\") and copy HF_HOME here, or "
                f"use model=local-dir:FOLDER with the config and weights") from None
        return model, full.get("model_cfg", full), "hf-hub", full.get("preprocess_cfg", {})
    name = model.replace("/", "-")
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"unknown open_clip model {model!r}: not a built-in architecture "
                         f"(open_clip.list_models()), a config .json path, local-dir: or hf-hub:")
    return name, cfg, "builtin", None


def _is_tag(pretrained: Optional[str]) -> bool:
    return bool(pretrained) and not os.path.isfile(os.path.expanduser(pretrained))


def preprocess_cfg(cfg: EmbedderConfig) -> dict:
    """The PreprocessCfg dict ``create_model_and_transforms`` would use for this model/tag, without weights."""
    from open_clip import get_pretrained_cfg
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    name, model_cfg, kind, overlay = _source(cfg.model)
    pp = asdict(PreprocessCfg())
    if overlay is not None:
        pp = merge_preprocess_dict(pp, overlay)
    elif _is_tag(cfg.pretrained):
        pp = merge_preprocess_dict(pp, get_pretrained_cfg(name, cfg.pretrained))
    size = model_cfg.get("vision_cfg", {}).get("image_size", 224)
    pp["size"] = tuple(size) if isinstance(size, (list, tuple)) else (int(size), int(size))
    for k in ("mean", "std"):
        pp[k] = tuple(float(v) for v in pp[k])
    return pp


@EMBEDDERS.register("open_clip")
class OpenClipEmbedder(Embedder):
    name = "open_clip"

    @classmethod
    def build_preprocess(cls, cfg: EmbedderConfig):
        return OpenClipPreprocess(preprocess_cfg(cfg))

    def __init__(self, cfg: EmbedderConfig):
        super().__init__(cfg)
        import open_clip
        import torch

        self.oc_name, model_cfg, kind, _ = _source(cfg.model)
        if kind == "json" and str(Path(cfg.model).resolve()) not in _REGISTERED_JSON:
            open_clip.add_model_config(Path(cfg.model).expanduser())
            _REGISTERED_JSON.add(str(Path(cfg.model).resolve()))
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.checkpoint, quick_gelu = self._resolve_weights(cfg, kind)
        self.random_init = self.checkpoint is None and kind == "json"
        if self.random_init:
            warnings.warn(f"open_clip model {cfg.model} has no pretrained weights: randomly initialised "
                          f"(only useful for tests; pass index.embedder.checkpoint=PATH)", UserWarning, stacklevel=2)
        try:
            model = open_clip.create_model(
                self.oc_name, pretrained=self.checkpoint if kind in ("builtin", "json") else None,
                precision=self.precision, device=self.device, force_quick_gelu=quick_gelu, weights_only=True)
        except Exception as e:
            raise RuntimeError(f"open_clip could not build {cfg.model} with weights {self.checkpoint}: "
                               f"{type(e).__name__}: {e}") from e
        self.model = model.eval()
        self.dim = int(model_cfg["embed_dim"])
        self._input_dtype = next(self.model.visual.parameters()).dtype
        self._tokenizer = None
        self._torch = torch

    @staticmethod
    def _resolve_weights(cfg: EmbedderConfig, kind: str) -> tuple[Optional[str], bool]:
        """The local checkpoint file to load (None: the schema loads its own, or random init) and the
        QuickGELU flag the tag was trained with."""
        from open_clip import download_pretrained, get_pretrained_cfg, list_pretrained_tags_by_model

        how = "pass --set index.embedder.checkpoint=PATH (a local open_clip checkpoint file)"
        if kind in ("local-dir", "hf-hub"):
            if cfg.checkpoint or cfg.pretrained:
                raise ValueError(f"model={cfg.model} brings its own weights; leave pretrained/checkpoint unset")
            if kind == "hf-hub":
                from open_clip.pretrained import download_pretrained_from_hf

                try:
                    return download_pretrained_from_hf(cfg.model[len("hf-hub:"):]), False
                except Exception as e:
                    raise EmbedderWeightsError(
                        f"open_clip weights of {cfg.model} are not in the local Hugging Face cache "
                        f"({type(e).__name__}); fetch them with network access or use local-dir:FOLDER") from None
            return None, False
        name = cfg.model.replace("/", "-") if kind == "builtin" else Path(cfg.model).stem
        tag_cfg = get_pretrained_cfg(name, cfg.pretrained) if _is_tag(cfg.pretrained) else {}
        quick = bool(tag_cfg.get("quick_gelu", False))
        if cfg.checkpoint:
            path = os.path.expanduser(cfg.checkpoint)
            if not os.path.isfile(path):
                raise EmbedderWeightsError(f"open_clip checkpoint file not found: {cfg.checkpoint}; {how}")
            return path, quick
        if cfg.pretrained and not _is_tag(cfg.pretrained):
            return os.path.expanduser(cfg.pretrained), quick
        if cfg.pretrained:
            if not tag_cfg:
                tags = list_pretrained_tags_by_model(name)
                raise EmbedderWeightsError(
                    f"open_clip has no pretrained tag {cfg.pretrained!r} for {name} (known tags: "
                    f"{', '.join(tags) or 'none'}), and it is not a file; {how}")
            hub = tag_cfg.get("hf_hub") or ""
            if hub:
                repo, fname = os.path.split(hub)  # 'org/repo/file.bin' or 'org/repo/' (default file name)
                source = f"https://huggingface.co/{repo}/blob/main/{fname or 'open_clip_pytorch_model.bin'}"
            else:
                source = tag_cfg.get("url") or "the checkpoint"
            try:
                path = download_pretrained(tag_cfg)
            except Exception as e:
                raise EmbedderWeightsError(
                    f"open_clip weights {name}/{cfg.pretrained} are not available locally "
                    f"({type(e).__name__}; HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')!r}). Fetch them once "
                    f"with network access (python -c \"import open_clip; open_clip.create_model('{name}', "
                    f"pretrained='{cfg.pretrained}')\" fills the Hugging Face cache; copy HF_HOME here), or download "
                    f"{source} and {how}") from None
            if not path or not os.path.isfile(path):
                raise EmbedderWeightsError(f"open_clip weights {name}/{cfg.pretrained} resolved to {path!r}, "
                                           f"not a file; {how}")
            return path, quick
        if kind == "builtin":
            raise EmbedderWeightsError(
                f"open_clip model {name} needs weights: set index.embedder.pretrained=TAG (e.g. "
                f"{', '.join(list_pretrained_tags_by_model(name)[:3]) or 'a tag'}) or {how}")
        return None, quick

    def _embed(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, dtype=self._input_dtype)
        with torch.inference_mode():
            y = self.model.encode_image(x)
        return y.float().cpu().numpy()

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Caption embeddings ``float32 [n, dim]``, L2-normalised (open_clip's tokenizer for this model)."""
        import open_clip

        torch = self._torch
        if self._tokenizer is None:
            self._tokenizer = open_clip.get_tokenizer(self.oc_name)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        bs = self.cfg.batch_size
        for i in range(0, len(texts), bs):
            tokens = self._tokenizer([t or "" for t in texts[i:i + bs]]).to(self.device)
            with torch.inference_mode():
                y = self.model.encode_text(tokens)
            out[i:i + bs] = l2_normalize(y.float().cpu().numpy())
        return out

    def describe(self) -> dict:
        return describe_common(self, self.checkpoint, device=self.device, precision=self.precision,
                               weights="random-init" if self.random_init else "pretrained")
