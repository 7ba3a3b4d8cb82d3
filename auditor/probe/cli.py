"""``auditor probe RUN_DIR --model DIR_OR_ID``: prompt the model with the risky captions of a dedup run."""

from __future__ import annotations

import argparse
import logging

from ..cli import add_config_options, config_from_args

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "probe", help="prompt a text-to-image model with risky captions and detect copies of training images",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder holding index/ and dedup/ (writes probe/)")
    p.add_argument("--model", help="diffusers pipeline folder or hub id (or a label for http/python generators)")
    p.add_argument("--top-n", type=int, help="risky captions to probe, by rank (probe.top_n)")
    p.add_argument("--budget", type=int, metavar="UNET_EVALS",
                   help="UNet evaluations to spend at most (probe.budget_unet_evals)")
    p.add_argument("--generator", choices=["diffusers", "http", "python"], help="probe.generator")
    p.add_argument("--url", help="http generator endpoint (probe.http.url)")
    p.add_argument("--callable", dest="fn", metavar="MODULE:FUNCTION", help="python generator (probe.python.callable)")
    p.add_argument("--no-progress", action="store_true")
    add_config_options(p)
    p.set_defaults(func=main)


def main(args) -> int:
    from .runner import run_probe

    cfg = config_from_args(args)
    upd = {}
    if args.model is not None:
        upd["model"] = args.model
    if args.top_n is not None:
        upd["top_n"] = args.top_n
    if args.budget is not None:
        upd["budget_unet_evals"] = args.budget
    if args.generator is not None:
        upd["generator"] = args.generator
    if args.no_progress:
        upd["progress"] = False
    probe = cfg.probe.model_copy(update=upd)
    if args.url is not None:
        probe = probe.model_copy(update={"http": probe.http.model_copy(update={"url": args.url})})
    if args.fn is not None:
        probe = probe.model_copy(update={"python": probe.python.model_copy(update={"callable": args.fn})})
    probe = type(probe).model_validate(probe.model_dump())  # re-validate the overrides
    cfg = cfg.model_copy(update={"probe": probe})
    res = run_probe(args.run_dir, cfg)
    counts = res["verdict"].value_counts().to_dict() if len(res) else {}
    print(f"probe: {len(res)} caption variants -> {counts}; results in {args.run_dir}/probe/results.parquet")
    return 0
