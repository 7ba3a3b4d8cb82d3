"""The GPU index path: batched JPEG decode (nvJPEG through ``torchvision.io.decode_jpeg(list, device="cuda")``),
resize + normalise on the device, the embedder's forward pass in fp16/bf16, with host-side work for the next batch
overlapped with the current one.

Scope: **embeddings only**. The perceptual hashes must stay bit-identical to ``imagehash`` (PIL's LANCZOS
thumbnail of PIL's decode), so with ``index.gpu_decode=true`` the index workers still decode with PIL and hash
(in parallel processes), but skip the embedder's CPU preprocessing; the main process (local engine) or the
embedding actors (Ray engine) hand the stored bytes to :class:`GpuPath`. What the GPU path changes is therefore
only the embeddings, by the difference between ``torch.nn.functional.interpolate(antialias=True)`` on nvJPEG
pixels and PIL's resize on PIL's pixels (a cosine of ~0.99+ to the PIL-preprocessed embedding); hashes, tables
and errors are identical. On CPU (``device="cpu"``) the same code runs with libjpeg-turbo's batched decode, which
is how the tests exercise it.

Which bytes go to ``decode_jpeg``: JPEG by magic bytes, within ``max_bytes``, a baseline/progressive frame
header with 1 (gray) or 3 (YCbCr/RGB) components whose declared size is within ``max_pixels`` (the
decompression-bomb limit is checked on the header before any pixel is decoded, as on the CPU path), and ending
with the EOI marker (a truncated file goes to PIL, which refuses it). Everything else -- PNG, WebP, GIF, CMYK or
YCCK JPEGs, corrupt files, and any image ``decode_jpeg`` rejects -- falls back, one image at a time, to the normal
PIL path (:func:`auditor.index.decode.decode_rgb`), with the same :class:`DecodeError` for bad files.

Resize semantics follow the embedder's own preprocessing (read from its weight-free preprocess object):
open_clip ``shortest`` (resize the short side to S, ``int(S * long / short)`` for the other, centre crop S x S,
torchvision's rounding) or ``squash`` (S x S); auditor's ``ResizeNormalize`` ``center_crop`` / ``resize``;
bicubic or bilinear with antialiasing, rounded to 8 bits like PIL's output, then ``/255``, mean/std.
"""

from __future__ import annotations

import queue
import threading
import warnings
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from .decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, DecodeError, decode_rgb

# JPEG start-of-frame markers that libjpeg/nvJPEG decode (baseline, extended, progressive; Huffman coded)
_SOF = {0xC0, 0xC1, 0xC2}
_NO_LENGTH = {0x01, *range(0xD0, 0xD8)}  # standalone markers (TEM, RSTn)


def jpeg_header(data: bytes) -> Optional[tuple[int, int, int]]:
    """``(width, height, components)`` from a JPEG's frame header, or None when the bytes are not a JPEG with a
    Huffman-coded baseline/progressive frame (arithmetic, lossless and hierarchical frames -> None)."""
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    i = 2
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _NO_LENGTH:
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI / SOS before any frame header
            return None
        seg = (data[i + 2] << 8) | data[i + 3]
        if seg < 2:
            return None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if marker not in _SOF or i + 10 > n:
                return None
            h = (data[i + 5] << 8) | data[i + 6]
            w = (data[i + 7] << 8) | data[i + 8]
            return w, h, data[i + 9]
        i += 2 + seg
    return None


def _ends_with_eoi(data: bytes) -> bool:
    tail = bytes(data[-64:]).rstrip(b"\x00\r\n\t ")
    return tail.endswith(b"\xff\xd9")


@dataclass(frozen=True)
class ResizeSpec:
    """The geometry and normalisation of an embedder's input."""

    size: int
    mode: str            # "center_crop" (short side to size, centre crop) | "resize" (squash to size x size)
    interpolation: str   # "bicubic" | "bilinear"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_preprocess(cls, pp) -> "ResizeSpec":
        """From an embedder's weight-free preprocess (``OpenClipPreprocess`` or ``ResizeNormalize``)."""
        from .embedders.base import OpenClipPreprocess, ResizeNormalize

        if isinstance(pp, ResizeNormalize):
            return cls(int(pp.size), pp.resize_mode, "bilinear", tuple(pp.mean), tuple(pp.std))
        if isinstance(pp, OpenClipPreprocess):
            c = pp.cfg
            size = c.get("size", 224)
            h, w = (size, size) if isinstance(size, int) else tuple(size)
            rm = c.get("resize_mode", "shortest")
            interp = c.get("interpolation", "bicubic")
            if h != w or rm not in ("shortest", "squash") or interp not in ("bicubic", "bilinear") \
                    or c.get("mode", "RGB") != "RGB":
                raise ValueError(f"index.gpu_decode supports square inputs with resize_mode shortest|squash and "
                                 f"bicubic|bilinear interpolation; this model's preprocessing is {c}")
            return cls(int(h), "center_crop" if rm == "shortest" else "resize", interp,
                       tuple(float(v) for v in c["mean"]), tuple(float(v) for v in c["std"]))
        raise ValueError(f"index.gpu_decode: no GPU preprocessing for {type(pp).__name__}")

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """(height, width) after the resize step (torchvision's rounding for a scalar size)."""
        s = self.size
        if self.mode == "resize":
            return s, s
        if w <= h:
            return int(s * h / w), s
        return s, int(s * w / h)


class GpuPath:
    """Stored image bytes -> preprocessed batch on ``device`` -> L2-normalised embeddings.

    ``model``: a torch module with ``encode_image`` (open_clip) or a callable on a float tensor; when None,
    ``embedder.embed`` is called on the preprocessed batch moved to the host (any embedder works, e.g. ONNX)."""

    def __init__(self, spec: ResizeSpec, device: str = "cpu", dtype: str = "fp32", embedder=None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES, prefetch: int = 2):
        import torch

        self.torch = torch
        self.spec = spec
        self.device = torch.device(device)
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
        self.embedder = embedder
        self.max_pixels = int(max_pixels)
        self.max_bytes = int(max_bytes)
        self.prefetch = max(1, int(prefetch))
        self.mean = torch.tensor(spec.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(spec.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1) * 255.0
        self.stats = {"nvjpeg" if self.device.type == "cuda" else "decode_jpeg": 0, "pil": 0, "failed": 0}

    @classmethod
    def for_embedder(cls, embedder, decode_cfg=None, prefetch: int = 2) -> "GpuPath":
        """The GPU path feeding ``embedder`` (its device, precision and preprocessing geometry)."""
        spec = ResizeSpec.from_preprocess(embedder._preprocess)
        device = getattr(embedder, "device", "cpu")
        precision = getattr(embedder, "precision", "fp32")
        kw = {}
        if decode_cfg is not None:
            kw = {"max_pixels": decode_cfg.max_pixels, "max_bytes": decode_cfg.max_bytes}
        return cls(spec, device=device, dtype=precision, embedder=embedder, prefetch=prefetch, **kw)

    def describe(self) -> dict:
        s = self.spec
        return {"device": self.device.type, "decoder": "nvjpeg" if self.device.type == "cuda" else "libjpeg-turbo",
                "size": s.size, "mode": s.mode, "interpolation": f"{s.interpolation}+antialias",
                "fallback": "PIL (non-JPEG, CMYK, truncated, rejected)"}

    # ---------------------------------------------------------------------------------------------------
    # decode
    # ---------------------------------------------------------------------------------------------------
    def _gpu_ok(self, data: bytes) -> bool:
        if not data or len(data) > self.max_bytes:
            return False
        hdr = jpeg_header(data)
        if hdr is None:
            return False
        w, h, comps = hdr
        return comps in (1, 3) and 0 < w * h <= self.max_pixels and _ends_with_eoi(data)

    def decode(self, datas: Sequence[bytes]) -> tuple[list, list[Optional[Exception]]]:
        """Decode a batch: ``(images, errors)``; ``images[i]`` is a uint8 ``[3, H, W]`` tensor on the device (None
        when ``errors[i]`` is set: the PIL path's :class:`DecodeError`)."""
        torch = self.torch
        from torchvision.io import ImageReadMode, decode_jpeg

        n = len(datas)
        out: list = [None] * n
        errs: list[Optional[Exception]] = [None] * n
        fast = [i for i in range(n) if self._gpu_ok(datas[i])]
        fallback = sorted(set(range(n)) - set(fast))
        if fast:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # non-writable buffers (never written), deprecation notice
                tens = [torch.frombuffer(datas[i], dtype=torch.uint8) for i in fast]
                try:
                    dec = decode_jpeg(tens, mode=ImageReadMode.RGB, device=self.device)
                except Exception:  # noqa: BLE001 - one bad image fails the batched call: retry one by one
                    dec = []
                    for t in tens:
                        try:
                            dec.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=self.device))
                        except Exception:  # noqa: BLE001
                            dec.append(None)
            key = "nvjpeg" if self.device.type == "cuda" else "decode_jpeg"
            for i, d in zip(fast, dec):
                if d is None or d.ndim != 3 or d.shape[0] != 3:
                    fallback.append(i)
                else:
                    out[i] = d
                    self.stats[key] += 1
        for i in sorted(fallback):
            try:
                rgb = decode_rgb(datas[i], max_pixels=self.max_pixels, max_bytes=self.max_bytes)
            except DecodeError as e:
                errs[i] = e
                self.stats["failed"] += 1
                continue
            except Exception as e:  # noqa: BLE001
                errs[i] = DecodeError("corrupt", f"{type(e).__name__}: {e}")
                self.stats["failed"] += 1
                continue
            arr = torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True)).permute(2, 0, 1)
            out[i] = arr.to(self.device, non_blocking=True)
            self.stats["pil"] += 1
        return out, errs

    # ---------------------------------------------------------------------------------------------------
    # resize + normalise
    # ---------------------------------------------------------------------------------------------------
    def _resize_group(self, x):
        """uint8 [n, 3, h, w] (one size) -> float32 [n, 3, S, S] in 0..255, rounded like PIL's 8-bit output."""
        torch = self.torch
        s = self.spec
        h, w = x.shape[-2:]
        nh, nw = s.output_size(h, w)
        y = x.float()
        if (nh, nw) != (h, w):
            y = torch.nn.functional.interpolate(y, size=(nh, nw), mode=s.interpolation, align_corners=False,
                                                antialias=True)
            y = y.round_().clamp_(0, 255)
        if (nh, nw) != (s.size, s.size):
            top = int(round((nh - s.size) / 2.0))
            left = int(round((nw - s.size) / 2.0))
            y = y[:, :, top:top + s.size, left:left + s.size]
        return y

    def preprocess(self, images: Sequence) -> "object":
        """uint8 ``[3, H, W]`` device tensors -> ``[n, 3, S, S]`` normalised, in the model's dtype. Images of the
        same size are resized as one batch (img2dataset shards usually hold one size)."""
        torch = self.torch
        s = self.spec.size
        out = torch.empty((len(images), 3, s, s), dtype=torch.float32, device=self.device)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(tuple(im.shape[-2:]), []).append(i)
        for idx in groups.values():
            x = torch.stack([images[i] for i in idx]) if len(idx) > 1 else images[idx[0]][None]
            out[idx] = self._resize_group(x)
        out.sub_(self.mean).div_(self.std)
        return out.to(self.dtype)

    def prepare(self, datas: Sequence[bytes]):
        """Decode + preprocess one batch; raises the first :class:`DecodeError` when an image cannot be decoded
        (the index runner then retries image by image and records the bad one)."""
        images, errs = self.decode(datas)
        for e in errs:
            if e is not None:
                raise e
        return self.preprocess(images)

    # ---------------------------------------------------------------------------------------------------
    # embed
    # ---------------------------------------------------------------------------------------------------
    def forward(self, x) -> np.ndarray:
        """Preprocessed batch -> float32 [n, dim] L2-normalised (host numpy)."""
        torch = self.torch
        model = getattr(self.embedder, "model", None)
        if model is not None and hasattr(model, "encode_image"):
            with torch.inference_mode():
                y = model.encode_image(x).float()
                y = torch.nn.functional.normalize(y, dim=1)
            return y.cpu().numpy()
        if self.embedder is None:
            raise RuntimeError("GpuPath has no embedder")
        return self.embedder.embed(x.float().cpu().numpy())

    def embed(self, datas: Sequence[bytes]) -> np.ndarray:
        """Stored bytes of one batch -> float32 [n, dim] L2-normalised embeddings."""
        if len(datas) == 0:
            return np.zeros((0, getattr(self.embedder, "dim", 0)), dtype=np.float32)
        return self.forward(self.prepare(datas))

    def stream(self, batches: Iterable[Sequence[bytes]]) -> Iterator[tuple[np.ndarray, list]]:
        """Embed a stream of byte batches with decode + preprocess of the next ``prefetch`` batches running in a
        background thread (on its own CUDA stream) while the model runs on the current one.

        Yields ``(embeddings float32 [k, dim], errors)`` per input batch; rows of images that failed to decode
        are left out of the embeddings (``errors[i]`` is set for them, in input order)."""
        torch = self.torch
        cuda = self.device.type == "cuda"
        side = torch.cuda.Stream(device=self.device) if cuda else None
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        _END = object()

        def producer() -> None:
            try:
                for datas in batches:
                    if stop.is_set():
                        return
                    if cuda:
                        with torch.cuda.stream(side):
                            images, errs = self.decode(datas)
                            good = [im for im in images if im is not None]
                            x = self.preprocess(good) if good else None
                            ev = torch.cuda.Event()
                            ev.record(side)
                    else:
                        images, errs = self.decode(datas)
                        good = [im for im in images if im is not None]
                        x = self.preprocess(good) if good else None
                        ev = None
                    q.put((x, errs, ev))
                q.put(_END)
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
                q.put(e)

        t = threading.Thread(target=producer, name="gpu-path-prefetch", daemon=True)
        t.start()
        try:
            while True:
                item = q.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                x, errs, ev = item
                dim = getattr(self.embedder, "dim", 0)
                if x is None:
                    yield np.zeros((0, dim), dtype=np.float32), errs
                    continue
                if ev is not None:
                    torch.cuda.current_stream(self.device).wait_event(ev)
                    x.record_stream(torch.cuda.current_stream(self.device))
                yield self.forward(x), errs
        finally:
            stop.set()
            while t.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    t.join(timeout=0.05)
