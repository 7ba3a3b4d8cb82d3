"""``auditor lab`` / ``auditor demo``: train a tiny Stable Diffusion that really memorises, then audit it.

``auditor demo`` builds a planted dataset from scikit-image's bundled photos (duplicate groups copied 100, 30,
10 and 3 times, plus singletons), downloads it with the real img2dataset CLI from a loopback server, trains the
model on CPU in minutes, runs ``index``, ``dedup``, ``probe`` and ``report`` on it, and prints where the report
is and which planted groups came back as copies, by copy count.

``auditor lab`` is the same with every lab setting open: the ``lab`` section of the config (``--config FILE``,
``--set lab.key=value``), e.g. ``--set lab.photos=folder --set lab.photos_dir=../shared/data/photos/kodak``.
"""

from __future__ import annotations

import argparse
import json

from ..cliutil import abs_path, add_config_options, config_from_args, flag_values, writable_dir

# argparse dest -> the dotted config key the flag sets (the flag wins over --config and --set)
FLAGS = {"out": "lab.out_dir", "seed": "lab.seed", "progress": "lab.progress"}


def _lab_options(p: argparse.ArgumentParser, default_out: str) -> None:
    # type= applies to the default too: the relative default is made absolute here, in the folder it is run from
    p.add_argument("--out", default=default_out, type=abs_path, metavar="DIR",
                   help=f"output folder (default: ./{default_out} in the current folder)")
    p.add_argument("--seed", type=int, help="lab seed (lab.seed)")
    p.add_argument("--train-only", action="store_true", help="stop after training and the lab's quick check")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bars (lab.progress=false)")
    p.add_argument("--results", metavar="DIR", type=abs_path, help="also write <command>.json and <command>.md "
                   "(timings, extraction tables) into DIR, e.g. benchmarks/results")
    add_config_options(p)


def register(subparsers) -> None:
    for name, default_out, help_ in (
        ("demo", "auditor-demo", "train a tiny memorising Stable Diffusion on planted duplicates and audit it"),
        ("lab", "auditor-lab", "the memorisation lab with every setting open (LabConfig)"),
    ):
        p = subparsers.add_parser(name, help=help_, description=__doc__.replace("``", ""),  # plain text in --help
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        _lab_options(p, default_out)
        p.set_defaults(func=main, lab_command=name)


def configs_from_args(args):
    """(LabConfig, LabRunConfig): the demo's stage settings under the user's --config / --set; the lab's own
    settings are the config's ``lab`` section, with --out / --seed / --no-progress on top. The lab extends the
    stages' config (:class:`~auditor.lab.config.LabRunConfig`) and loads it with the same loader. A mistake is a
    one-line ConfigError."""
    from .config import LabRunConfig
    from .demo import DEMO_OVERRIDES

    acfg = config_from_args(args, base=DEMO_OVERRIDES, top=flag_values(args, FLAGS), model=LabRunConfig)
    return acfg.lab, acfg


def main(args) -> int:
    from .train import format_table

    cfg, acfg = configs_from_args(args)
    writable_dir(cfg.out_dir)

    from .demo import run_lab

    summary = run_lab(cfg, acfg, stages=not args.train_only)
    print(f"\nauditor {args.lab_command}: finished in {summary['total_seconds']:.0f} s "
          f"(stages: {json.dumps(summary['stage_seconds'])})")
    if summary.get("quick_eval"):
        print("\nLab check (generations from each group's caption vs. its training image):")
        print(format_table(summary["quick_eval"]["by_copy_count"]))
    if summary.get("probe_by_copy_count") is not None:
        print("\nauditor probe verdicts by planted copy count (groups whose caption was probed):")
        print(format_table(summary["probe_by_copy_count"]) if summary["probe_by_copy_count"] else "(nothing probed)")
    if summary.get("report"):
        print(f"\nReport: {summary['report']}")
    print(f"Lab summary: {cfg.out_dir}/lab.json")
    if args.results:
        from pathlib import Path

        from ..utils import write_json, write_text
        from .demo import summary_markdown

        slim = {k: v for k, v in summary.items() if k != "quick_eval"}
        slim["quick_eval_by_copy_count"] = (summary.get("quick_eval") or {}).get("by_copy_count")
        slim["quick_eval_groups"] = (summary.get("quick_eval") or {}).get("groups")
        write_json(Path(args.results) / f"{args.lab_command}.json", slim)
        write_text(Path(args.results) / f"{args.lab_command}.md", summary_markdown(summary))
    return 0
