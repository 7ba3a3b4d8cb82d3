"""``auditor index DATASET --out RUN_DIR``."""

from __future__ import annotations

import argparse

from ..cli import add_config_options, config_from_args


def register(sub) -> None:
    p = sub.add_parser(
        "index", help="read a dataset and build the hash + embedding index (resumable)",
        description="Read an img2dataset output (webdataset, parquet, files) or a plain image folder, local or any "
                    "fsspec URL, and write RUN_DIR/index: per-shard tables of hashes, sizes and captions, float16 "
                    "embeddings, errors.parquet. A rerun skips completed shards.")
    p.add_argument("dataset", help="dataset folder or fsspec URL (file://, s3://, ...)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (never inside the dataset)")
    p.add_argument("--layout", choices=["auto", "webdataset", "parquet", "files", "folder"],
                   help="dataset layout (default: detect)")
    p.add_argument("--embedder", choices=["none", "open_clip", "sscd", "onnx"], help="embedding backend")
    p.add_argument("--model", help="open_clip model name (e.g. ViT-B-32)")
    p.add_argument("--pretrained", help="open_clip pretrained tag (e.g. laion2b_s34b_b79k)")
    p.add_argument("--checkpoint", help="local weights: open_clip checkpoint, SSCD TorchScript or ONNX file")
    p.add_argument("--workers", type=int, help="decode/hash processes (0 = in-process, -1 = one per core)")
    p.add_argument("--engine", choices=["local", "ray"],
                   help="where the pipeline runs: local (default) or a Ray cluster (--set index.ray_address=auto)")
    add_config_options(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from .runner import run_index

    flags = {"layout": "index.reader.layout", "embedder": "index.embedder.name", "model": "index.embedder.model",
             "pretrained": "index.embedder.pretrained", "checkpoint": "index.embedder.checkpoint",
             "workers": "index.workers", "engine": "index.engine"}
    for attr, key in flags.items():
        val = getattr(args, attr)
        if val is not None:
            args.overrides.append(f"{key}={val}")
    cfg = config_from_args(args)
    store = run_index(args.dataset, args.out, cfg)
    c = store.info["counts"]
    print(f"indexed {c['indexed']} samples in {c['shards']} shards ({c['errors']} errors, "
          f"{c['not_indexed']} not downloaded) -> {store.dir}")
    return 0
