"""Refresh ``reports/example/`` from one finished ``auditor demo`` folder.

    cd "$(mktemp -d)" && auditor demo               # writes ./auditor-demo (about 3 minutes on 2 idle cores)
    python /path/to/repo/reports/make_example.py ./auditor-demo

Copies the demo's ``report.html``, ``summary.md`` and ``summary.json`` (the report writes no local path into
them; this script checks it), and the first evidence pair of every extracted prompt, enlarged 4x with
nearest-neighbour (the pairs are stored at the 32-px resolution the probe compared at), as
``evidence_<cluster size>x_<verdict>_<n>.png``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent / "example"
LOCAL_ROOTS = ("/work", "/tmp", "/home", "/root")
DATA_URI = re.compile(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+")


def main(argv=None) -> int:
    import pandas as pd
    from PIL import Image

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("demo_dir", help="an auditor demo output folder (holds report.html and run/)")
    ap.add_argument("--scale", type=int, default=4, help="enlargement of the evidence pairs (default 4)")
    args = ap.parse_args(argv)
    demo = Path(args.demo_dir)
    run = demo / "run"
    for name in ("report.html", "summary.md", "summary.json"):
        text = (demo / name).read_text(encoding="utf-8")
        leaked = [r for r in LOCAL_ROOTS if r in DATA_URI.sub("", text)]
        if leaked:
            print(f"make_example: {name} holds local paths ({leaked}); not copied", file=sys.stderr)
            return 1
    EXAMPLE.mkdir(exist_ok=True)
    for old in EXAMPLE.glob("evidence_*.png"):
        old.unlink()
    for name in ("report.html", "summary.md", "summary.json"):
        shutil.copyfile(demo / name, EXAMPLE / name)
    res = pd.read_parquet(run / "probe" / "results.parquet")
    res = res[res["verdict"].isin(["verbatim", "template"])].sort_values(
        ["cluster_size", "verdict", "caption"], ascending=[False, False, True], kind="mergesort")
    for n, (_, r) in enumerate(res.iterrows()):
        ev = list(r["evidence"]) if r["evidence"] is not None else []
        if not ev:
            continue
        with Image.open(run / ev[0]) as im:
            big = im.convert("RGB").resize((im.width * args.scale, im.height * args.scale), Image.Resampling.NEAREST)
        out = EXAMPLE / f"evidence_{int(r['cluster_size'])}x_{r['verdict']}_{n}.png"
        big.save(out, format="PNG")
        print(out.relative_to(EXAMPLE.parent.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
