"""``auditor guard``: check files, or ``--serve`` the HTTP service."""

from __future__ import annotations

import argparse
import json

from ..text import clean_text
from .lookup import COPY, ERROR, NEAR, OK, RANK, Guard
from .server import make_server


def register(subparsers) -> None:
    from ..cliutil import abs_path, add_config_options

    p = subparsers.add_parser(
        "guard", help="nearest training images (and a copy/near/ok verdict) for generated images; --serve for HTTP",
        description="Look generated images up in RUN_DIR's index (pHash, then the index's embedder) and print the "
                    "nearest training images with a copy / near / ok verdict. Thresholds: report.guard.*")
    p.add_argument("run_dir", metavar="RUN_DIR", type=abs_path, help="run folder holding index/")
    p.add_argument("images", nargs="*", metavar="IMAGE", type=abs_path, help="image files to check")
    p.add_argument("--json", action="store_true", help="print one JSON object per image")
    p.add_argument("--fail-on", choices=(COPY, NEAR, "never"), default=COPY,
                   help="exit 1 when an image is at least this close to a training image (default: copy)")
    p.add_argument("--device", help="embedder device (default: the index's, auto)")
    p.add_argument("--serve", action="store_true", help="run the HTTP service instead of checking files")
    p.add_argument("--host", help="bind address for --serve (default report.guard.host = 127.0.0.1)")
    p.add_argument("--port", type=int, help="port for --serve (default report.guard.port)")
    add_config_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..cliutil import config_from_args
    from ..errors import UserError

    cfg = config_from_args(args).report.guard  # a mistake: one "bad configuration" line, exit 2
    if not args.serve and not args.images:
        raise UserError("guard: give IMAGE files to check, or --serve")
    try:
        guard = Guard(args.run_dir, cfg, device=args.device)
        if args.serve:
            guard.warm_up()
    except Exception as exc:
        raise UserError(f"guard: {exc}") from exc
    if args.serve:
        server = make_server(guard, args.host, args.port)
        host, port = server.server_address[:2]
        print(f"auditor guard: serving {guard.n_indexed} indexed images on http://{host}:{port}/check "
              f"(POST image bytes; limit {server.max_request_bytes} bytes)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
        return 0
    results = guard.check(args.images)
    worst = OK
    errors = False
    for path, r in zip(args.images, results):
        r.source = str(path)
        if args.json:
            print(json.dumps(r.to_dict(), sort_keys=True))
        else:
            best = r.matches[0] if r.matches else None
            if best is None:
                near = clean_text(r.error, 300) or "-"
            else:
                d = "-" if best.phash_distance is None else str(best.phash_distance)
                c = "-" if best.cosine is None else f"{best.cosine:.3f}"
                near = f"{clean_text(best.shard, 40)}/{clean_text(best.key, 200)} (phash {d}, cos {c})"
            print(f"{r.verdict:5s}  {clean_text(path, 300)}  ->  {near}")
        if r.verdict == ERROR:
            errors = True
        elif RANK[r.verdict] < RANK[worst]:
            worst = r.verdict
    if args.fail_on != "never" and worst != OK and RANK[worst] <= RANK[args.fail_on]:
        return 1
    return 2 if errors else 0
