"""``auditor index DATASET --out RUN_DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path
from ..cliutil import abs_path, add_config_options, config_from_args, dataset_path, flag_values, writable_dir
from ..errors import UserError
from ..io import READERS
from .config import EmbedderConfig
from .embedders import EMBEDDERS
from .engines import ENGINES

# argparse dest -> the dotted config key the flag sets (the flag wins over --config and --set)
FLAGS = {"layout": "index.reader.layout", "embedder": "index.embedder.name", "model": "index.embedder.model",
         "pretrained": "index.embedder.pretrained", "checkpoint": "index.embedder.checkpoint",
         "workers": "index.workers", "engine": "index.engine"}


def register(sub) -> None:
    p = sub.add_parser(
        "index", help="read a dataset and build the hash + embedding index (resumable)",
        description="Read an img2dataset output (webdataset, parquet, files) or a plain image folder, local or any "
                    "fsspec URL, and write RUN_DIR/index: per-shard tables of hashes, sizes and captions, float16 "
                    "embeddings, errors.parquet. A rerun skips completed shards.")
    p.add_argument("dataset", type=dataset_path,
                   help="dataset folder (or one .tar/.parquet shard), or an fsspec URL (s3://, gs://, ...)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", type=abs_path,
                   help="run folder (never inside the dataset)")
    p.add_argument("--layout", choices=["auto", *READERS.names()],
                   help="dataset layout (default: detect)")
    p.add_argument("--embedder", choices=EMBEDDERS.names(),
                   help="embedding backend (index.embedder.name)")
    p.add_argument("--model", help="open_clip model name (e.g. ViT-B-32)")
    p.add_argument("--pretrained", help="open_clip pretrained tag (e.g. laion2b_s34b_b79k)")
    p.add_argument("--checkpoint", type=abs_path,
                   help="local weights: open_clip checkpoint, SSCD TorchScript or ONNX file")
    p.add_argument("--workers", type=int, help="decode/hash processes (0 = in-process, -1 = one per core)")
    p.add_argument("--embeddings", metavar="DIR_OR_GLOB",
                   help="attach precomputed embeddings instead of running a model: a clip-retrieval/LAION folder "
                        "(img_emb/ + metadata/), NeMo-style parquet (id/key + list<float>) or .npy + ids parquet")
    p.add_argument("--engine", choices=ENGINES.names(),
                   help="where the pipeline runs: local (default) or a Ray cluster (--set index.ray_address=auto)")
    add_config_options(p)
    p.set_defaults(func=_run)


def check_dataset(dataset: str) -> None:
    """A local dataset must exist, and be a folder or one .tar / .parquet shard (URLs are checked by the reader)."""
    if "://" in dataset and not dataset.startswith("file://"):
        return
    p = Path(dataset[len("file://"):] if dataset.startswith("file://") else dataset)
    if not p.exists():
        raise UserError(f"dataset {p} does not exist")
    if p.is_file() and p.suffix not in (".tar", ".parquet"):
        raise UserError(f"dataset {p} is a file; give the dataset folder (or one .tar / .parquet shard)")


def check_out(dataset: str, out: str) -> None:
    """RUN_DIR may be created (missing or a folder) and is never inside a local dataset."""
    writable_dir(out)
    if "://" in dataset and not dataset.startswith("file://"):
        return
    root = Path(dataset[len("file://"):] if dataset.startswith("file://") else dataset).resolve()
    o = Path(out).resolve()
    if o == root or root in o.parents:
        raise UserError(f"--out {out} is inside the input dataset {root}: pass another --out")


# embedders that have no weights unless a file is given
_NEEDS_CHECKPOINT = {"sscd": "a TorchScript file, e.g. sscd_disc_mixup.torchscript.pt from "
                             "https://github.com/facebookresearch/sscd-copy-detection",
                     "onnx": "an .onnx image-embedding model"}


def check_weights(emb: EmbedderConfig) -> None:
    """The embedder's weights file exists (before anything is loaded or written)."""
    if emb.name == "none":
        return
    if not emb.checkpoint:
        if emb.name in _NEEDS_CHECKPOINT:
            raise UserError(f"{emb.name} embedder: no checkpoint given; pass --checkpoint FILE "
                            f"({_NEEDS_CHECKPOINT[emb.name]})")
        return
    if "://" not in emb.checkpoint and not Path(emb.checkpoint).expanduser().is_file():
        raise UserError(f"{emb.name} embedder: checkpoint file not found: {emb.checkpoint}")


def _run(args: argparse.Namespace) -> int:
    top = flag_values(args, FLAGS)
    if getattr(args, "embeddings", None):  # precomputed embeddings: hash only, then attach
        top.setdefault("index", {}).setdefault("embedder", {})["name"] = "none"
    cfg = config_from_args(args, top=top)  # a mistake: one "bad configuration" line, exit 2
    check_dataset(args.dataset)
    check_out(args.dataset, args.out)
    check_weights(cfg.index.embedder)
    from .workerctx import start_worker_server

    start_worker_server(cfg.index)  # usually running already (cli.main: workerctx.prestart); else started now
    from .runner import run_index

    store = run_index(args.dataset, args.out, cfg.index)
    if args.embeddings:
        from .precomputed import attach_embeddings

        store = attach_embeddings(args.out, args.embeddings)
    c = store.info["counts"]
    print(f"indexed {c['indexed']} samples in {c['shards']} shards ({c['errors']} errors, "
          f"{c['not_indexed']} not downloaded) -> {store.dir}")
    return 0
