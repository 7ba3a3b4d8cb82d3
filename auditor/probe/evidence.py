"""Evidence images of a copy verdict: generation beside the training image it copies (or, with no training image,
a strip of the near-identical generations of the clique)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..utils import atomic_path, bounded_name
from .detectors import capped_size, center_crop_to_aspect


def safe_name(name: str) -> str:
    """``name`` as a file-name part: letters, digits, ``-`` and ``_`` kept, anything else ``_``; hashed when long
    (a 250-character key must not push an evidence file name past NAME_MAX)."""
    return bounded_name("".join(c if c.isalnum() or c in "-_" else "_" for c in name), 96)


def write_evidence(run_dir: Path, folder: Path, cfg, variant: str, ok: list[dict], ims: list[Image.Image],
                   gen_rows: list[dict], refs: list[tuple[str, str]], ref_images: list[Image.Image],
                   clique: list[int]) -> list[str]:
    """PNG evidence under ``folder``; returns their paths relative to ``run_dir``."""
    out: list[str] = []
    by_seed = {g["seed"]: g for g in gen_rows}
    scored = [(by_seed[r["seed"]]["tiled_l2"], j) for j, r in enumerate(ok)
              if by_seed[r["seed"]]["verdict"] in ("verbatim", "template") and by_seed[r["seed"]]["best_key"]]
    scored.sort(key=lambda x: (x[0] if x[0] is not None else np.inf, x[1]))
    for d, j in scored[: cfg.evidence_per_caption]:
        g = by_seed[ok[j]["seed"]]
        ri = refs.index((g["best_key"], g["best_shard"]))
        ref = ref_images[ri]
        if cfg.reference_crop == "center":
            ref = center_crop_to_aspect(ref, ims[j].size[0] / ims[j].size[1])
        size = capped_size(*ref.size, cfg.compare_max_side)
        pair = Image.new("RGB", (size[0] * 2 + 8, size[1]), (255, 255, 255))
        pair.paste(ims[j].resize(size, Image.BICUBIC), (0, 0))
        pair.paste(ref.resize(size, Image.BICUBIC), (size[0] + 8, 0))
        p = folder / f"{safe_name(variant)}_seed{ok[j]['seed']}_vs_{safe_name(g['best_key'])}.png"
        with atomic_path(p) as tmp:
            pair.save(tmp, format="PNG")
        out.append(p.relative_to(run_dir).as_posix())
    if not out and clique:
        idx = [next(j for j, r in enumerate(ok) if r["seed"] == s) for s in clique[:8]]
        w, h = capped_size(*ims[idx[0]].size, 256)
        grid = Image.new("RGB", ((w + 4) * len(idx) - 4, h), (255, 255, 255))
        for n, j in enumerate(idx):
            grid.paste(ims[j].resize((w, h), Image.BICUBIC), (n * (w + 4), 0))
        p = folder / f"{safe_name(variant)}_clique.png"
        with atomic_path(p) as tmp:
            grid.save(tmp, format="PNG")
        out.append(p.relative_to(run_dir).as_posix())
    return out
