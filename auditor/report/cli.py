"""``auditor report RUN_DIR [--out PATH]``: one self-contained HTML report plus summary.md / summary.json."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from ..cliutil import abs_path, add_config_options

    p = subparsers.add_parser(
        "report", help="render a run folder into one self-contained HTML report (+ summary.md, summary.json)",
        description="Render RUN_DIR (whatever stages it holds) into one HTML file with every image inline, and "
                    "write summary.md (fits $GITHUB_STEP_SUMMARY) and summary.json beside it.")
    p.add_argument("run_dir", metavar="RUN_DIR", type=abs_path, help="run folder (any of index/, dedup/, probe/)")
    p.add_argument("--out", metavar="PATH", type=abs_path, help="HTML file to write (default: <report.out_dir>/<run name>/report.html)")
    add_config_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..cliutil import config_from_args, require_dir

    cfg = config_from_args(args)  # a mistake: one "bad configuration" line, exit 2 (auditor.cli.main)
    require_dir(args.run_dir)

    from .render import build_report

    out = build_report(args.run_dir, cfg.report, args.out)  # FileNotFoundError: one line, exit 2
    print(out)
    return 0
