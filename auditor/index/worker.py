"""The index step's worker side: what one chunk of samples becomes (:func:`process_chunk`, run in the pool
workers or Ray tasks): decoded, hashed, preprocessed for the embedder, its metadata carried.

This module and what it imports stay free of pandas and pyarrow: the local engine's forkserver preloads it
(``auditor.index._preload``) and every worker unpickles :func:`process_chunk` from it, so a worker is ready after
numpy, Pillow, simplejpeg and pydantic (measured on the 2-core CI machine: the preload went from 1.3 s to 0.4 s of
CPU, and the main process no longer waits ~0.9 s for the server before its first chunk). The rest of the step
(chunking, gathering, embedding, writing) is :mod:`auditor.index.shard`, which re-exports these names.

Example:
    >>> from auditor.index.worker import carried_fields
    >>> carried_fields({"json": {"punsafe": 0.5}}, None)
    {'punsafe': 0.5}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..io.base import Sample, read_deferred
from ..utils import ErrorRecord, caption_hash, is_utf8, utf8_safe
from .columns import SAMPLE_COLUMN_NAMES
from .config import DecodeConfig, EmbedderConfig


@dataclass
class ChunkResult:
    shard: str
    records: list[dict] = field(default_factory=list)
    errors: list[ErrorRecord] = field(default_factory=list)
    not_indexed: list[dict] = field(default_factory=list)
    pixels: Optional[np.ndarray] = None  # preprocessed embedder input, row-aligned with records
    raw: Optional[list[bytes]] = None    # the stored bytes, row-aligned with records (``gpu_decode``)


_PREPROCESS_CACHE: dict[str, Any] = {}


def _preprocess_fn(embedder_cfg: Optional[dict]):
    if not embedder_cfg:
        return None
    import json

    key = json.dumps(embedder_cfg, sort_keys=True)
    fn = _PREPROCESS_CACHE.get(key)
    if fn is None:
        from .embedders import build_preprocess

        fn = build_preprocess(EmbedderConfig.model_validate(embedder_cfg))
        _PREPROCESS_CACHE[key] = fn
    return fn


def process_chunk(samples: list[Sample], decode_cfg: dict, embedder_cfg: Optional[dict],
                  keep_bytes: bool = False, hash_mode: str = "exact") -> ChunkResult:
    """Decode, hash and preprocess one chunk of samples (runs in a worker process). ``keep_bytes``: return the
    stored bytes of the indexed samples instead of preprocessed pixels (the embedder's device decodes them).
    ``hash_mode="fast"``: plain JPEGs are decoded at a reduced DCT scale (``decode_fast.decode_reduced``) that
    keeps both sides >= 2x the pHash thumbnail and the embedder's input size; ``width``/``height`` stay the
    stored image's."""
    from .decode import DecodeError, decode_for_index, sniff_format
    from .decode_fast import decode_reduced, fast_min_side
    from .dihedral import hash_columns
    from .hashing import bytes_sha256, gray_thumbnails, pixel_hash_array

    carry = decode_cfg.get("carry_columns")  # IndexJob.decode_cfg adds index.carry_columns to the decode limits
    dc = DecodeConfig.model_validate({k: v for k, v in decode_cfg.items() if k != "carry_columns"})
    preprocess = _preprocess_fn(embedder_cfg)
    if hash_mode == "fast":
        min_side = fast_min_side(preprocess)

        def decode(data: bytes):
            return decode_reduced(data, min_side, max_pixels=dc.max_pixels, max_bytes=dc.max_bytes,
                                  max_jpeg_scans=dc.max_jpeg_scans, cpu_budget_s=dc.cpu_budget_s)
    else:
        def decode(data: bytes):
            return decode_for_index(data, max_pixels=dc.max_pixels, max_bytes=dc.max_bytes,
                                    max_jpeg_scans=dc.max_jpeg_scans, cpu_budget_s=dc.cpu_budget_s)
    shard = samples[0].shard if samples else ""
    out = ChunkResult(shard=shard)
    thumbs, recs, arrays, raw = [], [], [], []
    for s in samples:
        if s.status == "__empty__":  # placeholder for a shard with no samples
            continue
        data, read_error = read_deferred(s, dc.max_bytes)  # a deferred sample's file is read here, in the worker
        if data is None:
            if s.status not in ("success", "error"):
                out.not_indexed.append({"key": s.key, "shard": s.shard, "url": utf8_safe(s.url),
                                        "caption": utf8_safe(s.caption), "status": utf8_safe(s.status),
                                        "error": utf8_safe(s.error)})
            else:
                out.errors.append(ErrorRecord(s.key, s.shard, "read", read_error or "no image bytes"))
            continue
        try:
            dec = decode(data)
            arr = preprocess(dec.rgb_image()) if preprocess is not None else None
            thumb = gray_thumbnails(dec.gray)  # two small arrays: the decoded image is not kept past this sample
            pixel_hash = pixel_hash_array(dec.rgb)
        except DecodeError as exc:
            out.errors.append(ErrorRecord(s.key, s.shard, "decode", str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - a bad sample must never stop the run
            out.errors.append(ErrorRecord(s.key, s.shard, "decode", f"{type(exc).__name__}: {exc}"))
            continue
        thumbs.append(thumb)
        arrays.append(arr)
        caption, url = utf8_safe(s.caption), utf8_safe(s.url)  # hostile JSON may hold lone surrogates
        if keep_bytes:
            raw.append(data)
        recs.append({
            "key": s.key,
            "shard": s.shard,
            "caption": caption,
            "url": url,
            "sha256": bytes_sha256(data),
            "pixel_blake3": pixel_hash,
            "width": dec.width,
            "height": dec.height,
            "format": sniff_format(data),
            "stored_ext": s.stored_ext,
            "nbytes": len(data),
            "caption_hash": caption_hash(caption),
            **carried_fields(s.meta, carry),
        })
    cols = hash_columns(thumbs)
    for r, p, d, pv, dv in zip(recs, cols["phash"].tolist(), cols["dhash"].tolist(), cols["phash_dihedral"].tolist(),
                               cols["dhash_dihedral"].tolist()):
        r["phash"], r["dhash"], r["phash_dihedral"], r["dhash_dihedral"] = p, d, pv, dv
    out.records = recs
    if preprocess is not None and arrays:
        out.pixels = np.stack(arrays)
    if keep_bytes:
        out.raw = raw
    return out


# fields of img2dataset's JSON that the index already stores (or that are too large to carry: exif)
_NOT_CARRIED = frozenset({"key", "url", "caption", "status", "error_message", "width", "height", "sha256", "exif",
                          "row"}) | frozenset(SAMPLE_COLUMN_NAMES)


MAX_CARRIED = 64  # carried columns per sample in the automatic mode (index.carry_columns: null)


def carried_fields(meta: Optional[dict], carry: Optional[list[str]]) -> dict:
    """The metadata a sample carries into its index row (see ``IndexConfig.carry_columns``): scalar fields of the
    reader's ``meta["json"]`` (the sample's img2dataset JSON, or its parquet row), never one of the fixed columns.

    Example:
        >>> carried_fields({"json": {"url": "u", "punsafe": 0.01, "source": "a.jpg"}}, None)
        {'punsafe': 0.01, 'source': 'a.jpg'}
        >>> carried_fields({"json": {"punsafe": 0.01}}, ["aesthetic"])
        {'aesthetic': None}
    """
    j = (meta or {}).get("json") or {}
    if carry is None:  # hostile JSON: at most MAX_CARRIED fields, names of 1-128 UTF-8 characters
        out = {}
        for k, v in j.items():
            if (isinstance(k, str) and 0 < len(k) <= 128 and k not in _NOT_CARRIED and is_utf8(k)
                    and (v is None or isinstance(v, (bool, int, float, str)))):
                out[k] = utf8_safe(v) if isinstance(v, str) else v
                if len(out) >= MAX_CARRIED:
                    break
        return out
    out = {}
    for k in carry:
        if k in _NOT_CARRIED:
            continue
        v = j.get(k)
        v = v if v is None or isinstance(v, (bool, int, float)) else utf8_safe(str(v))
        out[k] = v
    return out
