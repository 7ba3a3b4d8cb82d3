"""``auditor report RUN_DIR [--out PATH]``: one self-contained HTML report plus summary.md / summary.json."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    from ..cli import add_config_options

    p = subparsers.add_parser(
        "report", help="render a run folder into one self-contained HTML report (+ summary.md, summary.json)",
        description="Render RUN_DIR (whatever stages it holds) into one HTML file with every image inline, and "
                    "write summary.md (fits $GITHUB_STEP_SUMMARY) and summary.json beside it.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", metavar="PATH", help="HTML file to write (default: <report.out_dir>/<run name>/report.html)")
    add_config_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..cli import config_from_args
    from .render import build_report

    try:
        cfg = config_from_args(args)
    except Exception as exc:
        print(f"auditor report: bad configuration: {exc}", file=sys.stderr)
        return 2
    try:
        out = build_report(args.run_dir, cfg.report, args.out)
    except FileNotFoundError as exc:
        print(f"auditor report: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0
