"""``auditor dedup RUN_DIR`` and ``auditor apply-manifest RUN_DIR --out DIR``."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    from ..cliutil import abs_path, add_config_options, dataset_path

    p = subparsers.add_parser(
        "dedup", help="duplicate clusters, keep/drop manifest and memorization-risk ranking of an index",
        description="Cluster exact, perceptual and embedding duplicates of RUN_DIR/index and write "
                    "RUN_DIR/dedup/{manifest,clusters,captions,risk}.parquet, keep/drop key lists and "
                    "summary.json. Incremental: shards added to the index since the last run are searched "
                    "against the rest; nothing else is searched again.")
    p.add_argument("run_dir", metavar="RUN_DIR", type=abs_path, help="run folder holding index/ (writes dedup/)")
    p.add_argument("--against", action="append", default=[], metavar="OTHER_RUN", type=abs_path,
                   help="also list the samples duplicating samples of another indexed run "
                        "(writes dedup/against_<name>.parquet; repeatable)")
    p.add_argument("--full", action="store_true", help="ignore the stored search state and search everything")
    add_config_options(p)
    p.set_defaults(func=_dedup)

    a = subparsers.add_parser(
        "apply-manifest", help="write the kept samples as a new dataset (webdataset, parquet or files)",
        description="Write the samples RUN_DIR/dedup/manifest.parquet keeps to OUT, every member and JSON field "
                    "as stored, keys and order kept, as webdataset, img2dataset parquet or files shards. OUT is a "
                    "folder or an fsspec URL (s3://, gs://, memory://); rerunning the same command into the same "
                    "OUT resumes an interrupted run. Never writes into the input dataset or RUN_DIR/index.")
    a.add_argument("run_dir", metavar="RUN_DIR", type=abs_path, help="run folder holding index/ and dedup/")
    a.add_argument("--out", required=True, metavar="DIR_OR_URL", type=dataset_path,
                   help="a new or empty folder or fsspec URL (the same one again to resume)")
    a.add_argument("--format", dest="output_format", default="webdataset",
                   choices=("webdataset", "parquet", "files"), help="output layout (default webdataset)")
    a.add_argument("--shard-size", type=int, default=10_000, help="samples per output shard (default 10000)")
    a.add_argument("--drop-against", nargs="*", default=None, metavar="NAME",
                   help="also drop the samples `dedup --against` matched in other runs: every "
                        "dedup/against_*.parquet, or only those of the runs NAME")
    add_config_options(a)
    a.set_defaults(func=_apply)


def _dedup(args: argparse.Namespace) -> int:
    from ..cliutil import config_from_args, require_dir

    cfg = config_from_args(args)  # a mistake: one "bad configuration" line, exit 2
    require_dir(args.run_dir)
    for other in args.against:
        require_dir(other, "--against")

    from .against import run_against
    from .runner import run_dedup

    summary = run_dedup(args.run_dir, cfg.dedup, full=args.full, seed=cfg.seed)
    print(json.dumps({k: summary[k] for k in ("samples", "kept", "dropped", "duplicate_rate", "duplicate_clusters",
                                              "placeholder_clusters", "risk_rows")}, indent=2))
    for other in args.against:
        out = run_against(args.run_dir, other, cfg.dedup, seed=cfg.seed)
        print(f"{len(out)} samples duplicate samples of {other}")
    return 0


def _apply(args: argparse.Namespace) -> int:
    from ..cliutil import config_from_args, require_dir, writable_dir
    from ..errors import UserError

    cfg = config_from_args(args)
    if args.shard_size < 1:
        raise UserError("--shard-size must be >= 1")
    require_dir(args.run_dir)
    from .apply import apply_manifest, resumes

    if "://" not in args.out:  # a non-empty --out is refused up front unless this run was writing it
        writable_dir(args.out, empty=not resumes(args.run_dir, args.out))

    summary = apply_manifest(args.run_dir, args.out, shard_size=args.shard_size, progress=cfg.dedup.progress,
                             output_format=args.output_format, drop_against=args.drop_against)
    print(json.dumps(summary, indent=2))
    return 0 if summary["errors"] == 0 else 1
