"""Typed configuration of the index stage (readers, decoding limits, embedder)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from ..rundir import RUNTIME  # keys marked RUNTIME are left out of the index's resume fingerprint


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ReaderConfig(_Strict):
    layout: Literal["auto", "webdataset", "parquet", "files", "folder"] = "auto"
    # plain image folders: samples per shard (shards are chunks of the sorted relative paths)
    folder_shard_size: int = Field(10_000, ge=1)
    # plain image folders: a CSV/parquet with columns (key|path, caption) mapping images to captions
    captions_file: Optional[str] = None
    # img2dataset parquet layout: column with the image bytes; None = the encode format (jpg, png, webp)
    image_column: Optional[str] = None
    # captions (.txt) and .json members/files, and parquet caption values, larger than this are not read: the
    # sample is a read error "too_many_bytes" (8 MiB: a 1M-character caption escaped in img2dataset's .json)
    max_text_bytes: int = Field(8 << 20, ge=1)
    # a compressed tar (.tar.gz/.bz2/.xz) or a parquet column chunk may decompress to at most this many times
    # its stored bytes (or 256 MiB, whichever is larger); beyond it the container is recorded as broken
    max_expansion: int = Field(100, ge=1)


class DecodeConfig(_Strict):
    # decompression-bomb limit: images with more pixels than this are recorded as errors, never decoded
    max_pixels: int = Field(89_478_485, ge=1)  # PIL's own default warning limit
    # stored-bytes limit per sample
    max_bytes: int = Field(64 * 1024 * 1024, ge=1)
    # progressive-JPEG scans, counted from the markers before decoding (each scan is a full pass; encoders
    # write <= ~20): a JPEG with more is recorded as a decode error "too_many_scans"
    max_jpeg_scans: int = Field(100, ge=1)
    # CPU seconds (the worker thread's CPU time) one image may spend in decoding + RGB conversion; past it the
    # sample is a decode error "over_cpu_budget" (checked between decoder blocks; see index/decode_bounds.py)
    cpu_budget_s: float = Field(30.0, gt=0, allow_inf_nan=False)


class EmbedderConfig(_Strict):
    # "copy" (default): the copy-detection descriptor shipped in the package (auditor/index/embedders/copy.py);
    # "none": hashes only (the fastest index)
    name: Literal["none", "copy", "open_clip", "sscd", "onnx"] = "copy"
    # open_clip: model name (e.g. ViT-B-32) and a pretrained tag (e.g. laion2b_s34b_b79k) or a checkpoint file
    model: str = "ViT-B-32"
    pretrained: Optional[str] = None
    # sscd: TorchScript file; onnx: .onnx file; open_clip: optional local checkpoint
    checkpoint: Optional[str] = None
    device: str = Field("auto", json_schema_extra=RUNTIME)  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    batch_size: int = Field(64, ge=1, json_schema_extra=RUNTIME)
    # CPU threads of the onnxruntime embedders (copy, onnx); 0 = auto: every core in the local engine (it embeds
    # while its pool is idle; auditor/index/threads.py), the reserved CPU in a Ray actor. Does not change outputs.
    threads: int = Field(0, ge=0, json_schema_extra=RUNTIME)
    # sscd / onnx preprocessing (open_clip uses its own)
    image_size: int = Field(288, ge=8)
    resize_mode: Literal["resize", "center_crop"] = "resize"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    caption_embeddings: bool = False


class IndexConfig(_Strict):
    # worker processes for read+decode+hash; 0 = in-process (no pool); -1 = one per CPU core
    workers: int = Field(-1, json_schema_extra=RUNTIME)
    # samples handed to a worker at a time
    chunk_size: int = Field(64, ge=1, json_schema_extra=RUNTIME)
    progress: bool = Field(True, json_schema_extra=RUNTIME)
    # where the pipeline runs: "local" (this machine: process pool + in-process embedder) or "ray" (Ray Data:
    # CPU tasks decode + hash, GPU actors embed; see docs/scale.md). Both give byte-identical index folders.
    engine: Literal["local", "ray"] = Field("local", json_schema_extra=RUNTIME)
    # engine=ray: the cluster to join ("auto" = the running cluster of `ray start --head`; None = start a local one)
    ray_address: Optional[str] = Field(None, json_schema_extra=RUNTIME)
    # decode + resize + normalise the stored bytes on the embedder's device (nvJPEG through torchvision on CUDA,
    # batched, PIL fallback per image) instead of in the workers, which then only hash. Hashes are unchanged;
    # embeddings differ from the PIL preprocessing within resampling tolerance (so it is part of the index config).
    gpu_decode: bool = False
    # metadata columns carried from each sample's img2dataset JSON / parquet row into the index shards (after the
    # fixed columns), so a dedup keep policy (dedup.keep: column:NAME) and keep_urls.parquet can use them:
    # img2dataset's --save_additional_columns, LAION's similarity, punsafe, pwatermark, aesthetic, ...
    # null = every scalar field except those the index already stores (key, url, caption, status, width, height,
    # sha256, exif, error_message; at most 64 per sample); [] = none; a list = exactly those (a missing one is null)
    carry_columns: Optional[list[str]] = None
    # "exact" (default): pHash/dHash bit-identical to imagehash on the fully decoded image. "fast" (opt-in): plain
    # JPEGs are decoded by libjpeg-turbo at a reduced DCT scale (the smallest 1/8 step that keeps both sides
    # >= 64 px, twice the 32-px pHash thumbnail), so the hashes move by a few bits and pixel_blake3 is of those
    # pixels (BENCHMARKS.md section 1 measures both). An index in one mode never resumes or compares with the other.
    hash_mode: Literal["exact", "fast"] = "exact"
    reader: ReaderConfig = ReaderConfig()
    decode: DecodeConfig = DecodeConfig()
    embedder: EmbedderConfig = EmbedderConfig()
