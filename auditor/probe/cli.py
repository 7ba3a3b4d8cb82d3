"""auditor probe RUN_DIR --model DIR_OR_ID: prompt the model with the risky captions of a dedup run.

The inputs are checked before anything is loaded or written: RUN_DIR must hold a dedup run, the diffusers
generator needs --model (a local pipeline folder, or a hub id), http needs --url and python --callable.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from pathlib import Path

from ..cliutil import abs_path, add_config_options, config_from_args, flag_values, require_dir
from ..errors import UserError
from .generators import GENERATORS

log = logging.getLogger(__name__)

# what a Hugging Face hub id looks like ("org/name" or "name"); anything else is taken for a local path
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")

# argparse dest -> the dotted config key the flag sets (the flag wins over --config and --set)
FLAGS = {"model": "probe.model", "top_n": "probe.top_n", "budget": "probe.budget_unet_evals",
         "generator": "probe.generator", "url": "probe.http.url", "fn": "probe.python.callable",
         "progress": "probe.progress", "prompts": "probe.prompts_file"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "probe", help="prompt a text-to-image model with risky captions and detect copies of training images",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", type=abs_path, help="run folder holding index/ and dedup/ (writes probe/)")
    p.add_argument("--model", help="diffusers pipeline folder or hub id (or a label for http/python generators)")
    p.add_argument("--top-n", type=int, help="risky captions to probe, by rank (probe.top_n)")
    p.add_argument("--budget", type=int, metavar="UNET_EVALS",
                   help="UNet evaluations to spend at most (probe.budget_unet_evals)")
    p.add_argument("--generator", choices=GENERATORS.names(),
                   help="how images are generated (probe.generator; default diffusers)")
    p.add_argument("--url", help="http generator endpoint (probe.http.url)")
    p.add_argument("--callable", dest="fn", metavar="MODULE:FUNCTION", help="python generator (probe.python.callable)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bars (probe.progress=false)")
    p.add_argument("--prompts", metavar="FILE", type=abs_path,
                   help="CSV (any delimiter), JSONL or parquet with a caption column, instead of dedup/risk.parquet "
                        "(probe.prompts_file)")
    add_config_options(p)
    p.set_defaults(func=main)


def resolve_model(model: str) -> str:
    """A diffusers ``--model``: an existing pipeline folder (made absolute) or a hub id. A path that does not
    exist, or a hub id that cannot be had offline (``HF_HUB_OFFLINE``) and is not cached, is a UserError, raised
    before anything is loaded."""
    p = Path(model).expanduser()
    if p.exists():
        if not p.is_dir():
            raise UserError(f"--model {model} is a file; give a diffusers pipeline folder (save_pretrained) or a hub id")
        if not (p / "model_index.json").is_file():
            raise UserError(f"--model {model} is not a diffusers pipeline folder (no model_index.json in it)")
        return str(p.absolute())
    if not _HUB_ID.match(model) or ".." in model or "--" in model:
        raise UserError(f"--model {model}: no such folder")
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model, "model_index.json"), str):
            raise UserError(f"--model {model}: no such folder, and HF_HUB_OFFLINE is set and the hub model is "
                            "not in the local cache")
    return model


def main(args) -> int:
    cfg = config_from_args(args, top=flag_values(args, FLAGS))  # a mistake: one "bad configuration" line, exit 2
    p = cfg.probe
    require_dir(args.run_dir)
    if p.generator == "diffusers":
        if not p.model:
            raise UserError("probe: the diffusers generator needs --model (a pipeline folder or a hub id)")
        cfg = cfg.model_copy(update={"probe": p.model_copy(update={"model": resolve_model(p.model)})})
    elif p.generator == "http" and not p.http.url:
        raise UserError("probe: the http generator needs --url (or probe.http.url)")
    elif p.generator == "python":
        if not p.python.callable:
            raise UserError("probe: the python generator needs --callable MODULE:FUNCTION (or probe.python.callable)")
        from .generators.python import load_callable

        try:
            load_callable(p.python.callable)
        except (ImportError, AttributeError, TypeError, ValueError) as exc:
            raise UserError(f"probe: --callable {p.python.callable}: {type(exc).__name__}: {exc}") from exc

    from .runner import run_probe

    res = run_probe(args.run_dir, cfg.probe)
    counts = res["verdict"].value_counts().to_dict() if len(res) else {}
    print(f"probe: {len(res)} caption variants -> {counts}; results in {args.run_dir}/probe/results.parquet")
    return 0
